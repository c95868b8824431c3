//! The primary's side of a session: connect and say Hello, then requests
//! on the ordered control stream and their replies. Which reply a request
//! awaits, the verdict on our Hello, the manifest's caps, when a batch is
//! acknowledged and how long to wait are the sans-IO `Sender`'s
//! (`syncd_proto::sender`); this carries out the I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use syncd_proto::sender::{Answer, Expect, Sender, SenderConfig};

use super::reply::{answer, StreamReply};
use super::stream::Stream;
use super::summary::Summary;
use super::transfer::{Outcome, Sent, Transfers};
use crate::config::Config;
use crate::generation::Leading;
use crate::index::Index;
use crate::meta_policy::MetaPolicy;
use crate::tls::{self, Identity};
use crate::wire::{self, Entry, Failure, Purpose, Request, Scope, Speaks};
use syncd_proto::pair::lineage::{Lineage, NodeId};
use syncd_proto::path::RelPath;

mod connect;
mod error;
pub(crate) use error::record_error;
pub use error::{ClientError, MAX_LIST_BYTES, MAX_LIST_ENTRIES};

/// The version the peer last chose: the next Hello says it first, so a
/// standby of the previous release is not refused at every reconnect. Our
/// whole range follows it, so an upgraded peer still chooses the highest.
static LAST_SPOKEN: AtomicU32 = AtomicU32::new(0);

/// The standby's metadata policy as the primary applies it to its own
/// entries (see [`Session::as_standby_stores`]).
#[derive(Clone, Copy, Debug)]
pub struct StandbyView(Option<MetaPolicy>);

impl StandbyView {
    /// Maps `entries` as the standby stores them; whether owners count.
    pub fn apply(&self, entries: &mut [Entry]) -> bool {
        match &self.0 {
            Some(p) => {
                p.map_entries(entries);
                p.compares_owners()
            }
            // An older standby keeps owners when it runs as root; that we
            // do is the best guess there is.
            None => rustix::process::geteuid().is_root(),
        }
    }
}

pub struct Session {
    conn: quinn::Connection,
    /// The standby's node and generation, from its Welcome.
    pub peer: Option<(NodeId, Lineage)>,
    /// The protocol version of this session and the node name its Welcome gave.
    pub peer_version: (u32, String),
    /// The versions the standby speaks (only the session's, from a release
    /// that predates ranges).
    pub peer_speaks: Speaks,
    /// Requests and replies in order: metadata, small files, barriers.
    ctl: Stream,
    _endpoint: quinn::Endpoint,
    /// Large files, each on its own stream beside `ctl`.
    transfers: Transfers,
    /// Delta payload sent in this session (for the summary).
    pub delta_bytes: u64,
    /// Frame bytes of file streams that have ended.
    files_tx: u64,
    files_rx: u64,
    /// The protocol rules of the control stream.
    sender: Sender,
    /// What the standby does with owners and modes, from its Welcome;
    /// `None` from a standby that predates it.
    pub standby_policy: Option<MetaPolicy>,
    /// Commits answered while another reply was awaited (pipelined: the
    /// previous batch's answer arrives during the next one's listing), in
    /// order, until [`Session::next_committed`] takes them.
    committed: std::collections::VecDeque<(u64, Vec<Failure>, Instant)>,
    /// Commits sent and not yet answered.
    commits_awaited: usize,
}

impl Session {
    /// The next answer of the Sender core to what the standby replied; a
    /// commit's answer on the way is kept for [`Session::next_committed`].
    async fn answer(&mut self) -> Result<(Answer, StreamReply), ClientError> {
        loop {
            match answer(&mut self.ctl, &mut self.sender).await? {
                (Answer::Committed { id, failures }, _) if self.commits_awaited > 0 => {
                    self.commits_awaited -= 1;
                    self.committed.push_back((id, failures, Instant::now()));
                }
                a => return Ok(a),
            }
        }
    }

