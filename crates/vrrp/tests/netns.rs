//! Two syncd-vrrp nodes in network namespaces (needs root; skips visibly otherwise).

mod common;

use std::time::Duration;

use common::*;

const MARGIN: Duration = Duration::from_millis(1500);

/// Election, kill -9 failover with gratuitous ARP seen by a third namespace, and preemption back.
#[test]
fn elect_failover_garp_and_preempt() {
    if !can_run("elect_failover_garp_and_preempt")
        || !have("tcpdump", "elect_failover_garp_and_preempt")
    {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("el", 3);
    let vip = lan.vip();
    let a = lan.syncd_config(0, &syncd_toml(3, 150, &vip, 1.0, ""));
    let b = lan.syncd_config(1, &syncd_toml(3, 100, &vip, 1.0, ""));
    let pa = lan.start_syncd(0, &a);
    let pb = lan.start_syncd(1, &b);
    assert!(
        wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "node 0 (150) must win"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lan.holders(&[0, 1]), vec![0], "exactly one holder");
    assert_master_and_counting_backup(&lan, &a, &b);

    let cap = lan.start_capture(2, "arp");
    lan.kill9(pa);
    let took = wait_for(Duration::from_secs(30), || lan.has_addr(1, &vip))
        .expect("backup never took the VIP");
    eprintln!("failover after kill -9: {took:?}");
    // By the rule: Master_Down_Interval without adverts from the master.
    assert_eq!(takeovers_on_silence(&lan, pb, 0), 1, "{}", lan.log(pb));
    assert_garp_burst(&lan, cap, &vip);

    // the old master comes back (its stale VIP is cleaned at start) and preempts
    let _pa2 = lan.start_syncd(0, &a);
    assert!(
        wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "returning higher-priority node must preempt; holders {:?}",
        lan.holders(&[0, 1])
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lan.holders(&[0, 1]), vec![0]);
}

/// `status` on node 0 says MASTER; `status --metrics` on node 1 says BACKUP
/// and counts the adverts it hears.
fn assert_master_and_counting_backup(lan: &Lan, a: &std::path::Path, b: &std::path::Path) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", lan.ns(0), BIN, "status", "--config"])
        .arg(a)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("\"state\": \"MASTER\""), "{status}");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lan.ns(1),
            BIN,
            "status",
            "--metrics",
            "--config",
        ])
        .arg(b)
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(
        metrics.contains("vrrp_state{instance=\"VI_1\",vrid=\"51\",state=\"BACKUP\"} 1"),
        "{metrics}"
    );
    let received: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vrrp_adverts_received_total{instance=\"VI_1\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        received >= 2,
        "backup must count received adverts:\n{metrics}"
    );
}

/// Node 1's takeover is announced: a burst of gratuitous ARPs for the VIP
/// from its MAC, seen from node 2.
fn assert_garp_burst(lan: &Lan, cap: usize, vip: &str) {
    let mac_b = lan.mac(1);
    let seen = wait_for(Duration::from_secs(5), || {
        lan.log(cap)
            .lines()
            .any(|l| l.contains(&mac_b) && l.contains(&format!("tell {vip}")))
    });
    assert!(
        seen.is_some(),
        "no gratuitous ARP from {mac_b} for {vip}:\n{}",
        lan.log(cap)
    );
    let garps = lan
        .log(cap)
        .lines()
        .filter(|l| l.contains(&mac_b) && l.contains(&format!("tell {vip}")))
        .count();
    assert!(
        garps >= 5,
        "expected a burst of 5 gratuitous ARPs, saw {garps}"
    );
}

