//! What `syncd migrate` reads from one node's keepalived.conf beyond the
//! VRRP blocks the importer converts: instance facts for cross-node checks,
//! the check scripts, and LVS `virtual_server` blocks.

use std::collections::BTreeMap;

use syncd_vrrp::import::Node;

#[derive(Debug, Clone, Default)]
pub struct Instance {
    pub name: String,
    pub line: usize,
    pub state: Option<String>,
    pub vrid: Option<String>,
    pub nopreempt: bool,
    pub vips: Vec<String>,
    pub tracks: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Real {
    pub addr: String,
    pub weight: Option<String>,
    /// `tcp`, `http` (with the path) or none.
    pub check: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone, Default)]
pub struct VirtualServer {
    pub line: usize,
    pub addr: String,
    pub algo: Option<String>,
    pub kind: Option<String>,
    pub protocol: Option<String>,
    pub reals: Vec<Real>,
}

#[derive(Debug, Clone, Default)]
pub struct Keepalived {
    pub instances: Vec<Instance>,
    /// `vrrp_script` name → its command line.
    pub scripts: BTreeMap<String, String>,
    pub virtual_servers: Vec<VirtualServer>,
}

fn join_addr(ip: &str, port: Option<&str>) -> String {
    match port {
        Some(p) if ip.contains(':') => format!("[{ip}]:{p}"),
        Some(p) => format!("{ip}:{p}"),
        None => ip.to_string(),
    }
}

pub fn read(text: &str) -> Keepalived {
    let mut k = Keepalived::default();
    for n in syncd_vrrp::import::parse(text) {
        match n.key() {
            "vrrp_script" if n.has_block => {
                if let (Some(name), Some(s)) =
                    (n.arg(1), n.children.iter().find(|c| c.key() == "script"))
                {
                    k.scripts.insert(name.to_string(), s.words[1..].join(" "));
                }
            }
            "vrrp_instance" if n.has_block => k.instances.push(instance(&n)),
            "virtual_server" if n.has_block => {
                if let Some(ip) = n.arg(1) {
                    k.virtual_servers.push(virtual_server(&n, ip));
                }
            }
            _ => {}
        }
    }
    k
}

fn instance(n: &Node) -> Instance {
    let mut i = Instance {
        name: n.arg(1).unwrap_or("").to_string(),
        line: n.line,
        ..Instance::default()
    };
    for c in &n.children {
        match c.key() {
            "state" => i.state = c.arg(1).map(str::to_uppercase),
            "virtual_router_id" => i.vrid = c.arg(1).map(str::to_string),
            "nopreempt" => i.nopreempt = true,
            "virtual_ipaddress" => {
                i.vips.extend(
                    c.children
                        .iter()
                        .filter_map(|v| v.arg(0).map(str::to_string)),
                );
            }
            "track_script" => {
                i.tracks.extend(
                    c.children
                        .iter()
                        .filter_map(|v| v.arg(0).map(str::to_string)),
                );
            }
            _ => {}
        }
    }
    i
}

fn virtual_server(n: &Node, ip: &str) -> VirtualServer {
    let mut v = VirtualServer {
        line: n.line,
        addr: join_addr(ip, n.arg(2)),
        ..VirtualServer::default()
    };
    for c in &n.children {
        match c.key() {
            "lb_algo" => v.algo = c.arg(1).map(str::to_string),
            "lb_kind" => v.kind = c.arg(1).map(str::to_uppercase),
            "protocol" => v.protocol = c.arg(1).map(str::to_uppercase),
            "real_server" => {
                let mut r = Real {
                    addr: join_addr(c.arg(1).unwrap_or(""), c.arg(2)),
                    ..Real::default()
                };
                for d in &c.children {
                    match d.key() {
                        "weight" => r.weight = d.arg(1).map(str::to_string),
                        "TCP_CHECK" => r.check = Some(("tcp".into(), None)),
                        "HTTP_GET" | "SSL_GET" => {
                            let path = d
                                .children
                                .iter()
                                .find(|u| u.key() == "url")
                                .and_then(|u| u.children.iter().find(|p| p.key() == "path"))
                                .and_then(|p| p.arg(1))
                                .map(str::to_string);
                            r.check = Some(("http".into(), path));
                        }
                        _ => {}
                    }
                }
                v.reals.push(r);
            }
            _ => {}
        }
    }
    v
}

