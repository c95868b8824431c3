use super::*;
use crate::balancer::hash::KeyVars as _;

#[test]
fn hash_key_variables_come_from_the_request() {
    let head = crate::reqhead::tests::head(
        "GET http://ignored/p/a?id=42&x=1 HTTP/1.1\r\nHost: Shop.Example:8080\r\n\
         X-User: alice\r\nCookie: a=1; session=abc\r\n\r\n",
    );
    let vars = ReqVars {
        head: &head,
        client: "[::ffff:10.1.2.3]:4000".parse().unwrap(),
    };
    assert_eq!(vars.var("remote_addr").as_deref(), Some("10.1.2.3"));
    assert_eq!(vars.var("host").as_deref(), Some("shop.example"));
    assert_eq!(vars.var("uri").as_deref(), Some("/p/a"));
    assert_eq!(vars.var("request_uri").as_deref(), Some("/p/a?id=42&x=1"));
    assert_eq!(vars.var("args").as_deref(), Some("id=42&x=1"));
    assert_eq!(vars.var("arg_id").as_deref(), Some("42"));
    assert_eq!(vars.var("http_x_user").as_deref(), Some("alice"));
    assert_eq!(vars.var("cookie_session").as_deref(), Some("abc"));
    assert_eq!(vars.var("arg_missing"), None);
}

#[test]
fn local_errors_are_short_plain_text() {
    let r = local(StatusCode::BAD_GATEWAY, "Bad Gateway");
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()[hyper::header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    match r.body() {
        RespBody::Local(Some(b)) => assert_eq!(&b[..], b"502 Bad Gateway\n"),
        _ => panic!("expected a local body"),
    }
}
