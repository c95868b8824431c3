//! `Role`: who may lead, sans-IO.
//!
//! VRRP decides who holds the service address; this machine decides who
//! *may*. Its verdict is the gate ([`Action::Gate`]): while closed, the
//! node's VRRP instance stays out of the election (FAULT), so it never holds
//! the address. The rules, in the order they are checked:
//!
//! - a node that leads, or is promoting, keeps the gate open;
//! - a node that never completed a sync stays closed until `syncd promote
//!   --force` (bootstrap, like DRBD's `primary --force`);
//! - while the peer is heard (its hellos and heartbeats over the
//!   authenticated replication session, not QUIC keep-alives, which a hung
//!   process still answers) and leads, the gate is closed: losing VRRP
//!   adverts alone never makes a second leader;
//! - while the peer is heard and not leading, the data decides
//!   ([`Lineage::relation`]): the newer (or equal) side may lead, the older
//!   one catches up first;
//! - without the peer: a node whose generation is at least the newest it
//!   ever saw from the peer may lead at once (the usual failover); one that
//!   knows the peer had newer data waits `unsure_wait`, then leads and says
//!   so; at start, a node waits `peer_wait` to hear the peer first, so on a
//!   cold start of both the newer data leads whatever the priorities.
//!
//! Promotion order: record the new generation durably, become the source,
//! run the promote hook, *then* the address ([`Action::Promote`], answered
//! by [`Role::handle_promoted`]). Demotion: the demote hook first, stop
//! sending, follow ([`Action::Demote`]).
//!
//! Planned switchover ([`Role::handle_handover`]): once the shell has fenced
//! writes and the peer holds our whole generation, the leader steps down,
//! keeps out of the election and consents to the peer's promotion (though
//! it led the generation), until the peer leads or `handover_wait` ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::lineage::{Generation, Lineage, NodeId, Relation};

mod action;
mod decide;

pub use action::{Action, RoleChange, RoleState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleConfig {
    /// This node's VRRP priority: breaks the tie when both nodes ask to
    /// lead at once (then the higher node id).
    pub priority: u8,
    /// A peer not heard from for this long is gone (several of its
    /// heartbeat periods; below VRRP's Master_Down_Interval).
    pub heartbeat_timeout: Duration,
    /// At start, how long to wait to hear the peer before leading alone.
    pub peer_wait: Duration,
    /// How long a node that knows its data is older than the peer's last
    /// generation waits before leading without the peer.
    pub unsure_wait: Duration,
    /// After a failed promotion, how long the gate stays closed.
    pub promote_retry: Duration,
    /// A planned hand-over: how long the former leader stays out of the
    /// election waiting for the peer to lead.
    pub handover_wait: Duration,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            priority: 100,
            heartbeat_timeout: Duration::from_secs(3),
            peer_wait: Duration::from_secs(10),
            unsure_wait: Duration::from_secs(60),
            promote_retry: Duration::from_secs(10),
            handover_wait: Duration::from_secs(10),
        }
    }
}

/// What the peer says of itself in its hello and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub node: NodeId,
    pub lineage: Lineage,
    pub leading: bool,
}

#[derive(Debug)]
pub struct Role {
    me: NodeId,
    cfg: RoleConfig,
    lineage: Lineage,
    /// The newest generation ever heard from the peer (durable).
    peer_seen: Option<Generation>,
    state: RoleState,
    peer: Option<PeerState>,
    peer_heard: Option<Instant>,
    started: Instant,
    /// Since when the peer is not heard (start, or the session's end).
    alone_since: Instant,
    /// VRRP would make us master.
    vrrp_master: bool,
    forced: bool,
    retry_at: Option<Instant>,
    /// Shutting down: never open the gate or promote again.
    stopping: bool,
    /// Our `Ask` is out, since then.
    asking: Option<Instant>,
    /// We consented to the peer leading; no promotion of ours until then.
    granted_until: Option<Instant>,
    /// Denied or unanswered: ask again after this.
    ask_again: Option<Instant>,
    /// The peer consented to our promotion.
    consent: bool,
    /// The peer was heard since start.
    heard: bool,
    /// When the verdict may change without input (a wait ends).
    recheck: Option<Instant>,
    /// The generation we were told to follow (one `Follow` per generation).
    following: Option<Generation>,
    /// Handing over (planned switchover) until then, or until the peer leads.
    handing_over: Option<Instant>,
    gate: Option<bool>,
    actions: VecDeque<Action>,
    changes: VecDeque<RoleChange>,
}

impl Role {
    pub fn new(
        me: NodeId,
        cfg: RoleConfig,
        lineage: Lineage,
        peer_seen: Option<Generation>,
        now: Instant,
    ) -> Role {
        let mut r = Role {
            me,
            cfg,
            lineage,
            peer_seen,
            state: RoleState::Follower,
            peer: None,
            peer_heard: None,
            started: now,
            alone_since: now,
            vrrp_master: false,
            forced: false,
            retry_at: None,
            stopping: false,
            asking: None,
            granted_until: None,
            ask_again: None,
            consent: false,
            heard: false,
            recheck: None,
            following: None,
            handing_over: None,
            gate: None,
            actions: VecDeque::new(),
            changes: VecDeque::new(),
        };
        r.update(now);
        r
    }

