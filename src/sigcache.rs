//! Block signatures the standby keeps for files it wrote, so a later delta
//! against such a file costs no read of it: the signature is computed while
//! the content streams to disk, and stored with the file's stamp. A stamp
//! that no longer matches (anyone touched the file) is a miss, and the
//! signature is recomputed from the file. The cache is only an accelerator:
//! every delta result is still checked against the primary's BLAKE3.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::index::Stamp;
use syncd_proto::path::RelPath;

const MAGIC: &[u8; 8] = b"SYNCDSG1";

pub struct SigCache {
    dir: PathBuf,
}

impl SigCache {
    pub fn new(state_dir: &Path) -> SigCache {
        let dir = state_dir.join("sigs");
        if let Err(e) = crate::state::private_dir(&dir) {
            // Only an accelerator: without it every delta reads its base.
            tracing::warn!(dir = %dir.display(), "signature cache unavailable: {e}");
        }
        SigCache { dir }
    }

    fn file(&self, rel: &RelPath) -> PathBuf {
        self.dir.join(&blake3::hash(rel.as_bytes()).to_hex()[..32])
    }

    pub fn get(&self, rel: &RelPath, stamp: &Stamp, block: u32, strong: u32) -> Option<Vec<u8>> {
        let bytes = crate::state::read_private(&self.file(rel)).ok()?;
        let rest = bytes.strip_prefix(MAGIC.as_slice())?;
        let (head, sig): ((Stamp, u32, u32), &[u8]) = postcard::take_from_bytes(rest).ok()?;
        (head == (*stamp, block, strong)).then(|| sig.to_vec())
    }

    /// Best effort: a failure only means the next delta reads the file.
    pub fn put(&self, rel: &RelPath, stamp: &Stamp, block: u32, strong: u32, sig: &[u8]) {
        let f = self.file(rel);
        let tmp = f.with_extension("tmp");
        let r = (|| -> std::io::Result<()> {
            let head =
                postcard::to_stdvec(&(*stamp, block, strong)).map_err(std::io::Error::other)?;
            let mut w = crate::state::create_private(&tmp)?;
            w.write_all(MAGIC)?;
            w.write_all(&head)?;
            w.write_all(sig)?;
            std::fs::rename(&tmp, &f)
        })();
        if let Err(e) = r {
            tracing::debug!(path = %rel, "signature cache: {e}");
            let _ = std::fs::remove_file(&tmp);
        }
    }

    pub fn remove(&self, rel: &RelPath) {
        let _ = std::fs::remove_file(self.file(rel));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_only_with_the_same_stamp_and_options() {
        let d = tempfile::tempdir().unwrap();
        let c = SigCache::new(d.path());
        let p = RelPath::new(b"a/b".to_vec()).unwrap();
        let st = Stamp {
            size: 1,
            mtime: (2, 3),
            ctime: (4, 5),
            ino: 6,
        };
        assert!(c.get(&p, &st, 1024, 8).is_none());
        c.put(&p, &st, 1024, 8, b"sig");
        assert_eq!(c.get(&p, &st, 1024, 8).unwrap(), b"sig");
        assert!(c.get(&p, &Stamp { ino: 7, ..st }, 1024, 8).is_none());
        assert!(c.get(&p, &st, 2048, 8).is_none());
        c.remove(&p);
        assert!(c.get(&p, &st, 1024, 8).is_none());
    }
}
