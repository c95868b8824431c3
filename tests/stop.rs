//! A daemon stops on SIGTERM even while one of its blocking tasks is
//! still busy: here the standby hashing a huge file for a content
//! `verify`, which would take minutes.

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
