//! The durable side of the follower's ledger (`syncd_proto::pair::local`):
//! per path, the stamp of what syncd last put there, so that a write made
//! on this node by anything else is told apart, also after a restart.
//!
//! `<state_dir>/placed.bin` is a snapshot (magic, version, sequence
//! number, postcard: the records and what is expected);
//! `<state_dir>/placed.log` the changes since, appended as they happen
//! (a header naming the snapshot's sequence number, then length-prefixed
//! postcard records) and flushed with each commit's `syncfs`, before the
//! commit is acknowledged. A restart replays the log up to its first
//! damaged record (a crash mid-append), and only beside the snapshot it
//! names. No snapshot means no valid ledger (never rebased, or this node
//! led since): nothing is reported until the next catch-up rebases it.
//!
//! A compaction writes both files aside and renames them in, the snapshot
//! first: a kill at any point leaves either the old pair or a new snapshot
//! (whose expectations are in it) beside a log it ignores.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::index::Stamp;
use syncd_proto::pair::local::{Change, Ledger, Origin, Rebased};

const SNAPSHOT: &str = "placed.bin";
const LOG: &str = "placed.log";
const MAGIC: &[u8; 8] = b"SYNCDPLC";
/// 2: a sequence number, and the expectations, in the snapshot; a header
/// in the log. An older syncd finds a version-2 snapshot damaged and
/// reports nothing until its next catch-up (never a false alarm).
const VERSION: u32 = 2;
/// Version 1: records only, and a log without a header.
const VERSION_1: u32 = 1;
const LOG_MAGIC: &[u8; 8] = b"SYNCDPLL";
const LOG_HEADER: usize = 16;
/// A record longer than this is damage, not a record (paths are bounded
/// far below it).
const MAX_RECORD: usize = 1 << 16;
/// The log is folded into a snapshot once it is this big.
const COMPACT_AT: u64 = 32 << 20;

pub(super) struct Placed {
    ledger: Ledger<Stamp>,
    dir: PathBuf,
    /// Buffered: one write per commit, not per file.
    log: Option<io::BufWriter<std::fs::File>>,
    /// Bytes of records in the log (its header not counted).
    log_len: u64,
    /// Appended since the last flush.
    unsynced: bool,
    /// The snapshot's sequence number, which its log's header names.
    seq: u64,
    /// The snapshot on disk is version 1 (its rewrite failed): the log
    /// goes on without a header, as it expects.
    legacy: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("placed-file ledger {path}: {err}")]
pub(super) struct PlacedError {
    path: String,
    err: io::Error,
}

/// A ctime of zero: not comparable (see [`same`]).
pub(super) const NO_CTIME: (i64, u32) = (0, 0);

/// Whether `cur` is still what syncd recorded as `rec`: same inode, size
/// and mtime, and the same ctime unless either could not be kept (an inode
/// with several names changes ctime whenever one of them is made or
/// removed, which syncd's own links and deletes do).
pub(super) fn same(rec: &Stamp, cur: &Stamp) -> bool {
    rec.ino == cur.ino
        && rec.size == cur.size
        && rec.mtime == cur.mtime
        && (rec.ctime == cur.ctime || rec.ctime == NO_CTIME || cur.ctime == NO_CTIME)
}

/// A snapshot as read: its sequence number (none: version 1), records and
/// expectations.
type Snapshot = (Option<u64>, Vec<(Vec<u8>, Stamp)>, Vec<(Vec<u8>, Stamp)>);

fn decode_snapshot(b: &[u8]) -> Option<Snapshot> {
    let rest = b.strip_prefix(MAGIC.as_slice())?;
    let (v, rest) = rest.split_first_chunk::<4>()?;
    match u32::from_le_bytes(*v) {
        VERSION_1 => Some((None, postcard::from_bytes(rest).ok()?, Vec::new())),
        VERSION => {
            let (seq, rest) = rest.split_first_chunk::<8>()?;
            let (entries, expected) = postcard::from_bytes(rest).ok()?;
            Some((Some(u64::from_le_bytes(*seq)), entries, expected))
        }
        _ => None,
    }
}

