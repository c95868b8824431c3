//! One server: its static settings (`PeerSpec`) and the state nginx keeps
//! per server (`Peer`): weights, passive failures, connections, health.

use std::time::{Duration, Instant};

use crate::health::Health;

/// Static settings of one server (the `server` line in nginx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Identity of the server across reloads (the address as written).
    pub key: String,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub max_conns: u32,
    pub down: bool,
    pub backup: bool,
}

impl PeerSpec {
    /// A server with nginx's defaults (weight 1, max_fails 1, fail_timeout 10s).
    pub fn new(key: impl Into<String>) -> PeerSpec {
        PeerSpec {
            key: key.into(),
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            max_conns: 0,
            down: false,
            backup: false,
        }
    }
}

/// One server and its dynamic state. `T` is whatever the I/O layer attaches
/// (connection pool, metrics).
#[derive(Debug)]
pub struct Peer<T> {
    pub id: u64,
    pub spec: PeerSpec,
    pub data: T,
    pub(crate) current_weight: i64,
    pub(crate) effective_weight: i64,
    pub(crate) conns: u32,
    pub(crate) fails: u32,
    pub(crate) accessed: Option<Instant>,
    pub(crate) checked: Option<Instant>,
    pub(crate) health: Health,
}

impl<T> Peer<T> {
    pub(super) fn new(id: u64, spec: PeerSpec, data: T) -> Peer<T> {
        let w = i64::from(spec.weight);
        Peer {
            id,
            spec,
            data,
            current_weight: 0,
            effective_weight: w,
            conns: 0,
            fails: 0,
            accessed: None,
            checked: None,
            health: Health::new(),
        }
    }

    /// Is the server inside its `fail_timeout` window after `max_fails` failures?
    pub fn passively_failed(&self, now: Instant) -> bool {
        self.spec.max_fails != 0
            && self.fails >= self.spec.max_fails
            && match self.checked {
                Some(c) => now.saturating_duration_since(c) <= self.spec.fail_timeout,
                None => false,
            }
    }

    fn at_max_conns(&self) -> bool {
        self.spec.max_conns != 0 && self.conns >= self.spec.max_conns
    }

    /// Can this server take a request now (ignoring which ones were tried)?
    /// `single` servers skip the passive-failure check.
    pub(crate) fn usable(&self, now: Instant, single: bool) -> bool {
        !self.spec.down
            && self.health.is_up()
            && !self.at_max_conns()
            && (single || !self.passively_failed(now))
    }

    /// nginx: `if (now - best->checked > best->fail_timeout) best->checked = now;`
    pub(crate) fn mark_selected(&mut self, now: Instant) {
        let stale = match self.checked {
            Some(c) => now.saturating_duration_since(c) > self.spec.fail_timeout,
            None => true,
        };
        if stale {
            self.checked = Some(now);
        }
        self.conns += 1;
    }

    pub fn conns(&self) -> u32 {
        self.conns
    }
    pub fn fails(&self) -> u32 {
        self.fails
    }
    pub fn health_up(&self) -> bool {
        self.health.is_up()
    }
    pub fn effective_weight(&self) -> i64 {
        self.effective_weight
    }
}
