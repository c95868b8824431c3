//! `syncd --role auto` on two nodes in network namespaces: the service
//! address and the replication direction move together, the returning node
//! does not take the address back before it has caught up, and no written
//! file is lost. Needs root (skips visibly otherwise).

#[path = "../crates/vrrp/tests/common/mod.rs"]
mod netns;

#[path = "common/auto.rs"]
mod auto;

use std::time::Duration;

use auto::{bootstrap, nodes, same, start_auto, start_role, status, syncd, wait_led_by};
use netns::{can_run, mdi, serial, takeovers_on_release, wait_for, Lan};

#[test]
fn the_pair_fails_over_and_back_without_losing_a_file() {
    let name = "the_pair_fails_over_and_back_without_losing_a_file";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("pair", 2);
    let vip = lan.vip();
    let n = nodes(&lan);

    // Bootstrap as an existing primary/standby pair would be: one resync.
    std::fs::write(n[0].export().join("seed.txt"), b"seed").unwrap();
    bootstrap(&mut lan, &n);

    // Both in auto: the higher priority leads, the other follows.
    let a0 = start_auto(&mut lan, &n, 0);
    let a1 = start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);
    let s0 = status(&lan, &n, 0);
    assert!(s0.contains("pair role: leader"), "{s0}");
    for i in 0..20 {
        std::fs::write(
            n[0].export().join(format!("a{i}.txt")),
            format!("from node 0 #{i}"),
        )
        .unwrap();
    }
    let synced = wait_for(Duration::from_secs(20), || {
        (0..20).all(|i| same(&n[0].export(), &n[1].export(), &format!("a{i}.txt")))
    });
    if synced.is_none() {
        lan.dump_logs();
    }
    assert!(synced.is_some(), "the leader's writes reach the follower");
    let s1 = status(&lan, &n, 1);
    assert!(s1.contains("pair role: follower"), "{s1}");

    // Node 0 dies (process and host): node 1 takes the address and leads.
    lan.kill9(a0);
    lan.port_state(0, 0);
    let took = wait_for(mdi(100, 1.0) + Duration::from_secs(3), || {
        lan.has_addr(1, &vip)
    });
    if took.is_none() {
        lan.dump_logs();
    }
    let took = took.expect("node 1 never took the address");
    eprintln!("failover after a host death: {took:?}");
    assert!(
        wait_for(Duration::from_secs(5), || status(&lan, &n, 1)
            .contains("pair role: leader"))
        .is_some(),
        "node 1 must lead: {}",
        status(&lan, &n, 1)
    );
    // written on node 1 during the outage; and a file node 0 never sent
    for i in 0..10 {
        std::fs::write(
            n[1].export().join(format!("b{i}.txt")),
            format!("from node 1 #{i}"),
        )
        .unwrap();
    }
    std::fs::write(
        n[0].export().join("unacked.txt"),
        b"written on node 0 after it was cut off",
    )
    .unwrap();

    // Node 0 returns with the higher priority: it must not take the address
    // before it has caught up, and nothing of node 1's is lost.
    lan.port_state(0, 3);
    let a0b = start_auto(&mut lan, &n, 0);
    let caught = wait_for(Duration::from_secs(30), || {
        (0..10).all(|i| same(&n[1].export(), &n[0].export(), &format!("b{i}.txt")))
    });
    if caught.is_none() {
        lan.dump_logs();
    }
    assert!(caught.is_some(), "node 0 catches up with node 1's writes");
    // and, higher priority or not, it does not take the address back (the
    // leader keeps leading; no flapping): watched for longer than
    // Master_Down_Interval
    let t = std::time::Instant::now();
    while t.elapsed() < mdi(150, 1.0) + Duration::from_secs(1) {
        assert!(
            !lan.has_addr(0, &vip) && lan.has_addr(1, &vip),
            "the address must stay with node 1; holders {:?}",
            lan.holders(&[0, 1])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the write node 0 made while cut off is kept, not lost
    let (ok, list) = syncd(
        &lan,
        0,
        &[
            "conflicts",
            "list",
            "--config",
            n[0].config().to_str().unwrap(),
        ],
    );
    assert!(ok, "{list}");
    assert!(
        list.contains("unacked.txt"),
        "node 0's unacknowledged write must be kept:\n{list}"
    );
    // and every file written anywhere is on both nodes or in a conflicts area
    for i in 0..20 {
        assert!(
            n[1].export().join(format!("a{i}.txt")).exists(),
            "a{i} gone from node 1"
        );
    }
    for i in 0..10 {
        assert!(
            n[0].export().join(format!("b{i}.txt")).exists(),
            "b{i} gone from node 0"
        );
    }
    // The pair is whole again: node 0 hears node 1 and its data is current.
    assert!(
        wait_for(Duration::from_secs(15), || status(&lan, &n, 0)
            .contains("data: current"))
        .is_some(),
        "node 0 must hear node 1 and be current: {}",
        status(&lan, &n, 0)
    );
    // A planned switchover: SIGTERM the leader (node 1). It stops sending,
    // tells its peer, then resigns the address: node 0 leads after the skew
    // time, not after Master_Down_Interval, with node 1's last write.
    std::fs::write(
        n[1].export().join("last.txt"),
        b"written just before the switchover",
    )
    .unwrap();
    let code = lan.term(a1);
    assert_eq!(code, Some(0), "SIGTERM stops the node cleanly");
    let took = wait_for(Duration::from_secs(30), || lan.has_addr(0, &vip));
    if took.is_none() {
        lan.dump_logs();
    }
    let took = took.expect("node 0 never took the address after the switchover");
    eprintln!("switchover: {took:?}");
    // By the rule: node 1 resigned with priority 0 and node 0 took over on
    // hearing it, not after a crash's Master_Down_Interval.
    if takeovers_on_release(&lan, a0b, 1) != 1 {
        lan.dump_logs();
        panic!("a planned switchover must be a priority-0 release");
    }
    assert!(
        !lan.has_addr(1, &vip),
        "the stopped node released the address"
    );
    assert!(
        same(&n[1].export(), &n[0].export(), "last.txt"),
        "the last write made it across"
    );
    assert!(
        wait_for(Duration::from_secs(5), || status(&lan, &n, 0)
            .contains("pair role: leader"))
        .is_some(),
        "{}",
        status(&lan, &n, 0)
    );
    let _ = a0b;
    if std::env::var_os("PAIR_LOGS").is_some() {
        lan.dump_logs();
    }
}

/// A pair running the primary/standby units moves to `--role auto` without
/// a full resync: the live primary's generation is the standby's once it
/// caught up, so in auto both are current; the former primary leads, sends
/// no file again, and nothing lands in a conflicts area.
#[test]
fn a_primary_standby_pair_moves_to_auto_without_a_resync() {
    let name = "a_primary_standby_pair_moves_to_auto_without_a_resync";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("upg", 2);
    let n = nodes(&lan);
    for i in 0..300 {
        std::fs::write(n[0].export().join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    // As the old units ran them.
    let sb = start_role(&mut lan, &n, "standby", 1);
    let pr = start_role(&mut lan, &n, "primary", 0);
    let live = wait_for(Duration::from_secs(30), || {
        lan.log(pr).contains("in sync")
            && (0..300).all(|i| same(&n[0].export(), &n[1].export(), &format!("f{i}.txt")))
    });
    if live.is_none() {
        lan.dump_logs();
    }
    assert!(live.is_some(), "the primary/standby pair must be in sync");
    std::fs::write(n[0].export().join("late.txt"), b"written live").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || same(
            &n[0].export(),
            &n[1].export(),
            "late.txt"
        ))
        .is_some(),
        "a live write must arrive"
    );
    assert_eq!(lan.term(pr), Some(0));
    assert_eq!(lan.term(sb), Some(0));

    // The upgrade: both nodes restart as `--role auto` (same files, plus
    // the [[vrrp]] table the auto units need).
    start_auto(&mut lan, &n, 0);
    start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);
    assert!(
        wait_for(Duration::from_secs(15), || status(&lan, &n, 1)
            .contains("data: current"))
        .is_some(),
        "the former standby follows, current: {}",
        status(&lan, &n, 1)
    );
    std::fs::write(n[0].export().join("after.txt"), b"after the upgrade").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || same(
            &n[0].export(),
            &n[1].export(),
            "after.txt"
        ))
        .is_some(),
        "replication continues in auto"
    );
    // Only the new file travelled: the 301 replicated before were not sent
    // again. The counter moves at the standby's acknowledgement, which may
    // come after the file is already readable there: wait for the one send.
    let sent = || {
        let (ok, m) = syncd(
            &lan,
            0,
            &[
                "status",
                "--metrics",
                "--config",
                n[0].config().to_str().unwrap(),
            ],
        );
        assert!(ok, "{m}");
        let sent: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("syncd_files_sent_whole_total")
                    || l.starts_with("syncd_files_sent_delta_total")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (sent, m)
    };
    wait_for(Duration::from_secs(10), || sent().0 >= 1.0);
    let (sent, m) = sent();
    if sent != 1.0 {
        lan.dump_logs();
    }
    assert_eq!(sent, 1.0, "files sent after the upgrade:\n{m}");
    for (i, node) in n.iter().enumerate() {
        let (ok, list) = syncd(
            &lan,
            i,
            &[
                "conflicts",
                "list",
                "--config",
                node.config().to_str().unwrap(),
            ],
        );
        assert!(ok, "{list}");
        assert!(!list.contains(".txt"), "node {i} kept conflicts: {list}");
    }
}

