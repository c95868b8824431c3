use super::*;

fn v4(a: &str) -> IpAddr {
    a.parse().unwrap()
}

#[test]
fn v2_roundtrip_with_password() {
    let a = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 100,
        interval_cs: 100,
        auth: Auth::simple("1111"),
        addrs: vec![v4("192.168.1.100"), v4("10.0.0.1")],
    };
    let b = a.encode(v4("10.0.0.2"), v4("224.0.0.18")).unwrap();
    assert_eq!(b.len(), 8 + 8 + 8);
    assert_eq!(b[0], 0x21);
    assert_eq!(b[4], 1);
    assert_eq!(b[5], 1);
    assert_eq!(&b[16..20], b"1111");
    // v2 checksum does not depend on addresses of the IP header
    let d = Advert::decode(&b, v4("1.2.3.4"), v4("224.0.0.18")).unwrap();
    assert_eq!(d, a);
}

#[test]
fn v3_roundtrip_ipv4_and_pseudo_header() {
    let a = Advert {
        version: Version::V3,
        vrid: 7,
        priority: 200,
        interval_cs: 10,
        auth: Auth::None,
        addrs: vec![v4("192.168.1.100")],
    };
    let b = a.encode(v4("10.0.0.2"), v4("224.0.0.18")).unwrap();
    assert_eq!(b[0], 0x31);
    assert_eq!(u16::from_be_bytes([b[4], b[5]]), 10);
    assert_eq!(
        Advert::decode(&b, v4("10.0.0.2"), v4("224.0.0.18")).unwrap(),
        a
    );
    // a different source changes the pseudo-header, so the checksum fails
    assert!(matches!(
        Advert::decode(&b, v4("10.0.0.3"), v4("224.0.0.18")),
        Err(PacketError::BadChecksum { .. })
    ));
}

