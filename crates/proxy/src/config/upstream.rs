//! One `[[upstream]]`, its servers and its health check.

use std::collections::HashSet;
use std::time::Duration;

use super::raw::{RawHealth, RawServer, RawUpstream};
use super::values::{duration, int, parse_status_ranges, positive_duration, resolve, strings};
use super::{
    invalid, Algorithm, CheckKind, ConfigError, HealthCheck, HostHeader, Server, Upstream,
};

pub(super) fn upstream(i: usize, u: RawUpstream) -> Result<Upstream, ConfigError> {
    let name = u.name.clone().ok_or_else(|| {
        invalid(
            format!("upstream[{i}].name"),
            "is missing; every [[upstream]] needs a name",
        )
    })?;
    let k = |field: &str| format!("upstream {name:?}.{field}");
    let algorithm = algorithm(&u, &k)?;
    let host_header = host_header(&u, &k)?;
    let servers = servers(&name, u.server, &algorithm)?;
    let health_check = match u.health_check {
        None => None,
        Some(h) => Some(health(&k("health_check"), h)?),
    };
    Ok(Upstream {
        algorithm,
        connect_timeout: positive_duration(
            &k("connect_timeout"),
            u.connect_timeout,
            Duration::from_secs(5),
        )?,
        read_timeout: positive_duration(
            &k("read_timeout"),
            u.read_timeout,
            Duration::from_secs(60),
        )?,
        keepalive: int(
            &k("keepalive"),
            u.keepalive,
            32,
            0,
            100_000,
            "use 0 (no pooling) or a count of idle connections per server",
        )? as usize,
        keepalive_timeout: duration(
            &k("keepalive_timeout"),
            u.keepalive_timeout,
            Duration::from_secs(4),
        )?,
        tries: int(
            &k("tries"),
            u.tries,
            0,
            0,
            1000,
            "use 0 (as many as servers) or a positive count",
        )? as u32,
        next_upstream_timeout: duration(
            &k("next_upstream_timeout"),
            u.next_upstream_timeout,
            Duration::ZERO,
        )?,
        host_header,
        servers,
        health_check,
        name,
    })
}

/// `algorithm` and the `hash_key` it may need.
fn algorithm(u: &RawUpstream, k: &dyn Fn(&str) -> String) -> Result<Algorithm, ConfigError> {
    let algorithm = match u.algorithm.as_deref() {
        None | Some("round_robin") => Algorithm::RoundRobin,
        Some("least_conn") => Algorithm::LeastConn,
        Some("ip_hash") => Algorithm::IpHash,
        Some("hash") => {
            let key = u.hash_key.clone().ok_or_else(|| {
                invalid(k("hash_key"), "is missing; algorithm = \"hash\" needs a key such as \"$request_uri\"")
            })?;
            crate::balancer::hash::KeyTemplate::parse(&key).map_err(|m| invalid(k("hash_key"), m))?;
            Algorithm::Hash(key)
        }
        Some(other) => {
            return Err(invalid(
                k("algorithm"),
                format!("{other:?} is unknown; use \"round_robin\", \"least_conn\", \"ip_hash\" or \"hash\""),
            ))
        }
    };
    if u.hash_key.is_some() && !matches!(algorithm, Algorithm::Hash(_)) {
        return Err(invalid(
            k("hash_key"),
            "is only used with algorithm = \"hash\"; remove it or set the algorithm",
        ));
    }
    Ok(algorithm)
}

fn host_header(u: &RawUpstream, k: &dyn Fn(&str) -> String) -> Result<HostHeader, ConfigError> {
    Ok(match u.host_header.as_deref() {
        None | Some("$host") | Some("preserve") => HostHeader::Preserve,
        Some("$proxy_host") | Some("upstream") => HostHeader::Upstream,
        Some("") => {
            return Err(invalid(
                k("host_header"),
                "is empty; use \"$host\", \"$proxy_host\" or a host name",
            ))
        }
        Some(other) => HostHeader::Fixed(other.to_string()),
    })
}

