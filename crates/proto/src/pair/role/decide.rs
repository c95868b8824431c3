//! The rules: whether this node may lead now ([`Role::verdict`]), and what
//! follows from that ([`Role::update`]).

use std::time::Instant;

use super::Relation;
use super::{Action, PeerState, Role, RoleState};

/// May lead, why, and when the verdict may change without input.
pub(super) type Verdict = (bool, String, Option<Instant>);

impl Role {
    /// Whether this node may lead now, and why (or why not).
    pub(super) fn verdict(&self, now: Instant) -> Verdict {
        if let Some(v) = self.held(now) {
            return v;
        }
        match &self.peer {
            Some(p) => self.verdict_beside(p),
            None => self.verdict_alone(now),
        }
    }

    /// The states and waits that decide before the data does.
    fn held(&self, now: Instant) -> Option<Verdict> {
        if matches!(self.state, RoleState::Leader | RoleState::Promoting) {
            return Some((true, "leading".into(), None));
        }
        if self.stopping {
            return Some((false, "shutting down".into(), None));
        }
        if let Some(t) = self.ask_again.filter(|&t| now < t) {
            // Stepping out of the election lets the peer's VRRP settle.
            return Some((
                false,
                "the peer did not consent to our leading; asking again soon".into(),
                Some(t),
            ));
        }
        if let Some(t) = self.handing_over.filter(|&t| now < t) {
            return Some((false, "handing over to the peer".into(), Some(t)));
        }
        if let Some(t) = self.retry_at.filter(|&t| now < t) {
            return Some((
                false,
                "a promotion failed; waiting before the next".into(),
                Some(t),
            ));
        }
        if !self.lineage.synced() && !self.forced {
            return Some((
                false,
                "never synced: follow a peer, or bootstrap with `syncd promote --force`".into(),
                None,
            ));
        }
        None
    }

    /// The peer is heard: it leads, or the data decides.
    fn verdict_beside(&self, p: &PeerState) -> Verdict {
        if p.leading {
            // Stay in the election (BACKUP) so that, once its heartbeats
            // stop, VRRP's own Master_Down_Interval is the whole
            // failover; promotion is refused while it is heard.
            return (
                true,
                format!(
                    "peer {} leads generation {}; standing by",
                    p.node, p.lineage.gen
                ),
                None,
            );
        }
        match self.lineage.relation(self.me, &p.lineage) {
            Relation::Same | Relation::Ahead | Relation::Diverged { we_win: true } => {
                (true, "data current".into(), None)
            }
            Relation::Behind { .. } | Relation::Diverged { we_win: false } => (
                false,
                format!(
                    "data behind peer {} (generation {} batch {}, ours {} batch {})",
                    p.node, p.lineage.gen, p.lineage.commit, self.lineage.gen, self.lineage.commit
                ),
                None,
            ),
        }
    }

    /// The peer is not heard: how new our data is, and how long we waited.
    fn verdict_alone(&self, now: Instant) -> Verdict {
        let stale = self.peer_seen.is_some_and(|g| g > self.lineage.gen);
        if stale {
            let at = self.alone_since + self.cfg.unsure_wait;
            return if now >= at {
                let why = format!(
                    "peer unreachable; leading with data older than its generation {} after waiting {:?}",
                    self.peer_seen.unwrap_or_default(),
                    self.cfg.unsure_wait
                );
                (true, why, None)
            } else {
                (
                    false,
                    "peer unreachable and it had newer data: waiting".into(),
                    Some(at),
                )
            };
        }
        let at = self.started + self.cfg.peer_wait;
        if !self.heard && now < at {
            return (false, "waiting to hear the peer".into(), Some(at));
        }
        (
            true,
            "peer unreachable; our data is the newest seen".into(),
            None,
        )
    }

    /// Recomputes the verdict and queues what follows from it: the gate,
    /// following a newer peer, asking consent, promoting or demoting.
    pub(super) fn update(&mut self, now: Instant) {
        let (open, why, recheck) = self.verdict(now);
        self.recheck = recheck;
        if self.gate != Some(open) {
            self.gate = Some(open);
            self.actions.push_back(Action::Gate {
                open,
                why: why.clone(),
            });
        }
        self.yield_to_newer_peer();
        let want = self.state == RoleState::Follower && self.vrrp_master && open;
        if want && self.peer.as_ref().is_some_and(|p| p.leading) {
            // VRRP lost the peer's adverts, but its heartbeats arrive: the
            // second path says it lives. Step out of the election a while.
            if self.ask_again.is_none() {
                self.ask_again = Some(now + self.cfg.heartbeat_timeout);
                self.update(now);
            }
            return;
        }
        if want && self.peer.is_some() && !self.consent {
            if self.asking.is_none() && self.granted_until.is_none() && self.ask_again.is_none() {
                self.asking = Some(now);
                self.actions.push_back(Action::Ask {
                    priority: self.cfg.priority,
                });
            }
            return;
        }
        if want {
            self.consent = false;
            let gen = self.lineage.promote(self.me, self.peer_seen);
            self.persist();
            self.set_state(
                RoleState::Promoting,
                format!("VRRP master; starting generation {gen}"),
            );
            self.actions.push_back(Action::Promote { gen });
        }
        if self.state == RoleState::Leader && !self.vrrp_master {
            self.set_state(RoleState::Demoting, "VRRP left master".into());
            self.actions.push_back(Action::Demote {
                why: "VRRP left master".into(),
            });
        }
    }

    /// A peer that leads newer data: follow it (and stop leading).
    fn yield_to_newer_peer(&mut self) {
        let Some(p) = self.peer.clone() else {
            return;
        };
        let rel = self.lineage.relation(self.me, &p.lineage);
        let peer_wins = matches!(
            rel,
            Relation::Behind { .. } | Relation::Diverged { we_win: false }
        );
        let leading = matches!(self.state, RoleState::Leader | RoleState::Promoting);
        if peer_wins && (p.leading || leading) {
            if leading {
                // Data decides: a leader whose live peer holds newer
                // data steps down even if the peer does not lead (VRRP
                // priorities may favour us), so the newer side leads.
                let why = format!("peer {} has newer generation {}", p.node, p.lineage.gen);
                self.set_state(RoleState::Demoting, why.clone());
                self.actions.push_back(Action::Demote { why });
                self.gate = Some(false);
                self.actions.push_back(Action::Gate {
                    open: false,
                    why: "demoting".into(),
                });
            } else if self.state == RoleState::Follower && self.following != Some(p.lineage.gen) {
                self.following = Some(p.lineage.gen);
                let preserve = match rel {
                    Relation::Behind { preserve } => preserve,
                    _ => true,
                };
                self.actions.push_back(Action::Follow { preserve });
            }
        }
    }
}
