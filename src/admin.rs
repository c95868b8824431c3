//! The admin endpoint (HTTP/1.1 on the `admin` address): `/metrics` in
//! Prometheus text format, `/status` for `syncd status`; `POST /switchover`
//! for `syncd switchover` (`--role auto`, from loopback only). The server
//! and client are the shared ones of `syncd-ops`; the routes are here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use syncd_ops::admin::StatusCode;
use syncd_ops::admin::{self, ClientError, Limits, Method, Reply, Request};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach the admin address {0}: {1} (is the daemon running with `admin` set?)")]
    Connect(SocketAddr, std::io::Error),
    #[error("admin address {0}: {1}")]
    Http(SocketAddr, String),
}

impl From<ClientError> for AdminError {
    fn from(e: ClientError) -> AdminError {
        match e {
            ClientError::Connect(a, e) => AdminError::Connect(a, e),
            ClientError::Http(a, e) => AdminError::Http(a, e),
        }
    }
}

fn respond(st: &Stats, path: &str) -> Reply {
    match path {
        "/metrics" => Reply::metrics(st.prometheus()),
        "/status" => Reply::text(StatusCode::OK, st.status()),
        _ => Reply::text(StatusCode::NOT_FOUND, "try /metrics or /status\n"),
    }
}

/// `--role auto`: where `POST /switchover` goes (answered with what to
/// print, or why not), and how long a switchover may take at most.
pub type Switchover = (
    mpsc::Sender<oneshot::Sender<Result<String, String>>>,
    Duration,
);

/// `POST /switchover`: only from this host (the admin address is meant to
/// be loopback; a hand-over is not for anyone who can reach it).
async fn switchover(from: SocketAddr, sw: Option<&Switchover>) -> Reply {
    let Some((tx, _)) = sw else {
        return Reply::text(
            StatusCode::NOT_FOUND,
            "a switchover needs a node running --role auto\n",
        );
    };
    if !from.ip().is_loopback() {
        return Reply::text(
            StatusCode::FORBIDDEN,
            "a switchover is accepted from this host only (loopback)\n",
        );
    }
    let stopping = || Reply::text(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n");
    let (reply, answer) = oneshot::channel();
    if tx.send(reply).await.is_err() {
        return stopping();
    }
    match answer.await {
        Ok(Ok(msg)) => Reply::text(StatusCode::OK, format!("{msg}\n")),
        Ok(Err(why)) => Reply::text(StatusCode::CONFLICT, format!("{why}\n")),
        Err(_) => stopping(),
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, stats: Arc<Stats>, sw: Option<Switchover>) {
    // a switchover answers when the hand-over is done: the connection may
    // live as long as the longest one
    let limits = Limits {
        lifetime: Duration::from_secs(30) + sw.as_ref().map_or(Duration::ZERO, |s| s.1),
        ..Limits::default()
    };
    let sw = Arc::new(sw);
    admin::serve(listener, limits, move |r: Request| {
        let stats = stats.clone();
        let sw = sw.clone();
        async move {
            if r.method == Method::POST && r.path == "/switchover" {
                switchover(r.peer, sw.as_ref().as_ref()).await
            } else {
                respond(&stats, &r.path)
            }
        }
    })
    .await
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
    let l = admin::bind(addr).await?;
    tokio::spawn(serve(l, stats, sw));
    Ok(())
}

/// GETs `path` from a daemon's admin address.
pub async fn fetch(addr: SocketAddr, path: &str) -> Result<String, AdminError> {
    Ok(admin::get_ok(addr, path).await?)
}

/// POSTs to `path` (no body); the status and the text answered.
pub async fn post(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), AdminError> {
    Ok(admin::post(addr, path).await?)
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

    #[tokio::test]
    async fn switchover_is_refused_from_another_host() {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Result<String, String>>>(1);
        let sw = (tx, Duration::from_secs(5));
        let r = switchover("192.0.2.7:4000".parse().unwrap(), Some(&sw)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.body.contains("loopback"), "{}", r.body);
        assert!(rx.try_recv().is_err(), "a remote request reached the node");
    }
}
