//! The role rules under a simulated clock: each rule alone, then seeded runs
//! of two nodes with a simplified VRRP, crashes, and partitions of either
//! path, checking that no two leaders coexist while a path is up, that a
//! node behind its live peer never leads, and that once everything heals
//! one leader remains and the roles stop changing (the VRRP model does not
//! preempt, as `--role auto` runs it; with preemption the roles flap).

use super::*;
use crate::pair::lineage::HISTORY_MAX;
use syncd_testkit::rng::Rng;

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

#[test]
fn a_node_that_never_synced_leads_only_when_forced() {
    let t0 = Instant::now();
    let mut r = Role::new(A, cfg(), Lineage::default(), None, t0);
    assert_eq!(gate(&drain(&mut r)), Some(false));
    r.handle_timeout(t0 + cfg().unsure_wait * 2);
    r.handle_vrrp(true, t0 + cfg().unsure_wait * 2);
    assert!(!r.gate_open());
    assert!(drain(&mut r)
        .iter()
        .all(|a| !matches!(a, Action::Promote { .. })));
    r.handle_force(t0 + cfg().unsure_wait * 2);
    let acts = drain(&mut r);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Promote { gen } if gen.counter == 1 && gen.node == A)));
}

#[test]
fn at_start_the_peer_is_heard_first_and_the_newer_data_leads() {
    let t0 = Instant::now();
    let old = synced(B);
    let mut new = old.clone();
    new.promote(A, None);
    // A has the newer data but the lower priority: VRRP would pick B
    let mut a = Role::new(A, cfg(), new.clone(), None, t0);
    let mut b = Role::new(B, cfg(), old.clone(), None, t0);
    assert_eq!(gate(&drain(&mut a)), Some(false), "waits to hear the peer");
    assert_eq!(gate(&drain(&mut b)), Some(false));
    assert_eq!(a.poll_timeout(), Some(t0 + cfg().peer_wait));
    let t1 = t0 + Duration::from_millis(300);
    a.handle_peer(hello(B, &old, false), t1);
    b.handle_peer(hello(A, &new, false), t1);
    assert!(a.gate_open(), "newer data may lead");
    assert!(!b.gate_open(), "older data catches up first");
    b.handle_vrrp(true, t1);
    assert!(drain(&mut b)
        .iter()
        .all(|x| !matches!(x, Action::Promote { .. })));
    // equal data: both may lead, VRRP's priorities decide
    let mut c = Role::new(B, cfg(), new.clone(), None, t0);
    c.handle_peer(hello(A, &new, false), t1);
    let mut d = Role::new(A, cfg(), new.clone(), None, t0);
    d.handle_peer(hello(B, &new, false), t1);
    assert!(c.gate_open() && d.gate_open());
}

#[test]
fn alone_at_start_a_node_leads_after_the_peer_wait() {
    let t0 = Instant::now();
    let mut r = Role::new(A, cfg(), synced(A), Some(synced(A).gen), t0);
    assert!(!r.gate_open());
    let t1 = r.poll_timeout().unwrap();
    assert_eq!(t1, t0 + cfg().peer_wait);
    r.handle_timeout(t1);
    assert!(r.gate_open());
    assert_eq!(r.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn the_follower_takes_over_at_once_when_the_leader_dies() {
    let t0 = Instant::now();
    let la = synced(A);
    let mut b = Role::new(B, cfg(), Lineage::default(), None, t0);
    b.handle_peer(hello(A, &la, true), t0);
    let acts = drain(&mut b);
    assert!(
        acts.contains(&Action::Follow { preserve: true }),
        "{acts:?}"
    );
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Persist { peer_seen: Some(g), .. } if *g == la.gen)));
    b.handle_caught_up(&la, t0);
    b.handle_commit(40);
    assert!(
        b.gate_open(),
        "standing by in the election while the peer leads"
    );
    // VRRP adverts are lost but the leader's heartbeats arrive: no
    // promotion, and the node steps out of the election a while
    let t1 = t0 + Duration::from_secs(2);
    b.handle_peer(hello(A, &la, true), t1);
    b.handle_vrrp(true, t1);
    assert!(drain(&mut b)
        .iter()
        .all(|a| !matches!(a, Action::Promote { .. })));
    assert!(!b.gate_open());
    // the leader dies: heartbeats stop, the gate opens, VRRP promotes
    let t2 = b.poll_timeout().unwrap();
    assert_eq!(t2, t1 + cfg().heartbeat_timeout);
    b.handle_timeout(t2);
    assert!(b.gate_open(), "our generation is the newest we saw");
    let acts = drain(&mut b);
    let gen = acts
        .iter()
        .find_map(|a| match a {
            Action::Promote { gen } => Some(*gen),
            _ => None,
        })
        .expect("promotes: VRRP already wants master");
    assert_eq!((gen.counter, gen.node), (2, B));
    assert_eq!(b.lineage().history, vec![(la.gen, 40)]);
    b.handle_promoted(t2);
    assert_eq!(b.state(), RoleState::Leader);
    let log: Vec<_> = std::iter::from_fn(|| b.poll_change())
        .map(|c| c.to)
        .collect();
    assert_eq!(log, [RoleState::Promoting, RoleState::Leader]);
}