/// nopreempt: the returning higher-priority node stays backup.
#[test]
fn nopreempt_returning_node_stays_backup() {
    if !can_run("nopreempt_returning_node_stays_backup") {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("np", 2);
    let vip = lan.vip();
    let a = lan.syncd_config(0, &syncd_toml(3, 150, &vip, 1.0, "nopreempt = true"));
    let b = lan.syncd_config(1, &syncd_toml(3, 100, &vip, 1.0, "nopreempt = true"));
    let pa = lan.start_syncd(0, &a);
    let _pb = lan.start_syncd(1, &b);
    assert!(wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some());
    lan.kill9(pa);
    assert!(wait_for(mdi(100, 1.0) + MARGIN, || lan.has_addr(1, &vip)).is_some());
    let pa2 = lan.start_syncd(0, &a);
    std::thread::sleep(mdi(150, 1.0) + Duration::from_secs(3));
    assert_eq!(
        lan.holders(&[0, 1]),
        vec![1],
        "nopreempt: node 0 must not take the VIP back"
    );
    assert!(lan.log(pa2).contains("INIT -> BACKUP"));
    assert!(!lan.log(pa2).contains("-> MASTER"));
    // kill -9 left node 0's address on its interface; the restart removed it.
    assert!(
        lan.log(pa2).contains("removed a stale virtual address"),
        "{}",
        lan.log(pa2)
    );
}

/// Planned switchover: SIGTERM sends priority 0; the backup takes over after Skew_Time.
#[test]
fn sigterm_releases_with_priority_zero() {
    if !can_run("sigterm_releases_with_priority_zero") {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("st", 2);
    let vip = lan.vip();
    let hooks = lan.path("hooks.log");
    let a = lan.syncd_config(
        0,
        &syncd_toml(
            3,
            150,
            &vip,
            1.0,
            &format!(
                "notify = \"echo >> {0}\"\nnotify_master = \"echo master-hook >> {0}\"",
                hooks.display()
            ),
        ),
    );
    let b = lan.syncd_config(1, &syncd_toml(3, 100, &vip, 1.0, ""));
    let pa = lan.start_syncd(0, &a);
    let pb = lan.start_syncd(1, &b);
    assert!(wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some());
    let code = lan.term(pa);
    assert_eq!(code, Some(0), "clean exit on SIGTERM");
    assert!(!lan.has_addr(0, &vip), "VIP released on SIGTERM");
    let took = wait_for(Duration::from_secs(10), || lan.has_addr(1, &vip));
    let took = took.expect("backup never took over");
    eprintln!("planned switchover: {took:?}");
    // By the rule, not a timing window: the backup took over because it
    // heard the release (its down timer cut to Skew_Time), not because
    // Master_Down_Interval passed without adverts, as after a crash.
    assert_eq!(
        takeovers_on_release(&lan, pb, 0),
        1,
        "priority 0 not honoured: {}",
        lan.log(pb)
    );
    assert!(lan.log(pa).contains("shutdown: sent priority 0"));
    let h = std::fs::read_to_string(&hooks).unwrap_or_default();
    assert!(h.contains("INSTANCE VI_1 BACKUP 150"), "{h}");
    assert!(h.contains("INSTANCE VI_1 MASTER 150"), "{h}");
    assert!(h.contains("master-hook"), "{h}");
    assert!(h.contains("INSTANCE VI_1 STOP 150"), "{h}");
}

/// A failing track script (weight -60) moves the VIP; recovery moves it back.
#[test]
fn failing_track_script_moves_vip() {
    if !can_run("failing_track_script_moves_vip") {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("tr", 2);
    let vip = lan.vip();
    let flag = lan.path("down");
    let track = format!(
        "[[vrrp.track]]\nname = \"chk\"\nscript = \"test ! -e {}\"\ninterval = 0.2\nweight = -60\nfall = 2\nrise = 2\n",
        flag.display()
    );
    let a = lan.syncd_config(0, &syncd_toml(3, 150, &vip, 1.0, &track));
    let b = lan.syncd_config(1, &syncd_toml(3, 100, &vip, 1.0, ""));
    let pa = lan.start_syncd(0, &a);
    let _pb = lan.start_syncd(1, &b);
    assert!(wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some());
    std::fs::write(&flag, "").unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![1]).is_some(),
        "failed check (150-60=90 < 100) must move the VIP; holders {:?}",
        lan.holders(&[0, 1])
    );
    assert!(lan.log(pa).contains("higher priority master"));
    std::fs::remove_file(&flag).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "recovered node preempts back"
    );
}

