//! TOML configuration: `[[vrrp]]` instances, validated into [`InstanceConfig`]s
//! with errors that name the key and the fix.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::machine::MachineConfig;
use crate::packet::{Auth, Version};
use crate::script_security::{check_command, ScriptRunner, ScriptUser};

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

pub use syncd_ops::config::ConfigError;
use syncd_ops::config::Problems;

/// Read and validate a config file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    parse(&text).map_err(|e| e.in_file(path))
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

pub fn validate(file: &VrrpFile) -> Result<Config, ConfigError> {
    let mut errs = Errs::default();
    let admin = match &file.admin {
        None => None,
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.push(format!(
                    "admin: {a:?} is not an address:port; write e.g. \"127.0.0.1:9180\""
                ));
                None
            }
        },
    };
    if file.vrrp.is_empty() {
        errs.push(
            "vrrp: no [[vrrp]] instance is configured; add at least one [[vrrp]] table".into(),
        );
    }
    let mut instances = Vec::new();
    for (i, c) in file.vrrp.iter().enumerate() {
        let k = |f: &str| format!("vrrp[{i}].{f}");
        let version = match c.version {
            2 => Version::V2,
            3 => Version::V3,
            v => {
                errs.push(format!(
                    "{}: {v} is not a VRRP version; set 2 (RFC 3768) or 3 (RFC 5798)",
                    k("version")
                ));
                Version::V3
            }
        };
        if !(1..=255).contains(&c.vrid) {
            errs.push(format!(
                "{}: {} is out of range 1..=255; pick the same VRID on both nodes",
                k("vrid"),
                c.vrid
            ));
        }
        if !(1..=255).contains(&c.priority) {
            errs.push(format!(
                "{}: {} is out of range 1..=255; set a value between 1 and 254, or 255 for the address owner",
                k("priority"),
                c.priority
            ));
        }
        if c.interface.is_empty() || c.interface.len() > 15 || c.interface.contains('/') {
            errs.push(format!(
                "{}: {:?} is not an interface name (1..15 chars)",
                k("interface"),
                c.interface
            ));
        }
        let advert_int = secs(&k("advert_int"), c.advert_int, 0.01, &mut errs);
        match version {
            Version::V2 => {
                if c.advert_int.fract() != 0.0 || c.advert_int > 255.0 {
                    errs.push(format!(
                        "{}: {} is not whole seconds 1..=255; VRRPv2 carries seconds (use version = 3 for sub-second intervals)",
                        k("advert_int"),
                        c.advert_int
                    ));
                }
            }
            Version::V3 => {
                let cs = (c.advert_int * 100.0).round();
                if (c.advert_int * 100.0 - cs).abs() > 1e-6 || cs > 4095.0 {
                    errs.push(format!(
                        "{}: {} must be a multiple of 0.01 s up to 40.95 s in VRRPv3",
                        k("advert_int"),
                        c.advert_int
                    ));
                }
            }
        }
        let auth = match (&c.auth_pass, version) {
            (None, _) => Auth::None,
            (Some(p), Version::V2) => {
                if p.is_empty() || p.len() > 8 {
                    errs.push(format!(
                        "{}: must be 1..=8 bytes (keepalived truncates longer ones; shorten it)",
                        k("auth_pass")
                    ));
                }
                Auth::simple(p)
            }
            (Some(_), Version::V3) => {
                errs.push(format!(
                    "{}: VRRPv3 has no authentication; remove auth_pass or set version = 2",
                    k("auth_pass")
                ));
                Auth::None
            }
        };
        let mut vips = Vec::new();
        for (j, s) in c.virtual_ips.iter().enumerate() {
            match parse_vip(s) {
                Ok(v) => vips.push(v),
                Err(e) => errs.push(format!(
                    "{}[{j}]: {e}; write \"192.168.1.100/24\" or \"2001:db8::1/64\"",
                    k("virtual_ips")
                )),
            }
        }
        if c.virtual_ips.is_empty() {
            errs.push(format!(
                "{}: is empty; list at least one address",
                k("virtual_ips")
            ));
        }
        let ipv6 = vips.first().is_some_and(|v| v.addr.is_ipv6());
        if vips.iter().any(|v| v.addr.is_ipv6() != ipv6) {
            errs.push(format!(
                "{}: mixes IPv4 and IPv6; use one [[vrrp]] instance per family",
                k("virtual_ips")
            ));
        }
        if ipv6 && version == Version::V2 {
            errs.push(format!(
                "{}: IPv6 needs VRRPv3; set version = 3",
                k("version")
            ));
        }
        if let Some(s) = c.unicast_src {
            if s.is_ipv6() != ipv6 {
                errs.push(format!(
                    "{}: {s} is not of the virtual addresses' family",
                    k("unicast_src")
                ));
            }
        }
        for p in &c.unicast_peers {
            if p.is_ipv6() != ipv6 {
                errs.push(format!(
                    "{}: {p} is not of the virtual addresses' family",
                    k("unicast_peers")
                ));
            }
            if p.is_multicast() {
                errs.push(format!(
                    "{}: {p} is multicast; list the peers' own addresses",
                    k("unicast_peers")
                ));
            }
        }
        if let Some(s) = c.mcast_src {
            if s.is_ipv6() != ipv6 {
                errs.push(format!(
                    "{}: {s} is not of the virtual addresses' family",
                    k("mcast_src")
                ));
            }
            if !c.unicast_peers.is_empty() {
                errs.push(format!(
                    "{}: is for multicast mode; with unicast_peers set unicast_src instead",
                    k("mcast_src")
                ));
            }
        }
        if c.unicast_src.is_some() && c.unicast_peers.is_empty() {
            errs.push(format!("{}: unicast_src is set but unicast_peers is empty; list the peers (there is no fallback to multicast)", k("unicast_peers")));
        }
        let preempt_delay = secs(&k("preempt_delay"), c.preempt_delay, 0.0, &mut errs);
        let garp_delay = secs(&k("garp_delay"), c.garp_delay, 0.0, &mut errs);
        let garp_refresh = secs(&k("garp_refresh"), c.garp_refresh, 0.0, &mut errs);
        if c.garp_repeat > 100 {
            errs.push(format!(
                "{}: {} is too many; use 1..=100",
                k("garp_repeat"),
                c.garp_repeat
            ));
        }
        let mut tracks = Vec::new();
        for (j, t) in c.track.iter().enumerate() {
            let tk = |f: &str| format!("vrrp[{i}].track[{j}].{f}");
            let kinds: Vec<CheckKind> = [
                t.script.clone().map(CheckKind::Script),
                t.tcp.clone().map(CheckKind::Tcp),
                t.http.as_deref().map(|u| match u.strip_prefix("http://") {
                    Some(rest) => {
                        let (hp, path) = match rest.find('/') {
                            Some(p) => (rest[..p].to_string(), rest[p..].to_string()),
                            None => (rest.to_string(), "/".to_string()),
                        };
                        let hp = if hp.contains(':') {
                            hp
                        } else {
                            format!("{hp}:80")
                        };
                        CheckKind::Http {
                            host_port: hp,
                            path,
                        }
                    }
                    None => CheckKind::Http {
                        host_port: String::new(),
                        path: u.to_string(),
                    },
                }),
                t.process.clone().map(CheckKind::Process),
            ]
            .into_iter()
            .flatten()
            .collect();
            if kinds.len() != 1 {
                errs.push(format!(
                    "vrrp[{i}].track[{j}]: set exactly one of script, tcp, http, process"
                ));
                continue;
            }
            let kind = kinds[0].clone();
            if let CheckKind::Http { host_port, .. } = &kind {
                if host_port.is_empty() {
                    errs.push(format!(
                        "{}: only http:// URLs are supported (e.g. \"http://127.0.0.1:80/health\")",
                        tk("http")
                    ));
                }
            }
            let interval = secs(&tk("interval"), t.interval, 0.01, &mut errs);
            let timeout = secs(
                &tk("timeout"),
                t.timeout.unwrap_or(t.interval),
                0.01,
                &mut errs,
            );
            if !(-253..=253).contains(&t.weight) {
                errs.push(format!(
                    "{}: {} is out of range -253..=253",
                    tk("weight"),
                    t.weight
                ));
            }
            if t.fall == 0 || t.rise == 0 {
                errs.push(format!(
                    "vrrp[{i}].track[{j}]: fall and rise must be at least 1"
                ));
            }
            if c.priority == 255 && t.weight != 0 {
                errs.push(format!("{}: the address owner (priority 255) ignores weights; use priority 254 or weight 0", tk("weight")));
            }
            let name = t.name.clone().unwrap_or_else(|| match &kind {
                CheckKind::Script(s) => s.clone(),
                CheckKind::Tcp(a) => format!("tcp:{a}"),
                CheckKind::Http { host_port, path } => format!("http:{host_port}{path}"),
                CheckKind::Process(p) => format!("process:{p}"),
            });
            tracks.push(Track {
                name,
                kind,
                interval,
                timeout,
                weight: t.weight.clamp(-253, 253) as i32,
                fall: t.fall.max(1),
                rise: t.rise.max(1),
            });
        }
        let user = c
            .script_user
            .as_deref()
            .and_then(|u| match ScriptUser::resolve(u) {
                Ok(u) => Some(u),
                Err(e) => {
                    errs.push(format!(
                        "{}: {e}; create it or remove script_user (scripts then run as root)",
                        k("script_user")
                    ));
                    None
                }
            });
        if c.script_security {
            let mut scripts: Vec<(String, &String)> = c
                .track
                .iter()
                .enumerate()
                .filter_map(|(j, t)| {
                    t.script
                        .as_ref()
                        .map(|s| (format!("vrrp[{i}].track[{j}].script"), s))
                })
                .collect();
            for (key, v) in [
                ("notify_master", &c.notify_master),
                ("notify_backup", &c.notify_backup),
                ("notify_fault", &c.notify_fault),
                ("notify_stop", &c.notify_stop),
                ("notify", &c.notify),
            ] {
                if let Some(v) = v {
                    scripts.push((k(key), v));
                }
            }
            for (key, cmd) in scripts {
                if let Err(e) = check_command(cmd) {
                    errs.push(format!(
                        "{key}: {cmd:?} is not safe to run: {e}. A non-root user could change what runs; make the program and every directory above it owned by root and not writable by group or others (chown root:root; chmod go-w), or set script_security = false"
                    ));
                }
            }
        }
        let vrid = c.vrid.clamp(1, 255) as u8;
        instances.push(InstanceConfig {
            name: c.name.clone().unwrap_or_else(|| format!("VI_{vrid}")),
            interface: c.interface.clone(),
            version,
            vrid,
            priority: c.priority.clamp(1, 255) as u8,
            advert_int,
            ipv6,
            vips,
            unicast_src: c.unicast_src,
            unicast_peers: c.unicast_peers.clone(),
            mcast_src: c.mcast_src,
            preempt: !c.nopreempt,
            preempt_delay,
            auth,
            track_interfaces: c.track_interfaces.clone(),
            tracks,
            notify_master: c.notify_master.clone(),
            notify_backup: c.notify_backup.clone(),
            notify_fault: c.notify_fault.clone(),
            notify_stop: c.notify_stop.clone(),
            notify: c.notify.clone(),
            garp_repeat: c.garp_repeat,
            garp_delay,
            garp_refresh: (!garp_refresh.is_zero()).then_some(garp_refresh),
            skip_check_adv_addr: c.skip_check_adv_addr,
            scripts: ScriptRunner {
                user,
                secure: c.script_security,
            },
        });
    }
    for (a, x) in instances.iter().enumerate() {
        for y in &instances[a + 1..] {
            if x.interface == y.interface && x.vrid == y.vrid && x.ipv6 == y.ipv6 {
                errs.push(format!(
                    "vrrp: instances {:?} and {:?} both use VRID {} on {}; give each its own vrid",
                    x.name, y.name, x.vrid, x.interface
                ));
            }
            if x.name == y.name {
                errs.push(format!(
                    "vrrp: two instances are named {:?}; names must be unique",
                    x.name
                ));
            }
        }
    }
    errs.0.finish()?;
    Ok(Config { admin, instances })
}

#[cfg(test)]
mod tests;
