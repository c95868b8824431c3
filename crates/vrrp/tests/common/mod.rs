//! The VRRP suites' part of the network-namespace lab: the lab itself is
//! `syncd_testkit::netns` (shared with syncd's and the proxy's tests, which
//! include this file); here is what only VRRP tests need.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

pub use syncd_testkit::netns::*;

/// The syncd-vrrp binary; empty when this module is included by another
/// crate's tests (the proxy's, syncd's), which start their own binary with
/// [`Lan::start`].
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_syncd-vrrp") {
    Some(b) => b,
    None => "",
};

/// Starting `syncd vrrp` in a node of the lab.
pub trait VrrpLan {
    /// Start syncd-vrrp on node `i` with config `cfg`.
    fn start_syncd(&mut self, i: usize, cfg: &Path) -> usize;
}

impl VrrpLan for Lan {
    fn start_syncd(&mut self, i: usize, cfg: &Path) -> usize {
        let cfg = cfg.display().to_string();
        self.start_env(
            i,
            "syncd",
            BIN,
            &["--config", &cfg],
            &[("RUST_LOG", "info,syncd_vrrp=debug")],
        )
    }
}

/// Master_Down_Interval for a priority and interval (seconds), v3 formula (= v2 at 1 s).
pub fn mdi(priority: u8, interval: f64) -> Duration {
    Duration::from_secs_f64(3.0 * interval + (256.0 - f64::from(priority)) / 256.0 * interval)
}

/// How often process `k`'s log (syncd's VRRP) says it took over because
/// node `from`, the master, released the addresses with priority 0: a
/// takeover by that rule (Skew_Time), not by a crash's Master_Down_Interval.
pub fn takeovers_on_release(lan: &Lan, k: usize, from: usize) -> usize {
    let line = format!(
        "BACKUP -> MASTER: the master {} released the addresses (priority 0)",
        lan.ip(from)
    );
    lan.log(k).matches(&line).count()
}

/// How often process `k`'s log says it took over because Master_Down_Interval
/// passed without an acceptable advert from node `from` (a crash; also a
/// preemption of a master whose priority fell below ours).
pub fn takeovers_on_silence(lan: &Lan, k: usize, from: usize) -> usize {
    let from = format!("without an acceptable advert from {})", lan.ip(from));
    lan.log(k)
        .lines()
        .filter(|l| l.contains("BACKUP -> MASTER: master down timer expired") && l.contains(&from))
        .count()
}

/// A syncd-vrrp config with one instance.
pub fn syncd_toml(version: u8, priority: u8, vip: &str, advert_int: f64, extra: &str) -> String {
    format!(
        "admin = \"127.0.0.1:9180\"\n[[vrrp]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = {priority}\nadvert_int = {advert_int}\nversion = {version}\nvirtual_ips = [\"{vip}/24\"]\n{extra}\n"
    )
}

/// A keepalived.conf with one instance.
pub fn keepalived_conf(
    version: u8,
    priority: u8,
    vip: &str,
    advert_int: f64,
    extra: &str,
) -> String {
    format!(
        "global_defs {{\n  router_id n{priority}\n  enable_script_security\n  script_user root\n  vrrp_garp_master_delay 5\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int {advert_int}\n  version {version}\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n{extra}\n}}\n"
    )
}
