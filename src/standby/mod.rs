//! The standby: accepts one authenticated primary at a time and applies what
//! it sends.
//!
//! The flow, one file per step:
//!
//! - `accept.rs`: connections and sessions — the Hello, the generation
//!   verdict, one writing session at a time, the peer session;
//! - `session.rs`: the thin shell of a request stream — decode, feed the
//!   sans-IO [`Receiver`](syncd_proto::receiver::Receiver) (which holds the
//!   protocol's rules), carry out its effects, write replies;
//! - `stage.rs`: the stager — worker threads (lanes) that stage, write,
//!   apply deltas and check files; metadata all goes to lane 0 so it keeps
//!   its order;
//!   (`room.rs` reserves each file's declared size on the export);
//! - `local.rs` (with `placed.rs`, its durable record): files written on
//!   this follower by anything but syncd, kept before they are replaced;
//! - `commit.rs`: the committer — per batch, content flushed first and
//!   rename after, so a name never points at content that is not yet on
//!   disk; `durable.rs`: the one rule for how a batch is flushed (`fsync`
//!   of each file and directory for a small batch, one `syncfs` else).

mod accept;
mod commit;
mod digests;
mod local;
mod placed;
mod room;
mod session;
mod stage;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::fsroot::Root;
use crate::generation;
use crate::index::Index;
use crate::sigcache::SigCache;
use crate::tls::{self, Identity};
use syncd_proto::pair::lineage::{Lineage, NodeId};

pub use syncd_proto::receiver::{MAX_FAILURES, MAX_IN_FLIGHT};

/// Replies queued for the writer: beyond this, workers and the receive loop
/// wait (and so stop reading requests), so a primary that does not read its
/// replies cannot grow the standby's memory. A reply is at most a frame
/// (8 MiB; list chunks about 1 MiB), so this bounds the queue to 128 MiB.
pub const REPLY_QUEUE: usize = 16;
/// How long a stopping standby waits for its connections' closes to go out.
const STOP_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);
/// Verify sessions at once: each hashes the whole export on threads of its own.
pub const MAX_VERIFY_SESSIONS: usize = 4;

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

/// A poisoned lock still holds consistent data here (every critical section
/// is a few assignments), so a panic elsewhere does not stop the standby.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// Write-back errors the export's flushes have reported (see
    /// [`Shared::sync_export`]).
    wb_errors: AtomicU64,
    /// One flush of the export at a time.
    sync_lock: Mutex<()>,
    /// Verify sessions running.
    verifies: AtomicUsize,
    /// What syncd last put at each path (local writes are told apart).
    placed: Mutex<placed::Placed>,
    /// Where local writes are kept (opened when the first one is).
    local_keeper: Mutex<Option<Arc<crate::conflicts::Keeper>>>,
    state_dir: std::path::PathBuf,
    /// The state directory, when it is on another filesystem than the
    /// export: a durable commit flushes it too (the generation record and
    /// the ledger are written there before the flush).
    state_fs: Option<std::fs::File>,
}

impl Shared {
    fn lineage(&self) -> Lineage {
        lock(&self.record).lineage.clone()
    }

