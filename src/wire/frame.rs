//! The one framing: a `u32` little-endian length, checked against
//! [`MAX_FRAME`] before anything is allocated, then a postcard payload.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{compat, Request, MAX_FRAME};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
    buf: &mut Vec<u8>,
) -> Result<(), WireError> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let mut out = postcard::to_extend(msg, std::mem::take(buf))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        *buf = out;
        return Err(WireError::TooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    let r = w.write_all(&out).await;
    *buf = out;
    r?;
    Ok(())
}

/// Appends one frame to `out` (for callers that batch many small messages
/// into one stream write).
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut v = postcard::to_extend(msg, std::mem::take(out))?;
    let len = v.len() - start - 4;
    if len > MAX_FRAME {
        v.truncate(start);
        *out = v;
        return Err(WireError::TooLarge(len));
    }
    v[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    *out = v;
    Ok(())
}

/// Reads one frame into `buf` and decodes it. `Ok(None)` on a clean end of stream.
pub async fn read_msg<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, WireError> {
    if !read_frame(r, buf).await? {
        return Ok(None);
    }
    Ok(Some(decode(buf)?))
}

/// Reads one request from a primary speaking protocol `version` (older
/// versions translated, see [`compat`]). `Ok(None)` on a clean end of stream.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    version: u32,
) -> Result<Option<Request>, WireError> {
    if !read_frame(r, buf).await? {
        return Ok(None);
    }
    Ok(Some(compat::decode_request(version, buf)?))
}

/// Reads one frame's payload into `buf`; `false` on a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<bool, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(true)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
