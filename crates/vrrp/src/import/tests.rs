use super::*;

/// From a real write-up (shared/seeds/003), comments and all.
const SEED: &str = r#"
! Configuration File for keepalived     #全局定义
global_defs {
  notification_email {     #指定keepalived在发生事件时
  ops@wangshibo.cn
  }
  router_id master-node     #运行keepalived的机器的一个标识
}
vrrp_script chk_http_port {      #检测nginx服务是否在运行
script "/etc/keepalived/check_nginx.sh"   #这里通过脚本监测
interval 2                   #脚本执行间隔，每2s检测一次
weight -5                    #检测失败则优先级 -5
fall 2
rise 1
}
vrrp_instance VI_1 {    #keepalived在同一virtual_router_id中priority最大的会成为master
state MASTER
interface em1
mcast_src_ip 103.110.98.14
virtual_router_id 51
priority 101
advert_int 1
nopreempt                    # 非抢占模式
authentication {
    auth_type PASS
    auth_pass 1111
}
virtual_ipaddress {          #VRRP HA 虚拟地址
    103.110.98.20
}
  track_script {
chk_http_port
  }
}
virtual_server 10.0.0.1 80 {
  lb_algo rr
}
"#;

#[test]
fn converts_seed_and_result_validates() {
    let r = convert(SEED);
    assert_eq!(r.instances, 1);
    let c = crate::config::parse(&r.toml).unwrap_or_else(|e| panic!("{e}\n{}", r.toml));
    let i = &c.instances[0];
    assert_eq!(i.name, "VI_1");
    assert_eq!(i.interface, "em1");
    assert_eq!(i.vrid, 51);
    assert_eq!(i.priority, 101);
    assert!(!i.preempt);
    assert_eq!(i.auth, crate::packet::Auth::simple("1111"));
    assert_eq!(i.vips[0].to_string(), "103.110.98.20/32");
    assert_eq!(i.tracks[0].weight, -5);
    assert_eq!(i.tracks[0].fall, 2);
    assert_eq!(
        i.tracks[0].kind,
        crate::config::CheckKind::Script("/etc/keepalived/check_nginx.sh".into())
    );
    let w = r.warnings.join("\n");
    assert_eq!(i.mcast_src, Some("103.110.98.14".parse().unwrap()));
    assert!(w.contains("state MASTER"), "{w}");
    assert!(w.contains("virtual_server` (LVS) is not mapped"), "{w}");
}

#[test]
fn unicast_v3_notify_and_weight_override() {
    let conf = r#"
vrrp_script chk { script "pidof nginx"
  interval 1 }
vrrp_instance VI_9 {
  interface eth0
  virtual_router_id 9
  priority 150
  advert_int 0.1
  version 3
  unicast_src_ip 10.0.0.1
  unicast_peer {
10.0.0.2
  }
  virtual_ipaddress {
10.0.0.100/24 dev eth0
  }
  track_script {
chk weight 20
  }
  notify "/usr/local/bin/notify.sh"
  smtp_alert
}
"#;
    let r = convert(conf);
    let c = crate::config::parse(&r.toml).unwrap_or_else(|e| panic!("{e}\n{}", r.toml));
    let i = &c.instances[0];
    assert_eq!(
        i.unicast_peers,
        vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(i.advert_int, std::time::Duration::from_millis(100));
    assert_eq!(i.tracks[0].weight, 20);
    assert_eq!(i.notify.as_deref(), Some("/usr/local/bin/notify.sh"));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("`smtp_alert` is not mapped")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn maps_skip_check_adv_addr() {
    let inst = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n virtual_ipaddress {\n 10.0.0.100\n }\n}\n";
    let skip = |text: &str| {
        let r = convert(text);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let c = crate::config::parse(&r.toml).unwrap_or_else(|e| panic!("{e}\n{}", r.toml));
        c.instances[0].skip_check_adv_addr
    };
    assert!(!skip(inst));
    assert!(skip(&format!(
        "global_defs {{\n vrrp_skip_check_adv_addr\n}}\n{inst}"
    )));
    assert!(skip(&inst.replace(
        "interface eth0",
        "interface eth0\n skip_check_adv_addr"
    )));
}

#[test]
fn maps_script_security_and_script_user() {
    let conf = "global_defs {\n enable_script_security\n script_user nobody nogroup\n}\nvrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n virtual_ipaddress {\n 10.0.0.100\n }\n notify_master \"/usr/local/bin/up.sh\"\n}\n";
    let r = convert(conf);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.toml.contains("script_security = true"), "{}", r.toml);
    assert!(
        r.toml.contains("script_user = \"nobody:nogroup\""),
        "{}",
        r.toml
    );
    let c = crate::config::parse(&r.toml).unwrap_or_else(|e| panic!("{e}\n{}", r.toml));
    let s = &c.instances[0].scripts;
    assert!(s.secure);
    assert_eq!(s.user.as_ref().map(|u| u.uid), Some(65534));
    let r = convert(&conf.replace("nobody nogroup", "root"));
    assert!(r.toml.contains("script_user = \"root\""), "{}", r.toml);
}

