//! [`Closed`]: which files a writer closed and nobody changed since, and
//! when such a record may be trusted (sync cookies through the watch).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::index::Stamp;
use syncd_proto::path::RelPath;

/// Beyond this many remembered closes the record starts over: files then
/// wait for their lease or `settle_ms`, as without it.
const CLOSED_MAX: usize = 1 << 16;

/// How long a reader waits for the watch thread to reach a sync point.
const SYNC_WAIT: Duration = Duration::from_millis(50);
/// Shortest wait before a young record is looked at again.
const RECHECK_MIN: Duration = Duration::from_millis(1);
/// A reader finding a record this close to its proof point waits for it
/// (then syncs) rather than leave the file to a later batch: with group
/// commit that costs the whole next batch (measured: 25 ms batches under
/// load made such files 60-80 ms late).
const WAIT_IN_READ: Duration = Duration::from_millis(3);
/// Wait before looking again when the watch thread was not seen in time
/// (a sync cookie has waited longer than [`SYNC_WAIT`]).
const RECHECK_BEHIND: Duration = Duration::from_millis(5);
/// The longest a `write` takes from stamping the file to returning, when
/// its event is queued: the rule's one assumption about writers.
const WRITE_RETURN: Duration = Duration::from_millis(2);
/// Changes made on the probe's unnamed file, each right after reading its
/// ctime (see [`probe_fine_ctime`]).
const PROBE_WRITES: u8 = 32;

/// Each file's stamp when a writer last closed it (`IN_CLOSE_WRITE`),
/// forgotten when it is written to again. Kept by the watch thread.
///
/// The stamp is taken when the watch thread *handles* the close, which may
/// be after further writes through a server's cached descriptor whose own
/// events are still queued: such a record describes a file in progress. So
/// a record is trusted only once the watch thread is known to have handled
/// every event queued up to a point `margin` past the file's ctime (see
/// [`trust`]): a write that a record could hide was the file's last change
/// (it set the ctime the stamp holds) or fell in that ctime's tick (it left
/// it), so its event was queued by then and has dropped the record. The point is a sync
/// cookie: a directory made in a private directory that this inotify
/// instance also watches, queued behind everything before it (watchman's
/// cookie files); each has its own name, so none is merged or mistaken.
///
/// On a filesystem whose files get a new ctime at any change after their
/// ctime was read (the kernel's multigrain timestamps: Linux 6.13 on ext4,
/// xfs, btrfs, tmpfs; [`probe_fine_ctime`] finds out), a write the record
/// could hide began before the watch thread's own stat (any later one
/// changes the ctime the record holds), so its event is queued within
/// [`fine_slack`] of that stat (if it returns as fast as the coarse rule
/// assumes at worst): a point usually before the coarse margin runs out
/// (see [`proof_point`]).
///
/// Both rest on a change's event following its stamp soon; a truncate or
/// a long write may not, so the reader also waits for any change running on
/// the file and syncs past that ([`finish_in_progress`]).
#[derive(Debug)]
pub struct Closed {
    map: Mutex<HashMap<RelPath, Record>>,
    sync: Mutex<SyncState>,
    acked: Condvar,
    cookie: OnceLock<Cookie>,
    margin: Duration,
    /// The device of the filesystem found to give every change after a
    /// read of the ctime a new ctime.
    fine: OnceLock<u64>,
}

/// A file as its writer closed it, and from when on that may be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    stamp: Stamp,
    /// Every event that could show a write hidden by `stamp` is queued by
    /// then (see [`proof_point`]); `None`: never provable.
    proof: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Cookies made and not yet seen, oldest first: number, when made.
    asked: VecDeque<(u64, SystemTime)>,
    next: u64,
    /// Every event queued before this time has been handled.
    drained: Option<SystemTime>,
    /// The highest cookie number handled (so every one before it).
    seen: Option<u64>,
    /// The cookie directory is not watched: no cookie would ever be seen.
    off: bool,
}

