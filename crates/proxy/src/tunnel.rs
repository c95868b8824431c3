//! The bidirectional splice behind a protocol switch (HTTP Upgrade, e.g.
//! WebSocket): bytes are copied both ways until both sides have closed, an
//! error, or `idle` passes without a read in either direction (nginx times
//! upgraded connections with `proxy_read_timeout` the same way).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

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
    let early_len = early.len() as u64;
    let up = pump(&mut cr, &mut bw, &last, start);
    let down = async {
        if !early.is_empty() {
            cw.write_all(&early).await?;
            cw.flush().await?;
        }
        pump(&mut br, &mut cw, &last, start).await
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
        r = async { tokio::try_join!(up, down) } => {
            let (to_backend, to_client) = r?;
            Ok(Moved { to_backend, to_client: to_client + early_len })
        }
        () = watchdog => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "upgraded connection idle for read_timeout",
        )),
    }
}

/// Copy one direction until end of stream, then pass the half-close on.
async fn pump<R, W>(r: &mut R, w: &mut W, last: &AtomicU64, start: Instant) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        last.fetch_max(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == 0 {
            // the peer may already be gone; the other direction decides
            let _ = w.shutdown().await;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        // TLS and hyper's upgraded stream may hold bytes until flushed
        w.flush().await?;
        total += n as u64;
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
        drop(backend_peer);
        drop(client_peer);
        let moved = task.await.unwrap().unwrap();
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
