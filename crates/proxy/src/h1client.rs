//! A minimal HTTP/1.1 client connection to a backend, driven inline by the
//! request that uses it: no connection task and no channels between tasks,
//! so a proxied request costs one task's polls instead of two tasks handing
//! messages back and forth (this halves the user-space CPU of the hot path
//! compared with hyper's client connection; see the README benchmark).
//!
//! Scope: requests are written whole (head, then body: buffered bytes, or a
//! streamed client body, chunk-encoded when its length is unknown);
//! responses are parsed with `httparse`; bodies are framed by
//! Content-Length, chunked encoding, or connection close. 1xx interim
//! responses are skipped, except a 101 answering a request that carries
//! `Upgrade`: it ends the exchange and hands over the raw connection. A connection is reusable when the response was
//! HTTP/1.1 without `Connection: close` and its body was read to the end.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::framing::{self, Decode};
use crate::rawhead::{Parsed, Span};
use crate::reqhead::{BodyFraming, Forward};
use crate::stall::Stall;

/// Largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = crate::rawhead::MAX_FIELDS;
/// A request buffer grown past this (a large head or small body) is not
/// kept for the connection's next request.
const KEEP_WBUF: usize = 32 * 1024;

/// A request body for the backend.
pub enum OutBody {
    /// Buffered (possibly empty): can be sent again on another connection.
    Bytes(Bytes),
    /// Streamed from the client: can be sent once.
    Stream(crate::server_wire::ReqBody),
}

/// Per-operation time limits of one exchange, nginx style: each limit is
/// the longest wait for one read or write, not for the whole exchange, so a
/// slow but moving transfer is fine and a stall is caught.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Each read of the client's request body (`client_body_timeout`). A
    /// stall here is the client's fault, reported as
    /// [`ExchangeError::ClientBodyTimeout`].
    pub client_body: Duration,
    /// Each write to the backend and each read of its response
    /// (`read_timeout`; nginx `proxy_send_timeout`/`proxy_read_timeout`).
    /// Reading starts only once the request is fully sent.
    pub backend: Duration,
}

/// Why an exchange failed, and whether the request may have been received.
#[derive(Debug)]
pub enum ExchangeError {
    /// Writing the request head failed: nothing was delivered.
    WriteHead(io::Error),
    /// Writing the body failed after the head went out.
    WriteBody(io::Error),
    /// The client's request body failed while streaming it.
    ClientBody,
    /// The client sent no request body bytes for `client_body` time.
    ClientBodyTimeout,
    /// The backend accepted no request bytes, or sent no response bytes,
    /// for the `backend` time.
    Timeout,
    /// The connection closed (or reset) before any response byte.
    /// `unread`: the backend closed cleanly without having acknowledged a
    /// byte of this request, so its application cannot have read any of
    /// it (see [`Conn::exchange`]): the request may go out again even
    /// when it is not idempotent.
    ClosedBeforeResponse { unread: bool },
    /// The connection closed in the middle of the response head.
    Incomplete,
    /// The response head could not be parsed.
    Invalid(String),
}

