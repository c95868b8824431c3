//! Service hooks and the planned switchover of `syncd --role auto`, on two
//! nodes in network namespaces. The hooks are shell scripts that log what
//! they see to a file, and stand in for an NFS server: `serving` exists
//! while the node exports (the writer below writes only into a serving
//! node, under the same lock the hooks take). Needs root (skips visibly
//! otherwise).

use syncd_testkit::netns;

#[path = "common/auto.rs"]
mod auto;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use auto::{bootstrap, nodes_with, same, start_auto, status, syncd, wait_led_by, Node, SYNCD};
use netns::{can_run, have, serial, wait_for, Lan};

/// Writes node `i`'s hook scripts into `dir` and returns its `[hooks]`.
fn hooks(lan: &Lan, dir: &Path, timeout_ms: u64) -> String {
    let d = dir.display();
    let vip = lan.vip();
    let cfg = dir.join("node.toml");
    let cfg = cfg.display();
    let promote = format!(
        r#"#!/bin/sh
# A moment for an address added too early (the bug this would catch) to show.
sleep 0.3
if ip -o addr show dev eth0 | grep -q " {vip}/"; then vip=present; else vip=absent; fi
role=$({SYNCD} status --config {cfg} | sed -n 's/^pair role: //p')
n=$(cat {d}/hooks.log 2>/dev/null | wc -l)
mkdir -p {d}/snap$n && cp -p {d}/state/lineage {d}/snap$n/
echo "promote gen=$SYNCD_GENERATION vip=$vip role=$role snap=$n reason=$SYNCD_REASON" >> {d}/hooks.log
if [ -e {d}/hang-promote ]; then sleep 600 & echo $! > {d}/hang.pid; wait; fi
if [ -e {d}/fail-promote ]; then echo "cannot export: test says no" >&2; exit 1; fi
flock {d}/lock touch {d}/serving
"#
    );
    let demote = format!(
        r#"#!/bin/sh
flock {d}/lock rm -f {d}/serving
echo "demote gen=$SYNCD_GENERATION reason=$SYNCD_REASON" >> {d}/hooks.log
if [ "$SYNCD_REASON" = shutdown ]; then echo "last words" > "$SYNCD_EXPORT/by-demote-hook.txt"; fi
exit 0
"#
    );
    for (name, body) in [("promote.sh", promote), ("demote.sh", demote)] {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "[hooks]\npromote = [\"{d}/promote.sh\"]\ndemote = [\"{d}/demote.sh\"]\ntimeout_ms = {timeout_ms}\n"
    )
}

