//! `syncd --role primary`, first cut: reconcile-driven.
//!
//! Correctness comes from reconcile (the same comparison as `syncd resync`);
//! inotify events only decide *when* to reconcile. Each burst of events is
//! coalesced for a short window, then one reconcile runs. Without a usable
//! watch (e.g. the inotify watch limit) it falls back to a periodic reconcile
//! and says so. Per-path incremental shipping is the next step (issue 3).

use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::client::{self, ClientError, ResyncOptions};
use crate::config::Config;

const QUIET: Duration = Duration::from_millis(20);
const MAX_DELAY: Duration = Duration::from_millis(200);
const PERIODIC: Duration = Duration::from_secs(60);
const PERIODIC_NO_WATCH: Duration = Duration::from_secs(5);

pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let state = cfg.state_dir.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) => ev.paths.is_empty() || ev.paths.iter().any(|p| !p.starts_with(&state)),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .and_then(|mut w| w.watch(&cfg.export, RecursiveMode::Recursive).map(|_| w));
    let period = match &watcher {
        Ok(_) => PERIODIC,
        Err(e) => {
            tracing::error!("cannot watch {} ({e}); falling back to a reconcile every {:?} (raise fs.inotify.max_user_watches)", cfg.export.display(), PERIODIC_NO_WATCH);
            PERIODIC_NO_WATCH
        }
    };
    let opts = ResyncOptions {
        dry_run: false,
        checksum: false,
        delete: cfg.sync.delete,
        progress: false,
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        match client::resync(&cfg, &opts).await {
            Ok(s) => {
                backoff = Duration::from_millis(500);
                if s.sent_whole
                    + s.sent_delta
                    + s.deleted
                    + s.meta_only
                    + s.symlinks
                    + s.hard_links
                    + s.dirs_created
                    > 0
                {
                    tracing::info!(
                        whole = s.sent_whole,
                        delta = s.sent_delta,
                        deleted = s.deleted,
                        ms = s.elapsed.as_millis() as u64,
                        "replicated"
                    );
                }
                for f in &s.failures {
                    tracing::warn!(path = %f.path, "not replicated: {}", f.error);
                }
            }
            Err(e) => {
                tracing::warn!("reconcile failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        tokio::select! {
            _ = rx.recv() => {}
            _ = tokio::time::sleep(period) => {}
            _ = &mut shutdown => return Ok(()),
        }
        // Coalesce the burst: wait for QUIET without events, at most MAX_DELAY.
        let deadline = tokio::time::Instant::now() + MAX_DELAY;
        loop {
            tokio::select! {
                ev = rx.recv() => if ev.is_none() { break },
                _ = tokio::time::sleep(QUIET) => break,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        while rx.try_recv().is_ok() {}
    }
}
