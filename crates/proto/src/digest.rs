//! Directory digests (a Merkle tree over the export) and the top-down walk
//! that compares two of them, so an in-sync pair exchanges a few digests
//! instead of a manifest of every file.
//!
//! Each entry has a *leaf* digest (its kind and the metadata a comparison
//! looks at; the shells encode it, the same way on both sides). A
//! directory's `own` digest covers its direct entries' names and leaves; its
//! `tree` digest covers `own` and its subdirectories' `tree`s. Equal trees
//! mean equal subtrees, so the walk descends only where trees differ, and
//! names only the entries (or whole subtrees present on one side) that a
//! scoped comparison must then look at.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// 128 bits of BLAKE3: collisions are out of reach even for a hostile peer
/// (it can only make its own side look different, never equal).
pub type Digest = [u8; 16];

/// A digest over parts, each length-prefixed, so no two sequences of
/// parts hash alike. The parts are gathered and hashed in pieces of 64 KiB:
/// BLAKE3 of the same bytes in one call, several times faster than a call
/// per part (a million leaves make four million parts).
struct Parts {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl Parts {
    const FLUSH: usize = 1 << 16;

    fn new(first: &[u8]) -> Parts {
        let mut p = Parts {
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(256),
        };
        p.part(first);
        p
    }

