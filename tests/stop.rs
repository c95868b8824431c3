//! A daemon stops on SIGTERM even while one of its blocking tasks is
//! still busy (here the standby hashing a huge file for a content
//! `verify`, which would take minutes); a stopping standby tells its
//! primary so; SIGHUP, SIGUSR1 and SIGUSR2 stop neither.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pair, BIN};

/// Bytes the process has read so far (`/proc/PID/io`).
fn read_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: ").map(|v| v.trim().parse().ok()))?
        })
        .unwrap_or(0)
}

#[test]
fn a_standby_stops_on_sigterm_in_the_middle_of_a_content_verify() {
    let mut p = Pair::new();
    // A sparse 1 TiB file (less where the filesystem's limit is lower):
    // hashing it takes minutes, and costs no disk.
    let f = std::fs::File::create(p.standby_dir().join("huge")).unwrap();
    assert!(
        [40, 38, 36].iter().any(|b| f.set_len(1 << b).is_ok()),
        "no sparse file of 64 GiB or more here"
    );
    drop(f);
    p.start_standby();
    let pid = p.standby.as_ref().unwrap().id();
    let mut verify = Command::new(BIN)
        .args(["verify", "--config", "primary.toml"])
        .current_dir(p.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Hashing has begun once the standby has read a GiB.
    let t = Instant::now();
    while read_bytes(pid) < 1 << 30 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the standby never started hashing: {}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let child = p.standby.as_mut().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        // Far longer than the stop's grace (5 s), far shorter than the hash.
        if t.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = verify.kill();
    let _ = verify.wait();
    let left = read_bytes(pid);
    p.kill_standby();
    let status = status.unwrap_or_else(|| {
        panic!("the standby did not stop on SIGTERM while hashing (read {left} bytes)")
    });
    assert!(
        status.success(),
        "the standby's stop: {status}\n{}",
        p.log()
    );
    assert!(p.log().contains("standby stopped"), "{}", p.log());
}

/// A standby stopped by SIGTERM closes its session before it exits, so the
/// primary learns why at once ("closed by peer: shutdown") instead of
/// waiting out the idle timeout (6 s: a stop of both nodes at once took
/// that long). The close used to leave with the process unsent in most
/// stops, so several rounds.
#[test]
fn a_stopping_standby_tells_its_primary() {
    for round in 1..=4 {
        let mut p = Pair::new();
        p.start_standby();
        p.start_primary();
        p.wait_live();
        let mut standby = p.standby.take().unwrap();
        signal(&standby, rustix::process::Signal::Term);
        assert!(
            standby.wait().unwrap().success(),
            "round {round}: {}",
            p.log()
        );
        let t = Instant::now();
        let lost = loop {
            let log = p.primary_log();
            if let Some(l) = log.lines().find(|l| l.contains("lost the standby")) {
                break l.to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "round {round}: the primary never noticed its standby's stop:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            lost.contains("closed by peer: shutdown"),
            "round {round}: the primary did not hear the standby's close: {lost}"
        );
        assert!(p.stop_primary(), "round {round}: {}", p.primary_log());
    }
}

/// Sends `sig` to a child this test started.
fn signal(c: &std::process::Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// The `n`th "SIGHUP:" line of a log, once it is there.
fn nth_hangup(log: impl Fn() -> String, n: usize) -> String {
    let t = Instant::now();
    loop {
        let text = log();
        if let Some(l) = text.lines().filter(|l| l.contains("SIGHUP:")).nth(n - 1) {
            return l.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no SIGHUP line {n}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP (a logrotate `postrotate`, a keepalived habit) and SIGUSR1/2
/// (keepalived's dumps) used to end the daemon, their default action. Now
/// SIGHUP checks the config file again and names what changed since the
/// start, the user signals are answered in the log, and the daemons go on
/// replicating.
#[test]
fn sighup_checks_the_config_file_and_no_signal_stops_a_daemon() {
    use rustix::process::Signal::{Hup, Usr1, Usr2};
    let mut p = Pair::new();
    p.start_standby();
    p.start_primary();
    p.wait_live();
    let cfg = p.path("primary.toml");
    let at_start = std::fs::read_to_string(&cfg).unwrap();

    std::fs::write(&cfg, format!("# edited, same values\n{at_start}")).unwrap();
    signal(p.primary.as_ref().unwrap(), Hup);
    let l = nth_hangup(|| p.primary_log(), 1);
    assert!(l.contains("valid, unchanged since the start"), "{l}");

    std::fs::write(&cfg, format!("{at_start}[sync]\ndurable = false\n")).unwrap();
    signal(p.primary.as_ref().unwrap(), Hup);
    let l = nth_hangup(|| p.primary_log(), 2);
    assert!(
        l.contains("changed since the start: sync.durable.") && l.contains("restart it"),
        "{l}"
    );

    std::fs::write(
        &cfg,
        at_start.replace("standby-keys/node.crt", "standby-keys/nowhere.crt"),
    )
    .unwrap();
    signal(p.primary.as_ref().unwrap(), Hup);
    let l = nth_hangup(|| p.primary_log(), 3);
    assert!(l.contains("does not load"), "{l}");
    assert!(
        p.primary_log().contains("peer_cert: cannot read"),
        "{}",
        p.primary_log()
    );

    signal(p.standby.as_ref().unwrap(), Hup);
    let l = nth_hangup(|| p.log(), 1);
    assert!(l.contains("valid, unchanged since the start"), "{l}");

    // keepalived's dump signals, sent by habit: said where the status is.
    for (sig, name) in [(Usr1, "SIGUSR1:"), (Usr2, "SIGUSR2:")] {
        signal(p.primary.as_ref().unwrap(), sig);
        let t = Instant::now();
        while !p.primary_log().contains(name) {
            assert!(t.elapsed() < Duration::from_secs(30), "{}", p.primary_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(p.primary_log().contains("`syncd status` prints the status"));

    // Both still run and replicate, as started.
    std::fs::write(p.primary().join("after-hup"), b"still here").unwrap();
    let t = Instant::now();
    while std::fs::read(p.standby_dir().join("after-hup"))
        .ok()
        .as_deref()
        != Some(b"still here")
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not replicated after the SIGHUPs:\n{}",
            p.primary_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(p.standby.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(p.stop_primary(), "{}", p.primary_log());
}
