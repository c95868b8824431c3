//! The primary's replication functions, after the live loop's helpers:
//! shipping a batch, stopping, and what a session's loss means.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::session::{ClientError, Session};
use super::summary::{ResyncOptions, Summary};
use crate::config::Config;
use crate::index::Index;
use crate::stats::Stats;
use crate::watch::Watch;
use syncd_proto::batch::{Batch, Change};
use syncd_proto::live::{Event, Followups, Live, PERIODIC_NO_WATCH, SUPERSEDED_WAIT};

/// What shipping a batch works with, borrowed from the live loop's driver
/// beside its session.
pub(super) struct Shipping<'a> {
    pub cfg: &'a Config,
    pub opts: &'a mut ResyncOptions,
    pub index: &'a mut Index,
    pub watch: &'a mut Option<Watch>,
    pub live: &'a Live,
    pub stats: &'a Stats,
}

/// Ships what was seen before the stop, lets large transfers finish, and
/// closes the session, each under a deadline: what does not make it is
/// found by the full reconcile at the next start (the standby never shows
/// a partial file).
pub(super) async fn stop(
    mut s: Session,
    mut with: Shipping<'_>,
    flush: Option<(Batch, u64)>,
    tsum: &mut Summary,
) {
    const GRACE: Duration = Duration::from_secs(10);
    if let Some((b, id)) = flush {
        let shipped = async {
            ship(&mut s, &mut with, b, id).await?;
            while s.next_committed().await?.0 != id {}
            Ok::<_, ClientError>(())
        };
        let _ = tokio::time::timeout(GRACE, shipped).await;
    }
    let _ = tokio::time::timeout(GRACE, s.drain_transfers(tsum, with.index)).await;
    let _ = tokio::time::timeout(GRACE, s.finish()).await;
}

/// A session, once our export is checked (a filesystem unmounted under us
/// would be compared as an empty tree).
pub(super) async fn connect(
    cfg: &Config,
    me: &crate::generation::Leading,
) -> Result<Session, ClientError> {
    let (dir, export) = (cfg.state_dir.clone(), cfg.export.clone());
    tokio::task::spawn_blocking(move || crate::state::check_mounted(&dir, &export))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .map_err(std::io::Error::other)?;
    Session::connect(cfg, crate::wire::Purpose::Resync, me).await
}

/// Logs a failed connect, retried after `wait`; returns the unit's status.
pub(super) fn connect_failed(cfg: &Config, e: &ClientError, wait: Duration) -> String {
    match e {
        ClientError::Io(_) => {
            tracing::error!("cannot replicate: {e}; retrying in {wait:?}");
            format!("primary: cannot replicate, retrying in {wait:?}: {e}")
        }
        _ => {
            tracing::warn!("standby unavailable: {e}; retrying in {wait:?}");
            format!(
                "primary: standby {} unavailable, retrying in {wait:?}: {e}",
                peer_name(cfg)
            )
        }
    }
}

pub(super) fn peer_name(cfg: &Config) -> String {
    cfg.peer.map(|p| p.to_string()).unwrap_or_default()
}

/// How long a stopping primary keeps reading the watch for last changes
/// when it has no sync point.
pub(super) const SHUTDOWN_COLLECT: Duration = Duration::from_millis(50);
/// How long a stopping primary waits for its watch to handle every event
/// queued before the stop.
pub(super) const SHUTDOWN_SYNC: Duration = Duration::from_secs(5);

/// The session failed: reconnect, unless another primary took the standby.
pub(super) async fn lost(
    session: &mut Option<Session>,
    live: &mut Live,
    stats: &Stats,
    e: ClientError,
) {
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
    } else if recurs(&e) {
        // The next session would meet it again at once: not in a loop of
        // connects and whole-tree walks.
        let wait = live.handle_session_failed(std::time::Instant::now());
        tracing::error!("session failed: {e}; trying again in {wait:?}");
    } else {
        tracing::warn!("lost the standby: {e}; reconnecting");
        live.handle_session_lost(std::time::Instant::now());
    }
}

/// A failure the next session meets again at once: the standby's fatal
/// error (its export refused, full, unreadable) or our own export's.
pub(super) fn recurs(e: &ClientError) -> bool {
    matches!(e, ClientError::Fatal(_) | ClientError::Io(_))
}

