//! Acknowledged means durable: right after the primary counts a batch
//! acknowledged, the standby's filesystem is cut off as by a power loss
//! (ext4's shutdown ioctl without a journal flush: nothing more reaches
//! the disk), then remounted. Every acknowledged file must be there, whole,
//! under its name, and every acknowledged delete stays done. The standby's export is a loop-mounted ext4 image, so
//! this needs root; it skips visibly otherwise.

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `EXT4_IOC_SHUTDOWN` (`_IOR('X', 125, __u32)`) and its "do not flush the
/// log" flag: what xfstests' `godown` uses to simulate a crash.
const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// The loop mount of the standby's export, unmounted when the test ends.
struct Mount {
    image: PathBuf,
    at: PathBuf,
}

impl Mount {
    fn new(image: &Path, at: &Path) -> Option<Mount> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            syncd_testkit::skip::skip("crash", "needs root to loop-mount an ext4 image");
            return None;
        }
        let run = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        let made = run(Command::new("truncate").args(["-s", "64M"]).arg(image))
            && run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image));
        let m = Mount {
            image: image.to_path_buf(),
            at: at.to_path_buf(),
        };
        if !(made && m.mount()) {
            syncd_testkit::skip::skip("crash", "cannot make or loop-mount an ext4 image");
            return None;
        }
        Some(m)
    }

    fn mount(&self) -> bool {
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&self.image)
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success())
    }

    fn umount(&self) -> bool {
        Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The power goes: what is not on the disk (or in the committed
    /// journal) now is lost.
    fn shutdown(&self) {
        let d = std::fs::File::open(&self.at).expect("open the mount");
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the ioctl reads one u32 through a valid pointer.
        let r = unsafe { libc::ioctl(d.as_raw_fd(), EXT4_IOC_SHUTDOWN, &flags as *const u32) };
        assert_eq!(
            r,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn content(round: usize, i: usize) -> Vec<u8> {
    let mut v = Rng((round * 100 + i) as u64 + 1).bytes(1024);
    v.extend_from_slice(format!("round {round} file {i}\n").as_bytes());
    v
}

/// Waits until every file is on the standby and the primary has nothing
/// unacknowledged.
fn wait_acknowledged(p: &Pair, files: &[(PathBuf, Vec<u8>)]) {
    let t = Instant::now();
    loop {
        let there = files
            .iter()
            .all(|(f, c)| std::fs::read(f).is_ok_and(|x| &x == c));
        if there && p.metric("lag_operations") == 0.0 {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not acknowledged after 30 s:\n{}",
            p.primary_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn acknowledged_files_survive_a_crash_of_the_standby() {
    // The standby's debug log says which flush it used.
    std::env::set_var("SYNCD_LOG", "info,syncd=debug");
    let mut p = Pair::new();
    let Some(m) = Mount::new(&p.path("standby.img"), &p.standby_dir()) else {
        return;
    };
    std::fs::create_dir(p.primary().join("sub")).unwrap();
    p.start_standby();
    p.start_primary();
    p.wait_live();
    p.wait_equal(Duration::from_secs(20));

    // A big batch, then small ones (the last one covered by nothing
    // else), then one that replaces files of an earlier batch.
    let mut all = Vec::new();
    for (round, n) in [(0, 100), (1, 3), (2, 5), (3, 3)] {
        let mut batch = Vec::new();
        for i in 0..n {
            let r = if round == 3 { 1 } else { round };
            let name = match i % 2 {
                0 => format!("r{r}-{i}"),
                _ => format!("sub/r{r}-{i}"),
            };
            std::fs::write(p.primary().join(&name), content(round, i)).unwrap();
            batch.push((p.standby_dir().join(&name), content(round, i)));
        }
        wait_acknowledged(&p, &batch);
        all.retain(|(f, _)| !batch.iter().any(|(g, _)| g == f));
        all.extend(batch);
    }
    // A last batch of deletes and a rename: acknowledged, so they must not
    // come back after the crash.
    let gone = ["r0-0", "sub/r0-1", "r0-2", "r2-0"];
    for g in gone {
        std::fs::remove_file(p.primary().join(g)).unwrap();
    }
    std::fs::rename(p.primary().join("r0-4"), p.primary().join("sub/moved")).unwrap();
    let moved = (p.standby_dir().join("sub/moved"), content(0, 4));
    all.retain(|(f, _)| {
        !gone.iter().any(|g| *f == p.standby_dir().join(g)) && *f != p.standby_dir().join("r0-4")
    });
    all.push(moved.clone());
    let t = Instant::now();
    while gone.iter().any(|g| p.standby_dir().join(g).exists())
        || p.standby_dir().join("r0-4").exists()
    {
        assert!(t.elapsed() < Duration::from_secs(30), "deletes not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_acknowledged(&p, &[moved]);
    let log = p.log();
    for l in log.lines().filter(|l| l.contains("durable flush")) {
        eprintln!("{l}");
    }
    assert!(
        log.contains("durable flush before the commit's reply"),
        "each commit is flushed before its reply:\n{log}"
    );

    m.shutdown();
    p.kill_standby();
    p.stop_primary();
    assert!(m.umount(), "unmount after the crash");
    assert!(m.mount(), "remount after the crash");
    let mut lost = Vec::new();
    for (f, c) in &all {
        if std::fs::read(f).ok().as_ref() != Some(c) {
            lost.push(f.display().to_string());
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged files lost or damaged by the crash: {lost:?}\nstandby log:\n{log}"
    );
    let back: Vec<_> = gone
        .iter()
        .copied()
        .chain(["r0-4"])
        .filter(|g| p.standby_dir().join(g).exists())
        .collect();
    assert!(
        back.is_empty(),
        "acknowledged deletes undone by the crash: {back:?}\nstandby log:\n{log}"
    );
}
