//! Mixed pairs with Debian's keepalived (needs root and keepalived; skips visibly otherwise).

mod common;

use std::time::Duration;

use common::*;

/// One syncd node and one keepalived node; the higher priority must win, and
/// the VIP must fail over both ways (kill -9 of the master, then its return).
fn mixed(version: u8, syncd_is_higher: bool, test: &str) {
    if !can_run(test) || !have("keepalived", test) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new(if version == 2 { "k2" } else { "k3" }, 2);
    let vip = lan.vip();
    // node 0 runs the higher priority, node 1 the lower
    let (syncd_node, ka_node) = if syncd_is_higher { (0, 1) } else { (1, 0) };
    let (scfg, kconf) = mixed_configs(&lan, version, syncd_is_higher, &vip);
    let mut ps = lan.start_syncd(syncd_node, &scfg);
    let mut pk = lan.start_keepalived(ka_node, &kconf);
    assert_node0_holds(&lan, 3, "higher priority node 0 must win");
    let slog = lan.log(ps);
    assert!(
        !slog.contains("version_mismatch") && !slog.contains("bad_checksum"),
        "{slog}"
    );

    // kill -9 the master; the lower-priority node takes over
    let master = if syncd_is_higher { ps } else { pk };
    let peer = if syncd_is_higher {
        "keepalived"
    } else {
        "syncd"
    };
    let took = crash_master(&mut lan, master, &vip);
    eprintln!("v{version} failover to {peer}: {took:?}");

    // the master returns and preempts
    if syncd_is_higher {
        ps = lan.start_syncd(0, &scfg);
    } else {
        pk = lan.start_keepalived(0, &kconf);
    }
    assert_node0_holds(&lan, 2, "returning higher-priority node must preempt");
    let master = if syncd_is_higher { ps } else { pk };
    // node 1 (the lower priority) runs on throughout
    let peer = if syncd_is_higher {
        Peer::Keepalived(pk)
    } else {
        Peer::Syncd(ps)
    };
    assert_planned_switchover(&mut lan, master, peer, &vip);
}

/// The syncd config path and the keepalived.conf text: priority 150 for
/// node 0, 100 for node 1; v2 pairs share a PASS password.
fn mixed_configs(
    lan: &Lan,
    version: u8,
    syncd_is_higher: bool,
    vip: &str,
) -> (std::path::PathBuf, String) {
    let (hi, lo) = (150u8, 100u8);
    let (syncd_prio, ka_prio) = if syncd_is_higher { (hi, lo) } else { (lo, hi) };
    let syncd_node = if syncd_is_higher { 0 } else { 1 };
    let (s_extra, k_extra) = if version == 2 {
        (
            "auth_pass = \"pa55\"",
            "  authentication {\n    auth_type PASS\n    auth_pass pa55\n  }",
        )
    } else {
        ("", "")
    };
    let scfg = lan.syncd_config(
        syncd_node,
        &syncd_toml(version, syncd_prio, vip, 1.0, s_extra),
    );
    (scfg, keepalived_conf(version, ka_prio, vip, 1.0, k_extra))
}

/// Node 0 ends up the only holder, and is still after `settle` seconds.
fn assert_node0_holds(lan: &Lan, settle: u64, why: &str) {
    assert!(
        wait_for(Duration::from_secs(20), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "{why}; holders {:?}",
        lan.holders(&[0, 1])
    );
    std::thread::sleep(Duration::from_secs(settle));
    assert_eq!(lan.holders(&[0, 1]), vec![0], "exactly one holder, stable");
}

/// kill -9 of node 0 (the master): node 1 (priority `lo`) takes the VIP.
fn crash_master(lan: &mut Lan, master: usize, vip: &str) -> Option<Duration> {
    lan.kill9(master);
    let took = wait_for(Duration::from_secs(30), || lan.has_addr(1, vip));
    assert!(
        took.is_some(),
        "backup (node 1) did not take over after kill -9 of node 0"
    );
    // a crashed node keeps its address configured; a reboot would clear it
    let _ = std::process::Command::new("ip")
        .args([
            "-n",
            lan.ns(0),
            "addr",
            "del",
            &format!("{vip}/24"),
            "dev",
            "eth0",
        ])
        .status();
    took
}

/// The process on node 1, the lower priority.
enum Peer {
    Syncd(usize),
    Keepalived(usize),
}

/// Planned switchover back: SIGTERM the master (priority 0); the peer takes
/// over by that rule (after Skew_Time), which its log shows: a crash would
/// leave it to Master_Down_Interval instead.
fn assert_planned_switchover(lan: &mut Lan, master: usize, peer: Peer, vip: &str) {
    lan.term(master);
    assert!(
        wait_for(Duration::from_secs(10), || lan.has_addr(1, vip)).is_some(),
        "the peer never took the VIP after SIGTERM"
    );
    match peer {
        Peer::Syncd(k) => assert_eq!(
            takeovers_on_release(lan, k, 0),
            1,
            "priority-0 release not honoured: {}",
            lan.log(k)
        ),
        Peer::Keepalived(k) => assert!(
            lan.log(k)
                .contains("(VI_1) Backup received priority 0 advertisement"),
            "keepalived did not hear the priority-0 release: {}",
            lan.log(k)
        ),
    }
}

#[test]
fn interop_v2_keepalived_master_syncd_backup() {
    mixed(2, false, "interop_v2_keepalived_master_syncd_backup");
}

#[test]
fn interop_v2_syncd_master_keepalived_backup() {
    mixed(2, true, "interop_v2_syncd_master_keepalived_backup");
}

#[test]
fn interop_v3_keepalived_master_syncd_backup() {
    mixed(3, false, "interop_v3_keepalived_master_syncd_backup");
}

#[test]
fn interop_v3_syncd_master_keepalived_backup() {
    mixed(3, true, "interop_v3_syncd_master_keepalived_backup");
}

/// IPv6: keepalived (higher priority) and syncd, VRRPv3 over ff02::12.
#[test]
fn interop_v3_ipv6() {
    let test = "interop_v3_ipv6";
    if !can_run(test) || !have("keepalived", test) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("k6", 2);
    let vip = lan.vip6();
    let syncd = format!(
        "[[vrrp]]\nname = \"VI_6\"\ninterface = \"eth0\"\nvrid = 61\npriority = 100\nadvert_int = 1\nversion = 3\nvirtual_ips = [\"{vip}/64\"]\n"
    );
    let ka = format!(
        "global_defs {{\n  router_id k6\n}}\nvrrp_instance VI_6 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 61\n  priority 150\n  advert_int 1\n  version 3\n  virtual_ipaddress {{\n    {vip}/64\n  }}\n}}\n"
    );
    let scfg = lan.syncd_config(1, &syncd);
    let ps = lan.start_syncd(1, &scfg);
    let pk = lan.start_keepalived(0, &ka);
    let holders = |lan: &Lan| {
        (0..2)
            .filter(|&i| lan.has_addr(i, &vip))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(Duration::from_secs(20), || holders(&lan) == vec![0]).is_some(),
        "keepalived (150) must win over IPv6; holders {:?}",
        holders(&lan)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holders(&lan), vec![0]);
    assert!(
        !lan.log(ps).contains("-> MASTER"),
        "syncd must stay backup:\n{}",
        lan.log(ps)
    );
    lan.kill9(pk);
    assert!(
        wait_for(Duration::from_secs(30), || lan.has_addr(1, &vip)).is_some(),
        "syncd must take over the IPv6 VIP"
    );
}
