//! Wire messages and their framing.
//!
//! Every message is a `u32` little-endian length followed by a postcard
//! payload. The length is checked against [`MAX_FRAME`] before anything is
//! allocated, and every path inside is a [`RelPath`], validated as it is
//! decoded, so a hostile peer cannot make us allocate without bound or name
//! anything outside the export.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::meta_policy::MetaPolicy;
use syncd_proto::pair::lineage::{Lineage, NodeId};
use syncd_proto::path::RelPath;
pub use syncd_proto::version::Speaks;

pub mod compat;

/// Bumped on any incompatible change to the messages below; the versions
/// spoken and what each carries are `syncd_proto::version`.
pub const PROTOCOL_VERSION: u32 = syncd_proto::version::CURRENT;
/// ALPN identifier for the QUIC/TLS handshake.
pub const ALPN: &[u8] = b"syncd/1";
/// The standby's close reason for a session replaced by a newer one.
pub const SUPERSEDED: &str = "superseded by a new session";
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 8 << 20;
/// Largest file data chunk we send in one frame.
pub const CHUNK: usize = 256 << 10;
/// Failures per `FailureChunk`/`BarrierDone` frame are cut at about this
/// many bytes, far under [`MAX_FRAME`].
pub const FAILURE_CHUNK_BYTES: usize = 1 << 20;
/// Largest symlink target we accept.
pub const MAX_LINK_TARGET: usize = 4096;

pub type Hash = [u8; 32];

/// Metadata carried for every entry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File {
        size: u64,
        hash: Option<Hash>,
    },
    Dir,
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
    },
    /// Another name for the regular file `leader` (same inode on the primary).
    HardLink {
        leader: RelPath,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    pub meta: Meta,
    /// Inode on the sender's side; lets the primary see which standby names
    /// already share an inode (hard links) without another round trip.
    pub ino: u64,
}

use syncd_proto::digest;
pub use syncd_proto::model::Scope;

/// How the content of a file travels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `FileData` chunks carry the bytes.
    Whole,
    /// `DeltaSegment`s, each a complete fast_rsync delta against the
    /// standby's current file at the same path, reproducing the next window.
    Delta,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    Resync,
    Verify,
    /// `--role auto`: the peer's state and its questions, one way (each node
    /// opens one such session to the other); changes nothing.
    Peer,
}

/// Primary → standby.
#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    Hello {
        version: u32,
        export_id: String,
        node_id: String,
        purpose: Purpose,
        /// The primary's identity and generation: the standby follows only
        /// data at least as new as its own.
        node: NodeId,
        lineage: Lineage,
    },
    /// Ask for the standby's manifest; `checksum` forces content hashes.
    List {
        checksum: bool,
    },
    /// Like `List`, restricted to `scope` (a reconcile of part of the tree).
    ListScope {
        scope: Vec<Scope>,
    },
    Mkdir {
        path: RelPath,
        meta: Meta,
    },
    /// A rename seen on the primary; best effort (a later scoped reconcile
    /// of both names corrects whatever it could not do).
    Rename {
        from: RelPath,
        to: RelPath,
    },
    Delete {
        path: RelPath,
    },
    Symlink {
        path: RelPath,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        meta: Meta,
    },
    Link {
        path: RelPath,
        leader: RelPath,
    },
    SetMeta {
        path: RelPath,
        meta: Meta,
    },
    SigRequest {
        id: u64,
        path: RelPath,
        block_size: u32,
        strong_len: u32,
    },
    FileBegin {
        id: u64,
        path: RelPath,
        meta: Meta,
        size: u64,
        encoding: Encoding,
    },
    FileData {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    DeltaSegment {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    FileEnd {
        id: u64,
        hash: Hash,
    },
    /// The source changed or vanished while being read: drop what was sent.
    FileAbort {
        id: u64,
    },
    /// Finish all outstanding work, then report failures since the last barrier.
    Barrier {
        id: u64,
    },
    /// Like `Barrier`, and what is committed is durable (syncfs) before the
    /// reply: the primary's acknowledgement for a batch.
    Commit {
        id: u64,
    },
    /// Make everything durable and close the session.
    Finish,
    /// Everything the standby needs to equal the primary as of the last
    /// commit is on it: the first full compare and every file of it,
    /// including large ones on their own streams and retried failures. The
    /// standby then takes the primary's generation as its own and stops
    /// keeping what is overwritten (it follows; it no longer catches up).
    CaughtUp,
    /// Peer sessions: the sender's role and data, sent at every change and
    /// at least every heartbeat period (syncd's own heartbeat: QUIC
    /// keep-alives are answered by a hung process too).
    PeerState {
        leading: bool,
        lineage: Lineage,
    },
    /// May the sender lead? (It lost VRRP adverts, or wins the election.)
    Ask {
        priority: u8,
    },
    /// The answer to the receiver's last `Ask`.
    Answer {
        grant: bool,
    },
    /// Protocol 8: the primary's digests of these directories (the root
    /// first); the standby answers each (`Reply::Digests` chunks, then
    /// `ListEnd`). `owners`: whether uid/gid count (see `MetaPolicy`).
    Digests {
        owners: bool,
        queries: Vec<digest::Query>,
    },
}

/// A file the standby could not apply (moved to the sans-IO core, where the
/// receiver's failure log keeps them).
pub use syncd_proto::model::Failure;

/// Standby → primary.
#[derive(Serialize, Deserialize, Debug)]
pub enum Reply {
    Welcome {
        version: u32,
        node_id: String,
        node: NodeId,
        lineage: Lineage,
    },
    Refused {
        reason: String,
        /// The standby's generation when it refused for holding newer data.
        lineage: Option<Lineage>,
    },
    ListChunk {
        entries: Vec<Entry>,
    },
    ListEnd,
    Signature {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// No usable base for a delta (vanished, not a file): send whole.
    NoSignature {
        id: u64,
    },
    BarrierDone {
        id: u64,
        failures: Vec<Failure>,
    },
    Finished {
        committed: u64,
    },
    /// Fatal protocol error; the standby closes after sending it.
    Fatal {
        reason: String,
    },
    /// Part of barrier `id`'s failures, ahead of its `BarrierDone` (which
    /// carries the rest): a full disk can fail more files than one frame holds.
    FailureChunk {
        id: u64,
        failures: Vec<Failure>,
    },
    /// Ahead of barrier `id`'s `BarrierDone`: `count` more failures than
    /// the standby keeps in detail. Which files they were is unknown, so
    /// the primary compares the whole tree to retry them (protocol 6).
    FailuresDropped {
        id: u64,
        count: u64,
    },
    /// Protocol 8: answers to a `Request::Digests`, in the order asked.
    Digests {
        answers: Vec<digest::Answer>,
    },
}

/// The standby's [`MetaPolicy`] from a `Welcome` frame, where it follows
/// the `Reply` (the standby writes the pair `(Welcome, MetaPolicy)`).
/// Protocol 7 without a version bump: a primary that predates it decodes
/// the `Welcome` and ignores the bytes after it (postcard's `from_bytes`),
/// and a standby that predates it sends none, which is `Ok(None)` here (it
/// preserves owners and modes, as root). Anything after the policy is left
/// for later extensions.
pub fn welcome_policy(frame: &[u8]) -> Result<Option<MetaPolicy>, postcard::Error> {
    let (_, rest) = postcard::take_from_bytes::<Reply>(frame)?;
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(postcard::take_from_bytes::<MetaPolicy>(rest)?.0))
}

/// The versions the sender of a `Hello` frame speaks, where they follow the
/// `Request` (the pair `(Hello, Speaks)`); `None` from a release that
/// predates ranges (it speaks only the Hello's `version`). A standby that
/// predates them ignores the bytes, as it does after a `Welcome`.
pub fn hello_speaks(frame: &[u8]) -> Result<Option<Speaks>, postcard::Error> {
    let (_, rest) = postcard::take_from_bytes::<Request>(frame)?;
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(postcard::take_from_bytes::<Speaks>(rest)?.0))
}

