use super::*;
use std::path::Path;

fn cfg(dir: &Path, body: &str) -> Config {
    Config::parse(body, &dir.join("x.toml")).unwrap()
}

struct Lab {
    _d: tempfile::TempDir,
    a: Config,
    b: Config,
    fa: Fingerprint,
    fb: Fingerprint,
}

fn lab(extra_a: &str, extra_b: &str, vrrp_a: &str, vrrp_b: &str) -> Lab {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir(p.join("export")).unwrap();
    let fa = crate::tls::keygen(&p.join("a"), "a").unwrap();
    let fb = crate::tls::keygen(&p.join("b"), "b").unwrap();
    let base = |me: &str, other: &str, ip: &str, pip: &str, extra: &str, v: &str| {
        format!(
            "export = \"export\"\nlisten = \"{ip}:7400\"\npeer = \"{pip}:7400\"\ncert = \"{me}/node.crt\"\nkey = \"{me}/node.key\"\npeer_cert = \"{other}/node.crt\"\n{extra}\n{v}"
        )
    };
    let a = cfg(p, &base("a", "b", "10.0.0.1", "10.0.0.2", extra_a, vrrp_a));
    let b = cfg(p, &base("b", "a", "10.0.0.2", "10.0.0.1", extra_b, vrrp_b));
    Lab {
        _d: d,
        a,
        b,
        fa,
        fb,
    }
}

fn run(l: &Lab) -> Vec<Finding> {
    compare(
        &Node {
            name: "a",
            cfg: &l.a,
            cert: Some(l.fa),
        },
        &Node {
            name: "b",
            cfg: &l.b,
            cert: Some(l.fb),
        },
    )
}

fn vrrp(prio: u32, extra: &str) -> String {
    format!("[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\npriority = {prio}\nvirtual_ips = [\"10.0.0.100/24\"]\n{extra}\n")
}

#[test]
fn a_matching_pair_has_no_findings() {
    let l = lab("", "", &vrrp(150, ""), &vrrp(100, ""));
    assert_eq!(run(&l), vec![]);
}

#[test]
fn every_splitting_difference_is_an_error() {
    let l = lab(
        "export_id = \"web\"",
        "",
        &vrrp(150, "advert_int = 2\nauth_pass = \"x\"\nversion = 2"),
        &vrrp(100, "version = 3").replace("vrid = 51", "vrid = 1"),
    );
    let f = run(&l);
    let text: Vec<String> = f.iter().map(|x| x.to_string()).collect();
    for want in [
        "export_id differs",
        "vrid differs (a 51, b 1)",
        "version differs",
        "advert_int differs",
        "auth_pass differs",
    ] {
        assert!(
            text.iter()
                .any(|t| t.starts_with("error:") && t.contains(want)),
            "{want} missing in {text:#?}"
        );
    }
}

#[test]
fn instances_pair_by_name_and_v3_intervals_are_warnings() {
    let two = |a: &str, b: &str| {
        format!(
            "{}{}",
            vrrp(150, &format!("name = \"{a}\"\nversion = 3")).replace(
                "vrid = 51",
                &format!("vrid = {}", if a == "A" { 51 } else { 52 })
            ),
            vrrp(150, &format!("name = \"{b}\"\nversion = 3")).replace(
                "vrid = 51",
                &format!("vrid = {}", if b == "A" { 51 } else { 52 })
            ),
        )
    };
    // Same instances, listed in another order, other priorities.
    let l = lab("", "", &two("A", "B"), &two("B", "A").replace("150", "100"));
    assert_eq!(run(&l), vec![], "{:#?}", run(&l));
    let l = lab(
        "",
        "",
        &vrrp(150, "version = 3\nadvert_int = 2"),
        &vrrp(100, "version = 3"),
    );
    let f = run(&l);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].severity, Severity::Warning, "{f:#?}");
}

