//! The per-side index: path → what we last knew about the file, including its
//! BLAKE3, so an unchanged file is never re-read just to be hashed.
//!
//! An entry is trusted only while size, mtime, ctime and inode all still match
//! what `lstat` says; any change (even a `touch`) invalidates the hash.

use std::collections::HashMap;
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

type Entries = Vec<(Vec<u8>, Stamp, Hash)>;

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
    map: HashMap<Vec<u8>, (Stamp, Hash)>,
    path: PathBuf,
    dirty: bool,
    /// Read from an older format: the next save writes the current one.
    migrated: bool,
    /// Loaded over an error (a newer format): never written, so the newer
    /// file survives for the release that understands it.
    read_only: bool,
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
fn decode(path: &Path, b: &[u8]) -> Result<Option<(Entries, bool)>, IndexError> {
    if let Some(rest) = b.strip_prefix(MAGIC_V1.as_slice()) {
        return Ok(postcard::from_bytes(rest).ok().map(|v| (v, true)));
    }
    let Some(rest) = b.strip_prefix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let Some((v, rest)) = rest.split_first_chunk::<4>() else {
        return Ok(None);
    };
    match u32::from_le_bytes(*v) {
        VERSION => Ok(postcard::from_bytes(rest).ok().map(|v| (v, false))),
        version if version > VERSION => Err(IndexError::Newer {
            path: path.display().to_string(),
            version,
        }),
        _ => Ok(None),
    }
}

impl Index {
    /// Loads the index. A missing, unreadable or damaged one starts empty
    /// (it is only a cache of hashes: the files are rehashed); an older
    /// format is migrated; a newer one is an error.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let (map, migrated) = match crate::state::read_private(path) {
            Ok(b) => match decode(path, &b)? {
                Some((v, migrated)) => (
                    v.into_iter().map(|(k, s, h)| (k, (s, h))).collect(),
                    migrated,
                ),
                None => {
                    tracing::warn!(path = %path.display(), "index damaged; rehashing the export");
                    (HashMap::new(), false)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), false),
            Err(e) => {
                tracing::warn!(path = %path.display(), "index unreadable ({e}); rehashing the export");
                (HashMap::new(), false)
            }
        };
        Ok(Index {
            map,
            path: path.to_path_buf(),
            dirty: migrated,
            migrated,
            read_only: false,
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

    /// Whether this was read from an older format (and not saved since).
    pub fn migrated(&self) -> bool {
        self.migrated
    }

    pub fn get(&self, key: &[u8], now: &Stamp) -> Option<Hash> {
        self.map.get(key).filter(|(s, _)| s == now).map(|(_, h)| *h)
    }

    pub fn insert(&mut self, key: Vec<u8>, stamp: Stamp, hash: Hash) {
        if self.map.get(&key) != Some(&(stamp, hash)) {
            self.map.insert(key, (stamp, hash));
            self.dirty = true;
        }
    }

    pub fn remove(&mut self, key: &[u8]) {
        if self.map.remove(key).is_some() {
            self.dirty = true;
        }
    }

    /// Takes in every entry of `other` (hashes learnt without holding this one).
    pub fn absorb(&mut self, other: Index) {
        for (k, (s, h)) in other.map {
            self.insert(k, s, h);
        }
    }

    /// Drops entries for paths that no longer exist.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let before = self.map.len();
        self.map.retain(|k, _| keep(k));
        self.dirty |= self.map.len() != before;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Writes the index atomically (temp file + fsync + rename) if it changed.
    pub fn save(&mut self) -> Result<(), IndexError> {
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
        let v: Vec<(&Vec<u8>, &Stamp, &Hash)> =
            self.map.iter().map(|(k, (s, h))| (k, s, h)).collect();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes = postcard::to_extend(&v, bytes).map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = crate::state::create_private(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.dirty = false;
        self.migrated = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::write(&p, bytes).unwrap();
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
