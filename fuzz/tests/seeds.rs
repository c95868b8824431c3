//! Writes the hand-made seed inputs into `corpus/<target>/seed-*` (ignored
//! by default; run it when adding a target, then minimise with
//! `scripts/fuzz.sh`, which merges):
//!
//!     cargo test --manifest-path fuzz/Cargo.toml --no-default-features --test seeds -- --ignored

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use syncd_proto::pair::lineage::{Generation, Lineage, NodeId};

use syncd::wire::{Encoding, Entry, Failure, Kind, Meta, Purpose, Reply, Request};
use syncd_proto::path::RelPath;
use syncd_vrrp::packet::{Advert, Auth, Version};

fn put(target: &str, name: &str, data: &[u8]) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("seed-{name}")), data).unwrap();
}

fn file(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)).unwrap()
}

fn rp(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

const META: Meta = Meta {
    mode: 0o100644,
    uid: 1000,
    gid: 1000,
    mtime_sec: 1_700_000_000,
    mtime_nsec: 5,
};

fn lineage() -> Lineage {
    Lineage {
        gen: Generation {
            counter: 3,
            node: NodeId(7),
        },
        commit: 42,
        history: vec![(
            Generation {
                counter: 2,
                node: NodeId(9),
            },
            40,
        )],
    }
}

#[test]
#[ignore]
fn write_seeds() {
    let reqs = [
        Request::Hello {
            version: syncd::wire::PROTOCOL_VERSION,
            export_id: "default".into(),
            node_id: "a".into(),
            purpose: Purpose::Resync,
            node: NodeId(7),
            lineage: lineage(),
        },
        Request::PeerState {
            leading: true,
            lineage: lineage(),
        },
        Request::Ask { priority: 150 },
        Request::Answer { grant: false },
        Request::List { checksum: true },
        Request::Mkdir {
            path: rp("d/e"),
            meta: META,
        },
        Request::Rename {
            from: rp("a"),
            to: rp("b/c"),
        },
        Request::Symlink {
            path: rp("l"),
            target: b"../x".to_vec(),
            meta: META,
        },
        Request::FileBegin {
            id: 9,
            path: rp("f"),
            meta: META,
            size: 3,
            encoding: Encoding::Delta,
        },
        Request::FileData {
            id: 9,
            data: b"abc".to_vec(),
        },
        Request::FileEnd {
            id: 9,
            hash: [7; 32],
        },
        Request::Finish,
    ];
    for (i, r) in reqs.iter().enumerate() {
        put(
            "wire_request",
            &i.to_string(),
            &postcard::to_stdvec(r).unwrap(),
        );
    }
    let replies = [
        Reply::Welcome {
            version: syncd::wire::PROTOCOL_VERSION,
            node_id: "b".into(),
            node: NodeId(9),
            lineage: lineage(),
        },
        Reply::Refused {
            reason: "newer data".into(),
            lineage: Some(lineage()),
        },
        Reply::ListChunk {
            entries: vec![
                Entry {
                    path: rp("f"),
                    kind: Kind::File {
                        size: 3,
                        hash: Some([1; 32]),
                    },
                    meta: META,
                    ino: 2,
                },
                Entry {
                    path: rp("h"),
                    kind: Kind::HardLink { leader: rp("f") },
                    meta: META,
                    ino: 2,
                },
            ],
        },
        Reply::Signature {
            id: 1,
            data: vec![0x72, 0x73, 0x01, 0x47],
        },
        Reply::BarrierDone {
            id: 3,
            failures: vec![Failure {
                path: rp("x"),
                error: "EIO".into(),
                retry_whole: true,
            }],
        },
        Reply::Finished { committed: 10 },
    ];
    // A Welcome with the standby's metadata policy after it, as sent.
    put(
        "wire_reply",
        "welcome-policy",
        &postcard::to_stdvec(&(
            &replies[0],
            &syncd::meta_policy::MetaPolicy {
                owners: syncd::meta_policy::Owners::Fixed { uid: 1, gid: 2 },
                strip_setid: true,
            },
        ))
        .unwrap(),
    );
    for (i, r) in replies.iter().enumerate() {
        put(
            "wire_reply",
            &i.to_string(),
            &postcard::to_stdvec(r).unwrap(),
        );
    }

    put("relpath", "raw", b"a/b/c.txt");
    put(
        "relpath",
        "postcard",
        &postcard::to_stdvec(&rp("dir/file")).unwrap(),
    );
    put("relpath", "dotdot", b"a/../b");

    // delta_apply: limit byte, base length, base, segment made by the real differ.
    let base = b"the quick brown fox jumps over the lazy dog, again and again".repeat(40);
    let mut new = base.clone();
    new[100..110].copy_from_slice(b"0123456789");
    new.extend_from_slice(b"tail");
    let (block, strong) = (512, 8);
    let sig = syncd::delta::signature(&base[..], base.len() as u64, block, strong).unwrap();
    let differ = syncd::delta::Differ::new(sig).unwrap();
    let mut seg = Vec::new();
    differ.indexed().diff(&new, &mut seg).unwrap();
    let mut input = vec![0xff];
    input.extend_from_slice(&(base.len() as u16).to_le_bytes());
    input.extend_from_slice(&base);
    input.extend_from_slice(&seg);
    put("delta_apply", "copy-and-literal", &input);
    let mut lit = Vec::new();
    syncd::delta::Differ::new(syncd::delta::signature(&b""[..], 0, 1024, 8).unwrap())
        .unwrap()
        .indexed()
        .diff(b"hello", &mut lit)
        .unwrap();
    let mut input = vec![1, 0, 0];
    input.extend_from_slice(&lit);
    put("delta_apply", "literal", &input);

    // vrrp_packet: selector byte, then the payload (or IPv4 datagram).
    let v4 = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18)),
    );
    let v6 = (
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12)),
    );
    let v2 = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 100,
        interval_cs: 100,
        auth: Auth::simple("secret"),
        addrs: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100))],
    };
    let v3 = Advert {
        version: Version::V3,
        vrid: 7,
        priority: 255,
        interval_cs: 50,
        auth: Auth::None,
        addrs: vec![
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        ],
    };
    let v3_6 = Advert {
        version: Version::V3,
        vrid: 7,
        priority: 90,
        interval_cs: 100,
        auth: Auth::None,
        addrs: vec![IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))],
    };
    let mut p = vec![0];
    p.extend(v2.encode(v4.0, v4.1).unwrap());
    put("vrrp_packet", "v2", &p);
    let mut p = vec![0];
    p.extend(v3.encode(v4.0, v4.1).unwrap());
    put("vrrp_packet", "v3", &p);
    let mut p = vec![1];
    p.extend(v3_6.encode(v6.0, v6.1).unwrap());
    put("vrrp_packet", "v3-ipv6", &p);
    let mut p = vec![2];
    p.extend(syncd_vrrp::packet::build_ipv4(
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(224, 0, 0, 18),
        &v3.encode(v4.0, v4.1).unwrap(),
    ));
    put("vrrp_packet", "ipv4-datagram", &p);

    put("vrrp_config", "example", &file("contrib/vrrp.example.toml"));
    put(
        "proxy_config",
        "example",
        &file("contrib/proxy.example.toml"),
    );
    put(
        "syncd_config",
        "example",
        &file("contrib/syncd.example.toml"),
    );
    put(
        "syncd_config",
        "minimal",
        b"export = \"export\"\ncert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"keys/peer.crt\"\nlisten = \"127.0.0.1:7400\"\n[sync]\ndelete = true\n",
    );
    put(
        "syncd_config",
        "fingerprint",
        b"export = \"export\"\ncert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_fingerprint = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\npeer = \"[::1]:7400\"\n",
    );
    put(
        "syncd_config",
        "standby",
        b"export = \"export\"\ncert = \"keys/node.crt\"\nkey = \"keys/node.key\"\npeer_cert = \"keys/peer.crt\"\nlisten = \"127.0.0.1:7400\"\n[standby]\nowners = \"65534:65534\"\nstrip_setid = true\n",
    );
    put("keepalived_import", "conf", KEEPALIVED.as_bytes());

    put(
        "fingerprint",
        "plain",
        b"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    );
    put(
        "fingerprint",
        "colons",
        b"01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef",
    );

    // index_load: a real index file, written by Index::save.
    let d = std::env::temp_dir().join(format!("syncd-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let mut ix = syncd::index::Index::load(&d.join("index"));
    let st = syncd::index::Stamp {
        size: 3,
        mtime: (1_700_000_000, 1),
        ctime: (1_700_000_000, 2),
        ino: 42,
    };
    ix.insert(b"a/b".to_vec(), st, [3; 32]);
    ix.insert(b"c".to_vec(), st, [4; 32]);
    ix.save().unwrap();
    put(
        "index_load",
        "two",
        &std::fs::read(d.join("index")).unwrap(),
    );
    // sigcache: a file as `put` writes it for the target's stamp and options.
    let mut sc = b"SYNCDSG1".to_vec();
    let st = syncd::index::Stamp {
        size: 7,
        mtime: (1, 2),
        ctime: (3, 4),
        ino: 5,
    };
    sc.extend(postcard::to_stdvec(&(st, 1024u32, 8u32)).unwrap());
    sc.extend_from_slice(&[0x72, 0x73, 0x01, 0x36, 0, 0, 4, 0, 0, 0, 0, 8]);
    put("sigcache", "hit", &sc);
    let _ = std::fs::remove_dir_all(&d);

    put(
        "proxy_head",
        "chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    put(
        "proxy_head",
        "length",
        b"HTTP/1.0 404 Not Found\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
    );
    put("proxy_head", "partial", b"HTTP/1.1 100 Continue\r\nX: y");
    put(
        "proxy_request",
        "get",
        b"\x10GET /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    );
    put(
        "proxy_request",
        "chunked",
        b"\x20POST /u HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    put(
        "proxy_request",
        "cl-te",
        b"\x20POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    put("proxy_lengths", "hex", b"1aF;name=value");
    put("proxy_lengths", "dec", b"12345");
    put("proxy_lengths", "plus", b"+5");
    put("status_line", "ok", b"HTTP/1.1 204 No Content\r\n");
    put("status_line", "http10", b"HTTP/1.0 500 x");
}

const KEEPALIVED: &str = r#"
! Configuration File for keepalived
global_defs {
  router_id master-node
  vrrp_version 3
}
vrrp_script chk_nginx {
    script "/etc/keepalived/check_nginx.sh"
    interval 2
    weight -20
    fall 3
    rise 2
}
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 100
    advert_int 1
    authentication {
        auth_type PASS
        auth_pass 1111
    }
    unicast_peer {
        192.168.1.11
    }
    virtual_ipaddress {
        192.168.1.100/24 dev eth0 label eth0:1
    }
    track_script {
        chk_nginx
    }
    notify_master "/usr/local/bin/master.sh"
}
"#;