/// The standby closed our session for a newer one (see `standby.rs`).
fn superseded(e: &ClientError) -> bool {
    e.to_string().contains(crate::wire::SUPERSEDED)
}

pub(super) fn on_event(e: Event) {
    match e {
        Event::InSync => tracing::info!("in sync; following changes"),
        Event::EventsLost => {}
        Event::WatchLimit => {
            // Directories without a watch change silently: only a periodic
            // compare finds those changes.
            tracing::error!("a directory could not be watched (the inotify watch limit: raise fs.inotify.max_user_watches; or the warning before); adding a full reconcile every {PERIODIC_NO_WATCH:?} until restart");
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

pub(super) fn accept(stats: &Stats, live: &mut Live, c: Change) {
    stats.events.fetch_add(1, Relaxed);
    if c == Change::Lost {
        stats.overflows.fetch_add(1, Relaxed);
        tracing::warn!(
            "inotify lost events (queue overflow or a failed watch); a full reconcile follows"
        );
    }
    live.handle_change(c, std::time::Instant::now());
}

pub(super) async fn save_index(index: &mut Index) {
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

/// A batch applied on the standby whose commit is sent: what its answer
/// completes.
pub(super) struct Shipped {
    pub commit_id: u64,
    sum: Summary,
    pub full: bool,
    changes: u64,
    renames: usize,
    oldest: Option<std::time::Instant>,
    /// Its oldest change's wait before the batch started, its reconcile
    /// (lists, content, barriers), and when its commit went out.
    waited: Option<Duration>,
    reconcile: Duration,
    sent: std::time::Instant,
    /// Started while the previous batch's commit was still awaited.
    overlapped: bool,
}

/// Replays renames, reconciles the batch's scope and sends its durable
/// commit; the commit's answer (awaited by the caller, possibly after the
/// next batch has started) completes it in [`acknowledged`].
pub(super) async fn ship(
    s: &mut Session,
    with: &mut Shipping<'_>,
    b: Batch,
    commit_id: u64,
) -> Result<Shipped, ClientError> {
    let (cfg, live, stats) = (with.cfg, with.live, with.stats);
    let (opts, index) = (&mut *with.opts, &mut *with.index);
    // What is in flight (this batch too) is lag until acknowledged.
    set_lag(stats, live, s);
    let overlapped = s.commits_pending() > 0;
    for (from, to) in &b.renames {
        s.rename(from.clone(), to.clone()).await?;
    }
    stats.renames.fetch_add(b.renames.len() as u64, Relaxed);
    if let Some(w) = with.watch {
        for sc in b.scope.iter().filter(|s| s.recursive) {
            let abs = cfg.export.join(sc.path.as_path());
            if abs.is_dir() {
                w.ensure(&abs);
            }
        }
    }
    let full = b.full;
    let scope = (!full).then_some(b.scope);
    let t0 = std::time::Instant::now();
    let waited = b.oldest.map(|o| t0.saturating_duration_since(o));
    let mut sum = super::reconcile::reconcile(s, cfg, opts, index, scope).await?;
    if full {
        // The next batch plans with them, whether or not this one's
        // commit has been answered by then.
        opts.defer_links = Some(Arc::new(std::mem::take(&mut sum.links_outside)));
    }
    let reconcile = t0.elapsed();
    s.send_commit(commit_id).await?;
    Ok(Shipped {
        commit_id,
        sum,
        full,
        changes: b.changes,
        renames: b.renames.len(),
        oldest: b.oldest,
        waited,
        reconcile,
        sent: std::time::Instant::now(),
        overlapped,
    })
}

/// Batch `sh` is durable on the standby (its commit answered at `at`, with
/// `failures`): counts it and returns the paths to compare again or retry,
/// and how many hard-linked files were left for a full reconcile.
pub(super) async fn acknowledged(
    s: &mut Session,
    with: &mut Shipping<'_>,
    sh: Shipped,
    failures: Vec<crate::wire::Failure>,
    at: std::time::Instant,
) -> (Followups, u64) {
    let (cfg, stats) = (with.cfg, with.stats);
    let (opts, index) = (&mut *with.opts, &mut *with.index);
    let Shipped { mut sum, full, .. } = sh;
    sum.failures.extend(failures);
    // Where a batch's time goes (debug): its oldest change's wait before
    // the batch started, the reconcile (lists, content, barriers), the
    // durable commit (sent to answered; pipelined, the next batch's
    // listing and content go meanwhile).
    tracing::debug!(
        changes = sh.changes,
        waited_us = sh.waited.map_or(0, |d| d.as_micros() as u64),
        reconcile_us = sh.reconcile.as_micros() as u64,
        commit_us = at.saturating_duration_since(sh.sent).as_micros() as u64,
        overlapped = sh.overlapped,
        "batch timing"
    );
    stats.lag_bytes.store(s.transfers().bytes(), Relaxed);
    stats.reconciles.fetch_add(1, Relaxed);
    stats.batches.fetch_add(1, Relaxed);
    record(stats, s, &sum);
    if let Some(o) = sh.oldest {
        stats
            .last_batch_us
            .store(o.elapsed().as_micros() as u64, Relaxed);
    }
    if full {
        stats.full_reconciles.fetch_add(1, Relaxed);
        save_index(index).await;
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
            renames = sh.renames,
            ms = sum.elapsed.as_millis() as u64,
            "replicated"
        );
    }
    // A whole-tree compare soon: the same path that links deferred links.
    let f = followups(sum, stats, &cfg.export, opts.settle.as_ref());
    (f, deferred_links + dropped)
}

/// Counts what a reconcile (or a large transfer) sent.
pub(super) fn record(stats: &Stats, s: &Session, sum: &Summary) {
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
/// its margin, or else until quiet for `settle_ms` by their ctime (not
/// `settle_ms` from now: a file a fenced client left open goes as soon as
/// it may); failed ones are retried (their size counts as lag: data at
/// risk).
pub(super) fn followups(
    sum: Summary,
    stats: &Stats,
    export: &std::path::Path,
    settle: Option<&crate::lease::Settle>,
) -> Followups {
    let mut f = Followups::default();
    let now = std::time::Instant::now();
    for p in sum.busy {
        let young = settle.and_then(|s| {
            let m = std::fs::symlink_metadata(export.join(p.as_path())).ok()?;
            let quiet = s.quiet_left(&m).filter(|d| !d.is_zero());
            s.closed.recheck_in(&p, &m, s.quiet).or(quiet)
        });
        tracing::debug!(path = %p, again_in = ?young, "held back: open for writing");
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
pub(super) fn set_lag(stats: &Stats, live: &Live, s: &Session) {
    let t = s.transfers();
    let l = live.lag();
    let oldest = [l.oldest, t.oldest()].into_iter().flatten().min();
    stats.set_lag(l.ops + t.len() as u64, oldest);
    stats.lag_bytes.store(t.bytes() + l.bytes, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file held open and not yet quiet is compared again when its ctime
    /// is `settle_ms` old, not `settle_ms` after this look at it.
    #[test]
    fn a_busy_file_is_looked_at_again_when_quiet_by_its_ctime() {
        use std::time::Duration;
        let d = tempfile::tempdir().unwrap();
        let _held = std::fs::File::create(d.path().join("f")).unwrap();
        let p = syncd_proto::path::RelPath::new(b"f".to_vec()).unwrap();
        let settle = crate::lease::Settle {
            quiet: Duration::from_secs(60),
            closed: std::sync::Arc::default(),
        };
        let before = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let sum = Summary {
            busy: vec![p.clone()],
            ..Summary::default()
        };
        let f = followups(sum, &Stats::default(), d.path(), Some(&settle));
        assert!(f.busy.is_empty(), "{f:?}");
        let [(q, at)] = f.later.as_slice() else {
            panic!("{f:?}")
        };
        assert_eq!(q, &p);
        // Due a minute after the file's change, so earlier than a minute
        // from now (and not long before).
        assert!(*at < std::time::Instant::now() + settle.quiet, "{f:?}");
        assert!(*at > before + Duration::from_secs(50), "{f:?}");
        // Without a settle rule it waits for its close, as before.
        let sum = Summary {
            busy: vec![p],
            ..Summary::default()
        };
        let f = followups(sum, &Stats::default(), d.path(), None);
        assert_eq!((f.busy.len(), f.later.len()), (1, 0));
    }
}
