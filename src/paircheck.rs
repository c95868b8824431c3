//! `syncd pair check`: every difference between the two nodes' settings
//! that would split or stall the pair, found before it does.
//!
//! [`compare`] is pure (two loaded configs and what was read beside them in,
//! findings out); `main.rs` loads the files and, unless told not to, adds
//! what only the running peer can say ([`reached`]: the authenticated
//! handshake, its protocol version, export and generation).

use crate::wire::Speaks;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use syncd_proto::pair::lineage::{Lineage, NodeId, Relation};
use syncd_vrrp::config::VrrpConfig;

use crate::config::{Config, PeerPin};
use crate::tls::Fingerprint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The pair will not work (or will split) as configured.
    Error,
    /// It works, but not as an operator would expect.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{s}: {}", self.what)
    }
}

/// One node as the check sees it: its config and its own certificate's
/// fingerprint (`None` when the file could not be read where the check runs).
pub struct Node<'a> {
    pub name: &'a str,
    pub cfg: &'a Config,
    pub cert: Option<Fingerprint>,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn error(&mut self, what: String) {
        self.0.push(Finding {
            severity: Severity::Error,
            what,
        });
    }
    fn warn(&mut self, what: String) {
        self.0.push(Finding {
            severity: Severity::Warning,
            what,
        });
    }
}

/// Compares two nodes' configurations.
pub fn compare(a: &Node, b: &Node) -> Vec<Finding> {
    let mut f = Findings::default();
    if a.cfg.export_id != b.cfg.export_id {
        f.error(format!(
            "export_id differs: {} has \"{}\", {} has \"{}\" (the standby refuses the session)",
            a.name, a.cfg.export_id, b.name, b.cfg.export_id
        ));
    }
    for (x, y) in [(a, b), (b, a)] {
        addresses(x, y, &mut f);
        pins(x, y, &mut f);
    }
    if let (Some(x), Some(y)) = (a.cert, b.cert) {
        if x == y {
            f.error(format!(
                "{} and {} use the same certificate ({x}): each node needs its own (`syncd keygen`); the pair tells its nodes apart by it",
                a.name, b.name
            ));
        }
    }
    let (pa, pb) = (&a.cfg.pair, &b.cfg.pair);
    if a.cfg.vrrp.is_empty() != b.cfg.vrrp.is_empty() {
        f.error(format!(
            "only {} has a [[vrrp]] table: --role auto needs the same service address on both nodes",
            if a.cfg.vrrp.is_empty() { b.name } else { a.name }
        ));
    }
    if !a.cfg.vrrp.is_empty() && !b.cfg.vrrp.is_empty() {
        if pa.heartbeat != pb.heartbeat || pa.heartbeat_timeout != pb.heartbeat_timeout {
            f.warn(format!(
                "[pair] heartbeat differs: {} {:?}/{:?}, {} {:?}/{:?} (heartbeat/timeout): one node declares its peer lost sooner than the other",
                a.name, pa.heartbeat, pa.heartbeat_timeout, b.name, pb.heartbeat, pb.heartbeat_timeout
            ));
        }
        vrrp(&Tables::of(a), &Tables::of(b), &mut f);
    }
    if a.cfg.sync.delete != b.cfg.sync.delete {
        f.warn(format!(
            "[sync] delete differs ({} {}, {} {}): after a failover deletions replicate differently",
            a.name, a.cfg.sync.delete, b.name, b.cfg.sync.delete
        ));
    }
    if a.cfg.sync.durable != b.cfg.sync.durable {
        f.warn(format!(
            "[sync] durable differs ({} {}, {} {}): one direction of replication may lose the last acknowledged changes at a power cut",
            a.name, a.cfg.sync.durable, b.name, b.cfg.sync.durable
        ));
    }
    f.0.sort_by_key(|x| x.severity);
    f.0
}

