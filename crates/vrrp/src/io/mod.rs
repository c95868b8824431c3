//! The thin I/O layer: raw sockets, netlink, ARP/NA, health probes.

pub mod arp;
pub mod checks;
pub mod netlink;
pub mod socket;
