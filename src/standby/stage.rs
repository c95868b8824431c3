//! The stager: worker threads (lanes) that carry out what the Receiver
//! forwards — metadata changes, staging, writing, delta application, the
//! content check — and hold verified files for the committer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::accept::SessionError;
use super::commit::{commit_batch, keeper, Preserve, Verified};
use super::local;
use super::{lock, Shared};
use crate::wire::{self, Failure, Reply, Request};
use syncd_proto::path::RelPath;
use syncd_proto::receiver::FailureLog;

mod file;
mod gather;

use file::InFlight;
use gather::Gather;

pub(super) enum Job {
    /// Requests in the order they came: a small file's begin, data and end
    /// (or several files') as one hand-off, not a wake-up each.
    Ops(Vec<Request>),
    /// The Receiver refused more of this file: drop what was staged.
    Drop(u64),
    /// Says how many verified files wait for a commit, once everything
    /// sent before is done.
    Ready(std::sync::mpsc::Sender<usize>),
    /// Commits them, after the one flush for every lane (see [`Synced`]).
    Commit {
        synced: Synced,
        done: std::sync::mpsc::Sender<()>,
    },
}

/// The flush before a lane's files are renamed into place.
#[derive(Clone, Debug)]
pub(super) enum Synced {
    /// Not done for them (none was pending, or not durable): the lane
    /// flushes itself when durable.
    No,
    /// The export was flushed after they were written; the count of
    /// write-back errors then (see `Shared::sync_export`).
    Yes(u64),
    /// The flush failed: their data may not be on disk, so none of them
    /// is renamed (a second `syncfs` would not report the same writeback
    /// error again and would pass).
    Failed(String),
}

/// Failures the lanes met since the last barrier.
type Failures = Arc<std::sync::Mutex<FailureLog>>;

/// Files in flight on one connection.
pub(super) type InFlightCount = Arc<AtomicUsize>;

/// Jobs waiting for one lane. A job is under [`gather::BYTES`] plus one
/// frame (`wire::MAX_FRAME`, 8 MiB), so a lane holds at most
/// `LANE_QUEUE + 2` of them (the queue, the one it works on, the one being
/// gathered): ~150 MiB per lane from a peer sending only maximal frames,
/// as before gathering (one frame a job then).
const LANE_QUEUE: usize = 16;

/// A stream's worker threads.
pub(super) struct Lanes {
    sh: Arc<Shared>,
    txs: Vec<mpsc::Sender<Job>>,
    /// Per lane: requests not yet handed on.
    gathered: Vec<Gather>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failures: Failures,
}

impl Lanes {
    /// `n` workers, each committing in batches of at most `batch_max` files.
    pub(super) fn spawn(
        n: usize,
        batch_max: usize,
        sh: &Arc<Shared>,
        reply: &mpsc::Sender<Reply>,
        preserve: &Preserve,
        in_flight: &InFlightCount,
    ) -> Lanes {
        let failures = Failures::default();
        let mut lanes = Lanes {
            sh: sh.clone(),
            txs: Vec::new(),
            gathered: (0..n).map(|_| Gather::default()).collect(),
            threads: Vec::new(),
            failures: failures.clone(),
        };
        for _ in 0..n {
            let (tx, rx) = mpsc::channel::<Job>(LANE_QUEUE);
            let lane = Lane {
                sh: sh.clone(),
                reply: reply.clone(),
                failures: failures.clone(),
                preserve: preserve.clone(),
                in_flight: in_flight.clone(),
                batch_max,
            };
            lanes.threads.push(std::thread::spawn(move || lane.run(rx)));
            lanes.txs.push(tx);
        }
        lanes
    }

    /// Request `op` for `lane`, handed on with others once enough are
    /// gathered or [`Lanes::hand_on`] is called (the shell does when it has
    /// nothing more to read at once, or before anything else for a lane).
    pub(super) async fn queue(
        &mut self,
        lane: usize,
        op: Request,
        frame: usize,
    ) -> Result<(), SessionError> {
        let g = self.gathered.get_mut(lane).ok_or_else(stopped)?;
        if g.push(op, frame) {
            self.hand_on_lane(lane).await?;
        }
        Ok(())
    }

    /// Hands every lane what was gathered for it.
    pub(super) async fn hand_on(&mut self) -> Result<(), SessionError> {
        for lane in 0..self.gathered.len() {
            self.hand_on_lane(lane).await?;
        }
        Ok(())
    }

