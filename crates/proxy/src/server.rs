//! The client-facing HTTP/1.1 server: one task per connection reads request
//! heads with `httparse` into the connection's reused buffer
//! ([`crate::framing`] decides the body framing, strictly), hands each
//! request to [`proxy::handle`] with a body read straight from the
//! connection, and writes the response with vectored writes
//! ([`crate::server_write`]). Keep-alive and pipelining (bytes after a head
//! stay in the buffer for the next one), `Expect: 100-continue`, HTTP/1.0,
//! HEAD, and protocol upgrades (the connection becomes a tunnel).
//!
//! Time limits come from [`crate::client_io::ClientIo`] under the socket
//! (header, idle, send); the request body's per-read limit from the
//! handler. A client that closes while its request is handled ends the
//! handling (the attempt is released), as a proxy must not keep a server
//! busy for nobody.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::client_io::Activity;
use crate::framing::{self, Decode, Framing, FramingError, HeadLimits, HeaderSpan, RequestHead};
use crate::proxy::{self, ConnInfo, RespBody};
use crate::reqhead::ReqHead;
use crate::server_wire::{self, ReqBody, Wire};
use crate::server_write::{self, BodyMode};
use crate::state::Shared;
use crate::tunnel::PendingTunnel;

/// Pipelined bytes buffered while a request is handled, at most.
const PIPELINE_BUFFER: usize = 64 * 1024;

/// What one connection needs besides its socket.
pub struct Conn {
    pub info: Arc<ConnInfo>,
    pub shared: Arc<Shared>,
    pub limits: HeadLimits,
    pub activity: Activity,
    pub stop: watch::Receiver<bool>,
}

fn lock<IO>(w: &Mutex<Wire<IO>>) -> MutexGuard<'_, Wire<IO>> {
    // plain state: a poisoned lock is still coherent
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request head turned into what the proxy handles.
struct Parsed {
    head: ReqHead,
    decode: Decode,
    keep_alive: bool,
    expect_continue: bool,
}

/// Serve one client connection until it closes, fails, or `stop` flips
/// between requests.
pub async fn serve<IO>(io: IO, c: Conn)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wire = Arc::new(Mutex::new(Wire::new(io)));
    let src: server_wire::Shared = wire.clone();
    let mut spans: Vec<HeaderSpan> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::with_capacity(1024);
    let mut stop_rx = c.stop.clone();
    let mut stopping = Stopping {
        wait: pin!(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }),
        registered: false,
    };
    loop {
        let next = tokio::select! {
            biased;
            r = read_head(&wire, c.limits, &mut spans) => r,
            () = poll_fn(|cx| stopping.poll(&c.stop, cx)) => return,
        };
        let parsed = match next {
            Ok(Some((head, bytes))) => build(&head, bytes, &mut spans),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let p = match parsed {
            Ok(p) => p,
            Err(e) => return Box::pin(refuse(&wire, &mut wbuf, e, &c.info)).await,
        };
        let busy = c.activity.begin();
        lock(&wire).start_body(p.decode, p.expect_continue);
        let head_request = p.head.method == Method::HEAD;
        let http11 = p.head.http11;
        let body = ReqBody::new(src.clone(), p.decode);
        let resp = handle(&wire, &p.head, body, &c).await;
        // the head's spans serve the next request on this connection
        spans = p.head.into_spans();
        let resp = match resp {
            Some(Ok(r)) => r,
            Some(Err(never)) => match never {},
            None => {
                tracing::debug!(client = %c.info.client, "client closed while its request was handled");
                return;
            }
        };
        let tunnel = resp
            .extensions()
            .get::<PendingTunnel>()
            .and_then(PendingTunnel::take);
        let body_read = {
            let w = lock(&wire);
            w.decode == Decode::Done && !w.broken
        };
        let keep = p.keep_alive && body_read && !stop_flipped(&c.stop) && tunnel.is_none();
        let ok = respond(&wire, &mut wbuf, resp, head_request, http11, keep).await;
        if !ok {
            return;
        }
        if let Some(t) = tunnel {
            let (io, leftover) = {
                let mut w = lock(&wire);
                (w.io.take(), w.rbuf.split())
            };
            if let Some(io) = io {
                Box::pin(crate::tunnel::run(io, leftover, t, c.info.client)).await;
            }
            return;
        }
        drop(busy);
        if !keep {
            return close(&wire).await;
        }
    }
}

