//! Parsing one value: durations, bounded integers, string lists, addresses,
//! status ranges. Each error names its key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use syncd_ops::duration::Unit;

use super::raw::{RawDuration, RawStrings};
use super::{invalid, ConfigError};

/// Parse `"10s"`, `"500ms"`, `"2m"`, `"1h"`, `"1m30s"` or an integer number of seconds.
pub use syncd_ops::duration::parse as parse_duration;

pub(super) fn duration(
    key: &str,
    raw: Option<RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    raw.map_or(Ok(default), |w| w.resolve(key, Unit::Secs))
}

pub(super) fn positive_duration(
    key: &str,
    raw: Option<RawDuration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(key, raw, default)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero; use e.g. \"5s\""));
    }
    Ok(d)
}

pub(super) fn int(
    key: &str,
    raw: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
    hint: &str,
) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(v) if v >= min as i64 && (v as u64) <= max => Ok(v as u64),
        Some(v) => Err(invalid(key, format!("{v} is invalid; {hint}"))),
    }
}

pub(super) fn strings(key: &str, raw: RawStrings) -> Result<Vec<String>, ConfigError> {
    match raw {
        RawStrings::One(s) => Ok(vec![s]),
        RawStrings::Int(i) => Ok(vec![i.to_string()]),
        RawStrings::Many(values) => values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::String(s) => Ok(s),
                toml::Value::Integer(n) => Ok(n.to_string()),
                other => Err(invalid(
                    format!("{key}[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                )),
            })
            .collect(),
    }
}

pub(super) fn resolve(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(invalid(
            key,
            format!("{text:?} has no port; write \"host:port\", e.g. \"127.0.0.1:8080\""),
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| invalid(key, format!("{text:?} resolved to no address"))),
        Err(e) => Err(invalid(
            key,
            format!(
                "cannot resolve {text:?}: {e}; use an IP address and port, e.g. \"10.0.0.5:80\""
            ),
        )),
    }
}

pub(super) fn parse_status_ranges(
    key: &str,
    items: Vec<String>,
) -> Result<Vec<(u16, u16)>, ConfigError> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let parse = |s: &str| -> Option<u16> {
            let v: u16 = s.trim().parse().ok()?;
            (100..=599).contains(&v).then_some(v)
        };
        let range = match item.split_once('-') {
            Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(l, h)| l <= h),
            None => parse(item).map(|v| (v, v)),
        };
        match range {
            Some(r) => out.push(r),
            None => {
                return Err(invalid(
                    k,
                    format!("{item:?} is not a status or range; use e.g. 200 or \"200-399\""),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(
            key,
            "is empty; list at least one status, e.g. [\"200-399\"]",
        ));
    }
    Ok(out)
}
