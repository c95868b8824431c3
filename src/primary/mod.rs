//! `syncd --role primary`: connect, reconcile, then follow changes live.
//!
//! Correctness comes from reconcile (the comparison behind `syncd resync`):
//! a (re)connect runs it over the whole tree, and each batch of inotify
//! changes runs it over just the changed paths. Renames are replayed first so
//! a moved file or directory costs bytes, not a copy. Each batch ends with a
//! durable commit on the standby; that acknowledgement is what the lag counts.
//!
//! The flow, one file each: `session.rs` (QUIC connection, Hello, the
//! control stream) → `reconcile.rs` (compare, then send in order) →
//! `source.rs` (the one reader of a source file) → `small.rs` (small files
//! on the control stream) and `transfer.rs` (large files and deltas on their
//! own streams); `verify.rs` compares without changing anything; this file
//! and `ship.rs` are the live loop around `syncd_proto::live::Live`. The
//! protocol rules are `syncd_proto::sender`'s.

mod digests;
mod reconcile;
mod reply;
mod session;
mod ship;
mod small;
pub mod source;
pub mod stream;
mod summary;
pub mod transfer;
mod verify;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use reconcile::{reconcile, resync, resync_with};
pub use session::{ClientError, Session, MAX_LIST_BYTES, MAX_LIST_ENTRIES};
pub use summary::{NoProgress, Progress, ResyncOptions, Summary};
pub use verify::{compare, verify, verify_quick, Difference};

use crate::config::Config;
use crate::generation::Leading;
use crate::index::Index;
use crate::stats::{unix_now, Stats};
use crate::watch::Watch;
use ship::{
    accept, acknowledged, followups, lost, on_event, peer_name, record, set_lag, ship, stop,
    Shipped, Shipping,
};
use syncd_proto::live::{Action, Event, Live, LiveConfig, PERIODIC_NO_WATCH};
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
    run_inner(cfg, stats, shutdown, true, None).await
}

/// Where the replication source of `--role auto` leaves its watch's sync
/// handle for the pair driver's switchover drain.
pub type SyncSlot = Arc<std::sync::Mutex<Option<crate::watch::WatchSync>>>;

/// The replication source of `--role auto`: the generation record is the
/// pair driver's (it saved the promotion), so this loop never writes it.
pub async fn run_source(
    cfg: Config,
    stats: Arc<Stats>,
    sync: SyncSlot,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    run_inner(cfg, stats, shutdown, false, Some(sync)).await
}

/// What the live loop holds; `Live` decides, this carries it out.
struct Driver {
    cfg: Config,
    stats: Arc<Stats>,
    live: Live,
    me: Leading,
    index: Index,
    opts: ResyncOptions,
    watch: Option<Watch>,
    session: Option<Session>,
    /// Outcomes of large transfers that ended between batches.
    tsum: Summary,
    /// Batches whose commits are sent and not yet answered, oldest first
    /// (`Live` holds the same ids).
    shipped: std::collections::VecDeque<Shipped>,
    /// Changes taken from the watch since the queue depth was last set.
    taken: usize,
    /// Ready and STATUS (sd_notify) are ours; under --role auto the pair
    /// driver reports instead.
    standalone: bool,
}

async fn run_inner(
    cfg: Config,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
    own_record: bool,
    sync: Option<SyncSlot>,
) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let mut d = Driver::start(cfg, stats, own_record)?;
    if let (Some(slot), Some(w)) = (sync, &d.watch) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.sync());
    }
    loop {
        d.events().await;
        let now = std::time::Instant::now();
        d.poll_watch(now);
        match d.live.poll_action(now) {
            Some(Action::Connect) => {
                let r = tokio::select! {
                    r = ship::connect(&d.cfg, &d.me) => r,
                    _ = &mut shutdown => return Ok(()),
                };
                d.connected(r);
            }
            Some(Action::Ship { batch, commit_id }) => d.ship(batch, commit_id, now).await,
            Some(Action::Stop { flush }) => {
                d.stop(flush).await;
                return Ok(());
            }
            None => d.idle(&mut shutdown).await,
        }
    }
}