/// One open connection to a backend.
pub struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
    /// The read/write limit's timer, one for the connection's life.
    stall: Stall,
    /// The request head's bytes, reused by each request on the connection.
    wbuf: Vec<u8>,
    /// The response head's field spans, likewise (lent to each response's
    /// head, given back by [`BackendBody::recycle_head`]).
    spans: Vec<Span>,
    /// Bytes written over the connection's life: compared with what the
    /// backend acknowledged when it closes before answering.
    sent: u64,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(8192),
            stall: Stall::new(),
            wbuf: Vec::with_capacity(1024),
            spans: Vec::with_capacity(16),
            sent: 0,
        }
    }

    /// Is this idle pooled connection still usable? Detects a close (or
    /// unexpected bytes) already seen by the socket, without blocking.
    pub fn looks_alive(&self) -> bool {
        // the last response's short read cleared the read readiness
        // (`poll_fill`); while the runtime has seen no event since, nothing
        // (no FIN, no stray byte) arrived: no probe, no system call. A close
        // racing with our write is the keep-alive race `send_attempt` retries.
        // Unconstrained: with the task's cooperative budget spent, a plain
        // poll says pending without looking at the readiness at all.
        let mut cx = Context::from_waker(Waker::noop());
        let ready = pin!(tokio::task::unconstrained(poll_fn(|cx| {
            self.io.poll_read_ready(cx)
        })));
        if ready.poll(&mut cx).is_pending() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Send one request and read the response head. The returned body
    /// owns the connection; see [`BackendBody::take_reusable`].
    pub async fn exchange(
        mut self,
        req: &Forward<'_>,
        body: &mut Option<OutBody>,
        limits: Timeouts,
    ) -> Result<Response<BackendBody>, ExchangeError> {
        let sent_before = self.sent;
        let result = self.send_and_read(req, body, limits).await;
        match result {
            Err(ExchangeError::ClosedBeforeResponse { unread: true }) => {
                Err(ExchangeError::ClosedBeforeResponse {
                    unread: self.none_acked_since(sent_before).await,
                })
            }
            Err(e) => Err(e),
            Ok(head) => Ok(self.response(req, head, limits)?),
        }
    }

    /// Did the backend read none of the bytes written after `sent_before`?
    /// Proven when its kernel reset the connection in answer to them and
    /// acknowledged none: a backend that closed an idle connection just
    /// before the request arrived (its FIN not yet seen by the reactor, so
    /// the pool handed the connection out). One that read (part of) the
    /// request acknowledges it with its FIN at the latest, and one that only
    /// half-closed still reads, sends no reset and may delay its
    /// acknowledgement: neither is proven unread. The reset takes a round
    /// trip: asked again after twice the smoothed RTT (at least 1 ms, at
    /// most 100 ms). A `getsockopt` or two, only on this failure path.
    async fn none_acked_since(&self, sent_before: u64) -> bool {
        // the SYN counts as one acknowledged byte
        let acked = |i: &TcpInfo| i.bytes_acked > sent_before + 1;
        let Some(first) = tcp_info(&self.io) else {
            return false;
        };
        if acked(&first) {
            return false;
        }
        if first.reset {
            return true;
        }
        let wait = (2 * u64::from(first.rtt_us)).clamp(1_000, 100_000);
        tokio::time::sleep(std::time::Duration::from_micros(wait)).await;
        tcp_info(&self.io).is_some_and(|i| i.reset && !acked(&i))
    }

    /// Write the request and read up to a final (or 101) response head.
    async fn send_and_read(
        &mut self,
        req: &Forward<'_>,
        body: &mut Option<OutBody>,
        limits: Timeouts,
    ) -> Result<Parsed, ExchangeError> {
        // a streamed body is taken only once the head is written, so that a
        // request that never left can be sent again on another connection
        let body_bytes = match body {
            Some(OutBody::Bytes(b)) => Some(b.clone()),
            Some(OutBody::Stream(_)) => None,
            None => Some(Bytes::new()),
        };
        let framing = match &body_bytes {
            Some(b) if b.is_empty() => BodyFraming::AsIs,
            Some(b) => BodyFraming::Length(b.len() as u64),
            None if req.head.get(b"content-length").is_some() => BodyFraming::AsIs,
            None => BodyFraming::Chunked,
        };
        let mut head = std::mem::take(&mut self.wbuf);
        head.clear();
        req.encode(&mut head, framing);
        if let Some(b) = &body_bytes {
            if b.len() <= 16 * 1024 {
                head.extend_from_slice(b);
            }
        }
        let send = limits.backend;
        self.write(&head, send, ExchangeError::WriteHead).await?;
        if head.capacity() <= KEEP_WBUF {
            self.wbuf = head;
        }
        if let Some(b) = &body_bytes {
            if b.len() > 16 * 1024 {
                self.write(b, send, ExchangeError::WriteBody).await?;
            }
        }
        if let Some(OutBody::Stream(s)) = body.take_if(|b| matches!(b, OutBody::Stream(_))) {
            // the rare path, boxed: its state would otherwise enlarge every
            // request's future
            let chunked = matches!(framing, BodyFraming::Chunked);
            Box::pin(self.send_stream(s, chunked, limits)).await?;
        }
        loop {
            let head = self.read_head(limits.backend).await?;
            if head.code == 101 && req.upgrade.is_none() {
                // what follows would not be HTTP: never parse it as such
                return Err(ExchangeError::Invalid(
                    "101 without an Upgrade request".into(),
                ));
            }
            if head.code == 101 || !(100..200).contains(&head.code) {
                return Ok(head);
            }
            // 100 Continue and friends
        }
    }

    /// The response for a final (or 101) head; the body owns the connection.
    fn response(
        self,
        req: &Forward<'_>,
        head: Parsed,
        limits: Timeouts,
    ) -> Result<Response<BackendBody>, ExchangeError> {
        if head.code == 101 {
            // the connection now belongs to the new protocol: no body,
            // never reused; see BackendBody::take_upgraded
            let map = head.header_map().map_err(ExchangeError::Invalid)?;
            let mut resp = Response::new(BackendBody::new(self, Decode::Done, false, limits));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *resp.headers_mut() = map;
            return Ok(resp);
        }
        let status = StatusCode::from_u16(head.code)
            .map_err(|_| ExchangeError::Invalid("bad status code".into()))?;
        let head_request = req.head.method == Method::HEAD;
        let decode = framing::response_framing(head.code, head_request, head.fields())
            .map(Decode::new)
            .map_err(|e| ExchangeError::Invalid(e.to_string()))?;
        let keep_alive = !head.http10 && !head.has_connection_token(b"close");
        // the client's head: hop-by-hop fields out, no header map
        let mut body = BackendBody::new(self, decode, keep_alive, limits);
        body.head = Some(head.into_forwarded());
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        Ok(resp)
    }

    /// Stream the client's body to the backend, chunk-encoded when its
    /// length is unknown.
    async fn send_stream(
        &mut self,
        mut s: crate::server_wire::ReqBody,
        chunked: bool,
        limits: Timeouts,
    ) -> Result<(), ExchangeError> {
        let send = limits.backend;
        loop {
            // the client's pace is timed on its own: a slow upload must
            // never look like a slow server
            let frame = match tokio::time::timeout(limits.client_body, s.frame()).await {
                Err(_) => return Err(ExchangeError::ClientBodyTimeout),
                Ok(None) => break,
                Ok(Some(f)) => f.map_err(|_| ExchangeError::ClientBody)?,
            };
            if let Ok(data) = frame.into_data() {
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let size = format!("{:x}\r\n", data.len());
                    self.write(size.as_bytes(), send, ExchangeError::WriteBody)
                        .await?;
                }
                self.write(&data, send, ExchangeError::WriteBody).await?;
                if chunked {
                    self.write(b"\r\n", send, ExchangeError::WriteBody).await?;
                }
            }
        }
        if chunked {
            self.write(b"0\r\n\r\n", send, ExchangeError::WriteBody)
                .await?;
        }
        Ok(())
    }

    /// Write all of `buf`, waiting at most `limit` for the backend to accept
    /// each part of it.
    async fn write(
        &mut self,
        mut buf: &[u8],
        limit: Duration,
        err: fn(io::Error) -> ExchangeError,
    ) -> Result<(), ExchangeError> {
        while !buf.is_empty() {
            let Conn { io, stall, .. } = self;
            let written = poll_fn(|cx| match Pin::new(&mut *io).poll_write(cx, buf) {
                Poll::Ready(r) => {
                    stall.progress();
                    Poll::Ready(Some(r))
                }
                Poll::Pending => stall.poll_stalled(limit, cx).map(|()| None),
            });
            let n = match written.await {
                None => return Err(ExchangeError::Timeout),
                Some(Ok(0)) => return Err(err(io::ErrorKind::WriteZero.into())),
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(err(e)),
            };
            self.sent += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Read more bytes into the buffer, waiting at most `limit` for them.
    /// The socket is checked before the timer, so a pause in which nobody
    /// read (the client not taking the body) never counts as a stall.
    fn poll_fill(&mut self, limit: Duration, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(8192);
        // through AsyncRead, not try_read: a short read clears the socket's
        // read readiness, which is what lets `looks_alive` skip its probe.
        // read_buf's future holds only borrows: dropping it when pending
        // loses nothing
        match pin!(self.io.read_buf(&mut self.rbuf)).poll(cx) {
            Poll::Ready(Ok(n)) => {
                self.stall.progress();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                ready!(self.stall.poll_stalled(limit, cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "backend sent no response bytes within read_timeout",
                )))
            }
        }
    }

    /// Read and parse a response head. Header values are slices of the
    /// read buffer (no copy); the head's bytes are consumed from the buffer.
    /// `limit` bounds each read, like nginx's `proxy_read_timeout`.
    async fn read_head(&mut self, limit: Duration) -> Result<Parsed, ExchangeError> {
        let mut got_any = !self.rbuf.is_empty();
        loop {
            if !self.rbuf.is_empty() {
                if let Some(resp) = parse_head_into(&mut self.rbuf, &mut self.spans)? {
                    return Ok(resp);
                }
                if self.rbuf.len() > MAX_HEAD {
                    return Err(ExchangeError::Invalid("response head too large".into()));
                }
            }
            let n = match poll_fn(|cx| self.poll_fill(limit, cx)).await {
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(ExchangeError::Timeout)
                }
                Ok(n) => n,
                // a reset: the backend may have read part of the request
                Err(_) if !got_any => {
                    return Err(ExchangeError::ClosedBeforeResponse { unread: false })
                }
                Err(_) => return Err(ExchangeError::Incomplete),
            };
            if n == 0 {
                // a clean close: `exchange` asks the socket whether any of
                // the request was acknowledged
                return Err(if got_any {
                    ExchangeError::Incomplete
                } else {
                    ExchangeError::ClosedBeforeResponse { unread: true }
                });
            }
            got_any = true;
        }
    }
}

