//! Header handling between client and backend: hop-by-hop removal,
//! X-Forwarded-*, Host, request-target normalisation. Pure functions.

use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Uri, Version};

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

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Remove hop-by-hop headers, including any header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
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
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(0) | None => BodyLen::None,
        Some(n) => BodyLen::Known(n),
    }
}

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