    /// Sends `Commit id` without waiting for its answer: everything sent
    /// before it becomes durable on the standby, and the batch is
    /// acknowledged at its answer ([`Session::next_committed`]). The
    /// standby takes the requests that follow only after it.
    pub async fn send_commit(&mut self, id: u64) -> Result<(), ClientError> {
        self.send(&Request::Commit { id }).await?;
        self.sender.expect(Expect::Commit(id), Instant::now());
        self.commits_awaited += 1;
        self.ctl.flush().await?;
        Ok(())
    }

    /// Commits sent and not yet taken by [`Session::next_committed`].
    pub fn commits_pending(&self) -> usize {
        self.commits_awaited + self.committed.len()
    }

    /// A commit answered already (and when), without waiting.
    pub fn take_committed(&mut self) -> Option<(u64, Vec<Failure>, Instant)> {
        self.committed.pop_front()
    }

    /// The oldest commit's answer: its id, the failures its batch met, and
    /// when it arrived. Cancel-safe (the live loop waits for it beside the
    /// watch), as long as nothing else is awaited: a commit is the last
    /// thing a batch sends.
    pub async fn next_committed(&mut self) -> Result<(u64, Vec<Failure>, Instant), ClientError> {
        if let Some(c) = self.committed.pop_front() {
            return Ok(c);
        }
        if self.commits_awaited == 0 {
            return Err(ClientError::Protocol("no commit awaited".into()));
        }
        match answer(&mut self.ctl, &mut self.sender).await? {
            (Answer::Committed { id, failures }, _) => {
                self.commits_awaited -= 1;
                Ok((id, failures, Instant::now()))
            }
            (other, _) => Err(ClientError::Protocol(format!(
                "expected a commit's answer, got {other:?}"
            ))),
        }
    }

