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

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::index::Stamp;
use crate::path::RelPath;

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

/// Beyond this many remembered closes the record starts over: files then
/// wait for their lease or `settle_ms`, as without it.
const CLOSED_MAX: usize = 1 << 16;

/// Each file's stamp when a writer last closed it (`IN_CLOSE_WRITE`),
/// forgotten when it is written to again. Kept by the watch thread.
#[derive(Default, Debug)]
pub struct Closed(Mutex<HashMap<RelPath, Stamp>>);

impl Closed {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RelPath, Stamp>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A writer closed `rel`, which now looks like `m`.
    pub fn closed(&self, rel: RelPath, m: &std::fs::Metadata) {
        let mut map = self.map();
        if map.len() >= CLOSED_MAX {
            map.clear();
        }
        map.insert(rel, Stamp::of(m));
    }

    /// `rel` was written to, truncated, removed or replaced.
    /// Forgets every record (events were lost).
    pub fn clear(&self) {
        self.map().clear();
    }

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

    /// `rel` is, as `m` shows, exactly what its writer closed.
    pub fn unchanged(&self, rel: &RelPath, m: &std::fs::Metadata) -> bool {
        self.map().get(rel) == Some(&Stamp::of(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
