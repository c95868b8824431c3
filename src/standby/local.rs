//! Files written on this follower by anything but syncd: what the lanes
//! check before an operation replaces or deletes an entry (and keep in the
//! conflicts area, `local-<generation>-<node>/<path>`), what they record
//! after one, and the counts `status` reports. The rule itself is
//! `syncd_proto::pair::local`; the durable record, `placed.rs`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::placed::Placed;
use super::{lock, Shared};
use crate::conflicts::Keeper;
use crate::fsroot::Root;
use crate::index::Stamp;
use crate::wire::{Entry, Kind};
use syncd_proto::pair::local::{Change, Origin, Rebased};
use syncd_proto::path::{RelPath, STATE_DIR_NAME};

fn os(b: &[u8]) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(b)
}

/// The ledger's stamp of an entry; no ctime for an inode with several
/// names (see `placed::same`).
fn stamp_of(st: &rustix::fs::Stat) -> Stamp {
    let ctime = match st.st_nlink {
        1 => (st.st_ctime as i64, st.st_ctime_nsec as u32),
        _ => super::placed::NO_CTIME,
    };
    Stamp {
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
        ctime,
        ino: st.st_ino,
    }
}

/// What is at `p` now: its stamp and whether it is a directory.
fn stat_at(sh: &Shared, p: &RelPath) -> io::Result<Option<(Stamp, bool)>> {
    stat_in(&sh.root, p)
}

