//! Listening sockets and accept loops for HTTP (optionally TLS) listeners.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::client_io::{ClientIo, Limits, WithBusy};
use crate::config::{self, Mode};
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listener {name:?}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("listener {name:?}: TLS: {message}")]
    Tls { name: String, message: String },
}

/// Bind with SO_REUSEADDR and SO_REUSEPORT so that a reload can open the new
/// socket before the old one is closed (no refused connections).
pub fn bind_std(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(sock.into())
}

/// Bind and register with the current runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, backlog)?)
}

/// Load a certificate chain and key into a rustls acceptor.
pub fn tls_acceptor(name: &str, tls: &config::Tls) -> Result<TlsAcceptor, ListenError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |message: String| ListenError::Tls {
        name: name.to_string(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| {
            err(format!(
                "cannot read certificate {}: {e}",
                tls.cert.display()
            ))
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(format!(
                "bad certificate PEM in {}: {e}",
                tls.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(err(format!(
            "no certificate found in {}",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
        err(format!(
            "cannot read private key {}: {e}",
            tls.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            err(format!(
                "certificate and key do not match or are unsupported: {e}"
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// A bound, not yet running listener (so that all binds of a reload can
/// succeed or fail together).
pub struct Bound {
    pub cfg: Arc<config::Listener>,
    /// `copies` sockets per address, one per worker (SO_REUSEPORT group).
    pub sockets: Vec<std::net::TcpListener>,
    pub tls: Option<TlsAcceptor>,
}

pub fn prepare(cfg: &config::Listener, copies: usize) -> Result<Bound, ListenError> {
    let tls = match &cfg.tls {
        Some(t) => Some(tls_acceptor(&cfg.name, t)?),
        None => None,
    };
    let mut sockets = Vec::new();
    for addr in &cfg.listen {
        for _ in 0..copies.max(1) {
            let s = bind_std(*addr, cfg.backlog).map_err(|source| ListenError::Bind {
                name: cfg.name.clone(),
                addr: *addr,
                source,
            })?;
            sockets.push(s);
        }
    }
    Ok(Bound {
        cfg: Arc::new(cfg.clone()),
        sockets,
        tls,
    })
}

/// Run one listening socket until `stop` flips, then drain its connections.
pub async fn run(
    socket: std::net::TcpListener,
    cfg: Arc<config::Listener>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // register with the runtime of the worker this task runs on
    let socket = match TcpListener::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %cfg.name, error = %e, "cannot register listening socket");
            return;
        }
    };
    const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // hyper's header timer also runs while a keep-alive connection is
        // idle; ClientIo times header and idle separately (nginx
        // client_header_timeout / keepalive_timeout) and adds send_timeout
        .header_read_timeout(None)
        .max_buf_size(cfg.max_header_size.max(8192) * 2)
        .max_header_size(cfg.max_header_size);
    // hyper's default limit is 100 headers in an array on the stack; setting
    // any limit explicitly makes it build that array on every request.
    if cfg.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(cfg.max_headers);
    }
    let builder = Arc::new(builder);
    // HTTP connections, their upgraded tunnels and TCP sessions each hold a
    // clone; draining waits for the count to drop
    let sessions = Arc::new(());
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.changed() => break,
        };
        let (stream, client) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                tracing::warn!(listener = %cfg.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match cfg.mode {
            Mode::Tcp => {
                let shared = shared.clone();
                let cfg = cfg.clone();
                let token = sessions.clone();
                tokio::spawn(crate::tcp::serve(stream, client, cfg, shared, token));
            }
            Mode::Http => {
                let io = ClientIo::new(
                    stream,
                    Limits {
                        header: cfg.header_timeout,
                        idle: cfg.idle_timeout,
                        send: cfg.send_timeout,
                    },
                );
                let activity = io.activity();
                let info = Arc::new(ConnInfo {
                    client,
                    client_ip: crate::forward::ip_value(client),
                    tls: tls.is_some(),
                    listener: cfg.name.clone(),
                    upstream: cfg.upstream.clone(),
                    client_body_timeout: cfg.client_body_timeout,
                    activity: Some(activity.clone()),
                    drain: Some(sessions.clone()),
                });
                let shared = shared.clone();
                let svc = service_fn(move |req| {
                    // busy until the response body is done: no header/idle
                    // limit meanwhile (the handler times the request body)
                    let busy = activity.begin();
                    let resp = proxy::handle(req, info.clone(), shared.clone());
                    async move {
                        let resp = resp.await?;
                        Ok::<_, Infallible>(resp.map(|b| WithBusy::new(b, busy)))
                    }
                });
                let builder = builder.clone();
                let stop = stop.clone();
                let token = sessions.clone();
                match &tls {
                    None => {
                        tokio::spawn(async move {
                            let conn = builder.serve_connection(TokioIo::new(io), svc);
                            drive(conn.with_upgrades(), stop, token).await;
                        });
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        let timeout = cfg.header_timeout;
                        tokio::spawn(async move {
                            let tls_stream = match tokio::time::timeout(
                                timeout,
                                acceptor.accept(io),
                            )
                            .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %client, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let conn = builder.serve_connection(TokioIo::new(tls_stream), svc);
                            drive(conn.with_upgrades(), stop, token).await;
                        });
                    }
                }
            }
        }
    }
    drop(socket);
    tracing::debug!(
        listener = %cfg.name,
        open = Arc::strong_count(&sessions) - 1,
        "listener stopped; draining connections"
    );
    while Arc::strong_count(&sessions) > 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serve one HTTP connection; once `stop` flips (or its sender is gone),
/// finish the request in flight and close. hyper-util's GracefulShutdown
/// cannot watch a connection with upgrades, hence this. A connection that
/// upgraded is finished here: its tunnel runs on in its own task, holding
/// its own drain token.
async fn drive<I, S, B>(
    conn: http1::UpgradeableConnection<I, S>,
    mut stop: watch::Receiver<bool>,
    _token: Arc<()>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    // the guard wait_for returns must not live across an await (not Send)
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let r = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "client connection ended with error");
    }
}
