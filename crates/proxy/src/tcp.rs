//! TCP (layer-4) mode: the LVS role. Same upstream machinery (algorithms,
//! max_fails/fail_timeout, backup, health checks, retries on connect
//! failure), then bytes are copied both ways until either side closes or the
//! session is idle for `idle_timeout`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::balancer::{Attempt, Key, Outcome};
use crate::config;
use crate::state::Shared;
use crate::upstream::{ServerRt, UpstreamRt};

/// Wraps a stream and stamps the time of the last successful read.
struct Activity<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

pub async fn serve(
    client: TcpStream,
    peer_addr: SocketAddr,
    cfg: Arc<config::Listener>,
    shared: Arc<Shared>,
    _session: Arc<()>,
) {
    shared.metrics.add(|c| &c.tcp_connections);
    let snap = shared.current();
    let Some(up) = snap.upstreams.get(&cfg.upstream).cloned() else {
        return;
    };
    shared.deposit_retry_token();
    let started = Instant::now();
    let Some((peer, server, backend)) = connect(&up, &cfg, &shared, peer_addr).await else {
        return;
    };
    server.metrics.observe(started.elapsed());
    let epoch = Instant::now();
    relay(client, backend, epoch, cfg.idle_timeout, peer_addr).await;
    up.group().release(peer, Instant::now(), Outcome::Success);
    if shared.access_log() {
        tracing::info!(
            target: "access",
            listener = %cfg.name,
            client = %peer_addr,
            upstream = %up.cfg.name,
            server = %server.name,
            secs = epoch.elapsed().as_secs_f64(),
            "tcp session"
        );
    }
}

/// The balancing key of a TCP session: the client's address only.
fn key(up: &UpstreamRt, peer_addr: SocketAddr) -> Key {
    Key {
        client_ip: Some(peer_addr.ip().to_canonical()),
        hash: up.key.as_ref().map(|t| {
            struct V(SocketAddr);
            impl crate::balancer::hash::KeyVars for V {
                fn var(&self, name: &str) -> Option<String> {
                    (name == "remote_addr").then(|| self.0.ip().to_canonical().to_string())
                }
            }
            t.hash(&V(peer_addr))
        }),
    }
}

/// Connect to a server, trying others on connect failure as the retry
/// rules allow; the selected server (to release) and its stream.
async fn connect(
    up: &UpstreamRt,
    cfg: &config::Listener,
    shared: &Shared,
    peer_addr: SocketAddr,
) -> Option<(u64, Arc<ServerRt>, TcpStream)> {
    let key = key(up, peer_addr);
    let mut attempt = Attempt::new();
    let started = Instant::now();
    loop {
        let selected = {
            let mut g = up.group();
            let max_tries = if up.cfg.tries == 0 {
                g.len()
            } else {
                up.cfg.tries as usize
            };
            if attempt.count() >= max_tries {
                None
            } else {
                g.select(Instant::now(), key, &mut attempt)
                    .map(|(id, s)| (id, s.clone()))
            }
        };
        let Some((peer, server)) = selected else {
            tracing::warn!(listener = %cfg.name, client = %peer_addr, "no upstream server could take the TCP connection");
            return None;
        };
        server.metrics.add(|c| &c.requests);
        match server.connect_tcp(up.cfg.connect_timeout).await {
            Ok(s) => return Some((peer, server, s)),
            Err(e) => {
                server.metrics.add(|c| &c.errors);
                up.group().release(peer, Instant::now(), Outcome::Failure);
                tracing::warn!(upstream = %up.cfg.name, server = %server.name, error = %e, "TCP connect failed");
                let over = !up.cfg.next_upstream_timeout.is_zero()
                    && started.elapsed() >= up.cfg.next_upstream_timeout;
                if over || !shared.withdraw_retry(Instant::now()) {
                    return None;
                }
            }
        }
    }
}

/// Copy both ways until either side closes or nothing moved for `idle`.
async fn relay(
    client: TcpStream,
    backend: TcpStream,
    epoch: Instant,
    idle: Duration,
    peer_addr: SocketAddr,
) {
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Activity {
        inner: client,
        epoch,
        last: last.clone(),
    };
    let mut b = Activity {
        inner: backend,
        epoch,
        last: last.clone(),
    };
    let watchdog = async {
        loop {
            let since = epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut a, &mut b) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "TCP session ended with error");
            }
        }
        _ = watchdog => {
            tracing::debug!(client = %peer_addr, "TCP session idle timeout");
        }
    }
}
