//! Recursive inotify (via `notify`), translated into batcher [`Change`]s.
//!
//! Events only make replication fast; correctness comes from reconcile. So
//! every way of losing events (kernel queue overflow, our own queue full, a
//! watch that could not be added) becomes [`Change::Lost`], a full reconcile.
//!
//! At start only the export's root is watched: the first whole-tree scan
//! adds each directory's watch just before it reads that directory
//! ([`DirWatcher`]), so a change made before the watch is seen by the read
//! and one made after it is an event; no separate walk of every directory
//! (minutes on a cold cache at 100,000 directories) delays the start. New
//! directories are watched by [`Watch::ensure`] before they are scanned.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, PathOp, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};

use crate::lease::Closed;
use syncd_proto::batch::Change;
use syncd_proto::path::RelPath;

/// Changes queued between the notify thread and the daemon; beyond this the
/// oldest are not kept and a full reconcile takes their place.
const QUEUE: usize = 1 << 16;

type Shared = Arc<Mutex<notify::RecommendedWatcher>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, notify::RecommendedWatcher> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Watch {
    watcher: Shared,
    root: PathBuf,
    pub rx: mpsc::Receiver<Change>,
    /// Set when changes were dropped (our queue full); cleared by the reader.
    pub dropped: Arc<AtomicBool>,
    /// Set when a watch could not be added (e.g. `max_user_watches`).
    pub limit_hit: Arc<AtomicBool>,
    pub wake: Arc<Notify>,
    /// What writers closed and nobody wrote since (see [`Closed`]).
    pub closed: Arc<Closed>,
    /// Changes sent to `rx` and not yet counted by the daemon (see
    /// [`Watch::counted`]).
    pub in_channel: Arc<AtomicUsize>,
}

/// Whether every change made before a point has reached the daemon's
/// queue: what a planned switchover's drain needs besides "nothing queued,
/// nothing unacknowledged", since a change can still be in the kernel's
/// inotify queue or in the channel when those read zero.
#[derive(Clone, Debug)]
pub struct WatchSync {
    closed: Arc<Closed>,
    in_channel: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl WatchSync {
    /// Marks this moment (a cookie's number); `None` when the watch has
    /// no sync point.
    pub fn ask(&self) -> Option<u64> {
        self.closed.ask_sync()
    }

    /// Every change made before `asked` is in the daemon's queue (and so in
    /// its queue-depth and lag figures).
    pub fn reached(&self, asked: u64) -> bool {
        // The watch thread sends a change before it handles the later
        // cookie, and the daemon counts it before decrementing; a change
        // the channel had no room for is a pending full compare instead.
        self.closed.cookie_reached(asked)
            && self.in_channel.load(Ordering::Acquire) == 0
            && !self.dropped.load(Ordering::Acquire)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {err}{hint}")]
pub struct WatchError {
    path: String,
    err: notify::Error,
    hint: &'static str,
}

fn hint(e: &notify::Error) -> &'static str {
    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
        " (the inotify watch limit is reached: raise fs.inotify.max_user_watches)"
    } else {
        ""
    }
}

/// What notify's thread runs for each event: changes onto the queue, a
/// full queue or a watch error flagged for a full reconcile.
struct Handler {
    root: PathBuf,
    tx: mpsc::Sender<Change>,
    dropped: Arc<AtomicBool>,
    limit_hit: Arc<AtomicBool>,
    wake: Arc<Notify>,
    closed: Arc<Closed>,
    in_channel: Arc<AtomicUsize>,
}

impl Handler {
    fn handle(&self, res: notify::Result<notify::Event>) {
        let changes = match res {
            // A sync cookie (see `Closed`): not a change.
            Ok(ev) if ev.paths.first().is_some_and(|p| self.closed.cookie_seen(p)) => return,
            Ok(ev) => {
                tracing::trace!(kind = ?ev.kind, paths = ?ev.paths, "event");
                note(&self.closed, &self.root, &ev);
                translate(&self.root, &ev)
            }
            Err(e) => {
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    self.limit_hit.store(true, Ordering::Relaxed);
                }
                tracing::warn!("watch error: {e}{}; a full reconcile follows", hint(&e));
                vec![Change::Lost]
            }
        };
        for c in changes {
            self.in_channel.fetch_add(1, Ordering::AcqRel);
            if self.tx.try_send(c).is_err() {
                // Dropped is seen before the count falls (see `reached`).
                self.dropped.store(true, Ordering::Release);
                self.in_channel.fetch_sub(1, Ordering::AcqRel);
                self.wake.notify_one();
            }
        }
    }
}