#[test]
fn the_old_leader_returns_follows_and_keeps_its_writes() {
    let t0 = Instant::now();
    let mut la = synced(A);
    la.commit = 40;
    let mut lb = Lineage::default();
    lb.follow(&la);
    lb.promote(B, Some(la.gen));
    // A restarts with the higher priority and preempt: it must not lead
    let mut a = Role::new(A, cfg(), la.clone(), Some(la.gen), t0);
    drain(&mut a);
    a.handle_vrrp(true, t0);
    a.handle_peer(hello(B, &lb, true), t0);
    let acts = drain(&mut a);
    assert!(
        acts.contains(&Action::Follow { preserve: true }),
        "{acts:?}"
    );
    assert!(acts.iter().all(|x| !matches!(x, Action::Promote { .. })));
    assert!(!a.gate_open());
    // caught up: same data; the peer still leads, so no preemption yet
    a.handle_caught_up(&lb, t0);
    a.handle_peer(hello(B, &lb, true), t0);
    assert!(!a.gate_open());
    // the peer hands over (switchover): now A may lead and preempt
    let t1 = t0 + cfg().heartbeat_timeout;
    a.handle_peer(hello(B, &lb, false), t1);
    a.handle_timeout(t1);
    assert!(a.gate_open());
    let gen = lead(&mut a, t1);
    assert_eq!(gen.counter, 3);
}

#[test]
fn a_leader_that_loses_vrrp_or_stops_demotes_first() {
    let t0 = Instant::now();
    let mut a = Role::new(A, cfg(), synced(A), None, t0);
    a.handle_timeout(t0 + cfg().peer_wait);
    lead(&mut a, t0 + cfg().peer_wait);
    a.handle_vrrp(false, t0 + cfg().peer_wait);
    assert_eq!(
        drain(&mut a),
        vec![Action::Demote {
            why: "VRRP left master".into()
        }]
    );
    assert_eq!(a.state(), RoleState::Demoting);
    a.handle_demoted(t0 + cfg().peer_wait);
    assert_eq!(a.state(), RoleState::Follower);

    let mut a = Role::new(A, cfg(), synced(A), None, t0);
    a.handle_timeout(t0 + cfg().peer_wait);
    lead(&mut a, t0 + cfg().peer_wait);
    a.handle_shutdown(t0 + cfg().peer_wait);
    let acts = drain(&mut a);
    assert_eq!(
        acts[0],
        Action::Demote {
            why: "shutdown".into()
        }
    );
    assert_eq!(gate(&acts), Some(false));
}

#[test]
fn after_a_partition_one_leader_remains_and_the_loser_keeps_its_writes() {
    let t0 = Instant::now();
    let mut base = synced(A);
    base.commit = 10;
    let mut la = base.clone();
    let mut lb = Lineage::default();
    lb.follow(&base);
    let mut a = Role::new(A, cfg(), la.clone(), Some(base.gen), t0);
    let mut b = Role::new(B, cfg(), lb.clone(), Some(base.gen), t0);
    let t1 = t0 + cfg().peer_wait;
    a.handle_timeout(t1);
    b.handle_timeout(t1);
    lead(&mut a, t1);
    lead(&mut b, t1);
    a.handle_commit(5);
    la = a.lineage().clone();
    lb = b.lineage().clone();
    // heal: each hears the other leading
    a.handle_peer(hello(B, &lb, true), t1);
    b.handle_peer(hello(A, &la, true), t1);
    let (aa, ba) = (drain(&mut a), drain(&mut b));
    let a_demotes = aa.iter().any(|x| matches!(x, Action::Demote { .. }));
    let b_demotes = ba.iter().any(|x| matches!(x, Action::Demote { .. }));
    assert!(
        a_demotes != b_demotes,
        "exactly one demotes: {aa:?} / {ba:?}"
    );
    assert!(b_demotes, "A has more batches in the same counter");
    b.handle_demoted(t1);
    let ba = drain(&mut b);
    assert!(ba.contains(&Action::Follow { preserve: true }), "{ba:?}");
    assert_eq!(a.state(), RoleState::Leader);
}

