//! The standby: accepts one authenticated primary at a time and applies what
//! it sends.
//!
//! The receive loop only decodes and dispatches. File work (staging, delta
//! application, verification) runs on a few worker threads; metadata
//! operations all go to worker 0 so they keep their order. A verified file is
//! not renamed into place at once: workers collect verified files and, per
//! batch, `syncfs` first and rename after, so a name never points at content
//! that is not yet on disk, and durability costs one flush per batch rather
//! than one per file.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::conflicts::Keeper;
use crate::delta;
use crate::fsroot::{Root, Staged};
use crate::generation;
use crate::index::{Index, Stamp};
use crate::path::RelPath;
use crate::scan;
use crate::sigcache::SigCache;
use crate::tls::{self, Identity};
use crate::wire::{self, Encoding, Failure, Hash, Meta, Purpose, Reply, Request};
use syncd_proto::pair::lineage::{Lineage, NodeId};

/// Verified files held back before one `syncfs` + rename pass.
const BATCH_FILES: usize = 4096;

/// Each verified-but-uncommitted file holds a descriptor until its batch is
/// committed, so the batch size also respects the descriptor limit (raised
/// to the hard limit at start; the usual soft default of 1024 is too small).
fn batch_files(workers: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let Some(max) = lim.maximum {
        if lim.current.is_some_and(|c| c < max) {
            lim.current = Some(max.min(1 << 20));
            let _ = setrlimit(Resource::Nofile, lim);
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(1 << 20) as usize;
    (soft.saturating_sub(256) / workers.max(1)).clamp(16, BATCH_FILES)
}
const BATCH_BYTES: u64 = 256 << 20;

/// Replies queued for the writer: beyond this, workers and the receive loop
/// wait (and so stop reading requests), so a primary that does not read its
/// replies cannot grow the standby's memory. A reply is at most a frame
/// (8 MiB; list chunks about 1 MiB), so this bounds the queue to 128 MiB.
pub const REPLY_QUEUE: usize = 16;
/// Files begun but not yet ended, per connection (control stream and file
/// streams together). Each holds descriptors and up to a 1 MiB buffer; an
/// honest primary has a handful in flight.
pub const MAX_IN_FLIGHT: usize = 256;
/// Verify sessions at once: each hashes the whole export on threads of its own.
pub const MAX_VERIFY_SESSIONS: usize = 4;
/// Failures kept with full detail between two barriers; more are counted and
/// reported as a number, which makes the primary compare the whole tree.
pub const MAX_FAILURES: usize = 10_000;
/// Free space kept on the export's filesystem: a declared size must fit in
/// what is free less this (1% of the filesystem, at most 256 MiB).
fn space_margin(total: u64) -> u64 {
    (total / 100).min(256 << 20)
}

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("export {0}: {1}")]
    Export(String, std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

struct Shared {
    root: Root,
    index: Mutex<Index>,
    committed: AtomicU64,
    durable: bool,
    sigs: SigCache,
    /// Files at least this big get their signature cached as they are written.
    sig_min: u64,
    stats: Arc<crate::stats::Stats>,
    /// This node and its generation record (see `generation.rs`).
    node: NodeId,
    store: generation::Store,
    record: Mutex<generation::Record>,
    /// Where events go when a program embeds this standby.
    events: std::sync::OnceLock<mpsc::Sender<StandbyEvent>>,
    /// Peer sessions open: an old one timing out after the peer redialled
    /// must not report the peer gone.
    peer_sessions: AtomicUsize,
    /// Bytes that files in flight (all sessions) have declared but not yet
    /// written: room already promised on the export's filesystem.
    reserved: AtomicU64,
    /// Verify sessions running.
    verifies: AtomicUsize,
}

pub struct Standby {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    cfg: Config,
    busy: Arc<Busy>,
}

/// One writing session at a time. A new session from the (authenticated)
/// primary supersedes the current one, which is most likely a primary that
/// died without closing: waiting for its idle timeout would only add lag.
#[derive(Default)]
struct Busy {
    lock: tokio::sync::Mutex<()>,
    current: Mutex<Option<quinn::Connection>>,
}

impl Standby {
    /// Opens the export (cleaning staging leftovers) and binds the listen address.
    pub fn bind(cfg: Config) -> Result<Standby, StandbyError> {
        Standby::bind_as(cfg, "standby")
    }

    /// [`Standby::bind`], reporting `role` in status and metrics.
    pub fn bind_as(cfg: Config, role: &'static str) -> Result<Standby, StandbyError> {
        let listen = cfg.require_listen()?;
        let id = Identity::from_config(&cfg)?;
        let root = Root::open(&cfg.export)
            .map_err(|e| StandbyError::Export(cfg.export.display().to_string(), e))?
            .with_policy(cfg.standby);
        if let crate::meta_policy::Owners::Fixed { uid, gid } = cfg.standby.owners {
            if root.policy().owners != cfg.standby.owners {
                tracing::warn!(
                    "standby.owners = \"{uid}:{gid}\" needs root; not root, so entries keep the owner syncd creates them with"
                );
            }
        }
        let index = Index::load(&cfg.state_dir.join("index.bin"));
        let store = generation::Store::new(&cfg.state_dir);
        let record = store.load().map_err(|e| {
            StandbyError::Export(
                cfg.export.display().to_string(),
                std::io::Error::other(e.to_string()),
            )
        })?;
        let sc = tls::server_config(&id)?;
        let endpoint = quinn::Endpoint::server(sc, listen).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                StandbyError::Config(cfg.port_error("listen", listen, e))
            } else {
                StandbyError::Listen(listen, e)
            }
        })?;
        let shared = Arc::new(Shared {
            root,
            index: Mutex::new(index),
            committed: AtomicU64::new(0),
            durable: cfg.sync.durable,
            sigs: SigCache::new(&cfg.state_dir),
            sig_min: cfg.sync.delta_min_size,
            stats: Arc::new(crate::stats::Stats::new(role, listen.to_string())),
            node: generation::node_id(&id),
            store,
            record: Mutex::new(record),
            events: std::sync::OnceLock::new(),
            peer_sessions: AtomicUsize::new(0),
            reserved: AtomicU64::new(0),
            verifies: AtomicUsize::new(0),
        });
        {
            let r = shared.record.lock().unwrap_or_else(|p| p.into_inner());
            shared.stats.set_generation(&r.lineage, None);
        }
        Ok(Standby {
            endpoint,
            shared,
            cfg,
            busy: Arc::new(Busy::default()),
        })
    }

    /// Sends this standby's events (peer sessions, catch-ups, commits) to
    /// `tx` (see [`StandbyEvent`]).
    pub fn events(&self, tx: mpsc::Sender<StandbyEvent>) {
        let _ = self.shared.events.set(tx);
    }

    /// For an embedder that changes the generation record while this runs.
    pub fn handle(&self) -> StandbyHandle {
        StandbyHandle(self.shared.clone(), self.busy.clone())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` resolves; an active session is abandoned
    /// safely (its staged files are removed, nothing half-applied).
    /// Counters served on the admin address.
    pub fn stats(&self) -> Arc<crate::stats::Stats> {
        self.shared.stats.clone()
    }

    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let policy = self.shared.root.policy();
        tracing::info!(addr = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), export = %self.cfg.export.display(), owners = ?policy.owners, strip_setid = policy.strip_setid, "standby listening");
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i { Some(i) => i, None => break },
                _ = &mut shutdown => break,
            };
            let shared = self.shared.clone();
            let cfg = self.cfg.clone();
            let busy = self.busy.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        if let Err(e) = session(conn, shared, cfg, busy).await {
                            tracing::warn!(peer = %remote, "session ended: {e}");
                        }
                    }
                    Err(e) => tracing::warn!(peer = %remote, "refused connection: {e}"),
                }
            });
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        tracing::info!("standby stopped");
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Conn(#[from] quinn::ConnectionError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

async fn session(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    cfg: Config,
    busy: Arc<Busy>,
) -> Result<(), SessionError> {
    let stats = shared.stats.clone();
    let r = session_inner(&conn, shared, cfg, &busy).await;
    if let Err(e) = &r {
        stats.error(e);
    }
    stats.connected_since.store(0, Ordering::Relaxed);
    // Let the primary read our last reply and close first; do not hang on a dead one.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed()).await;
    let mut cur = busy.current.lock().unwrap_or_else(|p| p.into_inner());
    if cur.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
        *cur = None;
    }
    r
}

async fn session_inner(
    conn: &quinn::Connection,
    shared: Arc<Shared>,
    cfg: Config,
    busy: &Busy,
) -> Result<(), SessionError> {
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut rbuf = Vec::new();
    let mut wbuf = Vec::new();
    let hello: Option<Request> = wire::read_msg(&mut recv, &mut rbuf).await?;
    // The primary's generation, and whether to keep what catching up with
    // it overwrites (for a writing session).
    let mut follow: Option<(Lineage, bool)> = None;
    let peer_node;
    // Held for a verify session's whole life.
    let mut verify_slot = None;
    let purpose = match hello {
        Some(Request::Hello {
            version,
            export_id,
            node_id,
            purpose,
            node,
            lineage,
        }) => {
            peer_node = node;
            let ours = shared.lineage();
            let mut newer = None;
            let refuse = if version != wire::PROTOCOL_VERSION {
                Some(format!("protocol version {version} is not supported (this standby speaks {}); upgrade both nodes to the same syncd release", wire::PROTOCOL_VERSION))
            } else if export_id != cfg.export_id {
                Some(format!("export_id \"{export_id}\" does not match this standby's \"{}\"; set the same export_id on both nodes", cfg.export_id))
            } else if purpose == Purpose::Verify {
                // Read-only: any generation may compare; but each one hashes
                // the whole export, so only a few at once.
                if shared.verifies.fetch_add(1, Ordering::AcqRel) >= MAX_VERIFY_SESSIONS {
                    shared.verifies.fetch_sub(1, Ordering::AcqRel);
                    Some(format!("too many verify sessions at once (limit {MAX_VERIFY_SESSIONS}); try again when one has finished"))
                } else {
                    verify_slot = Some(VerifySlot(shared.clone()));
                    None
                }
            } else if purpose == Purpose::Peer {
                None // changes nothing: any generation may talk
            } else {
                match generation::judge(shared.node, &ours, &lineage) {
                    generation::Verdict::Refuse(why) => {
                        newer = Some(ours.clone());
                        Some(why)
                    }
                    generation::Verdict::Follow { preserve } => {
                        shared.stats.set_generation(&ours, Some(&lineage));
                        follow = Some((lineage.clone(), preserve));
                        None
                    }
                }
            };
            if let Some(reason) = refuse {
                shared.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = %conn.remote_address(), "refused a primary: {reason}");
                wire::write_msg(
                    &mut send,
                    &Reply::Refused {
                        reason: reason.clone(),
                        lineage: newer,
                    },
                    &mut wbuf,
                )
                .await?;
                let _ = send.finish();
                return Err(SessionError::Refused(reason));
            }
            if purpose == Purpose::Peer {
                tracing::debug!(peer = %conn.remote_address(), node = %node_id, "peer session");
            } else {
                tracing::info!(peer = %conn.remote_address(), node = %node_id, ?purpose, "primary connected");
            }
            if purpose == Purpose::Resync {
                shared.stats.connects.fetch_add(1, Ordering::Relaxed);
                shared
                    .stats
                    .connected_since
                    .store(crate::stats::unix_now(), Ordering::Relaxed);
            }
            purpose
        }
        _ => return Err(SessionError::Protocol("expected Hello".into())),
    };
    let _guard = if purpose != Purpose::Resync {
        None // read-only: runs beside a writing session
    } else {
        let old = busy
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(conn.clone());
        if let Some(old) = old {
            tracing::warn!(old = %old.remote_address(), "a new primary session supersedes the current one");
            old.close(1u32.into(), wire::SUPERSEDED.as_bytes());
        }
        match tokio::time::timeout(std::time::Duration::from_secs(30), busy.lock.lock()).await {
            Ok(g) => Some(g),
            Err(_) => {
                let reason = "the previous session did not end within 30 s".to_string();
                wire::write_msg(
                    &mut send,
                    &Reply::Refused {
                        reason: reason.clone(),
                        lineage: None,
                    },
                    &mut wbuf,
                )
                .await?;
                let _ = send.finish();
                return Err(SessionError::Refused(reason));
            }
        }
    };
    // This node may have been promoted while the session waited its turn.
    if let Some((primary, _)) = &follow {
        let now = shared.lineage();
        if let generation::Verdict::Refuse(reason) = generation::judge(shared.node, &now, primary) {
            tracing::error!(peer = %conn.remote_address(), "refused a primary: {reason}");
            let r = Reply::Refused {
                reason: reason.clone(),
                lineage: Some(now),
            };
            wire::write_msg(&mut send, &r, &mut wbuf).await?;
            let _ = send.finish();
            return Err(SessionError::Refused(reason));
        }
    }
    let ours = shared.lineage();
    let welcome = Reply::Welcome {
        version: wire::PROTOCOL_VERSION,
        node_id: cfg.node_id.clone(),
        node: shared.node,
        lineage: ours,
    };
    // The policy trails the Welcome in the same frame (see `wire::welcome_policy`).
    wire::write_msg(&mut send, &(&welcome, &shared.root.policy()), &mut wbuf).await?;
    if purpose == Purpose::Peer {
        return peer_session(&mut recv, &mut rbuf, &shared, peer_node).await;
    }

    let _verify_slot = verify_slot;
    let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(r) = reply_rx.recv().await {
            let last = matches!(r, Reply::Finished { .. } | Reply::Fatal { .. });
            if let Err(e) = wire::write_msg(&mut send, &r, &mut buf).await {
                reply_failed(&mut send, &mut buf, e).await;
                return;
            }
            if last {
                let _ = send.finish();
                return;
            }
        }
    });

    // Catching up with data that may overwrite our own writes: keep them.
    let preserve: Preserve = Arc::default();
    if let Some((_, true)) = &follow {
        let ours = shared
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lineage
            .gen;
        let k = Keeper::open(&cfg.state_dir, &ours.to_string())?;
        tracing::warn!(
            conflicts = %k.path().display(),
            "this node may hold writes the primary never received (it led generation {ours}); \
             what the catch-up replaces or deletes is kept in the conflicts area"
        );
        *preserve.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(k));
    }
    let nworkers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let batch_max = batch_files(nworkers);
    let failures = Failures::default();
    let in_flight = InFlightCount::default();
    let mut workers = Vec::new();
    let mut txs = Vec::new();
    for _ in 0..nworkers {
        let (tx, rx) = mpsc::channel::<Job>(16);
        let sh = shared.clone();
        let rt = reply_tx.clone();
        let fl = failures.clone();
        let pr = preserve.clone();
        let n = in_flight.clone();
        workers.push(std::thread::spawn(move || {
            worker(sh, rx, rt, fl, batch_max, pr, n)
        }));
        txs.push(tx);
    }
    // Large files arrive on streams of their own, beside this one.
    let streams = (purpose != Purpose::Verify).then(|| {
        let (conn, sh, pr) = (conn.clone(), shared.clone(), preserve.clone());
        tokio::spawn(accept_file_streams(conn, sh, pr, in_flight.clone()))
    });
    let mut ctx = Dispatch {
        purpose: &purpose,
        shared: &shared,
        txs: &txs,
        reply: &reply_tx,
        failures: &failures,
        follow: follow.map(|(l, _)| l),
        preserve: &preserve,
    };
    let result = dispatch(&mut recv, &mut rbuf, &mut ctx).await;
    if let Some(s) = streams {
        s.abort();
    }
    if let Err(e) = &result {
        // Not forever: the writer may be stuck behind a primary that reads nothing.
        let fatal = Reply::Fatal {
            reason: e.to_string(),
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reply_tx.send(fatal)).await;
    }
    drop(txs);
    drop(reply_tx);
    for w in workers {
        let _ = tokio::task::spawn_blocking(move || w.join()).await;
    }
    let _ = writer.await;
    if result.is_ok() {
        tracing::info!(peer = %conn.remote_address(), "session finished");
    }
    result
}

/// An embedder's view of a running standby's generation record.
#[derive(Clone)]
pub struct StandbyHandle(Arc<Shared>, Arc<Busy>);

impl StandbyHandle {
    pub fn record(&self) -> generation::Record {
        self.0
            .record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Saves `r` durably and makes it the one the standby judges by (a
    /// promotion, a newer generation heard from the peer).
    pub fn save_record(&self, r: generation::Record) -> Result<(), generation::RecordError> {
        let mut cur = self.0.record.lock().unwrap_or_else(|p| p.into_inner());
        self.0.store.save(&r)?;
        self.0.stats.set_generation(&r.lineage, None);
        let promoted = r.lineage.gen != cur.lineage.gen && r.lineage.gen.node == self.0.node;
        *cur = r;
        drop(cur);
        if promoted {
            // This node leads now: a session of the former leader that
            // survived a short cut must not write here any more.
            let old = self
                .1
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(c) = old {
                tracing::warn!(peer = %c.remote_address(), "closing the former leader's session: this node leads now");
                c.close(2u32.into(), b"the standby leads a newer generation");
            }
        }
        Ok(())
    }
}

/// What this standby tells the program embedding it (`--role auto`).
#[derive(Debug, Clone)]
pub enum StandbyEvent {
    /// The peer's state, from its peer session (hello and heartbeats).
    PeerState {
        node: NodeId,
        leading: bool,
        lineage: Lineage,
    },
    /// The peer asks whether it may lead.
    Ask { priority: u8 },
    /// The peer's answer to our `Ask`.
    Answer { grant: bool },
    /// The peer session ended.
    PeerGone,
    /// A catch-up finished: this node now follows `lineage`.
    Adopted(Lineage),
    /// Batch `id` of the followed generation is durable here.
    Committed(u64),
}

impl Shared {
    fn lineage(&self) -> Lineage {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lineage
            .clone()
    }

    fn emit(&self, e: StandbyEvent) {
        if let Some(tx) = self.events.get() {
            let _ = tx.try_send(e);
        }
    }
}

/// A peer session: the peer's own state and questions, forwarded to the
/// embedder; nothing here touches the export.
async fn peer_session(
    recv: &mut quinn::RecvStream,
    rbuf: &mut Vec<u8>,
    shared: &Shared,
    node: NodeId,
) -> Result<(), SessionError> {
    shared.peer_sessions.fetch_add(1, Ordering::AcqRel);
    let r = loop {
        let msg = match wire::read_msg::<_, Request>(recv, rbuf).await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        shared.emit(match msg {
            Request::PeerState { leading, lineage } => StandbyEvent::PeerState {
                node,
                leading,
                lineage,
            },
            Request::Ask { priority } => StandbyEvent::Ask { priority },
            Request::Answer { grant } => StandbyEvent::Answer { grant },
            other => {
                break Err(SessionError::Protocol(format!(
                    "{} on a peer session",
                    request_name(&other)
                )))
            }
        });
    };
    if shared.peer_sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.emit(StandbyEvent::PeerGone);
    }
    r
}

/// A reply writer cannot go on. A reply that could not be encoded is a bug
/// or a limit hit: say so in the log and to the primary (as `Fatal`) rather
/// than leave it to guess from a closed stream.
async fn reply_failed(send: &mut quinn::SendStream, buf: &mut Vec<u8>, e: wire::WireError) {
    match e {
        wire::WireError::TooLarge(_) | wire::WireError::Decode(_) => {
            let reason = format!("standby could not encode a reply: {e}");
            tracing::error!("{reason}; ending the session");
            let _ = wire::write_msg(send, &Reply::Fatal { reason }, buf).await;
            let _ = send.finish();
        }
        // The stream is gone; the session ends on its own.
        e => tracing::debug!("reply not sent: {e}"),
    }
}

enum Job {
    Op(Request),
    Flush(std::sync::mpsc::Sender<()>),
}

/// What the receive loop of one session works with.
struct Dispatch<'a> {
    purpose: &'a Purpose,
    shared: &'a Arc<Shared>,
    txs: &'a [mpsc::Sender<Job>],
    reply: &'a mpsc::Sender<Reply>,
    failures: &'a Failures,
    /// The primary's generation, until its first durable commit makes it ours.
    follow: Option<Lineage>,
    preserve: &'a Preserve,
}

impl Dispatch<'_> {
    /// The primary says the catch-up is complete (`CaughtUp`, after every
    /// file of it is durable here): this node's generation becomes the
    /// primary's, saved durably, and nothing more is kept.
    fn caught_up(&mut self) {
        let sh = self.shared;
        let mut r = sh.record.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = self.follow.take() {
            let commit = r.lineage.commit;
            r.lineage.follow(&l);
            r.lineage.commit = r.lineage.commit.max(commit.min(l.commit));
            if let Err(e) = sh.store.save(&r) {
                tracing::error!("{e}");
            }
            sh.stats.set_generation(&r.lineage, None);
            sh.emit(StandbyEvent::Adopted(l.clone()));
            tracing::info!(generation = %r.lineage.gen, "caught up; following the primary's generation");
            if let Some(k) = self
                .preserve
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                if k.kept() > 0 {
                    tracing::warn!(kept = k.kept(), area = %k.path().display(), "diverged entries kept; list them with `syncd conflicts list`");
                }
            }
        }
    }

    /// A durable commit of the generation this node follows records its
    /// batch (written before the commit's `syncfs`: the state directory is
    /// on the export's filesystem). During a catch-up nothing is recorded:
    /// the data is not the primary's yet.
    fn record_commit(&mut self, id: u64) {
        let sh = self.shared;
        let mut r = sh.record.lock().unwrap_or_else(|p| p.into_inner());
        if self.follow.is_none() && *self.purpose == Purpose::Resync {
            r.lineage.commit = r.lineage.commit.max(id);
            sh.emit(StandbyEvent::Committed(id));
            if let Err(e) = sh.store.save_unsynced(&r) {
                tracing::warn!("{e}");
            }
            sh.stats.set_generation(&r.lineage, None);
        }
    }
}

async fn dispatch(
    recv: &mut quinn::RecvStream,
    rbuf: &mut Vec<u8>,
    cx: &mut Dispatch<'_>,
) -> Result<(), SessionError> {
    let (purpose, shared, txs, reply, failures) =
        (cx.purpose, cx.shared, cx.txs, cx.reply, cx.failures);
    let send = |i: usize, j: Job| async move {
        txs[i]
            .send(j)
            .await
            .map_err(|_| SessionError::Protocol("worker stopped".into()))
    };
    loop {
        if reply.is_closed() {
            // The writer has gone: a worker sent a Fatal (e.g. too many
            // files in flight) or the stream broke. Nothing more is answered.
            return Err(SessionError::Protocol(
                "session ended by a fatal error".into(),
            ));
        }
        let msg: Request = match wire::read_msg(recv, rbuf).await? {
            Some(m) => m,
            None => {
                return Err(SessionError::Protocol(
                    "primary closed the stream without Finish".into(),
                ))
            }
        };
        let mutating = !matches!(
            msg,
            Request::List { .. } | Request::ListScope { .. } | Request::Finish | Request::CaughtUp
        );
        if *purpose == Purpose::Verify && mutating {
            return Err(SessionError::Protocol(
                "a verify session may not change anything".into(),
            ));
        }
        match msg {
            Request::Hello { .. } => return Err(SessionError::Protocol("duplicate Hello".into())),
            Request::List { checksum } => {
                let sh = shared.clone();
                let scanned = tokio::task::spawn_blocking(move || {
                    // Not under the index lock: a verify rehashes the whole
                    // export, and commits (which update the index) must go
                    // on meanwhile. A list either hashes everything (forced)
                    // or nothing, so it needs no cached hashes: it scans
                    // with an index of its own, then records what it learnt.
                    let mut fresh = Index::default();
                    let scanned = scan::scan(sh.root.path(), &mut fresh, checksum, checksum)?;
                    let live: std::collections::HashSet<&[u8]> =
                        scanned.entries.iter().map(|e| e.path.as_bytes()).collect();
                    let mut ix = sh.index.lock().unwrap_or_else(|p| p.into_inner());
                    // A file committed during the scan may be forgotten
                    // here: the index is only a cache.
                    ix.retain(|k| live.contains(k));
                    ix.absorb(fresh);
                    Ok::<_, std::io::Error>(scanned)
                })
                .await
                .map_err(|e| SessionError::Protocol(e.to_string()))??;
                send_list(scanned, reply).await;
            }
            Request::ListScope { scope } => {
                // Earlier operations (renames, deletes) must be visible to the scan.
                flush_all(txs).await?;
                let sh = shared.clone();
                let scanned = tokio::task::spawn_blocking(move || {
                    // Without hashes a scoped scan never reads the index.
                    scan::scan_scoped(sh.root.path(), &mut Index::default(), &scope, false)
                })
                .await
                .map_err(|e| SessionError::Protocol(e.to_string()))??;
                send_list(scanned, reply).await;
            }
            Request::Commit { id } => {
                flush_all(txs).await?;
                cx.record_commit(id);
                let sh = shared.clone();
                tokio::task::spawn_blocking(
                    move || if sh.durable { sh.root.sync() } else { Ok(()) },
                )
                .await
                .map_err(|e| SessionError::Protocol(e.to_string()))??;
                let (kept, dropped) = take(failures);
                for r in wire::barrier_replies(id, kept, dropped) {
                    let _ = reply.send(r).await;
                }
            }
            Request::Barrier { id } => {
                flush_all(txs).await?;
                let (kept, dropped) = take(failures);
                for r in wire::barrier_replies(id, kept, dropped) {
                    let _ = reply.send(r).await;
                }
            }
            Request::CaughtUp => {
                flush_all(txs).await?;
                cx.caught_up();
            }
            Request::Finish => {
                flush_all(txs).await?;
                let sh = shared.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    if sh.durable {
                        sh.root.sync()?;
                    }
                    sh.index
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .save()
                        .map_err(std::io::Error::other)
                })
                .await
                .map_err(|e| SessionError::Protocol(e.to_string()))??;
                let committed = shared.committed.swap(0, Ordering::Relaxed);
                let _ = reply.send(Reply::Finished { committed }).await;
                return Ok(());
            }
            Request::FileBegin { id, .. }
            | Request::FileData { id, .. }
            | Request::DeltaSegment { id, .. }
            | Request::FileEnd { id, .. }
            | Request::FileAbort { id }
            | Request::SigRequest { id, .. } => {
                send((id % txs.len() as u64) as usize, Job::Op(msg)).await?
            }
            op => send(0, Job::Op(op)).await?,
        }
    }
}

/// Streams at once are bounded by QUIC itself (`max_concurrent_bidi_streams`
/// in `tls.rs`): the primary cannot open more than that before some end.
async fn accept_file_streams(
    conn: quinn::Connection,
    sh: Arc<Shared>,
    preserve: Preserve,
    in_flight: InFlightCount,
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let sh = sh.clone();
        let n = in_flight.clone();
        let peer = conn.remote_address();
        // A stream begun during the catch-up keeps preserving to its end.
        let pr: Preserve = Arc::new(Mutex::new(keeper(&preserve)));
        tasks.spawn(async move {
            if let Err(e) = file_stream(send, recv, sh, pr, n).await {
                tracing::warn!(%peer, "file stream: {e}");
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Connection gone: the tasks end as their streams fail.
    tasks.detach_all();
}

/// One large file's stream: a signature request (for a delta), the content,
/// then the verdict once the file is committed. Runs on a worker thread of
/// its own, so it proceeds beside the control stream.
async fn file_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    sh: Arc<Shared>,
    preserve: Preserve,
    in_flight: InFlightCount,
) -> Result<(), SessionError> {
    let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(r) = reply_rx.recv().await {
            if let Err(e) = wire::write_msg(&mut send, &r, &mut buf).await {
                reply_failed(&mut send, &mut buf, e).await;
                return;
            }
        }
        let _ = send.finish();
    });
    let failures = Failures::default();
    let (tx, rx) = mpsc::channel::<Job>(16);
    let w = {
        let (sh, rt, fl) = (sh.clone(), reply_tx.clone(), failures.clone());
        std::thread::spawn(move || worker(sh, rx, rt, fl, 1, preserve, in_flight))
    };
    let mut rbuf = Vec::new();
    let result = async {
        while let Some(msg) = wire::read_msg::<_, Request>(&mut recv, &mut rbuf).await? {
            match msg {
                Request::SigRequest { .. }
                | Request::FileBegin { .. }
                | Request::FileData { .. }
                | Request::DeltaSegment { .. }
                | Request::FileEnd { .. }
                | Request::FileAbort { .. } => tx
                    .send(Job::Op(msg))
                    .await
                    .map_err(|_| SessionError::Protocol("worker stopped".into()))?,
                other => {
                    return Err(SessionError::Protocol(format!(
                        "{} on a file stream",
                        request_name(&other)
                    )))
                }
            }
        }
        flush_all(std::slice::from_ref(&tx)).await
    }
    .await;
    drop(tx);
    let _ = tokio::task::spawn_blocking(move || w.join()).await;
    let last = match &result {
        // One file per stream: its failures never reach the cap.
        Ok(()) => Reply::BarrierDone {
            id: 0,
            failures: take(&failures).0,
        },
        Err(e) => Reply::Fatal {
            reason: e.to_string(),
        },
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reply_tx.send(last)).await;
    drop(reply_tx);
    let _ = writer.await;
    result
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "Hello",
        Request::List { .. } | Request::ListScope { .. } => "List",
        Request::Finish => "Finish",
        Request::Commit { .. } | Request::Barrier { .. } => "a barrier",
        _ => "a metadata request",
    }
}

/// Sends a manifest in chunks of about 1 MiB (well under the frame limit).
async fn send_list(scanned: scan::Scan, reply: &mpsc::Sender<Reply>) {
    for e in &scanned.skipped {
        tracing::warn!("standby scan skipped {e}");
    }
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for e in scanned.entries {
        bytes += e.path.as_bytes().len() + 64;
        if let wire::Kind::Symlink { target } = &e.kind {
            bytes += target.len();
        }
        chunk.push(e);
        if bytes > 1 << 20 {
            let _ = reply
                .send(Reply::ListChunk {
                    entries: std::mem::take(&mut chunk),
                })
                .await;
            bytes = 0;
        }
    }
    let _ = reply.send(Reply::ListChunk { entries: chunk }).await;
    let _ = reply.send(Reply::ListEnd).await;
}

async fn flush_all(txs: &[mpsc::Sender<Job>]) -> Result<(), SessionError> {
    let mut waits = Vec::new();
    for tx in txs {
        let (t, r) = std::sync::mpsc::channel();
        tx.send(Job::Flush(t))
            .await
            .map_err(|_| SessionError::Protocol("worker stopped".into()))?;
        waits.push(r);
    }
    tokio::task::spawn_blocking(move || {
        for w in waits {
            let _ = w.recv();
        }
    })
    .await
    .map_err(|e| SessionError::Protocol(e.to_string()))
}

struct InFlight<'r> {
    /// Released (count and reserved room) when the file is ended or dropped.
    slot: Slot<'r>,
    path: RelPath,
    meta: Meta,
    size: u64,
    written: u64,
    out: BufWriter<HashingFile<'r>>,
    base: Option<std::fs::File>,
}

/// The staged file, with BLAKE3 (and for large files the block signature)
/// computed over exactly the bytes written.
struct HashingFile<'r> {
    staged: Staged<'r>,
    hasher: blake3::Hasher,
    sig: Option<(u32, u32, delta::SigBuilder)>,
}

impl Write for HashingFile<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.staged.file.write(b)?;
        self.hasher.update(&b[..n]);
        if let Some((_, _, sb)) = &mut self.sig {
            sb.update(&b[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.staged.file.flush()
    }
}

struct Verified<'r> {
    staged: Staged<'r>,
    path: RelPath,
    meta: Meta,
    hash: Hash,
    sig: Option<(u32, u32, Vec<u8>)>,
    /// The delta base (the file being replaced), held open until the rename
    /// so that freeing its blocks happens off the reply path.
    base: Option<std::fs::File>,
}

/// While catching up with a primary whose data may overwrite writes of this
/// node's own (see `generation::judge`), what the catch-up replaces or
/// deletes is kept here first. Control-stream workers read the slot per
/// operation; a file stream takes the keeper it had when it began.
type Preserve = Arc<Mutex<Option<Arc<Keeper>>>>;

fn keeper(p: &Preserve) -> Option<Arc<Keeper>> {
    p.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A running verify session, counted against [`MAX_VERIFY_SESSIONS`].
struct VerifySlot(Arc<Shared>);

impl Drop for VerifySlot {
    fn drop(&mut self) {
        self.0.verifies.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Failures since the last barrier, reported with it: the first
/// [`MAX_FAILURES`] in full, the rest only counted.
type Failures = Arc<Mutex<FailureLog>>;

#[derive(Default)]
struct FailureLog {
    kept: Vec<Failure>,
    dropped: u64,
}

impl FailureLog {
    fn push(&mut self, f: Failure) {
        if self.kept.len() < MAX_FAILURES {
            self.kept.push(f);
        } else {
            self.dropped += 1;
        }
    }
}

fn take(f: &Failures) -> (Vec<Failure>, u64) {
    let log = std::mem::take(&mut *f.lock().unwrap_or_else(|p| p.into_inner()));
    (log.kept, log.dropped)
}

/// Files in flight on one connection.
type InFlightCount = Arc<AtomicUsize>;

/// One file in flight: counted against [`MAX_IN_FLIGHT`], and its declared
/// size not yet written reserved in `Shared::reserved`.
struct Slot<'r> {
    count: InFlightCount,
    reserved: &'r AtomicU64,
    left: u64,
}

impl Slot<'_> {
    /// `n` more bytes written: they are on disk now, no longer a promise.
    fn wrote(&mut self, n: u64) {
        let n = n.min(self.left);
        self.left -= n;
        self.reserved.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.left, Ordering::AcqRel);
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a slot for a file of `size` bytes, or says why not: too many files
/// in flight is fatal to the session (`Err(true, ..)`); no room for this
/// file fails only the file.
fn begin_slot<'r>(
    sh: &'r Shared,
    count: &InFlightCount,
    size: u64,
) -> Result<Slot<'r>, (bool, String)> {
    if count.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
        count.fetch_sub(1, Ordering::AcqRel);
        return Err((
            true,
            format!("too many files in flight: more than {MAX_IN_FLIGHT} begun without FileEnd"),
        ));
    }
    // From here the slot releases the count on any error.
    let mut slot = Slot {
        count: count.clone(),
        reserved: &sh.reserved,
        left: 0,
    };
    let vfs = rustix::fs::statvfs(sh.root.path())
        .map_err(|e| (false, format!("cannot check free space on the export: {e}")))?;
    let frsize = vfs.f_frsize.max(1);
    let free = vfs.f_bavail.saturating_mul(frsize);
    let margin = space_margin(vfs.f_blocks.saturating_mul(frsize));
    let promised = sh.reserved.fetch_add(size, Ordering::AcqRel);
    slot.left = size;
    if size.saturating_add(promised).saturating_add(margin) > free {
        return Err((
            false,
            format!(
                "declared size of {size} bytes does not fit: {free} bytes free on the export's filesystem, \
                 {promised} promised to other files in flight, {margin} kept free \
                 (No space left on device); not staged"
            ),
        ));
    }
    Ok(slot)
}

fn worker(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    reply: mpsc::Sender<Reply>,
    failures: Failures,
    batch_max: usize,
    preserve: Preserve,
    in_flight: InFlightCount,
) {
    let root = &sh.root;
    let mut inflight: HashMap<u64, InFlight<'_>> = HashMap::new();
    let mut pending: Vec<Verified<'_>> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut copy_buf = Vec::new();
    let fail = |path: &RelPath, error: String, retry_whole: bool| {
        tracing::warn!(path = %path, "{error}");
        failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Failure {
                path: path.clone(),
                error,
                retry_whole,
            });
    };
    // Keeps what `p` holds before an operation replaces or removes it; a
    // failure to keep is a failure of the operation (never lose it).
    let keep = |p: &RelPath, spare_dirs: bool| -> bool {
        match keeper(&preserve) {
            None => true,
            Some(k) => match k.keep(root, p, spare_dirs) {
                Ok(kept) => {
                    if kept {
                        sh.stats.conflicts_kept.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
                Err(e) => {
                    fail(
                        p,
                        format!(
                            "cannot keep the diverged copy in {}: {e}",
                            k.path().display()
                        ),
                        false,
                    );
                    false
                }
            },
        }
    };
    while let Some(job) = rx.blocking_recv() {
        let op = match job {
            Job::Flush(done) => {
                commit_batch(&sh, &mut pending, &fail, &keep);
                pending_bytes = 0;
                let _ = done.send(());
                continue;
            }
            Job::Op(op) => op,
        };
        match op {
            Request::Mkdir { path, meta: _ } => {
                if !keep(&path, true) {
                } else if let Err(e) = root.mkdir(&path) {
                    fail(&path, format!("mkdir: {e}"), false);
                }
            }
            Request::Delete { path } if !keep(&path, false) => {}
            Request::Delete { path } => match root.delete(&path) {
                Ok(()) => {
                    sh.sigs.remove(&path);
                    sh.index
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(path.as_bytes())
                }
                Err(e) => fail(&path, format!("delete: {e}"), false),
            },
            Request::Symlink { path, target, meta } => {
                if target.len() > wire::MAX_LINK_TARGET || target.is_empty() || target.contains(&0)
                {
                    fail(
                        &path,
                        "symlink target is empty, too long or contains NUL".into(),
                        false,
                    );
                } else if !keep(&path, false) {
                } else if let Err(e) = root.symlink(&path, &target, &meta) {
                    fail(&path, format!("symlink: {e}"), false);
                }
            }
            Request::Link { path, leader } => {
                if !keep(&path, false) {
                } else if let Err(e) = root.link(&path, &leader) {
                    fail(&path, format!("hard link to {leader}: {e}"), false);
                }
            }
            Request::Rename { to, .. } if !keep(&to, false) => {}
            Request::Rename { from, to } => match root.rename(&from, &to) {
                Ok(()) => {
                    sh.sigs.remove(&from);
                    sh.sigs.remove(&to);
                    let mut ix = sh.index.lock().unwrap_or_else(|p| p.into_inner());
                    ix.remove(from.as_bytes());
                    ix.remove(to.as_bytes());
                }
                // Best effort: the scoped reconcile that follows fixes both names.
                Err(e) => tracing::debug!(%from, %to, "rename not applied: {e}"),
            },
            Request::SetMeta { path, meta } => {
                if let Err(e) = root.set_meta(&path, &meta) {
                    fail(&path, format!("set metadata: {e}"), false);
                }
            }
            Request::SigRequest {
                id,
                path,
                block_size,
                strong_len,
            } => {
                let sig = root.open_file(&path).and_then(|f| {
                    let m = f.metadata()?;
                    let stamp = Stamp::of(&m);
                    if let Some(cached) = sh.sigs.get(&path, &stamp, block_size, strong_len) {
                        return Ok(cached);
                    }
                    let sig = delta::signature(
                        std::io::BufReader::with_capacity(1 << 20, f),
                        m.len(),
                        block_size,
                        strong_len,
                    )
                    .map_err(std::io::Error::other)?;
                    sh.sigs.put(&path, &stamp, block_size, strong_len, &sig);
                    Ok(sig)
                });
                let _ = reply.blocking_send(match sig {
                    Ok(data) => Reply::Signature { id, data },
                    Err(_) => Reply::NoSignature { id },
                });
            }
            Request::FileBegin {
                id,
                path,
                meta,
                size,
                encoding,
            } => {
                let slot = match begin_slot(&sh, &in_flight, size) {
                    Ok(s) => s,
                    Err((true, reason)) => {
                        // Fatal: this worker stops (its files in flight are
                        // dropped, staging removed) and the session ends.
                        tracing::error!("{reason}; ending the session");
                        let _ = reply.blocking_send(Reply::Fatal { reason });
                        return;
                    }
                    Err((false, e)) => {
                        fail(&path, e, false);
                        continue;
                    }
                };
                let base = match encoding {
                    Encoding::Whole => None,
                    Encoding::Delta => match root.open_file(&path) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            fail(&path, format!("delta base unavailable: {e}"), true);
                            continue;
                        }
                    },
                };
                match root.stage_for(&path) {
                    Ok(staged) => {
                        let out = BufWriter::with_capacity(
                            // Whole files arrive in big chunks; only delta output is fragmented.
                            if base.is_some() { 1 << 20 } else { 0 },
                            HashingFile {
                                staged,
                                hasher: blake3::Hasher::new(),
                                sig: (size >= sh.sig_min)
                                    .then(|| {
                                        let (b, st) = delta::options_for(size);
                                        delta::SigBuilder::new(b, st, size)
                                            .ok()
                                            .map(|sb| (b, st, sb))
                                    })
                                    .flatten(),
                            },
                        );
                        inflight.insert(
                            id,
                            InFlight {
                                slot,
                                path,
                                meta,
                                size,
                                written: 0,
                                out,
                                base,
                            },
                        );
                    }
                    Err(e) => fail(&path, format!("staging: {e}"), false),
                }
            }
            Request::FileData { id, data } => {
                let Some(f) = inflight.get_mut(&id) else {
                    continue;
                };
                f.written += data.len() as u64;
                let r = if f.written > f.size {
                    Err("more data than the announced size".to_string())
                } else {
                    f.slot.wrote(data.len() as u64);
                    f.out.write_all(&data).map_err(|e| format!("write: {e}"))
                };
                if let Err(e) = r {
                    let f = inflight.remove(&id).map(|f| f.path);
                    if let Some(p) = f {
                        fail(&p, e, false);
                    }
                }
            }
            Request::DeltaSegment { id, data } => {
                let Some(f) = inflight.get_mut(&id) else {
                    continue;
                };
                let limit = f.size.saturating_sub(f.written);
                let r = match &f.base {
                    Some(base) => {
                        delta::apply_segment_file(base, &data, &mut f.out, limit, &mut copy_buf)
                    }
                    None => Err(delta::DeltaError::Apply(
                        "delta for a file announced whole".into(),
                    )),
                };
                match r {
                    Ok(n) => {
                        f.written += n;
                        f.slot.wrote(n);
                    }
                    Err(e) => {
                        if let Some(f) = inflight.remove(&id) {
                            fail(&f.path, format!("{e}"), true);
                        }
                    }
                }
            }
            Request::FileAbort { id } => {
                inflight.remove(&id);
            }
            Request::FileEnd { id, hash } => {
                let Some(f) = inflight.remove(&id) else {
                    continue;
                };
                let InFlight {
                    path,
                    meta,
                    size,
                    written,
                    out,
                    base,
                    ..
                } = f;
                let hf = match out.into_inner() {
                    Ok(h) => h,
                    Err(e) => {
                        fail(&path, format!("write: {}", e.error()), false);
                        continue;
                    }
                };
                let got = *hf.hasher.finalize().as_bytes();
                if written != size || got != hash {
                    fail(&path, format!("content check failed (got {written} of {size} bytes, BLAKE3 {}); not committed", if got == hash { "ok" } else { "mismatch" }), true);
                    continue;
                }
                pending_bytes += size;
                pending.push(Verified {
                    staged: hf.staged,
                    path,
                    meta,
                    hash,
                    sig: hf.sig.map(|(b, st, sb)| (b, st, sb.finish())),
                    base,
                });
                if pending.len() >= batch_max || pending_bytes >= BATCH_BYTES {
                    commit_batch(&sh, &mut pending, &fail, &keep);
                    pending_bytes = 0;
                }
            }
            other => {
                tracing::warn!("unexpected request in worker: {other:?}");
            }
        }
    }
    // Session over: uncommitted staged files are removed by their Drop.
}

/// Makes a batch of verified files durable, then renames them into place in order.
fn commit_batch(
    sh: &Shared,
    pending: &mut Vec<Verified<'_>>,
    fail: &impl Fn(&RelPath, String, bool),
    keep: &impl Fn(&RelPath, bool) -> bool,
) {
    if pending.is_empty() {
        return;
    }
    if sh.durable {
        if let Err(e) = sh.root.sync() {
            for v in pending.drain(..) {
                fail(&v.path, format!("syncfs: {e}"), false);
            }
            return;
        }
    }
    let mut done = Vec::with_capacity(pending.len());
    let mut replaced = Vec::new();
    for v in pending.drain(..) {
        replaced.extend(v.base);
        if !keep(&v.path, false) {
            continue;
        }
        match sh.root.commit(v.staged, &v.path, &v.meta) {
            Ok(f) => {
                if let Ok(m) = f.metadata() {
                    let stamp = Stamp::of(&m);
                    // A stale entry for a small file is harmless: its stamp no longer matches.
                    if let Some((b, st, sig)) = &v.sig {
                        sh.sigs.put(&v.path, &stamp, *b, *st, sig);
                    }
                    done.push((v.path, stamp, v.hash));
                }
            }
            Err(e) => fail(&v.path, format!("commit: {e}"), false),
        }
    }
    if !replaced.is_empty() {
        // The last close of a replaced big file frees all its blocks (a
        // quarter second per GiB on ext4); the reply need not wait for it.
        let _ = std::thread::Builder::new()
            .name("syncd-release".into())
            .spawn(move || drop(replaced));
    }
    sh.committed.fetch_add(done.len() as u64, Ordering::Relaxed);
    sh.stats
        .committed
        .fetch_add(done.len() as u64, Ordering::Relaxed);
    let mut ix = sh.index.lock().unwrap_or_else(|p| p.into_inner());
    for (p, st, h) in done {
        ix.insert(p.as_bytes().to_vec(), st, h);
    }
}
