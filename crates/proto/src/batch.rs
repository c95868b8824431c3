//! The batcher: coalesces filesystem changes into batches, sans-IO.
//!
//! It is fed [`Change`]s (already translated from inotify events) and the
//! current time, and says when a batch is ready and what it holds. A batch is
//! a reconcile *scope* (the paths to compare with the standby, some with their
//! whole subtree) plus the renames to replay first. Many writes to one path
//! are one scope entry; a create then delete is a path that exists on neither
//! side, so it costs one stat; chained renames replay in order.
//!
//! A file that is still being written (data changed, no close yet) waits
//! until it is closed or quiet for `settle`, so it is not shipped half-written;
//! a file that changes while it is read is caught by the sender's stamp check
//! and its newer events bring it back in a later batch.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::model::Scope;
use crate::path::RelPath;

/// Tunables (see `[sync]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Wait this long without new changes before shipping.
    pub window: Duration,
    /// Never hold a change longer than this. Under a steady stream the
    /// window never goes quiet, so this is what bounds the latency.
    pub max_delay: Duration,
    /// Ship at once when this many paths are pending.
    pub max_paths: usize,
    /// A file written but not closed is shipped after this much quiet.
    pub settle: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window: Duration::from_millis(5),
            max_delay: Duration::from_millis(10),
            max_paths: 4096,
            settle: Duration::from_millis(500),
        }
    }
}

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
    changes: u64,
    oldest: Option<Instant>,
    last: Option<Instant>,
}

impl Batcher {
    pub fn new(cfg: BatchConfig) -> Batcher {
        Batcher {
            cfg,
            full: false,
            renames: Vec::new(),
            ready: BTreeMap::new(),
            writing: HashMap::new(),
            changes: 0,
            oldest: None,
            last: None,
        }
    }

    /// Paths and renames waiting (the queue depth).
    pub fn pending(&self) -> usize {
        self.ready.len() + self.writing.len() + self.renames.len() + usize::from(self.full)
    }

