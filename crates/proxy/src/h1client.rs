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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::framing::{self, Decode};

/// Largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

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
    ClosedBeforeResponse,
    /// The connection closed in the middle of the response head.
    Incomplete,
    /// The response head could not be parsed.
    Invalid(String),
}

/// One open connection to a backend.
pub struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(8192),
        }
    }

    /// Is this idle pooled connection still usable? Detects a close (or
    /// unexpected bytes) already seen by the socket, without blocking.
    pub fn looks_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Send one request and read the response head. The returned body
    /// owns the connection; see [`BackendBody::take_reusable`].
    pub async fn exchange(
        mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        host: Option<&HeaderValue>,
        body: &mut Option<OutBody>,
        limits: Timeouts,
    ) -> Result<Response<BackendBody>, ExchangeError> {
        // a streamed body is taken only once the head is written, so that a
        // request that never left can be sent again on another connection
        let body_bytes = match body {
            Some(OutBody::Bytes(b)) => Some(b.clone()),
            Some(OutBody::Stream(_)) => None,
            None => Some(Bytes::new()),
        };
        let framing = match &body_bytes {
            Some(b) if b.is_empty() => Framing::AsIs,
            Some(b) => Framing::Length(b.len() as u64),
            None if headers.contains_key(header::CONTENT_LENGTH) => Framing::AsIs,
            None => Framing::Chunked,
        };
        let mut head = Vec::with_capacity(512);
        encode_head(&mut head, method, uri, headers, host, framing);
        if let Some(b) = &body_bytes {
            if b.len() <= 16 * 1024 {
                head.extend_from_slice(b);
            }
        }
        let send = limits.backend;
        self.write(&head, send, ExchangeError::WriteHead).await?;
        if let Some(b) = &body_bytes {
            if b.len() > 16 * 1024 {
                self.write(b, send, ExchangeError::WriteBody).await?;
            }
        }
        if let Some(OutBody::Stream(mut s)) = body.take_if(|b| matches!(b, OutBody::Stream(_))) {
            let chunked = matches!(framing, Framing::Chunked);
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
        }
        let head_request = method == Method::HEAD;
        loop {
            let resp = self.read_head(limits.backend).await?;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if !headers.contains_key(header::UPGRADE) {
                    // what follows would not be HTTP: never parse it as such
                    return Err(ExchangeError::Invalid(
                        "101 without an Upgrade request".into(),
                    ));
                }
                // the connection now belongs to the new protocol: no body,
                // never reused; see BackendBody::take_upgraded
                let (mut parts, ()) = resp.into_parts();
                parts.version = Version::HTTP_11;
                let body = BackendBody {
                    conn: Some(self),
                    decode: Decode::Done,
                    keep_alive: false,
                    read_timeout: limits.backend,
                    timer: None,
                };
                return Ok(Response::from_parts(parts, body));
            }
            if resp.status().is_informational() {
                continue; // 100 Continue and friends
            }
            let (mut parts, ()) = resp.into_parts();
            let decode = body_framing(&parts.headers, parts.status, head_request)?;
            if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                // Transfer-Encoding wins (RFC 9112 §6.3); passing the stale
                // length on would let the client frame the body differently
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let keep_alive =
                parts.version == Version::HTTP_11 && !has_token(&parts.headers, "close");
            parts.version = Version::HTTP_11;
            let body = BackendBody {
                conn: Some(self),
                decode,
                keep_alive,
                read_timeout: limits.backend,
                timer: None,
            };
            return Ok(Response::from_parts(parts, body));
        }
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
            let n = match tokio::time::timeout(limit, self.io.write(buf)).await {
                Err(_) => return Err(ExchangeError::Timeout),
                Ok(Ok(0)) => return Err(err(io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(err(e)),
            };
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Read and parse a response head. Header values are slices of the
    /// read buffer (no copy); the head's bytes are consumed from the buffer.
    /// `limit` bounds each read, like nginx's `proxy_read_timeout`.
    async fn read_head(&mut self, limit: Duration) -> Result<Response<()>, ExchangeError> {
        let mut got_any = !self.rbuf.is_empty();
        loop {
            if !self.rbuf.is_empty() {
                if let Some(resp) = parse_response_head(&mut self.rbuf)? {
                    return Ok(resp);
                }
                if self.rbuf.len() > MAX_HEAD {
                    return Err(ExchangeError::Invalid("response head too large".into()));
                }
            }
            self.rbuf.reserve(8192);
            let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.rbuf);
            let n = match tokio::time::timeout(limit, read).await {
                Err(_) => return Err(ExchangeError::Timeout),
                Ok(Ok(n)) => n,
                Ok(Err(_)) if !got_any => return Err(ExchangeError::ClosedBeforeResponse),
                Ok(Err(_)) => return Err(ExchangeError::Incomplete),
            };
            if n == 0 {
                return Err(if got_any {
                    ExchangeError::Incomplete
                } else {
                    ExchangeError::ClosedBeforeResponse
                });
            }
            got_any = true;
        }
    }
}