/// The closed-file rule's sync point (see `Closed`): without it, files a
/// server holds open wait for their lease or `settle_ms`.
fn watch_cookie_dir(watcher: &mut notify::RecommendedWatcher, closed: &Closed) {
    match closed.make_cookie_dir() {
        Ok(dir) => {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                closed.cookies_off();
                tracing::warn!("cannot watch {}: {e}; files that a server keeps open wait for settle_ms", dir.display());
            }
        }
        Err(e) => tracing::warn!(
            "cannot make the watch's sync directory in {}: {e}; files that a server keeps open wait for settle_ms",
            std::env::temp_dir().display()
        ),
    }
}

impl Watch {
    pub fn start(export: &Path) -> Result<Watch, WatchError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let limit_hit = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let closed = Arc::new(Closed::default());
        let in_channel = Arc::new(AtomicUsize::new(0));
        let handler = Handler {
            root: export.to_path_buf(),
            tx,
            dropped: dropped.clone(),
            limit_hit: limit_hit.clone(),
            wake: wake.clone(),
            closed: closed.clone(),
            in_channel: in_channel.clone(),
        };
        let failed = |err: notify::Error| WatchError {
            path: export.display().to_string(),
            hint: hint(&err),
            err,
        };
        // Symlinks are replicated as links, never followed: a link to `/`
        // would otherwise walk the host and use up the per-user watch limit
        // shared with every other service.
        // Only what changes the tree: no IN_OPEN or IN_CLOSE_NOWRITE, or
        // every read (ours while shipping, a backup, the NFS server's) is an
        // event, and a first sync of a large tree overflows the kernel queue.
        let config = notify::Config::default()
            .with_follow_symlinks(false)
            .with_event_kinds(notify::EventKindMask::CORE | notify::EventKindMask::ACCESS_CLOSE);
        let mut watcher = notify::RecommendedWatcher::new(move |res| handler.handle(res), config)
            .map_err(failed)?;
        // Before the root is watched: the probe's unnamed file has no name
        // but a watched directory still gets its modify and close events
        // (as `#<inode>`), which could name a real file.
        match crate::lease::probe_fine_ctime(export) {
            Ok(Some(dev)) => {
                closed.set_fine_ctime(dev);
                tracing::info!("the export's filesystem gives a file a new ctime at every change after a read of it: a closed file is trusted once the watch is synced {:?} past the stat of its close", crate::lease::fine_slack(crate::lease::margin()));
            }
            Ok(None) => tracing::info!("the export's filesystem can keep a file's ctime across a change (a coarse clock): a closed file is trusted once the watch is synced {:?} past its ctime", crate::lease::margin()),
            Err(e) => tracing::info!("could not probe the export's ctimes with an unnamed file ({e}): a closed file is trusted once the watch is synced {:?} past its ctime", crate::lease::margin()),
        }
        // The root only: the first scan watches the rest as it walks.
        watcher
            .watch(export, RecursiveMode::NonRecursive)
            .map_err(failed)?;
        watch_cookie_dir(&mut watcher, &closed);
        Ok(Watch {
            watcher: Arc::new(Mutex::new(watcher)),
            root: export.to_path_buf(),
            rx,
            dropped,
            limit_hit,
            wake,
            closed,
            in_channel,
        })
    }

    /// Makes sure a new directory's watches are in place before it is
    /// scanned (notify adds them on its own thread, after delivering the
    /// create event), so nothing written into it in between is missed.
    pub fn ensure(&mut self, dir: &Path) {
        add(
            &self.watcher,
            &self.limit_hit,
            dir,
            RecursiveMode::Recursive,
        );
    }

    /// `n` changes taken from `rx` are now in the daemon's counted queue.
    pub fn counted(&self, n: usize) {
        if n > 0 {
            self.in_channel.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// For a drain: see [`WatchSync`].
    pub fn sync(&self) -> WatchSync {
        WatchSync {
            closed: self.closed.clone(),
            in_channel: self.in_channel.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// What a whole-tree scan uses to watch each directory it enters.
    pub fn dirs(&self) -> DirWatcher {
        DirWatcher {
            watcher: self.watcher.clone(),
            limit_hit: self.limit_hit.clone(),
            root: self.root.clone(),
        }
    }
}

/// Adds a watch on `dir`; false when the watch limit is reached.
fn add(w: &Shared, limit_hit: &AtomicBool, dir: &Path, mode: RecursiveMode) -> bool {
    match lock(w).watch(dir, mode) {
        Ok(()) => true,
        // Gone meanwhile: nothing to watch, nothing to miss.
        Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) => true,
        Err(e) => {
            // Whatever the cause, this directory changes silently from now
            // on: only the periodic compare (the limit's fallback) finds it.
            limit_hit.store(true, Ordering::Relaxed);
            tracing::warn!("cannot watch {}: {e}{}", dir.display(), hint(&e));
            !matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        }
    }
}

/// Watches the directories a scan enters, each before the scan reads it.
#[derive(Clone)]
pub struct DirWatcher {
    watcher: Shared,
    limit_hit: Arc<AtomicBool>,
    root: PathBuf,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher")
            .field("root", &self.root)
            .finish()
    }
}

impl DirWatcher {
    /// Watches the directory at `rel` (not its subdirectories: the scan
    /// enters those itself). False: the watch limit is reached, add no
    /// more (the limit's fallback, periodic full reconciles, takes over).
    pub fn add(&self, rel: &RelPath) -> bool {
        let dir = self.root.join(rel.as_path());
        add(
            &self.watcher,
            &self.limit_hit,
            &dir,
            RecursiveMode::NonRecursive,
        )
    }

    /// Watches every directory of `rels` in one round trip to notify's
    /// thread. Returns those now watched (or gone meanwhile) and false
    /// when the watch limit is reached.
    fn add_many(&self, rels: &[RelPath]) -> (Vec<RelPath>, bool) {
        let mut done = Vec::with_capacity(rels.len());
        let mut rest = rels;
        while !rest.is_empty() {
            let ops = rest
                .iter()
                .map(|r| PathOp::watch_non_recursive(self.root.join(r.as_path())))
                .collect();
            let Err(e) = lock(&self.watcher).update_paths(ops) else {
                done.extend_from_slice(rest);
                break;
            };
            // The ops before the failed one were applied; the failed one
            // goes through `add` (its error handling), the rest again.
            if e.origin.is_none() || e.remaining.len() >= rest.len() {
                // How far it got is unknown: each is added on its own
                // before it is read.
                break;
            }
            let failed = rest.len() - e.remaining.len() - 1;
            done.extend_from_slice(&rest[..failed]);
            if !self.add(&rest[failed]) {
                return (done, false);
            }
            done.push(rest[failed].clone());
            rest = &rest[failed + 1..];
        }
        (done, true)
    }

    /// A hook for [`crate::scan::scan_with`]: watches until the limit.
    pub fn hook(self) -> crate::scan::DirHook {
        Arc::new(WatchHook {
            w: self,
            on: AtomicBool::new(true),
            batched: Mutex::new(HashSet::new()),
        })
    }
}

/// The scan's hook: each directory watched before it is read, a
/// directory's subdirectories in one batch as soon as it is listed (one
/// round trip to notify's thread each was most of a restart's walk: 5 of
/// 6.5 s at 101,101 directories, the walk's threads queued behind it).
struct WatchHook {
    w: DirWatcher,
    /// Off once the watch limit is reached.
    on: AtomicBool,
    /// Watched in a batch, not read yet: at most the unvisited
    /// subdirectories of the directories the walk has listed.
    batched: Mutex<HashSet<RelPath>>,
}

impl crate::scan::WatchDirs for WatchHook {
    fn before_read(&self, dir: &RelPath) {
        let batched = self
            .batched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(dir);
        if !batched && self.on.load(Ordering::Relaxed) && !self.w.add(dir) {
            self.on.store(false, Ordering::Relaxed);
        }
    }

    fn before_subdirs(&self, dirs: Vec<RelPath>) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let (done, on) = self.w.add_many(&dirs);
        if !on {
            self.on.store(false, Ordering::Relaxed);
        }
        self.batched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(done);
    }
}

