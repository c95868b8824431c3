//! The service-manager side of `Type=notify` units: `sd_notify(3)` without
//! libsystemd.
//!
//! A tiny std implementation rather than the `sd-notify` crate because that
//! crate connects to `$NOTIFY_SOCKET` as a path and so cannot reach an
//! abstract socket (`@name`), which systemd itself and container managers
//! hand out. Without `$NOTIFY_SOCKET` (not started by systemd) every call is
//! a no-op. The variable is left in the environment: the daemons notify more
//! than once (reload, stop), and systemd's default `NotifyAccess=main`
//! ignores whatever a child (a VRRP notify script) might send.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// One line of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// Startup finished: the daemon serves (units ordered `After=` may start).
    Ready,
    /// A configuration reload began; `Ready` ends it. Carries
    /// `MONOTONIC_USEC`, which `Type=notify-reload` (systemd 253+) requires.
    Reloading,
    /// Shutdown began.
    Stopping,
    /// Free text for `systemctl status` (one line; newlines become spaces).
    Status(&'a str),
}

/// The datagram for `states`: one `KEY=VALUE` line each.
pub fn message(states: &[State<'_>]) -> String {
    let mut m = String::new();
    for s in states {
        match s {
            State::Ready => m.push_str("READY=1\n"),
            State::Reloading => {
                m.push_str("RELOADING=1\n");
                m.push_str(&format!("MONOTONIC_USEC={}\n", monotonic_usec()));
            }
            State::Stopping => m.push_str("STOPPING=1\n"),
            State::Status(t) => {
                m.push_str("STATUS=");
                m.push_str(&t.replace('\n', " "));
                m.push('\n');
            }
        }
    }
    m
}

/// Sends `states` to `$NOTIFY_SOCKET`. `Ok(false)`: the variable is unset
/// (nothing to tell); `Ok(true)`: sent.
pub fn notify(states: &[State<'_>]) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(p) if p.is_empty() => Ok(false),
        Some(p) => notify_to(&p, states).map(|()| true),
    }
}

/// Like [`notify`], logging a failure instead of returning it: a daemon
/// keeps serving when its supervisor cannot be told (systemd then times the
/// start out, which says more than a daemon that exits).
pub fn send(states: &[State<'_>]) {
    if let Err(e) = notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// Sends `states` to the socket `addr` names: an absolute path, or `@name`
/// for an abstract socket (as `sd_notify(3)` reads `$NOTIFY_SOCKET`).
pub fn notify_to(addr: &OsStr, states: &[State<'_>]) -> io::Result<()> {
    let b = addr.as_bytes();
    let to = match b.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&b[1..])?,
        Some(b'/') => SocketAddr::from_pathname(addr)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={}: neither an absolute path nor @abstract",
                    addr.to_string_lossy()
                ),
            ))
        }
    };
    let msg = message(states);
    let sock = UnixDatagram::unbound()?;
    let n = sock.send_to_addr(msg.as_bytes(), &to)?;
    if n != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ));
    }
    Ok(())
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(s: &UnixDatagram) -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn reaches_a_path_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let s = UnixDatagram::bind(&p).unwrap();
        notify_to(
            p.as_os_str(),
            &[State::Ready, State::Status("serving\non 7400")],
        )
        .unwrap();
        assert_eq!(recv(&s), "READY=1\nSTATUS=serving on 7400\n");
    }

    #[test]
    fn reaches_an_abstract_socket() {
        let name = format!("syncd-sdnotify-test-{}", std::process::id());
        let s = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        notify_to(OsStr::new(&format!("@{name}")), &[State::Stopping]).unwrap();
        assert_eq!(recv(&s), "STOPPING=1\n");
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let m = message(&[State::Reloading]);
        let mut lines = m.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .expect("MONOTONIC_USEC line");
        assert!(usec > 0);
    }

    #[test]
    fn a_relative_address_is_refused() {
        let e = notify_to(OsStr::new("notify.sock"), &[State::Ready]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("absent");
        assert!(notify_to(p.as_os_str(), &[State::Ready]).is_err());
    }
}