    fn part(&mut self, p: &[u8]) {
        self.buf.extend_from_slice(&(p.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(p);
        if self.buf.len() >= Self::FLUSH {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }

    fn digest(mut self) -> Digest {
        self.hasher.update(&self.buf);
        let mut d = [0; 16];
        d.copy_from_slice(&self.hasher.finalize().as_bytes()[..16]);
        d
    }
}

/// A leaf digest from the shell's canonical encoding of one entry: the
/// parts `b"leaf"` and `encoded`, as [`Parts`] frames them, hashed without
/// a buffer (a million leaves are not a million allocations).
pub fn leaf(encoded: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    for p in [&b"leaf"[..], encoded] {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut d = [0; 16];
    d.copy_from_slice(&h.finalize().as_bytes()[..16]);
    d
}

/// One directory of a [`Tree`]: its direct entries (sorted by name) and
/// its subdirectories' tree digests (sorted by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    pub own: Digest,
    pub tree: Digest,
    /// The leaves' names back to back (a million names are not a million
    /// allocations: ~25 bytes a leaf instead of ~70).
    names: Vec<u8>,
    /// Per leaf, in name order: where its name ends in `names`, its digest.
    leaves: Vec<(usize, Digest)>,
    pub subdirs: Vec<(Vec<u8>, Digest)>,
}

impl Dir {
    /// Its direct entries' names and leaves, sorted by name.
    pub fn leaves(&self) -> impl ExactSizeIterator<Item = (&[u8], &Digest)> {
        let mut start = 0;
        self.leaves.iter().map(move |(end, d)| {
            let name = self.names.get(start..*end).unwrap_or_default();
            start = *end;
            (name, d)
        })
    }
}

/// A directory while its tree is built: leaves in arrival order.
#[derive(Default)]
struct Building {
    names: Vec<u8>,
    /// Per leaf: where its name starts and ends in `names`, its digest.
    leaves: Vec<(usize, usize, Digest)>,
    subdirs: Vec<(Vec<u8>, Digest)>,
}

impl Building {
    /// Sorted and hashed: the directory's `own` and `tree` digests.
    fn finish(mut self) -> Dir {
        let Building { names, leaves, .. } = &mut self;
        leaves.sort_unstable_by(|a, b| (&names[a.0..a.1], &a.2).cmp(&(&names[b.0..b.1], &b.2)));
        self.subdirs.sort();
        let mut dir = self.into_dir();
        let mut own = Parts::new(b"own");
        for (n, d) in dir.leaves() {
            own.part(n);
            own.part(d);
        }
        dir.own = own.digest();
        let mut tree = Parts::new(b"tree");
        tree.part(&dir.own);
        for (n, d) in &dir.subdirs {
            tree.part(n);
            tree.part(d);
        }
        dir.tree = tree.digest();
        dir
    }

    /// Packed in the leaves' present order, digests unset.
    fn into_dir(self) -> Dir {
        let mut names = Vec::with_capacity(self.names.len());
        let leaves = self
            .leaves
            .iter()
            .map(|&(start, end, d)| {
                names.extend_from_slice(&self.names[start..end]);
                (names.len(), d)
            })
            .collect();
        Dir {
            names,
            leaves,
            subdirs: self.subdirs,
            ..Dir::default()
        }
    }
}

/// The digests of a whole listing, by directory path (`b""` is the root).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    dirs: BTreeMap<Vec<u8>, Dir>,
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The directories of a tree being built, by path; each a slot.
struct Slots {
    at: HashMap<Vec<u8>, usize>,
    paths: Vec<Vec<u8>>,
    dirs: Vec<Building>,
}

impl Slots {
    fn of(&mut self, path: &[u8]) -> usize {
        if let Some(&i) = self.at.get(path) {
            return i;
        }
        let i = self.dirs.len();
        self.at.insert(path.to_vec(), i);
        self.paths.push(path.to_vec());
        self.dirs.push(Building::default());
        i
    }
}

impl Tree {
    /// Builds the digests from every entry of a listing: its path, leaf, and
    /// whether it is a directory. Entries whose parent is not listed as a
    /// directory are still counted under it (the parent gets a node).
    /// In any order; the paths may be owned, so that a caller can free its
    /// listing as the tree grows.
    pub fn build<P: AsRef<[u8]>>(entries: impl IntoIterator<Item = (P, Digest, bool)>) -> Tree {
        Tree::build_on(entries, 1)
    }

    /// [`Tree::build`], finishing the directories of each depth on up to
    /// `threads` threads (a million entries take ~0.3 s on one core: the
    /// serial end of a restart, after both walks). The same tree.
    pub fn build_on<P: AsRef<[u8]>>(
        entries: impl IntoIterator<Item = (P, Digest, bool)>,
        threads: usize,
    ) -> Tree {
        let mut slots = Slots {
            at: HashMap::new(),
            paths: Vec::new(),
            dirs: Vec::new(),
        };
        slots.of(b"");
        // A listing names a directory's entries one after another: the
        // parent's slot is looked up once for each run of them.
        let mut last = 0;
        for (path, d, is_dir) in entries {
            let path = path.as_ref();
            let (parent, name) = split(path);
            if is_dir {
                slots.of(path);
            }
            if slots.paths[last] != parent {
                last = slots.of(parent);
            }
            let b = &mut slots.dirs[last];
            let start = b.names.len();
            b.names.extend_from_slice(name);
            b.leaves.push((start, b.names.len(), d));
        }
        // Deepest first, so each subdirectory's tree is known before its
        // parent's; the directories of one depth are independent.
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for (i, p) in slots.paths.iter().enumerate() {
            let d = depth(p);
            if levels.len() <= d {
                levels.resize_with(d + 1, Vec::new);
            }
            levels[d].push(i);
        }
        let mut done: Vec<Option<Dir>> = Vec::new();
        done.resize_with(slots.dirs.len(), || None);
        for level in levels.iter().rev() {
            let building: Vec<Building> = level
                .iter()
                .map(|&i| std::mem::take(&mut slots.dirs[i]))
                .collect();
            for (&i, dir) in level.iter().zip(finish_all(building, threads)) {
                let path = &slots.paths[i];
                if !path.is_empty() {
                    let (parent, name) = split(path);
                    let entry = (name.to_vec(), dir.tree);
                    let parent = parent.to_vec();
                    let p = slots.of(&parent);
                    slots.dirs[p].subdirs.push(entry);
                }
                done[i] = Some(dir);
            }
        }
        // A parent made above for an unlisted directory's child is never
        // finished: it keeps its subdirectories and no digests.
        done.resize_with(slots.dirs.len(), || None);
        let dirs = slots
            .paths
            .into_iter()
            .zip(slots.dirs)
            .zip(done)
            .map(|((p, b), d)| (p, d.unwrap_or_else(|| b.into_dir())))
            .collect();
        Tree { dirs }
    }

    pub fn dir(&self, path: &[u8]) -> Option<&Dir> {
        self.dirs.get(path)
    }

    pub fn root(&self) -> &Dir {
        static EMPTY: std::sync::OnceLock<Dir> = std::sync::OnceLock::new();
        self.dirs
            .get(&b""[..])
            .unwrap_or_else(|| EMPTY.get_or_init(Dir::default))
    }

    /// The standby's answer to one query.
    pub fn answer(&self, q: &Query) -> Answer {
        let state = match self.dirs.get(&q.path) {
            None => State::Missing,
            Some(d) if d.tree == q.tree => State::Same,
            Some(d) if weight(d, d.own != q.own) > MAX_ANSWER => State::Large,
            Some(d) => State::Differs {
                subdirs: d.subdirs.clone(),
                leaves: (d.own != q.own)
                    .then(|| d.leaves().map(|(n, l)| (n.to_vec(), *l)).collect()),
            },
        };
        Answer {
            path: q.path.clone(),
            state,
        }
    }
}

/// An answer's names and digests beyond this are not sent: the directory
/// is listed whole instead (one answer must fit a frame).
pub const MAX_ANSWER: usize = 1 << 20;

fn weight(d: &Dir, leaves: bool) -> usize {
    let subdirs: usize = d.subdirs.iter().map(|(n, _)| n.len() + 18).sum();
    subdirs
        + if leaves {
            d.names.len() + 18 * d.leaves.len()
        } else {
            0
        }
}

/// Directories fewer than this are finished on the calling thread.
const PARALLEL_MIN_DIRS: usize = 512;

/// Each directory finished, in order, on up to `threads` threads.
fn finish_all(building: Vec<Building>, threads: usize) -> Vec<Dir> {
    if threads <= 1 || building.len() < PARALLEL_MIN_DIRS {
        return building.into_iter().map(Building::finish).collect();
    }
    let per = building.len().div_ceil(threads);
    let mut parts: Vec<Vec<Building>> = Vec::new();
    let mut rest = building;
    while rest.len() > per {
        let tail = rest.split_off(per);
        parts.push(rest);
        rest = tail;
    }
    parts.push(rest);
    in_parallel(parts, |part| {
        part.into_iter().map(Building::finish).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// `f` of each part, in order, a thread each; a part whose thread cannot
/// be made (a process or memory limit) is done on the calling thread.
pub fn in_parallel<T: Send, R: Send>(parts: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    // Each part in a cell, so that one whose thread was refused can be
    // taken back (the refused closure is dropped with its captures).
    let cells: Vec<Mutex<Option<T>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
    let take = |c: &Mutex<Option<T>>| c.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (f, take) = (&f, &take);
    std::thread::scope(|s| {
        let running: Vec<_> = cells
            .iter()
            .map(|c| {
                let h = std::thread::Builder::new().spawn_scoped(s, move || take(c).map(f));
                (c, h)
            })
            .collect();
        running
            .into_iter()
            .filter_map(|(c, h)| match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(_) => take(c).map(f),
            })
            .collect()
    })
}

fn depth(p: &[u8]) -> usize {
    if p.is_empty() {
        0
    } else {
        1 + p.iter().filter(|&&b| b == b'/').count()
    }
}

/// The primary's digests of one directory, asked about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Query {
    #[serde(with = "bytes")]
    pub path: Vec<u8>,
    pub own: Digest,
    pub tree: Digest,
}

/// The standby's side of one directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    #[serde(with = "bytes")]
    pub path: Vec<u8>,
    pub state: State,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The subtree is equal.
    Same,
    /// Not a directory there.
    Missing,
    /// Differs, with more entries than an answer carries ([`MAX_ANSWER`]):
    /// the whole subtree is listed.
    Large,
    /// Its subdirectories' trees; its direct entries' leaves when `own`
    /// differs too.
    Differs {
        subdirs: Vec<(Vec<u8>, Digest)>,
        leaves: Option<Vec<(Vec<u8>, Digest)>>,
    },
}

impl Answer {
    /// Names and digests it carries, to bound what a peer may send.
    pub fn size(&self) -> (usize, u64) {
        match &self.state {
            State::Differs { subdirs, leaves } => {
                let all = subdirs.iter().chain(leaves.iter().flatten());
                all.fold((0, 0), |(n, b), (name, _)| (n + 1, b + name.len() as u64))
            }
            _ => (0, 0),
        }
    }
}

mod bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Vec::<u8>::deserialize(d)
    }
}

mod walk;
pub use walk::{Differs, Walk, WalkError};

#[cfg(test)]
mod tests;
