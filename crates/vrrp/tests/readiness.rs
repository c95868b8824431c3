//! `Type=notify` readiness of `syncd vrrp`: READY=1 once every instance runs
//! the protocol, STOPPING=1 at SIGTERM; SIGHUP, SIGUSR1, SIGUSR2 stop nothing. Needs root
//! for a network namespace (skips visibly otherwise).

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

/// SIGHUP (keepalived's reload signal) and SIGUSR1/SIGUSR2 (its dumps),
/// sent by a keepalived user's habit, used to end `syncd vrrp` with their
/// default action, leaving the master's address on the interface. Now
/// SIGHUP checks the file again and names what changed, the user signals
/// log the status and the counters; the instance keeps running, still
/// master.
#[test]
fn keepalived_signals_check_or_dump_and_the_master_stays() {
    let t = "keepalived_signals_check_or_dump_and_the_master_stays";
    if !can_run(t) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("hu", 1);
    let body = syncd_toml(3, 100, &lan.vip(), 0.1, "");
    let cfg = lan.syncd_config(0, &body);
    let k = lan.start_syncd(0, &cfg);
    let vip = lan.vip();
    assert!(
        wait_for(WAIT, || lan.has_addr(0, &vip)).is_some(),
        "never master: {}",
        lan.log(k)
    );
    // SIGHUP, then the daemon's answer: its `n`th "SIGHUP:" line.
    let hup = |lan: &Lan, n: usize| {
        lan.signal(k, libc::SIGHUP);
        let line = || {
            lan.log(k)
                .lines()
                .filter(|l| l.contains("SIGHUP:"))
                .nth(n)
                .map(str::to_string)
        };
        assert!(
            wait_for(WAIT, || line().is_some()).is_some(),
            "{}",
            lan.log(k)
        );
        line().unwrap_or_default()
    };
    let l = hup(&lan, 0);
    assert!(l.contains("valid, unchanged since the start"), "{l}");
    std::fs::write(&cfg, body.replace("priority = 100", "priority = 150")).unwrap();
    let l = hup(&lan, 1);
    assert!(
        l.contains("changed since the start: vrrp.") && l.contains("restart it"),
        "{l}"
    );
    std::fs::write(&cfg, body.replace("vrid = 51", "vrid = 0")).unwrap();
    let l = hup(&lan, 2);
    assert!(l.contains("does not load"), "{l}");

    // keepalived's dumps: the status (SIGUSR1) and counters (SIGUSR2) logged.
    lan.signal(k, libc::SIGUSR1);
    lan.signal(k, libc::SIGUSR2);
    assert!(
        wait_for(WAIT, || {
            let log = lan.log(k);
            log.contains("SIGUSR1: status:") && log.contains("SIGUSR2: counters:")
        })
        .is_some(),
        "{}",
        lan.log(k)
    );
    assert!(
        lan.log(k).contains("\"state\": \"MASTER\""),
        "{}",
        lan.log(k)
    );

    assert!(lan.running(k), "{}", lan.log(k));
    assert!(lan.has_addr(0, &vip), "{}", lan.log(k));
    assert!(!lan.log(k).contains("MASTER -> "), "{}", lan.log(k));
    assert_eq!(lan.term(k), Some(0), "{}", lan.log(k));
    assert!(!lan.has_addr(0, &vip), "the address stayed after SIGTERM");
}
