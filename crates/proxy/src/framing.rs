//! HTTP/1 message framing, shared by both directions: request heads parsed
//! with `httparse` into offsets of the caller's buffer (no copy, no
//! allocation), the body framing a head implies, and chunked-body line
//! rules. Sans-IO: byte slices in, decisions out.
//!
//! Requests are held to the strict reading (anything two parsers could
//! frame differently is refused, RFC 9112 §6.3 and §11.2): Content-Length
//! next to Transfer-Encoding, more than one Content-Length, a length that is
//! not plain digits, a Transfer-Encoding whose last coding is not `chunked`
//! (or that names it twice), obs-fold, bad header names. Responses come from
//! our own backends and follow the lenient reading nginx uses:
//! Transfer-Encoding wins over Content-Length, identical lengths are one.

use std::mem::MaybeUninit;
use std::ops::Range;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes (never 0: that is `None`).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a message is refused: 400 for a client, 502 for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("header section larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("obsolete line folding in a header")]
    ObsFold,
    #[error("invalid header name")]
    BadHeaderName,
    #[error("Content-Length together with Transfer-Encoding")]
    LengthAndEncoding,
    #[error("more than one Content-Length")]
    DuplicateLength,
    #[error("Content-Length values disagree")]
    ConflictingLength,
    #[error("Content-Length is not a plain decimal number")]
    BadLength,
    #[error("Transfer-Encoding must end in chunked, once")]
    BadTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    EncodingInHttp10,
    #[error("bad chunk size")]
    BadChunkSize,
    #[error("missing CRLF after chunk data")]
    BadChunkEnd,
}

impl FramingError {
    /// Too big rather than wrong: 431 for a client.
    pub fn is_too_large(self) -> bool {
        matches!(
            self,
            FramingError::HeadTooLarge(_) | FramingError::TooManyHeaders(_)
        )
    }
}

/// Byte offsets of one header field in the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head: offsets into the buffer it was parsed from. The
/// header fields went into the caller's span vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, blank line included; the body starts here.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
}

/// Bounds on a request head (a client controls all of it).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Request line plus header section, in bytes.
    pub max_size: usize,
    pub max_headers: usize,
}

/// Header storage on the stack for the common case; a request with more
/// fields (when allowed) is parsed again with heap storage.
const STACK_HEADERS: usize = 64;

/// Parse the request head at the start of `buf`. `Ok(None)`: incomplete,
/// read more. `spans` is cleared and filled (keep it per connection: its
/// capacity is reused).
pub fn parse_request(
    buf: &[u8],
    limits: HeadLimits,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Option<RequestHead>, FramingError> {
    spans.clear();
    // uninitialised storage: nothing to zero per request
    let mut storage = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let r = if limits.max_headers < STACK_HEADERS {
        parse_into(buf, &mut storage[..limits.max_headers + 1], spans)
    } else {
        match parse_into(buf, &mut storage, spans) {
            Err(FramingError::TooManyHeaders(_)) => {
                spans.clear();
                let mut heap: Vec<_> = (0..=limits.max_headers)
                    .map(|_| MaybeUninit::uninit())
                    .collect();
                parse_into(buf, &mut heap, spans)
            }
            r => r,
        }
    };
    match r {
        Ok(Some(head)) if head.len > limits.max_size => {
            Err(FramingError::HeadTooLarge(limits.max_size))
        }
        Ok(None) if buf.len() > limits.max_size => Err(FramingError::HeadTooLarge(limits.max_size)),
        Ok(Some(_)) if spans.len() > limits.max_headers => {
            Err(FramingError::TooManyHeaders(limits.max_headers))
        }
        Err(FramingError::TooManyHeaders(_)) => {
            Err(FramingError::TooManyHeaders(limits.max_headers))
        }
        r => r,
    }
}

fn parse_into<'a>(
    buf: &'a [u8],
    storage: &mut [MaybeUninit<httparse::Header<'a>>],
    spans: &mut Vec<HeaderSpan>,
) -> Result<Option<RequestHead>, FramingError> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_parse_error(e, buf)),
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(FramingError::Malformed("request line"));
    };
    let head = RequestHead {
        len,
        method: at(method.as_bytes()),
        target: at(target.as_bytes()),
        minor,
    };
    spans.extend(req.headers.iter().map(|h| HeaderSpan {
        name: at(h.name.as_bytes()),
        value: at(h.value),
    }));
    Ok(Some(head))
}

fn map_parse_error(e: httparse::Error, buf: &[u8]) -> FramingError {
    match e {
        httparse::Error::HeaderName => {
            // httparse sees a folded line as a name starting with a space
            let folded = buf
                .windows(2)
                .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'));
            if folded {
                FramingError::ObsFold
            } else {
                FramingError::BadHeaderName
            }
        }
        httparse::Error::HeaderValue => FramingError::Malformed("header value"),
        httparse::Error::NewLine => FramingError::Malformed("line ending"),
        httparse::Error::Status => FramingError::Malformed("status"),
        httparse::Error::Token => FramingError::Malformed("request line"),
        httparse::Error::TooManyHeaders => FramingError::TooManyHeaders(0),
        httparse::Error::Version => FramingError::Malformed("HTTP version"),
    }
}

