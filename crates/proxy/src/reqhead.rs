//! A client's request head as the proxy forwards it, without an
//! `http::HeaderMap`: the head's bytes (split off the connection's read
//! buffer, no copy), the field spans, and the method and target parsed
//! once. The backend's request is written straight from these spans plus
//! the fields the proxy adds ([`Forward::encode`]), applying
//! [`crate::forward`]'s rules (hop-by-hop removal, X-Forwarded-*, Host,
//! origin-form target) on the way.

use std::io::Write as _;

use bytes::Bytes;
use hyper::{Method, Uri};

use crate::config::HostHeader;
use crate::forward;
use crate::framing::{FramingError, HeaderSpan, RequestHead};

/// A parsed client request head.
#[derive(Debug)]
pub struct ReqHead {
    pub method: Method,
    pub uri: Uri,
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
    bytes: Bytes,
    spans: Vec<HeaderSpan>,
}

impl ReqHead {
    /// From a head parsed by [`crate::framing::parse_request`]: `bytes` are
    /// the head's, `spans` its fields.
    pub fn new(
        head: &RequestHead,
        bytes: Bytes,
        spans: Vec<HeaderSpan>,
    ) -> Result<ReqHead, FramingError> {
        let method = Method::from_bytes(&bytes[head.method.clone()])
            .map_err(|_| FramingError::Malformed("method"))?;
        let uri = Uri::from_maybe_shared(bytes.slice(head.target.clone()))
            .map_err(|_| FramingError::Malformed("request target"))?;
        Ok(ReqHead {
            method,
            uri,
            http11: head.minor == 1,
            bytes,
            spans,
        })
    }

    /// The field spans' vector, emptied, for the connection's next head
    /// (the head's bytes are released).
    pub fn into_spans(self) -> Vec<HeaderSpan> {
        let mut v = self.spans;
        v.clear();
        v
    }

    /// `(name, value)` of every field, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans
            .iter()
            .map(|s| (&self.bytes[s.name.clone()], &self.bytes[s.value.clone()]))
    }

    /// Values of the fields named `name` (any case).
    pub fn values<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Does a comma-separated field `name` list `token` (any case)?
    pub fn has_token(&self, name: &[u8], token: &[u8]) -> bool {
        self.values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    }
}

/// How the request's body is framed on the way to the backend.
#[derive(Debug, Clone, Copy)]
pub enum BodyFraming {
    /// Keep the request's own Content-Length (or no body).
    AsIs,
    Length(u64),
    Chunked,
}

/// One attempt's rewrite of a client request for a backend.
pub struct Forward<'a> {
    pub head: &'a ReqHead,
    /// The client's address, as written in X-Forwarded-For / X-Real-IP.
    pub client_ip: &'a str,
    pub tls: bool,
    /// An upgrade request's `Upgrade` value, forwarded as nginx does with
    /// `proxy_set_header Upgrade $http_upgrade; Connection "upgrade"`.
    pub upgrade: Option<&'a [u8]>,
    pub host: &'a HostHeader,
    /// The server this attempt goes to (for `host_header = "upstream"`).
    pub server: std::net::SocketAddr,
}

/// Fields the proxy writes itself, never copied from the client.
const REPLACED: [&[u8]; 3] = [b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto"];

impl Forward<'_> {
    /// Write the backend request head into `out`.
    pub fn encode(&self, out: &mut Vec<u8>, framing: BodyFraming) {
        let head = self.head;
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        // absolute-form (proxy style) targets become origin-form
        let pq = head.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(pq.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let own_host = self.write_host(out);
        let listed = head.get(b"connection").is_some();
        for (name, value) in head.fields() {
            if forward::is_hop_by_hop(name)
                || REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r))
                || (own_host && name.eq_ignore_ascii_case(b"host"))
                || (!matches!(framing, BodyFraming::AsIs)
                    && name.eq_ignore_ascii_case(b"content-length"))
                || (listed && !forward::is_end_to_end(name) && head.has_token(b"connection", name))
            {
                continue;
            }
            field(out, name, value);
        }
        // X-Forwarded-For: the client's list (its first field) plus the client
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = head
            .get(b"x-forwarded-for")
            .filter(|v| !v.trim_ascii().is_empty())
        {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        field(out, b"x-real-ip", self.client_ip.as_bytes());
        let proto: &[u8] = if self.tls { b"https" } else { b"http" };
        field(out, b"x-forwarded-proto", proto);
        if let Some(u) = self.upgrade {
            field(out, b"upgrade", u);
            field(out, b"connection", b"upgrade");
        }
        match framing {
            BodyFraming::AsIs => {}
            BodyFraming::Length(n) => {
                // formatted straight into the buffer: no String per request
                let _ = write!(out, "content-length: {n}\r\n");
            }
            BodyFraming::Chunked => field(out, b"transfer-encoding", b"chunked"),
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Write a Host field of our own, if this attempt has one; true if so
    /// (the client's Host is then left out).
    fn write_host(&self, out: &mut Vec<u8>) -> bool {
        match self.host {
            HostHeader::Upstream => {
                out.extend_from_slice(b"host: ");
                out.extend_from_slice(self.server.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                true
            }
            // a value that is no valid field value is not written (as before:
            // the client's Host goes on)
            HostHeader::Fixed(h) if valid_value(h.as_bytes()) => {
                field(out, b"host", h.as_bytes());
                true
            }
            HostHeader::Fixed(_) | HostHeader::Preserve => {
                // an absolute-form target names the site: keep it as Host
                match self.head.uri.authority() {
                    Some(auth) if self.head.get(b"host").is_none() => {
                        field(out, b"host", auth.as_str().as_bytes());
                        true
                    }
                    _ => false,
                }
            }
        }
    }
}

/// Visible characters, spaces and tabs only: no CR or LF to end the line.
fn valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
pub(crate) mod tests;
