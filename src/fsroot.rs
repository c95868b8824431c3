//! The standby's only way to touch its export: every operation resolves its
//! parent with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the root
//! descriptor, so neither `..` nor a symlink planted in a parent directory can
//! lead a write outside the export. New content is written to an unnamed
//! `O_TMPFILE` in its destination directory and given its name only when
//! complete, so a reader sees each file old or new, never partial, and the
//! export holds nothing of syncd's. Only where the filesystem lacks
//! `O_TMPFILE` is a staging directory used: `<export>/.syncd/staging`, 0700,
//! created on first need (invisible to root-squashed NFS clients).

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::meta_policy::MetaPolicy;
use crate::wire::Meta;
use syncd_proto::path::RelPath;

mod link;
mod meta;

use link::EmptyPathLink;
use meta::{apply_meta, gid, times, uid};

/// The fallback staging directory, `<export>/.syncd/staging`.
const STAGING: [&[u8]; 2] = [syncd_proto::path::STATE_DIR_NAME, b"staging"];

pub struct Root {
    dir: OwnedFd,
    /// Opened (and created) only when a filesystem lacks `O_TMPFILE`.
    staging: std::sync::OnceLock<OwnedFd>,
    path: PathBuf,
    /// Applied to every owner and mode the primary sends; already reduced
    /// to what this process can do (no chown without root).
    policy: MetaPolicy,
    seq: AtomicU64,
    links: EmptyPathLink,
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

/// A file being written; removed on drop unless committed.
///
/// Preferably an unnamed `O_TMPFILE` in the destination's own directory: it
/// has no name until committed, so a crash leaves nothing to clean up, and
/// inode allocation and directory locks spread over the tree instead of all
/// contending on one staging directory. Where the filesystem lacks
/// `O_TMPFILE`, a named file in the staging directory is used instead.
pub struct Staged<'r> {
    root: &'r Root,
    /// `None` for an unnamed (O_TMPFILE) file.
    name: Option<String>,
    pub file: File,
    done: bool,
}

/// A staged file with its metadata applied ([`Root::prepare`]): ready to
/// be placed.
pub struct Prepared<'r>(Staged<'r>);

impl Prepared<'_> {
    pub fn file(&self) -> &File {
        &self.0.file
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let (false, Some(n), Some(st)) = (self.done, &self.name, self.root.staging.get()) {
            let _ = rustix::fs::unlinkat(st, n.as_str(), AtFlags::empty());
        }
    }
}

impl Root {
    /// Opens the export, removing fallback staging leftovers from a crash.
    pub fn open(export: &Path) -> io::Result<Root> {
        // Readable, not O_PATH: `sync` needs it for syncfs.
        let dir = rustix::fs::open(
            export,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root = Root {
            dir,
            staging: std::sync::OnceLock::new(),
            path: export.to_path_buf(),
            policy: MetaPolicy::default().effective(rustix::process::geteuid().is_root()),
            seq: AtomicU64::new(0),
            links: EmptyPathLink::default(),
        };
        let n = root.clean_staging()?;
        if n > 0 {
            tracing::info!(
                files = n,
                "removed leftover staging files from an interrupted transfer"
            );
        }
        Ok(root)
    }

    /// The fallback staging directory, created (0700, owned by us, no
    /// symlink on the way) on first use.
    fn staging(&self) -> io::Result<&OwnedFd> {
        if let Some(fd) = self.staging.get() {
            return Ok(fd);
        }
        let top = crate::state::private_subdir(&self.dir, STAGING[0], true)?;
        let fd = crate::state::private_subdir(&top, STAGING[1], true)?;
        tracing::info!(
            dir = %self.path.join(".syncd/staging").display(),
            "this filesystem lacks O_TMPFILE: staging new content in the export's .syncd/staging"
        );
        Ok(self.staging.get_or_init(|| fd))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `policy` (`[standby]`) to all metadata from now on.
    pub fn with_policy(mut self, policy: MetaPolicy) -> Root {
        self.policy = policy.effective(rustix::process::geteuid().is_root());
        self
    }

    /// The policy in force (what the standby announces to the primary).
    pub fn policy(&self) -> MetaPolicy {
        self.policy
    }

    fn clean_staging(&self) -> io::Result<usize> {
        let existing = crate::state::private_subdir(&self.dir, STAGING[0], false)
            .and_then(|top| crate::state::private_subdir(&top, STAGING[1], false));
        let staging = match existing {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                // Not ours (planted by a client of the export, say): not
                // cleaned, and never staged in (`staging` refuses it too).
                tracing::warn!(export = %self.path.display(), "not cleaning .syncd/staging: {e}");
                return Ok(0);
            }
        };
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&staging)? {
            let e = e?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        for name in &names {
            remove_any(&staging, name)?;
        }
        Ok(names.len())
    }

    /// Opens a directory beneath the root (empty = the root itself).
    pub fn open_dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let p = if rel.is_empty() { os(b".") } else { os(rel) };
        Ok(rustix::fs::openat2(
            &self.dir,
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )?)
    }

