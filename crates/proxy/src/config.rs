//! Configuration: the TOML file format, and its validation into typed settings.
//!
//! Parsing happens in two steps. `serde` reads the file into `Raw*` structs
//! that mirror the file (every field optional, unknown keys rejected), then
//! [`Config::from_raw`] checks every value and produces the typed [`Config`].
//! Every error names the key it is about and says how to fix it, e.g.
//! `upstream "web".server[1].weight: 0 is invalid; use a positive integer (nginx default 1)`.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- raw file

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    global: Option<RawGlobal>,
    admin: Option<RawAdmin>,
    retry: Option<RawRetry>,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
    /// Built-in VRRP: the same `[[vrrp]]` tables as `syncd vrrp`.
    #[serde(default)]
    vrrp: Vec<syncd_vrrp::config::VrrpConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    workers: Option<i64>,
    shutdown_timeout: Option<RawDuration>,
    access_log: Option<bool>,
    log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    budget_ratio: Option<f64>,
    budget_min_per_sec: Option<i64>,
    max_replay_body: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    listen: Option<RawStrings>,
    mode: Option<String>,
    upstream: Option<String>,
    tls: Option<RawTls>,
    header_timeout: Option<RawDuration>,
    max_header_size: Option<i64>,
    max_headers: Option<i64>,
    idle_timeout: Option<RawDuration>,
    client_body_timeout: Option<RawDuration>,
    send_timeout: Option<RawDuration>,
    backlog: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Option<String>,
    algorithm: Option<String>,
    hash_key: Option<String>,
    connect_timeout: Option<RawDuration>,
    read_timeout: Option<RawDuration>,
    keepalive: Option<i64>,
    keepalive_timeout: Option<RawDuration>,
    tries: Option<i64>,
    next_upstream_timeout: Option<RawDuration>,
    host_header: Option<String>,
    #[serde(default)]
    server: Vec<RawServer>,
    health_check: Option<RawHealth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    addr: Option<String>,
    weight: Option<i64>,
    max_fails: Option<i64>,
    fail_timeout: Option<RawDuration>,
    backup: Option<bool>,
    down: Option<bool>,
    max_conns: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(rename = "type")]
    kind: Option<String>,
    interval: Option<RawDuration>,
    timeout: Option<RawDuration>,
    rise: Option<i64>,
    fall: Option<i64>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<RawStrings>,
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStrings {
    One(String),
    Int(i64),
    Many(Vec<toml::Value>),
}

// ---------------------------------------------------------------- typed config

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

// ---------------------------------------------------------------- parsing helpers

/// Parse `"10s"`, `"500ms"`, `"2m"`, `"1h"`, `"1m30s"` or an integer number of seconds.
pub use syncd_ops::duration::parse as parse_duration;

fn duration(
    key: &str,
    raw: Option<RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(default),
        Some(RawDuration::Secs(s)) if s >= 0 => Ok(Duration::from_secs(s as u64)),
        Some(RawDuration::Secs(s)) => Err(invalid(
            key,
            format!("{s} is invalid; use a duration such as \"10s\" or \"500ms\""),
        )),
        Some(RawDuration::Text(t)) => parse_duration(&t).ok_or_else(|| {
            invalid(
                key,
                format!("{t:?} is not a duration; use e.g. \"10s\", \"500ms\", \"2m\" or \"1h\""),
            )
        }),
    }
}

fn positive_duration(
    key: &str,
    raw: Option<RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, raw, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero; use e.g. \"5s\""));
    }
    Ok(d)
}

fn int(
    key: &str,
    raw: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
    hint: &str,
) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(v) if v >= min as i64 && (v as u64) <= max => Ok(v as u64),
        Some(v) => Err(invalid(key, format!("{v} is invalid; {hint}"))),
    }
}

fn strings(key: &str, raw: RawStrings) -> Result<Vec<String>, ConfigError> {
    match raw {
        RawStrings::One(s) => Ok(vec![s]),
        RawStrings::Int(i) => Ok(vec![i.to_string()]),
        RawStrings::Many(values) => values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::String(s) => Ok(s),
                toml::Value::Integer(n) => Ok(n.to_string()),
                other => Err(invalid(
                    format!("{key}[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                )),
            })
            .collect(),
    }
}

fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(invalid(
            key,
            format!("{text:?} has no port; write \"host:port\", e.g. \"127.0.0.1:8080\""),
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| invalid(key, format!("{text:?} resolved to no address"))),
        Err(e) => Err(invalid(
            key,
            format!(
                "cannot resolve {text:?}: {e}; use an IP address and port, e.g. \"10.0.0.5:80\""
            ),
        )),
    }
}