/// Watches the address for `d`: never on both nodes. Returns the holders
/// seen last.
fn never_two(lan: &Lan, d: Duration, why: &str) -> Vec<usize> {
    let t = std::time::Instant::now();
    let mut last = lan.holders(&[0, 1]);
    while t.elapsed() < d {
        last = lan.holders(&[0, 1]);
        if last.len() > 1 {
            lan.dump_logs();
        }
        assert!(last.len() < 2, "{why}: both nodes hold the address");
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}

/// Cold starts in both orders, and with the second node late (after the
/// first's peer wait): never two holders, then exactly one, and it stays.
#[test]
fn cold_starts_in_either_order_elect_one_leader() {
    let name = "cold_starts_in_either_order_elect_one_leader";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("cold", 2);
    let n = nodes(&lan);
    bootstrap(&mut lan, &n);
    for (first, gap_ms) in [(0, 0), (1, 0), (0, 1000), (1, 1000), (1, 4000), (0, 4000)] {
        let a = start_auto(&mut lan, &n, first);
        never_two(
            &lan,
            Duration::from_millis(gap_ms),
            "before the second start",
        );
        let b = start_auto(&mut lan, &n, 1 - first);
        never_two(
            &lan,
            mdi(100, 1.0) + Duration::from_secs(4),
            "while electing",
        );
        // A loaded machine may take longer to finish the election: wait
        // for its end (still never two), rather than judge it at a time.
        let elected = wait_for(Duration::from_secs(30), || {
            let h = lan.holders(&[0, 1]);
            assert!(
                h.len() < 2,
                "node {first} first, {gap_ms} ms: two hold the address"
            );
            h.len() == 1
        });
        if elected.is_none() {
            lan.dump_logs();
        }
        let led = lan.holders(&[0, 1]);
        assert_eq!(led.len(), 1, "node {first} first, {gap_ms} ms: one leader");
        // The leader stays (no flapping) and replicates.
        let f = format!("cold-{first}-{gap_ms}.txt");
        std::fs::write(n[led[0]].export().join(&f), b"x").unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || same(
                &n[led[0]].export(),
                &n[1 - led[0]].export(),
                &f
            ))
            .is_some(),
            "node {first} first, {gap_ms} ms: the leader replicates"
        );
        assert_eq!(never_two(&lan, Duration::from_secs(1), "after"), led);
        eprintln!(
            "cold start: node {first} first, gap {gap_ms} ms: node {} leads",
            led[0]
        );
        // Stop both (the leader first, as a planned stop).
        let (lk, fk) = if led[0] == first { (a, b) } else { (b, a) };
        assert_eq!(lan.term(lk), Some(0));
        assert_eq!(lan.term(fk), Some(0));
    }
    // Every line of each node's role log is well formed and its changes
    // chain: each change starts from the state the previous one ended in.
    for (i, node) in n.iter().enumerate() {
        let state = syncd::config::Config::load(&node.config())
            .unwrap()
            .state_dir;
        let log = std::fs::read_to_string(state.join("role.log")).unwrap();
        assert!(log.lines().count() >= 6, "node {i}: {log}");
        let mut last_to: Option<String> = None;
        for line in log.lines() {
            // "<unix> <from> -> <to> (<gen>): <why>"
            let w: Vec<&str> = line.split_whitespace().collect();
            assert!(
                w.len() >= 5 && w[2] == "->",
                "node {i}: bad role.log line {line:?}"
            );
            if let Some(prev) = &last_to {
                // A new process starts after "stopped" from its own state.
                assert!(
                    w[1] == prev || prev == "stopped",
                    "node {i}: {line:?} does not follow {prev}"
                );
            }
            last_to = Some(w[3].to_string());
        }
    }
}

