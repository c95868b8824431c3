//! The balancer core: server selection and passive failure accounting for one
//! upstream group, with nginx semantics. Sans-IO: time is passed in, nothing
//! here touches a socket or a runtime, so it is tested with simulated clocks.
//!
//! The state per server mirrors `ngx_http_upstream_rr_peer_t`:
//! `current_weight`/`effective_weight` for smooth weighted round-robin,
//! `fails`/`accessed`/`checked` for `max_fails`/`fail_timeout`, `conns` for
//! `least_conn` and `max_conns`. On top of that, `health` holds the result of
//! active checks (rise/fall).
//!
//! nginx rules reproduced here:
//! - a server with `fails >= max_fails` is skipped while
//!   `now - checked <= fail_timeout`; after that one request is let through
//!   (selection sets `checked = now`), and if it succeeds `fails` resets;
//! - failures only accumulate within a `fail_timeout` window: a success resets
//!   `fails` only if `checked` moved past the last failure (`accessed < checked`);
//! - a failure lowers `effective_weight` by `weight / max_fails`, which then
//!   recovers by one per selection round (nginx's gradual return);
//! - a group with a single primary server and no backups ("single") never
//!   counts failures and never marks its server down passively;
//! - backup servers are used only when no primary server can be selected.
//! - when every server (primaries and backups) is held back by passive
//!   failures, their failure state is reset and selection runs again (nginx:
//!   "if all servers are unavailable, reset"); not when a server is `down`
//!   or failed by active checks.

pub mod hash;
pub mod least_conn;
mod peer;
pub mod rr;
mod tried;

use std::net::IpAddr;
use std::time::Instant;

use crate::health::Transition;
pub use peer::{Peer, PeerSpec};

/// Which selection algorithm a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    RoundRobin,
    LeastConn,
    IpHash,
    /// Consistent hash (ketama ring) on a per-request key.
    Hash,
}

/// What the I/O layer knows about the request, for hashing algorithms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Key {
    pub client_ip: Option<IpAddr>,
    /// Hash of the evaluated `hash_key` (see [`hash::KeyTemplate`]).
    pub hash: Option<u32>,
}

/// Per-request selection state: which servers were already tried, and the
/// hash walk state (ip_hash re-hashes from where the previous try stopped).
#[derive(Debug, Default, Clone)]
pub struct Attempt {
    tried: tried::Tried,
    pub(crate) hash_state: Option<u32>,
    pub(crate) hash_tries: u32,
}

impl Attempt {
    pub fn new() -> Attempt {
        Attempt::default()
    }
    pub fn tried(&self, id: u64) -> bool {
        self.tried.contains(id)
    }
    pub fn mark_tried(&mut self, id: u64) {
        if !self.tried.contains(id) {
            self.tried.push(id);
        }
    }
    pub fn count(&self) -> usize {
        self.tried.len()
    }
}

/// Outcome of one attempt on one server, reported back by the I/O layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered (any status) or the failure was not its fault.
    Success,
    /// Connect error, timeout, reset or invalid response: counts toward `max_fails`.
    Failure,
}

/// A selection algorithm over one set of servers.
type SelectFn<T> = fn(&mut [Peer<T>], Instant, bool, &Attempt) -> Option<usize>;

/// An upstream group: primary and backup servers and the algorithm.
#[derive(Debug)]
pub struct Group<T> {
    method: Method,
    primary: Vec<Peer<T>>,
    backup: Vec<Peer<T>>,
    ring: hash::Ring,
    next_id: u64,
}

impl<T> Group<T> {
    pub fn new(method: Method, servers: Vec<(PeerSpec, T)>) -> Group<T> {
        let mut g = Group {
            method,
            primary: Vec::new(),
            backup: Vec::new(),
            ring: hash::Ring::default(),
            next_id: 1,
        };
        for (spec, data) in servers {
            let id = g.next_id;
            g.next_id += 1;
            let p = Peer::new(id, spec, data);
            if p.spec.backup {
                g.backup.push(p);
            } else {
                g.primary.push(p);
            }
        }
        g.rebuild_ring();
        g
    }

