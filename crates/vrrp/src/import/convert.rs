//! The mapping itself: global blocks first (scripts, `global_defs`), then
//! one `[[vrrp]]` table per `vrrp_instance`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{parse, q, Imported, Node};

#[derive(Debug, Clone, Default)]
struct Script {
    script: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    weight: Option<i64>,
    fall: Option<String>,
    rise: Option<String>,
}

/// What the top-level blocks say for every instance.
#[derive(Debug, Default)]
struct Globals {
    scripts: BTreeMap<String, Script>,
    version: Option<String>,
    skip_check_adv_addr: bool,
    script_security: bool,
    script_user: Option<String>,
}

/// One `vrrp_instance` as read, before it is written out.
struct Instance<'a> {
    name: String,
    line: usize,
    /// Plain `key = value` pairs in the order given (duplicates kept, see [`write_kv`]).
    kv: Vec<(String, String)>,
    vips: Vec<String>,
    peers: Vec<String>,
    /// Script name, its block, the instance's `weight` override.
    tracks: Vec<(String, &'a Script, Option<i64>)>,
    track_ifs: Vec<String>,
    version: Option<String>,
    unicast_src: Option<String>,
    mcast_src: Option<String>,
    interface: Option<String>,
    skip_check_adv_addr: bool,
}

/// Warnings and errors, in the order they are found.
#[derive(Default)]
struct Notes {
    warnings: Vec<String>,
    errors: Vec<String>,
}

/// A finite number written as TOML: an integer when it is one, else a
/// float (keepalived takes `01`, `5.` or `.5`, which TOML does not).
pub(super) fn toml_num(s: &str) -> Option<String> {
    let v = s.parse::<f64>().ok().filter(|v| v.is_finite())?;
    Some(if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    })
}

/// Convert keepalived.conf text.
pub fn convert(text: &str) -> Imported {
    let top = parse(text);
    let mut notes = Notes::default();
    let globals = read_globals(&top, &mut notes.warnings);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Converted from keepalived.conf by `syncd vrrp --import-keepalived`."
    );
    let _ = writeln!(out, "# Review the warnings printed on stderr before use.");
    let mut instances = 0;
    for n in top
        .iter()
        .filter(|n| n.key() == "vrrp_instance" && n.has_block)
    {
        instances += 1;
        let inst = read_instance(n, &globals, &mut notes);
        write_instance(&mut out, inst, &globals, &mut notes.warnings);
    }
    Imported {
        toml: out,
        warnings: notes.warnings,
        errors: notes.errors,
        instances,
    }
}

/// The blocks outside `vrrp_instance`: scripts and `global_defs` are kept,
/// what syncd-vrrp does not do is said.
fn read_globals(top: &[Node], warnings: &mut Vec<String>) -> Globals {
    let mut g = Globals::default();
    for n in top {
        match n.key() {
            "vrrp_script" if n.has_block => {
                let name = n.arg(1).unwrap_or("").to_string();
                let s = read_script(n, &name, warnings);
                g.scripts.insert(name, s);
            }
            "global_defs" => read_global_defs(n, &mut g, warnings),
            "vrrp_instance" | "static_ipaddress" | "static_routes" => {}
            "virtual_server" | "virtual_server_group" => warnings.push(format!(
                "line {}: `{}` (LVS) is not mapped; see syncd-proxy for load balancing",
                n.line,
                n.key()
            )),
            "vrrp_sync_group" => warnings.push(format!(
                "line {}: vrrp_sync_group {} is not mapped: each instance fails over on its own",
                n.line,
                n.arg(1).unwrap_or("")
            )),
            _ => {}
        }
    }
    g
}

fn read_script(n: &Node, name: &str, warnings: &mut Vec<String>) -> Script {
    let mut s = Script::default();
    for c in &n.children {
        let v = c.arg(1).map(str::to_string);
        match c.key() {
            "script" => s.script = Some(c.words[1..].join(" ")),
            "interval" => s.interval = v,
            "timeout" => s.timeout = v,
            "weight" => {
                s.weight = v.as_deref().and_then(|w| w.parse().ok());
                if c.arg(2) == Some("reverse") {
                    warnings.push(format!("line {}: vrrp_script {name}: `weight ... reverse` is not mapped; invert the script's exit status instead", c.line));
                }
            }
            "fall" => s.fall = v,
            "rise" => s.rise = v,
            other => warnings.push(format!(
                "line {}: vrrp_script {name}: `{other}` is not mapped",
                c.line
            )),
        }
    }
    s
}

