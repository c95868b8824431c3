//! Moving state out of the export: releases before this one kept it in
//! `<export>/.syncd`, where every NFS client could read the index (every
//! path and content hash) and delete it. A daemon that finds state there
//! (and none in `/var/lib/syncd/<export_id>`) moves it at start, so an
//! upgraded node keeps its index and generation record and needs no resync.
//!
//! Same filesystem: one `rename` of the whole directory (atomic). Otherwise
//! the tree is copied to a temporary sibling of the destination, every file
//! and directory fsync'd, the copy renamed into place, and only then the
//! old tree removed: a crash at any point leaves a complete state in one of
//! the two places (the destination wins when both exist).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, DEFAULT_STATE_BASE};

/// Staging leftovers are garbage, never moved: the fallback staging
/// directory stays in the export by design (see `fsroot`).
const STAGING: &str = "staging";

/// Whether `dir` holds anything of syncd's besides staging leftovers.
pub fn holds_state(dir: &Path) -> bool {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        _ => return false,
    }
    fs::read_dir(dir).is_ok_and(|rd| rd.flatten().any(|e| e.file_name() != STAGING))
}

/// Whether `<export>/.syncd` holds state an older release of this daemon
/// left: owned by us (a client of the export that planted a directory there
/// must not get its "index" adopted), holding more than staging leftovers.
pub fn holds_legacy_state(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ours = fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw());
    ours && holds_state(dir)
}

/// Prepares the state directory for a daemon: moves legacy state out of
/// the export (or, when that fails, keeps using it with a warning saying
/// how to move it by hand), then checks and migrates the durable formats.
pub fn prepare(mut cfg: Config) -> Result<Config, crate::state::StateError> {
    if cfg.legacy_state {
        let to = Path::new(DEFAULT_STATE_BASE).join(&cfg.export_id);
        match relocate(&cfg.state_dir, &to) {
            Ok(how) => {
                tracing::info!(
                    from = %cfg.state_dir.display(),
                    to = %to.display(),
                    how,
                    "moved the state directory out of the export"
                );
                cfg.state_dir = to;
                cfg.legacy_state = false;
            }
            Err(e) => tracing::warn!(
                "state is still in {from}, inside the export, where NFS clients can read and delete it; \
                 moving it to {to} failed: {e}. With the daemon stopped, run \
                 `mkdir -p -m 0700 {to} && mv {from}/* {to}/ && rm -rf {from}` \
                 (index.bin, lineage, sigs/, conflicts/, role.log), or set state_dir",
                from = cfg.state_dir.display(),
                to = to.display(),
            ),
        }
    }
    let old = cfg.export.join(".syncd");
    if !cfg.legacy_state && holds_legacy_state(&old) {
        // Both places hold state (a move interrupted after its copy was in
        // place, or state copied by hand): the new place is used.
        tracing::warn!(
            "{} holds state of an older release, unused (the state is in {}); \
             remove it: NFS clients can read it",
            old.display(),
            cfg.state_dir.display()
        );
    }
    // Checked before anything in it is read: a configured or legacy
    // state dir that is a link, or another user's, is refused.
    crate::state::private_dir(&cfg.state_dir)?;
    crate::state::claim(&cfg.state_dir, &cfg.export)?;
    crate::state::check_mounted(&cfg.state_dir, &cfg.export)?;
    crate::state::check_formats(&cfg.state_dir)?;
    Ok(cfg)
}

/// Moves the state tree `from` to `to` (which must not hold state);
/// returns how ("renamed" or "copied").
pub fn relocate(from: &Path, to: &Path) -> io::Result<&'static str> {
    if holds_state(to) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already holds state", to.display()),
        ));
    }
    // Pinned once: `from` sits in the export, whose root users may be able
    // to write, so its name may be swapped (for a link to a directory of
    // theirs) between the ownership check and the move. What is moved or
    // copied must be the directory checked here.
    let (pin, id) = pin_owned(from)?;
    let same = |p: &Path| same_dir(p, id);
    let staging = from.join(STAGING);
    if fs::symlink_metadata(&staging).is_ok() {
        fs::remove_dir_all(&staging)?;
    }
    let parent = to.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    // An empty destination (made by systemd's StateDirectory=) is replaced.
    if fs::symlink_metadata(to).is_ok() {
        fs::remove_dir(to)?;
    }
    match fs::rename(from, to) {
        Ok(()) if !same(to) => {
            // The name was swapped before the rename: put it back, refuse.
            let _ = fs::rename(to, from);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} changed while it was being moved; not adopted",
                    from.display()
                ),
            ));
        }
        Ok(()) => {
            sync_dir(parent)?;
            sync_dir(from.parent().unwrap_or(Path::new("/")))?;
            return Ok("renamed");
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => return Err(e),
    }
    copy_pinned(&pin, to, parent)?;
    if same(from) {
        fs::remove_dir_all(from)?;
    }
    sync_dir(from.parent().unwrap_or(Path::new("/")))?;
    Ok("copied")
}

/// Opens `from` without following a link and checks that this daemon's user
/// owns it; the descriptor and the directory's (device, inode).
fn pin_owned(from: &Path) -> io::Result<(fs::File, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let pin = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(from)?;
    let m = pin.metadata()?;
    if m.uid() != rustix::process::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not owned by this daemon's user", from.display()),
        ));
    }
    Ok((pin, (m.dev(), m.ino())))
}

/// `p` is (still) the directory with this (device, inode).
fn same_dir(p: &Path, (dev, ino): (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.dev() == dev && m.ino() == ino)
}

