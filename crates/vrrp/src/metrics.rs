//! Per-instance counters and the published status.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use syncd_ops::prom::{Kind, Writer};

use crate::machine::State;

/// Snapshot of one instance, published through a `tokio::sync::watch`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub state: State,
    pub priority: u8,
    pub effective_priority: u8,
    pub master: Option<IpAddr>,
    /// Reason of the last transition.
    pub reason: String,
    /// Unix time (seconds) of the last transition.
    pub since: u64,
    pub transitions: u64,
}

impl InstanceStatus {
    pub fn new(name: &str, interface: &str, vrid: u8, priority: u8) -> Self {
        InstanceStatus {
            name: name.into(),
            interface: interface.into(),
            vrid,
            state: State::Initialize,
            priority,
            effective_priority: priority,
            master: None,
            reason: "not started".into(),
            since: unix_now(),
            transitions: 0,
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counters of one instance.
#[derive(Debug, Default)]
pub struct Counters {
    pub adverts_sent: AtomicU64,
    pub adverts_received: AtomicU64,
    pub announcements_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub netlink_errors: AtomicU64,
    bad: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    pub fn bad(&self, reason: &'static str) {
        if let Ok(mut m) = self.bad.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn bad_snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.bad.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prometheus text exposition for all instances.
pub fn render(instances: &[(InstanceStatus, &Counters)]) -> String {
    let mut w = Writer::new();
    render_states(&mut w, instances);
    for (name, kind, help, read) in PER_INSTANCE {
        let mut f = w.family(name, kind, help);
        for (s, c) in instances {
            f.sample(&[("instance", &s.name)], read(s, c));
        }
    }
    let mut f = w.family(
        "vrrp_bad_packets_total",
        Kind::Counter,
        "Packets dropped, by reason.",
    );
    for (s, c) in instances {
        for (r, n) in c.bad_snapshot() {
            f.sample(&[("instance", &s.name), ("reason", r)], n);
        }
    }
    w.finish()
}

/// One sample per state and instance, 1 for the state it is in.
fn render_states(w: &mut Writer, instances: &[(InstanceStatus, &Counters)]) {
    let mut f = w.family(
        "vrrp_state",
        Kind::Gauge,
        "Current state (1 for the active state label).",
    );
    for (s, _) in instances {
        let vrid = s.vrid.to_string();
        for st in [
            State::Initialize,
            State::Backup,
            State::Master,
            State::Fault,
        ] {
            f.sample(
                &[
                    ("instance", &s.name),
                    ("vrid", &vrid),
                    ("state", st.as_str()),
                ],
                s.state == st,
            );
        }
    }
}

type Read = fn(&InstanceStatus, &Counters) -> u64;

/// The families with one sample per instance: name, kind, help, value.
const PER_INSTANCE: [(&str, Kind, &str, Read); 7] = [
    (
        "vrrp_priority",
        Kind::Gauge,
        "Effective priority.",
        |s, _| u64::from(s.effective_priority),
    ),
    (
        "vrrp_transitions_total",
        Kind::Counter,
        "State transitions.",
        |s, _| s.transitions,
    ),
    (
        "vrrp_adverts_sent_total",
        Kind::Counter,
        "Advertisements sent.",
        |_, c| c.adverts_sent.load(Ordering::Relaxed),
    ),
    (
        "vrrp_adverts_received_total",
        Kind::Counter,
        "Valid advertisements received for this VRID.",
        |_, c| c.adverts_received.load(Ordering::Relaxed),
    ),
    (
        "vrrp_announcements_sent_total",
        Kind::Counter,
        "Gratuitous ARPs / unsolicited NAs sent.",
        |_, c| c.announcements_sent.load(Ordering::Relaxed),
    ),
    (
        "vrrp_send_errors_total",
        Kind::Counter,
        "Failed sends.",
        |_, c| c.send_errors.load(Ordering::Relaxed),
    ),
    (
        "vrrp_netlink_errors_total",
        Kind::Counter,
        "Failed address changes.",
        |_, c| c.netlink_errors.load(Ordering::Relaxed),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut s = InstanceStatus::new("VI_1", "eth0", 51, 100);
        s.state = State::Master;
        let c = Counters::default();
        c.bad("bad_checksum");
        c.bad("bad_checksum");
        Counters::inc(&c.adverts_sent);
        let t = render(&[(s, &c)]);
        assert!(
            t.contains("vrrp_state{instance=\"VI_1\",vrid=\"51\",state=\"MASTER\"} 1"),
            "{t}"
        );
        assert!(t.contains("vrrp_state{instance=\"VI_1\",vrid=\"51\",state=\"BACKUP\"} 0"));
        assert!(t.contains("vrrp_bad_packets_total{instance=\"VI_1\",reason=\"bad_checksum\"} 2"));
        assert!(t.contains("vrrp_adverts_sent_total{instance=\"VI_1\"} 1"));
    }

    #[test]
    fn families_come_in_a_fixed_order_with_one_sample_per_instance() {
        let a = InstanceStatus::new("A", "eth0", 1, 100);
        let b = InstanceStatus::new("B", "eth1", 2, 50);
        let (ca, cb) = (Counters::default(), Counters::default());
        cb.bad("bad_ttl");
        let t = render(&[(a, &ca), (b, &cb)]);
        let order = [
            "vrrp_state{",
            "vrrp_priority{",
            "vrrp_transitions_total{",
            "vrrp_adverts_sent_total{",
            "vrrp_adverts_received_total{",
            "vrrp_announcements_sent_total{",
            "vrrp_send_errors_total{",
            "vrrp_netlink_errors_total{",
            "vrrp_bad_packets_total{",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|f| t.find(f).unwrap_or(usize::MAX))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{t}");
        assert!(t.contains("vrrp_priority{instance=\"B\"} 50"), "{t}");
        assert_eq!(t.matches("vrrp_netlink_errors_total{").count(), 2, "{t}");
        assert_eq!(t.matches("vrrp_state{").count(), 8, "{t}");
        assert_eq!(t.matches("vrrp_bad_packets_total{").count(), 1, "{t}");
    }
}
