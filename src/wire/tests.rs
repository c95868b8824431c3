use super::*;
use syncd_proto::pair::lineage::{Lineage, NodeId};
use syncd_proto::path::RelPath;
use tokio::io::AsyncWriteExt;

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_sec: 1,
        mtime_nsec: 2,
    }
}

#[tokio::test]
async fn round_trip() {
    let (mut a, mut b) = tokio::io::duplex(1 << 20);
    let mut buf = Vec::new();
    let p = RelPath::new(vec![b'x', 0xff]).unwrap();
    write_msg(
        &mut a,
        &Request::Mkdir {
            path: p.clone(),
            meta: meta(),
        },
        &mut buf,
    )
    .await
    .unwrap();
    drop(a);
    let mut rb = Vec::new();
    match read_msg::<_, Request>(&mut b, &mut rb).await.unwrap() {
        Some(Request::Mkdir { path, meta: m }) => {
            assert_eq!(path, p);
            assert_eq!(m, meta());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(read_msg::<_, Request>(&mut b, &mut rb)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn oversized_length_is_refused_before_allocation() {
    let (mut a, mut b) = tokio::io::duplex(64);
    a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let mut rb = Vec::new();
    let e = read_msg::<_, Request>(&mut b, &mut rb).await.unwrap_err();
    assert!(matches!(e, WireError::TooLarge(_)), "{e}");
    assert!(rb.capacity() < 1024);
}

#[test]
fn garbage_and_truncation_are_errors_not_panics() {
    let msg = Request::FileData {
        id: 7,
        data: vec![1; 100],
    };
    let bytes = postcard::to_stdvec(&msg).unwrap();
    for cut in 0..bytes.len() {
        assert!(decode::<Request>(&bytes[..cut]).is_err());
    }
    // A huge declared vector length inside a small frame fails cleanly.
    let mut evil = vec![11u8, 7];
    evil.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode::<Request>(&evil).is_err());
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..20_000 {
        let len = (x % 64) as usize;
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x as u8);
        }
        let _ = decode::<Request>(&v);
        let _ = decode::<Reply>(&v);
    }
}

#[test]
fn hostile_path_in_message_is_rejected() {
    let ok = Request::Delete {
        path: RelPath::new(b"aa/etc".to_vec()).unwrap(),
    };
    let mut bytes = postcard::to_stdvec(&ok).unwrap();
    let n = bytes.len();
    bytes[n - 6..n - 4].copy_from_slice(b"..");
    assert!(decode::<Request>(&bytes).is_err());
}

#[test]
fn the_policy_after_welcome_is_optional_and_invisible_to_older_primaries() {
    use crate::meta_policy::{MetaPolicy, Owners};
    use syncd_proto::pair::lineage::Lineage;
    let welcome = Reply::Welcome {
        version: PROTOCOL_VERSION,
        node_id: "b".into(),
        node: NodeId::default(),
        lineage: Lineage::default(),
    };
    let pol = MetaPolicy {
        owners: Owners::Fixed { uid: 1, gid: 2 },
        strip_setid: true,
    };
    let old = postcard::to_stdvec(&welcome).unwrap();
    let new = postcard::to_stdvec(&(&welcome, &pol)).unwrap();
    assert!(new.starts_with(&old));
    // An older primary decodes the new frame as it always did.
    assert!(matches!(decode::<Reply>(&new), Ok(Reply::Welcome { .. })));
    assert_eq!(welcome_policy(&new).unwrap(), Some(pol));
    // An older standby sends no policy.
    assert_eq!(welcome_policy(&old).unwrap(), None);
    // Room for later extensions after the policy.
    let mut longer = new.clone();
    longer.extend_from_slice(&[1, 2, 3]);
    assert_eq!(welcome_policy(&longer).unwrap(), Some(pol));
    // A garbled policy is an error, not a silent default.
    let mut bad = old.clone();
    bad.push(9);
    assert!(welcome_policy(&bad).is_err());
    for cut in old.len() + 1..new.len() {
        assert!(welcome_policy(&new[..cut]).is_err(), "{cut}");
    }
}

#[test]
fn ranges_trail_the_hello_and_the_welcome_unseen_by_older_releases() {
    use crate::meta_policy::{MetaPolicy, Owners};
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        export_id: "e".into(),
        node_id: "a".into(),
        purpose: Purpose::Resync,
        node: NodeId(1),
        lineage: Lineage::default(),
    };
    let old = postcard::to_stdvec(&hello).unwrap();
    let new = postcard::to_stdvec(&(&hello, &Speaks::OURS)).unwrap();
    assert!(matches!(decode::<Request>(&new), Ok(Request::Hello { .. })));
    assert_eq!(hello_speaks(&new).unwrap(), Some(Speaks::OURS));
    assert_eq!(hello_speaks(&old).unwrap(), None);
    assert!(hello_speaks(&new[..new.len() - 1]).is_err());
    let welcome = Reply::Welcome {
        version: 6,
        node_id: "b".into(),
        node: NodeId(2),
        lineage: Lineage::default(),
    };
    let pol = MetaPolicy {
        owners: Owners::Preserve,
        strip_setid: false,
    };
    let full = postcard::to_stdvec(&(&welcome, &pol, &Speaks::OURS)).unwrap();
    assert!(matches!(decode::<Reply>(&full), Ok(Reply::Welcome { .. })));
    assert_eq!(welcome_policy(&full).unwrap(), Some(pol));
    assert_eq!(welcome_speaks(&full).unwrap(), Some(Speaks::OURS));
    let policy_only = postcard::to_stdvec(&(&welcome, &pol)).unwrap();
    assert_eq!(welcome_speaks(&policy_only).unwrap(), None);
    assert_eq!(
        welcome_speaks(&postcard::to_stdvec(&welcome).unwrap()).unwrap(),
        None
    );
}

#[test]
fn a_huge_failure_list_is_split_into_frames_that_fit() {
    let failures: Vec<Failure> = (0..120_000)
        .map(|i| Failure {
            path: RelPath::new(format!("{}/{i}", "d".repeat(60))).unwrap(),
            error: "write: No space left on device (os error 28)".into(),
            retry_whole: false,
        })
        .collect();
    // One frame cannot carry them all: this is what killed the reply writer.
    let mut out = Vec::new();
    let one = Reply::BarrierDone {
        id: 9,
        failures: failures.clone(),
    };
    assert!(matches!(
        encode_frame(&one, &mut out),
        Err(WireError::TooLarge(_))
    ));
    let replies = barrier_replies(9, failures.clone(), 0);
    assert!(replies.len() > 1);
    let mut got = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        let mut frame = Vec::new();
        encode_frame(r, &mut frame).unwrap();
        match decode::<Reply>(&frame[4..]).unwrap() {
            Reply::FailureChunk { id: 9, failures } if i + 1 < replies.len() => {
                got.extend(failures)
            }
            Reply::BarrierDone { id: 9, failures } if i + 1 == replies.len() => {
                got.extend(failures)
            }
            other => panic!("unexpected reply {i}: {other:?}"),
        }
    }
    assert_eq!(got, failures);
    // No failures: just the BarrierDone.
    assert!(matches!(
        barrier_replies(3, Vec::new(), 0).as_slice(),
        [Reply::BarrierDone { id: 3, failures }] if failures.is_empty()
    ));
    // Failures only counted are announced ahead of the BarrierDone.
    assert!(matches!(
        barrier_replies(4, Vec::new(), 7).as_slice(),
        [
            Reply::FailuresDropped { id: 4, count: 7 },
            Reply::BarrierDone { id: 4, .. }
        ]
    ));
}
