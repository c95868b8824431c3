//! What the kernel knows of a backend connection (`TCP_INFO`): asked only
//! when a reused connection closed before any response byte.

use tokio::net::TcpStream;

/// What the kernel says of a connection, from `TCP_INFO`.
#[derive(Clone, Copy)]
pub(super) struct TcpInfo {
    /// Bytes the peer acknowledged, the SYN included.
    pub bytes_acked: u64,
    /// Smoothed round-trip time.
    pub rtt_us: u32,
    /// Closed by a reset from the peer (the state is `TCP_CLOSE` on a
    /// connection that was established).
    pub reset: bool,
}

/// `tcp_states.h`: the state a reset leaves a connection in.
const TCP_CLOSE: u8 = 7;

/// `TCP_INFO` of `s`; `None` if the kernel does not say.
pub(super) fn tcp_info(s: &TcpStream) -> Option<TcpInfo> {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a plain C
    // struct for which all-zero bytes are a valid value, and sets `len` to
    // what it wrote; the fd is open for the call (borrowed from `s`)
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // kernels before 4.1 stop short of the field: unknown, not zero
    let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + 8;
    (rc == 0 && len as usize >= end).then_some(TcpInfo {
        bytes_acked: info.tcpi_bytes_acked,
        rtt_us: info.tcpi_rtt,
        reset: info.tcpi_state == TCP_CLOSE,
    })
}
