//! VRRP packet codec: VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798), IPv4 and IPv6.
//!
//! Pure functions over byte slices; no I/O. Every malformed input yields a
//! [`PacketError`] naming the reason, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// IPv4 multicast group for VRRP.
pub const MCAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group for VRRP.
pub const MCAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit that every VRRP packet is sent with.
pub const VRRP_TTL: u8 = 255;
/// Length of the v2 authentication data field.
pub const AUTH_LEN: usize = 8;

/// Protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// RFC 3768, IPv4 only, interval in seconds, optional simple password.
    V2,
    /// RFC 5798, IPv4 or IPv6, interval in centiseconds, pseudo-header checksum.
    V3,
}

impl Version {
    /// Numeric version carried in the packet.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// v2 authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Type 0.
    None,
    /// Type 1: simple text password, zero padded to 8 bytes.
    Simple([u8; AUTH_LEN]),
}

impl Auth {
    /// Build a simple-password auth from a string (truncated to 8 bytes, as keepalived does).
    pub fn simple(pass: &str) -> Auth {
        let mut b = [0u8; AUTH_LEN];
        for (d, s) in b.iter_mut().zip(pass.as_bytes()) {
            *d = *s;
        }
        Auth::Simple(b)
    }
}

/// A decoded VRRP advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2 carries whole seconds; they are scaled by 100).
    pub interval_cs: u16,
    /// v2 only; always [`Auth::None`] for v3.
    pub auth: Auth,
    /// Virtual addresses carried in the packet (all of the packet's family).
    pub addrs: Vec<IpAddr>,
}

/// Why a packet was rejected. [`PacketError::reason`] gives a stable metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short: {len} bytes, need at least {need}")]
    TooShort { len: usize, need: usize },
    #[error("unsupported VRRP version {0}")]
    BadVersion(u8),
    #[error("unsupported VRRP packet type {0} (only 1 = ADVERTISEMENT exists)")]
    BadType(u8),
    #[error("VRID 0 is invalid")]
    ZeroVrid,
    #[error("advertisement interval 0 is invalid")]
    ZeroInterval,
    #[error("bad checksum: got {got:#06x}, computed {want:#06x}")]
    BadChecksum { got: u16, want: u16 },
    #[error("address count {count} needs {need} bytes but only {have} are present")]
    Truncated { count: u8, need: usize, have: usize },
    #[error("unsupported v2 authentication type {0}")]
    BadAuthType(u8),
    #[error("VRRPv2 over IPv6 does not exist")]
    V2OverIpv6,
    #[error("malformed IP header: {0}")]
    BadIpHeader(&'static str),
    #[error("IP protocol {0} is not VRRP (112)")]
    NotVrrp(u8),
    #[error("source and destination address families differ")]
    FamilyMismatch,
    #[error("{extra} unexpected bytes after the message ({need} expected for {count} addresses)")]
    TrailingBytes {
        count: u8,
        need: usize,
        extra: usize,
    },
}

impl PacketError {
    /// Short, stable label used in metrics (`bad_packets_total{reason=...}`).
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::TooShort { .. } => "too_short",
            PacketError::BadVersion(_) => "bad_version",
            PacketError::BadType(_) => "bad_type",
            PacketError::ZeroVrid => "zero_vrid",
            PacketError::ZeroInterval => "zero_interval",
            PacketError::BadChecksum { .. } => "bad_checksum",
            PacketError::Truncated { .. } => "truncated",
            PacketError::BadAuthType(_) => "bad_auth_type",
            PacketError::V2OverIpv6 => "v2_over_ipv6",
            PacketError::BadIpHeader(_) => "bad_ip_header",
            PacketError::NotVrrp(_) => "not_vrrp",
            PacketError::FamilyMismatch => "family_mismatch",
            PacketError::TrailingBytes { .. } => "trailing_bytes",
        }
    }
}

