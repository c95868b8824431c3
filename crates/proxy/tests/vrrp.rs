//! Built-in VRRP: two syncd-proxy nodes in network namespaces share a
//! virtual IP, and a client in a third namespace always reaches the node that
//! holds it. Needs root; skips visibly otherwise.

#[path = "../../vrrp/tests/common/mod.rs"]
mod netns;

use std::sync::atomic::Ordering;
use std::time::Duration;

use netns::{
    backend, can_run, get, serial, takeovers_on_release, takeovers_on_silence, wait_for, Lan,
};

const PROXY: &str = env!("CARGO_BIN_EXE_syncd-proxy");

fn proxy_toml(priority: u8, vip: &str) -> String {
    format!(
        r#"[global]
workers = 1
shutdown_timeout = "5s"
access_log = false

[admin]
listen = "127.0.0.1:9901"

[[listener]]
listen = "0.0.0.0:8080"
upstream = "web"

[[upstream]]
name = "web"
connect_timeout = "500ms"

[[upstream.server]]
addr = "127.0.0.1:9000"

[upstream.health_check]
type = "tcp"
interval = "200ms"
timeout = "200ms"
fall = 1
rise = 1

[[vrrp]]
name = "VI_LB"
interface = "eth0"
vrid = 52
priority = {priority}
advert_int = 1
version = 3
virtual_ips = ["{vip}/24"]

[[vrrp.track]]
http = "http://127.0.0.1:9901/healthz"
interval = 0.2
weight = -60
"#
    )
}

/// The client's view: which backend answers on the virtual IP.
fn via_vip(lan: &Lan) -> Option<String> {
    let url = format!("{}:8080", lan.vip());
    get(lan.ns(2), &url, "/").and_then(|(s, b)| (s == 200).then_some(b))
}

/// Wait until exactly `node` of the two proxies holds the VIP.
fn expect_holder(lan: &Lan, node: usize, secs: u64, why: &str) {
    assert!(
        wait_for(Duration::from_secs(secs), || lan.holders(&[0, 1])
            == vec![node])
        .is_some(),
        "{why}; holders {:?}",
        lan.holders(&[0, 1])
    );
}

/// Wait until the client reaches `backend` through the VIP.
fn expect_served_by(lan: &Lan, backend: &str) {
    assert!(
        wait_for(Duration::from_secs(5), || via_vip(lan).as_deref()
            == Some(backend))
        .is_some(),
        "client must reach {backend:?} through the VIP"
    );
}

#[test]
fn proxy_pair_moves_the_vip_with_health_and_shutdown() {
    let name = "proxy_pair_moves_the_vip_with_health_and_shutdown";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("px", 3);
    let vip = lan.vip();
    let _b1 = backend(lan.ns(1), "backend n1");
    let mut b0 = backend(lan.ns(0), "backend n0");
    let c0 = lan.syncd_config(0, &proxy_toml(150, &vip));
    let c1 = lan.syncd_config(1, &proxy_toml(100, &vip));
    let c0s = c0.to_str().unwrap().to_string();
    let c1s = c1.to_str().unwrap().to_string();
    let p0 = lan.start(0, "proxy", PROXY, &["--config", &c0s]);
    let p1 = lan.start(1, "proxy", PROXY, &["--config", &c1s]);

    // election: the higher priority holds the VIP and the client reaches it
    expect_holder(&lan, 0, 15, "node 0 (150) must hold the VIP");
    assert_eq!(via_vip(&lan).as_deref(), Some("backend n0"));
    let (s, json) = get(lan.ns(0), "127.0.0.1:9901", "/vrrp").expect("admin /vrrp");
    assert_eq!(s, 200);
    assert!(json.contains("\"state\": \"MASTER\""), "{json}");
    let (_, metrics) = get(lan.ns(1), "127.0.0.1:9901", "/metrics").expect("admin /metrics");
    assert!(
        metrics.contains("vrrp_state{instance=\"VI_LB\",vrid=\"52\",state=\"BACKUP\"} 1"),
        "{metrics}"
    );

    // node 0 loses its only backend: /healthz fails, the track lowers its
    // priority below the peer's, and the VIP moves to a node that can serve
    b0.store(true, Ordering::SeqCst);
    expect_holder(&lan, 1, 10, "VIP must leave the node without a backend");
    expect_served_by(&lan, "backend n1");

    // the backend returns: node 0 is healthy again and preempts
    b0 = backend(lan.ns(0), "backend n0");
    expect_holder(
        &lan,
        0,
        10,
        "healthy higher-priority node must take the VIP back",
    );
    expect_served_by(&lan, "backend n0");

    // planned switchover: SIGTERM resigns with priority 0; the backup takes
    // over after Skew_Time, not Master_Down_Interval
    let code = lan.term(p0);
    assert_eq!(code, Some(0), "SIGTERM must stop the proxy cleanly");
    let took = wait_for(Duration::from_secs(10), || lan.has_addr(1, &vip))
        .expect("backup never took the VIP after SIGTERM");
    eprintln!("switchover after SIGTERM: {took:?}");
    assert!(
        !lan.has_addr(0, &vip),
        "the resigning node released the VIP"
    );
    assert_eq!(
        takeovers_on_release(&lan, p1, 0),
        1,
        "priority 0 must hand over (Skew_Time), not a crash's Master_Down_Interval: {}",
        lan.log(p1)
    );
    assert_eq!(via_vip(&lan).as_deref(), Some("backend n1"));

    // the node returns and preempts; then a crash (kill -9): the backup
    // takes over within Master_Down_Interval
    let p0 = lan.start(0, "proxy", PROXY, &["--config", &c0s]);
    expect_holder(&lan, 0, 15, "restarted node must preempt");
    let before = takeovers_on_silence(&lan, p1, 0);
    lan.kill9(p0);
    let took = wait_for(Duration::from_secs(30), || lan.has_addr(1, &vip))
        .expect("backup never took the VIP after kill -9");
    eprintln!("failover after kill -9: {took:?}");
    assert_eq!(
        takeovers_on_silence(&lan, p1, 0),
        before + 1,
        "{}",
        lan.log(p1)
    );
    expect_served_by(&lan, "backend n1");
    b0.store(true, Ordering::SeqCst);
}

#[test]
fn vrrp_without_privileges_or_interface_fails_clearly() {
    // A wrong interface name must stop the proxy at start with a message
    // naming it, not leave it serving without the VIP.
    let name = "vrrp_without_privileges_or_interface_fails_clearly";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("pf", 1);
    let cfg =
        proxy_toml(100, &lan.vip()).replace("interface = \"eth0\"", "interface = \"nosuch0\"");
    let c = lan.syncd_config(0, &cfg);
    let k = lan.start(0, "proxy", PROXY, &["--config", c.to_str().unwrap()]);
    let exited = wait_for(Duration::from_secs(10), || {
        lan.log(k).contains("nosuch0") && lan.log(k).to_lowercase().contains("error")
    });
    assert!(exited.is_some(), "log: {}", lan.log(k));
    eprintln!("{}", lan.log(k));
    let code = lan.term(k);
    assert_ne!(code, Some(0), "log: {}", lan.log(k));
}
