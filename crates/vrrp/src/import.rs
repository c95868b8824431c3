//! keepalived.conf → syncd TOML: maps the `vrrp_instance` and `vrrp_script`
//! blocks and says what it could not map.
//!
//! The parser follows keepalived's own rules loosely and tolerates the mess
//! found in the wild: `#` and `!` comments anywhere, braces glued to words,
//! quoted strings, and prose around the configuration (ignored).

use std::collections::BTreeMap;
use std::fmt::Write;

/// Result of a conversion.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The TOML text (one `[[vrrp]]` per `vrrp_instance`).
    pub toml: String,
    /// Everything that was not mapped, or was mapped with a change of meaning.
    pub warnings: Vec<String>,
    /// What must not be converted at all (e.g. `auth_type AH`): the TOML must not be used.
    pub errors: Vec<String>,
    pub instances: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String, usize),
    Open(usize),
    Close(usize),
    Eol,
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let ln = ln + 1;
        let mut chars = line.chars().peekable();
        let mut cur = String::new();
        let flush = |cur: &mut String, out: &mut Vec<Tok>| {
            if !cur.is_empty() {
                out.push(Tok::Word(std::mem::take(cur), ln));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' | '!' => break,
                '"' => {
                    flush(&mut cur, &mut out);
                    let mut s = String::new();
                    for c in chars.by_ref() {
                        if c == '"' {
                            break;
                        }
                        s.push(c);
                    }
                    out.push(Tok::Word(s, ln));
                }
                '{' => {
                    flush(&mut cur, &mut out);
                    out.push(Tok::Open(ln));
                }
                '}' => {
                    flush(&mut cur, &mut out);
                    out.push(Tok::Close(ln));
                }
                c if c.is_whitespace() => flush(&mut cur, &mut out),
                c => cur.push(c),
            }
        }
        flush(&mut cur, &mut out);
        out.push(Tok::Eol);
    }
    out
}

/// A statement: words on one line, optionally followed by a `{ ... }` block.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub words: Vec<String>,
    pub line: usize,
    pub children: Vec<Node>,
    pub has_block: bool,
}

impl Node {
    pub fn key(&self) -> &str {
        self.words.first().map_or("", |s| s.as_str())
    }
    pub fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(|s| s.as_str())
    }
}

/// keepalived.conf as a tree of statements (what `syncd migrate` reads
/// beyond the VRRP blocks [`convert`] maps: `virtual_server`, the scripts).
pub fn parse(text: &str) -> Vec<Node> {
    let toks = tokenize(text);
    let mut pos = 0;
    parse_nodes(&toks, &mut pos, 0)
}

fn parse_nodes(toks: &[Tok], pos: &mut usize, depth: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut cur = Node::default();
    while *pos < toks.len() {
        let t = toks[*pos].clone();
        *pos += 1;
        match t {
            Tok::Word(w, ln) => {
                if cur.words.is_empty() {
                    cur.line = ln;
                }
                cur.words.push(w);
            }
            Tok::Eol => {
                if !cur.words.is_empty() {
                    nodes.push(std::mem::take(&mut cur));
                }
            }
            Tok::Open(ln) => {
                if cur.words.is_empty() {
                    // "{" on its own line belongs to the previous statement
                    if let Some(prev) = nodes.pop().filter(|p: &Node| !p.has_block) {
                        cur = prev;
                    } else {
                        cur.line = ln;
                    }
                }
                cur.has_block = true;
                cur.children = parse_nodes(toks, pos, depth + 1);
                nodes.push(std::mem::take(&mut cur));
            }
            Tok::Close(_) => {
                if !cur.words.is_empty() {
                    nodes.push(std::mem::take(&mut cur));
                }
                if depth > 0 {
                    return nodes;
                }
            }
        }
    }
    if !cur.words.is_empty() {
        nodes.push(cur);
    }
    nodes
}