    /// Sends everything queued (for sessions that expect no reply).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        Ok(self.ctl.flush().await?)
    }

    /// A handle to watch for the connection's end (e.g. the standby closing
    /// it for another primary) while the session is idle.
    pub fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// Closes the connection and waits (50 ms at most) until the close has
    /// gone out, so the standby can start the next session at once. Not
    /// the whole drain (`wait_idle`: three probe timeouts, over 50 ms even
    /// on loopback), which only guards against the close being lost, and
    /// a lost close costs the standby nothing but a session that lingers
    /// until the next one supersedes it.
    pub async fn close(&self) {
        let sent = || self.conn.stats().udp_tx.datagrams;
        let before = sent();
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(50), async {
            // After the close, the close is all the connection sends.
            while sent() == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }

    /// Queues a request on the control stream; small messages are batched
    /// into larger stream writes, and everything queued is flushed before we
    /// wait for a reply.
    pub async fn send(&mut self, r: &Request) -> Result<(), ClientError> {
        use wire::compat::{encode_request, Outgoing};
        let v = self.peer_version.0;
        if v != wire::PROTOCOL_VERSION {
            // An older standby: the few messages it encodes otherwise.
            match encode_request(v, r).map_err(wire::WireError::from)? {
                Outgoing::Same => {}
                Outgoing::Skip => return Ok(()),
                Outgoing::Bytes(b) => return Ok(self.ctl.send_frame(&b).await?),
            }
        }
        Ok(self.ctl.send(r).await?)
    }

    /// Sends an already-encoded payload as one frame. Exists so tests can
    /// play a hostile primary; a real primary only sends typed requests.
    #[doc(hidden)]
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        Ok(self.ctl.send_frame(payload).await?)
    }

    /// Our entries as the standby stores them (its `[standby]` policy), and
    /// whether owners are worth comparing: a mapped owner or a stripped bit
    /// is not a difference to re-send on every compare.
    pub fn as_standby_stores(&self, entries: &mut [Entry]) -> bool {
        self.standby_view().apply(entries)
    }

    /// What [`Session::as_standby_stores`] needs, to apply on another thread.
    pub fn standby_view(&self) -> StandbyView {
        StandbyView(self.standby_policy)
    }

    /// Failures the standby reported only as a number since the last call:
    /// which files they were is unknown, so a whole-tree compare retries them.
    pub fn take_failures_dropped(&mut self) -> u64 {
        self.sender.take_failures_dropped()
    }

    /// The last batch the standby acknowledged (durable) in this session.
    pub fn acknowledged(&self) -> Option<u64> {
        self.sender.acknowledged()
    }

    /// Lowers the caps on a manifest (tests play a standby with an endless one).
    #[doc(hidden)]
    pub fn set_list_limits(&mut self, entries: usize, bytes: u64) {
        self.sender.set_list_limits(entries, bytes);
    }

    /// Application bytes (frames) sent and received on all streams, the
    /// figure comparable with rsync's "Total bytes sent/received".
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.ctl.tx + self.files_tx, self.ctl.rx + self.files_rx)
    }

    /// Large transfers still running (live replication leaves them running
    /// between batches).
    pub fn transfers(&self) -> &Transfers {
        &self.transfers
    }

    /// The next large transfer to end, already accounted in `sum` and
    /// `index`; never resolves while none is running or ended. Cancel-safe.
    pub async fn next_transfer(&mut self, sum: &mut Summary, index: &mut Index) -> Option<RelPath> {
        let o = self.transfers.next().await?;
        let p = o.op.path.clone();
        self.absorb_transfer(o, sum, index);
        Some(p)
    }

    /// Waits for every large transfer (before Finish, or before a barrier
    /// that must cover them).
    pub async fn drain_transfers(&mut self, sum: &mut Summary, index: &mut Index) {
        for o in self.transfers.drain().await {
            self.absorb_transfer(o, sum, index);
        }
    }

    /// A large transfer that already ended (while a start waited for a
    /// free stream), accounted like [`Session::next_transfer`]'s; `None`
    /// without waiting when there is none.
    pub(super) fn ended_transfer(
        &mut self,
        sum: &mut Summary,
        index: &mut Index,
    ) -> Option<RelPath> {
        let o = self.transfers.take_ended()?;
        let p = o.op.path.clone();
        self.absorb_transfer(o, sum, index);
        Some(p)
    }

    /// Starts a large file or delta on its own stream (see [`Transfers::start`]).
    pub(super) async fn start_transfer(
        &mut self,
        op: crate::plan::FileOp,
        settle: Option<crate::lease::Settle>,
        progress: std::sync::Arc<dyn super::summary::Progress>,
    ) {
        self.transfers.start(op, settle, progress).await
    }

    /// Accounts a large transfer's outcome in `sum` and `index`.
    pub(super) fn absorb_transfer(&mut self, o: Outcome, sum: &mut Summary, index: &mut Index) {
        self.files_tx += o.tx;
        self.files_rx += o.rx;
        self.delta_bytes += o.delta_bytes;
        sum.delta_bytes += o.delta_bytes;
        match o.result {
            Ok(Sent::Done(stamp, hash)) => {
                index.insert(o.op.path.as_bytes().to_vec(), stamp, hash);
                if o.as_delta {
                    sum.sent_delta += 1;
                } else {
                    sum.sent_whole += 1;
                }
            }
            Ok(Sent::Vanished) => sum.vanished += 1,
            Ok(Sent::Busy) => sum.busy.push(o.op.path),
            Err(f) => sum.failures.push(f),
        }
    }

    pub async fn list(&mut self, checksum: bool) -> Result<Vec<Entry>, ClientError> {
        self.send(&Request::List { checksum }).await?;
        self.list_reply(Expect::List { checksum }).await
    }

    /// Whether the standby answers directory digests (protocol 8).
    pub fn digests(&self) -> bool {
        syncd_proto::version::features(self.peer_version.0).is_some_and(|f| f.digests)
    }

    /// One round of the digest walk: the standby's answers, in order.
    pub async fn ask_digests(
        &mut self,
        owners: bool,
        queries: Vec<syncd_proto::digest::Query>,
    ) -> Result<Vec<syncd_proto::digest::Answer>, ClientError> {
        self.send(&Request::Digests { owners, queries }).await?;
        self.sender
            .expect(Expect::List { checksum: false }, Instant::now());
        let mut out = Vec::new();
        loop {
            match self.answer().await? {
                (Answer::ListChunk, StreamReply::Digests(a)) => out.extend(a),
                (Answer::ListEnd, _) => return Ok(out),
                (other, _) => {
                    return Err(ClientError::Protocol(format!(
                        "expected digests, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Like [`Session::list`] for part of the tree.
    pub async fn list_scope(&mut self, scope: Vec<Scope>) -> Result<Vec<Entry>, ClientError> {
        self.send(&Request::ListScope { scope }).await?;
        self.list_reply(Expect::List { checksum: false }).await
    }

    async fn list_reply(&mut self, what: Expect) -> Result<Vec<Entry>, ClientError> {
        self.sender.expect(what, Instant::now());
        let mut out = Vec::new();
        loop {
            match self.answer().await? {
                (Answer::ListChunk, StreamReply::Entries(e)) => out.extend(e),
                (Answer::ListEnd, _) => return Ok(out),
                (other, _) => {
                    return Err(ClientError::Protocol(format!(
                        "expected a list, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Everything sent so far is committed and durable on the standby: the
    /// batch is acknowledged ([`Session::acknowledged`]). Commits sent
    /// before and not yet taken are answered first; their answers wait for
    /// [`Session::next_committed`].
    pub async fn commit(&mut self, id: u64) -> Result<Vec<Failure>, ClientError> {
        self.send_commit(id).await?;
        loop {
            let (got, failures) = match answer(&mut self.ctl, &mut self.sender).await? {
                (Answer::Committed { id, failures }, _) => (id, failures),
                (other, _) => {
                    return Err(ClientError::Protocol(format!(
                        "expected a commit's answer, got {other:?}"
                    )))
                }
            };
            self.commits_awaited -= 1;
            if got == id {
                return Ok(failures);
            }
            self.committed.push_back((got, failures, Instant::now()));
        }
    }

    /// Barrier or commit failures: any `FailureChunk`s, then `BarrierDone`.
    async fn barrier_reply(&mut self, what: Expect) -> Result<Vec<Failure>, ClientError> {
        self.sender.expect(what, Instant::now());
        match self.answer().await? {
            (Answer::BarrierDone { failures, .. } | Answer::Committed { failures, .. }, _) => {
                Ok(failures)
            }
            (other, _) => Err(ClientError::Protocol(format!(
                "expected BarrierDone, got {other:?}"
            ))),
        }
    }

    /// Sends a rename to replay (best effort on the standby).
    pub async fn rename(&mut self, from: RelPath, to: RelPath) -> Result<(), ClientError> {
        self.send(&Request::Rename { from, to }).await
    }

    pub async fn barrier(&mut self, id: u64) -> Result<Vec<Failure>, ClientError> {
        self.send(&Request::Barrier { id }).await?;
        self.barrier_reply(Expect::Barrier(id)).await
    }

    pub async fn finish(mut self) -> Result<(u64, quinn::ConnectionStats, u64, u64), ClientError> {
        self.send(&Request::Finish).await?;
        self.sender.expect(Expect::Finished, Instant::now());
        let r = self.answer().await;
        let stats = self.conn.stats();
        self.close().await;
        match r? {
            (Answer::Finished { committed }, _) => {
                let (tx, rx) = self.wire_bytes();
                Ok((committed, stats, tx, rx))
            }
            (other, _) => Err(ClientError::Protocol(format!(
                "expected Finished, got {other:?}"
            ))),
        }
    }
}