    pub fn state(&self) -> RoleState {
        self.state
    }

    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    pub fn peer(&self) -> Option<&PeerState> {
        self.peer.as_ref()
    }

    /// The peer's data against ours, while it is heard.
    pub fn relation(&self) -> Option<Relation> {
        self.peer
            .as_ref()
            .map(|p| self.lineage.relation(self.me, &p.lineage))
    }

    /// What the peer should hear: leading (or promoting to).
    pub fn leading(&self) -> bool {
        matches!(self.state, RoleState::Leader | RoleState::Promoting)
    }

    pub fn gate_open(&self) -> bool {
        self.gate == Some(true)
    }

    /// A hello or heartbeat from the peer over the replication session.
    pub fn handle_peer(&mut self, peer: PeerState, now: Instant) {
        if peer.lineage.synced() && self.peer_seen.is_none_or(|g| peer.lineage.gen > g) {
            self.peer_seen = Some(peer.lineage.gen);
            self.persist();
        }
        if peer.leading {
            self.handing_over = None;
        }
        self.peer = Some(peer);
        self.peer_heard = Some(now);
        self.heard = true;
        self.update(now);
    }

    /// The session with the peer ended.
    pub fn handle_peer_lost(&mut self, now: Instant) {
        if self.peer.is_some() {
            self.alone_since = now;
        }
        self.peer = None;
        self.peer_heard = None;
        self.following = None;
        self.asking = None;
        self.granted_until = None;
        self.ask_again = None;
        self.update(now);
    }

    /// VRRP would make us master (`true`), or we left MASTER.
    pub fn handle_vrrp(&mut self, master: bool, now: Instant) {
        self.vrrp_master = master;
        if !master {
            self.consent = false;
        }
        self.update(now);
    }

    /// The peer asks to lead. Grant unless we lead or promote, our data is
    /// newer, or we asked too and win the tie (priority, then node id), so
    /// of two simultaneous asks exactly one is granted.
    pub fn handle_peer_ask(&mut self, priority: u8, now: Instant) {
        let ours = (self.cfg.priority, self.me);
        let theirs = (priority, self.peer.as_ref().map_or(NodeId(0), |p| p.node));
        let newer = matches!(
            self.relation(),
            Some(Relation::Ahead | Relation::Diverged { we_win: true })
        );
        let busy = matches!(self.state, RoleState::Leader | RoleState::Promoting);
        let we_win_tie = self.asking.is_some() && ours > theirs;
        // Handing over, or just failed to lead (promotion or source): we led
        // the generation, so our data counts as newer, but a peer that
        // adopted it holds all of it and may take over.
        let stepped_aside = self.handing_over.is_some() || self.retry_at.is_some_and(|t| now < t);
        let holds_ours = self
            .peer
            .as_ref()
            .is_some_and(|p| p.lineage.gen == self.lineage.gen);
        let yielding = stepped_aside && holds_ours;
        let grant = !(busy || (newer && !yielding) || we_win_tie);
        if grant {
            self.asking = None;
            self.granted_until = Some(now + self.cfg.heartbeat_timeout);
        }
        self.actions.push_back(Action::Answer { grant });
        self.update(now);
    }

    /// The peer's answer to our `Ask`.
    pub fn handle_peer_answer(&mut self, grant: bool, now: Instant) {
        if self.asking.take().is_some() {
            self.consent = grant;
            if !grant {
                // Ask again later if VRRP still wants us.
                self.ask_again = Some(now + self.cfg.heartbeat_timeout);
            }
        }
        self.update(now);
    }

    /// `syncd promote --force`: lead even without ever having synced.
    pub fn handle_force(&mut self, now: Instant) {
        self.forced = true;
        self.update(now);
    }

    pub fn handle_promoted(&mut self, now: Instant) {
        if self.state == RoleState::Promoting {
            self.set_state(RoleState::Leader, "promoted".into());
        }
        self.update(now);
    }

    pub fn handle_promote_failed(&mut self, why: &str, now: Instant) {
        if self.state == RoleState::Promoting {
            self.retry_at = Some(now + self.cfg.promote_retry);
            self.set_state(RoleState::Demoting, format!("promotion failed: {why}"));
            self.actions.push_back(Action::Demote {
                why: format!("promotion failed: {why}"),
            });
        }
        self.update(now);
    }