/// Cookie directories are `<tmp>/syncd-watch-<pid>-<nanoseconds>`.
const COOKIE_DIR_PREFIX: &str = "syncd-watch-";

/// Removes the cookie directories of daemons that are gone: a killed one
/// never drops its [`Cookie`], and one directory per kill would pile up
/// in `/tmp`. Only this user's, only of pids no process has now (a pid
/// reused since keeps its old directory: harmless, and rare).
pub(super) fn sweep_cookie_dirs_of_the_dead(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(names) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for e in names.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(COOKIE_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let Some(pid) = pid else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && m.uid() == me => {
                let _ = std::fs::remove_dir_all(&path);
            }
            _ => {}
        }
    }
}

/// The private directory cookies are made in; removed with the watch.
#[derive(Debug)]
struct Cookie {
    dir: PathBuf,
}

impl Drop for Cookie {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Default for Closed {
    fn default() -> Self {
        Closed {
            map: Mutex::default(),
            sync: Mutex::default(),
            acked: Condvar::new(),
            cookie: OnceLock::new(),
            margin: margin(),
            fine: OnceLock::new(),
        }
    }
}

/// What the record says about a file that someone holds open for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Complete: the record matches and is old enough.
    Yes,
    /// Matches, but the watch thread must first be seen past `margin`
    /// beyond the ctime: sync with it now.
    Sync,
    /// Matches, but too young: look again after this long.
    Wait(Duration),
}

/// When a record may be proven: the time by which every event that could
/// show a write hidden by the record is queued. Always `ctime + margin`:
/// `margin` covers the coarse clock the kernel stamps files with (a stamp
/// is up to one tick older than the write that set it, and a write in the
/// same tick leaves it) and the time from that stamp to the write's event
/// (queued when the write returns). With `stat_at`, the time the record's
/// stat was taken on a filesystem where every change after a read of the
/// ctime gets a new one, a hidden write began before that stat, so its
/// event is queued by `stat_at +` [`fine_slack`]; whichever comes first.
pub fn proof_point(
    ctime: Option<SystemTime>,
    margin: Duration,
    stat_at: Option<SystemTime>,
) -> Option<SystemTime> {
    let coarse = ctime.and_then(|c| c.checked_add(margin));
    // A write may be stamped (its ctime visible) and still running when the
    // watch thread stats the file; it must get no less time to return than
    // the coarse rule gives at worst (one tick plus WRITE_RETURN: margin is
    // two ticks plus WRITE_RETURN, and a coarse stamp can be a tick old).
    let fine = stat_at.and_then(|s| s.checked_add(fine_slack(margin)));
    match (coarse, fine) {
        (Some(c), Some(f)) => Some(c.min(f)),
        (c, f) => c.or(f),
    }
}

/// How long after the close's stat a hidden write has to return on a
/// filesystem of fine ctimes: one tick plus [`WRITE_RETURN`], the least the
/// coarse rule's `margin` (two ticks plus it) leaves a write.
pub fn fine_slack(margin: Duration) -> Duration {
    let tick = margin.saturating_sub(WRITE_RETURN) / 2;
    tick + WRITE_RETURN
}

/// The rule, on times alone: a record is trusted once every event queued
/// before its proof point `at` ([`proof_point`]) is known handled
/// (`drained`).
pub fn trust(at: Option<SystemTime>, drained: Option<SystemTime>, now: SystemTime) -> Trust {
    let Some(at) = at else {
        return Trust::Wait(Duration::MAX);
    };
    if drained.is_some_and(|d| d >= at) {
        Trust::Yes
    } else if now >= at {
        Trust::Sync
    } else {
        Trust::Wait(at.duration_since(now).unwrap_or_default())
    }
}

/// What a reader does with a verdict: a record at most [`WAIT_IN_READ`]
/// short of its proof point is waited for in the read (sleep this long,
/// then sync), since leaving the file to a later batch costs more.
pub(super) fn in_read(verdict: Trust) -> (Option<Duration>, Trust) {
    match verdict {
        Trust::Wait(d) if d <= WAIT_IN_READ => (Some(d), Trust::Sync),
        v => (None, v),
    }
}

