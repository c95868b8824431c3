//! State shared by every connection and worker thread: the current
//! configuration snapshot (swapped atomically on reload), the retry budget
//! and global metrics. What every request touches has a slot per worker
//! (`sharded`), so two workers do not write the same cache line per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Instant;

use crate::config::Config;
use crate::metrics::{self, GlobalMetrics, ServerView};
use crate::retry::RetryBudget;
use crate::sharded::Sharded;
use crate::upstream::UpstreamRt;

/// Everything a request needs from one configuration generation. Requests
/// hold an `Arc` to the snapshot they started with, so a reload never
/// changes the rules under an in-flight request.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<UpstreamRt>>,
}

impl Snapshot {
    /// The same snapshot under fresh `Arc`s, for one worker: cloning them
    /// per request then counts references on that worker's cache lines only.
    fn worker_copy(&self) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            upstreams: self
                .upstreams
                .iter()
                .map(|(k, u)| (k.clone(), Arc::new(u.worker_copy())))
                .collect(),
        }
    }
}

pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Each worker's copy of `snapshot`, made on first use and dropped by
    /// `replace` (so a reload reaches every worker's next request).
    worker_snapshots: Sharded<Mutex<Option<Arc<Snapshot>>>>,
    budget: Mutex<RetryBudget>,
    /// Requests not yet deposited into `budget`, per worker: folded in when
    /// a retry asks (rare), instead of taking the lock on every request.
    deposits: Sharded<AtomicU64>,
    pub metrics: GlobalMetrics,
    access_log: AtomicBool,
    /// Built-in VRRP instances, once started (read by `/metrics` and `/vrrp`).
    vrrp: OnceLock<syncd_vrrp::admin::AdminState>,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Shared {
        let r = &snapshot.config.retry;
        let budget = RetryBudget::new(r.budget_ratio, r.budget_min_per_sec);
        let access = snapshot.config.global.access_log;
        Shared {
            snapshot: RwLock::new(Arc::new(snapshot)),
            worker_snapshots: Sharded::default(),
            budget: Mutex::new(budget),
            deposits: Sharded::default(),
            metrics: GlobalMetrics::default(),
            access_log: AtomicBool::new(access),
            vrrp: OnceLock::new(),
        }
    }

    /// The configuration snapshot, as this worker's copy.
    pub fn current(&self) -> Arc<Snapshot> {
        let mut slot = lock(self.worker_snapshots.local());
        if let Some(s) = slot.as_ref() {
            return s.clone();
        }
        // the slot lock is held while reading: `replace` clears the slot
        // only after swapping, so a copy of the old snapshot cannot outlive it
        let copy = Arc::new(self.shared_snapshot().worker_copy());
        *slot = Some(copy.clone());
        copy
    }

    fn shared_snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn replace(&self, snapshot: Snapshot) {
        let r = &snapshot.config.retry;
        self.budget_lock()
            .reconfigure(r.budget_ratio, r.budget_min_per_sec);
        self.access_log
            .store(snapshot.config.global.access_log, Ordering::Relaxed);
        let new = Arc::new(snapshot);
        match self.snapshot.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
        for slot in self.worker_snapshots.iter() {
            *lock(slot) = None;
        }
    }

    /// The budget with every worker's pending deposits folded in.
    fn budget_lock(&self) -> MutexGuard<'_, RetryBudget> {
        let mut b = lock(&self.budget);
        for d in self.deposits.iter() {
            b.deposit_n(d.swap(0, Ordering::Relaxed));
        }
        b
    }

    /// A request arrived (funds `ratio` of a retry).
    pub fn deposit_retry_token(&self) {
        self.deposits.local().fetch_add(1, Ordering::Relaxed);
    }

    pub fn withdraw_retry(&self, now: Instant) -> bool {
        let ok = self.budget_lock().withdraw(now);
        let m = self.metrics.local();
        let c = if ok { &m.retries } else { &m.retries_denied };
        c.fetch_add(1, Ordering::Relaxed);
        ok
    }

    pub fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Are all upstreams able to serve (at least one usable server each)?
    /// Returns the names of upstreams with no usable server.
    pub fn unhealthy_upstreams(&self) -> Vec<String> {
        let snap = self.shared_snapshot();
        let now = Instant::now();
        let mut bad: Vec<String> = snap
            .upstreams
            .iter()
            .filter(|(_, u)| !u.group().any_usable(now))
            .map(|(n, _)| n.clone())
            .collect();
        bad.sort();
        bad
    }

    /// Attach the running built-in VRRP instances (once, at start).
    pub fn set_vrrp(&self, view: syncd_vrrp::admin::AdminState) {
        let _ = self.vrrp.set(view);
    }

    /// VRRP instance status as JSON, if built-in VRRP runs.
    pub fn vrrp_status(&self) -> Option<String> {
        self.vrrp.get().map(|v| v.status_json())
    }

    pub fn render_metrics(&self) -> String {
        let snap = self.shared_snapshot();
        let now = Instant::now();
        let mut names: Vec<&String> = snap.upstreams.keys().collect();
        names.sort();
        struct Row {
            server: Arc<crate::upstream::ServerRt>,
            active: u32,
            usable: bool,
            health_up: bool,
            fails: u32,
        }
        let mut rows = Vec::new();
        for n in names {
            let g = snap.upstreams[n].group();
            for p in g.peers() {
                rows.push(Row {
                    server: p.data.clone(),
                    active: p.conns(),
                    usable: g.usable(p.id, now),
                    health_up: p.health_up(),
                    fails: p.fails(),
                });
            }
        }
        let views: Vec<ServerView<'_>> = rows
            .iter()
            .map(|r| ServerView {
                upstream: &r.server.upstream,
                server: &r.server.name,
                metrics: &r.server.metrics,
                active: r.active,
                usable: r.usable,
                health_up: r.health_up,
                fails: r.fails,
            })
            .collect();
        let mut out = metrics::render(&self.metrics, &views);
        if let Some(v) = self.vrrp.get() {
            out.push_str(&v.metrics());
        }
        out
    }
}

