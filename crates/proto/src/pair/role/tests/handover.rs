use super::*;

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
