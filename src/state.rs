//! Files syncd keeps for itself (index, generation record, signature cache,
//! conflicts): private to the daemon, in `/var/lib/syncd/<export_id>` by
//! default, never in the export. Directories are 0700 and files 0600, and
//! none is opened through a symlink, so a local user who can write where the
//! state lives can neither read the index nor plant a link that makes the
//! daemon write somewhere else.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// A durable state file this release cannot use as it is.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Record(#[from] crate::generation::RecordError),
    #[error("{0}")]
    Dir(#[from] io::Error),
    #[error(
        "state directory {dir} belongs to the export {theirs}, not {ours}: two exports on this host share an export_id; \
         give each its own export_id (both nodes of a pair must agree) or set state_dir; \
         if this export was moved, remove {dir}/export"
    )]
    OtherExport {
        dir: String,
        theirs: String,
        ours: String,
    },
    #[error(
        "the export {export} was a mount point when this node last ran and is not one now: \
         its filesystem is not mounted (a failed disk, a mount that did not come up at boot?). \
         Refusing to start: the empty directory beneath it would be taken for the data, and \
         replicating it would delete the peer's copy. Mount it; if the export is meant to be a \
         plain directory from now on, remove {marker}"
    )]
    NotMounted { export: String, marker: String },
}

/// The file in the state dir naming the export it belongs to.
const EXPORT_FILE: &str = "export";

