//! A scan of part of the tree (a live batch's scope).

use std::fs::File;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::fs::{beneath, open_entry, open_root, vanished};
use super::{Collector, Scan};
use crate::index::Index;
use crate::wire::Scope;
use syncd_proto::path::{walk_order, RelPath};

/// Scans only `scope` (each path, and the subtree of a recursive one), in
/// walk order. Both sides scan the same scope, so comparing the two results
/// is a reconcile of just that part of the tree. A hard link whose other
/// names lie outside the scope is listed in [`Scan::partial_links`].
pub fn scan_scoped(
    root: &Path,
    index: &mut Index,
    scope: &[Scope],
    hash: bool,
) -> std::io::Result<Scan> {
    let dir = open_root(root)?;
    let mut items: Vec<&Scope> = scope.iter().collect();
    items.sort_by(|a, b| walk_order(&a.path, &b.path).then(b.recursive.cmp(&a.recursive)));
    let mut c = Collector::new(hash);
    let mut covered: Option<&RelPath> = None; // last recursive scope: its subtree is done
    let mut last: Option<&RelPath> = None;
    for s in items {
        if covered.is_some_and(|d| s.path.starts_with(d)) || last == Some(&s.path) {
            continue;
        }
        if syncd_proto::path::is_temp_name(s.path.split_last().1) {
            continue; // see `walk`
        }
        last = Some(&s.path);
        let Some(f) = open_scope(&mut c, &dir, &s.path) else {
            continue;
        };
        if s.recursive {
            let mut stack = Vec::new();
            c.enter(&mut stack, f, s.path.clone());
            c.walk(stack);
            covered = Some(&s.path);
        } else {
            visit_one(&mut c, &f, &s.path);
        }
    }
    c.finish(&dir, index, false)
}

/// An `O_PATH` descriptor for the scope's path; `None` when it is gone, lies
/// beneath a symlink or a non-directory, or cannot be read (recorded).
fn open_scope(c: &mut Collector, root: &File, path: &RelPath) -> Option<File> {
    // Ancestors must be directories, never symlinks that lead out of the
    // root: openat2 refuses both.
    let parent = match path.parent() {
        None => root.try_clone(),
        Some(p) => rustix::fs::openat2(
            root,
            p.as_path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        )
        .map(File::from)
        .map_err(Into::into),
    };
    let parent = match parent {
        Ok(d) => d,
        Err(e) if not_there(&e) => return None,
        Err(e) => {
            c.unreadable(path.clone(), &e);
            return None;
        }
    };
    match open_entry(&parent, path.split_last().1) {
        Ok(f) => Some(f),
        Err(e) if vanished(&e) => None,
        Err(e) => {
            c.unreadable(path.clone(), &e);
            None
        }
    }
}

/// Whether a parent's lookup failed because the path is not (or no longer)
/// in the tree as a directory beneath the root.
fn not_there(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)
    )
}

/// Lists the entry `f` at `path` alone (a non-recursive scope).
fn visit_one(c: &mut Collector, f: &File, path: &RelPath) {
    let m = match f.metadata() {
        Ok(m) => m,
        Err(e) if vanished(&e) => return,
        Err(e) => return c.unreadable(path.clone(), &e),
    };
    match c.visit(f, path.clone(), &m) {
        Ok(_) => {}
        Err(e) if vanished(&e) => {}
        Err(e) => c.unreadable(path.clone(), &e),
    }
}
