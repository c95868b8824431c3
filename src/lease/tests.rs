use super::closed::{in_read, margin, sweep_cookie_dirs_of_the_dead};
use super::*;
use std::io::Write;
use std::time::UNIX_EPOCH;
use syncd_proto::path::RelPath;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The rule on a simulated clock. A server writes through its cached
/// descriptor at `w` after its client's CLOSE, before the watch thread
/// handled that close: the record then holds the written file's stamps
/// (its ctime is `w` on a coarse clock, up to a tick earlier), and the
/// write's own event is queued when the write returns.
#[test]
fn a_record_is_trusted_only_once_the_watch_is_drained_past_it() {
    let tick = ms(4);
    let margin = tick * 2 + ms(2);
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let w = t0 + ms(1);
    let ctime = w - ms(3); // the coarse clock's last tick
    let event = w + ms(1); // the write returns: its event is queued
    let at = proof_point(Some(ctime), margin, None);
    assert_eq!(at, Some(ctime + margin));
    // Drained to just before the write's event: the record may be the
    // partial file, so it is not trusted, however late we look.
    for now in [w, w + ms(5), w + Duration::from_secs(60)] {
        assert_ne!(trust(at, Some(event - ms(1)), now), Trust::Yes);
    }
    // Too young to sync: wait for just the rest of the margin.
    assert_eq!(trust(at, None, ctime + ms(4)), Trust::Wait(margin - ms(4)));
    // Old enough: a sync point is needed, and a sync point made after
    // ctime + margin is after the write's event, which drops the record.
    assert_eq!(trust(at, None, ctime + margin), Trust::Sync);
    assert!(ctime + margin >= event, "the margin covers tick and write");
    assert_eq!(trust(at, Some(ctime + margin), ctime + margin), Trust::Yes);
    // A same-size rewrite within the tick of the record leaves the
    // stamps as they were; its event is queued before ctime + margin,
    // so a drain point that does not cover it does not trust either.
    let rewrite_event = ctime + tick - ms(1) + ms(2);
    assert_ne!(
        trust(at, Some(rewrite_event - ms(1)), ctime + ms(30)),
        Trust::Yes
    );
    assert!(rewrite_event <= ctime + margin);
    // No ctime to go by: never trusted.
    assert_eq!(
        trust(None, Some(t0 + ms(100)), t0 + ms(100)),
        Trust::Wait(Duration::MAX)
    );
}

/// The same window on a filesystem of fine ctimes (any change after a read
/// of the ctime gets a new one): the record's stat at `s` saw the server's
/// write in progress (stamped before `s`, returning after it). The write
/// gets as long to return after that stat as the coarse rule gives it at
/// worst (one tick plus 2 ms; here a 4 ms tick, so 6 ms): a drain point
/// before that does not trust; a write stamped after `s` would have changed
/// the ctime the record holds.
#[test]
fn with_fine_ctimes_a_record_is_proven_soon_after_its_stat() {
    let margin = ms(10); // two 4 ms ticks plus 2 ms
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let ctime = t0; // the server's write stamped the file
    let s = t0 + ms(1); // the watch thread's stat, the write not yet returned
    let event = s + ms(5); // a slow write returns 5 ms later: its event is queued
    let at = proof_point(Some(ctime), margin, Some(s));
    assert_eq!(at, Some(s + ms(6)), "before the coarse margin");
    assert!(at.unwrap() < ctime + margin);
    assert!(at.unwrap() >= event, "covers the write in progress");
    assert_ne!(trust(at, Some(event - ms(1)), t0 + ms(60)), Trust::Yes);
    assert_eq!(trust(at, None, s), Trust::Wait(ms(6)));
    assert_eq!(trust(at, Some(s + ms(6)), s + ms(6)), Trust::Yes);
    // A stat taken long after the last change (a watch thread behind):
    // the coarse margin is the earlier, still valid, point.
    assert_eq!(
        proof_point(Some(ctime), margin, Some(t0 + ms(500))),
        Some(ctime + margin)
    );
    // Without a ctime it still has the fine point (the stat is what
    // counts there), and without either nothing is ever provable.
    assert_eq!(proof_point(None, margin, Some(s)), Some(s + ms(6)));
    assert_eq!(proof_point(None, margin, None), None);
}

