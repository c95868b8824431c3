//! `Live`: the primary's live loop, sans-IO.
//!
//! It decides when to (re)connect, what to ship and when, when failed files
//! are retried, when the whole tree is compared, and how to stop. The shell
//! (`syncd`'s `primary` module) feeds it watch changes and the outcome of
//! each action, and carries out what [`Live::poll_action`] returns:
//!
//! ```text
//! loop {
//!     while let Some(e) = live.poll_event() { log and count e }
//!     match live.poll_action(now) {
//!         Some(Connect)         => connect; handle_connected | handle_connect_failed
//!         Some(Ship { .. })     => renames, reconcile, send the commit; handle_commit_sent | handle_session_lost | handle_session_failed
//!         (a commit's answer)   => handle_committed | handle_session_lost | handle_session_failed
//!         Some(Stop { flush })  => ship flush, drain, close; return
//!         None => wait for a change, a transfer, shutdown, or poll_timeout()
//!     }
//! }
//! ```
//!
//! Batches are group commits: one `Ship` at a time, taken as soon as the
//! batcher has something due, so what arrives while one is in flight goes
//! together in the next (see [`crate::batch`]).
//!
//! Commits are pipelined: once a batch is applied on the standby (its
//! content barrier answered, the renames done) the shell sends its `Commit`
//! and reports [`Live::handle_commit_sent`]; the next batch may then start
//! while the standby makes the previous one durable, at most
//! [`MAX_IN_FLIGHT`] batches unacknowledged. The standby takes a session's
//! requests strictly in order, so a later batch touching the same path is
//! applied after the earlier one. A batch counts as acknowledged (lag,
//! in sync, retries) only at its own commit's answer, and answers come in
//! order ([`Live::handle_committed`] refuses any other); a session lost with
//! batches in flight loses nothing: the next session starts with a full
//! compare.
//!
//! Correctness comes from reconcile: a connection starts with a full compare,
//! so changes seen while no session is up are not kept (they would only grow
//! memory); lost events force a full compare; files the standby could not
//! apply come back after a doubling delay until they succeed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::batch::{Batch, BatchConfig, Batcher, Change};
use crate::path::RelPath;

/// Without a working watch, compare the whole tree this often.
pub const PERIODIC_NO_WATCH: Duration = Duration::from_secs(5);
/// Reconnect delay after a failed connect: doubles from MIN to MAX.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Files the standby could not apply are retried after this (doubling).
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Another primary took the standby over from us: two primaries holding one
/// key must not fight over it, so wait this long before trying again.
pub const SUPERSEDED_WAIT: Duration = Duration::from_secs(60);
/// A hard link made to a file outside a batch's scope is linked on the
/// standby by a full reconcile this soon (one for all that arrive meanwhile).
pub const LINKS_DELAY: Duration = Duration::from_secs(1);
/// Batches shipped and not yet acknowledged, at most: one being committed
/// while the next is listed and sent. More would only queue behind the
/// standby's flushes (it takes a session's requests in order).
pub const MAX_IN_FLIGHT: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConfig {
    pub batch: BatchConfig,
    /// Compare the whole tree this often (`full_reconcile_secs`), if set.
    pub full_reconcile: Option<Duration>,
    /// The export is watched; without a watch only periodic compares find
    /// changes, every [`PERIODIC_NO_WATCH`].
    pub watching: bool,
}

/// What the shell does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a session; report [`Live::handle_connected`] or
    /// [`Live::handle_connect_failed`].
    Connect,
    /// Replay the renames, reconcile the scope (or the whole tree when
    /// `batch.full`), then send a durable commit with this id; report
    /// [`Live::handle_commit_sent`] (then, at its answer,
    /// [`Live::handle_committed`]) or [`Live::handle_session_lost`].
    Ship { batch: Batch, commit_id: u64 },
    /// Stop. When a session is up, ship `flush` (changes already seen; the
    /// whole tree compared when not every directory is watched), let large
    /// transfers finish and close it, all under a deadline; anything left
    /// is found by the full compare at the next start.
    Stop { flush: Option<(Batch, u64)> },
}

/// Something the shell logs or counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first reconcile of this session and its large files are done.
    InSync,
    /// Events were lost (queue overflow, a failed watch); a full compare follows.
    EventsLost,
    /// Directories may be unwatched from now on: a full compare every
    /// [`PERIODIC_NO_WATCH`] until restart.
    WatchLimit,
    /// Files the standby could not apply come back after `after`.
    Retrying { files: usize, after: Duration },
}

