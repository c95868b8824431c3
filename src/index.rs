//! The per-side index: path → what we last knew about the file, including its
//! BLAKE3, so an unchanged file is never re-read just to be hashed.
//!
//! An entry is trusted only while size, mtime, ctime and inode all still match
//! what `lstat` says; any change (even a `touch`) invalidates the hash.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wire::Hash;

/// The index's file name in the state directory.
pub const FILE: &str = "index.bin";

/// `MAGIC`, then the format version (u32, little endian), then postcard.
const MAGIC: &[u8; 8] = b"SYNCDIDX";
pub const VERSION: u32 = 2;
/// Version 1 had only this magic, no version field; read and migrated.
const MAGIC_V1: &[u8; 8] = b"SYNCDIX1";

mod table;
use table::Table;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub ino: u64,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
            ino: m.ino(),
        }
    }
}

#[derive(Default, Debug)]
pub struct Index {
    map: Table,
    path: PathBuf,
    dirty: bool,
    /// Read from an older format: the next save writes the current one.
    migrated: bool,
    /// Loaded over an error (a newer format): never written, so the newer
    /// file survives for the release that understands it.
    read_only: bool,
    /// Still being read (see [`Index::load_behind`]).
    loading: Option<std::thread::JoinHandle<Index>>,
    /// While being read: the count of entries the file announces.
    announced: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {0}: {1}")]
    Io(String, std::io::Error),
    #[error(
        "index {path} has format version {version}, newer than this release's {VERSION} \
         (written by a newer syncd); run that release, or move the file away to rebuild \
         the index by rehashing the export"
    )]
    Newer { path: String, version: u32 },
    #[error("index {0} was loaded over an error; not overwriting it")]
    ReadOnly(String),
}

/// The entries in `b` and whether they came from an older format; a file
/// that is neither format is `Ok(None)` (damaged: only a cache).
fn decode(path: &Path, b: &[u8]) -> Result<Option<(Table, bool)>, IndexError> {
    if let Some(rest) = b.strip_prefix(MAGIC_V1.as_slice()) {
        return Ok(entries(rest).map(|t| (t, true)));
    }
    let Some(rest) = b.strip_prefix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let Some((v, rest)) = rest.split_first_chunk::<4>() else {
        return Ok(None);
    };
    match u32::from_le_bytes(*v) {
        VERSION => Ok(entries(rest).map(|t| (t, false))),
        version if version > VERSION => Err(IndexError::Newer {
            path: path.display().to_string(),
            version,
        }),
        _ => Ok(None),
    }
}

