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

use crate::batch::{Batch, Change};
use crate::client::{self, ClientError, ResyncOptions, Session};
use crate::config::Config;
use crate::generation::Leading;
use crate::index::Index;
use crate::live::{Action, Event, Followups, Live, LiveConfig, PERIODIC_NO_WATCH, SUPERSEDED_WAIT};
use crate::stats::{unix_now, Stats};
use crate::watch::Watch;
use crate::wire::Purpose;
use syncd_sdnotify::State;

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

pub async fn run_with(
    cfg: Config,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    run_inner(cfg, stats, shutdown, true).await
}

/// The replication source of `--role auto`: the generation record is the
/// pair driver's (it saved the promotion), so this loop never writes it.
pub async fn run_source(
    cfg: Config,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    run_inner(cfg, stats, shutdown, false).await
}

async fn run_inner(
    cfg: Config,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
    own_record: bool,
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
    let mut live = Live::new(
        LiveConfig {
            batch: cfg.sync.batch,
            full_reconcile: cfg.sync.full_reconcile,
            watching: watch.is_some(),
        },
        std::time::Instant::now(),
    );
    let mut me = Leading::start(&cfg, false)
        .map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?;
    me.persist = own_record;
    live.resume_commits(me.record.lineage.commit);
    stats.set_generation(&me.record.lineage, None);
    let mut index = Index::load(&cfg.state_dir.join("index.bin"));
    crate::lease::ignore_break_signal();
    let settle = crate::lease::Settle {
        quiet: cfg.sync.batch.settle,
        closed: watch.as_ref().map(|w| w.closed.clone()).unwrap_or_default(),
    };
    let mut opts = ResyncOptions {
        settle: Some(settle),
        background: true,
        defer_links: Some(Default::default()),
        dry_run: false,
        checksum: cfg.sync.checksum,
        delete: cfg.sync.delete,
        progress: false,
        take_over: false,
    };
    let wake = watch.as_ref().map(|w| w.wake.clone());
    let mut session: Option<Session> = None;
    // Ready (sd_notify) once changes are being recorded, not once the
    // standby answers: a standby that is down must not fail the primary's
    // start; it catches up when it returns. STATUS says whether it is
    // connected. Under --role auto the pair driver reports instead.
    let standalone = own_record;
    if standalone {
        let status = format!(
            "primary: watching {}; connecting to {}",
            cfg.export.display(),
            peer_name(&cfg)
        );
        syncd_sdnotify::send(&[State::Ready, State::Status(&status)]);
    }
    // Outcomes of large transfers that ended between batches.
    let mut tsum = client::Summary::default();
    loop {
        while let Some(e) = live.poll_event() {
            if e == Event::InSync {
                if standalone {
                    let status = format!(
                        "primary: in sync with {}; following changes",
                        peer_name(&cfg)
                    );
                    syncd_sdnotify::send(&[State::Status(&status)]);
                }
                // The catch-up is complete: the standby follows our
                // generation from here (it stops keeping what we overwrite).
                if let Some(s) = session.as_mut() {
                    let sent = async {
                        s.send(&crate::wire::Request::CaughtUp).await?;
                        s.flush().await
                    };
                    if let Err(e) = sent.await {
                        lost(&mut session, &mut live, &stats, e).await;
                    }
                }
            }
            on_event(e);
        }
        let now = std::time::Instant::now();
        if let Some(w) = &mut watch {
            while let Ok(c) = w.rx.try_recv() {
                accept(&stats, &mut live, c);
            }
            if w.dropped.swap(false, Relaxed) {
                stats.overflows.fetch_add(1, Relaxed);
                tracing::warn!("change queue overflowed; a full reconcile follows");
                live.handle_change(Change::Lost, now);
            }
            if w.limit_hit.swap(false, Relaxed) {
                live.handle_watch_limit(now);
            }
        }
        stats.queue.store(live.pending() as u64, Relaxed);
        match live.poll_action(now) {
            Some(Action::Connect) => {
                let r = tokio::select! {
                    r = Session::connect(&cfg, Purpose::Resync, &me) => r,
                    _ = &mut shutdown => return Ok(()),
                };
                match r {
                    Ok(s) => {
                        if let Some((_, theirs)) = &s.peer {
                            me.saw_peer(theirs);
                            stats.set_generation(&me.record.lineage, Some(theirs));
                        }
                        live.handle_connected(std::time::Instant::now());
                        session = Some(s);
                        stats.connects.fetch_add(1, Relaxed);
                        stats.connected_since.store(unix_now(), Relaxed);
                        tracing::info!(peer = %cfg.peer.map(|p| p.to_string()).unwrap_or_default(), "connected to the standby; reconciling");
                        if standalone {
                            let status =
                                format!("primary: connected to {}; reconciling", peer_name(&cfg));
                            syncd_sdnotify::send(&[State::Status(&status)]);
                        }
                    }
                    Err(e) => {
                        if let ClientError::Refused(_, Some(theirs)) = &e {
                            me.saw_peer(theirs);
                            stats.refused.fetch_add(1, Relaxed);
                        }
                        let wait = live.handle_connect_failed(std::time::Instant::now());
                        tracing::warn!("standby unavailable: {e}; retrying in {wait:?}");
                        if standalone {
                            let status = format!(
                                "primary: standby {} unavailable, retrying in {wait:?}: {e}",
                                peer_name(&cfg)
                            );
                            syncd_sdnotify::send(&[State::Status(&status)]);
                        }
                        stats.error(&e);
                    }
                }
            }
            Some(Action::Ship { batch, commit_id }) => {
                let batch_full = batch.full;
                let Some(s) = session.as_mut() else {
                    live.handle_session_lost(now);
                    continue;
                };
                match ship(
                    s, &cfg, &mut opts, &mut index, &mut watch, batch, &live, &stats, commit_id,
                )
                .await
                {
                    Ok((f, deferred_links)) => {
                        me.committed(commit_id);
                        if batch_full {
                            me.save();
                        }
                        // Acknowledged: the standby follows our generation up to this batch.
                        stats.set_generation(&me.record.lineage, Some(&me.record.lineage));
                        live.handle_shipped(
                            std::time::Instant::now(),
                            f,
                            deferred_links,
                            s.transfers().is_empty(),
                        );
                        set_lag(&stats, &live, s);
                    }
                    Err(e) => lost(&mut session, &mut live, &stats, e).await,
                }
            }
            Some(Action::Stop { flush }) => {
                if let Some(s) = session.take() {
                    stop(
                        s, &cfg, &mut opts, &mut index, &mut watch, flush, &live, &stats, &mut tsum,
                    )
                    .await;
                }
                save_index(&mut index).await;
                me.save();
                tracing::info!("primary stopped");
                return Ok(());
            }
            None => {
                let far = Instant::now() + Duration::from_secs(3600);
                let conn = session.as_ref().map(Session::connection);
                let deadline = live.poll_timeout().map_or(far, Instant::from_std);
                tokio::select! {
                    t = async {
                        match session.as_mut() {
                            Some(s) => s.next_transfer(&mut tsum, &mut index).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Some(s) = &session {
                            record(&stats, s, &tsum);
                        }
                        let f = followups(std::mem::take(&mut tsum), &stats, &cfg.export, opts.settle.as_ref());
                        live.handle_transfer_done(std::time::Instant::now(), t, f);
                        // Not in sync yet: the batch that compares this file
                        // once more says so, so "in sync" means settled.
                        if let Some(s) = &session {
                            set_lag(&stats, &live, s);
                        }
                    }
                    c = async {
                        match &mut watch {
                            Some(w) => w.rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        if let Some(c) = c {
                            accept(&stats, &mut live, c);
                        }
                    }
                    _ = async {
                        match &wake {
                            Some(w) => w.notified().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    e = async {
                        match &conn {
                            Some(c) => c.closed().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        // Noticed while idle, not only at the next batch: a
                        // primary whose session is gone must not look in sync.
                        let e = ClientError::Protocol(format!("session closed: {e}"));
                        lost(&mut session, &mut live, &stats, e).await;
                    }
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = &mut shutdown => {
                        // A change made just before the stop may still be on
                        // its way from inotify: collect it, so the last batch
                        // carries it (a planned switchover loses nothing).
                        let until = Instant::now() + SHUTDOWN_COLLECT;
                        if let Some(w) = &mut watch {
                            while let Ok(Some(c)) = tokio::time::timeout_at(until, w.rx.recv()).await {
                                accept(&stats, &mut live, c);
                            }
                        }
                        live.handle_shutdown();
                    }
                }
            }
        }
    }
}

/// Ships what was seen before the stop, lets large transfers finish, and
/// closes the session, each under a deadline: what does not make it is
/// found by the full reconcile at the next start (the standby never shows
/// a partial file).
#[allow(clippy::too_many_arguments)]
async fn stop(
    mut s: Session,
    cfg: &Config,
    opts: &mut ResyncOptions,
    index: &mut Index,
    watch: &mut Option<Watch>,
    flush: Option<(Batch, u64)>,
    live: &Live,
    stats: &Stats,
    tsum: &mut client::Summary,
) {
    const GRACE: Duration = Duration::from_secs(10);
    if let Some((b, id)) = flush {
        let _ = tokio::time::timeout(
            GRACE,
            ship(&mut s, cfg, opts, index, watch, b, live, stats, id),
        )
        .await;
    }
    let _ = tokio::time::timeout(GRACE, s.drain_transfers(tsum, index)).await;
    let _ = tokio::time::timeout(GRACE, s.finish()).await;
}

fn peer_name(cfg: &Config) -> String {
    cfg.peer.map(|p| p.to_string()).unwrap_or_default()
}

/// How long a stopping primary keeps reading the watch for last changes.
const SHUTDOWN_COLLECT: Duration = Duration::from_millis(50);

/// The session failed: reconnect, unless another primary took the standby.
async fn lost(session: &mut Option<Session>, live: &mut Live, stats: &Stats, e: ClientError) {
    stats.error(&e);
    stats.connected_since.store(0, Relaxed);
    if let Some(s) = session.take() {
        s.close().await;
    }
    if superseded(&e) {
        // Another primary with our key (a cloned VM, a restored backup)
        // took the standby: say so at once and do not fight over it.
        stats.superseded.fetch_add(1, Relaxed);
        tracing::error!("another primary took over the standby ({e}): two primaries must never run for one export; stop one of them. Trying again in {SUPERSEDED_WAIT:?}");
        live.handle_superseded(std::time::Instant::now());
    } else {
        tracing::warn!("lost the standby: {e}; reconnecting");
        live.handle_session_lost(std::time::Instant::now());
    }
}

/// The standby closed our session for a newer one (see `standby.rs`).
fn superseded(e: &ClientError) -> bool {
    e.to_string().contains(crate::wire::SUPERSEDED)
}

fn on_event(e: Event) {
    match e {
        Event::InSync => tracing::info!("in sync; following changes"),
        Event::EventsLost => {}
        Event::WatchLimit => {
            // Directories without a watch change silently: only a periodic
            // compare finds those changes.
            tracing::error!("inotify watch limit reached (raise fs.inotify.max_user_watches); adding a full reconcile every {PERIODIC_NO_WATCH:?} until restart");
        }
        Event::Retrying { files, after } => {
            tracing::debug!(
                files,
                ?after,
                "files the standby could not apply are retried"
            );
        }
    }
}

fn accept(stats: &Stats, live: &mut Live, c: Change) {
    stats.events.fetch_add(1, Relaxed);
    if c == Change::Lost {
        stats.overflows.fetch_add(1, Relaxed);
        tracing::warn!(
            "inotify lost events (queue overflow or a failed watch); a full reconcile follows"
        );
    }
    live.handle_change(c, std::time::Instant::now());
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
    live: &Live,
    stats: &Stats,
    commit_id: u64,
) -> Result<(Followups, u64), ClientError> {
    let pending = live.pending() as u64;
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
    let dropped = s.take_failures_dropped();
    if dropped > 0 {
        let e = format!("{dropped} more files failed on the standby than it lists; a full reconcile retries them");
        tracing::warn!("{e}");
        stats.error(e);
    }
    let changed = sum.sent_whole + sum.sent_delta + sum.deleted + sum.meta_only + sum.symlinks;
    if full || changed > 0 {
        tracing::debug!(
            full,
            whole = sum.sent_whole,
            delta = sum.sent_delta,
            deleted = sum.deleted,
            meta = sum.meta_only,
            symlinks = sum.symlinks,
            renames = b.renames.len(),
            ms = sum.elapsed.as_millis() as u64,
            "replicated"
        );
    }
    // A whole-tree compare soon: the same path that links deferred links.
    let f = followups(sum, stats, &cfg.export, opts.settle.as_ref());
    Ok((f, deferred_links + dropped))
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

/// Files busy elsewhere wait for their close, or, when a writer closed them
/// and only the close record is too young to trust, for just the rest of
/// its margin; failed ones are retried (their size counts as lag: data at
/// risk).
fn followups(
    sum: client::Summary,
    stats: &Stats,
    export: &std::path::Path,
    settle: Option<&crate::lease::Settle>,
) -> Followups {
    let mut f = Followups::default();
    let now = std::time::Instant::now();
    for p in sum.busy {
        let young = settle.and_then(|s| {
            let m = std::fs::symlink_metadata(export.join(p.as_path())).ok()?;
            s.closed.recheck_in(&p, &m, s.quiet)
        });
        match young {
            Some(d) => f.later.push((p, now + d)),
            None => f.busy.push(p),
        }
    }
    for e in sum.failures {
        tracing::warn!(path = %e.path, "not replicated, will retry: {}", e.error);
        stats.error(format!("{}: {}", e.path, e.error));
        let bytes = std::fs::symlink_metadata(export.join(e.path.as_path())).map_or(0, |m| m.len());
        f.failed.push((e.path, bytes));
    }
    f
}

/// Lag: changes not yet acknowledged, queued or on their way.
fn set_lag(stats: &Stats, live: &Live, s: &Session) {
    let t = s.transfers();
    let l = live.lag();
    let oldest = [l.oldest, t.oldest()].into_iter().flatten().min();
    stats.set_lag(l.ops + t.len() as u64, oldest);
    stats.lag_bytes.store(t.bytes() + l.bytes, Relaxed);
}
