//! The syncd-proxy config a node gets from its nginx upstreams and LVS blocks.

use std::fmt::Write;

use super::keepalived::Keepalived;
use super::keepalived::VirtualServer;
use super::nginx::{Nginx, Server, Upstream};
use super::{q, strip_header, Kind, Out};

fn listen_addr(l: &str) -> String {
    if l.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{l}")
    } else if let Some(p) = l.strip_prefix("*:") {
        format!("0.0.0.0:{p}")
    } else {
        l.to_string()
    }
}

/// The config being written, and where its notes go: only the first node's
/// are reported (both nodes carry the same).
struct Doc<'a> {
    s: String,
    first: bool,
    o: &'a mut Out,
}

impl Doc<'_> {
    fn note(&mut self, kind: Kind, text: String) {
        if self.first {
            self.o.note(kind, text);
        }
    }
}

pub(super) fn proxy_toml(
    node: &str,
    ngx: Option<&Nginx>,
    kas: &[Keepalived],
    vrrp: &str,
    o: &mut Out,
) -> String {
    let mut d = Doc {
        s: format!(
            "# syncd-proxy for {node}; written by `syncd migrate`.\n# Check: syncd-proxy --check --config proxy.toml\n\n[global]\nworkers = 0\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n"
        ),
        first: node == "node1" || node == "the load balancer",
        o,
    };
    if let Some(n) = ngx {
        nginx(&mut d, n);
    }
    // LVS virtual servers become TCP listeners (the first node's blocks;
    // both nodes carry the same in a keepalived LVS pair).
    if let Some(k) = kas.iter().find(|k| !k.virtual_servers.is_empty()) {
        for v in &k.virtual_servers {
            lvs(&mut d, v);
        }
    }
    d.s.push_str(&strip_header(vrrp));
    d.s
}

fn nginx(d: &mut Doc, n: &Nginx) {
    for site in &n.sites {
        if !n.upstreams.iter().any(|u| u.name == site.upstream) {
            d.note(Kind::NotCarried, format!("proxy_pass http://{}: no `upstream {}` block given (a host name?); not carried over", site.upstream, site.upstream));
            continue;
        }
        let listen: Vec<String> = site.listen.iter().map(|l| q(&listen_addr(l))).collect();
        let _ = write!(
            d.s,
            "[[listener]]\nlisten = [{}]\nupstream = {}\n\n",
            listen.join(", "),
            q(&site.upstream)
        );
    }
    for u in &n.upstreams {
        upstream(d, u);
    }
    for note in &n.notes {
        d.note(Kind::NotCarried, note.clone());
    }
}

fn upstream(d: &mut Doc, u: &Upstream) {
    let _ = writeln!(d.s, "[[upstream]]\nname = {}", q(&u.name));
    match u.algorithm.as_deref() {
        Some("least_conn") => d.s.push_str("algorithm = \"least_conn\"\n"),
        Some("ip_hash") => d.s.push_str("algorithm = \"ip_hash\"\n"),
        Some(h) if h.starts_with("hash") => {
            let key = h.split_whitespace().nth(1).unwrap_or("$request_uri");
            let _ = writeln!(d.s, "algorithm = \"hash\"\nhash_key = {}", q(key));
            if !h.contains("consistent") {
                d.note(Kind::NotCarried, format!("upstream {}: `hash` without `consistent` becomes syncd-proxy's consistent (ketama) hash", u.name));
            }
        }
        _ => {}
    }
    d.s.push('\n');
    for sv in &u.servers {
        server(d, u, sv);
    }
    d.note(
        Kind::Carried,
        format!(
            "nginx upstream {} ({} servers) → [[upstream]]",
            u.name,
            u.servers.len()
        ),
    );
}

