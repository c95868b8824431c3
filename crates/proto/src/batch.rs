//! The batcher: coalesces filesystem changes into batches, sans-IO.
//!
//! It is fed [`Change`]s (already translated from inotify events) and the
//! current time, and says when a batch is ready and what it holds. A batch is
//! a reconcile *scope* (the paths to compare with the standby, some with their
//! whole subtree) plus the renames to replay first. Many writes to one path
//! are one scope entry; a create then delete is a path that exists on neither
//! side, so it costs one stat; chained renames replay in order.
//!
//! Group commit: with the default `window` of 0 a batch is due as soon as
//! something is ready (and [`PACE`] after the previous one), and the live
//! loop takes one only when no batch is in flight, so a change made while
//! the link is idle goes at once and changes made while a batch is in
//! flight gather for the next one (big batches under load, no waiting when
//! quiet). A `window` above 0 lingers for that
//! much quiet instead, bounded by `max_delay`.
//!
//! A file that is still being written (data changed, no close yet) waits
//! until it is closed or quiet for `settle`, so it is not shipped half-written;
//! a file that changes while it is read is caught by the sender's stamp check
//! and its newer events bring it back in a later batch. The first half of a
//! rename waits [`PAIR_WAIT`] for its second half, so a move is replayed as a
//! rename instead of a delete and a copy.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::model::Scope;
use crate::path::RelPath;

/// Tunables (see `[sync]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Wait this long without new changes before shipping; 0 (the
    /// default) is group commit: ship at once when no batch is in flight.
    pub window: Duration,
    /// Never hold a change longer than this (for a `window` or a rename's
    /// first half) once no batch is in flight, counted from when it could
    /// ship (a file's close, not its first write).
    pub max_delay: Duration,
    /// Ship at once when this many paths are pending.
    pub max_paths: usize,
    /// A file written but not closed is shipped after this much quiet.
    pub settle: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window: Duration::ZERO,
            max_delay: Duration::from_millis(10),
            max_paths: 4096,
            settle: Duration::from_millis(500),
        }
    }
}

/// Batches start at least this far apart (unless `max_paths` are pending):
/// each costs both daemons a fixed amount of CPU and the standby two
/// `syncfs`, so when ships are quick, back-to-back batches of a file or two
/// would spend the CPU a steady stream needs. An idle link is never held
/// back by more than this.
pub const PACE: Duration = Duration::from_millis(3);

/// How long the first half of a rename (`IN_MOVED_FROM`) waits for its
/// second: the kernel queues both at once, so only a batch cut between them
/// is avoided; a move out of the export never gets one and goes after this.
pub const PAIR_WAIT: Duration = Duration::from_millis(2);

/// One observed change, in export-relative paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Content or metadata of `path` is final for now (closed after writing,
    /// chmod, delete, symlink or hard link created, moved out of the export).
    Settled(RelPath),
    /// `path` is being written (data changed, not closed yet).
    Writing(RelPath),
    /// Metadata of `path` changed (chmod, utime); a file still being written
    /// keeps waiting for its close.
    Meta(RelPath),
    /// A directory appeared (created or moved in): its whole subtree is new,
    /// including anything written before its watch was installed.
    Tree(RelPath),
    /// `path` was moved away: the first half of a rename, or a move out of
    /// the export (then it is a delete). A [`Change::Renamed`] pairs it.
    MovedAway(RelPath),
    /// A rename inside the export.
    Renamed { from: RelPath, to: RelPath },
    /// Events were lost (queue overflow, a failed watch): compare everything.
    Lost,
}

/// What to ship.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Compare the whole tree instead of `scope`.
    pub full: bool,
    pub renames: Vec<(RelPath, RelPath)>,
    /// Sorted, with every ancestor of a changed path included (non-recursive):
    /// a child's arrival changes its parent's mtime, and a missing parent must
    /// be created first.
    pub scope: Vec<Scope>,
    /// Number of changes folded into this batch.
    pub changes: u64,
    /// When the oldest change in the batch was seen (its age is the lag).
    pub oldest: Option<Instant>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        !self.full && self.renames.is_empty() && self.scope.is_empty()
    }
}

