//! The shell of one request stream: decode, feed the sans-IO
//! [`Receiver`], carry out its effects (lanes, scans, syncs, the generation
//! record), write replies. One writer and one set of lanes per stream, for
//! the control stream and for each large file's own stream alike.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::accept::{Hello, SessionError};
use super::commit::{batch_files, keeper, Follow, Preserve};
use super::stage::{InFlightCount, Lanes};
use super::{local, lock, Shared, REPLY_QUEUE};
use crate::config::Config;
use crate::conflicts::Keeper;
use crate::index::Index;
use crate::scan;
use crate::wire::{self, Purpose, Reply, Request};
use syncd_proto::receiver::{Input, Mode, Receiver};
use syncd_proto::version::Features;

mod effects;

/// What the Receiver needs to know of a request.
pub(super) fn input(r: &Request) -> Input<'_> {
    match r {
        Request::Hello { .. } => Input::Hello,
        Request::PeerState { .. } | Request::Ask { .. } | Request::Answer { .. } => Input::Peer,
        Request::List { .. } => Input::List,
        Request::ListScope { .. } => Input::ListScope,
        Request::Digests { .. } => Input::List,
        Request::Mkdir { .. }
        | Request::Rename { .. }
        | Request::Delete { .. }
        | Request::Symlink { .. }
        | Request::Link { .. }
        | Request::SetMeta { .. } => Input::Meta,
        Request::SigRequest { id, .. } => Input::Sig { id: *id },
        Request::FileBegin {
            id,
            path,
            size,
            encoding,
            ..
        } => Input::Begin {
            id: *id,
            path,
            size: *size,
            delta: *encoding == wire::Encoding::Delta,
        },
        Request::FileData { id, data } => Input::Data {
            id: *id,
            len: data.len() as u64,
        },
        Request::DeltaSegment { id, .. } => Input::Delta { id: *id },
        Request::FileEnd { id, .. } => Input::End { id: *id },
        Request::FileAbort { id } => Input::Abort { id: *id },
        Request::Barrier { id } => Input::Barrier { id: *id },
        Request::Commit { id } => Input::Commit { id: *id },
        Request::CaughtUp => Input::CaughtUp,
        Request::Finish => Input::Finish,
    }
}

/// Writes the replies queued on `rx`; ends the stream after the last one
/// (`Finished`, `Fatal`) or when every sender is gone.
fn spawn_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<Reply>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(r) = rx.recv().await {
            let last = matches!(r, Reply::Finished { .. } | Reply::Fatal { .. });
            if let Err(e) = wire::write_msg(&mut send, &r, &mut buf).await {
                reply_failed(&mut send, &mut buf, e).await;
                return;
            }
            if last {
                break;
            }
        }
        let _ = send.finish();
    })
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

/// A primary of a version without `FailuresDropped` hears every failure
/// (as that release's standby told it); a bound stays, far above a real
/// barrier's, so a peer still cannot grow the list without end.
const MAX_FAILURES_LISTED: usize = 1_000_000;

fn receiver_for(mode: Mode, lanes: usize, features: Features) -> Receiver {
    if features.failures_dropped {
        Receiver::new(mode, lanes)
    } else {
        Receiver::with_limits(
            mode,
            lanes,
            syncd_proto::receiver::MAX_IN_FLIGHT,
            MAX_FAILURES_LISTED,
        )
    }
}