fn rel(root: &Path, p: &Path) -> Option<RelPath> {
    // Paths outside the export, the root itself, the state directory and
    // syncd's temporary names are not replicated.
    let r = RelPath::from_path(p.strip_prefix(root).ok()?).ok()?;
    (!syncd_proto::path::is_temp_name(r.split_last().1)).then_some(r)
}

/// Keeps the record of closed files (see [`Closed`]) from one event: a
/// close by a writer records the file as it is now; a metadata change or a
/// rename carries a record along; anything else that touches the file
/// (a write, a truncate, a create, a delete) drops it. Events arrive in
/// order, so a write after the close drops the record it follows.
pub fn note(closed: &Closed, root: &Path, ev: &notify::Event) {
    // Events were lost: any record may be stale.
    if ev.need_rescan() {
        closed.clear();
        return;
    }
    let Some((abs, r)) = ev
        .paths
        .first()
        .and_then(|p| rel(root, p).map(|r| (p.as_path(), r)))
    else {
        return;
    };
    let stat = |p: &Path| std::fs::symlink_metadata(p).ok().filter(|m| m.is_file());
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => match stat(abs) {
            Some(m) => closed.closed(r, &m),
            None => closed.forget(&r),
        },
        EventKind::Access(_) => {}
        EventKind::Modify(ModifyKind::Metadata(_)) => match stat(abs) {
            Some(m) => closed.moved(&r, r.clone(), &m),
            None => closed.forget(&r),
        },
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let to = ev.paths.get(1).and_then(|p| rel(root, p).map(|t| (p, t)));
            match to {
                Some((abs_to, to)) => {
                    closed.forget(&to);
                    match stat(abs_to) {
                        Some(m) => closed.moved(&r, to, &m),
                        None => closed.forget(&r),
                    }
                }
                None => closed.forget(&r),
            }
        }
        _ => closed.forget(&r),
    }
}