    async fn hand_on_lane(&mut self, lane: usize) -> Result<(), SessionError> {
        let g = self.gathered.get_mut(lane).ok_or_else(stopped)?;
        if g.is_empty() {
            return Ok(());
        }
        let ops = g.take();
        let tx = self.txs.get(lane).ok_or_else(stopped)?;
        tx.send(Job::Ops(ops)).await.map_err(|_| stopped())
    }

    /// `job` for `lane`, after what was gathered for it (order kept).
    pub(super) async fn send(&mut self, lane: usize, job: Job) -> Result<(), SessionError> {
        self.hand_on_lane(lane).await?;
        let tx = self.txs.get(lane).ok_or_else(stopped)?;
        tx.send(job).await.map_err(|_| stopped())
    }

    /// Every lane has done and committed what it was given; the failures
    /// since the last flush. One `syncfs` for all lanes' files, not one
    /// per lane: it is most of a small batch's time at the standby.
    pub(super) async fn flush(&mut self) -> Result<FailureLog, SessionError> {
        self.hand_on().await?;
        let mut ready = Vec::new();
        for tx in &self.txs {
            let (t, r) = std::sync::mpsc::channel();
            tx.send(Job::Ready(t)).await.map_err(|_| stopped())?;
            ready.push(r);
        }
        let sh = self.sh.clone();
        let synced = tokio::task::spawn_blocking(move || {
            // Every lane answers (or has stopped) before the flush.
            let files: usize = ready.into_iter().map(|r| r.recv().unwrap_or(0)).sum();
            if files == 0 || !sh.durable {
                return Synced::No;
            }
            let t = std::time::Instant::now();
            let r = sh.sync_export();
            tracing::debug!(files, ms = ms(t), "durable flush before rename (syncfs)");
            match r {
                Ok(n) => Synced::Yes(n),
                Err(e) => {
                    tracing::error!(
                        "syncfs of the export: {e}; this batch's files are not committed"
                    );
                    Synced::Failed(e.to_string())
                }
            }
        })
        .await
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let mut waits = Vec::new();
        for tx in &self.txs {
            let (done, r) = std::sync::mpsc::channel();
            let job = Job::Commit {
                synced: synced.clone(),
                done,
            };
            tx.send(job).await.map_err(|_| stopped())?;
            waits.push(r);
        }
        let all = tokio::task::spawn_blocking(move || waits.iter().all(|w| w.recv().is_ok()))
            .await
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        if !all {
            // A lane stopped before its files were placed: nothing of
            // this flush is acknowledged.
            return Err(stopped());
        }
        Ok(std::mem::take(&mut *lock(&self.failures)))
    }

    /// Stops the workers; what they staged and did not commit is removed,
    /// and requests still gathered are dropped unapplied (the session
    /// ended without a flush: none of them was acknowledged).
    pub(super) async fn join(self) {
        drop(self.txs);
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Milliseconds since `t`, for the flush logs.
pub(super) fn ms(t: std::time::Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

fn stopped() -> SessionError {
    SessionError::Protocol("worker stopped".into())
}

/// One worker thread.
struct Lane {
    sh: Arc<Shared>,
    reply: mpsc::Sender<Reply>,
    failures: Failures,
    preserve: Preserve,
    in_flight: InFlightCount,
    batch_max: usize,
}

/// A lane's files: being written, and verified awaiting their batch.
struct Work<'r> {
    inflight: HashMap<u64, InFlight<'r>>,
    pending: Vec<Verified<'r>>,
    pending_bytes: u64,
    copy_buf: Vec<u8>,
    /// The lane's committer: a full batch is flushed and renamed there
    /// while the lane stages the next one.
    committer: std::sync::mpsc::SyncSender<Vec<Verified<'r>>>,
    committed: std::sync::mpsc::Receiver<()>,
    /// A batch is with the committer.
    committing: bool,
}

impl Lane {
    fn run(&self, mut rx: mpsc::Receiver<Job>) {
        let sh = self.sh.clone();
        let (committer, batches) = std::sync::mpsc::sync_channel::<Vec<Verified<'_>>>(0);
        let (done, committed) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let sh = &sh;
            let spawned = std::thread::Builder::new()
                .name("syncd-commit".into())
                .spawn_scoped(scope, move || {
                    for mut batch in batches {
                        self.commit_pending(sh, &mut batch, Synced::No);
                        if done.send(()).is_err() {
                            return;
                        }
                    }
                });
            if let Err(e) = spawned {
                // Its channel is closed with it: the lane places its batches.
                tracing::warn!("no commit thread ({e}); this lane places its own batches");
            }
            let mut w = Work {
                inflight: HashMap::new(),
                pending: Vec::new(),
                pending_bytes: 0,
                copy_buf: Vec::new(),
                committer,
                committed,
                committing: false,
            };
            while let Some(job) = rx.blocking_recv() {
                match job {
                    Job::Ready(tx) => {
                        if self.wait_committed(&mut w).is_err() {
                            return;
                        }
                        let _ = tx.send(w.pending.len());
                    }
                    Job::Commit { synced, done } => {
                        if self.commit(&mut w, synced).is_err() {
                            return;
                        }
                        let _ = done.send(());
                    }
                    Job::Drop(id) => {
                        w.inflight.remove(&id);
                    }
                    Job::Ops(ops) => {
                        for op in ops {
                            if self.op(sh, &mut w, op).is_err() {
                                return; // fatal: the session ends
                            }
                        }
                    }
                }
            }
            // Session over: uncommitted staged files are removed by their
            // Drop; a batch with the committer is placed (as it would have
            // been by the lane itself), and the scope waits for it.
        });
    }