/// Across filesystems: the pinned tree copied beside `to`, then renamed in.
fn copy_pinned(pin: &fs::File, to: &Path, parent: &Path) -> io::Result<()> {
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.moving"));
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_dir_all(&tmp)?; // an interrupted earlier copy
    }
    // Copied through the pinned descriptor, never by the swappable name.
    copy_tree(
        Path::new(&format!("/proc/self/fd/{}", pin.as_raw_fd())),
        &tmp,
    )?;
    fs::rename(&tmp, to)?;
    sync_dir(parent)
}

/// Copies a directory tree without following symlinks, keeping modes and
/// fsyncing every file and directory it writes.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    // `from` may be the pinned `/proc/self/fd/N`: its target's mode.
    let mode = fs::metadata(from)?.permissions().mode() & 0o7777;
    fs::DirBuilder::new().mode(0o700).create(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            copy_file(&src, &dst)?;
        }
        // Sockets, FIFOs and devices are not syncd's: left behind.
    }
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    sync_dir(to)
}

/// Copies one regular file (never through a symlink), mode kept, fsync'd.
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<()> {
    let mut r = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(src)?;
    let mode = r.metadata()?.permissions().mode() & 0o7777;
    let mut w = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dst)?;
    io::copy(&mut r, &mut w)?;
    w.set_permissions(fs::Permissions::from_mode(mode))?;
    w.sync_all()
}

fn sync_dir(d: &Path) -> io::Result<()> {
    fs::File::open(d)?.sync_all()
}

/// Every path below `dir`, relative, sorted (for tests and diagnostics).
pub fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
            out.push(
                e.path()
                    .strip_prefix(dir)
                    .unwrap_or(&e.path())
                    .to_path_buf(),
            );
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn legacy(ex: &Path) -> PathBuf {
        let s = ex.join(".syncd");
        for d in ["", "sigs", "staging", "conflicts/1-a/x"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(s.join(d))
                .unwrap();
        }
        fs::write(s.join("index.bin"), b"ix").unwrap();
        fs::write(s.join("lineage"), b"ln").unwrap();
        fs::write(s.join("sigs/0a"), b"sig").unwrap();
        fs::write(s.join("staging/leftover"), b"junk").unwrap();
        fs::write(s.join("conflicts/1-a/x/f"), b"mine").unwrap();
        std::os::unix::fs::symlink("t", s.join("conflicts/1-a/l")).unwrap();
        s
    }

    fn check_moved(ex: &Path, to: &Path) {
        assert!(
            !ex.join(".syncd").exists(),
            "nothing of syncd's stays in the export"
        );
        assert_eq!(fs::read(to.join("index.bin")).unwrap(), b"ix");
        assert_eq!(fs::read(to.join("lineage")).unwrap(), b"ln");
        assert_eq!(fs::read(to.join("sigs/0a")).unwrap(), b"sig");
        assert_eq!(fs::read(to.join("conflicts/1-a/x/f")).unwrap(), b"mine");
        assert_eq!(
            fs::read_link(to.join("conflicts/1-a/l")).unwrap(),
            Path::new("t")
        );
        assert!(
            !to.join("staging").exists(),
            "staging leftovers are not moved"
        );
        assert_eq!(fs::metadata(to).unwrap().mode() & 0o777, 0o700);
        assert!(!holds_state(&ex.join(".syncd")) && holds_state(to));
    }

    /// A user who can write the export root swaps `.syncd` for a link to a
    /// directory of theirs: nothing of theirs is adopted as state.
    #[test]
    fn a_swapped_legacy_name_is_not_adopted() {
        let d = tempfile::tempdir().unwrap();
        let ex = d.path().join("ex");
        let ours = legacy(&ex);
        let forged = d.path().join("forged");
        fs::create_dir_all(&forged).unwrap();
        fs::write(forged.join("lineage"), b"FORGED").unwrap();
        fs::rename(&ours, d.path().join("ours")).unwrap();
        std::os::unix::fs::symlink(&forged, &ours).unwrap();
        let to = d.path().join("var/lib/syncd/default");
        assert!(relocate(&ours, &to).is_err(), "a link is never moved in");
        assert!(!to.join("lineage").exists());
        if let Some(t) = crate::testmount::Tmpfs::new() {
            let to = t.path().join("default");
            assert!(relocate(&ours, &to).is_err(), "nor copied through");
            assert!(!to.join("lineage").exists());
        }
    }

    #[test]
    fn same_filesystem_state_is_renamed_out_of_the_export() {
        let d = tempfile::tempdir().unwrap();
        let ex = d.path().join("ex");
        let from = legacy(&ex);
        let to = d.path().join("var/lib/syncd/default");
        // systemd's StateDirectory= may have made it, empty.
        fs::create_dir_all(&to).unwrap();
        assert_eq!(relocate(&from, &to).unwrap(), "renamed");
        check_moved(&ex, &to);
        // A second move would overwrite state: refused.
        let again = legacy(&ex);
        assert!(relocate(&again, &to).is_err());
        assert_eq!(fs::read(again.join("index.bin")).unwrap(), b"ix");
    }

    #[test]
    fn cross_filesystem_state_is_copied_then_removed() {
        let Some(t) = crate::testmount::Tmpfs::new() else {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let ex = d.path().join("ex");
        let from = legacy(&ex);
        let to = t.path().join("syncd/default");
        // A copy interrupted before: replaced, not mixed in.
        fs::create_dir_all(t.path().join("syncd/.default.moving/stale")).unwrap();
        assert_eq!(relocate(&from, &to).unwrap(), "copied");
        check_moved(&ex, &to);
        assert!(!t.path().join("syncd/.default.moving").exists());
    }
}
