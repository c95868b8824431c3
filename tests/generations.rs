//! Generations between two real nodes on loopback: a standby never lets an
//! older primary overwrite newer data, a catch-up keeps what it would
//! destroy of a node's own writes, and a second primary holding the key is
//! told at once.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{snapshot, Pair, BIN};

/// Node A is the harness's "primary" (export `primary`, keys
/// `primary-keys`), node B its "standby". These configs swap the roles.
fn swapped_configs(p: &Pair) -> u16 {
    let port = syncd_testkit::port::free_port();
    std::fs::write(
        p.path("a-standby.toml"),
        format!("export = \"primary\"\nstate_dir = \"primary-state\"\nlisten = \"127.0.0.1:{port}\"\ncert = \"primary-keys/node.crt\"\nkey = \"primary-keys/node.key\"\npeer_cert = \"standby-keys/node.crt\"\n"),
    )
    .unwrap();
    std::fs::write(
        p.path("b-primary.toml"),
        format!("export = \"standby\"\nstate_dir = \"standby-state\"\npeer = \"127.0.0.1:{port}\"\ncert = \"standby-keys/node.crt\"\nkey = \"standby-keys/node.key\"\npeer_cert = \"primary-keys/node.crt\"\n"),
    )
    .unwrap();
    port
}

fn run(p: &Pair, args: &[&str]) -> (bool, String) {
    let o = p.syncd(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn start_standby(p: &Pair, config: &str, log: &str) -> Child {
    let child = Command::new(BIN)
        .args(["--role", "standby", "--config", config])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.path(log)).unwrap())
        .spawn()
        .unwrap();
    common::wait_standby_listening(&p.path(log), 20);
    child
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn an_older_primary_is_refused_and_a_take_over_keeps_the_standbys_writes() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("shared.txt"), b"v1").unwrap();
    p.start_standby();
    p.resync(&[]);
    p.kill_standby();

    // B takes over as the primary (its peer is down: the new generation is
    // recorded before any connection) and is written to.
    swapped_configs(&p);
    let (ok, out) = run(&p, &["resync", "--config", "b-primary.toml"]);
    assert!(!ok, "no standby to reach: {out}");
    std::fs::write(p.standby_dir().join("b-new.txt"), b"written on B").unwrap();

    // A comes back as the primary with its old data: B refuses it
    p.start_standby();
    let (ok, out) = run(&p, &["resync", "--config", "primary.toml"]);
    assert!(!ok, "the older primary must be refused: {out}");
    assert!(out.contains("newer data"), "{out}");
    assert!(
        out.contains("--take-over"),
        "the refusal names the way out: {out}"
    );
    assert_eq!(
        std::fs::read(p.standby_dir().join("b-new.txt")).unwrap(),
        b"written on B",
        "nothing on B was touched"
    );

    // The operator decides A wins: B's file is kept, not lost
    p.resync(&["--take-over"]);
    p.assert_equal();
    assert!(!p.standby_dir().join("b-new.txt").exists());
    let (ok, list) = run(&p, &["conflicts", "list", "--config", "standby.toml"]);
    assert!(ok, "{list}");
    let name = list
        .lines()
        .find(|l| l.contains("b-new.txt"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("b-new.txt must be in B's conflicts area:\n{list}"))
        .to_string();
    assert!(
        name.starts_with("2-"),
        "kept under the generation B led: {name}"
    );
    let to = p.path("restored.txt");
    let (ok, out) = run(
        &p,
        &[
            "conflicts",
            "restore",
            &name,
            "--to",
            to.to_str().unwrap(),
            "--config",
            "standby.toml",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&to).unwrap(), b"written on B");
    // and the kept files are not part of the export on either side
    assert!(!snapshot(&p.standby_dir())
        .keys()
        .any(|k| k.ends_with(b"b-new.txt")));
}

