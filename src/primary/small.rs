//! Small files on the control stream: read whole (up to [`PIPELINE`] ahead,
//! on blocking threads, by the one source reader), sent in order, checked
//! at the next barrier. Rereads and resends are the sans-IO [`FileJob`]'s.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use syncd_proto::path::RelPath;
use syncd_proto::sender::{Encoding, FileJob, Next, Outcome};
use tokio::task::JoinHandle;

use super::session::{ClientError, Session};
use super::source::{self, Read, Sink};
use super::summary::{Progress, Summary};
use crate::index::Index;
use crate::lease::Settle;
use crate::plan::FileOp;
use crate::wire::{Failure, Request, CHUNK};

/// Small files read ahead of the one being sent.
const PIPELINE: usize = 64;

/// The small files of one reconcile.
pub(super) struct Small {
    export: PathBuf,
    settle: Option<Settle>,
    progress: Arc<dyn Progress>,
    /// The plan's files not yet taken, last first: each becomes a job when
    /// it is taken, and the buffer shrinks as they go (jobs made all at
    /// once beside the plan's list were ~160 MB at a million files).
    pending: Vec<FileOp>,
    /// To read and send again after a verdict (after `pending`), with
    /// their planned size.
    queue: VecDeque<(FileJob, u64)>,
    /// Sent; waiting for the barrier's verdict.
    sent: Vec<FileJob>,
    next_id: u64,
}

/// A group's reads, in the group's order.
type Reading = JoinHandle<Vec<std::io::Result<(Read, Vec<Request>)>>>;

/// Files read by one blocking task.
const GROUP: usize = 16;

impl Small {
    pub fn new(
        export: PathBuf,
        settle: Option<Settle>,
        progress: Arc<dyn Progress>,
        mut files: Vec<FileOp>,
    ) -> Small {
        files.reverse();
        Small {
            export,
            settle,
            progress,
            pending: files,
            queue: VecDeque::new(),
            sent: Vec::new(),
            next_id: 0,
        }
    }

    /// Nothing left to take.
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.queue.is_empty()
    }

    /// The next `n` jobs at most, in the plan's order, then the resends.
    fn take(&mut self, n: usize) -> Vec<(FileJob, u64)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(f) = self.pending.pop() else { break };
            out.push((FileJob::new(f.path, f.size, false).0, f.size));
        }
        // Halving the buffer as it empties: a copy of at most what is
        // left each time, and the rest of it back to the allocator.
        let cap = self.pending.capacity();
        if self.pending.len() < cap / 2 && cap > 4096 {
            self.pending.shrink_to_fit();
        }
        let more = n - out.len();
        out.extend(self.queue.drain(..more.min(self.queue.len())));
        out
    }

    /// Reads of `jobs`' files, in order, on one blocking thread, each
    /// collected whole: one thread hand-off per group rather than per file
    /// (per file it cost more CPU than the read itself).
    fn spawn(&mut self, jobs: &[&FileJob]) -> Reading {
        let files: Vec<(RelPath, u64)> = jobs
            .iter()
            .map(|j| {
                self.next_id += 1;
                (j.path().clone(), self.next_id)
            })
            .collect();
        let (export, settle) = (self.export.clone(), self.settle.clone());
        tokio::task::spawn_blocking(move || {
            let root = source::open_export(&export);
            let read = |(rel, id): &(RelPath, u64)| {
                let root = root
                    .as_ref()
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
                let mut c = Collect(Vec::new());
                let r = source::read_in(
                    root,
                    rel,
                    settle.as_ref(),
                    *id,
                    Encoding::Whole,
                    CHUNK,
                    &mut c,
                )?;
                Ok((r, c.0))
            };
            files.iter().map(read).collect()
        })
    }

    /// The barrier's failures: those of files sent here go to their jobs.
    /// Returns true when some are queued to go again; the rest of the
    /// failures are the summary's.
    pub fn verdicts(&mut self, failures: Vec<Failure>, sum: &mut Summary) -> bool {
        let mut sent = std::mem::take(&mut self.sent);
        for f in failures {
            let Some(i) = sent.iter().position(|j| *j.path() == f.path) else {
                sum.failures.push(f);
                continue;
            };
            let mut job = sent.swap_remove(i);
            let error = f.error.clone();
            match job.handle_verdict(Some(f)) {
                Next::Send(_) => {
                    tracing::info!(path = %job.path(), "resending whole after: {error}");
                    sum.sent_whole = sum.sent_whole.saturating_sub(1);
                    self.queue.push_back((job, 0));
                }
                Next::Done(Outcome::Failed(f)) => sum.failures.push(f),
                _ => {}
            }
        }
        !self.is_empty()
    }
}

/// Collects a small file's requests: nothing goes out before it is read.
struct Collect(Vec<Request>);

impl Sink for Collect {
    fn send(&mut self, r: Request) -> bool {
        self.0.push(r);
        true
    }

    fn content(&mut self, id: u64, data: Vec<u8>) -> bool {
        self.0.push(Request::FileData { id, data });
        true
    }
}

/// Reads and sends every queued small file, in order.
pub(super) async fn send_small(
    s: &mut Session,
    small: &mut Small,
    sum: &mut Summary,
    index: &mut Index,
) -> Result<(), ClientError> {
    let mut reading: VecDeque<(Vec<(FileJob, u64)>, Reading)> = VecDeque::new();
    let mut ahead = 0;
    loop {
        while ahead < PIPELINE && !small.is_empty() {
            let group = small.take(GROUP);
            let h = small.spawn(&group.iter().map(|(j, _)| j).collect::<Vec<_>>());
            ahead += group.len();
            reading.push_back((group, h));
        }
        let Some((group, h)) = reading.pop_front() else {
            return Ok(());
        };
        ahead -= group.len();
        let results = h.await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        for ((job, size), r) in group.into_iter().zip(results) {
            send_one(s, small, sum, index, job, size, r).await?;
        }
    }
}

/// Sends one small file read whole (reading it again if it changed meanwhile).
async fn send_one(
    s: &mut Session,
    small: &mut Small,
    sum: &mut Summary,
    index: &mut Index,
    mut job: FileJob,
    size: u64,
    mut r: std::io::Result<(Read, Vec<Request>)>,
) -> Result<(), ClientError> {
    loop {
        let (end, msgs, done) = match r {
            Ok((read, msgs)) => (read.end, msgs, read.done),
            Err(e) => (
                syncd_proto::sender::ReadEnd::Failed(e.to_string()),
                vec![],
                None,
            ),
        };
        match job.handle_read(end) {
            // Changed while being read: read again, now.
            Next::Send(_) => {
                let h = small.spawn(&[&job]);
                let again = h.await.map_err(|e| ClientError::Protocol(e.to_string()))?;
                r = again
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Err(std::io::Error::other("no read")));
            }
            Next::Verdict => {
                for m in &msgs {
                    s.send(m).await?;
                }
                if let Some((st, h)) = done {
                    index.insert(job.path().as_bytes().to_vec(), st, h);
                }
                sum.sent_whole += 1;
                small.progress.advance(size);
                small.progress.files(sum.sent_whole + sum.sent_delta);
                small.sent.push(job);
                break;
            }
            Next::Done(o) => {
                match o {
                    Outcome::Vanished => sum.vanished += 1,
                    Outcome::Busy => sum.busy.push(job.path().clone()),
                    Outcome::Failed(f) => sum.failures.push(f),
                    Outcome::Sent { .. } => {}
                }
                break;
            }
        }
    }
    Ok(())
}
