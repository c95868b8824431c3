//! Runtime side of upstream groups: per-server connection pools and metrics,
//! and the shared, lock-protected balancer state of each group.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::balancer::{hash::KeyTemplate, Group, Method, PeerSpec};
use crate::config::{self, Algorithm};
use crate::h1client::Conn;
use crate::metrics::ServerMetrics;
use crate::sharded::Sharded;

/// Failure to open a backend connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle keep-alive connections to one server (nginx `keepalive`), LIFO so
/// the most recently used (least likely to be closed by the server) goes
/// first. One shard per worker thread, like nginx's per-worker cache, so a
/// connection stays with the worker (and reactor) that opened it.
#[derive(Default)]
pub struct Pool {
    shards: Sharded<Mutex<Vec<Idle>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding one of these short locks cannot leave the data
    // half-updated in a way that matters more than stopping the proxy
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    /// This worker's idle connections (its own lock and cache lines).
    fn shard(&self) -> &Mutex<Vec<Idle>> {
        self.shards.local()
    }

    /// Take the freshest idle connection not older than `max_idle`.
    pub fn take(&self, now: Instant, max_idle: Duration) -> Option<Conn> {
        let mut idle = lock(self.shard());
        while let Some(c) = idle.pop() {
            if now.saturating_duration_since(c.since) < max_idle && c.conn.looks_alive() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Return a connection after a complete response.
    pub fn put(&self, conn: Conn, now: Instant, max_idle: Duration, capacity: usize) {
        if capacity == 0 {
            return;
        }
        let mut idle = lock(self.shard());
        if idle
            .first()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= max_idle)
        {
            idle.retain(|c| now.saturating_duration_since(c.since) < max_idle);
        }
        if idle.len() >= capacity {
            idle.remove(0);
        }
        idle.push(Idle { conn, since: now });
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            lock(s).clear();
        }
    }
}

/// One backend server's runtime: address, pool, metrics. Kept across reloads
/// for the same (upstream, address).
pub struct ServerRt {
    pub upstream: String,
    pub name: String,
    pub addr: SocketAddr,
    pub pool: Pool,
    pub metrics: ServerMetrics,
}

impl ServerRt {
    /// Open a new HTTP/1.1 connection within `timeout`.
    pub async fn connect_http(&self, timeout: Duration) -> Result<Conn, ConnectError> {
        Ok(Conn::new(self.connect_tcp(timeout).await?))
    }

    pub async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout(addr)),
            Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

pub type SharedGroup = Arc<Mutex<Group<Arc<ServerRt>>>>;

/// A worker's handle on a server: requests clone this worker's own count
/// and leave the shared `ServerRt`'s count (and its cache line) alone.
pub type ServerRef = Arc<Arc<ServerRt>>;

/// One upstream as configured now: settings plus the (persistent) group.
pub struct UpstreamRt {
    pub cfg: config::Upstream,
    pub group: SharedGroup,
    pub key: Option<KeyTemplate>,
    /// A worker copy's handles on the group's servers, by peer id.
    servers: Vec<(u64, ServerRef)>,
}

impl UpstreamRt {
    pub fn group(&self) -> MutexGuard<'_, Group<Arc<ServerRt>>> {
        lock(&self.group)
    }

    /// The same upstream for one worker (see `Snapshot`): shares the group,
    /// with the worker's own handles on its servers.
    pub fn worker_copy(&self) -> UpstreamRt {
        let servers = self
            .group()
            .peers()
            .map(|p| (p.id, Arc::new(p.data.clone())))
            .collect();
        UpstreamRt {
            cfg: self.cfg.clone(),
            group: self.group.clone(),
            key: self.key.clone(),
            servers,
        }
    }

    /// This worker's handle on server `id` (selected as `server`); a fresh
    /// one if a reload changed the group since this copy was made.
    pub fn server_ref(&self, id: u64, server: &Arc<ServerRt>) -> ServerRef {
        match self.servers.iter().find(|(i, _)| *i == id) {
            Some((_, s)) if Arc::ptr_eq(&**s, server) => s.clone(),
            _ => Arc::new(server.clone()),
        }
    }
}

pub fn method_of(alg: &Algorithm) -> Method {
    match alg {
        Algorithm::RoundRobin => Method::RoundRobin,
        Algorithm::LeastConn => Method::LeastConn,
        Algorithm::IpHash => Method::IpHash,
        Algorithm::Hash(_) => Method::Hash,
    }
}

pub fn peer_spec(s: &config::Server) -> PeerSpec {
    PeerSpec {
        key: s.name.clone(),
        weight: s.weight,
        max_fails: s.max_fails,
        fail_timeout: s.fail_timeout,
        max_conns: s.max_conns,
        down: s.down,
        backup: s.backup,
    }
}

/// Groups and servers that outlive a single configuration.
#[derive(Default)]
pub struct Registry {
    groups: HashMap<String, SharedGroup>,
}

impl Registry {
    /// Build the upstreams of a new configuration, reusing groups (and their
    /// health/failure state, pools and metrics) of same-named upstreams.
    pub fn apply(&mut self, cfg: &config::Config) -> HashMap<String, Arc<UpstreamRt>> {
        let mut out = HashMap::new();
        let mut groups = HashMap::new();
        for u in &cfg.upstreams {
            let method = method_of(&u.algorithm);
            let existing = self.groups.get(&u.name).cloned();
            let servers = |g: Option<&Group<Arc<ServerRt>>>| -> Vec<(PeerSpec, Arc<ServerRt>)> {
                u.servers
                    .iter()
                    .map(|s| {
                        let reuse = g
                            .and_then(|g| {
                                g.peers()
                                    .find(|p| p.spec.key == s.name)
                                    .map(|p| p.data.clone())
                            })
                            .filter(|rt| rt.addr == s.addr);
                        let rt = reuse.unwrap_or_else(|| {
                            Arc::new(ServerRt {
                                upstream: u.name.clone(),
                                name: s.name.clone(),
                                addr: s.addr,
                                pool: Pool::default(),
                                metrics: ServerMetrics::default(),
                            })
                        });
                        (peer_spec(s), rt)
                    })
                    .collect()
            };
            let group = match existing {
                Some(shared) => {
                    {
                        let mut g = lock(&shared);
                        let list = servers(Some(&g));
                        g.reconfigure(method, list);
                    }
                    shared
                }
                None => Arc::new(Mutex::new(Group::new(method, servers(None)))),
            };
            let key = match &u.algorithm {
                Algorithm::Hash(k) => KeyTemplate::parse(k).ok(),
                _ => None,
            };
            groups.insert(u.name.clone(), group.clone());
            out.insert(
                u.name.clone(),
                Arc::new(UpstreamRt {
                    cfg: u.clone(),
                    group,
                    key,
                    servers: Vec::new(),
                }),
            );
        }
        self.groups = groups;
        out
    }
}
