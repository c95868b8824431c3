//! The primary's side of a session: connect, compare, send.
//! Used by `syncd resync` and `syncd verify`.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::delta;
use crate::index::{Index, Stamp};
use crate::path::RelPath;
use crate::plan::{self, FileOp, Plan, PlanOptions};
use crate::scan::{self, Scan};
use crate::tls::{self, Identity};
use crate::wire::{self, Encoding, Entry, Failure, Kind, Purpose, Reply, Request, Scope, CHUNK};

/// Files at most this big are read in one go and pipelined.
const SMALL: u64 = 1 << 20;
const PIPELINE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot connect to standby {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("standby refused the session: {0}")]
    Refused(String),
    #[error("standby reported a fatal error: {0}")]
    Fatal(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("local export: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    _endpoint: quinn::Endpoint,
    /// Delta payload sent in this session (for the summary).
    pub delta_bytes: u64,
    /// Application bytes (frames) sent and received, the figure comparable
    /// with rsync's "Total bytes sent/received".
    pub app_tx: u64,
    pub app_rx: u64,
    /// Signatures that arrived while we waited for something else.
    sigs: HashMap<u64, Option<Vec<u8>>>,
}

impl Session {
    pub async fn connect(cfg: &Config, purpose: Purpose) -> Result<Session, ClientError> {
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
            conn,
            send,
            recv,
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            _endpoint: endpoint,
            sigs: HashMap::new(),
            delta_bytes: 0,
            app_tx: 0,
            app_rx: 0,
        };
        s.send(&Request::Hello {
            version: wire::PROTOCOL_VERSION,
            export_id: cfg.export_id.clone(),
            node_id: cfg.node_id.clone(),
            purpose,
        })
        .await?;
        match s.reply().await? {
            Reply::Welcome { .. } => Ok(s),
            Reply::Refused { reason } => Err(ClientError::Refused(reason)),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
        }
    }

    /// Closes the connection and gives the close a moment to reach the standby,
    /// so it can start the next session at once.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(50), self._endpoint.wait_idle()).await;
    }

    /// Queues a request; small messages are batched into larger stream
    /// writes, and everything queued is flushed before we wait for a reply.
    pub async fn send(&mut self, r: &Request) -> Result<(), ClientError> {
        wire::encode_frame(r, &mut self.wbuf)?;
        if self.wbuf.len() >= 256 << 10 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.send
                .write_all(&self.wbuf)
                .await
                .map_err(|e| wire::WireError::Io(e.into()))?;
            self.app_tx += self.wbuf.len() as u64;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Sends an already-encoded payload as one frame. Exists so tests can
    /// play a hostile primary; a real primary only sends typed requests.
    #[doc(hidden)]
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        self.flush().await?;
        let mut f = (payload.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(payload);
        self.send
            .write_all(&f)
            .await
            .map_err(|e| ClientError::Wire(wire::WireError::Io(e.into())))?;
        Ok(())
    }

    async fn reply(&mut self) -> Result<Reply, ClientError> {
        self.flush().await?;
        let r = wire::read_msg::<_, Reply>(&mut self.recv, &mut self.rbuf).await?;
        self.app_rx += 4 + self.rbuf.len() as u64;
        match r {
            Some(Reply::Fatal { reason }) => Err(ClientError::Fatal(reason)),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol("standby closed the session".into())),
        }
    }

    /// Next reply that is not a signature (signatures are stashed).
    async fn control_reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            match self.reply().await? {
                Reply::Signature { id, data } => {
                    self.sigs.insert(id, Some(data));
                }
                Reply::NoSignature { id } => {
                    self.sigs.insert(id, None);
                }
                r => return Ok(r),
            }
        }
    }

    async fn signature(&mut self, id: u64) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(s) = self.sigs.remove(&id) {
                return Ok(s);
            }
            match self.reply().await? {
                Reply::Signature { id, data } => {
                    self.sigs.insert(id, Some(data));
                }
                Reply::NoSignature { id } => {
                    self.sigs.insert(id, None);
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "expected a signature, got {other:?}"
                    )))
                }
            }
        }
    }

    pub async fn list(&mut self, checksum: bool) -> Result<Vec<Entry>, ClientError> {
        self.send(&Request::List { checksum }).await?;
        self.list_reply().await
    }

    /// Like [`Session::list`] for part of the tree.
    pub async fn list_scope(&mut self, scope: Vec<Scope>) -> Result<Vec<Entry>, ClientError> {
        self.send(&Request::ListScope { scope }).await?;
        self.list_reply().await
    }

    async fn list_reply(&mut self) -> Result<Vec<Entry>, ClientError> {
        let mut out = Vec::new();
        loop {
            match self.control_reply().await? {
                Reply::ListChunk { entries } => out.extend(entries),
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

    async fn barrier_reply(&mut self, id: u64) -> Result<Vec<Failure>, ClientError> {
        match self.control_reply().await? {
            Reply::BarrierDone { id: got, failures } if got == id => Ok(failures),
            other => Err(ClientError::Protocol(format!(
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
        self.barrier_reply(id).await
    }

    pub async fn finish(mut self) -> Result<(u64, quinn::ConnectionStats, u64, u64), ClientError> {
        self.send(&Request::Finish).await?;
        let r = self.control_reply().await?;
        let stats = self.conn.stats();
        self.close().await;
        match r {
            Reply::Finished { committed } => Ok((committed, stats, self.app_tx, self.app_rx)),
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
    pub settle: Option<Duration>,
    pub dry_run: bool,
    pub checksum: bool,
    pub delete: bool,
    pub progress: bool,
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
        Ok(())
    }
}

/// One-shot: make the standby equal to this primary.
pub async fn resync(cfg: &Config, o: &ResyncOptions) -> Result<Summary, ClientError> {
    let t0 = Instant::now();
    let mut s = Session::connect(cfg, Purpose::Resync).await?;
    let mut index = Index::load(&cfg.state_dir.join("index.bin"));
    let mut sum = reconcile(&mut s, cfg, o, &mut index, None).await?;
    let (_committed, stats, tx, rx) = s.finish().await?;
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
    let (local, remote): (Scan, _) = (local?, remote?);
    let owners = rustix::process::geteuid().is_root();
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
    let delta0 = s.delta_bytes;
    execute(s, cfg, o.settle, &p, &mut sum, index, &bar).await?;
    sum.delta_bytes = s.delta_bytes - delta0;
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
    settle: Option<Duration>,
    p: &Plan,
    sum: &mut Summary,
    index: &mut Index,
    bar: &ProgressBar,
) -> Result<(), ClientError> {
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

    // 3. Content. Ask for all signatures first so they are computed while whole files stream.
    let mut next_id = 0u64;
    let mut deltas = Vec::new();
    for f in p.files.iter().filter(|f| f.delta) {
        // Block size follows the base (the standby's file), like rsync, so
        // a signature the standby cached when it wrote that file matches.
        let (block, strong) = delta::options_for(f.base_size);
        if delta::check_options(block, strong, f.base_size).is_err() {
            continue;
        }
        next_id += 1;
        s.send(&Request::SigRequest {
            id: next_id,
            path: f.path.clone(),
            block_size: block,
            strong_len: strong,
        })
        .await?;
        deltas.push((next_id, f));
    }
    let delta_paths: std::collections::HashSet<&RelPath> =
        deltas.iter().map(|(_, f)| &f.path).collect();
    let whole: Vec<&FileOp> = p
        .files
        .iter()
        .filter(|f| !delta_paths.contains(&f.path))
        .collect();
    send_whole(s, cfg, settle, &whole, &mut next_id, sum, index, bar).await?;
    for (path, target, meta) in &p.symlinks {
        s.send(&Request::Symlink {
            path: path.clone(),
            target: target.clone(),
            meta: *meta,
        })
        .await?;
    }
    sum.symlinks = p.symlinks.len() as u64;
    let mut fallback = Vec::new();
    for (sig_id, f) in &deltas {
        match s.signature(*sig_id).await? {
            Some(sig) => {
                next_id += 1;
                match send_delta(s, cfg, settle, f, sig, next_id, index, bar).await? {
                    Sent::Done => sum.sent_delta += 1,
                    Sent::Vanished => sum.vanished += 1,
                    Sent::Busy => sum.busy.push(f.path.clone()),
                    Sent::Fallback => fallback.push(*f),
                }
            }
            None => fallback.push(*f),
        }
    }
    send_whole(s, cfg, settle, &fallback, &mut next_id, sum, index, bar).await?;
    let failures = s.barrier(next_barrier()).await?;
    // Anything that failed verification is resent whole once.
    let mut retry = Vec::new();
    for fl in failures {
        match p.files.iter().find(|f| f.path == fl.path) {
            Some(f) if fl.retry_whole => {
                tracing::info!(path = %f.path, "resending whole after: {}", fl.error);
                if deltas.iter().any(|(_, d)| d.path == f.path) {
                    sum.sent_delta = sum.sent_delta.saturating_sub(1);
                } else {
                    sum.sent_whole = sum.sent_whole.saturating_sub(1);
                }
                retry.push(f);
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

enum Sent {
    Done,
    Vanished,
    /// Open for writing elsewhere (live replication): send once closed.
    Busy,
    /// Could not produce a delta: send whole instead.
    Fallback,
}

/// What a reader thread produced for one file.
enum Read1 {
    Msgs(Vec<Request>, Option<(Stamp, wire::Hash)>),
    Vanished,
    /// Open for writing elsewhere: try again once it is closed.
    Busy,
}

fn changed(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    Stamp::of(a) != Stamp::of(b)
}

/// A source file opened for sending.
enum Opened {
    Gone,
    /// Open for writing elsewhere and not quiet: send it once closed.
    Busy,
    /// `leased`: a read lease is held and must still be intact after reading.
    File(std::fs::File, std::fs::Metadata, bool),
}

/// Opens a file to send. With `settle` (live replication), a file another
/// process has open for writing is held back unless quiet that long.
fn open_source(path: &std::path::Path, settle: Option<Duration>) -> std::io::Result<Opened> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Opened::Gone),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    let leased = match settle {
        Some(settle) => match crate::lease::take(&f) {
            crate::lease::Lease::Busy => {
                let age = m.modified().ok().and_then(|t| t.elapsed().ok());
                if age.is_none_or(|a| a < settle) {
                    return Ok(Opened::Busy);
                }
                false
            }
            l => l == crate::lease::Lease::Held,
        },
        None => false,
    };
    Ok(Opened::File(f, m, leased))
}

/// No writer opened or truncated the file since [`open_source`].
fn untouched(f: &std::fs::File, leased: bool) -> bool {
    !leased || crate::lease::intact(f)
}

/// Reads a small file completely; `None` if it changed while being read.
fn read_small(
    path: std::path::PathBuf,
    op: FileOp,
    id: u64,
    settle: Option<Duration>,
) -> std::io::Result<Option<Read1>> {
    let (mut f, before, lease) = match open_source(&path, settle)? {
        Opened::Gone => return Ok(Some(Read1::Vanished)),
        Opened::Busy => return Ok(Some(Read1::Busy)),
        Opened::File(f, m, leased) => (f, m, leased),
    };
    let mut data = Vec::with_capacity(before.len() as usize);
    f.read_to_end(&mut data)?;
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
    settle: Option<Duration>,
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
    let mut it = files.iter().peekable();
    loop {
        // Keep up to PIPELINE small files being read ahead.
        while queue.len() < PIPELINE {
            match it.peek() {
                Some(f) if f.size <= SMALL => {
                    let f = *it.next().unwrap_or(&files[0]);
                    *next_id += 1;
                    let id = *next_id;
                    let path = cfg.export.join(f.path.as_path());
                    let op = f.clone();
                    queue.push_back((
                        f,
                        tokio::task::spawn_blocking(move || read_small(path, op, id, settle)),
                    ));
                }
                _ => break,
            }
        }
        let Some((f, h)) = queue.pop_front() else {
            match it.next() {
                Some(f) => {
                    *next_id += 1;
                    let r = send_large(s, cfg, settle, f, *next_id, index, bar).await?;
                    match r {
                        Sent::Done => sum.sent_whole += 1,
                        Sent::Vanished => sum.vanished += 1,
                        Sent::Busy => sum.busy.push(f.path.clone()),
                        Sent::Fallback => sum.failures.push(Failure { path: f.path.clone(), error: "kept changing while being read; skipped (the next run will send it)".into(), retry_whole: false }),
                    }
                    continue;
                }
                None => return Ok(()),
            }
        };
        let mut res = h.await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        // A file that changed while being read is re-read a few times.
        let mut tries = 0;
        while res.as_ref().map(|r| r.is_none()).unwrap_or(false) && tries < 3 {
            tries += 1;
            *next_id += 1;
            let (path, op, id) = (cfg.export.join(f.path.as_path()), f.clone(), *next_id);
            res = tokio::task::spawn_blocking(move || read_small(path, op, id, settle))
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

/// Streams a large file chunk by chunk from a reader thread.
async fn send_large(
    s: &mut Session,
    cfg: &Config,
    settle: Option<Duration>,
    f: &FileOp,
    id: u64,
    index: &mut Index,
    bar: &ProgressBar,
) -> Result<Sent, ClientError> {
    let path = cfg.export.join(f.path.as_path());
    let rel = f.path.clone();
    let (tx, rx) = mpsc::channel::<Request>(8);
    let busy = Arc::new(AtomicBool::new(false));
    let busy2 = busy.clone();
    let reader =
        tokio::task::spawn_blocking(move || -> std::io::Result<Option<(Stamp, wire::Hash)>> {
            let (mut file, before, leased) = match open_source(&path, settle)? {
                Opened::Gone => return Ok(None),
                Opened::Busy => {
                    busy2.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Opened::File(f, m, l) => (f, m, l),
            };
            let size = before.len();
            if tx
                .blocking_send(Request::FileBegin {
                    id,
                    path: rel,
                    meta: scan::meta_of(&before),
                    size,
                    encoding: Encoding::Whole,
                })
                .is_err()
            {
                return Ok(None);
            }
            let mut h = blake3::Hasher::new();
            let mut total = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = delta::read_full(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                h.update(&buf);
                total += n as u64;
                if total > size
                    || tx
                        .blocking_send(Request::FileData { id, data: buf })
                        .is_err()
                {
                    break;
                }
            }
            let after = file.metadata()?;
            if !untouched(&file, leased) {
                busy2.store(true, Ordering::Relaxed);
                let _ = tx.blocking_send(Request::FileAbort { id });
                return Ok(None);
            }
            if changed(&before, &after) || total != size {
                let _ = tx.blocking_send(Request::FileAbort { id });
                return Ok(None);
            }
            let hash = *h.finalize().as_bytes();
            let _ = tx.blocking_send(Request::FileEnd { id, hash });
            Ok(Some((Stamp::of(&after), hash)))
        });
    let sent = forward(s, rx, bar).await?;
    let r = reader
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
    if busy.load(Ordering::Relaxed) {
        return Ok(Sent::Busy);
    }
    Ok(match (r, sent) {
        (Some((st, h)), _) => {
            index.insert(f.path.as_bytes().to_vec(), st, h);
            Sent::Done
        }
        (None, false) => Sent::Vanished,
        (None, true) => Sent::Fallback,
    })
}

/// Sends what a reader thread produces; true if a FileBegin went out.
async fn forward(
    s: &mut Session,
    mut rx: mpsc::Receiver<Request>,
    bar: &ProgressBar,
) -> Result<bool, ClientError> {
    let mut began = false;
    while let Some(m) = rx.recv().await {
        match &m {
            Request::FileBegin { .. } => began = true,
            Request::FileData { data, .. } => bar.inc(data.len() as u64),
            Request::DeltaSegment { data, .. } => s.delta_bytes += data.len() as u64,
            _ => {}
        }
        s.send(&m).await?;
    }
    Ok(began)
}

#[allow(clippy::too_many_arguments)]
async fn send_delta(
    s: &mut Session,
    cfg: &Config,
    settle: Option<Duration>,
    f: &FileOp,
    sig: Vec<u8>,
    id: u64,
    index: &mut Index,
    bar: &ProgressBar,
) -> Result<Sent, ClientError> {
    let path = cfg.export.join(f.path.as_path());
    let rel = f.path.clone();
    let (tx, rx) = mpsc::channel::<Request>(4);
    let barc = bar.clone();
    let busy = Arc::new(AtomicBool::new(false));
    let busy2 = busy.clone();
    let worker = tokio::task::spawn_blocking(
        move || -> std::io::Result<Result<Option<(Stamp, wire::Hash)>, ()>> {
            let differ = match delta::Differ::new(sig) {
                Ok(d) => d,
                Err(_) => return Ok(Err(())),
            };
            let ix = differ.indexed();
            let (mut file, before, leased) = match open_source(&path, settle)? {
                Opened::Gone => return Ok(Ok(None)),
                Opened::Busy => {
                    busy2.store(true, Ordering::Relaxed);
                    return Ok(Ok(None));
                }
                Opened::File(f, m, l) => (f, m, l),
            };
            let size = before.len();
            if tx
                .blocking_send(Request::FileBegin {
                    id,
                    path: rel,
                    meta: scan::meta_of(&before),
                    size,
                    encoding: Encoding::Delta,
                })
                .is_err()
            {
                return Ok(Ok(None));
            }
            let mut h = blake3::Hasher::new();
            // Two stages on two threads: read + BLAKE3, and rolling diff.
            let win = differ.window();
            let (wtx, wrx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(2);
            let (rtx, rrx) = std::sync::mpsc::channel::<Vec<u8>>();
            let (total, diffed) = std::thread::scope(|sc| {
                let (file, h) = (&mut file, &mut h);
                let reader = sc.spawn(move || -> std::io::Result<u64> {
                    let mut total = 0u64;
                    loop {
                        let mut buf = rrx.try_recv().unwrap_or_else(|_| vec![0u8; win]);
                        let n = delta::read_full(file, &mut buf)?;
                        h.update(&buf[..n]);
                        total += n as u64;
                        let last = n < win;
                        if wtx.send((buf, n)).is_err() || last {
                            return Ok(total);
                        }
                    }
                });
                let mut diffed = Ok(Ok(()));
                let mut seg = Vec::new();
                for (buf, n) in wrx.iter() {
                    if ix.diff(&buf[..n], &mut seg).is_err() {
                        diffed = Ok(Err(()));
                        break;
                    }
                    barc.inc(n as u64);
                    let _ = rtx.send(buf);
                    if tx
                        .blocking_send(Request::DeltaSegment {
                            id,
                            data: std::mem::take(&mut seg),
                        })
                        .is_err()
                    {
                        diffed = Err(());
                        break;
                    }
                }
                drop(wrx);
                (
                    reader
                        .join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked"))),
                    diffed,
                )
            });
            let total = total?;
            match diffed {
                Ok(Ok(())) => {}
                Ok(Err(())) => {
                    let _ = tx.blocking_send(Request::FileAbort { id });
                    return Ok(Err(()));
                }
                Err(()) => return Ok(Ok(None)),
            }
            let after = file.metadata()?;
            if !untouched(&file, leased) {
                busy2.store(true, Ordering::Relaxed);
                let _ = tx.blocking_send(Request::FileAbort { id });
                return Ok(Ok(None));
            }
            if changed(&before, &after) || total != size {
                let _ = tx.blocking_send(Request::FileAbort { id });
                return Ok(Err(()));
            }
            let hash = *h.finalize().as_bytes();
            let _ = tx.blocking_send(Request::FileEnd { id, hash });
            Ok(Ok(Some((Stamp::of(&after), hash))))
        },
    );
    let began = forward(s, rx, &ProgressBar::hidden()).await?;
    let r = worker
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
    if busy.load(Ordering::Relaxed) {
        return Ok(Sent::Busy);
    }
    Ok(match r {
        Ok(Some((st, h))) => {
            index.insert(f.path.as_bytes().to_vec(), st, h);
            Sent::Done
        }
        Ok(None) if !began => Sent::Vanished,
        _ => Sent::Fallback,
    })
}

/// One difference found by `verify`.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    pub path: RelPath,
    pub what: String,
}

/// Compares both trees with full content hashes; changes nothing.
pub async fn verify(cfg: &Config) -> Result<Vec<Difference>, ClientError> {
    let mut s = Session::connect(cfg, Purpose::Verify).await?;
    let c2 = cfg.clone();
    let local = tokio::task::spawn_blocking(move || {
        let mut ix = Index::load(&c2.state_dir.join("index.bin"));
        scan::scan(&c2.export, &mut ix, true, true)
    });
    let remote = s.list(true).await?;
    let local = local
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))??;
    let _ = s.finish().await;
    Ok(compare(
        &local.entries,
        &remote,
        rustix::process::geteuid().is_root(),
    ))
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