/// What the fine rule stands on, checked on this machine's temporary
/// directory: the probe's verdict matches what a file there does. When
/// the probe says fine, a change right after reading the ctime always
/// shows in it (tried again here, on a named file, many times within a
/// tick); when it does not, the coarse margin alone applies.
#[test]
fn the_fine_ctime_probe_matches_the_filesystem() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let d = tempfile::tempdir().unwrap();
    let f = std::fs::File::create_new(d.path().join("f")).unwrap();
    let mut last = f.metadata().unwrap();
    let mut kept = 0;
    for i in 0..1000u32 {
        f.write_at(&i.to_le_bytes(), 0).unwrap();
        let m = f.metadata().unwrap();
        if (m.ctime(), m.ctime_nsec()) == (last.ctime(), last.ctime_nsec()) {
            kept += 1;
        }
        last = m;
    }
    match probe_fine_ctime(d.path()) {
        Ok(Some(dev)) => {
            assert_eq!(dev, last.dev());
            assert_eq!(kept, 0, "fine by the probe, yet a change kept its ctime");
        }
        // A coarse clock keeps the ctime of most of 1000 writes in a row.
        Ok(None) => assert!(
            kept > 0,
            "every change got a new ctime, yet not fine by the probe"
        ),
        // Only when unnamed files cannot be made here.
        Err(e) => {
            let tmpfile = rustix::fs::open(
                d.path(),
                rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR,
                rustix::fs::Mode::from_raw_mode(0o600),
            );
            assert!(
                tmpfile.is_err(),
                "the probe failed ({e}), yet O_TMPFILE works"
            );
        }
    }
    // The probe leaves nothing behind.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

/// Quiet is counted from the ctime, whatever the mtime says.
#[test]
fn a_file_is_quiet_by_its_ctime_not_its_mtime() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let quiet = ms(500);
    assert_eq!(quiet_left(Some(now - ms(600)), now, quiet), Some(ms(0)));
    assert_eq!(quiet_left(Some(now - ms(200)), now, quiet), Some(ms(300)));
    // A ctime ahead of the clock (stepped back) or unknown: not quiet.
    assert_eq!(quiet_left(Some(now + ms(1)), now, quiet), None);
    assert_eq!(quiet_left(None, now, quiet), None);
}

#[test]
fn the_margin_is_at_least_two_ticks_of_the_file_clock() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `margin`.
    assert_eq!(
        unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut ts) },
        0
    );
    let tick = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    assert!(margin() >= tick.min(ms(10)) * 2 + ms(2), "{:?}", margin());
}

#[test]
fn a_writer_makes_the_file_busy_and_breaks_a_lease() {
    ignore_break_signal();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    std::fs::write(&p, b"x").unwrap();
    let r = File::open(&p).unwrap();
    if take(&r) == Lease::Unsupported {
        syncd_testkit::skip::skip(
            "a_writer_makes_the_file_busy_and_breaks_a_lease",
            "file leases are not supported here",
        );
        return;
    }
    assert!(intact(&r));
    drop(r);
    let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    let r = File::open(&p).unwrap();
    assert_eq!(take(&r), Lease::Busy, "open for writing elsewhere");
    w.write_all(b"y").unwrap();
    drop(w);
    drop(r);
    let r = File::open(&p).unwrap();
    assert_eq!(take(&r), Lease::Held);
    // A writer arriving breaks it (the opener waits for our release or the
    // break timeout, so it runs on another thread).
    let p2 = p.clone();
    let t = std::thread::spawn(move || {
        std::fs::OpenOptions::new().append(true).open(p2).unwrap();
    });
    let t0 = std::time::Instant::now();
    while intact(&r) && t0.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(!intact(&r));
    drop(r);
    t.join().unwrap();
}

