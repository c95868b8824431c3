//! Large files (and every delta) each travel on their own QUIC stream, so
//! one huge file does not hold up the small files behind it: the control
//! stream keeps carrying metadata and small files (in order) while up to
//! [`MAX_STREAMS`] large transfers run beside it. Each stream is one
//! self-contained transaction: signature request, content, then the
//! standby's verdict once the file is committed (durably, if configured).
//! What to try next is the sans-IO [`FileJob`]'s; this carries it out.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use syncd_proto::sender::{Answer, Encoding, Expect, FileJob, Next, Outcome as Done};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::reply::{answer, ReplyError, StreamReply};
use super::source::{self, Read, Sink};
use super::stream::{Stream, StreamError};
use super::summary::Progress;
use crate::delta;
use crate::index::Stamp;
use crate::lease::Settle;
use crate::plan::FileOp;
use crate::wire::{self, Failure, Request, CHUNK};
use syncd_proto::path::RelPath;

mod diff;

use diff::read_delta;

/// Large transfers running at once, beside the control stream (the standby
/// allows 16 bidirectional streams per connection).
pub const MAX_STREAMS: usize = 4;

/// How one file's transfer ended.
pub struct Outcome {
    pub op: FileOp,
    /// Verified on the standby as a delta (else whole).
    pub as_delta: bool,
    pub result: Result<Sent, Failure>,
    /// Frame bytes sent / received on its stream(s), and delta payload.
    pub tx: u64,
    pub rx: u64,
    pub delta_bytes: u64,
}

/// A transfer that did not fail.
pub enum Sent {
    /// Sent and verified; what the index records for it.
    Done(Stamp, wire::Hash),
    Vanished,
    /// Open for writing elsewhere (live replication): send once closed.
    Busy,
}

/// The large transfers of one connection.
pub struct Transfers {
    conn: quinn::Connection,
    export: Arc<PathBuf>,
    set: JoinSet<Outcome>,
    /// Path, start, size of each running transfer.
    running: HashMap<tokio::task::Id, (RelPath, Instant, u64)>,
    /// Ended while a start waited for a free stream, not yet taken: the
    /// live loop takes them once the batch's commit is sent
    /// ([`Transfers::take_ended`]), else [`Transfers::next`] or
    /// [`Transfers::drain`] does; the live loop compares each path once more,
    /// as at any transfer's end (its placement on the standby may postdate
    /// the batch that listed its directory, or a newer write skipped as busy).
    ended: VecDeque<Outcome>,
    deadline: Option<Duration>,
}

impl Transfers {
    /// `deadline`: how long each stream waits for a reply.
    pub fn new(conn: quinn::Connection, export: PathBuf, deadline: Option<Duration>) -> Transfers {
        Transfers {
            deadline,
            conn,
            export: Arc::new(export),
            set: JoinSet::new(),
            running: HashMap::new(),
            ended: VecDeque::new(),
        }
    }

    /// A transfer of `p` is under way (its outcome will re-check it).
    pub fn busy(&self, p: &RelPath) -> bool {
        self.running.values().any(|(q, _, _)| q == p)
    }

    /// Running, or ended and not yet taken by [`Transfers::next`].
    pub fn len(&self) -> usize {
        self.running.len() + self.ended.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.ended.is_empty()
    }

    /// An outcome already ended (see `ended`), without waiting.
    pub(super) fn take_ended(&mut self) -> Option<Outcome> {
        self.ended.pop_front()
    }

    /// When the oldest running transfer started.
    pub fn oldest(&self) -> Option<Instant> {
        self.running.values().map(|(_, t, _)| *t).min()
    }

    /// Content bytes of the running transfers (part of the lag).
    pub fn bytes(&self) -> u64 {
        self.running.values().map(|(_, _, n)| n).sum()
    }

