//! A delta's read: the one source reader (read + BLAKE3) feeds windows of
//! the new file to differ threads, which diff each window against the whole
//! signature at once; segments go out in file order. Windows are the same
//! as with one differ, so the delta is byte for byte the same.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use syncd_proto::sender::{Encoding, ReadEnd};
use tokio::sync::mpsc;

use super::super::source::{self, Read, Sink};
use super::super::summary::Progress;
use crate::delta;
use crate::lease::Settle;
use crate::wire::Request;
use syncd_proto::path::RelPath;

/// Differ threads per delta: the diff (a rolling checksum and an MD4 per
/// matched block) is the primary's main cost. A delta holds about nine
/// windows at once (the reader's, one queued and one being diffed per
/// differ, a queued and a building segment each), and up to `MAX_STREAMS`
/// deltas run at once: more differs would only hold more memory.
const MAX_DIFFERS: usize = 2;

/// The reader's output, dealt round-robin to the differs.
enum Feed {
    Req(Request),
    /// A window of the new file and its offset.
    Content(u64, Vec<u8>),
}

/// A differ's result: the request, and how many content bytes it covers.
type Diffed = Result<(Request, u64), ()>;

struct Dealer {
    to: Vec<SyncSender<Feed>>,
    next: usize,
    /// Offset of the next window.
    pos: u64,
}

impl Dealer {
    fn deal(&mut self, f: Feed) -> bool {
        let i = self.next;
        self.next = (i + 1) % self.to.len();
        self.to[i].send(f).is_ok()
    }
}

impl Sink for Dealer {
    fn send(&mut self, r: Request) -> bool {
        self.deal(Feed::Req(r))
    }

    fn content(&mut self, _id: u64, data: Vec<u8>) -> bool {
        let pos = self.pos;
        self.pos += data.len() as u64;
        self.deal(Feed::Content(pos, data))
    }
}

fn differ(ix: &delta::Indexed<'_>, id: u64, rx: Receiver<Feed>, tx: SyncSender<Diffed>) {
    for f in rx {
        let r = match f {
            Feed::Req(r) => Ok((r, 0)),
            Feed::Content(pos, buf) => {
                let mut seg = Vec::new();
                ix.diff_at(pos, &buf, &mut seg)
                    .map(|()| (Request::DeltaSegment { id, data: seg }, buf.len() as u64))
                    .map_err(|_| ())
            }
        };
        let failed = r.is_err();
        if tx.send(r).is_err() || failed {
            return;
        }
    }
}

/// Reads `rel` as delta file `ID` against `sig` onto `tx`; without a usable
/// signature (or when a window does not diff) it ends `NoDelta`.
pub(super) fn read_delta(
    export: &Path,
    rel: &RelPath,
    settle: Option<&Settle>,
    sig: Vec<u8>,
    tx: mpsc::Sender<Request>,
    progress: Arc<dyn Progress>,
) -> std::io::Result<Read> {
    const ID: u64 = 2;
    let no_delta = || Read {
        end: ReadEnd::NoDelta,
        done: None,
    };
    let Ok(sig) = delta::Differ::new(sig) else {
        return Ok(no_delta());
    };
    let (ix, win) = (sig.indexed(), sig.window());
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DIFFERS));
    let (read, diffed) = std::thread::scope(|sc| {
        let (mut to, mut from) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (ftx, frx) = sync_channel::<Feed>(1);
            let (dtx, drx) = sync_channel::<Diffed>(1);
            let ix = &ix;
            sc.spawn(move || differ(ix, ID, frx, dtx));
            to.push(ftx);
            from.push(drx);
        }
        let reader = sc.spawn(move || {
            let mut sink = Dealer {
                to,
                next: 0,
                pos: 0,
            };
            let root = source::open_export(export)?;
            source::read_in(&root, rel, settle, ID, Encoding::Delta, win, &mut sink)
        });
        // Results in the order they were dealt; a differ that has ended
        // means the reader has (or a window failed, reported first).
        let mut diffed = true;
        for i in 0.. {
            let r = match from[i % n].recv() {
                Ok(Ok((r, bytes))) => {
                    progress.advance(bytes);
                    r
                }
                Ok(Err(())) => {
                    diffed = false;
                    break;
                }
                Err(_) => break,
            };
            if tx.blocking_send(r).is_err() {
                break;
            }
        }
        // Stops the differs, and through them the reader.
        drop(from);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")));
        (read, diffed)
    });
    if !diffed {
        let _ = tx.blocking_send(Request::FileAbort { id: ID });
        return Ok(no_delta());
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd_testkit::rng::Rng;

    struct Quiet;
    impl Progress for Quiet {}

    /// Windows diffed on several threads come out in file order, and are
    /// exactly what one differ makes of each window.
    #[test]
    fn parallel_diff_applies_to_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let base = Rng(1).bytes(5 * delta::WINDOW + 999);
        let mut new = base.clone();
        for at in [100, delta::WINDOW - 10, 3 * delta::WINDOW + 5] {
            new[at..at + 3000].copy_from_slice(&Rng(at as u64 | 1).bytes(3000));
        }
        new.splice(2 * delta::WINDOW..2 * delta::WINDOW, Rng(5).bytes(7777));
        std::fs::write(d.path().join("f"), &new).unwrap();
        std::fs::write(d.path().join("base"), &base).unwrap();
        let (block, strong) = delta::options_for(base.len() as u64);
        let sig = delta::signature(&base[..], base.len() as u64, block, strong).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let got = std::thread::spawn(move || {
            let mut v = Vec::new();
            while let Some(r) = rx.blocking_recv() {
                v.push(r);
            }
            v
        });
        let rel = RelPath::new(b"f".to_vec()).unwrap();
        let read = read_delta(d.path(), &rel, None, sig.clone(), tx, Arc::new(Quiet)).unwrap();
        assert_eq!(read.end, ReadEnd::Sent);
        let reqs = got.join().unwrap();
        assert!(matches!(reqs.first(), Some(Request::FileBegin { .. })));
        assert!(matches!(reqs.last(), Some(Request::FileEnd { .. })));
        let differ = delta::Differ::new(sig).unwrap();
        let ix = differ.indexed();
        let windows: Vec<&[u8]> = new.chunks(differ.window()).collect();
        let segs: Vec<&Vec<u8>> = reqs
            .iter()
            .filter_map(|r| match r {
                Request::DeltaSegment { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(segs.len(), windows.len());
        let bf = std::fs::File::open(d.path().join("base")).unwrap();
        let (mut out, mut buf, mut one) = (Vec::new(), Vec::new(), Vec::new());
        for ((seg, w), pos) in segs
            .iter()
            .zip(&windows)
            .zip((0..).step_by(differ.window()))
        {
            ix.diff_at(pos, w, &mut one).unwrap();
            assert_eq!(*seg, &one);
            delta::apply_segment_file(&bf, seg, &mut out, u64::MAX, &mut buf).unwrap();
        }
        assert_eq!(out, new);
        // A signature that does not parse: no delta, nothing sent.
        let (tx, mut rx) = mpsc::channel(4);
        let r = read_delta(d.path(), &rel, None, vec![1, 2], tx, Arc::new(Quiet)).unwrap();
        assert_eq!(r.end, ReadEnd::NoDelta);
        assert!(rx.try_recv().is_err());
    }
}
