use super::*;
use crate::forward::{body_len, check_request, upgrade_request, BodyLen, Reject};
use crate::framing::{parse_request, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_size: 16 * 1024,
    max_headers: 100,
};

/// A client head, as the server hands it to the proxy.
pub(crate) fn head(raw: &str) -> ReqHead {
    let mut spans = Vec::new();
    let parsed = parse_request(raw.as_bytes(), LIMITS, &mut spans)
        .unwrap()
        .expect("a complete head");
    let bytes = Bytes::copy_from_slice(&raw.as_bytes()[..parsed.len]);
    ReqHead::new(&parsed, bytes, spans).unwrap()
}

/// The backend head for `raw` from 10.1.2.3, and its fields parsed back
/// (names lowercased).
fn forward(
    raw: &str,
    tls: bool,
    host: &HostHeader,
    framing: BodyFraming,
) -> (String, Vec<(String, String)>) {
    let h = head(raw);
    let upgrade = upgrade_request(&h);
    let f = Forward {
        head: &h,
        client_ip: "10.1.2.3",
        tls,
        upgrade,
        host,
        server: "10.0.0.5:8080".parse().unwrap(),
    };
    let mut out = Vec::new();
    f.encode(&mut out, framing);
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut storage);
    assert!(req.parse(&out).unwrap().is_complete(), "a whole head");
    let line = format!("{} {}", req.method.unwrap(), req.path.unwrap());
    let fields = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    (line, fields)
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

const P: &HostHeader = &HostHeader::Preserve;

#[test]
fn hop_by_hop_and_connection_listed_headers_are_removed() {
    let (_, f) = forward(
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
         X-Secret: 1\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\nX-Keep: yes\r\n\r\n",
        false,
        P,
        BodyFraming::AsIs,
    );
    for h in [
        "connection",
        "keep-alive",
        "x-secret",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(get(&f, h).is_empty(), "{h} must be removed: {f:?}");
    }
    assert_eq!(get(&f, "x-keep"), ["yes"]);
}

#[test]
fn connection_cannot_strip_end_to_end_headers() {
    let (_, f) = forward(
        "POST /x HTTP/1.1\r\nConnection: Host, Authorization, X-Secret, Content-Length\r\nHost: site\r\n\
         Authorization: Bearer t\r\nContent-Length: 0\r\nX-Secret: 1\r\n\r\n",
        false,
        P,
        BodyFraming::AsIs,
    );
    assert_eq!(get(&f, "host"), ["site"]);
    assert_eq!(get(&f, "authorization"), ["Bearer t"]);
    assert_eq!(get(&f, "content-length"), ["0"]);
    assert!(get(&f, "x-secret").is_empty());
    assert!(get(&f, "connection").is_empty());
}

#[test]
fn upgrade_requests_keep_their_upgrade() {
    let (_, f) = forward(
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
        P,
        BodyFraming::AsIs,
    );
    assert_eq!(get(&f, "upgrade"), ["websocket"]);
    assert_eq!(get(&f, "connection"), ["upgrade"]);
    let no_token = head("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert!(upgrade_request(&no_token).is_none());
    let post =
        head("POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(upgrade_request(&post).is_none());
    let (_, f) = forward(
        "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        false,
        P,
        BodyFraming::AsIs,
    );
    assert!(get(&f, "upgrade").is_empty(), "stripped as hop-by-hop");
}

#[test]
fn ambiguous_host_is_rejected() {
    let check = |raw: &str| check_request(&head(raw));
    assert_eq!(check("GET /x HTTP/1.1\r\n\r\n"), Err(Reject::MissingHost));
    assert_eq!(check("GET /x HTTP/1.0\r\n\r\n"), Ok(()));
    assert_eq!(check("GET http://example.org/x HTTP/1.1\r\n\r\n"), Ok(()));
    assert_eq!(check("GET /x HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
    assert_eq!(
        check("GET /x HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        Err(Reject::DuplicateHost)
    );
    assert_eq!(
        check("GET /x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        Err(Reject::DuplicateHost)
    );
}

#[test]
fn forwarded_headers() {
    let (line, f) = forward(
        "GET /x HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\
         X-Real-IP: 6.6.6.6\r\nHost: example.com\r\n\r\n",
        false,
        P,
        BodyFraming::AsIs,
    );
    assert_eq!(line, "GET /x");
    assert_eq!(get(&f, "x-forwarded-for"), ["1.1.1.1, 10.1.2.3"]);
    assert_eq!(
        get(&f, "x-forwarded-proto"),
        ["http"],
        "client cannot claim https"
    );
    assert_eq!(get(&f, "x-real-ip"), ["10.1.2.3"]);
    assert_eq!(get(&f, "host"), ["example.com"]);
    let (_, f) = forward("GET /x HTTP/1.0\r\n\r\n", true, P, BodyFraming::AsIs);
    assert_eq!(get(&f, "x-forwarded-for"), ["10.1.2.3"]);
    assert_eq!(get(&f, "x-forwarded-proto"), ["https"]);
}

#[test]
fn absolute_form_becomes_origin_form_with_host() {
    let (line, f) = forward(
        "GET http://example.org:8080/a/b?c=d HTTP/1.1\r\n\r\n",
        false,
        P,
        BodyFraming::AsIs,
    );
    assert_eq!(line, "GET /a/b?c=d");
    assert_eq!(get(&f, "host"), ["example.org:8080"]);
}

#[test]
fn host_modes_and_framing() {
    let raw = "PUT /p?q=1 HTTP/1.1\r\nHost: site\r\nContent-Length: 99\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
    let (_, f) = forward(raw, false, P, BodyFraming::AsIs);
    assert_eq!(get(&f, "host"), ["site"]);
    assert_eq!(get(&f, "content-length"), ["99"]);
    let (line, f) = forward(raw, false, &HostHeader::Upstream, BodyFraming::Length(3));
    assert_eq!(line, "PUT /p?q=1");
    assert_eq!(get(&f, "host"), ["10.0.0.5:8080"]);
    assert_eq!(get(&f, "content-length"), ["3"]);
    assert_eq!(get(&f, "x-a"), ["1", "2"]);
    let (_, f) = forward(
        raw,
        false,
        &HostHeader::Fixed("internal".into()),
        BodyFraming::Chunked,
    );
    assert_eq!(get(&f, "host"), ["internal"]);
    assert!(get(&f, "content-length").is_empty());
    assert_eq!(get(&f, "transfer-encoding"), ["chunked"]);
    // a value that would end the line is never written
    let (_, f) = forward(
        raw,
        false,
        &HostHeader::Fixed("a\r\nx: y".into()),
        BodyFraming::AsIs,
    );
    assert_eq!(get(&f, "host"), ["site"]);
    assert!(get(&f, "x").is_empty());
}

#[test]
fn body_length_classification() {
    assert_eq!(
        body_len(&head("GET / HTTP/1.1\r\nHost: a\r\n\r\n")),
        BodyLen::None
    );
    assert_eq!(
        body_len(&head(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"
        )),
        BodyLen::Known(12)
    );
    assert_eq!(
        body_len(&head(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        )),
        BodyLen::Chunked
    );
}