/// The `[[upstream.server]]` list: at least one, no address twice, not
/// only backups.
fn servers(
    name: &str,
    raw: Vec<RawServer>,
    algorithm: &Algorithm,
) -> Result<Vec<Server>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            format!("upstream {name:?}.server"),
            "is empty; add at least one [[upstream.server]] with addr = \"IP:port\"",
        ));
    }
    let mut servers = Vec::new();
    let mut seen = HashSet::new();
    for (j, s) in raw.into_iter().enumerate() {
        let sk = |field: &str| format!("upstream {name:?}.server[{j}].{field}");
        servers.push(server(&sk, s, algorithm, &mut seen)?);
    }
    if servers.iter().all(|s| s.backup) {
        return Err(invalid(
            format!("upstream {name:?}.server"),
            "has only backup servers; mark at least one server as primary (backup = false)",
        ));
    }
    Ok(servers)
}

fn server(
    sk: &dyn Fn(&str) -> String,
    s: RawServer,
    algorithm: &Algorithm,
    seen: &mut HashSet<String>,
) -> Result<Server, ConfigError> {
    let text = s
        .addr
        .ok_or_else(|| invalid(sk("addr"), "is missing; write addr = \"IP:port\""))?;
    let addr = resolve(&sk("addr"), &text)?;
    if !seen.insert(text.clone()) {
        return Err(invalid(
            sk("addr"),
            format!("{text:?} is listed twice in this upstream"),
        ));
    }
    let weight = match s.weight {
        None => 1,
        Some(w) if (1..=1000).contains(&w) => w as u32,
        Some(w) => {
            return Err(invalid(
                sk("weight"),
                format!("{w} is invalid; use a positive integer up to 1000 (nginx default 1)"),
            ))
        }
    };
    let backup = s.backup.unwrap_or(false);
    if backup && matches!(algorithm, Algorithm::IpHash | Algorithm::Hash(_)) {
        return Err(invalid(
            sk("backup"),
            "backup servers cannot be used with ip_hash or hash (as in nginx); remove backup or use round_robin/least_conn",
        ));
    }
    Ok(Server {
        name: text,
        addr,
        weight,
        max_fails: int(
            &sk("max_fails"),
            s.max_fails,
            1,
            0,
            1_000_000,
            "use 0 (never mark down) or a positive count (nginx default 1)",
        )? as u32,
        fail_timeout: duration(&sk("fail_timeout"), s.fail_timeout, Duration::from_secs(10))?,
        backup,
        down: s.down.unwrap_or(false),
        max_conns: int(
            &sk("max_conns"),
            s.max_conns,
            0,
            0,
            10_000_000,
            "use 0 (unlimited) or a positive count",
        )? as u32,
    })
}

fn health(key: &str, h: RawHealth) -> Result<HealthCheck, ConfigError> {
    let k = |field: &str| format!("{key}.{field}");
    let kind = match h.kind.as_deref() {
        None | Some("tcp") => {
            if h.path.is_some() || h.expect_status.is_some() || h.host.is_some() {
                return Err(invalid(
                    k("type"),
                    "path/host/expect_status need type = \"http\"",
                ));
            }
            CheckKind::Tcp
        }
        Some("http") => {
            let path = h.path.unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') {
                return Err(invalid(k("path"), format!("{path:?} must start with '/'")));
            }
            let expect = match h.expect_status {
                None => vec![(200, 399)],
                Some(raw) => {
                    parse_status_ranges(&k("expect_status"), strings(&k("expect_status"), raw)?)?
                }
            };
            CheckKind::Http {
                path,
                host: h.host,
                expect,
            }
        }
        Some(other) => {
            return Err(invalid(
                k("type"),
                format!("{other:?} is unknown; use \"tcp\" or \"http\""),
            ))
        }
    };
    let interval = positive_duration(&k("interval"), h.interval, Duration::from_secs(2))?;
    let timeout = positive_duration(&k("timeout"), h.timeout, Duration::from_secs(1))?;
    Ok(HealthCheck {
        kind,
        interval,
        timeout,
        rise: int(
            &k("rise"),
            h.rise,
            2,
            1,
            1000,
            "use a positive count (default 2)",
        )? as u32,
        fall: int(
            &k("fall"),
            h.fall,
            3,
            1,
            1000,
            "use a positive count (default 3)",
        )? as u32,
        port: match h.port {
            None => None,
            Some(p) => Some(int(
                &k("port"),
                Some(p),
                0,
                1,
                65535,
                "use a port between 1 and 65535",
            )? as u16),
        },
    })
}
