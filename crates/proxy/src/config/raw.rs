//! The file as written: `serde` reads it into these structs (every field
//! optional, unknown keys rejected); `super` validates them.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) global: Option<RawGlobal>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    #[serde(default)]
    pub(super) upstream: Vec<RawUpstream>,
    /// Built-in VRRP: the same `[[vrrp]]` tables as `syncd vrrp`.
    #[serde(default)]
    pub(super) vrrp: Vec<syncd_vrrp::config::VrrpConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub(super) workers: Option<i64>,
    pub(super) shutdown_timeout: Option<RawDuration>,
    pub(super) access_log: Option<bool>,
    pub(super) log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) budget_ratio: Option<f64>,
    pub(super) budget_min_per_sec: Option<i64>,
    pub(super) max_replay_body: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<String>,
    pub(super) listen: Option<RawStrings>,
    pub(super) mode: Option<String>,
    pub(super) upstream: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) header_timeout: Option<RawDuration>,
    pub(super) max_header_size: Option<i64>,
    pub(super) max_headers: Option<i64>,
    pub(super) idle_timeout: Option<RawDuration>,
    pub(super) client_body_timeout: Option<RawDuration>,
    pub(super) send_timeout: Option<RawDuration>,
    pub(super) backlog: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: Option<String>,
    pub(super) algorithm: Option<String>,
    pub(super) hash_key: Option<String>,
    pub(super) connect_timeout: Option<RawDuration>,
    pub(super) read_timeout: Option<RawDuration>,
    pub(super) keepalive: Option<i64>,
    pub(super) keepalive_timeout: Option<RawDuration>,
    pub(super) tries: Option<i64>,
    pub(super) next_upstream_timeout: Option<RawDuration>,
    pub(super) host_header: Option<String>,
    #[serde(default)]
    pub(super) server: Vec<RawServer>,
    pub(super) health_check: Option<RawHealth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) addr: Option<String>,
    pub(super) weight: Option<i64>,
    pub(super) max_fails: Option<i64>,
    pub(super) fail_timeout: Option<RawDuration>,
    pub(super) backup: Option<bool>,
    pub(super) down: Option<bool>,
    pub(super) max_conns: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) interval: Option<RawDuration>,
    pub(super) timeout: Option<RawDuration>,
    pub(super) rise: Option<i64>,
    pub(super) fall: Option<i64>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
    pub(super) expect_status: Option<RawStrings>,
    pub(super) port: Option<i64>,
}

/// A number of seconds or a string such as `"500ms"`.
pub(super) type RawDuration = syncd_ops::duration::Written;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStrings {
    One(String),
    Int(i64),
    Many(Vec<toml::Value>),
}
