//! Writes on a follower by anything but syncd (an admin, a restore, a
//! client on the follower's own address): the rule that tells them from
//! syncd's own, without I/O.
//!
//! The follower records, per path, the stamp of what syncd itself last put
//! there (`S`: size, mtime, ctime and inode in the shell). An entry whose
//! current stamp differs, or a path syncd never put anything at, was
//! written locally; the shell keeps it before replacing or deleting it.
//! Directories are not recorded (their times change with their contents):
//! what counts is the files and symlinks beneath them.
//!
//! A record is only as good as its history: one begun while this node led
//! (its own clients wrote everything) or lost says nothing. Such a ledger
//! is *invalid*: every entry counts as syncd's own (nothing is reported,
//! as before this rule) until a catch-up makes the export the leader's and
//! the shell rebases the ledger on it.
//!
//! The rebase walks the whole export (a million entries take minutes on a
//! loaded disk), so it runs beside the session, not inside its reply path:
//! [`Ledger::begin_rebase`] starts it, the changes syncd makes meanwhile
//! mark their paths as touched, and [`Ledger::finish_rebase`] takes the
//! walk's stamps for untouched paths and a fresh look (under the shell's
//! lock) for touched ones, whose walked stamps may predate syncd's change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What an entry is, by the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Nothing is there.
    Absent,
    /// What syncd last put there, unchanged (or the ledger cannot tell).
    Ours,
    /// Written locally: a path syncd never put anything at.
    New,
    /// Written locally: syncd's entry was changed or replaced since.
    Changed,
}

impl Origin {
    /// Whether it must be kept before syncd replaces or deletes it.
    pub fn is_local(self) -> bool {
        matches!(self, Origin::New | Origin::Changed)
    }
}

/// One change to the ledger, as the shell journals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change<S> {
    /// syncd put this entry at the path.
    Put(Vec<u8>, S),
    /// The path and everything beneath it are gone.
    RemoveUnder(Vec<u8>),
    /// The path only (a directory made where a file was).
    Remove(Vec<u8>),
    /// A rename: the path and everything beneath it moved.
    MoveUnder(Vec<u8>, Vec<u8>),
}

/// Per path, what syncd last put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger<S> {
    map: BTreeMap<Vec<u8>, S>,
    valid: bool,
    /// A rebase under way (the ledger is invalid meanwhile).
    rebase: Option<Rebase>,
    /// Tells a finished walk from one an invalidation or a newer rebase
    /// made stale.
    epoch: u64,
}

/// The paths syncd changed while a rebase walked the export.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rebase {
    epoch: u64,
    touched: BTreeSet<Vec<u8>>,
    /// More paths changed than [`MAX_TOUCHED`]: the walk is of no use.
    overflowed: bool,
}

/// Bounds what a rebase remembers of the changes made during its walk (a
/// path each); beyond it the walk starts over.
pub const MAX_TOUCHED: usize = 65_536;

/// How a rebase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebased {
    /// The ledger is valid, with this many entries.
    Done(usize),
    /// Too much changed during the walk: begin again.
    Overflowed,
    /// The ledger was invalidated (or rebased anew) meanwhile: nothing done.
    Stale,
}

impl<S> Default for Ledger<S> {
    fn default() -> Self {
        Ledger {
            map: BTreeMap::new(),
            valid: false,
            rebase: None,
            epoch: 0,
        }
    }
}

/// syncd's own temporary names beside their destination (`.syncd-*.tmp`),
/// seen only between a link and a rename.
pub fn is_own_temp(path: &[u8]) -> bool {
    // Exactly syncd's pattern: a user's `.syncd-notes.tmp` is theirs.
    let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    crate::path::is_temp_name(name)
}

