//! A backend's response head as the client gets it, without an
//! `http::HeaderMap`: the head's bytes (a zero-copy slice of the backend
//! connection's read buffer) and the spans of the field lines that are
//! forwarded. Hop-by-hop fields ([`crate::forward`]'s rules) are left out
//! once, while the head is taken apart, so the hot path does no hashing,
//! no name parsing and no removals.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::forward;

/// One field of a parsed head: name start, name end, value start, value
/// end, as offsets into the head's bytes (a head is at most 64 KiB).
pub type Span = [u32; 4];

/// A parsed backend response head.
#[derive(Debug)]
pub struct Parsed {
    pub code: u16,
    pub http10: bool,
    pub bytes: Bytes,
    pub spans: Vec<Span>,
}

impl Parsed {
    /// `(name, value)` of every field, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|s| field(&self.bytes, s))
    }

    /// Does `Connection` carry `token`?
    pub fn has_connection_token(&self, token: &[u8]) -> bool {
        connection_tokens(self.fields()).any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The fields as a header map, for the rare paths that rewrite them
    /// (a 101's protocol switch). Header values are slices of the head.
    pub fn header_map(&self) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::with_capacity(self.spans.len());
        for s in &self.spans {
            let (n, _) = field(&self.bytes, s);
            let name = HeaderName::from_bytes(n)
                .map_err(|_| format!("bad header name {:?}", String::from_utf8_lossy(n)))?;
            let value =
                HeaderValue::from_maybe_shared(self.bytes.slice(s[2] as usize..s[3] as usize))
                    .map_err(|_| format!("bad value for {name}"))?;
            map.append(name, value);
        }
        Ok(map)
    }

    /// The head to forward to the client: hop-by-hop fields (and those
    /// `Connection` lists, except end-to-end essentials) left out, and a
    /// Content-Length that Transfer-Encoding overrides (RFC 9112 §6.3)
    /// dropped, so the client cannot frame the body differently. The spans'
    /// vector is kept (filtered in place): no allocation per response.
    pub fn into_forwarded(self) -> RawHead {
        let te = self
            .fields()
            .any(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"));
        let has_connection = self
            .fields()
            .any(|(n, _)| n.eq_ignore_ascii_case(b"connection"));
        // decide every field before the vector is filtered: a decision reads
        // the Connection fields, which filtering would overwrite
        let mut keep = Keep::default();
        let (mut has_length, mut has_date) = (false, false);
        for (i, (name, _)) in self.fields().enumerate() {
            if forward::is_hop_by_hop(name) {
                continue;
            }
            // the listed tokens first: usually one, naming no field here
            if has_connection
                && connection_tokens(self.fields()).any(|t| t.eq_ignore_ascii_case(name))
                && !forward::is_end_to_end(name)
            {
                continue;
            }
            let length = name.eq_ignore_ascii_case(b"content-length");
            if length && te {
                continue;
            }
            has_length |= length;
            has_date |= name.eq_ignore_ascii_case(b"date");
            keep.set(i);
        }
        let Parsed {
            bytes, mut spans, ..
        } = self;
        let mut i = 0;
        spans.retain(|_| {
            i += 1;
            keep.get(i - 1)
        });
        RawHead {
            bytes,
            lines: spans,
            has_length,
            has_date,
        }
    }
}

/// Which fields of a head are kept: one bit each, on the stack (a parsed
/// head has at most [`MAX_FIELDS`] fields).
#[derive(Default)]
struct Keep([u64; MAX_FIELDS / 64]);

/// Most fields in a head that [`Parsed`] holds (the response parser's
/// limit).
pub const MAX_FIELDS: usize = 128;

impl Keep {
    fn set(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

fn field<'a>(bytes: &'a [u8], s: &Span) -> (&'a [u8], &'a [u8]) {
    (
        &bytes[s[0] as usize..s[1] as usize],
        &bytes[s[2] as usize..s[3] as usize],
    )
}

/// The comma-separated tokens of every `Connection` field.
fn connection_tokens<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> impl Iterator<Item = &'a [u8]> {
    fields
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// A response head's forwarded field lines.
#[derive(Debug)]
pub struct RawHead {
    bytes: Bytes,
    /// The forwarded fields; each line runs from its name's start to its
    /// value's end (without CRLF).
    lines: Vec<Span>,
    /// A Content-Length is among the lines.
    pub has_length: bool,
    /// A Date is among the lines.
    pub has_date: bool,
}

impl RawHead {
    /// The forwarded lines as the backend wrote them, without CRLF.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines
            .iter()
            .map(|s| &self.bytes[s[0] as usize..s[3] as usize])
    }

    /// The spans' vector, emptied, for the next head on the connection.
    pub fn into_buffer(self) -> Vec<Span> {
        let mut v = self.lines;
        v.clear();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &'static [u8]) -> Parsed {
        let mut buf = bytes::BytesMut::from(head);
        crate::h1client::parse_response_head(&mut buf)
            .unwrap()
            .expect("a complete head")
    }

    fn forwarded(head: &'static [u8]) -> (Vec<String>, bool, bool) {
        let raw = parsed(head).into_forwarded();
        let lines = raw
            .lines()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        (lines, raw.has_length, raw.has_date)
    }

    #[test]
    fn hop_by_hop_fields_are_left_out() {
        let (lines, length, date) = forwarded(
            b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
              X-Secret: 1\r\nContent-Length:  5\r\nSet-Cookie: a=1\r\nUpgrade: h2\r\nTE: trailers\r\n\r\n",
        );
        assert_eq!(
            lines,
            ["Server: x", "Content-Length:  5", "Set-Cookie: a=1"]
        );
        assert!(length);
        assert!(!date);
    }

    #[test]
    fn connection_cannot_remove_end_to_end_fields() {
        let (lines, length, date) = forwarded(
            b"HTTP/1.1 200 OK\r\nConnection: set-cookie, content-length, date\r\nSet-Cookie: a=1\r\n\
              Content-Length: 0\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], "Set-Cookie: a=1");
        assert!(length);
        // Date is not among the essentials: a Connection token removes it,
        // and the proxy adds its own
        assert!(!date);
    }

    #[test]
    fn listed_fields_after_kept_ones_are_left_out() {
        // the filter runs in place: a kept field must not overwrite the
        // Connection field that later decisions read
        let (lines, _, _) = forwarded(
            b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: x-b\r\nC: 2\r\nX-B: 3\r\nD: 4\r\n\r\n",
        );
        assert_eq!(lines, ["A: 1", "C: 2", "D: 4"]);
    }

    #[test]
    fn transfer_encoding_drops_the_length() {
        let (lines, length, _) = forwarded(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n",
        );
        assert_eq!(lines, ["X-A: b"]);
        assert!(!length);
    }

    #[test]
    fn a_header_map_for_the_rare_paths() {
        let p = parsed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        assert_eq!(p.code, 101);
        assert!(p.has_connection_token(b"upgrade"));
        let map = p.header_map().unwrap();
        assert_eq!(map["upgrade"], "websocket");
    }
}