/// Waits until no change that has already stamped `f` is still running,
/// and returns the time after: `SEEK_DATA` takes the inode's lock (on ext4,
/// btrfs and tmpfs), which a write holds from stamping the file until its
/// data is in, and a truncate until its event is queued. A write's event
/// follows its unlock at once; a truncate's comes before it. Elsewhere
/// (no such lock) it returns at once and the margin alone applies.
pub(crate) fn finish_in_progress(f: &std::fs::File) -> SystemTime {
    // ENXIO (no data at or past 0: an empty file) comes after the lock too.
    let _ = rustix::fs::seek(f, rustix::fs::SeekFrom::Data(0));
    SystemTime::now()
}

/// Two ticks of the kernel's coarse clock (the file timestamp granularity,
/// `CONFIG_HZ`) plus 2 ms for a write to return after stamping the file.
pub fn margin() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes one timespec we own.
    let r = unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    let tick = if r == 0 && ts.tv_sec == 0 && ts.tv_nsec > 0 {
        Duration::from_nanos(ts.tv_nsec as u64)
    } else {
        Duration::from_millis(10)
    };
    tick.clamp(Duration::from_millis(1), Duration::from_millis(10)) * 2 + Duration::from_millis(2)
}

/// The device of `dir`'s filesystem if a change to a file there after its
/// ctime was read always gets a new ctime (the kernel's multigrain
/// timestamps; a coarse clock leaves it as it was within a tick): tried on
/// an unnamed file (`O_TMPFILE`: no name, gone at close; its events
/// still reach a watch on `dir`, so probe before watching it), each
/// of [`PROBE_WRITES`] writes right after a read. `Ok(None)`: a change
/// kept its ctime (a coarse clock); `Err`: it cannot be tried (read-only,
/// no `O_TMPFILE`, a full disk). Either way the coarse margin alone.
pub fn probe_fine_ctime(dir: &Path) -> std::io::Result<Option<u64>> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::{FileExt, MetadataExt};
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let f = std::fs::File::from(fd);
    let m = f.metadata()?;
    let mut last = (m.ctime(), m.ctime_nsec());
    for i in 0..PROBE_WRITES {
        f.write_at(&[i], 0)?;
        let m = f.metadata()?;
        let c = (m.ctime(), m.ctime_nsec());
        if c == last {
            return Ok(None);
        }
        last = c;
    }
    Ok(Some(m.dev()))
}

/// `None` for a time `SystemTime` cannot hold (a corrupt inode).
pub(super) fn ctime_of(s: &Stamp) -> Option<SystemTime> {
    let (sec, nsec) = s.ctime;
    let base = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    base?.checked_add(Duration::from_nanos(u64::from(nsec)))
}

impl Closed {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RelPath, Record>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files on the filesystem of device `dev` get a new ctime at any
    /// change after a read of it (see [`probe_fine_ctime`]).
    pub fn set_fine_ctime(&self, dev: u64) {
        let _ = self.fine.set(dev);
    }

    /// The record of `m`, just read (so from now on, on a filesystem of
    /// fine ctimes, any change gives it a new ctime).
    fn record(&self, m: &std::fs::Metadata) -> Record {
        use std::os::unix::fs::MetadataExt;
        let stamp = Stamp::of(m);
        // Taken after the stat: later is the safe side.
        let stat_at = (self.fine.get() == Some(&m.dev())).then(SystemTime::now);
        Record {
            stamp,
            proof: proof_point(ctime_of(&stamp), self.margin, stat_at),
        }
    }

    /// A writer closed `rel`, which now looks like `m` (just read).
    pub fn closed(&self, rel: RelPath, m: &std::fs::Metadata) {
        let r = self.record(m);
        let mut map = self.map();
        if map.len() >= CLOSED_MAX {
            map.clear();
        }
        map.insert(rel, r);
    }

    /// Forgets every record (events were lost).
    pub fn clear(&self) {
        self.map().clear();
    }