/// `p` is `dir` or beneath it.
fn under(p: &[u8], dir: &[u8]) -> bool {
    p.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

impl<S: Clone + PartialEq> Ledger<S> {
    /// An invalid ledger: it tells nothing until rebased.
    pub fn invalid() -> Self {
        Ledger::default()
    }

    /// A valid ledger holding `entries`.
    pub fn rebased(entries: impl IntoIterator<Item = (Vec<u8>, S)>) -> Self {
        Ledger {
            map: entries.into_iter().collect(),
            valid: true,
            ..Ledger::default()
        }
    }

    /// Starts a rebase of an invalid ledger: the shell walks the export and
    /// hands the result to [`Ledger::finish_rebase`] with the token. `None`:
    /// the ledger is valid, or a rebase is already under way.
    pub fn begin_rebase(&mut self) -> Option<u64> {
        if self.valid || self.rebase.is_some() {
            return None;
        }
        self.epoch += 1;
        self.rebase = Some(Rebase {
            epoch: self.epoch,
            touched: BTreeSet::new(),
            overflowed: false,
        });
        Some(self.epoch)
    }

    pub fn is_rebasing(&self) -> bool {
        self.rebase.is_some()
    }

    /// Ends the rebase `token` with the walk's `walked` entries: those at or
    /// beneath a path syncd changed meanwhile are replaced by `look(path)`
    /// (every entry at or beneath it now), which the shell must answer
    /// while no change of syncd's can land in between (it holds the lock
    /// the changes are applied under, and a rename's move is applied under
    /// that lock too).
    pub fn finish_rebase<E>(
        &mut self,
        token: u64,
        walked: impl IntoIterator<Item = (Vec<u8>, S)>,
        mut look: impl FnMut(&[u8]) -> Result<Vec<(Vec<u8>, S)>, E>,
    ) -> Result<Rebased, E> {
        let Some(r) = self.rebase.take_if(|r| r.epoch == token) else {
            return Ok(Rebased::Stale);
        };
        if r.overflowed {
            return Ok(Rebased::Overflowed);
        }
        let roots = outermost(&r.touched);
        let mut map: BTreeMap<Vec<u8>, S> = walked
            .into_iter()
            .filter(|(p, _)| !touched_at(&roots, p))
            .collect();
        for root in &roots {
            // On error the ledger stays invalid (reports nothing).
            map.extend(look(root)?);
        }
        self.map = map;
        self.valid = true;
        Ok(Rebased::Done(self.map.len()))
    }

    /// Ends the rebase `token` without a result (its walk failed): the
    /// ledger stays invalid, and the next catch-up begins again.
    pub fn abandon_rebase(&mut self, token: u64) {
        self.rebase.take_if(|r| r.epoch == token);
    }

    /// Notes the paths `c` changes, during a rebase.
    fn touch(&mut self, c: &Change<S>) {
        let Some(r) = &mut self.rebase else { return };
        let paths: [Option<&Vec<u8>>; 2] = match c {
            Change::Put(p, _) | Change::RemoveUnder(p) | Change::Remove(p) => [Some(p), None],
            Change::MoveUnder(from, to) => [Some(from), Some(to)],
        };
        for p in paths.into_iter().flatten() {
            if r.touched.len() >= MAX_TOUCHED {
                r.overflowed = true;
                r.touched.clear();
            }
            if !r.overflowed {
                r.touched.insert(p.clone());
            }
        }
    }

    pub fn is_valid(&self) -> bool {
        self.valid
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, path: &[u8]) -> Option<&S> {
        self.map.get(path)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Vec<u8>, &S)> {
        self.map.iter()
    }

    /// What the non-directory entry at `path`, now stamped `current`, is.
    pub fn judge(&self, path: &[u8], current: Option<&S>) -> Origin {
        self.judge_by(path, current, |a, b| a == b)
    }

    /// [`Ledger::judge`], with `same` telling whether a recorded stamp
    /// matches the current one (the shell's stamps hold fields it cannot
    /// always compare).
    pub fn judge_by(
        &self,
        path: &[u8],
        current: Option<&S>,
        same: impl Fn(&S, &S) -> bool,
    ) -> Origin {
        let Some(cur) = current else {
            return Origin::Absent;
        };
        if !self.valid || is_own_temp(path) {
            return Origin::Ours;
        }
        match self.map.get(path) {
            Some(rec) if same(rec, cur) => Origin::Ours,
            Some(_) => Origin::Changed,
            None => Origin::New,
        }
    }

    /// Applies `c`; an invalid ledger stays empty (there is nothing to
    /// journal). Returns whether anything was to be recorded.
    pub fn apply(&mut self, c: &Change<S>) -> bool {
        if !self.valid {
            self.touch(c);
            return false;
        }
        match c {
            Change::Put(p, s) => {
                self.map.insert(p.clone(), s.clone());
            }
            Change::Remove(p) => {
                self.map.remove(p);
            }
            Change::RemoveUnder(p) => {
                let gone: Vec<_> = self.beneath(p).collect();
                for k in gone {
                    self.map.remove(&k);
                }
            }
            Change::MoveUnder(from, to) => {
                // Whatever was at the destination is replaced.
                self.apply(&Change::RemoveUnder(to.clone()));
                let moved: Vec<_> = self.beneath(from).collect();
                for k in moved {
                    if let Some(s) = self.map.remove(&k) {
                        let mut n = to.clone();
                        n.extend_from_slice(&k[from.len()..]);
                        self.map.insert(n, s);
                    }
                }
            }
        }
        true
    }

    /// The recorded paths at or beneath `p`: every key starting with `p`
    /// (a sorted range), less siblings such as `p-x`.
    fn beneath<'a>(&'a self, p: &'a [u8]) -> impl Iterator<Item = Vec<u8>> + 'a {
        self.map
            .range(p.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(p))
            .filter(move |(k, _)| under(k, p))
            .map(|(k, _)| k.clone())
    }

    /// Forgets everything: this node's export is no longer the leader's
    /// copy as syncd made it (it leads, or the record was lost).
    pub fn invalidate(&mut self) {
        self.map.clear();
        self.valid = false;
        self.rebase = None;
    }
}

/// The touched paths not beneath another touched path, sorted.
fn outermost(touched: &BTreeSet<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let set: BTreeSet<&[u8]> = touched.iter().map(|p| p.as_slice()).collect();
    for p in touched {
        if !ancestors(p).any(|a| set.contains(a)) {
            out.push(p.clone());
        }
    }
    out
}

/// The proper ancestors of `p` (`a/b/c`: `a/b`, `a`).
fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'/')
        .map(move |(i, _)| &p[..i])
}

