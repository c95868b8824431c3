//! The ledger's files: restarts, torn and stale logs, compaction, the
//! version-1 format, expectations across a kill.

use super::*;

fn st(n: u64) -> Stamp {
    Stamp {
        size: n,
        mtime: (n as i64, 0),
        ctime: (n as i64, 1),
        ino: n,
    }
}

#[test]
fn survives_a_restart_and_a_torn_log_tail() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Placed::load(d.path());
    assert!(!p.is_valid(), "no snapshot: nothing is known");
    p.apply(Change::Put(b"a".to_vec(), st(1)));
    assert!(
        !d.path().join(LOG).exists(),
        "an invalid ledger journals nothing"
    );
    let t = p.begin_rebase().unwrap();
    let r = p.finish_rebase(t, vec![(b"a".to_vec(), st(1))], |_| Ok(vec![]));
    assert_eq!(r.unwrap(), Rebased::Done(1));
    p.apply(Change::Put(b"d/b".to_vec(), st(2)));
    p.apply(Change::MoveUnder(b"d".to_vec(), b"e".to_vec()));
    p.sync(true).unwrap();
    drop(p);
    // A crash mid-append: a record cut short.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join(LOG))
        .unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let mut p = Placed::load(d.path());
    assert!(p.is_valid());
    assert_eq!(p.judge(b"a", Some(&st(1))), Origin::Ours);
    assert_eq!(p.judge(b"e/b", Some(&st(2))), Origin::Ours);
    assert_eq!(p.judge(b"d/b", Some(&st(2))), Origin::New);
    assert_eq!(p.judge(b"a", Some(&st(3))), Origin::Changed);
    // Records after the torn tail are still read after the next restart.
    p.apply(Change::Put(b"c".to_vec(), st(4)));
    p.sync(true).unwrap();
    drop(p);
    let mut p = Placed::load(d.path());
    assert_eq!(p.judge(b"c", Some(&st(4))), Origin::Ours);
    p.invalidate().unwrap();
    assert!(!d.path().join(SNAPSHOT).exists());
    assert!(!Placed::load(d.path()).is_valid());
}

#[test]
fn ctime_counts_unless_the_inode_has_several_names() {
    let rec = st(1);
    assert!(same(&rec, &st(1)));
    assert!(
        !same(
            &rec,
            &Stamp {
                ctime: (9, 9),
                ..rec
            }
        ),
        "rewritten in place, mtime restored"
    );
    assert!(!same(
        &rec,
        &Stamp {
            mtime: (9, 0),
            ..rec
        }
    ));
    assert!(
        !same(&rec, &Stamp { ino: 9, ..rec }),
        "replaced by another file"
    );
    assert!(!same(&rec, &Stamp { size: 9, ..rec }));
    let linked = Stamp {
        ctime: NO_CTIME,
        ..rec
    };
    assert!(same(
        &linked,
        &Stamp {
            ctime: (9, 9),
            ..rec
        }
    ));
    assert!(same(&rec, &linked));
}

#[test]
fn a_damaged_snapshot_reports_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join(SNAPSHOT), b"SYNCDPLCgarbage").unwrap();
    let p = Placed::load(d.path());
    assert!(!p.is_valid());
    assert_eq!(p.judge(b"x", Some(&st(1))), Origin::Ours);
}

/// A process killed between a placement and its record: what was
/// written ahead is read back and settled by looking, also when a
/// compaction came in between.
#[test]
fn an_expectation_written_ahead_survives_a_kill_and_is_settled() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Placed::load(d.path());
    let t = p.begin_rebase().unwrap();
    let all = vec![(b"a".to_vec(), st(1)), (b"b".to_vec(), st(1))];
    p.finish_rebase(t, all, |_| Ok(vec![])).unwrap();
    let ahead = |n| Stamp {
        ctime: NO_CTIME,
        ..st(n)
    };
    p.apply(Change::Expect(b"a".to_vec(), ahead(2)));
    p.compact().unwrap(); // the log started over: still expected
    p.apply(Change::Expect(b"b".to_vec(), ahead(3)));
    p.apply(Change::Expect(b"c".to_vec(), ahead(4)));
    p.flush();
    // The records after the placements, never handed to the kernel.
    p.apply(Change::Put(b"a".to_vec(), st(2)));
    std::mem::forget(p);

    let mut p = Placed::load(d.path());
    let placed_now = Stamp {
        ctime: (7, 7), // the rename changed it
        ..st(2)
    };
    assert_eq!(p.judge(b"a", Some(&placed_now)), Origin::Ours);
    // `a` and `c` were placed; `b` was not (still syncd's old one).
    let now = |q: &[u8]| match q {
        b"a" => Some(placed_now),
        b"b" => Some(st(1)),
        b"c" => Some(Stamp {
            ctime: (8, 8),
            ..st(4)
        }),
        _ => None,
    };
    p.settle(now).unwrap();
    assert_eq!(p.ledger.expected().count(), 0);
    drop(p);
    let p = Placed::load(d.path());
    assert_eq!(p.judge(b"a", Some(&placed_now)), Origin::Ours);
    assert_eq!(p.judge(b"a", Some(&st(1))), Origin::Changed);
    assert_eq!(p.judge(b"b", Some(&st(1))), Origin::Ours);
    assert_eq!(p.judge(b"b", Some(&ahead(3))), Origin::Changed);
    assert_eq!(p.judge(b"c", Some(&now(b"c").unwrap())), Origin::Ours);
}

