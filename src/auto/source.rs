//! The replication source (`primary::run_source`) while this node leads:
//! started at promotion, stopped at demotion once the peer has adopted our
//! generation (or in the background during a hand-over).

use std::sync::Arc;
use std::time::Duration;

use syncd_proto::pair::role::Role;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Driver;
use crate::config::Config;
use crate::stats::Stats;

/// How long a demoting node keeps its source for the peer to adopt its
/// generation.
pub(super) const ADOPT_WAIT: Duration = Duration::from_secs(10);

/// The replication source while this node leads.
pub(super) struct Source {
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: tokio::task::JoinHandle<()>,
    /// Its watch's sync handle, once its watch runs (see `WatchSync`).
    pub(super) sync: crate::primary::SyncSlot,
}

impl Source {
    pub(super) fn sync(&self) -> Option<crate::watch::WatchSync> {
        self.sync.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Driver<'_> {
    /// A hand-over's source stop: the loop goes on (answers the peer's
    /// request to lead) and `source_stopped` follows when it is done.
    pub(super) fn stop_source_in_background(&mut self) {
        let Some(mut s) = self.source.take() else {
            self.source_stop = Some(tokio::spawn(async {}));
            return;
        };
        let _ = s.stop.send(());
        self.source_stop = Some(tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(15), &mut s.task)
                .await
                .is_err()
            {
                tracing::error!("the replication source did not stop within 15 s; ending it");
                s.task.abort();
            }
        }));
    }

    /// The background source stop is done: the node follows.
    pub(super) fn source_stopped(&mut self, role: &mut Role) {
        self.source_stop = None;
        if let Some(sw) = self.switch.as_mut() {
            sw.stopped.get_or_insert_with(Instant::now);
        }
        self.fenced = false;
        role.handle_demoted(std::time::Instant::now());
    }

    /// Not serving any more: the source stops, unless the peer (heard, not
    /// leading) has yet to adopt our generation: without it the peer could
    /// never take over from us (our data would stay newer than its), so
    /// the source runs on until then, bounded.
    pub(super) async fn stop_source(&mut self, role: &mut Role) {
        if self.waits_for_adoption(role) {
            tracing::info!(
                "demoting: the source runs until the peer holds generation {} (at most {:?}), so it can take over",
                role.lineage().gen,
                ADOPT_WAIT
            );
            self.adopt_until = Some(Instant::now() + ADOPT_WAIT);
            return;
        }
        self.finish_demote(role).await;
    }

    pub(super) fn waits_for_adoption(&self, role: &Role) -> bool {
        let gen = role.lineage().gen;
        self.source.is_some()
            && !self.stopping
            && role
                .peer()
                .is_some_and(|p| !p.leading && p.lineage.gen != gen)
    }

    pub(super) async fn check_adopted(&mut self, role: &mut Role) {
        if let Some(t) = self.adopt_until {
            if Instant::now() >= t || !self.waits_for_adoption(role) {
                self.adopt_until = None;
                self.finish_demote(role).await;
            }
        }
    }

    /// The source stops; the node follows.
    pub(super) async fn finish_demote(&mut self, role: &mut Role) {
        if let Some(mut s) = self.source.take() {
            let _ = s.stop.send(());
            if tokio::time::timeout(Duration::from_secs(15), &mut s.task)
                .await
                .is_err()
            {
                tracing::error!("the replication source did not stop within 15 s; ending it");
                s.task.abort();
            }
        }
        self.fenced = false;
        role.handle_demoted(std::time::Instant::now());
    }
}

/// Starts `primary::run_with` (it continues the generation just saved).
pub(super) fn start_source(cfg: &Config, stats: Arc<Stats>) -> Source {
    let (stop, stop_rx) = oneshot::channel::<()>();
    let cfg = cfg.clone();
    let sync = crate::primary::SyncSlot::default();
    let slot = sync.clone();
    let task = tokio::spawn(async move {
        let r = crate::primary::run_source(cfg, stats, slot, async {
            let _ = stop_rx.await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!("replication source: {e}");
        }
    });
    Source { stop, task, sync }
}