/// Per-file outcomes of a ship or of a large transfer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Followups {
    /// Files the standby could not apply, with their size (data at risk).
    pub failed: Vec<(RelPath, u64)>,
    /// Files that changed while they were read: still being written.
    pub busy: Vec<RelPath>,
    /// Files not yet provably complete (a close record too young to
    /// trust, or a file held open that will have been quiet for `settle`
    /// by then): compare them again at this time, not `settle` from now.
    pub later: Vec<(RelPath, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// No session; connect at this time.
    Down(Instant),
    Connecting,
    Up,
    /// A `Ship` is being carried out (up to its commit being sent).
    Shipping,
}

/// A batch shipped and not yet acknowledged: still lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    commit_id: u64,
    changes: u64,
    full: bool,
    oldest: Option<Instant>,
    /// Carries files that failed before: not in sync until it is answered.
    retried: bool,
}

/// A commit's answer the loop cannot take: the session must end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error("commit {got} answered while commit {want:?} was the oldest awaited (answers come in order)")]
    OutOfOrder { got: u64, want: Option<u64> },
}

#[derive(Debug, Default)]
struct Retry {
    paths: Vec<RelPath>,
    at: Option<Instant>,
    delay: Duration,
    bytes: u64,
    /// When the oldest of them first failed.
    since: Option<Instant>,
    /// Handed to the batcher and not yet in a batch.
    queued: bool,
}

/// Changes not yet acknowledged by the standby (besides large transfers in
/// flight, which the shell adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    pub ops: u64,
    pub bytes: u64,
    pub oldest: Option<Instant>,
}

#[derive(Debug)]
pub struct Live {
    cfg: LiveConfig,
    batcher: Batcher,
    conn: Conn,
    backoff: Duration,
    /// Before the next session after one that failed the way the next
    /// would again (see [`Live::handle_session_failed`]); reset by a
    /// completed first compare, not by a connect.
    failed_backoff: Duration,
    periodic: Option<Duration>,
    /// Every directory is watched: the watch sees every change.
    watched: bool,
    next_full: Option<Instant>,
    retry: Retry,
    commit_id: u64,
    /// Shipped, oldest first, until their commits are answered.
    in_flight: VecDeque<InFlight>,
    in_sync: bool,
    stopping: bool,
    stopped: bool,
    events: VecDeque<Event>,
}

impl Live {
    pub fn new(cfg: LiveConfig, now: Instant) -> Live {
        let periodic = if cfg.watching {
            cfg.full_reconcile
        } else {
            Some(PERIODIC_NO_WATCH)
        };
        Live {
            cfg,
            batcher: Batcher::new(cfg.batch),
            conn: Conn::Down(now),
            backoff: BACKOFF_MIN,
            failed_backoff: BACKOFF_MIN,
            periodic,
            watched: cfg.watching,
            next_full: periodic.map(|p| now + p),
            retry: Retry {
                delay: RETRY_MIN,
                ..Retry::default()
            },
            commit_id: 0,
            in_flight: VecDeque::new(),
            in_sync: false,
            stopping: false,
            stopped: false,
            events: VecDeque::new(),
        }
    }

    /// A change from the watch. Without a session it is dropped: the full
    /// compare that starts every session covers it.
    pub fn handle_change(&mut self, c: Change, now: Instant) {
        if !self.connected() {
            return;
        }
        if c == Change::Lost {
            self.events.push_back(Event::EventsLost);
        }
        self.batcher.push(c, now);
    }

    /// The watch could not add a directory (the inotify watch limit).
    pub fn handle_watch_limit(&mut self, now: Instant) {
        self.watched = false;
        if self.periodic != Some(PERIODIC_NO_WATCH) {
            self.periodic = Some(PERIODIC_NO_WATCH);
            sooner(&mut self.next_full, now + PERIODIC_NO_WATCH);
            self.events.push_back(Event::WatchLimit);
        }
    }

    pub fn handle_connected(&mut self, now: Instant) {
        debug_assert_eq!(self.conn, Conn::Connecting);
        self.conn = Conn::Up;
        self.in_flight.clear();
        self.backoff = BACKOFF_MIN;
        self.in_sync = false;
        // Everything seen so far is covered by one full compare.
        self.batcher = Batcher::new(self.cfg.batch);
        self.retry.queued = false;
        self.batcher.force_full(now);
    }

