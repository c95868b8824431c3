use super::*;

fn v6_cfg() -> InstanceConfig {
    crate::config::parse(
        "[[vrrp]]\nname = \"VI_6\"\ninterface = \"eth0\"\nvrid = 6\npriority = 100\nversion = 3\nvirtual_ips = [\"fd00::100/64\"]\n",
    )
    .unwrap()
    .instances
    .remove(0)
}

fn addr(ip: &str, tentative: bool, dad_failed: bool) -> LinkAddr {
    LinkAddr {
        ip: ip.parse().unwrap(),
        prefix: 64,
        tentative,
        dad_failed,
    }
}

#[test]
fn tentative_link_local_means_wait() {
    let cfg = v6_cfg();
    let a = [
        addr("fd00::100", false, false), // the VIP itself is never a source
        addr("fd00::7", false, false),   // global: VRRPv3 over IPv6 needs link-local
        addr("fe80::1", true, false),
    ];
    assert_eq!(
        pick_source(&cfg, &a),
        SourcePick::Tentative("fe80::1".parse().unwrap())
    );
}

#[test]
fn a_finished_link_local_wins_over_a_tentative_one() {
    let cfg = v6_cfg();
    let a = [addr("fe80::1", true, false), addr("fe80::2", false, false)];
    assert_eq!(
        pick_source(&cfg, &a),
        SourcePick::Ready("fe80::2".parse().unwrap())
    );
}

#[test]
fn dad_failure_is_reported_unless_another_candidate_exists() {
    let cfg = v6_cfg();
    assert_eq!(
        pick_source(&cfg, &[addr("fe80::1", true, true)]),
        SourcePick::DadFailed("fe80::1".parse().unwrap())
    );
    assert_eq!(
        pick_source(
            &cfg,
            &[addr("fe80::1", true, true), addr("fe80::2", true, false)]
        ),
        SourcePick::Tentative("fe80::2".parse().unwrap())
    );
    assert_eq!(
        pick_source(&cfg, &[addr("10.0.0.1", false, false)]),
        SourcePick::None
    );
}