/// Carrier loss on the master's interface → FAULT, and the backup takes over.
#[test]
fn link_down_is_fault() {
    if !can_run("link_down_is_fault") {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("lf", 2);
    let vip = lan.vip();
    let a = lan.syncd_config(0, &syncd_toml(2, 150, &vip, 1.0, "auth_pass = \"s3cret\""));
    let b = lan.syncd_config(1, &syncd_toml(2, 100, &vip, 1.0, "auth_pass = \"s3cret\""));
    let pa = lan.start_syncd(0, &a);
    let _pb = lan.start_syncd(1, &b);
    assert!(wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some());
    lan.port_link(0, false);
    assert!(
        wait_for(Duration::from_secs(10), || lan.log(pa).contains("-> FAULT")).is_some(),
        "no FAULT on carrier loss"
    );
    assert!(wait_for(mdi(100, 1.0) + MARGIN, || lan.has_addr(1, &vip)).is_some());
    assert!(!lan.has_addr(0, &vip), "a faulty node releases the VIP");
    lan.port_link(0, true);
    assert!(
        wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "back from FAULT, preempts"
    );
}

/// Unicast peers work when the bridge does not forward multicast, where multicast mode splits.
#[test]
fn unicast_works_with_multicast_blocked() {
    if !can_run("unicast_works_with_multicast_blocked")
        || !have("tcpdump", "unicast_works_with_multicast_blocked")
    {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("uc", 3);
    lan.block_multicast(3);
    let vip = lan.vip();
    // control: multicast mode cannot see each other → both become master
    let a = lan.syncd_config(0, &syncd_toml(3, 150, &vip, 1.0, ""));
    let b = lan.syncd_config(1, &syncd_toml(3, 100, &vip, 1.0, ""));
    let pa = lan.start_syncd(0, &a);
    let pb = lan.start_syncd(1, &b);
    assert!(
        wait_for(Duration::from_secs(15), || lan.holders(&[0, 1])
            == vec![0, 1])
        .is_some(),
        "control failed: multicast is not blocked"
    );
    lan.term(pa);
    lan.term(pb);
    // Captured on the sender itself: the bridge drops multicast, so a
    // capture elsewhere could not see any even if it were sent.
    let cap = lan.start_capture(0, "ip proto 112");
    let ua = lan.syncd_config(
        0,
        &syncd_toml(
            3,
            150,
            &vip,
            1.0,
            &format!(
                "unicast_src = \"{}\"\nunicast_peers = [\"{}\"]",
                lan.ip(0),
                lan.ip(1)
            ),
        ),
    );
    let ub = lan.syncd_config(
        1,
        &syncd_toml(
            3,
            100,
            &vip,
            1.0,
            &format!(
                "unicast_src = \"{}\"\nunicast_peers = [\"{}\"]",
                lan.ip(1),
                lan.ip(0)
            ),
        ),
    );
    let pa = lan.start_syncd(0, &ua);
    let _pb = lan.start_syncd(1, &ub);
    assert!(wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lan.holders(&[0, 1]), vec![0], "unicast: exactly one master");
    lan.kill9(pa);
    assert!(
        wait_for(mdi(100, 1.0) + MARGIN, || lan.has_addr(1, &vip)).is_some(),
        "unicast failover"
    );
    let seen = lan.log(cap);
    assert!(
        seen.contains(&format!("{} > {}", lan.ip(0), lan.ip(1))),
        "the capture saw no unicast advert from node 0:\n{seen}"
    );
    assert!(
        !seen.contains("224.0.0.18"),
        "unicast mode sent multicast:\n{seen}"
    );
}

/// A silent partition (bridge port disabled) makes a split brain; when it heals,
/// exactly one master remains and it re-announces.
#[test]
fn split_brain_heals() {
    if !can_run("split_brain_heals") {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("sb", 2);
    let vip = lan.vip();
    let a = lan.syncd_config(
        0,
        &syncd_toml(3, 150, &vip, 1.0, &format!("mcast_src = \"{}\"", lan.ip(0))),
    );
    let b = lan.syncd_config(1, &syncd_toml(3, 100, &vip, 1.0, ""));
    let _pa = lan.start_syncd(0, &a);
    let pb = lan.start_syncd(1, &b);
    assert!(wait_for(Duration::from_secs(15), || lan.holders(&[0, 1]) == vec![0]).is_some());
    lan.port_state(0, 0);
    assert!(
        wait_for(Duration::from_secs(10), || lan.holders(&[0, 1])
            == vec![0, 1])
        .is_some(),
        "partition → split brain"
    );
    lan.port_state(0, 3);
    assert!(
        wait_for(Duration::from_secs(10), || lan.holders(&[0, 1]) == vec![0]).is_some(),
        "healed → one master"
    );
    // the lower priority, master during the partition, hears the other
    // again and steps down (not merely loses the address)
    let log = lan.log(pb);
    assert!(
        log.matches("BACKUP -> MASTER").count() >= 1 && log.contains("MASTER -> BACKUP"),
        "node 1 must have led during the partition and stepped down at the heal:\n{log}"
    );
}

/// IPv6 (VRRPv3 over ff02::12): election, kill -9 failover, unsolicited NA seen by a third namespace.
#[test]
fn ipv6_failover_and_unsolicited_na() {
    if !can_run("ipv6_failover_and_unsolicited_na")
        || !have("tcpdump", "ipv6_failover_and_unsolicited_na")
    {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("v6", 3);
    let vip = lan.vip6();
    let cfg = |prio: u8| {
        format!(
            "[[vrrp]]\nname = \"VI_6\"\ninterface = \"eth0\"\nvrid = 61\npriority = {prio}\nadvert_int = 0.5\nversion = 3\nvirtual_ips = [\"{vip}/64\"]\n"
        )
    };
    let a = lan.syncd_config(0, &cfg(150));
    let b = lan.syncd_config(1, &cfg(100));
    // n0 starts while its link-local address is still in DAD (links came up just now):
    // the daemon must wait for DAD rather than fail its first adverts and NAs.
    let pa = lan.start_syncd(0, &a);
    assert!(
        wait_for(Duration::from_secs(15), || lan
            .log(pa)
            .contains("INIT -> BACKUP"))
        .is_some(),
        "n0 never started"
    );
    // n1 starts after n0 and has the longer master-down timer, so it must stay backup.
    assert!(
        wait_for(Duration::from_secs(15), || lan.dad_done(1)).is_some(),
        "n1 DAD never finished"
    );
    let pb = lan.start_syncd(1, &b);
    let holders = |lan: &Lan| {
        (0..2)
            .filter(|&i| lan.has_addr(i, &vip))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(Duration::from_secs(15), || holders(&lan) == vec![0]).is_some(),
        "v6 election"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(holders(&lan), vec![0]);
    assert!(lan.log(pb).contains("INIT -> BACKUP") && !lan.log(pb).contains("-> MASTER"));
    assert!(
        !lan.log(pa).contains("advert send failed") && !lan.log(pa).contains("ARP/NA failed"),
        "n0 sent from a tentative address:\n{}",
        lan.log(pa)
    );
    let cap = lan.start_capture(2, "icmp6 and ip6[40] == 136");
    lan.kill9(pa);
    assert!(
        wait_for(mdi(100, 0.5) + MARGIN, || lan.has_addr(1, &vip)).is_some(),
        "v6 failover"
    );
    let seen = wait_for(Duration::from_secs(5), || {
        lan.log(cap).contains(&format!("tgt is {vip}"))
    });
    assert!(
        seen.is_some(),
        "no unsolicited NA for {vip}:\n{}",
        lan.log(cap)
    );
}
