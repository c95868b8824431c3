//! The whole-tree walk on several threads. The top of the tree is cut into
//! subtrees (a level at a time, until there are enough to share), the
//! subtrees are walked at once, and the parts are joined in walk order:
//! the listing is the one a single walk makes. A million-entry walk is
//! stat calls and directory reads, which scale with cores until the disk
//! or the kernel's locks say otherwise.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::collect::{Collector, Frame};
use super::fs::open_entry;
use syncd_proto::path::RelPath;

/// Levels cut at most: deeper, a tree too narrow to share is walked as it is.
const MAX_LEVELS: usize = 3;
/// Subtrees wanted per thread: enough that one large subtree does not
/// leave the other threads idle for long.
const PER_THREAD: usize = 16;

/// How many threads a whole-tree walk uses here: four per core, 4 to 16.
/// Warm, the walk is system calls and two threads per core gain nothing
/// over one; cold, it waits on the disk, and more reads in flight go
/// faster (1,101,000 entries, 2 cores, caches dropped: 12.6 s with 2
/// threads, 8.5 s with 4, 6.3–7.0 s with 8, 7.0 s with 16).
pub(super) fn threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        return 1; // one core (or a one-core cgroup): the walk as it always was
    }
    (cores * 4).clamp(4, 16)
}

/// A part of the listing, in walk order.
enum Piece {
    /// What was listed while cutting.
    Listed(Collector),
    /// The entry `name` of the directory `parent` and everything beneath it.
    /// No descriptor of its own until walked: a cut into thousands of
    /// subtrees holds one per directory it read, not one per subtree.
    Subtree {
        parent: Arc<File>,
        name: Vec<u8>,
        path: RelPath,
    },
}

/// Walks the tree below `root` (its names already read) on `threads`
/// threads; `first` is the collector everything is joined into (it also
/// gives the others its settings: hashing, sweep, directory hook).
pub(super) fn walk(mut first: Collector, root: Frame, threads: usize) -> Collector {
    if threads <= 1 {
        first.walk(vec![root]);
        return first;
    }
    let pieces = cut_top(&first, root, threads * PER_THREAD);
    let jobs: Vec<usize> = (0..pieces.len())
        .filter(|&i| matches!(pieces[i], Piece::Subtree { .. }))
        .collect();
    let walked: Vec<Mutex<Option<Collector>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(jobs.len()) {
            s.spawn(|| loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = jobs.get(j) else {
                    break;
                };
                let Piece::Subtree { parent, name, path } = &pieces[i] else {
                    continue;
                };
                let mut c = first.sibling();
                let mut stack = Vec::new();
                c.enter_opened(&mut stack, open_entry(&**parent, name), path.clone());
                c.walk(stack);
                *walked[j].lock().unwrap_or_else(PoisonError::into_inner) = Some(c);
            });
        }
    });
    let mut walked = walked
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner));
    let parts: Vec<Collector> = pieces
        .into_iter()
        .filter_map(|p| match p {
            Piece::Listed(c) => Some(c),
            Piece::Subtree { .. } => walked.next().flatten(),
        })
        .collect();
    first.reserve(parts.iter().map(Collector::len).sum());
    for c in parts {
        first.absorb(c);
    }
    // The parts were the walkers' (freed into their threads' arenas, which
    // nothing here reuses): without this the daemon's RSS holds the
    // listing twice through what follows it (the digest tree: the
    // primary's restart peaked at 546 MiB instead of 438 at a million).
    super::give_back_freed_heap();
    first
}

/// Cuts the tree into listed parts and subtrees, a level at a time, until
/// there are `wanted` subtrees (or none left to cut, or `MAX_LEVELS`).
fn cut_top(first: &Collector, root: Frame, wanted: usize) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let rest = cut(first, Arc::new(root.dir), None, root.names, &mut pieces);
    pieces.push(Piece::Listed(rest));
    for _ in 1..MAX_LEVELS {
        let subtrees = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Subtree { .. }))
            .count();
        if subtrees == 0 || subtrees >= wanted {
            break;
        }
        let mut deeper = Vec::with_capacity(pieces.len() * 2);
        for p in pieces {
            match p {
                Piece::Subtree { parent, name, path } => {
                    let mut c = first.sibling();
                    let mut stack = Vec::new();
                    c.enter_opened(&mut stack, open_entry(&*parent, &name), path);
                    deeper.push(Piece::Listed(c));
                    if let Some(f) = stack.pop() {
                        let rest = cut(first, Arc::new(f.dir), f.rel, f.names, &mut deeper);
                        deeper.push(Piece::Listed(rest));
                    }
                }
                listed => deeper.push(listed),
            }
        }
        pieces = deeper;
    }
    pieces
}