#[test]
fn a_node_that_knows_it_is_stale_waits_before_leading_alone() {
    let t0 = Instant::now();
    let old = synced(A);
    let mut newer = old.clone();
    newer.promote(B, None);
    let mut a = Role::new(A, cfg(), old, Some(newer.gen), t0);
    let t1 = t0 + cfg().peer_wait;
    a.handle_timeout(t1);
    assert!(!a.gate_open());
    assert_eq!(a.poll_timeout(), Some(t0 + cfg().unsure_wait));
    a.handle_timeout(t0 + cfg().unsure_wait);
    let acts = drain(&mut a);
    assert!(
        acts.iter()
            .any(|x| matches!(x, Action::Gate { open: true, why } if why.contains("older"))),
        "{acts:?}"
    );
}

#[test]
fn a_failed_promotion_demotes_and_waits() {
    let t0 = Instant::now();
    let mut a = Role::new(A, cfg(), synced(A), None, t0);
    let t1 = t0 + cfg().peer_wait;
    a.handle_timeout(t1);
    a.handle_vrrp(true, t1);
    drain(&mut a);
    a.handle_promote_failed("exportfs: exit status 1", t1);
    let acts = drain(&mut a);
    assert!(matches!(&acts[0], Action::Demote { why } if why.contains("exportfs")));
    assert_eq!(gate(&acts), Some(false));
    a.handle_demoted(t1);
    assert!(drain(&mut a)
        .iter()
        .all(|x| !matches!(x, Action::Promote { .. })));
    let t2 = a.poll_timeout().unwrap();
    assert_eq!(t2, t1 + cfg().promote_retry);
    a.handle_timeout(t2);
    assert!(
        drain(&mut a)
            .iter()
            .any(|x| matches!(x, Action::Promote { .. })),
        "retries"
    );
}

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

#[test]
fn a_leader_whose_source_stops_steps_down_and_waits() {
    let t0 = Instant::now();
    let mut a = Role::new(A, cfg(), synced(A), None, t0);
    let t1 = t0 + cfg().peer_wait;
    a.handle_timeout(t1);
    lead(&mut a, t1);
    a.handle_source_failed("watch failed", t1);
    let acts = drain(&mut a);
    assert!(
        matches!(&acts[0], Action::Demote { why } if why.contains("watch failed")),
        "{acts:?}"
    );
    a.handle_demoted(t1);
    assert!(!a.gate_open(), "the address is resigned");
    assert_eq!(a.poll_timeout(), Some(t1 + cfg().promote_retry));
}

/// A leads generation G; B followed and adopted it. Both hear each other.
fn pair_led_by_a(t0: Instant) -> (Role, Role, Instant) {
    let mut a = Role::new(A, cfg(), synced(A), None, t0);
    let t1 = t0 + cfg().peer_wait;
    a.handle_timeout(t1);
    lead(&mut a, t1);
    let mut b = Role::new(B, cfg(), synced(A), None, t0);
    b.handle_peer(hello(A, a.lineage(), true), t1);
    b.handle_caught_up(&a.lineage().clone(), t1);
    a.handle_peer(hello(B, b.lineage(), false), t1);
    drain(&mut a);
    drain(&mut b);
    (a, b, t1)
}

#[test]
fn a_planned_handover_steps_down_and_consents_to_the_current_peer() {
    let t0 = Instant::now();
    let (mut a, mut b, t1) = pair_led_by_a(t0);
    assert_eq!(a.relation(), Some(Relation::Ahead), "A led the generation");
    assert!(a.handle_handover(t1));
    let acts = drain(&mut a);
    // The gate closes before the source is told to stop, so VRRP resigns
    // (and the peer's Skew_Time runs) while the source stops.
    assert!(
        matches!(&acts[0], Action::Gate { open: false, .. }),
        "{acts:?}"
    );
    assert!(matches!(&acts[1], Action::Demote { why } if why.contains("switchover")));
    assert_eq!(gate(&acts), Some(false));
    // The closed gate makes VRRP resign the address.
    a.handle_vrrp(false, t1);
    // The peer may ask while our source is still stopping: granted.
    a.handle_peer_ask(100, t1);
    assert_eq!(drain(&mut a), vec![Action::Answer { grant: true }]);
    a.handle_demoted(t1);
    assert_eq!(a.state(), RoleState::Follower);
    // Out of the election while handing over: the peer's VRRP takes over.
    assert_eq!(gate(&drain(&mut a)), None, "the gate stays closed");
    assert!(!a.gate_open());
    // B asks; A grants although it led the generation (its data is "ahead").
    b.handle_peer(hello(A, a.lineage(), false), t1);
    b.handle_vrrp(true, t1);
    let acts = drain(&mut b);
    let Some(Action::Ask { priority }) = acts.iter().find(|x| matches!(x, Action::Ask { .. }))
    else {
        panic!("B asks: {acts:?}")
    };
    a.handle_peer_ask(*priority, t1);
    assert_eq!(drain(&mut a), vec![Action::Answer { grant: true }]);
    b.handle_peer_answer(true, t1);
    let acts = drain(&mut b);
    assert!(
        acts.iter().any(|x| matches!(x, Action::Promote { .. })),
        "{acts:?}"
    );
    b.handle_promoted(t1);
    // A hears B lead its newer generation: the hand-over ends, A follows.
    a.handle_peer(hello(B, b.lineage(), true), t1);
    assert!(!a.handing_over());
    let acts = drain(&mut a);
    assert!(
        acts.iter().any(|x| matches!(x, Action::Follow { .. })),
        "{acts:?}"
    );
    assert!(
        a.gate_open(),
        "stands by in the election again: {acts:?} {a:?}"
    );
    // Without a hand-over, a node that led the generation refuses.
    let (mut a2, _b2, t2) = pair_led_by_a(t0);
    a2.handle_vrrp(false, t2);
    drain(&mut a2);
    a2.handle_demoted(t2);
    drain(&mut a2);
    a2.handle_peer_ask(100, t2);
    assert!(drain(&mut a2).contains(&Action::Answer { grant: false }));
}

