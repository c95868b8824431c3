//! Large files (and every delta) each travel on their own QUIC stream, so
//! one huge file does not hold up the small files behind it: the control
//! stream keeps carrying metadata and small files (in order) while up to
//! [`MAX_STREAMS`] large transfers run beside it. Each stream is one
//! self-contained transaction: signature request, content, then the
//! standby's verdict once the file is committed (durably, if configured).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::delta;
use crate::index::Stamp;
use crate::lease::Settle;
use crate::path::RelPath;
use crate::plan::FileOp;
use crate::scan;
use crate::stream::{Stream, StreamError};
use crate::wire::{self, Encoding, Failure, Reply, Request, CHUNK};

/// Large transfers running at once, beside the control stream (the standby
/// allows 16 bidirectional streams per connection).
pub const MAX_STREAMS: usize = 4;

/// How one file's transfer ended.
pub struct Outcome {
    pub op: FileOp,
    /// Verified on the standby as a delta (else whole).
    pub as_delta: bool,
    pub result: Result<Sent, Failure>,
    /// Frame bytes sent / received on its stream(s), and delta payload.
    pub tx: u64,
    pub rx: u64,
    pub delta_bytes: u64,
}

/// The large transfers of one connection.
pub struct Transfers {
    conn: quinn::Connection,
    export: Arc<PathBuf>,
    set: JoinSet<Outcome>,
    /// Path, start, size of each running transfer.
    running: HashMap<tokio::task::Id, (RelPath, Instant, u64)>,
    deadline: Option<Duration>,
}

