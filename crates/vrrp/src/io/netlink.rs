//! Interface lookup and address add/remove through rtnetlink (no `ip` subprocess).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::Handle;

use crate::config::Vip;

/// Netlink failures.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink socket: {0}")]
    Open(std::io::Error),
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("netlink request failed: {0}")]
    Request(#[from] rtnetlink::Error),
}

/// What we need to know about a link.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    /// Administratively up and carrier present (IFF_UP and IFF_RUNNING/LOWER_UP).
    pub up: bool,
}

/// One address on a link, with its IPv6 duplicate-address-detection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkAddr {
    pub ip: IpAddr,
    pub prefix: u8,
    /// DAD still running: the kernel refuses to send from it (EINVAL / EADDRNOTAVAIL).
    pub tentative: bool,
    /// DAD found a duplicate: the address will never become usable.
    pub dad_failed: bool,
}

/// A netlink handle; its connection task runs on the current tokio runtime.
#[derive(Clone)]
pub struct Net {
    handle: Handle,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

impl Net {
    /// Open a netlink connection (must be called inside a tokio runtime).
    pub fn new() -> Result<Net, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Open)?;
        tokio::spawn(conn);
        Ok(Net { handle })
    }

    /// Look a link up by name.
    pub async fn link(&self, name: &str) -> Result<LinkInfo, NetError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(NetError::NoSuchInterface(name.into())),
            Err(e) if errno(&e) == Some(libc::ENODEV) => {
                return Err(NetError::NoSuchInterface(name.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                Some(m)
            }
            _ => None,
        });
        let f = msg.header.flags;
        let up = f.contains(LinkFlags::Up)
            && (f.contains(LinkFlags::Running) || f.contains(LinkFlags::LowerUp));
        Ok(LinkInfo {
            index: msg.header.index,
            mac,
            up,
        })
    }

    /// Addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<LinkAddr>, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await? {
            let prefix = m.header.prefix_len;
            // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS otherwise.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            // IFA_FLAGS (32 bits) supersedes the 8-bit header copy when present.
            let flags = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| {
                    AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()))
                });
            if let Some(ip) = addr {
                out.push(LinkAddr {
                    ip,
                    prefix,
                    tentative: flags.contains(AddressFlags::Tentative),
                    dad_failed: flags.contains(AddressFlags::Dadfailed),
                });
            }
        }
        Ok(out)
    }

    /// Add a virtual address; already present is fine.
    pub async fn add(&self, index: u32, vip: Vip) -> Result<(), NetError> {
        match self
            .handle
            .address()
            .add(index, vip.addr, vip.prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove a virtual address; already absent is fine. Returns whether it was there.
    pub async fn del(&self, index: u32, vip: Vip) -> Result<bool, NetError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(vip.addr)
            .set_prefix_length_filter(vip.prefix)
            .execute();
        let mut removed = false;
        while let Some(m) = s.try_next().await? {
            match self.handle.address().del(m).execute().await {
                Ok(()) => removed = true,
                Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }
}
