//! The bidirectional splice behind a protocol switch (HTTP Upgrade, e.g.
//! WebSocket): bytes are copied both ways until one side closes (its end is
//! passed on, then both connections close, as nginx does: a half-open
//! tunnel would hold the server's slot for nothing), an error, or `idle`
//! passes without a read in either direction (nginx times upgraded
//! connections with `proxy_read_timeout` the same way).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The backend side of a protocol switch, handed from the request path to
/// the client connection with the 101 response.
pub struct Tunnel {
    pub backend: tokio::net::TcpStream,
    /// Backend bytes that arrived behind the 101 head.
    pub early: BytesMut,
    /// Longest silence in both directions (the upstream's `read_timeout`).
    pub idle: Duration,
    /// Held until the tunnel ends (the server's least_conn/max_conns slot).
    pub hold: Box<dyn Send + Sync>,
}

/// A [`Tunnel`] riding in a response's extensions (which must be `Clone`).
#[derive(Clone)]
pub struct PendingTunnel(Arc<Mutex<Option<Tunnel>>>);

impl PendingTunnel {
    pub fn new(t: Tunnel) -> PendingTunnel {
        PendingTunnel(Arc::new(Mutex::new(Some(t))))
    }

    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Run a tunnel on a client connection whose 101 was sent. `leftover`:
/// client bytes that came behind the request head; they go first.
pub async fn run<C>(client: C, leftover: BytesMut, mut t: Tunnel, peer: SocketAddr)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _hold = t.hold;
    if !leftover.is_empty() {
        let sent = tokio::time::timeout(t.idle, t.backend.write_all(&leftover)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(client = %peer, "upgraded connection: backend took no early bytes");
            return;
        }
    }
    match splice(client, t.backend, t.early, t.idle).await {
        Ok(m) => tracing::debug!(
            client = %peer,
            to_backend = m.to_backend + leftover.len() as u64,
            to_client = m.to_client,
            "upgraded connection closed"
        ),
        Err(e) => tracing::debug!(client = %peer, error = %e, "upgraded connection ended"),
    }
}

/// Bytes moved by a tunnel that ended cleanly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
}

/// Splice `client` and `backend`. `early` holds backend bytes that arrived
/// with the 101 head; they go to the client first.
pub async fn splice<C, B>(
    client: C,
    backend: B,
    early: BytesMut,
    idle: Duration,
) -> io::Result<Moved>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let start = Instant::now();
    // milliseconds since `start` of the last read on either side
    let last = AtomicU64::new(0);
    let (to_backend, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = pump(&mut cr, &mut bw, &last, start, &to_backend);
    let down = async {
        if !early.is_empty() {
            cw.write_all(&early).await?;
            cw.flush().await?;
            to_client.fetch_add(early.len() as u64, Ordering::Relaxed);
        }
        pump(&mut br, &mut cw, &last, start, &to_client).await
    };
    let watchdog = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = up => r?,
        r = down => r?,
        () = watchdog => return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "upgraded connection idle for read_timeout",
        )),
    }
    Ok(Moved {
        to_backend: to_backend.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
    })
}

/// Copy one direction until end of stream, then pass the end on.
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    last: &AtomicU64,
    start: Instant,
    moved: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == 0 {
            // the peer may already be gone: nothing more to tell it
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        // TLS and hyper's upgraded stream may hold bytes until flushed
        w.flush().await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_early_bytes_come_first() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut backend_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(splice(
            client,
            backend,
            BytesMut::from(&b"early"[..]),
            Duration::from_secs(30),
        ));
        let mut buf = [0u8; 5];
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"early");
        client_peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        backend_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        backend_peer.write_all(b"pong").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // the backend closes: the client sees the end and the tunnel is over,
        // though the client has not closed (no half-open tunnel)
        drop(backend_peer);
        let moved = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("one side's close ends the tunnel")
            .unwrap()
            .unwrap();
        assert_eq!(client_peer.read(&mut buf).await.unwrap(), 0);
        assert_eq!(
            moved,
            Moved {
                to_backend: 4,
                to_client: 9
            }
        );
    }

    #[tokio::test]
    async fn an_idle_tunnel_ends_after_the_limit_but_traffic_keeps_it_open() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (backend, mut backend_peer) = tokio::io::duplex(1024);
        let t = Instant::now();
        let task = tokio::spawn(splice(
            client,
            backend,
            BytesMut::new(),
            Duration::from_millis(500),
        ));
        // traffic every 100 ms for 600 ms: longer than the limit in total
        let mut buf = [0u8; 1];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client_peer.write_all(b"x").await.unwrap();
            backend_peer.read_exact(&mut buf).await.unwrap();
        }
        assert!(!task.is_finished(), "a moving tunnel stays open");
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(1100));
    }
}
