//! A full disk on the standby: a clear error, nothing partial, nothing lost,
//! and convergence once there is room again. Mounts a small tmpfs as the
//! standby's export, so it needs root; skips visibly otherwise.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Unmounts (lazily: the standby may still hold it) when the test ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) -> Option<Mount> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        syncd_testkit::skip::skip("full_disk", "needs root to mount a small tmpfs");
        return None;
    }
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        syncd_testkit::skip::skip("full_disk", "cannot mount tmpfs");
        return None;
    }
    Some(Mount(dir.to_path_buf()))
}

fn wait_log(p: &Pair, what: &str, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if p.primary_log().contains(what) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn standby_disk_full_then_room_again() {
    let mut p = Pair::new();
    let Some(_m) = mount_tmpfs(&p.standby_dir(), "4m") else {
        return;
    };
    let old = Rng(5).bytes(1 << 20);
    std::fs::write(p.primary().join("old.bin"), &old).unwrap();
    std::fs::write(p.primary().join("keep.txt"), b"version 1\n").unwrap();
    p.start_standby();
    p.start_primary();
    p.wait_live();
    p.wait_equal(Duration::from_secs(20));

    // 8 MiB cannot fit in 4 MiB; a small change made after it still can
    std::fs::write(p.primary().join("big.bin"), Rng(6).bytes(8 << 20)).unwrap();
    std::fs::write(p.primary().join("keep.txt"), b"version 2\n").unwrap();

    assert!(
        wait_log(&p, "No space left on device", Duration::from_secs(30)),
        "the primary must report the standby's full disk:\n{}",
        p.primary_log()
    );
    let line = p
        .primary_log()
        .lines()
        .find(|l| l.contains("No space left on device"))
        .unwrap_or_default()
        .to_string();
    eprintln!("primary reports: {line}");
    assert!(line.contains("big.bin"), "the error names the file: {line}");
    // the other change went through; the old file is intact; nothing partial
    // under a real name
    let t = Instant::now();
    while std::fs::read(p.standby_dir().join("keep.txt")).unwrap_or_default() != b"version 2\n" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "keep.txt was held up by the full disk"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(p.standby_dir().join("old.bin")).unwrap(), old);
    assert!(
        !p.standby_dir().join("big.bin").exists(),
        "a file that did not fit must not appear (partially) under its name"
    );
    assert!(
        p.standby.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the standby must keep running:\n{}",
        p.log()
    );
    let st = p.syncd(&["status", "--config", "primary.toml"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("No space left on device"),
        "status shows the last error:\n{text}"
    );

    eprintln!("status:\n{text}");
    // what could not be replicated counts as lag (data at risk), also
    // while it waits for its next retry: after the second failure the
    // next attempt is 2 s away
    let t = Instant::now();
    while p.metric("errors_total") < 2.0 {
        assert!(t.elapsed() < Duration::from_secs(15), "no second attempt");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let m = p.admin_get("/metrics");
    assert!(
        p.metric("lag_bytes") >= (8 << 20) as f64 && p.metric("lag_operations") >= 1.0,
        "lag must include the 8 MiB waiting for room:\n{m}"
    );
    // room again: the retry converges without a restart
    let ok = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(p.standby_dir())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "remount failed");
    p.wait_equal(Duration::from_secs(90));
    p.assert_equal();
    assert!(p.stop_primary());
}

#[test]
fn one_shot_resync_into_a_full_disk_fails_clearly() {
    let mut p = Pair::new();
    let Some(_m) = mount_tmpfs(&p.standby_dir(), "2m") else {
        return;
    };
    std::fs::write(p.primary().join("small.txt"), b"fits\n").unwrap();
    std::fs::write(p.primary().join("huge.bin"), Rng(7).bytes(4 << 20)).unwrap();
    p.start_standby();
    let o = p.syncd(&["resync", "--config", "primary.toml"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    eprintln!("{out}");
    // Exit 1: files that could not be replicated (README, exit codes).
    assert_eq!(o.status.code(), Some(1), "resync must fail:\n{out}");
    assert!(
        out.contains("huge.bin") && out.contains("No space left on device"),
        "names the file and the cause:\n{out}"
    );
    assert_eq!(
        std::fs::read(p.standby_dir().join("small.txt")).unwrap(),
        b"fits\n"
    );
    assert!(!p.standby_dir().join("huge.bin").exists());
    // staging was cleaned up: the space is free again for what fits
    let all = walk(&p.standby_dir());
    assert!(
        !all.iter().any(|e| e.starts_with(".syncd/staging/")),
        "staging must be empty after a failed write: {all:?}"
    );
    // tmpfs has O_TMPFILE: nothing of syncd's is in the export at all.
    assert_eq!(all, vec!["small.txt"], "{all:?}");
}

/// Every entry under `root` (names relative to it), hidden staging included.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.sort();
    out
}
