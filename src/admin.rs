//! The admin endpoint (HTTP/1.1 on the `admin` address): `/metrics` in
//! Prometheus text format, `/status` for `syncd status`; `POST /switchover`
//! for `syncd switchover` (`--role auto`, from loopback only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

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

/// `--role auto`: where `POST /switchover` goes (answered with what to
/// print, or why not), and how long a switchover may take at most.
pub type Switchover = (
    mpsc::Sender<oneshot::Sender<Result<String, String>>>,
    std::time::Duration,
);

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

/// `POST /switchover`: only from this host (the admin address is meant to
/// be loopback; a hand-over is not for anyone who can reach it).
async fn switchover(from: SocketAddr, sw: Option<&Switchover>) -> Response<Full<Bytes>> {
    let Some((tx, _)) = sw else {
        return text(
            StatusCode::NOT_FOUND,
            "a switchover needs a node running --role auto\n".into(),
        );
    };
    if !from.ip().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "a switchover is accepted from this host only (loopback)\n".into(),
        );
    }
    let (reply, answer) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is stopping\n".into(),
        );
    }
    match answer.await {
        Ok(Ok(msg)) => text(StatusCode::OK, format!("{msg}\n")),
        Ok(Err(why)) => text(StatusCode::CONFLICT, format!("{why}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is stopping\n".into(),
        ),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, sw: Option<Switchover>) {
    let sw = Arc::new(sw);
    let limit = std::time::Duration::from_secs(30)
        + sw.as_ref()
            .as_ref()
            .map_or(std::time::Duration::ZERO, |s| s.1);
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let st = stats.clone();
        let sw = sw.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let st = st.clone();
                let sw = sw.clone();
                async move {
                    let r = if req.method() == hyper::Method::POST
                        && req.uri().path() == "/switchover"
                    {
                        switchover(from, sw.as_ref().as_ref()).await
                    } else {
                        respond(&st, req.uri().path())
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(limit, conn).await;
        });
    }
}

/// Binds `addr` and serves in the background; the error names the address.
pub async fn start(addr: SocketAddr, stats: Arc<Stats>) -> std::io::Result<()> {
    start_with(addr, stats, None).await
}

/// [`start`], and `POST /switchover` handed to `sw`.
pub async fn start_with(
    addr: SocketAddr,
    stats: Arc<Stats>,
    sw: Option<Switchover>,
) -> std::io::Result<()> {
    let l = TcpListener::bind(addr).await?;
    tokio::spawn(serve(l, stats, sw));
    Ok(())
}

/// GETs `path` from a daemon's admin address.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    let (status, body) = request(addr, hyper::Method::GET, path).await?;
    if !status.is_success() {
        return Err(AdminError::Http(addr, format!("HTTP {status}")));
    }
    Ok(body)
}

/// POSTs to `path` (no body); the status and the text answered.
pub async fn post(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), AdminError> {
    request(addr, hyper::Method::POST, path).await
}

async fn request(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
) -> Result<(StatusCode, String), AdminError> {
    let http = |e: String| AdminError::Http(addr, e);
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| AdminError::Connect(addr, e))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
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
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listen() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[tokio::test]
    async fn switchover_answers_travel_back_to_the_command() {
        let (l, a) = listen().await;
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Result<String, String>>>(1);
        let stats = Arc::new(Stats::new("auto", String::new()));
        tokio::spawn(serve(
            l,
            stats,
            Some((tx, std::time::Duration::from_secs(5))),
        ));
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(reply) = rx.recv().await {
                n += 1;
                let _ = reply.send(if n == 1 {
                    Ok("handed over".into())
                } else {
                    Err("the peer is not heard".into())
                });
            }
        });
        let (code, body) = post(a, "/switchover").await.unwrap();
        assert_eq!((code, body.as_str()), (StatusCode::OK, "handed over\n"));
        let (code, body) = post(a, "/switchover").await.unwrap();
        assert_eq!(code, StatusCode::CONFLICT);
        assert_eq!(body, "the peer is not heard\n");
        // A GET is the status page, not a switchover.
        assert!(fetch(a, "/status").await.unwrap().contains("role: auto"));
        assert!(fetch(a, "/switchover").await.is_err());
    }

    #[tokio::test]
    async fn only_auto_nodes_take_a_switchover() {
        let (l, a) = listen().await;
        tokio::spawn(serve(l, Arc::new(Stats::default()), None));
        let (code, body) = post(a, "/switchover").await.unwrap();
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(body.contains("--role auto"), "{body}");
    }
}
