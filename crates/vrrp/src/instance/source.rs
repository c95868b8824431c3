//! The advert source address: configured, or picked from the interface once
//! duplicate address detection allows it.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant as TokioInstant;

use super::RunError;
use crate::config::InstanceConfig;
use crate::io::netlink::{LinkAddr, Net};

/// How long to wait for IPv6 duplicate address detection on the link-local source.
/// The kernel default is about 1-2 s after link up (RFC 4862); a slow DAD (many
/// `dad_transmits`) still gets a chance, and after this we start anyway and say why.
const DAD_WAIT: Duration = Duration::from_secs(10);
const DAD_POLL: Duration = Duration::from_millis(100);

/// What the addresses on the interface allow as an advert source.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SourcePick {
    Ready(IpAddr),
    /// The only candidates are still in DAD: sending from them fails, and a master
    /// that cannot advertise would cause a split brain, so wait.
    Tentative(IpAddr),
    /// A candidate failed DAD (a duplicate on the link) and none other exists.
    DadFailed(IpAddr),
    None,
}

/// The first non-virtual address of the family (IPv6: link-local, as RFC 5798 requires),
/// preferring one whose DAD has finished.
pub(super) fn pick_source(cfg: &InstanceConfig, addrs: &[LinkAddr]) -> SourcePick {
    let candidates = addrs.iter().filter(|a| {
        !cfg.vips.iter().any(|v| v.addr == a.ip)
            && match a.ip {
                IpAddr::V4(_) => !cfg.ipv6,
                IpAddr::V6(v6) => cfg.ipv6 && (v6.segments()[0] & 0xffc0) == 0xfe80,
            }
    });
    let mut pick = SourcePick::None;
    for a in candidates {
        if !a.tentative && !a.dad_failed {
            return SourcePick::Ready(a.ip);
        }
        pick = match (pick, a.dad_failed) {
            (SourcePick::None | SourcePick::DadFailed(_), false) => SourcePick::Tentative(a.ip),
            (SourcePick::None, true) => SourcePick::DadFailed(a.ip),
            (p, _) => p,
        };
    }
    pick
}

/// Pick the source address: `unicast_src` / `mcast_src`, else [`pick_source`], waiting
/// (bounded by [`DAD_WAIT`]) for a link-local address that is still tentative.
pub(super) async fn source_address(
    cfg: &InstanceConfig,
    net: &Net,
    index: u32,
) -> Result<IpAddr, RunError> {
    if let Some(s) = cfg.unicast_src.or(cfg.mcast_src) {
        return Ok(s);
    }
    let deadline = TokioInstant::now() + DAD_WAIT;
    let mut logged = false;
    loop {
        let addrs = net.addresses(index).await.map_err(|err| RunError::Net {
            name: cfg.name.clone(),
            err,
        })?;
        match pick_source(cfg, &addrs) {
            SourcePick::Ready(ip) => return Ok(ip),
            SourcePick::Tentative(ip) if TokioInstant::now() < deadline => {
                if !logged {
                    tracing::info!(instance = %cfg.name, source = %ip, "waiting for duplicate address detection to finish on the source address");
                    logged = true;
                }
                tokio::time::sleep(DAD_POLL).await;
            }
            SourcePick::Tentative(ip) => {
                tracing::warn!(instance = %cfg.name, source = %ip, "source address still tentative after {DAD_WAIT:?}; starting anyway, adverts may fail until DAD finishes");
                return Ok(ip);
            }
            SourcePick::DadFailed(ip) => {
                return Err(RunError::DadFailed {
                    name: cfg.name.clone(),
                    iface: cfg.interface.clone(),
                    addr: ip,
                })
            }
            SourcePick::None => {
                return Err(RunError::NoSource {
                    name: cfg.name.clone(),
                    iface: cfg.interface.clone(),
                    family: if cfg.ipv6 { "IPv6 link-local" } else { "IPv4" },
                })
            }
        }
    }
}
