//! Small files on the control stream: read whole (up to [`PIPELINE`] ahead,
//! on blocking threads, by the one source reader), sent in order, checked
//! at the next barrier. Rereads and resends are the sans-IO [`FileJob`]'s.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// To read and send, with their planned size.
    queue: VecDeque<(FileJob, u64)>,
    /// Sent; waiting for the barrier's verdict.
    sent: Vec<FileJob>,
    next_id: u64,
}

type Reading = JoinHandle<std::io::Result<(Read, Vec<Request>)>>;

impl Small {
    pub fn new(
        export: PathBuf,
        settle: Option<Settle>,
        progress: Arc<dyn Progress>,
        files: Vec<FileOp>,
    ) -> Small {
        let queue = files
            .into_iter()
            .map(|f| (FileJob::new(f.path, f.size, false).0, f.size))
            .collect();
        Small {
            export,
            settle,
            progress,
            queue,
            sent: Vec::new(),
            next_id: 0,
        }
    }

    /// A read of `job`'s file on a blocking thread, collected whole.
    fn spawn(&mut self, job: &FileJob) -> Reading {
        self.next_id += 1;
        let (export, rel, id) = (self.export.clone(), job.path().clone(), self.next_id);
        let settle = self.settle.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = Collect(Vec::new());
            let r = source::read(
                &export,
                &rel,
                settle.as_ref(),
                id,
                Encoding::Whole,
                CHUNK,
                &mut c,
            )?;
            Ok((r, c.0))
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
        !self.queue.is_empty()
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
    let mut reading: VecDeque<(FileJob, u64, Reading)> = VecDeque::new();
    loop {
        while reading.len() < PIPELINE {
            let Some((job, size)) = small.queue.pop_front() else {
                break;
            };
            let h = small.spawn(&job);
            reading.push_back((job, size, h));
        }
        let Some((mut job, size, h)) = reading.pop_front() else {
            return Ok(());
        };
        let mut r = h.await.map_err(|e| ClientError::Protocol(e.to_string()))?;
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
                    let h = small.spawn(&job);
                    r = h.await.map_err(|e| ClientError::Protocol(e.to_string()))?;
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
    }
}