/// Binds the state dir to `export`: the default `/var/lib/syncd/<export_id>`
/// is shared by every export with one `export_id`, and two exports' state
/// in one place would mix their indexes and generation records.
pub fn claim(dir: &Path, export: &Path) -> Result<(), StateError> {
    let ours = std::fs::canonicalize(export).unwrap_or_else(|_| export.to_path_buf());
    let file = dir.join(EXPORT_FILE);
    match read_private(&file) {
        Ok(b) => {
            let theirs = String::from_utf8_lossy(&b);
            let theirs = theirs.trim_end_matches('\n');
            if Path::new(theirs) != ours {
                return Err(StateError::OtherExport {
                    dir: dir.display().to_string(),
                    theirs: theirs.to_string(),
                    ours: ours.display().to_string(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::io::Write;
            let mut f = create_private(&file)?;
            f.write_all(format!("{}\n", ours.display()).as_bytes())?;
            f.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The file in the state dir saying the export was a mount point.
const MOUNTED_FILE: &str = "export-mounted";

/// Refuses an export that was the root of a mounted filesystem when the
/// state dir `dir` first saw it and is not one now: what is left is the
/// empty directory beneath the mount (a failed disk at boot), and taking
/// it for the data would make a primary delete the standby's copy, the
/// one left, and a standby fill the root filesystem. An export that is a
/// mount point is recorded as one the first time.
pub fn check_mounted(dir: &Path, export: &Path) -> Result<(), StateError> {
    let marker = dir.join(MOUNTED_FILE);
    let now = is_mount_point(export)?;
    match read_private(&marker) {
        Ok(_) if !now => Err(StateError::NotMounted {
            export: export.display().to_string(),
            marker: marker.display().to_string(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if now {
                use std::io::Write;
                // A one-shot resync may come before any daemon made it.
                private_dir(dir)?;
                let mut f = create_private(&marker)?;
                f.write_all(
                    b"the export is a mount point: syncd refuses to start while it is not one\n",
                )?;
                f.sync_all()?;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is a filesystem of its own: its device differs from
/// its parent's (or it is `/`). Not statx's mount-root attribute: systemd
/// bind-mounts a unit's `ReadWritePaths=` onto themselves, which makes an
/// empty directory beneath a failed mount a mount root too; a bind keeps
/// the device of what lies beneath.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let me = std::fs::metadata(path).map_err(|e| named(path, e))?;
    let up_path = path.join("..");
    let up = std::fs::metadata(&up_path).map_err(|e| named(&up_path, e))?;
    Ok(me.dev() != up.dev() || me.ino() == up.ino())
}

/// Checks the durable formats in `dir` at start, migrating older ones in
/// place and refusing newer ones (a newer index read as empty would mean a
/// full resync; a newer generation record, a wrong verdict).
pub fn check_formats(dir: &Path) -> Result<(), StateError> {
    let path = dir.join(crate::index::FILE);
    // Decoded only when its header says older: a million entries take a
    // while, and a one-shot command loads it again anyway.
    let mut ix = match crate::index::Index::older_format(&path)? {
        true => crate::index::Index::open(&path)?,
        false => crate::index::Index::default(),
    };
    if ix.migrated() {
        // The index is a cache: a failed rewrite (full or read-only /var)
        // leaves the old file, which this release still reads.
        match ix.save() {
            Ok(()) => tracing::info!(entries = ix.len(), "index migrated to the current format"),
            Err(e) => {
                tracing::warn!("index not migrated to the current format (kept as it is): {e}")
            }
        }
    }
    if crate::generation::Store::new(dir).migrate()? {
        tracing::info!("generation record migrated to the current format");
    }
    Ok(())
}

/// Creates `path` (and missing parents) mode 0700, or checks an existing
/// one: a real directory (not a symlink), owned by this process's user;
/// group and other access is removed.
pub fn private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "state directory {} is not a directory (a symlink is refused): {e}",
                path.display()
            ),
        )
    })?;
    owned_private(&fd, &format!("state directory {}", path.display()))
}

/// Refuses a directory another user owns (whoever controls it controls
/// what syncd reads from it) and removes group and other access.
fn owned_private(fd: &impl AsFd, what: &str) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{what} is owned by uid {}, not {me}; refusing to keep files where another user controls them",
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o077 != 0 {
        chmod_fd(fd, 0o700)?;
    }
    Ok(())
}

/// Opens the directory `name` in `parent` (one component, never through a
/// symlink), creating it 0700 when `create`; like [`private_dir`], refuses
/// one owned by another user and removes group and other access.
pub fn private_subdir(
    parent: &impl AsFd,
    name: &[u8],
    create: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    let name = std::ffi::OsStr::from_bytes(name);
    if create {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    owned_private(&fd, &name.to_string_lossy())?;
    Ok(fd)
}

/// chmod of the inode behind `fd` (an `O_PATH` descriptor), never by name.
fn chmod_fd(fd: &impl AsFd, mode: u32) -> io::Result<()> {
    let p = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    Ok(rustix::fs::chmodat(
        rustix::fs::CWD,
        p.as_str(),
        Mode::from_raw_mode(mode),
        rustix::fs::AtFlags::empty(),
    )?)
}

/// Creates or truncates `path` for writing, mode 0600 (also when it already
/// existed), refusing a symlink.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    rustix::fs::fchmod(&f, Mode::from_raw_mode(0o600))?;
    Ok(f)
}

/// Reads a whole state file, refusing a symlink or anything not regular
/// (O_NONBLOCK: a FIFO must not block).
pub fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    read_private_head(path, u64::MAX)
}

/// [`read_private`], at most the first `max` bytes.
pub fn read_private_head(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut v = Vec::new();
    f.take(max).read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_state_dir_serves_one_export() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, st) = (d.path().join("a"), d.path().join("b"), d.path().join("st"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        private_dir(&st).unwrap();
        claim(&st, &a).unwrap();
        claim(&st, &a).unwrap();
        let e = claim(&st, &b).unwrap_err().to_string();
        assert!(e.contains("export_id") && e.contains("state_dir"), "{e}");
    }

    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn state_is_private_and_never_reached_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let ex = d.path().join("ex");
        std::fs::create_dir(&ex).unwrap();
        // An older release left .syncd world-readable.
        std::fs::create_dir(ex.join(".syncd")).unwrap();
        std::fs::set_permissions(ex.join(".syncd"), PermissionsExt::from_mode(0o755)).unwrap();
        private_dir(&ex.join(".syncd")).unwrap();
        assert_eq!(mode(&ex.join(".syncd")), 0o700);

        let mut ix = crate::index::Index::load(&ex.join(".syncd/index.bin"));
        let st = crate::index::Stamp {
            size: 1,
            mtime: (2, 3),
            ctime: (4, 5),
            ino: 6,
        };
        ix.insert(b"a".to_vec(), st, [1; 32]);
        ix.save().unwrap();
        assert_eq!(mode(&ex.join(".syncd/index.bin")), 0o600);

        let sigs = crate::sigcache::SigCache::new(&ex.join(".syncd"));
        let p = syncd_proto::path::RelPath::new(b"a".to_vec()).unwrap();
        sigs.put(&p, &st, 1024, 8, b"sig");
        assert_eq!(mode(&ex.join(".syncd/sigs")), 0o700);
        for e in std::fs::read_dir(ex.join(".syncd/sigs")).unwrap() {
            assert_eq!(mode(&e.unwrap().path()), 0o600);
        }

        // A planted symlink is neither followed to read nor to write.
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::remove_file(ex.join(".syncd/index.bin")).unwrap();
        std::os::unix::fs::symlink(&outside, ex.join(".syncd/index.bin")).unwrap();
        std::os::unix::fs::symlink(&outside, ex.join(".syncd/index.tmp")).unwrap();
        assert!(crate::index::Index::load(&ex.join(".syncd/index.bin")).is_empty());
        let mut ix = crate::index::Index::load(&ex.join(".syncd/index.bin"));
        ix.insert(b"b".to_vec(), st, [2; 32]);
        assert!(ix.save().is_err());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(read_private(&ex.join(".syncd/index.bin")).is_err());

        // A state directory that is a symlink is refused.
        let ex2 = d.path().join("ex2");
        std::fs::create_dir(&ex2).unwrap();
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, ex2.join(".syncd")).unwrap();
        assert!(private_dir(&ex2.join(".syncd")).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

        // The fallback staging directory: 0700, never through a symlink.
        let ex3 = d.path().join("ex3");
        std::fs::create_dir(&ex3).unwrap();
        let fd = rustix::fs::open(&ex3, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert!(
            private_subdir(&fd, b".syncd", false).is_err(),
            "not made unless asked"
        );
        assert!(!ex3.join(".syncd").exists());
        std::os::unix::fs::symlink(&elsewhere, ex3.join(".syncd")).unwrap();
        assert!(private_subdir(&fd, b".syncd", true).is_err());
        std::fs::remove_file(ex3.join(".syncd")).unwrap();
        private_subdir(&fd, b".syncd", true).unwrap();
        assert_eq!(mode(&ex3.join(".syncd")), 0o700);
    }

    #[test]
    fn an_export_that_was_a_mount_point_and_is_not_now_is_refused() {
        let Some(m) = crate::testmount::Tmpfs::new() else {
            eprintln!("SKIP: mounting a tmpfs needs root");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        private_dir(&state).unwrap();
        // A plain directory: nothing recorded, nothing refused.
        let plain = d.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        check_mounted(&state, &plain).unwrap();
        assert!(!state.join(MOUNTED_FILE).exists());
        // Mounted: recorded, and fine while it stays so.
        check_mounted(&state, m.path()).unwrap();
        assert!(state.join(MOUNTED_FILE).exists());
        check_mounted(&state, m.path()).unwrap();
        // Not mounted any more: the directory beneath is refused.
        assert!(std::process::Command::new("umount")
            .arg(m.path())
            .status()
            .unwrap()
            .success());
        let e = check_mounted(&state, m.path()).unwrap_err().to_string();
        assert!(
            e.contains("is not one now") && e.contains("export-mounted"),
            "{e}"
        );
        // Removing the record accepts it as a plain directory.
        std::fs::remove_file(state.join(MOUNTED_FILE)).unwrap();
        check_mounted(&state, m.path()).unwrap();
    }
}
