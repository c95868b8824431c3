//! The durable side of the follower's ledger (`syncd_proto::pair::local`):
//! per path, the stamp of what syncd last put there, so that a write made
//! on this node by anything else is told apart, also after a restart.
//!
//! `<state_dir>/placed.bin` is a snapshot (magic, version, postcard);
//! `<state_dir>/placed.log` the changes since, appended as they happen
//! (length-prefixed postcard records) and flushed with each commit's
//! `syncfs`, before the commit is acknowledged. A restart replays the log
//! up to its first damaged record (a crash mid-append). No snapshot means
//! no valid ledger (never rebased, or this node led since): nothing is
//! reported until the next catch-up rebases it.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::index::Stamp;
use syncd_proto::pair::local::{Change, Ledger, Origin, Rebased};

const SNAPSHOT: &str = "placed.bin";
const LOG: &str = "placed.log";
const MAGIC: &[u8; 8] = b"SYNCDPLC";
const VERSION: u32 = 1;
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
    log_len: u64,
    /// Appended since the last flush.
    unsynced: bool,
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

fn decode_snapshot(b: &[u8]) -> Option<Vec<(Vec<u8>, Stamp)>> {
    let rest = b.strip_prefix(MAGIC.as_slice())?;
    let (v, rest) = rest.split_first_chunk::<4>()?;
    (u32::from_le_bytes(*v) == VERSION)
        .then(|| postcard::from_bytes(rest).ok())
        .flatten()
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
        };
        let snap = match crate::state::read_private(&dir.join(SNAPSHOT)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return p,
            Err(e) => {
                tracing::warn!("{SNAPSHOT}: {e}; local writes on this node go unnoticed until the next catch-up");
                return p;
            }
        };
        let Some(entries) = decode_snapshot(&snap) else {
            tracing::warn!("{SNAPSHOT} is damaged; local writes on this node go unnoticed until the next catch-up");
            return p;
        };
        p.ledger = Ledger::rebased(entries);
        let log = crate::state::read_private(&dir.join(LOG)).unwrap_or_default();
        let (changes, good) = decode_log(&log);
        if good < log.len() {
            tracing::warn!(
                "{LOG}: {} bytes after the last whole record ignored",
                log.len() - good
            );
        }
        for c in &changes {
            p.ledger.apply(c);
        }
        if !changes.is_empty() || good < log.len() {
            // Fold the log in now: appending after a damaged tail would hide
            // every later record.
            if let Err(e) = p.compact() {
                tracing::warn!("{e}");
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

    /// The recorded entries at or beneath `path`.
    pub(super) fn under<'a>(
        &'a self,
        path: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a Stamp)> {
        self.ledger.entries_under(path)
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
            let f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.dir.join(LOG))?;
            self.log_len = f.metadata()?.len();
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
            return self.compact();
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
        // Whatever is buffered is in the snapshot below.
        if let Some(f) = self.log.take() {
            let _ = f.into_parts();
        }
        self.log_len = 0;
        self.unsynced = false;
        if !self.ledger.is_valid() {
            for f in [SNAPSHOT, LOG] {
                match std::fs::remove_file(self.dir.join(f)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.err(f, e)),
                }
            }
            return Ok(());
        }
        let entries: Vec<(&[u8], &Stamp)> = self.ledger.entries().collect();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        let bytes = postcard::to_extend(&entries, bytes)
            .map_err(|e| self.err(SNAPSHOT, io::Error::other(e)))?;
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let write = || -> io::Result<()> {
            crate::state::private_dir(&self.dir)?;
            let mut f = crate::state::create_private(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(SNAPSHOT))?;
            // The snapshot holds every change: the log starts over.
            crate::state::create_private(&self.dir.join(LOG))?.sync_all()?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| self.err(SNAPSHOT, e))?;
        // The snapshot holds records only: what is still expected (a lane
        // placing a file right now) starts the new log.
        let expected: Vec<_> = self
            .ledger
            .expected()
            .map(|(p, s)| Change::Expect(p.to_vec(), *s))
            .collect();
        for c in &expected {
            self.append(c).map_err(|e| self.err(LOG, e))?;
        }
        self.flush();
        Ok(())
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
mod tests {
    use super::*;

    fn st(n: u64) -> Stamp {
        Stamp {
            size: n,
            mtime: (n as i64, 0),
            ctime: (n as i64, 1),
            ino: n,
        }
    }