    /// The directory holding `p` (resolved beneath the root) and `p`'s name.
    pub fn parent_of(&self, p: &RelPath) -> io::Result<(OwnedFd, Vec<u8>)> {
        self.parent(p)
    }

    fn parent(&self, p: &RelPath) -> io::Result<(OwnedFd, Vec<u8>)> {
        let (parent, name) = p.split_last();
        Ok((self.open_dir(parent)?, name.to_vec()))
    }

    /// Opens an existing regular file for reading (delta base, signature).
    pub fn open_file(&self, p: &RelPath) -> io::Result<File> {
        // O_NONBLOCK: a FIFO planted at the path must not block a worker in
        // open(); the type is then checked on the descriptor itself.
        let fd = rustix::fs::openat2(
            &self.dir,
            os(p.as_bytes()),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
        Ok(File::from(fd))
    }

    /// A temporary name, only ever seen between a link and a rename (a
    /// crash in that window leaves it: scans skip such names, and a
    /// daemon's walk removes its own from before it started, see
    /// `scan::sweep_leftovers_from_before`).
    fn tmp_name(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        syncd_proto::path::temp_name(std::process::id(), n)
    }

    /// Stages new content for `p` (see [`Staged`]).
    pub fn stage_for(&self, p: &RelPath) -> io::Result<Staged<'_>> {
        let dir = self.open_dir(p.split_last().0)?;
        self.tmpfile(&dir)
    }

