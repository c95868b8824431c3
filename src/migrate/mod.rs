//! `syncd migrate`: from what the seeds' users run (keepalived.conf on both
//! nodes, the `inotifywait | rsync` loop or lsyncd, nginx upstreams, LVS
//! `virtual_server` blocks) to syncd, syncd vrrp and syncd-proxy configs,
//! with a report of what was carried over, what was not, and every trap.
//!
//! [`plan`] is pure: texts in, files and report out. `main.rs` reads the
//! inputs and writes the outputs.

pub mod keepalived;
pub mod nginx;
pub mod replication;

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use keepalived::Keepalived;
use nginx::Nginx;
use replication::Replication;

use crate::paircheck::{self, Severity, Tables};

/// One keepalived.conf: its file name (for the report) and text.
pub struct KeepalivedFile {
    pub file: String,
    pub text: String,
}

#[derive(Default)]
pub struct Inputs {
    /// One per node, in node order.
    pub keepalived: Vec<KeepalivedFile>,
    /// Check-script command (first word, as in `vrrp_script`) → its text,
    /// for the scripts that could be read.
    pub scripts: BTreeMap<String, String>,
    pub replication: Option<Replication>,
    pub nginx: Option<Nginx>,
    /// The standby's replication address, when the loop's target is not it.
    pub standby: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A trap that breaks failover or loses data today (or would after a
    /// naive migration).
    Trap,
    /// Seen and not carried over, or carried over with another meaning.
    NotCarried,
    Carried,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: Kind,
    pub text: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            Kind::Trap => "TRAP",
            Kind::NotCarried => "not carried over",
            Kind::Carried => "carried over",
        };
        write!(f, "{k}: {}", self.text)
    }
}

pub struct Migration {
    /// Relative paths under the output directory, and their contents.
    pub files: Vec<(PathBuf, String)>,
    pub notes: Vec<Note>,
}

impl Migration {
    /// The report: traps first.
    pub fn report(&self) -> String {
        let mut s = String::from("# syncd migrate report\n\n");
        for (p, _) in &self.files {
            let _ = writeln!(s, "wrote {}", p.display());
        }
        s.push('\n');
        let mut notes = self.notes.clone();
        notes.sort_by_key(|n| n.kind);
        for n in &notes {
            let _ = writeln!(s, "{n}");
        }
        let traps = notes.iter().filter(|n| n.kind == Kind::Trap).count();
        let _ = writeln!(s, "\n{traps} traps found");
        s
    }
}

struct Out {
    notes: Vec<Note>,
}

impl Out {
    fn note(&mut self, kind: Kind, text: String) {
        self.notes.push(Note { kind, text });
    }
}