/// What one notify event means for replication.
pub fn translate(root: &Path, ev: &notify::Event) -> Vec<Change> {
    if ev.need_rescan() {
        return vec![Change::Lost];
    }
    let paths: Vec<(PathBuf, Option<RelPath>)> =
        ev.paths.iter().map(|p| (p.clone(), rel(root, p))).collect();
    let one = || {
        paths
            .first()
            .and_then(|(abs, r)| r.clone().map(|r| (abs, r)))
    };
    match ev.kind {
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            match (paths.first(), paths.get(1)) {
                (Some((_, Some(from))), Some((_, Some(to)))) => vec![Change::Renamed {
                    from: from.clone(),
                    to: to.clone(),
                }],
                // Moved out of the export: a delete; moved in: a new tree.
                (Some((_, Some(from))), _) => vec![Change::MovedAway(from.clone())],
                (_, Some((_, Some(to)))) => vec![Change::Tree(to.clone())],
                _ => vec![],
            }
        }
        // The `From` half is also what a move out of the export looks like:
        // a delete, unless a `Both` pairs it.
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => one()
            .map(|(_, r)| vec![Change::MovedAway(r)])
            .unwrap_or_default(),
        // Moved in (or the `To` half of a rename): the whole subtree is new here.
        EventKind::Modify(ModifyKind::Name(_)) => one()
            .map(|(_, r)| vec![Change::Tree(r)])
            .unwrap_or_default(),
        EventKind::Create(CreateKind::Folder) => one()
            .map(|(_, r)| vec![Change::Tree(r)])
            .unwrap_or_default(),
        EventKind::Create(_) => match one() {
            Some((abs, r)) => match std::fs::symlink_metadata(abs) {
                // A symlink or a new name for an existing file is complete at once;
                // a new regular file is written next and shipped when closed.
                Ok(m) if m.file_type().is_symlink() || (m.is_file() && m.nlink() > 1) => {
                    vec![Change::Settled(r)]
                }
                Ok(m) if m.is_dir() => vec![Change::Tree(r)],
                Ok(m) if m.is_file() => vec![Change::Writing(r)],
                _ => vec![Change::Settled(r)],
            },
            None => vec![],
        },
        EventKind::Modify(ModifyKind::Metadata(_)) => one()
            .map(|(_, r)| vec![Change::Meta(r)])
            .unwrap_or_default(),
        EventKind::Modify(_) => one()
            .map(|(_, r)| vec![Change::Writing(r)])
            .unwrap_or_default(),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Remove(_) => one()
            .map(|(_, r)| vec![Change::Settled(r)])
            .unwrap_or_default(),
        EventKind::Access(_) => vec![],
        EventKind::Any | EventKind::Other => {
            if paths.is_empty() {
                vec![Change::Lost]
            } else {
                one()
                    .map(|(_, r)| vec![Change::Settled(r)])
                    .unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests;
