//! Client-side connection limits, with
//! nginx semantics: `send_timeout` (the client accepts no response bytes
//! for that long: close, so the backend connection and the server's
//! least_conn/max_conns slot are released), `client_header_timeout` (from
//! the connection's start, or from the first byte of a keep-alive request,
//! to the complete head) and `keepalive_timeout` (idle between requests).
//!
//! [`ClientIo`] wraps the client socket; the request handler marks the
//! connection busy with an [`Activity`] guard that lives until the response
//! body is done, so the wrapper knows whether a pending read is an idle
//! keep-alive wait, a request head in progress, or (busy) neither. Body
//! reads while busy are timed by the handler (`client_body_timeout`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Time limits of one client connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the start of a request head (connection start, or first byte
    /// after an idle keep-alive wait) to its end.
    pub header: Duration,
    /// Keep-alive: idle time between requests.
    pub idle: Duration,
    /// Longest time the client may accept no bytes of a response.
    pub send: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for or reading a request head.
    Head,
    /// Keep-alive: a response is done, no byte of the next request yet.
    Idle,
    /// A request is being handled (its body is timed by the handler).
    Busy,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    since: Instant,
    busy: u32,
    /// The connection's task, parked on a read while busy: it must poll
    /// again when the request ends, so the idle limit starts running.
    reader: Option<Waker>,
}

/// What the handler tells the connection about request activity.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<State>>);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(Mutex::new(State {
            phase: Phase::Head,
            since: Instant::now(),
            busy: 0,
            reader: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // the state is a few plain fields: a poisoned lock is still coherent
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request started; the connection is busy until the guard is dropped
    /// (attach it to the response body).
    pub fn begin(&self) -> Busy {
        let mut s = self.lock();
        s.busy += 1;
        s.phase = Phase::Busy;
        Busy(self.clone())
    }
}

/// Keeps the connection busy (no header/idle limit) while alive.
#[derive(Debug)]
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        let reader = {
            let mut s = self.0.lock();
            s.busy = s.busy.saturating_sub(1);
            if s.busy != 0 {
                return;
            }
            s.phase = Phase::Idle;
            s.since = Instant::now();
            s.reader.take()
        };
        // woken outside the lock
        if let Some(w) = reader {
            w.wake();
        }
    }
}

/// A client socket with header, idle and send timeouts.
pub struct ClientIo<S> {
    inner: S,
    limits: Limits,
    activity: Activity,
    read_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<S> ClientIo<S> {
    pub fn new(inner: S, limits: Limits) -> ClientIo<S> {
        ClientIo {
            inner,
            limits,
            activity: Activity::new(),
            read_timer: None,
            write_timer: None,
        }
    }

    /// The handle the request handler uses to mark the connection busy.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// After a write-side Pending: has the client accepted nothing for
    /// `send`? The timer runs from the first Pending and is cleared by any
    /// progress, so it measures the time between two successful writes.
    fn poll_send_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let send = self.limits.send;
        let t = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        match t.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("client accepted no response bytes within send_timeout; closing");
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client accepted no data within send_timeout",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn write_result<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_send_timer(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let mut s = this.activity.lock();
                    if s.phase == Phase::Idle {
                        // the next request's first byte: its head is timed now
                        s.phase = Phase::Head;
                        s.since = Instant::now();
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let deadline = {
                    let mut s = this.activity.lock();
                    match s.phase {
                        Phase::Busy => {
                            s.reader = Some(cx.waker().clone());
                            None
                        }
                        Phase::Head => Some(s.since + this.limits.header),
                        Phase::Idle => Some(s.since + this.limits.idle),
                    }
                };
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                let (at, timer) = this.read_timer.get_or_insert_with(|| {
                    (deadline, Box::pin(tokio::time::sleep_until(deadline)))
                });
                // each keep-alive request moves the deadline later; the timer
                // is left armed for the earlier one and re-armed only when it
                // fires, so a busy connection does not touch the timer wheel
                // per request
                if deadline < *at {
                    timer.as_mut().reset(deadline);
                    *at = deadline;
                }
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if Instant::now() >= deadline {
                        // end of stream: the connection closes an idle
                        // connection quietly and drops a partial head
                        tracing::debug!("client header or keep-alive idle timeout; closing");
                        return Poll::Ready(Ok(()));
                    }
                    timer.as_mut().reset(deadline);
                    *at = deadline;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_result(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_result(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_result(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.write_result(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(ms: u64) -> Limits {
        let d = Duration::from_millis(ms);
        Limits {
            header: d,
            idle: d,
            send: d,
        }
    }

    #[tokio::test]
    async fn writes_to_a_client_that_reads_nothing_time_out() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut io = ClientIo::new(ours, limits(200));
        let r = io.write_all(&[b'x'; 64 * 1024]).await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_fine() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = ClientIo::new(ours, limits(300));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            while total < 8 * 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                total += theirs.read(&mut buf).await.unwrap();
            }
        });
        // takes far longer than send_timeout in total, but never stalls that long
        io.write_all(&[b'x'; 8 * 1024]).await.unwrap();
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn idle_and_header_limits_end_the_stream_but_busy_does_not() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = ClientIo::new(
            ours,
            Limits {
                header: Duration::from_millis(300),
                idle: Duration::from_millis(150),
                send: Duration::from_secs(60),
            },
        );
        let act = io.activity();
        let mut buf = [0u8; 64];
        // busy: a pending read is not limited here
        let busy = act.begin();
        let r = tokio::time::timeout(Duration::from_millis(500), io.read(&mut buf)).await;
        assert!(r.is_err(), "busy connection read must wait");
        // a read parked while busy ends after `idle` once the request ends
        let read = async {
            let n = io.read(&mut buf).await.unwrap();
            (n, io)
        };
        let ending = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(busy);
            std::future::pending::<()>().await
        };
        let (n, mut io) = tokio::select! {
            r = read => r,
            _ = ending => unreachable!(),
        };
        assert_eq!(n, 0);
        // the first byte of a new request switches to the header limit
        theirs.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let t = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "header limit, not idle"
        );
    }
}