    /// `rel` was written to, truncated, removed or replaced.
    pub fn forget(&self, rel: &RelPath) {
        self.map().remove(rel);
    }

    /// Its metadata changed (chmod, utimes) or it was renamed to `to`,
    /// but not its content: still the closed file, now looking like `m`
    /// (just read).
    pub fn moved(&self, from: &RelPath, to: RelPath, m: &std::fs::Metadata) {
        let r = self.record(m);
        let mut map = self.map();
        if map.remove(from).is_some() {
            map.insert(to, r);
        }
    }

    /// The record of `rel` if it matches `m`.
    fn matching(&self, rel: &RelPath, m: &std::fs::Metadata) -> Option<Record> {
        let stamp = Stamp::of(m);
        self.map().get(rel).copied().filter(|r| r.stamp == stamp)
    }

    /// `rel` (open as `f`) is, as `m` shows, exactly what its writer
    /// closed, and every event that could say otherwise has been handled.
    /// May wait up to [`SYNC_WAIT`] for the watch thread, and for a change
    /// in progress on the file (see [`finish_in_progress`]).
    pub fn unchanged(&self, rel: &RelPath, f: &std::fs::File, m: &std::fs::Metadata) -> bool {
        let Some(rec) = self.matching(rel, m) else {
            return false;
        };
        let Some(at) = rec.proof else {
            return false;
        };
        let drained = self.state().drained;
        let (sleep, verdict) = in_read(trust(Some(at), drained, SystemTime::now()));
        if let Some(d) = sleep {
            std::thread::sleep(d);
        }
        if matches!(verdict, Trust::Wait(_)) {
            return false;
        }
        // Proven by the margin alone, the record still rests on how soon a
        // change's event follows its stamp: a truncate freeing blocks or a
        // long write can stamp the file and queue its event much later
        // (seen once under load: an empty file shipped as closed). Wait for
        // any change in progress, then sync past that point too.
        let want = at.max(finish_in_progress(f));
        let drained = self.sync_watch(want);
        // Still recorded once the events before the sync point are handled:
        // no write dropped it.
        drained.is_some_and(|d| d >= want) && self.matching(rel, m) == Some(rec)
    }

    /// The record matches `m` (trusted or not).
    #[cfg(test)]
    pub(crate) fn recorded(&self, rel: &RelPath, m: &std::fs::Metadata) -> bool {
        self.matching(rel, m).is_some()
    }

    /// For a file held back although a writer closed it: when to look again
    /// (its record matches but is young), or `None` (a writer is at work:
    /// its close or `settle_ms` of quiet decides). Bounded by `limit`.
    pub fn recheck_in(
        &self,
        rel: &RelPath,
        m: &std::fs::Metadata,
        limit: Duration,
    ) -> Option<Duration> {
        let rec = self.matching(rel, m)?;
        if !self.can_sync() {
            return None;
        }
        let now = SystemTime::now();
        let at = rec.proof?;
        match at.duration_since(now) {
            // Not `clamp`: `limit` (settle_ms) may be under RECHECK_MIN.
            Ok(left) => Some(left.max(RECHECK_MIN).min(limit)),
            // Past it and still not trusted. Most often the margin ran out
            // while the file's batch was in flight: no sync was tried, so
            // look again at once, in the very next batch (a millisecond
            // later missed it: the next batch starts as this one ends). If
            // a cookie is overdue the watch thread is behind: back off a
            // little. A record that stays unproven for `limit` is left to
            // the settle rule.
            Err(e) if e.duration() < limit => Some(if self.behind(now) {
                RECHECK_BEHIND
            } else {
                Duration::ZERO
            }),
            Err(_) => None,
        }
    }

    /// Sync cookies can be made and seen: without them no record is ever
    /// trusted, and `settle_ms` decides.
    fn can_sync(&self) -> bool {
        self.cookie.get().is_some() && !self.state().off
    }

    /// A sync cookie made over [`SYNC_WAIT`] ago is still not seen.
    fn behind(&self, now: SystemTime) -> bool {
        self.state()
            .asked
            .front()
            .is_some_and(|(_, made)| now.duration_since(*made).is_ok_and(|d| d >= SYNC_WAIT))
    }