    /// Waits until the batch handed to the committer is placed: before a
    /// flush, and before anything but staging (the lane's own order, as if
    /// it had committed the batch itself).
    fn wait_committed(&self, w: &mut Work<'_>) -> Result<(), ()> {
        if std::mem::take(&mut w.committing) && w.committed.recv().is_err() {
            // It stopped with the batch (a panic): what became of its
            // files is unknown, so this lane stops and the session ends
            // without acknowledging them.
            tracing::error!("a commit thread stopped with its batch; ending the session");
            return Err(());
        }
        Ok(())
    }

    /// A full batch goes to the committer (after the one before it); the
    /// lane goes on staging while it is flushed and renamed.
    fn commit_full<'r>(&self, w: &mut Work<'r>) -> Result<(), ()> {
        self.wait_committed(w)?;
        let batch = std::mem::take(&mut w.pending);
        w.pending_bytes = 0;
        match w.committer.send(batch) {
            Ok(()) => w.committing = true,
            // The committer is gone (it panicked): placed here instead.
            Err(e) => {
                let mut batch = e.0;
                self.commit_pending(&self.sh, &mut batch, Synced::No);
            }
        }
        Ok(())
    }

    fn fail(&self, path: &RelPath, error: String, retry_whole: bool) {
        tracing::warn!(path = %path, "{error}");
        let f = Failure {
            path: path.clone(),
            error,
            retry_whole,
        };
        lock(&self.failures).push(f);
    }

    /// Keeps what `p` holds before an operation replaces or removes it; a
    /// failure to keep is a failure of the operation (never lose it).
    fn keep(&self, p: &RelPath, spare_dirs: bool) -> bool {
        let Some(k) = keeper(&self.preserve) else {
            // Following plainly: only what was written here locally.
            return match local::keep_local(&self.sh, p, spare_dirs) {
                Ok(()) => true,
                Err(e) => {
                    self.fail(p, e, false);
                    false
                }
            };
        };
        match k.keep(&self.sh.root, p, spare_dirs) {
            Ok(kept) => {
                if kept {
                    self.sh.stats.conflicts_kept.fetch_add(1, Ordering::Relaxed);
                }
                true
            }
            Err(e) => {
                let area = k.path().display();
                self.fail(
                    p,
                    format!("cannot keep the diverged copy in {area}: {e}"),
                    false,
                );
                false
            }
        }
    }

    fn commit(&self, w: &mut Work<'_>, synced: Synced) -> Result<(), ()> {
        self.wait_committed(w)?;
        self.commit_pending(&self.sh, &mut w.pending, synced);
        w.pending_bytes = 0;
        Ok(())
    }

    fn commit_pending(&self, sh: &Shared, pending: &mut Vec<Verified<'_>>, synced: Synced) {
        let fail = |p: &RelPath, e: String, r: bool| self.fail(p, e, r);
        let keep = |p: &RelPath, d| self.keep(p, d);
        commit_batch(sh, pending, synced, &fail, &keep);
        lock(&sh.placed).flush(); // metadata changes recorded too
    }

    /// One forwarded request; `Err` when the session must end.
    fn op<'r>(&self, sh: &'r Shared, w: &mut Work<'r>, op: Request) -> Result<(), ()> {
        // Only staging goes on beside a batch being placed.
        let staging = matches!(
            op,
            Request::FileBegin {
                encoding: wire::Encoding::Whole,
                ..
            } | Request::FileData { .. }
                | Request::DeltaSegment { .. }
                | Request::FileAbort { .. }
                | Request::FileEnd { .. }
        );
        if !staging {
            self.wait_committed(w)?;
        }
        match op {
            Request::FileBegin {
                id,
                path,
                meta,
                size,
                encoding,
            } => return self.begin(sh, w, id, path, meta, size, encoding),
            Request::FileData { id, data } => self.data(w, id, &data),
            Request::DeltaSegment { id, data } => self.delta(w, id, &data),
            Request::FileAbort { id } => {
                w.inflight.remove(&id);
            }
            Request::FileEnd { id, hash } => return self.end(w, id, hash),
            Request::SigRequest {
                id,
                path,
                block_size,
                strong_len,
            } => self.signature(id, &path, block_size, strong_len),
            other => self.metadata(other),
        }
        Ok(())
    }

    /// Ordered metadata changes (all on lane 0).
    fn metadata(&self, op: Request) {
        let root = &self.sh.root;
        match op {
            Request::Mkdir { path, meta: _ } => {
                if self.keep(&path, true) {
                    match root.mkdir(&path) {
                        Ok(()) => local::forget_entry(&self.sh, &path),
                        Err(e) => self.fail(&path, format!("mkdir: {e}"), false),
                    }
                }
            }
            Request::Delete { path } => {
                if !self.keep(&path, false) {
                    return;
                }
                match root.delete(&path) {
                    Ok(()) => {
                        self.sh.sigs.remove(&path);
                        lock(&self.sh.index).remove(path.as_bytes());
                        local::forget(&self.sh, &path);
                    }
                    Err(e) => self.fail(&path, format!("delete: {e}"), false),
                }
            }
            Request::Symlink { path, target, meta } => {
                if target.len() > wire::MAX_LINK_TARGET || target.is_empty() || target.contains(&0)
                {
                    let e = "symlink target is empty, too long or contains NUL";
                    self.fail(&path, e.into(), false);
                } else if self.keep(&path, false) {
                    let mut ahead = None;
                    let announce = |st: &rustix::fs::Stat| {
                        let st = local::stamp_of_stat(st);
                        ahead = Some(st);
                        local::expect(&self.sh, [(path.clone(), st)]);
                    };
                    match root.symlink_announced(&path, &target, &meta, announce) {
                        Ok(()) => local::record(&self.sh, &path),
                        Err(e) => {
                            if let Some(st) = ahead {
                                local::unexpect(&self.sh, &path, st);
                            }
                            self.fail(&path, format!("symlink: {e}"), false)
                        }
                    }
                }
            }
            Request::Link { path, leader } => {
                let ours = local::is_ours(&self.sh, &leader);
                if self.keep(&path, false) {
                    let ahead = local::expect_link(&self.sh, &path, &leader);
                    match root.link(&path, &leader) {
                        Ok(()) => {
                            // A new link changes the inode's ctime: both names.
                            local::record(&self.sh, &path);
                            if ours {
                                local::record(&self.sh, &leader);
                            }
                        }
                        Err(e) => {
                            if let Some(st) = ahead {
                                local::unexpect(&self.sh, &path, st);
                            }
                            self.fail(&path, format!("hard link to {leader}: {e}"), false)
                        }
                    }
                }
            }
            Request::Rename { from, to } => self.rename(&from, &to),
            Request::SetMeta { path, meta } => {
                // A local write stays one: only syncd's own entry is re-stamped.
                let ours = local::is_ours(&self.sh, &path);
                let ahead = match ours {
                    true => local::expect_meta(&self.sh, &path, &meta),
                    false => None,
                };
                match root.set_meta(&path, &meta) {
                    Ok(()) if ours => local::record(&self.sh, &path),
                    Ok(()) => {}
                    Err(e) => {
                        if let Some(st) = ahead {
                            local::unexpect(&self.sh, &path, st);
                        }
                        self.fail(&path, format!("set metadata: {e}"), false)
                    }
                }
            }
            other => tracing::warn!("unexpected request in worker: {other:?}"),
        }
    }

    fn rename(&self, from: &RelPath, to: &RelPath) {
        if !self.keep(to, false) {
            return;
        }
        let ours = local::is_ours(&self.sh, from);
        match local::rename(&self.sh, from, to, ours, || self.sh.root.rename(from, to)) {
            Ok(()) => {
                self.sh.sigs.remove(from);
                self.sh.sigs.remove(to);
                let mut ix = lock(&self.sh.index);
                ix.remove(from.as_bytes());
                ix.remove(to.as_bytes());
            }
            // Best effort: the scoped reconcile that follows fixes both names.
            Err(e) => tracing::debug!(%from, %to, "rename not applied: {e}"),
        }
    }
}
