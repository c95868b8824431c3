//! Mixed pairs with Debian's keepalived (needs root and keepalived; skips visibly otherwise).

mod common;

use std::time::Duration;

use common::*;

const MARGIN: Duration = Duration::from_millis(1500);

/// One syncd node and one keepalived node; the higher priority must win, and
/// the VIP must fail over both ways (kill -9 of the master, then its return).
fn mixed(version: u8, syncd_is_higher: bool, test: &str) {
    if !can_run(test) || !have("keepalived", test) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new(if version == 2 { "k2" } else { "k3" }, 2);
    let vip = lan.vip();
    let (hi, lo) = (150u8, 100u8);
    let (syncd_prio, ka_prio) = if syncd_is_higher { (hi, lo) } else { (lo, hi) };
    // node 0 runs the higher priority, node 1 the lower
    let (syncd_node, ka_node) = if syncd_is_higher { (0, 1) } else { (1, 0) };
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
        &syncd_toml(version, syncd_prio, &vip, 1.0, s_extra),
    );
    let kconf = keepalived_conf(version, ka_prio, &vip, 1.0, k_extra);
    let mut ps = lan.start_syncd(syncd_node, &scfg);
    let mut pk = lan.start_keepalived(ka_node, &kconf);

    assert!(
        wait_for(Duration::from_secs(20), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "higher priority node 0 must win; holders {:?}",
        lan.holders(&[0, 1])
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lan.holders(&[0, 1]), vec![0], "exactly one holder, stable");
    let slog = lan.log(ps);
    assert!(
        !slog.contains("version_mismatch") && !slog.contains("bad_checksum"),
        "{slog}"
    );

    // kill -9 the master; the lower-priority node takes over
    let master = if syncd_is_higher { ps } else { pk };
    lan.kill9(master);
    let took = wait_for(mdi(lo, 1.0) + MARGIN + Duration::from_secs(1), || {
        lan.has_addr(1, &vip)
    });
    assert!(
        took.is_some(),
        "backup (node 1) did not take over after kill -9 of node 0"
    );
    eprintln!(
        "v{version} failover to {}: {took:?}",
        if syncd_is_higher {
            "keepalived"
        } else {
            "syncd"
        }
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

    // the master returns and preempts
    if syncd_is_higher {
        ps = lan.start_syncd(0, &scfg);
    } else {
        pk = lan.start_keepalived(0, &kconf);
    }
    assert!(
        wait_for(Duration::from_secs(20), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "returning higher-priority node must preempt; holders {:?}",
        lan.holders(&[0, 1])
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lan.holders(&[0, 1]), vec![0]);

    // planned switchover back: SIGTERM the master (priority 0); the peer
    // must take over after Skew_Time, well before Master_Down_Interval (a
    // crash would take that long)
    let master = if syncd_is_higher { ps } else { pk };
    let start = std::time::Instant::now();
    lan.term(master);
    let took = wait_for(Duration::from_secs(10), || lan.has_addr(1, &vip))
        .map(|_| start.elapsed())
        .expect("the peer never took the VIP after SIGTERM");
    assert!(
        took < mdi(lo, 1.0),
        "priority-0 release not honoured: took {took:?}, as long as a crash"
    );
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
        wait_for(mdi(100, 1.0) + MARGIN + Duration::from_secs(1), || lan
            .has_addr(1, &vip))
        .is_some(),
        "syncd must take over the IPv6 VIP"
    );
}
