//! One QUIC bidirectional stream carrying framed requests one way and
//! replies the other: the session's control stream, or one large file's own
//! stream (so a huge file never holds up the small files behind it).

use crate::wire::{self, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("standby reported a fatal error: {0}")]
    Fatal(String),
    #[error("standby closed the stream")]
    Closed,
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(
        "no reply from the standby within {0:?}: it is hung or overloaded; ending the session"
    )]
    Timeout(std::time::Duration),
}

/// How long to wait for the next reply before giving the session up. QUIC
/// keep-alives hold the connection open even when the standby's session is
/// stuck, so without this a hung standby only shows as growing lag.
pub const REPLY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    /// Bytes received and not yet taken as frames (from `inpos`): reads
    /// take what has arrived, so waiting for a reply is cancel-safe (the
    /// live loop waits for a commit's answer beside the watch).
    inbuf: Vec<u8>,
    inpos: usize,
    /// Frame bytes sent and received (comparable with rsync's --stats totals).
    pub tx: u64,
    pub rx: u64,
    /// See [`REPLY_DEADLINE`]; `None` waits as long as it takes.
    pub deadline: Option<std::time::Duration>,
}

impl Stream {
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Stream {
        Stream {
            send,
            recv,
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            inbuf: Vec::new(),
            inpos: 0,
            tx: 0,
            rx: 0,
            deadline: Some(REPLY_DEADLINE),
        }
    }

    /// Queues a request; small messages are batched into larger stream
    /// writes, and everything queued is flushed before we wait for a reply.
    pub async fn send(&mut self, r: &Request) -> Result<(), StreamError> {
        wire::encode_frame(r, &mut self.wbuf)?;
        if self.wbuf.len() >= 256 << 10 {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), StreamError> {
        if !self.wbuf.is_empty() {
            self.send
                .write_all(&self.wbuf)
                .await
                .map_err(|e| wire::WireError::Io(e.into()))?;
            self.tx += self.wbuf.len() as u64;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes an already-encoded payload as one frame (tests play a hostile
    /// primary with it).
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), StreamError> {
        self.flush().await?;
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        self.send
            .write_all(&f)
            .await
            .map_err(|e| wire::WireError::Io(e.into()))?;
        Ok(())
    }

    /// Flushes and ends our direction: nothing more will be sent.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        self.flush().await?;
        let _ = self.send.finish();
        Ok(())
    }

    /// The payload of the last frame read (for what trails a `Welcome`).
    pub fn last_frame(&self) -> &[u8] {
        &self.rbuf
    }

    /// The next reply. Cancel-safe once nothing is left to flush: what was
    /// read of a frame stays buffered for the next call.
    pub async fn reply(&mut self) -> Result<Reply, StreamError> {
        self.flush().await?;
        let r = match self.deadline {
            Some(d) => tokio::time::timeout(d, self.read_frame())
                .await
                .map_err(|_| StreamError::Timeout(d))??,
            None => self.read_frame().await?,
        };
        self.rx += 4 + self.rbuf.len() as u64;
        match r {
            Some(Reply::Fatal { reason }) => Err(StreamError::Fatal(reason)),
            Some(r) => Ok(r),
            None => Err(StreamError::Closed),
        }
    }

    /// One frame's payload into `rbuf`, decoded; `None` at a clean end.
    async fn read_frame(&mut self) -> Result<Option<Reply>, wire::WireError> {
        loop {
            let have = &self.inbuf[self.inpos..];
            if have.len() >= 4 {
                let len = u32::from_le_bytes([have[0], have[1], have[2], have[3]]) as usize;
                if len > wire::MAX_FRAME {
                    return Err(wire::WireError::TooLarge(len));
                }
                if have.len() >= 4 + len {
                    self.rbuf.clear();
                    self.rbuf.extend_from_slice(&have[4..4 + len]);
                    self.inpos += 4 + len;
                    if self.inpos == self.inbuf.len() {
                        self.inbuf.clear();
                        self.inpos = 0;
                    }
                    return Ok(Some(wire::decode(&self.rbuf)?));
                }
            }
            // The only await: quinn's read_chunk is cancel-safe, and
            // nothing above has changed until a frame is complete.
            let chunk = self
                .recv
                .read_chunk(usize::MAX, true)
                .await
                .map_err(|e| wire::WireError::Io(e.into()))?;
            let Some(chunk) = chunk else {
                if self.inpos == self.inbuf.len() {
                    return Ok(None);
                }
                return Err(wire::WireError::Closed);
            };
            if self.inpos > 0 {
                self.inbuf.drain(..self.inpos);
                self.inpos = 0;
            }
            self.inbuf.extend_from_slice(&chunk.bytes);
        }
    }
}