fn log_header(seq: u64) -> [u8; LOG_HEADER] {
    let mut h = [0; LOG_HEADER];
    h[..8].copy_from_slice(LOG_MAGIC);
    h[8..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// The records of the log `b` that belong to the snapshot `seq` (none:
/// version 1, whose log has no header); `None`: a log the snapshot already
/// holds (a kill between a compaction's two renames).
fn log_body(b: &[u8], seq: Option<u64>) -> Option<&[u8]> {
    match seq {
        None => Some(b),
        Some(_) if b.is_empty() => Some(b),
        Some(seq) => b.strip_prefix(log_header(seq).as_slice()),
    }
}

/// A sequence number no earlier log names (nanoseconds since the epoch).
fn fresh_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = crate::state::create_private(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The records of a log, up to the first damaged one; and the length of
/// the good part.
fn decode_log(b: &[u8]) -> (Vec<Change<Stamp>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((len, rest)) = b[at..].split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_RECORD || rest.len() < len {
            break;
        }
        let Ok(c) = postcard::from_bytes(&rest[..len]) else {
            break;
        };
        out.push(c);
        at += 4 + len;
    }
    (out, at)
}

impl Placed {
    /// Loads the ledger kept in `dir`; anything unreadable leaves it
    /// invalid (reports nothing), never an error at start.
    pub(super) fn load(dir: &Path) -> Placed {
        let mut p = Placed {
            ledger: Ledger::invalid(),
            dir: dir.to_path_buf(),
            log: None,
            log_len: 0,
            unsynced: false,
            // No snapshot: a log left beside none (a kill inside an
            // invalidation) must not name the first one written.
            seq: fresh_seq(),
            legacy: false,
        };
        let snap = match crate::state::read_private(&dir.join(SNAPSHOT)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return p,
            Err(e) => {
                tracing::warn!("{SNAPSHOT}: {e}; local writes on this node go unnoticed until the next catch-up");
                return p;
            }
        };
        let Some((seq, entries, expected)) = decode_snapshot(&snap) else {
            tracing::warn!("{SNAPSHOT} is damaged; local writes on this node go unnoticed until the next catch-up");
            return p;
        };
        p.ledger = Ledger::rebased(entries);
        for (path, s) in expected {
            p.ledger.apply(&Change::Expect(path, s));
        }
        p.seq = seq.unwrap_or(p.seq);
        p.legacy = seq.is_none();
        let log = crate::state::read_private(&dir.join(LOG)).unwrap_or_default();
        let (body, stale) = match log_body(&log, seq) {
            Some(b) => (b, false),
            None => {
                tracing::info!("{LOG} predates {SNAPSHOT}, which holds its changes: ignored");
                (&[][..], true)
            }
        };
        let (changes, good) = decode_log(body);
        if good < body.len() {
            tracing::warn!(
                "{LOG}: {} bytes after the last whole record ignored",
                body.len() - good
            );
        }
        for c in &changes {
            p.ledger.apply(c);
        }
        if !changes.is_empty() || good < body.len() || stale || seq.is_none() {
            // Fold the log in now: appending after a damaged tail would hide
            // every later record (and a version-1 pair is rewritten).
            if let Err(e) = p.compact() {
                tracing::warn!("{e}");
                if good < body.len() && !stale {
                    // Appended after the damage, later records would be
                    // hidden: the log ends at its last whole record.
                    let end = (log.len() - body.len() + good) as u64;
                    let cut = std::fs::OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(dir.join(LOG))
                        .and_then(|f| f.set_len(end));
                    if let Err(e) = cut {
                        tracing::warn!("{LOG}: {e}");
                    }
                }
            }
        }
        p
    }

    pub(super) fn is_valid(&self) -> bool {
        self.ledger.is_valid()
    }

    pub(super) fn judge(&self, path: &[u8], current: Option<&Stamp>) -> Origin {
        self.ledger.judge_by(path, current, same)
    }

    pub(super) fn get(&self, path: &[u8]) -> Option<&Stamp> {
        self.ledger.get(path)
    }

    /// Whether changes are expected at all: a valid ledger, or one being
    /// rebased (which may become valid before the change is made).
    pub(super) fn is_expecting(&self) -> bool {
        self.ledger.is_valid() || self.ledger.is_rebasing()
    }

    /// What a rename of `from` to `to` is about to make (see
    /// `Ledger::moving`).
    pub(super) fn moving(&self, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Stamp)> {
        self.ledger.moving(from, to)
    }

    /// Drops the expectation of a change that failed.
    pub(super) fn unexpect(&mut self, path: &[u8], s: &Stamp) {
        self.ledger.unexpect(path, s);
    }

    /// At start, before any change is made: records what a crash left
    /// expected where it was made (`look`: the stamp at a path now) and
    /// forgets the rest, then writes the ledger out.
    pub(super) fn settle(
        &mut self,
        look: impl FnMut(&[u8]) -> Option<Stamp>,
    ) -> Result<(), PlacedError> {
        if self.ledger.expected().next().is_none() {
            return Ok(());
        }
        let n = self.ledger.settle(look, same);
        tracing::info!(
            recorded = n,
            "entries being placed when syncd stopped are recorded as its own"
        );
        self.compact()
    }

    /// Records `c`, appending it to the log (flushed by [`Placed::sync`]).
    pub(super) fn apply(&mut self, c: Change<Stamp>) {
        if !self.ledger.apply(&c) {
            return;
        }
        if let Err(e) = self.append(&c) {
            // The ledger in memory is right; after a restart this change
            // may be missing and its path reported as a local write.
            tracing::warn!("{}: {e}", self.dir.join(LOG).display());
        }
    }

    fn append(&mut self, c: &Change<Stamp>) -> io::Result<()> {
        let body = postcard::to_stdvec(c).map_err(io::Error::other)?;
        let mut rec = (body.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&body);
        if self.log.is_none() {
            use std::os::unix::fs::FileExt;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.dir.join(LOG))?;
            let header = log_header(self.seq);
            let mut head = [0; LOG_HEADER];
            let len = f.metadata()?.len();
            if self.legacy {
                // Beside a version-1 snapshot: its records, no header.
                self.log_len = len;
            } else if len < LOG_HEADER as u64
                || f.read_exact_at(&mut head, 0).is_err()
                || head != header
            {
                // New, or one the snapshot holds (a compaction that failed
                // after its snapshot was in): it starts over.
                f.set_len(0)?;
                f.write_all(&header)?;
                self.log_len = 0;
            } else {
                self.log_len = len - LOG_HEADER as u64;
            }
            self.log = Some(io::BufWriter::with_capacity(64 << 10, f));
        }
        if let Some(f) = &mut self.log {
            f.write_all(&rec)?;
        }
        self.log_len += rec.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Hands the changes so far to the kernel: a crash of the process
    /// loses none of them (a crash of the host may, until [`Placed::sync`]).
    pub(super) fn flush(&mut self) {
        if let Some(f) = &mut self.log {
            if let Err(e) = f.flush() {
                tracing::warn!("{}: {e}", self.dir.join(LOG).display());
            }
        }
    }

    /// Writes out the changes so far, durably with `durable` (with a
    /// commit's `syncfs`, before its acknowledgement); folds a big log into
    /// a snapshot.
    pub(super) fn sync(&mut self, durable: bool) -> Result<(), PlacedError> {
        if self.log_len > COMPACT_AT {
            match self.compact() {
                Ok(()) => return Ok(()),
                // The log goes on, flushed below.
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if self.unsynced {
            if let Some(f) = &mut self.log {
                let r = f.flush().and_then(|()| match durable {
                    true => f.get_ref().sync_data(),
                    false => Ok(()),
                });
                r.map_err(|e| self.err(LOG, e))?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// At a session's end: folds the log into the snapshot if anything was
    /// logged (a restart then replays nothing).
    pub(super) fn checkpoint(&mut self) -> Result<(), PlacedError> {
        match self.log_len {
            0 => Ok(()),
            _ => self.compact(),
        }
    }

    /// Writes the whole ledger as the snapshot and empties the log (a valid
    /// ledger), or removes both (an invalid one).
    pub(super) fn compact(&mut self) -> Result<(), PlacedError> {
        // Handed to the kernel in case the snapshot below fails (the log
        // then goes on, and `unsynced` still asks for its flush);
        // otherwise the snapshot holds it.
        if let Some(f) = &mut self.log {
            let _ = f.flush();
        }
        // A failed compaction is tried again only after as much more log.
        self.log_len = 0;
        if !self.ledger.is_valid() {
            self.log = None;
            self.unsynced = false;
            for f in [SNAPSHOT, LOG] {
                match std::fs::remove_file(self.dir.join(f)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.err(f, e)),
                }
            }
            return Ok(());
        }
        let seq = self.seq + 1;
        let entries: Vec<(&[u8], &Stamp)> = self.ledger.entries().collect();
        // What is expected (a lane placing a file right now, unlocked) is
        // in the snapshot too: no moment where it is on disk nowhere.
        let expected: Vec<(&[u8], &Stamp)> = self.ledger.expected().collect();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        let bytes = postcard::to_extend(&(entries, expected), bytes)
            .map_err(|e| self.err(SNAPSHOT, io::Error::other(e)))?;
        let (snap_tmp, log_tmp) = (
            self.dir.join(format!("{SNAPSHOT}.tmp")),
            self.dir.join(format!("{LOG}.tmp")),
        );
        let written = crate::state::private_dir(&self.dir)
            .and_then(|()| write_synced(&snap_tmp, &bytes))
            .and_then(|()| write_synced(&log_tmp, &log_header(seq)))
            .and_then(|()| std::fs::rename(&snap_tmp, self.dir.join(SNAPSHOT)));
        written.map_err(|e| self.err(SNAPSHOT, e))?;
        // The snapshot is in: a log not naming it is stale from here on
        // (`append` starts one over should what follows fail).
        self.seq = seq;
        self.legacy = false;
        self.log = None;
        self.unsynced = false;
        let sync_dir = || std::fs::File::open(&self.dir)?.sync_all();
        // Durable before the log is replaced: a power loss must not keep
        // the new log beside the old snapshot.
        sync_dir()
            .and_then(|()| std::fs::rename(&log_tmp, self.dir.join(LOG)))
            .and_then(|()| sync_dir())
            .map_err(|e| self.err(LOG, e))
    }

    /// This node leads (or led) its data: its clients' writes are not
    /// local writes; the ledger says nothing until rebased.
    pub(super) fn invalidate(&mut self) -> Result<(), PlacedError> {
        if !self.ledger.is_valid() {
            self.ledger.invalidate(); // a rebase under way is void too
            return Ok(());
        }
        self.ledger.invalidate();
        self.compact()
    }

    /// Starts a rebase (see `Ledger::begin_rebase`); `None`: not needed or
    /// already under way.
    pub(super) fn begin_rebase(&mut self) -> Option<u64> {
        self.ledger.begin_rebase()
    }

    /// A rebase whose walk failed: the next catch-up tries again.
    pub(super) fn abandon_rebase(&mut self, token: u64) {
        self.ledger.abandon_rebase(token);
    }

    /// The export is the leader's copy now: every entry in it is syncd's.
    /// `walked`: the walk begun at `token`; `look`: every entry at or
    /// beneath a path, now.
    pub(super) fn finish_rebase(
        &mut self,
        token: u64,
        walked: Vec<(Vec<u8>, Stamp)>,
        look: impl FnMut(&[u8]) -> io::Result<Vec<(Vec<u8>, Stamp)>>,
    ) -> Result<Rebased, PlacedError> {
        let r = self
            .ledger
            .finish_rebase(token, walked, look)
            .map_err(|e| self.err(SNAPSHOT, e))?;
        if let Rebased::Done(_) = r {
            self.compact()?;
        }
        Ok(r)
    }

    fn err(&self, file: &str, err: io::Error) -> PlacedError {
        PlacedError {
            path: self.dir.join(file).display().to_string(),
            err,
        }
    }
}

#[cfg(test)]
mod tests;