fn read_global_defs(n: &Node, g: &mut Globals, warnings: &mut Vec<String>) {
    for c in &n.children {
        match c.key() {
            "vrrp_version" => g.version = c.arg(1).map(str::to_string),
            "vrrp_skip_check_adv_addr" => g.skip_check_adv_addr = true,
            "router_id"
            | "notification_email"
            | "notification_email_from"
            | "smtp_server"
            | "smtp_connect_timeout" => {}
            "enable_script_security" => g.script_security = true,
            "script_user" => match (c.arg(1), c.arg(2)) {
                (Some(u), Some(g2)) => g.script_user = Some(format!("{u}:{g2}")),
                (Some(u), None) => g.script_user = Some(u.to_string()),
                _ => warnings.push(format!(
                    "line {}: global_defs `script_user` needs a user name",
                    c.line
                )),
            },
            other => warnings.push(format!(
                "line {}: global_defs `{other}` is not mapped",
                c.line
            )),
        }
    }
}

impl Instance<'_> {
    /// A note about this instance, with where it starts.
    fn note(&self, msg: impl std::fmt::Display) -> String {
        format!("line {}: vrrp_instance {}: {msg}", self.line, self.name)
    }

    /// `key = N` when the statement's first argument is a number.
    fn num(&mut self, key: &str, c: &Node, warnings: &mut Vec<String>) {
        match c.arg(1).and_then(toml_num) {
            Some(v) => self.kv.push((key.into(), v)),
            None => warnings.push(self.note(format_args!("`{}` needs a number", c.key()))),
        }
    }
}

fn read_instance<'g>(n: &Node, g: &'g Globals, notes: &mut Notes) -> Instance<'g> {
    let name = n.arg(1).unwrap_or("VI").to_string();
    let mut i = Instance {
        kv: vec![("name".into(), q(&name))],
        name,
        line: n.line,
        vips: Vec::new(),
        peers: Vec::new(),
        tracks: Vec::new(),
        track_ifs: Vec::new(),
        version: g.version.clone(),
        unicast_src: None,
        mcast_src: None,
        interface: None,
        skip_check_adv_addr: g.skip_check_adv_addr,
    };
    for c in &n.children {
        read_statement(&mut i, c, g, notes);
    }
    i
}

/// One statement inside `vrrp_instance`.
fn read_statement<'g>(i: &mut Instance<'g>, c: &Node, g: &'g Globals, notes: &mut Notes) {
    let a1 = c.arg(1).map(str::to_string);
    let warnings = &mut notes.warnings;
    match c.key() {
        "state" => {
            if a1.as_deref() == Some("MASTER") {
                warnings.push(i.note("`state MASTER` is only a start-up hint in keepalived; syncd starts as BACKUP and elects by priority (use priority 255 for an address owner)"));
            }
        }
        "interface" => i.interface = a1,
        "virtual_router_id" => i.num("vrid", c, warnings),
        "priority" => i.num("priority", c, warnings),
        "advert_int" => i.num("advert_int", c, warnings),
        "version" => i.version = a1,
        "nopreempt" => i.kv.push(("nopreempt".into(), "true".into())),
        "skip_check_adv_addr" => i.skip_check_adv_addr = true,
        "preempt" => {}
        "preempt_delay" => i.num("preempt_delay", c, warnings),
        "garp_master_delay" => i.num("garp_delay", c, warnings),
        "garp_master_repeat" => i.num("garp_repeat", c, warnings),
        "garp_master_refresh" => i.num("garp_refresh", c, warnings),
        "authentication" => read_auth(i, c, notes),
        "virtual_ipaddress" | "virtual_ipaddress_excluded" => read_vips(i, c, warnings),
        "unicast_src_ip" => i.unicast_src = a1,
        "unicast_peer" => {
            for p in &c.children {
                i.peers.push(q(p.key()));
                if p.words.len() > 1 {
                    warnings.push(format!(
                        "line {}: unicast_peer options {:?} are not mapped",
                        p.line,
                        &p.words[1..]
                    ));
                }
            }
        }
        "mcast_src_ip" => i.mcast_src = a1,
        "track_script" => read_track_scripts(i, c, g, warnings),
        "track_interface" => {
            for t in &c.children {
                i.track_ifs.push(q(t.key()));
                if t.words.len() > 1 {
                    warnings.push(format!("line {}: track_interface {} `weight` is not mapped: a down interface means FAULT", t.line, t.key()));
                }
            }
        }
        k @ ("notify_master" | "notify_backup" | "notify_fault" | "notify_stop" | "notify") => {
            i.kv.push((k.into(), q(&c.words[1..].join(" "))));
        }
        other => warnings.push(i.note(format_args!("`{other}` is not mapped"))),
    }
}