/// `x` dials `y`: x's `peer` must be where y listens.
fn addresses(x: &Node, y: &Node, f: &mut Findings) {
    let (Some(peer), Some(listen)) = (x.cfg.peer, y.cfg.listen) else {
        if x.cfg.peer.is_some() && y.cfg.listen.is_none() {
            f.error(format!(
                "{} sends to {} but {} has no `listen` address",
                x.name,
                x.cfg.peer.map_or(String::new(), |p| p.to_string()),
                y.name
            ));
        }
        return;
    };
    if peer.port() != listen.port() {
        f.error(format!(
            "{}'s peer {peer} and {}'s listen {listen} use different ports",
            x.name, y.name
        ));
    } else if !listen.ip().is_unspecified() && peer.ip() != listen.ip() {
        f.error(format!(
            "{}'s peer is {peer} but {} listens on {listen}",
            x.name, y.name
        ));
    }
    if peer.ip().is_loopback() && !listen.ip().is_loopback() {
        f.warn(format!("{}'s peer {peer} is a loopback address", x.name));
    }
}

/// `x` pins `y`'s certificate.
fn pins(x: &Node, y: &Node, f: &mut Findings) {
    let pinned = match &x.cfg.peer_pin {
        PeerPin::Fingerprint(p) => Some(*p),
        PeerPin::Cert(path) => crate::tls::cert_fingerprint(path).ok(),
    };
    match (pinned, y.cert) {
        (Some(p), Some(c)) if p != c => f.error(format!(
            "{} pins {p} but {}'s certificate is {c}: the TLS handshake fails both ways (copy {}'s node.crt as {}'s peer_cert)",
            x.name, y.name, y.name, x.name
        )),
        (Some(_), Some(_)) => {}
        _ => f.warn(format!(
            "could not compare {}'s pin with {}'s certificate (a file not readable here)",
            x.name, y.name
        )),
    }
}

/// One node's `[[vrrp]]` tables, and its address when known (the source of
/// its adverts when it sets no `unicast_src`).
pub struct Tables<'a> {
    pub name: &'a str,
    pub tables: &'a [VrrpConfig],
    pub addr: Option<IpAddr>,
}

