//! Raw IP protocol 112 sockets (IPv4 with our own header, IPv6 with
//! ancillary data), bound to one interface, joined to 224.0.0.18 / ff02::12
//! in multicast mode.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

use crate::packet::{self, IPPROTO_VRRP, MCAST_V4, MCAST_V6, VRRP_TTL};

/// A received VRRP payload with the IP header fields the machine needs.
#[derive(Debug, Clone)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Receive errors that are about the packet, not the socket.
#[derive(Debug)]
pub enum RecvError {
    Io(io::Error),
    Bad(packet::PacketError),
}

/// A raw VRRP socket on one interface.
pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
    ipv6: bool,
    ifindex: u32,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the given size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn bind_device(fd: RawFd, ifname: &str) -> io::Result<()> {
    // SAFETY: pointer/length pair of a live byte slice.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_ptr() as *const libc::c_void,
            ifname.len() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
    sa
}

fn sockaddr_v6(a: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = a.octets();
    sa.sin6_scope_id = scope;
    sa
}

impl VrrpSocket {
    /// Open a raw socket on `ifname`. `multicast` joins the VRRP group.
    pub fn open(ifname: &str, ifindex: u32, ipv6: bool, multicast: bool) -> io::Result<VrrpSocket> {
        let domain = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2) call; the fd is owned right after.
        let raw = cvt(unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(IPPROTO_VRRP),
            )
        })?;
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let fd = owned.as_raw_fd();
        bind_device(fd, ifname)?;
        let one: libc::c_int = 1;
        let zero: libc::c_int = 0;
        let ttl: libc::c_int = libc::c_int::from(VRRP_TTL);
        if ipv6 {
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &one)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &one)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &ttl)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &ttl)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &zero)?;
            let idx = ifindex as libc::c_int;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &idx)?;
            if multicast {
                let mreq = libc::ipv6_mreq {
                    ipv6mr_multiaddr: libc::in6_addr {
                        s6_addr: MCAST_V6.octets(),
                    },
                    ipv6mr_interface: ifindex,
                };
                setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)?;
            }
        } else {
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, &one)?;
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &zero)?;
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &ttl)?;
            let mreqn = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(MCAST_V4.octets()),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreqn)?;
            if multicast {
                setsockopt(fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreqn)?;
            }
        }
        // SAFETY: OwnedFd keeps the descriptor open for the AsyncFd's whole life
        // and always returns the same raw fd.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(io::Error::from)?;
        Ok(VrrpSocket { fd, ipv6, ifindex })
    }

    /// Wait for the next packet.
    pub async fn recv(&self) -> Result<Received, RecvError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(RecvError::Io)?;
            let r = guard.try_io(|fd| {
                if self.ipv6 {
                    recv_v6(fd.as_raw_fd())
                } else {
                    recv_v4(fd.as_raw_fd())
                }
            });
            match r {
                Ok(Ok(x)) => return x,
                Ok(Err(e)) => return Err(RecvError::Io(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Send a VRRP payload from `src` to `dst` with TTL / hop limit 255.
    pub async fn send(&self, src: IpAddr, dst: IpAddr, payload: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => send_v4(fd.as_raw_fd(), s, d, payload),
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    send_v6(fd.as_raw_fd(), s, d, self.ifindex, payload)
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "address family mismatch",
                )),
            });
            match r {
                Ok(res) => return res,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_v4(fd: RawFd) -> io::Result<Result<Received, RecvError>> {
    let mut buf = [0u8; 2048];
    // SAFETY: buffer pointer/length are valid; address arguments may be null.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    Ok(match packet::parse_ipv4(&buf[..n]) {
        Ok((h, payload)) => Ok(Received {
            src: IpAddr::V4(h.src),
            dst: IpAddr::V4(h.dst),
            ttl: h.ttl,
            payload: payload.to_vec(),
        }),
        Err(e) => Err(RecvError::Bad(e)),
    })
}

fn recv_v6(fd: RawFd) -> io::Result<Result<Received, RecvError>> {
    let mut buf = [0u8; 2048];
    let mut cbuf = [0u64; 32];
    // SAFETY: zeroed sockaddr_in6/msghdr are valid initial values.
    let mut from: libc::sockaddr_in6 = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    // SAFETY: msg points at live buffers described above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ttl = 0u8;
    let mut dst = Ipv6Addr::UNSPECIFIED;
    // SAFETY: standard CMSG iteration over the control buffer filled by the kernel.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_HOPLIMIT {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                ttl = v.clamp(0, 255) as u8;
            } else if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO
            {
                let p = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                dst = Ipv6Addr::from(p.ipi6_addr.s6_addr);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
    Ok(Ok(Received {
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        ttl,
        payload: buf[..n as usize].to_vec(),
    }))
}

fn send_v4(fd: RawFd, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> io::Result<()> {
    let pkt = packet::build_ipv4(src, dst, payload);
    let sa = sockaddr_v4(dst);
    // SAFETY: valid buffer and sockaddr.
    let n = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr() as *const libc::c_void,
            pkt.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_v6(
    fd: RawFd,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ifindex: u32,
    payload: &[u8],
) -> io::Result<()> {
    let mut sa = sockaddr_v6(dst, ifindex);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: zeroed msghdr is valid; fields set below point at live data.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = &mut sa as *mut _ as *mut libc::c_void;
    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) } as _;
    // SAFETY: the control buffer is large enough for one in6_pktinfo cmsg.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IPV6;
        (*c).cmsg_type = libc::IPV6_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr {
                s6_addr: src.octets(),
            },
            ipi6_ifindex: ifindex,
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, info);
    }
    // SAFETY: msg is fully initialised.
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
