//! Counters and gauges of a running daemon, rendered for `/metrics`
//! (Prometheus text) and `/status` (what `syncd status` prints).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use syncd_ops::prom::{Kind, Writer};
use syncd_proto::pair::lineage::Lineage;

#[derive(Default)]
pub struct Stats {
    pub role: &'static str,
    pub peer: String,
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub files_whole: AtomicU64,
    pub files_delta: AtomicU64,
    /// Content bytes of files sent whole / as delta (before encoding).
    pub bytes_whole: AtomicU64,
    pub bytes_delta: AtomicU64,
    /// Delta instructions and literals actually sent.
    pub delta_wire_bytes: AtomicU64,
    pub wire_tx: AtomicU64,
    pub wire_rx: AtomicU64,
    pub deletes: AtomicU64,
    pub renames: AtomicU64,
    pub reconciles: AtomicU64,
    pub full_reconciles: AtomicU64,
    pub overflows: AtomicU64,
    pub errors: AtomicU64,
    pub connects: AtomicU64,
    /// Files committed (standby).
    pub committed: AtomicU64,
    /// Changes waiting on this side (queue depth).
    pub queue: AtomicU64,
    /// Changes not yet acknowledged by the standby, and their content bytes
    /// once planned: the data at risk if this node died now.
    pub lag_ops: AtomicU64,
    pub lag_bytes: AtomicU64,
    /// When the oldest unacknowledged change was seen.
    pub lag_since: Mutex<Option<Instant>>,
    /// Change-to-ack latency of the last batch, microseconds.
    pub last_batch_us: AtomicU64,
    /// Unix seconds when the current session started; 0 when disconnected.
    pub connected_since: AtomicU64,
    pub last_error: Mutex<String>,
    /// Sessions refused: a standby holding newer data, or a primary refused by one.
    pub refused: AtomicU64,
    /// Times another primary took the standby over from this one.
    pub superseded: AtomicU64,
    /// Entries kept in the conflicts area by catch-ups.
    pub conflicts_kept: AtomicU64,
    /// Of those, files written on this follower by anything but syncd.
    pub local_kept: AtomicU64,
    /// Entries written locally on this follower, as of its last full
    /// listing (they are kept before the leader replaces them).
    pub local_writes: AtomicU64,
    /// `--role auto`: leader/follower/..., the VRRP gate, and why.
    pub pair: Mutex<Option<PairView>>,
    /// Role changes (`--role auto`).
    pub role_changes: AtomicU64,
    /// This node's generation, and the peer's as last heard.
    pub generation: Mutex<(Lineage, Option<Lineage>)>,
    /// Service hook runs (`--role auto`).
    pub hooks: Mutex<HookStats>,
}

