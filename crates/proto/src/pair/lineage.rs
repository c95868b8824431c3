//! Generations: which of two nodes holds the newer data, and who wins after
//! a heal. Like DRBD's generation identifiers, but for a file tree.
//!
//! Every promotion starts a new [`Generation`]: a counter one above any this
//! node has seen, and the node that started it, so two leaders of one
//! partition never share a generation. A node's [`Lineage`] is the
//! generation it last led or followed, the last batch committed in it, and
//! the generations before it with the batch at which each was left.
//!
//! The rule, comparing our lineage with the peer's ([`Lineage::relation`]):
//! 1. Same generation: its leader is the authority; a follower of it is
//!    behind (or equal, when both followed it to the same batch).
//! 2. One lineage contains the other's generation in its history: it is
//!    newer; the other is behind. A node that *led* the older generation may
//!    hold writes its follower never acknowledged: it catches up keeping them
//!    (`preserve`), so nothing written is lost.
//! 3. Neither (both led after a partition): diverged. The higher counter
//!    wins, then the one with more batches in its generation, then the higher
//!    node id (so both sides pick the same winner); the loser preserves its
//!    changes before following.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity: the first 8 bytes of its certificate's SHA-256.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Generation {
    pub counter: u64,
    /// The node that started it by promoting.
    pub node: NodeId,
}

impl Generation {
    /// Before any sync: the generation of a node that never led or followed.
    pub const NONE: Generation = Generation {
        counter: 0,
        node: NodeId(0),
    };
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.counter, self.node)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Generations kept in a lineage's history: enough to recognise any
/// ancestor from a realistic sequence of failovers, bounded so a peer's
/// handshake stays small.
pub const HISTORY_MAX: usize = 32;

/// What a node records durably about its data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Lineage {
    /// The generation this node last led or followed.
    pub gen: Generation,
    /// The last batch committed in `gen` (led: acknowledged by the follower;
    /// followed: applied).
    pub commit: u64,
    /// Earlier generations, oldest first, each with the batch at which the
    /// next one started.
    pub history: Vec<(Generation, u64)>,
}

/// How the peer's data stands to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Same generation and batch.
    Same,
    /// The peer is newer: follow it. `preserve`: we may hold writes it never
    /// acknowledged; keep them in the conflicts area while catching up.
    Behind { preserve: bool },
    /// We are newer: the peer follows us.
    Ahead,
    /// Both led after a common ancestor. `we_win` by the rule above; the
    /// loser preserves its changes and follows.
    Diverged { we_win: bool },
}

impl Lineage {
    /// Whether this node has ever led or completed a catch-up.
    pub fn synced(&self) -> bool {
        self.gen != Generation::NONE
    }

    /// Starts a new generation led by `me`, above any counter in `seen`.
    pub fn promote(&mut self, me: NodeId, seen: Option<Generation>) -> Generation {
        // Saturating: a peer's counter is input; u64::MAX must not wrap to
        // a generation older than everything.
        let counter = self
            .gen
            .counter
            .max(seen.map_or(0, |g| g.counter))
            .saturating_add(1);
        let next = Generation { counter, node: me };
        if self.synced() {
            self.history.push((self.gen, self.commit));
            let excess = self.history.len().saturating_sub(HISTORY_MAX);
            self.history.drain(..excess);
        }
        self.gen = next;
        self.commit = 0;
        next
    }

    /// Takes the leader's lineage once caught up with it: from now on this
    /// node's data is the leader's, at `leader.commit`.
    pub fn follow(&mut self, leader: &Lineage) {
        *self = leader.clone();
    }

    /// The batch at which `gen` was left, if it is an ancestor of ours.
    fn forked_at(&self, gen: Generation) -> Option<u64> {
        self.history
            .iter()
            .rev()
            .find(|(g, _)| *g == gen)
            .map(|&(_, c)| c)
    }

