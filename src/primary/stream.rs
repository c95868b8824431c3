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

    pub async fn reply(&mut self) -> Result<Reply, StreamError> {
        self.flush().await?;
        let read = wire::read_msg::<_, Reply>(&mut self.recv, &mut self.rbuf);
        let r = match self.deadline {
            Some(d) => tokio::time::timeout(d, read)
                .await
                .map_err(|_| StreamError::Timeout(d))??,
            None => read.await?,
        };
        self.rx += 4 + self.rbuf.len() as u64;
        match r {
            Some(Reply::Fatal { reason }) => Err(StreamError::Fatal(reason)),
            Some(r) => Ok(r),
            None => Err(StreamError::Closed),
        }
    }
}