/// Parses one response head at the start of `buf`. A complete head is
/// consumed from `buf` and returned (header values are slices of its bytes,
/// no copy); `Ok(None)` means more bytes are needed and leaves `buf` as is.
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<Response<()>>, ExchangeError> {
    type Span = (usize, usize, usize, usize);
    let parsed = {
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
                let spans: Vec<Span> = r
                    .headers
                    .iter()
                    .map(|h| {
                        let ns = h.name.as_ptr() as usize - base;
                        let vs = h.value.as_ptr() as usize - base;
                        (ns, ns + h.name.len(), vs, vs + h.value.len())
                    })
                    .collect();
                let count = spans.len();
                Some((n, r.code, r.version, spans, count))
            }
            Ok(httparse::Status::Partial) => None,
            Err(e) => return Err(ExchangeError::Invalid(e.to_string())),
        }
    };
    let Some((n, code, version, spans, count)) = parsed else {
        return Ok(None);
    };
    let head = buf.split_to(n).freeze();
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| ExchangeError::Invalid("bad status code".into()))?;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = if version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let map = resp.headers_mut();
    map.reserve(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| {
            ExchangeError::Invalid(format!(
                "bad header name {:?}",
                String::from_utf8_lossy(&head[ns..ne])
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ExchangeError::Invalid(format!("bad value for {name}")))?;
        map.append(name, value);
    }
    Ok(Some(resp))
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Keep the request's own Content-Length (or no body).
    AsIs,
    Length(u64),
    Chunked,
}

fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    host: Option<&HeaderValue>,
    framing: Framing,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if host.is_some() && name == header::HOST {
            continue;
        }
        if !matches!(framing, Framing::AsIs) && name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::AsIs => {}
        Framing::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The response body's framing, by the rules in [`crate::framing`] shared
/// with the request side.
fn body_framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> Result<Decode, ExchangeError> {
    let fields = headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    framing::response_framing(status.as_u16(), head_request, fields)
        .map(Decode::new)
        .map_err(|e| ExchangeError::Invalid(e.to_string()))
}

pub use crate::framing::chunk_size_line;

/// A backend response body, read from the connection as the client reads it.
pub struct BackendBody {
    conn: Option<Conn>,
    decode: Decode,
    keep_alive: bool,
    /// Longest wait for the next bytes of the body (`read_timeout`).
    read_timeout: Duration,
    /// Runs while a read waits; cleared whenever bytes arrive.
    timer: Option<Pin<Box<Sleep>>>,
}

impl BackendBody {
    /// After the body is complete, the connection if it can serve another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if self.decode == Decode::Done && self.keep_alive {
            let c = self.conn.take()?;
            // bytes beyond the response would be a protocol error: do not reuse
            if c.rbuf.is_empty() {
                return Some(c);
            }
        }
        None
    }

    /// After a 101 response: the raw connection and any bytes of the new
    /// protocol the backend sent right behind the response head.
    pub fn take_upgraded(&mut self) -> Option<(TcpStream, BytesMut)> {
        self.keep_alive = false;
        self.conn.take().map(|c| (c.io, c.rbuf))
    }

    /// Read more bytes into the buffer. The socket is checked before the
    /// timer, so a client that paused reading never turns bytes that did
    /// arrive into a backend timeout.
    fn poll_fill(
        conn: &mut Conn,
        timer: &mut Option<Pin<Box<Sleep>>>,
        limit: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        loop {
            if conn.io.poll_read_ready(cx)?.is_pending() {
                let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(t.as_mut().poll(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "backend sent no response bytes within read_timeout",
                )));
            }
            conn.rbuf.reserve(8192);
            match conn.io.try_read_buf(&mut conn.rbuf) {
                Ok(n) => {
                    *timer = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "backend closed the connection mid-body",
    )
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decode {
                Decode::Done => return Poll::Ready(None),
                Decode::Length(rem) | Decode::ChunkData(rem) => {
                    if conn.rbuf.is_empty() {
                        match ready!(Self::poll_fill(
                            conn,
                            &mut this.timer,
                            this.read_timeout,
                            cx
                        )) {
                            Ok(0) => return Poll::Ready(Some(Err(eof()))),
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    }
                    let n = (conn.rbuf.len() as u64).min(rem) as usize;
                    let data = conn.rbuf.split_to(n).freeze();
                    this.decode = this.decode.on_data(n as u64);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::UntilClose => {
                    if conn.rbuf.is_empty() {
                        match ready!(Self::poll_fill(
                            conn,
                            &mut this.timer,
                            this.read_timeout,
                            cx
                        )) {
                            Ok(0) => {
                                this.decode = Decode::Done;
                                this.keep_alive = false;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    }
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decode::ChunkSize | Decode::ChunkCrlf | Decode::Trailers => {
                    let Some(pos) = conn.rbuf.windows(2).position(|w| w == b"\r\n") else {
                        if conn.rbuf.len() > framing::MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(bad("chunk line too long"))));
                        }
                        match ready!(Self::poll_fill(
                            conn,
                            &mut this.timer,
                            this.read_timeout,
                            cx
                        )) {
                            Ok(0) => return Poll::Ready(Some(Err(eof()))),
                            Ok(_) => continue,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    };
                    let line = conn.rbuf.split_to(pos + 2);
                    match this.decode.on_line(&line[..pos]) {
                        Ok(next) => this.decode = next,
                        Err(e) => return Poll::Ready(Some(Err(bad(&e.to_string())))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decode == Decode::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