#[test]
fn wrong_pins_and_addresses_are_errors() {
    let mut l = lab("", "", "", "");
    // b pins a fingerprint that is not a's, and dials the wrong port.
    l.b.peer_pin = PeerPin::Fingerprint(l.fb);
    l.b.peer = Some("10.0.0.1:7401".parse().unwrap());
    let text: Vec<String> = run(&l).iter().map(|x| x.to_string()).collect();
    assert!(
        text.iter().any(|t| t.starts_with("error: b pins")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("use different ports")),
        "{text:#?}"
    );
    // The same certificate on both nodes.
    l.b.peer_pin = PeerPin::Fingerprint(l.fa);
    l.b.peer = Some("10.0.0.1:7400".parse().unwrap());
    l.fb = l.fa;
    l.a.peer_pin = PeerPin::Fingerprint(l.fa);
    let text: Vec<String> = run(&l).iter().map(|x| x.to_string()).collect();
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(text[0].contains("use the same certificate"), "{text:#?}");
}

#[test]
fn unicast_peers_must_name_each_other() {
    let l = lab(
        "",
        "",
        &vrrp(
            150,
            "unicast_src = \"10.0.0.1\"\nunicast_peers = [\"10.0.0.9\"]",
        ),
        &vrrp(
            100,
            "unicast_src = \"10.0.0.2\"\nunicast_peers = [\"10.0.0.1\"]",
        ),
    );
    let text: Vec<String> = run(&l).iter().map(|x| x.to_string()).collect();
    assert_eq!(text.len(), 1, "{text:#?}");
    assert!(
        text[0].contains("a's unicast_peers [10.0.0.9] lack b's address 10.0.0.2"),
        "{text:#?}"
    );
    let l = lab(
        "",
        "",
        &vrrp(150, "unicast_peers = [\"10.0.0.2\"]"),
        &vrrp(100, ""),
    );
    let text: Vec<String> = run(&l).iter().map(|x| x.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("the other multicast")),
        "{text:#?}"
    );
}

#[test]
fn equal_priorities_and_sync_options_are_warnings() {
    let l = lab("[sync]\ndelete = false", "", &vrrp(100, ""), &vrrp(100, ""));
    let f = run(&l);
    assert!(f.iter().all(|x| x.severity == Severity::Warning), "{f:#?}");
    assert_eq!(f.len(), 2, "{f:#?}");
}

#[test]
fn the_handshake_reports_refusals_and_versions() {
    let ours = Lineage::default();
    let f = reached(
        &Reached::Refused("export_id \"x\"".into()),
        NodeId(1),
        &ours,
    );
    assert_eq!(f[0].severity, Severity::Error);
    let welcome = |version, speaks| Reached::Welcome {
        version,
        speaks,
        node_id: "b".into(),
        lineage: Lineage::default(),
    };
    // The previous release: they pair, and the warning says what next.
    let f = reached(&welcome(6, Speaks::only(6)), NodeId(1), &ours);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(
        f[0].what
            .contains("the peer speaks protocol 6, this node 6 to 8"),
        "{f:?}"
    );
    assert!(f[0].what.contains("upgrade the peer next"), "{f:?}");
    assert!(f[0].what.contains("does not take the lead"), "{f:?}");
    // A release of protocol 7: it pairs, and an auto node may lead.
    let f = reached(&welcome(7, Speaks { min: 6, max: 7 }), NodeId(1), &ours);
    assert!(f[0].what.contains("upgrade the peer next"), "{f:?}");
    assert!(!f[0].what.contains("does not take the lead"), "{f:?}");
    // A later release that still speaks ours.
    let f = reached(&welcome(8, Speaks { min: 8, max: 9 }), NodeId(1), &ours);
    assert!(f[0].what.contains("upgrade this node next"), "{f:?}");
    // The same release: nothing to say.
    assert!(reached(&welcome(8, Speaks::OURS), NodeId(1), &ours).is_empty());
}
