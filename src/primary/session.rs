//! The primary's side of a session: connect, compare, send.
//! Used by `syncd resync` and `syncd verify`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::generation::Leading;
use crate::index::{Index, Stamp};
use crate::lease::Settle;
use crate::meta_policy::MetaPolicy;
use crate::path::RelPath;
use crate::plan::{self, FileOp, Plan, PlanOptions};
use crate::scan::{self, Scan};
use crate::stream::{Stream, StreamError};
use crate::tls::{self, Identity};
use crate::transfer::{changed, open_source, untouched, Opened, Outcome, Sent, Transfers};
use crate::wire::{self, Encoding, Entry, Failure, Kind, Purpose, Reply, Request, Scope};
use syncd_proto::pair::lineage::{Lineage, NodeId};

/// Files at most this big are read in one go and pipelined on the control
/// stream; bigger ones (and deltas) get a stream each (see [`crate::transfer`]).
const SMALL: u64 = 1 << 20;
const PIPELINE: usize = 64;

impl From<StreamError> for ClientError {
    fn from(e: StreamError) -> ClientError {
        match e {
            StreamError::Fatal(r) => ClientError::Fatal(r),
            StreamError::Closed => ClientError::Protocol("standby closed the session".into()),
            StreamError::Wire(w) => ClientError::Wire(w),
            StreamError::Timeout(d) => ClientError::Timeout(d),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to standby {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("standby refused the session: {0}")]
    Refused(String, Option<Lineage>),
    #[error("standby reported a fatal error: {0}")]
    Fatal(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("local export: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "no reply from the standby within {0:?}: it is hung or overloaded; ending the session"
    )]
    Timeout(Duration),
}

/// A standby's manifest larger than this is refused (a hostile or broken
/// standby could otherwise send an endless list): 50 million entries, or
/// 16 GiB of paths and targets.
pub const MAX_LIST_ENTRIES: usize = 50_000_000;
pub const MAX_LIST_BYTES: u64 = 16 << 30;

fn record_error(e: crate::generation::RecordError) -> ClientError {
    ClientError::Io(std::io::Error::other(e.to_string()))
}

pub struct Session {
    conn: quinn::Connection,
    /// The standby's node and generation, from its Welcome.
    pub peer: Option<(NodeId, Lineage)>,
    /// The protocol version and node name its Welcome gave.
    pub peer_version: (u32, String),
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
    /// Failures the standby only counted (see `Reply::FailuresDropped`).
    failures_dropped: u64,
    /// Caps on a manifest (tests lower them).
    list_limits: (usize, u64),
    /// What the standby does with owners and modes, from its Welcome;
    /// `None` from a standby that predates it.
    pub standby_policy: Option<MetaPolicy>,
}

impl Session {
    /// Opens a session as `me` (our node and generation, sent in the Hello).
    pub async fn connect(
        cfg: &Config,
        purpose: Purpose,
        me: &Leading,
    ) -> Result<Session, ClientError> {
        Session::connect_as(cfg, purpose, me.node, &me.record.lineage).await
    }

    /// [`Session::connect`] with the node and lineage given directly.
    pub async fn connect_as(
        cfg: &Config,
        purpose: Purpose,
        node: NodeId,
        lineage: &Lineage,
    ) -> Result<Session, ClientError> {
        let peer = cfg.require_peer()?;
        let id = Identity::from_config(cfg)?;
        let bind: SocketAddr = if peer.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(peer)
        } else {
            "[::]:0".parse().unwrap_or(peer)
        };
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(peer, e.to_string()))?;
        endpoint.set_default_client_config(tls::client_config(&id)?);
        let conn = endpoint
            .connect(peer, "syncd")
            .map_err(|e| ClientError::Connect(peer, e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .map_err(|_| {
                ClientError::Connect(
                    peer,
                    "no answer within 10 s (is the standby running and the port open?)".into(),
                )
            })?
            .map_err(|e| ClientError::Connect(peer, e.to_string()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Connect(peer, e.to_string()))?;
        let mut s = Session {
            peer: None,
            peer_version: (0, String::new()),
            transfers: Transfers::new(conn.clone(), cfg.export.clone(), cfg.sync.reply_timeout),
            conn,
            ctl: Stream::new(send, recv),
            _endpoint: endpoint,
            delta_bytes: 0,
            files_tx: 0,
            files_rx: 0,
            failures_dropped: 0,
            list_limits: (MAX_LIST_ENTRIES, MAX_LIST_BYTES),
            standby_policy: None,
        };
        s.ctl.deadline = cfg.sync.reply_timeout;
        s.send(&Request::Hello {
            version: wire::PROTOCOL_VERSION,
            export_id: cfg.export_id.clone(),
            node_id: cfg.node_id.clone(),
            purpose,
            node,
            lineage: lineage.clone(),
        })
        .await?;
        match s.reply().await? {
            Reply::Welcome {
                node,
                lineage,
                version,
                node_id,
            } => {
                s.peer = Some((node, lineage));
                s.peer_version = (version, node_id);
                s.standby_policy = wire::welcome_policy(s.ctl.last_frame()).map_err(|e| {
                    ClientError::Protocol(format!("the standby's metadata policy: {e}"))
                })?;
                Ok(s)
            }
            Reply::Refused { reason, lineage } => Err(ClientError::Refused(reason, lineage)),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
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

    /// Closes the connection and gives the close a moment to reach the standby,
    /// so it can start the next session at once.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(50), self._endpoint.wait_idle()).await;
    }

    /// Queues a request on the control stream; small messages are batched
    /// into larger stream writes, and everything queued is flushed before we
    /// wait for a reply.
    pub async fn send(&mut self, r: &Request) -> Result<(), ClientError> {
        Ok(self.ctl.send(r).await?)
    }

    /// Sends an already-encoded payload as one frame. Exists so tests can
    /// play a hostile primary; a real primary only sends typed requests.
    #[doc(hidden)]
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        Ok(self.ctl.send_frame(payload).await?)
    }

    async fn reply(&mut self) -> Result<Reply, ClientError> {
        Ok(self.ctl.reply().await?)
    }

    /// Our entries as the standby stores them (its `[standby]` policy), and
    /// whether owners are worth comparing: a mapped owner or a stripped bit
    /// is not a difference to re-send on every compare.
    pub fn as_standby_stores(&self, entries: &mut [Entry]) -> bool {
        match &self.standby_policy {
            Some(p) => {
                p.map_entries(entries);
                p.compares_owners()
            }
            // An older standby keeps owners when it runs as root; that we
            // do is the best guess there is.
            None => rustix::process::geteuid().is_root(),
        }
    }

    /// Failures the standby reported only as a number since the last call:
    /// which files they were is unknown, so a whole-tree compare retries them.
    pub fn take_failures_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.failures_dropped)
    }

    /// Lowers the caps on a manifest (tests play a standby with an endless one).
    #[doc(hidden)]
    pub fn set_list_limits(&mut self, entries: usize, bytes: u64) {
        self.list_limits = (entries, bytes);
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
    /// `index`; never resolves while none is running. Cancel-safe.
    pub async fn next_transfer(&mut self, sum: &mut Summary, index: &mut Index) -> Option<RelPath> {
        let o = self.transfers.next().await?;
        let p = o.op.path.clone();
        self.absorb(o, sum, index);
        Some(p)
    }

    /// Waits for every large transfer (before Finish, or before a barrier
    /// that must cover them).
    pub async fn drain_transfers(&mut self, sum: &mut Summary, index: &mut Index) {
        for o in self.transfers.drain().await {
            self.absorb(o, sum, index);
        }
    }

    fn absorb(&mut self, o: Outcome, sum: &mut Summary, index: &mut Index) {
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
            Ok(Sent::Fallback) => sum.failures.push(Failure {
                path: o.op.path,
                error: "could not be sent".into(),
                retry_whole: false,
            }),
            Err(f) => sum.failures.push(f),
        }
    }

    /// Next reply on the control stream.
    async fn control_reply(&mut self) -> Result<Reply, ClientError> {
        self.reply().await
    }

    pub async fn list(&mut self, checksum: bool) -> Result<Vec<Entry>, ClientError> {
        self.send(&Request::List { checksum }).await?;
        if !checksum {
            return self.list_reply().await;
        }
        // Hashing the whole export comes before the first chunk: as long
        // as that takes, the reply deadline does not apply to it.
        let d = self.ctl.deadline.take();
        let r = self.list_reply().await;
        self.ctl.deadline = d;
        r
    }

    /// Like [`Session::list`] for part of the tree.
    pub async fn list_scope(&mut self, scope: Vec<Scope>) -> Result<Vec<Entry>, ClientError> {
        self.send(&Request::ListScope { scope }).await?;
        self.list_reply().await
    }

    async fn list_reply(&mut self) -> Result<Vec<Entry>, ClientError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let (max_entries, max_bytes) = self.list_limits;
        loop {
            match self.control_reply().await? {
                Reply::ListChunk { entries } => {
                    bytes += entries
                        .iter()
                        .map(|e| {
                            let extra = match &e.kind {
                                Kind::Symlink { target } => target.len(),
                                Kind::HardLink { leader } => leader.as_bytes().len(),
                                _ => 0,
                            };
                            (e.path.as_bytes().len() + extra) as u64
                        })
                        .sum::<u64>();
                    if out.len() + entries.len() > max_entries || bytes > max_bytes {
                        return Err(ClientError::Protocol(format!(
                            "the standby's list exceeds {max_entries} entries or {max_bytes} bytes of names; refusing it (is the standby's export the right directory?)"
                        )));
                    }
                    out.extend(entries)
                }
                Reply::ListEnd => return Ok(out),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected a list, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Everything sent so far is committed and durable on the standby.
    pub async fn commit(&mut self, id: u64) -> Result<Vec<Failure>, ClientError> {
        self.send(&Request::Commit { id }).await?;
        self.barrier_reply(id).await
    }

    /// Collects barrier `id`'s failures: any `FailureChunk`s, then `BarrierDone`.
    async fn barrier_reply(&mut self, id: u64) -> Result<Vec<Failure>, ClientError> {
        let mut all = Vec::new();
        loop {
            match self.control_reply().await? {
                Reply::FailureChunk { id: got, failures } if got == id => all.extend(failures),
                Reply::FailuresDropped { id: got, count } if got == id => {
                    self.failures_dropped += count
                }
                Reply::BarrierDone { id: got, failures } if got == id => {
                    all.extend(failures);
                    return Ok(all);
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected BarrierDone, got {other:?}"
                    )))
                }
            }
        }
    }

