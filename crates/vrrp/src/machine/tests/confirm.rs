use super::*;

fn confirming(prio: u8, last: u8) -> MachineConfig {
    let mut c = cfg(Version::V3, prio, last, 1000);
    c.confirm_master = true;
    c
}

#[test]
fn a_master_awaiting_confirmation_advertises_but_holds_nothing_until_confirmed() {
    let mut sim = Sim::new(vec![confirming(150, 1), cfg(Version::V3, 100, 2, 1000)]);
    sim.start(0);
    sim.start(1);
    sim.run_until(5 * S);
    assert_eq!(sim.state(0), State::Master);
    assert_eq!(sim.nodes[0].confirms, 1);
    assert!(!sim.nodes[0].m.holds_addresses());
    assert!(
        sim.holders().is_empty(),
        "no address before the confirmation"
    );
    assert!(sim.nodes[0].announces.is_empty(), "nothing announced yet");
    // Its adverts go on while it waits (far past the garp delay), so the
    // backup never takes over: a slow promotion does not make two masters.
    sim.run_until(30 * S);
    assert_eq!(sim.state(1), State::Backup);
    assert!(sim.nodes[0].announces.is_empty());
    sim.event(0, Event::MasterConfirmed(Ok(())));
    assert_eq!(sim.holders(), vec![0]);
    assert!(sim.nodes[0].m.holds_addresses());
    assert_eq!(sim.nodes[0].announces.len(), 1);
    sim.run_until(40 * S);
    assert_eq!(sim.nodes[0].announces.len(), 2, "the delayed second burst");
    assert_eq!(sim.nodes[0].cancels, 0);
}

#[test]
fn a_better_master_cancels_a_pending_confirmation() {
    let mut sim = Sim::new(vec![confirming(100, 1), cfg(Version::V3, 150, 2, 1000)]);
    // Node 0 alone: master, waiting for its embedder.
    sim.start(0);
    sim.run_until(5 * S);
    assert_eq!(sim.state(0), State::Master);
    assert_eq!(sim.nodes[0].confirms, 1);
    // A higher-priority node appears (preempting): node 0 hears its adverts
    // while waiting, steps back and cancels the confirmation.
    sim.start(1);
    sim.run_until(10 * S);
    assert_eq!(sim.state(1), State::Master);
    assert_eq!(sim.state(0), State::Backup);
    assert_eq!(sim.nodes[0].cancels, 1);
    // A late answer changes nothing.
    sim.event(0, Event::MasterConfirmed(Ok(())));
    assert_eq!(sim.holders(), vec![1]);
    assert_eq!(sim.state(0), State::Backup);
}

#[test]
fn a_refused_mastership_resigns_and_the_backup_takes_over() {
    let mut sim = Sim::new(vec![confirming(150, 1), cfg(Version::V3, 100, 2, 1000)]);
    sim.start(0);
    sim.start(1);
    sim.run_until(5 * S);
    assert_eq!(sim.state(0), State::Master);
    sim.event(0, Event::MasterConfirmed(Err("promote hook failed".into())));
    assert_eq!(sim.state(0), State::Backup);
    assert!(sim.nodes[0]
        .transitions
        .last()
        .unwrap()
        .2
        .contains("promote hook failed"));
    assert_eq!(sim.nodes[0].cancels, 0, "answered, not cancelled");
    // The priority-0 advert lets node 1 take over after its skew time.
    let t = sim.now - sim.t0;
    sim.run_until(t + S);
    assert_eq!(sim.state(1), State::Master);
    assert_eq!(sim.holders(), vec![1]);
}
