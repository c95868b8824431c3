//! Header handling between client and backend: hop-by-hop removal,
//! X-Forwarded-*, Host, request-target normalisation. Pure functions.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Uri, Version};

use crate::config::HostHeader;

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

/// Is `name` (any case) a hop-by-hop header? For heads forwarded as raw
/// bytes ([`crate::rawhead`]).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Is `name` (any case) one of the end-to-end essentials a `Connection`
/// token must not remove?
pub fn is_end_to_end(name: &[u8]) -> bool {
    END_TO_END
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
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

/// The `Upgrade` value of a request that asks to switch protocols
/// (WebSocket and the like): a GET with `Upgrade` and an `upgrade` token in
/// `Connection`. Other requests' Upgrade is a hop-by-hop header like any.
pub fn upgrade_request(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Option<HeaderValue> {
    if method != Method::GET || version != Version::HTTP_11 {
        return None;
    }
    let value = headers.get(header::UPGRADE)?;
    has_connection_token(headers, "upgrade").then(|| value.clone())
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

fn has_connection_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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

/// Refuse requests whose target site or body framing is ambiguous. An
/// absolute-form target names the site itself, so it needs no Host.
pub fn check_request(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), Reject> {
    let minor = u8::from(version != Version::HTTP_10);
    let fields = headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
    crate::framing::request_framing(minor, fields)?;
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(Reject::DuplicateHost),
        (None, _) if version == Version::HTTP_11 && uri.authority().is_none() => {
            Err(Reject::MissingHost)
        }
        _ => Ok(()),
    }
}

/// The client address as a header value (computed once per connection).
pub fn ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Rewrite a client request for the backend. `client_ip` is [`ip_value`].
pub fn prepare_request(parts: &mut Parts, client_ip: &HeaderValue, tls: bool) {
    strip_hop_by_hop(&mut parts.headers);
    let xff = match parts
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.trim().is_empty() => {
            let ip = client_ip.to_str().unwrap_or("unknown");
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        }
        _ => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    parts.headers.insert(X_REAL_IP.clone(), client_ip.clone());
    parts.headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    // absolute-form (proxy style) request-target: keep the authority as Host
    if let Some(auth) = parts.uri.authority() {
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Ok(uri) = pq.parse::<Uri>() {
            parts.uri = uri;
        }
    }
    parts.version = Version::HTTP_11;
}

/// Set the Host header for one attempt on `server`.
pub fn set_host(headers: &mut HeaderMap, mode: &HostHeader, server: SocketAddr) {
    match mode {
        HostHeader::Preserve => {}
        HostHeader::Upstream => {
            if let Ok(v) = HeaderValue::from_str(&server.to_string()) {
                headers.insert(header::HOST, v);
            }
        }
        HostHeader::Fixed(s) => {
            if let Ok(v) = HeaderValue::from_str(s) {
                headers.insert(header::HOST, v);
            }
        }
    }
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

pub fn body_len(headers: &HeaderMap) -> BodyLen {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return BodyLen::Chunked;
    }
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| digits(v.as_bytes().trim_ascii()))
    {
        Some(0) | None => BodyLen::None,
        Some(n) => BodyLen::Known(n),
    }
}

pub use crate::framing::digits;

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut p = parts(
            Request::get("/x")
                .header("connection", "keep-alive, X-Secret")
                .header("keep-alive", "timeout=5")
                .header("x-secret", "1")
                .header("te", "trailers")
                .header("upgrade", "websocket")
                .header("x-keep", "yes")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, &ip_value("10.1.2.3:5555".parse().unwrap()), false);
        for h in ["connection", "keep-alive", "x-secret", "te", "upgrade"] {
            assert!(!p.headers.contains_key(h), "{h} must be removed");
        }
        assert_eq!(p.headers["x-keep"], "yes");
    }

    #[test]
    fn connection_cannot_strip_end_to_end_headers() {
        let mut p = parts(
            Request::get("/x")
                .header(
                    "connection",
                    "Host, Authorization, X-Secret, Content-Length",
                )
                .header("host", "site")
                .header("authorization", "Bearer t")
                .header("content-length", "0")
                .header("x-secret", "1")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, &ip_value("10.1.2.3:5555".parse().unwrap()), false);
        assert_eq!(p.headers["host"], "site");
        assert_eq!(p.headers["authorization"], "Bearer t");
        assert_eq!(p.headers["content-length"], "0");
        assert!(!p.headers.contains_key("x-secret"));
        assert!(!p.headers.contains_key("connection"));
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("set-cookie"));
        h.insert(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        prepare_response(&mut h);
        assert_eq!(h[header::SET_COOKIE], "a=1");
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade() {
        let req = Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let (mut p, ()) = req.into_parts();
        let up = upgrade_request(&p.method, p.version, &p.headers).expect("an upgrade request");
        prepare_request(&mut p, &ip_value("10.1.2.3:5555".parse().unwrap()), false);
        assert!(!p.headers.contains_key("upgrade"), "stripped as hop-by-hop");
        keep_upgrade(&mut p.headers, up);
        assert_eq!(p.headers["upgrade"], "websocket");
        assert_eq!(p.headers["connection"], "upgrade");

        let no_token = Request::get("/ws")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(
            upgrade_request(no_token.method(), no_token.version(), no_token.headers()).is_none()
        );
        let post = Request::post("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(upgrade_request(post.method(), post.version(), post.headers()).is_none());

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
    fn ambiguous_host_is_rejected() {
        let uri = Uri::from_static("/x");
        let mut h = HeaderMap::new();
        assert_eq!(
            check_request(Version::HTTP_11, &uri, &h),
            Err(Reject::MissingHost)
        );
        assert_eq!(check_request(Version::HTTP_10, &uri, &h), Ok(()));
        let abs = Uri::from_static("http://example.org/x");
        assert_eq!(check_request(Version::HTTP_11, &abs, &h), Ok(()));
        h.append(header::HOST, HeaderValue::from_static("a"));
        assert_eq!(check_request(Version::HTTP_11, &uri, &h), Ok(()));
        h.append(header::HOST, HeaderValue::from_static("b"));
        assert_eq!(
            check_request(Version::HTTP_11, &uri, &h),
            Err(Reject::DuplicateHost)
        );
        assert_eq!(
            check_request(Version::HTTP_10, &uri, &h),
            Err(Reject::DuplicateHost)
        );
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

    #[test]
    fn forwarded_headers() {
        let mut p = parts(
            Request::get("/x")
                .header("x-forwarded-for", "1.1.1.1")
                .header("x-forwarded-proto", "https")
                .header("host", "example.com")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, &ip_value("10.1.2.3:5555".parse().unwrap()), false);
        assert_eq!(p.headers["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(
            p.headers["x-forwarded-proto"], "http",
            "client cannot claim https"
        );
        assert_eq!(p.headers["x-real-ip"], "10.1.2.3");
        assert_eq!(p.headers["host"], "example.com");
        let mut p = parts(Request::get("/x").body(()).unwrap());
        prepare_request(
            &mut p,
            &ip_value("[::ffff:10.0.0.9]:1".parse().unwrap()),
            true,
        );
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.9");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host() {
        let mut p = parts(
            Request::get("http://example.org:8080/a/b?c=d")
                .body(())
                .unwrap(),
        );
        prepare_request(&mut p, &ip_value("10.1.2.3:5555".parse().unwrap()), false);
        assert_eq!(p.uri, "/a/b?c=d");
        assert_eq!(p.headers["host"], "example.org:8080");
    }

    #[test]
    fn host_modes() {
        let server: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("site"));
        set_host(&mut h, &HostHeader::Preserve, server);
        assert_eq!(h[header::HOST], "site");
        set_host(&mut h, &HostHeader::Upstream, server);
        assert_eq!(h[header::HOST], "10.0.0.5:8080");
        set_host(&mut h, &HostHeader::Fixed("internal".into()), server);
        assert_eq!(h[header::HOST], "internal");
    }

    #[test]
    fn body_length_classification() {
        let mut h = HeaderMap::new();
        assert_eq!(body_len(&h), BodyLen::None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(body_len(&h), BodyLen::Known(12));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(body_len(&h), BodyLen::Chunked);
    }
}
