//! Test harness: real backend servers inside the test process, the real
//! `syncd-proxy` binary as a child process, and a minimal HTTP client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Counters a backend keeps about what it received.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicUsize,
    /// `/slow` requests whose wait is over (their answer is on its way).
    pub slow_answered: AtomicUsize,
    pub by_method: Mutex<HashMap<String, usize>>,
    pub last_headers: Mutex<Option<hyper::HeaderMap>>,
}

impl Stats {
    pub fn method(&self, m: &str) -> usize {
        self.by_method.lock().unwrap().get(m).copied().unwrap_or(0)
    }
}

/// How a backend behaves.
#[derive(Default)]
pub struct Behaviour {
    /// Read the request, then drop the connection without answering.
    pub reset: AtomicBool,
    /// Answer `/health` with 503.
    pub unhealthy: AtomicBool,
}

/// A small hyper server answering with its name. `/slow` waits 1.5 s,
/// `/big` is 1 MiB, `/huge` 32 MiB, `/health` answers 200 (or 503 when
/// `unhealthy`).
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub behaviour: Arc<Behaviour>,
    idle_close: Option<Duration>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), None).await
    }

    /// A backend that closes keep-alive connections idle for `idle`.
    pub async fn start_idle_closing(name: &str, idle: Duration) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), Some(idle)).await
    }

    async fn start_on(name: &str, addr: SocketAddr, idle_close: Option<Duration>) -> Backend {
        let mut b = Backend {
            name: name.to_string(),
            addr,
            stats: Arc::new(Stats::default()),
            behaviour: Arc::new(Behaviour::default()),
            idle_close,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        b.addr = b.listen().await;
        b
    }

    async fn listen(&self) -> SocketAddr {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("backend {} cannot bind {}: {e}", self.name, self.addr),
            }
        };
        let addr = listener.local_addr().unwrap();
        let name = self.name.clone();
        let stats = self.stats.clone();
        let behaviour = self.behaviour.clone();
        let tasks = self.tasks.clone();
        let idle = self.idle_close;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let stats = stats.clone();
                let behaviour = behaviour.clone();
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let name = name.clone();
                    let stats = stats.clone();
                    let behaviour = behaviour.clone();
                    async move { serve(req, name, stats, behaviour).await }
                });
                let conn = tokio::spawn(async move {
                    let mut b = http1::Builder::new();
                    b.timer(TokioTimer::new());
                    if let Some(idle) = idle {
                        b.header_read_timeout(idle);
                    }
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
        addr
    }

    /// Kill the server: stop listening and cut every open connection.
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Start again on the same address.
    pub async fn restart(&self) {
        self.listen().await;
    }

    pub fn count(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(
    req: Request<hyper::body::Incoming>,
    name: String,
    stats: Arc<Stats>,
    behaviour: Arc<Behaviour>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let code = if behaviour.unhealthy.load(Ordering::SeqCst) {
            503
        } else {
            200
        };
        let mut r = Response::new(Full::new(Bytes::from_static(b"health\n")));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        return Ok(r);
    }
    stats.requests.fetch_add(1, Ordering::SeqCst);
    *stats
        .by_method
        .lock()
        .unwrap()
        .entry(req.method().to_string())
        .or_insert(0) += 1;
    *stats.last_headers.lock().unwrap() = Some(req.headers().clone());
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if behaviour.reset.load(Ordering::SeqCst) {
        return Err(std::io::Error::other(
            "simulated crash after reading the request",
        ));
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stats.slow_answered.fetch_add(1, Ordering::SeqCst);
    }
    if path == "/huge" {
        // larger than every socket buffer between here and the client
        let r = Response::new(Full::new(Bytes::from(vec![b'x'; 32 << 20])));
        return Ok(r);
    }
    if path == "/big" {
        let mut r = Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20])));
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        return Ok(r);
    }
    let text = format!("{name} {}", body.len());
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    Ok(r)
}

/// A free loopback port (bound and released; fine for tests).
pub fn free_port() -> u16 {
    syncd_testkit::port::free_port()
}

/// The real proxy binary, killed and reaped on drop.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    /// Start with `body` (the config without [admin]); `{listen}` in the text
    /// is replaced by the proxy's listen address.
    pub async fn start(body: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("proxy.toml");
        let text = Self::render(body, listen, admin);
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_syncd-proxy"))
            .arg("--config")
            .arg(&config)
            .env("SYNCD_PROXY_LOG", "info,access=off")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Proxy {
            child,
            dir,
            config,
            listen,
            admin,
        };
        p.wait_ready().await;
        p
    }

    fn render(body: &str, listen: SocketAddr, admin: SocketAddr) -> String {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n{}",
            body.replace("{listen}", &listen.to_string())
        )
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = request(self.admin, "GET", "/healthz", b"").await {
                if r.status != 0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy did not start; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Rewrite the config and send SIGHUP; wait until the reload is applied.
    pub async fn reload(&self, body: &str) {
        let before = self.metric("syncd_proxy_config_generation").await;
        std::fs::write(&self.config, Self::render(body, self.listen, self.admin)).unwrap();
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.metric("syncd_proxy_config_generation").await > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reload not applied; log:\n{}", self.log());
    }

    /// Value of an unlabelled (or fully written) metric line.
    pub async fn metric(&self, name: &str) -> f64 {
        let r = request(self.admin, "GET", "/metrics", b"").await.unwrap();
        let text = String::from_utf8_lossy(&r.body).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(self.listen, "GET", path, b"").await.unwrap()
    }

    /// Wait for the process to exit (after a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- proxy log ----\n{}", self.log());
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn backend(&self) -> String {
        self.text().split(' ').next().unwrap_or("").to_string()
    }
}

/// One request on a fresh connection (`Connection: close`), read to EOF.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw).await
}

pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply timeout"))??;
    Ok(parse_reply(&buf))
}

pub fn parse_reply(buf: &[u8]) -> Reply {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&buf[..i], buf[i + 4..].to_vec()),
        None => (buf, Vec::new()),
    };
    let head = String::from_utf8_lossy(head).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply { status, head, body }
}

/// An upstream block with the given servers (`addr` + extra keys).
pub fn upstream(name: &str, extra: &str, servers: &[(SocketAddr, &str)]) -> String {
    let mut s = format!("[[upstream]]\nname = \"{name}\"\n{extra}\n");
    for (addr, opts) in servers {
        s.push_str(&format!("[[upstream.server]]\naddr = \"{addr}\"\n{opts}\n"));
    }
    s
}

pub fn http_listener(upstream: &str) -> String {
    format!("[[listener]]\nlisten = \"{{listen}}\"\nupstream = \"{upstream}\"\n\n")
}

/// Keep-alive client for load: hyper client connection, reconnecting as needed.
pub async fn keepalive_get(
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Bytes), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        *sender = Some(tx);
    }
    let Some(tx) = sender.as_mut() else {
        return Err("no connection".into());
    };
    tx.ready().await.map_err(|e| e.to_string())?;
    let req = Request::get(path)
        .header("host", "load.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

pub fn _unused(_: Infallible) {}
