//! The index's map, compact: path → ([`Stamp`], [`Hash`]).
//!
//! A `HashMap<Vec<u8>, (Stamp, Hash)>` costs a 24-byte key and a heap
//! block per path and 104-byte buckets at most 7/8 full: ~240 MB at a
//! million files. Here every path lives in one byte buffer, an entry is an
//! 80-byte slot in one `Vec`, and the hash table holds only 4-byte slot
//! numbers: ~110 MB at a million files.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::Stamp;
use crate::wire::Hash;

/// One entry. The stamp is stored unpadded (a `Stamp` is 48 bytes).
#[derive(Clone, Copy, Debug)]
struct Slot {
    size: u64,
    ino: u64,
    mtime_sec: i64,
    ctime_sec: i64,
    hash: Hash,
    /// Where the path is in [`Table::names`].
    at: u32,
    mtime_nsec: u32,
    ctime_nsec: u32,
    len: u16,
}

impl Slot {
    fn stamp(&self) -> Stamp {
        Stamp {
            size: self.size,
            mtime: (self.mtime_sec, self.mtime_nsec),
            ctime: (self.ctime_sec, self.ctime_nsec),
            ino: self.ino,
        }
    }

    fn set(&mut self, s: &Stamp, hash: Hash) {
        self.size = s.size;
        self.ino = s.ino;
        (self.mtime_sec, self.mtime_nsec) = s.mtime;
        (self.ctime_sec, self.ctime_nsec) = s.ctime;
        self.hash = hash;
    }

    fn path<'a>(&self, names: &'a [u8]) -> &'a [u8] {
        let at = self.at as usize;
        &names[at..at + self.len as usize]
    }
}

/// Compacting `names` pays once at least this many bytes are unused.
const COMPACT_MIN: usize = 1 << 20;

#[derive(Default, Debug)]
pub(super) struct Table {
    /// Slot numbers, found by the hash of their path.
    find: HashTable<u32>,
    slots: Vec<Slot>,
    /// Every slot's path, back to back (and the paths of removed or moved
    /// slots, `garbage` bytes, until the next compaction).
    names: Vec<u8>,
    garbage: usize,
    hasher: RandomState,
}

impl Table {
    pub(super) fn with_capacity(n: usize) -> Table {
        Table {
            find: HashTable::with_capacity(n),
            slots: Vec::with_capacity(n),
            ..Table::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    fn slot_of(&self, path: &[u8]) -> Option<usize> {
        let (slots, names) = (&self.slots, &self.names);
        self.find
            .find(self.hasher.hash_one(path), |&i| {
                slots[i as usize].path(names) == path
            })
            .map(|&i| i as usize)
    }

    pub(super) fn get(&self, path: &[u8]) -> Option<(Stamp, Hash)> {
        self.slot_of(path).map(|i| {
            let s = &self.slots[i];
            (s.stamp(), s.hash)
        })
    }

    /// Sets `path`'s entry; false when it was already exactly this, or
    /// cannot be kept (a path over `u16`, or names past 4 GiB: the index is
    /// a cache, the file is hashed again).
    pub(super) fn insert(&mut self, path: &[u8], stamp: Stamp, hash: Hash) -> bool {
        if let Some(i) = self.slot_of(path) {
            let s = &mut self.slots[i];
            if (s.stamp(), s.hash) == (stamp, hash) {
                return false;
            }
            s.set(&stamp, hash);
            return true;
        }
        self.compact_if_wasteful();
        let (Ok(len), Ok(at)) = (u16::try_from(path.len()), u32::try_from(self.names.len())) else {
            return false;
        };
        if u32::try_from(self.names.len() + path.len()).is_err()
            || u32::try_from(self.slots.len()).is_err()
        {
            return false;
        }
        self.names.extend_from_slice(path);
        let mut slot = Slot {
            size: 0,
            ino: 0,
            mtime_sec: 0,
            ctime_sec: 0,
            hash,
            at,
            mtime_nsec: 0,
            ctime_nsec: 0,
            len,
        };
        slot.set(&stamp, hash);
        let n = self.slots.len() as u32;
        self.slots.push(slot);
        let (slots, names, h) = (&self.slots, &self.names, &self.hasher);
        self.find.insert_unique(h.hash_one(path), n, |&i| {
            h.hash_one(slots[i as usize].path(names))
        });
        true
    }

    pub(super) fn remove(&mut self, path: &[u8]) -> bool {
        let (slots, names) = (&self.slots, &self.names);
        let Ok(found) = self.find.find_entry(self.hasher.hash_one(path), |&i| {
            slots[i as usize].path(names) == path
        }) else {
            return false;
        };
        let (i, _) = found.remove();
        let i = i as usize;
        self.garbage += self.slots[i].len as usize;
        let last = self.slots.len() - 1;
        self.slots.swap_remove(i);
        if i != last {
            // The last slot moved into `i`: point its table entry there.
            let (slots, names) = (&self.slots, &self.names);
            let moved = slots[i].path(names);
            if let Some(n) = self
                .find
                .find_mut(self.hasher.hash_one(moved), |&n| n as usize == last)
            {
                *n = i as u32;
            }
        }
        self.compact_if_wasteful();
        true
    }

    /// Keeps only the entries of `paths` (one flag byte an entry, where a set of
    /// the paths was ~34 MB at a million); how many went.
    pub(super) fn keep_only<'a>(&mut self, paths: impl Iterator<Item = &'a [u8]>) -> usize {
        let mut seen = vec![false; self.slots.len()];
        for p in paths {
            if let Some(i) = self.slot_of(p) {
                seen[i] = true;
            }
        }
        let mut n = 0;
        self.retain(|_| {
            n += 1;
            seen[n - 1]
        })
    }

    /// Keeps the entries whose path `keep` accepts (called in slot
    /// order); how many went.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) -> usize {
        let before = self.slots.len();
        let names = &self.names;
        let mut gone = 0;
        self.slots.retain(|s| {
            let k = keep(s.path(names));
            if !k {
                gone += s.len as usize;
            }
            k
        });
        if self.slots.len() == before {
            return 0;
        }
        self.garbage += gone;
        self.rebuild_find();
        self.compact_if_wasteful();
        before - self.slots.len()
    }