/// Whether `p` is at or beneath one of the sorted `roots`.
fn touched_at(roots: &[Vec<u8>], p: &[u8]) -> bool {
    if roots.is_empty() {
        return false;
    }
    let hit = |q: &[u8]| roots.binary_search_by(|r| r.as_slice().cmp(q)).is_ok();
    hit(p) || ancestors(p).any(hit)
}

#[cfg(test)]
mod tests {
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
        let keys: Vec<_> = x.entries().map(|(k, _)| k.clone()).collect();
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
                match rng.below(4) {
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
                        let moved: Vec<_> =
                            fs.keys().filter(|k| under(k, &from)).cloned().collect();
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

    /// A rebase walks the tree while syncd keeps changing it (files put,
    /// subtrees removed, directories renamed, each seen by the walk before
    /// or after): once folded in, syncd's own entries are never reported
    /// and a later local write always is.
    #[test]
    fn a_rebase_beside_changes_never_misfiles_syncd_own_entries() {
        let tops = ["a", "d", "e"];
        let names = ["a/x", "a/y", "d/x", "d/y", "e/x", "e/y"];
        for seed in 0..500u64 {
            let mut rng = syncd_testkit::rng::Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut fs: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
            for (i, n) in names.iter().enumerate() {
                if rng.below(3) > 0 {
                    fs.insert(b(n), i as u32 + 1);
                }
            }
            let mut x: Ledger<u32> = Ledger::invalid();
            let token = x.begin_rebase().unwrap();
            assert_eq!(x.begin_rebase(), None, "one rebase at a time");
            let mut walked = Vec::new();
            let mut order = tops.to_vec();
            order.rotate_left(rng.below(3));
            let mut step = 100;
            for top in order {
                // syncd's changes between the walk's visits.
                for _ in 0..rng.below(4) {
                    step += 1;
                    let p = b(names[rng.below(names.len())]);
                    match rng.below(3) {
                        0 => {
                            fs.insert(p.clone(), step);
                            x.apply(&Change::Put(p, step));
                        }
                        1 => {
                            fs.remove(&p);
                            x.apply(&Change::RemoveUnder(p));
                        }
                        _ => {
                            let (from, to) = (b(tops[rng.below(3)]), b(tops[rng.below(3)]));
                            if from == to {
                                continue;
                            }
                            let moved: Vec<_> =
                                fs.keys().filter(|k| under(k, &from)).cloned().collect();
                            fs.retain(|k, _| !under(k, &to));
                            for k in moved {
                                let v = fs.remove(&k).unwrap();
                                let mut n = to.clone();
                                n.extend_from_slice(&k[from.len()..]);
                                fs.insert(n, v);
                            }
                            x.apply(&Change::MoveUnder(from, to));
                        }
                    }
                    assert_eq!(x.judge(b"a/x", Some(&0)), Origin::Ours, "invalid meanwhile");
                }
                let t = b(top);
                walked.extend(
                    fs.iter()
                        .filter(|(k, _)| under(k, &t))
                        .map(|(k, v)| (k.clone(), *v)),
                );
            }
            let look = |root: &[u8]| -> Result<Vec<(Vec<u8>, u32)>, ()> {
                Ok(fs
                    .iter()
                    .filter(|(k, _)| under(k, root))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect())
            };
            assert_eq!(
                x.finish_rebase(token, walked, look),
                Ok(Rebased::Done(fs.len()))
            );
            assert!(x.is_valid());
            for (k, v) in &fs {
                assert_eq!(x.judge(k, Some(v)), Origin::Ours, "seed {seed} {k:?}");
                assert!(x.judge(k, Some(&9999)).is_local(), "seed {seed} {k:?}");
            }
            assert!(x.judge(b"a/new", Some(&1)).is_local());
        }
    }

    #[test]
    fn an_invalidated_or_overflowed_rebase_is_not_folded_in() {
        let mut x: Ledger<u32> = Ledger::invalid();
        let t = x.begin_rebase().unwrap();
        x.invalidate();
        let none = |_: &[u8]| -> Result<Vec<(Vec<u8>, u32)>, ()> { Ok(vec![]) };
        assert_eq!(x.finish_rebase(t, [(b("a"), 1)], none), Ok(Rebased::Stale));
        assert!(!x.is_valid() && !x.is_rebasing());

        let t = x.begin_rebase().unwrap();
        for i in 0..=MAX_TOUCHED {
            x.apply(&Change::Put(format!("f{i}").into_bytes(), 1));
        }
        assert_eq!(x.finish_rebase(t, [], none), Ok(Rebased::Overflowed));
        assert!(!x.is_valid() && !x.is_rebasing());
        let t = x.begin_rebase().unwrap();
        x.abandon_rebase(t);
        assert!(!x.is_valid() && !x.is_rebasing());
        let t = x.begin_rebase().unwrap();
        assert_eq!(
            x.finish_rebase(t, [(b("a"), 1)], none),
            Ok(Rebased::Done(1))
        );
        assert_eq!(x.begin_rebase(), None, "valid: nothing to rebase");
    }

    #[test]
    fn touched_roots_cover_their_subtrees_only() {
        let set: BTreeSet<Vec<u8>> = [b("d"), b("d/x"), b("d-x/y"), b("e/f/g"), b("e/f")]
            .into_iter()
            .collect();
        let roots = outermost(&set);
        assert_eq!(roots, [b("d"), b("d-x/y"), b("e/f")]);
        assert!(touched_at(&roots, b"d/q/r") && touched_at(&roots, b"e/f"));
        assert!(!touched_at(&roots, b"d-x") && !touched_at(&roots, b"e/fg"));
        assert!(!touched_at(&[], b"d"));
    }
}
