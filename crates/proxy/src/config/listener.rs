//! One `[[listener]]`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawListener, RawStrings, RawTls};
use super::values::{int, positive_duration, strings};
use super::{invalid, ConfigError, Listener, Mode, Tls};

pub(super) fn listener(
    i: usize,
    mut l: RawListener,
    upstreams: &HashSet<String>,
) -> Result<Listener, ConfigError> {
    let name = l.name.take().unwrap_or_else(|| format!("listener{i}"));
    let k = |field: &str| format!("listener {name:?}.{field}");
    let mode = match l.mode.as_deref() {
        None | Some("http") => Mode::Http,
        Some("tcp") => Mode::Tcp,
        Some(other) => {
            return Err(invalid(
                k("mode"),
                format!("{other:?} is unknown; use \"http\" or \"tcp\""),
            ))
        }
    };
    let listen = addresses(&k, l.listen.take())?;
    let upstream = upstream(&k, l.upstream.take(), upstreams)?;
    if mode == Mode::Tcp {
        // HTTP-only limits: reject rather than silently ignore them
        for (key, set) in [
            ("client_body_timeout", l.client_body_timeout.is_some()),
            ("send_timeout", l.send_timeout.is_some()),
        ] {
            if set {
                return Err(invalid(
                    k(key),
                    "applies to mode = \"http\" listeners only; for tcp use idle_timeout",
                ));
            }
        }
    }
    let tls = match l.tls.take() {
        None => None,
        Some(t) => Some(tls(&k, t, mode)?),
    };
    let mut out = limits(&k, l, mode)?;
    out.name = name;
    out.listen = listen;
    out.upstream = upstream;
    out.tls = tls;
    Ok(out)
}

/// `listen`: one address or a list, at least one.
fn addresses(
    k: &dyn Fn(&str) -> String,
    raw: Option<RawStrings>,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let listen_raw = raw.ok_or_else(|| {
        invalid(
            k("listen"),
            "is missing; add e.g. listen = \"0.0.0.0:80\" or a list of addresses",
        )
    })?;
    let mut listen = Vec::new();
    for (j, text) in strings(&k("listen"), listen_raw)?.into_iter().enumerate() {
        let addr = text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                format!("{}[{j}]", k("listen")),
                format!("{text:?} is not an address; use \"IP:port\", e.g. \"0.0.0.0:80\" or \"[::]:443\""),
            )
        })?;
        listen.push(addr);
    }
    if listen.is_empty() {
        return Err(invalid(k("listen"), "is empty; give at least one address"));
    }
    Ok(listen)
}

/// `upstream`: the name of a defined `[[upstream]]`.
fn upstream(
    k: &dyn Fn(&str) -> String,
    raw: Option<String>,
    upstreams: &HashSet<String>,
) -> Result<String, ConfigError> {
    let upstream = raw.ok_or_else(|| {
        invalid(
            k("upstream"),
            "is missing; name the [[upstream]] this listener forwards to",
        )
    })?;
    if !upstreams.contains(&upstream) {
        return Err(invalid(
            k("upstream"),
            format!("{upstream:?} is not defined; add an [[upstream]] with name = {upstream:?}"),
        ));
    }
    Ok(upstream)
}

fn tls(k: &dyn Fn(&str) -> String, t: RawTls, mode: Mode) -> Result<Tls, ConfigError> {
    if mode == Mode::Tcp {
        return Err(invalid(
            k("tls"),
            "TLS termination is only supported on mode = \"http\" listeners",
        ));
    }
    let cert = t.cert.ok_or_else(|| {
        invalid(
            k("tls.cert"),
            "is missing; give a PEM certificate chain file",
        )
    })?;
    let key = t
        .key
        .ok_or_else(|| invalid(k("tls.key"), "is missing; give a PEM private key file"))?;
    Ok(Tls {
        cert: PathBuf::from(cert),
        key: PathBuf::from(key),
    })
}

/// The timeouts and size limits; name, addresses, upstream and TLS are
/// filled in by the caller.
fn limits(k: &dyn Fn(&str) -> String, l: RawListener, mode: Mode) -> Result<Listener, ConfigError> {
    let idle_default = match mode {
        Mode::Http => Duration::from_secs(75),
        Mode::Tcp => Duration::from_secs(600),
    };
    Ok(Listener {
        header_timeout: positive_duration(
            &k("header_timeout"),
            l.header_timeout,
            Duration::from_secs(60),
        )?,
        max_header_size: int(
            &k("max_header_size"),
            l.max_header_size,
            32 * 1024,
            1024,
            1024 * 1024,
            "use a byte count between 1024 and 1048576 (default 32768)",
        )? as usize,
        max_headers: int(
            &k("max_headers"),
            l.max_headers,
            100,
            1,
            10_000,
            "use a count between 1 and 10000 (default 100)",
        )? as usize,
        idle_timeout: positive_duration(&k("idle_timeout"), l.idle_timeout, idle_default)?,
        client_body_timeout: positive_duration(
            &k("client_body_timeout"),
            l.client_body_timeout,
            Duration::from_secs(60),
        )?,
        send_timeout: positive_duration(
            &k("send_timeout"),
            l.send_timeout,
            Duration::from_secs(60),
        )?,
        backlog: int(
            &k("backlog"),
            l.backlog,
            1024,
            1,
            65535,
            "use a value between 1 and 65535",
        )? as u32,
        name: String::new(),
        listen: Vec::new(),
        mode,
        upstream: String::new(),
        tls: None,
    })
}