#[derive(Debug)]
pub struct Batcher {
    cfg: BatchConfig,
    full: bool,
    renames: Vec<(RelPath, RelPath)>,
    /// path -> recursive
    ready: BTreeMap<RelPath, bool>,
    /// Files being written: last data change.
    writing: HashMap<RelPath, Instant>,
    /// Files to compare again later (since, at): not yet provably complete.
    later: HashMap<RelPath, (Instant, Instant)>,
    /// First halves of renames waiting for their second: when seen.
    unpaired: HashMap<RelPath, Instant>,
    changes: u64,
    /// When the oldest pending change was seen, files still being written
    /// included: the lag.
    oldest: Option<Instant>,
    /// When the oldest change that could ship became ready: `max_delay`
    /// counts from here, so a file written for minutes does not make every
    /// batch overdue.
    ready_since: Option<Instant>,
    last: Option<Instant>,
    /// When the last batch was taken (see [`PACE`]).
    taken: Option<Instant>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig) -> Batcher {
        Batcher {
            cfg,
            full: false,
            renames: Vec::new(),
            ready: BTreeMap::new(),
            writing: HashMap::new(),
            later: HashMap::new(),
            unpaired: HashMap::new(),
            changes: 0,
            oldest: None,
            ready_since: None,
            last: None,
            taken: None,
        }
    }

    /// Paths and renames waiting (the queue depth).
    pub fn pending(&self) -> usize {
        self.ready.len()
            + self.writing.len()
            + self.later.len()
            + self.renames.len()
            + usize::from(self.full)
    }

    /// When the oldest pending change was seen.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    pub fn push(&mut self, c: Change, now: Instant) {
        self.changes += 1;
        self.oldest.get_or_insert(now);
        self.last = Some(now);
        if !matches!(c, Change::Writing(_)) {
            self.ready_since.get_or_insert(now);
        }
        match c {
            Change::Settled(p) => {
                self.writing.remove(&p);
                self.later.remove(&p);
                self.ready.entry(p).or_insert(false);
            }
            Change::MovedAway(p) => {
                self.writing.remove(&p);
                self.later.remove(&p);
                self.unpaired.insert(p.clone(), now);
                self.ready.entry(p).or_insert(false);
            }
            Change::Writing(p) => {
                self.later.remove(&p);
                // Written again after a close: wait for the new close.
                if self.ready.get(&p) == Some(&false) {
                    self.ready.remove(&p);
                }
                self.writing.insert(p, now);
            }
            Change::Meta(p) => {
                if !self.writing.contains_key(&p) {
                    self.ready.entry(p).or_insert(false);
                }
            }
            Change::Tree(p) => {
                self.writing.remove(&p);
                self.later.remove(&p);
                self.ready.insert(p, true);
            }
            Change::Renamed { from, to } => {
                // Whatever was pending under `from` now lives under `to`,
                // and `to` is compared recursively, which covers it.
                self.writing.retain(|p, _| !p.starts_with(&from));
                self.later.retain(|p, _| !p.starts_with(&from));
                self.unpaired.remove(&from);
                self.ready.entry(from.clone()).or_insert(false);
                self.ready.insert(to.clone(), true);
                self.renames.push((from, to));
            }
            Change::Lost => self.full = true,
        }
    }

    /// `path` is to be compared again at `at`, not before (a file not yet
    /// provably complete). A new event for it supersedes this.
    pub fn defer(&mut self, path: RelPath, at: Instant, now: Instant) {
        self.changes += 1;
        self.oldest.get_or_insert(now);
        if self.writing.contains_key(&path) || self.ready.contains_key(&path) {
            return;
        }
        let e = self.later.entry(path).or_insert((now, at));
        e.1 = e.1.min(at);
    }

    /// Asks for a full compare on the next batch (reconnect, periodic check).
    pub fn force_full(&mut self, now: Instant) {
        self.full = true;
        self.oldest.get_or_insert(now);
        self.ready_since.get_or_insert(now);
    }

    /// When [`Batcher::take`] may next return something.
    pub fn deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut min = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        if self.full || !self.ready.is_empty() || !self.renames.is_empty() {
            // Due once the window is quiet and every rename is paired (or
            // gave up), but never after max_delay; forced without a change:
            // due now.
            let linger = [
                self.last.map(|l| l + self.cfg.window),
                self.unpaired.values().max().map(|t| *t + PAIR_WAIT),
                self.taken.map(|t| t + PACE),
            ]
            .into_iter()
            .flatten()
            .max();
            match (linger, self.ready_since) {
                (Some(l), Some(o)) => min(l.min(o + self.cfg.max_delay)),
                (Some(t), None) | (None, Some(t)) => min(t),
                (None, None) => {}
            }
        }
        for t in self.writing.values() {
            min(*t + self.cfg.settle);
        }
        for (_, at) in self.later.values() {
            min(*at);
        }
        d
    }

    /// The batch, if one is due at `now`.
    pub fn take(&mut self, now: Instant) -> Option<Batch> {
        // Files quiet for `settle` count as closed.
        let settle = self.cfg.settle;
        let quiet: Vec<RelPath> = self
            .writing
            .iter()
            .filter(|(_, t)| now >= **t + settle)
            .map(|(p, _)| p.clone())
            .collect();
        for p in quiet {
            self.writing.remove(&p);
            self.ready.entry(p).or_insert(false);
            self.ready_since.get_or_insert(now);
        }
        let due_later: Vec<RelPath> = self
            .later
            .iter()
            .filter(|(_, (_, at))| now >= *at)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due_later {
            self.later.remove(&p);
            self.ready.entry(p).or_insert(false);
            self.ready_since.get_or_insert(now);
        }
        let has = self.full || !self.ready.is_empty() || !self.renames.is_empty();
        if !has {
            return None;
        }
        let quiet = self.last.is_none_or(|l| now >= l + self.cfg.window);
        let paired = self.unpaired.values().all(|t| now >= *t + PAIR_WAIT);
        let paced = self.taken.is_none_or(|t| now >= t + PACE);
        let due = self.ready.len() + self.renames.len() >= self.cfg.max_paths
            || (quiet && paired && paced)
            || self
                .ready_since
                .is_none_or(|o| now >= o + self.cfg.max_delay);
        if !due {
            return None;
        }
        let mut scope = std::mem::take(&mut self.ready);
        let changed: Vec<RelPath> = scope.keys().cloned().collect();
        for p in changed {
            let mut a = p.parent();
            while let Some(d) = a {
                a = d.parent();
                scope.entry(d).or_insert(false);
            }
        }
        let mut scope: Vec<Scope> = scope
            .into_iter()
            .map(|(path, recursive)| Scope { path, recursive })
            .collect();
        scope.sort_by(|a, b| crate::path::walk_order(&a.path, &b.path));
        let b = Batch {
            full: std::mem::take(&mut self.full),
            renames: std::mem::take(&mut self.renames),
            scope,
            changes: std::mem::take(&mut self.changes),
            oldest: self.oldest.take(),
        };
        // Files still being written or deferred stay; their age restarts
        // the lag clock.
        self.oldest = self
            .writing
            .values()
            .chain(self.later.values().map(|(since, _)| since))
            .min()
            .copied();
        self.ready_since = None;
        self.last = None;
        self.taken = Some(now);
        self.unpaired.clear();
        Some(b)
    }
}

#[cfg(test)]
mod tests;