/// A TOML string literal.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What a node's check script becomes. `None`: keep it as it is.
enum TrackFix {
    /// Drop it: syncd-proxy's built-in VRRP leaves with the proxy.
    Drop,
    /// Check the nginx process directly.
    Process(&'static str),
}

pub fn plan(inp: &Inputs) -> Migration {
    let mut o = Out { notes: Vec::new() };
    let mut files = Vec::new();
    let kas: Vec<Keepalived> = inp
        .keepalived
        .iter()
        .map(|k| keepalived::read(&k.text))
        .collect();
    let vips: BTreeMap<String, String> = kas
        .iter()
        .flat_map(|k| k.instances.iter())
        .flat_map(|i| {
            i.vips
                .iter()
                .map(|v| (v.split('/').next().unwrap_or(v).to_string(), i.name.clone()))
        })
        .collect();
    let lb = inp.nginx.is_some() || kas.iter().any(|k| !k.virtual_servers.is_empty());

    let mut tables = Vec::new();
    for (n, (file, ka)) in inp.keepalived.iter().zip(&kas).enumerate() {
        let node = format!("node{}", n + 1);
        let imp = syncd_vrrp::import::convert(&file.text);
        for w in &imp.warnings {
            // LVS blocks are carried over below, to syncd-proxy.
            if lb && w.contains("`virtual_server`") {
                continue;
            }
            o.note(Kind::NotCarried, format!("{node} ({}): {w}", file.file));
        }
        for e in &imp.errors {
            o.note(Kind::Trap, format!("{node} ({}): {e}", file.file));
        }
        for i in &ka.instances {
            if i.nopreempt && i.state.as_deref() == Some("MASTER") {
                o.note(Kind::Trap, format!(
                    "{node} ({}): vrrp_instance {} has `nopreempt` with `state MASTER`: keepalived ignores nopreempt unless the state is BACKUP, so this node took the address back whenever it returned; syncd honours nopreempt as written",
                    file.file, i.name
                ));
            }
        }
        let mut toml = imp.toml.clone();
        for (name, cmd) in &ka.scripts {
            let fix = script_fix(&node, &file.file, name, cmd, inp, lb, &mut o);
            toml = rewrite_track(&toml, cmd, fix);
        }
        if imp.instances > 0 {
            o.note(
                Kind::Carried,
                format!(
                    "{node} ({}): {} vrrp_instance block(s) → [[vrrp]]",
                    file.file, imp.instances
                ),
            );
        }
        tables.push((node, toml));
    }

    // Both nodes' tables side by side: what would split the pair.
    if tables.len() == 2 {
        let parsed: Vec<_> = tables
            .iter()
            .map(|(_, t)| toml::from_str::<syncd_vrrp::config::VrrpFile>(t).ok())
            .collect();
        if let (Some(a), Some(b)) = (&parsed[0], &parsed[1]) {
            let by_name = |f: &syncd_vrrp::config::VrrpFile| {
                let mut v = f.vrrp.clone();
                v.sort_by(|x, y| x.name.cmp(&y.name));
                v
            };
            let (va, vb) = (by_name(a), by_name(b));
            for f in paircheck::compare_vrrp(
                &Tables {
                    name: "node1",
                    tables: &va,
                    addr: None,
                },
                &Tables {
                    name: "node2",
                    tables: &vb,
                    addr: None,
                },
            ) {
                let kind = if f.severity == Severity::Error {
                    Kind::Trap
                } else {
                    Kind::NotCarried
                };
                o.note(kind, f.what);
            }
        }
        if let (Some(a), Some(b)) = (&parsed[0], &parsed[1]) {
            // What must match or both nodes become master: node1's wins,
            // so the pair works as migrated (keepalived's split ends here).
            let fixed = align(a, b, &tables[1].1, &mut o);
            tables[1].1 = fixed;
        }
        let masters = kas
            .iter()
            .filter(|k| {
                k.instances
                    .iter()
                    .any(|i| i.state.as_deref() == Some("MASTER"))
            })
            .count();
        if masters == 2 {
            o.note(Kind::NotCarried, "both nodes say `state MASTER`: only a start-up hint in keepalived and ignored by syncd, which elects by priority".into());
        }
    } else if tables.len() == 1 {
        o.note(Kind::NotCarried, "only one keepalived.conf given: the other node's could not be compared (give --keepalived twice)".into());
    }

    for (node, vrrp_toml) in &tables {
        if lb {
            let text = proxy_toml(node, inp.nginx.as_ref(), &kas, vrrp_toml, &mut o);
            files.push((PathBuf::from(format!("{node}/proxy.toml")), text));
        } else {
            files.push((
                PathBuf::from(format!("{node}/vrrp.toml")),
                format!("# `syncd vrrp --config vrrp.toml` on {node}; written by `syncd migrate`.\nadmin = \"127.0.0.1:9180\"\n\n{}", strip_header(vrrp_toml)),
            ));
        }
    }
    if lb && tables.is_empty() {
        let text = proxy_toml("the load balancer", inp.nginx.as_ref(), &kas, "", &mut o);
        files.push((PathBuf::from("proxy.toml"), text));
    }
    if let Some(r) = &inp.replication {
        replication_files(r, &vips, inp.standby, &mut files, &mut o);
    }
    Migration {
        files,
        notes: o.notes,
    }
}

/// node2's imported TOML with each instance's `vrid` and `advert_int` set
/// to node1's (instances matched by name).
fn align(
    a: &syncd_vrrp::config::VrrpFile,
    b: &syncd_vrrp::config::VrrpFile,
    toml_b: &str,
    o: &mut Out,
) -> String {
    let mut blocks: Vec<String> = toml_b.split("\n\n").map(str::to_string).collect();
    for y in &b.vrrp {
        let Some(x) = a.vrrp.iter().find(|x| x.name == y.name) else {
            continue;
        };
        let name_line = format!("name = {}", q(y.name.as_deref().unwrap_or("")));
        let Some(block) = blocks
            .iter_mut()
            .find(|bl| bl.starts_with("[[vrrp]]") && bl.lines().any(|l| l == name_line))
        else {
            continue;
        };
        let label = y.name.clone().unwrap_or_default();
        let mut set = |key: &str, from: String, to: String| {
            if from != to {
                let line = format!("{key} = {from}\n");
                if block.contains(&line) {
                    *block = block.replace(
                        &line,
                        &format!(
                            "{key} = {to}  # was {from}; node1's value, so the nodes hear each other\n"
                        ),
                    );
                    o.note(Kind::Carried, format!("node2's vrrp_instance {label}: {key} set to {to} (node1's) instead of {from}"));
                } else {
                    o.note(Kind::NotCarried, format!("node2's vrrp_instance {label}: {key} is {from}, node1's {to}: set it to {to} by hand"));
                }
            }
        };
        set("vrid", y.vrid.to_string(), x.vrid.to_string());
        set("advert_int", toml_num(y.advert_int), toml_num(x.advert_int));
    }
    blocks.join("\n\n")
}

/// A number as the importer writes it.
fn toml_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
}