fn hook_log(n: &Node) -> Vec<String> {
    std::fs::read_to_string(n.dir.join("hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

fn metrics(lan: &Lan, n: &[Node; 2], i: usize) -> String {
    syncd(lan, i, &["status", "--metrics", "--config", &n[i].cfg()]).1
}

fn hook_runs(lan: &Lan, n: &[Node; 2], i: usize, hook: &str, result: &str) -> u64 {
    let key = format!("hook=\"{hook}\",result=\"{result}\"}} ");
    metrics(lan, n, i)
        .lines()
        .find(|l| l.starts_with("syncd_hook_runs_total") && l.contains(&key))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn setup(tag: &str, timeout_ms: u64) -> (Lan, [Node; 2]) {
    let mut lan = Lan::new(tag, 2);
    let n = nodes_with(&lan, |_, dir| hooks(&lan, dir, timeout_ms));
    std::fs::write(n[0].export().join("seed.txt"), b"seed").unwrap();
    bootstrap(&mut lan, &n);
    (lan, n)
}

fn ready(name: &str) -> bool {
    can_run(name) && have("flock", name)
}

#[test]
fn hooks_run_in_the_safe_order_and_a_follower_never_serves() {
    let name = "hooks_run_in_the_safe_order_and_a_follower_never_serves";
    if !ready(name) {
        return;
    }
    let _g = serial();
    let (mut lan, n) = setup("hko", 30_000);
    let vip = lan.vip();
    let a0 = start_auto(&mut lan, &n, 0);
    let _a1 = start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);

    // Each node stopped serving at start, before the election.
    for node in &n {
        let log = hook_log(node);
        assert!(
            log.first().is_some_and(
                |l| l.starts_with("demote ") && l.contains("reason=starting as a follower")
            ),
            "{log:?}"
        );
    }
    // Node 0 promoted: its hook saw its new generation on disk, its role
    // promoting, and no address yet.
    let log0 = hook_log(&n[0]);
    let p = log0
        .iter()
        .find(|l| l.starts_with("promote "))
        .unwrap_or_else(|| panic!("node 0 ran no promote hook: {log0:?}"));
    assert_eq!(
        field(p, "vip"),
        "absent",
        "the address waits for the hook: {p}"
    );
    assert_eq!(field(p, "role"), "promoting", "{p}");
    let snap = n[0].dir.join(format!("snap{}", field(p, "snap")));
    let rec = syncd::generation::Store::new(&snap).load().unwrap();
    assert_eq!(
        rec.lineage.gen.to_string(),
        field(p, "gen"),
        "the generation is durable before the promote hook runs"
    );
    assert!(n[0].dir.join("serving").exists());
    // The follower never served.
    assert!(hook_log(&n[1]).iter().all(|l| !l.starts_with("promote ")));
    assert!(!n[1].dir.join("serving").exists());
    assert_eq!(hook_runs(&lan, &n, 0, "promote", "ok"), 1);
    assert_eq!(hook_runs(&lan, &n, 1, "demote", "ok"), 1);
    let rl = std::fs::read_to_string(n[0].dir.join("state/role.log")).unwrap();
    assert!(rl.contains("hook: promote hook ok in"), "{rl}");

    // SIGTERM the leader: its demote hook runs while its source still
    // sends: what the hook writes into the export reaches node 1.
    assert_eq!(lan.term(a0), Some(0), "SIGTERM stops node 0 cleanly");
    let log0 = hook_log(&n[0]);
    assert!(
        log0.last()
            .is_some_and(|l| l.starts_with("demote ") && l.contains("reason=shutdown")),
        "{log0:?}"
    );
    assert!(!n[0].dir.join("serving").exists());
    assert!(
        same(&n[0].export(), &n[1].export(), "by-demote-hook.txt"),
        "the demote hook runs before the source stops"
    );
    // Node 1 takes over, in the same order.
    let took = wait_for(Duration::from_secs(10), || lan.has_addr(1, &vip));
    assert!(took.is_some(), "node 1 takes the address");
    let log1 = hook_log(&n[1]);
    let p = log1
        .iter()
        .find(|l| l.starts_with("promote "))
        .unwrap_or_else(|| panic!("node 1 ran no promote hook: {log1:?}"));
    assert_eq!(field(p, "vip"), "absent", "{p}");
    assert!(n[1].dir.join("serving").exists());
    assert!(status(&lan, &n, 1).contains("pair role: leader"));
}

/// Node 0 (the higher priority) cannot serve: its promotion is aborted, the
/// address never appears on it, and node 1 leads.
fn promote_fails(tag: &str, name: &str, marker: &str, timeout_ms: u64) {
    if !ready(name) {
        return;
    }
    let _g = serial();
    let (mut lan, n) = setup(tag, timeout_ms);
    let vip = lan.vip();
    std::fs::write(n[0].dir.join(marker), b"").unwrap();
    let _a0 = start_auto(&mut lan, &n, 0);
    let _a1 = start_auto(&mut lan, &n, 1);
    let start = Instant::now();
    let mut node0_held = false;
    let took = wait_for(Duration::from_secs(60), || {
        node0_held |= lan.has_addr(0, &vip);
        lan.has_addr(1, &vip)
    });
    assert!(!node0_held, "node 0 held the address");
    let took = took.unwrap_or_else(|| {
        lan.dump_logs();
        panic!(
            "node 1 never took the address; node 0 hooks {:?}",
            hook_log(&n[0])
        )
    });
    eprintln!("{name}: node 1 leads {took:?} after the start");
    // It stays so past node 0's wait before another promotion.
    while start.elapsed() < took + Duration::from_secs(12) {
        assert!(!lan.has_addr(0, &vip), "node 0 took the address");
        assert!(lan.has_addr(1, &vip), "node 1 lost the address");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log0 = hook_log(&n[0]);
    let p = log0
        .iter()
        .position(|l| l.starts_with("promote "))
        .unwrap_or_else(|| panic!("node 0 tried no promotion: {log0:?}"));
    assert!(
        log0[p + 1..]
            .iter()
            .any(|l| l.starts_with("demote ") && l.contains("reason=promotion failed")),
        "the demote hook undoes the failed promotion: {log0:?}"
    );
    assert!(!n[0].dir.join("serving").exists());
    assert!(status(&lan, &n, 0).contains("pair role: follower"));
    assert!(status(&lan, &n, 1).contains("pair role: leader"));
    let result = if marker == "hang-promote" {
        "timeout"
    } else {
        "failed"
    };
    assert!(hook_runs(&lan, &n, 0, "promote", result) >= 1);
    if marker == "hang-promote" {
        // Killed at the timeout, with what it started.
        let pid = std::fs::read_to_string(n[0].dir.join("hang.pid")).unwrap();
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.split(' ').nth(2) == Some("Z"),
            "the hung hook's child still runs: {stat}"
        );
    }
}

#[test]
fn a_failing_promote_hook_aborts_the_promotion_and_the_peer_leads() {
    promote_fails(
        "hkf",
        "a_failing_promote_hook_aborts_the_promotion_and_the_peer_leads",
        "fail-promote",
        30_000,
    );
}

#[test]
fn a_hanging_promote_hook_is_killed_at_its_timeout_and_the_peer_leads() {
    promote_fails(
        "hkh",
        "a_hanging_promote_hook_is_killed_at_its_timeout_and_the_peer_leads",
        "hang-promote",
        2_000,
    );
}

/// What a client of the service sees: it writes into whichever node
/// serves (under the hooks' lock, as an NFS server's export would be).
struct Written {
    ok: Vec<(String, String)>,
    /// Longest time without a successful write.
    longest_gap: Duration,
}

fn write_load(n: &[Node; 2], stop: &std::sync::atomic::AtomicBool) -> Written {
    use std::os::fd::AsRawFd;
    let mut w = Written {
        ok: Vec::new(),
        longest_gap: Duration::ZERO,
    };
    let locks: Vec<std::fs::File> = n
        .iter()
        .map(|x| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(x.dir.join("lock"))
                .unwrap()
        })
        .collect();
    let mut last = Instant::now();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut done = false;
        for (k, node) in n.iter().enumerate() {
            // SAFETY: flock on a file we hold open.
            unsafe { libc::flock(locks[k].as_raw_fd(), libc::LOCK_EX) };
            if node.dir.join("serving").exists() {
                let name = format!("w{i:05}.txt");
                let body = format!("file {i} written on node {k}");
                if std::fs::write(node.export().join(&name), &body).is_ok() {
                    w.ok.push((name, body));
                    done = true;
                }
            }
            // SAFETY: as above.
            unsafe { libc::flock(locks[k].as_raw_fd(), libc::LOCK_UN) };
            if done {
                break;
            }
        }
        if done {
            w.longest_gap = w.longest_gap.max(last.elapsed());
            last = Instant::now();
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    w
}

#[test]
fn a_switchover_under_load_moves_the_address_and_loses_nothing() {
    let name = "a_switchover_under_load_moves_the_address_and_loses_nothing";
    if !ready(name) {
        return;
    }
    let _g = serial();
    let (mut lan, n) = setup("hks", 30_000);
    let vip = lan.vip();
    let a0 = start_auto(&mut lan, &n, 0);
    let _a1 = start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);
    assert!(
        wait_for(Duration::from_secs(15), || status(&lan, &n, 1)
            .contains("data: current"))
        .is_some(),
        "node 1 catches up first: {}",
        status(&lan, &n, 1)
    );

    // The follower refuses: only the leader hands over.
    let (ok, out) = syncd(&lan, 1, &["switchover", "--config", &n[1].cfg()]);
    assert!(!ok && out.contains("does not lead"), "{out}");

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (written, (ok, out, took)) = std::thread::scope(|s| {
        let writer = s.spawn(|| write_load(&n, &stop));
        std::thread::sleep(Duration::from_secs(3));
        let t = Instant::now();
        let (ok, out) = syncd(&lan, 0, &["switchover", "--config", &n[0].cfg()]);
        let took = t.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (writer.join().unwrap(), (ok, out, took))
    });
    eprintln!("switchover ({took:?}): {out}");
    eprintln!(
        "client: {} writes, longest time without a successful write {:?}",
        written.ok.len(),
        written.longest_gap
    );
    if !ok {
        lan.dump_logs();
    }
    assert!(ok, "switchover failed: {out}");
    let ms: u64 = out
        .split("unavailable for ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no unavailability in {out:?}"));
    eprintln!("writes unavailable (fence to the peer leading, seen by the leader): {ms} ms");
    assert!(
        wait_for(Duration::from_secs(5), || lan.holders(&[0, 1]) == vec![1]).is_some(),
        "the address moves to node 1: holders {:?}",
        lan.holders(&[0, 1])
    );
    assert!(status(&lan, &n, 1).contains("pair role: leader"));
    assert!(
        written.ok.iter().any(|(_, b)| b.ends_with("node 0"))
            && written.ok.iter().any(|(_, b)| b.ends_with("node 1")),
        "writes before and after the switchover"
    );
    // Every file the client was told was written is on the new leader
    // (and, once it follows, on node 0), with its content: gone = 0.
    let check = |k: usize| {
        written
            .ok
            .iter()
            .filter(|(f, b)| {
                std::fs::read_to_string(n[k].export().join(f))
                    .ok()
                    .as_deref()
                    != Some(b)
            })
            .count()
    };
    let gone_leader = check(1);
    let follower = wait_for(Duration::from_secs(20), || check(0) == 0);
    let kept = |k: usize| syncd(&lan, k, &["conflicts", "list", "--config", &n[k].cfg()]).1;
    eprintln!(
        "counts: written {}, readable on the leader {}, gone {gone_leader}; conflicts: node 0 {:?}, node 1 {:?}",
        written.ok.len(),
        written.ok.len() - gone_leader,
        kept(0).lines().last(),
        kept(1).lines().last()
    );
    assert_eq!(gone_leader, 0, "files gone from the new leader");
    assert!(
        follower.is_some(),
        "node 0 follows: {} files missing",
        check(0)
    );
    for k in 0..2 {
        let list = kept(k);
        assert!(list.contains("0 kept entries"), "node {k}: {list}");
    }
    let hooks0 = hook_log(&n[0]);
    assert!(
        hooks0
            .iter()
            .any(|l| l.contains("reason=planned switchover")),
        "{hooks0:?}"
    );

    // Node 0 (now the follower) dies: a switchover on node 1 cannot hand
    // over (a peer silent for two heartbeats is not handed anything); node 1
    // says so, serves again if it had fenced, and keeps leading.
    lan.kill9(a0);
    lan.port_state(0, 0);
    std::thread::sleep(Duration::from_millis(1200));
    let (ok, out) = syncd(&lan, 1, &["switchover", "--config", &n[1].cfg()]);
    let unfenced = hook_log(&n[1])
        .iter()
        .any(|l| l.contains("reason=switchover abandoned"));
    eprintln!("switchover without a live peer (un-fenced: {unfenced}): {out}");
    assert!(!ok, "{out}");
    assert!(out.contains("peer"), "{out}");
    assert!(lan.has_addr(1, &vip), "node 1 keeps the address");
    assert!(n[1].dir.join("serving").exists(), "node 1 serves again");
    assert!(status(&lan, &n, 1).contains("pair role: leader"));
    if std::env::var_os("PAIR_LOGS").is_some() {
        lan.dump_logs();
    }
}

/// A client cut off mid-file by the fence (an NFSv4 client between its
/// OPEN and its first WRITE: the server keeps the file open for writing,
/// with the exclusive create's verifier, decades ahead, as its mtime) does
/// not hold the drain back until the switchover gives up: the file is quiet
/// and fenced, so it goes as it is, and the peer has exactly the leader's
/// content when it takes over.
#[test]
fn a_file_held_open_through_the_fence_does_not_stop_the_switchover() {
    use std::io::Write;
    let name = "a_file_held_open_through_the_fence_does_not_stop_the_switchover";
    if !ready(name) {
        return;
    }
    let _g = serial();
    let (mut lan, n) = setup("hkh", 30_000);
    let _a0 = start_auto(&mut lan, &n, 0);
    let _a1 = start_auto(&mut lan, &n, 1);
    wait_led_by(&lan, 0);
    assert!(
        wait_for(Duration::from_secs(15), || status(&lan, &n, 1)
            .contains("data: current"))
        .is_some(),
        "node 1 catches up first: {}",
        status(&lan, &n, 1)
    );
    std::fs::write(n[0].export().join("whole.txt"), b"closed before").unwrap();
    let mut held = std::fs::File::create(n[0].export().join("cut.bin")).unwrap();
    held.write_all(&[7u8; 3000]).unwrap();
    held.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(3_500_000_000))
        .unwrap();

    let (ok, out) = syncd(&lan, 0, &["switchover", "--config", &n[0].cfg()]);
    eprintln!("switchover with a file held open: {out}");
    if !ok {
        lan.dump_logs();
    }
    assert!(ok, "switchover refused: {out}");
    assert!(
        wait_for(Duration::from_secs(5), || lan.holders(&[0, 1]) == vec![1]).is_some(),
        "the address moves to node 1: holders {:?}",
        lan.holders(&[0, 1])
    );
    for f in ["whole.txt", "cut.bin"] {
        assert!(same(&n[0].export(), &n[1].export(), f), "{f} differs");
    }
    assert_eq!(
        std::fs::read(n[1].export().join("cut.bin")).unwrap().len(),
        3000
    );
    drop(held);
}
