//! A stand-in for systemd's notification socket: the daemons' `Type=notify`
//! readiness is tested by starting the real binaries with `NOTIFY_SOCKET`
//! pointing here (these machines run no systemd).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::{Duration, Instant};

/// A bound notification socket and everything received on it so far.
pub struct NotifySocket {
    sock: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub addr: String,
    /// Every datagram received, in order.
    pub seen: Vec<String>,
    /// When each entry of `seen` arrived.
    pub at: Vec<Instant>,
}

impl NotifySocket {
    /// A socket at the path `path` (an absolute `NOTIFY_SOCKET`).
    pub fn path(path: &Path) -> NotifySocket {
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        NotifySocket::new(sock, path.display().to_string())
    }

    /// An abstract socket named after `tag` and this process (`@name`).
    /// Abstract names belong to a network namespace: use [`NotifySocket::path`]
    /// for a daemon started in another one.
    pub fn abstract_name(tag: &str) -> NotifySocket {
        let name = format!("syncd-test-{tag}-{}", std::process::id());
        let sock = UnixDatagram::bind_addr(
            &SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name"),
        )
        .expect("bind abstract notify socket");
        NotifySocket::new(sock, format!("@{name}"))
    }

    fn new(sock: UnixDatagram, addr: String) -> NotifySocket {
        NotifySocket {
            sock,
            addr,
            seen: Vec::new(),
            at: Vec::new(),
        }
    }

    /// Waits up to `timeout` for a datagram with the line `line` (e.g.
    /// `READY=1`) after those already seen; returns the datagram.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> Option<String> {
        self.wait_until(|l| l == line, timeout)
    }

    /// Waits up to `timeout` for a datagram with a line that `pred` accepts,
    /// after those already seen; returns the datagram.
    pub fn wait_until(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut buf = [0u8; 8192];
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            self.at.push(Instant::now());
            if msg.lines().any(&pred) {
                return Some(msg);
            }
        }
    }

    /// Every line received so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.seen
            .iter()
            .flat_map(|m| m.lines().map(str::to_string))
            .collect()
    }
}
