//! The inotify watch limit (`fs.inotify.max_user_watches`) reached while the
//! primary runs: it says so and falls back to periodic full reconciles, so a
//! change in a directory it could not watch still arrives, also when it is
//! made just before the primary stops.
//!
//! A binary of its own: the limit is per user, and no other test may be
//! adding watches while it is lowered.

mod common;

use std::time::Duration;

use common::Pair;

const LIMIT: &str = "/proc/sys/fs/inotify/max_user_watches";

struct Restore(String);
impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(LIMIT, &self.0);
    }
}

/// Inotify watches this user holds now, over all processes.
fn watches_in_use() -> usize {
    let mut n = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for p in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(s) = std::fs::read_to_string(fd.path()) {
                n += s.lines().filter(|l| l.starts_with("inotify wd:")).count();
            }
        }
    }
    n
}

#[test]
fn watch_limit_falls_back_to_periodic_reconcile() {
    let Ok(old) = std::fs::read_to_string(LIMIT) else {
        syncd_testkit::skip::skip("watch_limit", &format!("no {LIMIT}"));
        return;
    };
    let mut p = Pair::new();
    for d in 0..4 {
        std::fs::create_dir_all(p.primary().join(format!("d{d}/sub"))).unwrap();
        std::fs::write(p.primary().join(format!("d{d}/f")), b"seed").unwrap();
    }
    p.start_standby();
    // Room for exactly the existing tree: the root and 8 directories.
    let limit = watches_in_use() + 9;
    if std::fs::write(LIMIT, limit.to_string()).is_err() {
        syncd_testkit::skip::skip("watch_limit", &format!("cannot set {LIMIT} (needs root)"));
        return;
    }
    let _restore = Restore(old);
    p.start_primary();
    p.wait_live();
    // New directories cannot be watched (ten, in case another process freed
    // a few watches meanwhile): their creation is seen (the parent is
    // watched), but nothing inside them produces events.
    for i in 0..10 {
        std::fs::create_dir(p.primary().join(format!("new{i}"))).unwrap();
    }
    std::fs::create_dir(p.primary().join("new")).unwrap();
    std::fs::write(p.primary().join("new/first"), b"1").unwrap();
    p.wait_equal(Duration::from_secs(20));
    let log = p.primary_log();
    assert!(
        log.contains("max_user_watches"),
        "the limit was not reported:\n{log}"
    );
    // Written after the watch failed: only the periodic reconcile finds it.
    std::fs::write(p.primary().join("new/second"), b"2").unwrap();
    std::fs::create_dir(p.primary().join("new/deeper")).unwrap();
    std::fs::write(p.primary().join("new/deeper/third"), b"3").unwrap();
    p.wait_equal(Duration::from_secs(30));
    p.assert_equal();
    assert!(p.metric("full_reconciles_total") >= 2.0);

    // Written just before a stop (a switchover hands over by stopping the
    // source): no event tells of it and the next periodic compare is
    // seconds away, so the stop's own flush must compare the whole tree.
    std::fs::write(p.primary().join("new/deeper/last"), b"4").unwrap();
    assert!(p.stop_primary(), "the primary did not stop cleanly");
    assert_eq!(
        std::fs::read(p.standby_dir().join("new/deeper/last")).ok(),
        Some(b"4".to_vec()),
        "a change in an unwatched directory was left behind at the stop:\n{}",
        p.primary_log()
    );
}
