//! State machine tests on a simulated LAN with a simulated clock.

use super::*;
use std::net::Ipv4Addr;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn cfg(version: Version, prio: u8, last: u8, int_ms: u64) -> MachineConfig {
    let mut c = MachineConfig::new(version, 51, prio, Duration::from_millis(int_ms), ip(last));
    c.vips = vec![ip(100)];
    c
}

struct Node {
    m: Machine,
    up: bool,
    holds_vip: bool,
    announces: Vec<(Duration, u32)>,
    transitions: Vec<(Duration, State, String)>,
    /// Simulated netlink error for adding the VIP.
    add_fails: Option<String>,
    probes: u32,
    /// Confirmations asked and cancelled (`confirm_master`).
    confirms: u32,
    cancels: u32,
}

/// A LAN of machines: adverts are delivered to every other running node instantly.
struct Sim {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
}

impl Sim {
    fn new(cfgs: Vec<MachineConfig>) -> Sim {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            nodes: cfgs
                .into_iter()
                .map(|c| Node {
                    m: Machine::new(c),
                    up: false,
                    holds_vip: false,
                    announces: vec![],
                    transitions: vec![],
                    add_fails: None,
                    probes: 0,
                    confirms: 0,
                    cancels: 0,
                })
                .collect(),
        }
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].up = true;
        let now = self.now;
        self.nodes[i].m.handle_event(now, Event::Startup).unwrap();
        self.drain();
    }

    /// Graceful stop (priority 0 goes out).
    fn stop(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].m.handle_event(now, Event::Shutdown).unwrap();
        self.drain();
        self.nodes[i].up = false;
    }

    /// kill -9: the node vanishes without a word (its VIP stays configured but it is gone).
    fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
        self.nodes[i].holds_vip = false;
    }

    fn event(&mut self, i: usize, e: Event) {
        let now = self.now;
        self.nodes[i].m.handle_event(now, e).unwrap();
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            let mut sent = vec![];
            for (i, n) in self.nodes.iter_mut().enumerate() {
                while let Some(a) = n.m.poll_action() {
                    if !n.up {
                        continue;
                    }
                    match a {
                        Action::SendAdvert { priority } => {
                            sent.push((i, n.m.config().primary_ip, n.m.advert(priority)))
                        }
                        Action::AddAddresses => {
                            if n.add_fails.is_some() {
                                let e = n.add_fails.clone().map_or(Ok(()), Err);
                                let _ = n.m.handle_event(self.now, Event::AddressResult(e));
                            } else {
                                n.holds_vip = true;
                            }
                        }
                        Action::ProbeAddresses => {
                            n.probes += 1;
                            let e = n.add_fails.clone().map_or(Ok(()), Err);
                            let _ = n.m.handle_event(self.now, Event::AddressResult(e));
                        }
                        Action::RemoveAddresses => n.holds_vip = false,
                        Action::Announce { count } => n.announces.push((self.now - self.t0, count)),
                        Action::Transition { to, reason, .. } => {
                            n.transitions.push((self.now - self.t0, to, reason))
                        }
                        Action::ConfirmMaster => n.confirms += 1,
                        Action::CancelConfirm => n.cancels += 1,
                    }
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, src, adv) in sent {
                // round-trip through the codec, as on the wire
                let bytes = adv
                    .encode(src, IpAddr::V4(crate::packet::MCAST_V4))
                    .unwrap();
                let adv = Advert::decode(&bytes, src, IpAddr::V4(crate::packet::MCAST_V4)).unwrap();
                for (j, n) in self.nodes.iter_mut().enumerate() {
                    if j != from && n.up {
                        let _ = n.m.handle_event(
                            self.now,
                            Event::Advert {
                                src,
                                ttl: 255,
                                advert: adv.clone(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Advance the clock to `until` (relative to start), firing timers in order.
    fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        loop {
            let next = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .filter_map(|n| n.m.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.iter_mut().filter(|n| n.up) {
                        n.m.handle_timeout(now);
                    }
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn state(&self, i: usize) -> State {
        self.nodes[i].m.state()
    }

    fn holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up && self.nodes[i].holds_vip)
            .collect()
    }

    /// When node `i` last became master.
    fn became_master_at(&self, i: usize) -> Option<Duration> {
        self.nodes[i]
            .transitions
            .iter()
            .rev()
            .find(|t| t.1 == State::Master)
            .map(|t| t.0)
    }
}

const S: Duration = Duration::from_secs(1);

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
fn v2_does_not_learn_interval_and_drops_mismatch() {
    let mut m = Machine::new(cfg(Version::V2, 100, 2, 1000));
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    let mut a = Machine::new(cfg(Version::V2, 200, 1, 2000)).advert(200);
    a.vrid = 51;
    assert_eq!(
        m.handle_event(
            t,
            Event::Advert {
                src: ip(1),
                ttl: 255,
                advert: a
            }
        ),
        Err(DropReason::IntervalMismatch {
            got_cs: 200,
            want_cs: 100
        })
    );
    assert_eq!(m.master_adver_interval(), S);
}

#[test]
fn drops_other_vrid_bad_ttl_auth_and_version() {
    let mut c = cfg(Version::V2, 100, 2, 1000);
    c.auth = Auth::simple("secret");
    let mut m = Machine::new(c.clone());
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    let good = Machine::new(c.clone()).advert(200);
    let ev = |src, ttl, advert| Event::Advert { src, ttl, advert };
    let mut other = good.clone();
    other.vrid = 52;
    assert_eq!(
        m.handle_event(t, ev(ip(1), 255, other)),
        Err(DropReason::OtherVrid(52))
    );
    assert_eq!(
        m.handle_event(t, ev(ip(1), 254, good.clone())),
        Err(DropReason::BadTtl(254))
    );
    let mut wrong = good.clone();
    wrong.auth = Auth::simple("guess");
    assert_eq!(
        m.handle_event(t, ev(ip(1), 255, wrong)),
        Err(DropReason::AuthMismatch)
    );
    let mut v3 = good.clone();
    v3.version = Version::V3;
    assert!(matches!(
        m.handle_event(t, ev(ip(1), 255, v3)),
        Err(DropReason::VersionMismatch { .. })
    ));
    assert_eq!(
        m.handle_event(t, ev(ip(2), 255, good.clone())),
        Err(DropReason::Own)
    );
    // none of these reset the master down timer: it fires on schedule
    m.handle_timeout(t + m.master_down_interval());
    assert_eq!(m.state(), State::Master);
    // unicast mode does not check the TTL
    let mut c2 = c;
    c2.check_ttl = false;
    let mut m2 = Machine::new(c2);
    m2.handle_event(t, Event::Startup).unwrap();
    assert_eq!(m2.handle_event(t, ev(ip(1), 64, good)), Ok(()));
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
    let mut sim = Sim::new(vec![
        cfg(Version::V3, 150, 1, 1000),
        cfg(Version::V3, 120, 2, 1000),
    ]);
    sim.start(0);
    sim.start(1);
    sim.run_until(10 * S);
    assert_eq!(sim.holders(), vec![0]);
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
    let mut sim = Sim::new(vec![
        cfg(Version::V3, 150, 1, 1000),
        cfg(Version::V3, 100, 2, 1000),
    ]);
    sim.start(0);
    sim.start(1);
    sim.run_until(10 * S);
    assert_eq!(sim.holders(), vec![0]);
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
fn drops_adverts_whose_addresses_differ_from_our_vips() {
    for v in [Version::V2, Version::V3] {
        let mut c = cfg(v, 100, 2, 1000);
        c.vips = vec![ip(100), ip(101)];
        let mut m = Machine::new(c.clone());
        let t = Instant::now();
        m.handle_event(t, Event::Startup).unwrap();
        let ev = |advert| Event::Advert {
            src: ip(1),
            ttl: 255,
            advert,
        };
        let good = Machine::new(c.clone()).advert(200);
        // same set in another order is fine
        let mut reordered = good.clone();
        reordered.addrs.reverse();
        assert_eq!(m.handle_event(t, ev(reordered)), Ok(()));
        for addrs in [vec![ip(100)], vec![ip(100), ip(102)], vec![]] {
            let mut bad = good.clone();
            bad.addrs = addrs;
            let r = m.handle_event(t, ev(bad));
            assert!(
                matches!(r, Err(DropReason::AddressMismatch { .. })),
                "{v:?}: {r:?}"
            );
            assert_eq!(r.unwrap_err().reason(), "address_mismatch");
        }
        // the dropped adverts did not refresh the master down timer
        m.handle_timeout(t + m.master_down_interval());
        assert_eq!(m.state(), State::Master, "{v:?}");
        // vrrp_skip_check_adv_addr
        c.skip_check_adv_addr = true;
        let mut m = Machine::new(c);
        m.handle_event(t, Event::Startup).unwrap();
        let mut other = good.clone();
        other.addrs = vec![ip(99)];
        assert_eq!(m.handle_event(t, ev(other)), Ok(()));
    }
}

#[test]
fn address_check_uses_the_packet_family_only() {
    let mut c = cfg(Version::V3, 100, 2, 1000);
    let v6: IpAddr = "2001:db8::100".parse().unwrap();
    c.vips = vec![ip(100), v6];
    let mut m = Machine::new(c.clone());
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    // what a peer with the same config puts on the wire over IPv4
    let bytes = Machine::new(c)
        .advert(200)
        .encode(ip(1), IpAddr::V4(crate::packet::MCAST_V4))
        .unwrap();
    let adv = Advert::decode(&bytes, ip(1), IpAddr::V4(crate::packet::MCAST_V4)).unwrap();
    assert_eq!(adv.addrs, vec![ip(100)]);
    assert_eq!(
        m.handle_event(
            t,
            Event::Advert {
                src: ip(1),
                ttl: 255,
                advert: adv
            }
        ),
        Ok(())
    );
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
