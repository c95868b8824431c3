//! State machine tests on a simulated LAN with a simulated clock: who wins
//! and when a master is preempted (`election`), how and when a backup takes
//! over from a master that dies or resigns (`takeover`), adverts that are
//! dropped and why (`drops`), priority weights, faults and a VIP that
//! cannot be added (`health`), and a mastership held back until the
//! embedder confirms it (`confirm`).

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

mod confirm;
mod drops;
mod election;
mod health;
mod takeover;