#[test]
fn a_handover_needs_a_peer_holding_our_generation_and_ends_after_a_wait() {
    let t0 = Instant::now();
    let (mut a, mut b, t1) = pair_led_by_a(t0);
    // The peer has not adopted the generation: no hand-over.
    let mut behind = b.lineage().clone();
    behind.gen.counter -= 1;
    a.handle_peer(hello(B, &behind, false), t1);
    assert!(!a.handle_handover(t1));
    assert_eq!(a.state(), RoleState::Leader);
    assert!(drain(&mut a).is_empty());
    // Nor without a peer.
    a.handle_peer_lost(t1);
    assert!(!a.handle_handover(t1));
    // Current peer: hand over; it never leads: the gate reopens after the wait.
    a.handle_peer(hello(B, b.lineage(), false), t1);
    assert!(a.handle_handover(t1));
    a.handle_vrrp(false, t1);
    a.handle_demoted(t1);
    drain(&mut a);
    let t2 = t1 + cfg().handover_wait;
    // the peer stays heard meanwhile
    b.handle_timeout(t1);
    a.handle_peer(hello(B, b.lineage(), false), t2 - Duration::from_millis(1));
    assert!(!a.gate_open());
    a.handle_timeout(t2);
    assert!(!a.handing_over());
    assert!(a.gate_open(), "{:?}", drain(&mut a));
}

#[test]
fn after_a_failed_promotion_a_peer_holding_the_generation_may_take_over() {
    let t0 = Instant::now();
    let (mut a, mut b, t1) = pair_led_by_a(t0);
    // A leads generation G; B adopted it. A's next promotion fails: it
    // already started generation G+1 (durable), which B adopts from A's
    // source before the source stops.
    a.handle_vrrp(false, t1);
    drain(&mut a);
    a.handle_demoted(t1);
    drain(&mut a);
    a.handle_timeout(t1);
    a.handle_vrrp(true, t1);
    let acts = drain(&mut a);
    let ask = acts.iter().any(|x| matches!(x, Action::Ask { .. }));
    if ask {
        a.handle_peer_answer(true, t1);
        drain(&mut a);
    }
    assert_eq!(a.state(), RoleState::Promoting);
    a.handle_promote_failed("promote hook failed", t1);
    let acts = drain(&mut a);
    assert!(acts.iter().any(|x| matches!(x, Action::Demote { .. })));
    // B has not adopted G+1 yet: A refuses (its data is newer).
    b.handle_peer(hello(A, a.lineage(), false), t1);
    a.handle_peer(hello(B, b.lineage(), false), t1);
    a.handle_peer_ask(100, t1);
    assert!(drain(&mut a).contains(&Action::Answer { grant: false }));
    // Adopted: A consents while it waits before leading again.
    b.handle_caught_up(&a.lineage().clone(), t1);
    a.handle_peer(hello(B, b.lineage(), false), t1);
    a.handle_vrrp(false, t1);
    a.handle_demoted(t1);
    drain(&mut a);
    a.handle_peer_ask(100, t1);
    assert!(drain(&mut a).contains(&Action::Answer { grant: true }));
    // After the wait, the leader of the generation is the authority again.
    let t2 = t1 + cfg().promote_retry;
    a.handle_peer(hello(B, b.lineage(), false), t2);
    a.handle_timeout(t2);
    drain(&mut a);
    a.handle_peer_ask(100, t2);
    assert!(drain(&mut a).contains(&Action::Answer { grant: false }));
}
