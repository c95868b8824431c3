//! The requests and replies, and the domain types they carry.

use serde::{Deserialize, Serialize};

use super::FAILURE_CHUNK_BYTES;
use syncd_proto::digest;
pub use syncd_proto::model::Scope;
use syncd_proto::pair::lineage::{Lineage, NodeId};
use syncd_proto::path::RelPath;

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