/// The connection's wait for `stop` (or for its sender to go, which ends
/// the connection as well). Its waiter is registered with the channel on
/// the first idle wait and kept for the connection's life: a fresh wait per
/// request, or a re-poll of the registered one, takes the channel's locks,
/// which every connection of the listener on every worker shares. Between
/// requests only the channel's version is read (an atomic load), and the
/// waiter is polled again once the channel changed.
struct Stopping<F> {
    wait: Pin<F>,
    registered: bool,
}

impl<F: std::ops::DerefMut<Target: Future<Output = ()>>> Stopping<F> {
    fn poll(&mut self, stop: &watch::Receiver<bool>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered && !stop_flipped(stop) {
            // the registered waiter wakes this task when it changes
            return Poll::Pending;
        }
        self.registered = true;
        self.wait.as_mut().poll(cx)
    }
}

/// Has `stop` been sent (it only ever goes to true) or its sender dropped?
fn stop_flipped(stop: &watch::Receiver<bool>) -> bool {
    !matches!(stop.has_changed(), Ok(false))
}

/// Handle one request, unless the client goes away meanwhile (`None`).
async fn handle<IO>(
    wire: &Mutex<Wire<IO>>,
    head: &ReqHead,
    body: ReqBody,
    c: &Conn,
) -> Option<Result<hyper::Response<RespBody>, std::convert::Infallible>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // pinned where it is built and polled beside the client watch by
    // hand: a `select!` would move the whole request future again
    let handle = proxy::handle(head, body, &c.info, &c.shared);
    let mut handling = pin!(handle);
    poll_fn(|cx| {
        if let Poll::Ready(r) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        poll_client_gone(wire, cx).map(|()| None)
    })
    .await
}

/// Answer a head that cannot be served (400, or 431 when too large) and
/// close: what follows it cannot be framed.
async fn refuse<IO>(wire: &Mutex<Wire<IO>>, wbuf: &mut Vec<u8>, e: FramingError, info: &ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(client = %info.client, error = %e, "bad request head");
    let status = if e.is_too_large() {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    };
    let msg = status.canonical_reason().unwrap_or("Bad Request");
    let resp = proxy::local(status, msg);
    if respond(wire, wbuf, resp, false, true, false).await {
        close(wire).await;
    }
}

/// End the connection with a FIN after the last response (nothing left
/// unread in the socket, so no reset cuts that response short).
async fn close<IO>(wire: &Mutex<Wire<IO>>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let io = lock(wire).io.take();
    if let Some(mut io) = io {
        let _ = io.shutdown().await;
    }
}