/// Internet checksum (RFC 1071) over several slices, as if concatenated.
/// Slices must have even length except the last.
pub fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        }
        if let [last] = chunks.remainder() {
            sum = sum.wrapping_add(u32::from(*last) << 8);
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: IpAddr, dst: IpAddr, len: usize) -> Result<Vec<u8>, PacketError> {
    let mut ph = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.push(0);
            ph.push(IPPROTO_VRRP);
            ph.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&(len as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, IPPROTO_VRRP]);
        }
        _ => return Err(PacketError::FamilyMismatch),
    }
    Ok(ph)
}

fn checksum_for(
    version: Version,
    body: &[u8],
    src: IpAddr,
    dst: IpAddr,
) -> Result<u16, PacketError> {
    Ok(match version {
        Version::V2 => inet_checksum(&[body]),
        Version::V3 => {
            let ph = pseudo_header(src, dst, body.len())?;
            inet_checksum(&[&ph, body])
        }
    })
}

/// The fixed first part of a message, checked.
struct Header {
    version: Version,
    vrid: u8,
    priority: u8,
    count: u8,
    /// Address length of the family: 4 or 16.
    alen: usize,
}

impl Header {
    /// Version, type, VRID and family, in the order a reader meets them.
    fn parse(buf: &[u8], src: IpAddr) -> Result<Header, PacketError> {
        if buf.len() < 8 {
            return Err(PacketError::TooShort {
                len: buf.len(),
                need: 8,
            });
        }
        let version = match buf[0] >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            v => return Err(PacketError::BadVersion(v)),
        };
        let ptype = buf[0] & 0x0f;
        if ptype != 1 {
            return Err(PacketError::BadType(ptype));
        }
        let vrid = buf[1];
        if vrid == 0 {
            return Err(PacketError::ZeroVrid);
        }
        let v6 = src.is_ipv6();
        if v6 && version == Version::V2 {
            return Err(PacketError::V2OverIpv6);
        }
        Ok(Header {
            version,
            vrid,
            priority: buf[2],
            count: buf[3],
            alen: if v6 { 16 } else { 4 },
        })
    }

    /// The exact message length the header promises.
    fn len(&self) -> usize {
        let auth = if self.version == Version::V2 {
            AUTH_LEN
        } else {
            0
        };
        8 + usize::from(self.count) * self.alen + auth
    }

    /// The buffer must be exactly as long as promised.
    fn check_len(&self, have: usize) -> Result<usize, PacketError> {
        let (count, need) = (self.count, self.len());
        if have < need {
            return Err(PacketError::Truncated { count, need, have });
        }
        // keepalived and RFC senders emit exactly this much; extra bytes mean a
        // forged or corrupted packet (or one whose count field lies).
        if have > need {
            return Err(PacketError::TrailingBytes {
                count,
                need,
                extra: have - need,
            });
        }
        Ok(need)
    }

    /// Interval (centiseconds) and authentication; `need` is the checked length.
    fn interval_and_auth(&self, buf: &[u8], need: usize) -> Result<(u16, Auth), PacketError> {
        let (interval_cs, auth) = match self.version {
            Version::V2 => {
                let auth = match buf[4] {
                    0 => Auth::None,
                    1 => {
                        let mut a = [0u8; AUTH_LEN];
                        a.copy_from_slice(&buf[need - AUTH_LEN..need]);
                        Auth::Simple(a)
                    }
                    t => return Err(PacketError::BadAuthType(t)),
                };
                (u16::from(buf[5]) * 100, auth)
            }
            Version::V3 => (u16::from_be_bytes([buf[4] & 0x0f, buf[5]]), Auth::None),
        };
        if interval_cs == 0 {
            return Err(PacketError::ZeroInterval);
        }
        Ok((interval_cs, auth))
    }

    /// The `count` addresses after the fixed part (length already checked).
    fn addrs(&self, buf: &[u8]) -> Vec<IpAddr> {
        buf[8..8 + usize::from(self.count) * self.alen]
            .chunks_exact(self.alen)
            .map(|c| {
                if self.alen == 16 {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(o))
                } else {
                    IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                }
            })
            .collect()
    }
}