    /// Sends a rename to replay (best effort on the standby).
    pub async fn rename(&mut self, from: RelPath, to: RelPath) -> Result<(), ClientError> {
        self.send(&Request::Rename { from, to }).await
    }

    pub async fn barrier(&mut self, id: u64) -> Result<Vec<Failure>, ClientError> {
        self.send(&Request::Barrier { id }).await?;
        self.barrier_reply(id).await
    }

    pub async fn finish(mut self) -> Result<(u64, quinn::ConnectionStats, u64, u64), ClientError> {
        self.send(&Request::Finish).await?;
        let r = self.control_reply().await?;
        let stats = self.conn.stats();
        self.close().await;
        match r {
            Reply::Finished { committed } => {
                let (tx, rx) = self.wire_bytes();
                Ok((committed, stats, tx, rx))
            }
            other => Err(ClientError::Protocol(format!(
                "expected Finished, got {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ResyncOptions {
    /// Live replication: hold back files open for writing until closed or
    /// quiet this long (see [`crate::lease`]). `None` for one-shot resync.
    pub settle: Option<Settle>,
    /// Live replication: large transfers keep running after `reconcile`
    /// returns; their outcomes come from [`Session::next_transfer`].
    pub background: bool,
    /// Live replication: a scoped reconcile leaves out hard-linked files
    /// whose other names are outside its scope (sending one as a file would
    /// break the link on the standby) and counts them in
    /// [`Summary::deferred_links`], for a full reconcile to link them;
    /// except inodes listed here, known to have names outside the export.
    pub defer_links: Option<Arc<HashSet<(u64, u64)>>>,
    pub dry_run: bool,
    pub checksum: bool,
    pub delete: bool,
    pub progress: bool,
    /// Start a new generation above the standby's even when it holds newer
    /// data (`syncd resync --take-over`): its diverged files are kept in
    /// its conflicts area.
    pub take_over: bool,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub scanned: u64,
    pub sent_whole: u64,
    pub sent_delta: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub dirs_created: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    pub meta_only: u64,
    pub skipped: Vec<String>,
    pub vanished: u64,
    pub content_bytes: u64,
    /// Planned content bytes of files sent whole / as deltas.
    pub bytes_whole: u64,
    pub bytes_delta: u64,
    /// Bytes of delta instructions and literals sent for delta files.
    pub delta_bytes: u64,
    /// Protocol bytes sent / received (frames, like rsync's --stats totals).
    pub wire_tx: u64,
    pub wire_rx: u64,
    /// UDP payload both ways, including QUIC and TLS overhead.
    pub udp_bytes: u64,
    pub elapsed: Duration,
    pub failures: Vec<Failure>,
    /// Files not sent because another process has them open for writing
    /// (live replication only); they go once closed.
    pub busy: Vec<RelPath>,
    /// Hard-linked files left for a full reconcile (see
    /// [`ResyncOptions::defer_links`]).
    pub deferred_links: u64,
    /// After a full scan: hard-linked inodes with names outside the export.
    pub links_outside: HashSet<(u64, u64)>,
    /// Failures beyond those listed, which the standby only counted.
    pub failures_dropped: u64,
    pub dry_run: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "{}files scanned {}, sent whole {}, sent as delta {}, deleted {}, unchanged {}",
            if self.dry_run { "(dry run) " } else { "" },
            self.scanned,
            self.sent_whole,
            self.sent_delta,
            self.deleted,
            self.unchanged
        )?;
        writeln!(f, "directories created {}, symlinks {}, hard links {}, metadata-only {}, skipped {}, vanished {}", self.dirs_created, self.symlinks, self.hard_links, self.meta_only, self.skipped.len(), self.vanished)?;
        write!(
            f,
            "changed content {:.1} MiB (delta payload {} bytes), on the wire {:.1} MiB sent + {:.1} MiB received ({} + {} bytes; {} bytes of UDP payload with QUIC overhead), time {:.2} s",
            mib(self.content_bytes),
            self.delta_bytes,
            mib(self.wire_tx),
            mib(self.wire_rx),
            self.wire_tx,
            self.wire_rx,
            self.udp_bytes,
            self.elapsed.as_secs_f64()
        )?;
        for fl in &self.failures {
            write!(f, "\nFAILED {}: {}", fl.path, fl.error)?;
        }
        if self.failures_dropped > 0 {
            write!(
                f,
                "\nFAILED {} more files, not listed by the standby; run the resync again",
                self.failures_dropped
            )?;
        }
        Ok(())
    }
}

/// One-shot: make the standby equal to this primary.
pub async fn resync(cfg: &Config, o: &ResyncOptions) -> Result<Summary, ClientError> {
    let t0 = Instant::now();
    // A dry run changes nothing, neither the generations: it only lists.
    let (purpose, mut me) = if o.dry_run {
        (
            Purpose::Verify,
            Leading::current(cfg).map_err(record_error)?,
        )
    } else {
        (
            Purpose::Resync,
            Leading::start(cfg, o.take_over).map_err(record_error)?,
        )
    };
    let mut s = match Session::connect(cfg, purpose.clone(), &me).await {
        Err(ClientError::Refused(reason, Some(theirs))) => {
            me.saw_peer(&theirs);
            if !o.take_over {
                return Err(ClientError::Refused(reason, Some(theirs)));
            }
            // Taking over: start a generation above the one that refused us.
            me = Leading::start(cfg, true).map_err(record_error)?;
            Session::connect(cfg, purpose, &me).await?
        }
        r => r?,
    };
    if let Some((_, theirs)) = &s.peer {
        me.saw_peer(&theirs.clone());
    }
    let mut index = Index::load(&cfg.state_dir.join("index.bin"));
    let mut sum = reconcile(&mut s, cfg, o, &mut index, None).await?;
    sum.failures_dropped = s.take_failures_dropped();
    if !o.dry_run && sum.failures.is_empty() && sum.failures_dropped == 0 {
        // All of it is on the standby: it follows our generation from now.
        s.send(&Request::CaughtUp).await?;
    }
    let (_committed, stats, tx, rx) = s.finish().await?;
    if !o.dry_run {
        me.save();
    }
    if !o.dry_run {
        if let Err(e) = index.save() {
            tracing::warn!("could not save the primary's index: {e}");
        }
    }
    sum.wire_tx = tx;
    sum.wire_rx = rx;
    sum.udp_bytes = stats.udp_tx.bytes + stats.udp_rx.bytes;
    sum.elapsed = t0.elapsed();
    Ok(sum)
}

/// Compares this primary with the standby, over the whole tree or just
/// `scope`, and sends what differs; ends with a barrier (not yet durable).
/// The one comparison behind `resync`, reconnects and live replication.
pub async fn reconcile(
    s: &mut Session,
    cfg: &Config,
    o: &ResyncOptions,
    index: &mut Index,
    scope: Option<Vec<Scope>>,
) -> Result<Summary, ClientError> {
    let t0 = Instant::now();
    let checksum = o.checksum;
    let root = cfg.export.clone();
    let mut ix = std::mem::take(index);
    let local_scope = scope.clone();
    let scoped = scope.is_some();
    let local = tokio::task::spawn_blocking(move || {
        let r = match &local_scope {
            None => scan::scan(&root, &mut ix, checksum, checksum),
            Some(sc) => scan::scan_scoped(&root, &mut ix, sc, checksum),
        };
        (r, ix)
    });
    let remote = match scope {
        None => s.list(o.checksum).await,
        Some(sc) => s.list_scope(sc).await,
    };
    let (local, ix) = local
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    *index = ix;
    let (mut local, mut remote): (Scan, Vec<Entry>) = (local?, remote?);
    let mut deferred_links = 0;
    let mut links_outside = HashSet::new();
    if !scoped {
        links_outside = local.partial_links.iter().map(|g| g.key).collect();
    } else if let Some(outside) = &o.defer_links {
        let defer: HashSet<&RelPath> = local
            .partial_links
            .iter()
            .filter(|g| !outside.contains(&g.key))
            .flat_map(|g| &g.names)
            .collect();
        if !defer.is_empty() {
            deferred_links = defer.len() as u64;
            // Out of both sides' lists: neither sent nor deleted now.
            let defer: HashSet<RelPath> = defer.into_iter().cloned().collect();
            local.entries.retain(|e| !defer.contains(&e.path));
            remote.retain(|e| !defer.contains(&e.path));
        }
    }
    if !local.unreadable.is_empty() {
        // What is there locally is unknown: leave the standby's copy alone
        // rather than delete it as if it were gone here.
        let unknown: HashSet<&RelPath> = local.unreadable.iter().collect();
        remote.retain(|e| {
            !std::iter::successors(Some(e.path.clone()), |p| p.parent())
                .any(|p| unknown.contains(&p))
        });
    }
    let owners = s.as_standby_stores(&mut local.entries);
    let p = plan::plan(
        &local.entries,
        &remote,
        &PlanOptions {
            delete: o.delete,
            checksum: o.checksum,
            delta_min_size: cfg.sync.delta_min_size,
            owners,
        },
    );
    let bytes_delta = p.files.iter().filter(|f| f.delta).map(|f| f.size).sum();
    let mut sum = Summary {
        scanned: local.entries.len() as u64,
        unchanged: p.unchanged,
        skipped: local.skipped.clone(),
        content_bytes: p.content_bytes,
        bytes_whole: p.content_bytes - bytes_delta,
        bytes_delta,
        deferred_links,
        links_outside,
        dry_run: o.dry_run,
        ..Default::default()
    };
    if o.dry_run {
        for d in &p.deletes {
            println!("delete {d}");
        }
        for d in &p.mkdirs {
            println!("mkdir  {d}");
        }
        for f in &p.files {
            println!(
                "{} {} ({} bytes)",
                if f.delta { "delta " } else { "send  " },
                f.path,
                f.size
            );
        }
        for (l, _, _) in &p.symlinks {
            println!("link   {l}");
        }
        for (l, t) in &p.links {
            println!("hard   {l} => {t}");
        }
        sum.sent_whole = p.files.iter().filter(|f| !f.delta).count() as u64;
        sum.sent_delta = p.files.len() as u64 - sum.sent_whole;
        sum.deleted = p.deletes.len() as u64;
        sum.elapsed = t0.elapsed();
        return Ok(sum);
    }
    let bar = progress_bar(o.progress, &p);
    execute(s, cfg, o, &p, &mut sum, index, &bar).await?;
    bar.finish_and_clear();
    sum.elapsed = t0.elapsed();
    Ok(sum)
}

fn progress_bar(enabled: bool, p: &Plan) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(p.content_bytes);
    b.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(format!("0/{} files", p.files.len()));
    b
}

async fn execute(
    s: &mut Session,
    cfg: &Config,
    o: &ResyncOptions,
    p: &Plan,
    sum: &mut Summary,
    index: &mut Index,
    bar: &ProgressBar,
) -> Result<(), ClientError> {
    let (settle, background) = (o.settle.clone(), o.background);
    let mut barrier_id = 0u64;
    let mut next_barrier = || {
        barrier_id += 1;
        barrier_id
    };
    // 1. Deletes.
    for d in &p.deletes {
        s.send(&Request::Delete { path: d.clone() }).await?;
    }
    sum.deleted = p.deletes.len() as u64;
    // 2. Directories, parents first (worker 0 keeps the order).
    for d in &p.mkdirs {
        let meta = wire::Meta {
            mode: 0o700,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
        };
        s.send(&Request::Mkdir {
            path: d.clone(),
            meta,
        })
        .await?;
    }
    sum.dirs_created = p.mkdirs.len() as u64;
    let f = s.barrier(next_barrier()).await?;
    sum.failures.extend(f);

    // 3. Content. Large files and deltas start on their own streams first, so
    // they run while the small files stream in order on the control stream.
    let mut next_id = 0u64;
    let (large, small): (Vec<&FileOp>, Vec<&FileOp>) =
        p.files.iter().partition(|f| f.delta || f.size > SMALL);
    for f in large {
        if s.transfers.busy(&f.path) {
            // Still going from an earlier batch; its end re-checks the path.
            continue;
        }
        if let Some(o) = s.transfers.start(f.clone(), settle.clone(), bar).await {
            s.absorb(o, sum, index);
        }
    }
    send_whole(
        s,
        cfg,
        settle.clone(),
        &small,
        &mut next_id,
        sum,
        index,
        bar,
    )
    .await?;
    for (path, target, meta) in &p.symlinks {
        s.send(&Request::Symlink {
            path: path.clone(),
            target: target.clone(),
            meta: *meta,
        })
        .await?;
    }
    sum.symlinks = p.symlinks.len() as u64;
    if !background {
        s.drain_transfers(sum, index).await;
    }
    let failures = s.barrier(next_barrier()).await?;
    // A small file that failed verification is resent whole once.
    let mut retry = Vec::new();
    for fl in failures {
        match small.iter().find(|f| f.path == fl.path) {
            Some(f) if fl.retry_whole => {
                tracing::info!(path = %f.path, "resending whole after: {}", fl.error);
                sum.sent_whole = sum.sent_whole.saturating_sub(1);
                retry.push(*f);
            }
            _ => sum.failures.push(fl),
        }
    }
    if !retry.is_empty() {
        send_whole(s, cfg, settle, &retry, &mut next_id, sum, index, bar).await?;
        sum.failures.extend(s.barrier(next_barrier()).await?);
    }
    // 4. Hard links (their leaders are now in place), then metadata, deepest first.
    for (path, leader) in &p.links {
        s.send(&Request::Link {
            path: path.clone(),
            leader: leader.clone(),
        })
        .await?;
    }
    sum.hard_links = p.links.len() as u64;
    for (path, meta) in &p.metas {
        s.send(&Request::SetMeta {
            path: path.clone(),
            meta: *meta,
        })
        .await?;
    }
    sum.meta_only = p.meta_changes;
    sum.failures.extend(s.barrier(next_barrier()).await?);
    Ok(())
}

/// What a reader thread produced for one file.
enum Read1 {
    Msgs(Vec<Request>, Option<(Stamp, wire::Hash)>),
    Vanished,
    /// Open for writing elsewhere: try again once it is closed.
    Busy,
}

/// Reads a small file completely; `None` if it changed while being read.
fn read_small(
    export: &std::path::Path,
    op: FileOp,
    id: u64,
    settle: Option<Settle>,
) -> std::io::Result<Option<Read1>> {
    let (f, before, lease) = match open_source(export, &op.path, settle.as_ref())? {
        Opened::Gone => return Ok(Some(Read1::Vanished)),
        Opened::Busy => return Ok(Some(Read1::Busy)),
        Opened::File(f, m, leased) => (f, m, leased),
    };
    let mut data = Vec::with_capacity(before.len() as usize);
    // One byte more than the scan saw tells "grew" without reading on
    // behind a writer that keeps appending.
    (&f).take(before.len() + 1).read_to_end(&mut data)?;
    let after = f.metadata()?;
    if !untouched(&f, lease) {
        return Ok(Some(Read1::Busy));
    }
    if changed(&before, &after) || data.len() as u64 != after.len() {
        return Ok(None);
    }
    let hash = *blake3::hash(&data).as_bytes();
    let meta = scan::meta_of(&after);
    let mut msgs = vec![Request::FileBegin {
        id,
        path: op.path,
        meta,
        size: data.len() as u64,
        encoding: Encoding::Whole,
    }];
    if !data.is_empty() {
        msgs.push(Request::FileData { id, data });
    }
    msgs.push(Request::FileEnd { id, hash });
    Ok(Some(Read1::Msgs(msgs, Some((Stamp::of(&after), hash)))))
}

#[allow(clippy::too_many_arguments)]
async fn send_whole(
    s: &mut Session,
    cfg: &Config,
    settle: Option<Settle>,
    files: &[&FileOp],
    next_id: &mut u64,
    sum: &mut Summary,
    index: &mut Index,
    bar: &ProgressBar,
) -> Result<(), ClientError> {
    let mut queue: VecDeque<(
        &FileOp,
        tokio::task::JoinHandle<std::io::Result<Option<Read1>>>,
    )> = VecDeque::new();
    // Only small files come here; large ones have their own streams.
    let mut it = files.iter().peekable();
    loop {
        // Keep up to PIPELINE small files being read ahead.
        while queue.len() < PIPELINE {
            match it.peek() {
                Some(_) => {
                    let f = *it.next().unwrap_or(&files[0]);
                    *next_id += 1;
                    let id = *next_id;
                    let export = cfg.export.clone();
                    let op = f.clone();
                    let settle = settle.clone();
                    queue.push_back((
                        f,
                        tokio::task::spawn_blocking(move || read_small(&export, op, id, settle)),
                    ));
                }
                _ => break,
            }
        }
        let Some((f, h)) = queue.pop_front() else {
            return Ok(());
        };
        let mut res = h.await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        // A file that changed while being read is re-read a few times.
        let mut tries = 0;
        while res.as_ref().map(|r| r.is_none()).unwrap_or(false) && tries < 3 {
            tries += 1;
            *next_id += 1;
            let (export, op, id) = (cfg.export.clone(), f.clone(), *next_id);
            let settle = settle.clone();
            res = tokio::task::spawn_blocking(move || read_small(&export, op, id, settle))
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
        }
        match res {
            Ok(Some(Read1::Msgs(msgs, stamp))) => {
                for m in &msgs {
                    s.send(m).await?;
                }
                if let Some((st, h)) = stamp {
                    index.insert(f.path.as_bytes().to_vec(), st, h);
                }
                sum.sent_whole += 1;
                bar.inc(f.size);
                bar.set_message(format!("{} files", sum.sent_whole + sum.sent_delta));
            }
            Ok(Some(Read1::Vanished)) => sum.vanished += 1,
            Ok(Some(Read1::Busy)) => sum.busy.push(f.path.clone()),
            Ok(None) => sum.failures.push(Failure {
                path: f.path.clone(),
                error: "kept changing while being read; skipped (the next run will send it)".into(),
                retry_whole: false,
            }),
            Err(e) => sum.failures.push(Failure {
                path: f.path.clone(),
                error: format!("read: {e}"),
                retry_whole: false,
            }),
        }
    }
}

/// One difference found by `verify`.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    pub path: RelPath,
    pub what: String,
}

/// Compares both trees with full content hashes; changes nothing.
pub async fn verify(cfg: &Config) -> Result<Vec<Difference>, ClientError> {
    let me = Leading::current(cfg).map_err(record_error)?;
    let mut s = Session::connect(cfg, Purpose::Verify, &me).await?;
    let c2 = cfg.clone();
    let local = tokio::task::spawn_blocking(move || {
        let mut ix = Index::load(&c2.state_dir.join("index.bin"));
        scan::scan(&c2.export, &mut ix, true, true)
    });
    let remote = s.list(true).await?;
    let mut local = local
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
    let owners = s.as_standby_stores(&mut local.entries);
    let _ = s.finish().await;
    Ok(compare(&local.entries, &remote, owners))
}

pub fn compare(local: &[Entry], remote: &[Entry], owners: bool) -> Vec<Difference> {
    let rmap: HashMap<&RelPath, &Entry> = remote.iter().map(|e| (&e.path, e)).collect();
    let lset: std::collections::HashSet<&RelPath> = local.iter().map(|e| &e.path).collect();
    let mut out = Vec::new();
    let d = |p: &RelPath, w: String| Difference {
        path: p.clone(),
        what: w,
    };
    for l in local {
        let Some(r) = rmap.get(&l.path) else {
            out.push(d(&l.path, "missing on standby".into()));
            continue;
        };
        let what = match (&l.kind, &r.kind) {
            (Kind::File { size: a, hash: ha }, Kind::File { size: b, hash: hb }) => {
                if a != b {
                    Some(format!("size {a} vs {b}"))
                } else if ha != hb {
                    Some("content differs".into())
                } else {
                    None
                }
            }
            (Kind::Dir, Kind::Dir) => None,
            (Kind::Symlink { target: a }, Kind::Symlink { target: b }) => (a != b).then(|| {
                format!(
                    "symlink target {:?} vs {:?}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                )
            }),
            (Kind::HardLink { leader: a }, Kind::HardLink { leader: b }) => {
                (a != b).then(|| format!("hard link to {a} vs {b}"))
            }
            (a, b) => Some(format!("type {} vs {}", kind_name(a), kind_name(b))),
        };
        if let Some(w) = what {
            out.push(d(&l.path, w));
            continue;
        }
        let (a, b) = (&l.meta, &r.meta);
        let is_link = matches!(l.kind, Kind::Symlink { .. });
        let is_hard = matches!(l.kind, Kind::HardLink { .. });
        if is_hard {
            continue;
        }
        if !is_link && a.mode != b.mode {
            out.push(d(&l.path, format!("mode {:o} vs {:o}", a.mode, b.mode)));
        } else if (a.mtime_sec, a.mtime_nsec) != (b.mtime_sec, b.mtime_nsec) {
            out.push(d(
                &l.path,
                format!(
                    "mtime {}.{:09} vs {}.{:09}",
                    a.mtime_sec, a.mtime_nsec, b.mtime_sec, b.mtime_nsec
                ),
            ));
        } else if owners && (a.uid, a.gid) != (b.uid, b.gid) {
            out.push(d(
                &l.path,
                format!("owner {}:{} vs {}:{}", a.uid, a.gid, b.uid, b.gid),
            ));
        }
    }
    for r in remote {
        if !lset.contains(&r.path) {
            out.push(d(&r.path, "only on standby".into()));
        }
    }
    out
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::File { .. } => "file",
        Kind::Dir => "directory",
        Kind::Symlink { .. } => "symlink",
        Kind::HardLink { .. } => "hard link",
    }
}
