//! Everything a peer controls is bounded: a hostile (certificate-holding)
//! primary against the real standby, and a hostile standby against the
//! primary's session. Each case must end with a clear error, leave the
//! standby's export unchanged and the standby serving the next session.

mod common;

use std::time::{Duration, Instant};

use common::{snapshot, Pair};
use syncd::primary::{ClientError, Session};
use syncd::wire::{Encoding, Meta, Purpose, Reply, Request};
use syncd_proto::path::RelPath;

const META: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime_sec: 0,
    mtime_nsec: 0,
};

fn rp(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn primary_cfg(p: &Pair) -> syncd::config::Config {
    syncd::config::Config::load(&p.path("primary.toml")).unwrap()
}

/// The standby still runs, its staging area is empty, and an honest resync
/// goes through.
fn assert_serving(p: &mut Pair) {
    assert!(
        p.standby.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the standby died:\n{}",
        p.log()
    );
    std::fs::write(p.primary().join("honest"), b"after the attack").unwrap();
    p.resync(&[]);
    assert_eq!(
        std::fs::read(p.standby_dir().join("honest")).unwrap(),
        b"after the attack"
    );
}

/// A standby export with one file, and a primary export that agrees.
fn pair_with_base() -> Pair {
    let mut p = Pair::new();
    let base: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    std::fs::write(p.standby_dir().join("base.bin"), &base).unwrap();
    std::fs::write(p.primary().join("base.bin"), &base).unwrap();
    p.start_standby();
    p
}

/// What a reader sees (staged files are unnamed; `snapshot` checks that
/// nothing of syncd's is in the export).
fn visible(p: &Pair) -> std::collections::BTreeMap<Vec<u8>, String> {
    snapshot(&p.standby_dir())
}

#[test]
fn a_thousand_files_begun_without_end_end_the_session() {
    let mut p = pair_with_base();
    let before = visible(&p);
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        for id in 0..1000u64 {
            let sent = s
                .send(&Request::FileBegin {
                    id,
                    // Each a delta: a staged file, the base open, a 1 MiB buffer.
                    path: rp("base.bin"),
                    meta: META,
                    size: 10,
                    encoding: Encoding::Delta,
                })
                .await;
            if sent.is_err() {
                break; // the standby has already ended the session
            }
        }
        s.barrier(1).await
    });
    match r {
        Err(ClientError::Fatal(why)) => {
            assert!(why.contains("too many files in flight"), "{why}")
        }
        other => panic!("1000 files in flight were accepted: {other:?}"),
    }
    assert_eq!(visible(&p), before, "the export changed");
    assert_serving(&mut p);
}

#[test]
fn a_file_declared_at_one_exbibyte_fails_before_staging() {
    let mut p = pair_with_base();
    let before = visible(&p);
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let failures = rt.block_on(async {
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        // As a delta of the base: a few copy instructions would fill the disk.
        s.send(&Request::FileBegin {
            id: 1,
            path: rp("base.bin"),
            meta: META,
            size: 1 << 60,
            encoding: Encoding::Delta,
        })
        .await
        .unwrap();
        let mut seg = 0x7273_0236u32.to_be_bytes().to_vec();
        for _ in 0..1000 {
            // copy 64 KiB from offset 0 (2-byte offset, 4-byte length)
            seg.extend_from_slice(&[0x4b, 0, 0, 0, 1, 0, 0]);
        }
        seg.push(0);
        s.send(&Request::DeltaSegment { id: 1, data: seg })
            .await
            .unwrap();
        s.send(&Request::FileEnd {
            id: 1,
            hash: [0; 32],
        })
        .await
        .unwrap();
        let f = s.barrier(1).await.unwrap();
        let _ = s.finish().await;
        f
    });
    assert_eq!(failures.len(), 1, "{failures:?}");
    let e = &failures[0].error;
    assert!(
        e.contains("declared size") && e.contains("No space left on device"),
        "{e}"
    );
    assert_eq!(visible(&p), before, "the export changed");
    assert_serving(&mut p);
}

