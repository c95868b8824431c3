//! How the standby makes a batch durable before it is acknowledged: one
//! rule ([`choose`]) for both flushes of a commit (content before the
//! renames, names before the reply).
//!
//! `syncfs` flushes everything dirty on the export's filesystem, other
//! writers' data included (a build, or the NFS server of the primary when
//! both share a disk), so a small batch waits for all of it. An `fsync` of
//! each file and of each directory whose entries changed waits only for
//! them and the journal commit they join (`benches/flush_floor.py`
//! measures both). A directory entry is only made durable by an `fsync` of
//! its directory, so this is used only when every change since the last
//! durable point is one this module knows the directory of: a verified
//! file put in place, a directory's metadata (its mtime) set. Any other
//! change (a mkdir, delete, rename, symlink, link, or something kept in the
//! conflicts area) or a large batch falls back to `syncfs`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;

use crate::fsroot::Root;
use syncd_proto::path::RelPath;

/// At most this many files (or directories) are flushed one by one; more
/// go by one `syncfs` (the per-file calls then cost more than one flush
/// of the filesystem, and a batch this big is not latency-bound).
pub(super) const EACH_MAX: usize = 64;

/// Threads that issue one batch's `fsync`s together, so that ext4 joins
/// them into one journal commit instead of one commit each.
const THREADS: usize = 8;

/// How a set of changes is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flush {
    /// Nothing to flush (nothing changed, or `durable = false`).
    Nothing,
    /// `fsync` of each file or directory concerned.
    Each,
    /// One `syncfs` of the export's filesystem.
    Whole,
}

/// The rule: `items` files or directories to make durable, `untracked`
/// when a change since the last durable point is not among them.
pub(super) fn choose(durable: bool, items: usize, untracked: bool) -> Flush {
    match (durable, items, untracked) {
        (false, _, _) => Flush::Nothing,
        (true, _, true) => Flush::Whole,
        (true, 0, false) => Flush::Nothing,
        (true, n, false) if n <= EACH_MAX => Flush::Each,
        (true, _, false) => Flush::Whole,
    }
}

/// What changed on the export since the last durable point (a commit's
/// reply): the directories files were put in, and whether anything else
/// changed. Shared by every session's lanes: a file stream's rename is
/// made durable by the next commit on the control stream.
#[derive(Debug, Default)]
pub(super) struct Window {
    dirs: BTreeSet<Vec<u8>>,
    untracked: bool,
    /// The conflicts-area counter at the window's start: a change means
    /// something was moved there (its directories are not tracked).
    kept: u64,
}

impl Window {
    /// A verified file was put in place at `p`: its directory's entry.
    pub(super) fn placed(&mut self, p: &RelPath) {
        self.add(p.split_last().0);
    }

    /// The metadata of `p` itself changed (flushed by an `fsync` of `p`,
    /// which must be a directory: anything else falls back to `syncfs`).
    pub(super) fn changed(&mut self, p: &RelPath) {
        self.add(p.as_bytes());
    }

    fn add(&mut self, dir: &[u8]) {
        if self.dirs.len() <= EACH_MAX {
            self.dirs.insert(dir.to_vec());
        }
    }

    /// A change whose directories are not tracked.
    pub(super) fn untracked(&mut self) {
        self.untracked = true;
    }

    /// How the window would be flushed now; `kept` is the conflicts-area
    /// counter.
    pub(super) fn plan(&self, durable: bool, kept: u64) -> Flush {
        choose(
            durable,
            self.dirs.len(),
            self.untracked || kept != self.kept,
        )
    }

    /// Ends the window: how to flush it, and the directories to `fsync`
    /// for [`Flush::Each`].
    pub(super) fn take(&mut self, durable: bool, kept: u64) -> (Flush, Vec<Vec<u8>>) {
        let plan = self.plan(durable, kept);
        let dirs = std::mem::take(&mut self.dirs);
        *self = Window {
            kept,
            ..Window::default()
        };
        (plan, dirs.into_iter().collect())
    }
}

