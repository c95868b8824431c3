//! The stager: worker threads (lanes) that carry out what the Receiver
//! forwards — metadata changes, staging, writing, delta application, the
//! content check — and hold verified files for the committer.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::accept::SessionError;
use super::commit::{self, commit_batch, keeper, Preserve, Verified};
use super::local;
use super::room::{begin_slot, Slot};
use super::{lock, Shared};
use crate::delta;
use crate::fsroot::Staged;
use crate::index::Stamp;
use crate::wire::{self, Encoding, Failure, Meta, Reply, Request};
use syncd_proto::path::RelPath;
use syncd_proto::receiver::{content_check, FailureLog};

pub(super) enum Job {
    Op(Request),
    /// The Receiver refused more of this file: drop what was staged.
    Drop(u64),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Failures the lanes met since the last barrier.
type Failures = Arc<std::sync::Mutex<FailureLog>>;

/// Files in flight on one connection.
pub(super) type InFlightCount = Arc<AtomicUsize>;

/// A stream's worker threads.
pub(super) struct Lanes {
    txs: Vec<mpsc::Sender<Job>>,
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
            txs: Vec::new(),
            threads: Vec::new(),
            failures: failures.clone(),
        };
        for _ in 0..n {
            let (tx, rx) = mpsc::channel::<Job>(16);
            let mut lane = Lane {
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

    pub(super) async fn send(&self, lane: usize, job: Job) -> Result<(), SessionError> {
        let tx = self.txs.get(lane).ok_or_else(stopped)?;
        tx.send(job).await.map_err(|_| stopped())
    }

    /// Every lane has done and committed what it was given; the failures
    /// since the last flush.
    pub(super) async fn flush(&self) -> Result<FailureLog, SessionError> {
        let mut waits = Vec::new();
        for tx in &self.txs {
            let (t, r) = std::sync::mpsc::channel();
            tx.send(Job::Flush(t)).await.map_err(|_| stopped())?;
            waits.push(r);
        }
        tokio::task::spawn_blocking(move || {
            for w in waits {
                let _ = w.recv();
            }
        })
        .await
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
        Ok(std::mem::take(&mut *lock(&self.failures)))
    }

    /// Stops the workers; what they staged and did not commit is removed.
    pub(super) async fn join(self) {
        drop(self.txs);
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn stopped() -> SessionError {
    SessionError::Protocol("worker stopped".into())
}

struct InFlight<'r> {
    /// Released (count and reserved room) when the file is ended or dropped.
    slot: Slot<'r>,
    path: RelPath,
    meta: Meta,
    size: u64,
    written: u64,
    out: BufWriter<HashingFile<'r>>,
    base: Option<std::fs::File>,
}

/// The staged file, with BLAKE3 (and for large files the block signature)
/// computed over exactly the bytes written.
struct HashingFile<'r> {
    staged: Staged<'r>,
    hasher: blake3::Hasher,
    sig: Option<(u32, u32, delta::SigBuilder)>,
}

impl Write for HashingFile<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.staged.file.write(b)?;
        self.hasher.update(&b[..n]);
        if let Some((_, _, sb)) = &mut self.sig {
            sb.update(&b[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.staged.file.flush()
    }
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
}

impl Lane {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        let sh = self.sh.clone();
        let mut w = Work {
            inflight: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            copy_buf: Vec::new(),
        };
        while let Some(job) = rx.blocking_recv() {
            match job {
                Job::Flush(done) => {
                    self.commit(&mut w);
                    let _ = done.send(());
                }
                Job::Drop(id) => {
                    w.inflight.remove(&id);
                }
                Job::Op(op) => {
                    if self.op(&sh, &mut w, op).is_err() {
                        return; // fatal: the session ends
                    }
                }
            }
        }
        // Session over: uncommitted staged files are removed by their Drop.
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

    fn commit(&self, w: &mut Work<'_>) {
        let fail = |p: &RelPath, e: String, r: bool| self.fail(p, e, r);
        commit_batch(&self.sh, &mut w.pending, &fail, &|p, d| self.keep(p, d));
        w.pending_bytes = 0;
        lock(&self.sh.placed).flush(); // metadata changes recorded too
    }

    /// One forwarded request; `Err` when the session must end.
    fn op<'r>(&self, sh: &'r Shared, w: &mut Work<'r>, op: Request) -> Result<(), ()> {
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
            Request::FileEnd { id, hash } => self.end(w, id, hash),
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
                    match root.symlink(&path, &target, &meta) {
                        Ok(()) => local::record(&self.sh, &path),
                        Err(e) => self.fail(&path, format!("symlink: {e}"), false),
                    }
                }
            }
            Request::Link { path, leader } => {
                let ours = local::is_ours(&self.sh, &leader);
                if self.keep(&path, false) {
                    match root.link(&path, &leader) {
                        Ok(()) => {
                            // A new link changes the inode's ctime: both names.
                            local::record(&self.sh, &path);
                            if ours {
                                local::record(&self.sh, &leader);
                            }
                        }
                        Err(e) => self.fail(&path, format!("hard link to {leader}: {e}"), false),
                    }
                }
            }
            Request::Rename { from, to } => self.rename(&from, &to),
            Request::SetMeta { path, meta } => {
                // A local write stays one: only syncd's own entry is re-stamped.
                let ours = local::is_ours(&self.sh, &path);
                match root.set_meta(&path, &meta) {
                    Ok(()) if ours => local::record(&self.sh, &path),
                    Ok(()) => {}
                    Err(e) => self.fail(&path, format!("set metadata: {e}"), false),
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

    fn signature(&self, id: u64, path: &RelPath, block_size: u32, strong_len: u32) {
        let sh = &self.sh;
        let sig = sh.root.open_file(path).and_then(|f| {
            let m = f.metadata()?;
            let stamp = Stamp::of(&m);
            if let Some(cached) = sh.sigs.get(path, &stamp, block_size, strong_len) {
                return Ok(cached);
            }
            let r = std::io::BufReader::with_capacity(1 << 20, f);
            let sig = delta::signature(r, m.len(), block_size, strong_len)
                .map_err(std::io::Error::other)?;
            sh.sigs.put(path, &stamp, block_size, strong_len, &sig);
            Ok(sig)
        });
        let _ = self.reply.blocking_send(match sig {
            Ok(data) => Reply::Signature { id, data },
            Err(_) => Reply::NoSignature { id },
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn begin<'r>(
        &self,
        sh: &'r Shared,
        w: &mut Work<'r>,
        id: u64,
        path: RelPath,
        meta: Meta,
        size: u64,
        encoding: Encoding,
    ) -> Result<(), ()> {
        let slot = match begin_slot(sh, &self.in_flight, size) {
            Ok(s) => s,
            Err((true, reason)) => {
                // Fatal: this worker stops (its files in flight are
                // dropped, staging removed) and the session ends.
                tracing::error!("{reason}; ending the session");
                let _ = self.reply.blocking_send(Reply::Fatal { reason });
                return Err(());
            }
            Err((false, e)) => {
                self.fail(&path, e, false);
                return Ok(());
            }
        };
        let base = match encoding {
            Encoding::Whole => None,
            Encoding::Delta => match sh.root.open_file(&path) {
                Ok(m) => Some(m),
                Err(e) => {
                    self.fail(&path, format!("delta base unavailable: {e}"), true);
                    return Ok(());
                }
            },
        };
        let staged = match sh.root.stage_for(&path) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&path, format!("staging: {e}"), false);
                return Ok(());
            }
        };
        let sig = (size >= sh.sig_min).then(|| {
            let (b, st) = delta::options_for(size);
            delta::SigBuilder::new(b, st, size)
                .ok()
                .map(|sb| (b, st, sb))
        });
        let hf = HashingFile {
            staged,
            hasher: blake3::Hasher::new(),
            sig: sig.flatten(),
        };
        // Whole files arrive in big chunks; only delta output is fragmented.
        let out = BufWriter::with_capacity(if base.is_some() { 1 << 20 } else { 0 }, hf);
        let f = InFlight {
            slot,
            path,
            meta,
            size,
            written: 0,
            out,
            base,
        };
        w.inflight.insert(id, f);
        Ok(())
    }

    /// Whole-file bytes; the Receiver has checked they fit the announced size.
    fn data(&self, w: &mut Work<'_>, id: u64, data: &[u8]) {
        let Some(f) = w.inflight.get_mut(&id) else {
            return; // failed at its begin, already reported
        };
        f.written += data.len() as u64;
        f.slot.wrote(data.len() as u64);
        if let Err(e) = f.out.write_all(data) {
            if let Some(f) = w.inflight.remove(&id) {
                self.fail(&f.path, format!("write: {e}"), false);
            }
        }
    }

    fn delta(&self, w: &mut Work<'_>, id: u64, data: &[u8]) {
        let Some(f) = w.inflight.get_mut(&id) else {
            return;
        };
        let limit = f.size.saturating_sub(f.written);
        let r = match &f.base {
            Some(base) => delta::apply_segment_file(base, data, &mut f.out, limit, &mut w.copy_buf),
            None => Err(delta::DeltaError::Apply(
                "delta for a file announced whole".into(),
            )),
        };
        match r {
            Ok(n) => {
                f.written += n;
                f.slot.wrote(n);
            }
            Err(e) => {
                if let Some(f) = w.inflight.remove(&id) {
                    self.fail(&f.path, format!("{e}"), true);
                }
            }
        }
    }

    /// The content check; a file that passes waits for its batch.
    fn end(&self, w: &mut Work<'_>, id: u64, hash: wire::Hash) {
        let Some(f) = w.inflight.remove(&id) else {
            return;
        };
        let hf = match f.out.into_inner() {
            Ok(h) => h,
            Err(e) => return self.fail(&f.path, format!("write: {}", e.error()), false),
        };
        let got = *hf.hasher.finalize().as_bytes();
        if let Err(e) = content_check(f.size, f.written, &hash, &got) {
            return self.fail(&f.path, e, true);
        }
        w.pending_bytes += f.size;
        w.pending.push(Verified {
            staged: hf.staged,
            path: f.path,
            meta: f.meta,
            hash,
            sig: hf.sig.map(|(b, st, sb)| (b, st, sb.finish())),
            base: f.base,
        });
        if w.pending.len() >= self.batch_max || w.pending_bytes >= commit::BATCH_BYTES {
            self.commit(w);
        }
    }
}
