//! Directory digests of a listing (the rules are `syncd_proto::digest`'s):
//! how one entry becomes a leaf, the same way on both sides.

use syncd_proto::digest::{self, Digest, Tree};

use crate::wire::{Entry, Kind};

/// Which side built a tree: the hard-linked names of each side get leaves
/// that never match the other's, so they are always compared by listing
/// (which names share an inode is the plan's business, not a digest's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Standby,
}

/// What a comparison looks at of one entry: kind, size, symlink target,
/// mode, mtime, and the owners when they count. Never a content hash: a
/// list without `checksum` trusts size and mtime, and so does this.
/// `b` is a buffer reused from entry to entry.
fn leaf(e: &Entry, owners: bool, linked: Option<Side>, b: &mut Vec<u8>) -> Digest {
    b.clear();
    match linked {
        Some(side) => {
            b.extend_from_slice(b"link");
            b.push(side as u8);
            b.extend_from_slice(e.path.as_bytes());
        }
        None => match &e.kind {
            Kind::File { size, .. } => {
                b.push(b'f');
                b.extend_from_slice(&size.to_le_bytes());
            }
            Kind::Dir => b.push(b'd'),
            Kind::Symlink { target } => {
                b.push(b'l');
                b.extend_from_slice(&(target.len() as u64).to_le_bytes());
                b.extend_from_slice(target);
            }
            Kind::HardLink { .. } => b.push(b'h'),
        },
    }
    let m = &e.meta;
    b.extend_from_slice(&m.mode.to_le_bytes());
    b.extend_from_slice(&m.mtime_sec.to_le_bytes());
    b.extend_from_slice(&m.mtime_nsec.to_le_bytes());
    if owners {
        b.extend_from_slice(&m.uid.to_le_bytes());
        b.extend_from_slice(&m.gid.to_le_bytes());
    }
    digest::leaf(b)
}

/// The digests of one side's whole listing.
pub fn tree(entries: &[Entry], owners: bool, side: Side) -> Tree {
    let linked = Linked::of(entries);
    let threads = compute_threads(entries.len());
    let leaves = leaves(entries, owners, &linked, side, threads);
    Tree::build_on(
        entries
            .iter()
            .zip(leaves)
            .map(|(e, l)| (e.path.as_bytes(), l, matches!(e.kind, Kind::Dir))),
        threads,
    )
}

/// [`tree`], freeing the listing as the tree grows: the standby holds
/// only the tree afterwards, and holding both at once was its peak at a
/// restart (~240 bytes an entry together). On one thread: the tree's
/// allocations then reuse what the listing gives back (hashed and finished
/// on several threads, in their own malloc arenas, the standby's peak at a
/// million grew from 354 to 404-427 MiB).
pub fn tree_of(mut entries: Vec<Entry>, owners: bool, side: Side) -> Tree {
    let linked = Linked::of(&entries);
    // Taken from the end (the tree does not care about order), and the
    // buffer shrunk every so often: past glibc's mmap threshold that gives
    // its tail back to the kernel.
    const SHRINK_EVERY: usize = 1 << 16;
    let mut n = 0usize;
    let mut b = Vec::with_capacity(64);
    Tree::build(std::iter::from_fn(move || {
        let e = entries.pop()?;
        n += 1;
        if n.is_multiple_of(SHRINK_EVERY) {
            entries.shrink_to_fit();
        }
        let l = leaf(&e, owners, linked.is(&e).then_some(side), &mut b);
        let is_dir = matches!(e.kind, Kind::Dir);
        Some((e.path.into_bytes(), l, is_dir))
    }))
}

/// Listings shorter than this are hashed on the calling thread.
const PARALLEL_MIN_ENTRIES: usize = 1 << 16;

/// Threads for hashing a listing of `n` entries: the cores, at most 8
/// (the primary builds its tree right after its walk, at the end of a
/// restart's critical path).
fn compute_threads(n: usize) -> usize {
    if n < PARALLEL_MIN_ENTRIES {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |c| c.get().min(8))
}

/// Every entry's leaf, in order, on up to `threads` threads.
fn leaves(
    entries: &[Entry],
    owners: bool,
    linked: &Linked,
    side: Side,
    threads: usize,
) -> Vec<Digest> {
    let part = |part: &[Entry]| -> Vec<Digest> {
        let mut b = Vec::with_capacity(64);
        part.iter()
            .map(|e| leaf(e, owners, linked.is(e).then_some(side), &mut b))
            .collect()
    };
    if threads <= 1 {
        return part(entries);
    }
    let per = entries.len().div_ceil(threads).max(1);
    let parts: Vec<&[Entry]> = entries.chunks(per).collect();
    digest::in_parallel(parts, part).concat()
}

