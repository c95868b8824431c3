//! `syncd --role primary`: connect, reconcile, then follow changes live.
//!
//! Correctness comes from reconcile (the comparison behind `syncd resync`):
//! a (re)connect runs it over the whole tree, and each batch of inotify
//! changes runs it over just the changed paths. Renames are replayed first so
//! a moved file or directory costs bytes, not a copy. Each batch ends with a
//! durable commit on the standby; that acknowledgement is what the lag counts.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::batch::{Batch, Batcher, Change};
use crate::client::{self, ClientError, ResyncOptions, Session};
use crate::config::Config;
use crate::index::Index;
use crate::path::RelPath;
use crate::stats::{unix_now, Stats};
use crate::watch::Watch;
use crate::wire::Purpose;

/// Without a working watch, reconcile this often.
const PERIODIC_NO_WATCH: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Files the standby could not apply are retried after this (doubling).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// A hard link made to a file outside a batch's scope is linked on the
/// standby by a full reconcile this soon (one for all that arrive meanwhile).
const LINKS_DELAY: Duration = Duration::from_secs(1);

/// Runs until `shutdown`; serves `/metrics` and `/status` on `admin` if set.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    let peer = cfg.require_peer()?;
    let stats = Arc::new(Stats::new("primary", peer.to_string()));
    if let Some(a) = cfg.admin {
        crate::admin::start(a, stats.clone()).await.map_err(|e| {
            ClientError::Io(std::io::Error::new(
                e.kind(),
                format!("admin: cannot listen on {a}: {e}"),
            ))
        })?;
    }
    run_with(cfg, stats, shutdown).await
}

struct Retry {
    paths: Vec<RelPath>,
    at: Option<Instant>,
    delay: Duration,
    /// Size of the files waiting (part of the lag: data at risk).
    bytes: u64,
    /// When the oldest of them first failed.
    since: Option<std::time::Instant>,
}

impl Retry {
    fn add(&mut self, export: &std::path::Path, failed: Vec<RelPath>) {
        for p in &failed {
            if let Ok(m) = std::fs::symlink_metadata(export.join(p.as_path())) {
                self.bytes += m.len();
            }
        }
        if !failed.is_empty() {
            self.since.get_or_insert_with(std::time::Instant::now);
        }
        self.paths.extend(failed);
    }

    fn take(&mut self) -> Vec<RelPath> {
        self.bytes = 0;
        self.since = None;
        std::mem::take(&mut self.paths)
    }
}

