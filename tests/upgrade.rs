//! A rolling upgrade against the real previous release: its `syncd`,
//! built from git by `scripts/test.sh` (path in `SYNCD_PREV_BIN`). The old
//! primary replicates to a new standby; after the switch the new primary
//! replicates to the old one; and a `--role auto` pair of one old and one
//! new node never lets the new one lead beside the old. Without the old
//! binary the tests skip visibly (and fail under `SYNCD_NO_SKIP=1`).

mod common;

#[path = "../crates/vrrp/tests/common/mod.rs"]
mod netns;

#[path = "common/auto.rs"]
mod auto;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{snapshot, BIN};

/// The previous release's binary, or a visible skip.
fn prev_bin(test: &str) -> Option<String> {
    match std::env::var("SYNCD_PREV_BIN") {
        Ok(p) if Path::new(&p).is_file() => Some(p),
        Ok(p) => {
            syncd_testkit::skip::skip(test, &format!("SYNCD_PREV_BIN={p} is not a file"));
            None
        }
        Err(_) => {
            syncd_testkit::skip::skip(
                test,
                "SYNCD_PREV_BIN is not set (scripts/test.sh builds the previous release)",
            );
            None
        }
    }
}

/// Two nodes on loopback, `a` and `b`, each able to run either role.
struct Nodes {
    dir: tempfile::TempDir,
    procs: Vec<Child>,
}

fn free_udp() -> u16 {
    syncd_testkit::port::free_port()
}

fn free_tcp() -> u16 {
    syncd_testkit::port::free_port()
}

