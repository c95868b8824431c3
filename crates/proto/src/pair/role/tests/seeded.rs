use super::*;
use crate::pair::lineage::HISTORY_MAX;
use syncd_testkit::rng::Rng;

struct SimNode {
    id: NodeId,
    prio: u8,
    role: Option<Role>,
    /// Durable state, as the shell would have fsync'd it.
    disk: (Lineage, Option<Generation>),
    /// Currently holds the VIP (VRRP master with the gate open and promoted).
    master: bool,
    /// The VRRP instance's own state: MASTER.
    vrrp: bool,
    /// Role changes so far.
    changes: u64,
    /// Its promote hook fails now; how often it did.
    promote_fails: bool,
    failed: u64,
}

/// A message between the two nodes over the replication path.
enum Msg {
    Ask(u8),
    Answer(bool),
}

impl SimNode {
    /// Carries out the role's actions; returns what goes to the peer.
    fn apply(&mut self, now: Instant) -> Vec<Msg> {
        let mut out = Vec::new();
        let Some(r) = self.role.as_mut() else {
            return out;
        };
        while let Some(a) = r.poll_action() {
            match a {
                Action::Persist { lineage, peer_seen } => self.disk = (lineage, peer_seen),
                Action::Promote { .. } if self.promote_fails => {
                    self.failed += 1;
                    r.handle_promote_failed("promote hook failed", now)
                }
                Action::Promote { .. } => r.handle_promoted(now),
                Action::Demote { .. } => r.handle_demoted(now),
                Action::Ask { priority } => out.push(Msg::Ask(priority)),
                Action::Answer { grant } => out.push(Msg::Answer(grant)),
                Action::Gate { .. } | Action::Follow { .. } => {}
            }
        }
        while r.poll_change().is_some() {
            self.changes += 1;
        }
        out
    }
}

/// Applies both nodes' actions, delivering messages while the path is up,
/// until nothing more happens.
fn settle(nodes: &mut [SimNode; 2], link: bool, now: Instant) {
    for _ in 0..20 {
        let out = [nodes[0].apply(now), nodes[1].apply(now)];
        if out.iter().all(|o| o.is_empty()) {
            return;
        }
        for (j, msgs) in out.into_iter().enumerate() {
            let both = nodes.iter().all(|n| n.role.is_some());
            if !(link && both) {
                continue;
            }
            let to = nodes[1 - j].role.as_mut().unwrap();
            for m in msgs {
                match m {
                    Msg::Ask(p) => to.handle_peer_ask(p, now),
                    Msg::Answer(g) => to.handle_peer_answer(g, now),
                }
            }
        }
    }
    panic!("messages never settled");
}

#[test]
fn seeded_runs_never_have_two_leaders_while_a_path_is_up() {
    let (mut handovers, mut failed) = (0, 0);
    for seed in 1..=2000u64 {
        let (h, f) = run_seed(seed);
        handovers += h;
        failed += f;
    }
    // the runs do exercise both
    assert!(
        handovers > 100 && failed > 100,
        "{handovers} hand-overs, {failed} failed promotions"
    );
}

