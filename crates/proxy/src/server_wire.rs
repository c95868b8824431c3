//! The client connection as the HTTP/1 server side shares it: the socket,
//! the read buffer the request heads are parsed from (reused for the life
//! of the connection), and the state of the request body being read. The
//! connection loop and the request body ([`ReqBody`], handed to the proxy
//! as the request's body) take turns on it; both run in the connection's
//! own task, so the lock is never contended.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::framing::{Decode, MAX_CHUNK_LINE};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Read size: one head, or one slice of a body.
const READ_CHUNK: usize = 8192;

/// One client connection.
pub struct Wire<IO> {
    /// `None` once handed to a tunnel.
    pub io: Option<IO>,
    pub rbuf: BytesMut,
    /// The current request's body.
    pub decode: Decode,
    /// `Expect: 100-continue`: bytes of the interim response still to send
    /// before the body is first read (sent only if the body is wanted).
    continue_left: usize,
    /// The body failed (bad framing, early close): the connection ends
    /// after this request.
    pub broken: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Wire<IO> {
    pub fn new(io: IO) -> Wire<IO> {
        Wire {
            io: Some(io),
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            decode: Decode::Done,
            continue_left: 0,
            broken: false,
        }
    }

    /// A new request's body starts.
    pub fn start_body(&mut self, decode: Decode, expect_continue: bool) {
        self.decode = decode;
        self.broken = false;
        self.continue_left = if expect_continue && decode != Decode::Done {
            CONTINUE.len()
        } else {
            0
        };
    }

    /// Read more bytes into `rbuf`: `Ok(0)` is end of stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        // room for a full read in the same allocation if no slice of it is
        // alive; else reserve only when little room is left: while a
        // request's head (a slice of this buffer) lives, that allocates anew
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare < READ_CHUNK && !self.rbuf.try_reclaim(READ_CHUNK) && spare < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        // read_buf's future holds only borrows: dropping it when pending
        // loses nothing
        pin!(io.read_buf(&mut self.rbuf)).poll(cx)
    }

    /// Between requests, when no slice of the buffer is alive: make room
    /// for a full read in the same allocation (no new one).
    pub fn reclaim(&mut self) {
        let _ = self.rbuf.try_reclaim(READ_CHUNK);
    }

    /// The whole rest of a Content-Length body, if the client already sent
    /// it (it came with the head): taken at once, no body stream needed.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        let Decode::Length(rem) = self.decode else {
            return None;
        };
        let unasked = self.continue_left == CONTINUE.len() || self.continue_left == 0;
        if (self.rbuf.len() as u64) < rem || !unasked {
            return None;
        }
        // the client sent its body unasked: no 100 Continue
        self.continue_left = 0;
        self.decode = Decode::Done;
        Some(self.rbuf.split_to(rem as usize).freeze())
    }

    /// Send what is left of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.continue_left > 0 {
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            };
            let from = CONTINUE.len() - self.continue_left;
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_left -= n;
            if self.continue_left == 0 {
                ready!(Pin::new(io).poll_flush(cx))?;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// More body bytes are needed: ask for them (once) and read.
    fn poll_body_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_continue(cx))?;
        match ready!(self.poll_fill(cx))? {
            0 => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed the connection mid-body",
            ))),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// The next piece of the request body; `None` at its end.
    pub fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let r = self.poll_body_inner(cx);
        if let Poll::Ready(Some(Err(_))) = r {
            self.broken = true;
            self.decode = Decode::Done;
        }
        r
    }

    fn poll_body_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if !self.rbuf.is_empty() && self.continue_left == CONTINUE.len() {
            // the client sent its body without waiting: no 100 mid-body
            self.continue_left = 0;
        }
        loop {
            match self.decode {
                Decode::Done | Decode::UntilClose => return Poll::Ready(None),
                Decode::Length(rem) | Decode::ChunkData(rem) => {
                    if self.rbuf.is_empty() {
                        if let Err(e) = ready!(self.poll_body_fill(cx)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    let n = (self.rbuf.len() as u64).min(rem) as usize;
                    let data = self.rbuf.split_to(n).freeze();
                    self.decode = self.decode.on_data(n as u64);
                    return Poll::Ready(Some(Ok(data)));
                }
                Decode::ChunkSize | Decode::ChunkCrlf | Decode::Trailers => {
                    let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') else {
                        if self.rbuf.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(invalid("chunk line too long"))));
                        }
                        if let Err(e) = ready!(self.poll_body_fill(cx)) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    };
                    let line = self.rbuf.split_to(pos + 1);
                    // a chunk line ends in CRLF; a bare LF is refused
                    let Some(line) = line[..pos].strip_suffix(b"\r") else {
                        return Poll::Ready(Some(Err(invalid("bare LF in chunked body"))));
                    };
                    match self.decode.on_line(line) {
                        Ok(next) => self.decode = next,
                        Err(e) => return Poll::Ready(Some(Err(invalid(&e.to_string())))),
                    }
                }
            }
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// What [`ReqBody`] needs from the connection, without its socket type.
pub trait BodySource: Send {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>>;
    fn body_done(&self) -> bool;
    fn take_whole(&mut self) -> Option<Bytes>;
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> BodySource for Wire<IO> {
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        Wire::poll_body(self, cx)
    }

    fn body_done(&self) -> bool {
        self.decode == Decode::Done
    }