    /// Starts `op` on its own stream; with [`MAX_STREAMS`] already running,
    /// first waits for one to end, whose outcome [`Transfers::next`] (or
    /// [`Transfers::take_ended`]) gives.
    pub async fn start(&mut self, op: FileOp, settle: Option<Settle>, progress: Arc<dyn Progress>) {
        if self.running.len() >= MAX_STREAMS {
            tracing::debug!(path = %op.path, "every stream busy: waiting for a transfer to end");
            if let Some(o) = self.next_running().await {
                self.ended.push_back(o);
            }
        }
        let file = File {
            conn: self.conn.clone(),
            export: self.export.clone(),
            settle,
            progress,
            deadline: self.deadline,
        };
        let (path, size) = (op.path.clone(), op.size);
        let h = self.set.spawn(async move { file.transfer(op).await });
        self.running.insert(h.id(), (path, Instant::now(), size));
    }

    /// The next transfer to end (one that already ended first); never
    /// resolves while none is running or ended (so it can sit in a
    /// `select!`).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Outcome> {
        if let Some(o) = self.ended.pop_front() {
            return Some(o);
        }
        self.next_running().await
    }

    async fn next_running(&mut self) -> Option<Outcome> {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        match self.set.join_next_with_id().await? {
            Ok((id, o)) => {
                self.running.remove(&id);
                Some(o)
            }
            Err(e) => {
                // A panicked or aborted task: its path is compared again by
                // the next reconcile that covers it.
                let path = self.running.remove(&e.id()).map(|(p, _, _)| p);
                tracing::error!(?path, "transfer task failed: {e}");
                None
            }
        }
    }

    /// Waits for every running transfer.
    pub async fn drain(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        while !self.is_empty() {
            if let Some(o) = self.next().await {
                out.push(o);
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("local read: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What one transfer task holds.
struct File {
    conn: quinn::Connection,
    export: Arc<PathBuf>,
    settle: Option<Settle>,
    progress: Arc<dyn Progress>,
    deadline: Option<Duration>,
}

/// One file stream and the Sender core that keeps its replies.
struct On {
    st: Stream,
    tx: syncd_proto::sender::Sender,
}

impl File {
    async fn transfer(self, op: FileOp) -> Outcome {
        let mut o = Outcome {
            op,
            as_delta: false,
            result: Ok(Sent::Vanished),
            tx: 0,
            rx: 0,
            delta_bytes: 0,
        };
        o.result = match self.run(&mut o).await {
            Ok(r) => r,
            Err(e) => Err(Failure {
                path: o.op.path.clone(),
                error: e.to_string(),
                retry_whole: false,
            }),
        };
        o
    }

    async fn open(&self) -> Result<On, TransferError> {
        let (send, recv) = self.conn.open_bi().await?;
        let mut st = Stream::new(send, recv);
        // The deadline is the Sender core's.
        st.deadline = None;
        let tx = syncd_proto::sender::Sender::new(syncd_proto::sender::SenderConfig {
            reply_deadline: self.deadline,
            ..Default::default()
        });
        Ok(On { st, tx })
    }

    /// One file on one stream: delta if asked for and possible, else whole;
    /// a content-check failure is resent whole (see [`FileJob`]).
    async fn run(&self, o: &mut Outcome) -> Result<Result<Sent, Failure>, TransferError> {
        let op = o.op.clone();
        // Block size follows the base (the standby's file), like rsync, so
        // a signature the standby cached when it wrote that file matches.
        let (block, strong) = delta::options_for(op.base_size);
        let can_delta = op.delta && delta::check_options(block, strong, op.base_size).is_ok();
        let (mut job, mut next) = FileJob::new(op.path.clone(), op.size, can_delta);
        let mut on = self.open().await?;
        let (mut sig, mut done) = (None, None);
        loop {
            next = match next {
                Next::Send(Encoding::Delta) if sig.is_none() => {
                    on.st
                        .send(&Request::SigRequest {
                            id: 1,
                            path: op.path.clone(),
                            block_size: block,
                            strong_len: strong,
                        })
                        .await?;
                    on.tx.expect(Expect::Signature, std::time::Instant::now());
                    match answer(&mut on.st, &mut on.tx).await.map_err(proto)? {
                        (Answer::Signature(true), StreamReply::Signature(data)) => {
                            sig = Some(data);
                            job.handle_signature(true)
                        }
                        _ => job.handle_signature(false),
                    }
                }
                Next::Send(e) => {
                    let r = self.read(&mut on.st, &op.path, e, sig.take(), o).await?;
                    done = r.done;
                    o.as_delta = e == Encoding::Delta && done.is_some();
                    job.handle_read(r.end)
                }
                Next::Verdict => {
                    on.st.finish().await?;
                    on.tx.expect(Expect::StreamEnd, std::time::Instant::now());
                    let failures = match answer(&mut on.st, &mut on.tx).await.map_err(proto)? {
                        (Answer::BarrierDone { failures, .. }, _) => failures,
                        (a, _) => return Err(TransferError::Protocol(format!("unexpected {a:?}"))),
                    };
                    (o.tx, o.rx) = (o.tx + on.st.tx, o.rx + on.st.rx);
                    let f = failures.into_iter().next();
                    let n = job.handle_verdict(f.clone());
                    if let (Next::Send(_), Some(f)) = (&n, f) {
                        tracing::info!(path = %op.path, "resending whole after: {}", f.error);
                        on = self.open().await?;
                        o.as_delta = false;
                    }
                    n
                }
                Next::Done(d) => {
                    return Ok(match (d, done) {
                        (Done::Sent { .. }, Some((stamp, h))) => Ok(Sent::Done(stamp, h)),
                        (Done::Sent { .. }, None) | (Done::Vanished, _) => Ok(Sent::Vanished),
                        (Done::Busy, _) => Ok(Sent::Busy),
                        (Done::Failed(f), _) => Err(f),
                    })
                }
            }
        }
    }

    /// One read of the file onto the stream: a reader thread (the one
    /// source reader, plus the rolling diff for a delta) feeds this task.
    async fn read(
        &self,
        st: &mut Stream,
        rel: &RelPath,
        e: Encoding,
        sig: Option<Vec<u8>>,
        o: &mut Outcome,
    ) -> Result<Read, TransferError> {
        let (export, rel, settle) = (self.export.clone(), rel.clone(), self.settle.clone());
        let progress = self.progress.clone();
        let (tx, rx) = mpsc::channel::<Request>(8);
        let reader = tokio::task::spawn_blocking(move || match (e, sig) {
            (Encoding::Delta, Some(sig)) => {
                read_delta(&export, &rel, settle.as_ref(), sig, tx, progress)
            }
            _ => {
                let mut sink = Chunks { tx, progress };
                let settle = settle.as_ref();
                let root = source::open_export(&export)?;
                source::read_in(&root, &rel, settle, 3, Encoding::Whole, CHUNK, &mut sink)
            }
        });
        forward(st, rx, &mut o.delta_bytes).await?;
        Ok(reader.await.map_err(std::io::Error::other)??)
    }
}

fn proto(e: ReplyError) -> TransferError {
    match e {
        ReplyError::Stream(e) => TransferError::Stream(e),
        ReplyError::Sender(e) => TransferError::Protocol(e.to_string()),
    }
}

/// Whole content onto the stream, chunk by chunk.
struct Chunks {
    tx: mpsc::Sender<Request>,
    progress: Arc<dyn Progress>,
}

impl Sink for Chunks {
    fn send(&mut self, r: Request) -> bool {
        self.tx.blocking_send(r).is_ok()
    }

    fn content(&mut self, id: u64, data: Vec<u8>) -> bool {
        self.progress.advance(data.len() as u64);
        self.tx
            .blocking_send(Request::FileData { id, data })
            .is_ok()
    }
}

/// Sends what a reader thread produces.
async fn forward(
    st: &mut Stream,
    mut rx: mpsc::Receiver<Request>,
    delta_bytes: &mut u64,
) -> Result<(), StreamError> {
    loop {
        // Flush whenever the producer has nothing more ready: a delta of a
        // mostly unchanged file is a trickle of tiny segments, and holding
        // them for a full write buffer would leave the standby idle until
        // the first changed region (or the end of the file).
        let m = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                st.flush().await?;
                match rx.recv().await {
                    Some(m) => m,
                    None => return Ok(()),
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(()),
        };
        if let Request::DeltaSegment { data, .. } = &m {
            *delta_bytes += data.len() as u64;
        }
        st.send(&m).await?;
    }
}
