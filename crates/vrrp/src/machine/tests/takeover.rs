use super::*;

#[test]
fn kill_master_backup_takes_over_after_master_down_interval() {
    for (v, int_ms) in [(Version::V2, 1000), (Version::V3, 1000), (Version::V3, 100)] {
        let mut sim = Sim::new(vec![cfg(v, 200, 1, int_ms), cfg(v, 100, 2, int_ms)]);
        sim.start(0);
        sim.start(1);
        sim.run_until(10 * S);
        assert_eq!(sim.state(0), State::Master);
        // kill right after an advert went out
        let last_advert = sim.nodes[0].m.adver_timer.unwrap() - Duration::from_millis(int_ms);
        sim.kill(0);
        sim.run_until(20 * S);
        assert_eq!(sim.state(1), State::Master);
        assert_eq!(sim.holders(), vec![1]);
        let mdi = master_down_interval(v, 100, Duration::from_millis(int_ms));
        assert_eq!(
            sim.t0 + sim.became_master_at(1).unwrap(),
            last_advert + mdi,
            "{v:?} {int_ms}"
        );
        let (_, _, why) = sim.nodes[1].transitions.last().unwrap();
        assert!(why.contains("master down timer expired"), "{why}");
        // gratuitous ARP burst at takeover
        assert_eq!(sim.nodes[1].announces.first().map(|a| a.1), Some(5));
    }
}

#[test]
fn priority_zero_release_takes_over_after_skew_time() {
    for v in [Version::V2, Version::V3] {
        let mut sim = Sim::new(vec![cfg(v, 200, 1, 1000), cfg(v, 100, 2, 1000)]);
        sim.start(0);
        sim.start(1);
        sim.run_until(10 * S);
        assert_eq!(sim.holders(), vec![0]);
        sim.stop(0);
        assert_eq!(sim.state(0), State::Initialize);
        assert!(!sim.nodes[0].holds_vip);
        sim.run_until(20 * S);
        assert_eq!(sim.state(1), State::Master);
        let took = sim.became_master_at(1).unwrap() - 10 * S;
        assert_eq!(took, skew_time(v, 100, S), "{v:?}");
        // The reason says why: the shells' tests check it in the log.
        let (_, to, why) = sim.nodes[1].transitions.last().unwrap();
        assert_eq!(*to, State::Master);
        assert!(why.contains("released the addresses (priority 0)"), "{why}");
    }
}

#[test]
fn master_answers_priority_zero_with_advert() {
    let mut m = Machine::new(cfg(Version::V3, 200, 1, 1000));
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    m.handle_timeout(t + 10 * S);
    assert_eq!(m.state(), State::Master);
    while m.poll_action().is_some() {}
    let mut adv = m.advert(0);
    adv.vrid = 51;
    m.handle_event(
        t + 10 * S,
        Event::Advert {
            src: ip(2),
            ttl: 255,
            advert: adv,
        },
    )
    .unwrap();
    assert_eq!(m.poll_action(), Some(Action::SendAdvert { priority: 200 }));
}

#[test]
fn v3_backup_learns_master_interval() {
    // master advertises every 300 ms; backup configured with 1 s learns 300 ms
    let mut sim = Sim::new(vec![
        cfg(Version::V3, 200, 1, 300),
        cfg(Version::V3, 100, 2, 1000),
    ]);
    sim.start(0);
    sim.run_until(2 * S);
    sim.start(1);
    sim.run_until(4 * S);
    let b = &sim.nodes[1].m;
    assert_eq!(b.state(), State::Backup);
    assert_eq!(b.master_adver_interval(), Duration::from_millis(300));
    assert_eq!(
        b.master_down_interval(),
        master_down_interval(Version::V3, 100, Duration::from_millis(300))
    );
    // and takes over at the learned (short) interval
    let last = sim.nodes[0].m.adver_timer.unwrap() - Duration::from_millis(300);
    sim.kill(0);
    sim.run_until(10 * S);
    assert_eq!(
        sim.t0 + sim.became_master_at(1).unwrap(),
        last + master_down_interval(Version::V3, 100, Duration::from_millis(300))
    );
}

#[test]
fn garp_second_burst_and_refresh() {
    let mut c = cfg(Version::V3, 255, 1, 1000);
    c.garp_refresh = Some(Duration::from_secs(60));
    let mut sim = Sim::new(vec![c]);
    sim.start(0);
    sim.run_until(130 * S);
    let a = &sim.nodes[0].announces;
    assert_eq!(a[0], (Duration::ZERO, 5));
    assert_eq!(a[1], (5 * S, 5));
    assert_eq!(a[2], (60 * S, 1));
    assert_eq!(a[3], (120 * S, 1));
    assert_eq!(a.len(), 4);
}

#[test]
fn spoofed_long_interval_does_not_delay_takeover() {
    let own = cfg(Version::V3, 100, 2, 1000);
    let mut m = Machine::new(own.clone());
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    let mut spoof = Machine::new(cfg(Version::V3, 200, 1, 1000)).advert(200);
    spoof.interval_cs = 4095;
    let at = t + S;
    m.handle_event(
        at,
        Event::Advert {
            src: ip(1),
            ttl: 255,
            advert: spoof,
        },
    )
    .unwrap();
    assert_eq!(m.master_adver_interval(), S);
    // nothing more is heard: the backup takes over within its own 3×advert_int + skew
    let limit = at + master_down_interval(Version::V3, 100, S);
    let mut now = at;
    while m.state() == State::Backup {
        now = m.poll_timeout().unwrap();
        assert!(now <= limit, "no takeover by {:?}", limit - at);
        m.handle_timeout(now);
    }
    assert_eq!(m.state(), State::Master);
    assert_eq!(now, limit);
}
