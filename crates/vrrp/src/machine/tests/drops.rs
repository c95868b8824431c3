use super::*;

#[test]
fn v2_does_not_learn_interval_and_drops_mismatch() {
    let mut m = Machine::new(cfg(Version::V2, 100, 2, 1000));
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    let mut a = Machine::new(cfg(Version::V2, 200, 1, 2000)).advert(200);
    a.vrid = 51;
    assert_eq!(
        m.handle_event(
            t,
            Event::Advert {
                src: ip(1),
                ttl: 255,
                advert: a
            }
        ),
        Err(DropReason::IntervalMismatch {
            got_cs: 200,
            want_cs: 100
        })
    );
    assert_eq!(m.master_adver_interval(), S);
}

#[test]
fn drops_other_vrid_bad_ttl_auth_and_version() {
    let mut c = cfg(Version::V2, 100, 2, 1000);
    c.auth = Auth::simple("secret");
    let mut m = Machine::new(c.clone());
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    let good = Machine::new(c.clone()).advert(200);
    let ev = |src, ttl, advert| Event::Advert { src, ttl, advert };
    let mut other = good.clone();
    other.vrid = 52;
    assert_eq!(
        m.handle_event(t, ev(ip(1), 255, other)),
        Err(DropReason::OtherVrid(52))
    );
    assert_eq!(
        m.handle_event(t, ev(ip(1), 254, good.clone())),
        Err(DropReason::BadTtl(254))
    );
    let mut wrong = good.clone();
    wrong.auth = Auth::simple("guess");
    assert_eq!(
        m.handle_event(t, ev(ip(1), 255, wrong)),
        Err(DropReason::AuthMismatch)
    );
    let mut v3 = good.clone();
    v3.version = Version::V3;
    assert!(matches!(
        m.handle_event(t, ev(ip(1), 255, v3)),
        Err(DropReason::VersionMismatch { .. })
    ));
    assert_eq!(
        m.handle_event(t, ev(ip(2), 255, good.clone())),
        Err(DropReason::Own)
    );
    // none of these reset the master down timer: it fires on schedule
    m.handle_timeout(t + m.master_down_interval());
    assert_eq!(m.state(), State::Master);
    // unicast mode does not check the TTL
    let mut c2 = c;
    c2.check_ttl = false;
    let mut m2 = Machine::new(c2);
    m2.handle_event(t, Event::Startup).unwrap();
    assert_eq!(m2.handle_event(t, ev(ip(1), 64, good)), Ok(()));
}

#[test]
fn drops_adverts_whose_addresses_differ_from_our_vips() {
    for v in [Version::V2, Version::V3] {
        let mut c = cfg(v, 100, 2, 1000);
        c.vips = vec![ip(100), ip(101)];
        let mut m = Machine::new(c.clone());
        let t = Instant::now();
        m.handle_event(t, Event::Startup).unwrap();
        let ev = |advert| Event::Advert {
            src: ip(1),
            ttl: 255,
            advert,
        };
        let good = Machine::new(c.clone()).advert(200);
        // same set in another order is fine
        let mut reordered = good.clone();
        reordered.addrs.reverse();
        assert_eq!(m.handle_event(t, ev(reordered)), Ok(()));
        for addrs in [vec![ip(100)], vec![ip(100), ip(102)], vec![]] {
            let mut bad = good.clone();
            bad.addrs = addrs;
            let r = m.handle_event(t, ev(bad));
            assert!(
                matches!(r, Err(DropReason::AddressMismatch { .. })),
                "{v:?}: {r:?}"
            );
            assert_eq!(r.unwrap_err().reason(), "address_mismatch");
        }
        // the dropped adverts did not refresh the master down timer
        m.handle_timeout(t + m.master_down_interval());
        assert_eq!(m.state(), State::Master, "{v:?}");
        // vrrp_skip_check_adv_addr
        c.skip_check_adv_addr = true;
        let mut m = Machine::new(c);
        m.handle_event(t, Event::Startup).unwrap();
        let mut other = good.clone();
        other.addrs = vec![ip(99)];
        assert_eq!(m.handle_event(t, ev(other)), Ok(()));
    }
}

#[test]
fn address_check_uses_the_packet_family_only() {
    let mut c = cfg(Version::V3, 100, 2, 1000);
    let v6: IpAddr = "2001:db8::100".parse().unwrap();
    c.vips = vec![ip(100), v6];
    let mut m = Machine::new(c.clone());
    let t = Instant::now();
    m.handle_event(t, Event::Startup).unwrap();
    // what a peer with the same config puts on the wire over IPv4
    let bytes = Machine::new(c)
        .advert(200)
        .encode(ip(1), IpAddr::V4(crate::packet::MCAST_V4))
        .unwrap();
    let adv = Advert::decode(&bytes, ip(1), IpAddr::V4(crate::packet::MCAST_V4)).unwrap();
    assert_eq!(adv.addrs, vec![ip(100)]);
    assert_eq!(
        m.handle_event(
            t,
            Event::Advert {
                src: ip(1),
                ttl: 255,
                advert: adv
            }
        ),
        Ok(())
    );
}
