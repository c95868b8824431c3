//! Files written on a follower by anything but syncd (an admin, a restore,
//! a client on its own address): detected, kept in the conflicts area
//! before the leader's version replaces or deletes them, and reported by
//! `status`, `/metrics` and `syncd conflicts list`. A plain restart of the
//! follower reports nothing. Two real processes on loopback.

mod common;

use syncd_testkit::netns;

#[path = "common/auto.rs"]
mod auto;

use std::time::{Duration, Instant};

use common::Pair;

/// The pair, the standby serving its status on an admin address of its own.
fn pair() -> Pair {
    let p = Pair::new();
    let admin = syncd_testkit::port::free_port();
    let cfg = std::fs::read_to_string(p.path("standby.toml")).unwrap();
    std::fs::write(
        p.path("standby.toml"),
        format!("{cfg}admin = \"127.0.0.1:{admin}\"\n"),
    )
    .unwrap();
    p
}

fn out(o: std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn standby_status(p: &Pair) -> String {
    out(p.syncd(&["status", "--config", "standby.toml"]))
}

/// A value from the standby's `/metrics`.
fn metric(p: &Pair, name: &str) -> f64 {
    let m = out(p.syncd(&["status", "--metrics", "--config", "standby.toml"]));
    m.lines()
        .find(|l| l.starts_with(&format!("syncd_{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{m}"))
}

/// `syncd conflicts list` on the standby: the kept names.
fn conflicts(p: &Pair) -> Vec<String> {
    let o = out(p.syncd(&["conflicts", "list", "--config", "standby.toml"]));
    o.lines()
        .filter(|l| l.contains('\t'))
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

/// The content kept for `path` (the only local entry for it).
fn kept(p: &Pair, path: &str) -> String {
    let names = conflicts(p);
    let name = names
        .iter()
        .find(|n| n.starts_with("local-") && n.ends_with(&format!("/{path}")))
        .unwrap_or_else(|| panic!("{path} not kept as a local write: {names:?}"));
    std::fs::read_to_string(p.path(&format!("standby-state/conflicts/{name}"))).unwrap()
}

fn write(root: &std::path::Path, path: &str, body: &str) {
    let f = root.join(path);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, body).unwrap();
}

fn read(root: &std::path::Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| format!("<{e}>"))
}

#[test]
fn local_writes_on_a_follower_are_kept_and_reported_and_a_restart_reports_none() {
    let mut p = pair();
    for (f, b) in [
        ("a.txt", "a1"),
        ("b.txt", "b1"),
        ("d/c.txt", "c1"),
        ("m.txt", "m1"),
    ] {
        write(&p.primary(), f, b);
    }
    p.start_standby();
    p.resync(&[]);
    assert_eq!(read(&p.standby_dir(), "d/c.txt"), "c1");

    // Control: a plain restart of the follower; then the leader changes
    // files syncd put there before the restart (content, and a mode only).
    p.kill_standby();
    p.start_standby();
    write(&p.primary(), "a.txt", "a2");
    std::fs::set_permissions(
        p.primary().join("m.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    p.resync(&[]);
    p.resync(&[]);
    assert_eq!(read(&p.standby_dir(), "a.txt"), "a2");
    assert_eq!(
        conflicts(&p),
        Vec::<String>::new(),
        "nothing foreign after a restart"
    );
    assert_eq!(metric(&p, "local_writes"), 0.0, "{}", p.log());
    assert!(!p.log().contains("written on this follower"), "{}", p.log());

    // Written directly into the follower's export: a replicated file
    // changed, a new file, a new directory with a file, a file inside a
    // directory the leader will delete.
    write(&p.standby_dir(), "a.txt", "local a");
    write(&p.standby_dir(), "new.txt", "local new");
    write(&p.standby_dir(), "ldir/x.txt", "local x");
    write(&p.standby_dir(), "d/local.txt", "local in d");
    std::fs::remove_dir_all(p.primary().join("d")).unwrap();

    // A dry run touches nothing, but the follower reports them already.
    let o = p.syncd(&["resync", "--dry-run", "--config", "primary.toml"]);
    assert!(o.status.success(), "{}", out(o));
    assert_eq!(metric(&p, "local_writes"), 4.0, "{}", p.log());
    assert_eq!(read(&p.standby_dir(), "new.txt"), "local new");

    // The reconcile (delete on): the leader's version wins the names,
    // the local ones are in the conflicts area.
    p.resync(&[]);
    assert_eq!(read(&p.standby_dir(), "a.txt"), "a2");
    assert!(!p.standby_dir().join("new.txt").exists());
    assert!(!p.standby_dir().join("ldir").exists());
    assert!(!p.standby_dir().join("d").exists());
    assert_eq!(kept(&p, "a.txt"), "local a");
    assert_eq!(kept(&p, "new.txt"), "local new");
    assert_eq!(kept(&p, "ldir/x.txt"), "local x");
    assert_eq!(kept(&p, "d/local.txt"), "local in d");
    assert_eq!(conflicts(&p).len(), 4, "{:?}", conflicts(&p));
    assert_eq!(metric(&p, "local_writes_kept_total"), 4.0);
    let st = standby_status(&p);
    assert!(
        st.contains("local writes: 4 at the last full compare, 4 kept"),
        "{st}"
    );
    assert!(
        p.log().contains("path=a.txt"),
        "the warning names the path: {}",
        p.log()
    );

    // The leader writes a path the follower changed locally meanwhile (a
    // live batch this time).
    p.start_primary();
    p.wait_live();
    write(&p.standby_dir(), "b.txt", "local b");
    write(&p.primary(), "b.txt", "b2 from the leader");
    let t = Instant::now();
    while read(&p.standby_dir(), "b.txt") != "b2 from the leader" {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", p.primary_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(kept(&p, "b.txt"), "local b");
    assert!(p.stop_primary());

    // Restored with the usual command, then the control again: a restart
    // reports nothing new.
    p.kill_standby();
    p.start_standby();
    p.resync(&[]);
    assert_eq!(metric(&p, "local_writes"), 0.0, "{}", p.log());
    assert_eq!(conflicts(&p).len(), 5);
}

/// A first catch-up into an export holding no file is recorded as it
/// goes: no walk of the whole export after it, and a local write made
/// right after it is told apart. Into an export that holds a file, the
/// walk after the catch-up records it as before.
#[test]
fn a_first_catch_up_into_an_empty_export_is_recorded_as_it_goes() {
    let mut p = pair();
    for i in 0..50 {
        write(
            &p.primary(),
            &format!("d{}/f{i}", i % 5),
            &format!("body {i}"),
        );
    }
    // Directories are never recorded: an empty one does not count.
    std::fs::create_dir_all(p.standby_dir().join("lost+found")).unwrap();
    p.start_standby();
    p.resync(&[]);
    assert!(p.log().contains("the export holds no file"), "{}", p.log());
    assert!(!p.log().contains("caught up: local writes"), "{}", p.log());
    write(&p.standby_dir(), "d1/f1", "changed on the follower");
    write(&p.standby_dir(), "local.txt", "new on the follower");
    let o = p.syncd(&["resync", "--dry-run", "--config", "primary.toml"]);
    assert!(o.status.success(), "{}", out(o));
    assert_eq!(metric(&p, "local_writes"), 2.0, "{}", p.log());

    let mut q = pair();
    write(&q.primary(), "a.txt", "from the leader");
    write(&q.standby_dir(), "old/b.txt", "there before syncd");
    q.start_standby();
    q.resync(&[]);
    let t = Instant::now();
    while !q.log().contains("caught up: local writes") {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", q.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!q.log().contains("the export holds no file"), "{}", q.log());
    assert_eq!(read(&q.standby_dir(), "a.txt"), "from the leader");
}

/// Everything syncd itself does on the follower — files, big files and
/// deltas, renames of files and directories, hard links made and removed,
/// symlinks, modes, deletes — is never taken for a local write, before or
/// after a restart.
#[test]
fn syncd_own_changes_are_never_reported() {
    let mut p = pair();
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(p.primary().join("big.bin"), &big).unwrap();
    write(&p.primary(), "t/a/one.txt", "1");
    write(&p.primary(), "t/a/two.txt", "2");
    write(&p.primary(), "f.txt", "f");
    p.start_standby();
    p.resync(&[]);
    p.start_primary();
    p.wait_live();
    let pr = p.primary();
    std::fs::rename(pr.join("t/a"), pr.join("t/b")).unwrap();
    std::fs::hard_link(pr.join("f.txt"), pr.join("g.txt")).unwrap();
    std::fs::hard_link(pr.join("f.txt"), pr.join("h.txt")).unwrap();
    std::os::unix::fs::symlink("f.txt", pr.join("s")).unwrap();
    write(&pr, "u.txt", "u");
    std::fs::rename(pr.join("u.txt"), pr.join("t/b/one.txt")).unwrap();
    std::fs::set_permissions(
        pr.join("t/b/two.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let mut big2 = big.clone();
    big2[300_000..300_010].copy_from_slice(b"0123456789");
    std::fs::write(pr.join("big.bin"), &big2).unwrap();
    p.wait_equal(Duration::from_secs(30));
    std::fs::remove_file(pr.join("g.txt")).unwrap();
    write(&pr, "d/x.txt", "x");
    p.wait_equal(Duration::from_secs(30));
    std::fs::remove_dir_all(pr.join("d")).unwrap();
    p.wait_equal(Duration::from_secs(30));
    assert!(p.stop_primary());
    p.resync(&[]);
    assert_eq!(metric(&p, "local_writes"), 0.0, "{}", p.log());
    assert_eq!(conflicts(&p), Vec::<String>::new(), "{}", p.log());

    // After a restart of the follower, the leader replaces and deletes
    // what syncd put there before it.
    p.kill_standby();
    p.start_standby();
    for f in ["t/b/one.txt", "t/b/two.txt", "f.txt"] {
        write(&pr, f, "changed by the leader");
    }
    std::fs::remove_file(pr.join("s")).unwrap();
    std::fs::remove_file(pr.join("h.txt")).unwrap();
    big2[10] ^= 1;
    std::fs::write(pr.join("big.bin"), &big2).unwrap();
    p.resync(&[]);
    p.assert_equal();
    assert_eq!(metric(&p, "local_writes"), 0.0, "{}", p.log());
    assert_eq!(conflicts(&p), Vec::<String>::new(), "{}", p.log());
    assert_eq!(metric(&p, "local_writes_kept_total"), 0.0);
}

/// Node `i`'s kept names (`syncd conflicts list`).
fn auto_conflicts(lan: &netns::Lan, n: &[auto::Node; 2], i: usize) -> Vec<String> {
    let (ok, list) = auto::syncd(lan, i, &["conflicts", "list", "--config", &n[i].cfg()]);
    assert!(ok, "{list}");
    list.lines()
        .filter(|l| l.contains('\t'))
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

/// Waits until `path` on node `i` reads `body`.
fn wait_body(lan: &netns::Lan, n: &[auto::Node; 2], i: usize, path: &str, body: &str) {
    let ok = netns::wait_for(Duration::from_secs(20), || {
        read(&n[i].export(), path) == body
    });
    if ok.is_none() {
        lan.dump_logs();
        panic!(
            "node {i}: {path} is {:?}, not {body:?}",
            read(&n[i].export(), path)
        );
    }
}

/// Terms the leader `from` (a planned switchover), waits until `to` leads,
/// restarts `from` and waits until it follows, current; its new process.
fn switch(lan: &mut netns::Lan, n: &[auto::Node; 2], from: (usize, usize), to: usize) -> usize {
    assert_eq!(lan.term(from.1), Some(0));
    auto::wait_led_by(lan, to);
    let k = auto::start_auto(lan, n, from.0);
    let current = netns::wait_for(Duration::from_secs(30), || {
        auto::status(lan, n, from.0).contains("data: current")
    });
    if current.is_none() {
        lan.dump_logs();
    }
    assert!(current.is_some(), "{}", auto::status(lan, n, from.0));
    k
}

/// Node `i` is written to locally at `path`, then the leader `1 - i`
/// writes the same path: the local version is kept on `i`.
fn local_write_kept(lan: &netns::Lan, n: &[auto::Node; 2], i: usize, path: &str) {
    let before = auto_conflicts(lan, n, i).len();
    let local = format!("local on {i}");
    write(&n[i].export(), path, &local);
    write(&n[1 - i].export(), path, "from the leader");
    wait_body(lan, n, i, path, "from the leader");
    let kept = auto_conflicts(lan, n, i);
    assert_eq!(kept.len(), before + 1, "{kept:?}");
    let k = kept
        .iter()
        .find(|k| k.starts_with("local-") && k.ends_with(&format!("/{path}")))
        .unwrap_or_else(|| panic!("{path} not kept on node {i}: {kept:?}"));
    let body = std::fs::read_to_string(n[i].dir.join("state/conflicts").join(k)).unwrap();
    assert_eq!(body, local);
}

/// A `--role auto` pair whose nodes swap roles: a follower written to
/// locally keeps that write when the leader writes the same path, and
/// counts it; what a node's own clients wrote while it led is never taken
/// for a local write once it follows again.
#[test]
fn auto_followers_keep_local_writes_and_a_former_leader_reports_none() {
    let name = "auto_followers_keep_local_writes_and_a_former_leader_reports_none";
    if !netns::can_run(name) {
        return;
    }
    let _g = netns::serial();
    let mut lan = netns::Lan::new("fwr", 2);
    let n = auto::nodes(&lan);
    write(&n[0].export(), "seed.txt", "seed");
    auto::bootstrap(&mut lan, &n);
    let mut k0 = auto::start_auto(&mut lan, &n, 0);
    let mut k1 = auto::start_auto(&mut lan, &n, 1);
    auto::wait_led_by(&lan, 0);
    write(&n[0].export(), "x.txt", "x1");
    wait_body(&lan, &n, 1, "x.txt", "x1");
    local_write_kept(&lan, &n, 1, "x.txt");
    let st = auto::status(&lan, &n, 1);
    assert!(st.contains(", 1 kept in conflicts"), "{st}");

    // Node 0 follows node 1, then leads again and its clients write.
    k0 = switch(&mut lan, &n, (0, k0), 1);
    local_write_kept(&lan, &n, 0, "seed.txt");
    k1 = switch(&mut lan, &n, (1, k1), 0);
    for i in 0..20 {
        write(
            &n[0].export(),
            &format!("led-by-0/{i}.txt"),
            &format!("client {i}"),
        );
    }
    wait_body(&lan, &n, 1, "led-by-0/19.txt", "client 19");

    // Node 0 follows again: its clients' files are not local writes.
    switch(&mut lan, &n, (0, k0), 1);
    write(&n[1].export(), "y.txt", "y1");
    wait_body(&lan, &n, 0, "y.txt", "y1");
    let st = auto::status(&lan, &n, 0);
    assert!(
        st.contains("local writes: 0 at the last full compare, 0 kept"),
        "{st}"
    );
    assert_eq!(
        auto_conflicts(&lan, &n, 0).len(),
        1,
        "only the one from before"
    );
    for i in [3, 7] {
        write(
            &n[1].export(),
            &format!("led-by-0/{i}.txt"),
            "rewritten by node 1",
        );
        wait_body(
            &lan,
            &n,
            0,
            &format!("led-by-0/{i}.txt"),
            "rewritten by node 1",
        );
    }
    assert_eq!(
        auto_conflicts(&lan, &n, 0).len(),
        1,
        "{:?}",
        auto_conflicts(&lan, &n, 0)
    );
    // And it tells local writes apart again.
    local_write_kept(&lan, &n, 0, "led-by-0/5.txt");
    let _ = k1;
}