    /// When the oldest pending change was seen.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    pub fn push(&mut self, c: Change, now: Instant) {
        self.changes += 1;
        self.oldest.get_or_insert(now);
        self.last = Some(now);
        match c {
            Change::Settled(p) => {
                self.writing.remove(&p);
                self.ready.entry(p).or_insert(false);
            }
            Change::Writing(p) => {
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
                self.ready.insert(p, true);
            }
            Change::Renamed { from, to } => {
                // Whatever was pending under `from` now lives under `to`,
                // and `to` is compared recursively, which covers it.
                self.writing.retain(|p, _| !p.starts_with(&from));
                self.ready.entry(from.clone()).or_insert(false);
                self.ready.insert(to.clone(), true);
                self.renames.push((from, to));
            }
            Change::Lost => self.full = true,
        }
    }

    /// Asks for a full compare on the next batch (reconnect, periodic check).
    pub fn force_full(&mut self, now: Instant) {
        self.full = true;
        self.oldest.get_or_insert(now);
    }

    /// When [`Batcher::take`] may next return something.
    pub fn deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut min = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        if self.full || !self.ready.is_empty() || !self.renames.is_empty() {
            match (self.last, self.oldest) {
                (Some(last), Some(oldest)) => {
                    min((last + self.cfg.window).min(oldest + self.cfg.max_delay))
                }
                // Forced without a change: due now.
                (None, Some(oldest)) => min(oldest),
                (_, None) => {}
            }
        }
        for t in self.writing.values() {
            min(*t + self.cfg.settle);
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
        }
        let has = self.full || !self.ready.is_empty() || !self.renames.is_empty();
        if !has {
            return None;
        }
        let due = self.ready.len() + self.renames.len() >= self.cfg.max_paths
            || self.last.is_none_or(|l| now >= l + self.cfg.window)
            || self.oldest.is_none_or(|o| now >= o + self.cfg.max_delay);
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
        // Files still being written stay; their age restarts the lag clock.
        self.oldest = self.writing.values().min().copied();
        self.last = None;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn cfg() -> BatchConfig {
        BatchConfig {
            window: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_paths: 3,
            settle: Duration::from_millis(500),
        }
    }

    fn scope(b: &Batch) -> Vec<(String, bool)> {
        b.scope
            .iter()
            .map(|s| (s.path.to_string(), s.recursive))
            .collect()
    }

    #[test]
    fn many_writes_to_one_file_are_one_entry_after_the_window() {
        let t0 = Instant::now();
        let mut b = Batcher::new(cfg());
        for i in 0..5 {
            b.push(Change::Writing(p("d/f")), t0 + Duration::from_millis(i));
        }
        b.push(Change::Settled(p("d/f")), t0 + Duration::from_millis(5));
        assert_eq!(
            b.take(t0 + Duration::from_millis(10)),
            None,
            "window not over"
        );
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(15)));
        let got = b.take(t0 + Duration::from_millis(15)).unwrap();
        assert_eq!(scope(&got), [("d".into(), false), ("d/f".into(), false)]);
        assert_eq!(got.changes, 6);
        assert_eq!(got.oldest, Some(t0));
        assert!(b.take(t0 + Duration::from_secs(9)).is_none());
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn max_delay_bounds_a_steady_stream() {
        let t0 = Instant::now();
        let mut b = Batcher::new(BatchConfig {
            max_paths: 10_000,
            ..cfg()
        });
        let mut shipped = None;
        for i in 0..200u64 {
            let now = t0 + Duration::from_millis(i);
            b.push(Change::Settled(p(&format!("f{i}"))), now);
            if let Some(x) = b.take(now) {
                shipped = Some((i, x));
                break;
            }
        }
        let (i, x) = shipped.expect("a batch within max_delay");
        assert_eq!(i, 100);
        assert_eq!(x.scope.len(), 101);
    }

    #[test]
    fn max_paths_ships_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(cfg());
        b.push(Change::Settled(p("a")), t0);
        b.push(Change::Settled(p("b")), t0);
        assert!(b.take(t0).is_none());
        b.push(Change::Settled(p("c")), t0);
        assert_eq!(b.take(t0).unwrap().scope.len(), 3);
    }

    #[test]
    fn a_file_being_written_waits_for_close_or_quiet() {
        let t0 = Instant::now();
        let mut b = Batcher::new(cfg());
        b.push(Change::Writing(p("log")), t0);
        assert!(b.take(t0 + Duration::from_millis(200)).is_none());
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(500)));
        b.push(Change::Writing(p("log")), t0 + Duration::from_millis(300));
        assert!(
            b.take(t0 + Duration::from_millis(600)).is_none(),
            "still written"
        );
        let got = b.take(t0 + Duration::from_millis(800)).unwrap();
        assert_eq!(scope(&got), [("log".into(), false)]);
        // Rewritten after a close: waits for the new close.
        b.push(Change::Settled(p("y")), t0 + Duration::from_millis(900));
        b.push(Change::Writing(p("y")), t0 + Duration::from_millis(901));
        assert!(b.take(t0 + Duration::from_millis(950)).is_none());
        b.push(Change::Settled(p("y")), t0 + Duration::from_millis(960));
        assert_eq!(
            scope(&b.take(t0 + Duration::from_millis(970)).unwrap()),
            [("y".into(), false)]
        );
        // Closed: ships after the window, not after settle.
        b.push(Change::Writing(p("x")), t0 + Duration::from_secs(1));
        b.push(Change::Settled(p("x")), t0 + Duration::from_millis(1001));
        assert!(b.take(t0 + Duration::from_millis(1011)).is_some());
    }

    #[test]
    fn renames_keep_order_and_compare_the_new_tree() {
        let t0 = Instant::now();
        let mut b = Batcher::new(BatchConfig {
            max_paths: 100,
            ..cfg()
        });
        b.push(Change::Writing(p("a/x")), t0);
        b.push(
            Change::Renamed {
                from: p("a"),
                to: p("b"),
            },
            t0,
        );
        b.push(
            Change::Renamed {
                from: p("b"),
                to: p("c/d"),
            },
            t0,
        );
        let got = b.take(t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(got.renames, [(p("a"), p("b")), (p("b"), p("c/d"))]);
        assert_eq!(
            scope(&got),
            [
                ("a".into(), false),
                ("b".into(), true),
                ("c".into(), false),
                ("c/d".into(), true)
            ]
        );
        assert_eq!(b.pending(), 0, "the write under a/ moved with it");
    }

    #[test]
    fn new_tree_is_recursive_and_lost_events_mean_full() {
        let t0 = Instant::now();
        let mut b = Batcher::new(cfg());
        b.push(Change::Tree(p("x/y")), t0);
        b.push(Change::Settled(p("x/y")), t0);
        b.push(Change::Lost, t0);
        let got = b.take(t0 + Duration::from_millis(10)).unwrap();
        assert!(got.full);
        assert_eq!(scope(&got), [("x".into(), false), ("x/y".into(), true)]);
        b.force_full(t0);
        assert!(b.take(t0 + Duration::from_millis(20)).unwrap().full);
    }
}
