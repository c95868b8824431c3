//! A full silent partition of a `--role auto` pair with writes on both
//! sides, then the heal: both nodes lead their half (as keepalived would),
//! and when the partition heals the generation rule picks one tree — the
//! one whose generation has the higher counter, here the node promoted
//! during the partition — and the other node's writes from the partition
//! are in its conflicts area. Nothing written is gone. Needs root (skips
//! visibly otherwise).

#[path = "../crates/vrrp/tests/common/mod.rs"]
mod netns;

#[path = "common/auto.rs"]
mod auto;

use std::time::Duration;

use auto::{bootstrap, nodes, same, start_auto, status, syncd, wait_led_by};
use netns::{can_run, mdi, serial, wait_for, Lan};

#[test]
fn a_partition_with_writes_on_both_sides_heals_to_one_tree_and_keeps_the_rest() {
    let name = "a_partition_with_writes_on_both_sides_heals_to_one_tree_and_keeps_the_rest";
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("heal", 2);
    let vip = lan.vip();
    let n = nodes(&lan);
    std::fs::write(n[0].export().join("seed.txt"), b"seed").unwrap();
    bootstrap(&mut lan, &n);
    start_auto(&mut lan, &n, 0);
    start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);
    for i in 0..10 {
        std::fs::write(
            n[0].export().join(format!("before{i}.txt")),
            format!("before #{i}"),
        )
        .unwrap();
    }
    let synced = wait_for(Duration::from_secs(20), || {
        (0..10).all(|i| same(&n[0].export(), &n[1].export(), &format!("before{i}.txt")))
            && status(&lan, &n, 1).contains("data: current")
    });
    if synced.is_none() {
        lan.dump_logs();
    }
    assert!(
        synced.is_some(),
        "node 1 follows and is current before the partition"
    );

    // Silent partition: node 1's bridge port drops everything, both ways
    // (VRRP and the replication session). Node 0 keeps leading its half;
    // node 1, current and hearing nobody, leads its own.
    lan.port_state(1, 0);
    let both = wait_for(mdi(100, 1.0) + Duration::from_secs(5), || {
        lan.has_addr(1, &vip) && status(&lan, &n, 1).contains("pair role: leader")
    });
    if both.is_none() {
        lan.dump_logs();
    }
    assert!(
        both.is_some(),
        "node 1 leads its half: {}",
        status(&lan, &n, 1)
    );
    assert!(
        status(&lan, &n, 0).contains("pair role: leader"),
        "node 0 keeps leading its half: {}",
        status(&lan, &n, 0)
    );
    for i in 0..10 {
        std::fs::write(
            n[0].export().join(format!("x{i}.txt")),
            format!("node 0 cut off #{i}"),
        )
        .unwrap();
        std::fs::write(
            n[1].export().join(format!("y{i}.txt")),
            format!("node 1 cut off #{i}"),
        )
        .unwrap();
    }
    // Same name written on both sides: one version wins, the other is kept.
    // (Different sizes: both nodes share this machine's clock, so equal
    // sizes written within one timestamp tick would carry the same mtime
    // to the nanosecond — the compare's quick check, as rsync's, would take
    // them as one file. Two hosts' clocks do not produce equal mtimes.)
    std::fs::write(n[0].export().join("both.txt"), b"node 0's version").unwrap();
    std::fs::write(n[1].export().join("both.txt"), b"node 1's version, longer").unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // Heal. Node 1's generation has the higher counter (it was started
    // after node 0's): node 1's tree wins and node 1 ends up leading alone,
    // whatever the priorities; node 0 follows and keeps what it wrote.
    lan.port_state(1, 3);
    let healed = wait_for(Duration::from_secs(40), || {
        lan.holders(&[0, 1]) == vec![1]
            && status(&lan, &n, 0).contains("data: current")
            && (0..10).all(|i| same(&n[1].export(), &n[0].export(), &format!("y{i}.txt")))
    });
    if healed.is_none() {
        lan.dump_logs();
    }
    assert!(
        healed.is_some(),
        "after the heal node 1 alone leads and node 0 follows it: holders {:?}\n{}\n{}",
        lan.holders(&[0, 1]),
        status(&lan, &n, 0),
        status(&lan, &n, 1)
    );
    // The pair stays that way: no flapping for longer than
    // Master_Down_Interval.
    let t = std::time::Instant::now();
    while t.elapsed() < mdi(150, 1.0) + Duration::from_secs(1) {
        assert_eq!(lan.holders(&[0, 1]), vec![1], "one leader after the heal");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (ok, kept) = syncd(&lan, 0, &["conflicts", "list", "--config", &n[0].cfg()]);
    assert!(ok, "{kept}");
    let restored = lan.path("restored");
    std::fs::create_dir_all(&restored).unwrap();
    let mut gone = Vec::new();
    for i in 0..10 {
        let x = format!("x{i}.txt");
        // node 0's partition writes: not in the winning tree, kept on node 0
        if !kept.contains(&x) {
            gone.push(x.clone());
        }
        assert!(
            !n[1].export().join(&x).exists() && !n[0].export().join(&x).exists(),
            "{x}: the losing side's file is moved aside, not served"
        );
        let y = format!("y{i}.txt");
        if !same(&n[1].export(), &n[0].export(), &y) {
            gone.push(y);
        }
    }
    assert!(
        gone.is_empty(),
        "written during the partition and neither in the tree nor kept: {gone:?}\nkept:\n{kept}"
    );
    for i in 0..10 {
        assert!(
            same(&n[1].export(), &n[0].export(), &format!("before{i}.txt")),
            "before{i}: written before the partition, on both"
        );
    }
    assert_eq!(
        std::fs::read(n[0].export().join("both.txt")).unwrap(),
        b"node 1's version, longer",
        "the winning tree's version is served on both"
    );
    assert!(
        kept.contains("both.txt"),
        "the losing version is kept:\n{kept}"
    );
    // What was kept comes back on request, with its content.
    let entry = kept
        .lines()
        .find_map(|l| l.split('\t').next().filter(|e| e.ends_with("x3.txt")))
        .unwrap_or_else(|| panic!("x3 in {kept}"))
        .to_string();
    let out = restored.join("x3.txt");
    let (ok, msg) = syncd(
        &lan,
        0,
        &[
            "conflicts",
            "restore",
            &entry,
            "--to",
            out.to_str().unwrap(),
            "--config",
            &n[0].cfg(),
        ],
    );
    assert!(ok, "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), b"node 0 cut off #3");
}