/// The checksum field against the one computed with it zeroed.
fn verify_checksum(
    version: Version,
    buf: &[u8],
    src: IpAddr,
    dst: IpAddr,
) -> Result<(), PacketError> {
    let got = u16::from_be_bytes([buf[6], buf[7]]);
    let mut copy = buf.to_vec();
    copy[6] = 0;
    copy[7] = 0;
    let want = checksum_for(version, &copy, src, dst)?;
    if got != want {
        return Err(PacketError::BadChecksum { got, want });
    }
    Ok(())
}

impl Advert {
    /// Decode a VRRP message (the IP payload). `src`/`dst` are the IP header's
    /// addresses; they decide the address family and feed the v3 pseudo-header.
    pub fn decode(buf: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advert, PacketError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(PacketError::FamilyMismatch);
        }
        let h = Header::parse(buf, src)?;
        let need = h.check_len(buf.len())?;
        verify_checksum(h.version, buf, src, dst)?;
        let (interval_cs, auth) = h.interval_and_auth(buf, need)?;
        Ok(Advert {
            version: h.version,
            vrid: h.vrid,
            priority: h.priority,
            interval_cs,
            auth,
            addrs: h.addrs(buf),
        })
    }

    /// Encode as the IP payload for a packet from `src` to `dst`. Addresses of
    /// the other family than `src` are skipped (a v3 IPv4 instance never
    /// carries IPv6 addresses and vice versa). At most 255 addresses are carried.
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, PacketError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(PacketError::FamilyMismatch);
        }
        if self.version == Version::V2 && src.is_ipv6() {
            return Err(PacketError::V2OverIpv6);
        }
        let addrs: Vec<&IpAddr> = self
            .addrs
            .iter()
            .filter(|a| a.is_ipv4() == src.is_ipv4())
            .take(255)
            .collect();
        let mut b = Vec::with_capacity(8 + addrs.len() * 16 + AUTH_LEN);
        b.push((self.version.number() << 4) | 1);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(addrs.len() as u8);
        match self.version {
            Version::V2 => {
                b.push(match self.auth {
                    Auth::None => 0,
                    Auth::Simple(_) => 1,
                });
                b.push((self.interval_cs / 100).clamp(1, 255) as u8);
            }
            Version::V3 => {
                let i = self.interval_cs.min(0x0fff);
                b.extend_from_slice(&i.to_be_bytes());
            }
        }
        b.extend_from_slice(&[0, 0]);
        for a in addrs {
            match a {
                IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            match self.auth {
                Auth::None => b.extend_from_slice(&[0u8; AUTH_LEN]),
                Auth::Simple(p) => b.extend_from_slice(&p),
            }
        }
        let c = checksum_for(self.version, &b, src, dst)?;
        b[6..8].copy_from_slice(&c.to_be_bytes());
        Ok(b)
    }
}

/// The fields of an IPv4 header that VRRP cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
}

/// Split a raw IPv4 datagram (as read from a raw socket) into header and VRRP payload.
pub fn parse_ipv4(buf: &[u8]) -> Result<(Ipv4Header, &[u8]), PacketError> {
    if buf.len() < 20 {
        return Err(PacketError::TooShort {
            len: buf.len(),
            need: 20,
        });
    }
    if buf[0] >> 4 != 4 {
        return Err(PacketError::BadIpHeader("not IPv4"));
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    if ihl < 20 || ihl > buf.len() {
        return Err(PacketError::BadIpHeader("bad header length"));
    }
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    // The kernel may hand us the total length in host order or already
    // trimmed; accept any total that fits, else use what we have.
    let end = if total >= ihl && total <= buf.len() {
        total
    } else {
        buf.len()
    };
    let h = Ipv4Header {
        ttl: buf[8],
        protocol: buf[9],
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
    };
    if h.protocol != IPPROTO_VRRP {
        return Err(PacketError::NotVrrp(h.protocol));
    }
    Ok((h, &buf[ihl..end]))
}

/// Build an IPv4 header + payload for sending with `IP_HDRINCL` (TTL 255, proto 112).
pub fn build_ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0xc0]; // DSCP CS6 like keepalived
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0x40, 0]); // id 0 (kernel fills), DF
    h.push(VRRP_TTL);
    h.push(IPPROTO_VRRP);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = inet_checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

#[cfg(test)]
mod tests;
