//! The command line, without root: --check, --import-keepalived, status errors.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_syncd-vrrp");

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn tmp(name: &str, body: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vrrp-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/vrrp.example.toml"
    );
    let (code, out, err) = run(&["--check", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration OK"));
}

#[test]
fn check_rejects_with_key_and_fix() {
    let p = tmp(
        "bad.toml",
        "[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\npriority = 300\nvirtual_ips = [\"10.0.0.1\"]\n",
    );
    let (code, _, err) = run(&["--check", "--config", p.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(code, 1);
    assert!(
        err.contains("vrrp[0].priority: 300 is out of range 1..=255"),
        "{err}"
    );
}

#[test]
fn import_keepalived_prints_toml_and_warnings() {
    let p = tmp(
        "ka.conf",
        "vrrp_instance VI_1 {\n state MASTER\n interface eth0\n virtual_router_id 51\n priority 100\n advert_int 1\n authentication {\n  auth_type PASS\n  auth_pass 1111\n }\n virtual_ipaddress {\n  192.168.2.242\n }\n smtp_alert\n}\n",
    );
    let (code, out, err) = run(&["--import-keepalived", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("vrid = 51") && out.contains("auth_pass = \"1111\""),
        "{out}"
    );
    assert!(err.contains("`smtp_alert` is not mapped"), "{err}");
    // and the output passes --check
    let t = tmp("out.toml", &out);
    let (code, _, err) = run(&["--check", "--config", t.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    let _ = std::fs::remove_file(&t);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn import_keepalived_refuses_auth_type_ah() {
    let p = tmp(
        "ka-ah.conf",
        "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n authentication {\n  auth_type AH\n  auth_pass s3cret\n }\n virtual_ipaddress {\n  192.168.2.242\n }\n}\n",
    );
    let (code, out, err) = run(&["--import-keepalived", p.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "no TOML on stdout: {out}");
    assert!(
        err.contains("error:") && err.contains("auth_type AH is not supported"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn status_without_daemon_fails_clearly() {
    let p = tmp("st.toml", "admin = \"127.0.0.1:1\"\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\nvirtual_ips = [\"10.0.0.1\"]\n");
    let (code, _, err) = run(&["status", "--config", p.to_str().unwrap()]);
    let _ = std::fs::remove_file(&p);
    assert_eq!(code, 1);
    assert!(err.contains("is the daemon running"), "{err}");
    assert!(err.contains("127.0.0.1:1"), "names the address: {err}");
}
