//! The admin HTTP/1.1 server of all three binaries, and the client their
//! `status` commands use.
//!
//! Routes are one async closure from [`Request`] to [`Reply`]; the server
//! owns the rest: a bound on connections, a deadline for the request head
//! and for the whole connection (a stalled scraper or health checker must
//! not hold a task forever), and accept errors that back off instead of
//! spinning.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
pub use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// What a route sees of a request: admin requests carry no body we read.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub peer: SocketAddr,
}

/// A route's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// `text/plain`.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain",
            body: body.into(),
        }
    }

    /// `application/json`.
    pub fn json(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// A Prometheus page, 200.
    pub fn metrics(body: String) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: crate::prom::CONTENT_TYPE,
            body,
        }
    }

    fn into_response(self) -> hyper::Response<Full<Bytes>> {
        let mut r = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(self.content_type),
        );
        r
    }
}

/// Per-connection limits of the admin server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From accept (or the end of a response) to a complete request head.
    pub header: Duration,
    /// The whole connection, requests and answers included.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            header: Duration::from_secs(10),
            lifetime: Duration::from_secs(30),
        }
    }
}

/// The wait after a failed accept (out of descriptors, mostly): 10 ms,
/// doubling up to 1 s, back to 10 ms after a success, so the loop never
/// spins while the error lasts.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Backoff {
        Backoff(Backoff::MIN)
    }

    /// How long to wait after this failure.
    fn failed(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Backoff::MAX);
        wait
    }

    fn succeeded(&mut self) {
        self.0 = Backoff::MIN;
    }
}

/// Binds `addr`; the error is the bind's (callers name the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `routes` on `listener` until the returned future is dropped
/// (connections already accepted finish on their own deadline).
pub async fn serve<F, Fut>(listener: TcpListener, limits: Limits, routes: F)
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let routes = Arc::new(routes);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Backoff::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(error = %e, retry_in = ?wait, "admin accept failed");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.succeeded();
        let routes = routes.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let r = Request {
                        method: req.method().clone(),
                        path: req.uri().path().to_string(),
                        peer,
                    };
                    let fut = routes(r);
                    async move { Ok::<_, Infallible>(fut.await.into_response()) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header)
                .serve_connection(TokioIo::new(stream), svc);
            if tokio::time::timeout(limits.lifetime, conn).await.is_err() {
                tracing::debug!(%peer, "admin connection over its deadline, closed");
            }
            drop(slot);
        });
    }
}

/// Why the client got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin address {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("admin address {0}: {1}")]
    Http(SocketAddr, String),
}

/// GETs `path`: the status and the text answered.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), ClientError> {
    request(addr, Method::GET, path).await
}

/// POSTs to `path` (no body): the status and the text answered.
pub async fn post(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), ClientError> {
    request(addr, Method::POST, path).await
}

/// [`get`], and anything but a 2xx is an error naming the status.
pub async fn get_ok(addr: SocketAddr, path: &str) -> Result<String, ClientError> {
    let (status, body) = get(addr, path).await?;
    if !status.is_success() {
        return Err(ClientError::Http(addr, format!("HTTP {status}")));
    }
    Ok(body)
}

async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, String), ClientError> {
    let http = |e: String| ClientError::Http(addr, e);
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ClientError::Connect(addr, e))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
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
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> SocketAddr {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(serve(l, limits, |r: Request| async move {
            match (r.method, r.path.as_str()) {
                (Method::GET, "/hello") => Reply::text(StatusCode::OK, "hi\n"),
                (Method::GET, "/json") => Reply::json(StatusCode::OK, "{}"),
                (Method::GET, "/peer") => Reply::text(
                    StatusCode::OK,
                    format!("loopback={}", r.peer.ip().is_loopback()),
                ),
                (Method::POST, "/do") => Reply::text(StatusCode::CONFLICT, "no\n"),
                _ => Reply::text(StatusCode::NOT_FOUND, "try /hello\n"),
            }
        }));
        a
    }

    /// Reads until the server closes; `Err` if it does not within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, ()> {
        let mut buf = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut buf)).await {
            Ok(_) => Ok(buf),
            Err(_) => Err(()),
        }
    }

    #[tokio::test]
    async fn routes_by_method_and_path() {
        let a = start(Limits::default()).await;
        assert_eq!(
            get(a, "/hello").await.unwrap(),
            (StatusCode::OK, "hi\n".into())
        );
        assert_eq!(get(a, "/peer").await.unwrap().1, "loopback=true");
        assert_eq!(
            post(a, "/do").await.unwrap(),
            (StatusCode::CONFLICT, "no\n".into())
        );
        assert_eq!(get(a, "/do").await.unwrap().0, StatusCode::NOT_FOUND);
        assert_eq!(get_ok(a, "/hello").await.unwrap(), "hi\n");
        let e = get_ok(a, "/nope").await.unwrap_err().to_string();
        assert!(e.contains("404"), "{e}");
    }

    #[tokio::test]
    async fn raw_http_1_0_gets_a_length_framed_answer_and_a_close() {
        let a = start(Limits::default()).await;
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /json HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
        let lower = got.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/json\r\n"),
            "{got}"
        );
        assert!(lower.contains("content-length: 2\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\n{}"), "{got}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_request_is_closed() {
        let a = start(Limits {
            header: Duration::from_millis(300),
            lifetime: Duration::from_secs(30),
            ..Limits::default()
        })
        .await;
        let t = Instant::now();
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost:").await.unwrap();
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("slow client never closed");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        // and a silent one
        let mut s = TcpStream::connect(a).await.unwrap();
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("silent client never closed");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
        let a = start(Limits {
            header: Duration::from_millis(300),
            lifetime: Duration::from_secs(30),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].ends_with(b"hi\n"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("idle keep-alive connection never closed");
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_its_lifetime_even_when_busy() {
        let a = start(Limits {
            header: Duration::from_secs(30),
            lifetime: Duration::from_millis(500),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(a).await.unwrap();
        // keep-alive requests, one every 100 ms: the header deadline never
        // fires, the lifetime does
        let t = Instant::now();
        let mut buf = [0u8; 512];
        let closed = loop {
            if s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .is_err()
            {
                break true;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break true,
                Ok(_) => {}
            }
            if t.elapsed() > Duration::from_secs(5) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(closed, "connection outlived its lifetime");
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot() {
        let a = start(Limits {
            max_connections: 1,
            header: Duration::from_millis(800),
            lifetime: Duration::from_secs(30),
        })
        .await;
        // holds the only slot until its header deadline
        let mut hog = TcpStream::connect(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let waiting = tokio::spawn(get(a, "/hello"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served past the connection cap");
        let (code, body) = waiting.await.unwrap().unwrap();
        assert_eq!((code, body.as_str()), (StatusCode::OK, "hi\n"));
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        closed_within(&mut hog, Duration::from_secs(1))
            .await
            .unwrap();
    }

    #[test]
    fn accept_errors_back_off_doubling_to_a_ceiling_and_reset() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..9).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn unreachable_address_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        assert!(matches!(
            get(a, "/hello").await,
            Err(ClientError::Connect(x, _)) if x == a
        ));
    }
}
