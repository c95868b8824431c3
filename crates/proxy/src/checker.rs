//! Active health checks (the I/O half; rise/fall logic is in [`crate::health`]).
//! One task per server, feeding results into the shared group state, so the
//! health seen by every worker thread is the same.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::{CheckKind, HealthCheck};
use crate::health::Transition;
use crate::upstream::UpstreamRt;

/// Run one check against `addr`; true when healthy.
pub async fn check_once(addr: SocketAddr, hc: &HealthCheck) -> bool {
    matches!(
        tokio::time::timeout(hc.timeout, probe(addr, &hc.kind)).await,
        Ok(true)
    )
}

async fn probe(addr: SocketAddr, kind: &CheckKind) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let CheckKind::Http { path, host, .. } = kind else {
        return true;
    };
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: syncd-proxy-health\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // read the status line: "HTTP/1.x NNN"
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    parse_status_line(&buf[..n]).is_some_and(|s| kind.status_ok(s))
}

/// The status code of a response that starts `HTTP/1.x NNN`; `None` if
/// fewer than 12 bytes or not such a line (the same rule as the VRRP
/// checks: three plain digits, no sign).
pub fn parse_status_line(line: &[u8]) -> Option<u16> {
    syncd_vrrp::io::checks::parse_status(line)
}

/// Start checker tasks for every server of `up` that has a health check.
pub fn spawn_for(up: &Arc<UpstreamRt>) -> Vec<JoinHandle<()>> {
    let Some(hc) = up.cfg.health_check.clone() else {
        return Vec::new();
    };
    let targets: Vec<(u64, String, SocketAddr)> = up
        .group()
        .peers()
        .map(|p| {
            let addr = match hc.port {
                Some(port) => SocketAddr::new(p.data.addr.ip(), port),
                None => p.data.addr,
            };
            (p.id, p.spec.key.clone(), addr)
        })
        .collect();
    targets
        .into_iter()
        .map(|(id, name, addr)| {
            let up = up.clone();
            let hc = hc.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(hc.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let ok = check_once(addr, &hc).await;
                    let t = up.group().record_check(id, ok, hc.rise, hc.fall);
                    match t {
                        Some(Transition::WentDown) => tracing::warn!(
                            upstream = %up.cfg.name, server = %name, fall = hc.fall,
                            "health check: server is DOWN"
                        ),
                        Some(Transition::WentUp) => tracing::info!(
                            upstream = %up.cfg.name, server = %name, rise = hc.rise,
                            "health check: server is UP"
                        ),
                        None => {}
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn hc(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            rise: 1,
            fall: 1,
            port: None,
        }
    }

    async fn http_server(reply: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_check_compares_status() {
        let ok = http_server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let bad =
            http_server("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let kind = CheckKind::Http {
            path: "/health".into(),
            host: None,
            expect: vec![(200, 299)],
        };
        assert!(check_once(ok, &hc(kind.clone())).await);
        assert!(!check_once(bad, &hc(kind)).await);
    }

    #[test]
    fn status_line_is_version_space_three_digits() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 50"), None); // fewer than 12 bytes
        assert_eq!(parse_status_line(b"HTTP/1.0 500 "), Some(500));
        // Found by fuzz/ (status_line): a sign was taken by `str::parse`.
        assert_eq!(parse_status_line(b"HTTP/1.1 +20 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.\xd0\xe5500 x"), None);
    }

    #[tokio::test]
    async fn tcp_check_fails_on_closed_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(check_once(addr, &hc(CheckKind::Tcp)).await);
        drop(l);
        assert!(!check_once(addr, &hc(CheckKind::Tcp)).await);
    }
}