impl<'a> Tables<'a> {
    fn of(n: &Node<'a>) -> Tables<'a> {
        Tables {
            name: n.name,
            tables: &n.cfg.vrrp,
            addr: n
                .cfg
                .listen
                .map(|l: SocketAddr| l.ip())
                .filter(|ip: &IpAddr| !ip.is_unspecified()),
        }
    }
}

/// Compares two nodes' `[[vrrp]]` tables (also used by `syncd migrate` on
/// two imported keepalived.conf files).
pub fn compare_vrrp(a: &Tables, b: &Tables) -> Vec<Finding> {
    let mut f = Findings::default();
    vrrp(a, b, &mut f);
    f.0.sort_by_key(|x| x.severity);
    f.0
}

fn vrrp(a: &Tables, b: &Tables, f: &mut Findings) {
    let (va, vb) = (a.tables, b.tables);
    if va.len() != vb.len() {
        f.error(format!(
            "{} has {} [[vrrp]] tables, {} has {}",
            a.name,
            va.len(),
            b.name,
            vb.len()
        ));
    }
    // Instances pair up by name (the order of the tables may differ), and
    // by position when they have none.
    let pairs: Vec<(&VrrpConfig, &VrrpConfig)> = va
        .iter()
        .enumerate()
        .filter_map(|(i, x)| match &x.name {
            Some(n) => vb
                .iter()
                .find(|y| y.name.as_ref() == Some(n))
                .map(|y| (x, y)),
            None => vb.get(i).map(|y| (x, y)),
        })
        .collect();
    for (x, y) in pairs {
        instance(a, x, b, y, f);
    }
}

/// One instance as each node has it.
fn instance(a: &Tables, x: &VrrpConfig, b: &Tables, y: &VrrpConfig, f: &mut Findings) {
    let label = x.name.clone().unwrap_or_else(|| format!("VI_{}", x.vrid));
    let v2 = x.version == 2 || y.version == 2;
    let mut d = Differ {
        a: a.name,
        b: b.name,
        label: &label,
        f: &mut *f,
    };
    d.diff(
        "vrid",
        x.vrid.to_string(),
        y.vrid.to_string(),
        true,
        "the nodes are in different virtual routers and both become master",
    );
    d.diff(
        "version",
        x.version.to_string(),
        y.version.to_string(),
        true,
        "each drops the other's adverts; both become master",
    );
    // VRRPv2 drops adverts with another interval; v3 learns the master's.
    d.diff(
        "advert_int",
        x.advert_int.to_string(),
        y.advert_int.to_string(),
        v2,
        if v2 {
            "VRRPv2 drops adverts with another interval; both become master"
        } else {
            "a backup learns the master's interval (v3), but failover times differ by direction"
        },
    );
    // Never print a password; say only whether they match.
    let (pa, pb) = match (&x.auth_pass, &y.auth_pass) {
        (Some(p), Some(q)) if p != q => ("one password", "another"),
        (Some(_), Some(_)) => ("set", "set"),
        (Some(_), None) => ("set", "unset"),
        (None, Some(_)) => ("unset", "set"),
        (None, None) => ("unset", "unset"),
    };
    d.diff(
        "auth_pass",
        pa.into(),
        pb.into(),
        v2,
        if v2 {
            "adverts fail authentication; both become master"
        } else {
            "VRRPv3 has no authentication; the setting is ignored"
        },
    );
    d.diff(
        "virtual_ips",
        format!("{:?}", vips(x)),
        format!("{:?}", vips(y)),
        true,
        "the service address moves to a different address set",
    );
    d.diff(
        "nopreempt",
        x.nopreempt.to_string(),
        y.nopreempt.to_string(),
        false,
        "fail-back behaves differently per direction",
    );
    if x.priority == y.priority {
        f.warn(format!(
            "[[vrrp]] {label}: both nodes have priority {}: the higher IP address wins ties; give the preferred leader a higher priority",
            x.priority
        ));
    }
    unicast(a, x, b, y, &label, f);
}

/// Reports a field that differs between the nodes' copies of an instance.
struct Differ<'a> {
    a: &'a str,
    b: &'a str,
    label: &'a str,
    f: &'a mut Findings,
}

impl Differ<'_> {
    /// An error if `err`, else a warning, when `l` and `r` differ.
    fn diff(&mut self, field: &str, l: String, r: String, err: bool, why: &str) {
        if l != r {
            let msg = format!(
                "[[vrrp]] {}: {field} differs ({} {l}, {} {r}): {why}",
                self.label, self.a, self.b
            );
            if err {
                self.f.error(msg)
            } else {
                self.f.warn(msg)
            }
        }
    }
}

fn vips(v: &VrrpConfig) -> BTreeSet<String> {
    v.virtual_ips
        .iter()
        .map(|s| match syncd_vrrp::config::parse_vip(s) {
            Ok(v) => v.to_string(),
            Err(_) => s.clone(),
        })
        .collect()
}

fn unicast(a: &Tables, x: &VrrpConfig, b: &Tables, y: &VrrpConfig, label: &str, f: &mut Findings) {
    match (x.unicast_peers.is_empty(), y.unicast_peers.is_empty()) {
        (true, true) => {}
        (false, false) => {
            for (n, mine, other, theirs) in [(a, x, b, y), (b, y, a, x)] {
                // The peer's adverts come from its unicast_src, else from
                // its interface address (its replication address is the
                // best guess we have here).
                if let Some(src) = theirs.unicast_src.or(other.addr) {
                    if !mine.unicast_peers.contains(&src) {
                        f.error(format!(
                            "[[vrrp]] {label}: {}'s unicast_peers {:?} lack {}'s address {src}: its adverts are dropped",
                            n.name, mine.unicast_peers, other.name
                        ));
                    }
                }
            }
        }
        _ => f.error(format!(
            "[[vrrp]] {label}: one node uses unicast_peers and the other multicast: neither hears the other"
        )),
    }
}