/// A writing or verify session, after its Welcome.
pub(super) async fn run(
    conn: &quinn::Connection,
    (send, mut recv): (quinn::SendStream, quinn::RecvStream),
    shared: Arc<Shared>,
    cfg: &Config,
    hello: Hello,
) -> Result<(), SessionError> {
    let (reply_tx, reply_rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let writer = spawn_writer(send, reply_rx);
    // Catching up with data that may overwrite our own writes: keep them.
    let preserve: Preserve = Arc::default();
    if let Some((_, true)) = &hello.follow {
        let lineage = lock(&shared.record).lineage.clone();
        let ours = lineage.gen;
        let k = Keeper::open(&cfg.state_dir, &ours.to_string())?;
        // A never-synced node is told apart: "it led generation 0" misleads
        // whoever starts a fresh standby.
        let why = if lineage.synced() {
            format!("it led generation {ours}")
        } else {
            "it has no record of an earlier catch-up: a new node, or its state directory was lost"
                .into()
        };
        tracing::warn!(
            conflicts = %k.path().display(),
            "this node may hold writes the primary never received ({why}); \
             what the catch-up replaces or deletes is kept in the conflicts area"
        );
        *lock(&preserve) = Some(Arc::new(k));
    }
    if hello.purpose == Purpose::Resync {
        let sh = shared.clone();
        match tokio::task::spawn_blocking(move || local::know_if_empty(&sh)).await {
            Ok(Err(e)) => tracing::warn!("cannot look into the export before the catch-up: {e}"),
            Ok(Ok(_)) => {}
            Err(e) => tracing::warn!("the look into the export before the catch-up failed: {e}"),
        }
    }
    let nworkers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let in_flight = InFlightCount::default();
    let lanes = Lanes::spawn(
        nworkers,
        batch_files(nworkers),
        &shared,
        &reply_tx,
        &preserve,
        &in_flight,
    );
    let verify = hello.purpose == Purpose::Verify;
    // Large files arrive on streams of their own, beside this one.
    let streams = (!verify).then(|| {
        let (conn, sh, pr) = (conn.clone(), shared.clone(), preserve.clone());
        let v = (hello.version, hello.features);
        tokio::spawn(accept_file_streams(conn, sh, pr, in_flight.clone(), v))
    });
    let mode = if verify { Mode::Verify } else { Mode::Write };
    let mut shell = Shell {
        version: hello.version,
        features: hello.features,
        rx: receiver_for(mode, nworkers, hello.features),
        lanes,
        reply: reply_tx,
        shared: shared.clone(),
        follow: Some(Follow {
            shared,
            writing: hello.purpose == Purpose::Resync,
            lineage: hello.follow.map(|(l, _)| l),
            preserve,
        }),
        digests: None,
        rebase: None,
    };
    let result = shell.serve(&mut recv).await;
    if let Some(s) = streams {
        s.abort();
    }
    shell.close(&result, writer).await;
    if result.is_ok() {
        tracing::info!(peer = %conn.remote_address(), "session finished");
    }
    result
}

/// One stream's Receiver and the means to carry out its effects.
struct Shell {
    /// The session's protocol version (older ones translated at the edge),
    /// and what it carries.
    version: u32,
    features: Features,
    rx: Receiver,
    lanes: Lanes,
    reply: mpsc::Sender<Reply>,
    shared: Arc<Shared>,
    /// The generation record's side (the control stream of a session).
    follow: Option<Follow>,
    /// This side's directory digests during a digest walk (built at its
    /// first query, dropped at the listing that ends it).
    digests: Option<Arc<syncd_proto::digest::Tree>>,
    /// The ledger's rebase after the catch-up, running beside the session.
    rebase: Option<tokio::task::JoinHandle<()>>,
}

impl Shell {
    /// Reads and carries out requests until `Finish` (or, on a file
    /// stream, the end of the stream).
    async fn serve(&mut self, recv: &mut quinn::RecvStream) -> Result<(), SessionError> {
        let mut rbuf = Vec::new();
        loop {
            if self.reply.is_closed() {
                // The writer has gone: a worker sent a Fatal (e.g. too many
                // files in flight) or the stream broke. Nothing more is answered.
                let e = "session ended by a fatal error";
                return Err(SessionError::Protocol(e.into()));
            }
            let Some(msg) = self.next_request(recv, &mut rbuf).await? else {
                if self.follow.is_none() {
                    // A file stream ends with its last file.
                    self.rx.handle_stream_end();
                    return self.effects(None, 0).await;
                }
                let e = "primary closed the stream without Finish";
                return Err(SessionError::Protocol(e.into()));
            };
            let commit = matches!(msg, Request::Commit { .. });
            if matches!(msg, Request::Finish) {
                self.implied_catch_up().await?;
            }
            self.rx.handle(input(&msg))?;
            self.effects(Some(msg), rbuf.len()).await?;
            if commit {
                self.implied_catch_up().await?;
            }
            if self.rx.is_finished() {
                return Ok(());
            }
        }
    }

    /// The next request. What was gathered for the lanes is handed on only
    /// when the next request is not already here: a burst of small files
    /// reaches each lane as a few jobs, not three wake-ups a file.
    async fn next_request(
        &mut self,
        recv: &mut quinn::RecvStream,
        rbuf: &mut Vec<u8>,
    ) -> Result<Option<Request>, SessionError> {
        use std::future::Future;
        use std::task::Poll;
        let mut read = std::pin::pin!(wire::read_request(recv, rbuf, self.version));
        let now = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        let r = match now {
            Poll::Ready(r) => r,
            Poll::Pending => {
                self.lanes.hand_on().await?;
                read.await
            }
        };
        Ok(r?)
    }

    /// Before 7 the primary sends no `CaughtUp`: its first durable commit
    /// (after the reply) or its `Finish` (before) completes the catch-up, as
    /// version 6 did.
    async fn implied_catch_up(&mut self) -> Result<(), SessionError> {
        let catching_up = self.follow.as_ref().is_some_and(|f| f.lineage.is_some());
        if self.features.caught_up || !catching_up {
            return Ok(());
        }
        self.rx.handle(Input::CaughtUp)?;
        self.effects(None, 0).await
    }

    async fn list(&mut self, msg: Option<Request>) -> Result<(), SessionError> {
        let sh = self.shared.clone();
        if let Some(Request::Digests { owners, queries }) = msg {
            return self.digests(owners, queries).await;
        }
        self.digests = None;
        let scanned = match msg {
            Some(Request::List { checksum }) => blocking(move || list_all(&sh, checksum)).await?,
            Some(Request::ListScope { scope }) => {
                // Without hashes a scoped scan never reads the index.
                blocking(move || {
                    scan::scan_scoped(sh.root.path(), &mut Index::default(), &scope, false)
                })
                .await?
            }
            _ => {
                return Err(SessionError::Protocol(
                    "a list without a List request".into(),
                ))
            }
        };
        send_list(scanned, &self.reply).await;
        Ok(())
    }

    /// One round of the primary's digest walk (see `digests.rs`).
    async fn digests(
        &mut self,
        owners: bool,
        queries: Vec<syncd_proto::digest::Query>,
    ) -> Result<(), SessionError> {
        if !self.features.digests {
            return Err(SessionError::Protocol(format!(
                "digests asked on a protocol {} session",
                self.version
            )));
        }
        let sh = self.shared.clone();
        super::digests::answer(&sh, &mut self.digests, owners, queries, &self.reply).await
    }

    /// Ends the stream: a `Fatal` for an error, workers stopped, the last
    /// reply written.
    async fn close(self, result: &Result<(), SessionError>, writer: tokio::task::JoinHandle<()>) {
        if let Err(e) = result {
            // Not forever: the writer may be stuck behind a primary that reads nothing.
            let fatal = Reply::Fatal {
                reason: e.to_string(),
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.reply.send(fatal))
                .await;
        }
        drop(self.reply);
        self.lanes.join().await;
        let _ = writer.await;
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, SessionError> {
    let r = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    Ok(r?)
}

/// The whole export's manifest, hashed when `checksum`.
pub(super) fn list_all(sh: &Shared, checksum: bool) -> std::io::Result<scan::Scan> {
    // Not under the index lock: a verify rehashes the whole export, and
    // commits (which update the index) must go on meanwhile. A list either
    // hashes everything (forced) or nothing, so it needs no cached hashes:
    // it scans with an index of its own, then records what it learnt.
    let t0 = std::time::Instant::now();
    // Unmounted under a running standby: listed empty, the whole export
    // would be sent again, into the filesystem beneath.
    crate::state::check_mounted(&sh.state_dir, sh.root.path()).map_err(std::io::Error::other)?;
    let mut fresh = Index::default();
    let scanned = scan::scan(sh.root.path(), &mut fresh, checksum, checksum)?;
    let walked = t0.elapsed();
    let mut ix = lock(&sh.index);
    // A file committed during the scan may be forgotten here: the index is
    // only a cache. One flag byte an entry, not a set of every listed path.
    ix.absorb(fresh);
    scan::prune_index(&mut ix, &scanned.entries);
    drop(ix);
    let indexed = t0.elapsed();
    super::local::count_listed(sh, &scanned.entries);
    tracing::debug!(
        entries = scanned.entries.len(),
        ?walked,
        ?indexed,
        elapsed = ?t0.elapsed(),
        "listed the export"
    );
    Ok(scanned)
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
            let entries = std::mem::take(&mut chunk);
            let _ = reply.send(Reply::ListChunk { entries }).await;
            bytes = 0;
        }
    }
    let _ = reply.send(Reply::ListChunk { entries: chunk }).await;
    let _ = reply.send(Reply::ListEnd).await;
}

/// Streams at once are bounded by QUIC itself (`max_concurrent_bidi_streams`
/// in `tls.rs`): the primary cannot open more than that before some end.
async fn accept_file_streams(
    conn: quinn::Connection,
    sh: Arc<Shared>,
    preserve: Preserve,
    in_flight: InFlightCount,
    version: (u32, Features),
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let sh = sh.clone();
        let n = in_flight.clone();
        let peer = conn.remote_address();
        // A stream begun during the catch-up keeps preserving to its end.
        let pr: Preserve = Arc::new(Mutex::new(keeper(&preserve)));
        tasks.spawn(async move {
            if let Err(e) = file_stream(send, recv, sh, pr, n, version).await {
                tracing::warn!(%peer, "file stream: {e}");
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Connection gone: the tasks end as their streams fail.
    tasks.detach_all();
}

/// One large file's stream: a signature request (for a delta), the content,
/// then the verdict once the file is committed (`BarrierDone` 0). Runs on a
/// worker thread of its own, so it proceeds beside the control stream.
async fn file_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    sh: Arc<Shared>,
    preserve: Preserve,
    in_flight: InFlightCount,
    (version, features): (u32, Features),
) -> Result<(), SessionError> {
    let (reply_tx, reply_rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let writer = spawn_writer(send, reply_rx);
    let lanes = Lanes::spawn(1, 1, &sh, &reply_tx, &preserve, &in_flight);
    let mut shell = Shell {
        version,
        features,
        rx: Receiver::new(Mode::FileStream, 1),
        lanes,
        reply: reply_tx,
        shared: sh,
        follow: None,
        digests: None,
        rebase: None,
    };
    let result = shell.serve(&mut recv).await;
    shell.close(&result, writer).await;
    result
}
