use super::*;

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