/// Which entries of a listing are hard-linked: files sharing an inode
/// within the listing, and every hard-link name. A sorted list, not a
/// map: 8 bytes an entry while it is built (a map of every inode was
/// ~35 MB at a million files, beside the listing).
struct Linked {
    shared: Vec<u64>,
}

impl Linked {
    fn of(entries: &[Entry]) -> Linked {
        let mut inodes: Vec<u64> = entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. } | Kind::HardLink { .. }) && e.ino != 0)
            .map(|e| e.ino)
            .collect();
        inodes.sort_unstable();
        let shared = inodes
            .chunk_by(|a, b| a == b)
            .filter(|g| g.len() > 1)
            .map(|g| g[0])
            .collect();
        Linked { shared }
    }

    fn is(&self, e: &Entry) -> bool {
        match e.kind {
            Kind::HardLink { .. } => true,
            Kind::File { .. } => e.ino != 0 && self.shared.binary_search(&e.ino).is_ok(),
            _ => false,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::wire::Meta;
    use syncd_proto::path::RelPath;

    /// A file entry of `size` bytes (also the scan tests').
    pub(in crate::scan) fn file(p: &str, size: u64, ino: u64) -> Entry {
        Entry {
            path: RelPath::new(p.as_bytes().to_vec()).unwrap(),
            kind: Kind::File { size, hash: None },
            meta: Meta {
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_sec: 1,
                mtime_nsec: 0,
            },
            ino,
        }
    }

    #[test]
    fn equal_listings_have_equal_roots_and_hashes_do_not_count() {
        let a = vec![file("x", 3, 1), file("y", 4, 2)];
        let mut b = vec![file("x", 3, 7), file("y", 4, 8)];
        b[0].kind = Kind::File {
            size: 3,
            hash: Some([1; 32]),
        };
        let ta = tree(&a, true, Side::Primary);
        let tb = tree(&b, true, Side::Standby);
        assert_eq!(ta.root().tree, tb.root().tree);
        b[1].meta.mtime_nsec = 1;
        assert_ne!(ta.root().tree, tree(&b, true, Side::Standby).root().tree);
    }

    #[test]
    fn owners_count_only_when_asked() {
        let a = vec![file("x", 3, 1)];
        let mut b = a.clone();
        b[0].meta.uid = 1000;
        assert_eq!(
            tree(&a, false, Side::Primary).root().tree,
            tree(&b, false, Side::Standby).root().tree
        );
        assert_ne!(
            tree(&a, true, Side::Primary).root().tree,
            tree(&b, true, Side::Standby).root().tree
        );
    }

    #[test]
    fn a_tree_of_an_owned_listing_is_the_borrowed_one() {
        // Directories, files beneath them, a hard-linked pair, and more
        // entries than one shrink step, so the buffer is shrunk on the way.
        let mut v = Vec::new();
        for d in 0..300 {
            let mut e = file(&format!("d{d:03}"), 0, 0);
            e.kind = Kind::Dir;
            v.push(e);
            for f in 0..250 {
                v.push(file(&format!("d{d:03}/f{f}"), f, d * 1000 + f + 10));
            }
        }
        v.push(file("x", 3, 5));
        v.push(file("y", 3, 5));
        assert!(v.len() >= PARALLEL_MIN_ENTRIES, "large enough to thread");
        for side in [Side::Primary, Side::Standby] {
            let a = tree(&v, true, side);
            let b = tree_of(v.clone(), true, side);
            assert_eq!(a.root(), b.root());
            // The tree of one thread, leaf after leaf.
            let linked = Linked::of(&v);
            let mut buf = Vec::new();
            let one = Tree::build(v.iter().map(|e| {
                let l = leaf(e, true, linked.is(e).then_some(side), &mut buf);
                (e.path.as_bytes(), l, matches!(e.kind, Kind::Dir))
            }));
            assert_eq!(one.root(), a.root());
            // Whatever the cores here: leaves on 3 threads are one's.
            assert_eq!(
                leaves(&v, true, &linked, side, 3),
                leaves(&v, true, &linked, side, 1)
            );
            assert_eq!(one.dir(b"d150"), a.dir(b"d150"));
            assert_eq!(a.dir(b"d007"), b.dir(b"d007"));
            assert!(b.dir(b"d299").is_some_and(|d| d.leaves().len() == 250));
        }
        let mut w = v.clone();
        w[1].meta.mtime_sec = 9;
        assert_ne!(
            tree(&v, true, Side::Standby).root(),
            tree_of(w, true, Side::Standby).root()
        );
    }

    #[test]
    fn hard_linked_names_never_match_across_sides() {
        let a = vec![file("x", 3, 5), file("y", 3, 5)];
        assert_ne!(
            tree(&a, true, Side::Primary).root().tree,
            tree(&a, true, Side::Standby).root().tree
        );
    }
}