/// What the handshake with the running peer said.
pub enum Reached {
    /// Welcomed: the session's protocol version, the versions the peer
    /// speaks, its node name and generation.
    Welcome {
        version: u32,
        speaks: Speaks,
        node_id: String,
        lineage: Lineage,
    },
    /// The peer answered and refused (export id, version, a pin it lacks).
    Refused(String),
    /// Nothing answered, or the TLS handshake failed.
    Unreachable(String),
}

/// Findings from reaching the peer; `ours` is this node's generation.
pub fn reached(r: &Reached, me: NodeId, ours: &Lineage) -> Vec<Finding> {
    let mut f = Findings::default();
    match r {
        Reached::Welcome {
            version,
            speaks,
            lineage,
            ..
        } => {
            let mine = Speaks::OURS;
            if *version < mine.max {
                let may_lead =
                    syncd_proto::version::features(*version).is_some_and(|f| f.may_lead_beside);
                let auto = if may_lead {
                    ""
                } else {
                    " (a --role auto node does not take the lead beside it; see README, Upgrading)"
                };
                f.warn(format!(
                    "the peer speaks protocol {speaks}, this node {mine}: they pair on protocol {version} while you upgrade; upgrade the peer next{auto}"
                ));
            } else if speaks.max > mine.max {
                f.warn(format!(
                    "the peer speaks protocol {speaks}, this node {mine}: they pair on protocol {version} while you upgrade; upgrade this node next"
                ));
            }
            match ours.relation(me, lineage) {
                Relation::Diverged { .. } => f.warn(format!(
                    "this node and the peer hold diverged generations ({} here, {} there): the follower keeps what it would lose in its conflicts area",
                    crate::generation::describe(ours),
                    crate::generation::describe(lineage)
                )),
                Relation::Same | Relation::Ahead | Relation::Behind { .. } => {}
            }
        }
        Reached::Refused(why) => f.error(format!("the peer refused this node: {why}")),
        Reached::Unreachable(why) => f.error(format!("cannot reach the peer: {why}")),
    }
    f.0
}

/// Reads a node's own certificate for the comparison (`None`: unreadable here).
pub fn node<'a>(name: &'a str, cfg: &'a Config) -> Node<'a> {
    Node {
        name,
        cfg,
        cert: crate::tls::cert_fingerprint(&cfg.cert).ok(),
    }
}

/// Opens a session to the peer that changes nothing (`Purpose::Verify`) and
/// reports its handshake; the findings of [`reached`] follow from it.
pub async fn reach(cfg: &Config) -> (Reached, NodeId, Lineage) {
    let me = match crate::tls::Identity::from_config(cfg) {
        Ok(id) => crate::generation::node_id(&id),
        Err(e) => {
            return (
                Reached::Unreachable(e.to_string()),
                NodeId::default(),
                Lineage::default(),
            )
        }
    };
    let ours = crate::generation::Store::new(&cfg.state_dir)
        .load()
        .map(|r| r.lineage)
        .unwrap_or_default();
    let r = match crate::primary::Session::connect_as(cfg, crate::wire::Purpose::Verify, me, &ours)
        .await
    {
        Ok(s) => {
            let (version, node_id) = s.peer_version.clone();
            let lineage = s.peer.as_ref().map(|p| p.1.clone()).unwrap_or_default();
            let speaks = s.peer_speaks;
            s.close().await;
            Reached::Welcome {
                version,
                speaks,
                node_id,
                lineage,
            }
        }
        Err(crate::primary::ClientError::Refused(why, _)) => Reached::Refused(why),
        Err(e) => Reached::Unreachable(e.to_string()),
    };
    (r, me, ours)
}

#[cfg(test)]
mod tests;