pub async fn run_with(
    cfg: Config,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let mut watch = match Watch::start(&cfg.export) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("{e}; falling back to a full reconcile every {PERIODIC_NO_WATCH:?}");
            stats.error(&e);
            None
        }
    };
    let mut periodic = match (&watch, cfg.sync.full_reconcile) {
        (None, _) => Some(PERIODIC_NO_WATCH),
        (Some(_), p) => p,
    };
    let mut next_full = periodic.map(|p| Instant::now() + p);
    let mut index = Index::load(&cfg.state_dir.join("index.bin"));
    crate::lease::ignore_break_signal();
    let mut opts = ResyncOptions {
        settle: Some(cfg.sync.batch.settle),
        background: true,
        defer_links: Some(Default::default()),
        dry_run: false,
        checksum: cfg.sync.checksum,
        delete: cfg.sync.delete,
        progress: false,
    };
    let wake = watch.as_ref().map(|w| w.wake.clone());
    let mut retry = Retry {
        paths: Vec::new(),
        at: None,
        delay: RETRY_MIN,
        bytes: 0,
        since: None,
    };
    let mut backoff = BACKOFF_MIN;
    let mut commit_id = 0u64;
    'connect: loop {
        let mut s = tokio::select! {
            r = Session::connect(&cfg, Purpose::Resync) => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("standby unavailable: {e}; retrying in {backoff:?}");
                    stats.error(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut shutdown => return Ok(()),
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue 'connect;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        backoff = BACKOFF_MIN;
        stats.connects.fetch_add(1, Relaxed);
        stats.connected_since.store(unix_now(), Relaxed);
        tracing::info!(peer = %stats.peer, "connected to the standby; reconciling");
        // The full reconcile covers everything seen so far; changes from now on
        // arrive as events.
        if let Some(w) = &mut watch {
            while w.rx.try_recv().is_ok() {}
            w.dropped.store(false, Relaxed);
        }
        let mut batcher = Batcher::new(cfg.sync.batch);
        batcher.force_full(Instant::now().into_std());
        let mut live = false;
        // Outcomes of large transfers that ended between batches.
        let mut tsum = client::Summary::default();
        loop {
            let now = Instant::now();
            if let Some(w) = &mut watch {
                while let Ok(c) = w.rx.try_recv() {
                    accept(&stats, &mut batcher, c);
                }
                if w.dropped.swap(false, Relaxed) {
                    stats.overflows.fetch_add(1, Relaxed);
                    tracing::warn!("change queue overflowed; a full reconcile follows");
                    batcher.push(Change::Lost, now.into_std());
                }
                if w.limit_hit.swap(false, Relaxed) && periodic != Some(PERIODIC_NO_WATCH) {
                    // Directories without a watch change silently: only a
                    // periodic compare finds those changes.
                    tracing::error!("inotify watch limit reached (raise fs.inotify.max_user_watches); adding a full reconcile every {PERIODIC_NO_WATCH:?} until restart");
                    periodic = Some(PERIODIC_NO_WATCH);
                    sooner(&mut next_full, now + PERIODIC_NO_WATCH);
                }
            }
            if next_full.is_some_and(|t| now >= t) {
                batcher.force_full(now.into_std());
                next_full = periodic.map(|p| now + p).or(Some(now + PERIODIC_NO_WATCH));
            }
            if retry.at.is_some_and(|t| now >= t) {
                retry.at = None;
                for p in retry.take() {
                    batcher.push(Change::Settled(p), now.into_std());
                }
            }
            stats.queue.store(batcher.pending() as u64, Relaxed);
            if let Some(b) = batcher.take(now.into_std()) {
                commit_id += 1;
                match ship(
                    &mut s,
                    &cfg,
                    &mut opts,
                    &mut index,
                    &mut watch,
                    b,
                    &mut batcher,
                    &stats,
                    commit_id,
                )
                .await
                {
                    Ok((failed, deferred_links)) => {
                        if deferred_links > 0 {
                            // Link them soon, in one compare of the whole tree.
                            sooner(&mut next_full, Instant::now() + LINKS_DELAY);
                        }
                        if failed.is_empty() {
                            retry.delay = RETRY_MIN;
                        } else {
                            retry.add(&cfg.export, failed);
                            retry.at = Some(Instant::now() + retry.delay);
                            retry.delay = (retry.delay * 2).min(RETRY_MAX);
                        }
                        announce_live(&mut live, &s);
                        set_lag(&stats, &batcher, &s, &retry);
                    }
                    Err(e) => {
                        tracing::warn!("lost the standby: {e}; reconnecting");
                        stats.error(&e);
                        stats.connected_since.store(0, Relaxed);
                        s.close().await;
                        continue 'connect;
                    }
                }
                continue;
            }
            let deadline = [
                batcher.deadline().map(Instant::from_std),
                next_full,
                retry.at,
            ]
            .into_iter()
            .flatten()
            .min();
            let far = now + Duration::from_secs(3600);
            tokio::select! {
                t = s.next_transfer(&mut tsum, &mut index) => {
                    // A large file finished on its own stream. Compare it once
                    // more: anything that happened to it meanwhile (another
                    // write, a delete, a rename of its directory) shows now.
                    let _ = t.map(|p| batcher.push(Change::Settled(p), std::time::Instant::now()));
                    record(&stats, &s, &tsum);
                    match followups(std::mem::take(&mut tsum), &mut batcher, &stats) {
                        failed if failed.is_empty() => {}
                        failed => {
                            retry.add(&cfg.export, failed);
                            retry.at.get_or_insert(Instant::now() + retry.delay);
                        }
                    }
                    // Not live yet: the batch that compares this file once
                    // more announces it, so "in sync" means settled.
                    set_lag(&stats, &batcher, &s, &retry);
                }
                c = async {
                    match &mut watch {
                        Some(w) => w.rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(c) = c {
                        accept(&stats, &mut batcher, c);
                    }
                }
                _ = async {
                    match &wake {
                        Some(w) => w.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
                _ = &mut shutdown => {
                    // Ship what is ready, then close cleanly; anything else is
                    // caught by the full reconcile at the next start.
                    let at = Instant::now() + cfg.sync.batch.max_delay;
                    if let Some(b) = batcher.take(at.into_std()) {
                        commit_id += 1;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            ship(&mut s, &cfg, &mut opts, &mut index, &mut watch, b, &mut batcher, &stats, commit_id),
                        )
                        .await;
                    }
                    // Large transfers under way get a while to finish; the
                    // standby drops any that do not (staged, never visible).
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        s.drain_transfers(&mut tsum, &mut index),
                    )
                    .await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), s.finish()).await;
                    save_index(&mut index).await;
                    tracing::info!("primary stopped");
                    return Ok(());
                }
            }
        }
    }
}

fn accept(stats: &Stats, batcher: &mut Batcher, c: Change) {
    stats.events.fetch_add(1, Relaxed);
    if c == Change::Lost {
        stats.overflows.fetch_add(1, Relaxed);
        tracing::warn!(
            "inotify lost events (queue overflow or a failed watch); a full reconcile follows"
        );
    }
    batcher.push(c, std::time::Instant::now());
}

async fn save_index(index: &mut Index) {
    let mut ix = std::mem::take(index);
    let r = tokio::task::spawn_blocking(move || {
        let r = ix.save();
        (ix, r)
    })
    .await;
    if let Ok((ix, r)) = r {
        *index = ix;
        if let Err(e) = r {
            tracing::warn!("could not save the primary's index: {e}");
        }
    }
}