    fn tmpfile(&self, dir: &OwnedFd) -> io::Result<Staged<'_>> {
        match rustix::fs::openat(
            dir,
            ".",
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => Ok(Staged {
                root: self,
                name: None,
                file: File::from(fd),
                done: false,
            }),
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::ISDIR) => self.stage(),
            Err(e) => Err(e.into()),
        }
    }

    /// Stages new content as a named file in the fallback staging directory.
    pub fn stage(&self) -> io::Result<Staged<'_>> {
        let name = self.tmp_name();
        let fd = rustix::fs::openat(
            self.staging()?,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(Staged {
            root: self,
            name: Some(name),
            file: File::from(fd),
            done: false,
        })
    }

    /// Applies metadata to a staged file and gives it the name `p`
    /// (replacing what is there); its metadata as placed.
    pub fn commit(&self, s: Staged<'_>, p: &RelPath, meta: &Meta) -> io::Result<Metadata> {
        let s = self.prepare(s, meta)?;
        self.commit_keeping(s, p, || true)?
            .ok_or_else(|| io::Error::other("not placed"))
    }

    /// Applies metadata to a staged file: what it will be once placed,
    /// but for its ctime.
    pub fn prepare<'r>(&self, s: Staged<'r>, meta: &Meta) -> io::Result<Prepared<'r>> {
        let fd = s.file.as_fd();
        // chown before chmod: chown clears set-ID bits the mode may keep.
        if let Some((u, g)) = self.policy.owner(meta) {
            rustix::fs::fchown(fd, Some(uid(u)), Some(gid(g)))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(self.policy.mode(meta.mode, true)))?;
        rustix::fs::futimens(fd, &times(meta))?;
        Ok(Prepared(s))
    }

    /// Gives a prepared file the name `p` (replacing what is there), asking
    /// `keep` first only when something is at `p` to be replaced (a new
    /// name needs no check: the link that makes it fails when the name is
    /// taken). `None`, nothing placed, when `keep` says no.
    pub fn commit_keeping(
        &self,
        s: Prepared<'_>,
        p: &RelPath,
        keep: impl FnOnce() -> bool,
    ) -> io::Result<Option<Metadata>> {
        let mut s = s.0;
        match &s.name {
            Some(n) => {
                if !keep() {
                    return Ok(None);
                }
                self.place(self.staging()?, n, p)?
            }
            None => {
                // Give the unnamed file a name: directly when the destination
                // is free (one syscall), else a temporary name beside it and
                // an atomic rename over it.
                let (pd, name) = self.parent(p)?;
                let link = |n: &OsStr| self.links.link(&s.file, &pd, n);
                match link(os(&name)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        if !keep() {
                            return Ok(None);
                        }
                        let tmp = self.tmp_name();
                        link(OsStr::new(&tmp))?;
                        if let Err(e) = self.place(&pd, &tmp, p) {
                            let _ = rustix::fs::unlinkat(&pd, tmp.as_str(), AtFlags::empty());
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        s.done = true;
        // After the link: the stamp recorded includes its ctime.
        s.file.metadata().map(Some)
    }

    /// Renames `staged` in `from` onto `p`, replacing whatever is there (a
    /// directory in the way is removed: the primary no longer has it).
    fn place(&self, from: &impl AsFd, staged: &str, p: &RelPath) -> io::Result<()> {
        let (pd, name) = self.parent(p)?;
        match rustix::fs::renameat(from, staged, &pd, os(&name)) {
            Ok(()) => Ok(()),
            Err(e)
                if e == rustix::io::Errno::ISDIR
                    || e == rustix::io::Errno::NOTEMPTY
                    || e == rustix::io::Errno::EXIST =>
            {
                remove_any(&pd, &name)?;
                Ok(rustix::fs::renameat(from, staged, &pd, os(&name))?)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn mkdir(&self, p: &RelPath) -> io::Result<()> {
        let (pd, name) = self.parent(p)?;
        match rustix::fs::mkdirat(&pd, os(&name), Mode::from_raw_mode(0o700)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(&pd, os(&name), AtFlags::SYMLINK_NOFOLLOW)?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Directory
                {
                    Ok(())
                } else {
                    rustix::fs::unlinkat(&pd, os(&name), AtFlags::empty())?;
                    Ok(rustix::fs::mkdirat(
                        &pd,
                        os(&name),
                        Mode::from_raw_mode(0o700),
                    )?)
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn delete(&self, p: &RelPath) -> io::Result<()> {
        let (pd, name) = match self.parent(p) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match remove_any(&pd, &name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Renames `from` to `to` beneath the root (both parents resolved with
    /// openat2, so neither can escape). Replaces a file or empty directory at `to`.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        Ok(rustix::fs::renameat(&fd, os(&fname), &td, os(&tname))?)
    }

    pub fn symlink(&self, p: &RelPath, target: &[u8], meta: &Meta) -> io::Result<()> {
        self.symlink_announced(p, target, meta, |_| ())
    }

    /// [`Root::symlink`], telling `announce` what the symlink is (but for
    /// its ctime) just before it takes the name `p`.
    pub fn symlink_announced(
        &self,
        p: &RelPath,
        target: &[u8],
        meta: &Meta,
        announce: impl FnOnce(&rustix::fs::Stat),
    ) -> io::Result<()> {
        // Made under a temporary name beside `p`, its metadata set, then
        // renamed over `p`: never seen half-made.
        let (pd, _) = self.parent(p)?;
        let name = self.tmp_name();
        rustix::fs::symlinkat(os(target), &pd, name.as_str())?;
        let r = (|| {
            let fd = open_nofollow(&pd, name.as_bytes())?;
            // Users who can write this directory could have swapped the
            // name for a file of theirs: never chown that to the owner the
            // primary asked for.
            let st = rustix::fs::fstat(&fd)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Symlink
                || st.st_uid != rustix::process::geteuid().as_raw()
                || st.st_nlink != 1
            {
                return Err(io::Error::other(format!(
                    "{}: the temporary symlink was replaced while it was made",
                    p
                )));
            }
            apply_meta(&fd, rustix::fs::FileType::Symlink, meta, &self.policy)?;
            announce(&rustix::fs::fstat(&fd)?);
            self.place(&pd, &name, p)
        })();
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&pd, name.as_str(), AtFlags::empty());
        }
        r
    }

    /// Makes `p` another name of `leader` (atomically replacing `p`).
    pub fn link(&self, p: &RelPath, leader: &RelPath) -> io::Result<()> {
        let (ld, lname) = self.parent(leader)?;
        let (pd, pname) = self.parent(p)?;
        let link = |n: &OsStr| rustix::fs::linkat(&ld, os(&lname), &pd, n, AtFlags::empty());
        match link(os(&pname)) {
            Err(rustix::io::Errno::EXIST) => {}
            r => return Ok(r?),
        }
        let name = self.tmp_name();
        link(OsStr::new(&name))?;
        let r = self.place(&pd, &name, p);
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&pd, name.as_str(), AtFlags::empty());
        }
        r
    }

    /// Sets mode, owner (as root) and mtime of an existing entry without
    /// following a final symlink.
    pub fn set_meta(&self, p: &RelPath, meta: &Meta) -> io::Result<()> {
        let (pd, name) = self.parent(p)?;
        // One descriptor, the type check and every change act on it: a name
        // swapped for a symlink after the open cannot redirect them.
        let fd = open_nofollow(&pd, &name)?;
        let st = rustix::fs::fstat(&fd)?;
        apply_meta(
            &fd,
            rustix::fs::FileType::from_raw_mode(st.st_mode),
            meta,
            &self.policy,
        )
    }

    /// The export's filesystem's space, through the root descriptor (no
    /// path walk: it is asked once per file).
    pub fn statvfs(&self) -> io::Result<rustix::fs::StatVfs> {
        Ok(rustix::fs::fstatvfs(&self.dir)?)
    }

    /// Flushes everything written on the export's filesystem.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.dir)?)
    }
}

/// An `O_PATH` descriptor for `name` itself (a symlink stays a symlink).
fn open_nofollow(dir: &impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        os(name),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes `name` in `dir`, recursively if it is a directory, never following symlinks.
pub(crate) fn remove_any(dir: &impl AsFd, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, os(name), AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = rustix::fs::openat(
        dir,
        os(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&sub)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_any(&sub, &n)?;
    }
    Ok(rustix::fs::unlinkat(dir, os(name), AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests;