    fn take_whole(&mut self) -> Option<Bytes> {
        Wire::take_whole(self)
    }
}

pub type Shared = Arc<Mutex<dyn BodySource>>;

/// A client's request body, read from its connection as it is consumed.
pub struct ReqBody {
    src: Option<Shared>,
    hint: SizeHint,
}

impl ReqBody {
    pub fn new(src: Shared, decode: Decode) -> ReqBody {
        let hint = match decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        };
        let src = (decode != Decode::Done).then_some(src);
        ReqBody { src, hint }
    }

    /// The whole body if the client already sent it (a Content-Length
    /// body that came with the head); else the body stays a stream.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        let data = lock(self.src.as_ref()?).take_whole()?;
        self.src = None;
        Some(data)
    }

    /// No body (tests, local use).
    pub fn empty() -> ReqBody {
        ReqBody {
            src: None,
            hint: SizeHint::with_exact(0),
        }
    }
}

fn lock(src: &Shared) -> MutexGuard<'_, dyn BodySource + 'static> {
    // plain state: a poisoned lock is still coherent
    src.lock().unwrap_or_else(|e| e.into_inner())
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(src) = &this.src else {
            return Poll::Ready(None);
        };
        let r = ready!(lock(src).poll_body(cx));
        if !matches!(r, Some(Ok(_))) {
            this.src = None;
        }
        Poll::Ready(r.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.src.as_ref().is_none_or(|s| lock(s).body_done())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The body `decode` reads from a client that sends `early` (already
    /// buffered with the head) and then `input`, and what was written back.
    async fn read_body(
        early: &[u8],
        input: &[u8],
        decode: Decode,
        expect: bool,
    ) -> (io::Result<Vec<u8>>, Vec<u8>) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        theirs.write_all(input).await.unwrap();
        theirs.shutdown().await.unwrap();
        let wire = Arc::new(Mutex::new(Wire::new(ours)));
        {
            let mut w = wire.lock().unwrap();
            w.rbuf.extend_from_slice(early);
            w.start_body(decode, expect);
        }
        let mut body = ReqBody::new(wire.clone(), decode);
        let mut got = Vec::new();
        let r = loop {
            match body.frame().await {
                None => break Ok(got),
                Some(Ok(f)) => got.extend_from_slice(&f.into_data().unwrap()),
                Some(Err(e)) => break Err(e),
            }
        };
        drop((body, wire));
        let mut written = Vec::new();
        theirs.read_to_end(&mut written).await.unwrap();
        (r, written)
    }

    #[tokio::test]
    async fn chunked_and_length_bodies() {
        let chunked = Decode::new(crate::framing::Framing::Chunked);
        let (r, w) = read_body(b"", b"5;x=1\r\nhello\r\n0\r\nT: v\r\n\r\n", chunked, false).await;
        assert_eq!(r.unwrap(), b"hello");
        assert!(w.is_empty());
        let (r, _) = read_body(b"", b"5\nhello\r\n0\r\n\r\n", chunked, false).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData, "bare LF");
        let (r, _) = read_body(b"", b"+5\r\nhello\r\n0\r\n\r\n", chunked, false).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData, "signed");
        let (r, _) = read_body(b"", b"5\r\nhelloX\r\n0\r\n\r\n", chunked, false).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData, "no CRLF");
        let (r, _) = read_body(b"hel", b"lo", Decode::Length(5), false).await;
        assert_eq!(r.unwrap(), b"hello");
        let (r, _) = read_body(b"", b"hello", Decode::Length(10), false).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_buffered_body_is_taken_whole() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let wire = Arc::new(Mutex::new(Wire::new(ours)));
        wire.lock().unwrap().rbuf.extend_from_slice(b"hell");
        wire.lock().unwrap().start_body(Decode::Length(5), true);
        let mut body = ReqBody::new(wire.clone(), Decode::Length(5));
        assert!(body.take_whole().is_none(), "not all there yet");
        wire.lock().unwrap().rbuf.clear();
        wire.lock().unwrap().rbuf.extend_from_slice(b"helloGET");
        assert_eq!(body.take_whole().unwrap(), "hello");
        assert!(body.is_end_stream());
        let w = wire.lock().unwrap();
        assert_eq!(&w.rbuf[..], b"GET", "the next request stays");
        assert_eq!((w.decode, w.continue_left), (Decode::Done, 0), "no 100");
        drop(w);
        let mut chunked = ReqBody::new(wire.clone(), Decode::ChunkSize);
        assert!(chunked.take_whole().is_none(), "only Content-Length bodies");
    }

    #[tokio::test]
    async fn continue_is_sent_only_when_the_body_is_awaited() {
        let (r, w) = read_body(b"", b"hello", Decode::Length(5), true).await;
        assert_eq!(r.unwrap(), b"hello");
        assert_eq!(w, CONTINUE, "asked for before the first read");
        let (r, w) = read_body(b"he", b"llo", Decode::Length(5), true).await;
        assert_eq!(r.unwrap(), b"hello");
        assert!(
            w.is_empty(),
            "the client sent its body unasked: no 100 mid-body"
        );
        let (r, w) = read_body(b"", b"", Decode::Done, true).await;
        assert_eq!(r.unwrap(), b"");
        assert!(w.is_empty(), "no body, no 100");
    }
}
