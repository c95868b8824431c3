//! What a reconcile is asked to do, what it did, and how it reports
//! progress: the library never prints; the binary shows a bar through
//! [`Progress`] and prints the [`Summary`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::lease::Settle;
use crate::wire::Failure;
use syncd_proto::path::RelPath;

#[derive(Debug, Clone, Default)]
pub struct ResyncOptions {
    /// Live replication: hold back files open for writing until closed or
    /// quiet this long (see [`crate::lease`]). `None` for one-shot resync.
    pub settle: Option<Settle>,
    /// Live replication: large transfers keep running after `reconcile`
    /// returns; their outcomes come from [`super::Session::next_transfer`].
    pub detach_transfers: bool,
    /// Live replication: a durable `Commit` follows every reconcile at
    /// once, its reply carrying the metadata step's failures, so that step
    /// ends without a barrier of its own (a round trip less a batch).
    pub commit_follows: bool,
    /// Live replication: a scoped reconcile leaves out hard-linked files
    /// whose other names are outside its scope (sending one as a file would
    /// break the link on the standby) and counts them in
    /// [`Summary::deferred_links`], for a full reconcile to link them;
    /// except inodes listed here, known to have names outside the export.
    pub defer_links: Option<Arc<HashSet<(u64, u64)>>>,
    pub dry_run: bool,
    pub checksum: bool,
    pub delete: bool,
    /// The caller shows progress (pass a [`Progress`] to
    /// [`super::resync_with`]; the library itself never draws).
    pub progress: bool,
    /// Start a new generation above the standby's even when it holds newer
    /// data (`syncd resync --take-over`): its diverged files are kept in
    /// its conflicts area.
    pub take_over: bool,
    /// Live replication: a whole-tree scan watches each directory before
    /// reading it (see [`crate::watch`]).
    pub watch_dirs: Option<crate::watch::DirWatcher>,
}

/// Progress of a reconcile's content, for a bar the caller draws. Called
/// from reader threads too.
pub trait Progress: Send + Sync {
    /// About to send `bytes` of content in `files` files.
    fn start(&self, _bytes: u64, _files: usize) {}
    /// `n` more content bytes read and sent.
    fn advance(&self, _n: u64) {}
    /// `done` of the files are on their way.
    fn files(&self, _done: u64) {}
    /// The reconcile's content is sent.
    fn finish(&self) {}
}

/// Shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

#[derive(Debug, Default)]
pub struct Summary {
    pub scanned: u64,
    pub sent_whole: u64,
    pub sent_delta: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub dirs_created: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub meta_only: u64,
    pub skipped: Vec<String>,
    pub vanished: u64,
    pub content_bytes: u64,
    /// Planned content bytes of files sent whole / as deltas.
    pub bytes_whole: u64,
    pub bytes_delta: u64,
    /// Bytes of delta instructions and literals sent for delta files.
    pub delta_bytes: u64,
    /// Protocol bytes sent / received (frames, like rsync's --stats totals).
    pub wire_tx: u64,
    pub wire_rx: u64,
    /// UDP payload both ways, including QUIC and TLS overhead.
    pub udp_bytes: u64,
    pub elapsed: Duration,
    pub failures: Vec<Failure>,
    /// Files not sent because another process has them open for writing
    /// (live replication only); they go once closed.
    pub busy: Vec<RelPath>,
    /// Hard-linked files left for a full reconcile (see
    /// [`ResyncOptions::defer_links`]).
    pub deferred_links: u64,
    /// After a full scan: hard-linked inodes with names outside the export.
    pub links_outside: HashSet<(u64, u64)>,
    /// Failures beyond those listed, which the standby only counted.
    pub failures_dropped: u64,
    pub dry_run: bool,
    /// A dry run's plan, one line per change (`delete x`, `send y (n bytes)`).
    pub planned: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        for line in &self.planned {
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "{}files scanned {}, sent whole {}, sent as delta {}, deleted {}, unchanged {}",
            if self.dry_run { "(dry run) " } else { "" },
            self.scanned,
            self.sent_whole,
            self.sent_delta,
            self.deleted,
            self.unchanged
        )?;
        writeln!(f, "directories created {}, symlinks {}, hard links {}, metadata-only {}, skipped {}, vanished {}", self.dirs_created, self.symlinks, self.hard_links, self.meta_only, self.skipped.len(), self.vanished)?;
        write!(
            f,
            "changed content {:.1} MiB (delta payload {} bytes), on the wire {:.1} MiB sent + {:.1} MiB received ({} + {} bytes; {} bytes of UDP payload with QUIC overhead), time {:.2} s",
            mib(self.content_bytes),
            self.delta_bytes,
            mib(self.wire_tx),
            mib(self.wire_rx),
            self.wire_tx,
            self.wire_rx,
            self.udp_bytes,
            self.elapsed.as_secs_f64()
        )?;
        for fl in &self.failures {
            write!(f, "\nFAILED {}: {}", fl.path, fl.error)?;
        }
        if self.failures_dropped > 0 {
            write!(
                f,
                "\nFAILED {} more files, not listed by the standby; run the resync again",
                self.failures_dropped
            )?;
        }
        Ok(())
    }
}
