//! Loopback ports for daemons a test starts.
//!
//! A port taken by binding to port 0 and released again comes from the
//! kernel's ephemeral range, where any outgoing connection on the host may
//! be given it before the daemon binds it. These come from below that range
//! (`net.ipv4.ip_local_port_range` starts at 32768 by default), each at most
//! once per test process (a counter, so parallel tests never share one),
//! and only if nothing listens there now (TCP and UDP both free).

use std::sync::atomic::{AtomicU16, Ordering};

/// Below the default ephemeral range; a test process draws from a block of
/// its own (by pid), so test binaries run side by side rarely meet.
const FIRST: u16 = 20_000;
const SPAN: u16 = 12_000;
const BLOCK: u16 = 400;

static NEXT: AtomicU16 = AtomicU16::new(0);

/// A loopback port free for both TCP and UDP, never handed out twice in
/// this process.
pub fn free_port() -> u16 {
    let base = (std::process::id() % u32::from(SPAN / BLOCK)) as u16 * BLOCK;
    for _ in 0..SPAN {
        let k = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + (base + k) % SPAN;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| (FIRST..FIRST + SPAN).contains(p)));
        // Bindable now, as the daemon will bind it.
        let p = free_port();
        std::net::UdpSocket::bind(("127.0.0.1", p)).unwrap();
        std::net::TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
