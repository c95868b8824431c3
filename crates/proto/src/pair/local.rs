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
//! A change is recorded after it is made, so a crash between the two would
//! make syncd's own entry look like a local write after the restart. The
//! shell therefore writes an [`Change::Expect`] ahead of each change it is
//! about to make: until a `Put` (or a removal) settles the path, both the
//! recorded and the expected stamp are syncd's; a restart settles what is
//! left by looking at the entries.
//!
//! The rebase walks the whole export (a million entries take minutes on a
//! loaded disk), so it runs beside the session, not inside its reply path:
//! [`Ledger::begin_rebase`] starts it, the changes syncd makes meanwhile
//! mark their paths as touched, and [`Ledger::finish_rebase`] takes the
//! walk's stamps for untouched paths and a fresh look (under the shell's
//! lock) for touched ones, whose walked stamps may predate syncd's change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod map;
mod rebase;
#[cfg(test)]
mod tests;

use map::PathMap;
use rebase::Rebase;
pub use rebase::{Rebased, MAX_TOUCHED};

/// Bounds the expectations kept per path (the oldest goes): each is settled
/// or dropped within its batch, so only a stream of failures could pile up.
const MAX_EXPECTED_PER_PATH: usize = 4;

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
    /// syncd is about to put this entry at the path (journalled ahead of
    /// the change): until the path is settled, it is syncd's as well as
    /// what is recorded. Last, so that older journals still decode.
    Expect(Vec<u8>, S),
}

/// Per path, what syncd last put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger<S> {
    /// Compact (paths back to back): it holds every file of the export.
    map: PathMap<S>,
    /// Entries syncd is putting, not yet settled (a few per lane, or what
    /// a crash left until the restart settles it); a path may expect more
    /// than one (a rename moves a record and a placement onto one name).
    expected: BTreeMap<Vec<u8>, Vec<S>>,
    valid: bool,
    /// A rebase under way (the ledger is invalid meanwhile).
    rebase: Option<Rebase>,
    /// Tells a finished walk from one an invalidation or a newer rebase
    /// made stale.
    epoch: u64,
}

impl<S> Default for Ledger<S> {
    fn default() -> Self {
        Ledger {
            map: PathMap::default(),
            expected: BTreeMap::new(),
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

/// `k`, at or beneath `from`, as moved to `to`.
fn moved_to(k: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    [to, &k[from.len()..]].concat()
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
            map: PathMap::from_entries(entries),
            valid: true,
            ..Ledger::default()
        }
    }

    pub fn is_valid(&self) -> bool {
        self.valid
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn get(&self, path: &[u8]) -> Option<&S> {
        self.map.get(path)
    }

    /// Every entry, in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &S)> {
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
            _ if self
                .expected
                .get(path)
                .is_some_and(|v| v.iter().any(|e| same(e, cur))) =>
            {
                Origin::Ours
            }
            Some(_) => Origin::Changed,
            None => Origin::New,
        }
    }

