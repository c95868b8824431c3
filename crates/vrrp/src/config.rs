//! TOML configuration: `[[vrrp]]` instances, validated into [`InstanceConfig`]s
//! with errors that name the key and the fix.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::machine::MachineConfig;
use crate::packet::{Auth, Version};
use crate::script_security::ScriptRunner;

/// The whole file: an optional admin address and the instances.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpFile {
    /// `127.0.0.1:9180`: serves `/metrics` (Prometheus) and `/status` (JSON).
    pub admin: Option<String>,
    #[serde(default)]
    pub vrrp: Vec<VrrpConfig>,
}

/// One `[[vrrp]]` entry, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpConfig {
    /// Instance name (logs, notify, metrics). Default `VI_<vrid>`.
    pub name: Option<String>,
    pub interface: String,
    pub vrid: i64,
    #[serde(default = "d_priority")]
    pub priority: i64,
    /// Seconds; v2 needs whole seconds, v3 accepts steps of 0.01.
    #[serde(default = "d_one")]
    pub advert_int: f64,
    #[serde(default = "d_version")]
    pub version: u8,
    /// `"192.168.1.100/24"`, `"10.0.0.5"` (→ /32), `"2001:db8::5/64"` (v3 only).
    pub virtual_ips: Vec<String>,
    pub unicast_src: Option<IpAddr>,
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// Source address in multicast mode (keepalived `mcast_src_ip`); default: the interface's first address.
    pub mcast_src: Option<IpAddr>,
    #[serde(default)]
    pub nopreempt: bool,
    /// Seconds.
    #[serde(default)]
    pub preempt_delay: f64,
    /// v2 simple password (at most 8 bytes are used, as in keepalived).
    pub auth_pass: Option<String>,
    /// Interfaces whose link going down puts the instance in FAULT (its own interface always does).
    #[serde(default)]
    pub track_interfaces: Vec<String>,
    #[serde(default)]
    pub track: Vec<TrackConfig>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    pub notify_stop: Option<String>,
    /// Called as `CMD INSTANCE <name> <state> <priority>` on every transition.
    pub notify: Option<String>,
    #[serde(default = "d_garp_repeat")]
    pub garp_repeat: u32,
    /// Seconds until the second gratuitous ARP burst (0 = none).
    #[serde(default = "d_garp_delay")]
    pub garp_delay: f64,
    /// Seconds between periodic gratuitous ARPs while master (0 = off).
    #[serde(default)]
    pub garp_refresh: f64,
    /// Accept adverts whose address list differs from `virtual_ips`
    /// (keepalived `vrrp_skip_check_adv_addr`); by default they are dropped.
    #[serde(default)]
    pub skip_check_adv_addr: bool,
    /// keepalived `enable_script_security`: refuse track/notify scripts that a
    /// non-root user could modify (file or any directory above it).
    #[serde(default = "d_true")]
    pub script_security: bool,
    /// Run track and notify scripts as `"user"` or `"user:group"` (keepalived `script_user`); default root.
    pub script_user: Option<String>,
}

/// A tracked health check: exactly one of `script`, `tcp`, `http`, `process`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackConfig {
    pub name: Option<String>,
    /// Shell command; exit 0 = success. A command that cannot run counts as failed.
    pub script: Option<String>,
    /// `host:port`: success when a TCP connection opens.
    pub tcp: Option<String>,
    /// `http://host:port/path`: success on a 2xx/3xx status.
    pub http: Option<String>,
    /// Process name (as in /proc/PID/comm): success when one is running.
    pub process: Option<String>,
    #[serde(default = "d_one")]
    pub interval: f64,
    pub timeout: Option<f64>,
    /// 0: failure means FAULT. >0: added while succeeding. <0: added while failing.
    #[serde(default)]
    pub weight: i64,
    #[serde(default = "d_one_u")]
    pub fall: u32,
    #[serde(default = "d_one_u")]
    pub rise: u32,
}

fn d_priority() -> i64 {
    100
}
fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
}
fn d_one_u() -> u32 {
    1
}
fn d_version() -> u8 {
    2
}
fn d_garp_repeat() -> u32 {
    5
}
fn d_garp_delay() -> f64 {
    5.0
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    Script(String),
    Tcp(String),
    Http { host_port: String, path: String },
    Process(String),
}

