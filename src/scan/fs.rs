//! The scan's file-system primitives: descriptors beneath the root, sorted
//! names, hashing (in parallel for a listing).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::Scan;
use crate::index::{Index, Stamp};
use crate::wire::{Hash, Kind};
use syncd_proto::path::RelPath;

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

pub(super) fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// An `O_PATH` descriptor for the entry `name` itself (a symlink is not followed).
pub(super) fn open_entry(dir: &impl AsFd, name: &[u8]) -> std::io::Result<File> {
    Ok(File::from(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// The names in a directory, in reverse byte order (popped in order).
pub(super) fn read_names(dir: &impl AsFd) -> std::io::Result<Vec<Vec<u8>>> {
    read_names_typed(dir, None)
}

/// [`read_names`]; with `dirs`, also the names the listing gives the
/// type directory (a file system that gives no types gives none there).
pub(super) fn read_names_typed(
    dir: &impl AsFd,
    mut dirs: Option<&mut Vec<Vec<u8>>>,
) -> std::io::Result<Vec<Vec<u8>>> {
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
            if let Some(d) = dirs.as_mut() {
                if e.file_type() == rustix::fs::FileType::Directory {
                    d.push(n.to_vec());
                }
            }
            names.push(n.to_vec());
        }
    }
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

pub(super) fn open_root(root: &Path) -> std::io::Result<File> {
    Ok(File::from(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

pub(super) fn vanished(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
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

/// Fills in the hashes; a file that vanished is dropped, one that cannot be
/// read is dropped and reported unreadable.
pub(super) fn hash_entries(
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