fn rebased(d: &Path, all: Vec<(Vec<u8>, Stamp)>) -> Placed {
    let mut p = Placed::load(d);
    let t = p.begin_rebase().unwrap();
    p.finish_rebase(t, all, |_| Ok(vec![])).unwrap();
    p
}

/// A kill between a compaction's two renames leaves the new snapshot
/// beside the old log, whose changes it holds: replayed again, its
/// move would carry a later placement away.
#[test]
fn a_log_the_snapshot_holds_is_not_replayed() {
    let d = tempfile::tempdir().unwrap();
    let mut p = rebased(d.path(), vec![(b"a/x".to_vec(), st(1))]);
    p.apply(Change::MoveUnder(b"a".to_vec(), b"b".to_vec()));
    p.apply(Change::Put(b"a/x".to_vec(), st(2)));
    p.sync(true).unwrap();
    let old_log = std::fs::read(d.path().join(LOG)).unwrap();
    p.checkpoint().unwrap();
    drop(p);
    std::fs::write(d.path().join(LOG), &old_log).unwrap();
    let mut p = Placed::load(d.path());
    assert_eq!(p.judge(b"b/x", Some(&st(1))), Origin::Ours);
    assert_eq!(p.judge(b"a/x", Some(&st(2))), Origin::Ours);
    // The stale log starts over: what follows is read back.
    p.apply(Change::Put(b"c".to_vec(), st(3)));
    p.sync(true).unwrap();
    drop(p);
    let p = Placed::load(d.path());
    assert_eq!(p.judge(b"c", Some(&st(3))), Origin::Ours);
    assert_eq!(p.judge(b"a/x", Some(&st(2))), Origin::Ours);
}

/// What is expected is in the snapshot itself: a compaction never has
/// a moment where a lane's expectation is on disk nowhere.
#[test]
fn a_compaction_keeps_expectations_in_its_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let mut p = rebased(d.path(), vec![(b"a".to_vec(), st(1))]);
    p.apply(Change::Expect(b"a".to_vec(), st(2)));
    p.apply(Change::Expect(b"a".to_vec(), st(4)));
    p.compact().unwrap();
    std::mem::forget(p);
    std::fs::remove_file(d.path().join(LOG)).unwrap();
    let p = Placed::load(d.path());
    assert_eq!(p.ledger.expected().count(), 2);
    for n in [1, 2, 4] {
        assert_eq!(p.judge(b"a", Some(&st(n))), Origin::Ours, "{n}");
    }
    assert_eq!(p.judge(b"a", Some(&st(3))), Origin::Changed);
}

/// A ledger written by an earlier syncd (version 1: records only, a
/// log without a header) is read and rewritten in this version.
#[test]
fn a_version_1_ledger_is_read_and_rewritten() {
    let d = tempfile::tempdir().unwrap();
    let entries = vec![(b"a".to_vec(), st(1)), (b"b".to_vec(), st(2))];
    let mut snap = MAGIC.to_vec();
    snap.extend_from_slice(&VERSION_1.to_le_bytes());
    let snap = postcard::to_extend(&entries, snap).unwrap();
    std::fs::write(d.path().join(SNAPSHOT), snap).unwrap();
    let mut log = Vec::new();
    for c in [
        Change::Put(b"c".to_vec(), st(3)),
        Change::Remove(b"b".to_vec()),
    ] {
        let body = postcard::to_stdvec(&c).unwrap();
        log.extend_from_slice(&(body.len() as u32).to_le_bytes());
        log.extend_from_slice(&body);
    }
    std::fs::write(d.path().join(LOG), log).unwrap();
    let check = |p: &Placed| {
        assert!(p.is_valid());
        assert_eq!(p.judge(b"a", Some(&st(1))), Origin::Ours);
        assert_eq!(p.judge(b"c", Some(&st(3))), Origin::Ours);
        assert_eq!(p.judge(b"b", Some(&st(2))), Origin::New);
    };
    // The rewrite fails at first (the state disk full, say): the log
    // goes on in version 1's form, nothing it held is lost.
    std::fs::create_dir(d.path().join(format!("{SNAPSHOT}.tmp"))).unwrap();
    let mut p = Placed::load(d.path());
    check(&p);
    p.apply(Change::Put(b"e".to_vec(), st(5)));
    p.sync(true).unwrap();
    drop(p);
    std::fs::remove_dir(d.path().join(format!("{SNAPSHOT}.tmp"))).unwrap();
    let p = Placed::load(d.path());
    check(&p);
    assert_eq!(p.judge(b"e", Some(&st(5))), Origin::Ours);
    let snap = std::fs::read(d.path().join(SNAPSHOT)).unwrap();
    assert_eq!(snap[8..12], VERSION.to_le_bytes(), "rewritten");
    check(&Placed::load(d.path()));
}