/// What a check script does that makes it useless as a track: stopping
/// keepalived (the failover happens by killing the daemon; as a track it
/// must fail instead), or never exiting non-zero.
pub fn script_traps(body: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let code: Vec<&str> = body
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    let text = code.join("\n");
    let stops = [
        "stop keepalived",
        "killall keepalived",
        "pkill keepalived",
        "kill keepalived",
        "keepalived stop",
        "killall -9 keepalived",
    ];
    if stops.iter().any(|s| text.contains(s)) {
        out.push("stops keepalived");
    }
    // `exit N` with N other than 0 (or a variable), anywhere on a line.
    let exits_nonzero = |l: &str| {
        l.match_indices("exit").any(|(i, _)| {
            let rest = l[i + 4..].trim_start();
            rest.starts_with('$') || rest.starts_with(|c: char| c.is_ascii_digit() && c != '0')
        })
    };
    // Else the script's status is its last command's: a test or a probe can fail.
    let probes = [
        "[",
        "test ",
        "curl",
        "pgrep",
        "pidof",
        "killall -0",
        "nc ",
        "wget",
        "ss ",
        "systemctl is-active",
    ];
    let fails = text
        .lines()
        .any(|l| exits_nonzero(l) || l.trim() == "false")
        || text
            .lines()
            .last()
            .is_some_and(|l| probes.iter().any(|p| l.trim().starts_with(p)));
    if !fails {
        out.push("always exits 0");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_instances_scripts_and_virtual_servers() {
        let k = read(
            "vrrp_script chk { script \"/etc/keepalived/check.sh\"\n interval 2 }\n\
             vrrp_instance VI_1 {\n state master\n virtual_router_id 51\n nopreempt\n\
             virtual_ipaddress {\n 10.0.0.40\n }\n track_script {\n chk\n }\n}\n\
             virtual_server 10.0.0.40 80 {\n lb_algo rr\n lb_kind DR\n protocol TCP\n\
             real_server 10.0.0.11 80 {\n weight 2\n TCP_CHECK {\n connect_timeout 3\n }\n }\n}\n",
        );
        assert_eq!(k.scripts["chk"], "/etc/keepalived/check.sh");
        let i = &k.instances[0];
        assert_eq!(
            (
                i.name.as_str(),
                i.state.as_deref(),
                i.vrid.as_deref(),
                i.nopreempt
            ),
            ("VI_1", Some("MASTER"), Some("51"), true)
        );
        assert_eq!(i.vips, ["10.0.0.40"]);
        assert_eq!(i.tracks, ["chk"]);
        let v = &k.virtual_servers[0];
        assert_eq!(v.addr, "10.0.0.40:80");
        assert_eq!(v.kind.as_deref(), Some("DR"));
        assert_eq!(v.reals[0].addr, "10.0.0.11:80");
        assert_eq!(v.reals[0].weight.as_deref(), Some("2"));
        assert_eq!(v.reals[0].check, Some(("tcp".into(), None)));
    }

    #[test]
    fn script_traps_of_the_seeds_patterns() {
        // Seed 003/004: restart nginx, else stop keepalived; no exit status.
        let seed = "counter=$(ps -C nginx --no-heading|wc -l)\nif [ \"${counter}\" = \"0\" ]; then\n    systemctl restart nginx\n    sleep 2\n    counter=$(ps -C nginx --no-heading|wc -l)\n    if [ \"${counter}\" = \"0\" ]; then\n        systemctl stop keepalived\n    fi\nfi\n";
        assert_eq!(script_traps(seed), ["stops keepalived", "always exits 0"]);
        assert!(script_traps("#!/bin/sh\npidof nginx\n").is_empty());
        assert!(
            script_traps("#!/bin/sh\ncurl -fs http://127.0.0.1/ || exit 1\nexit 0\n").is_empty()
        );
        assert_eq!(
            script_traps("#!/bin/sh\necho ok\nexit 0\n"),
            ["always exits 0"]
        );
    }
}
