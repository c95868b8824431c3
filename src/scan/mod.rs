//! Walks an export into a manifest of [`Entry`]s.
//!
//! Symlinks are recorded, never followed; special files are skipped with a
//! warning; names are kept as raw bytes; the second and later names of a
//! multiply-linked file become [`Kind::HardLink`] to the first (in sorted
//! order, so both sides pick the same leader for the same tree).
//!
//! A whole-tree walk runs on every core (up to 8; [`parallel`]) and lists
//! exactly what one walk would, in the same order.
//!
//! The walk goes from directory descriptor to directory descriptor, never
//! through absolute paths: a tree deeper than PATH_MAX does not stop it, and
//! no symlink swapped into a parent can lead it outside the export. An entry
//! that cannot be read is skipped with a warning; the rest of the tree is
//! still listed.

use std::path::Path;

mod collect;
pub mod digest;
mod fs;
mod leftovers;
mod parallel;
mod scoped;
pub use fs::{hash_file, hash_reader};
pub use leftovers::sweep_leftovers_from_before;
pub use scoped::scan_scoped;

use crate::index::Index;
use crate::wire::{Entry, Kind, Meta};
use collect::{Collector, Frame};
use fs::open_root;
use std::os::unix::fs::MetadataExt;
use syncd_proto::path::RelPath;

#[derive(Default, Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Special files (FIFOs, sockets, devices), unrepresentable names and
    /// entries that could not be read.
    pub skipped: Vec<String>,
    /// Entries that could not be read (their subtree, for a directory): what
    /// is there is unknown, so a plan must neither send nor delete beneath them.
    pub unreadable: Vec<RelPath>,
    pub hashed_bytes: u64,
    /// Hard-link groups of which this scan saw fewer names than the inode
    /// has links: the other names are outside the scan's scope (or outside
    /// the export).
    pub partial_links: Vec<PartialLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialLink {
    /// (device, inode)
    pub key: (u64, u64),
    pub names: Vec<RelPath>,
}

pub fn meta_of(m: &std::fs::Metadata) -> Meta {
    Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
    }
}

pub use syncd_proto::path::walk_order;

/// What a whole-tree scan tells of the directories it reads, each before
/// it reads it (the primary watches them there: see
/// [`crate::watch::DirWatcher`]). Called from the walk's threads, not in
/// walk order.
pub trait WatchDirs: Send + Sync {
    /// `dir` is about to be read: its status taken, its names listed.
    fn before_read(&self, dir: &RelPath);
    /// The subdirectories just found in one directory (by the type its
    /// listing gives), none of them read yet; each is read later, after
    /// its own `before_read`. Lets their watches be added in one batch.
    fn before_subdirs(&self, _dirs: Vec<RelPath>) {}
}

impl<F: Fn(&RelPath) + Send + Sync> WatchDirs for F {
    fn before_read(&self, dir: &RelPath) {
        self(dir)
    }
}

pub type DirHook = std::sync::Arc<dyn WatchDirs>;

/// Scans `root`. With `hash`, every regular file carries its BLAKE3, taken
/// from `index` when the stamp still matches unless `force` is set. Only
/// the root itself being unreadable is an error.
pub fn scan(root: &Path, index: &mut Index, hash: bool, force: bool) -> std::io::Result<Scan> {
    scan_with(root, index, hash, force, None)
}

/// [`scan`], calling `on_dir` with each directory beneath the root before
/// reading it.
pub fn scan_with(
    root: &Path,
    index: &mut Index,
    hash: bool,
    force: bool,
    on_dir: Option<DirHook>,
) -> std::io::Result<Scan> {
    let dir = open_root(root)?;
    let mut c = Collector::sweeping(hash, on_dir);
    let names = c.read_dir(&dir, None)?;
    let root = Frame {
        dir: dir.try_clone()?,
        rel: None,
        names,
    };
    let c = parallel::walk(c, root, parallel::threads());
    prune_index(index, &c.out.entries);
    c.finish(&dir, index, force)
}

/// Forgets the index's paths that a whole listing no longer has, so the
/// index does not grow forever; only once it holds more entries than the
/// listing has files (it holds files' hashes alone), which bounds it by
/// the export's file count. An index no bigger is left as it is, even
/// still being read (`Index::load_behind`): an in-sync restart at a
/// million files then looks up no path and need not wait for the load. A
/// stale entry is harmless meanwhile: it is trusted only for a file of
/// the same path, size, times and inode.
pub fn prune_index(index: &mut Index, listing: &[Entry]) {
    let file = |e: &&Entry| matches!(e.kind, Kind::File { .. } | Kind::HardLink { .. });
    let files = listing.iter().filter(file).count();
    if index.size_hint() > files {
        // Only files': a path that is a directory now goes too, or the
        // index would stay above the count and be pruned at every walk.
        index.keep_only(listing.iter().filter(file).map(|e| e.path.as_bytes()));
    }
}

/// Returns to the kernel what a whole-tree walk and its products freed
/// (listings, plans, digest trees: hundreds of MB at a million files).
/// glibc keeps freed small blocks in its arenas (the scan's and the digest
/// tree's threads have their own), so the daemon's RSS would stay at that
/// peak all the while it watches. A few milliseconds, once per whole-tree
/// walk.
pub fn give_back_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t0 = std::time::Instant::now();
        // SAFETY: malloc_trim only releases the allocator's own free pages.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(elapsed = ?t0.elapsed(), "freed heap returned to the kernel");
    }
}

#[cfg(test)]
mod tests;
