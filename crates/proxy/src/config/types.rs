//! The validated, typed configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    pub admin: Option<SocketAddr>,
    pub retry: RetrySettings,
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<Upstream>,
    /// Built-in VRRP instances (`[[vrrp]]`) as written, already validated;
    /// kept in this form so a reload can tell whether they changed.
    pub vrrp: Vec<syncd_vrrp::config::VrrpConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Worker threads, each with its own runtime and sockets (0 = one per core).
    pub workers: usize,
    pub shutdown_timeout: Duration,
    pub access_log: bool,
    pub log_json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Retries allowed per request on average (0.2 = one retry per five requests).
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the ratio says.
    pub budget_min_per_sec: u32,
    /// Request bodies up to this size are buffered so that idempotent requests
    /// can be replayed on another server; larger bodies are streamed.
    pub max_replay_body: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub mode: Mode,
    pub upstream: String,
    pub tls: Option<Tls>,
    pub header_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub idle_timeout: Duration,
    /// HTTP: longest wait for each read of a request body (nginx
    /// `client_body_timeout`); a stall gets 408 and is not the server's fault.
    pub client_body_timeout: Duration,
    /// HTTP: longest wait for the client to accept any response bytes (nginx
    /// `send_timeout`); then the connection is closed and the server released.
    pub send_timeout: Duration,
    pub backlog: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConn,
    IpHash,
    /// Consistent (ketama) hash on a key built from request variables.
    Hash(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// Pass the client's Host header (nginx `proxy_set_header Host $host`).
    Preserve,
    /// Use the upstream server address (nginx default `$proxy_host`).
    Upstream,
    /// A fixed value.
    Fixed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub algorithm: Algorithm,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    /// Maximum attempts per request (0 = as many as there are servers).
    pub tries: u32,
    /// Give up retrying after this long (zero = no limit).
    pub next_upstream_timeout: Duration,
    pub host_header: HostHeader,
    pub servers: Vec<Server>,
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// As written in the file (used as the server's identity across reloads).
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub backup: bool,
    pub down: bool,
    pub max_conns: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http {
        path: String,
        host: Option<String>,
        expect: Vec<(u16, u16)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub port: Option<u16>,
}

impl CheckKind {
    pub fn status_ok(&self, status: u16) -> bool {
        match self {
            CheckKind::Tcp => true,
            CheckKind::Http { expect, .. } => {
                expect.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
            }
        }
    }
}
