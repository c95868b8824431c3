use super::*;

const OK: &str = r#"
admin = "127.0.0.1:9180"
[[vrrp]]
interface = "eth0"
vrid = 51
priority = 150
advert_int = 0.1
version = 3
virtual_ips = ["192.168.1.100/24", "192.168.1.101"]
nopreempt = true
preempt_delay = 5
[[vrrp.track]]
script = "pidof nginx"
interval = 2
weight = -20
fall = 3
rise = 2
"#;

#[test]
fn parses_a_full_instance() {
    let c = parse(OK).unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9180".parse().unwrap()));
    let i = &c.instances[0];
    assert_eq!(i.name, "VI_51");
    assert_eq!(i.advert_int, Duration::from_millis(100));
    assert_eq!(
        i.vips[0],
        Vip {
            addr: "192.168.1.100".parse().unwrap(),
            prefix: 24
        }
    );
    assert_eq!(i.vips[1].prefix, 32);
    assert!(!i.preempt);
    assert_eq!(i.tracks[0].weight, -20);
    assert_eq!(i.tracks[0].timeout, Duration::from_secs(2));
    assert!(i.machine_config("10.0.0.1".parse().unwrap()).check_ttl);
    assert!(
        !i.machine_config("10.0.0.1".parse().unwrap())
            .skip_check_adv_addr
    );
    let c = parse(&OK.replace("nopreempt", "skip_check_adv_addr = true\nnopreempt")).unwrap();
    assert!(
        c.instances[0]
            .machine_config("10.0.0.1".parse().unwrap())
            .skip_check_adv_addr
    );
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_key_and_the_fix() {
    let e = err(&OK.replace("priority = 150", "priority = 300"));
    assert!(
        e.contains("vrrp[0].priority: 300 is out of range 1..=255; set a value between 1 and 254, or 255 for the address owner"),
        "{e}"
    );
    let e = err(&OK.replace("version = 3", "version = 2"));
    assert!(
        e.contains("vrrp[0].advert_int: 0.1 is not whole seconds"),
        "{e}"
    );
    let e = err(&OK.replace("\"192.168.1.101\"", "\"192.168.1.500\""));
    assert!(e.contains("vrrp[0].virtual_ips[1]"), "{e}");
    let e = err(&OK.replace("nopreempt", "nopremept"));
    assert!(e.contains("nopremept"), "{e}");
    let e = err(&OK.replace("script = ", "tcp = \"127.0.0.1:80\"\nscript = "));
    assert!(
        e.contains("exactly one of script, tcp, http, process"),
        "{e}"
    );
    let e = err(&format!("{OK}\nauth_pass = \"x\"").replace("[[vrrp.track]]\nscript = \"pidof nginx\"\ninterval = 2\nweight = -20\nfall = 3\nrise = 2\n", ""));
    assert!(e.contains("VRRPv3 has no authentication"), "{e}");
    let e = err("[[vrrp]]\ninterface = \"eth0\"\nvrid = 1\nvirtual_ips = [\"10.0.0.1\"]\nunicast_src = \"10.0.0.2\"\n");
    assert!(e.contains("no fallback to multicast"), "{e}");
    let e = err(&OK.replace(
        "nopreempt",
        "script_user = \"no-such-user-here\"\nnopreempt",
    ));
    assert!(e.contains("vrrp[0].script_user: no user"), "{e}");
    let e = err("admin = \"nope\"\n");
    assert!(
        e.contains("admin:") && e.contains("no [[vrrp]] instance"),
        "{e}"
    );
}

mod script_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn conf(script: &str, extra: &str) -> String {
        format!("[[vrrp]]\ninterface = \"eth0\"\nvrid = 1\nvirtual_ips = [\"10.0.0.1\"]\nnotify_master = \"echo up\"\n{extra}\n[[vrrp.track]]\nscript = \"{script} --quick\"\n")
    }

    #[test]
    fn insecure_scripts_are_refused_at_load_naming_the_key() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            syncd_testkit::skip::skip(
                "insecure_scripts_are_refused_at_load_naming_the_key",
                "needs root to create a root-owned script",
            );
            return;
        }
        let d = std::env::temp_dir().join(format!("syncd-vrrp-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = d.join("check.sh");
        std::fs::write(&s, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = s.display().to_string();
        let c = parse(&conf(&script, "")).unwrap();
        assert!(c.instances[0].scripts.secure);
        assert_eq!(c.instances[0].scripts.user, None);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = parse(&conf(&script, "")).unwrap_err().to_string();
        assert!(
            e.contains("vrrp[0].track[0].script:")
                && e.contains("writable by everyone")
                && e.contains("chmod go-w")
                && e.contains("script_security = false"),
            "{e}"
        );
        // the same for a notify hook
        let e = parse(&conf("true", &format!("notify = \"{script}\"")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vrrp[0].notify:"), "{e}");
        // explicit opt-out, and script_user
        let c = parse(&conf(
            &script,
            "script_security = false\nscript_user = \"nobody\"",
        ))
        .unwrap();
        let r = &c.instances[0].scripts;
        assert!(!r.secure);
        assert_eq!(r.user.as_ref().map(|u| u.uid), Some(65534));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
