//! The ledger's rebase: a walk of the whole export beside the session,
//! folded in with a fresh look at the paths syncd changed meanwhile.

use std::collections::BTreeSet;

use super::{Change, Ledger, PathMap};

/// The paths syncd changed while a rebase walked the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rebase {
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

impl<S: Clone + PartialEq> Ledger<S> {
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
            // Kept: the shell begins again at once, and a batch may be
            // between its expectations and its changes.
            return Ok(Rebased::Overflowed);
        }
        let roots = outermost(&r.touched);
        let mut all: Vec<(Vec<u8>, S)> = walked
            .into_iter()
            .filter(|(p, _)| !touched_at(&roots, p))
            .collect();
        for root in &roots {
            // On error the ledger stays invalid (reports nothing).
            match look(root) {
                Ok(v) => all.extend(v),
                Err(e) => {
                    self.expected.clear();
                    return Err(e);
                }
            }
        }
        self.map = PathMap::from_entries(all);
        self.valid = true;
        Ok(Rebased::Done(self.map.len()))
    }

    /// Ends the rebase `token` without a result (its walk failed): the
    /// ledger stays invalid, and the next catch-up begins again.
    pub fn abandon_rebase(&mut self, token: u64) {
        if self.rebase.take_if(|r| r.epoch == token).is_some() {
            self.expected.clear();
        }
    }

    /// Notes the paths `c` changes, during a rebase.
    pub(super) fn touch(&mut self, c: &Change<S>) {
        let Some(r) = &mut self.rebase else { return };
        let paths: [Option<&Vec<u8>>; 2] = match c {
            Change::Put(p, _) | Change::RemoveUnder(p) | Change::Remove(p) => [Some(p), None],
            Change::MoveUnder(from, to) => [Some(from), Some(to)],
            // Kept beside the rebase (see `apply`); the change it
            // announces touches.
            Change::Expect(..) => [None, None],
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
    use std::collections::BTreeMap;

    use super::super::under;
    use super::*;
    use crate::pair::local::Origin;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
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
