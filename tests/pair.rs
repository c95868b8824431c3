//! `syncd --role auto` on two nodes in network namespaces: the service
//! address and the replication direction move together, the returning node
//! does not take the address back before it has caught up, and no written
//! file is lost. Needs root (skips visibly otherwise).

#[path = "../crates/vrrp/tests/common/mod.rs"]
mod netns;

#[path = "common/auto.rs"]
mod auto;

use std::time::Duration;

use auto::{bootstrap, nodes, same, start_auto, status, syncd};
use netns::{can_run, mdi, serial, wait_for, Lan};

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
    let led = wait_for(Duration::from_secs(30), || lan.holders(&[0, 1]) == vec![0]);
    if led.is_none() {
        lan.dump_logs();
    }
    assert!(
        led.is_some(),
        "node 0 must lead; holders {:?}",
        lan.holders(&[0, 1])
    );
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
    let start = std::time::Instant::now();
    let code = lan.term(a1);
    assert_eq!(code, Some(0), "SIGTERM stops the node cleanly");
    let took = wait_for(Duration::from_secs(10), || lan.has_addr(0, &vip)).map(|_| start.elapsed());
    if took.is_none() {
        lan.dump_logs();
    }
    let took = took.expect("node 0 never took the address after the switchover");
    eprintln!("switchover: {took:?}");
    if took >= mdi(150, 1.0) {
        lan.dump_logs();
    }
    assert!(
        took < mdi(150, 1.0),
        "a planned switchover must not wait for Master_Down_Interval: {took:?}"
    );
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
