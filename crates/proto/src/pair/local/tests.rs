//! The ledger's rules: what is reported as written locally, and how
//! puts, moves and removals change the record.

use std::collections::BTreeMap;

use super::*;

fn l(entries: &[(&str, u32)]) -> Ledger<u32> {
    Ledger::rebased(entries.iter().map(|(p, s)| (p.as_bytes().to_vec(), *s)))
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn unchanged_is_ours_changed_or_new_is_local() {
    let x = l(&[("a", 1), ("d/f", 2)]);
    assert_eq!(x.judge(b"a", Some(&1)), Origin::Ours);
    assert_eq!(x.judge(b"a", Some(&9)), Origin::Changed);
    assert_eq!(x.judge(b"n", Some(&1)), Origin::New);
    assert_eq!(x.judge(b"a", None), Origin::Absent);
    assert!(Origin::New.is_local() && Origin::Changed.is_local());
    assert!(!Origin::Ours.is_local() && !Origin::Absent.is_local());
}

#[test]
fn syncd_temp_names_are_never_local() {
    let x = l(&[]);
    assert_eq!(x.judge(b"d/.syncd-12.3.tmp", Some(&1)), Origin::Ours);
    assert_eq!(x.judge(b"d/.syncd-12.3.tmpx", Some(&1)), Origin::New);
    assert_eq!(x.judge(b".syncd-notes", Some(&1)), Origin::New);
    // Only syncd's exact pattern: a user's file shaped like it is theirs.
    assert_eq!(x.judge(b"d/.syncd-notes.tmp", Some(&1)), Origin::New);
    assert_eq!(x.judge(b".syncd-1.tmp", Some(&1)), Origin::New);
}

#[test]
fn an_invalid_ledger_reports_nothing_and_records_nothing() {
    let mut x = Ledger::<u32>::invalid();
    assert_eq!(x.judge(b"a", Some(&1)), Origin::Ours);
    assert!(!x.apply(&Change::Put(b("a"), 1)));
    assert!(x.is_empty());
    let mut y = l(&[("a", 1)]);
    y.invalidate();
    assert!(!y.is_valid());
    assert_eq!(y.judge(b"a", Some(&5)), Origin::Ours);
}

#[test]
fn removal_and_moves_cover_the_subtree_only() {
    let mut x = l(&[
        ("d", 0),
        ("d/f", 1),
        ("d/g/h", 2),
        ("d-x", 3),
        ("d.y", 4),
        ("e", 5),
    ]);
    x.apply(&Change::MoveUnder(b("d"), b("m")));
    let keys: Vec<_> = x.entries().map(|(k, _)| k.to_vec()).collect();
    assert_eq!(
        keys,
        [b("d-x"), b("d.y"), b("e"), b("m"), b("m/f"), b("m/g/h")]
    );
    assert_eq!(x.get(b"m/g/h"), Some(&2));
    x.apply(&Change::RemoveUnder(b("m")));
    assert_eq!(x.len(), 3);
    x.apply(&Change::Put(b("m"), 7));
    x.apply(&Change::Remove(b("m")));
    assert_eq!(x.get(b"m"), None);
    // A rename over an existing entry replaces it.
    x.apply(&Change::MoveUnder(b("d-x"), b("e")));
    assert_eq!(x.get(b"e"), Some(&3));
    assert_eq!(x.len(), 2);
}

/// Seeded sequences: a path syncd put and nobody touched is never
/// reported, and one touched locally always is, whatever moves and
/// removals the leader made around it.
#[test]
fn seeded_histories_never_report_syncd_and_always_report_a_local_write() {
    for seed in 0..500u64 {
        let mut rng = syncd_testkit::rng::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut x: Ledger<u32> = Ledger::rebased([]);
        // The truth: path -> (stamp, written locally).
        let mut fs: BTreeMap<Vec<u8>, (u32, bool)> = BTreeMap::new();
        let names = ["a", "b", "d/a", "d/b", "e/a"];
        for step in 0..60u32 {
            let p = b(names[rng.below(names.len())]);
            match rng.below(6) {
                // syncd puts an entry, journalled ahead; the process may die
                // before or after the change, before its record: the
                // restart settles what was expected by looking.
                4 | 5 => {
                    let s = step * 10 + 3;
                    x.apply(&Change::Expect(p.clone(), s));
                    let made = rng.below(2) == 0;
                    if made {
                        fs.insert(p.clone(), (s, false));
                    }
                    if made && rng.below(2) == 0 {
                        x.apply(&Change::Put(p, s));
                    } else {
                        x.settle(|q| fs.get(q).map(|(s, _)| *s), |a, b| a == b);
                    }
                    assert_eq!(x.expected().count(), 0);
                }
                0 => {
                    let s = step * 10 + 1;
                    fs.insert(p.clone(), (s, false));
                    x.apply(&Change::Put(p, s));
                }
                1 => {
                    let s = step * 10 + 2;
                    fs.insert(p, (s, true));
                }
                2 => {
                    fs.remove(&p);
                    x.apply(&Change::RemoveUnder(p));
                }
                _ => {
                    let (from, to) = (b("d"), b("e"));
                    let moved: Vec<_> = fs.keys().filter(|k| under(k, &from)).cloned().collect();
                    fs.retain(|k, _| !under(k, &to));
                    for k in moved {
                        if let Some(v) = fs.remove(&k) {
                            let mut n = to.clone();
                            n.extend_from_slice(&k[from.len()..]);
                            fs.insert(n, v);
                        }
                    }
                    x.apply(&Change::MoveUnder(from, to));
                }
            }
            for (k, (s, local)) in &fs {
                assert_eq!(x.judge(k, Some(s)).is_local(), *local, "seed {seed} {k:?}");
            }
        }
    }
}

#[test]
fn an_expected_entry_is_syncds_until_settled() {
    let mut x = l(&[("a", 1), ("d/f", 2)]);
    x.apply(&Change::Expect(b("a"), 5));
    x.apply(&Change::Expect(b("n"), 6));
    assert_eq!(x.judge(b"a", Some(&1)), Origin::Ours, "not made yet");
    assert_eq!(x.judge(b"a", Some(&5)), Origin::Ours, "made, not recorded");
    assert_eq!(x.judge(b"a", Some(&9)), Origin::Changed);
    assert_eq!(x.judge(b"n", Some(&6)), Origin::Ours);
    assert_eq!(x.judge(b"n", Some(&1)), Origin::New);
    // The record settles it: the old stamp is no longer syncd's.
    x.apply(&Change::Put(b("a"), 5));
    assert_eq!(x.judge(b"a", Some(&1)), Origin::Changed);
    // Expectations move and go with their subtree.
    x.apply(&Change::Expect(b("d/g"), 7));
    x.apply(&Change::MoveUnder(b("d"), b("m")));
    assert_eq!(x.judge(b"m/g", Some(&7)), Origin::Ours);
    assert_eq!(x.judge(b"d/g", Some(&7)), Origin::New);
    x.apply(&Change::RemoveUnder(b("m")));
    assert_eq!(x.judge(b"m/g", Some(&7)), Origin::New);
    x.apply(&Change::Remove(b("n")));
    assert_eq!(x.expected().count(), 0);
    // An invalid ledger expects nothing.
    x.invalidate();
    assert!(!x.apply(&Change::Expect(b("a"), 1)));
    assert_eq!(x.expected().count(), 0);
}

#[test]
fn a_restart_settles_what_a_crash_left_expected() {
    let mut x = l(&[("a", 1), ("b", 1)]);
    x.apply(&Change::Expect(b("a"), 2)); // made before the crash
    x.apply(&Change::Expect(b("b"), 3)); // not made
    x.apply(&Change::Expect(b("c"), 4)); // a new entry, made
    x.apply(&Change::Expect(b("e"), 5)); // a new entry, not made
    let now: BTreeMap<&[u8], u32> = [(&b"a"[..], 2), (b"b", 1), (b"c", 4)].into();
    assert_eq!(x.settle(|p| now.get(p).copied(), |a, b| a == b), 2);
    assert_eq!(x.expected().count(), 0);
    assert_eq!(x.judge(b"a", Some(&2)), Origin::Ours);
    assert_eq!(x.judge(b"a", Some(&1)), Origin::Changed);
    assert_eq!(x.judge(b"b", Some(&1)), Origin::Ours);
    assert_eq!(x.judge(b"b", Some(&3)), Origin::Changed);
    assert_eq!(x.judge(b"c", Some(&4)), Origin::Ours);
    assert_eq!(x.judge(b"e", Some(&5)), Origin::New);
}

/// A rename written ahead carries both what is recorded beneath it and
/// what a lane placed there and has not recorded yet (either may be on
/// disk when the process dies).
#[test]
fn a_rename_written_ahead_carries_records_and_placements_beneath_it() {
    let mut x = l(&[("d/x", 1), ("d/y", 3), ("dx", 4)]);
    x.apply(&Change::Expect(b("d/x"), 2)); // placed by a lane, not recorded
    x.apply(&Change::Expect(b("d/z"), 5)); // a new entry, not recorded
    let ahead = x.moving(b"d", b"e");
    assert_eq!(
        ahead,
        [(b("e/x"), 1), (b("e/y"), 3), (b("e/x"), 2), (b("e/z"), 5)]
    );
    for (p, s) in ahead {
        x.apply(&Change::Expect(p, s));
    }
    // Killed after the rename, before its move was recorded: whichever
    // of the two was at d/x is syncd's at e/x.
    for on_disk in [1, 2] {
        let mut y = x.clone();
        let now: BTreeMap<&[u8], u32> = [(&b"e/x"[..], on_disk), (b"e/y", 3), (b"e/z", 5)].into();
        assert_eq!(y.settle(|p| now.get(p).copied(), |a, b| a == b), 3);
        for (p, s) in &now {
            assert_eq!(y.judge(p, Some(s)), Origin::Ours, "{on_disk}");
        }
    }
    // Recorded in time: the move replaces the expectations.
    x.apply(&Change::MoveUnder(b("d"), b("e")));
    assert_eq!(x.judge(b"e/x", Some(&1)), Origin::Ours);
    assert_eq!(x.judge(b"e/x", Some(&2)), Origin::Ours);
    assert_eq!(x.expected().count(), 2, "e/x's placement and e/z");
    assert_eq!(x.judge(b"dx", Some(&4)), Origin::Ours);
}

#[test]
fn a_failed_change_drops_its_expectation_only() {
    let mut x = l(&[("a", 1)]);
    x.apply(&Change::Expect(b("a"), 2));
    x.apply(&Change::Expect(b("a"), 3));
    assert_eq!(x.expected().count(), 2);
    x.unexpect(b"a", &2);
    assert_eq!(x.judge(b"a", Some(&2)), Origin::Changed);
    assert_eq!(x.judge(b"a", Some(&3)), Origin::Ours);
    x.unexpect(b"a", &3);
    assert_eq!(x.expected().count(), 0);
    // Bounded per path: the oldest goes.
    for s in 10..20 {
        x.apply(&Change::Expect(b("a"), s));
    }
    assert_eq!(x.expected().count(), MAX_EXPECTED_PER_PATH);
    assert_eq!(x.judge(b"a", Some(&19)), Origin::Ours);
    assert_eq!(x.judge(b"a", Some(&10)), Origin::Changed);
}

/// A rebase that ends between an expectation and its change: the valid
/// ledger it makes still holds the expectation.
#[test]
fn an_expectation_made_during_a_rebase_outlives_it() {
    let mut x = Ledger::<u32>::invalid();
    let t = x.begin_rebase().unwrap();
    assert!(!x.apply(&Change::Expect(b("a"), 5)), "nothing to journal");
    let r = x.finish_rebase(t, vec![(b("a"), 1)], |_| Ok::<_, ()>(vec![]));
    assert_eq!(r, Ok(Rebased::Done(1)));
    assert_eq!(x.judge(b"a", Some(&5)), Origin::Ours);
    assert_eq!(x.expected().count(), 1);
    // A rebase that fails forgets them with it.
    x.invalidate();
    let t = x.begin_rebase().unwrap();
    x.apply(&Change::Expect(b("a"), 5));
    x.abandon_rebase(t);
    assert_eq!(x.expected().count(), 0);
}