#[test]
fn refuses_auth_type_ah() {
    for ah in ["AH", "ah"] {
        let conf = format!("vrrp_instance VI_1 {{\n interface eth0\n virtual_router_id 1\n authentication {{\n  auth_pass s3cret\n  auth_type {ah}\n }}\n virtual_ipaddress {{\n 10.0.0.100\n }}\n}}\n");
        let r = convert(&conf);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0].contains("auth_type AH is not supported"),
            "{:?}",
            r.errors
        );
        // the secret never ends up as a cleartext password
        assert!(!r.toml.contains("auth_pass"), "{}", r.toml);
        assert!(!r.toml.contains("s3cret"), "{}", r.toml);
    }
    let r = convert(&SEED.replace("auth_type PASS", "auth_type AH"));
    assert!(!r.errors.is_empty());
    assert!(convert(SEED).errors.is_empty());
}

/// keepalived keeps an auth_pass's first 8 bytes: a password of
/// multi-byte characters is cut by bytes (a valid config results) or,
/// where the cut falls inside a character, refused with a clear error.
#[test]
fn auth_pass_is_truncated_by_bytes_as_keepalived_does() {
    let with = |pass: &str| SEED.replace("auth_pass 1111", &format!("auth_pass {pass}"));
    let r = convert(&with("héllo-wörld"));
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.toml.contains("auth_pass = \"héllo-w\""), "{}", r.toml);
    crate::config::parse(&r.toml).unwrap_or_else(|e| panic!("{e}\n{}", r.toml));
    let r = convert(&with("aéééé"));
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].contains("multi-byte"), "{:?}", r.errors);
    assert!(!r.toml.contains("auth_pass"), "{}", r.toml);
    let r = convert(&with("12345678"));
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(!r.warnings.iter().any(|w| w.contains("auth_pass")), "{r:?}");
}

#[test]
fn output_is_valid_toml() {
    // Found by fuzz/ (keepalived_import): a repeated key was written
    // twice; numbers TOML does not take and DEL were written as is.
    let conf = "vrrp_instance V\u{7f}I {\n interface eth0\n advert_int 1\n advert_int 2\n priority 0100\n virtual_router_id 5.\n preempt_delay .5\n virtual_ipaddress {\n 10.0.0.1\n }\n}\n";
    let out = convert(conf);
    let v: toml::Value = toml::from_str(&out.toml).unwrap();
    let i = &v["vrrp"][0];
    assert_eq!(i["advert_int"].as_integer(), Some(2));
    assert_eq!(i["priority"].as_integer(), Some(100));
    assert_eq!(i["vrid"].as_integer(), Some(5));
    assert_eq!(i["preempt_delay"].as_float(), Some(0.5));
    assert_eq!(i["name"].as_str(), Some("V\u{7f}I"));
    assert!(out.warnings.iter().any(|w| w.contains("advert_int")));
}

#[test]
fn garbage_does_not_panic() {
    for s in [
        "}}}{{{",
        "vrrp_instance {",
        "vrrp_instance X { virtual_ipaddress { \"",
        "",
        "\"unterminated",
    ] {
        let _ = convert(s);
    }
}

#[test]
fn last_of_a_repeated_key_wins_and_non_numbers_are_said() {
    let conf = "vrrp_instance V {\n interface eth0\n priority 50\n priority 90\n advert_int x\n unicast_src_ip 10.0.0.1\n virtual_ipaddress {\n 10.0.0.100\n }\n}\n";
    let r = convert(conf);
    assert!(r.toml.contains("priority = 90"), "{}", r.toml);
    assert!(!r.toml.contains("priority = 50"), "{}", r.toml);
    assert!(!r.toml.contains("advert_int"), "{}", r.toml);
    // multicast is used: the unicast source would be a lie
    assert!(!r.toml.contains("unicast_src"), "{}", r.toml);
    let want = [
        "line 1: vrrp_instance V: `advert_int` needs a number",
        "line 1: vrrp_instance V: `priority` is set more than once; the last one is used",
        "line 1: vrrp_instance V: unicast_src_ip without unicast_peer is not mapped (multicast is used)",
    ];
    assert_eq!(r.warnings, want);
    assert!(toml::from_str::<toml::Value>(&r.toml).is_ok(), "{}", r.toml);
}
