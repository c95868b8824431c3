//! The conflicts area: what a node held that catching up with a newer peer
//! would have overwritten or deleted.
//!
//! When a standby follows a primary whose generation is newer than data it
//! may have written itself (it led before, or both led during a partition),
//! every entry the catch-up replaces or removes is first kept under
//! `<state_dir>/conflicts/<generation>-<node>/<path>` (the generation whose
//! writes they may be): a hard link for a file or symlink, the directory
//! itself for a directory, when the state directory is on the export's
//! filesystem (no copy). When it is not (the default `/var/lib/syncd` often
//! is not), a file or symlink is copied and fsync'd (the catch-up then
//! replaces or removes the original), and a directory is copied, fsync'd,
//! and only then removed. Nothing here is replicated or visible in the export.
//!
//! A follower keeps here too what was written on it by anything but syncd
//! (see `standby/local.rs`), under `local-<generation>-<node>/<path>`,
//! before the leader's version replaces or deletes it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::fsroot::Root;
use syncd_proto::path::RelPath;

const DIR: &str = "conflicts";

/// Keeps entries of one generation's writes.
pub struct Keeper {
    dir: OwnedFd,
    path: PathBuf,
    kept: AtomicU64,
    /// A local write on a follower (its caller says so), not a diverged
    /// generation's entry.
    local: bool,
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl Keeper {
    /// The area for `label` (a generation, e.g. `3-00ab…`), created 0700.
    pub fn open(state_dir: &Path, label: &str) -> io::Result<Keeper> {
        let path = state_dir.join(DIR).join(label);
        crate::state::private_dir(&state_dir.join(DIR))?;
        crate::state::private_dir(&path)?;
        let dir = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Keeper {
            dir,
            path,
            kept: AtomicU64::new(0),
            local: false,
        })
    }

