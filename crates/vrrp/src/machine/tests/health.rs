use super::*;

/// Two nodes (priority 150, and `backup`) after the first has won.
fn led_by_the_first(backup: u8) -> Sim {
    let mut sim = Sim::new(vec![
        cfg(Version::V3, 150, 1, 1000),
        cfg(Version::V3, backup, 2, 1000),
    ]);
    sim.start(0);
    sim.start(1);
    sim.run_until(10 * S);
    assert_eq!(sim.holders(), vec![0]);
    sim
}

#[test]
fn address_owner_starts_as_master_and_ignores_weights() {
    let mut m = Machine::new(cfg(Version::V3, 255, 1, 1000));
    let t = Instant::now();
    m.handle_event(
        t,
        Event::Health {
            weight_delta: -50,
            fault: None,
        },
    )
    .unwrap();
    m.handle_event(t, Event::Startup).unwrap();
    assert_eq!(m.state(), State::Master);
    assert_eq!(m.effective_priority(), 255);
    assert_eq!(m.poll_action(), Some(Action::SendAdvert { priority: 255 }));
}

#[test]
fn weights_adjust_priority_and_move_the_master() {
    let mut sim = led_by_the_first(120);
    // track script with weight -50 fails on the master: 150 - 50 = 100 < 120
    sim.event(
        0,
        Event::Health {
            weight_delta: -50,
            fault: None,
        },
    );
    assert_eq!(sim.nodes[0].m.effective_priority(), 100);
    sim.run_until(20 * S);
    assert_eq!(sim.holders(), vec![1]);
    assert_eq!(sim.state(0), State::Backup);
    // clamping
    sim.event(
        0,
        Event::Health {
            weight_delta: -500,
            fault: None,
        },
    );
    assert_eq!(sim.nodes[0].m.effective_priority(), 1);
    sim.event(
        0,
        Event::Health {
            weight_delta: 500,
            fault: None,
        },
    );
    assert_eq!(sim.nodes[0].m.effective_priority(), 254);
    sim.run_until(30 * S);
    assert_eq!(sim.holders(), vec![0], "recovered node preempts back");
}

#[test]
fn fault_releases_and_recovers() {
    let mut sim = led_by_the_first(100);
    sim.event(
        0,
        Event::Health {
            weight_delta: 0,
            fault: Some("interface eth0 down".into()),
        },
    );
    assert_eq!(sim.state(0), State::Fault);
    assert!(!sim.nodes[0].holds_vip);
    // it resigned with priority 0, so the backup takes over after skew time
    sim.run_until(11 * S);
    assert_eq!(sim.state(1), State::Master);
    assert_eq!(sim.holders(), vec![1]);
    sim.event(
        0,
        Event::Health {
            weight_delta: 0,
            fault: None,
        },
    );
    assert_eq!(sim.state(0), State::Backup);
    sim.run_until(30 * S);
    assert_eq!(sim.holders(), vec![0]);
}

#[test]
fn master_that_cannot_add_its_vip_goes_fault_and_retries() {
    let mut sim = Sim::new(vec![
        cfg(Version::V3, 150, 1, 1000),
        cfg(Version::V3, 100, 2, 1000),
    ]);
    sim.nodes[0].add_fails = Some("10.0.0.100/32 on eth0: Operation not permitted".into());
    sim.start(0);
    sim.start(1);
    sim.run_until(10 * S);
    // node 0 won the election, could not add the VIP, resigned: the peer holds it
    assert_eq!(sim.state(0), State::Fault);
    assert_eq!(sim.state(1), State::Master);
    assert_eq!(sim.holders(), vec![1]);
    let t = &sim.nodes[0].transitions;
    let fault = t.iter().find(|t| t.1 == State::Fault).unwrap();
    assert!(
        fault.2.contains("cannot add the virtual addresses")
            && fault.2.contains("Operation not permitted"),
        "{fault:?}"
    );
    // no gratuitous ARP pointed clients at the node without the VIP
    assert!(sim.nodes[0].announces.is_empty());
    // it keeps retrying every ADDRESS_RETRY while faulty
    let p = sim.nodes[0].probes;
    assert!(p >= 1, "{p}");
    sim.run_until(20 * S);
    assert_eq!(sim.nodes[0].probes, p + 2);
    assert_eq!(sim.state(0), State::Fault);
    // the add works again: fault cleared, back to BACKUP, then it preempts
    sim.nodes[0].add_fails = None;
    sim.run_until(26 * S);
    assert_ne!(sim.state(0), State::Fault);
    sim.run_until(40 * S);
    assert_eq!(sim.state(0), State::Master);
    assert_eq!(sim.holders(), vec![0]);
    assert_eq!(sim.nodes[0].probes, p + 3);
    // a health fault that clears while the address fault persists stays FAULT
    let mut m = Machine::new(cfg(Version::V3, 150, 1, 1000));
    let t0 = Instant::now();
    m.handle_event(t0, Event::Startup).unwrap();
    m.handle_timeout(t0 + 10 * S);
    m.handle_event(t0 + 10 * S, Event::AddressResult(Err("boom".into())))
        .unwrap();
    assert_eq!(m.state(), State::Fault);
    let health = |fault: Option<&str>| Event::Health {
        weight_delta: 0,
        fault: fault.map(String::from),
    };
    m.handle_event(t0 + 11 * S, health(Some("eth0 down")))
        .unwrap();
    m.handle_event(t0 + 12 * S, health(None)).unwrap();
    assert_eq!(m.state(), State::Fault);
    m.handle_event(t0 + 13 * S, Event::AddressResult(Ok(())))
        .unwrap();
    assert_eq!(m.state(), State::Backup);
    assert_eq!(
        m.poll_timeout(),
        Some(t0 + 13 * S + m.master_down_interval())
    );
}
