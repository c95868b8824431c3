//! Durations as the configuration files write them: a string with units
//! (`"500ms"`, `"2s"`, `"1m30s"`) in every duration key of `syncd` and
//! `syncd-proxy`, or a bare number in the key's own unit (syncd's `_ms` and
//! `_secs` keys, the proxy's seconds) so that existing files keep loading.

use std::time::Duration;

use crate::config::ConfigError;

/// A duration key as written (see the module doc).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum Written {
    Int(i64),
    Text(String),
}

/// What a bare number in a key means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Secs,
}

impl Written {
    /// The written number `n` in `unit`.
    pub fn number(n: u64) -> Written {
        Written::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }

    /// The duration, or an error naming `key` and the two accepted forms.
    pub fn resolve(&self, key: &str, unit: Unit) -> Result<Duration, ConfigError> {
        let (name, of) = match unit {
            Unit::Millis => ("milliseconds", Duration::from_millis as fn(u64) -> Duration),
            Unit::Secs => ("seconds", Duration::from_secs as fn(u64) -> Duration),
        };
        let bad = |what: String| {
            ConfigError::new(
                key,
                format!("{what} is not a duration; write a number of {name} or a string such as \"500ms\", \"2s\" or \"1m30s\""),
            )
        };
        match self {
            Written::Int(n) => u64::try_from(*n).map(of).map_err(|_| bad(n.to_string())),
            // A quoted bare number is in the key's unit too, never silently
            // seconds in a `_ms` key.
            Written::Text(t) => match t.trim().parse::<u64>() {
                Ok(n) => Ok(of(n)),
                Err(_) => parse(t).ok_or_else(|| bad(format!("{t:?}"))),
            },
        }
    }
}

/// Parses `"10s"`, `"500ms"`, `"2m"`, `"1h"`, `"1m30s"` or an integer
/// number of seconds; `None` for anything else (and on overflow).
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60)?),
            "h" => Duration::from_secs(value.checked_mul(3600)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_takes_its_own_unit_or_a_string_with_units() {
        let ms = Written::Int(250).resolve("settle_ms", Unit::Millis);
        assert_eq!(ms, Ok(Duration::from_millis(250)));
        let s = Written::Int(3).resolve("peer_wait_secs", Unit::Secs);
        assert_eq!(s, Ok(Duration::from_secs(3)));
        let t = Written::Text("1m30s".into()).resolve("settle_ms", Unit::Millis);
        assert_eq!(t, Ok(Duration::from_secs(90)));
        let q = Written::Text("500".into()).resolve("settle_ms", Unit::Millis);
        assert_eq!(
            q,
            Ok(Duration::from_millis(500)),
            "a quoted number keeps the unit"
        );
        let e = Written::Int(-1)
            .resolve("settle_ms", Unit::Millis)
            .unwrap_err();
        assert!(
            e.names("settle_ms") && e.to_string().contains("milliseconds"),
            "{e}"
        );
        let e = Written::Text("soon".into())
            .resolve("k", Unit::Secs)
            .unwrap_err();
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
    }

    #[test]
    fn units_and_sums() {
        assert_eq!(parse("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse(" 7 "), Some(Duration::from_secs(7)));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "",
            "s",
            "5 parsecs",
            "1.5s",
            "-1s",
            "10x",
            "99999999999999999999h",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