/// Lists the regular files among `names` of `dir` (at `rel`) and makes
/// everything else a subtree, in walk order; returns the part listed after
/// the last subtree.
fn cut(
    first: &Collector,
    dir: Arc<File>,
    rel: Option<RelPath>,
    mut names: Vec<Vec<u8>>,
    into: &mut Vec<Piece>,
) -> Collector {
    let mut listed = first.sibling();
    while let Some(name) = names.pop() {
        if let Some((name, path)) = listed.name_in(&dir, rel.as_ref(), name) {
            into.push(Piece::Listed(std::mem::replace(
                &mut listed,
                first.sibling(),
            )));
            into.push(Piece::Subtree {
                parent: dir.clone(),
                name,
                path,
            });
        }
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;
    use crate::scan::fs::{open_root, read_names};
    use crate::wire::Kind;
    use std::path::Path;

    fn listing(root: &Path, threads: usize, hash: bool) -> crate::scan::Scan {
        let dir = open_root(root).unwrap();
        let names = read_names(&dir).unwrap();
        let frame = Frame {
            dir: dir.try_clone().unwrap(),
            rel: None,
            names,
        };
        let c = walk(Collector::new(hash), frame, threads);
        c.finish(&dir, &mut Index::default(), false).unwrap()
    }

    /// A tree with something of every kind at every level, and hard links
    /// whose names fall in different subtrees (and at the top).
    fn varied_tree(r: &Path) {
        for d in ["a/b/c/d", "a/e", "f/g", "h", "i/j/k/l/m", "n o/p"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for (i, f) in [
            "0",
            "a/1",
            "a/b/2",
            "a/b/c/3",
            "a/b/c/d/4",
            "a/e/5",
            "f/6",
            "f/g/7",
            "i/j/k/l/m/8",
            "n o/p/9",
            "z",
        ]
        .iter()
        .enumerate()
        {
            std::fs::write(r.join(f), format!("content {i}")).unwrap();
        }
        // Leader in the last subtree at a deep level, links before it.
        std::fs::write(r.join("f/g/lead"), b"linked").unwrap();
        std::fs::hard_link(r.join("f/g/lead"), r.join("a/b/c/link")).unwrap();
        std::fs::hard_link(r.join("f/g/lead"), r.join("0link")).unwrap();
        std::fs::hard_link(r.join("f/g/lead"), r.join("n o/p/link")).unwrap();
        // Another group within one subtree.
        std::fs::write(r.join("i/j/x"), b"x").unwrap();
        std::fs::hard_link(r.join("i/j/x"), r.join("i/j/k/y")).unwrap();
        std::os::unix::fs::symlink("../f", r.join("a/sym")).unwrap();
        std::os::unix::fs::symlink("h", r.join("symtop")).unwrap();
        std::fs::create_dir(r.join(".syncd")).unwrap();
        std::fs::write(r.join(".syncd/state"), b"not listed").unwrap();
        std::fs::write(r.join("a/.syncd-1.2.tmp"), b"never listed").unwrap();
    }

    /// The parallel walk lists exactly what the single walk lists, in the
    /// same order, with the same hard-link leaders and hashes, however the
    /// tree is cut.
    #[test]
    fn every_cut_lists_what_one_walk_lists() {
        let d = tempfile::tempdir().unwrap();
        varied_tree(d.path());
        for hash in [false, true] {
            let one = listing(d.path(), 1, hash);
            assert!(one.entries.len() > 25, "{:?}", one.entries);
            let links: Vec<_> = one
                .entries
                .iter()
                .filter_map(|e| match &e.kind {
                    Kind::HardLink { leader } => Some((e.path.to_string(), leader.to_string())),
                    _ => None,
                })
                .collect();
            assert_eq!(
                links,
                [
                    ("a/b/c/link".to_string(), "0link".to_string()),
                    ("f/g/lead".into(), "0link".into()),
                    ("i/j/x".into(), "i/j/k/y".into()),
                    ("n o/p/link".into(), "0link".into()),
                ]
            );
            for threads in [2, 3, 5] {
                let many = listing(d.path(), threads, hash);
                assert_eq!(many.entries, one.entries, "{threads} threads, hash {hash}");
                assert_eq!(many.skipped, one.skipped);
                assert_eq!(many.hashed_bytes, one.hashed_bytes);
            }
        }
    }

    /// A root holding a single directory is cut deeper; a root of files
    /// alone is listed without threads.
    #[test]
    fn narrow_and_flat_roots() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for i in 0..40 {
            std::fs::create_dir_all(r.join(format!("only/u{i:02}/deep"))).unwrap();
            std::fs::write(r.join(format!("only/u{i:02}/deep/f")), b"x").unwrap();
        }
        let one = listing(r, 1, false);
        assert_eq!(one.entries.len(), 1 + 40 * 3);
        assert_eq!(listing(r, 4, false).entries, one.entries);
        let flat = tempfile::tempdir().unwrap();
        for i in 0..10 {
            std::fs::write(flat.path().join(format!("f{i}")), b"x").unwrap();
        }
        let one = listing(flat.path(), 1, false);
        assert_eq!(one.entries.len(), 10);
        assert_eq!(listing(flat.path(), 4, false).entries, one.entries);
    }

    /// A hard-linked inode with a name outside the tree is partial the same
    /// way whichever walk saw it.
    #[test]
    fn partial_links_are_the_same() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::fs::create_dir_all(r.join("b")).unwrap();
        std::fs::write(r.join("a/f"), b"x").unwrap();
        std::fs::hard_link(r.join("a/f"), r.join("b/f")).unwrap();
        std::fs::hard_link(r.join("a/f"), outside.path().join("f")).unwrap();
        let one = listing(r, 1, false);
        let many = listing(r, 2, false);
        assert_eq!(one.partial_links.len(), 1);
        assert_eq!(many.partial_links, one.partial_links);
        assert_eq!(many.entries, one.entries);
    }
}