    /// `syncfs` of the export; the count of write-back errors after it. An
    /// error is reported once (per descriptor, and every flush shares one),
    /// maybe to a flush for other files than the ones whose pages failed:
    /// so each is counted, under the lock that makes flushes one at a
    /// time, and a file begun before the count moved is not placed
    /// (`commit_batch`).
    fn sync_export(&self) -> std::io::Result<u64> {
        let _one = lock(&self.sync_lock);
        match self.root.sync() {
            Ok(()) => Ok(self.wb_errors.load(std::sync::atomic::Ordering::SeqCst)),
            Err(e) => {
                self.wb_errors
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn emit(&self, e: StandbyEvent) {
        if let Some(tx) = self.events.get() {
            let _ = tx.try_send(e);
        }
    }
}

pub struct Standby {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    cfg: Config,
    busy: Arc<accept::Busy>,
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
        let export_err = |e| StandbyError::Export(cfg.export.display().to_string(), e);
        let root = Root::open(&cfg.export)
            .map_err(export_err)?
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
        let record = store
            .load()
            .map_err(|e| export_err(std::io::Error::other(e.to_string())))?;
        let sc = tls::server_config(&id)?;
        let endpoint = tls::endpoint(listen, Some(sc)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                StandbyError::Config(cfg.port_error("listen", listen, e))
            } else {
                StandbyError::Listen(listen, e)
            }
        })?;
        let stats = Arc::new(crate::stats::Stats::new(role, listen.to_string()));
        stats.set_generation(&record.lineage, None);
        let node = generation::node_id(&id);
        let mut placed = placed::Placed::load(&cfg.state_dir);
        if record.lineage.gen.node == node && record.lineage.gen.counter > 0 {
            // This node leads or led its current data: its own clients
            // wrote it, and the ledger (if any) is older than that.
            if let Err(e) = placed.invalidate() {
                tracing::warn!("{e}");
            }
        }
        local::settle(&root, &mut placed);
        let shared = Arc::new(Shared {
            root,
            index: Mutex::new(index),
            committed: AtomicU64::new(0),
            durable: cfg.sync.durable,
            sigs: SigCache::new(&cfg.state_dir),
            sig_min: cfg.sync.delta_min_size,
            stats,
            node,
            store,
            record: Mutex::new(record),
            events: std::sync::OnceLock::new(),
            peer_sessions: AtomicUsize::new(0),
            reserved: AtomicU64::new(0),
            wb_errors: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            verifies: AtomicUsize::new(0),
            placed: Mutex::new(placed),
            local_keeper: Mutex::new(None),
            state_dir: cfg.state_dir.clone(),
            state_fs: elsewhere(&cfg.export, &cfg.state_dir),
        });
        Ok(Standby {
            endpoint,
            shared,
            cfg,
            busy: Arc::default(),
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

    /// Counters served on the admin address.
    pub fn stats(&self) -> Arc<crate::stats::Stats> {
        self.shared.stats.clone()
    }

    /// Serves until `shutdown` resolves; an active session is abandoned
    /// safely (its staged files are removed, nothing half-applied).
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
            tokio::spawn(accept::connection(incoming, shared, cfg, busy));
        }
        self.endpoint.close(0u32.into(), b"shutdown");
        // The close is only queued: a process that exits now often takes
        // it along unsent, and the primary then waits out the idle timeout
        // (6 s) before it knows. Draining takes three probe timeouts (~80 ms
        // on a LAN); the bound keeps a stop quick on a slow link or a
        // starved machine.
        let _ = tokio::time::timeout(STOP_DRAIN, self.endpoint.wait_idle()).await;
        tracing::info!("standby stopped");
    }
}

/// An embedder's view of a running standby's generation record.
#[derive(Clone)]
pub struct StandbyHandle(Arc<Shared>, Arc<accept::Busy>);

impl StandbyHandle {
    pub fn record(&self) -> generation::Record {
        lock(&self.0.record).clone()
    }

    /// Saves `r` durably and makes it the one the standby judges by (a
    /// promotion, a newer generation heard from the peer).
    pub fn save_record(&self, r: generation::Record) -> Result<(), generation::RecordError> {
        let mut cur = lock(&self.0.record);
        self.0.store.save(&r)?;
        self.0.stats.set_generation(&r.lineage, None);
        let promoted = r.lineage.gen != cur.lineage.gen && r.lineage.gen.node == self.0.node;
        *cur = r;
        drop(cur);
        if promoted {
            // Its clients write here now, none of it through syncd.
            if let Err(e) = lock(&self.0.placed).invalidate() {
                tracing::warn!("{e}");
            }
            self.0.stats.local_writes.store(0, Ordering::Relaxed);
            // This node leads now: a session of the former leader that
            // survived a short cut must not write here any more.
            if let Some(c) = lock(&self.1.current).take() {
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
    /// The protocol version of the peer's latest peer session (from its
    /// Hello): a `--role auto` node does not take the lead beside
    /// a peer of a version that cannot be judged (see
    /// `syncd_proto::version::Features::may_lead_beside`).
    PeerProtocol(u32),
}

/// `state` opened, unless it is on the export's filesystem (by device).
fn elsewhere(export: &std::path::Path, state: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    match (dev(export), dev(state)) {
        (Some(a), Some(b)) if a == b => None,
        _ => std::fs::File::open(state).ok(),
    }
}