    #[test]
    fn survives_a_restart_and_a_torn_log_tail() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Placed::load(d.path());
        assert!(!p.is_valid(), "no snapshot: nothing is known");
        p.apply(Change::Put(b"a".to_vec(), st(1)));
        assert!(
            !d.path().join(LOG).exists(),
            "an invalid ledger journals nothing"
        );
        let t = p.begin_rebase().unwrap();
        let r = p.finish_rebase(t, vec![(b"a".to_vec(), st(1))], |_| Ok(vec![]));
        assert_eq!(r.unwrap(), Rebased::Done(1));
        p.apply(Change::Put(b"d/b".to_vec(), st(2)));
        p.apply(Change::MoveUnder(b"d".to_vec(), b"e".to_vec()));
        p.sync(true).unwrap();
        drop(p);
        // A crash mid-append: a record cut short.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(LOG))
            .unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let mut p = Placed::load(d.path());
        assert!(p.is_valid());
        assert_eq!(p.judge(b"a", Some(&st(1))), Origin::Ours);
        assert_eq!(p.judge(b"e/b", Some(&st(2))), Origin::Ours);
        assert_eq!(p.judge(b"d/b", Some(&st(2))), Origin::New);
        assert_eq!(p.judge(b"a", Some(&st(3))), Origin::Changed);
        // Records after the torn tail are still read after the next restart.
        p.apply(Change::Put(b"c".to_vec(), st(4)));
        p.sync(true).unwrap();
        drop(p);
        let mut p = Placed::load(d.path());
        assert_eq!(p.judge(b"c", Some(&st(4))), Origin::Ours);
        p.invalidate().unwrap();
        assert!(!d.path().join(SNAPSHOT).exists());
        assert!(!Placed::load(d.path()).is_valid());
    }

    #[test]
    fn ctime_counts_unless_the_inode_has_several_names() {
        let rec = st(1);
        assert!(same(&rec, &st(1)));
        assert!(
            !same(
                &rec,
                &Stamp {
                    ctime: (9, 9),
                    ..rec
                }
            ),
            "rewritten in place, mtime restored"
        );
        assert!(!same(
            &rec,
            &Stamp {
                mtime: (9, 0),
                ..rec
            }
        ));
        assert!(
            !same(&rec, &Stamp { ino: 9, ..rec }),
            "replaced by another file"
        );
        assert!(!same(&rec, &Stamp { size: 9, ..rec }));
        let linked = Stamp {
            ctime: NO_CTIME,
            ..rec
        };
        assert!(same(
            &linked,
            &Stamp {
                ctime: (9, 9),
                ..rec
            }
        ));
        assert!(same(&rec, &linked));
    }

    #[test]
    fn a_damaged_snapshot_reports_nothing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(SNAPSHOT), b"SYNCDPLCgarbage").unwrap();
        let p = Placed::load(d.path());
        assert!(!p.is_valid());
        assert_eq!(p.judge(b"x", Some(&st(1))), Origin::Ours);
    }

    /// A process killed between a placement and its record: what was
    /// written ahead is read back and settled by looking, also when a
    /// compaction came in between.
    #[test]
    fn an_expectation_written_ahead_survives_a_kill_and_is_settled() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Placed::load(d.path());
        let t = p.begin_rebase().unwrap();
        let all = vec![(b"a".to_vec(), st(1)), (b"b".to_vec(), st(1))];
        p.finish_rebase(t, all, |_| Ok(vec![])).unwrap();
        let ahead = |n| Stamp {
            ctime: NO_CTIME,
            ..st(n)
        };
        p.apply(Change::Expect(b"a".to_vec(), ahead(2)));
        p.compact().unwrap(); // the log started over: still expected
        p.apply(Change::Expect(b"b".to_vec(), ahead(3)));
        p.apply(Change::Expect(b"c".to_vec(), ahead(4)));
        p.flush();
        // The records after the placements, never handed to the kernel.
        p.apply(Change::Put(b"a".to_vec(), st(2)));
        std::mem::forget(p);

        let mut p = Placed::load(d.path());
        let placed_now = Stamp {
            ctime: (7, 7), // the rename changed it
            ..st(2)
        };
        assert_eq!(p.judge(b"a", Some(&placed_now)), Origin::Ours);
        // `a` and `c` were placed; `b` was not (still syncd's old one).
        let now = |q: &[u8]| match q {
            b"a" => Some(placed_now),
            b"b" => Some(st(1)),
            b"c" => Some(Stamp {
                ctime: (8, 8),
                ..st(4)
            }),
            _ => None,
        };
        p.settle(now).unwrap();
        assert_eq!(p.ledger.expected().count(), 0);
        drop(p);
        let p = Placed::load(d.path());
        assert_eq!(p.judge(b"a", Some(&placed_now)), Origin::Ours);
        assert_eq!(p.judge(b"a", Some(&st(1))), Origin::Changed);
        assert_eq!(p.judge(b"b", Some(&st(1))), Origin::Ours);
        assert_eq!(p.judge(b"b", Some(&ahead(3))), Origin::Changed);
        assert_eq!(p.judge(b"c", Some(&now(b"c").unwrap())), Origin::Ours);
    }
}