    /// How `peer` stands to us, for the node `me`.
    pub fn relation(&self, me: NodeId, peer: &Lineage) -> Relation {
        let we_led = self.gen.node == me && self.synced();
        if !peer.synced() {
            return if self.synced() {
                Relation::Ahead
            } else {
                Relation::Same
            };
        }
        if !self.synced() {
            // Never synced, or its record was lost: its export may still
            // hold data (even the newest). Keep whatever is overwritten.
            return Relation::Behind { preserve: true };
        }
        if self.gen == peer.gen {
            return if we_led {
                // Its leader is the authority on a generation.
                Relation::Ahead
            } else if peer.gen.node != me && self.commit >= peer.commit {
                // The peer led it; we applied all it recorded (an
                // acknowledgement lost on the way may leave us one ahead).
                Relation::Same
            } else if self.commit < peer.commit {
                Relation::Behind { preserve: false }
            } else {
                Relation::Ahead
            };
        }
        if let Some(at) = peer.forked_at(self.gen) {
            // We led it: writes after the last acknowledged batch may exist
            // only here. A follower past the fork point has batches the new
            // leader never saw.
            return Relation::Behind {
                preserve: we_led || self.commit > at,
            };
        }
        if self.forked_at(peer.gen).is_some() {
            return Relation::Ahead;
        }
        let we_win = (self.gen.counter, self.commit, self.gen.node)
            > (peer.gen.counter, peer.commit, peer.gen.node);
        Relation::Diverged { we_win }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(0xa);
    const B: NodeId = NodeId(0xb);

    fn bootstrap(me: NodeId) -> Lineage {
        let mut l = Lineage::default();
        l.promote(me, None);
        l
    }

    #[test]
    fn a_new_node_follows_and_a_bootstrapped_one_leads() {
        let a = bootstrap(A);
        let b = Lineage::default();
        assert!(!b.synced());
        assert_eq!(a.relation(A, &b), Relation::Ahead);
        assert_eq!(
            b.relation(B, &a),
            Relation::Behind { preserve: true },
            "its export may hold data: keep what is overwritten"
        );
        assert_eq!(b.relation(B, &Lineage::default()), Relation::Same);
    }

    #[test]
    fn a_follower_of_the_same_generation_is_behind_or_equal() {
        let mut a = bootstrap(A);
        let mut b = Lineage::default();
        b.follow(&a);
        assert_eq!(b.relation(B, &a), Relation::Same);
        a.commit = 7;
        assert_eq!(b.relation(B, &a), Relation::Behind { preserve: false });
        assert_eq!(
            a.relation(A, &b),
            Relation::Ahead,
            "the leader is the authority"
        );
        b.commit = 7;
        assert_eq!(a.relation(A, &b), Relation::Ahead);
        assert_eq!(b.relation(B, &a), Relation::Same, "caught up");
    }

    #[test]
    fn the_old_leader_returns_behind_and_keeps_its_unacknowledged_writes() {
        let mut a = bootstrap(A);
        a.commit = 100;
        let mut b = Lineage::default();
        b.follow(&a);
        // A dies; B promotes from batch 100 and goes on
        let g = b.promote(B, Some(a.gen));
        assert_eq!(g.counter, 2);
        b.commit = 30;
        assert_eq!(a.relation(A, &b), Relation::Behind { preserve: true });
        assert_eq!(b.relation(B, &a), Relation::Ahead);
    }

    #[test]
    fn failovers_back_and_forth_keep_one_line() {
        // A leads; B follows to batch 5; A dies; B leads; A returns and
        // follows; B dies; A leads again
        let mut a = bootstrap(A);
        a.commit = 5;
        let mut b = Lineage::default();
        b.follow(&a);
        b.promote(B, Some(a.gen));
        b.commit = 8;
        assert_eq!(a.relation(A, &b), Relation::Behind { preserve: true });
        a.follow(&b);
        assert_eq!(a.relation(A, &b), Relation::Same);
        assert_eq!(b.relation(B, &a), Relation::Ahead, "B leads its generation");
        a.promote(A, Some(b.gen));
        assert_eq!(a.gen.counter, 3);
        // B led generation 2: it may hold writes A never got
        assert_eq!(b.relation(B, &a), Relation::Behind { preserve: true });
        assert_eq!(a.relation(A, &b), Relation::Ahead);
        // a follower that did not get the last batch of its leader's
        // generation is behind, without conflicts
        let mut f = Lineage::default();
        f.follow(&b);
        f.commit = 6;
        assert_eq!(f.relation(A, &b), Relation::Behind { preserve: false });
    }

    #[test]
    fn a_partition_with_two_leaders_has_one_winner_both_sides_agree_on() {
        let mut a = bootstrap(A);
        a.commit = 10;
        let mut b = Lineage::default();
        b.follow(&a);
        // partition: B promotes; A keeps leading generation 1 (it never
        // stopped), then also restarts and promotes
        b.promote(B, Some(a.gen));
        b.commit = 3;
        a.promote(A, None);
        a.commit = 9;
        let ra = a.relation(A, &b);
        let rb = b.relation(B, &a);
        assert_eq!(
            ra,
            Relation::Diverged { we_win: true },
            "same counter, more batches"
        );
        assert_eq!(rb, Relation::Diverged { we_win: false });
        // a higher counter wins whatever the batches
        b.promote(B, None);
        b.commit = 1;
        assert_eq!(a.relation(A, &b), Relation::Diverged { we_win: false });
        assert_eq!(b.relation(B, &a), Relation::Diverged { we_win: true });
    }

    #[test]
    fn exactly_one_side_wins_any_diverged_pair() {
        // exhaustive over small counters and batches
        for (ca, cb) in [(1, 1), (1, 2), (2, 1), (3, 3)] {
            for (ka, kb) in [(0, 0), (0, 5), (5, 0), (4, 4)] {
                let a = Lineage {
                    gen: Generation {
                        counter: ca,
                        node: A,
                    },
                    commit: ka,
                    history: vec![],
                };
                let b = Lineage {
                    gen: Generation {
                        counter: cb,
                        node: B,
                    },
                    commit: kb,
                    history: vec![],
                };
                match (a.relation(A, &b), b.relation(B, &a)) {
                    (Relation::Diverged { we_win: x }, Relation::Diverged { we_win: y }) => {
                        assert_ne!(x, y, "{a:?} vs {b:?}")
                    }
                    r => panic!("{a:?} vs {b:?}: {r:?}"),
                }
            }
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut a = bootstrap(A);
        for _ in 0..100 {
            a.promote(A, None);
        }
        assert_eq!(a.history.len(), HISTORY_MAX);
        assert_eq!(a.gen.counter, 101);
    }
}
