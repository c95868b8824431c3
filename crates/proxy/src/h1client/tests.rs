use super::*;
use hyper::body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::config::HostHeader;
use crate::reqhead::tests::head;
use crate::reqhead::{Forward, ReqHead};

fn fwd(head: &ReqHead) -> Forward<'_> {
    Forward {
        upgrade: crate::forward::upgrade_request(head),
        head,
        client_ip: "127.0.0.1",
        tls: false,
        host: &HostHeader::Preserve,
        server: "127.0.0.1:1".parse().unwrap(),
    }
}

const LIMITS: Timeouts = Timeouts {
    client_body: Duration::from_secs(60),
    backend: Duration::from_secs(60),
};

/// A backend that answers every request on a connection with `reply`.
async fn backend(reply: &'static [u8]) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut have = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have.extend_from_slice(&buf[..n]),
                    }
                    while let Some(p) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        have.drain(..p + 4);
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn get(addr: std::net::SocketAddr, method: Method) -> (u16, Vec<u8>, Option<Conn>) {
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let resp = conn
        .exchange(
            &fwd(&head(&format!("{method} /x HTTP/1.1\r\nHost: t\r\n\r\n"))),
            &mut None,
            LIMITS,
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            data.extend_from_slice(&d);
        }
    }
    (status, data, body.take_reusable())
}

/// `GET /` with no body on a fresh connection to `addr`.
async fn plain_get(addr: std::net::SocketAddr) -> Result<Response<BackendBody>, ExchangeError> {
    Conn::new(TcpStream::connect(addr).await.unwrap())
        .exchange(
            &fwd(&head("GET / HTTP/1.1\r\nHost: t\r\n\r\n")),
            &mut None,
            LIMITS,
        )
        .await
}

#[tokio::test]
async fn content_length_body_and_reuse() {
    let addr = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
    let (s, body, conn) = get(addr, Method::GET).await;
    assert_eq!((s, body.as_slice()), (200, &b"hello"[..]));
    let conn = conn.expect("reusable");
    assert!(conn.looks_alive());
    let resp = conn
        .exchange(
            &fwd(&head("GET / HTTP/1.1\r\nHost: t\r\n\r\n")),
            &mut None,
            LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn chunked_body_with_trailers_and_interim_response() {
    let addr = backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await;
    let (s, body, conn) = get(addr, Method::GET).await;
    assert_eq!(s, 200);
    assert_eq!(body, b"hello, world");
    assert!(conn.is_some(), "chunked body read to the end: reusable");
}

#[tokio::test]
async fn close_delimited_and_connection_close_are_not_reused() {
    let addr =
        backend(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok").await;
    let (_, body, conn) = get(addr, Method::GET).await;
    assert_eq!(body, b"ok");
    assert!(conn.is_none());
}

#[tokio::test]
async fn head_response_has_no_body() {
    let addr = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n").await;
    let (s, body, conn) = get(addr, Method::HEAD).await;
    assert_eq!((s, body.len()), (200, 0));
    assert!(conn.is_some());
}

#[tokio::test]
async fn garbage_is_invalid_and_silence_is_closed() {
    let addr = backend(b"NOT HTTP AT ALL\r\n\r\n").await;
    let r = plain_get(addr).await;
    assert!(matches!(r, Err(ExchangeError::Invalid(_))));

    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        // close without a response
    });
    let r = plain_get(addr).await;
    // the backend read the request before closing: its FIN acknowledged it
    assert!(matches!(
        r,
        Err(ExchangeError::ClosedBeforeResponse { unread: false })
    ));
}

/// A backend on a std thread that answers one request on its connection,
/// then, when told to, closes it (its idle close) and reports that the FIN
/// has been sent.
type Signals = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);
fn answers_once_then_closes() -> (std::net::SocketAddr, Signals) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (close_tx, close_rx) = std::sync::mpsc::channel();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let _ = close_rx.recv();
        drop(s);
        let _ = closed_tx.send(());
    });
    (addr, (close_tx, closed_rx))
}

/// The keep-alive race at its worst: the backend's FIN is already in the
/// socket but the reactor has not reported it (nothing ran it since), so
/// the connection looks alive and a POST goes out on it. The failure must
/// say that the backend read none of it, so the request may be sent again.
#[tokio::test(flavor = "current_thread")]
async fn a_request_written_after_the_backends_close_is_known_unread() {
    let (addr, (close, closed)) = answers_once_then_closes();
    let (s, body, conn) = get(addr, Method::GET).await;
    assert_eq!((s, body.as_slice()), (200, &b"ok"[..]));
    let conn = conn.expect("reusable");
    assert!(conn.looks_alive());
    // blocking on purpose: the reactor must not run and see the FIN
    close.send(()).unwrap();
    closed.recv().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        conn.looks_alive(),
        "the FIN is not known to the runtime yet"
    );
    let post = head("POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n");
    let mut body = Some(OutBody::Bytes(Bytes::from_static(b"item=1")));
    let r = conn.exchange(&fwd(&post), &mut body, LIMITS).await;
    assert!(
        matches!(r, Err(ExchangeError::ClosedBeforeResponse { unread: true })),
        "{:?}",
        r.err()
    );
    assert!(matches!(body, Some(OutBody::Bytes(_))), "still replayable");
}