    /// Applies `c`; an invalid ledger stays empty (there is nothing to
    /// journal). Returns whether anything was to be recorded.
    pub fn apply(&mut self, c: &Change<S>) -> bool {
        if !self.valid {
            self.touch(c);
            if self.rebase.is_some() {
                // A rebase may end between an expectation and its change:
                // the ledger it makes valid must still hold it.
                self.follow_expected(c);
            }
            return false;
        }
        self.follow_expected(c);
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
                let gone: Vec<_> = self.beneath(to).collect();
                for k in gone {
                    self.map.remove(&k);
                }
                let moved: Vec<_> = self.beneath(from).collect();
                for k in moved {
                    if let Some(s) = self.map.remove(&k) {
                        self.map.insert(moved_to(&k, from, to), s);
                    }
                }
            }
            Change::Expect(..) => {}
        }
        true
    }

    /// What `c` does to the expectations: a change settles those at its
    /// paths, a move takes them along.
    fn follow_expected(&mut self, c: &Change<S>) {
        match c {
            Change::Put(p, _) | Change::Remove(p) => {
                self.expected.remove(p);
            }
            Change::RemoveUnder(p) => self.expected.retain(|k, _| !under(k, p)),
            Change::MoveUnder(from, to) => {
                self.expected.retain(|k, _| !under(k, to));
                let moved: Vec<_> = self
                    .expected
                    .keys()
                    .filter(|k| under(k, from))
                    .cloned()
                    .collect();
                for k in moved {
                    if let Some(v) = self.expected.remove(&k) {
                        self.expected.insert(moved_to(&k, from, to), v);
                    }
                }
            }
            Change::Expect(p, s) => {
                let v = self.expected.entry(p.clone()).or_default();
                if !v.contains(s) {
                    if v.len() >= MAX_EXPECTED_PER_PATH {
                        v.remove(0);
                    }
                    v.push(s.clone());
                }
            }
        }
    }

    /// Drops an expectation whose change failed (in memory: a restart
    /// settles a journalled one by looking, and finds it was not made).
    pub fn unexpect(&mut self, path: &[u8], s: &S) {
        if let Some(v) = self.expected.get_mut(path) {
            v.retain(|e| e != s);
            if v.is_empty() {
                self.expected.remove(path);
            }
        }
    }

    /// What a rename of `from` to `to` is about to make: every entry at or
    /// beneath `from` recorded or expected, under its new name: expected
    /// ahead of the rename, whose `MoveUnder` then replaces them.
    pub fn moving(&self, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, S)> {
        let recorded = self.entries_under(from);
        let expected = self
            .expected
            .range(from.to_vec()..)
            .take_while(|(k, _)| k.starts_with(from))
            .filter(|(k, _)| under(k, from))
            .flat_map(|(k, v)| v.iter().map(move |s| (k.as_slice(), s)));
        recorded
            .chain(expected)
            .map(|(k, s)| (moved_to(k, from, to), s.clone()))
            .collect()
    }

    /// The entries expected and not yet settled, in path order.
    pub fn expected(&self) -> impl Iterator<Item = (&[u8], &S)> {
        self.expected
            .iter()
            .flat_map(|(p, v)| v.iter().map(move |s| (p.as_slice(), s)))
    }

    /// Settles what a crash left expected (at a restart, before any change
    /// is made): `look` gives the stamp at a path now; an entry that
    /// became what was expected is recorded, any other expectation is
    /// dropped (the change never happened). Returns how many were recorded.
    pub fn settle(
        &mut self,
        mut look: impl FnMut(&[u8]) -> Option<S>,
        same: impl Fn(&S, &S) -> bool,
    ) -> usize {
        let mut n = 0;
        for (p, v) in std::mem::take(&mut self.expected) {
            match look(&p) {
                Some(cur) if v.iter().any(|s| same(s, &cur)) => {
                    self.map.insert(p, cur);
                    n += 1;
                }
                _ => {}
            }
        }
        n
    }

    /// The recorded entries at or beneath `p`.
    pub fn entries_under<'a>(&'a self, p: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a S)> {
        self.map
            .range_from(p)
            .take_while(move |(k, _)| k.starts_with(p))
            .filter(move |(k, _)| under(k, p))
    }

    /// The recorded paths at or beneath `p`: every key starting with `p`
    /// (a sorted range), less siblings such as `p-x`.
    fn beneath<'a>(&'a self, p: &'a [u8]) -> impl Iterator<Item = Vec<u8>> + 'a {
        self.map
            .range_from(p)
            .take_while(move |(k, _)| k.starts_with(p))
            .filter(move |(k, _)| under(k, p))
            .map(|(k, _)| k.to_vec())
    }

    /// Forgets everything: this node's export is no longer the leader's
    /// copy as syncd made it (it leads, or the record was lost).
    pub fn invalidate(&mut self) {
        self.map.clear();
        self.expected.clear();
        self.valid = false;
        self.rebase = None;
    }
}