impl Driver {
    fn start(cfg: Config, stats: Arc<Stats>, own_record: bool) -> Result<Driver, ClientError> {
        let watch = match Watch::start(&cfg.export) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(
                    "{e}; falling back to a full reconcile every {PERIODIC_NO_WATCH:?}"
                );
                stats.error(&e);
                None
            }
        };
        let live_cfg = LiveConfig {
            batch: cfg.sync.batch,
            full_reconcile: cfg.sync.full_reconcile,
            watching: watch.is_some(),
        };
        let mut live = Live::new(live_cfg, std::time::Instant::now());
        let mut me = Leading::start(&cfg, false)
            .map_err(|e| ClientError::Io(std::io::Error::other(e.to_string())))?;
        me.persist = own_record;
        live.resume_commits(me.record.lineage.commit);
        stats.set_generation(&me.record.lineage, None);
        let index = Index::load_behind(&cfg.state_dir.join("index.bin"));
        crate::lease::ignore_break_signal();
        let settle = crate::lease::Settle {
            quiet: cfg.sync.batch.settle,
            closed: watch.as_ref().map(|w| w.closed.clone()).unwrap_or_default(),
        };
        let opts = ResyncOptions {
            settle: Some(settle),
            detach_transfers: true,
            commit_follows: true,
            defer_links: Some(Default::default()),
            checksum: cfg.sync.checksum,
            delete: cfg.sync.delete,
            watch_dirs: watch.as_ref().map(|w| w.dirs()),
            ..ResyncOptions::default()
        };
        // Ready once changes are being recorded, not once the standby
        // answers: a standby that is down must not fail the primary's
        // start; it catches up when it returns. STATUS says whether it is
        // connected.
        let d = Driver {
            cfg,
            stats,
            live,
            me,
            index,
            opts,
            watch,
            session: None,
            tsum: Summary::default(),
            shipped: Default::default(),
            taken: 0,
            standalone: own_record,
        };
        let status = format!(
            "primary: watching {}; connecting to {}",
            d.cfg.export.display(),
            peer_name(&d.cfg)
        );
        d.notify(&[State::Ready], &status);
        Ok(d)
    }

    fn notify(&self, states: &[State], status: &str) {
        if self.standalone {
            let mut all = states.to_vec();
            all.push(State::Status(status));
            syncd_sdnotify::send(&all);
        }
    }

    /// Logs and counts what `Live` reports; at `InSync` the standby is told.
    async fn events(&mut self) {
        while let Some(e) = self.live.poll_event() {
            if e == Event::InSync {
                let status = format!(
                    "primary: in sync with {}; following changes",
                    peer_name(&self.cfg)
                );
                self.notify(&[], &status);
                // The catch-up is complete: the standby follows our
                // generation from here (it stops keeping what we overwrite).
                if let Some(s) = self.session.as_mut() {
                    let sent = async {
                        s.send(&crate::wire::Request::CaughtUp).await?;
                        s.flush().await
                    };
                    if let Err(e) = sent.await {
                        self.lose(e).await;
                    }
                }
            }
            on_event(e);
        }
    }

    fn poll_watch(&mut self, now: std::time::Instant) {
        if let Some(w) = &mut self.watch {
            while let Ok(c) = w.rx.try_recv() {
                accept(&self.stats, &mut self.live, c);
                self.taken += 1;
            }
            if w.dropped.swap(false, Relaxed) {
                self.stats.overflows.fetch_add(1, Relaxed);
                tracing::warn!("change queue overflowed; a full reconcile follows");
                self.live
                    .handle_change(syncd_proto::batch::Change::Lost, now);
            }
            if w.limit_hit.swap(false, Relaxed) {
                self.live.handle_watch_limit(now);
            }
        }
        self.stats.queue.store(self.live.pending() as u64, Relaxed);
        if let Some(w) = &self.watch {
            w.counted(std::mem::take(&mut self.taken));
        }
    }

    fn connected(&mut self, r: Result<Session, ClientError>) {
        let (stats, cfg) = (&self.stats, &self.cfg);
        match r {
            Ok(s) => {
                if let Some((_, theirs)) = &s.peer {
                    self.me.saw_peer(theirs);
                    stats.set_generation(&self.me.record.lineage, Some(theirs));
                }
                self.live.handle_connected(std::time::Instant::now());
                self.session = Some(s);
                stats.connects.fetch_add(1, Relaxed);
                stats.connected_since.store(unix_now(), Relaxed);
                tracing::info!(peer = %peer_name(cfg), "connected to the standby; reconciling");
                let status = format!("primary: connected to {}; reconciling", peer_name(cfg));
                self.notify(&[], &status);
            }
            Err(e) => {
                if let ClientError::Refused(_, Some(theirs)) = &e {
                    self.me.saw_peer(theirs);
                    stats.refused.fetch_add(1, Relaxed);
                }
                let wait = self.live.handle_connect_failed(std::time::Instant::now());
                self.notify(&[], &ship::connect_failed(cfg, &e, wait));
                self.stats.error(&e);
            }
        }
    }

    /// Ships a batch up to its commit sent; answers that arrived meanwhile
    /// (the previous batch's) are taken after it.
    async fn ship(
        &mut self,
        batch: syncd_proto::batch::Batch,
        commit_id: u64,
        now: std::time::Instant,
    ) {
        let Some(s) = self.session.as_mut() else {
            self.live.handle_session_lost(now);
            self.shipped.clear();
            return;
        };
        let mut with = Shipping {
            cfg: &self.cfg,
            opts: &mut self.opts,
            index: &mut self.index,
            watch: &mut self.watch,
            live: &self.live,
            stats: &self.stats,
        };
        let lost_before = s.connection().stats().path.lost_packets;
        let r = ship(s, &mut with, batch, commit_id).await;
        // A lost packet on loopback costs a probe timeout or more: say so
        // beside the batch's timing.
        let path = s.connection().stats().path;
        if path.lost_packets > lost_before {
            tracing::debug!(
                lost = path.lost_packets - lost_before,
                rtt_us = path.rtt.as_micros() as u64,
                cwnd = path.cwnd,
                "QUIC packets lost during the batch"
            );
        }
        match r {
            Ok(sh) => {
                self.shipped.push_back(sh);
                self.live.handle_commit_sent();
            }
            Err(e) => return self.lose(e).await,
        }
        // Large transfers that ended while the batch waited for a free
        // stream: each path is compared once more, as at any transfer's end.
        while let Some(t) = self
            .session
            .as_mut()
            .and_then(|s| s.ended_transfer(&mut self.tsum, &mut self.index))
        {
            self.transfer_done(Some(t));
        }
        while let Some(c) = self.session.as_mut().and_then(Session::take_committed) {
            if let Err(e) = self.committed(c).await {
                return self.lose(e).await;
            }
        }
    }

    /// The session failed: nothing in flight is acknowledged.
    async fn lose(&mut self, e: ClientError) {
        self.shipped.clear();
        lost(&mut self.session, &mut self.live, &self.stats, e).await;
    }

    /// The oldest batch in flight is durable on the standby: acknowledged.
    async fn committed(
        &mut self,
        (id, failures, at): (u64, Vec<crate::wire::Failure>, std::time::Instant),
    ) -> Result<(), ClientError> {
        let (Some(s), Some(sh)) = (self.session.as_mut(), self.shipped.pop_front()) else {
            return Err(ClientError::Protocol(format!(
                "commit {id} answered, none awaited"
            )));
        };
        if sh.commit_id != id {
            return Err(ClientError::Protocol(format!(
                "commit {id} answered before commit {}",
                sh.commit_id
            )));
        }
        let full = sh.full;
        let mut with = Shipping {
            cfg: &self.cfg,
            opts: &mut self.opts,
            index: &mut self.index,
            watch: &mut self.watch,
            live: &self.live,
            stats: &self.stats,
        };
        let (f, deferred_links) = acknowledged(s, &mut with, sh, failures, at).await;
        self.me.committed(id);
        if full {
            self.me.save();
        }
        // Acknowledged: the standby follows our generation up to this batch.
        let stats = &self.stats;
        let lineage = &self.me.record.lineage;
        stats.set_generation(lineage, Some(lineage));
        let idle = s.transfers().is_empty();
        let now = std::time::Instant::now();
        self.live
            .handle_committed(id, now, f, deferred_links, idle)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        set_lag(stats, &self.live, s);
        Ok(())
    }

    async fn stop(&mut self, flush: Option<(syncd_proto::batch::Batch, u64)>) {
        // Commits in flight first: acknowledged as in the loop.
        while !self.shipped.is_empty() {
            let Some(s) = self.session.as_mut() else {
                break;
            };
            let grace = std::time::Duration::from_secs(10);
            let r = match tokio::time::timeout(grace, s.next_committed()).await {
                Ok(Ok(c)) => self.committed(c).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ClientError::Protocol(format!("no answer within {grace:?}"))),
            };
            if let Err(e) = r {
                let ids: Vec<u64> = self.shipped.iter().map(|sh| sh.commit_id).collect();
                tracing::warn!(
                    "stopping: commits {ids:?} not acknowledged ({e}); the next start's full compare redoes them"
                );
                self.shipped.clear();
                // Not flushed through a session that failed.
                self.session = None;
                break;
            }
        }
        if let Some(s) = self.session.take() {
            let with = Shipping {
                cfg: &self.cfg,
                opts: &mut self.opts,
                index: &mut self.index,
                watch: &mut self.watch,
                live: &self.live,
                stats: &self.stats,
            };
            stop(s, with, flush, &mut self.tsum).await;
        }
        ship::save_index(&mut self.index).await;
        self.me.save();
        tracing::info!("primary stopped");
    }

    /// Waits for a transfer's end, a change, the session's end, the next
    /// deadline of `Live`, or shutdown; with a commit in flight, for its
    /// answer instead of a transfer's end or the session's (reading the
    /// answer notices that).
    async fn idle(&mut self, shutdown: &mut (impl std::future::Future<Output = ()> + Unpin)) {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.commits_pending() > 0)
        {
            return self.idle_committing(shutdown).await;
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let conn = self.session.as_ref().map(Session::connection);
        let deadline = self.live.poll_timeout().map_or(far, Instant::from_std);
        let wake = self.watch.as_ref().map(|w| w.wake.clone());
        let (session, tsum, index) = (&mut self.session, &mut self.tsum, &mut self.index);
        tokio::select! {
            t = async {
                match session.as_mut() {
                    Some(s) => s.next_transfer(tsum, index).await,
                    None => std::future::pending().await,
                }
            } => self.transfer_done(t),
            c = next_change(&mut self.watch) => self.took(c),
            () = woken(wake.as_deref()) => {}
            e = async {
                match &conn {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            } => {
                // Noticed while idle, not only at the next batch: a
                // primary whose session is gone must not look in sync.
                let e = ClientError::Protocol(format!("session closed: {e}"));
                self.lose(e).await;
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown => self.shutdown().await,
        }
    }

    async fn idle_committing(
        &mut self,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) {
        let far = Instant::now() + Duration::from_secs(3600);
        let deadline = self.live.poll_timeout().map_or(far, Instant::from_std);
        let wake = self.watch.as_ref().map(|w| w.wake.clone());
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Every branch is cancel-safe: the answer's read keeps what it has
        // read of a frame for the next call.
        tokio::select! {
            c = s.next_committed() => {
                let r = match c {
                    Ok(c) => self.committed(c).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    self.lose(e).await;
                }
            }
            c = next_change(&mut self.watch) => self.took(c),
            () = woken(wake.as_deref()) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown => self.shutdown().await,
        }
    }

    /// A change from the watch (`None`: the watch ended).
    fn took(&mut self, c: Option<syncd_proto::batch::Change>) {
        if let Some(c) = c {
            accept(&self.stats, &mut self.live, c);
            self.taken += 1;
        }
    }

    fn transfer_done(&mut self, t: Option<syncd_proto::path::RelPath>) {
        if let Some(s) = &self.session {
            record(&self.stats, s, &self.tsum);
        }
        let sum = std::mem::take(&mut self.tsum);
        let f = followups(
            sum,
            &self.stats,
            &self.cfg.export,
            self.opts.settle.as_ref(),
        );
        self.live
            .handle_transfer_done(std::time::Instant::now(), t, f);
        // Not in sync yet: the batch that compares this file once more
        // says so, so "in sync" means settled.
        if let Some(s) = &self.session {
            set_lag(&self.stats, &self.live, s);
        }
    }

    /// A change made just before the stop may still be on its way from
    /// inotify: collect it, so the last batch carries it (a planned
    /// switchover loses nothing).
    async fn shutdown(&mut self) {
        if let Some(w) = &mut self.watch {
            match w.closed.ask_sync() {
                // Exact: every event queued before now is handled, so its
                // change is in the channel. A cookie lost with an overflow
                // is asked again (a later one covers the earlier).
                Some(mut n) => {
                    let limit = Instant::now() + ship::SHUTDOWN_SYNC;
                    let mut again = Instant::now() + Duration::from_secs(1);
                    while !w.closed.cookie_reached(n) && Instant::now() < limit {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        if Instant::now() >= again {
                            n = w.closed.ask_sync().unwrap_or(n);
                            again = Instant::now() + Duration::from_secs(1);
                        }
                    }
                    if !w.closed.cookie_reached(n) {
                        tracing::warn!("the watch did not catch up within {:?} at the stop; changes still on their way are left to the next start's compare", ship::SHUTDOWN_SYNC);
                    }
                    while let Ok(c) = w.rx.try_recv() {
                        accept(&self.stats, &mut self.live, c);
                    }
                }
                None => {
                    let until = Instant::now() + ship::SHUTDOWN_COLLECT;
                    while let Ok(Some(c)) = tokio::time::timeout_at(until, w.rx.recv()).await {
                        accept(&self.stats, &mut self.live, c);
                    }
                }
            }
        }
        self.live.handle_shutdown();
    }
}

/// The watch's next change; never, without a watch.
async fn next_change(watch: &mut Option<Watch>) -> Option<syncd_proto::batch::Change> {
    match watch {
        Some(w) => w.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The watch's wake-up (its queue needs a look); never, without a watch.
async fn woken(wake: Option<&tokio::sync::Notify>) {
    match wake {
        Some(w) => w.notified().await,
        None => std::future::pending().await,
    }
}