fn server(d: &mut Doc, u: &Upstream, sv: &Server) {
    let _ = writeln!(d.s, "[[upstream.server]]\naddr = {}", q(&sv.addr));
    for (key, v) in [("weight", &sv.weight), ("max_fails", &sv.max_fails)] {
        match v.as_deref().map(|x| (x, x.parse::<u32>())) {
            Some((_, Ok(n))) => {
                let _ = writeln!(d.s, "{key} = {n}");
            }
            Some((x, Err(_))) => d.note(
                Kind::NotCarried,
                format!(
                    "upstream {} server {}: {key}={x} is not a number; left out",
                    u.name, sv.addr
                ),
            ),
            None => {}
        }
    }
    if let Some(t) = &sv.fail_timeout {
        let _ = writeln!(d.s, "fail_timeout = {}", q(t));
    }
    if sv.backup {
        d.s.push_str("backup = true\n");
    }
    if sv.down {
        d.s.push_str("down = true\n");
    }
    if !sv.ignored.is_empty() {
        d.note(
            Kind::NotCarried,
            format!(
                "upstream {} server {}: {} not carried over",
                u.name,
                sv.addr,
                sv.ignored.join(" ")
            ),
        );
    }
    d.s.push('\n');
}

fn lvs(d: &mut Doc, v: &VirtualServer) {
    let port = v.addr.rsplit_once(':').map_or("0", |(_, p)| p);
    let name = format!("lvs_{}", v.addr.replace([':', '.', '[', ']'], "_"));
    let _ = write!(
        d.s,
        "# was LVS virtual_server {} (lb_kind {})\n[[listener]]\nlisten = {}\nmode = \"tcp\"\nupstream = {}\n\n[[upstream]]\nname = {}\n",
        v.addr,
        v.kind.as_deref().unwrap_or("NAT"),
        q(&format!("0.0.0.0:{port}")),
        q(&name),
        q(&name)
    );
    match v.algo.as_deref() {
        Some("lc" | "wlc" | "sed" | "nq") => d.s.push_str("algorithm = \"least_conn\"\n"),
        Some("sh") => d.s.push_str("algorithm = \"ip_hash\"\n"),
        _ => {}
    }
    d.s.push('\n');
    for r in &v.reals {
        let _ = writeln!(d.s, "[[upstream.server]]\naddr = {}", q(&r.addr));
        match r.weight.as_deref().map(|x| (x, x.parse::<u32>())) {
            Some((_, Ok(n))) => {
                let _ = writeln!(d.s, "weight = {n}");
            }
            Some((x, Err(_))) => d.note(
                Kind::NotCarried,
                format!(
                    "virtual_server {} real_server {}: weight {x} is not a number; left out",
                    v.addr, r.addr
                ),
            ),
            None => {}
        }
        d.s.push('\n');
    }
    match v.reals.iter().find_map(|r| r.check.clone()) {
        Some((kind, path)) if kind == "http" => {
            let _ = write!(
                d.s,
                "[upstream.health_check]\ntype = \"http\"\npath = {}\ninterval = \"2s\"\n\n",
                q(path.as_deref().unwrap_or("/"))
            );
        }
        Some(_) => {
            d.s.push_str("[upstream.health_check]\ntype = \"tcp\"\ninterval = \"2s\"\n\n")
        }
        None => {}
    }
    d.note(
        Kind::Carried,
        format!(
            "LVS virtual_server {} ({} real servers) → a TCP listener and upstream",
            v.addr,
            v.reals.len()
        ),
    );
    if matches!(v.kind.as_deref(), Some("DR" | "TUN")) {
        d.note(Kind::NotCarried, format!("virtual_server {}: lb_kind {} → syncd-proxy terminates connections, so real servers see the proxy's address, not the client's; the VIP on their lo and the arp_ignore/arp_announce sysctls are no longer needed", v.addr, v.kind.as_deref().unwrap_or("")));
    }
    if v.protocol.as_deref() == Some("UDP") {
        d.note(
            Kind::Trap,
            format!(
                "virtual_server {}: UDP is not proxied by syncd-proxy",
                v.addr
            ),
        );
    }
}