#[test]
fn v3_roundtrip_ipv6() {
    let a = Advert {
        version: Version::V3,
        vrid: 9,
        priority: 150,
        interval_cs: 100,
        auth: Auth::None,
        addrs: vec!["2001:db8::1".parse().unwrap(), v4("1.1.1.1")],
    };
    let src: IpAddr = "fe80::1".parse().unwrap();
    let b = a.encode(src, IpAddr::V6(MCAST_V6)).unwrap();
    assert_eq!(b.len(), 8 + 16);
    let d = Advert::decode(&b, src, IpAddr::V6(MCAST_V6)).unwrap();
    assert_eq!(d.addrs, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
}

#[test]
fn v3_checksum_verifies_to_zero() {
    let a = Advert {
        version: Version::V3,
        vrid: 51,
        priority: 100,
        interval_cs: 100,
        auth: Auth::None,
        addrs: vec![v4("10.99.0.100")],
    };
    let b = a.encode(v4("10.99.0.1"), v4("224.0.0.18")).unwrap();
    // Verify by recomputing the checksum over pseudo-header + packet: must be 0.
    let ph = pseudo_header(v4("10.99.0.1"), v4("224.0.0.18"), b.len()).unwrap();
    assert_eq!(inet_checksum(&[&ph, &b]), 0);
}

#[test]
fn rejects_malformed() {
    let src = v4("10.0.0.1");
    let dst = v4("224.0.0.18");
    assert!(matches!(
        Advert::decode(&[], src, dst),
        Err(PacketError::TooShort { .. })
    ));
    assert!(matches!(
        Advert::decode(&[0x41, 1, 1, 0, 0, 1, 0, 0], src, dst),
        Err(PacketError::BadVersion(4))
    ));
    assert!(matches!(
        Advert::decode(&[0x32, 1, 1, 0, 0, 1, 0, 0], src, dst),
        Err(PacketError::BadType(2))
    ));
    assert!(matches!(
        Advert::decode(&[0x31, 0, 1, 0, 0, 1, 0, 0], src, dst),
        Err(PacketError::ZeroVrid)
    ));
    assert!(matches!(
        Advert::decode(&[0x31, 1, 1, 3, 0, 1, 0, 0], src, dst),
        Err(PacketError::Truncated { .. })
    ));
    let ok = Advert {
        version: Version::V3,
        vrid: 1,
        priority: 1,
        interval_cs: 0,
        auth: Auth::None,
        addrs: vec![],
    }
    .encode(src, dst)
    .unwrap();
    assert_eq!(
        Advert::decode(&ok, src, dst),
        Err(PacketError::ZeroInterval)
    );
    let v6: IpAddr = "fe80::1".parse().unwrap();
    assert_eq!(
        Advert::decode(&ok, v6, dst),
        Err(PacketError::FamilyMismatch)
    );
}

#[test]
fn rejects_trailing_bytes() {
    let src = v4("10.0.0.1");
    let dst = v4("224.0.0.18");
    for version in [Version::V2, Version::V3] {
        let a = Advert {
            version,
            vrid: 1,
            priority: 100,
            interval_cs: 100,
            auth: Auth::None,
            addrs: vec![v4("10.0.0.100")],
        };
        let mut b = a.encode(src, dst).unwrap();
        assert_eq!(Advert::decode(&b, src, dst).unwrap(), a);
        b.extend_from_slice(&[10, 0, 0, 101]);
        // fix the checksum so only the length is wrong
        b[6] = 0;
        b[7] = 0;
        let c = checksum_for(version, &b, src, dst).unwrap();
        b[6..8].copy_from_slice(&c.to_be_bytes());
        let e = Advert::decode(&b, src, dst).unwrap_err();
        assert!(
            matches!(e, PacketError::TrailingBytes { extra: 4, .. }),
            "{version:?}: {e:?}"
        );
        assert_eq!(e.reason(), "trailing_bytes");
    }
}

#[test]
fn ipv4_header_roundtrip() {
    let p = build_ipv4(Ipv4Addr::new(10, 0, 0, 1), MCAST_V4, &[1, 2, 3]);
    let (h, pl) = parse_ipv4(&p).unwrap();
    assert_eq!(h.ttl, 255);
    assert_eq!(h.dst, MCAST_V4);
    assert_eq!(pl, &[1, 2, 3]);
    assert_eq!(inet_checksum(&[&p[..20]]), 0);
}

/// Random bytes never panic the parsers (CI stand-in for the cargo-fuzz target).
#[test]
fn random_bytes_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let srcs = [v4("10.0.0.1"), "fe80::1".parse().unwrap()];
    let dsts = [v4("224.0.0.18"), IpAddr::V6(MCAST_V6)];
    let mut accepted = 0;
    for i in 0..200_000u32 {
        let len = (next() % 64) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // bias some inputs towards valid-looking headers so deeper code runs
        if i % 2 == 0 && len >= 8 {
            buf[0] = if i % 4 == 0 { 0x21 } else { 0x31 };
            buf[3] %= 4;
            let fam = (i / 2 % 2) as usize;
            // mostly exact lengths (trailing bytes are rejected), sometimes not
            if i % 8 != 0 {
                let alen = if fam == 0 { 4 } else { 16 };
                let need =
                    8 + usize::from(buf[3]) * alen + if buf[0] == 0x21 { AUTH_LEN } else { 0 };
                buf.truncate(need);
            }
            let c = checksum_for(
                if buf[0] == 0x21 {
                    Version::V2
                } else {
                    Version::V3
                },
                &{
                    let mut c = buf.clone();
                    c[6] = 0;
                    c[7] = 0;
                    c
                },
                srcs[fam],
                dsts[fam],
            )
            .unwrap();
            buf[6..8].copy_from_slice(&c.to_be_bytes());
            if Advert::decode(&buf, srcs[fam], dsts[fam]).is_ok() {
                accepted += 1;
            }
        } else {
            let _ = Advert::decode(&buf, srcs[i as usize % 2], dsts[i as usize % 2]);
            let _ = parse_ipv4(&buf);
        }
    }
    // the biased half must reach the success path sometimes, or the test is vacuous
    assert!(accepted > 100, "accepted only {accepted}");
}

/// The checks run in a fixed order: the checksum before the fields it
/// covers, so a corrupted auth type reads as corruption.
#[test]
fn checksum_is_checked_before_auth_type_and_v2_needs_ipv4() {
    let src = v4("10.0.0.1");
    let dst = v4("224.0.0.18");
    let mut b = Advert {
        version: Version::V2,
        vrid: 9,
        priority: 100,
        interval_cs: 100,
        auth: Auth::None,
        addrs: vec![v4("10.0.0.100")],
    }
    .encode(src, dst)
    .unwrap();
    b[4] = 2; // AH, not supported
    assert!(matches!(
        Advert::decode(&b, src, dst),
        Err(PacketError::BadChecksum { .. })
    ));
    b[6] = 0;
    b[7] = 0;
    let cs = crate::packet::inet_checksum(&[&b]);
    b[6..8].copy_from_slice(&cs.to_be_bytes());
    assert_eq!(
        Advert::decode(&b, src, dst),
        Err(PacketError::BadAuthType(2))
    );
    let (s6, d6): (IpAddr, IpAddr) = ("fe80::1".parse().unwrap(), "ff02::12".parse().unwrap());
    assert_eq!(Advert::decode(&b, s6, d6), Err(PacketError::V2OverIpv6));
}
