//! Per-instance counters and the published status.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition for all instances.
pub fn render(instances: &[(InstanceStatus, &Counters)]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP vrrp_state Current state (1 for the active state label)."
    );
    let _ = writeln!(o, "# TYPE vrrp_state gauge");
    for (s, _) in instances {
        for st in [
            State::Initialize,
            State::Backup,
            State::Master,
            State::Fault,
        ] {
            let _ = writeln!(
                o,
                "vrrp_state{{instance=\"{}\",vrid=\"{}\",state=\"{}\"}} {}",
                esc(&s.name),
                s.vrid,
                st.as_str(),
                u8::from(s.state == st)
            );
        }
    }
    let gauge = |o: &mut String,
                 name: &str,
                 help: &str,
                 f: &dyn Fn(&InstanceStatus, &Counters) -> u64,
                 ty: &str| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {ty}");
        for (s, c) in instances {
            let _ = writeln!(o, "{name}{{instance=\"{}\"}} {}", esc(&s.name), f(s, c));
        }
    };
    gauge(
        &mut o,
        "vrrp_priority",
        "Effective priority.",
        &|s, _| u64::from(s.effective_priority),
        "gauge",
    );
    gauge(
        &mut o,
        "vrrp_transitions_total",
        "State transitions.",
        &|s, _| s.transitions,
        "counter",
    );
    gauge(
        &mut o,
        "vrrp_adverts_sent_total",
        "Advertisements sent.",
        &|_, c| c.adverts_sent.load(Ordering::Relaxed),
        "counter",
    );
    gauge(
        &mut o,
        "vrrp_adverts_received_total",
        "Valid advertisements received for this VRID.",
        &|_, c| c.adverts_received.load(Ordering::Relaxed),
        "counter",
    );
    gauge(
        &mut o,
        "vrrp_announcements_sent_total",
        "Gratuitous ARPs / unsolicited NAs sent.",
        &|_, c| c.announcements_sent.load(Ordering::Relaxed),
        "counter",
    );
    gauge(
        &mut o,
        "vrrp_send_errors_total",
        "Failed sends.",
        &|_, c| c.send_errors.load(Ordering::Relaxed),
        "counter",
    );
    gauge(
        &mut o,
        "vrrp_netlink_errors_total",
        "Failed address changes.",
        &|_, c| c.netlink_errors.load(Ordering::Relaxed),
        "counter",
    );
    let _ = writeln!(
        o,
        "# HELP vrrp_bad_packets_total Packets dropped, by reason."
    );
    let _ = writeln!(o, "# TYPE vrrp_bad_packets_total counter");
    for (s, c) in instances {
        for (r, n) in c.bad_snapshot() {
            let _ = writeln!(
                o,
                "vrrp_bad_packets_total{{instance=\"{}\",reason=\"{r}\"}} {n}",
                esc(&s.name)
            );
        }
    }
    o
}

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
}