/// A validated track entry.
#[derive(Debug, Clone)]
pub struct Track {
    pub name: String,
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: i32,
    pub fall: u32,
    pub rise: u32,
}

/// A virtual address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vip {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A validated instance.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub name: String,
    pub interface: String,
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    pub advert_int: Duration,
    pub ipv6: bool,
    pub vips: Vec<Vip>,
    pub unicast_src: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    pub mcast_src: Option<IpAddr>,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub auth: Auth,
    pub track_interfaces: Vec<String>,
    pub tracks: Vec<Track>,
    pub notify_master: Option<String>,
    pub notify_backup: Option<String>,
    pub notify_fault: Option<String>,
    pub notify_stop: Option<String>,
    pub notify: Option<String>,
    pub garp_repeat: u32,
    pub garp_delay: Duration,
    pub garp_refresh: Option<Duration>,
    pub skip_check_adv_addr: bool,
    /// How track and notify scripts are run (`script_user`, `script_security`).
    pub scripts: ScriptRunner,
}

impl InstanceConfig {
    /// The state machine's view, given the primary (source) address found on the interface.
    pub fn machine_config(&self, primary_ip: IpAddr) -> MachineConfig {
        let mut m = MachineConfig::new(
            self.version,
            self.vrid,
            self.priority,
            self.advert_int,
            primary_ip,
        );
        m.preempt = self.preempt;
        m.preempt_delay = self.preempt_delay;
        m.auth = self.auth;
        m.vips = self.vips.iter().map(|v| v.addr).collect();
        m.check_ttl = self.unicast_peers.is_empty();
        m.skip_check_adv_addr = self.skip_check_adv_addr;
        m.garp_repeat = self.garp_repeat;
        m.garp_delay = self.garp_delay;
        m.garp_refresh = self.garp_refresh;
        m
    }
}

/// Validated file.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: Option<SocketAddr>,
    pub instances: Vec<InstanceConfig>,
}

mod validate;

pub use syncd_ops::config::ConfigError;
use syncd_ops::config::Problems;
pub use validate::validate;

/// Read and validate a config file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    load_with_text(path).map(|(c, _)| c)
}

/// [`load`], with the text it was made from (what SIGHUP compares the
/// file with).
pub fn load_with_text(path: &std::path::Path) -> Result<(Config, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    let c = parse(&text).map_err(|e| e.in_file(path))?;
    Ok((c, text))
}

/// Parse and validate TOML text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let file: VrrpFile = toml::from_str(text)
        .map_err(|e| ConfigError::syntax(text, e.message(), e.span().map(|s| s.start)))?;
    validate(&file)
}

/// Problems collected as `"key: message"` lines, the form every check
/// below writes.
#[derive(Default)]
struct Errs(Problems);

impl Errs {
    fn push(&mut self, line: String) {
        self.0.push_line(&line);
    }
}

fn secs(key: &str, v: f64, min: f64, errs: &mut Errs) -> Duration {
    if !v.is_finite() || v < min || v > 86_400.0 {
        errs.push(format!(
            "{key}: {v} is out of range; use seconds between {min} and 86400"
        ));
        return Duration::from_secs(1);
    }
    Duration::from_secs_f64(v)
}

/// Parse `"addr"` or `"addr/prefix"`.
pub fn parse_vip(s: &str) -> Result<Vip, String> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix {p:?} must be 0..={max}")),
        },
    };
    Ok(Vip { addr, prefix })
}

/// Validate everything, collecting all errors.
/// `[[vrrp]]` tables embedded in another program's config (syncd's
/// `--role auto`, syncd-proxy): `None` when there are none; otherwise every
/// problem, each line naming `vrrp[i].key` and the fix.
pub fn validate_tables(tables: &[VrrpConfig]) -> Result<Option<Config>, ConfigError> {
    if tables.is_empty() {
        return Ok(None);
    }
    let file = VrrpFile {
        admin: None,
        vrrp: tables.to_vec(),
    };
    validate(&file).map(Some)
}

#[cfg(test)]
mod tests;