/// Runs per hook (promote, demote) and result (ok, failed, timeout), and
/// the last run of each: (result, milliseconds, unix time).
#[derive(Debug, Default, Clone)]
pub struct HookStats {
    pub runs: [[u64; 3]; 2],
    pub last: [Option<(&'static str, u64, u64)>; 2],
}

const HOOKS: [&str; 2] = ["promote", "demote"];
const RESULTS: [&str; 3] = ["ok", "failed", "timeout"];

/// What `--role auto` shows of the pair.
#[derive(Debug, Clone, Default)]
pub struct PairView {
    /// follower, promoting, leader, demoting, stopped.
    pub role: String,
    pub leading: bool,
    pub gate_open: bool,
    /// Why the gate is as it is (or why the last role change happened).
    pub why: String,
    /// current / behind / ahead / diverged / unknown (peer not heard).
    pub data: &'static str,
    pub last_change: String,
}

/// A counter: its name, its help, where it is kept.
type Counter = (&'static str, &'static str, fn(&Stats) -> &AtomicU64);

const COUNTERS: &[Counter] = &[
    ("events_total", "filesystem events seen", |s| &s.events),
    (
        "sessions_refused_total",
        "writing sessions refused because the standby holds newer data",
        |s| &s.refused,
    ),
    (
        "superseded_total",
        "times another primary took the standby over from this one",
        |s| &s.superseded,
    ),
    ("role_changes_total", "role changes of this node (--role auto)", |s| &s.role_changes),
    ("conflicts_kept_total", "diverged entries kept in the conflicts area", |s| &s.conflicts_kept),
    (
        "local_writes_kept_total",
        "files written on this follower by anything but syncd, kept in the conflicts area before the leader's version replaced them",
        |s| &s.local_kept,
    ),
    ("batches_total", "batches shipped and acknowledged", |s| &s.batches),
    ("files_sent_whole_total", "files sent whole", |s| &s.files_whole),
    ("files_sent_delta_total", "files sent as rsync deltas", |s| &s.files_delta),
    ("bytes_sent_whole_total", "content bytes of files sent whole", |s| &s.bytes_whole),
    ("bytes_sent_delta_total", "content bytes of files sent as deltas", |s| &s.bytes_delta),
    ("delta_wire_bytes_total", "delta instructions and literals sent", |s| &s.delta_wire_bytes),
    ("wire_tx_bytes_total", "protocol bytes sent", |s| &s.wire_tx),
    ("wire_rx_bytes_total", "protocol bytes received", |s| &s.wire_rx),
    ("deletes_total", "paths deleted on the standby", |s| &s.deletes),
    ("renames_total", "renames replayed", |s| &s.renames),
    ("reconciles_total", "reconcile runs (scoped or full)", |s| &s.reconciles),
    ("full_reconciles_total", "full-tree reconcile runs", |s| &s.full_reconciles),
    ("overflows_total", "inotify queue overflows and lost watches", |s| &s.overflows),
    ("errors_total", "errors (failed files, lost sessions)", |s| &s.errors),
    ("connects_total", "sessions established", |s| &s.connects),
    ("committed_files_total", "files committed (standby)", |s| &s.committed),
];

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Stats {
    pub fn new(role: &'static str, peer: String) -> Stats {
        Stats {
            role,
            peer,
            ..Default::default()
        }
    }

    pub fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = format!("{} {e}", unix_now());
    }

    pub fn set_pair(&self, v: PairView) {
        *self.pair.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    pub fn record_hook(&self, r: &crate::hooks::HookRun) {
        let h = usize::from(r.kind == crate::hooks::HookKind::Demote);
        let label = r.outcome.label();
        let k = RESULTS.iter().position(|x| *x == label).unwrap_or(1);
        let mut st = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        st.runs[h][k] += 1;
        st.last[h] = Some((label, r.took.as_millis() as u64, unix_now()));
    }

    /// Our generation, and the peer's when it is known (`None` keeps it).
    pub fn set_generation(&self, ours: &Lineage, peer: Option<&Lineage>) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = ours.clone();
        if let Some(p) = peer {
            g.1 = Some(p.clone());
        }
    }

    /// Sets the lag from the oldest unacknowledged change.
    pub fn set_lag(&self, ops: u64, oldest: Option<Instant>) {
        self.lag_ops.store(ops, Relaxed);
        *self.lag_since.lock().unwrap_or_else(|p| p.into_inner()) = oldest;
    }

    /// Age of the oldest unacknowledged change.
    pub fn lag_seconds(&self, now: Instant) -> f64 {
        let since = *self.lag_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map_or(0.0, |o| now.saturating_duration_since(o).as_secs_f64())
    }

    fn counters(&self) -> impl Iterator<Item = (&'static str, &'static str, &AtomicU64)> {
        COUNTERS
            .iter()
            .map(|(name, help, get)| (*name, *help, get(self)))
    }

    fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let g = |a: &AtomicU64| a.load(Relaxed) as f64;
        let (ours, peer) = self
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let pair = self.pair.lock().unwrap_or_else(|p| p.into_inner()).clone();
        vec![
            (
                "generation",
                "counter of the generation this node leads or follows (0: never synced)",
                ours.gen.counter as f64,
            ),
            (
                "leader",
                "1 while this node leads the pair (--role auto)",
                pair.as_ref().map_or(0.0, |p| f64::from(p.leading)),
            ),
            (
                "gate_open",
                "1 while this node may hold the service address (--role auto)",
                pair.as_ref().map_or(0.0, |p| f64::from(p.gate_open)),
            ),
            (
                "generation_batch",
                "last batch committed in this node's generation",
                ours.commit as f64,
            ),
            (
                "peer_generation",
                "the peer's generation counter as last heard (0: unknown)",
                peer.map_or(0.0, |p| p.gen.counter as f64),
            ),
            (
                "local_writes",
                "entries written on this follower by anything but syncd, at its last full compare",
                g(&self.local_writes),
            ),
            (
                "queue_depth",
                "changes waiting to be shipped",
                g(&self.queue),
            ),
            (
                "lag_operations",
                "changes not yet acknowledged by the standby",
                g(&self.lag_ops),
            ),
            (
                "lag_bytes",
                "content bytes of the batch in flight",
                g(&self.lag_bytes),
            ),
            (
                "lag_seconds",
                "age of the oldest unacknowledged change",
                self.lag_seconds(Instant::now()),
            ),
            (
                "last_batch_seconds",
                "first change to acknowledgement, last batch",
                g(&self.last_batch_us) / 1e6,
            ),
            (
                "connected",
                "1 while a session is up",
                f64::from(self.connected_since.load(Relaxed) > 0),
            ),
            (
                "connected_since_seconds",
                "unix time the session started",
                g(&self.connected_since),
            ),
        ]
    }

    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut w = Writer::new();
        let role = [("role", self.role)];
        for (name, help, v) in self.counters() {
            w.family(&format!("syncd_{name}"), Kind::Counter, help)
                .sample(&role, v.load(Relaxed));
        }
        for (name, help, v) in self.gauges() {
            w.family(&format!("syncd_{name}"), Kind::Gauge, help)
                .sample(&role, v);
        }
        let h = self.hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut f = w.family(
            "syncd_hook_runs_total",
            Kind::Counter,
            "service hook runs (--role auto)",
        );
        for (i, hook) in HOOKS.iter().enumerate() {
            for (k, result) in RESULTS.iter().enumerate() {
                f.sample(
                    &[("role", self.role), ("hook", hook), ("result", result)],
                    h.runs[i][k],
                );
            }
        }
        let mut f = w.family(
            "syncd_hook_last_duration_seconds",
            Kind::Gauge,
            "duration of the last run of each service hook",
        );
        for (i, hook) in HOOKS.iter().enumerate() {
            let ms = h.last[i].map_or(0, |l| l.1);
            f.sample(&[("role", self.role), ("hook", hook)], ms as f64 / 1e3);
        }
        w.finish()
    }

    /// Human-readable status, one `key: value` per line.
    pub fn status(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "role: {}", self.role);
        let _ = writeln!(s, "peer: {}", self.peer);
        let (ours, peer) = self
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(s, "generation: {}", crate::generation::describe(&ours));
        self.pair_status(&mut s);
        let _ = writeln!(
            s,
            "peer generation: {}",
            peer.as_ref()
                .map_or("unknown".into(), crate::generation::describe)
        );
        self.replication_status(&mut s);
        for (name, _, v) in self.counters() {
            let _ = writeln!(
                s,
                "{}: {}",
                name.trim_end_matches("_total"),
                v.load(Relaxed)
            );
        }
        s
    }

    /// `--role auto`: the role, the gate, the data, the hooks.
    fn pair_status(&self, s: &mut String) {
        let Some(p) = self.pair.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let _ = writeln!(s, "pair role: {}", p.role);
        let _ = writeln!(
            s,
            "may lead: {} ({})",
            if p.gate_open { "yes" } else { "no" },
            p.why
        );
        let _ = writeln!(s, "data: {}", p.data);
        let _ = writeln!(s, "last role change: {}", p.last_change);
        let h = self.hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (i, hook) in HOOKS.iter().enumerate() {
            let r = h.runs[i];
            let last = h.last[i].map_or("never run".to_string(), |(res, ms, at)| {
                format!("last {res} in {ms} ms at {at} (unix)")
            });
            let _ = writeln!(
                s,
                "{hook} hook: ok {}, failed {}, timeout {}; {last}",
                r[0], r[1], r[2]
            );
        }
    }

    /// The session, the queue, the lag, the last error.
    fn replication_status(&self, s: &mut String) {
        let since = self.connected_since.load(Relaxed);
        if since > 0 {
            let _ = writeln!(
                s,
                "connected since: {since} (unix; {} s ago)",
                unix_now().saturating_sub(since)
            );
        } else {
            let _ = writeln!(s, "connected since: not connected");
        }
        let _ = writeln!(
            s,
            "local writes: {} at the last full compare, {} kept in conflicts",
            self.local_writes.load(Relaxed),
            self.local_kept.load(Relaxed)
        );
        let _ = writeln!(s, "queue depth: {}", self.queue.load(Relaxed));
        let _ = writeln!(
            s,
            "lag: {} operations, {} bytes, {:.3} s",
            self.lag_ops.load(Relaxed),
            self.lag_bytes.load(Relaxed),
            self.lag_seconds(Instant::now())
        );
        let err = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(
            s,
            "last error: {}",
            if err.is_empty() { "none" } else { &err }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_both_formats() {
        let s = Stats::new("primary", "127.0.0.1:7700".into());
        s.events.fetch_add(3, Relaxed);
        s.error("boom");
        let t0 = Instant::now() - std::time::Duration::from_secs(90);
        s.set_lag(2, Some(t0));
        let m = s.prometheus();
        assert!(
            m.contains("syncd_events_total{role=\"primary\"} 3\n"),
            "{m}"
        );
        assert!(m.contains("syncd_lag_seconds{role=\"primary\"} 90."), "{m}");
        assert!(m.contains("# TYPE syncd_errors_total counter"));
        let st = s.status();
        assert!(st.contains("lag: 2 operations, 0 bytes, 90."), "{st}");
        assert!(st.contains("last error: ") && st.contains("boom"));
        assert!(st.contains("connected since: not connected"));
        s.record_hook(&crate::hooks::HookRun {
            kind: crate::hooks::HookKind::Demote,
            outcome: crate::hooks::Outcome::TimedOut,
            took: std::time::Duration::from_millis(1500),
        });
        let m = s.prometheus();
        assert!(
            m.contains(
                "syncd_hook_runs_total{role=\"primary\",hook=\"demote\",result=\"timeout\"} 1\n"
            ),
            "{m}"
        );
        assert!(
            m.contains("syncd_hook_last_duration_seconds{role=\"primary\",hook=\"demote\"} 1.5\n")
        );
    }
}