/// These short locks guard plain data: a panic while one is held leaves
/// nothing half-updated that matters more than serving on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with the given retry budget ratio (nothing listens:
    /// only parsed).
    fn config(ratio: &str) -> Config {
        let text = format!(
            "[retry]\nbudget_ratio = {ratio}\nbudget_min_per_sec = 0\n\n\
             [[listener]]\nlisten = \"127.0.0.1:1\"\nupstream = \"web\"\n\n\
             [[upstream]]\nname = \"web\"\n[[upstream.server]]\naddr = \"127.0.0.1:2\"\n"
        );
        Config::parse(&text).expect("config")
    }

    fn shared(ratio: &str) -> Shared {
        let config = config(ratio);
        Shared::new(Snapshot {
            config: Arc::new(config),
            upstreams: HashMap::new(),
        })
    }

    #[test]
    fn retry_deposits_from_every_worker_fund_retries() {
        let s = Arc::new(shared("0.5"));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    crate::workers::set_index(i);
                    for _ in 0..10 {
                        s.deposit_retry_token();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 40 requests at 0.5: 20 retries, then none
        let now = Instant::now();
        let granted = (0..100).filter(|_| s.withdraw_retry(now)).count();
        assert_eq!(granted, 20);
        let m = &s.metrics;
        assert_eq!(m.total(|c| &c.retries), 20);
        assert_eq!(m.total(|c| &c.retries_denied), 80);
    }

    #[test]
    fn a_reload_reaches_every_worker_copy() {
        let s = Arc::new(shared("0.2"));
        let seen = |s: &Arc<Shared>, i: usize| {
            let s = s.clone();
            std::thread::spawn(move || {
                crate::workers::set_index(i);
                s.current().config.retry.budget_ratio
            })
            .join()
            .unwrap()
        };
        assert_eq!(seen(&s, 1), 0.2);
        assert_eq!(seen(&s, 2), 0.2);
        let config = config("0.7");
        s.replace(Snapshot {
            config: Arc::new(config),
            upstreams: HashMap::new(),
        });
        assert_eq!(seen(&s, 1), 0.7);
        assert_eq!(seen(&s, 2), 0.7);
        assert_eq!(s.current().config.retry.budget_ratio, 0.7);
    }
}
