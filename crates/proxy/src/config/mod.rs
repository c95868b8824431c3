//! Configuration: the TOML file format, and its validation into typed settings.
//!
//! Parsing happens in two steps. `serde` reads the file into the `Raw*`
//! structs of [`raw`] that mirror the file (every field optional, unknown keys
//! rejected), then [`Config::from_raw`] checks every value and produces the
//! typed [`Config`]. Every problem is reported at once, each naming its key
//! and the fix, e.g. `upstream "web".server[1].weight: 0 is invalid; use a
//! positive integer (nginx default 1)`.

mod listener;
mod raw;
#[cfg(test)]
mod tests;
mod types;
mod upstream;
mod values;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use syncd_ops::config::ConfigError;
use syncd_ops::config::Problems;

use raw::RawConfig;
pub use types::*;
pub use values::parse_duration;
use values::{duration, int};

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::new(key, message)
}

/// Validate `[[vrrp]]` with the VRRP crate's own rules (keys already named
/// `vrrp[i].key`).
fn vrrp(
    tables: &[syncd_vrrp::config::VrrpConfig],
) -> Result<Option<syncd_vrrp::config::Config>, ConfigError> {
    syncd_vrrp::config::validate_tables(tables)
}

impl Config {
    /// The validated VRRP instances to run, if any.
    pub fn vrrp_config(&self) -> Result<Option<syncd_vrrp::config::Config>, ConfigError> {
        vrrp(&self.vrrp)
    }

    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
        Config::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::syntax(text, e.message(), e.span().map(|s| s.start)))?;
        Config::from_raw(raw)
    }

    /// Every section is checked even after one fails, so that one run
    /// reports every problem.
    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut p = Problems::new();
        p.take(vrrp(&raw.vrrp));
        let global = p.take(global(raw.global.unwrap_or_default()));
        let admin = p.take(admin(raw.admin.and_then(|a| a.listen)));
        let retry = p.take(retry(raw.retry.unwrap_or_default()));

        let mut upstreams = Vec::new();
        // Names of invalid upstreams count as defined: a listener naming
        // one is not a second problem.
        let mut names = HashSet::new();
        for (i, u) in raw.upstream.into_iter().enumerate() {
            if let Some(name) = &u.name {
                if !names.insert(name.clone()) {
                    p.push(
                        format!("upstream[{i}].name"),
                        format!("{name:?} is defined twice; give each upstream a unique name"),
                    );
                }
            }
            upstreams.extend(p.take(upstream::upstream(i, u)));
        }

        let mut listeners = Vec::new();
        let mut seen_addrs: HashMap<SocketAddr, String> = HashMap::new();
        let nlisteners = raw.listener.len();
        for (i, l) in raw.listener.into_iter().enumerate() {
            let Some(lis) = p.take(listener::listener(i, l, &names)) else {
                continue;
            };
            for a in &lis.listen {
                if let Some(other) = seen_addrs.insert(*a, lis.name.clone()) {
                    p.push(
                        format!("listener {:?}.listen", lis.name),
                        format!("{a} is already used by listener {other:?}; each address may appear once"),
                    );
                }
            }
            listeners.push(lis);
        }
        if nlisteners == 0 {
            p.push(
                "listener",
                "no [[listener]] defined; add one, e.g. [[listener]] listen = \"0.0.0.0:80\" upstream = \"web\"",
            );
        }
        p.finish()?;
        match (global, admin, retry) {
            (Some(global), Some(admin), Some(retry)) => Ok(Config {
                global,
                admin,
                retry,
                listeners,
                upstreams,
                vrrp: raw.vrrp,
            }),
            // Each None above left a problem, so finish() returned.
            _ => Err(invalid("", "invalid configuration")),
        }
    }

    pub fn upstream_named(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

fn global(g: raw::RawGlobal) -> Result<Global, ConfigError> {
    let log_json = match g.log_format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(invalid(
                "global.log_format",
                format!("{other:?} is unknown; use \"text\" or \"json\""),
            ))
        }
    };
    Ok(Global {
        workers: int(
            "global.workers",
            g.workers,
            0,
            0,
            1024,
            "use 0 (one per core) or a thread count",
        )? as usize,
        shutdown_timeout: duration(
            "global.shutdown_timeout",
            g.shutdown_timeout,
            Duration::from_secs(30),
        )?,
        access_log: g.access_log.unwrap_or(true),
        log_json,
    })
}

fn admin(listen: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = listen else { return Ok(None) };
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        invalid(
            "admin.listen",
            format!("{text:?} is not an address; use \"IP:port\", e.g. \"127.0.0.1:9901\""),
        )
    })
}

fn retry(r: raw::RawRetry) -> Result<RetrySettings, ConfigError> {
    let budget_ratio = r.budget_ratio.unwrap_or(0.2);
    if !(0.0..=1000.0).contains(&budget_ratio) || budget_ratio.is_nan() {
        return Err(invalid(
            "retry.budget_ratio",
            format!("{budget_ratio} is invalid; use a fraction such as 0.2 (one retry per five requests)"),
        ));
    }
    Ok(RetrySettings {
        budget_ratio,
        budget_min_per_sec: int(
            "retry.budget_min_per_sec",
            r.budget_min_per_sec,
            10,
            0,
            1_000_000,
            "use a non-negative integer (default 10)",
        )? as u32,
        max_replay_body: int(
            "retry.max_replay_body",
            r.max_replay_body,
            64 * 1024,
            0,
            64 * 1024 * 1024,
            "use a byte count up to 67108864 (default 65536)",
        )? as usize,
    })
}
