//! Checking `[[vrrp]]` tables: every problem is collected, each as a
//! `"key: message"` line naming `vrrp[i].key` and the fix.

use std::net::SocketAddr;
use std::time::Duration;

use super::{
    parse_vip, secs, CheckKind, Config, ConfigError, Errs, InstanceConfig, Track, TrackConfig, Vip,
    VrrpConfig, VrrpFile,
};
use crate::packet::{Auth, Version};
use crate::script_security::{check_command, ScriptRunner, ScriptUser};

/// Validate everything, collecting all errors.
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
    let instances: Vec<InstanceConfig> = file
        .vrrp
        .iter()
        .enumerate()
        .map(|(i, c)| instance(i, c, &mut errs))
        .collect();
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

fn instance(i: usize, c: &VrrpConfig, errs: &mut Errs) -> InstanceConfig {
    let k = |f: &str| format!("vrrp[{i}].{f}");
    let (version, advert_int, auth) = header(i, c, errs);
    let (vips, ipv6) = addresses(i, c, version, errs);
    let preempt_delay = secs(&k("preempt_delay"), c.preempt_delay, 0.0, errs);
    let garp_delay = secs(&k("garp_delay"), c.garp_delay, 0.0, errs);
    let garp_refresh = secs(&k("garp_refresh"), c.garp_refresh, 0.0, errs);
    if c.garp_repeat > 100 {
        errs.push(format!(
            "{}: {} is too many; use 1..=100",
            k("garp_repeat"),
            c.garp_repeat
        ));
    }
    let tracks = (c.track.iter().enumerate())
        .filter_map(|(j, t)| track(i, j, t, c.priority, errs))
        .collect();
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
        check_scripts(i, c, errs);
    }
    let vrid = c.vrid.clamp(1, 255) as u8;
    InstanceConfig {
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
    }
}

/// Version, the identity checks, the advert interval and authentication.
fn header(i: usize, c: &VrrpConfig, errs: &mut Errs) -> (Version, Duration, Auth) {
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
    let advert_int = secs(&k("advert_int"), c.advert_int, 0.01, errs);
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
    (version, advert_int, auth)
}

/// The virtual addresses (one family) and the unicast/multicast sources.
fn addresses(i: usize, c: &VrrpConfig, version: Version, errs: &mut Errs) -> (Vec<Vip>, bool) {
    let k = |f: &str| format!("vrrp[{i}].{f}");
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
    (vips, ipv6)
}

/// One `[[vrrp.track]]`; `None` when it names no single check.
fn track(i: usize, j: usize, t: &TrackConfig, priority: i64, errs: &mut Errs) -> Option<Track> {
    let tk = |f: &str| format!("vrrp[{i}].track[{j}].{f}");
    let mut kinds = check_kinds(t);
    if kinds.len() != 1 {
        errs.push(format!(
            "vrrp[{i}].track[{j}]: set exactly one of script, tcp, http, process"
        ));
        return None;
    }
    let kind = kinds.remove(0);
    if let CheckKind::Http { host_port, .. } = &kind {
        if host_port.is_empty() {
            errs.push(format!(
                "{}: only http:// URLs are supported (e.g. \"http://127.0.0.1:80/health\")",
                tk("http")
            ));
        }
    }
    let interval = secs(&tk("interval"), t.interval, 0.01, errs);
    let timeout = secs(&tk("timeout"), t.timeout.unwrap_or(t.interval), 0.01, errs);
    check_weight_fall_rise(i, j, t, priority, errs);
    let name = t.name.clone().unwrap_or_else(|| default_name(&kind));
    Some(Track {
        name,
        kind,
        interval,
        timeout,
        weight: t.weight.clamp(-253, 253) as i32,
        fall: t.fall.max(1),
        rise: t.rise.max(1),
    })
}

/// Every check the table names (one is right).
fn check_kinds(t: &TrackConfig) -> Vec<CheckKind> {
    [
        t.script.clone().map(CheckKind::Script),
        t.tcp.clone().map(CheckKind::Tcp),
        t.http.as_deref().map(http_check),
        t.process.clone().map(CheckKind::Process),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `http://host[:port][/path]`, port 80 and path `/` by default; anything
/// else gets an empty `host_port`, which [`track`] refuses.
fn http_check(url: &str) -> CheckKind {
    let Some(rest) = url.strip_prefix("http://") else {
        return CheckKind::Http {
            host_port: String::new(),
            path: url.to_string(),
        };
    };
    let (hp, path) = match rest.find('/') {
        Some(p) => (rest[..p].to_string(), rest[p..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let host_port = if hp.contains(':') {
        hp
    } else {
        format!("{hp}:80")
    };
    CheckKind::Http { host_port, path }
}

fn check_weight_fall_rise(i: usize, j: usize, t: &TrackConfig, priority: i64, errs: &mut Errs) {
    let tk = |f: &str| format!("vrrp[{i}].track[{j}].{f}");
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
    if priority == 255 && t.weight != 0 {
        errs.push(format!(
            "{}: the address owner (priority 255) ignores weights; use priority 254 or weight 0",
            tk("weight")
        ));
    }
}

/// A track without a `name` is called after its check.
fn default_name(kind: &CheckKind) -> String {
    match kind {
        CheckKind::Script(s) => s.clone(),
        CheckKind::Tcp(a) => format!("tcp:{a}"),
        CheckKind::Http { host_port, path } => format!("http:{host_port}{path}"),
        CheckKind::Process(p) => format!("process:{p}"),
    }
}

/// With `script_security`, every script and notify command must be safe to run.
fn check_scripts(i: usize, c: &VrrpConfig, errs: &mut Errs) {
    let k = |f: &str| format!("vrrp[{i}].{f}");
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

#[cfg(test)]
mod track_tests {
    use super::{default_name, http_check, CheckKind};

    #[test]
    fn http_urls_default_to_port_80_and_root_path() {
        let hc = |u| match http_check(u) {
            CheckKind::Http { host_port, path } => (host_port, path),
            other => panic!("{other:?}"),
        };
        assert_eq!(hc("http://10.0.0.1"), ("10.0.0.1:80".into(), "/".into()));
        assert_eq!(
            hc("http://h:8080/health?x=1"),
            ("h:8080".into(), "/health?x=1".into())
        );
        // refused later, by its empty host_port
        assert_eq!(hc("https://h/"), (String::new(), "https://h/".into()));
        assert_eq!(default_name(&http_check("http://h/x")), "http:h:80/x");
    }
}
