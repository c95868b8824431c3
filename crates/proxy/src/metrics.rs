//! Prometheus metrics: per upstream server counters and a latency histogram
//! (lock-free atomics, a slot per worker), rendered in the text exposition format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use syncd_ops::prom::{Kind, Writer};

use crate::sharded::Sharded;

/// Upper bounds (seconds) of the response-time histogram buckets.
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One worker's counters for one upstream server.
#[derive(Debug, Default)]
pub struct ServerCounts {
    /// Attempts sent to this server.
    pub requests: AtomicU64,
    /// Attempts that failed (connect error, timeout, reset, invalid response).
    pub errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Counters for one upstream server, a slot per worker (summed when
/// rendered). Survives reloads.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    shards: Sharded<ServerCounts>,
}

impl ServerMetrics {
    /// The calling worker's counters.
    pub fn local(&self) -> &ServerCounts {
        self.shards.local()
    }

    /// Record the time from sending the request to the response header.
    pub fn observe(&self, d: Duration) {
        let c = self.local();
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            c.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        c.count.fetch_add(1, Ordering::Relaxed);
        c.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Count one in a counter of the calling worker.
    pub fn add(&self, field: fn(&ServerCounts) -> &AtomicU64) {
        field(self.local()).fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.shards.sum(|c| &c.requests)
    }

    pub fn errors(&self) -> u64 {
        self.shards.sum(|c| &c.errors)
    }
}

/// One worker's proxy-wide counters.
#[derive(Debug, Default)]
pub struct GlobalCounts {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub retries_denied: AtomicU64,
    /// 101 Switching Protocols (upgraded connections).
    pub responses_1xx: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub local_502: AtomicU64,
    pub local_503: AtomicU64,
    pub local_504: AtomicU64,
    pub tcp_connections: AtomicU64,
}

impl GlobalCounts {
    pub fn count_status(&self, status: u16) {
        let c = match status {
            100..=199 => &self.responses_1xx,
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Proxy-wide counters: per-request ones in a slot per worker, the rare
/// ones (written by reloads) once.
#[derive(Debug, Default)]
pub struct GlobalMetrics {
    shards: Sharded<GlobalCounts>,
    pub config_generation: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl GlobalMetrics {
    /// The calling worker's counters.
    pub fn local(&self) -> &GlobalCounts {
        self.shards.local()
    }

    /// Count one in a counter of the calling worker.
    pub fn add(&self, field: fn(&GlobalCounts) -> &AtomicU64) {
        field(self.local()).fetch_add(1, Ordering::Relaxed);
    }

    /// One counter summed over the workers.
    pub fn total(&self, field: fn(&GlobalCounts) -> &AtomicU64) -> u64 {
        self.shards.sum(field)
    }
}

/// A snapshot of one server's state for rendering.
pub struct ServerView<'a> {
    pub upstream: &'a str,
    pub server: &'a str,
    pub metrics: &'a ServerMetrics,
    pub active: u32,
    pub usable: bool,
    pub health_up: bool,
    pub fails: u32,
}

fn labels<'a>(s: &ServerView<'a>) -> [(&'static str, &'a str); 2] {
    [("upstream", s.upstream), ("server", s.server)]
}

fn g(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub fn render(global: &GlobalMetrics, servers: &[ServerView<'_>]) -> String {
    let mut w = Writer::new();
    render_global(&mut w, global);
    render_servers(&mut w, servers);
    w.finish()
}

/// The proxy-wide counters.
fn render_global(w: &mut Writer, global: &GlobalMetrics) {
    for (name, kind, help, c) in [
        (
            "syncd_proxy_requests_total",
            Kind::Counter,
            "Client requests received.",
            global.total(|c| &c.requests),
        ),
        (
            "syncd_proxy_retries_total",
            Kind::Counter,
            "Attempts retried on another server.",
            global.total(|c| &c.retries),
        ),
        (
            "syncd_proxy_retries_denied_total",
            Kind::Counter,
            "Retries refused by the retry budget.",
            global.total(|c| &c.retries_denied),
        ),
        (
            "syncd_proxy_tcp_connections_total",
            Kind::Counter,
            "TCP-mode connections accepted.",
            global.total(|c| &c.tcp_connections),
        ),
        (
            "syncd_proxy_config_generation",
            Kind::Gauge,
            "Configuration generation (1 at start, +1 per successful reload).",
            g(&global.config_generation),
        ),
        (
            "syncd_proxy_reload_failures_total",
            Kind::Counter,
            "Reloads rejected (invalid configuration).",
            g(&global.reload_failures),
        ),
    ] {
        w.single(name, kind, help, c);
    }
    let mut f = w.family(
        "syncd_proxy_responses_total",
        Kind::Counter,
        "Responses sent to clients by status class.",
    );
    for (class, c) in [
        ("1xx", global.total(|c| &c.responses_1xx)),
        ("2xx", global.total(|c| &c.responses_2xx)),
        ("3xx", global.total(|c| &c.responses_3xx)),
        ("4xx", global.total(|c| &c.responses_4xx)),
        ("5xx", global.total(|c| &c.responses_5xx)),
    ] {
        f.sample(&[("class", class)], c);
    }
    let mut f = w.family(
        "syncd_proxy_local_errors_total",
        Kind::Counter,
        "Error responses generated by the proxy itself.",
    );
    for (code, c) in [
        ("502", global.total(|c| &c.local_502)),
        ("503", global.total(|c| &c.local_503)),
        ("504", global.total(|c| &c.local_504)),
    ] {
        f.sample(&[("code", code)], c);
    }
}

/// One sample per server and family, and the response-time histograms.
fn render_servers(w: &mut Writer, servers: &[ServerView<'_>]) {
    type Read = fn(&ServerView<'_>) -> u64;
    let families: [(&str, Kind, &str, Read); 6] = [
        (
            "syncd_proxy_upstream_requests_total",
            Kind::Counter,
            "Attempts sent to the server.",
            |s| s.metrics.requests(),
        ),
        (
            "syncd_proxy_upstream_errors_total",
            Kind::Counter,
            "Attempts that failed (connect error, timeout, reset, bad response).",
            |s| s.metrics.errors(),
        ),
        (
            "syncd_proxy_upstream_active_connections",
            Kind::Gauge,
            "Requests or TCP sessions in flight to the server.",
            |s| u64::from(s.active),
        ),
        (
            "syncd_proxy_upstream_up",
            Kind::Gauge,
            "1 if the server can be selected now (not down, not failed, health check up).",
            |s| u64::from(s.usable),
        ),
        (
            "syncd_proxy_upstream_health_check_up",
            Kind::Gauge,
            "1 if active health checks consider the server up.",
            |s| u64::from(s.health_up),
        ),
        (
            "syncd_proxy_upstream_fails",
            Kind::Gauge,
            "Current passive failure count (nginx max_fails accounting).",
            |s| u64::from(s.fails),
        ),
    ];
    for (name, kind, help, read) in families {
        let mut f = w.family(name, kind, help);
        for s in servers {
            f.sample(&labels(s), read(s));
        }
    }
    let mut f = w.family(
        "syncd_proxy_upstream_response_seconds",
        Kind::Histogram,
        "Time from sending the request to the response header.",
    );
    for s in servers {
        let m = &s.metrics.shards;
        let mut buckets = [(0.0, 0); BUCKETS.len()];
        for (i, b) in BUCKETS.iter().enumerate() {
            buckets[i] = (*b, m.sum(|c| &c.buckets[i]));
        }
        let sum_micros = m.sum(|c| &c.sum_micros);
        f.histogram(
            &labels(s),
            &buckets,
            sum_micros as f64 / 1e6,
            m.sum(|c| &c.count),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labelled() {
        let m = ServerMetrics::default();
        m.observe(Duration::from_micros(500));
        m.observe(Duration::from_millis(30));
        m.observe(Duration::from_secs(60));
        m.local().requests.fetch_add(3, Ordering::Relaxed);
        let view = ServerView {
            upstream: "web",
            server: "127.0.0.1:81",
            metrics: &m,
            active: 2,
            usable: true,
            health_up: true,
            fails: 0,
        };
        let text = render(&GlobalMetrics::default(), &[view]);
        let l = "upstream=\"web\",server=\"127.0.0.1:81\"";
        assert!(text.contains(&format!("syncd_proxy_upstream_requests_total{{{l}}} 3")));
        assert!(text.contains(&format!("syncd_proxy_upstream_active_connections{{{l}}} 2")));
        assert!(text.contains(&format!(
            "syncd_proxy_upstream_response_seconds_bucket{{{l},le=\"0.001\"}} 1"
        )));
        assert!(text.contains(&format!(
            "syncd_proxy_upstream_response_seconds_bucket{{{l},le=\"0.05\"}} 2"
        )));
        assert!(text.contains(&format!(
            "syncd_proxy_upstream_response_seconds_bucket{{{l},le=\"10\"}} 2"
        )));
        assert!(text.contains(&format!(
            "syncd_proxy_upstream_response_seconds_bucket{{{l},le=\"+Inf\"}} 3"
        )));
        assert!(text.contains(&format!(
            "syncd_proxy_upstream_response_seconds_count{{{l}}} 3"
        )));
    }
}
