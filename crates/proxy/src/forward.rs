//! Header handling between client and backend: hop-by-hop removal,
//! X-Forwarded-*, Host, request-target normalisation. Pure functions.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::Method;

use crate::reqhead::ReqHead;

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// End-to-end headers that a `Connection` token must not remove: nginx
/// ignores Connection tokens altogether, and honouring them for these would
/// let either side strip routing, authentication or framing from a message
/// the other side relies on.
const END_TO_END: [HeaderName; 11] = [
    header::HOST,
    header::AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::LOCATION,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
];

/// [`HOP_BY_HOP`] and [`END_TO_END`] as bytes, for heads forwarded as raw
/// bytes: compared without looking up each standard name's text.
const HOP_BY_HOP_BYTES: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];
const END_TO_END_BYTES: [&[u8]; 11] = [
    b"host",
    b"authorization",
    b"cookie",
    b"set-cookie",
    b"content-length",
    b"content-type",
    b"content-encoding",
    b"content-range",
    b"location",
    b"www-authenticate",
    b"cache-control",
];

/// Is `name` (any case) a hop-by-hop header? For heads forwarded as raw
/// bytes ([`crate::rawhead`]).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP_BYTES
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Is `name` (any case) one of the end-to-end essentials a `Connection`
/// token must not remove?
pub fn is_end_to_end(name: &[u8]) -> bool {
    END_TO_END_BYTES
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Remove hop-by-hop headers, including any header named in `Connection`
/// except the end-to-end essentials above.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // most messages carry none: one pass over the names (cheap compares of
    // standard names) instead of seven hashed removals
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if !END_TO_END.contains(&name) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Forward an upgrade request's wish, as nginx does with
/// `proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"`
/// (the hop-by-hop headers themselves are already gone).
pub fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::UPGRADE, upgrade);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Rewrite a backend's 101 for the client: hop-by-hop headers go, except
/// the protocol switch itself.
pub fn prepare_upgrade_response(headers: &mut HeaderMap) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        keep_upgrade(headers, u);
    }
}

/// Why a client request is refused (400) before anything is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Two Host headers: the proxy and the backend could disagree on which
    /// one names the site (RFC 9112 §3.2: 400).
    #[error("more than one Host header")]
    DuplicateHost,
    /// HTTP/1.1 requires Host (RFC 9112 §3.2: 400), as nginx enforces.
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// Framing two parsers could read differently (request smuggling).
    #[error("{0}")]
    Framing(#[from] crate::framing::FramingError),
}

/// The client address as a header value (computed once per connection).
pub fn ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Rewrite a backend response for the client.
pub fn prepare_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// What the request says about its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    None,
    Known(u64),
    Chunked,
}

/// The `Upgrade` value of a request that asks to switch protocols
/// (WebSocket and the like): a GET with `Upgrade` and an `upgrade` token in
/// `Connection`. Other requests' Upgrade is a hop-by-hop header like any.
pub fn upgrade_request(head: &ReqHead) -> Option<&[u8]> {
    if head.method != Method::GET || !head.http11 {
        return None;
    }
    let value = head.get(b"upgrade")?;
    head.has_token(b"connection", b"upgrade").then_some(value)
}

/// Refuse requests whose target site is ambiguous (their framing was
/// checked as the head was read). An absolute-form target names the site
/// itself, so it needs no Host.
pub fn check_request(head: &ReqHead) -> Result<(), Reject> {
    let mut hosts = head.values(b"host");
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(Reject::DuplicateHost),
        (None, _) if head.http11 && head.uri.authority().is_none() => Err(Reject::MissingHost),
        _ => Ok(()),
    }
}

pub fn body_len(head: &ReqHead) -> BodyLen {
    if head.get(b"transfer-encoding").is_some() {
        return BodyLen::Chunked;
    }
    match head
        .get(b"content-length")
        .and_then(|v| digits(v.trim_ascii()))
    {
        Some(0) | None => BodyLen::None,
        Some(n) => BodyLen::Known(n),
    }
}

pub use crate::framing::digits;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_lose_hop_by_hop_but_not_end_to_end_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("set-cookie, x-secret"),
        );
        h.insert(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        prepare_response(&mut h);
        assert_eq!(h[header::SET_COOKIE], "a=1");
        for n in ["connection", "x-secret", "keep-alive"] {
            assert!(!h.contains_key(n), "{n} must be removed");
        }
    }

    #[test]
    fn upgrade_responses_keep_their_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("sec-websocket-accept", HeaderValue::from_static("abc"));
        prepare_upgrade_response(&mut h);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-accept"], "abc");
        assert!(!h.contains_key("x-secret"));
    }

    #[test]
    fn byte_lists_match_the_header_names() {
        assert!(HOP_BY_HOP
            .iter()
            .zip(HOP_BY_HOP_BYTES)
            .all(|(n, b)| n.as_str().as_bytes() == b));
        assert!(END_TO_END
            .iter()
            .zip(END_TO_END_BYTES)
            .all(|(n, b)| n.as_str().as_bytes() == b));
        assert!(is_hop_by_hop(b"Keep-Alive") && !is_hop_by_hop(b"keep"));
        assert!(is_end_to_end(b"Set-Cookie") && !is_end_to_end(b"date"));
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(digits(b"5"), Some(5));
        assert_eq!(digits(b"+5"), None);
        assert_eq!(digits(b"-5"), None);
        assert_eq!(digits(b""), None);
        assert_eq!(digits(b"5 5"), None);
        assert_eq!(digits(b"99999999999999999999999"), None);
    }
}
