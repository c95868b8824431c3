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
use crate::wire::{Entry, Hash, Kind, Meta, Scope};

#[derive(Default, Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Special files (FIFOs, sockets, devices) and unrepresentable names.
    pub skipped: Vec<String>,
    pub hashed_bytes: u64,
    /// Hard-link groups of which this scan saw fewer names than the inode
    /// has links: the other names are outside the scan's scope (or outside
    /// the export).
    pub partial_links: Vec<PartialLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialLink {
    /// (device, inode)
    pub key: (u64, u64),
    pub names: Vec<RelPath>,
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

/// Hashes a regular file with a bounded buffer (never the whole file in
/// memory). A symlink or special file swapped in since the walk is refused:
/// O_NOFOLLOW, and O_NONBLOCK so a FIFO cannot block the open.
pub fn hash_file(path: &Path) -> std::io::Result<Hash> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let f = std::fs::File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
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

/// Order of a depth-first walk with names sorted per directory (what
/// `walkdir::sort_by_file_name` yields): parents first, each subtree contiguous.
pub fn walk_order(a: &RelPath, b: &RelPath) -> std::cmp::Ordering {
    a.components().cmp(b.components())
}

/// Accumulates entries in walk order, grouping hard links.
#[derive(Default)]
struct Collector {
    out: Scan,
    stamps: Vec<Option<(PathBuf, Stamp)>>,
    /// Per hard-linked inode: its names seen so far (the first leads) and its link count.
    groups: HashMap<(u64, u64), (Vec<RelPath>, u64)>,
}

impl Collector {
    /// Adds one entry; `Ok(false)` when it vanished meanwhile.
    fn visit(&mut self, abs: &Path, path: RelPath, m: &std::fs::Metadata) -> std::io::Result<bool> {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            match std::fs::read_link(abs) {
                Ok(t) => Kind::Symlink {
                    target: t.as_os_str().as_bytes().to_vec(),
                },
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(err) => return Err(err),
            }
        } else if ft.is_file() {
            let leader = (m.nlink() > 1).then(|| {
                let g = self
                    .groups
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| (Vec::new(), m.nlink()));
                g.0.push(path.clone());
                g.0[0].clone()
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
            self.out.skipped.push(format!("{path}: {what}"));
            return Ok(false);
        };
        let is_file = matches!(kind, Kind::File { .. });
        self.stamps
            .push(is_file.then(|| (abs.to_path_buf(), Stamp::of(m))));
        self.out.entries.push(Entry {
            path,
            kind,
            meta: meta_of(m),
            ino: m.ino(),
        });
        Ok(true)
    }

    /// Walks `dir` (absolute) depth-first; `min_depth` 0 includes `dir` itself.
    fn walk(&mut self, root: &Path, dir: &Path, min_depth: usize) -> std::io::Result<()> {
        let walker = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(min_depth)
            .into_iter()
            .filter_entry(|e| {
                !(e.path().parent() == Some(root) && e.file_name().as_bytes() == STATE_DIR_NAME)
            });
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
                    self.out.skipped.push(format!("{}: {err}", rel.display()));
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
            self.visit(e.path(), path, &m)?;
        }
        Ok(())
    }

    fn finish(mut self, index: &mut Index, hash: bool, force: bool) -> std::io::Result<Scan> {
        let mut partial: Vec<PartialLink> = self
            .groups
            .drain()
            .filter(|(_, (names, nlink))| (names.len() as u64) < *nlink)
            .map(|(key, (names, _))| PartialLink { key, names })
            .collect();
        partial.sort_by_key(|a| a.key);
        self.out.partial_links = partial;
        if hash {
            hash_entries(&mut self.out, &self.stamps, index, force)?;
        }
        Ok(self.out)
    }
}

/// Scans `root`. With `hash`, every regular file carries its BLAKE3, taken
/// from `index` when the stamp still matches unless `force` is set.
pub fn scan(root: &Path, index: &mut Index, hash: bool, force: bool) -> std::io::Result<Scan> {
    let mut c = Collector::default();
    c.walk(root, root, 1)?;
    // Forget paths that are gone so the index does not grow forever.
    let live: std::collections::HashSet<&[u8]> =
        c.out.entries.iter().map(|e| e.path.as_bytes()).collect();
    index.retain(|k| live.contains(k));
    c.finish(index, hash, force)
}

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
    let mut items: Vec<&Scope> = scope.iter().collect();
    items.sort_by(|a, b| walk_order(&a.path, &b.path).then(b.recursive.cmp(&a.recursive)));
    let mut c = Collector::default();
    let mut covered: Option<&RelPath> = None; // last recursive scope: its subtree is done
    let mut last: Option<&RelPath> = None;
    for s in items {
        if covered.is_some_and(|d| s.path.starts_with(d)) || last == Some(&s.path) {
            continue;
        }
        last = Some(&s.path);
        let abs = root.join(s.path.as_path());
        // Ancestors must be directories, never symlinks that lead out of the root.
        let mut ancestors = std::iter::successors(s.path.parent(), |p| p.parent());
        if !ancestors
            .all(|p| std::fs::symlink_metadata(root.join(p.as_path())).is_ok_and(|m| m.is_dir()))
        {
            continue;
        }
        let m = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if s.recursive && m.is_dir() {
            c.walk(root, &abs, 0)?;
            covered = Some(&s.path);
        } else {
            c.visit(&abs, s.path.clone(), &m)?;
        }
    }
    c.finish(index, hash, false)
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

    #[test]
    fn hashing_refuses_symlinks_and_fifos_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().to_path_buf();
        std::fs::write(r.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(r.join("f"), r.join("l")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o644),
            0,
        )
        .unwrap();
        assert!(hash_file(&r.join("f")).is_ok());
        assert!(hash_file(&r.join("l")).is_err());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(hash_file(&r.join("fifo")).is_err());
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("hashing blocked on a FIFO"));
    }
}