/// A record whose margin ran out while nobody asked the watch thread is
/// looked at again at once; only an overdue sync cookie (the watch thread
/// behind) makes the recheck back off; without sync cookies the settle
/// rule decides.
#[test]
fn a_recheck_backs_off_only_while_a_sync_cookie_is_overdue() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    std::fs::write(&p, b"closed").unwrap();
    let m = std::fs::symlink_metadata(&p).unwrap();
    let rel = RelPath::new("f").unwrap();
    let c = Closed::default();
    let limit = Duration::from_secs(60);
    assert_eq!(c.recheck_in(&rel, &m, limit), None, "no record: a writer's");
    c.closed(rel.clone(), &m);
    assert_eq!(c.recheck_in(&rel, &m, limit), None, "no sync: settle_ms");
    let dir = c.make_cookie_dir().unwrap();
    // Let the margin past the file's ctime run out (at most 22 ms).
    std::thread::sleep(ms(30));
    assert_eq!(c.recheck_in(&rel, &m, limit), Some(ms(0)), "at once");
    // A cookie nobody handles (no watch thread here) becomes overdue.
    let n = c.ask_sync().unwrap();
    std::thread::sleep(ms(60));
    assert_eq!(c.recheck_in(&rel, &m, limit), Some(ms(5)));
    // Once the watch thread reports it, no more back-off.
    assert!(c.cookie_seen(&dir.join(format!("c{n}"))));
    assert_eq!(c.recheck_in(&rel, &m, limit), Some(ms(0)));
    // The cookie directory cannot be watched: no record can be proven.
    c.cookies_off();
    assert_eq!(c.recheck_in(&rel, &m, limit), None);
}

/// A reader waits in the read for a record at most 3 ms short of its proof
/// point (then syncs); a younger one is left to a later look, and the other
/// verdicts pass through unchanged.
#[test]
fn a_reader_waits_only_for_a_record_nearly_proven() {
    assert_eq!(in_read(Trust::Wait(ms(3))), (Some(ms(3)), Trust::Sync));
    assert_eq!(in_read(Trust::Wait(ms(1))), (Some(ms(1)), Trust::Sync));
    let young = ms(3) + Duration::from_micros(1);
    assert_eq!(in_read(Trust::Wait(young)), (None, Trust::Wait(young)));
    assert_eq!(
        in_read(Trust::Wait(Duration::MAX)),
        (None, Trust::Wait(Duration::MAX)),
        "a record that can never be proven is not waited for"
    );
    assert_eq!(in_read(Trust::Yes), (None, Trust::Yes));
    assert_eq!(in_read(Trust::Sync), (None, Trust::Sync));
}

/// A killed daemon leaves its cookie directory behind; the next one to
/// make its own removes those of pids that are gone, and nothing else.
#[test]
fn cookie_directories_of_dead_daemons_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    // A pid that no process has now: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let dir = |name: String| {
        let p = tmp.path().join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("c1"), b"").unwrap();
        p
    };
    let gone = dir(format!("syncd-watch-{dead}-123"));
    let mine = dir(format!("syncd-watch-{}-456", std::process::id()));
    let init = dir("syncd-watch-1-789".into());
    let other = dir(format!("syncd-watcher-{dead}-1"));
    let file = tmp.path().join(format!("syncd-watch-{dead}-999"));
    std::fs::write(&file, b"not a directory").unwrap();
    sweep_cookie_dirs_of_the_dead(tmp.path());
    assert!(!gone.exists(), "a dead daemon's directory goes");
    for kept in [&mine, &init, &other, &file] {
        assert!(kept.exists(), "{} is kept", kept.display());
    }
}