#[test]
fn the_old_primary_rejoining_as_standby_keeps_its_unacknowledged_writes() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("a.txt"), b"acked").unwrap();
    p.start_standby();
    p.resync(&[]);
    p.kill_standby();
    // written on A after the last acknowledgement; then A fails
    std::fs::write(p.primary().join("late.txt"), b"never acknowledged").unwrap();
    std::fs::write(p.primary().join("a.txt"), b"changed on A too").unwrap();

    // B leads; A rejoins as its standby
    swapped_configs(&p);
    std::fs::write(p.standby_dir().join("b.txt"), b"from B").unwrap();
    let a = start_standby(&p, "a-standby.toml", "a-standby.log");
    // a dry run first: it changes nothing, not even A's generation (else
    // the real run would no longer know to keep A's writes)
    let (ok, out) = run(&p, &["resync", "--dry-run", "--config", "b-primary.toml"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&p, &["resync", "--config", "b-primary.toml"]);
    assert!(ok, "{out}");
    stop(a);
    assert_eq!(
        snapshot(&p.primary()),
        snapshot(&p.standby_dir()),
        "A follows B"
    );
    assert!(!p.primary().join("late.txt").exists());
    let (ok, list) = run(&p, &["conflicts", "list", "--config", "a-standby.toml"]);
    assert!(ok, "{list}");
    for f in ["late.txt", "a.txt"] {
        assert!(
            list.lines().any(|l| l
                .split('\t')
                .next()
                .is_some_and(|n| n.ends_with(&format!("/{f}")))),
            "{f} must be kept on A:\n{list}"
        );
    }
    let log = std::fs::read_to_string(p.path("a-standby.log")).unwrap();
    assert!(log.contains("conflicts area"), "{log}");

    // the next session of B is an ordinary one: nothing more is kept
    std::fs::write(p.standby_dir().join("b2.txt"), b"more").unwrap();
    std::fs::remove_file(p.standby_dir().join("b.txt")).unwrap();
    let a = start_standby(&p, "a-standby.toml", "a-standby-2.log");
    let (ok, out) = run(&p, &["resync", "--config", "b-primary.toml"]);
    assert!(ok, "{out}");
    stop(a);
    let (_, list2) = run(&p, &["conflicts", "list", "--config", "a-standby.toml"]);
    assert_eq!(
        list, list2,
        "a follower's ordinary deletes are not conflicts"
    );
}

#[test]
fn a_second_primary_holding_the_key_is_told_at_once() {
    let mut p = Pair::new();
    std::fs::write(p.primary().join("one.txt"), b"1").unwrap();
    p.start_standby();
    p.start_primary();
    p.wait_live();
    let status = run(&p, &["status", "--config", "primary.toml"]).1;
    assert!(status.contains("generation: 1-"), "{status}");
    assert!(status.contains("peer generation: 1-"), "{status}");

    // a clone of the primary (same key, its own export)
    std::fs::create_dir(p.path("clone")).unwrap();
    let cfg = std::fs::read_to_string(p.path("primary.toml"))
        .unwrap()
        .replace("export = \"primary\"", "export = \"clone\"")
        .replace("primary-state", "clone-state")
        .lines()
        .filter(|l| !l.starts_with("admin"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(p.path("clone.toml"), cfg).unwrap();
    let clone = Command::new(BIN)
        .args(["--role", "primary", "--config", "clone.toml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.path("clone.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !p
        .primary_log()
        .contains("another primary took over the standby")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the superseded primary must say so: {}",
            p.primary_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.metric("superseded_total"), 1.0);
    assert_eq!(p.metric("connected"), 0.0);
    // it does not fight back: the clone keeps its session
    std::thread::sleep(Duration::from_secs(3));
    let clone_log = std::fs::read_to_string(p.path("clone.log")).unwrap();
    assert!(!clone_log.contains("another primary"), "{clone_log}");
    assert_eq!(p.metric("superseded_total"), 1.0);
    stop(clone);
}

#[test]
fn promote_force_makes_a_node_lead_a_new_generation() {
    let p = Pair::new();
    let (ok, out) = run(&p, &["promote", "--config", "primary.toml"]);
    assert!(!ok && out.contains("--force"), "{out}");
    let (ok, out) = run(&p, &["promote", "--force", "--config", "primary.toml"]);
    assert!(ok, "{out}");
    assert!(out.contains("leads generation 1-"), "{out}");
    let (ok, out) = run(&p, &["promote", "--force", "--config", "primary.toml"]);
    assert!(
        ok && out.contains("leads generation 2-"),
        "a second one is newer: {out}"
    );
}
