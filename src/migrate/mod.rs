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
mod to_proxy;
mod to_syncd;

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use keepalived::Keepalived;
use nginx::Nginx;
use replication::Replication;

use crate::paircheck::{self, Severity, Tables};
use to_proxy::proxy_toml;
use to_syncd::replication_files;

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

pub(crate) struct Out {
    notes: Vec<Note>,
}

impl Out {
    pub(crate) fn note(&mut self, kind: Kind, text: String) {
        self.notes.push(Note { kind, text });
    }
}

/// A TOML string literal.
pub(crate) fn q(s: &str) -> String {
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

    let mut tables: Vec<(String, String)> = inp
        .keepalived
        .iter()
        .zip(&kas)
        .enumerate()
        .map(|(n, (file, ka))| vrrp_tables(&format!("node{}", n + 1), file, ka, inp, lb, &mut o))
        .collect();
    match tables.len() {
        2 => compare_nodes(&kas, &mut tables, &mut o),
        1 => o.note(Kind::NotCarried, "only one keepalived.conf given: the other node's could not be compared (give --keepalived twice)".into()),
        _ => {}
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

/// One node's keepalived.conf as `[[vrrp]]` tables (its check scripts
/// rewritten), with what the importer could not carry.
fn vrrp_tables(
    node: &str,
    file: &KeepalivedFile,
    ka: &Keepalived,
    inp: &Inputs,
    lb: bool,
    o: &mut Out,
) -> (String, String) {
    let imp = syncd_vrrp::import::convert(&file.text);
    for w in &imp.warnings {
        // LVS blocks are carried over to syncd-proxy instead.
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
        let script = Script {
            node,
            file: &file.file,
            name,
            cmd,
        };
        let fix = script_fix(script, inp, lb, o);
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
    (node.to_string(), toml)
}

/// Both nodes' tables side by side: what would split the pair is reported,
/// and node2's settings that must match are aligned to node1's.
fn compare_nodes(kas: &[Keepalived], tables: &mut [(String, String)], o: &mut Out) {
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
        let node = |name, tables| Tables {
            name,
            tables,
            addr: None,
        };
        for f in paircheck::compare_vrrp(&node("node1", &va), &node("node2", &vb)) {
            let kind = if f.severity == Severity::Error {
                Kind::Trap
            } else {
                Kind::NotCarried
            };
            o.note(kind, f.what);
        }
        // What must match or both nodes become master: node1's wins,
        // so the pair works as migrated (keepalived's split ends here).
        tables[1].1 = align(a, b, &tables[1].1, o);
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
pub(crate) fn toml_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:?}")
    }
}

pub(crate) fn strip_header(t: &str) -> String {
    t.lines()
        .filter(|l| !l.starts_with("# Converted from") && !l.starts_with("# Review the warnings"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_start()
        .to_string()
        + "\n"
}

/// One `vrrp_script` of a node's keepalived.conf, named as the report names it.
#[derive(Clone, Copy)]
struct Script<'a> {
    node: &'a str,
    file: &'a str,
    name: &'a str,
    cmd: &'a str,
}

fn script_fix(script: Script<'_>, inp: &Inputs, lb: bool, o: &mut Out) -> Option<TrackFix> {
    let Script {
        node,
        file,
        name,
        cmd,
    } = script;
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
