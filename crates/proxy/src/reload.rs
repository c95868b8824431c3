//! Process lifecycle: start, reload (SIGHUP) and graceful shutdown.
//!
//! A reload binds any new listening sockets first (so a bad address or TLS
//! file rejects the whole reload and the old configuration keeps running),
//! then swaps the configuration snapshot. Upstream groups are reconfigured in
//! place, keeping health, failure counts, active connections, pools and
//! metrics of servers that remain. Unchanged plain listeners keep running;
//! changed ones stop accepting and drain while their replacement (bound with
//! SO_REUSEPORT) already accepts. In-flight requests finish on the snapshot
//! they started with.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::listener::{self, ListenError};
use crate::state::{Shared, Snapshot};
use crate::upstream::Registry;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("admin.listen: cannot listen on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Running {
    cfg: crate::config::Listener,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Admin {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

pub struct App {
    workers: Vec<tokio::runtime::Handle>,
    shared: Arc<Shared>,
    registry: Registry,
    listeners: Vec<Running>,
    checkers: Vec<JoinHandle<()>>,
    draining: Vec<JoinHandle<()>>,
    admin: Option<Admin>,
}

impl App {
    /// Bind everything and start serving: listeners on the `workers`
    /// runtimes (one socket per worker and address), admin and health checks
    /// on the current runtime.
    pub fn start(cfg: Config, workers: Vec<tokio::runtime::Handle>) -> Result<App, LifecycleError> {
        let mut registry = Registry::default();
        let copies = workers.len().max(1);
        let bound: Vec<_> = cfg
            .listeners
            .iter()
            .map(|l| listener::prepare(l, copies))
            .collect::<Result<_, _>>()?;
        let admin_socket = match cfg.admin {
            Some(addr) => Some((
                addr,
                listener::bind(addr, 128)
                    .map_err(|source| LifecycleError::Admin { addr, source })?,
            )),
            None => None,
        };
        let upstreams = registry.apply(&cfg);
        let shared = Arc::new(Shared::new(Snapshot {
            config: Arc::new(cfg),
            upstreams,
        }));
        shared.metrics.config_generation.store(1, Ordering::Relaxed);
        let mut app = App {
            workers,
            shared,
            registry,
            listeners: Vec::new(),
            checkers: Vec::new(),
            draining: Vec::new(),
            admin: None,
        };
        for b in bound {
            app.spawn_listener(b);
        }
        if let Some((addr, sock)) = admin_socket {
            app.spawn_admin(addr, sock);
        }
        app.restart_checkers();
        Ok(app)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn spawn_listener(&mut self, b: listener::Bound) {
        let (stop, rx) = watch::channel(false);
        let tasks = b
            .sockets
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let task = listener::run(
                    s,
                    b.cfg.clone(),
                    b.tls.clone(),
                    self.shared.clone(),
                    rx.clone(),
                );
                match self.workers.get(i % self.workers.len().max(1)) {
                    Some(h) => h.spawn(task),
                    None => tokio::spawn(task),
                }
            })
            .collect();
        for a in &b.cfg.listen {
            tracing::info!(listener = %b.cfg.name, addr = %a, mode = ?b.cfg.mode, tls = b.tls.is_some(), upstream = %b.cfg.upstream, "listening");
        }
        self.listeners.push(Running {
            cfg: (*b.cfg).clone(),
            stop,
            tasks,
        });
    }

    fn spawn_admin(&mut self, addr: SocketAddr, sock: tokio::net::TcpListener) {
        let (stop, rx) = watch::channel(false);
        tokio::spawn(crate::admin::run(sock, self.shared.clone(), rx));
        tracing::info!(%addr, "admin endpoint (/healthz, /metrics)");
        self.admin = Some(Admin { addr, stop });
    }

    fn restart_checkers(&mut self) {
        for c in self.checkers.drain(..) {
            c.abort();
        }
        let snap = self.shared.current();
        for up in snap.upstreams.values() {
            self.checkers.extend(crate::checker::spawn_for(up));
        }
    }

    /// Apply a new configuration. On error nothing changes.
    pub fn reload(&mut self, cfg: Config) -> Result<(), LifecycleError> {
        // 1. bind what is new or changed (TLS listeners always restart so a
        //    renewed certificate at the same path is picked up)
        let mut keep = vec![false; self.listeners.len()];
        let mut bound = Vec::new();
        for l in &cfg.listeners {
            let same = self
                .listeners
                .iter()
                .position(|r| r.cfg == *l && l.tls.is_none());
            match same {
                Some(i) if !keep[i] => keep[i] = true,
                _ => bound.push(listener::prepare(l, self.workers.len().max(1))?),
            }
        }
        let new_admin = match cfg.admin {
            Some(addr) if self.admin.as_ref().map(|a| a.addr) != Some(addr) => Some((
                addr,
                listener::bind(addr, 128)
                    .map_err(|source| LifecycleError::Admin { addr, source })?,
            )),
            _ => None,
        };
        // 2. swap the configuration
        let upstreams = self.registry.apply(&cfg);
        let admin_addr = cfg.admin;
        self.shared.replace(Snapshot {
            config: Arc::new(cfg),
            upstreams,
        });
        // 3. retire listeners that are gone or changed, start the new ones
        let old = std::mem::take(&mut self.listeners);
        for (r, k) in old.into_iter().zip(keep) {
            if k {
                self.listeners.push(r);
            } else {
                tracing::info!(listener = %r.cfg.name, "listener retired; draining its connections");
                let _ = r.stop.send(true);
                self.draining.extend(r.tasks);
            }
        }
        for b in bound {
            self.spawn_listener(b);
        }
        if admin_addr != self.admin.as_ref().map(|a| a.addr) {
            if let Some(a) = self.admin.take() {
                let _ = a.stop.send(true);
            }
        }
        if let Some((addr, sock)) = new_admin {
            self.spawn_admin(addr, sock);
        }
        self.restart_checkers();
        self.draining.retain(|t| !t.is_finished());
        self.shared
            .metrics
            .config_generation
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Stop accepting, let in-flight requests finish (up to `timeout`).
    pub async fn shutdown(mut self, timeout: Duration) {
        for r in &self.listeners {
            let _ = r.stop.send(true);
        }
        if let Some(a) = &self.admin {
            let _ = a.stop.send(true);
        }
        for c in self.checkers.drain(..) {
            c.abort();
        }
        let mut tasks: Vec<JoinHandle<()>> =
            self.listeners.drain(..).flat_map(|r| r.tasks).collect();
        tasks.append(&mut self.draining);
        let wait = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(
                ?timeout,
                "shutdown timeout reached; closing remaining connections"
            );
        }
    }
}
