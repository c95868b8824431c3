//! Walks an export into a manifest of [`Entry`]s.
//!
//! Symlinks are recorded, never followed; special files are skipped with a
//! warning; names are kept as raw bytes; the second and later names of a
//! multiply-linked file become [`Kind::HardLink`] to the first (in sorted
//! order, so both sides pick the same leader for the same tree).
//!
//! The walk goes from directory descriptor to directory descriptor, never
//! through absolute paths: a tree deeper than PATH_MAX does not stop it, and
//! no symlink swapped into a parent can lead it outside the export. An entry
//! that cannot be read is skipped with a warning; the rest of the tree is
//! still listed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

pub mod digest;
mod leftovers;
pub use leftovers::sweep_leftovers_from_before;

use crate::index::{Index, Stamp};
use crate::wire::{Entry, Hash, Kind, Meta, Scope};
use syncd_proto::path::{RelPath, STATE_DIR_NAME};

#[derive(Default, Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Special files (FIFOs, sockets, devices), unrepresentable names and
    /// entries that could not be read.
    pub skipped: Vec<String>,
    /// Entries that could not be read (their subtree, for a directory): what
    /// is there is unknown, so a plan must neither send nor delete beneath them.
    pub unreadable: Vec<RelPath>,
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
    let fd = rustix::fs::open(path, read_flags(), Mode::empty())?;
    hash_fd(File::from(fd))
}

fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC
}

fn hash_fd(f: File) -> std::io::Result<Hash> {
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    hash_reader(f)
}

