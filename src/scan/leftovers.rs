//! Temporary names left by a crash between the standby's link and rename
//! (`.syncd-<pid>.<n>.tmp`, see `path::temp_name`). Every walk skips them,
//! so a node that leads before it reconciles never replicates one; a
//! daemon's walks also remove the ones from before it started: exactly
//! that pattern, regular files or symlinks (a symlink is made under a
//! temporary name too, then renamed) changed before its start (its own,
//! made since, are in use), owned by the daemon's user or named by the pid
//! of an earlier daemon on the same state directory (a root standby gives
//! a file or symlink its owner before the rename). Each daemon notes its
//! pid in `<state_dir>/pids` before it makes any such name.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType};

/// The pids of earlier daemons, newest last.
const PIDS: &str = "pids";
/// Pids kept: every start sweeps, so older runs' names are long gone.
const MAX_RUNS: usize = 64;

/// Which leftovers a walk removes.
#[derive(Clone, Copy, Debug)]
pub struct Sweep {
    uid: u32,
    /// The daemon's start, as (seconds, nanoseconds) since the epoch.
    before: (i64, i64),
    /// Earlier daemons' pids: their temporary names are theirs whoever
    /// owns them.
    runs: &'static [u32],
}

impl Sweep {
    pub fn new(uid: u32, start: SystemTime) -> Sweep {
        let d = start.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Sweep {
            uid,
            before: (secs, i64::from(d.subsec_nanos())),
            runs: &[],
        }
    }

    /// Also removes, whoever owns them, the names of the daemons `runs`.
    pub fn with_runs(self, runs: &'static [u32]) -> Sweep {
        Sweep { runs, ..self }
    }
}

static SWEEP: OnceLock<Sweep> = OnceLock::new();

/// Called once by a daemon at start, before it makes any temporary name:
/// notes its pid in `state_dir` and from then on its walks remove the
/// leftovers of earlier runs.
pub fn sweep_leftovers_from_before(start: SystemTime, state_dir: &Path) {
    let uid = rustix::process::geteuid().as_raw();
    let runs = match note_run(state_dir, std::process::id()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                "{}: {e}; temporary files a crash leaves are removed only if owned by this user",
                state_dir.join(PIDS).display()
            );
            Vec::new()
        }
    };
    // Once per process: leaked, so that a walk's sweep stays `Copy`.
    let _ = SWEEP.set(Sweep::new(uid, start).with_runs(runs.leak()));
}

/// The pids noted in `dir` so far; `me` is added, durably.
fn note_run(dir: &Path, me: u32) -> io::Result<Vec<u32>> {
    let path = dir.join(PIDS);
    let text = match crate::state::read_private(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let earlier: Vec<u32> = String::from_utf8_lossy(&text)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let mut runs: Vec<u32> = earlier.iter().copied().filter(|&p| p != me).collect();
    runs.push(me);
    let keep = &runs[runs.len().saturating_sub(MAX_RUNS)..];
    let out: String = keep.iter().map(|p| format!("{p}\n")).collect();
    crate::state::private_dir(dir)?;
    let tmp = dir.join(format!("{PIDS}.tmp"));
    let mut f = crate::state::create_private(&tmp)?;
    f.write_all(out.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(earlier)
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
    let by_syncd = st.st_uid == sweep.uid
        || syncd_proto::path::temp_name_pid(name.as_bytes())
            .is_some_and(|p| sweep.runs.iter().any(|&r| u64::from(r) == p));
    if !(ours && by_syncd && older) {
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
        // Another user's, named by an earlier daemon's pid (a root standby
        // gave it its owner before the rename): removed; by another pid, kept.
        let other = me.wrapping_add(1);
        for n in [".syncd-12.4.tmp", ".syncd-13.4.tmp"] {
            std::fs::write(p(n), b"x").unwrap();
        }
        let s = Sweep::new(other, later).with_runs(&[11, 12]);
        assert!(remove_if_leftover(&dir, b".syncd-12.4.tmp", &s).unwrap());
        assert!(!remove_if_leftover(&dir, b".syncd-13.4.tmp", &s).unwrap());
        assert!(p(".syncd-13.4.tmp").exists());
    }

    #[test]
    fn each_start_notes_its_pid_and_learns_the_earlier_ones() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        assert_eq!(note_run(&state, 7).unwrap(), Vec::<u32>::new());
        assert_eq!(note_run(&state, 8).unwrap(), [7]);
        assert_eq!(note_run(&state, 7).unwrap(), [7, 8], "a pid used again");
        assert_eq!(std::fs::read_to_string(state.join(PIDS)).unwrap(), "8\n7\n");
        for pid in 100..200 {
            note_run(&state, pid).unwrap();
        }
        let runs = note_run(&state, 1).unwrap();
        assert_eq!(runs.len(), MAX_RUNS, "bounded");
        assert_eq!(runs.last(), Some(&199));
        // Damage is skipped, not fatal.
        std::fs::write(state.join(PIDS), "x\n5\n-3\n").unwrap();
        assert_eq!(note_run(&state, 2).unwrap(), [5]);
    }
}
