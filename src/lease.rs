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

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::index::Stamp;

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

mod closed;

use closed::ctime_of;
pub use closed::margin;
pub use closed::{fine_slack, probe_fine_ctime, proof_point, trust, Closed, Trust};

#[cfg(test)]
mod tests;
