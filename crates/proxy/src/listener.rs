//! Listening sockets and accept loops for HTTP (optionally TLS) listeners.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::client_io::{Activity, ClientIo, Limits};
use crate::config::{self, Mode};
use crate::framing::HeadLimits;
use crate::proxy::ConnInfo;
use crate::server;
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

/// The client socket's time limits.
fn io_limits(cfg: &config::Listener) -> Limits {
    Limits {
        header: cfg.header_timeout,
        idle: cfg.idle_timeout,
        send: cfg.send_timeout,
    }
}

/// What an HTTP connection from `client` needs besides its socket.
fn http_conn(
    cfg: &config::Listener,
    client: SocketAddr,
    tls: bool,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    limits: HeadLimits,
    activity: Activity,
) -> server::Conn {
    let info = Arc::new(ConnInfo {
        client,
        client_ip: crate::forward::ip_value(client),
        tls,
        listener: cfg.name.clone(),
        upstream: cfg.upstream.clone(),
        client_body_timeout: cfg.client_body_timeout,
    });
    server::Conn {
        info,
        shared: shared.clone(),
        limits,
        activity,
        stop: stop.clone(),
    }
}

/// Serve an accepted HTTP connection on its own task (after the TLS
/// handshake, which `handshake` bounds, when the listener has TLS). The
/// connection, and a tunnel it becomes, hold the drain token.
fn spawn_http(
    io: ClientIo<TcpStream>,
    client: SocketAddr,
    conn: server::Conn,
    handshake: Duration,
    tls: Option<&TlsAcceptor>,
    token: Arc<()>,
) {
    match tls {
        None => {
            tokio::spawn(async move {
                server::serve(io, conn).await;
                drop(token);
            });
        }
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls_stream = match tokio::time::timeout(handshake, acceptor.accept(io)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %client, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                server::serve(tls_stream, conn).await;
                drop(token);
            });
        }
    }
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
    let head_limits = HeadLimits {
        max_size: cfg.max_header_size,
        max_headers: cfg.max_headers,
    };
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
        let token = sessions.clone();
        match cfg.mode {
            Mode::Tcp => {
                let shared = shared.clone();
                let cfg = cfg.clone();
                tokio::spawn(crate::tcp::serve(stream, client, cfg, shared, token));
            }
            Mode::Http => {
                let io = ClientIo::new(stream, io_limits(&cfg));
                let (tls_on, activity) = (tls.is_some(), io.activity());
                let conn = http_conn(&cfg, client, tls_on, &shared, &stop, head_limits, activity);
                spawn_http(io, client, conn, cfg.header_timeout, tls.as_ref(), token);
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