    /// Returns how long until the next attempt.
    pub fn handle_connect_failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff;
        self.conn = Conn::Down(now + wait);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }

    /// The session failed (mid-ship or while idle): reconnect at once.
    /// Batches in flight are not acknowledged; the full compare that starts
    /// the next session redoes them.
    pub fn handle_session_lost(&mut self, now: Instant) {
        self.conn = Conn::Down(now);
        self.in_flight.clear();
    }

    /// The session failed the way the next would again at once (the
    /// standby's fatal error, our own export refused): reconnect after a
    /// wait that doubles, up to [`BACKOFF_MAX`], until a session gets
    /// through its first compare, so such a failure is not retried in a
    /// loop of connects and whole-tree walks. Returns the wait.
    pub fn handle_session_failed(&mut self, now: Instant) -> Duration {
        let wait = self.failed_backoff;
        self.conn = Conn::Down(now + wait);
        self.in_flight.clear();
        self.failed_backoff = (wait * 2).min(BACKOFF_MAX);
        wait
    }

    /// The standby dropped us for a newer session of another primary.
    pub fn handle_superseded(&mut self, now: Instant) {
        self.conn = Conn::Down(now + SUPERSEDED_WAIT);
        self.in_flight.clear();
    }

    /// Batch ids continue from the last one committed (in this generation).
    pub fn resume_commits(&mut self, last: u64) {
        self.commit_id = self.commit_id.max(last);
    }

    /// The last `Ship` is applied on the standby and its commit sent: the
    /// next batch may start (up to [`MAX_IN_FLIGHT`]) while it is made
    /// durable.
    pub fn handle_commit_sent(&mut self) {
        debug_assert_eq!(self.conn, Conn::Shipping);
        if self.conn == Conn::Shipping {
            self.conn = Conn::Up;
        }
    }

    /// Tests' shorthand: the only `Ship` in flight completed and its commit
    /// was answered ([`Live::handle_commit_sent`] then
    /// [`Live::handle_committed`]).
    #[cfg(test)]
    pub(crate) fn handle_shipped(
        &mut self,
        now: Instant,
        f: Followups,
        deferred_links: u64,
        transfers_idle: bool,
    ) {
        self.handle_commit_sent();
        assert_eq!(self.in_flight.len(), 1, "one batch in flight");
        let id = self.in_flight[0].commit_id;
        self.handle_committed(id, now, f, deferred_links, transfers_idle)
            .expect("its own answer");
    }

    /// Commit `commit_id` was answered: the standby holds that batch
    /// durably, except for the files in `f`. Answers come in order; any
    /// other is an error and the session must end.
    pub fn handle_committed(
        &mut self,
        commit_id: u64,
        now: Instant,
        f: Followups,
        deferred_links: u64,
        transfers_idle: bool,
    ) -> Result<(), LiveError> {
        let want = self.in_flight.front().map(|b| b.commit_id);
        if want != Some(commit_id) {
            return Err(LiveError::OutOfOrder {
                got: commit_id,
                want,
            });
        }
        self.in_flight.pop_front();
        if deferred_links > 0 {
            // Link them soon, in one compare of the whole tree.
            sooner(&mut self.next_full, now + LINKS_DELAY);
        }
        let failed = !f.failed.is_empty();
        self.followups(now, f);
        if failed {
            let after = self.retry.delay;
            self.retry.at = Some(now + after);
            self.retry.delay = (after * 2).min(RETRY_MAX);
            self.events.push_back(Event::Retrying {
                files: self.retry.paths.len(),
                after,
            });
        } else {
            self.retry.delay = RETRY_MIN;
        }
        // In sync: the first compare, its large files and every retried
        // failure are on the standby (what is batched since is new); a
        // retry still queued or in flight may fail again.
        let retrying = self.retry.queued || self.in_flight.iter().any(|b| b.retried);
        if !self.in_sync && transfers_idle && self.retry.paths.is_empty() && !retrying {
            self.in_sync = true;
            self.failed_backoff = BACKOFF_MIN;
            self.events.push_back(Event::InSync);
        }
        Ok(())
    }

    /// A large file finished on its own stream. `path` is compared once
    /// more: anything that happened to it meanwhile (another write, a
    /// delete, a rename of its directory) shows then.
    pub fn handle_transfer_done(&mut self, now: Instant, path: Option<RelPath>, f: Followups) {
        if !self.connected() {
            return;
        }
        if let Some(p) = path {
            self.batcher.push(Change::Settled(p), now);
        }
        if !f.failed.is_empty() {
            self.retry.at.get_or_insert(now + self.retry.delay);
        }
        self.followups(now, f);
    }

    pub fn handle_shutdown(&mut self) {
        self.stopping = true;
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if self.stopped {
            return None;
        }
        if self.stopping && self.conn != Conn::Shipping {
            self.stopped = true;
            let flush = if self.conn == Conn::Up {
                // Unwatched directories hold changes no event reported (made
                // since the last periodic compare): a stopping leader, say
                // in a switchover, ships them too, so compare everything.
                if !self.watched {
                    self.batcher.force_full(now);
                }
                // Ship what is ready now, without waiting for the window.
                let at = now + self.cfg.batch.max_delay;
                self.batcher.take(at).map(|b| (b, self.next_commit()))
            } else {
                None
            };
            return Some(Action::Stop { flush });
        }
        match self.conn {
            Conn::Down(at) if now >= at => {
                self.conn = Conn::Connecting;
                Some(Action::Connect)
            }
            // The cap: the oldest commit's answer comes first.
            Conn::Up if self.in_flight.len() >= MAX_IN_FLIGHT => None,
            Conn::Up => {
                if self.next_full.is_some_and(|t| now >= t) {
                    self.batcher.force_full(now);
                    self.next_full = self.periodic.map(|p| now + p);
                }
                if self.retry.at.is_some_and(|t| now >= t) {
                    self.retry.at = None;
                    self.retry.bytes = 0;
                    self.retry.since = None;
                    for p in std::mem::take(&mut self.retry.paths) {
                        self.batcher.push(Change::Settled(p), now);
                        self.retry.queued = true;
                    }
                }
                let batch = self.batcher.take(now)?;
                self.conn = Conn::Shipping;
                let commit_id = self.next_commit();
                self.in_flight.push_back(InFlight {
                    commit_id,
                    changes: batch.changes,
                    full: batch.full,
                    oldest: batch.oldest,
                    retried: std::mem::take(&mut self.retry.queued),
                });
                Some(Action::Ship { batch, commit_id })
            }
            _ => None,
        }
    }

    /// When [`Live::poll_action`] may next have something to do (besides
    /// new input). `None`: only input wakes it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        match self.conn {
            Conn::Down(at) => Some(at),
            Conn::Up if self.in_flight.len() >= MAX_IN_FLIGHT => None,
            Conn::Up => [self.batcher.deadline(), self.next_full, self.retry.at]
                .into_iter()
                .flatten()
                .min(),
            Conn::Connecting | Conn::Shipping => None,
        }
    }

    /// Changes waiting here (the queue depth).
    pub fn pending(&self) -> usize {
        self.batcher.pending()
    }

    /// What is not yet on the standby, as far as this loop knows: queued,
    /// shipped and not yet acknowledged (a whole-tree compare counts one:
    /// a switchover must not see lag 0 while it runs), or to be retried.
    pub fn lag(&self) -> Lag {
        let shipped: u64 = self
            .in_flight
            .iter()
            // At least one each: a batch of deferred paths come due counts
            // no new change, yet a switchover must not see lag 0 before it.
            .map(|b| (b.changes + u64::from(b.full)).max(1))
            .sum();
        let oldest = self.in_flight.iter().filter_map(|b| b.oldest).min();
        Lag {
            ops: (self.batcher.pending() + self.retry.paths.len()) as u64 + shipped,
            bytes: self.retry.bytes,
            oldest: [self.batcher.oldest(), self.retry.since, oldest]
                .into_iter()
                .flatten()
                .min(),
        }
    }

    /// Batches shipped whose commits are not yet answered, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.iter().map(|b| b.commit_id)
    }

    pub fn connected(&self) -> bool {
        matches!(self.conn, Conn::Up | Conn::Shipping)
    }

    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    fn next_commit(&mut self) -> u64 {
        self.commit_id += 1;
        self.commit_id
    }

    fn followups(&mut self, now: Instant, f: Followups) {
        for p in f.busy {
            self.batcher.push(Change::Writing(p), now);
        }
        for (p, at) in f.later {
            self.batcher.defer(p, at, now);
        }
        if !f.failed.is_empty() {
            self.retry.since.get_or_insert(now);
        }
        for (p, bytes) in f.failed {
            self.retry.bytes += bytes;
            self.retry.paths.push(p);
        }
    }
}

/// Brings a deadline forward to `at` (never later).
fn sooner(deadline: &mut Option<Instant>, at: Instant) {
    *deadline = Some(deadline.map_or(at, |t| t.min(at)));
}

#[cfg(test)]
mod tests;