/// The body framing of a request with these header fields (`minor`: 0 for
/// HTTP/1.0). Strict: see the module doc.
pub fn request_framing<'a, I>(minor: u8, headers: I) -> Result<Framing, FramingError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut length: Option<u64> = None;
    let mut encoding = Encoding::default();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return Err(FramingError::DuplicateLength);
            }
            length = Some(digits(value.trim_ascii()).ok_or(FramingError::BadLength)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoding.add(value);
        }
    }
    if encoding.present {
        if minor == 0 {
            return Err(FramingError::EncodingInHttp10);
        }
        if length.is_some() {
            return Err(FramingError::LengthAndEncoding);
        }
        return if encoding.chunked_last_once() {
            Ok(Framing::Chunked)
        } else {
            Err(FramingError::BadTransferEncoding)
        };
    }
    Ok(match length {
        None | Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// The body framing of a backend's response to a request (`head_request`:
/// it was a HEAD). Transfer-Encoding wins over Content-Length (the caller
/// drops the length before passing the response on).
pub fn response_framing<'a, I>(
    status: u16,
    head_request: bool,
    headers: I,
) -> Result<Framing, FramingError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    let mut length: Option<u64> = None;
    let mut encoding = Encoding::default();
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = digits(value.trim_ascii()).ok_or(FramingError::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::ConflictingLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoding.add(value);
        }
    }
    if encoding.present {
        return Ok(if encoding.last_is_chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match length {
        None => Framing::UntilClose,
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// What the Transfer-Encoding fields of a message say, over all of them.
#[derive(Debug, Default)]
struct Encoding {
    present: bool,
    chunked_count: u32,
    last_is_chunked: bool,
}

impl Encoding {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        // empty list elements are allowed (RFC 9110 §5.6.1)
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked_count += u32::from(chunked);
            self.last_is_chunked = chunked;
        }
    }

    fn chunked_last_once(&self) -> bool {
        self.last_is_chunked && self.chunked_count == 1
    }
}

/// A decimal length: digits only (`str::parse` would accept `+5`, which
/// another parser may read differently); overflow is refused.
pub fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The size on a chunk-size line (without its CRLF): hex digits only,
/// surrounding whitespace and any `;extension` ignored.
pub fn chunk_size_line(line: &[u8]) -> Option<u64> {
    let hex = line.split(|b| *b == b';').next().unwrap_or(b"");
    chunk_size(hex.trim_ascii())
}

/// A chunk size: hex digits only (`from_str_radix` would accept `+5`);
/// overflow is refused.
fn chunk_size(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(d))
    })
}

/// Where a body decoder is. The data-carrying states are driven by the
/// I/O layer (it counts bytes); line states advance with [`Decode::on_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF that ends a chunk's data.
    ChunkCrlf,
    Trailers,
    UntilClose,
    Done,
}

/// Longest chunk-size or trailer line accepted (the peer controls it).
pub const MAX_CHUNK_LINE: usize = 4096;

impl Decode {
    pub fn new(framing: Framing) -> Decode {
        match framing {
            Framing::None => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::ChunkSize,
            Framing::UntilClose => Decode::UntilClose,
        }
    }

    /// Does this state read a line (rather than data)?
    pub fn wants_line(self) -> bool {
        matches!(
            self,
            Decode::ChunkSize | Decode::ChunkCrlf | Decode::Trailers
        )
    }

    /// The next state after a complete line (without its CRLF).
    pub fn on_line(self, line: &[u8]) -> Result<Decode, FramingError> {
        Ok(match self {
            Decode::ChunkCrlf if line.is_empty() => Decode::ChunkSize,
            Decode::ChunkCrlf => return Err(FramingError::BadChunkEnd),
            Decode::Trailers if line.is_empty() => Decode::Done,
            Decode::Trailers => Decode::Trailers, // trailer fields are dropped
            Decode::ChunkSize => match chunk_size_line(line) {
                Some(0) => Decode::Trailers,
                Some(n) => Decode::ChunkData(n),
                None => return Err(FramingError::BadChunkSize),
            },
            other => other,
        })
    }

    /// The next state after `n` bytes of data (at most what the state
    /// still expects).
    pub fn on_data(self, n: u64) -> Decode {
        match self {
            Decode::Length(rem) if rem <= n => Decode::Done,
            Decode::Length(rem) => Decode::Length(rem - n),
            Decode::ChunkData(rem) if rem <= n => Decode::ChunkCrlf,
            Decode::ChunkData(rem) => Decode::ChunkData(rem - n),
            other => other,
        }
    }
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;
