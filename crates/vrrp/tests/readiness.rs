//! `Type=notify` readiness of `syncd vrrp`: READY=1 once every instance runs
//! the protocol, STOPPING=1 at SIGTERM. Needs root for a network namespace
//! (skips visibly otherwise).

mod common;

use std::time::Duration;

use common::*;
use syncd_testkit::notify::NotifySocket;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn ready_once_instances_run_and_stopping_at_sigterm() {
    let t = "ready_once_instances_run_and_stopping_at_sigterm";
    if !can_run(t) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("rd", 1);
    let cfg = lan.syncd_config(0, &syncd_toml(3, 100, &lan.vip(), 1.0, ""));
    // A path socket: abstract names do not cross network namespaces.
    let mut n = NotifySocket::path(&lan.path("notify.sock"));
    let env = format!("NOTIFY_SOCKET={}", n.addr);
    let cfg_s = cfg.display().to_string();
    let k = lan.start(0, "vrrp", "env", &[&env, BIN, "--config", &cfg_s]);
    let ready = n
        .wait_for("READY=1", WAIT)
        .unwrap_or_else(|| panic!("no READY=1: {:?}\n{}", n.seen, lan.log(k)));
    assert!(
        ready.contains("STATUS=1 VRRP instance(s) running"),
        "{ready}"
    );
    // At READY=1 the instance is in the protocol (BACKUP, its master-down
    // timer running), not still in INIT.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lan.ns(0),
            BIN,
            "status",
            "--config",
            &cfg_s,
        ])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("\"state\": \"BACKUP\""), "{status}");
    assert_eq!(lan.term(k), Some(0), "{}", lan.log(k));
    assert!(
        n.wait_for("STOPPING=1", WAIT).is_some(),
        "no STOPPING=1: {:?}\n{}",
        n.seen,
        lan.log(k)
    );
}

#[test]
fn no_ready_when_an_instance_cannot_start() {
    let t = "no_ready_when_an_instance_cannot_start";
    if !can_run(t) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("rf", 1);
    // An interface that does not exist: the instance fails before the
    // protocol starts; systemd must see a failed start, not READY=1.
    let body = syncd_toml(3, 100, &lan.vip(), 1.0, "").replace("\"eth0\"", "\"nope0\"");
    let cfg = lan.syncd_config(0, &body);
    let mut n = NotifySocket::path(&lan.path("notify.sock"));
    let env = format!("NOTIFY_SOCKET={}", n.addr);
    let cfg_s = cfg.display().to_string();
    let k = lan.start(0, "vrrp", "env", &[&env, BIN, "--config", &cfg_s]);
    assert!(
        wait_for(WAIT, || lan.log(k).contains("nope0")).is_some(),
        "{}",
        lan.log(k)
    );
    assert!(
        n.wait_for("READY=1", Duration::from_millis(500)).is_none(),
        "READY=1 from a daemon whose instance failed: {:?}",
        n.seen
    );
}