/// Parses one response head at the start of `buf`. A complete head is
/// consumed from `buf` and returned with its fields as spans of its bytes
/// (no copy, no header map); `Ok(None)` means more bytes are needed and
/// leaves `buf` as is.
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<Parsed>, ExchangeError> {
    parse_head_into(buf, &mut Vec::new())
}

/// [`parse_response_head`] with the spans' vector lent by the connection:
/// a complete head takes it (cleared and filled), else it stays.
fn parse_head_into(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
) -> Result<Option<Parsed>, ExchangeError> {
    let (n, code, version) = {
        // uninitialised storage: nothing to zero per response
        let mut storage = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            buf,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(n)) => {
                let base = buf.as_ptr() as usize;
                // offsets fit: a head is at most MAX_HEAD bytes
                let off = |p: *const u8| (p as usize - base) as u32;
                spans.clear();
                spans.extend(r.headers.iter().map(|h| {
                    let (ns, vs) = (off(h.name.as_ptr()), off(h.value.as_ptr()));
                    [ns, ns + h.name.len() as u32, vs, vs + h.value.len() as u32]
                }));
                (n, r.code, r.version)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ExchangeError::Invalid(e.to_string())),
        }
    };
    if n > MAX_HEAD {
        return Err(ExchangeError::Invalid("response head too large".into()));
    }
    let code = code
        .filter(|c| StatusCode::from_u16(*c).is_ok())
        .ok_or_else(|| ExchangeError::Invalid("bad status code".into()))?;
    Ok(Some(Parsed {
        code,
        http10: version == Some(0),
        bytes: buf.split_to(n).freeze(),
        spans: std::mem::take(spans),
    }))
}

pub use crate::framing::chunk_size_line;

mod body;
mod tcp_info;
pub use body::BackendBody;
use tcp_info::{tcp_info, TcpInfo};

#[cfg(test)]
mod tests;
