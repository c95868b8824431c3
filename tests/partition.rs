//! A silent partition between primary and standby (network namespaces joined
//! by a bridge; the standby's bridge port disabled, so packets vanish with no
//! carrier loss), while the primary keeps changing; then healed: converges.

mod common;

use std::time::{Duration, Instant};

use common::Pair;
use syncd_testkit::netns::{can_run, Lan};

fn status(p: &Pair) -> String {
    String::from_utf8_lossy(&p.syncd(&["status", "--config", "primary.toml"]).stdout).into_owned()
}

#[test]
fn silent_partition_while_primary_changes_then_heals() {
    if !can_run("silent_partition_while_primary_changes_then_heals") {
        return;
    }
    let lan = Lan::new("sp", 2);
    let mut p = Pair::new();
    let (pa, sa) = (lan.ip(0), lan.ip(1));
    std::fs::write(
        p.path("standby.toml"),
        format!("export = \"standby\"\nstate_dir = \"standby-state\"\nlisten = \"{sa}:7400\"\ncert = \"standby-keys/node.crt\"\nkey = \"standby-keys/node.key\"\npeer_cert = \"primary-keys/node.crt\"\n"),
    )
    .unwrap();
    std::fs::write(
        p.path("primary.toml"),
        format!("export = \"primary\"\nstate_dir = \"primary-state\"\npeer = \"{sa}:7400\"\nadmin = \"{pa}:7401\"\ncert = \"primary-keys/node.crt\"\nkey = \"primary-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\n"),
    )
    .unwrap();
    p.primary_ns = Some(lan.ns(0).to_string());
    p.standby_ns = Some(lan.ns(1).to_string());
    for i in 0..50 {
        std::fs::write(p.primary().join(format!("f{i}")), vec![i as u8; 4096]).unwrap();
    }
    p.start_standby();
    p.start_primary();
    p.wait_live();
    p.wait_equal(Duration::from_secs(20));

    // Partition: the standby's bridge port stops forwarding; both links stay up.
    lan.port_state(1, 0);
    std::fs::create_dir_all(p.primary().join("during/deep/tree")).unwrap();
    for i in 0..200 {
        std::fs::write(
            p.primary().join(format!("during/deep/tree/g{i}")),
            vec![7u8; 1000 + i],
        )
        .unwrap();
    }
    std::fs::rename(p.primary().join("f1"), p.primary().join("during/f1-moved")).unwrap();
    std::fs::remove_file(p.primary().join("f2")).unwrap();
    let t = Instant::now();
    while !status(&p).contains("connected since: not connected") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "partition never noticed:\n{}\n{}",
            status(&p),
            p.primary_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Heal.
    lan.port_state(1, 3);
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    let st = status(&p);
    assert!(
        st.contains("connects: ") && !st.contains("connects: 1\n"),
        "no reconnect:\n{st}"
    );
    // The daemons stop before their namespaces go.
    drop(p);
    drop(lan);
}