    /// For writes made on a follower by anything but syncd: the caller
    /// logs each kept entry itself, naming why.
    pub fn written_locally(mut self) -> Keeper {
        self.local = true;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries kept so far.
    pub fn kept(&self) -> u64 {
        self.kept.load(Ordering::Relaxed)
    }

    /// Keeps what is at `p`, if anything, before it is replaced or removed.
    /// `spare_dirs`: the operation keeps a directory in place (mkdir), so
    /// only a non-directory is kept.
    pub fn keep(&self, root: &Root, p: &RelPath, spare_dirs: bool) -> io::Result<bool> {
        let (pd, name) = match root.parent_of(p) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let st = match rustix::fs::statat(&pd, os(&name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && spare_dirs {
            return Ok(false);
        }
        let (dd, dname) = self.destination(p)?;
        let r = if is_dir {
            rustix::fs::renameat(&pd, os(&name), &dd, os(&dname))
        } else {
            // A second name for the same inode: the catch-up's rename over
            // `p` then leaves the old content here, with no copy and no
            // moment where `p` is missing.
            rustix::fs::linkat(&pd, os(&name), &dd, os(&dname), AtFlags::empty())
        };
        match r {
            Ok(()) => {}
            Err(rustix::io::Errno::XDEV) => {
                copy_entry(&pd, &name, &dd, &dname)?;
                if is_dir {
                    // Removed only once the copy is durable.
                    crate::fsroot::remove_any(&pd, &name)?;
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.kept.fetch_add(1, Ordering::Relaxed);
        if !self.local {
            tracing::warn!(path = %p, kept = %self.path.display(), "kept a diverged entry in the conflicts area");
        }
        Ok(true)
    }

    /// The directory and a free name for `p` inside the area (parents made
    /// as needed; an entry kept twice gets `.~N~`).
    fn destination(&self, p: &RelPath) -> io::Result<(OwnedFd, Vec<u8>)> {
        let (parent, name) = p.split_last();
        let mut dir = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for c in parent.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            match rustix::fs::mkdirat(&dir, os(c), Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = rustix::fs::openat(
                &dir,
                os(c),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        let mut candidate = name.to_vec();
        for n in 1.. {
            match rustix::fs::statat(&dir, os(&candidate), AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => break,
                Err(e) => return Err(e.into()),
                Ok(_) => {
                    candidate = name.to_vec();
                    candidate.extend_from_slice(format!(".~{n}~").as_bytes());
                }
            }
        }
        Ok((dir, candidate))
    }
}

/// Copies `name` in `from` to `dname` in `to` (recursively, never following
/// a symlink, modes and mtimes kept), fsyncing each file and directory.
fn copy_entry(from: &OwnedFd, name: &[u8], to: &OwnedFd, dname: &[u8]) -> io::Result<()> {
    let st = rustix::fs::statat(from, os(name), AtFlags::SYMLINK_NOFOLLOW)?;
    let mtime = rustix::fs::Timespec {
        tv_sec: st.st_mtime as _,
        tv_nsec: st.st_mtime_nsec as _,
    };
    let times = rustix::fs::Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(from, os(name), Vec::new())?;
            rustix::fs::symlinkat(target.as_c_str(), to, os(dname))?;
        }
        FileType::RegularFile => {
            let src = rustix::fs::openat(
                from,
                os(name),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let dst = rustix::fs::openat(
                to,
                os(dname),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let (mut r, mut w) = (std::fs::File::from(src), std::fs::File::from(dst));
            io::copy(&mut r, &mut w)?;
            rustix::fs::fchmod(&w, Mode::from_raw_mode(st.st_mode & 0o777))?;
            rustix::fs::futimens(&w, &times)?;
            w.sync_all()?;
        }
        FileType::Directory => {
            rustix::fs::mkdirat(to, os(dname), Mode::from_raw_mode(0o700))?;
            let open = |d: &OwnedFd, n: &[u8]| {
                rustix::fs::openat(
                    d,
                    os(n),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            let (src, dst) = (open(from, name)?, open(to, dname)?);
            let mut names = Vec::new();
            for e in rustix::fs::Dir::read_from(&src)? {
                let n = e?.file_name().to_bytes().to_vec();
                if n != b"." && n != b".." {
                    names.push(n);
                }
            }
            for n in names {
                copy_entry(&src, &n, &dst, &n)?;
            }
            rustix::fs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o777))?;
            rustix::fs::futimens(&dst, &times)?;
            rustix::fs::fsync(&dst)?;
        }
        // A FIFO, socket or device is not data syncd replicates.
        _ => return Ok(()),
    }
    let parent = rustix::fs::openat(
        to,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(rustix::fs::fsync(&parent)?)
}

/// One kept entry, for `syncd conflicts list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// `<generation>-<node>/<path>`, what `syncd conflicts restore` takes.
    pub name: PathBuf,
    pub kind: &'static str,
    pub size: u64,
    pub mtime: i64,
}

/// Where a kept entry is.
pub fn path_of(state_dir: &Path, k: &Kept) -> PathBuf {
    state_dir.join(DIR).join(&k.name)
}

/// Every kept entry (a kept directory is listed with its contents).
pub fn list(state_dir: &Path) -> io::Result<Vec<Kept>> {
    let base = state_dir.join(DIR);
    let mut out = Vec::new();
    if !base.exists() {
        return Ok(out);
    }
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = std::fs::symlink_metadata(e.path())?;
            let name = e
                .path()
                .strip_prefix(&base)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            use std::os::unix::fs::MetadataExt;
            if m.is_dir() {
                stack.push(e.path());
                continue;
            }
            out.push(Kept {
                name,
                kind: if m.file_type().is_symlink() {
                    "symlink"
                } else {
                    "file"
                },
                size: m.len(),
                mtime: m.mtime(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} is not a kept entry: it must be `<generation>/<path>` as `syncd conflicts list` prints it")]
    NotKept(String),
    #[error("{0} already exists; pass --to another path")]
    Exists(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
}

/// Copies a kept entry to `to` (default: its original path in `export`),
/// never over an existing file. On a standby the next reconcile removes
/// what its primary lacks, so restore on the primary, or copy it there.
pub fn restore(
    state_dir: &Path,
    export: &Path,
    name: &str,
    to: Option<&Path>,
) -> Result<PathBuf, RestoreError> {
    let rel = Path::new(name);
    let mut comps = rel.components();
    let (Some(std::path::Component::Normal(_)), rest) = (comps.next(), comps.as_path()) else {
        return Err(RestoreError::NotKept(name.into()));
    };
    let inside = RelPath::from_path(rest).map_err(|_| RestoreError::NotKept(name.into()))?;
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(RestoreError::NotKept(name.into()));
    }
    let src = state_dir.join(DIR).join(rel);
    let m = std::fs::symlink_metadata(&src).map_err(|_| RestoreError::NotKept(name.into()))?;
    let dest = to.map_or_else(|| export.join(inside.as_path()), Path::to_path_buf);
    if dest.symlink_metadata().is_ok() {
        return Err(RestoreError::Exists(dest));
    }
    let io = |e| RestoreError::Io(dest.clone(), e);
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io)?;
    }
    if m.file_type().is_symlink() {
        let t = std::fs::read_link(&src).map_err(io)?;
        std::os::unix::fs::symlink(t, &dest).map_err(io)?;
    } else if m.is_file() {
        std::fs::copy(&src, &dest).map_err(io)?;
    } else {
        return Err(RestoreError::NotKept(name.into()));
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn kept_entries_survive_replacement_and_removal_and_can_be_restored() {
        let d = tempfile::tempdir().unwrap();
        keep_and_restore(d.path(), &d.path().join("state"));
    }

    /// The state directory on another filesystem: entries are copied (a
    /// directory copied, then removed), with the same result.
    #[test]
    fn across_filesystems_entries_are_copied() {
        let Some(t) = crate::testmount::Tmpfs::new() else {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        keep_and_restore(d.path(), &t.path().join("state"));
        let kept = t.path().join("state/conflicts/1-000000000000000a");
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(kept.join("a/f")).unwrap();
        assert_eq!(a.nlink(), 1, "a copy, not a link");
        assert_eq!(std::fs::read_link(kept.join("l")).unwrap(), Path::new("t"));
    }

    fn keep_and_restore(d: &Path, state: &Path) {
        let ex = d.join("ex");
        std::fs::create_dir_all(ex.join("a/b")).unwrap();
        std::fs::write(ex.join("a/f"), b"mine").unwrap();
        std::fs::write(ex.join("a/b/g"), b"deep").unwrap();
        std::os::unix::fs::symlink("t", ex.join("l")).unwrap();
        let state = state.to_path_buf();
        let root = Root::open(&ex).unwrap();
        let k = Keeper::open(&state, "1-000000000000000a").unwrap();
        assert!(k.keep(&root, &rel("a/f"), false).unwrap());
        // the catch-up replaces a/f: the kept one still has the old content
        std::fs::write(ex.join("a/f.new"), b"theirs").unwrap();
        std::fs::rename(ex.join("a/f.new"), ex.join("a/f")).unwrap();
        assert!(k.keep(&root, &rel("a/f"), false).unwrap(), "kept twice");
        assert!(
            k.keep(&root, &rel("a/b"), false).unwrap(),
            "a directory moves whole"
        );
        assert!(!ex.join("a/b").exists());
        assert!(k.keep(&root, &rel("l"), false).unwrap());
        assert!(!k.keep(&root, &rel("missing/x"), false).unwrap());
        std::fs::create_dir(ex.join("dir")).unwrap();
        assert!(
            !k.keep(&root, &rel("dir"), true).unwrap(),
            "mkdir spares a directory"
        );
        assert_eq!(k.kept(), 4);

        let l = list(&state).unwrap();
        let names: Vec<_> = l.iter().map(|k| k.name.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "1-000000000000000a/a/b/g",
                "1-000000000000000a/a/f",
                "1-000000000000000a/a/f.~1~",
                "1-000000000000000a/l"
            ]
        );
        let base = state.join("conflicts/1-000000000000000a");
        assert_eq!(std::fs::read(base.join("a/f")).unwrap(), b"mine");
        assert_eq!(std::fs::read(base.join("a/f.~1~")).unwrap(), b"theirs");

        // restore: never over an existing file; to its path when free
        let e = restore(&state, &ex, "1-000000000000000a/a/f", None).unwrap_err();
        assert!(matches!(e, RestoreError::Exists(_)), "{e}");
        let to = d.join("out/f");
        restore(&state, &ex, "1-000000000000000a/a/f", Some(&to)).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"mine");
        let back = restore(&state, &ex, "1-000000000000000a/a/b/g", None).unwrap();
        assert_eq!(std::fs::read(back).unwrap(), b"deep");
        assert!(restore(&state, &ex, "../etc/passwd", None).is_err());
        assert!(restore(&state, &ex, "1-000000000000000a/../../x", None).is_err());
    }
}