    /// Replace the server list (config reload), keeping the dynamic state
    /// (health, failures, active connections, id) of servers whose key is
    /// unchanged. Smooth-WRR positions restart, as on an nginx reload.
    pub fn reconfigure(&mut self, method: Method, servers: Vec<(PeerSpec, T)>) {
        let mut old: Vec<Peer<T>> = self
            .primary
            .drain(..)
            .chain(self.backup.drain(..))
            .collect();
        self.method = method;
        for (spec, data) in servers {
            let mut peer = match old.iter().position(|p| p.spec.key == spec.key) {
                Some(i) => {
                    let o = old.swap_remove(i);
                    let mut p = Peer::new(o.id, spec, data);
                    p.conns = o.conns;
                    p.fails = o.fails;
                    p.accessed = o.accessed;
                    p.checked = o.checked;
                    p.health = o.health;
                    p
                }
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    Peer::new(id, spec, data)
                }
            };
            peer.current_weight = 0;
            if peer.spec.backup {
                self.backup.push(peer);
            } else {
                self.primary.push(peer);
            }
        }
        self.rebuild_ring();
    }

    fn rebuild_ring(&mut self) {
        self.ring = hash::Ring::build(
            self.primary
                .iter()
                .map(|p| (p.spec.key.as_str(), p.spec.weight)),
        );
    }

    /// nginx's `peers->single`: exactly one primary server and no backups.
    pub fn is_single(&self) -> bool {
        self.primary.len() == 1 && self.backup.is_empty()
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn len(&self) -> usize {
        self.primary.len() + self.backup.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer<T>> {
        self.primary.iter().chain(self.backup.iter())
    }

    fn peer_mut(&mut self, id: u64) -> Option<&mut Peer<T>> {
        self.primary
            .iter_mut()
            .chain(self.backup.iter_mut())
            .find(|p| p.id == id)
    }

    pub fn peer(&self, id: u64) -> Option<&Peer<T>> {
        self.peers().find(|p| p.id == id)
    }

    /// Is any server selectable right now (for `/healthz`)?
    pub fn any_usable(&self, now: Instant) -> bool {
        let single = self.is_single();
        self.peers().any(|p| p.usable(now, single))
    }

    /// Is this server selectable right now (for metrics)?
    pub fn usable(&self, id: u64, now: Instant) -> bool {
        let single = self.is_single();
        self.peer(id).is_some_and(|p| p.usable(now, single))
    }

    /// Pick a server for the next attempt of a request. Counts an active
    /// connection on it; the caller must call [`Group::release`] exactly once.
    /// Returns `None` when no untried server is available.
    pub fn select(&mut self, now: Instant, key: Key, attempt: &mut Attempt) -> Option<(u64, &T)> {
        let single = self.is_single();
        let idx = match self.method {
            Method::RoundRobin => {
                Self::select_set(&mut self.primary, now, single, attempt, rr::select)
                    .map(|i| (false, i))
            }
            Method::LeastConn => {
                Self::select_set(&mut self.primary, now, single, attempt, least_conn::select)
                    .map(|i| (false, i))
            }
            Method::IpHash => {
                let found = match key.client_ip {
                    Some(ip) if !single => hash::select_ip_hash(&self.primary, now, ip, attempt),
                    _ => None,
                };
                found
                    .or_else(|| rr::select(&mut self.primary, now, single, attempt))
                    .map(|i| (false, i))
            }
            Method::Hash => {
                let found = match key.hash {
                    Some(h) if !single => self.ring.select(&self.primary, now, h, attempt),
                    _ => None,
                };
                found
                    .or_else(|| rr::select(&mut self.primary, now, single, attempt))
                    .map(|i| (false, i))
            }
        };
        let idx = match idx {
            Some(i) => Some(i),
            None => {
                let algo: SelectFn<T> = if self.method == Method::LeastConn {
                    least_conn::select::<T>
                } else {
                    rr::select::<T>
                };
                Self::select_set(&mut self.backup, now, false, attempt, algo).map(|i| (true, i))
            }
        };
        let Some(idx) = idx else {
            // nginx: "if all servers are unavailable, reset" -- a transient
            // burst of failures must not keep the whole group at 503 for
            // fail_timeout. After the reset no server is passively failed, so
            // this recursion happens at most once.
            if self.reset_if_all_failed(now, attempt) {
                tracing::warn!(
                    "every server of the upstream group is marked failed; resetting their failure state"
                );
                return self.select(now, key, attempt);
            }
            return None;
        };
        let peer = if idx.0 {
            &mut self.backup[idx.1]
        } else {
            &mut self.primary[idx.1]
        };
        peer.mark_selected(now);
        attempt.mark_tried(peer.id);
        Some((peer.id, &peer.data))
    }

    /// When every server of the group (primaries and backups) is held back
    /// by passive failure accounting, forget all failures (as nginx does when
    /// every peer has failed). A server that is `down` or failed by active
    /// checks means the group is not merely in a transient failure burst, so
    /// nothing is reset then. Returns whether it reset.
    fn reset_if_all_failed(&mut self, now: Instant, attempt: &Attempt) -> bool {
        let all_failed = self
            .peers()
            .all(|p| p.health.is_up() && p.passively_failed(now));
        let untried = self.peers().any(|p| !attempt.tried(p.id));
        if !all_failed || !untried {
            return false;
        }
        for p in self.primary.iter_mut().chain(self.backup.iter_mut()) {
            p.fails = 0;
            p.effective_weight = i64::from(p.spec.weight);
        }
        true
    }

    fn select_set(
        set: &mut [Peer<T>],
        now: Instant,
        single: bool,
        attempt: &Attempt,
        algo: SelectFn<T>,
    ) -> Option<usize> {
        algo(set, now, single, attempt)
    }

    /// The attempt on server `id` is over (nginx `free_peer`): release its
    /// connection slot and account the outcome for `max_fails`/`fail_timeout`.
    pub fn release(&mut self, id: u64, now: Instant, outcome: Outcome) {
        let single = self.is_single();
        let Some(peer) = self.peer_mut(id) else {
            return; // removed by a reload while the request was in flight
        };
        peer.conns = peer.conns.saturating_sub(1);
        if single {
            return;
        }
        match outcome {
            Outcome::Failure => {
                peer.fails = peer.fails.saturating_add(1);
                peer.accessed = Some(now);
                peer.checked = Some(now);
                if let Some(step) = peer.spec.weight.checked_div(peer.spec.max_fails) {
                    peer.effective_weight -= i64::from(step);
                }
                if peer.effective_weight < 0 {
                    peer.effective_weight = 0;
                }
            }
            Outcome::Success => {
                if peer.accessed < peer.checked {
                    peer.fails = 0;
                }
            }
        }
    }

    /// Feed an active health-check result. Returns the transition, if any.
    pub fn record_check(&mut self, id: u64, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        let peer = self.peer_mut(id)?;
        let t = peer.health.record(ok, rise, fall);
        if t == Some(Transition::WentUp) {
            // a server returning from an active-check outage starts clean
            peer.fails = 0;
        }
        t
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn spec(key: &str, weight: u32) -> PeerSpec {
        PeerSpec {
            weight,
            ..PeerSpec::new(key)
        }
    }

    pub fn group(method: Method, specs: Vec<PeerSpec>) -> Group<String> {
        Group::new(
            method,
            specs
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .map(|(k, s)| (s, k))
                .collect(),
        )
    }

    /// Select and immediately release with success, `n` times.
    pub fn sequence(g: &mut Group<String>, now: Instant, n: usize) -> String {
        let mut out = String::new();
        for _ in 0..n {
            let mut a = Attempt::new();
            let (id, name) = g.select(now, Key::default(), &mut a).expect("a server");
            out.push_str(name);
            g.release(id, now, Outcome::Success);
        }
        out
    }
}

#[cfg(test)]
mod tests;