    /// Makes the private directory for sync cookies (see [`Closed`]);
    /// the watch must then watch it. Without it no record is trusted.
    pub(crate) fn make_cookie_dir(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let tmp = std::env::temp_dir();
        sweep_cookie_dirs_of_the_dead(&tmp);
        let dir = tmp.join(format!(
            "{COOKIE_DIR_PREFIX}{}-{}",
            std::process::id(),
            now.as_nanos()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let _ = self.cookie.set(Cookie { dir: dir.clone() });
        Ok(dir)
    }

    /// If `p` is a cookie, notes that the watch thread handled it (so every
    /// event queued before it) and returns true.
    pub(crate) fn cookie_seen(&self, p: &Path) -> bool {
        let Some(c) = self.cookie.get() else {
            return false;
        };
        if p.parent() != Some(c.dir.as_path()) {
            return p == c.dir;
        }
        let n = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix('c'))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            let mut st = self.state();
            // Earlier cookies were queued before this one: covered too.
            st.seen = Some(st.seen.map_or(n, |s| s.max(n)));
            while st.asked.front().is_some_and(|(k, _)| *k <= n) {
                if let Some((_, t)) = st.asked.pop_front() {
                    st.drained = Some(st.drained.map_or(t, |d| d.max(t)));
                }
            }
            self.acked.notify_all();
        }
        true
    }

    /// Makes a cookie now, without waiting for it: once
    /// [`Closed::cookie_reached`] its number, every event queued before
    /// this call has been handled. `None`: no sync point here.
    pub fn ask_sync(&self) -> Option<u64> {
        let cookie = self.cookie.get()?;
        let mut st = self.state();
        Self::make_cookie(cookie, &mut st).map(|(n, _)| n)
    }

    /// The watch thread has handled cookie `n` (from [`Closed::ask_sync`]),
    /// so every event queued before it: by number, not by time, which a
    /// clock step would mislead.
    pub fn cookie_reached(&self, n: u64) -> bool {
        self.state().seen.is_some_and(|s| s >= n)
    }

    /// The cookie directory could not be watched: make no cookies (none
    /// would be seen), so callers take their fallback at once.
    pub(crate) fn cookies_off(&self) {
        self.state().off = true;
    }

    fn make_cookie(cookie: &Cookie, st: &mut SyncState) -> Option<(u64, SystemTime)> {
        if st.off {
            return None;
        }
        let made = SystemTime::now();
        let n = st.next;
        st.next += 1;
        let p = cookie.dir.join(format!("c{n}"));
        if let Err(e) = std::fs::create_dir(&p) {
            tracing::debug!("watch sync cookie {}: {e}", p.display());
            return None;
        }
        let _ = std::fs::remove_dir(&p);
        st.asked.push_back((n, made));
        Some((n, made))
    }

    /// Waits (bounded) until the watch thread is seen past `want` (not in
    /// the future), making a cookie unless one made since serves; returns
    /// the drained point then.
    fn sync_watch(&self, want: SystemTime) -> Option<SystemTime> {
        let cookie = self.cookie.get()?;
        let mut st = self.state();
        if st.drained.is_some_and(|d| d >= want) {
            return st.drained;
        }
        // Readers of many young files share one cookie.
        if st.asked.back().is_none_or(|(_, t)| *t < want)
            && Self::make_cookie(cookie, &mut st).is_none()
        {
            return st.drained;
        }
        let start = std::time::Instant::now();
        let deadline = start + SYNC_WAIT;
        while st.drained.is_none_or(|d| d < want) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .acked
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // A reader waiting on the watch thread waits with its whole batch.
        let waited = start.elapsed();
        if waited >= Duration::from_millis(1) {
            tracing::debug!(
                waited_us = waited.as_micros() as u64,
                reached = st.drained.is_some_and(|d| d >= want),
                "synced with the watch thread"
            );
        }
        st.drained
    }
}
