//! "Is anyone writing this file right now?", answered by the kernel.
//!
//! A read lease (`F_SETLEASE`, `F_RDLCK`) is refused while any process has
//! the file open for writing, and is broken when one opens it for writing or
//! truncates it. Holding one while a file is read proves the copy is of a
//! closed, unchanging file: what inotify cannot say for a rewrite that starts
//! after its close event was seen. Needs to own the file or CAP_LEASE (root);
//! where leases are unavailable the caller falls back to stamp checks.
//!
//! A file server keeps descriptors open after its client is done: nfs-ganesha
//! closes the descriptor of an NFSv4 OPEN at the client's CLOSE (so
//! `IN_CLOSE_WRITE` arrives), but keeps another one, opened for writing,
//! cached for later requests. The lease is then refused for as long as the
//! server likes. [`Closed`] is the rule for that case: a file whose writer
//! closed it and which has not changed since (same size, mtime, ctime and
//! inode as at the close) is complete, whoever still holds it open; it is
//! read without a lease, and the read is checked by those stamps instead.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::index::Stamp;
use syncd_proto::path::RelPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Nobody writes it; a writer that arrives breaks the lease.
    Held,
    /// Open for writing by someone right now.
    Busy,
    /// Leases not possible here (filesystem, permissions, disabled).
    Unsupported,
}

/// Ignore SIGIO, the lease-break notification: we poll the lease instead,
/// and the default action would terminate the process.
pub fn ignore_break_signal() {
    // SAFETY: installs SIG_IGN for SIGIO; no handler code runs.
    unsafe {
        libc::signal(libc::SIGIO, libc::SIG_IGN);
    }
}

/// Tries to take a read lease on `f` (opened read-only).
pub fn take(f: &File) -> Lease {
    // SAFETY: plain fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if r == 0 {
        return Lease::Held;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) => Lease::Busy,
        _ => Lease::Unsupported,
    }
}

/// Still held: no writer opened or truncated the file since [`take`].
pub fn intact(f: &File) -> bool {
    // SAFETY: as above.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLEASE) };
    r == libc::F_RDLCK
}

/// How live replication treats a file someone has open for writing.
#[derive(Clone, Debug)]
pub struct Settle {
    /// Shipped anyway after this much quiet (`settle_ms`).
    pub quiet: Duration,
    /// Files closed by a writer, as they were then.
    pub closed: Arc<Closed>,
}

impl Settle {
    /// How long until `m`, held open for writing by someone, has been
    /// quiet for `quiet` (zero: it has); see [`quiet_left`].
    pub fn quiet_left(&self, m: &std::fs::Metadata) -> Option<Duration> {
        quiet_left(ctime_of(&Stamp::of(m)), SystemTime::now(), self.quiet)
    }
}

/// The settle rule on times alone: how long until a file last changed at
/// `ctime` has been quiet for `quiet` (zero: it has). The ctime, because
/// the kernel sets it at every change and nobody can set it otherwise: an
/// mtime can be anything, and an NFSv4 exclusive create stores its
/// verifier there (decades ahead) until the first WRITE, so a file whose
/// client was cut off between OPEN and WRITE (a switchover's fence) would
/// never look quiet by it. `None`: no ctime to go by (a time `SystemTime`
/// cannot hold), or one ahead of the clock (it was stepped back): not quiet.
pub fn quiet_left(ctime: Option<SystemTime>, now: SystemTime, quiet: Duration) -> Option<Duration> {
    let age = now.duration_since(ctime?).ok()?;
    Some(quiet.saturating_sub(age))
}

/// Beyond this many remembered closes the record starts over: files then
/// wait for their lease or `settle_ms`, as without it.
const CLOSED_MAX: usize = 1 << 16;

