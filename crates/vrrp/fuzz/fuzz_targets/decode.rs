//! Fuzz the VRRP and IPv4 header parsers: never panic, and anything accepted
//! must survive an encode/decode round trip unchanged.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use syncd_vrrp::packet::{parse_ipv4, Advert, MCAST_V4, MCAST_V6};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    if let Ok((h, payload)) = parse_ipv4(body) {
        let _ = Advert::decode(payload, IpAddr::V4(h.src), IpAddr::V4(h.dst));
    }
    let (src, dst): (IpAddr, IpAddr) = if sel & 1 == 0 {
        ("10.0.0.1".parse().unwrap(), IpAddr::V4(MCAST_V4))
    } else {
        ("fe80::1".parse().unwrap(), IpAddr::V6(MCAST_V6))
    };
    if let Ok(a) = Advert::decode(body, src, dst) {
        let again = a.encode(src, dst).expect("an accepted advert must encode");
        assert_eq!(Advert::decode(&again, src, dst).as_ref(), Ok(&a));
    }
});