/// Replays renames, reconciles the batch's scope, and waits for the standby's
/// durable commit. Returns the paths the standby could not apply, and how
/// many hard-linked files were left for a full reconcile.
#[allow(clippy::too_many_arguments)]
async fn ship(
    s: &mut Session,
    cfg: &Config,
    opts: &mut ResyncOptions,
    index: &mut Index,
    watch: &mut Option<Watch>,
    b: Batch,
    batcher: &mut Batcher,
    stats: &Stats,
    commit_id: u64,
) -> Result<(Vec<RelPath>, u64), ClientError> {
    let pending = batcher.pending() as u64;
    stats.set_lag(b.changes + pending, b.oldest);
    for (from, to) in &b.renames {
        s.rename(from.clone(), to.clone()).await?;
    }
    stats.renames.fetch_add(b.renames.len() as u64, Relaxed);
    if let Some(w) = watch {
        for sc in b.scope.iter().filter(|s| s.recursive) {
            let abs = cfg.export.join(sc.path.as_path());
            if abs.is_dir() {
                w.ensure(&abs);
            }
        }
    }
    let full = b.full;
    let scope = (!full).then_some(b.scope);
    let mut sum = client::reconcile(s, cfg, opts, index, scope).await?;
    stats.lag_bytes.store(sum.content_bytes, Relaxed);
    sum.failures.extend(s.commit(commit_id).await?);
    stats.lag_bytes.store(s.transfers().bytes(), Relaxed);
    stats.reconciles.fetch_add(1, Relaxed);
    stats.batches.fetch_add(1, Relaxed);
    record(stats, s, &sum);
    if let Some(o) = b.oldest {
        stats
            .last_batch_us
            .store(o.elapsed().as_micros() as u64, Relaxed);
    }
    if full {
        stats.full_reconciles.fetch_add(1, Relaxed);
        save_index(index).await;
        opts.defer_links = Some(Arc::new(std::mem::take(&mut sum.links_outside)));
    }
    let deferred_links = sum.deferred_links;
    if deferred_links > 0 {
        tracing::debug!(
            deferred_links,
            "hard links with names outside the batch; a full reconcile links them"
        );
    }
    let changed = sum.sent_whole + sum.sent_delta + sum.deleted + sum.meta_only + sum.symlinks;
    if full || changed > 0 {
        tracing::debug!(
            full,
            whole = sum.sent_whole,
            delta = sum.sent_delta,
            deleted = sum.deleted,
            renames = b.renames.len(),
            ms = sum.elapsed.as_millis() as u64,
            "replicated"
        );
    }
    Ok((followups(sum, batcher, stats), deferred_links))
}

/// Brings a deadline forward to `at` (never later).
fn sooner(deadline: &mut Option<Instant>, at: Instant) {
    *deadline = Some(deadline.map_or(at, |t| t.min(at)));
}

/// After the first reconcile of a connection, and its large files, are done.
fn announce_live(live: &mut bool, s: &Session) {
    if !*live && s.transfers().is_empty() {
        *live = true;
        tracing::info!("in sync; following changes");
    }
}

/// Counts what a reconcile (or a large transfer) sent.
fn record(stats: &Stats, s: &Session, sum: &client::Summary) {
    stats.files_whole.fetch_add(sum.sent_whole, Relaxed);
    stats.files_delta.fetch_add(sum.sent_delta, Relaxed);
    stats.bytes_whole.fetch_add(sum.bytes_whole, Relaxed);
    stats.bytes_delta.fetch_add(sum.bytes_delta, Relaxed);
    stats.delta_wire_bytes.fetch_add(sum.delta_bytes, Relaxed);
    stats.deletes.fetch_add(sum.deleted, Relaxed);
    let (tx, rx) = s.wire_bytes();
    stats.wire_tx.store(tx, Relaxed);
    stats.wire_rx.store(rx, Relaxed);
}

/// Files busy elsewhere wait for their close; returns the paths to retry.
fn followups(sum: client::Summary, batcher: &mut Batcher, stats: &Stats) -> Vec<RelPath> {
    let now = std::time::Instant::now();
    for p in sum.busy {
        batcher.push(Change::Writing(p), now);
    }
    let mut failed = Vec::new();
    for f in sum.failures {
        tracing::warn!(path = %f.path, "not replicated, will retry: {}", f.error);
        stats.error(format!("{}: {}", f.path, f.error));
        failed.push(f.path);
    }
    failed
}

/// Lag: changes not yet acknowledged, queued or on their way.
fn set_lag(stats: &Stats, batcher: &Batcher, s: &Session, retry: &Retry) {
    let t = s.transfers();
    let oldest = [batcher.oldest(), t.oldest(), retry.since]
        .into_iter()
        .flatten()
        .min();
    stats.set_lag(
        (batcher.pending() + t.len() + retry.paths.len()) as u64,
        oldest,
    );
    stats.lag_bytes.store(t.bytes() + retry.bytes, Relaxed);
}