/// Read until a complete request head is buffered. `Ok(None)`: the client
/// closed (or the header/idle limit ended the stream).
async fn read_head<IO>(
    wire: &Mutex<Wire<IO>>,
    limits: HeadLimits,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Option<(RequestHead, Bytes)>, FramingError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    lock(wire).reclaim();
    poll_fn(|cx| {
        let mut w = lock(wire);
        loop {
            if !w.rbuf.is_empty() {
                if let Some(head) = framing::parse_request(&w.rbuf, limits, spans)? {
                    let bytes = w.rbuf.split_to(head.len).freeze();
                    return Poll::Ready(Ok(Some((head, bytes))));
                }
            }
            match w.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Ready when the client closes while its request is handled (its body
/// fully read). Pipelined bytes are buffered, up to a bound.
fn poll_client_gone<IO>(wire: &Mutex<Wire<IO>>, cx: &mut Context<'_>) -> Poll<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut w = lock(wire);
    // while the handler reads the body, the body owns the reads; the task
    // is polled again on its progress
    while w.decode == Decode::Done && w.rbuf.len() < PIPELINE_BUFFER {
        match w.poll_fill(cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Pending
}

/// The request for the proxy, from a parsed head: its bytes and field
/// spans, no header map.
fn build(
    head: &RequestHead,
    bytes: Bytes,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Parsed, FramingError> {
    let fields = spans
        .iter()
        .map(|s| (&bytes[s.name.clone()], &bytes[s.value.clone()]));
    let framing = framing::request_framing(head.minor, fields)?;
    let head = ReqHead::new(head, bytes, std::mem::take(spans))?;
    let keep_alive = if head.http11 {
        !head.has_token(b"connection", b"close")
    } else {
        head.has_token(b"connection", b"keep-alive")
    };
    let expect_continue = head.http11 && head.has_token(b"expect", b"100-continue");
    let decode = Decode::new(match framing {
        Framing::UntilClose => Framing::None, // never for a request
        f => f,
    });
    Ok(Parsed {
        head,
        decode,
        keep_alive,
        expect_continue,
    })
}

/// Write a response; false when the connection cannot go on (write error,
/// body error, or a close-delimited body).
async fn respond<IO>(
    wire: &Mutex<Wire<IO>>,
    wbuf: &mut Vec<u8>,
    resp: hyper::Response<RespBody>,
    head_request: bool,
    http11: bool,
    keep_alive: bool,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let raw = body.take_head();
    let has_length = match &raw {
        Some(r) => r.has_length,
        None => parts.headers.contains_key(header::CONTENT_LENGTH),
    };
    let plan = server_write::plan(
        parts.status,
        has_length,
        body.size_hint().exact(),
        head_request,
        http11,
        keep_alive,
    );
    server_write::encode_head(wbuf, parts.status, &parts.headers, raw.as_ref(), &plan);
    if let Some(r) = raw {
        body.recycle_head(r);
    }
    // the body is written from this task alone: take the socket meanwhile
    let Some(mut io) = lock(wire).io.take() else {
        return false;
    };
    let r = write_body(&mut io, wbuf, body, plan.mode).await;
    lock(wire).io = Some(io);
    match r {
        Ok(()) => plan.mode != BodyMode::Close,
        Err(e) => {
            tracing::debug!(error = %e, "writing the response failed");
            false
        }
    }
}

/// Head and body, the head sent with the first body bytes.
async fn write_body<W: AsyncWrite + Unpin>(
    io: &mut W,
    head: &[u8],
    mut body: RespBody,
    mode: BodyMode,
) -> std::io::Result<()> {
    if mode == BodyMode::None {
        drop(body); // releases the server and pools its connection
        io.write_all(head).await?;
        return io.flush().await;
    }
    let chunked = mode == BodyMode::Chunked;
    let mut head = Some(head);
    let mut size = [0u8; 18];
    let mut ended = false;
    while !ended {
        let data = match body.frame().await {
            None => break,
            Some(Err(e)) => {
                // the client must not take a cut body for a whole one
                if let Some(h) = head.take() {
                    io.write_all(h).await?;
                }
                return Err(e);
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        ended = body.is_end_stream();
        let h = head.take().unwrap_or(&[]);
        let last: &[u8] = if chunked && ended {
            b"\r\n0\r\n\r\n"
        } else {
            b"\r\n"
        };
        if chunked {
            let line = server_write::chunk_header(&mut size, data.len());
            let mut bufs = [
                IoSlice::new(h),
                IoSlice::new(line),
                IoSlice::new(&data),
                IoSlice::new(last),
            ];
            server_write::write_all_vectored(io, &mut bufs).await?;
        } else {
            let mut bufs = [IoSlice::new(h), IoSlice::new(&data)];
            server_write::write_all_vectored(io, &mut bufs).await?;
        }
    }
    let h = head.take().unwrap_or(&[]);
    if chunked && !ended {
        let mut bufs = [IoSlice::new(h), IoSlice::new(b"0\r\n\r\n")];
        server_write::write_all_vectored(io, &mut bufs).await?;
    } else if !h.is_empty() {
        io.write_all(h).await?;
    }
    io.flush().await
}