    /// The replication source stopped on its own while leading: step down
    /// (the gate closes, so VRRP resigns the address) and wait a while
    /// before leading again.
    pub fn handle_source_failed(&mut self, why: &str, now: Instant) {
        if matches!(self.state, RoleState::Leader | RoleState::Promoting) {
            self.retry_at = Some(now + self.cfg.promote_retry);
            let why = format!("the replication source stopped: {why}");
            self.set_state(RoleState::Demoting, why.clone());
            self.actions.push_back(Action::Demote { why });
        }
        self.update(now);
    }

    pub fn handle_demoted(&mut self, now: Instant) {
        if self.state == RoleState::Demoting {
            if self.stopping {
                self.set_state(RoleState::Stopped, "shutdown".into());
                return;
            }
            self.set_state(RoleState::Follower, "demoted".into());
        }
        self.update(now);
    }

    /// As leader: the follower acknowledged batch `commit` durably.
    /// As follower: batch `commit` of the leader's generation is applied.
    pub fn handle_commit(&mut self, commit: u64) {
        self.lineage.commit = self.lineage.commit.max(commit);
    }

    /// As follower: the first full compare with the leader is done; our
    /// data is now the leader's at `leader.commit`.
    pub fn handle_caught_up(&mut self, leader: &Lineage, now: Instant) {
        self.lineage.follow(leader);
        self.following = None;
        self.persist();
        self.update(now);
    }

    /// Planned switchover: the shell has fenced writes (the demote hook ran
    /// while we still led) and the peer holds everything we wrote (it
    /// adopted our generation, nothing is unacknowledged). Step down, stay
    /// out of the election until the peer leads (at most `handover_wait`),
    /// and consent to its promotion. `false`: not leading, or the peer has
    /// not adopted our generation; nothing changes.
    pub fn handle_handover(&mut self, now: Instant) -> bool {
        let current = self
            .peer
            .as_ref()
            .is_some_and(|p| p.lineage.gen == self.lineage.gen && !p.leading);
        if self.state != RoleState::Leader || self.stopping || !current {
            return false;
        }
        self.handing_over = Some(now + self.cfg.handover_wait);
        let why = "planned switchover: handing over to the peer".to_string();
        self.set_state(RoleState::Demoting, why.clone());
        // The gate first: VRRP resigns (the peer's Skew_Time starts) while
        // the source stops. Writes are fenced and the peer holds all of
        // them, so the source has nothing left to send.
        self.close_gate("handing over to the peer");
        self.actions.push_back(Action::Demote { why });
        self.update(now);
        true
    }

    /// Whether a planned hand-over is under way (the peer does not lead yet).
    pub fn handing_over(&self) -> bool {
        self.handing_over.is_some()
    }

    /// Stop: a leader demotes first (hook, source off), so the peer can
    /// take over at once.
    pub fn handle_shutdown(&mut self, now: Instant) {
        self.stopping = true;
        match self.state {
            RoleState::Leader | RoleState::Promoting => {
                self.set_state(RoleState::Demoting, "shutdown".into());
                self.actions.push_back(Action::Demote {
                    why: "shutdown".into(),
                });
            }
            _ => {}
        }
        self.close_gate("shutting down");
        let _ = now;
        if self.state != RoleState::Demoting {
            self.set_state(RoleState::Stopped, "shutdown".into());
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_change(&mut self) -> Option<RoleChange> {
        self.changes.pop_front()
    }

    /// Call [`Role::handle_timeout`] at this time (or on any input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.peer_heard.map(|t| t + self.cfg.heartbeat_timeout),
            self.recheck,
            self.asking.map(|t| t + self.cfg.heartbeat_timeout),
            self.granted_until,
            self.ask_again,
            self.handing_over,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .peer_heard
            .is_some_and(|t| now >= t + self.cfg.heartbeat_timeout)
        {
            self.handle_peer_lost(now);
            return;
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        if self.granted_until.is_some_and(|t| now >= t) {
            self.granted_until = None;
        }
        if self.handing_over.is_some_and(|t| now >= t) {
            self.handing_over = None;
        }
        if self
            .asking
            .is_some_and(|t| now >= t + self.cfg.heartbeat_timeout)
        {
            // No answer: the peer is hung or gone; its heartbeats decide.
            self.asking = None;
            self.ask_again = Some(now + self.cfg.heartbeat_timeout);
        }
        if self.ask_again.is_some_and(|t| now >= t) {
            self.ask_again = None;
        }
        self.update(now);
    }

    fn persist(&mut self) {
        self.actions.push_back(Action::Persist {
            lineage: self.lineage.clone(),
            peer_seen: self.peer_seen,
        });
    }

    fn set_state(&mut self, to: RoleState, why: String) {
        if self.state == RoleState::Stopped || self.state == to {
            return;
        }
        self.changes.push_back(RoleChange {
            from: self.state,
            to,
            gen: self.lineage.gen,
            why,
        });
        self.state = to;
    }

    fn close_gate(&mut self, why: &str) {
        if self.gate != Some(false) {
            self.gate = Some(false);
            self.actions.push_back(Action::Gate {
                open: false,
                why: why.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