fn stat_in(root: &Root, p: &RelPath) -> io::Result<Option<(Stamp, bool)>> {
    let (pd, name) = match root.parent_of(p) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match rustix::fs::statat(&pd, os(&name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
            Ok(Some((stamp_of(&st), dir)))
        }
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the non-directory at `p` is syncd's own, unchanged (or absent).
pub(super) fn is_ours(sh: &Shared, p: &RelPath) -> bool {
    match stat_at(sh, p) {
        Ok(Some((st, false))) => lock(&sh.placed).judge(p.as_bytes(), Some(&st)) == Origin::Ours,
        _ => true,
    }
}

/// The keeper for local writes, labelled by the generation followed now
/// and this node.
fn keeper(sh: &Shared) -> io::Result<Arc<Keeper>> {
    let label = format!("local-{}-{}", lock(&sh.record).lineage.gen, sh.node);
    let mut slot = lock(&sh.local_keeper);
    if let Some(k) = slot.as_ref().filter(|k| k.path().ends_with(&label)) {
        return Ok(k.clone());
    }
    let k = Arc::new(Keeper::open(&sh.state_dir, &label)?.written_locally());
    *slot = Some(k.clone());
    Ok(k)
}

/// Before an operation replaces or removes `p`: keeps what was written
/// there locally (for a directory, every local entry beneath it;
/// `spare_dirs`: the operation keeps a directory in place). An error is a
/// failure of the operation: nothing is lost.
pub(super) fn keep_local(sh: &Shared, p: &RelPath, spare_dirs: bool) -> Result<(), String> {
    let cannot = |e: io::Error| format!("cannot keep the local write in the conflicts area: {e}");
    let local = {
        let placed = lock(&sh.placed);
        if !placed.is_valid() {
            return Ok(());
        }
        local_at(&sh.root, &placed, p, spare_dirs).map_err(cannot)?
    };
    if local.is_empty() {
        return Ok(());
    }
    let k = keeper(sh).map_err(cannot)?;
    for (q, why) in local {
        if k.keep(&sh.root, &q, false).map_err(cannot)? {
            sh.stats.conflicts_kept.fetch_add(1, Ordering::Relaxed);
            sh.stats.local_kept.fetch_add(1, Ordering::Relaxed);
            let how = if why == Origin::New {
                "a new path"
            } else {
                "changed"
            };
            tracing::warn!(path = %q, kept = %k.path().display(), "a file written on this follower by something other than syncd ({how}) is about to be replaced; kept in the conflicts area");
        }
    }
    Ok(())
}

/// The entries written locally at `p`, or beneath it for a directory
/// (none with `spare_dirs`).
fn local_at(
    root: &Root,
    placed: &Placed,
    p: &RelPath,
    spare_dirs: bool,
) -> io::Result<Vec<(RelPath, Origin)>> {
    let mut out = Vec::new();
    match stat_in(root, p)? {
        None => {}
        Some((_, true)) if spare_dirs => {}
        Some((_, true)) => {
            let (pd, name) = root.parent_of(p)?;
            let dir = open_dir(&pd, &name)?;
            walk(dir, p.as_bytes().to_vec(), &mut |path, st| {
                let o = placed.judge(path, Some(st));
                if o.is_local() {
                    let rel = RelPath::new(path.to_vec()).map_err(io::Error::other)?;
                    out.push((rel, o));
                }
                Ok(())
            })?;
        }
        Some((st, false)) => {
            let o = placed.judge(p.as_bytes(), Some(&st));
            if o.is_local() {
                out.push((p.clone(), o));
            }
        }
    }
    Ok(out)
}

fn open_dir(at: &impl std::os::fd::AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        at,
        os(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Calls `f` with every regular file and symlink beneath `dir` (whose path
/// is `prefix`, empty for the export root, where the state directory is
/// skipped), never following a symlink. Entries vanishing meanwhile are
/// skipped.
fn walk(
    dir: OwnedFd,
    prefix: Vec<u8>,
    f: &mut dyn FnMut(&[u8], &Stamp) -> io::Result<()>,
) -> io::Result<()> {
    let mut stack = vec![(dir, prefix)];
    while let Some((d, pre)) = stack.pop() {
        let mut names = Vec::new();
        // A directory removed meanwhile (syncd's own delete, beside a
        // rebase) reads as ENOENT: it holds nothing any more.
        let entries = match rustix::fs::Dir::read_from(&d) {
            Ok(entries) => entries,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(rustix::io::Errno::NOENT) => break,
                Err(e) => return Err(e.into()),
            };
            let n = e.file_name().to_bytes().to_vec();
            if n != b"." && n != b".." && !(pre.is_empty() && n == STATE_DIR_NAME) {
                names.push(n);
            }
        }
        for n in names {
            let path = if pre.is_empty() {
                n.clone()
            } else {
                [pre.as_slice(), b"/", &n].concat()
            };
            let st = match rustix::fs::statat(&d, os(&n), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => match open_dir(&d, &n) {
                    Ok(sub) => stack.push((sub, path)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
                FileType::RegularFile | FileType::Symlink => f(&path, &stamp_of(&st))?,
                _ => {} // not replicated
            }
        }
    }
    Ok(())
}

/// Every file and symlink in the export, with its stamp.
fn walk_export(root: &Root) -> io::Result<Vec<(Vec<u8>, Stamp)>> {
    let dir = rustix::fs::open(
        root.path(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut entries = Vec::new();
    walk(dir, Vec::new(), &mut |p, st| {
        entries.push((p.to_vec(), *st));
        Ok(())
    })?;
    Ok(entries)
}

/// What syncd is about to put at a path, written ahead (see
/// `Change::Expect`): a crash before the change is recorded then leaves
/// nothing that looks like a local write. Without ctime (the placement
/// changes it). One write to the kernel for the lot.
pub(super) fn expect(sh: &Shared, entries: impl IntoIterator<Item = (RelPath, Stamp)>) {
    let mut placed = lock(&sh.placed);
    // Decided here, under the lock: a rebase may have ended since the
    // caller took its stamps.
    if !placed.is_expecting() {
        return;
    }
    for (p, st) in entries {
        placed.apply(Change::Expect(p.into_bytes(), ahead(st)));
    }
    placed.flush();
}

/// A stamp as expected: without ctime.
fn ahead(st: Stamp) -> Stamp {
    Stamp {
        ctime: super::placed::NO_CTIME,
        ..st
    }
}

/// The change expected at `p` as `st` failed: it is no longer syncd's
/// (in memory; a restart finds it was not made).
pub(super) fn unexpect(sh: &Shared, p: &RelPath, st: Stamp) {
    lock(&sh.placed).unexpect(p.as_bytes(), &ahead(st));
}

/// Whether expectations are recorded at all: callers skip the stats that
/// would feed [`expect`] otherwise.
pub(super) fn expecting(sh: &Shared) -> bool {
    lock(&sh.placed).is_expecting()
}

/// Before `p`, syncd's own, gets `meta`'s mtime: what it will be.
pub(super) fn expect_meta(sh: &Shared, p: &RelPath, meta: &crate::wire::Meta) -> Option<Stamp> {
    if !expecting(sh) {
        return None;
    }
    let Ok(Some((st, false))) = stat_at(sh, p) else {
        return None;
    };
    let mtime = (meta.mtime_sec, meta.mtime_nsec);
    let st = Stamp { mtime, ..st };
    expect(sh, [(p.clone(), st)]);
    Some(st)
}

/// Before `p` becomes another name of `leader`: the same inode.
pub(super) fn expect_link(sh: &Shared, p: &RelPath, leader: &RelPath) -> Option<Stamp> {
    if !expecting(sh) {
        return None;
    }
    let Ok(Some((st, false))) = stat_at(sh, leader) else {
        return None;
    };
    expect(sh, [(p.clone(), st)]);
    Some(st)
}

/// The stamp of a symlink about to be placed (see `Root::symlink_announced`).
pub(super) fn stamp_of_stat(st: &rustix::fs::Stat) -> Stamp {
    stamp_of(st)
}

/// At start, before any change: what a crash left expected is recorded
/// where it was made and dropped where it was not.
pub(super) fn settle(root: &Root, placed: &mut Placed) {
    let look = |p: &[u8]| {
        let p = RelPath::new(p.to_vec()).ok()?;
        match stat_in(root, &p) {
            Ok(Some((st, false))) => Some(st),
            _ => None,
        }
    };
    if let Err(e) = placed.settle(look) {
        tracing::warn!("{e}");
    }
}

/// After syncd put `p` (a file, symlink or link): its stamp now.
pub(super) fn record(sh: &Shared, p: &RelPath) {
    if let Ok(Some((st, false))) = stat_at(sh, p) {
        record_stamp(sh, p, st);
    }
}

fn record_stamp(sh: &Shared, p: &RelPath, st: Stamp) {
    lock(&sh.placed).apply(Change::Put(p.as_bytes().to_vec(), st));
}

/// After a batch of files was linked in: their stamps, written out at once.
pub(super) fn record_batch<'a>(sh: &Shared, done: impl Iterator<Item = (&'a RelPath, Stamp)>) {
    let mut placed = lock(&sh.placed);
    for (p, st) in done {
        placed.apply(Change::Put(p.as_bytes().to_vec(), st));
    }
    placed.flush();
}

/// After syncd removed `p` and everything beneath it.
pub(super) fn forget(sh: &Shared, p: &RelPath) {
    lock(&sh.placed).apply(Change::RemoveUnder(p.as_bytes().to_vec()));
}

/// After syncd made a directory at `p` (replacing a non-directory).
pub(super) fn forget_entry(sh: &Shared, p: &RelPath) {
    lock(&sh.placed).apply(Change::Remove(p.as_bytes().to_vec()));
}

/// syncd renames `from` to `to` (`rename`); `ours`: `from` was syncd's
/// own before (a rename changes the moved inode's ctime). The rename and
/// its record are one step under the ledger's lock: a rebase folded in
/// between would see the names moved and then move their records away.
pub(super) fn rename(
    sh: &Shared,
    from: &RelPath,
    to: &RelPath,
    ours: bool,
    rename: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let mut placed = lock(&sh.placed);
    // Ahead of the rename: what it moves (recorded, or placed by another
    // lane and not recorded yet), under its new names; the move below
    // then replaces these expectations.
    let moved: Vec<_> = match placed.is_expecting() {
        true => placed.moving(from.as_bytes(), to.as_bytes()),
        false => Vec::new(),
    };
    for (p, st) in &moved {
        placed.apply(Change::Expect(p.clone(), ahead(*st)));
    }
    placed.flush();
    if let Err(e) = rename() {
        for (p, st) in &moved {
            placed.unexpect(p, &ahead(*st));
        }
        return Err(e);
    }
    let c = Change::MoveUnder(from.as_bytes().to_vec(), to.as_bytes().to_vec());
    placed.apply(c);
    if ours {
        if let Ok(Some((st, false))) = stat_at(sh, to) {
            placed.apply(Change::Put(to.as_bytes().to_vec(), st));
        }
    }
    placed.flush();
    Ok(())
}

/// Counts the entries of a full listing written locally (by size, mtime
/// and inode: a listing carries no ctime), warning about the first few.
pub(super) fn count_listed(sh: &Shared, entries: &[Entry]) {
    let placed = lock(&sh.placed);
    if !placed.is_valid() {
        return;
    }
    let mut n = 0u64;
    for e in entries {
        let size = match &e.kind {
            Kind::Dir => continue,
            Kind::File { size, .. } => Some(*size),
            Kind::Symlink { .. } | Kind::HardLink { .. } => None,
        };
        let p = e.path.as_bytes();
        if syncd_proto::pair::local::is_own_temp(p) {
            continue;
        }
        let same = placed.get(p).is_some_and(|r| {
            r.ino == e.ino
                && r.mtime == (e.meta.mtime_sec, e.meta.mtime_nsec)
                && size.is_none_or(|s| s == r.size)
        });
        // The listing may predate a placement the session made since (or
        // show one not yet recorded): judged again by what is there now,
        // under the lock that records follow placements under.
        if !same && local_now(&sh.root, &placed, &e.path) {
            n += 1;
            if n <= 20 {
                tracing::warn!(path = %e.path, "written on this follower by something other than syncd; it is kept in the conflicts area before the leader replaces or deletes it");
            }
        }
    }
    sh.stats.local_writes.store(n, Ordering::Relaxed);
}

/// Whether the non-directory at `p` was written locally, by its stamp now.
fn local_now(root: &Root, placed: &Placed, p: &RelPath) -> bool {
    match stat_in(root, p) {
        Ok(Some((st, false))) => placed.judge(p.as_bytes(), Some(&st)).is_local(),
        _ => false,
    }
}

/// After a catch-up: with no valid ledger, every entry in the export is
/// now the leader's copy, as syncd made it. The walk runs unlocked, beside
/// the session's changes (a million entries take minutes); what syncd
/// changed meanwhile is looked at again under the lock.
pub(super) fn rebase_if_unknown(sh: &Shared) -> io::Result<()> {
    // Each try gives up when more than `MAX_TOUCHED` paths changed during
    // its walk; the next catch-up tries again.
    for _ in 0..3 {
        let Some(token) = lock(&sh.placed).begin_rebase() else {
            return Ok(());
        };
        let mut walked = match walk_export(&sh.root) {
            Ok(w) => w,
            Err(e) => {
                lock(&sh.placed).abandon_rebase(token);
                return Err(e);
            }
        };
        // Sorted here, not under the lock (the ledger keeps path order).
        walked.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let r = lock(&sh.placed).finish_rebase(token, walked, |p| entries_at(&sh.root, p));
        match r.map_err(io::Error::other)? {
            Rebased::Done(n) => {
                // The walk's list of every entry was this side's peak.
                crate::scan::give_back_freed_heap();
                sh.stats.local_writes.store(0, Ordering::Relaxed);
                tracing::info!(
                    entries = n,
                    "caught up: local writes on this follower are detected from now on"
                );
                return Ok(());
            }
            Rebased::Stale => return Ok(()),
            Rebased::Overflowed => {}
        }
    }
    tracing::warn!("the export changed too much while it was recorded; local writes on this follower go unnoticed until the next catch-up");
    // What was expected meanwhile waits for no rebase now.
    lock(&sh.placed).invalidate().map_err(io::Error::other)
}

/// Before a catch-up: an unknown ledger over an export that holds no file
/// or symlink (a new standby; directories are never recorded) is known at
/// once, empty. The catch-up's placements are then recorded as they are
/// made, a local write during it is told apart, and no walk of the whole
/// export follows it (at a first sync that walk was a second stat of
/// every file the sync had just written). The look stops at the first
/// file. `Ok(true)`: the ledger is known now.
pub(super) fn know_if_empty(sh: &Shared) -> io::Result<bool> {
    let Some(token) = lock(&sh.placed).begin_rebase() else {
        return Ok(false);
    };
    let found = walk_until_a_file(&sh.root);
    let mut placed = lock(&sh.placed);
    match found {
        Ok(false) => {}
        Ok(true) => {
            placed.abandon_rebase(token);
            return Ok(false);
        }
        Err(e) => {
            placed.abandon_rebase(token);
            return Err(e);
        }
    }
    let r = placed.finish_rebase(token, Vec::new(), |p| entries_at(&sh.root, p));
    match r.map_err(io::Error::other)? {
        Rebased::Done(n) => {
            tracing::info!(
                entries = n,
                "local writes on this follower are detected from now on (the export holds no file: the catch-up is recorded as it goes)"
            );
            Ok(true)
        }
        Rebased::Stale | Rebased::Overflowed => Ok(false),
    }
}

/// Whether the export holds a file or symlink (not looking further once
/// it finds one).
fn walk_until_a_file(root: &Root) -> io::Result<bool> {
    let dir = rustix::fs::open(
        root.path(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut found = false;
    let r = walk(dir, Vec::new(), &mut |_, _| {
        found = true;
        Err(io::Error::other("a file: the look ends here"))
    });
    match r {
        Err(_) if found => Ok(true),
        Err(e) => Err(e),
        Ok(()) => Ok(false),
    }
}

/// A path that vanished, or whose parent is no directory any more.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

/// Every file and symlink at or beneath `p`, now.
fn entries_at(root: &Root, p: &[u8]) -> io::Result<Vec<(Vec<u8>, Stamp)>> {
    let p = RelPath::new(p.to_vec()).map_err(io::Error::other)?;
    let mut out = Vec::new();
    match stat_in(root, &p)? {
        None => {}
        Some((_, true)) => {
            // Removed or replaced since the stat: nothing there now.
            let dir = match root
                .parent_of(&p)
                .and_then(|(pd, name)| open_dir(&pd, &name))
            {
                Ok(dir) => dir,
                Err(e) if gone(&e) => return Ok(out),
                Err(e) => return Err(e),
            };
            walk(dir, p.as_bytes().to_vec(), &mut |path, st| {
                out.push((path.to_vec(), *st));
                Ok(())
            })?;
        }
        Some((st, false)) => out.push((p.as_bytes().to_vec(), st)),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn local(root: &Root, placed: &Placed, p: &str) -> Vec<(String, Origin)> {
        let mut v: Vec<_> = local_at(root, placed, &rel(p), false)
            .unwrap()
            .into_iter()
            .map(|(p, o)| (p.to_string(), o))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The first recording walks beside syncd's own changes: a directory
    /// it has open, removed meanwhile (a replayed delete), holds nothing;
    /// it is not an error that would leave detection off.
    #[test]
    fn a_directory_removed_under_the_walk_reads_as_empty() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("gone/sub")).unwrap();
        let dir = rustix::fs::open(
            d.path().join("gone"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        std::fs::remove_dir_all(d.path().join("gone")).unwrap();
        let mut seen = 0;
        walk(dir, b"gone".to_vec(), &mut |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 0);
        // Replaced by a file between the stat and the open: nothing beneath.
        let root = Root::open(d.path()).unwrap();
        std::fs::write(d.path().join("gone"), b"a file now").unwrap();
        let e = root
            .parent_of(&rel("gone/sub"))
            .and_then(|(pd, n)| open_dir(&pd, &n));
        assert!(gone(&e.unwrap_err()));
    }

    #[test]
    fn local_entries_are_found_and_syncd_own_are_not() {
        let d = tempfile::tempdir().unwrap();
        let ex = d.path().join("ex");
        std::fs::create_dir_all(ex.join("dir/sub")).unwrap();
        for f in ["a", "b", "dir/x", "dir/sub/y"] {
            std::fs::write(ex.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("a", ex.join("l")).unwrap();
        std::fs::create_dir(ex.join(".syncd")).unwrap();
        std::fs::write(ex.join(".syncd/state"), b"not the export's").unwrap();
        let root = Root::open(&ex).unwrap();
        let mut placed = Placed::load(&d.path().join("state"));
        let all = walk_export(&root).unwrap();
        let names: Vec<_> = all
            .iter()
            .map(|(p, _)| String::from_utf8_lossy(p))
            .collect();
        assert_eq!(names.len(), 5, "files and the symlink, no state: {names:?}");
        let t = placed.begin_rebase().unwrap();
        placed.finish_rebase(t, all, |_| Ok(vec![])).unwrap();
        assert_eq!(local(&root, &placed, "dir"), []);
        assert_eq!(local(&root, &placed, "a"), []);

        // Another name for `a` (its ctime changes): not a write.
        std::fs::hard_link(ex.join("a"), ex.join("dir/a2")).unwrap();
        assert_eq!(local(&root, &placed, "a"), []);
        // Local writes: rewritten, replaced by a rename, new, in a new
        // directory; syncd's own temporary name is none.
        std::fs::write(ex.join("dir/x"), b"changed").unwrap();
        std::fs::write(ex.join("b.new"), b"b").unwrap();
        std::fs::rename(ex.join("b.new"), ex.join("b")).unwrap();
        std::fs::create_dir(ex.join("dir/sub/new")).unwrap();
        std::fs::write(ex.join("dir/sub/new/z"), b"z").unwrap();
        std::fs::write(ex.join("dir/.syncd-1.2.tmp"), b"t").unwrap();
        assert_eq!(
            local(&root, &placed, "dir"),
            [
                ("dir/a2".to_string(), Origin::New),
                ("dir/sub/new/z".to_string(), Origin::New),
                ("dir/x".to_string(), Origin::Changed),
            ]
        );
        assert_eq!(
            local(&root, &placed, "b"),
            [("b".to_string(), Origin::Changed)]
        );
        assert_eq!(local(&root, &placed, "l"), []);
        assert_eq!(local(&root, &placed, "missing/f"), []);
        let spared = local_at(&root, &placed, &rel("dir"), true).unwrap();
        assert!(spared.is_empty(), "mkdir keeps the directory in place");
    }
}
