use super::*;

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
