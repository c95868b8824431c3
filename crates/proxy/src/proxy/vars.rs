//! The variables a `hash_key` template reads from a request (nginx's
//! `$remote_addr`, `$host`, `$uri`, `$request_uri`, `$args`, `$arg_*`,
//! `$http_*`, `$cookie_*`).

use std::net::SocketAddr;

use crate::balancer::hash::KeyVars;
use crate::reqhead::ReqHead;

pub(super) struct ReqVars<'a> {
    pub(super) head: &'a ReqHead,
    pub(super) client: SocketAddr,
}

impl ReqVars<'_> {
    fn header<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        self.head
            .fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }
}

impl KeyVars for ReqVars<'_> {
    fn var(&self, name: &str) -> Option<String> {
        let uri = &self.head.uri;
        let query = uri.query().unwrap_or("");
        match name {
            "remote_addr" => Some(self.client.ip().to_canonical().to_string()),
            "host" => self.header("host").next().map(|h| {
                h.rsplit_once(':')
                    .map_or(h, |(host, _)| host)
                    .to_ascii_lowercase()
            }),
            "uri" => Some(uri.path().to_string()),
            "request_uri" => Some(uri.path_and_query().map_or("/", |p| p.as_str()).to_string()),
            "args" => Some(query.to_string()),
            _ => {
                if let Some(h) = name.strip_prefix("http_") {
                    let h = h.replace('_', "-");
                    let value = self.header(&h).next().map(str::to_string);
                    value
                } else if let Some(a) = name.strip_prefix("arg_") {
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| *k == a)
                        .map(|(_, v)| v.to_string())
                } else if let Some(c) = name.strip_prefix("cookie_") {
                    self.header("cookie")
                        .flat_map(|s| s.split(';'))
                        .filter_map(|kv| kv.trim().split_once('='))
                        .find(|(k, _)| *k == c)
                        .map(|(_, v)| v.to_string())
                } else {
                    None
                }
            }
        }
    }
}