fn parse_status_ranges(key: &str, items: Vec<String>) -> Result<Vec<(u16, u16)>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let parse = |s: &str| -> Option<u16> {
            let v: u16 = s.trim().parse().ok()?;
            (100..=599).contains(&v).then_some(v)
        };
        let range = match item.split_once('-') {
            Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(l, h)| l <= h),
            None => parse(item).map(|v| (v, v)),
        };
        match range {
            Some(r) => out.push(r),
            None => {
                return Err(invalid(
                    k,
                    format!("{item:?} is not a status or range; use e.g. 200 or \"200-399\""),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(
            key,
            "is empty; list at least one status, e.g. [\"200-399\"]",
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------- validation

/// Validate `[[vrrp]]` with the VRRP crate's own rules (errors already name
/// `vrrp[i].key`); the first problem becomes the error, the rest follow it.
fn vrrp(
    tables: &[syncd_vrrp::config::VrrpConfig],
) -> Result<Option<syncd_vrrp::config::Config>, ConfigError> {
    match syncd_vrrp::config::validate_tables(tables) {
        Ok(c) => Ok(c),
        Err(lines) => {
            let first = lines.first().map(String::as_str).unwrap_or("vrrp: invalid");
            let (key, msg) = first.split_once(": ").unwrap_or(("vrrp", first));
            let mut message = msg.to_string();
            for more in lines.iter().skip(1) {
                message.push('\n');
                message.push_str(more);
            }
            Err(invalid(key, message))
        }
    }
}

impl Config {
    /// The validated VRRP instances to run, if any.
    pub fn vrrp_config(&self) -> Result<Option<syncd_vrrp::config::Config>, ConfigError> {
        vrrp(&self.vrrp)
    }

    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        Config::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        vrrp(&raw.vrrp)?;
        let g = raw.global.unwrap_or_default();
        let log_json = match g.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "global.log_format",
                    format!("{other:?} is unknown; use \"text\" or \"json\""),
                ))
            }
        };
        let global = Global {
            workers: int(
                "global.workers",
                g.workers,
                0,
                0,
                1024,
                "use 0 (one per core) or a thread count",
            )? as usize,
            shutdown_timeout: duration(
                "global.shutdown_timeout",
                g.shutdown_timeout,
                Duration::from_secs(30),
            )?,
            access_log: g.access_log.unwrap_or(true),
            log_json,
        };

        let admin = match raw.admin.and_then(|a| a.listen) {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "admin.listen",
                    format!("{text:?} is not an address; use \"IP:port\", e.g. \"127.0.0.1:9901\""),
                )
            })?),
        };

        let r = raw.retry.unwrap_or_default();
        let budget_ratio = r.budget_ratio.unwrap_or(0.2);
        if !(0.0..=1000.0).contains(&budget_ratio) || budget_ratio.is_nan() {
            return Err(invalid(
                "retry.budget_ratio",
                format!("{budget_ratio} is invalid; use a fraction such as 0.2 (one retry per five requests)"),
            ));
        }
        let retry = RetrySettings {
            budget_ratio,
            budget_min_per_sec: int(
                "retry.budget_min_per_sec",
                r.budget_min_per_sec,
                10,
                0,
                1_000_000,
                "use a non-negative integer (default 10)",
            )? as u32,
            max_replay_body: int(
                "retry.max_replay_body",
                r.max_replay_body,
                64 * 1024,
                0,
                64 * 1024 * 1024,
                "use a byte count up to 67108864 (default 65536)",
            )? as usize,
        };

        let mut upstreams = Vec::new();
        let mut names = HashSet::new();
        for (i, u) in raw.upstream.into_iter().enumerate() {
            let up = Self::upstream(i, u)?;
            if !names.insert(up.name.clone()) {
                return Err(invalid(
                    format!("upstream[{i}].name"),
                    format!(
                        "{:?} is defined twice; give each upstream a unique name",
                        up.name
                    ),
                ));
            }
            upstreams.push(up);
        }

        let mut listeners = Vec::new();
        let mut seen_addrs: HashMap<SocketAddr, String> = HashMap::new();
        for (i, l) in raw.listener.into_iter().enumerate() {
            let lis = Self::listener(i, l, &names)?;
            for a in &lis.listen {
                if let Some(other) = seen_addrs.insert(*a, lis.name.clone()) {
                    return Err(invalid(
                        format!("listener {:?}.listen", lis.name),
                        format!("{a} is already used by listener {other:?}; each address may appear once"),
                    ));
                }
            }
            listeners.push(lis);
        }
        if listeners.is_empty() {
            return Err(invalid(
                "listener",
                "no [[listener]] defined; add one, e.g. [[listener]] listen = \"0.0.0.0:80\" upstream = \"web\"",
            ));
        }
        Ok(Config {
            global,
            admin,
            retry,
            listeners,
            upstreams,
            vrrp: raw.vrrp,
        })
    }

    fn listener(
        i: usize,
        l: RawListener,
        upstreams: &HashSet<String>,
    ) -> Result<Listener, ConfigError> {
        let name = l.name.unwrap_or_else(|| format!("listener{i}"));
        let k = |field: &str| format!("listener {name:?}.{field}");
        let mode = match l.mode.as_deref() {
            None | Some("http") => Mode::Http,
            Some("tcp") => Mode::Tcp,
            Some(other) => {
                return Err(invalid(
                    k("mode"),
                    format!("{other:?} is unknown; use \"http\" or \"tcp\""),
                ))
            }
        };
        let listen_raw = l.listen.ok_or_else(|| {
            invalid(
                k("listen"),
                "is missing; add e.g. listen = \"0.0.0.0:80\" or a list of addresses",
            )
        })?;
        let mut listen = Vec::new();
        for (j, text) in strings(&k("listen"), listen_raw)?.into_iter().enumerate() {
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    format!("{}[{j}]", k("listen")),
                    format!("{text:?} is not an address; use \"IP:port\", e.g. \"0.0.0.0:80\" or \"[::]:443\""),
                )
            })?;
            listen.push(addr);
        }
        if listen.is_empty() {
            return Err(invalid(k("listen"), "is empty; give at least one address"));
        }
        let upstream = l.upstream.ok_or_else(|| {
            invalid(
                k("upstream"),
                "is missing; name the [[upstream]] this listener forwards to",
            )
        })?;
        if !upstreams.contains(&upstream) {
            return Err(invalid(
                k("upstream"),
                format!(
                    "{upstream:?} is not defined; add an [[upstream]] with name = {upstream:?}"
                ),
            ));
        }
        if mode == Mode::Tcp {
            // HTTP-only limits: reject rather than silently ignore them
            for (key, set) in [
                ("client_body_timeout", l.client_body_timeout.is_some()),
                ("send_timeout", l.send_timeout.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        k(key),
                        "applies to mode = \"http\" listeners only; for tcp use idle_timeout",
                    ));
                }
            }
        }
        let tls = match l.tls {
            None => None,
            Some(t) => {
                if mode == Mode::Tcp {
                    return Err(invalid(
                        k("tls"),
                        "TLS termination is only supported on mode = \"http\" listeners",
                    ));
                }
                let cert = t.cert.ok_or_else(|| {
                    invalid(
                        k("tls.cert"),
                        "is missing; give a PEM certificate chain file",
                    )
                })?;
                let key = t.key.ok_or_else(|| {
                    invalid(k("tls.key"), "is missing; give a PEM private key file")
                })?;
                Some(Tls {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                })
            }
        };
        let idle_default = match mode {
            Mode::Http => Duration::from_secs(75),
            Mode::Tcp => Duration::from_secs(600),
        };
        Ok(Listener {
            header_timeout: positive_duration(
                &k("header_timeout"),
                l.header_timeout,
                Duration::from_secs(60),
            )?,
            max_header_size: int(
                &k("max_header_size"),
                l.max_header_size,
                32 * 1024,
                1024,
                1024 * 1024,
                "use a byte count between 1024 and 1048576 (default 32768)",
            )? as usize,
            max_headers: int(
                &k("max_headers"),
                l.max_headers,
                100,
                1,
                10_000,
                "use a count between 1 and 10000 (default 100)",
            )? as usize,
            idle_timeout: positive_duration(&k("idle_timeout"), l.idle_timeout, idle_default)?,
            client_body_timeout: positive_duration(
                &k("client_body_timeout"),
                l.client_body_timeout,
                Duration::from_secs(60),
            )?,
            send_timeout: positive_duration(
                &k("send_timeout"),
                l.send_timeout,
                Duration::from_secs(60),
            )?,
            backlog: int(
                &k("backlog"),
                l.backlog,
                1024,
                1,
                65535,
                "use a value between 1 and 65535",
            )? as u32,
            name,
            listen,
            mode,
            upstream,
            tls,
        })
    }

    fn upstream(i: usize, u: RawUpstream) -> Result<Upstream, ConfigError> {
        let name = u.name.ok_or_else(|| {
            invalid(
                format!("upstream[{i}].name"),
                "is missing; every [[upstream]] needs a name",
            )
        })?;
        let k = |field: &str| format!("upstream {name:?}.{field}");
        let algorithm = match u.algorithm.as_deref() {
            None | Some("round_robin") => Algorithm::RoundRobin,
            Some("least_conn") => Algorithm::LeastConn,
            Some("ip_hash") => Algorithm::IpHash,
            Some("hash") => {
                let key = u.hash_key.clone().ok_or_else(|| {
                    invalid(k("hash_key"), "is missing; algorithm = \"hash\" needs a key such as \"$request_uri\"")
                })?;
                crate::balancer::hash::KeyTemplate::parse(&key).map_err(|m| invalid(k("hash_key"), m))?;
                Algorithm::Hash(key)
            }
            Some(other) => {
                return Err(invalid(
                    k("algorithm"),
                    format!("{other:?} is unknown; use \"round_robin\", \"least_conn\", \"ip_hash\" or \"hash\""),
                ))
            }
        };
        if u.hash_key.is_some() && !matches!(algorithm, Algorithm::Hash(_)) {
            return Err(invalid(
                k("hash_key"),
                "is only used with algorithm = \"hash\"; remove it or set the algorithm",
            ));
        }
        let host_header = match u.host_header.as_deref() {
            None | Some("$host") | Some("preserve") => HostHeader::Preserve,
            Some("$proxy_host") | Some("upstream") => HostHeader::Upstream,
            Some("") => {
                return Err(invalid(
                    k("host_header"),
                    "is empty; use \"$host\", \"$proxy_host\" or a host name",
                ))
            }
            Some(other) => HostHeader::Fixed(other.to_string()),
        };
        if u.server.is_empty() {
            return Err(invalid(
                k("server"),
                "is empty; add at least one [[upstream.server]] with addr = \"IP:port\"",
            ));
        }
        let mut servers = Vec::new();
        let mut seen = HashSet::new();
        for (j, s) in u.server.into_iter().enumerate() {
            let sk = |field: &str| format!("upstream {name:?}.server[{j}].{field}");
            let text = s
                .addr
                .ok_or_else(|| invalid(sk("addr"), "is missing; write addr = \"IP:port\""))?;
            let addr = resolve(&sk("addr"), &text)?;
            if !seen.insert(text.clone()) {
                return Err(invalid(
                    sk("addr"),
                    format!("{text:?} is listed twice in this upstream"),
                ));
            }
            let weight = match s.weight {
                None => 1,
                Some(w) if (1..=1000).contains(&w) => w as u32,
                Some(w) => {
                    return Err(invalid(
                        sk("weight"),
                        format!(
                            "{w} is invalid; use a positive integer up to 1000 (nginx default 1)"
                        ),
                    ))
                }
            };
            let backup = s.backup.unwrap_or(false);
            if backup && matches!(algorithm, Algorithm::IpHash | Algorithm::Hash(_)) {
                return Err(invalid(
                    sk("backup"),
                    "backup servers cannot be used with ip_hash or hash (as in nginx); remove backup or use round_robin/least_conn",
                ));
            }
            servers.push(Server {
                name: text,
                addr,
                weight,
                max_fails: int(
                    &sk("max_fails"),
                    s.max_fails,
                    1,
                    0,
                    1_000_000,
                    "use 0 (never mark down) or a positive count (nginx default 1)",
                )? as u32,
                fail_timeout: duration(
                    &sk("fail_timeout"),
                    s.fail_timeout,
                    Duration::from_secs(10),
                )?,
                backup,
                down: s.down.unwrap_or(false),
                max_conns: int(
                    &sk("max_conns"),
                    s.max_conns,
                    0,
                    0,
                    10_000_000,
                    "use 0 (unlimited) or a positive count",
                )? as u32,
            });
        }
        if servers.iter().all(|s| s.backup) {
            return Err(invalid(
                k("server"),
                "has only backup servers; mark at least one server as primary (backup = false)",
            ));
        }
        let health_check = match u.health_check {
            None => None,
            Some(h) => Some(Self::health(&k("health_check"), h)?),
        };
        Ok(Upstream {
            algorithm,
            connect_timeout: positive_duration(
                &k("connect_timeout"),
                u.connect_timeout,
                Duration::from_secs(5),
            )?,
            read_timeout: positive_duration(
                &k("read_timeout"),
                u.read_timeout,
                Duration::from_secs(60),
            )?,
            keepalive: int(
                &k("keepalive"),
                u.keepalive,
                32,
                0,
                100_000,
                "use 0 (no pooling) or a count of idle connections per server",
            )? as usize,
            keepalive_timeout: duration(
                &k("keepalive_timeout"),
                u.keepalive_timeout,
                Duration::from_secs(4),
            )?,
            tries: int(
                &k("tries"),
                u.tries,
                0,
                0,
                1000,
                "use 0 (as many as servers) or a positive count",
            )? as u32,
            next_upstream_timeout: duration(
                &k("next_upstream_timeout"),
                u.next_upstream_timeout,
                Duration::ZERO,
            )?,
            host_header,
            servers,
            health_check,
            name,
        })
    }

    fn health(key: &str, h: RawHealth) -> Result<HealthCheck, ConfigError> {
        let k = |field: &str| format!("{key}.{field}");
        let kind = match h.kind.as_deref() {
            None | Some("tcp") => {
                if h.path.is_some() || h.expect_status.is_some() || h.host.is_some() {
                    return Err(invalid(
                        k("type"),
                        "path/host/expect_status need type = \"http\"",
                    ));
                }
                CheckKind::Tcp
            }
            Some("http") => {
                let path = h.path.unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') {
                    return Err(invalid(k("path"), format!("{path:?} must start with '/'")));
                }
                let expect = match h.expect_status {
                    None => vec![(200, 399)],
                    Some(raw) => parse_status_ranges(
                        &k("expect_status"),
                        strings(&k("expect_status"), raw)?,
                    )?,
                };
                CheckKind::Http {
                    path,
                    host: h.host,
                    expect,
                }
            }
            Some(other) => {
                return Err(invalid(
                    k("type"),
                    format!("{other:?} is unknown; use \"tcp\" or \"http\""),
                ))
            }
        };
        let interval = positive_duration(&k("interval"), h.interval, Duration::from_secs(2))?;
        let timeout = positive_duration(&k("timeout"), h.timeout, Duration::from_secs(1))?;
        Ok(HealthCheck {
            kind,
            interval,
            timeout,
            rise: int(
                &k("rise"),
                h.rise,
                2,
                1,
                1000,
                "use a positive count (default 2)",
            )? as u32,
            fall: int(
                &k("fall"),
                h.fall,
                3,
                1,
                1000,
                "use a positive count (default 3)",
            )? as u32,
            port: match h.port {
                None => None,
                Some(p) => Some(int(
                    &k("port"),
                    Some(p),
                    0,
                    1,
                    65535,
                    "use a port between 1 and 65535",
                )? as u16),
            },
        })
    }

    pub fn upstream_named(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [[listener]]
        listen = "127.0.0.1:8080"
        upstream = "web"

        [[upstream]]
        name = "web"
        [[upstream.server]]
        addr = "127.0.0.1:9001"
        [[upstream.server]]
        addr = "127.0.0.1:9002"
        weight = 3
        max_fails = 2
        fail_timeout = "30s"
    "#;

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config should have been rejected"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_minimal_config_with_nginx_defaults() {
        let c = Config::parse(BASE).unwrap();
        let up = c.upstream_named("web").unwrap();
        assert_eq!(up.algorithm, Algorithm::RoundRobin);
        assert_eq!(up.servers[0].weight, 1);
        assert_eq!(up.servers[0].max_fails, 1);
        assert_eq!(up.servers[0].fail_timeout, Duration::from_secs(10));
        assert_eq!(up.servers[1].weight, 3);
        assert_eq!(up.servers[1].max_fails, 2);
        assert_eq!(up.servers[1].fail_timeout, Duration::from_secs(30));
        assert_eq!(c.listeners[0].mode, Mode::Http);
        assert_eq!(c.listeners[0].name, "listener0");
    }

    #[test]
    fn client_timeouts_parse_with_nginx_defaults() {
        let c = Config::parse(BASE).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.client_body_timeout, Duration::from_secs(60));
        assert_eq!(l.send_timeout, Duration::from_secs(60));
        assert_eq!(l.idle_timeout, Duration::from_secs(75));
        let text = BASE.replace(
            "upstream = \"web\"\n",
            "upstream = \"web\"\nclient_body_timeout = \"1500ms\"\nsend_timeout = 3\n",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.listeners[0].client_body_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(c.listeners[0].send_timeout, Duration::from_secs(3));
        let zero = BASE.replace(
            "upstream = \"web\"\n",
            "upstream = \"web\"\nsend_timeout = \"0s\"\n",
        );
        assert!(err(&zero).starts_with("listener \"listener0\".send_timeout: "));
        let tcp = BASE.replace(
            "upstream = \"web\"\n",
            "upstream = \"web\"\nmode = \"tcp\"\nclient_body_timeout = \"5s\"\n",
        );
        let e = err(&tcp);
        assert!(
            e.starts_with("listener \"listener0\".client_body_timeout: "),
            "{e}"
        );
    }

    #[test]
    fn zero_weight_error_names_key_and_fix() {
        let text = BASE.replace("weight = 3", "weight = 0");
        assert_eq!(
            err(&text),
            "upstream \"web\".server[1].weight: 0 is invalid; use a positive integer up to 1000 (nginx default 1)"
        );
    }

    #[test]
    fn unknown_upstream_reference_is_rejected() {
        let text = BASE.replace("upstream = \"web\"", "upstream = \"api\"");
        let e = err(&text);
        assert!(
            e.starts_with("listener \"listener0\".upstream: \"api\" is not defined"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_key() {
        let text = BASE.replace("\"30s\"", "\"thirty\"");
        let e = err(&text);
        assert!(
            e.starts_with("upstream \"web\".server[1].fail_timeout: \"thirty\" is not a duration"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = BASE.replace("max_fails = 2", "max_fail = 2");
        let e = err(&text);
        assert!(e.contains("unknown field `max_fail`"), "{e}");
    }

    #[test]
    fn backup_with_ip_hash_is_rejected_like_nginx() {
        let text = BASE
            .replace("name = \"web\"", "name = \"web\"\nalgorithm = \"ip_hash\"")
            .replace("weight = 3", "weight = 3\nbackup = true");
        let e = err(&text);
        assert!(e.starts_with("upstream \"web\".server[1].backup:"), "{e}");
    }

    #[test]
    fn health_check_status_ranges() {
        let text = format!(
            "{BASE}\n[upstream.health_check]\ntype = \"http\"\npath = \"/ping\"\nexpect_status = [200, \"300-302\"]\nrise = 3\n"
        );
        let c = Config::parse(&text).unwrap();
        let hc = c.upstreams[0].health_check.as_ref().unwrap();
        assert_eq!(hc.rise, 3);
        assert_eq!(hc.fall, 3);
        assert!(hc.kind.status_ok(200));
        assert!(hc.kind.status_ok(301));
        assert!(!hc.kind.status_ok(204));
        let bad = text.replace("\"300-302\"", "\"302-300\"");
        assert!(err(&bad).starts_with("upstream \"web\".health_check.expect_status[1]:"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn vrrp_tables_are_validated_by_the_vrrp_rules() {
        let ok = format!(
            "{BASE}\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nvirtual_ips = [\"10.0.0.100/24\"]\n"
        );
        let c = Config::parse(&ok).unwrap();
        let v = c.vrrp_config().unwrap().expect("vrrp instances");
        assert_eq!(v.instances.len(), 1);
        assert_eq!(v.instances[0].vrid, 51);
        assert_eq!(v.instances[0].priority, 150);
        assert!(Config::parse(BASE)
            .unwrap()
            .vrrp_config()
            .unwrap()
            .is_none());

        let bad = ok.replace("vrid = 51", "vrid = 300");
        let e = err(&bad);
        assert!(e.starts_with("vrrp[0].vrid: "), "{e}");
        // a single table instead of an array of tables is a syntax error naming the key
        let single = format!("{BASE}\n[vrrp]\ninterface = \"eth0\"\n");
        assert!(err(&single).contains("vrrp"), "{}", err(&single));
    }

    #[test]
    fn duplicate_listen_address_is_rejected() {
        let text = format!(
            "{BASE}\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"web\"\n"
        );
        assert!(err(&text).starts_with("listener \"b\".listen: 127.0.0.1:8080 is already used"));
    }
}