#[test]
fn a_delta_copying_past_the_declared_size_is_refused() {
    let mut p = pair_with_base();
    let before = visible(&p);
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let failures = rt.block_on(async {
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        s.send(&Request::FileBegin {
            id: 1,
            path: rp("base.bin"),
            meta: META,
            size: 100,
            encoding: Encoding::Delta,
        })
        .await
        .unwrap();
        let mut seg = 0x7273_0236u32.to_be_bytes().to_vec();
        for _ in 0..10 {
            // copy 64 bytes from offset 0 (1-byte offset, 1-byte length)
            seg.extend_from_slice(&[0x45, 0, 64]);
        }
        seg.push(0);
        s.send(&Request::DeltaSegment { id: 1, data: seg })
            .await
            .unwrap();
        s.send(&Request::FileEnd {
            id: 1,
            hash: [0; 32],
        })
        .await
        .unwrap();
        let f = s.barrier(1).await.unwrap();
        let _ = s.finish().await;
        f
    });
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].error.contains("more than the announced size"),
        "{failures:?}"
    );
    assert_eq!(visible(&p), before, "the export changed");
    assert_serving(&mut p);
}

#[test]
fn a_flood_of_verify_sessions_is_refused_beyond_the_limit() {
    let mut p = pair_with_base();
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut open = Vec::new();
        for _ in 0..syncd::standby::MAX_VERIFY_SESSIONS {
            open.push(Session::connect(&cfg, Purpose::Verify, &me).await.unwrap());
        }
        for _ in 0..3 {
            match Session::connect(&cfg, Purpose::Verify, &me).await {
                Err(ClientError::Refused(why, _)) => {
                    assert!(why.contains("too many verify sessions"), "{why}")
                }
                Err(e) => panic!("refused without a clear reason: {e}"),
                Ok(_) => panic!("a verify session beyond the limit was accepted"),
            }
        }
        // Writing sessions are not verify sessions: still served.
        let w = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        w.finish().await.unwrap();
        for s in open {
            s.finish().await.unwrap();
        }
        // Slots are given back when sessions end.
        let t = Instant::now();
        loop {
            match Session::connect(&cfg, Purpose::Verify, &me).await {
                Ok(s) => {
                    s.finish().await.unwrap();
                    break;
                }
                Err(e) => {
                    assert!(t.elapsed() < Duration::from_secs(10), "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    assert_serving(&mut p);
}

#[test]
fn failures_beyond_the_cap_are_counted_not_kept() {
    let mut p = pair_with_base();
    let before = visible(&p);
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let extra = 25;
    let (failures, dropped) = rt.block_on(async {
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        for id in 0..(syncd::standby::MAX_FAILURES + extra) as u64 {
            // A wrong hash: never committed, reported as a failure.
            s.send(&Request::FileBegin {
                id,
                path: rp(&format!("bad-{id}")),
                meta: META,
                size: 1,
                encoding: Encoding::Whole,
            })
            .await
            .unwrap();
            s.send(&Request::FileData {
                id,
                data: b"x".to_vec(),
            })
            .await
            .unwrap();
            s.send(&Request::FileEnd { id, hash: [0; 32] })
                .await
                .unwrap();
        }
        let f = s.barrier(1).await.unwrap();
        let dropped = s.take_failures_dropped();
        s.finish().await.unwrap();
        (f, dropped)
    });
    assert_eq!(failures.len(), syncd::standby::MAX_FAILURES);
    assert_eq!(dropped, extra as u64);
    assert_eq!(visible(&p), before, "the export changed");
    assert_serving(&mut p);
}

/// A standby that answers the handshake, then `behave`s on the control stream.
async fn fake_standby<F, Fut>(p: &Pair, behave: F) -> std::net::SocketAddr
where
    F: FnOnce(quinn::SendStream, quinn::RecvStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cfg = syncd::config::Config::load(&p.path("standby.toml")).unwrap();
    let id = syncd::tls::Identity::from_config(&cfg).unwrap();
    let node = syncd::generation::node_id(&id);
    let sc = syncd::tls::server_config(&id).unwrap();
    let ep = quinn::Endpoint::server(sc, cfg.listen.unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = ep.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut buf = Vec::new();
        let _hello: Option<Request> = syncd::wire::read_msg(&mut recv, &mut buf).await.unwrap();
        let welcome = Reply::Welcome {
            version: syncd::wire::PROTOCOL_VERSION,
            node_id: "fake".into(),
            node,
            lineage: Default::default(),
        };
        syncd::wire::write_msg(&mut send, &welcome, &mut buf)
            .await
            .unwrap();
        behave(send, recv).await;
        drop(conn);
        drop(ep);
    });
    addr
}

#[test]
fn a_standby_that_stops_replying_ends_the_session_at_the_deadline() {
    let p = Pair::new();
    let toml = std::fs::read_to_string(p.path("primary.toml")).unwrap();
    std::fs::write(
        p.path("primary.toml"),
        format!("{toml}[sync]\nreply_timeout_secs = 2\n"),
    )
    .unwrap();
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Hung: reads requests, answers nothing; the connection (and its
        // keep-alives) stays up.
        fake_standby(&p, |send, mut recv| async move {
            let _open = send; // dropping it would end the stream
            let mut buf = Vec::new();
            while let Ok(Some(_)) = syncd::wire::read_msg::<_, Request>(&mut recv, &mut buf).await {
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
        .await;
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), s.barrier(1))
            .await
            .expect("the primary waited for a hung standby past its deadline");
        match r {
            Err(e @ ClientError::Timeout(_)) => {
                let msg = e.to_string();
                assert!(msg.contains("no reply from the standby within"), "{msg}");
            }
            other => panic!("expected a reply timeout, got {other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_secs(2));
    });
}

#[test]
fn an_endless_list_from_the_standby_is_refused() {
    let p = Pair::new();
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        fake_standby(&p, |mut send, mut recv| async move {
            let mut buf = Vec::new();
            let _list: Option<Request> = syncd::wire::read_msg(&mut recv, &mut buf).await.unwrap();
            let entries: Vec<syncd::wire::Entry> = (0..1000)
                .map(|i| syncd::wire::Entry {
                    path: rp(&format!("f{i}")),
                    kind: syncd::wire::Kind::Dir,
                    meta: META,
                    ino: i,
                })
                .collect();
            // Never a ListEnd.
            loop {
                let chunk = Reply::ListChunk {
                    entries: entries.clone(),
                };
                if syncd::wire::write_msg(&mut send, &chunk, &mut buf)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
        .await;
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        s.set_list_limits(100_000, 1 << 30);
        let r = tokio::time::timeout(Duration::from_secs(10), s.list(false))
            .await
            .expect("the primary kept taking an endless list");
        match r {
            Err(e) => assert!(e.to_string().contains("list exceeds"), "{e}"),
            Ok(l) => panic!("an endless list ended with {} entries", l.len()),
        }
    });
}

/// Bytes the process has read so far (`rchar`): how far a hash has got.
fn read_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// `syncd verify` rehashes the whole standby export; a live commit made
/// meanwhile must not wait for it (the index is not locked while hashing).
#[test]
fn a_commit_completes_while_a_verify_rehashes_the_standby() {
    let mut p = Pair::new();
    // Without syncfs the commit's time is the lock's, not the disk's.
    let toml = std::fs::read_to_string(p.path("standby.toml")).unwrap();
    std::fs::write(
        p.path("standby.toml"),
        format!("{toml}[sync]\ndurable = false\n"),
    )
    .unwrap();
    const FILES: usize = 64;
    const SIZE: usize = 4 << 20; // 256 MiB in all
    std::fs::create_dir(p.standby_dir().join("big")).unwrap();
    for i in 0..FILES {
        std::fs::write(
            p.standby_dir().join(format!("big/{i:02}")),
            vec![i as u8; SIZE],
        )
        .unwrap();
    }
    p.start_standby();
    let pid = p.standby.as_ref().unwrap().id();
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut w = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        let mut v = Session::connect(&cfg, Purpose::Verify, &me).await.unwrap();
        let start = read_bytes(pid);
        let verify = tokio::spawn(async move {
            let r = v.list(true).await;
            let _ = v.finish().await;
            r
        });
        // Hashing is under way once the standby has read 16 MiB.
        while read_bytes(pid) - start < 16 << 20 {
            assert!(!verify.is_finished(), "the verify ended before hashing");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let data = b"live".to_vec();
        let hash = *blake3::hash(&data).as_bytes();
        w.send(&Request::FileBegin {
            id: 1,
            path: rp("live"),
            meta: META,
            size: data.len() as u64,
            encoding: Encoding::Whole,
        })
        .await
        .unwrap();
        w.send(&Request::FileData { id: 1, data }).await.unwrap();
        w.send(&Request::FileEnd { id: 1, hash }).await.unwrap();
        let failures = w.commit(1).await.unwrap();
        let hashed = read_bytes(pid) - start;
        let verify_done = verify.is_finished();
        assert!(failures.is_empty(), "{failures:?}");
        assert!(
            !verify_done,
            "the commit waited for the verify to finish hashing"
        );
        assert!(
            hashed < (FILES * SIZE) as u64,
            "the commit completed only after the whole export was hashed ({hashed} bytes read)"
        );
        let listed = verify.await.unwrap().unwrap();
        assert_eq!(
            listed
                .iter()
                .filter(|e| e.path.as_bytes().starts_with(b"big/"))
                .count(),
            FILES
        );
        w.finish().await.unwrap();
    });
    assert_eq!(
        std::fs::read(p.standby_dir().join("live")).unwrap(),
        b"live"
    );
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A primary that asks and never reads the answers: the standby stops
/// reading its requests instead of queueing replies without bound.
#[test]
fn a_primary_that_reads_no_replies_cannot_grow_the_standby() {
    let mut p = Pair::new();
    std::fs::write(p.standby_dir().join("sigbase.bin"), vec![7u8; 4 << 20]).unwrap();
    p.start_standby();
    let pid = p.standby.as_ref().unwrap().id();
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rss(pid);
    let grown = rt.block_on(async {
        let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        // Each answer is a 160 KiB signature (4 MiB in 512-byte blocks):
        // 3000 of them would be 480 MiB queued.
        for id in 0..3000u64 {
            let r = Request::SigRequest {
                id,
                path: rp("sigbase.bin"),
                block_size: 512,
                strong_len: 16,
            };
            let sent = tokio::time::timeout(Duration::from_secs(5), s.send(&r)).await;
            if !matches!(sent, Ok(Ok(()))) {
                break; // the standby stopped reading: back-pressure
            }
        }
        // Flush what is batched (with one more request); the standby may
        // have stopped reading.
        let last = postcard::to_stdvec(&Request::SigRequest {
            id: 3000,
            path: rp("sigbase.bin"),
            block_size: 512,
            strong_len: 16,
        })
        .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.send_frame(&last)).await;
        let mut most = 0;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            most = most.max(rss(pid).saturating_sub(before));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(s);
        most
    });
    eprintln!("standby grew by {} MiB", grown >> 20);
    assert!(
        grown < 150 << 20,
        "the standby grew by {} MiB holding replies nobody reads",
        grown >> 20
    );
    // The stuck session is superseded by the next one.
    assert_serving(&mut p);
}

/// The live primary against a standby that stops answering: the session
/// ends at the deadline, the primary says so, reconnects, and `syncd status`
/// shows why.
#[test]
fn a_live_primary_gives_up_on_a_hung_standby_and_says_so() {
    let mut p = Pair::new();
    let toml = std::fs::read_to_string(p.path("primary.toml")).unwrap();
    std::fs::write(
        p.path("primary.toml"),
        format!("{toml}[sync]\nreply_timeout_secs = 2\n"),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(fake_standby(&p, |send, mut recv| async move {
        let _open = send;
        let mut buf = Vec::new();
        while let Ok(Some(_)) = syncd::wire::read_msg::<_, Request>(&mut recv, &mut buf).await {}
        tokio::time::sleep(Duration::from_secs(60)).await;
    }));
    p.start_primary();
    let t = Instant::now();
    while !p
        .primary_log()
        .contains("no reply from the standby within 2s")
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the primary did not give up on the hung standby:\n{}",
            p.primary_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        p.primary_log().contains("reconnecting"),
        "{}",
        p.primary_log()
    );
    let st = p.syncd(&["status", "--config", "primary.toml"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("no reply from the standby"), "{text}");
    assert!(p.stop_primary());
}

/// A primary speaking another protocol version is refused with a message
/// that says what to do, before anything is touched; and a primary pinned
/// by `peer_fingerprint` instead of `peer_cert` is accepted.
#[test]
fn another_protocol_version_is_refused_and_fingerprint_pins_work() {
    let mut p = pair_with_base();
    let before = visible(&p);
    let cfg = primary_cfg(&p);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(async {
        let id = syncd::tls::Identity::from_config(&cfg).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(syncd::tls::client_config(&id).unwrap());
        let conn = ep
            .connect(cfg.peer.unwrap(), "syncd")
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut s = syncd::primary::stream::Stream::new(send, recv);
        s.send(&Request::Hello {
            version: 1,
            export_id: cfg.export_id.clone(),
            node_id: "old".into(),
            purpose: Purpose::Resync,
            node: Default::default(),
            lineage: Default::default(),
        })
        .await
        .unwrap();
        s.flush().await.unwrap();
        s.reply().await.unwrap()
    });
    match reply {
        syncd::wire::Reply::Refused { reason, .. } => assert!(
            reason.contains("protocol version 1 is not supported") && reason.contains("upgrade"),
            "{reason}"
        ),
        other => panic!("version 1 was not refused: {other:?}"),
    }
    assert_eq!(visible(&p), before, "the export changed");

    // peer_fingerprint instead of peer_cert, on both sides.
    let fp = |who: &str| {
        syncd::tls::cert_fingerprint(&p.path(&format!("{who}-keys/node.crt")))
            .unwrap()
            .to_string()
    };
    for (file, pinned) in [("primary.toml", "standby"), ("standby.toml", "primary")] {
        let text = std::fs::read_to_string(p.path(file)).unwrap();
        let text = text.replace(
            &format!("peer_cert = \"{pinned}-keys/node.crt\""),
            &format!("peer_fingerprint = \"{}\"", fp(pinned)),
        );
        assert!(text.contains("peer_fingerprint"), "{text}");
        std::fs::write(p.path(file), text).unwrap();
    }
    p.kill_standby();
    p.start_standby();
    std::fs::write(p.primary().join("by-fingerprint.txt"), b"pinned").unwrap();
    p.resync(&[]);
    assert_eq!(
        std::fs::read(p.standby_dir().join("by-fingerprint.txt")).unwrap(),
        b"pinned"
    );
}

#[test]
fn hostile_request_sequences_end_the_session_with_a_clear_error() {
    let mut p = pair_with_base();
    let before = visible(&p);
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let begin = |id| Request::FileBegin {
        id,
        path: rp("new"),
        meta: META,
        size: 1,
        encoding: Encoding::Whole,
    };
    let data = |id| Request::FileData { id, data: vec![1] };
    let cases: Vec<(&str, Vec<Request>, &str)> = vec![
        (
            "data for a file never opened",
            vec![data(9)],
            "never opened",
        ),
        (
            "a file opened twice",
            vec![begin(1), data(1), begin(1)],
            "already open",
        ),
        (
            "a commit replayed",
            vec![Request::Commit { id: 3 }, Request::Commit { id: 3 }],
            "commit ids must increase",
        ),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, script, want) in cases {
        let r = rt.block_on(async {
            let mut s = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
            for m in script {
                if let Request::Commit { id } = m {
                    // Answered (the first) or refused (the replay).
                    s.commit(id).await?;
                } else if s.send(&m).await.is_err() {
                    break;
                }
            }
            s.barrier(1).await
        });
        match r {
            Err(ClientError::Fatal(why)) => assert!(why.contains(want), "{name}: {why}"),
            other => panic!("{name}: accepted: {other:?}"),
        }
        assert_eq!(visible(&p), before, "{name}: the export changed");
    }
    assert_serving(&mut p);
}

/// A verify session that ends says nothing about the writing session beside
/// it: the standby stays "connected" (before, any session's end cleared it,
/// so `status` said "not connected" and a switchover waited on a session
/// that was up).
#[test]
fn a_verify_session_ending_leaves_the_writing_session_connected() {
    let mut p = Pair::new();
    let admin = syncd_testkit::port::free_port();
    let toml = std::fs::read_to_string(p.path("standby.toml")).unwrap();
    std::fs::write(
        p.path("standby.toml"),
        format!("admin = \"127.0.0.1:{admin}\"\n{toml}"),
    )
    .unwrap();
    p.start_standby();
    let connected = || -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.lines()
            .find(|l| l.starts_with("syncd_connected{"))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no syncd_connected in:\n{out}"))
            .to_string()
    };
    let cfg = primary_cfg(&p);
    let me = syncd::generation::Leading::start(&cfg, false).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let w = Session::connect(&cfg, Purpose::Resync, &me).await.unwrap();
        assert_eq!(connected(), "1");
        let mut v = Session::connect(&cfg, Purpose::Verify, &me).await.unwrap();
        v.list(false).await.unwrap();
        v.finish().await.unwrap();
        // The verify session's end is handled by the standby shortly after.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(connected(), "1", "the writing session is still up");
        drop(w);
    });
}