/// `fsync`s every file in `files` together (see [`THREADS`]); each one's
/// result, in order.
pub(super) fn sync_each(files: &[&File]) -> Vec<io::Result<()>> {
    if files.len() <= 1 {
        return files.iter().map(|f| f.sync_all()).collect();
    }
    let per = files.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        let parts: Vec<_> = files
            .chunks(per)
            .map(|c| {
                let h = s.spawn(move || c.iter().map(|f| f.sync_all()).collect::<Vec<_>>());
                (c.len(), h)
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    (0..n)
                        .map(|_| Err(io::Error::other("fsync thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

/// Makes the entries and metadata of `dirs` (beneath `root`) durable: an
/// `fsync` of each, together; `syncfs` if one cannot be opened as a
/// directory (moved or removed meanwhile, or a file whose metadata
/// changed).
pub(super) fn sync_dirs(root: &Root, dirs: &[Vec<u8>]) -> io::Result<()> {
    let Ok(files) = dirs
        .iter()
        .map(|d| root.dir_file(d))
        .collect::<io::Result<Vec<File>>>()
    else {
        return root.sync();
    };
    let refs: Vec<&File> = files.iter().collect();
    sync_each(&refs).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).expect("valid path")
    }

    #[test]
    fn the_rule_picks_per_file_for_small_tracked_batches_only() {
        assert_eq!(choose(false, 3, false), Flush::Nothing);
        assert_eq!(choose(false, 3, true), Flush::Nothing);
        assert_eq!(choose(true, 0, false), Flush::Nothing);
        assert_eq!(choose(true, 1, false), Flush::Each);
        assert_eq!(choose(true, EACH_MAX, false), Flush::Each);
        assert_eq!(choose(true, EACH_MAX + 1, false), Flush::Whole);
        assert_eq!(choose(true, 0, true), Flush::Whole);
        assert_eq!(choose(true, 1, true), Flush::Whole);
    }

    #[test]
    fn a_window_names_each_directory_once_and_starts_over() {
        let mut w = Window::default();
        w.placed(&rel("a/x"));
        w.placed(&rel("a/y"));
        w.placed(&rel("top"));
        assert_eq!(w.plan(true, 0), Flush::Each);
        let (plan, dirs) = w.take(true, 0);
        assert_eq!(plan, Flush::Each);
        assert_eq!(dirs, vec![b"".to_vec(), b"a".to_vec()]);
        assert_eq!(w.take(true, 0), (Flush::Nothing, vec![]));
        // A directory's own metadata (its mtime) is its own fsync.
        w.placed(&rel("a/x"));
        w.changed(&rel("a"));
        w.changed(&rel("b"));
        assert_eq!(
            w.take(true, 0),
            (Flush::Each, vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(w.take(true, 0), (Flush::Nothing, vec![]));
    }

    #[test]
    fn any_untracked_change_or_a_keep_makes_the_window_whole() {
        let mut w = Window::default();
        w.placed(&rel("a/x"));
        w.untracked();
        assert_eq!(w.take(true, 0).0, Flush::Whole);
        // The next window is tracked again.
        w.placed(&rel("a/x"));
        assert_eq!(w.plan(true, 0), Flush::Each);
        // Something went to the conflicts area meanwhile.
        assert_eq!(w.plan(true, 1), Flush::Whole);
        assert_eq!(w.take(true, 1).0, Flush::Whole);
        w.placed(&rel("a/x"));
        assert_eq!(w.plan(true, 1), Flush::Each);
    }

    #[test]
    fn many_directories_make_the_window_whole() {
        let mut w = Window::default();
        for i in 0..=EACH_MAX {
            w.placed(&rel(&format!("d{i}/f")));
        }
        assert_eq!(w.plan(true, 0), Flush::Whole);
        assert_eq!(w.plan(false, 0), Flush::Nothing);
    }

    #[test]
    fn sync_each_reports_every_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<File> = (0..20)
            .map(|i| File::create(dir.path().join(format!("f{i}"))).expect("create"))
            .collect();
        let refs: Vec<&File> = files.iter().collect();
        let r = sync_each(&refs);
        assert_eq!(r.len(), 20);
        assert!(r.iter().all(|r| r.is_ok()));
    }
}
