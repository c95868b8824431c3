//! The HTTP request path: choose a server, send, retry on another server
//! when that is safe, and stream the response back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

use crate::balancer::{Attempt, Key, Outcome};
use crate::config;
use crate::forward::{self, BodyLen};
use crate::h1client::{BackendBody, ExchangeError, OutBody, Timeouts};
use crate::reqhead::{Forward, ReqHead};
use crate::response::TrackedBody;
pub use crate::response::{local, RespBody};
use crate::retry::{self, Failure};
use crate::server_wire::ReqBody;
use crate::state::Shared;
use crate::tunnel::{PendingTunnel, Tunnel};
use crate::upstream::{ConnectError, ServerRef, ServerRt, UpstreamRt};

/// What a connection handler knows about its client.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// `client`'s IP as a header value, for X-Forwarded-For / X-Real-IP.
    pub client_ip: HeaderValue,
    pub tls: bool,
    pub listener: String,
    pub upstream: String,
    /// Longest wait for each read of the request body (nginx
    /// `client_body_timeout`).
    pub client_body_timeout: Duration,
}

/// Releases a selected server if the attempt is abandoned (the client went
/// away and the connection dropped the request future), so `least_conn` and
/// `max_conns` never see a leaked connection.
struct PeerGuard {
    up: Arc<UpstreamRt>,
    peer: u64,
    armed: bool,
}

impl PeerGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        if self.armed {
            self.up
                .group()
                .release(self.peer, Instant::now(), Outcome::Success);
        }
    }
}

/// The request to send. The head is serialised from here for each attempt;
/// a buffered body can be sent any number of times, a streamed one once.
struct Outgoing<'a> {
    head: &'a ReqHead,
    body: Option<OutBody>,
}

impl Outgoing<'_> {
    fn can_resend(&self) -> bool {
        matches!(self.body, Some(OutBody::Bytes(_)))
    }
}

/// Entry point for one client request. The head is borrowed: the
/// connection keeps its buffers for the next request.
pub async fn handle(
    head: &ReqHead,
    body: ReqBody,
    info: &ConnInfo,
    shared: &Shared,
) -> Result<Response<RespBody>, Infallible> {
    let start = Instant::now();
    shared.metrics.add(|c| &c.requests);
    let snap = shared.current();
    let (resp, server) = match snap.upstreams.get(&info.upstream) {
        Some(up) => {
            let max_replay = snap.config.retry.max_replay_body;
            proxy(head, body, info, shared, up, max_replay).await
        }
        None => (
            local(StatusCode::SERVICE_UNAVAILABLE, "upstream not configured"),
            None,
        ),
    };
    let status = resp.status().as_u16();
    shared.metrics.local().count_status(status);
    if shared.access_log() {
        tracing::info!(
            target: "access",
            client = %info.client,
            listener = %info.listener,
            method = %head.method,
            uri = %head.uri,
            status,
            upstream = %info.upstream,
            server = server.as_ref().map_or("-", |s| s.name.as_str()),
            ms = start.elapsed().as_secs_f64() * 1000.0,
        );
    }
    Ok(resp)
}

/// A request ready for its attempts.
struct Prepared<'a> {
    out: Outgoing<'a>,
    key: Key,
    idempotent: bool,
}

async fn proxy(
    head: &ReqHead,
    body: ReqBody,
    info: &ConnInfo,
    shared: &Shared,
    up: &Arc<UpstreamRt>,
    max_replay: usize,
) -> (Response<RespBody>, Option<ServerRef>) {
    let mut req = match prepare(head, body, info, shared, up, max_replay).await {
        Ok(r) => r,
        Err(resp) => return (resp, None),
    };
    let cfg = &up.cfg;
    let started = Instant::now();
    let mut attempt = Attempt::new();
    let mut last: Option<Failure> = None;
    loop {
        let Some((peer, server)) = select(up, req.key, &mut attempt) else {
            break;
        };
        let mut guard = PeerGuard {
            up: up.clone(),
            peer,
            armed: true,
        };
        let sent_at = Instant::now();
        let limits = Timeouts {
            client_body: info.client_body_timeout,
            backend: cfg.read_timeout,
        };
        let result = send_attempt(&server, cfg, info, &mut req.out, req.idempotent, limits).await;
        guard.disarm(); // from here on, Finish or the error path releases
        match result {
            Ok(resp) => {
                server.metrics.observe(sent_at.elapsed());
                let resp = answer(resp, up, &server, peer);
                return (resp, Some(server));
            }
            Err(f) => {
                failed(up, &server, peer, f, info, &req.out);
                last = Some(f);
                if !retry_after(f, up, &req.out, started, &attempt, shared) {
                    break;
                }
            }
        }
    }
    (no_answer(last, shared), None)
}

