//! Gratuitous ARP (IPv4, AF_PACKET) and unsolicited neighbour advertisements
//! (IPv6, ICMPv6 raw socket) announcing that the virtual addresses moved.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Build a gratuitous ARP request frame (Ethernet + ARP) for `ip` at `mac`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// Build an unsolicited neighbour advertisement (ICMPv6 body; the kernel fills the checksum).
pub fn una_body(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&[136, 0, 0, 0]);
    b.extend_from_slice(&[0x20, 0, 0, 0]); // Override flag
    b.extend_from_slice(&target.octets());
    b.extend_from_slice(&[2, 1]); // target link-layer address option, 8 bytes
    b.extend_from_slice(&mac);
    b
}

/// Sends announcements on one interface.
pub struct Announcer {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    ipv6: bool,
}

fn last_err<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

impl Announcer {
    pub fn open(ifname: &str, ifindex: u32, mac: [u8; 6], ipv6: bool) -> io::Result<Announcer> {
        // SAFETY: socket(2); the descriptor is owned immediately.
        let raw = unsafe {
            if ipv6 {
                libc::socket(
                    libc::AF_INET6,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::IPPROTO_ICMPV6,
                )
            } else {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    i32::from((libc::ETH_P_ARP as u16).to_be()),
                )
            }
        };
        if raw < 0 {
            return last_err();
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if ipv6 {
            let hops: libc::c_int = 255;
            let idx = ifindex as libc::c_int;
            // SAFETY: valid option values of the right size.
            unsafe {
                if libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_HOPS,
                    &hops as *const _ as *const libc::c_void,
                    4,
                ) < 0
                    || libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::IPPROTO_IPV6,
                        libc::IPV6_MULTICAST_IF,
                        &idx as *const _ as *const libc::c_void,
                        4,
                    ) < 0
                    || libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_BINDTODEVICE,
                        ifname.as_ptr() as *const libc::c_void,
                        ifname.len() as libc::socklen_t,
                    ) < 0
                {
                    return last_err();
                }
            }
        }
        Ok(Announcer {
            fd,
            ifindex,
            mac,
            ipv6,
        })
    }

    /// Announce each address `count` times. Returns how many packets went out.
    pub fn announce(&self, addrs: &[IpAddr], count: u32) -> io::Result<u32> {
        let mut sent = 0;
        for _ in 0..count {
            for a in addrs {
                match (a, self.ipv6) {
                    (IpAddr::V4(ip), false) => self.send_garp(*ip)?,
                    (IpAddr::V6(ip), true) => self.send_una(*ip)?,
                    _ => continue,
                }
                sent += 1;
            }
        }
        Ok(sent)
    }

    fn send_garp(&self, ip: Ipv4Addr) -> io::Result<()> {
        let frame = garp_frame(self.mac, ip);
        // SAFETY: zeroed sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return last_err();
        }
        Ok(())
    }

    fn send_una(&self, ip: Ipv6Addr) -> io::Result<()> {
        let body = una_body(self.mac, ip);
        // SAFETY: zeroed sockaddr_in6 is valid.
        let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
        sa.sin6_scope_id = self.ifindex;
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                body.as_ptr() as *const libc::c_void,
                body.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return last_err();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_layout() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[10, 0, 0, 100], "sender ip");
        assert_eq!(&f[38..42], &[10, 0, 0, 100], "target ip = sender ip");
    }

    #[test]
    fn una_layout() {
        let b = una_body([2, 0, 0, 0, 0, 1], "2001:db8::1".parse().unwrap());
        assert_eq!(b[0], 136);
        assert_eq!(b.len(), 32);
        assert_eq!(b[4] & 0x20, 0x20);
    }
}