/// Returns the hand-overs begun and the promotions failed.
fn run_seed(seed: u64) -> (u64, u64) {
    let mut handovers = 0u64;
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let t0 = Instant::now();
    let step = Duration::from_millis(500);
    let mut nodes: [SimNode; 2] = [A, B].map(|id| SimNode {
        id,
        prio: if id == A { 150 } else { 100 },
        role: None,
        disk: (Lineage::default(), None),
        master: false,
        vrrp: false,
        changes: 0,
        promote_fails: false,
        failed: 0,
    });
    // bootstrap: A was forced once, B followed it
    nodes[0].disk.0 = synced(A);
    nodes[1].disk = (synced(A), Some(synced(A).gen));
    for n in nodes.iter_mut() {
        n.role = Some(Role::new(n.id, cfg(), n.disk.0.clone(), n.disk.1, t0));
    }
    let (mut vrrp_up, mut link_up) = (true, true);
    let mut link_since = t0;
    let mut now = t0;
    let mut settled_changes = 0u64;
    for i in 0..400 {
        now += step;
        // faults (in the first 300 steps): crash/restart a node, cut or heal
        // a path; then everything heals and the pair must settle
        let faulty = i < 300;
        if i == 300 {
            vrrp_up = true;
            if !link_up {
                link_up = true;
                link_since = now;
            }
            for n in nodes.iter_mut().filter(|n| n.role.is_none()) {
                n.role = Some(Role::new(n.id, cfg(), n.disk.0.clone(), n.disk.1, now));
            }
        }
        if faulty && rng.chance(3) {
            let n = &mut nodes[(rng.next_u64() % 2) as usize];
            if n.role.is_some() {
                n.role = None;
                n.master = false;
                n.vrrp = false;
            } else {
                n.role = Some(Role::new(n.id, cfg(), n.disk.0.clone(), n.disk.1, now));
            }
        }
        if faulty && rng.chance(3) {
            vrrp_up = !vrrp_up;
        }
        // service hooks that fail, and planned hand-overs
        for n in nodes.iter_mut() {
            n.promote_fails = faulty && rng.chance(5);
        }
        if faulty && rng.chance(3) {
            let j = (rng.next_u64() % 2) as usize;
            if let Some(r) = nodes[j].role.as_mut() {
                handovers += u64::from(r.handle_handover(now));
            }
            let link = link_up;
            settle(&mut nodes, link, now);
        }
        if faulty && rng.chance(3) {
            link_up = !link_up;
            link_since = now;
        }
        // the replication path: hellos and heartbeats both ways
        let alive = [nodes[0].role.is_some(), nodes[1].role.is_some()];
        if link_up && alive[0] && alive[1] {
            let states: Vec<PeerState> = nodes
                .iter()
                .map(|n| {
                    let r = n.role.as_ref().unwrap();
                    hello(n.id, r.lineage(), r.state() == RoleState::Leader)
                })
                .collect();
            for (j, n) in nodes.iter_mut().enumerate() {
                let peer = states[1 - j].clone();
                let r = n.role.as_mut().unwrap();
                // a follower of a leading peer catches up while linked
                if peer.leading && r.state() == RoleState::Follower {
                    let rel = r.lineage().relation(n.id, &peer.lineage);
                    if matches!(
                        rel,
                        Relation::Behind { .. } | Relation::Diverged { we_win: false }
                    ) {
                        r.handle_caught_up(&peer.lineage, now);
                    }
                }
                r.handle_peer(peer, now);
            }
        }
        for n in nodes.iter_mut() {
            if let Some(r) = n.role.as_mut() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
        }
        let link = link_up;
        settle(&mut nodes, link, now);
        // a simplified VRRP without preemption (as --role auto runs it): a
        // closed gate is FAULT; a master stays master; with no master the
        // higher priority gate-open node wins; two masters that hear each
        // other resolve by priority; without adverts each is master alone
        let open: Vec<bool> = nodes
            .iter()
            .map(|n| n.role.as_ref().is_some_and(|r| r.gate_open()))
            .collect();
        let mut next = [nodes[0].vrrp && open[0], nodes[1].vrrp && open[1]];
        if !vrrp_up {
            next = [open[0], open[1]];
        } else if next[0] && next[1] {
            next = if nodes[0].prio > nodes[1].prio {
                [true, false]
            } else {
                [false, true]
            };
        } else if !next[0] && !next[1] {
            next = match (open[0], open[1]) {
                (true, true) => {
                    if nodes[0].prio > nodes[1].prio {
                        [true, false]
                    } else {
                        [false, true]
                    }
                }
                (a, b) => [a, b],
            };
        }
        for j in 0..2 {
            nodes[j].vrrp = next[j];
            if let Some(r) = nodes[j].role.as_mut() {
                r.handle_vrrp(next[j], now);
            }
            settle(&mut nodes, link, now);
        }
        for n in nodes.iter_mut() {
            n.master = n
                .role
                .as_ref()
                .is_some_and(|r| r.state() == RoleState::Leader);
        }
        // the leader's batches, acknowledged by a follower of the same
        // generation while the path is up
        if link_up && nodes.iter().all(|n| n.role.is_some()) {
            for j in 0..2 {
                let (l, f) = (
                    nodes[j].role.as_ref().unwrap(),
                    nodes[1 - j].role.as_ref().unwrap(),
                );
                if l.state() == RoleState::Leader && f.lineage().gen == l.lineage().gen {
                    let c = l.lineage().commit + 1;
                    nodes[j].role.as_mut().unwrap().handle_commit(c);
                    nodes[1 - j].role.as_mut().unwrap().handle_commit(c);
                }
            }
        }
        // invariants, once the paths have been steady for a while
        let leaders: Vec<NodeId> = nodes.iter().filter(|n| n.master).map(|n| n.id).collect();
        let settled = now >= link_since + cfg().heartbeat_timeout + step * 2;
        if (vrrp_up || link_up) && settled && leaders.len() > 1 {
            // with VRRP up the election resolves within one step
            assert!(
                !(link_up && nodes.iter().all(|n| n.role.is_some())),
                "seed {seed} step {i}: two leaders with the replication path up: {:?} / {:?} vrrp {vrrp_up}",
                nodes[0].role.as_ref().map(|r| (r.lineage().clone(), r.peer().cloned())),
                nodes[1].role.as_ref().map(|r| (r.lineage().clone(), r.peer().cloned())),
            );
            assert!(!vrrp_up, "seed {seed} step {i}: two leaders with VRRP up");
        }
        if link_up && settled && nodes.iter().all(|n| n.role.is_some()) {
            for j in 0..2 {
                let r = nodes[j].role.as_ref().unwrap();
                let peer = nodes[1 - j].role.as_ref().unwrap();
                if r.state() == RoleState::Leader {
                    let rel = r.lineage().relation(nodes[j].id, peer.lineage());
                    assert!(
                        !matches!(rel, Relation::Behind { .. }),
                        "seed {seed} step {i}: a leader behind its live peer: {:?} {:?} vs {:?} {:?}",
                        r.state(), r.lineage(), peer.state(), peer.lineage()
                    );
                }
            }
        }
        // liveness: healed at step 300; by 340 exactly one leader, and no
        // role change from then on (no flapping)
        if i == 340 {
            let leaders = nodes.iter().filter(|n| n.master).count();
            assert_eq!(
                leaders, 1,
                "seed {seed}: {leaders} leaders 20 s after healing"
            );
            settled_changes = nodes.iter().map(|n| n.changes).sum();
        }
        if i > 340 {
            let c: u64 = nodes.iter().map(|n| n.changes).sum();
            assert_eq!(
                c, settled_changes,
                "seed {seed} step {i}: role changes after settling (flapping)"
            );
        }
        for n in &nodes {
            if let Some(r) = &n.role {
                assert!(r.lineage().history.len() <= HISTORY_MAX);
                let gens: Vec<_> = r.lineage().history.iter().map(|(g, _)| *g).collect();
                assert!(
                    gens.windows(2).all(|w| w[0] < w[1]),
                    "seed {seed}: history out of order"
                );
            }
        }
    }
    let failed = nodes.iter().map(|n| n.failed).sum();
    (handovers, failed)
}
