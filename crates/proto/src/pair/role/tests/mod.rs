//! The role rules under a simulated clock: each rule alone (`startup`: who
//! may lead when a node starts; `failover`: taking over when the leader
//! dies, stepping down, failed promotions; `handover`: planned
//! switchovers), then seeded runs of two nodes with a simplified VRRP,
//! crashes, and partitions of either path, checking that no two leaders
//! coexist while a path is up, that a node behind its live peer never
//! leads, and that once everything heals one leader remains and the roles
//! stop changing (the VRRP model does not preempt, as `--role auto` runs
//! it; with preemption the roles flap) (`seeded`).

use super::*;

const A: NodeId = NodeId(0xa);
const B: NodeId = NodeId(0xb);

fn cfg() -> RoleConfig {
    RoleConfig::default()
}

fn synced(me: NodeId) -> Lineage {
    let mut l = Lineage::default();
    l.promote(me, None);
    l
}

fn drain(r: &mut Role) -> Vec<Action> {
    std::iter::from_fn(|| r.poll_action()).collect()
}

fn gate(actions: &[Action]) -> Option<bool> {
    actions.iter().rev().find_map(|a| match a {
        Action::Gate { open, .. } => Some(*open),
        _ => None,
    })
}

fn hello(node: NodeId, lineage: &Lineage, leading: bool) -> PeerState {
    PeerState {
        node,
        lineage: lineage.clone(),
        leading,
    }
}

/// Promote `r` through VRRP and the shell's answer.
fn lead(r: &mut Role, now: Instant) -> Generation {
    r.handle_vrrp(true, now);
    let mut acts = drain(r);
    if acts.iter().any(|a| matches!(a, Action::Ask { .. })) {
        r.handle_peer_answer(true, now);
        acts = drain(r);
    }
    let gen = acts
        .iter()
        .find_map(|a| match a {
            Action::Promote { gen } => Some(*gen),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a promotion, got {acts:?}"));
    let persisted = acts
        .iter()
        .position(|a| matches!(a, Action::Persist { lineage, .. } if lineage.gen == gen));
    let promoted = acts
        .iter()
        .position(|a| matches!(a, Action::Promote { .. }));
    assert!(
        persisted < promoted,
        "the generation is durable before the promotion: {acts:?}"
    );
    r.handle_promoted(now);
    assert_eq!(r.state(), RoleState::Leader);
    gen
}

mod failover;
mod handover;
mod seeded;
mod startup;
