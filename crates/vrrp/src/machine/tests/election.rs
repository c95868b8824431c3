use super::*;

#[test]
fn higher_priority_wins_election() {
    for v in [Version::V2, Version::V3] {
        let mut sim = Sim::new(vec![cfg(v, 100, 1, 1000), cfg(v, 150, 2, 1000)]);
        sim.start(0);
        sim.start(1);
        sim.run_until(10 * S);
        assert_eq!(sim.state(1), State::Master, "{v:?}");
        assert_eq!(sim.state(0), State::Backup, "{v:?}");
        assert_eq!(sim.holders(), vec![1]);
        // node 1 (prio 150) became master at its own Master_Down_Interval
        let mdi = master_down_interval(v, 150, S);
        assert_eq!(sim.became_master_at(1), Some(mdi));
        // and node 0 never did
        assert_eq!(sim.became_master_at(0), None);
    }
}

#[test]
fn equal_priority_higher_ip_wins() {
    let mut sim = Sim::new(vec![
        cfg(Version::V3, 100, 9, 1000),
        cfg(Version::V3, 100, 7, 1000),
    ]);
    sim.start(0);
    sim.start(1);
    sim.run_until(10 * S);
    // both timers fire together; both go master; the lower address yields
    assert_eq!(sim.state(0), State::Master);
    assert_eq!(sim.state(1), State::Backup);
    assert_eq!(sim.holders(), vec![0]);
    let last = sim.nodes[1].transitions.last().unwrap();
    assert!(last.2.contains("higher address"), "{}", last.2);
}

#[test]
fn returning_higher_priority_preempts() {
    let mut sim = Sim::new(vec![
        cfg(Version::V2, 100, 1, 1000),
        cfg(Version::V2, 150, 2, 1000),
    ]);
    sim.start(0);
    sim.run_until(5 * S);
    assert_eq!(sim.state(0), State::Master);
    sim.start(1);
    sim.run_until(5 * S + 200 * Duration::from_millis(1));
    assert_eq!(sim.state(1), State::Backup);
    sim.run_until(20 * S);
    assert_eq!(sim.state(1), State::Master);
    assert_eq!(sim.state(0), State::Backup);
    assert_eq!(sim.holders(), vec![1]);
    // preemption happens when the master down timer runs out, i.e. MDI after start
    let mdi = master_down_interval(Version::V2, 150, S);
    assert_eq!(sim.became_master_at(1), Some(5 * S + mdi));
}

#[test]
fn nopreempt_keeps_lower_priority_master() {
    let mut c = cfg(Version::V3, 150, 2, 1000);
    c.preempt = false;
    let mut sim = Sim::new(vec![cfg(Version::V3, 100, 1, 1000), c]);
    sim.start(0);
    sim.run_until(5 * S);
    sim.start(1);
    sim.run_until(120 * S);
    assert_eq!(sim.state(0), State::Master);
    assert_eq!(sim.state(1), State::Backup);
    assert_eq!(sim.holders(), vec![0]);
    // ...but it still takes over when the master dies
    sim.kill(0);
    sim.run_until(130 * S);
    assert_eq!(sim.state(1), State::Master);
}

#[test]
fn preempt_delay_postpones_preemption() {
    let mut c = cfg(Version::V3, 150, 2, 1000);
    c.preempt_delay = 10 * S;
    let mut sim = Sim::new(vec![cfg(Version::V3, 100, 1, 1000), c]);
    sim.start(0);
    sim.run_until(5 * S);
    sim.start(1);
    sim.run_until(14 * S);
    assert_eq!(
        sim.state(1),
        State::Backup,
        "must not preempt before the delay"
    );
    sim.run_until(30 * S);
    assert_eq!(sim.state(1), State::Master);
    let at = sim.became_master_at(1).unwrap();
    // first lower advert seen at ~6 s; delay 10 s; then the last accepted
    // advert's master down timer must run out.
    assert!(
        at >= 16 * S && at <= 16 * S + master_down_interval(Version::V3, 150, S) + S,
        "{at:?}"
    );
}

#[test]
fn split_brain_resolution_reannounces() {
    let mut m = Machine::new(cfg(Version::V3, 150, 1, 1000));
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    m.handle_timeout(t + 10 * S);
    while m.poll_action().is_some() {}
    let lower = Machine::new(cfg(Version::V3, 100, 2, 1000)).advert(100);
    m.handle_event(
        t + 10 * S,
        Event::Advert {
            src: ip(2),
            ttl: 255,
            advert: lower.clone(),
        },
    )
    .unwrap();
    assert_eq!(m.poll_action(), Some(Action::SendAdvert { priority: 150 }));
    assert_eq!(m.poll_action(), Some(Action::Announce { count: 5 }));
    // rate-limited
    m.handle_event(
        t + 10 * S,
        Event::Advert {
            src: ip(2),
            ttl: 255,
            advert: lower,
        },
    )
    .unwrap();
    assert_eq!(m.poll_action(), Some(Action::SendAdvert { priority: 150 }));
    assert_eq!(m.poll_action(), None);
}
