//! Carrying out the Receiver's effects: lanes, syncs, replies.

use std::sync::atomic::Ordering;

use super::{blocking, Shell};
use crate::standby::accept::SessionError;
use crate::standby::local;
use crate::standby::lock;
use crate::standby::stage::Job;
use crate::wire::{self, Failure, Reply, Request};
use syncd_proto::receiver::Effect;

/// How long a session's end waits for the export's first recording (for
/// local-write detection): well inside the primary's reply deadline.
const REBASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl Shell {
    /// Carries out what the Receiver asks, in order, for request `msg`
    /// (read as a frame of `frame` bytes).
    pub(super) async fn effects(
        &mut self,
        mut msg: Option<Request>,
        frame: usize,
    ) -> Result<(), SessionError> {
        // A digest walk's rounds come one after another: anything else
        // ends it, and its tree (a hundred bytes a file) is not kept.
        if msg.is_some() && !matches!(msg, Some(Request::Digests { .. })) {
            self.digests = None;
        }
        while let Some(e) = self.rx.poll_effect() {
            match e {
                Effect::Forward { lane } => {
                    let op = msg
                        .take()
                        .ok_or_else(|| SessionError::Protocol("request forwarded twice".into()))?;
                    self.lanes.queue(lane, op, frame).await?
                }
                Effect::Drop { lane, id } => self.lanes.send(lane, Job::Drop(id)).await?,
                Effect::Flush => {
                    let failures = self.lanes.flush().await?;
                    self.rx.handle_flushed(failures);
                }
                Effect::Sync => {
                    self.sync().await?;
                    self.rx.handle_synced();
                }
                Effect::List => self.list(msg.take()).await?,
                Effect::RecordCommit { id } => {
                    if let Some(f) = &mut self.follow {
                        f.record_commit(id)
                    }
                }
                Effect::CaughtUp => self.caught_up(),
                Effect::BarrierDone {
                    id,
                    failures,
                    dropped,
                } => self.barrier_done(id, failures, dropped).await?,
                Effect::Finished => self.finished().await?,
            }
        }
        Ok(())
    }

    /// The export, then the placed-file ledger, durable.
    async fn sync(&self) -> Result<(), SessionError> {
        let sh = self.shared.clone();
        blocking(move || {
            let t = std::time::Instant::now();
            if sh.durable {
                sh.sync_export()?;
                if let Some(state) = &sh.state_fs {
                    rustix::fs::syncfs(state).map_err(std::io::Error::from)?;
                }
            }
            let fs_ms = crate::standby::stage::ms(t);
            // What syncd put, durable before the acknowledgement; a failure
            // here costs at most false reports after a crash, never the
            // commit.
            if let Err(e) = lock(&sh.placed).sync(sh.durable) {
                tracing::warn!("{e}");
            }
            if sh.durable {
                let ms = crate::standby::stage::ms(t);
                tracing::debug!(
                    syncfs_ms = fs_ms,
                    ms,
                    "durable flush before the commit's reply"
                );
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    fn caught_up(&mut self) {
        if let Some(f) = &mut self.follow {
            f.caught_up()
        }
        // Off the reply path: a walk of the whole export (one at a time).
        if self.rebase.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let sh = self.shared.clone();
        self.rebase = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = local::rebase_if_unknown(&sh) {
                tracing::warn!("cannot record the export after the catch-up: {e}");
            }
        }));
    }

    async fn barrier_done(
        &mut self,
        id: u64,
        failures: Vec<Failure>,
        dropped: u64,
    ) -> Result<(), SessionError> {
        if dropped > 0 && !self.features.failures_dropped {
            // The primary cannot hear "and N more": end the session; its
            // reconnect compares the whole tree.
            let reason = format!("{dropped} more files failed than the standby reports one by one; reconnect to compare the whole tree");
            let _ = self
                .reply
                .send(Reply::Fatal {
                    reason: reason.clone(),
                })
                .await;
            return Err(SessionError::Protocol(reason));
        }
        for r in wire::barrier_replies(id, failures, dropped) {
            let _ = self.reply.send(r).await;
        }
        Ok(())
    }

    /// The session's end: the ledger checkpointed, the index saved, then
    /// the reply.
    async fn finished(&mut self) -> Result<(), SessionError> {
        // Local writes are told apart once the session is over, if the
        // walk ends well within the primary's reply deadline; a longer one
        // (a million entries) goes on beside whatever follows.
        if let Some(r) = self.rebase.take() {
            if tokio::time::timeout(REBASE_WAIT, r).await.is_err() {
                tracing::info!("the export is still being recorded for local-write detection; the session ends meanwhile");
            }
        }
        let sh = self.shared.clone();
        blocking(move || {
            if let Err(e) = lock(&sh.placed).checkpoint() {
                tracing::warn!("{e}");
            }
            lock(&sh.index).save().map_err(std::io::Error::other)
        })
        .await?;
        let committed = self.shared.committed.swap(0, Ordering::Relaxed);
        let _ = self.reply.send(Reply::Finished { committed }).await;
        Ok(())
    }
}