/// Hashes `rel` beneath the directory `root`, through no symlink at all.
fn hash_beneath(root: &impl AsFd, rel: &RelPath) -> std::io::Result<Hash> {
    let fd = rustix::fs::openat2(root, rel.as_path(), read_flags(), Mode::empty(), beneath())?;
    hash_fd(File::from(fd))
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// An `O_PATH` descriptor for the entry `name` itself (a symlink is not followed).
fn open_entry(dir: &impl AsFd, name: &[u8]) -> std::io::Result<File> {
    Ok(File::from(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// The names in a directory, in reverse byte order (popped in order).
fn read_names(dir: &impl AsFd) -> std::io::Result<Vec<Vec<u8>>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::new(fd)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

fn open_root(root: &Path) -> std::io::Result<File> {
    Ok(File::from(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// A directory being walked: its descriptor, path (`None` for the export
/// root) and the names not yet visited.
struct Frame {
    dir: File,
    rel: Option<RelPath>,
    names: Vec<Vec<u8>>,
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

pub use syncd_proto::path::walk_order;

/// Called with each directory a scan enters, before it reads its names
/// (the primary watches it there: see [`crate::watch::DirWatcher`]).
pub type DirHook = Box<dyn FnMut(&RelPath) + Send>;

/// Accumulates entries in walk order, grouping hard links.
#[derive(Default)]
struct Collector {
    out: Scan,
    /// Per entry: the stamp of a regular file, to hash it.
    stamps: Vec<Option<Stamp>>,
    /// Per hard-linked inode: its names seen so far (the first leads) and its link count.
    groups: HashMap<(u64, u64), (Vec<RelPath>, u64)>,
    /// A daemon's walk removes the temporary files of its earlier runs.
    sweep: Option<leftovers::Sweep>,
    on_dir: Option<DirHook>,
}

impl Collector {
    /// Adds one entry (`f` is an `O_PATH` descriptor for it); `Ok(false)`
    /// when it vanished meanwhile or is not replicated.
    fn visit(&mut self, f: &File, path: RelPath, m: &std::fs::Metadata) -> std::io::Result<bool> {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            match rustix::fs::readlinkat(f, "", Vec::new()) {
                Ok(t) => Kind::Symlink {
                    target: t.into_bytes(),
                },
                Err(rustix::io::Errno::NOENT) => return Ok(false),
                Err(err) => return Err(err.into()),
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
        self.stamps.push(is_file.then(|| Stamp::of(m)));
        self.out.entries.push(Entry {
            path,
            kind,
            meta: meta_of(m),
            ino: m.ino(),
        });
        Ok(true)
    }

    /// Records an entry that could not be read; the walk goes on without it.
    fn unreadable(&mut self, path: RelPath, err: &dyn std::fmt::Display) {
        tracing::warn!(path = %path, "skipping an entry that cannot be read: {err}");
        self.out.skipped.push(format!("{path}: {err}"));
        self.out.unreadable.push(path);
    }

    /// Visits the entry `f` at `path` and, for a directory, queues its
    /// children on `stack`.
    fn enter(&mut self, stack: &mut Vec<Frame>, f: File, path: RelPath) {
        let m = match f.metadata() {
            Ok(m) => m,
            Err(e) if vanished(&e) => return,
            Err(e) => return self.unreadable(path, &e),
        };
        match self.visit(&f, path.clone(), &m) {
            Ok(true) if m.is_dir() => match self.read_dir(&f, &path) {
                Ok(names) => stack.push(Frame {
                    dir: f,
                    rel: Some(path),
                    names,
                }),
                Err(e) if vanished(&e) => {}
                Err(e) => self.unreadable(path, &e),
            },
            Ok(_) => {}
            Err(e) if vanished(&e) => {}
            Err(e) => self.unreadable(path, &e),
        }
    }

    /// The names in the directory `f` at `path`, after the hook has seen it.
    fn read_dir(&mut self, f: &File, path: &RelPath) -> std::io::Result<Vec<Vec<u8>>> {
        if let Some(h) = &mut self.on_dir {
            h(path);
        }
        read_names(f)
    }

    /// Walks depth-first, names sorted per directory, until `stack` is empty.
    fn walk(&mut self, mut stack: Vec<Frame>) {
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                stack.pop();
                continue;
            };
            if top.rel.is_none() && name == STATE_DIR_NAME {
                continue;
            }
            if syncd_proto::path::is_temp_name(&name) {
                // Never replicated: content a crash left half-placed.
                if let Some(s) = &self.sweep {
                    if let Err(e) = leftovers::remove_if_leftover(&top.dir, &name, s) {
                        tracing::debug!("a temporary file left by a crash: {e}");
                    }
                }
                continue;
            }
            let full = match &top.rel {
                Some(r) => [r.as_bytes(), b"/", &name].concat(),
                None => name.clone(),
            };
            let path = match RelPath::new(full) {
                Ok(p) => p,
                Err(err) => {
                    // Too long or otherwise unrepresentable on the wire: the
                    // entry (and anything beneath) cannot be replicated.
                    let shown = match &top.rel {
                        Some(r) => format!("{r}/{}", String::from_utf8_lossy(&name)),
                        None => String::from_utf8_lossy(&name).into_owned(),
                    };
                    tracing::warn!(path = %shown, "skipping: {err}");
                    self.out.skipped.push(format!("{shown}: {err}"));
                    continue;
                }
            };
            match open_entry(&top.dir, &name) {
                Ok(f) => self.enter(&mut stack, f, path),
                Err(e) if vanished(&e) => {}
                Err(e) => self.unreadable(path, &e),
            }
        }
    }

    fn finish(
        mut self,
        root: &File,
        index: &mut Index,
        hash: bool,
        force: bool,
    ) -> std::io::Result<Scan> {
        let mut partial: Vec<PartialLink> = self
            .groups
            .drain()
            .filter(|(_, (names, nlink))| (names.len() as u64) < *nlink)
            .map(|(key, (names, _))| PartialLink { key, names })
            .collect();
        partial.sort_by_key(|a| a.key);
        self.out.partial_links = partial;
        if hash {
            hash_entries(root, &mut self.out, &self.stamps, index, force);
        }
        Ok(self.out)
    }
}

/// Scans `root`. With `hash`, every regular file carries its BLAKE3, taken
/// from `index` when the stamp still matches unless `force` is set. Only
/// the root itself being unreadable is an error.
pub fn scan(root: &Path, index: &mut Index, hash: bool, force: bool) -> std::io::Result<Scan> {
    scan_with(root, index, hash, force, None)
}

/// [`scan`], calling `on_dir` with each directory beneath the root before
/// reading it.
pub fn scan_with(
    root: &Path,
    index: &mut Index,
    hash: bool,
    force: bool,
    on_dir: Option<DirHook>,
) -> std::io::Result<Scan> {
    let dir = open_root(root)?;
    let names = read_names(&dir)?;
    let mut c = Collector {
        sweep: leftovers::current(),
        on_dir,
        ..Collector::default()
    };
    c.walk(vec![Frame {
        dir: dir.try_clone()?,
        rel: None,
        names,
    }]);
    // Forget paths that are gone so the index does not grow forever.
    let live: std::collections::HashSet<&[u8]> =
        c.out.entries.iter().map(|e| e.path.as_bytes()).collect();
    index.retain(|k| live.contains(k));
    c.finish(&dir, index, hash, force)
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
    let dir = open_root(root)?;
    let mut items: Vec<&Scope> = scope.iter().collect();
    items.sort_by(|a, b| walk_order(&a.path, &b.path).then(b.recursive.cmp(&a.recursive)));
    let mut c = Collector::default();
    let mut covered: Option<&RelPath> = None; // last recursive scope: its subtree is done
    let mut last: Option<&RelPath> = None;
    for s in items {
        if covered.is_some_and(|d| s.path.starts_with(d)) || last == Some(&s.path) {
            continue;
        }
        if syncd_proto::path::is_temp_name(s.path.split_last().1) {
            continue; // see `walk`
        }
        last = Some(&s.path);
        // Ancestors must be directories, never symlinks that lead out of the
        // root: openat2 refuses both.
        let parent = match s.path.parent() {
            None => dir.try_clone(),
            Some(p) => rustix::fs::openat2(
                &dir,
                p.as_path(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
            .map(File::from)
            .map_err(Into::into),
        };
        let (parent, name) = match parent {
            Ok(d) => (d, s.path.split_last().1),
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(
                        rustix::io::Errno::NOENT
                            | rustix::io::Errno::NOTDIR
                            | rustix::io::Errno::LOOP
                            | rustix::io::Errno::XDEV
                    )
                ) =>
            {
                continue
            }
            Err(e) => {
                c.unreadable(s.path.clone(), &e);
                continue;
            }
        };
        let f = match open_entry(&parent, name) {
            Ok(f) => f,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                c.unreadable(s.path.clone(), &e);
                continue;
            }
        };
        if s.recursive {
            let mut stack = Vec::new();
            c.enter(&mut stack, f, s.path.clone());
            c.walk(stack);
            covered = Some(&s.path);
        } else {
            let m = match f.metadata() {
                Ok(m) => m,
                Err(e) if vanished(&e) => continue,
                Err(e) => {
                    c.unreadable(s.path.clone(), &e);
                    continue;
                }
            };
            match c.visit(&f, s.path.clone(), &m) {
                Ok(_) => {}
                Err(e) if vanished(&e) => {}
                Err(e) => c.unreadable(s.path.clone(), &e),
            }
        }
    }
    c.finish(&dir, index, hash, false)
}

/// Fills in the hashes; a file that vanished is dropped, one that cannot be
/// read is dropped and reported unreadable.
fn hash_entries(
    root: &File,
    out: &mut Scan,
    stamps: &[Option<Stamp>],
    index: &mut Index,
    force: bool,
) {
    let mut todo = Vec::new();
    for (i, e) in out.entries.iter_mut().enumerate() {
        if let (Kind::File { hash, .. }, Some(st)) = (&mut e.kind, &stamps[i]) {
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
    let entries = &out.entries;
    let results: Vec<Vec<(usize, std::io::Result<Hash>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| (i, hash_beneath(root, &entries[i].path)))
                        .collect()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut dropped = Vec::new();
    for (i, r) in results.into_iter().flatten() {
        match r {
            Ok(h) => {
                let e = &mut out.entries[i];
                if let Kind::File { hash, size } = &mut e.kind {
                    *hash = Some(h);
                    out.hashed_bytes += *size;
                }
                if let Some(st) = &stamps[i] {
                    index.insert(e.path.as_bytes().to_vec(), *st, h);
                }
            }
            Err(err) if vanished(&err) => dropped.push(i),
            Err(err) => {
                let p = out.entries[i].path.clone();
                tracing::warn!(path = %p, "skipping a file that cannot be read: {err}");
                out.skipped.push(format!("{p}: {err}"));
                out.unreadable.push(p);
                dropped.push(i);
            }
        }
    }
    dropped.sort_unstable();
    for i in dropped.into_iter().rev() {
        out.entries.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncds_temporary_names_are_never_listed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        for n in [
            ".syncd-7.1.tmp",
            "a/.syncd-7.2.tmp",
            "a/.syncd-7.2.tmp.mine",
            "a/f",
        ] {
            std::fs::write(r.join(n), b"x").unwrap();
        }
        let names =
            |s: &Scan| -> Vec<String> { s.entries.iter().map(|e| e.path.to_string()).collect() };
        let s = scan(r, &mut Index::default(), true, false).unwrap();
        assert_eq!(names(&s), ["a", "a/.syncd-7.2.tmp.mine", "a/f"]);
        let p = |x: &str| RelPath::new(x.as_bytes().to_vec()).unwrap();
        let scope = [
            Scope {
                path: p("a/.syncd-7.2.tmp"),
                recursive: false,
            },
            Scope {
                path: p(".syncd-7.1.tmp"),
                recursive: true,
            },
            Scope {
                path: p("a/f"),
                recursive: false,
            },
        ];
        let s = scan_scoped(r, &mut Index::default(), &scope, false).unwrap();
        assert_eq!(names(&s), ["a/f"]);
        // Listed or not, nothing was removed: no daemon set a sweep here.
        assert!(r.join("a/.syncd-7.2.tmp").exists());
    }

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

    /// Creates `levels` nested directories of 250-byte names under `top`
    /// (relative to descriptors, so the total may exceed PATH_MAX), with a
    /// file `f` in each; returns the relative path of each level.
    fn deep_chain(top: &Path, levels: usize) -> Vec<String> {
        let name = "d".repeat(250);
        let mut dir = File::from(
            rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap(),
        );
        let mut rels = Vec::new();
        let mut rel = String::new();
        for _ in 0..levels {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = File::from(
                rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )
                .unwrap(),
            );
            let f = rustix::fs::openat(
                &dir,
                "f",
                OFlags::WRONLY | OFlags::CREATE,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            rustix::io::write(&f, b"deep").unwrap();
            rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            rels.push(rel.clone());
        }
        rels
    }

    #[test]
    fn a_path_longer_than_path_max_is_skipped_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::write(r.join("a"), b"1").unwrap();
        std::fs::create_dir(r.join("z")).unwrap();
        std::fs::write(r.join("z/b"), b"2").unwrap();
        // 20 levels: about 5,000 bytes, past both PATH_MAX and RelPath's limit.
        let rels = deep_chain(r, 20);
        let mut ix = Index::default();
        let s = scan(r, &mut ix, true, false).unwrap();
        let names: Vec<String> = s.entries.iter().map(|e| e.path.to_string()).collect();
        assert!(names.contains(&"a".to_string()) && names.contains(&"z/b".to_string()));
        // Everything representable is listed and hashed, however deep it is.
        let last_ok = rels.iter().rposition(|p| p.len() + 2 <= 4096).unwrap();
        assert!(names.contains(&format!("{}/f", rels[last_ok])));
        assert!(s
            .entries
            .iter()
            .all(|e| !matches!(e.kind, Kind::File { hash: None, .. })));
        // The first level too long for the wire is reported, not descended.
        assert!(!names.iter().any(|n| n.len() > 4096));
        assert!(
            s.skipped.iter().any(|x| x.contains("longer than")),
            "{:?}",
            s.skipped
        );
        assert!(s.unreadable.is_empty());
        // A scoped scan of the deep subtree works the same way.
        let scope = [Scope {
            path: RelPath::new(rels[0].clone()).unwrap(),
            recursive: true,
        }];
        let sc = scan_scoped(r, &mut ix, &scope, true).unwrap();
        assert!(sc.entries.len() > 2 * last_ok);
        assert!(!sc.skipped.is_empty());
    }

    #[test]
    fn deep_entries_under_a_long_root_are_listed_and_hashed() {
        // The root's own path plus a representable relative path exceed
        // PATH_MAX: only a descriptor-relative walk can read them.
        let d = tempfile::tempdir().unwrap();
        let root_rels = deep_chain(d.path(), 2);
        let root = d.path().join(&root_rels[1]);
        let rels = deep_chain(&root, 15);
        let mut ix = Index::default();
        let s = scan(&root, &mut ix, true, false).unwrap();
        assert!(root.as_os_str().len() + rels[14].len() > 4096);
        assert!(s.skipped.is_empty(), "{:?}", s.skipped);
        let deepest = format!("{}/f", rels[14]);
        let e = s
            .entries
            .iter()
            .find(|e| e.path.to_string() == deepest)
            .expect("deepest file listed");
        assert!(
            matches!(e.kind, Kind::File { hash: Some(h), .. } if h == *blake3::hash(b"deep").as_bytes())
        );
    }
}