/// How long a reader waits for the watch thread to reach a sync point.
const SYNC_WAIT: Duration = Duration::from_millis(50);
/// Shortest wait before a young record is looked at again.
const RECHECK_MIN: Duration = Duration::from_millis(1);
/// Wait before looking again when the watch thread was not seen in time.
const RECHECK_BEHIND: Duration = Duration::from_millis(5);

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
#[derive(Debug)]
pub struct Closed {
    map: Mutex<HashMap<RelPath, Stamp>>,
    sync: Mutex<SyncState>,
    acked: Condvar,
    cookie: OnceLock<Cookie>,
    margin: Duration,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Cookies made and not yet seen, oldest first: number, when made.
    asked: VecDeque<(u64, SystemTime)>,
    next: u64,
    /// Every event queued before this time has been handled.
    drained: Option<SystemTime>,
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

/// The rule, on times alone: a record whose file has `ctime` is trusted
/// once every event queued before `ctime + margin` is known handled
/// (`drained`). `margin` covers the coarse clock the kernel stamps files
/// with (a stamp is up to one tick older than the write that set it) and
/// the time from that stamp to the write's event (queued when the write
/// returns).
pub fn trust(
    ctime: SystemTime,
    drained: Option<SystemTime>,
    now: SystemTime,
    margin: Duration,
) -> Trust {
    let Some(at) = ctime.checked_add(margin) else {
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

/// Two ticks of the kernel's coarse clock (the file timestamp granularity,
/// `CONFIG_HZ`) plus 2 ms for a write to return after stamping the file.
fn margin() -> Duration {
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

/// `None` for a time `SystemTime` cannot hold (a corrupt inode).
fn ctime_of(s: &Stamp) -> Option<SystemTime> {
    let (sec, nsec) = s.ctime;
    let base = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    base?.checked_add(Duration::from_nanos(u64::from(nsec)))
}

impl Closed {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RelPath, Stamp>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A writer closed `rel`, which now looks like `m`.
    pub fn closed(&self, rel: RelPath, m: &std::fs::Metadata) {
        let mut map = self.map();
        if map.len() >= CLOSED_MAX {
            map.clear();
        }
        map.insert(rel, Stamp::of(m));
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
    /// but not its content: still the closed file, now looking like `m`.
    pub fn moved(&self, from: &RelPath, to: RelPath, m: &std::fs::Metadata) {
        let mut map = self.map();
        if map.remove(from).is_some() {
            map.insert(to, Stamp::of(m));
        }
    }

    /// `rel` is, as `m` shows, exactly what its writer closed, and every
    /// event that could say otherwise has been handled. May wait up to
    /// [`SYNC_WAIT`] for the watch thread.
    pub fn unchanged(&self, rel: &RelPath, m: &std::fs::Metadata) -> bool {
        let stamp = Stamp::of(m);
        if self.map().get(rel) != Some(&stamp) {
            return false;
        }
        let Some((ctime, at)) =
            ctime_of(&stamp).and_then(|c| Some((c, c.checked_add(self.margin)?)))
        else {
            return false;
        };
        let drained = self.state().drained;
        match trust(ctime, drained, SystemTime::now(), self.margin) {
            Trust::Yes => true,
            Trust::Wait(_) => false,
            Trust::Sync => {
                let drained = self.sync_watch(at);
                // Still recorded once the events before the sync point are
                // handled: no write dropped it.
                drained.is_some_and(|d| d >= at) && self.map().get(rel) == Some(&stamp)
            }
        }
    }

    /// The record matches `m` (trusted or not).
    #[cfg(test)]
    pub(crate) fn recorded(&self, rel: &RelPath, m: &std::fs::Metadata) -> bool {
        self.map().get(rel) == Some(&Stamp::of(m))
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
        let stamp = Stamp::of(m);
        if self.map().get(rel) != Some(&stamp) {
            return None;
        }
        let now = SystemTime::now();
        let at = ctime_of(&stamp)?.checked_add(self.margin)?;
        match at.duration_since(now) {
            Ok(left) => Some(left.clamp(RECHECK_MIN, limit)),
            // Past it and still not trusted: the watch thread is behind.
            // Try again soon, but a record that stays unproven for
            // `limit` is left to the settle rule.
            Err(e) if e.duration() < limit => Some(RECHECK_BEHIND),
            Err(_) => None,
        }
    }

    /// Makes the private directory for sync cookies (see [`Closed`]);
    /// the watch must then watch it. Without it no record is trusted.
    pub(crate) fn make_cookie_dir(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "syncd-watch-{}-{}",
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
            while st.asked.front().is_some_and(|(k, _)| *k <= n) {
                if let Some((_, t)) = st.asked.pop_front() {
                    st.drained = Some(st.drained.map_or(t, |d| d.max(t)));
                }
            }
            self.acked.notify_all();
        }
        true
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
        if st.asked.back().is_none_or(|(_, t)| *t < want) {
            let made = SystemTime::now();
            let n = st.next;
            st.next += 1;
            let p = cookie.dir.join(format!("c{n}"));
            if let Err(e) = std::fs::create_dir(&p) {
                tracing::debug!("watch sync cookie {}: {e}", p.display());
                return st.drained;
            }
            let _ = std::fs::remove_dir(&p);
            st.asked.push_back((n, made));
        }
        let deadline = std::time::Instant::now() + SYNC_WAIT;
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
        st.drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The rule on a simulated clock. A server writes through its cached
    /// descriptor at `w` after its client's CLOSE, before the watch thread
    /// handled that close: the record then holds the written file's stamps
    /// (its ctime is `w` on a coarse clock, up to a tick earlier), and the
    /// write's own event is queued when the write returns.
    #[test]
    fn a_record_is_trusted_only_once_the_watch_is_drained_past_it() {
        let tick = ms(4);
        let margin = tick * 2 + ms(2);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let w = t0 + ms(1);
        let ctime = w - ms(3); // the coarse clock's last tick
        let event = w + ms(1); // the write returns: its event is queued
                               // Drained to just before the write's event: the record may be the
                               // partial file, so it is not trusted, however late we look.
        for now in [w, w + ms(5), w + Duration::from_secs(60)] {
            assert_ne!(trust(ctime, Some(event - ms(1)), now, margin), Trust::Yes);
        }
        // Too young to sync: wait for just the rest of the margin.
        assert_eq!(
            trust(ctime, None, ctime + ms(4), margin),
            Trust::Wait(margin - ms(4))
        );
        // Old enough: a sync point is needed, and a sync point made after
        // ctime + margin is after the write's event, which drops the record.
        assert_eq!(trust(ctime, None, ctime + margin, margin), Trust::Sync);
        assert!(ctime + margin >= event, "the margin covers tick and write");
        assert_eq!(
            trust(ctime, Some(ctime + margin), ctime + margin, margin),
            Trust::Yes
        );
        // A same-size rewrite within the tick of the record leaves the
        // stamps as they were; its event is queued before ctime + margin,
        // so a drain point that does not cover it does not trust either.
        let rewrite_event = ctime + tick - ms(1) + ms(2);
        assert_ne!(
            trust(ctime, Some(rewrite_event - ms(1)), ctime + ms(30), margin),
            Trust::Yes
        );
        assert!(rewrite_event <= ctime + margin);
    }

    /// Quiet is counted from the ctime, whatever the mtime says.
    #[test]
    fn a_file_is_quiet_by_its_ctime_not_its_mtime() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let quiet = ms(500);
        assert_eq!(quiet_left(Some(now - ms(600)), now, quiet), Some(ms(0)));
        assert_eq!(quiet_left(Some(now - ms(200)), now, quiet), Some(ms(300)));
        // A ctime ahead of the clock (stepped back) or unknown: not quiet.
        assert_eq!(quiet_left(Some(now + ms(1)), now, quiet), None);
        assert_eq!(quiet_left(None, now, quiet), None);
    }

    #[test]
    fn the_margin_is_at_least_two_ticks_of_the_file_clock() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `margin`.
        assert_eq!(
            unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut ts) },
            0
        );
        let tick = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        assert!(margin() >= tick.min(ms(10)) * 2 + ms(2), "{:?}", margin());
    }

    #[test]
    fn a_writer_makes_the_file_busy_and_breaks_a_lease() {
        ignore_break_signal();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let r = File::open(&p).unwrap();
        if take(&r) == Lease::Unsupported {
            syncd_testkit::skip::skip(
                "a_writer_makes_the_file_busy_and_breaks_a_lease",
                "file leases are not supported here",
            );
            return;
        }
        assert!(intact(&r));
        drop(r);
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        let r = File::open(&p).unwrap();
        assert_eq!(take(&r), Lease::Busy, "open for writing elsewhere");
        w.write_all(b"y").unwrap();
        drop(w);
        drop(r);
        let r = File::open(&p).unwrap();
        assert_eq!(take(&r), Lease::Held);
        // A writer arriving breaks it (the opener waits for our release or the
        // break timeout, so it runs on another thread).
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            std::fs::OpenOptions::new().append(true).open(p2).unwrap();
        });
        let t0 = std::time::Instant::now();
        while intact(&r) && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!intact(&r));
        drop(r);
        t.join().unwrap();
    }
}