impl Nodes {
    fn new() -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let ports = [free_udp(), free_udp()];
        let admin = [free_tcp(), free_tcp()];
        for (i, n) in ["a", "b"].iter().enumerate() {
            let d = dir.path().join(n);
            std::fs::create_dir_all(d.join("export")).unwrap();
            syncd::tls::keygen(&d.join("keys"), n).unwrap();
            let other = ["b", "a"][i];
            let cfg = format!(
                "export = \"export\"\nstate_dir = \"state\"\nnode_id = \"{n}\"\n\
                 listen = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n\
                 cert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"../{other}/keys/node.crt\"\n",
                ports[i],
                ports[1 - i],
                admin[i]
            );
            std::fs::write(d.join("syncd.toml"), cfg).unwrap();
        }
        Nodes {
            dir,
            procs: Vec::new(),
        }
    }

    fn node(&self, i: usize) -> PathBuf {
        self.dir.path().join(["a", "b"][i])
    }

    fn export(&self, i: usize) -> PathBuf {
        self.node(i).join("export")
    }

    fn log_path(&self, i: usize, role: &str) -> PathBuf {
        self.node(i).join(format!("{role}.log"))
    }

    fn log(&self, i: usize, role: &str) -> String {
        std::fs::read_to_string(self.log_path(i, role)).unwrap_or_default()
    }

    /// Starts `bin --role role` on node `i`; waits until it listens or has
    /// connected. Returns its index in `procs`.
    fn start(&mut self, bin: &str, i: usize, role: &str) -> usize {
        let log = std::fs::File::create(self.log_path(i, role)).unwrap();
        let child = Command::new(bin)
            .args(["--role", role, "--config", "syncd.toml"])
            .current_dir(self.node(i))
            .env("SYNCD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(child);
        let ready = if role == "standby" {
            "standby listening"
        } else {
            "in sync; following changes"
        };
        self.wait_log(i, role, ready);
        self.procs.len() - 1
    }

    fn wait_log(&self, i: usize, role: &str, what: &str) {
        let t = Instant::now();
        while !self.log(i, role).contains(what) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no {what:?} from node {i}'s {role}:\n{}",
                self.log(i, role)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and wait for the exit.
    fn stop(&mut self, k: usize) {
        let c = &mut self.procs[k];
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
        let _ = c.wait();
    }

    /// Waits until both exports are the same tree (an independent walk).
    fn wait_equal(&self, what: &str) {
        let t = Instant::now();
        loop {
            let (a, b) = (snapshot(&self.export(0)), snapshot(&self.export(1)));
            if a == b {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{what}: the exports differ\nnode a: {a:#?}\nnode b: {b:#?}\nlogs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for i in 0..2 {
            for r in ["primary", "standby"] {
                s += &format!("--- node {i} {r}\n{}\n", self.log(i, r));
            }
        }
        s
    }

    /// `syncd status` of node `i` (the current binary reads either's admin).
    fn status(&self, i: usize) -> String {
        let o = Command::new(BIN)
            .args(["status", "--config", "syncd.toml"])
            .current_dir(self.node(i))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes whole files, changes part of a large one (a delta) and deletes
/// one, on node `i`'s export; `round` keeps names apart.
fn changes(ex: &Path, round: &str) {
    std::fs::create_dir_all(ex.join(format!("{round}/d"))).unwrap();
    std::fs::write(ex.join(format!("{round}/small.txt")), round.repeat(10)).unwrap();
    std::fs::write(ex.join(format!("{round}/d/gone.txt")), b"soon deleted").unwrap();
    let big: Vec<u8> = (0..400_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
    std::fs::write(ex.join(format!("{round}/big.bin")), &big).unwrap();
}

fn more_changes(ex: &Path, round: &str) {
    // A few bytes in the middle of a large file: a delta, not a whole copy.
    let p = ex.join(format!("{round}/big.bin"));
    let mut big = std::fs::read(&p).unwrap();
    big[200_000..200_016].copy_from_slice(b"changed in place");
    std::fs::write(&p, &big).unwrap();
    std::fs::remove_file(ex.join(format!("{round}/d/gone.txt"))).unwrap();
    std::fs::write(ex.join(format!("{round}/later.txt")), b"later").unwrap();
}

/// A `name: N` line of `syncd status`.
fn counter(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
}

#[test]
fn a_pair_upgrades_one_node_at_a_time() {
    let name = "a_pair_upgrades_one_node_at_a_time";
    let Some(prev) = prev_bin(name) else {
        return;
    };
    let mut n = Nodes::new();
    // Before: the old release on both nodes; node a leads.
    changes(&n.export(0), "r0");
    let sb = n.start(&prev, 1, "standby");
    let pr = n.start(&prev, 0, "primary");
    n.wait_equal("both nodes on the previous release");

    // 1. The standby is upgraded: the old primary's one-shot resync, then
    // its live replication, reach it.
    n.stop(pr);
    n.stop(sb);
    let sb = n.start(BIN, 1, "standby");
    std::fs::write(n.export(0).join("r0/resync.txt"), b"by resync").unwrap();
    let o = Command::new(&prev)
        .args(["resync", "--config", "syncd.toml"])
        .current_dir(n.node(0))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    n.wait_equal("old resync, new standby");
    let pr = n.start(&prev, 0, "primary");
    changes(&n.export(0), "r1");
    n.wait_equal("old primary, new standby: whole files");
    more_changes(&n.export(0), "r1");
    n.wait_equal("old primary, new standby: a delta and a delete");
    let log = n.log(1, "standby");
    assert!(log.contains("speaking protocol 6"), "{log}");
    assert!(
        counter(&n.status(0), "files_sent_delta") >= 1,
        "{}",
        n.status(0)
    );
    let st = n.status(1);
    assert!(st.contains("role: standby"), "{st}");
    assert!(!st.contains("connected since: not connected"), "{st}");
    // The standby took the old primary's generation (at its first commit).
    let gen = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("generation: "))
            .map(|l| l.split(" (").next().unwrap_or(l).to_string())
            .unwrap_or_default()
    };
    let sp = n.status(0);
    assert_eq!(gen(&st), gen(&sp), "standby:\n{st}\nprimary:\n{sp}");
    assert!(!gen(&st).contains("none"), "{st}");
    assert!(st.contains("last error: none"), "{st}");

    // 2. Switch over: the upgraded node leads, the old one follows.
    n.stop(pr);
    n.stop(sb);
    let old_sb = n.start(&prev, 0, "standby");
    n.start(BIN, 1, "primary");
    let plog = n.log(1, "primary");
    assert!(plog.contains("speaking protocol 6"), "{plog}");
    changes(&n.export(1), "r2");
    n.wait_equal("new primary, old standby: whole files");
    more_changes(&n.export(1), "r2");
    n.wait_equal("new primary, old standby: a delta and a delete");
    assert!(
        counter(&n.status(1), "files_sent_delta") >= 1,
        "{}",
        n.status(1)
    );
    let st = n.status(0);
    assert!(!st.contains("connected since: not connected"), "{st}");
    // The new primary's first Hello offers 7, which the old standby refuses
    // (its log and status say so once); every later one offers 6 first.
    assert!(st.contains("sessions_refused: 1\n"), "{st}");
    // `pair check` names both nodes' versions, and they pair.
    let o = Command::new(BIN)
        .args(["pair", "check", "--config", "syncd.toml"])
        .current_dir(n.node(1))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("it speaks protocol 6, this node 6 to 8: they pair on 6"),
        "{out}"
    );
    assert!(out.contains("upgrade the peer next"), "{out}");

    // A reconnect (the old standby restarted) offers 6 first: no refusal.
    n.stop(old_sb);
    let old_sb = n.start(&prev, 0, "standby");
    std::fs::write(n.export(1).join("r2/after-restart.txt"), b"x").unwrap();
    n.wait_equal("new primary, restarted old standby");
    let st = n.status(0);
    assert!(st.contains("sessions_refused: 0\n"), "{st}");
    assert!(st.contains("last error: none"), "{st}");

    // 3. The second node upgraded: both new, protocol 7 again.
    n.stop(old_sb);
    n.start(BIN, 0, "standby");
    changes(&n.export(1), "r3");
    n.wait_equal("both upgraded");
    assert!(!n.log(0, "standby").contains("speaking protocol 6"));
}

/// `--role auto`, one node old and one new: the new one follows the old
/// leader but never takes the lead beside it (its catch-up rule cannot be
/// judged), even when the old one dies; once the old node is upgraded too,
/// the pair leads and fails over as usual. Needs root (network namespaces).
#[test]
fn an_auto_node_does_not_lead_beside_the_previous_release() {
    use auto::{nodes, same, status, SYNCD};
    use netns::{can_run, mdi, serial, wait_for, Lan};
    let name = "an_auto_node_does_not_lead_beside_the_previous_release";
    let Some(prev) = prev_bin(name) else {
        return;
    };
    if !can_run(name) {
        return;
    }
    let _g = serial();
    let mut lan = Lan::new("upgr", 2);
    let vip = lan.vip();
    let n = nodes(&lan);
    let run = |bin: &str, i: usize, lan: &mut Lan| {
        let cfg = n[i].cfg();
        lan.start(i, "auto", bin, &["--role", "auto", "--config", &cfg])
    };
    // Bootstrap as a pair of the old release would be: one resync.
    std::fs::write(n[0].export().join("seed.txt"), b"seed").unwrap();
    let sb = lan.start(
        1,
        "standby",
        &prev,
        &["--role", "standby", "--config", &n[1].cfg()],
    );
    let listening = wait_for(Duration::from_secs(10), || {
        lan.log(sb).contains("standby listening")
    });
    assert!(listening.is_some(), "{}", lan.log(sb));
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            lan.ns(0),
            &prev,
            "resync",
            "--config",
            &n[0].cfg(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lan.term(sb);
    let old = run(&prev, 0, &mut lan);
    if wait_for(Duration::from_secs(30), || lan.holders(&[0, 1]) == vec![0]).is_none() {
        lan.dump_logs();
        panic!("the old node leads alone");
    }
    let new = run(SYNCD, 1, &mut lan);
    for i in 0..5 {
        std::fs::write(n[0].export().join(format!("a{i}.txt")), format!("{i}")).unwrap();
    }
    let synced = wait_for(Duration::from_secs(30), || {
        (0..5).all(|i| same(&n[0].export(), &n[1].export(), &format!("a{i}.txt")))
    });
    if synced.is_none() {
        lan.dump_logs();
    }
    assert!(
        synced.is_some(),
        "the old leader's writes reach the new follower"
    );
    // Heard from either session, whichever comes first.
    let mut s1 = String::new();
    let heard = wait_for(Duration::from_secs(10), || {
        s1 = status(&lan, &n, 1);
        s1.contains("may lead: no (the peer speaks protocol 6")
    });
    assert!(heard.is_some(), "{s1}");
    assert!(s1.contains("pair role: follower"), "{s1}");

    // The old leader dies: the new node does not take the address (it
    // would without the rule, within the Master_Down_Interval).
    lan.kill9(old);
    std::thread::sleep(mdi(100, 1.0) + Duration::from_secs(6));
    let s1 = status(&lan, &n, 1);
    if lan.has_addr(1, &vip) {
        lan.dump_logs();
    }
    assert!(!lan.has_addr(1, &vip), "{s1}");
    assert!(
        s1.contains("may lead: no (the peer speaks protocol 6"),
        "{s1}"
    );

    // The old node upgraded: it leads again (newest data, higher
    // priority), the other follows, and may lead once more.
    let a0 = run(SYNCD, 0, &mut lan);
    if wait_for(Duration::from_secs(30), || lan.holders(&[0, 1]) == vec![0]).is_none() {
        lan.dump_logs();
        panic!("the upgraded node leads");
    }
    std::fs::write(n[0].export().join("after.txt"), b"after").unwrap();
    let synced = wait_for(Duration::from_secs(30), || {
        same(&n[0].export(), &n[1].export(), "after.txt")
    });
    assert!(synced.is_some(), "replication after both are upgraded");
    let ok = wait_for(Duration::from_secs(10), || {
        status(&lan, &n, 1).contains("may lead: yes")
    });
    assert!(ok.is_some(), "{}", status(&lan, &n, 1));
    lan.term(a0);
    lan.term(new);
}