/// The versions the standby speaks, after the policy in a `Welcome` frame
/// (the triple `(Welcome, MetaPolicy, Speaks)`); `None` from a release that
/// predates ranges.
pub fn welcome_speaks(frame: &[u8]) -> Result<Option<Speaks>, postcard::Error> {
    let (_, rest) = postcard::take_from_bytes::<Reply>(frame)?;
    if rest.is_empty() {
        return Ok(None);
    }
    let (_, rest) = postcard::take_from_bytes::<MetaPolicy>(rest)?;
    if rest.is_empty() {
        return Ok(None);
    }
    Ok(Some(postcard::take_from_bytes::<Speaks>(rest)?.0))
}

/// The replies answering barrier `id`: `FailureChunk`s of at most about
/// [`FAILURE_CHUNK_BYTES`] each, `FailuresDropped` when `dropped` more
/// were only counted, then `BarrierDone` with the remainder.
pub fn barrier_replies(id: u64, failures: Vec<Failure>, dropped: u64) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for f in failures {
        // Postcard overhead per failure is a few varint bytes.
        bytes += f.path.as_bytes().len() + f.error.len() + 16;
        chunk.push(f);
        if bytes >= FAILURE_CHUNK_BYTES {
            out.push(Reply::FailureChunk {
                id,
                failures: std::mem::take(&mut chunk),
            });
            bytes = 0;
        }
    }
    if dropped > 0 {
        out.push(Reply::FailuresDropped { id, count: dropped });
    }
    out.push(Reply::BarrierDone {
        id,
        failures: chunk,
    });
    out
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
    buf: &mut Vec<u8>,
) -> Result<(), WireError> {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    let mut out = postcard::to_extend(msg, std::mem::take(buf))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        *buf = out;
        return Err(WireError::TooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    let r = w.write_all(&out).await;
    *buf = out;
    r?;
    Ok(())
}

/// Appends one frame to `out` (for callers that batch many small messages
/// into one stream write).
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut v = postcard::to_extend(msg, std::mem::take(out))?;
    let len = v.len() - start - 4;
    if len > MAX_FRAME {
        v.truncate(start);
        *out = v;
        return Err(WireError::TooLarge(len));
    }
    v[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    *out = v;
    Ok(())
}

/// Reads one frame into `buf` and decodes it. `Ok(None)` on a clean end of stream.
pub async fn read_msg<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, WireError> {
    if !read_frame(r, buf).await? {
        return Ok(None);
    }
    Ok(Some(decode(buf)?))
}

/// Reads one request from a primary speaking protocol `version` (older
/// versions translated, see [`compat`]). `Ok(None)` on a clean end of stream.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    version: u32,
) -> Result<Option<Request>, WireError> {
    if !read_frame(r, buf).await? {
        return Ok(None);
    }
    Ok(Some(compat::decode_request(version, buf)?))
}

/// Reads one frame's payload into `buf`; `false` on a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<bool, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    })?;
    Ok(true)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