fn strip_header(t: &str) -> String {
    t.lines()
        .filter(|l| !l.starts_with("# Converted from") && !l.starts_with("# Review the warnings"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_start()
        .to_string()
        + "\n"
}

fn script_fix(
    node: &str,
    file: &str,
    name: &str,
    cmd: &str,
    inp: &Inputs,
    lb: bool,
    o: &mut Out,
) -> Option<TrackFix> {
    let path = cmd.split_whitespace().next().unwrap_or("");
    let Some(body) = inp.scripts.get(path) else {
        o.note(Kind::NotCarried, format!(
            "{node} ({file}): vrrp_script {name}: {path} could not be read, so it was not checked for traps (a script that stops keepalived or always exits 0 never fails as a track); check it by hand"
        ));
        return None;
    };
    let traps = keepalived::script_traps(body);
    if traps.is_empty() {
        return None;
    }
    let about_nginx = body.contains("nginx");
    let what = traps.join(" and ");
    let fix = if lb && about_nginx {
        o.note(Kind::Trap, format!(
            "{node} ({file}): vrrp_script {name} ({path}) {what}: keepalived failed over only because the script killed it; as a track it would never fail and the address would stay on a node whose nginx is dead. syncd-proxy replaces nginx and carries the VRRP instance itself (the address leaves with the proxy), and its own /healthz is tracked instead"
        ));
        Some(TrackFix::Drop)
    } else if about_nginx {
        o.note(Kind::Trap, format!(
            "{node} ({file}): vrrp_script {name} ({path}) {what}: as a track it would never fail, so after migration the address would no longer move when nginx dies; replaced by `process = \"nginx\"`"
        ));
        Some(TrackFix::Process("nginx"))
    } else {
        o.note(Kind::Trap, format!(
            "{node} ({file}): vrrp_script {name} ({path}) {what}: as a track it never fails; make it exit non-zero when the service is down (kept as it is)"
        ));
        None
    };
    fix
}

/// Rewrites the `[[vrrp.track]]` that runs `cmd` in the imported TOML.
fn rewrite_track(toml: &str, cmd: &str, fix: Option<TrackFix>) -> String {
    let Some(fix) = fix else {
        return toml.to_string();
    };
    let line = format!("script = {}", q(cmd));
    let mut out = String::new();
    // Tables are separated by blank lines in the importer's output.
    for block in toml.split("\n\n") {
        if block.lines().any(|l| l.trim() == line) {
            match fix {
                TrackFix::Drop => {
                    out.push_str(&format!("# (the track that ran {cmd} is replaced by the proxy's own health)\n[[vrrp.track]]\nhttp = \"http://127.0.0.1:9901/healthz\"\ninterval = 1\nweight = 0\n\n"));
                }
                TrackFix::Process(p) => {
                    out.push_str(
                        &block.replace(&line, &format!("process = {}  # was {}", q(p), q(cmd))),
                    );
                    out.push_str("\n\n");
                }
            }
        } else {
            out.push_str(block);
            out.push_str("\n\n");
        }
    }
    out.trim_end().to_string() + "\n"
}

fn listen_addr(l: &str) -> String {
    if l.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{l}")
    } else if let Some(p) = l.strip_prefix("*:") {
        format!("0.0.0.0:{p}")
    } else {
        l.to_string()
    }
}

fn proxy_toml(
    node: &str,
    ngx: Option<&Nginx>,
    kas: &[Keepalived],
    vrrp: &str,
    o: &mut Out,
) -> String {
    let mut s = format!(
        "# syncd-proxy for {node}; written by `syncd migrate`.\n# Check: syncd-proxy --check --config proxy.toml\n\n[global]\nworkers = 0\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n"
    );
    let first = node == "node1" || node == "the load balancer";
    let mut ups: Vec<String> = Vec::new();
    if let Some(n) = ngx {
        for site in &n.sites {
            if !n.upstreams.iter().any(|u| u.name == site.upstream) {
                if first {
                    o.note(Kind::NotCarried, format!("proxy_pass http://{}: no `upstream {}` block given (a host name?); not carried over", site.upstream, site.upstream));
                }
                continue;
            }
            let listen: Vec<String> = site.listen.iter().map(|l| q(&listen_addr(l))).collect();
            let _ = write!(
                s,
                "[[listener]]\nlisten = [{}]\nupstream = {}\n\n",
                listen.join(", "),
                q(&site.upstream)
            );
        }
        for u in &n.upstreams {
            ups.push(u.name.clone());
            let _ = writeln!(s, "[[upstream]]\nname = {}", q(&u.name));
            match u.algorithm.as_deref() {
                Some("least_conn") => s.push_str("algorithm = \"least_conn\"\n"),
                Some("ip_hash") => s.push_str("algorithm = \"ip_hash\"\n"),
                Some(h) if h.starts_with("hash") => {
                    let key = h.split_whitespace().nth(1).unwrap_or("$request_uri");
                    let _ = writeln!(s, "algorithm = \"hash\"\nhash_key = {}", q(key));
                    if !h.contains("consistent") && first {
                        o.note(Kind::NotCarried, format!("upstream {}: `hash` without `consistent` becomes syncd-proxy's consistent (ketama) hash", u.name));
                    }
                }
                _ => {}
            }
            s.push('\n');
            for sv in &u.servers {
                let _ = writeln!(s, "[[upstream.server]]\naddr = {}", q(&sv.addr));
                for (key, v) in [("weight", &sv.weight), ("max_fails", &sv.max_fails)] {
                    match v.as_deref().map(|x| (x, x.parse::<u32>())) {
                        Some((_, Ok(n))) => {
                            let _ = writeln!(s, "{key} = {n}");
                        }
                        Some((x, Err(_))) if first => o.note(
                            Kind::NotCarried,
                            format!(
                                "upstream {} server {}: {key}={x} is not a number; left out",
                                u.name, sv.addr
                            ),
                        ),
                        _ => {}
                    }
                }
                if let Some(t) = &sv.fail_timeout {
                    let _ = writeln!(s, "fail_timeout = {}", q(t));
                }
                if sv.backup {
                    s.push_str("backup = true\n");
                }
                if sv.down {
                    s.push_str("down = true\n");
                }
                if !sv.ignored.is_empty() && first {
                    o.note(
                        Kind::NotCarried,
                        format!(
                            "upstream {} server {}: {} not carried over",
                            u.name,
                            sv.addr,
                            sv.ignored.join(" ")
                        ),
                    );
                }
                s.push('\n');
            }
            if first {
                o.note(
                    Kind::Carried,
                    format!(
                        "nginx upstream {} ({} servers) → [[upstream]]",
                        u.name,
                        u.servers.len()
                    ),
                );
            }
        }
        if first {
            for note in &n.notes {
                o.note(Kind::NotCarried, note.clone());
            }
        }
    }
    // LVS virtual servers become TCP listeners (the first node's blocks;
    // both nodes carry the same in a keepalived LVS pair).
    if let Some(k) = kas.iter().find(|k| !k.virtual_servers.is_empty()) {
        for v in &k.virtual_servers {
            let port = v.addr.rsplit_once(':').map_or("0", |(_, p)| p);
            let name = format!("lvs_{}", v.addr.replace([':', '.', '[', ']'], "_"));
            let _ = write!(
                s,
                "# was LVS virtual_server {} (lb_kind {})\n[[listener]]\nlisten = {}\nmode = \"tcp\"\nupstream = {}\n\n[[upstream]]\nname = {}\n",
                v.addr,
                v.kind.as_deref().unwrap_or("NAT"),
                q(&format!("0.0.0.0:{port}")),
                q(&name),
                q(&name)
            );
            match v.algo.as_deref() {
                Some("lc" | "wlc" | "sed" | "nq") => s.push_str("algorithm = \"least_conn\"\n"),
                Some("sh") => s.push_str("algorithm = \"ip_hash\"\n"),
                _ => {}
            }
            s.push('\n');
            for r in &v.reals {
                let _ = writeln!(s, "[[upstream.server]]\naddr = {}", q(&r.addr));
                match r.weight.as_deref().map(|x| (x, x.parse::<u32>())) {
                    Some((_, Ok(n))) => {
                        let _ = writeln!(s, "weight = {n}");
                    }
                    Some((x, Err(_))) if first => o.note(Kind::NotCarried, format!("virtual_server {} real_server {}: weight {x} is not a number; left out", v.addr, r.addr)),
                    _ => {}
                }
                s.push('\n');
            }
            match v.reals.iter().find_map(|r| r.check.clone()) {
                Some((kind, path)) if kind == "http" => {
                    let _ = write!(s, "[upstream.health_check]\ntype = \"http\"\npath = {}\ninterval = \"2s\"\n\n", q(path.as_deref().unwrap_or("/")));
                }
                Some(_) => {
                    s.push_str("[upstream.health_check]\ntype = \"tcp\"\ninterval = \"2s\"\n\n")
                }
                None => {}
            }
            if first {
                o.note(
                    Kind::Carried,
                    format!(
                        "LVS virtual_server {} ({} real servers) → a TCP listener and upstream",
                        v.addr,
                        v.reals.len()
                    ),
                );
                if matches!(v.kind.as_deref(), Some("DR" | "TUN")) {
                    o.note(Kind::NotCarried, format!("virtual_server {}: lb_kind {} → syncd-proxy terminates connections, so real servers see the proxy's address, not the client's; the VIP on their lo and the arp_ignore/arp_announce sysctls are no longer needed", v.addr, v.kind.as_deref().unwrap_or("")));
                }
                if v.protocol.as_deref() == Some("UDP") {
                    o.note(
                        Kind::Trap,
                        format!(
                            "virtual_server {}: UDP is not proxied by syncd-proxy",
                            v.addr
                        ),
                    );
                }
            }
        }
    }
    s.push_str(&strip_header(vrrp));
    s
}

fn replication_files(
    r: &Replication,
    vips: &BTreeMap<String, String>,
    standby: Option<IpAddr>,
    files: &mut Vec<(PathBuf, String)>,
    o: &mut Out,
) {
    for t in &r.traps {
        o.note(Kind::Trap, format!("the {}: {t}", r.from));
    }
    let export = r
        .source
        .as_deref()
        .map(|s| s.trim_end_matches('/'))
        .filter(|s| !s.is_empty())
        .unwrap_or("/srv/export")
        .to_string();
    if r.source.is_none() {
        o.note(
            Kind::NotCarried,
            format!(
                "the {}: no watched directory found; the export is written as {export}: fix it",
                r.from
            ),
        );
    }
    let target: Option<IpAddr> = r.target_host.as_deref().and_then(|h| h.parse().ok());
    let standby_ip = match (standby, target, r.target_host.as_deref()) {
        (Some(s), _, _) => Some(s),
        (None, Some(t), Some(h)) if vips.contains_key(h) => {
            o.note(Kind::Trap, format!(
                "the {}'s rsync target {h} is the virtual IP of keepalived instance {} (the load balancers), not the standby: replication went to whichever node held that address. Give the standby's address with --standby; the configs say 192.0.2.1 until then",
                r.from, vips[h]
            ));
            let _ = t;
            None
        }
        (None, Some(t), _) => Some(t),
        (None, None, Some(h)) => {
            o.note(Kind::NotCarried, format!("the {}'s rsync target {h} is a host name: syncd needs an address (give it with --standby)", r.from));
            None
        }
        (None, None, None) => None,
    };
    let peer = standby_ip.map_or("192.0.2.1".to_string(), |ip| ip.to_string());
    let peer = if peer.contains(':') {
        format!("[{peer}]:7400")
    } else {
        format!("{peer}:7400")
    };
    let delete = if r.delete {
        String::new()
    } else {
        "# the loop ran rsync without --delete; syncd replicates deletions (set delete = false to keep them)\n".to_string()
    };
    files.push((
        PathBuf::from("nfs-primary/syncd.toml"),
        format!(
            "# syncd --role primary on the NFS primary; written by `syncd migrate`.\n# Keys: syncd keygen --out /etc/syncd; copy the standby's node.crt here as peer.crt.\nexport = {}\npeer = {}\ncert = \"node.crt\"\nkey = \"node.key\"\npeer_cert = \"peer.crt\"\nadmin = \"127.0.0.1:7401\"\n\n[sync]\n{delete}delete = true\n",
            q(&export),
            q(&peer)
        ),
    ));
    files.push((
        PathBuf::from("nfs-standby/syncd.toml"),
        format!(
            "# syncd --role standby on the NFS standby; written by `syncd migrate`.\n# Keys: syncd keygen --out /etc/syncd; copy the primary's node.crt here as peer.crt.\nexport = {}\nlisten = \"0.0.0.0:7400\"\ncert = \"node.crt\"\nkey = \"node.key\"\npeer_cert = \"peer.crt\"\nadmin = \"127.0.0.1:7401\"\n",
            q(&export)
        ),
    ));
    o.note(Kind::Carried, format!(
        "the {}: {export} → {} replicated by `syncd --role primary` to `--role standby` at {peer} (the standby's export is {export}; a module path on the rsync daemon is not known here — change it if it differs)",
        r.from,
        r.target_host.as_deref().unwrap_or("?")
    ));
    o.note(Kind::NotCarried, "the NFS service address: the loop had none; for a failover of NFS itself, add a [[vrrp]] table with the NFS address to both nodes and run `syncd --role auto` (see README, the pair as one system)".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_track_replaces_only_the_matching_block() {
        let t = "[[vrrp]]\nname = \"VI_1\"\n\n[[vrrp.track]]\nname = \"chk\"\nscript = \"/etc/keepalived/check_nginx.sh\"\nweight = -5\n";
        let p = rewrite_track(
            t,
            "/etc/keepalived/check_nginx.sh",
            Some(TrackFix::Process("nginx")),
        );
        assert!(p.contains("process = \"nginx\"  # was"), "{p}");
        assert!(p.contains("weight = -5"), "{p}");
        let d = rewrite_track(t, "/etc/keepalived/check_nginx.sh", Some(TrackFix::Drop));
        assert!(
            d.contains("http = \"http://127.0.0.1:9901/healthz\""),
            "{d}"
        );
        assert!(!d.contains("script ="), "{d}");
        assert_eq!(rewrite_track(t, "/other", Some(TrackFix::Drop)), t);
    }
}
