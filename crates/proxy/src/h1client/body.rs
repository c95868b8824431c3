//! A backend response's body, read from its connection as the client
//! reads it (Content-Length, chunked, or until close); the connection goes
//! back to the pool once the body is read to its end.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::{Conn, Timeouts};
use crate::framing::{self, Decode};
use crate::rawhead::RawHead;

/// A backend response body, read from the connection as the client reads it.
pub struct BackendBody {
    conn: Option<Conn>,
    decode: Decode,
    keep_alive: bool,
    /// Longest wait for the next bytes of the body (`read_timeout`).
    read_timeout: Duration,
    /// The response head's forwarded fields, until the server takes them.
    pub(super) head: Option<RawHead>,
}

impl BackendBody {
    pub(super) fn new(
        conn: Conn,
        decode: Decode,
        keep_alive: bool,
        limits: Timeouts,
    ) -> BackendBody {
        BackendBody {
            conn: Some(conn),
            decode,
            keep_alive,
            read_timeout: limits.backend,
            head: None,
        }
    }

    /// The response head's fields as the client gets them (hop-by-hop
    /// fields left out); `None` for a 101, whose fields are in the
    /// response's header map.
    pub fn take_head(&mut self) -> Option<RawHead> {
        self.head.take()
    }

    /// Give a taken head's buffer back to the connection, for its next
    /// response.
    pub fn recycle_head(&mut self, head: RawHead) {
        if let Some(c) = self.conn.as_mut() {
            c.spans = head.into_buffer();
        }
    }

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
                        match ready!(conn.poll_fill(this.read_timeout, cx)) {
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
                        match ready!(conn.poll_fill(this.read_timeout, cx)) {
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
                        match ready!(conn.poll_fill(this.read_timeout, cx)) {
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
