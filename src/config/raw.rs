//! The file as written: `serde` reads it into these structs (unknown keys
//! rejected) and `super` checks every value.

use std::path::PathBuf;

use serde::Deserialize;

use syncd_ops::duration::Written;
use syncd_proto::batch::BatchConfig;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) node_id: Option<String>,
    pub(super) export: PathBuf,
    pub(super) export_id: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) listen: Option<String>,
    pub(super) peer: Option<String>,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) peer_cert: Option<PathBuf>,
    pub(super) peer_fingerprint: Option<String>,
    pub(super) admin: Option<String>,
    #[serde(default)]
    pub(super) sync: RawSync,
    /// What this node does with owners and modes while it is the standby.
    #[serde(default)]
    pub(super) standby: RawStandby,
    /// `--role auto`: the service address, same tables as `syncd vrrp`.
    #[serde(default)]
    pub(super) vrrp: Vec<syncd_vrrp::config::VrrpConfig>,
    #[serde(default)]
    pub(super) pair: RawPair,
    /// `--role auto`: service hooks (see `hooks.rs`).
    #[serde(default)]
    pub(super) hooks: crate::hooks::RawHooks,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStandby {
    pub(super) owners: Option<String>,
    pub(super) strip_setid: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPair {
    #[serde(default = "w_heartbeat_ms")]
    pub(super) heartbeat_ms: Written,
    #[serde(default = "w_heartbeat_timeout_ms")]
    pub(super) heartbeat_timeout_ms: Written,
    #[serde(default = "w_peer_wait_secs")]
    pub(super) peer_wait_secs: Written,
    #[serde(default = "w_unsure_wait_secs")]
    pub(super) unsure_wait_secs: Written,
}

impl Default for RawPair {
    fn default() -> Self {
        RawPair {
            heartbeat_ms: w_heartbeat_ms(),
            heartbeat_timeout_ms: w_heartbeat_timeout_ms(),
            peer_wait_secs: w_peer_wait_secs(),
            unsure_wait_secs: w_unsure_wait_secs(),
        }
    }
}

pub(super) fn default_heartbeat_ms() -> u64 {
    500
}
/// Below VRRP's Master_Down_Interval (3 s + skew at advert_int 1): the peer
/// counts as gone before VRRP would make us master.
pub(super) fn default_heartbeat_timeout_ms() -> u64 {
    2500
}
pub(super) fn default_peer_wait_secs() -> u64 {
    10
}
pub(super) fn default_unsure_wait_secs() -> u64 {
    60
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    #[serde(default = "yes")]
    pub(super) delete: bool,
    #[serde(default = "default_delta_min")]
    pub(super) delta_min_size: u64,
    #[serde(default)]
    pub(super) checksum: bool,
    #[serde(default = "yes")]
    pub(super) durable: bool,
    #[serde(default = "w_window_ms")]
    pub(super) batch_window_ms: Written,
    #[serde(default = "w_max_delay_ms")]
    pub(super) batch_max_delay_ms: Written,
    #[serde(default = "default_max_paths")]
    pub(super) batch_max_paths: usize,
    #[serde(default = "w_settle_ms")]
    pub(super) settle_ms: Written,
    #[serde(default = "w_full_secs")]
    pub(super) full_reconcile_secs: Written,
    #[serde(default = "w_reply_timeout_secs")]
    pub(super) reply_timeout_secs: Written,
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            delete: true,
            delta_min_size: default_delta_min(),
            checksum: false,
            durable: true,
            batch_window_ms: w_window_ms(),
            batch_max_delay_ms: w_max_delay_ms(),
            batch_max_paths: default_max_paths(),
            settle_ms: w_settle_ms(),
            full_reconcile_secs: w_full_secs(),
            reply_timeout_secs: w_reply_timeout_secs(),
        }
    }
}

pub(super) fn default_window_ms() -> u64 {
    BatchConfig::default().window.as_millis() as u64
}
pub(super) fn default_max_delay_ms() -> u64 {
    BatchConfig::default().max_delay.as_millis() as u64
}
pub(super) fn default_max_paths() -> usize {
    BatchConfig::default().max_paths
}
pub(super) fn default_settle_ms() -> u64 {
    BatchConfig::default().settle.as_millis() as u64
}
pub(super) fn default_full_secs() -> u64 {
    3600
}

pub(super) fn default_reply_timeout_secs() -> u64 {
    crate::primary::stream::REPLY_DEADLINE.as_secs()
}

pub(super) fn yes() -> bool {
    true
}
pub(super) fn default_delta_min() -> u64 {
    64 << 10
}

// The defaults as written values: numbers in each key's unit.
pub(super) fn w_heartbeat_ms() -> Written {
    Written::number(default_heartbeat_ms())
}
pub(super) fn w_heartbeat_timeout_ms() -> Written {
    Written::number(default_heartbeat_timeout_ms())
}
pub(super) fn w_peer_wait_secs() -> Written {
    Written::number(default_peer_wait_secs())
}
pub(super) fn w_unsure_wait_secs() -> Written {
    Written::number(default_unsure_wait_secs())
}
pub(super) fn w_window_ms() -> Written {
    Written::number(default_window_ms())
}
pub(super) fn w_max_delay_ms() -> Written {
    Written::number(default_max_delay_ms())
}
pub(super) fn w_settle_ms() -> Written {
    Written::number(default_settle_ms())
}
pub(super) fn w_full_secs() -> Written {
    Written::number(default_full_secs())
}
pub(super) fn w_reply_timeout_secs() -> Written {
    Written::number(default_reply_timeout_secs())
}