impl Transfers {
    /// `deadline`: how long each stream waits for a reply (see `stream.rs`).
    pub fn new(conn: quinn::Connection, export: PathBuf, deadline: Option<Duration>) -> Transfers {
        Transfers {
            deadline,
            conn,
            export: Arc::new(export),
            set: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    /// A transfer of `p` is under way (its outcome will re-check it).
    pub fn busy(&self, p: &RelPath) -> bool {
        self.running.values().any(|(q, _, _)| q == p)
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// When the oldest running transfer started.
    pub fn oldest(&self) -> Option<Instant> {
        self.running.values().map(|(_, t, _)| *t).min()
    }

    /// Content bytes of the running transfers (part of the lag).
    pub fn bytes(&self) -> u64 {
        self.running.values().map(|(_, _, n)| n).sum()
    }

    /// Starts `op` on its own stream; with [`MAX_STREAMS`] already running,
    /// first waits for one to end and returns its outcome.
    pub async fn start(
        &mut self,
        op: FileOp,
        settle: Option<Settle>,
        bar: &ProgressBar,
    ) -> Option<Outcome> {
        let done = if self.running.len() >= MAX_STREAMS {
            self.next().await
        } else {
            None
        };
        let (conn, export, bar) = (self.conn.clone(), self.export.clone(), bar.clone());
        let (path, size, deadline) = (op.path.clone(), op.size, self.deadline);
        let h = self
            .set
            .spawn(async move { transfer(conn, &export, settle, op, &bar, deadline).await });
        self.running.insert(h.id(), (path, Instant::now(), size));
        done
    }

    /// The next transfer to end; never resolves while none is running
    /// (so it can sit in a `select!`). Cancel-safe.
    pub async fn next(&mut self) -> Option<Outcome> {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        match self.set.join_next_with_id().await? {
            Ok((id, o)) => {
                self.running.remove(&id);
                Some(o)
            }
            Err(e) => {
                // A panicked or aborted task: its path is compared again by
                // the next reconcile that covers it.
                let path = self.running.remove(&e.id()).map(|(p, _, _)| p);
                tracing::error!(?path, "transfer task failed: {e}");
                None
            }
        }
    }

    /// Waits for every running transfer.
    pub async fn drain(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        while !self.running.is_empty() {
            if let Some(o) = self.next().await {
                out.push(o);
            }
        }
        out
    }
}

async fn transfer(
    conn: quinn::Connection,
    export: &Path,
    settle: Option<Settle>,
    op: FileOp,
    bar: &ProgressBar,
    deadline: Option<Duration>,
) -> Outcome {
    let mut o = Outcome {
        op,
        as_delta: false,
        result: Ok(Sent::Vanished),
        tx: 0,
        rx: 0,
        delta_bytes: 0,
    };
    let r = transfer_inner(&conn, export, settle, bar, &mut o, deadline).await;
    o.result = match r {
        Ok(r) => r,
        Err(e) => Err(Failure {
            path: o.op.path.clone(),
            error: e.to_string(),
            retry_whole: false,
        }),
    };
    o
}

#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    #[error("local read: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: unexpected {0}")]
    Protocol(String),
}

/// One file on one stream: delta if asked for and possible, else whole;
/// a content-check failure is retried whole once.
async fn transfer_inner(
    conn: &quinn::Connection,
    export: &Path,
    settle: Option<Settle>,
    bar: &ProgressBar,
    o: &mut Outcome,
    deadline: Option<Duration>,
) -> Result<Result<Sent, Failure>, TransferError> {
    let op = o.op.clone();
    let mut try_delta = op.delta;
    let mut whole_tries = 0;
    loop {
        let (send, recv) = conn.open_bi().await?;
        let mut st = Stream::new(send, recv);
        st.deadline = deadline;
        let mut sent = None;
        o.as_delta = false;
        if try_delta {
            // Block size follows the base (the standby's file), like rsync, so
            // a signature the standby cached when it wrote that file matches.
            let (block, strong) = delta::options_for(op.base_size);
            if delta::check_options(block, strong, op.base_size).is_ok() {
                st.send(&Request::SigRequest {
                    id: 1,
                    path: op.path.clone(),
                    block_size: block,
                    strong_len: strong,
                })
                .await?;
                match st.reply().await? {
                    Reply::Signature { data, .. } => {
                        let s = send_delta(
                            &mut st,
                            export,
                            settle.clone(),
                            &op,
                            data,
                            2,
                            &mut o.delta_bytes,
                            bar,
                        )
                        .await?;
                        if !matches!(s, Sent::Fallback) {
                            o.as_delta = true;
                            sent = Some(s);
                        }
                    }
                    Reply::NoSignature { .. } => {}
                    other => return Err(TransferError::Protocol(format!("{other:?}"))),
                }
            }
        }
        let sent = match sent {
            Some(s) => s,
            None => {
                whole_tries += 1;
                send_large(&mut st, export, settle.clone(), &op, 3, bar).await?
            }
        };
        st.finish().await?;
        let failures = match st.reply().await? {
            Reply::BarrierDone { failures, .. } => failures,
            other => return Err(TransferError::Protocol(format!("{other:?}"))),
        };
        o.tx += st.tx;
        o.rx += st.rx;
        if let Some(f) = failures.into_iter().next() {
            if f.retry_whole && whole_tries < 2 {
                tracing::info!(path = %op.path, "resending whole after: {}", f.error);
                try_delta = false;
                continue;
            }
            return Ok(Err(f));
        }
        return Ok(match sent {
            Sent::Fallback => Err(Failure {
                path: op.path.clone(),
                error: "kept changing while being read; skipped (the next run will send it)".into(),
                retry_whole: false,
            }),
            s => Ok(s),
        });
    }
}

pub enum Sent {
    /// Sent and verified; what the index records for it.
    Done(Stamp, wire::Hash),
    Vanished,
    /// Open for writing elsewhere (live replication): send once closed.
    Busy,
    /// Could not produce a delta: send whole instead.
    Fallback,
}

pub(crate) fn changed(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    Stamp::of(a) != Stamp::of(b)
}

/// A source file opened for sending.
pub(crate) enum Opened {
    Gone,
    /// Open for writing elsewhere and not quiet: send it once closed.
    Busy,
    /// `leased`: a read lease is held and must still be intact after reading.
    File(std::fs::File, std::fs::Metadata, bool),
}

/// Opens a file to send: `rel` beneath `export`, never through a symlink
/// (neither the file nor a parent swapped for one since the scan), never a
/// FIFO or device (a FIFO would hang the reader, `/dev/zero` never ends).
/// Either counts as gone: the compare that follows sees what is there now.
/// With `settle` (live replication), a file another process has open for
/// writing is held back unless quiet that long or unchanged since a writer
/// closed it, with every event up to its stamps handled (see
/// [`crate::lease::Closed`]; may wait briefly for the watch thread).
pub(crate) fn open_source(
    export: &Path,
    rel: &RelPath,
    settle: Option<&Settle>,
) -> std::io::Result<Opened> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let gone = |e: &rustix::io::Errno| {
        matches!(
            *e,
            rustix::io::Errno::NOENT
                | rustix::io::Errno::LOOP
                | rustix::io::Errno::NOTDIR
                | rustix::io::Errno::XDEV
        )
    };
    let root = rustix::fs::open(
        export,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = match rustix::fs::openat2(
        &root,
        rel.as_path(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(Opened::Gone),
        Err(e) => return Err(e.into()),
    };
    let f = std::fs::File::from(fd);
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Ok(Opened::Gone);
    }
    let leased = match settle {
        Some(settle) => match crate::lease::take(&f) {
            crate::lease::Lease::Busy => {
                // Still open for writing, but unchanged since a writer
                // closed it (proven, not just recorded): a server's cached
                // descriptor, not a writer.
                if settle.closed.unchanged(rel, &m) {
                    return Ok(Opened::File(f, m, false));
                }
                let age = m.modified().ok().and_then(|t| t.elapsed().ok());
                if age.is_none_or(|a| a < settle.quiet) {
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
pub(crate) fn untouched(f: &std::fs::File, leased: bool) -> bool {
    !leased || crate::lease::intact(f)
}

/// Streams a large file chunk by chunk from a reader thread.
async fn send_large(
    st: &mut Stream,
    export: &Path,
    settle: Option<Settle>,
    f: &FileOp,
    id: u64,
    bar: &ProgressBar,
) -> Result<Sent, TransferError> {
    let export = export.to_path_buf();
    let rel = f.path.clone();
    let (tx, rx) = mpsc::channel::<Request>(8);
    let busy = Arc::new(AtomicBool::new(false));
    let busy2 = busy.clone();
    let reader =
        tokio::task::spawn_blocking(move || -> std::io::Result<Option<(Stamp, wire::Hash)>> {
            let (mut file, before, leased) = match open_source(&export, &rel, settle.as_ref())? {
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
    let sent = forward(st, rx, bar, &mut 0).await?;
    let r = reader.await.map_err(std::io::Error::other)??;
    if busy.load(Ordering::Relaxed) {
        return Ok(Sent::Busy);
    }
    Ok(match (r, sent) {
        (Some((stamp, h)), _) => Sent::Done(stamp, h),
        (None, false) => Sent::Vanished,
        (None, true) => Sent::Fallback,
    })
}

/// Sends what a reader thread produces; true if a FileBegin went out.
async fn forward(
    st: &mut Stream,
    mut rx: mpsc::Receiver<Request>,
    bar: &ProgressBar,
    delta_bytes: &mut u64,
) -> Result<bool, StreamError> {
    let mut began = false;
    loop {
        // Flush whenever the producer has nothing more ready: a delta of a
        // mostly unchanged file is a trickle of tiny segments, and holding
        // them for a full write buffer would leave the standby idle until
        // the first changed region (or the end of the file).
        let m = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::error::TryRecvError::Empty) => {
                st.flush().await?;
                match rx.recv().await {
                    Some(m) => m,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match &m {
            Request::FileBegin { .. } => began = true,
            Request::FileData { data, .. } => bar.inc(data.len() as u64),
            Request::DeltaSegment { data, .. } => *delta_bytes += data.len() as u64,
            _ => {}
        }
        st.send(&m).await?;
    }
    Ok(began)
}

#[allow(clippy::too_many_arguments)]
async fn send_delta(
    st: &mut Stream,
    export: &Path,
    settle: Option<Settle>,
    f: &FileOp,
    sig: Vec<u8>,
    id: u64,
    delta_bytes: &mut u64,
    bar: &ProgressBar,
) -> Result<Sent, TransferError> {
    let export = export.to_path_buf();
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
            let (mut file, before, leased) = match open_source(&export, &rel, settle.as_ref())? {
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
    let began = forward(st, rx, &ProgressBar::hidden(), delta_bytes).await?;
    let r = worker.await.map_err(std::io::Error::other)??;
    if busy.load(Ordering::Relaxed) {
        return Ok(Sent::Busy);
    }
    Ok(match r {
        Ok(Some((stamp, h))) => Sent::Done(stamp, h),
        Ok(None) if !began => Sent::Vanished,
        _ => Sent::Fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn is_file(o: Opened) -> bool {
        matches!(o, Opened::File(..))
    }

    #[test]
    fn a_source_is_read_only_through_no_symlink_and_only_if_regular() {
        let d = tempfile::tempdir().unwrap();
        let export = d.path().join("export");
        std::fs::create_dir_all(export.join("dir")).unwrap();
        std::fs::write(d.path().join("secret"), b"root only").unwrap();
        std::fs::write(export.join("dir/ok"), b"fine").unwrap();
        assert!(is_file(open_source(&export, &rel("dir/ok"), None).unwrap()));

        // swapped for a symlink to a file outside the export
        std::os::unix::fs::symlink(d.path().join("secret"), export.join("link")).unwrap();
        assert!(matches!(
            open_source(&export, &rel("link"), None).unwrap(),
            Opened::Gone
        ));
        // a parent swapped for a symlink
        std::os::unix::fs::symlink(d.path(), export.join("up")).unwrap();
        assert!(matches!(
            open_source(&export, &rel("up/secret"), None).unwrap(),
            Opened::Gone
        ));
        // a FIFO: opening must not hang, and it is not sent
        rustix::fs::mknodat(
            rustix::fs::CWD,
            export.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            open_source(&export, &rel("fifo"), None).unwrap(),
            Opened::Gone
        ));
        // a device
        std::os::unix::fs::symlink("/dev/zero", export.join("zero")).unwrap();
        assert!(matches!(
            open_source(&export, &rel("zero"), None).unwrap(),
            Opened::Gone
        ));
        assert!(matches!(
            open_source(&export, &rel("missing"), None).unwrap(),
            Opened::Gone
        ));
    }
}
