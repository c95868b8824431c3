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

const MAGIC: &[u8; 8] = b"SYNCDIX1";

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
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {0}: {1}")]
    Io(String, std::io::Error),
}

impl Index {
    /// Loads the index; a missing or unreadable one starts empty (it is only a cache).
    pub fn load(path: &Path) -> Index {
        let map = crate::state::read_private(path)
            .ok()
            .and_then(|b| {
                let rest = b.strip_prefix(MAGIC.as_slice())?;
                postcard::from_bytes::<Vec<(Vec<u8>, Stamp, Hash)>>(rest).ok()
            })
            .map(|v| v.into_iter().map(|(k, s, h)| (k, (s, h))).collect())
            .unwrap_or_default();
        Index {
            map,
            path: path.to_path_buf(),
            dirty: false,
        }
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
        let err = |e| IndexError::Io(self.path.display().to_string(), e);
        if let Some(d) = self.path.parent() {
            crate::state::private_dir(d).map_err(err)?;
        }
        let v: Vec<(&Vec<u8>, &Stamp, &Hash)> =
            self.map.iter().map(|(k, (s, h))| (k, s, h)).collect();
        let mut bytes = MAGIC.to_vec();
        bytes = postcard::to_extend(&v, bytes).map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = crate::state::create_private(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.dirty = false;
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
}
