//! The admin endpoint (HTTP/1.1 on the `admin` address): `/metrics` in
//! Prometheus text format, `/status` for `syncd status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the admin address {0}: {1} (is the daemon running with `admin` set?)")]
    Connect(SocketAddr, std::io::Error),
    #[error("admin address {0}: {1}")]
    Http(SocketAddr, String),
}

fn respond(st: &Stats, path: &str) -> Response<Full<Bytes>> {
    let (code, ctype, body) = match path {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", st.prometheus()),
        "/status" => (StatusCode::OK, "text/plain", st.status()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /status\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let st = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = respond(&st, req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}

/// Binds `addr` and serves in the background; the error names the address.
pub async fn start(addr: SocketAddr, stats: Arc<Stats>) -> std::io::Result<()> {
    let l = TcpListener::bind(addr).await?;
    tokio::spawn(serve(l, stats));
    Ok(())
}

/// GETs `path` from a daemon's admin address.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    let http = |e: String| AdminError::Http(addr, e);
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| AdminError::Connect(addr, e))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(e.to_string()))?;
    let res = tx
        .send_request(req)
        .await
        .map_err(|e| http(e.to_string()))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| http(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(http(format!("HTTP {status}")));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}