fn read_auth(i: &mut Instance, c: &Node, notes: &mut Notes) {
    let mut ty = None;
    let mut pass = None;
    for a in &c.children {
        match a.key() {
            "auth_type" => ty = a.arg(1).map(str::to_string),
            "auth_pass" => pass = a.arg(1).map(str::to_string),
            other => notes
                .warnings
                .push(i.note(format_args!("authentication `{other}` is not mapped"))),
        }
    }
    if ty.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("AH")) {
        // Never downgrade: an AH secret sent as a cleartext PASS would leak it
        // on the wire, and the peers would not interoperate anyway.
        notes.errors.push(i.note("auth_type AH is not supported (IPsec AH, dropped by RFC 3768); refusing to convert it into a cleartext password. Switch both nodes to no authentication (firewall protocol 112 to the peer, see the README) or to auth_type PASS, then import again"));
    } else if let Some(p) = pass {
        // keepalived keeps the first 8 bytes, not characters.
        if p.len() > 8 && !p.is_char_boundary(8) {
            notes.errors.push(i.note("auth_pass: keepalived keeps its first 8 bytes, which end inside a multi-byte character (a password no TOML string can hold); set an ASCII password of at most 8 characters on both nodes, then import again"));
        } else {
            i.kv.push(("auth_pass".into(), q(&p[..p.len().min(8)])));
            if p.len() > 8 {
                notes.warnings.push(
                    i.note("auth_pass longer than 8 bytes: truncated to 8, as keepalived does"),
                );
            }
        }
    }
}

fn read_vips(i: &mut Instance, c: &Node, warnings: &mut Vec<String>) {
    if c.key() == "virtual_ipaddress_excluded" {
        warnings.push(i.note(
            "virtual_ipaddress_excluded mapped into virtual_ips (they will be carried in adverts)",
        ));
    }
    let name = &i.name;
    for v in &c.children {
        let addr = v.key();
        if crate::config::parse_vip(addr).is_err() {
            warnings.push(format!("line {}: vrrp_instance {name}: virtual address {addr:?} is not an address; skipped", v.line));
            continue;
        }
        i.vips.push(q(addr));
        let rest: Vec<&str> = v.words[1..].iter().map(|s| s.as_str()).collect();
        let interface = i.interface.as_deref();
        if let Some(k) = rest.iter().position(|w| *w == "dev") {
            if rest
                .get(k + 1)
                .map(|d| Some(*d) != interface)
                .unwrap_or(false)
            {
                warnings.push(format!("line {}: vrrp_instance {name}: {addr} on `dev {}` is not mapped: syncd adds addresses on the instance interface", v.line, rest.get(k + 1).unwrap_or(&"")));
            }
        }
        let extra: Vec<&str> = rest
            .iter()
            .copied()
            .filter(|w| *w != "dev" && Some(*w) != interface)
            .collect();
        if !extra.is_empty() && !rest.contains(&"dev") {
            warnings.push(format!(
                "line {}: vrrp_instance {name}: options {:?} of {addr} are not mapped",
                v.line, extra
            ));
        }
    }
}

