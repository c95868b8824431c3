//! State shared by every connection and worker thread: the current
//! configuration snapshot (swapped atomically on reload), the retry budget
//! and global metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use crate::config::Config;
use crate::metrics::{self, GlobalMetrics, ServerView};
use crate::retry::RetryBudget;
use crate::upstream::UpstreamRt;

/// Everything a request needs from one configuration generation. Requests
/// hold an `Arc` to the snapshot they started with, so a reload never
/// changes the rules under an in-flight request.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub upstreams: HashMap<String, Arc<UpstreamRt>>,
}

pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    budget: Mutex<RetryBudget>,
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
            budget: Mutex::new(budget),
            metrics: GlobalMetrics::default(),
            access_log: AtomicBool::new(access),
            vrrp: OnceLock::new(),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
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
    }

    fn budget_lock(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn deposit_retry_token(&self) {
        self.budget_lock().deposit();
    }

    pub fn withdraw_retry(&self, now: Instant) -> bool {
        let ok = self.budget_lock().withdraw(now);
        let c = if ok {
            &self.metrics.retries
        } else {
            &self.metrics.retries_denied
        };
        c.fetch_add(1, Ordering::Relaxed);
        ok
    }

    pub fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Are all upstreams able to serve (at least one usable server each)?
    /// Returns the names of upstreams with no usable server.
    pub fn unhealthy_upstreams(&self) -> Vec<String> {
        let snap = self.current();
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
        let snap = self.current();
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
