//! Temporary names left by a crash between the standby's link and rename
//! (`.syncd-<pid>.<n>.tmp`, see `path::temp_name`). Every walk skips them,
//! so a node that leads before it reconciles never replicates one; a
//! daemon's walks also remove the ones from before it started: exactly
//! that pattern, regular files or symlinks (a symlink is made under a
//! temporary name too, then renamed) owned by the daemon's user, changed
//! before its start (its own, made since, are in use).

use std::fs::File;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType};

/// Which leftovers a walk removes.
#[derive(Clone, Copy, Debug)]
pub struct Sweep {
    uid: u32,
    /// The daemon's start, as (seconds, nanoseconds) since the epoch.
    before: (i64, i64),
}

impl Sweep {
    pub fn new(uid: u32, start: SystemTime) -> Sweep {
        let d = start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Sweep {
            uid,
            before: (secs, i64::from(d.subsec_nanos())),
        }
    }
}

static SWEEP: OnceLock<Sweep> = OnceLock::new();

/// Called once by a daemon at start: from then on its walks remove the
/// leftovers of earlier runs.
pub fn sweep_leftovers_from_before(start: SystemTime) {
    let uid = rustix::process::geteuid().as_raw();
    let _ = SWEEP.set(Sweep::new(uid, start));
}

/// The daemon's sweep, if one was set.
pub(super) fn current() -> Option<Sweep> {
    SWEEP.get().copied()
}

/// Removes `name` in `dir` if it is a leftover by `sweep`'s rules; whether
/// it did. Not following links: a symlink is removed itself, never its
/// target; a directory by that name stays.
pub fn remove_if_leftover(dir: &File, name: &[u8], sweep: &Sweep) -> std::io::Result<bool> {
    if !syncd_proto::path::is_temp_name(name) {
        return Ok(false);
    }
    let name = std::ffi::OsStr::from_bytes(name);
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let ours = matches!(
        FileType::from_raw_mode(st.st_mode),
        FileType::RegularFile | FileType::Symlink
    );
    let older = (st.st_ctime as i64, st.st_ctime_nsec as i64) < sweep.before;
    if !(ours && st.st_uid == sweep.uid && older) {
        return Ok(false);
    }
    rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    tracing::info!(
        name = %name.to_string_lossy(),
        "removed a temporary file left by an interrupted transfer"
    );
    Ok(true)
}

use std::os::unix::ffi::OsStrExt;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_our_own_older_temporary_files_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        for n in [
            ".syncd-12.3.tmp",
            ".syncd-12.3.tmp.keep",
            "a.tmp",
            ".syncd-x.3.tmp",
        ] {
            std::fs::write(p(n), b"x").unwrap();
        }
        std::fs::create_dir(p(".syncd-9.9.tmp")).unwrap();
        std::os::unix::fs::symlink("a.tmp", p(".syncd-8.8.tmp")).unwrap();
        let dir = File::open(d.path()).unwrap();
        let me = std::fs::metadata(p("a.tmp")).unwrap().uid();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        let earlier = UNIX_EPOCH + std::time::Duration::from_secs(1);
        // Changed after the start (in use), or another user's: kept.
        let s = Sweep::new(me, earlier);
        assert!(!remove_if_leftover(&dir, b".syncd-12.3.tmp", &s).unwrap());
        let s = Sweep::new(me.wrapping_add(1), later);
        assert!(!remove_if_leftover(&dir, b".syncd-12.3.tmp", &s).unwrap());
        // Not exactly the pattern, or a directory: kept.
        let s = Sweep::new(me, later);
        for n in [
            ".syncd-12.3.tmp.keep",
            "a.tmp",
            ".syncd-x.3.tmp",
            ".syncd-9.9.tmp",
        ] {
            assert!(!remove_if_leftover(&dir, n.as_bytes(), &s).unwrap(), "{n}");
            assert!(p(n).symlink_metadata().is_ok(), "{n}");
        }
        assert!(remove_if_leftover(&dir, b".syncd-12.3.tmp", &s).unwrap());
        assert!(!p(".syncd-12.3.tmp").exists());
        // A symlink made under a temporary name (a crash before its rename,
        // as a killed standby leaves one): removed, its target not.
        assert!(remove_if_leftover(&dir, b".syncd-8.8.tmp", &s).unwrap());
        assert!(p(".syncd-8.8.tmp").symlink_metadata().is_err());
        assert!(p("a.tmp").exists());
    }
}