/// Refuse what cannot be forwarded, evaluate the balancing key, and buffer
/// a small replayable body.
async fn prepare<'a>(
    head: &'a ReqHead,
    mut body: ReqBody,
    info: &ConnInfo,
    shared: &Shared,
    up: &UpstreamRt,
    max_replay: usize,
) -> Result<Prepared<'a>, Response<RespBody>> {
    if let Err(e) = forward::check_request(head) {
        tracing::debug!(client = %info.client, error = %e, "request refused");
        return Err(local(
            StatusCode::BAD_REQUEST,
            &format!("Bad Request ({e})"),
        ));
    }
    shared.deposit_retry_token();
    let key = Key {
        client_ip: Some(info.client.ip().to_canonical()),
        hash: up.key.as_ref().map(|t| {
            t.hash(&ReqVars {
                head,
                client: info.client,
            })
        }),
    };
    let idempotent = retry::is_idempotent(&head.method);
    let out_body = match forward::body_len(head) {
        BodyLen::None => OutBody::Bytes(Bytes::new()),
        BodyLen::Known(n) if idempotent && n <= max_replay as u64 => {
            // boxed: the rare path's state stays out of every request's future
            match Box::pin(collect_body(body, info.client_body_timeout)).await {
                Ok(b) => OutBody::Bytes(b),
                Err(ExchangeError::ClientBodyTimeout) => {
                    return Err(local(StatusCode::REQUEST_TIMEOUT, "Request Timeout"))
                }
                Err(_) => return Err(local(StatusCode::BAD_REQUEST, "Bad Request (body)")),
            }
        }
        // already here with the head (the common small POST): sent with
        // the request head, no stream; not replayed (not idempotent)
        BodyLen::Known(_) if !idempotent => match body.take_whole() {
            Some(b) => OutBody::Bytes(b),
            None => OutBody::Stream(body),
        },
        _ => OutBody::Stream(body),
    };
    let out = Outgoing {
        head,
        body: Some(out_body),
    };
    Ok(Prepared {
        out,
        key,
        idempotent,
    })
}

/// The next server to try, unless the request's tries are used up.
fn select(up: &UpstreamRt, key: Key, attempt: &mut Attempt) -> Option<(u64, ServerRef)> {
    let mut g = up.group();
    if attempt.count() >= max_tries(&up.cfg, g.len()) {
        return None;
    }
    g.select(Instant::now(), key, attempt)
        .map(|(id, s)| (id, up.server_ref(id, s)))
}

/// The client's response from a backend's: streamed, releasing the server
/// when it ends, or a protocol switch.
fn answer(
    resp: Response<BackendBody>,
    up: &Arc<UpstreamRt>,
    server: &ServerRef,
    peer: u64,
) -> Response<RespBody> {
    let (rparts, mut rbody) = resp.into_parts();
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        let upgraded = rbody.take_upgraded();
        let guard = PeerGuard {
            up: up.clone(),
            peer,
            armed: true,
        };
        return switch_protocols(rparts, upgraded, guard, up.cfg.read_timeout);
    }
    // hop-by-hop fields were left out as the head was parsed
    let body = TrackedBody::new(rbody, up.clone(), server.clone(), peer);
    Response::from_parts(rparts, RespBody::Proxied(body))
}