/// The count of entries the file at `path` announces, read from its first
/// bytes only (0 when there is none to read).
fn announced_entries(path: &Path) -> usize {
    // The magic, the version and the count (a varint of at most 10 bytes).
    let Ok(head) = crate::state::read_private_head(path, 22) else {
        return 0;
    };
    let body = match head.strip_prefix(MAGIC_V1.as_slice()) {
        Some(rest) => rest,
        None => match head.strip_prefix(MAGIC.as_slice()) {
            Some(rest) => rest.get(4..).unwrap_or_default(),
            None => return 0,
        },
    };
    postcard::take_from_bytes::<u64>(body)
        .ok()
        .and_then(|(n, _)| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// One entry as written: the path, its stamp, its hash.
type Record<'a> = (&'a [u8], Stamp, Hash);

/// Decodes postcard's `Vec<(Vec<u8>, Stamp, Hash)>` (both formats' body)
/// one entry at a time into the table, never into a `Vec` of them all.
fn entries(b: &[u8]) -> Option<Table> {
    let (n, mut rest) = postcard::take_from_bytes::<u64>(b).ok()?;
    // Each entry is at least 39 bytes: a damaged count allocates nothing big.
    let mut t = Table::with_capacity(usize::try_from(n).ok()?.min(rest.len() / 39));
    for _ in 0..n {
        let ((k, s, h), r) = postcard::take_from_bytes::<Record>(rest).ok()?;
        t.insert(k, s, h);
        rest = r;
    }
    Some(t)
}

impl Index {
    /// Loads the index. A missing, unreadable or damaged one starts empty
    /// (it is only a cache of hashes: the files are rehashed); an older
    /// format is migrated; a newer one is an error.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let (map, migrated) = match crate::state::read_private(path) {
            Ok(b) => match decode(path, &b)? {
                Some((t, migrated)) => (t, migrated),
                None => {
                    tracing::warn!(path = %path.display(), "index damaged; rehashing the export");
                    (Table::default(), false)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Table::default(), false),
            Err(e) => {
                tracing::warn!(path = %path.display(), "index unreadable ({e}); rehashing the export");
                (Table::default(), false)
            }
        };
        Ok(Index {
            map,
            path: path.to_path_buf(),
            dirty: migrated,
            migrated,
            read_only: false,
            loading: None,
            announced: 0,
        })
    }

    /// [`Index::open`] for callers that run after the daemon's start-up
    /// check (`state::check_formats`) refused a newer format: an error here
    /// yields an empty index that is never saved.
    pub fn load(path: &Path) -> Index {
        Index::open(path).unwrap_or_else(|e| {
            tracing::error!("{e}");
            Index {
                path: path.to_path_buf(),
                read_only: true,
                ..Index::default()
            }
        })
    }

    /// [`Index::load`] on a thread of its own, so that a start need not
    /// wait for it (a million entries take ~0.4 s of a core): what needs
    /// the entries waits for them (every `&mut self` method but
    /// [`Index::save`], [`Index::ready`]); until then [`Index::get`] finds
    /// nothing (a hash is taken again), [`Index::len`] counts nothing and
    /// [`Index::size_hint`] is the count the file announces.
    pub fn load_behind(path: &Path) -> Index {
        let p = path.to_path_buf();
        let announced = announced_entries(path);
        match std::thread::Builder::new()
            .name("index-load".into())
            .spawn(move || Index::load(&p))
        {
            Ok(h) => Index {
                path: path.to_path_buf(),
                loading: Some(h),
                announced,
                ..Index::default()
            },
            Err(_) => Index::load(path),
        }
    }

    /// The entries held, or while they are read the count the file
    /// announces (a damaged file may announce anything: only a hint).
    pub fn size_hint(&self) -> usize {
        match self.loading {
            Some(_) => self.announced,
            None => self.map.len(),
        }
    }

    /// Waits until the entries are read (a no-op unless [`Index::load_behind`]).
    pub fn ready(&mut self) {
        if let Some(h) = self.loading.take() {
            *self = match h.join() {
                Ok(ix) => ix,
                // Not reached (the load handles its errors); only a cache.
                Err(_) => Index::load(&self.path),
            };
        }
    }

    /// Whether the file at `path` is in an older format, read from its
    /// first bytes only (a start-up check need not decode a million
    /// entries); a newer format is an error; a missing, unreadable or
    /// damaged file is not older (it is rebuilt when loaded).
    pub fn older_format(path: &Path) -> Result<bool, IndexError> {
        // The magic and the version field.
        let Ok(head) = crate::state::read_private_head(path, 12) else {
            return Ok(false);
        };
        if head.starts_with(MAGIC_V1) {
            return Ok(true);
        }
        match head
            .strip_prefix(MAGIC.as_slice())
            .map(|v| v.first_chunk::<4>())
        {
            Some(Some(v)) if u32::from_le_bytes(*v) > VERSION => Err(IndexError::Newer {
                path: path.display().to_string(),
                version: u32::from_le_bytes(*v),
            }),
            _ => Ok(false),
        }
    }

    /// Whether this was read from an older format (and not saved since).
    pub fn migrated(&self) -> bool {
        self.migrated
    }

    pub fn get(&self, key: &[u8], now: &Stamp) -> Option<Hash> {
        self.map.get(key).filter(|(s, _)| s == now).map(|(_, h)| h)
    }

    pub fn insert(&mut self, key: Vec<u8>, stamp: Stamp, hash: Hash) {
        self.ready();
        self.dirty |= self.map.insert(&key, stamp, hash);
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.ready();
        self.dirty |= self.map.remove(key);
    }

    /// Takes in every entry of `other` (hashes learnt without holding this one).
    pub fn absorb(&mut self, mut other: Index) {
        other.ready();
        if other.map.len() == 0 {
            return;
        }
        self.ready();
        for (k, s, h) in other.map.iter() {
            self.dirty |= self.map.insert(k, s, *h);
        }
    }

    /// Drops entries for paths that no longer exist.
    pub fn retain(&mut self, keep: impl FnMut(&[u8]) -> bool) {
        self.ready();
        self.dirty |= self.map.retain(keep) > 0;
    }

    /// Drops the entries of every path not in `live` (a whole listing).
    pub fn keep_only<'a>(&mut self, live: impl Iterator<Item = &'a [u8]>) {
        self.ready();
        self.dirty |= self.map.keep_only(live) > 0;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Writes the index atomically (temp file + fsync + rename) if it changed.
    pub fn save(&mut self) -> Result<(), IndexError> {
        // Still being read: nothing changed it (a change waits for the
        // load), so the file already holds it; not waited for.
        if self.loading.is_some() {
            return Ok(());
        }
        if !self.dirty {
            return Ok(());
        }
        if self.read_only {
            return Err(IndexError::ReadOnly(self.path.display().to_string()));
        }
        let err = |e| IndexError::Io(self.path.display().to_string(), e);
        if let Some(d) = self.path.parent() {
            crate::state::private_dir(d).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        let f = crate::state::create_private(&tmp).map_err(err)?;
        let f = self.write_to(f).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.dirty = false;
        self.migrated = false;
        Ok(())
    }

    /// Writes the format one entry at a time through a small buffer (one
    /// buffer of the whole encoding was ~100 MB at a million files).
    fn write_to(&self, f: std::fs::File) -> std::io::Result<std::fs::File> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        // postcard's `Vec<(Vec<u8>, Stamp, Hash)>`: the count, then each.
        let io = |e: postcard::Error| std::io::Error::other(e);
        postcard::to_io(&(self.map.len() as u64), &mut w).map_err(io)?;
        for (k, s, h) in self.map.iter() {
            let rec: Record = (k, s, *h);
            postcard::to_io(&rec, &mut w).map_err(io)?;
        }
        w.into_inner().map_err(|e| e.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While it is read behind, an index tells the count its file
    /// announces (what a whole scan's pruning looks at) and no more.
    #[test]
    fn an_index_read_behind_announces_its_count_from_its_head() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        assert_eq!(Index::load_behind(&p).size_hint(), 0, "no file");
        let mut ix = Index::load(&p);
        for i in 0..300u32 {
            ix.insert(format!("f{i}").into_bytes(), stamp(), [1; 32]);
        }
        ix.save().unwrap();
        let before = std::fs::read(&p).unwrap();
        let mut behind = Index::load_behind(&p);
        assert_eq!(behind.size_hint(), 300);
        behind.save().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), before, "nothing to save yet");
        assert_eq!(behind.len(), 0, "nothing counted before it is read");
        behind.ready();
        assert_eq!((behind.len(), behind.size_hint()), (300, 300));
        std::fs::write(&p, b"SYNCDIDX\x02\x00\x00\x00").unwrap();
        assert_eq!(Index::load_behind(&p).size_hint(), 0, "no count");
        std::fs::write(&p, b"garbage").unwrap();
        assert_eq!(Index::load_behind(&p).size_hint(), 0);
    }

    #[test]
    fn save_load_and_staleness() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s/index.bin");
        let mut ix = Index::load(&p);
        let s = Stamp {
            size: 1,
            mtime: (2, 3),
            ctime: (4, 5),
            ino: 6,
        };
        ix.insert(b"a".to_vec(), s, [7; 32]);
        ix.save().unwrap();
        let ix = Index::load(&p);
        assert_eq!(ix.get(b"a", &s), Some([7; 32]));
        assert_eq!(ix.get(b"a", &Stamp { ctime: (4, 6), ..s }), None);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(Index::load(&p).is_empty());
    }

    /// An index read behind the caller's back is whole once used: a
    /// change waits for it and is kept beside what was read.
    #[test]
    fn an_index_read_behind_is_whole_at_its_first_change() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        let mut ix = Index::load(&p);
        for i in 0..10_000u32 {
            ix.insert(format!("f{i}").into_bytes(), stamp(), [1; 32]);
        }
        ix.save().unwrap();
        let mut ix = Index::load_behind(&p);
        ix.insert(b"new".to_vec(), stamp(), [2; 32]);
        assert_eq!(ix.len(), 10_001);
        assert_eq!(ix.get(b"f9999", &stamp()), Some([1; 32]));
        ix.save().unwrap();
        let ix = Index::load(&p);
        assert_eq!(ix.get(b"new", &stamp()), Some([2; 32]));
        assert_eq!(ix.get(b"f0", &stamp()), Some([1; 32]));
        let mut behind = Index::load_behind(&p);
        behind.ready();
        behind.ready();
        assert_eq!(behind.len(), 10_001);
    }

    fn stamp() -> Stamp {
        Stamp {
            size: 1,
            mtime: (2, 3),
            ctime: (4, 5),
            ino: 6,
        }
    }

    #[test]
    fn the_unversioned_format_is_read_and_migrated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        // What releases before the version field wrote.
        let old: Vec<(Vec<u8>, Stamp, Hash)> = vec![(b"a".to_vec(), stamp(), [7; 32])];
        let bytes = postcard::to_extend(&old, MAGIC_V1.to_vec()).unwrap();
        std::fs::write(&p, &bytes).unwrap();
        let mut ix = Index::open(&p).unwrap();
        assert!(ix.migrated());
        assert_eq!(ix.get(b"a", &stamp()), Some([7; 32]));
        ix.save().unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(b[8..12], VERSION.to_le_bytes());
        let ix = Index::open(&p).unwrap();
        assert!(!ix.migrated());
        assert_eq!(ix.get(b"a", &stamp()), Some([7; 32]));
        // The start-up check tells the formats apart by the header alone,
        // and migrates the older one in place.
        assert!(!Index::older_format(&p).unwrap());
        std::fs::write(&p, &bytes).unwrap();
        assert!(Index::older_format(&p).unwrap());
        crate::state::check_formats(d.path()).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[..8], MAGIC);
        assert_eq!(Index::open(&p).unwrap().get(b"a", &stamp()), Some([7; 32]));
        for not_older in [&b"SYNCD"[..], b"", b"garbage and more garbage"] {
            std::fs::write(&p, not_older).unwrap();
            assert!(!Index::older_format(&p).unwrap());
        }
        std::fs::remove_file(&p).unwrap();
        assert!(!Index::older_format(&p).unwrap());
    }

    #[test]
    fn the_file_format_is_unchanged_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        // What the previous release wrote: one postcard buffer of it all.
        let key = vec![b'd', 0xff, b'/', 0x80]; // not UTF-8
        let old: Vec<(Vec<u8>, Stamp, Hash)> = vec![(key.clone(), stamp(), [7; 32])];
        let mut want = MAGIC.to_vec();
        want.extend_from_slice(&VERSION.to_le_bytes());
        let want = postcard::to_extend(&old, want).unwrap();
        let mut ix = Index::load(&p);
        ix.insert(key.clone(), stamp(), [7; 32]);
        ix.save().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        // And many entries, in whatever order, read back.
        let mut ix = Index::load(&p);
        for i in 0..1000u32 {
            let s = Stamp {
                size: i.into(),
                ..stamp()
            };
            ix.insert(format!("a/{i}").into_bytes(), s, [i as u8; 32]);
        }
        ix.remove(&key);
        ix.save().unwrap();
        let b = std::fs::read(&p).unwrap();
        let v: Vec<(Vec<u8>, Stamp, Hash)> = postcard::from_bytes(&b[12..]).unwrap();
        assert_eq!(v.len(), 1000);
        let ix = Index::open(&p).unwrap();
        assert_eq!(ix.len(), 1000);
        for i in 0..1000u32 {
            let s = Stamp {
                size: i.into(),
                ..stamp()
            };
            assert_eq!(ix.get(format!("a/{i}").as_bytes(), &s), Some([i as u8; 32]));
        }
        assert_eq!(ix.get(&key, &stamp()), None);
    }

    #[test]
    fn a_damaged_body_is_an_empty_index_not_a_huge_allocation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        // A count of 2^62 entries, and one byte of them.
        let mut huge = postcard::to_extend(&(1u64 << 62), b).unwrap();
        huge.push(1);
        std::fs::write(&p, &huge).unwrap();
        assert!(Index::open(&p).unwrap().is_empty());
    }

    #[test]
    fn a_newer_format_is_refused_and_never_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.bin");
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(VERSION + 1).to_le_bytes());
        b.extend_from_slice(b"whatever comes next");
        std::fs::write(&p, &b).unwrap();
        let e = Index::open(&p).unwrap_err().to_string();
        assert!(e.contains("newer") && e.contains("index.bin"), "{e}");
        let mut ix = Index::load(&p);
        ix.insert(b"x".to_vec(), stamp(), [1; 32]);
        assert!(ix.save().is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b);
        // The daemon's start-up check refuses it with the same message.
        let e = crate::state::check_formats(d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("newer"), "{e}");
    }
}
