//! Tiny admin HTTP endpoint: `/metrics` (Prometheus text) and `/status` (JSON).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::{render, Counters, InstanceStatus};

/// What the admin endpoint reads.
#[derive(Clone)]
pub struct AdminState {
    pub instances: Vec<(watch::Receiver<InstanceStatus>, Arc<Counters>)>,
}

impl AdminState {
    pub fn status_json(&self) -> String {
        let v: Vec<InstanceStatus> = self
            .instances
            .iter()
            .map(|(r, _)| r.borrow().clone())
            .collect();
        serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into())
    }

    pub fn metrics(&self) -> String {
        let snap: Vec<(InstanceStatus, &Counters)> = self
            .instances
            .iter()
            .map(|(r, c)| (r.borrow().clone(), c.as_ref()))
            .collect();
        render(&snap)
    }
}

/// Bind the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serve forever on `listener`.
pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let st = state.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), handle(s, st)).await;
        });
    }
}

async fn handle(mut s: TcpStream, st: AdminState) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
            || buf[..n].windows(2).any(|w| w == b"\n\n")
        {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let (code, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", st.metrics()),
        "/status" => ("200 OK", "application/json", st.status_json() + "\n"),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /status or /metrics\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

/// Client side of `syncd vrrp status`: GET `path` from `addr`, return the body.
pub async fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        Some((head, _)) => Err(std::io::Error::other(
            head.lines().next().unwrap_or("bad response").to_string(),
        )),
        None => Err(std::io::Error::other("malformed response")),
    }
}