fn q(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[derive(Debug, Clone, Default)]
struct Script {
    script: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    weight: Option<i64>,
    fall: Option<String>,
    rise: Option<String>,
}

/// A finite number written as TOML: an integer when it is one, else a
/// float (keepalived takes `01`, `5.` or `.5`, which TOML does not).
fn toml_num(s: &str) -> Option<String> {
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
    let mut warnings = Vec::new();
    let mut scripts: BTreeMap<String, Script> = BTreeMap::new();
    let mut global_version: Option<String> = None;
    let mut global_skip_check_adv_addr = false;
    let mut script_security = false;
    let mut script_user: Option<String> = None;
    let mut errors = Vec::new();

    for n in &top {
        match n.key() {
            "vrrp_script" if n.has_block => {
                let name = n.arg(1).unwrap_or("").to_string();
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
                scripts.insert(name, s);
            }
            "global_defs" => {
                for c in &n.children {
                    match c.key() {
                        "vrrp_version" => global_version = c.arg(1).map(str::to_string),
                        "vrrp_skip_check_adv_addr" => global_skip_check_adv_addr = true,
                        "router_id"
                        | "notification_email"
                        | "notification_email_from"
                        | "smtp_server"
                        | "smtp_connect_timeout" => {}
                        "enable_script_security" => script_security = true,
                        "script_user" => match (c.arg(1), c.arg(2)) {
                            (Some(u), Some(g)) => script_user = Some(format!("{u}:{g}")),
                            (Some(u), None) => script_user = Some(u.to_string()),
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
        let name = n.arg(1).unwrap_or("VI").to_string();
        let w = |msg: String| format!("line {}: vrrp_instance {name}: {msg}", n.line);
        let mut kv: Vec<(String, String)> = vec![("name".into(), q(&name))];
        let mut vips = Vec::new();
        let mut peers = Vec::new();
        let mut tracks = Vec::new();
        let mut track_ifs = Vec::new();
        let mut version = global_version.clone();
        let mut unicast_src = None;
        let mut mcast_src = None;
        let mut interface = None;
        let mut skip_check_adv_addr = global_skip_check_adv_addr;
        for c in &n.children {
            let a1 = c.arg(1);
            let simple_num =
                |key: &str, kv: &mut Vec<(String, String)>, warnings: &mut Vec<String>| match a1 {
                    Some(v) if toml_num(v).is_some() => {
                        kv.push((key.into(), toml_num(v).unwrap_or_default()))
                    }
                    _ => warnings.push(w(format!("`{}` needs a number", c.key()))),
                };
            match c.key() {
                "state" => {
                    if a1 == Some("MASTER") {
                        warnings.push(w("`state MASTER` is only a start-up hint in keepalived; syncd starts as BACKUP and elects by priority (use priority 255 for an address owner)".into()));
                    }
                }
                "interface" => interface = a1.map(str::to_string),
                "virtual_router_id" => simple_num("vrid", &mut kv, &mut warnings),
                "priority" => simple_num("priority", &mut kv, &mut warnings),
                "advert_int" => simple_num("advert_int", &mut kv, &mut warnings),
                "version" => version = a1.map(str::to_string),
                "nopreempt" => kv.push(("nopreempt".into(), "true".into())),
                "skip_check_adv_addr" => skip_check_adv_addr = true,
                "preempt" => {}
                "preempt_delay" => simple_num("preempt_delay", &mut kv, &mut warnings),
                "garp_master_delay" => simple_num("garp_delay", &mut kv, &mut warnings),
                "garp_master_repeat" => simple_num("garp_repeat", &mut kv, &mut warnings),
                "garp_master_refresh" => simple_num("garp_refresh", &mut kv, &mut warnings),
                "authentication" => {
                    let mut ty = None;
                    let mut pass = None;
                    for a in &c.children {
                        match a.key() {
                            "auth_type" => ty = a.arg(1).map(str::to_string),
                            "auth_pass" => pass = a.arg(1).map(str::to_string),
                            other => {
                                warnings.push(w(format!("authentication `{other}` is not mapped")))
                            }
                        }
                    }
                    if ty.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("AH")) {
                        // Never downgrade: an AH secret sent as a cleartext PASS would leak it
                        // on the wire, and the peers would not interoperate anyway.
                        errors.push(w("auth_type AH is not supported (IPsec AH, dropped by RFC 3768); refusing to convert it into a cleartext password. Switch both nodes to no authentication (firewall protocol 112 to the peer, see the README) or to auth_type PASS, then import again".into()));
                    } else if let Some(p) = pass {
                        kv.push((
                            "auth_pass".into(),
                            q(&p.chars().take(8).collect::<String>()),
                        ));
                        if p.len() > 8 {
                            warnings.push(w(
                                "auth_pass longer than 8 bytes: truncated to 8, as keepalived does"
                                    .into(),
                            ));
                        }
                    }
                }
                "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                    if c.key() == "virtual_ipaddress_excluded" {
                        warnings.push(w("virtual_ipaddress_excluded mapped into virtual_ips (they will be carried in adverts)".into()));
                    }
                    for v in &c.children {
                        let addr = v.key();
                        if crate::config::parse_vip(addr).is_err() {
                            warnings.push(format!("line {}: vrrp_instance {name}: virtual address {addr:?} is not an address; skipped", v.line));
                            continue;
                        }
                        vips.push(q(addr));
                        let rest: Vec<&str> = v.words[1..].iter().map(|s| s.as_str()).collect();
                        if let Some(i) = rest.iter().position(|w| *w == "dev") {
                            if rest
                                .get(i + 1)
                                .map(|d| Some(*d) != interface.as_deref())
                                .unwrap_or(false)
                            {
                                warnings.push(format!("line {}: vrrp_instance {name}: {addr} on `dev {}` is not mapped: syncd adds addresses on the instance interface", v.line, rest.get(i + 1).unwrap_or(&"")));
                            }
                        }
                        let extra: Vec<&str> = rest
                            .iter()
                            .copied()
                            .filter(|w| *w != "dev" && Some(*w) != interface.as_deref())
                            .collect();
                        if !extra.is_empty() && !rest.contains(&"dev") {
                            warnings.push(format!("line {}: vrrp_instance {name}: options {:?} of {addr} are not mapped", v.line, extra));
                        }
                    }
                }
                "unicast_src_ip" => unicast_src = a1.map(str::to_string),
                "unicast_peer" => {
                    for p in &c.children {
                        peers.push(q(p.key()));
                        if p.words.len() > 1 {
                            warnings.push(format!(
                                "line {}: unicast_peer options {:?} are not mapped",
                                p.line,
                                &p.words[1..]
                            ));
                        }
                    }
                }
                "mcast_src_ip" => mcast_src = a1.map(str::to_string),
                "track_script" => {
                    for t in &c.children {
                        let sname = t.key().to_string();
                        let weight_override = (t.arg(1) == Some("weight"))
                            .then(|| t.arg(2).and_then(|x| x.parse::<i64>().ok()))
                            .flatten();
                        match scripts.get(&sname) {
                            Some(s) => tracks.push((sname, s.clone(), weight_override)),
                            None => warnings.push(format!("line {}: vrrp_instance {name}: track_script {sname} has no vrrp_script block; skipped", t.line)),
                        }
                    }
                }
                "track_interface" => {
                    for t in &c.children {
                        track_ifs.push(q(t.key()));
                        if t.words.len() > 1 {
                            warnings.push(format!("line {}: track_interface {} `weight` is not mapped: a down interface means FAULT", t.line, t.key()));
                        }
                    }
                }
                k @ ("notify_master" | "notify_backup" | "notify_fault" | "notify_stop"
                | "notify") => {
                    kv.push((k.into(), q(&c.words[1..].join(" "))));
                }
                other => warnings.push(w(format!("`{other}` is not mapped"))),
            }
        }
        let _ = writeln!(out, "\n[[vrrp]]");
        match &interface {
            Some(i) => {
                let _ = writeln!(out, "interface = {}", q(i));
            }
            None => warnings.push(w("has no `interface`; set one".into())),
        }
        // A key given twice: the last one counts, as in keepalived (and
        // TOML refuses a key twice in a table).
        for (i, (k, v)) in kv.iter().enumerate() {
            if kv[i + 1..].iter().any(|(later, _)| later == k) {
                warnings.push(w(format!(
                    "`{k}` is set more than once; the last one is used"
                )));
                continue;
            }
            let _ = writeln!(out, "{k} = {v}");
        }
        if skip_check_adv_addr {
            let _ = writeln!(out, "skip_check_adv_addr = true");
        }
        if script_security {
            // also syncd's default; written so the intent survives a default change
            let _ = writeln!(out, "script_security = true");
        }
        if let Some(u) = &script_user {
            let _ = writeln!(out, "script_user = {}", q(u));
        }
        let ver = version.as_deref().unwrap_or("2");
        let _ = writeln!(out, "version = {}", if ver == "3" { 3 } else { 2 });
        let _ = writeln!(out, "virtual_ips = [{}]", vips.join(", "));
        if vips.is_empty() {
            warnings.push(w("has no virtual_ipaddress".into()));
        }
        if !peers.is_empty() {
            if let Some(s) = &unicast_src {
                let _ = writeln!(out, "unicast_src = {}", q(s));
            }
            let _ = writeln!(out, "unicast_peers = [{}]", peers.join(", "));
        } else {
            if unicast_src.is_some() {
                warnings.push(w(
                    "unicast_src_ip without unicast_peer is not mapped (multicast is used)".into(),
                ));
            }
            if let Some(s) = &mcast_src {
                let _ = writeln!(out, "mcast_src = {}", q(s));
            }
        }
        if !track_ifs.is_empty() {
            let _ = writeln!(out, "track_interfaces = [{}]", track_ifs.join(", "));
        }
        for (sname, s, wo) in tracks {
            let _ = writeln!(out, "\n[[vrrp.track]]\nname = {}", q(&sname));
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
            let weight = wo.or(s.weight).unwrap_or(0);
            let _ = writeln!(out, "weight = {weight}");
        }
    }
    Imported {
        toml: out,
        warnings,
        errors,
        instances,
    }
}

#[cfg(test)]
mod tests;