/// Account for a failed attempt: release the server and log whose fault
/// it was.
fn failed(
    up: &UpstreamRt,
    server: &ServerRt,
    peer: u64,
    f: Failure,
    info: &ConnInfo,
    out: &Outgoing,
) {
    let client_fault = matches!(f, Failure::ClientAborted | Failure::ClientTimeout);
    if !client_fault {
        server.metrics.add(|c| &c.errors);
    }
    let outcome = if f.counts_as_server_failure() {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    up.group().release(peer, Instant::now(), outcome);
    if client_fault {
        // the client's doing: not an upstream problem to alert on
        tracing::info!(
            upstream = %up.cfg.name,
            server = %server.name,
            client = %info.client,
            failure = ?f,
            "client request body failed or stalled; attempt abandoned"
        );
    } else {
        tracing::warn!(
            upstream = %up.cfg.name,
            server = %server.name,
            failure = ?f,
            method = %out.head.method,
            "upstream attempt failed"
        );
    }
}

/// May another attempt follow failure `f`?
fn retry_after(
    f: Failure,
    up: &UpstreamRt,
    out: &Outgoing,
    started: Instant,
    attempt: &Attempt,
    shared: &Shared,
) -> bool {
    let cfg = &up.cfg;
    if !retry::retryable(f, &out.head.method, out.can_resend()) {
        return false;
    }
    if !cfg.next_upstream_timeout.is_zero() && started.elapsed() >= cfg.next_upstream_timeout {
        return false;
    }
    // the budget pays only for an attempt that can follow: after the last
    // try it would be spent (or "denied") for nothing
    if attempt.count() >= max_tries(cfg, up.group().len()) {
        return false;
    }
    if !shared.withdraw_retry(Instant::now()) {
        tracing::warn!(upstream = %cfg.name, "retry budget exhausted; not retrying");
        return false;
    }
    true
}

/// The local answer when no attempt succeeded (`last`: the last failure).
fn no_answer(last: Option<Failure>, shared: &Shared) -> Response<RespBody> {
    match last {
        None => {
            shared.metrics.add(|c| &c.local_503);
            local(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable (no live upstream)",
            )
        }
        Some(Failure::ClientAborted) => local(
            StatusCode::BAD_REQUEST,
            "Bad Request (request body aborted)",
        ),
        Some(Failure::ClientTimeout) => local(StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
        Some(f) if f.is_timeout() => {
            shared.metrics.add(|c| &c.local_504);
            local(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout")
        }
        Some(_) => {
            shared.metrics.add(|c| &c.local_502);
            local(StatusCode::BAD_GATEWAY, "Bad Gateway")
        }
    }
}

/// Attempts allowed per request (nginx `proxy_next_upstream_tries`; 0 means
/// one per server).
fn max_tries(cfg: &config::Upstream, servers: usize) -> usize {
    if cfg.tries == 0 {
        servers
    } else {
        cfg.tries as usize
    }
}

/// Relay a backend's 101 to the client; the client connection splices the
/// two once the 101 is written. The tunnel holds the server's slot
/// (least_conn / max_conns) until it ends; the backend connection is never
/// pooled again.
fn switch_protocols(
    mut head: hyper::http::response::Parts,
    backend: Option<(tokio::net::TcpStream, bytes::BytesMut)>,
    slot: PeerGuard,
    idle: Duration,
) -> Response<RespBody> {
    let Some((backend, early)) = backend else {
        // h1client accepts a 101 only for a request carrying Upgrade, with
        // its connection: unreachable in practice
        drop(slot);
        return local(StatusCode::BAD_GATEWAY, "Bad Gateway");
    };
    forward::prepare_upgrade_response(&mut head.headers);
    head.extensions.insert(PendingTunnel::new(Tunnel {
        backend,
        early,
        idle,
        hold: Box::new(slot),
    }));
    Response::from_parts(head, RespBody::Local(None))
}

/// Read a whole (small) request body, waiting at most `per_read` for each
/// part of it (nginx `client_body_timeout` is per read, not per body).
async fn collect_body(mut body: ReqBody, per_read: Duration) -> Result<Bytes, ExchangeError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(per_read, body.frame()).await {
            Err(_) => return Err(ExchangeError::ClientBodyTimeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(ExchangeError::ClientBody),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// One attempt on one server: a pooled connection if there is a usable one,
/// else a fresh one. A pooled connection that fails before the request head
/// is written is skipped silently; one closed by the server just as we wrote
/// (the classic keep-alive race: no response byte at all) is retried once on a
/// fresh connection when the request may be replayed: an idempotent one, or
/// any whose bytes the server provably never read (`retry::replay_fresh`).
async fn send_attempt(
    server: &ServerRt,
    cfg: &config::Upstream,
    info: &ConnInfo,
    out: &mut Outgoing<'_>,
    idempotent: bool,
    limits: Timeouts,
) -> Result<Response<BackendBody>, Failure> {
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            server.pool.take(Instant::now(), cfg.keepalive_timeout)
        };
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            // boxed: with a warm pool connecting is rare, and its timer
            // would otherwise enlarge every request's future
            None => match Box::pin(server.connect_http(cfg.connect_timeout)).await {
                Ok(c) => c,
                Err(ConnectError::Timeout(_)) => return Err(Failure::ConnectTimeout),
                Err(e) => {
                    tracing::debug!(error = %e, "connect failed");
                    return Err(Failure::Connect);
                }
            },
        };
        if out.body.is_none() {
            return Err(Failure::ResetAfterSend); // a streamed body already went out
        }
        server.metrics.add(|c| &c.requests);
        // no timeout around the whole exchange: the client's upload pace and
        // the backend's are timed separately, per read/write, inside it
        let req = Forward {
            head: out.head,
            client_ip: info.client_ip.to_str().unwrap_or("unknown"),
            tls: info.tls,
            upgrade: forward::upgrade_request(out.head),
            host: &cfg.host_header,
            server: server.addr,
        };
        let exchange = conn.exchange(&req, &mut out.body, limits);
        match exchange.await {
            Ok(resp) => return Ok(resp),
            Err(e) => {
                tracing::debug!(error = ?e, reused, method = %out.head.method, "exchange failed");
                match e {
                    ExchangeError::WriteHead(_) if reused => continue,
                    ExchangeError::WriteHead(_) => return Err(Failure::Connect),
                    ExchangeError::Invalid(_) => return Err(Failure::InvalidResponse),
                    ExchangeError::ClientBody => return Err(Failure::ClientAborted),
                    ExchangeError::ClientBodyTimeout => return Err(Failure::ClientTimeout),
                    ExchangeError::Timeout => return Err(Failure::ResponseTimeout),
                    ExchangeError::ClosedBeforeResponse { unread }
                        if !fresh_only
                            && retry::replay_fresh(
                                reused,
                                unread,
                                idempotent,
                                out.can_resend(),
                            ) =>
                    {
                        fresh_only = true;
                        continue;
                    }
                    _ => return Err(Failure::ResetAfterSend),
                }
            }
        }
    }
}

mod vars;
use vars::ReqVars;

#[cfg(test)]
mod tests;