fn read_track_scripts<'g>(
    i: &mut Instance<'g>,
    c: &Node,
    g: &'g Globals,
    warnings: &mut Vec<String>,
) {
    for t in &c.children {
        let sname = t.key().to_string();
        let weight_override = (t.arg(1) == Some("weight"))
            .then(|| t.arg(2).and_then(|x| x.parse::<i64>().ok()))
            .flatten();
        match g.scripts.get(&sname) {
            Some(s) => i.tracks.push((sname, s, weight_override)),
            None => warnings.push(format!(
                "line {}: vrrp_instance {}: track_script {sname} has no vrrp_script block; skipped",
                t.line, i.name
            )),
        }
    }
}

fn write_instance(out: &mut String, i: Instance, g: &Globals, warnings: &mut Vec<String>) {
    let _ = writeln!(out, "\n[[vrrp]]");
    match &i.interface {
        Some(f) => {
            let _ = writeln!(out, "interface = {}", q(f));
        }
        None => warnings.push(i.note("has no `interface`; set one")),
    }
    write_kv(out, &i, warnings);
    if i.skip_check_adv_addr {
        let _ = writeln!(out, "skip_check_adv_addr = true");
    }
    if g.script_security {
        // also syncd's default; written so the intent survives a default change
        let _ = writeln!(out, "script_security = true");
    }
    if let Some(u) = &g.script_user {
        let _ = writeln!(out, "script_user = {}", q(u));
    }
    let ver = i.version.as_deref().unwrap_or("2");
    let _ = writeln!(out, "version = {}", if ver == "3" { 3 } else { 2 });
    let _ = writeln!(out, "virtual_ips = [{}]", i.vips.join(", "));
    if i.vips.is_empty() {
        warnings.push(i.note("has no virtual_ipaddress"));
    }
    write_peers(out, &i, warnings);
    if !i.track_ifs.is_empty() {
        let _ = writeln!(out, "track_interfaces = [{}]", i.track_ifs.join(", "));
    }
    for (sname, s, wo) in &i.tracks {
        write_track(out, sname, s, *wo, warnings);
    }
}

/// A key given twice: the last one counts, as in keepalived (and TOML
/// refuses a key twice in a table).
fn write_kv(out: &mut String, i: &Instance, warnings: &mut Vec<String>) {
    for (n, (k, v)) in i.kv.iter().enumerate() {
        if i.kv[n + 1..].iter().any(|(later, _)| later == k) {
            warnings.push(i.note(format_args!(
                "`{k}` is set more than once; the last one is used"
            )));
            continue;
        }
        let _ = writeln!(out, "{k} = {v}");
    }
}

/// Unicast when there are peers (with its source), else multicast (with its).
fn write_peers(out: &mut String, i: &Instance, warnings: &mut Vec<String>) {
    if !i.peers.is_empty() {
        if let Some(s) = &i.unicast_src {
            let _ = writeln!(out, "unicast_src = {}", q(s));
        }
        let _ = writeln!(out, "unicast_peers = [{}]", i.peers.join(", "));
        return;
    }
    if i.unicast_src.is_some() {
        warnings
            .push(i.note("unicast_src_ip without unicast_peer is not mapped (multicast is used)"));
    }
    if let Some(s) = &i.mcast_src {
        let _ = writeln!(out, "mcast_src = {}", q(s));
    }
}

fn write_track(
    out: &mut String,
    sname: &str,
    s: &Script,
    weight_override: Option<i64>,
    warnings: &mut Vec<String>,
) {
    let _ = writeln!(out, "\n[[vrrp.track]]\nname = {}", q(sname));
    match &s.script {
        Some(sc) => {
            let _ = writeln!(out, "script = {}", q(sc));
        }
        None => warnings.push(format!("vrrp_script {sname}: has no `script`")),
    }
    for (k, v) in [
        ("interval", &s.interval),
        ("timeout", &s.timeout),
        ("fall", &s.fall),
        ("rise", &s.rise),
    ] {
        if let Some(v) = v.as_deref().and_then(toml_num) {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    let weight = weight_override.or(s.weight).unwrap_or(0);
    let _ = writeln!(out, "weight = {weight}");
}
