//! Writing responses to the client: the head serialised into a reused
//! buffer, bodies framed by length, chunked coding or close, and written
//! with vectored writes (head and the first body bytes in one syscall).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{self, HeaderMap};
use hyper::StatusCode;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::rawhead::RawHead;

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// No body bytes (HEAD, 1xx, 204, 304, or empty).
    None,
    /// As many bytes as Content-Length says.
    Length,
    Chunked,
    /// Until we close (an HTTP/1.0 client and no known length).
    Close,
}

/// What the head says beyond the response's own fields.
pub struct HeadPlan {
    pub mode: BodyMode,
    /// Content-Length to add (the body's exact size, no header present).
    pub add_length: Option<u64>,
    pub keep_alive: bool,
    /// The client spoke HTTP/1.0 and asked for keep-alive.
    pub http10_keep_alive: bool,
}

/// Decide a response's framing. `exact`: the body's exact size if known.
pub fn plan(
    status: StatusCode,
    has_length: bool,
    exact: Option<u64>,
    head_request: bool,
    http11: bool,
    keep_alive: bool,
) -> HeadPlan {
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (mode, add_length, keep_alive) = if no_body {
        (BodyMode::None, None, keep_alive)
    } else if has_length {
        (BodyMode::Length, None, keep_alive)
    } else if let Some(n) = exact {
        let mode = if n == 0 {
            BodyMode::None
        } else {
            BodyMode::Length
        };
        (mode, Some(n), keep_alive)
    } else if http11 {
        (BodyMode::Chunked, None, keep_alive)
    } else {
        (BodyMode::Close, None, false)
    };
    HeadPlan {
        mode,
        add_length,
        keep_alive,
        http10_keep_alive: keep_alive && !http11,
    }
}

/// Serialise a response head into `out` (cleared first): the fields of
/// `headers`, then a backend's forwarded lines (`raw`), then ours.
pub fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&RawHead>,
    plan: &HeadPlan,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in headers {
        // connection management is ours, except the protocol switch's
        if !switching && name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for line in raw.iter().flat_map(|r| r.lines()) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = plan.add_length {
        out.extend_from_slice(b"content-length: ");
        let mut digits = itoa_buf(n);
        out.extend_from_slice(digits.as_bytes_mut());
        out.extend_from_slice(b"\r\n");
    }
    if plan.mode == BodyMode::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !raw.is_some_and(|r| r.has_date) && !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    if !switching {
        if !plan.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if plan.http10_keep_alive {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A number's decimal digits without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes_mut(&mut self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

/// The chunk-size line for `n` bytes, as hex, into `out`.
pub fn chunk_header(out: &mut [u8; 18], n: usize) -> &[u8] {
    let mut i = 16;
    let mut v = n;
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

/// Write every byte of `bufs`, vectored.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

thread_local! {
    /// (unix second, IMF-fixdate): one format per second per worker.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            d.1 = imf_fixdate(now);
            d.0 = now;
        }
        f(&d.1);
    });
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for a unix time (RFC 9110 §5.6.7).
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [b' '; 29];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3] = b',';
    let two = |o: &mut [u8], v: i64| {
        o[0] = b'0' + (v / 10 % 10) as u8;
        o[1] = b'0' + (v % 10) as u8;
    };
    two(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    two(&mut out[17..19], (rem / 3600) as i64);
    out[19] = b':';
    two(&mut out[20..22], (rem / 60 % 60) as i64);
    out[22] = b':';
    two(&mut out[23..25], (rem % 60) as i64);
    out[26..29].copy_from_slice(b"GMT");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn numbers_and_chunk_lines() {
        assert_eq!(itoa_buf(0).as_bytes_mut(), b"0");
        assert_eq!(itoa_buf(1234567).as_bytes_mut(), b"1234567");
        let mut b = [0u8; 18];
        assert_eq!(chunk_header(&mut b, 0x1af), b"1af\r\n");
        assert_eq!(chunk_header(&mut b, 0), b"0\r\n");
    }

    #[test]
    fn framing_plans() {
        let h = HeaderMap::new();
        let p = plan(StatusCode::OK, false, Some(5), false, true, true);
        assert_eq!((p.mode, p.add_length), (BodyMode::Length, Some(5)));
        let p = plan(StatusCode::OK, false, None, false, true, true);
        assert_eq!(p.mode, BodyMode::Chunked);
        let p = plan(StatusCode::OK, false, None, false, false, true);
        assert_eq!((p.mode, p.keep_alive), (BodyMode::Close, false));
        let p = plan(StatusCode::OK, false, Some(5), true, true, true);
        assert_eq!(p.mode, BodyMode::None, "HEAD");
        let mut out = Vec::new();
        let p = plan(StatusCode::BAD_GATEWAY, false, Some(3), false, true, false);
        encode_head(&mut out, StatusCode::BAD_GATEWAY, &h, None, &p);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 3\r\ndate: "));
        assert!(s.ends_with("GMT\r\nconnection: close\r\n\r\n"), "{s}");
    }
}