/// VRRP adverts blocked (multicast off on the bridge) while the replication
/// link works: keepalived's nodes would both take the address; here the
/// follower hears its peer lead over the pair's own heartbeat and is kept
/// from it.
#[test]
fn vrrp_blocked_with_the_peer_link_up_keeps_one_leader() {
    let name = "vrrp_blocked_with_the_peer_link_up_keeps_one_leader";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("vblk", 2);
    let n = nodes(&lan);
    bootstrap(&mut lan, &n);
    start_auto(&mut lan, &n, 0);
    let f1 = start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);
    lan.block_multicast(2);
    let held = never_two(
        &lan,
        mdi(100, 1.0) + Duration::from_secs(4),
        "VRRP blocked, peer link up",
    );
    assert_eq!(held, vec![0], "the leader keeps the address");
    // It did try (its VRRP heard no master) and was refused by its peer.
    assert!(
        lan.log(f1)
            .contains("the peer did not consent to our leading"),
        "{}",
        lan.log(f1)
    );
    std::fs::write(n[0].export().join("while-blocked.txt"), b"x").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || same(
            &n[0].export(),
            &n[1].export(),
            "while-blocked.txt"
        ))
        .is_some(),
        "replication goes on"
    );
}

/// Runs `syncd demo --failover` (with `env`) and checks its story: ended
/// well, nothing gone, the failover and the return told, at least
/// `min_written` writes, no namespace left. Returns its output.
fn run_failover_demo(env: &[(&str, &str)], min_written: u64) -> String {
    let d = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_syncd"))
        .args(["demo", "--failover", "--dir"])
        .arg(d.path())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo's namespaces carry its pid (others may run a demo too).
    let mine = format!("sdemo{}", child.id());
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("  gone: 0\n"), "{out}");
    assert!(out.contains("node 1 holds the address"), "{out}");
    assert!(out.contains("node 0 caught up and follows"), "{out}");
    let written: u64 = out
        .split("the client was told ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(written >= min_written, "{out}");
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(
        !ns.lines().any(|l| l
            .strip_prefix(&mine)
            .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_digit()))),
        "the demo left namespaces behind: {ns}"
    );
    out
}

/// `syncd demo --failover` runs its story to the end with nothing lost, and
/// leaves no namespace behind (plain writes into the exports, forced).
#[test]
fn the_failover_demo_loses_nothing_and_cleans_up() {
    let name = "the_failover_demo_loses_nothing_and_cleans_up";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let out = run_failover_demo(&[("SYNCD_DEMO_PLAIN", "1")], 100);
    assert!(out.contains("client: plain writes"), "{out}");
}

/// With nfs-ganesha and libnfs's tools installed, the demo's client writes
/// through the service address with NFS, and nothing it was told was
/// written is gone.
#[test]
fn the_failover_demo_writes_through_ganesha_when_installed() {
    let name = "the_failover_demo_writes_through_ganesha_when_installed";
    if !can_run(name) {
        return;
    }
    for tool in ["ganesha.nfsd", "rpcbind", "nfs-cp", "unshare"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            syncd_testkit::skip::skip(name, &format!("`{tool}` is not installed"));
            return;
        }
    }
    let _g = serial();
    let out = run_failover_demo(&[], 50);
    assert!(out.contains("client: NFSv4 through"), "{out}");
    assert!(out.contains("writes through NFS failed for"), "{out}");
}
