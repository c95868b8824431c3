//! Walks an export into a manifest of [`Entry`]s.
//!
//! Symlinks are recorded, never followed; special files are skipped with a
//! warning; names are kept as raw bytes; the second and later names of a
//! multiply-linked file become [`Kind::HardLink`] to the first (in sorted
//! order, so both sides pick the same leader for the same tree).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::index::{Index, Stamp};
use crate::path::{RelPath, STATE_DIR_NAME};
use crate::wire::{Entry, Hash, Kind, Meta};

#[derive(Default, Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Special files (FIFOs, sockets, devices) and unrepresentable names.
    pub skipped: Vec<String>,
    pub hashed_bytes: u64,
}

pub fn meta_of(m: &std::fs::Metadata) -> Meta {
    Meta {
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
    }
}

/// Hashes a file with a bounded buffer (never the whole file in memory).
pub fn hash_file(path: &Path) -> std::io::Result<Hash> {
    let f = std::fs::File::open(path)?;
    hash_reader(f)
}

pub fn hash_reader(mut r: impl Read) -> std::io::Result<Hash> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(*h.finalize().as_bytes())
}

/// Scans `root`. With `hash`, every regular file carries its BLAKE3, taken
/// from `index` when the stamp still matches unless `force` is set.
pub fn scan(root: &Path, index: &mut Index, hash: bool, force: bool) -> std::io::Result<Scan> {
    let mut out = Scan::default();
    let mut stamps: Vec<Option<(PathBuf, Stamp)>> = Vec::new();
    let mut leaders: HashMap<(u64, u64), RelPath> = HashMap::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name().as_bytes() == STATE_DIR_NAME));
    for item in walker {
        let e = match item {
            Ok(e) => e,
            Err(err) => {
                // A file that vanished mid-walk is not an error; anything else is.
                if err.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) {
                    continue;
                }
                return Err(std::io::Error::other(err));
            }
        };
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        let path = match RelPath::from_path(rel) {
            Ok(p) => p,
            Err(err) => {
                out.skipped.push(format!("{}: {err}", rel.display()));
                continue;
            }
        };
        let m = match e.metadata() {
            Ok(m) => m,
            Err(err)
                if err.io_error().map(|io| io.kind()) == Some(std::io::ErrorKind::NotFound) =>
            {
                continue
            }
            Err(err) => return Err(std::io::Error::other(err)),
        };
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            match std::fs::read_link(e.path()) {
                Ok(t) => Kind::Symlink {
                    target: t.as_os_str().as_bytes().to_vec(),
                },
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
        } else if ft.is_file() {
            let leader = (m.nlink() > 1).then(|| {
                leaders
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| path.clone())
                    .clone()
            });
            match leader {
                Some(l) if l != path => Kind::HardLink { leader: l },
                _ => Kind::File {
                    size: m.size(),
                    hash: None,
                },
            }
        } else {
            let what = if ft.is_fifo() {
                "FIFO"
            } else if ft.is_socket() {
                "socket"
            } else {
                "device"
            };
            tracing::warn!(path = %path, "skipping {what}: special files are not replicated");
            out.skipped.push(format!("{path}: {what}"));
            continue;
        };
        let is_file = matches!(kind, Kind::File { .. });
        stamps.push(is_file.then(|| (e.path().to_path_buf(), Stamp::of(&m))));
        out.entries.push(Entry {
            path,
            kind,
            meta: meta_of(&m),
            ino: m.ino(),
        });
    }
    // Forget paths that are gone so the index does not grow forever.
    let live: std::collections::HashSet<&[u8]> =
        out.entries.iter().map(|e| e.path.as_bytes()).collect();
    index.retain(|k| live.contains(k));
    if hash {
        hash_entries(&mut out, &stamps, index, force)?;
    }
    Ok(out)
}

fn hash_entries(
    out: &mut Scan,
    stamps: &[Option<(PathBuf, Stamp)>],
    index: &mut Index,
    force: bool,
) -> std::io::Result<()> {
    let mut todo = Vec::new();
    for (i, e) in out.entries.iter_mut().enumerate() {
        if let (Kind::File { hash, .. }, Some((_, st))) = (&mut e.kind, &stamps[i]) {
            match (force, index.get(e.path.as_bytes(), st)) {
                (false, Some(h)) => *hash = Some(h),
                _ => todo.push(i),
            }
        }
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    let chunk = todo.len().div_ceil(threads).max(1);
    let results: Vec<Vec<(usize, std::io::Result<Hash>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            (
                                i,
                                hash_file(
                                    &stamps[i].as_ref().map(|x| x.0.clone()).unwrap_or_default(),
                                ),
                            )
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut vanished = Vec::new();
    for (i, r) in results.into_iter().flatten() {
        match r {
            Ok(h) => {
                let e = &mut out.entries[i];
                if let Kind::File { hash, size } = &mut e.kind {
                    *hash = Some(h);
                    out.hashed_bytes += *size;
                }
                if let Some((_, st)) = &stamps[i] {
                    index.insert(e.path.as_bytes().to_vec(), *st, h);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => vanished.push(i),
            Err(err) => return Err(err),
        }
    }
    for i in vanished.into_iter().rev() {
        out.entries.remove(i);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_links_and_index_reuse() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/empty")).unwrap();
        std::fs::write(r.join("a/f"), b"hello").unwrap();
        std::fs::hard_link(r.join("a/f"), r.join("g")).unwrap();
        std::os::unix::fs::symlink("../nowhere", r.join("a/l")).unwrap();
        std::fs::create_dir(r.join(".syncd")).unwrap();
        std::fs::write(r.join(".syncd/x"), b"no").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o644),
            0,
        )
        .unwrap();
        let mut ix = Index::default();
        let s = scan(r, &mut ix, true, false).unwrap();
        let names: Vec<_> = s.entries.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(names, ["a", "a/empty", "a/f", "a/l", "g"]);
        assert_eq!(s.skipped.len(), 1);
        assert!(
            matches!(&s.entries[4].kind, Kind::HardLink { leader } if leader.to_string() == "a/f")
        );
        assert!(matches!(&s.entries[3].kind, Kind::Symlink { target } if target == b"../nowhere"));
        assert_eq!(s.hashed_bytes, 5);
        // Second scan takes hashes from the index.
        let s2 = scan(r, &mut ix, true, false).unwrap();
        assert_eq!(s2.hashed_bytes, 0);
        assert_eq!(s2.entries, s.entries);
        // Forced re-hash reads again.
        assert_eq!(scan(r, &mut ix, true, true).unwrap().hashed_bytes, 5);
    }
}