/// A backend that answers once, then half-closes (its FIN sent) and goes
/// on reading: what it reads after the FIN comes back on the channel.
fn answers_once_then_half_closes() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let n = s.read(&mut b).unwrap_or(0);
        let _ = tx.send(b[..n].to_vec());
        std::thread::sleep(Duration::from_secs(2));
    });
    (addr, rx)
}

/// A backend that half-closed still reads: its kernel sends no reset and
/// may delay its acknowledgement, so a request written after its FIN is
/// not proven unread and must not be sent again.
#[tokio::test(flavor = "current_thread")]
async fn a_request_a_half_closed_backend_may_read_is_not_replayable() {
    let (addr, got) = answers_once_then_half_closes();
    let (s, body, conn) = get(addr, Method::GET).await;
    assert_eq!((s, body.as_slice()), (200, &b"ok"[..]));
    let conn = conn.expect("reusable");
    std::thread::sleep(Duration::from_millis(20));
    let post = head("POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n");
    let mut body = Some(OutBody::Bytes(Bytes::from_static(b"item=1")));
    let r = conn.exchange(&fwd(&post), &mut body, LIMITS).await;
    assert!(
        matches!(
            r,
            Err(ExchangeError::ClosedBeforeResponse { unread: false })
        ),
        "{:?}",
        r.err()
    );
    let read = got.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(read.starts_with(b"POST /order"), "the backend read it");
}

/// A backend that writes `parts` with `gap` between them, then stalls.
async fn dripping(parts: &'static [&'static [u8]], gap: Duration) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b).await;
        for p in parts {
            tokio::time::sleep(gap).await;
            if s.write_all(p).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    addr
}

#[tokio::test]
async fn read_timeout_is_per_read_and_covers_the_body() {
    let limits = Timeouts {
        client_body: Duration::from_secs(60),
        backend: Duration::from_millis(600),
    };
    // the head arrives in pieces over ~1s, each within the limit: fine
    let addr = dripping(
        &[
            b"HTTP/1.1 200 OK\r\n",
            b"Content-Length: 10\r\n",
            b"\r\n",
            b"01234",
        ],
        Duration::from_millis(250),
    )
    .await;
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let resp = conn
        .exchange(
            &fwd(&head("GET / HTTP/1.1\r\nHost: t\r\n\r\n")),
            &mut None,
            limits,
        )
        .await
        .expect("slow but moving head is not a timeout");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("body cannot complete: the backend stalls"),
        }
    };
    // then the body stalls: a timeout, not a hang
    assert_eq!(got, b"01234");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);

    // a backend that never answers: Timeout after the request was sent
    let addr = dripping(&[], Duration::ZERO).await;
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let r = conn
        .exchange(
            &fwd(&head("GET / HTTP/1.1\r\nHost: t\r\n\r\n")),
            &mut None,
            limits,
        )
        .await;
    assert!(matches!(r, Err(ExchangeError::Timeout)));
}

#[tokio::test]
async fn switching_protocols_hands_over_the_connection_with_early_bytes() {
    let addr = backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nEARLY",
    )
    .await;
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let resp = conn
        .exchange(
            &fwd(&head(
                "GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )),
            &mut None,
            LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    let mut body = resp.into_body();
    assert!(body.is_end_stream());
    let (mut io, early) = body.take_upgraded().expect("the raw connection");
    assert!(body.take_reusable().is_none(), "never pooled");
    let mut rest = early.to_vec();
    while rest.len() < 5 {
        let mut b = [0u8; 16];
        let n = io.read(&mut b).await.unwrap();
        assert_ne!(n, 0);
        rest.extend_from_slice(&b[..n]);
    }
    assert_eq!(rest, b"EARLY");

    // a 101 nobody asked for is not HTTP any more: refused
    let r = plain_get(addr).await;
    assert!(matches!(r, Err(ExchangeError::Invalid(_))));
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length() {
    let addr = backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let resp = conn
        .exchange(
            &fwd(&head("GET / HTTP/1.1\r\nHost: t\r\n\r\n")),
            &mut None,
            LIMITS,
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let head = body.take_head().expect("a forwarded head");
    assert!(!head.has_length);
    assert_eq!(head.lines().count(), 0, "no length, no Transfer-Encoding");
    let body = body.collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
}

#[tokio::test]
async fn signed_lengths_are_invalid() {
    let addr = backend(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello").await;
    let r = plain_get(addr).await;
    assert!(matches!(r, Err(ExchangeError::Invalid(_))));

    let addr =
        backend(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n")
            .await;
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let resp = conn
        .exchange(
            &fwd(&head("GET / HTTP/1.1\r\nHost: t\r\n\r\n")),
            &mut None,
            LIMITS,
        )
        .await
        .unwrap();
    assert!(resp.into_body().collect().await.is_err());
    assert_eq!(chunk_size_line(b"1aF"), Some(0x1af));
    assert_eq!(chunk_size_line(b"-5"), None);
    assert_eq!(chunk_size_line(b"11111111111111111"), None, "overflow");
}
