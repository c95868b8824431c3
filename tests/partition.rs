//! A silent partition between primary and standby (network namespaces joined
//! by a bridge; the standby's bridge port disabled, so packets vanish with no
//! carrier loss), while the primary keeps changing; then healed: converges.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Pair;

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Bridge port state of the standby: 0 disabled (silent partition), 3 forwarding.
fn bridge(br: &str, state: &str) {
    let o = Command::new("bridge")
        .args(["-n", br, "link", "set", "dev", "p1", "state", state])
        .output()
        .expect("bridge");
    assert!(
        o.status.success(),
        "bridge: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two hosts on a bridge; removed on drop.
struct Net {
    names: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn status(p: &Pair) -> String {
    String::from_utf8_lossy(&p.syncd(&["status", "--config", "primary.toml"]).stdout).into_owned()
}

#[test]
fn silent_partition_while_primary_changes_then_heals() {
    let root = unsafe { libc::geteuid() } == 0;
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !netns {
        syncd_testkit::skip::skip(
            "silent_partition_while_primary_changes_then_heals",
            "needs root and `ip netns`",
        );
        return;
    }
    let tag = format!("sp{}", std::process::id());
    let net = 10 + (std::process::id() % 200) as u8;
    let mut n = Net { names: vec![] };
    let br = format!("{tag}br");
    ip(&["netns", "add", &br]);
    n.names.push(br.clone());
    ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &br, "link", "set", "br0", "up"]);
    let mut hosts = vec![];
    for i in 0..2 {
        let ns = format!("{tag}h{i}");
        ip(&["netns", "add", &ns]);
        n.names.push(ns.clone());
        let port = format!("p{i}");
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &br,
        ]);
        ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.{net}.77.{}/24", i + 1),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        hosts.push(ns);
    }
    let mut p = Pair::new();
    let (pa, sa) = (format!("10.{net}.77.1"), format!("10.{net}.77.2"));
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
    p.primary_ns = Some(hosts[0].clone());
    p.standby_ns = Some(hosts[1].clone());
    for i in 0..50 {
        std::fs::write(p.primary().join(format!("f{i}")), vec![i as u8; 4096]).unwrap();
    }
    p.start_standby();
    p.start_primary();
    p.wait_live();
    p.wait_equal(Duration::from_secs(20));

    // Partition: the standby's bridge port stops forwarding; both links stay up.
    bridge(&br, "0");
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
    bridge(&br, "3");
    p.wait_equal(Duration::from_secs(60));
    p.assert_equal();
    let st = status(&p);
    assert!(
        st.contains("connects: ") && !st.contains("connects: 1\n"),
        "no reconnect:\n{st}"
    );
    drop(p);
    drop(n);
}