    fn rebuild_find(&mut self) {
        self.find.clear();
        let (slots, names, h) = (&self.slots, &self.names, &self.hasher);
        for (n, s) in slots.iter().enumerate() {
            self.find
                .insert_unique(h.hash_one(s.path(names)), n as u32, |&i| {
                    h.hash_one(slots[i as usize].path(names))
                });
        }
        self.find
            .shrink_to_fit(|&i| h.hash_one(slots[i as usize].path(names)));
    }

    /// Rewrites `names` without the unused bytes once they are over half of it.
    fn compact_if_wasteful(&mut self) {
        if self.garbage < COMPACT_MIN || self.garbage * 2 < self.names.len() {
            return;
        }
        let mut names = Vec::with_capacity(self.names.len() - self.garbage);
        for s in &mut self.slots {
            let at = names.len() as u32;
            names.extend_from_slice(s.path(&self.names));
            s.at = at;
        }
        self.names = names;
        self.garbage = 0;
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], Stamp, &Hash)> {
        self.slots
            .iter()
            .map(|s| (s.path(&self.names), s.stamp(), &s.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(n: u64) -> Stamp {
        Stamp {
            size: n,
            mtime: (-(n as i64), n as u32),
            ctime: (i64::MAX - n as i64, u32::MAX - n as u32),
            ino: u64::MAX - n,
        }
    }

    #[test]
    fn a_slot_is_80_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 80);
    }

    #[test]
    fn insert_get_replace_remove_round_trip() {
        let mut t = Table::default();
        let deep = b"d/".repeat(2000);
        let paths: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"a/b".to_vec(),
            vec![0xff, 0xfe, b'/', 0x80], // not UTF-8
            deep.clone(),
            b"".to_vec(),
        ];
        for (n, p) in paths.iter().enumerate() {
            assert!(t.insert(p, stamp(n as u64), [n as u8; 32]));
        }
        assert_eq!(t.len(), paths.len());
        for (n, p) in paths.iter().enumerate() {
            assert_eq!(t.get(p), Some((stamp(n as u64), [n as u8; 32])), "{p:?}");
        }
        assert_eq!(t.get(b"a/"), None);
        assert_eq!(t.get(&deep[1..]), None);
        // The same again is no change; another stamp or hash is.
        assert!(!t.insert(b"a", stamp(0), [0; 32]));
        assert!(t.insert(b"a", stamp(9), [0; 32]));
        assert!(t.insert(b"a", stamp(9), [9; 32]));
        assert_eq!(t.get(b"a"), Some((stamp(9), [9; 32])));
        assert_eq!(t.len(), paths.len());
        // Removing the first moves the last into its slot: both still found.
        assert!(t.remove(b"a"));
        assert!(!t.remove(b"a"));
        assert_eq!(t.get(b"a"), None);
        for (n, p) in paths.iter().enumerate().skip(1) {
            assert_eq!(t.get(p), Some((stamp(n as u64), [n as u8; 32])), "{p:?}");
        }
        let mut all: Vec<Vec<u8>> = t.iter().map(|(p, _, _)| p.to_vec()).collect();
        all.sort();
        let mut want = paths[1..].to_vec();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn a_path_too_long_for_a_slot_is_not_kept() {
        let mut t = Table::default();
        let long = vec![b'x'; u16::MAX as usize + 1];
        assert!(!t.insert(&long, stamp(1), [1; 32]));
        assert_eq!(t.get(&long), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn removals_and_retain_compact_the_names_and_keep_the_rest() {
        let mut t = Table::default();
        let path = |i: u32| format!("dir{}/{:0>200}", i % 7, i).into_bytes();
        let n = 20_000u32; // ~4 MB of names, so compaction runs
        for i in 0..n {
            assert!(t.insert(&path(i), stamp(i as u64), [i as u8; 32]));
        }
        // Two thirds go: past half of `names` unused, it is rewritten.
        for i in (0..n).filter(|i| i % 3 != 0) {
            assert!(t.remove(&path(i)));
        }
        let live = |t: &Table| t.iter().map(|(p, _, _)| p.len()).sum::<usize>();
        assert_eq!(t.names.len() - t.garbage, live(&t));
        assert!(t.names.len() <= n as usize * 205 / 2, "{}", t.names.len());
        let gone = t.retain(|p| !p.starts_with(b"dir1/"));
        assert!(gone > 0);
        assert_eq!(t.names.len() - t.garbage, live(&t));
        for i in 0..n {
            let want = (i % 3 == 0 && i % 7 != 1).then(|| (stamp(i as u64), [i as u8; 32]));
            assert_eq!(t.get(&path(i)), want, "{i}");
        }
        assert_eq!(t.len(), t.iter().count());
        assert_eq!(t.retain(|_| true), 0);
        // Only the listed paths stay; a listed path not in the table is no entry.
        let listed = [path(0), path(3), b"elsewhere".to_vec()];
        let before = t.len();
        assert_eq!(t.keep_only(listed.iter().map(|p| p.as_slice())), before - 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&path(3)), Some((stamp(3), [3; 32])));
        assert_eq!(t.get(&path(0)), Some((stamp(0), [0; 32])));
        assert_eq!(t.get(b"elsewhere"), None);
    }
}
