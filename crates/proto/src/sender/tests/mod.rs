//! A Sender and the standby's Receiver connected through memory, under a
//! simulated clock. The primary's files live in a map that can change
//! while a file is being read; the standby's in-memory filesystem plays
//! its shell (lanes stage and check files, a flush renames verified files
//! in, a sync makes them durable). Replies travel back as values.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::*;
use crate::path::RelPath;
use crate::receiver::{content_check, Effect, FailureLog, Input, Mode, Receiver};

mod sessions;
mod shell;

pub(super) fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// Not BLAKE3 (no dependency for it here); any function of the content will do.
pub(super) fn hash(data: &[u8]) -> [u8; 32] {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in data {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&h.to_le_bytes());
    out[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
    out
}

/// What happens to a primary file while it is read (after its first chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mutation {
    /// A writer appends: the file grows past what was announced.
    Grow,
    /// Rewritten in place: same size, another stamp.
    Rewrite,
    /// Opened for writing: the read lease breaks.
    Touch,
}

/// The primary's export.
#[derive(Default)]
pub(super) struct Primary {
    pub files: BTreeMap<RelPath, Vec<u8>>,
    /// Mutations still to come, per file, one per read.
    pub mutations: HashMap<RelPath, VecDeque<Mutation>>,
    pub chunk: usize,
}

/// What the test's primary puts on the wire.
#[derive(Clone, Debug)]
pub(super) enum Msg {
    Sig(u64, RelPath),
    Begin(u64, RelPath, u64, bool),
    Data(u64, Vec<u8>),
    /// A delta segment; the test's delta is a piece of the new content.
    Delta(u64, Vec<u8>),
    End(u64, [u8; 32]),
    Abort(u64),
    Barrier(u64),
    Commit(u64),
    StreamEnd,
}

struct Staged {
    path: RelPath,
    size: u64,
    data: Vec<u8>,
}

/// One stream's Receiver and what its lanes hold.
struct Rx {
    rx: Receiver,
    staged: HashMap<u64, Staged>,
    verified: Vec<(RelPath, Vec<u8>)>,
    failures: FailureLog,
}

/// The standby: its streams share one filesystem.
#[derive(Default)]
pub(super) struct Standby {
    streams: Vec<Rx>,
    pub names: BTreeMap<RelPath, Vec<u8>>,
    pub durable: BTreeMap<RelPath, Vec<u8>>,
    /// Exactly what some FileEnd announced, by path.
    announced: HashMap<RelPath, Vec<[u8; 32]>>,
    /// Flip a byte of these files' next write (a disk that corrupts once).
    pub corrupt: HashSet<RelPath>,
    /// Never answer a commit (a hung syncfs).
    pub hang_sync: bool,
    /// Refuse the Hello with this reason.
    pub refuse: Option<String>,
    /// Messages taken before the connection drops (`None`: never).
    pub cut_after: Option<usize>,
    taken: usize,
    pub replies: HashMap<usize, VecDeque<Reply>>,
}

impl Standby {
    pub fn hello(&mut self) -> Reply {
        match &self.refuse {
            Some(reason) => Reply::Refused {
                reason: reason.clone(),
                lineage: None,
            },
            None => Reply::Welcome {
                version: 1,
                node: Default::default(),
                lineage: Default::default(),
            },
        }
    }

    /// A new stream (0 is the control stream); returns its number.
    pub fn open(&mut self, mode: Mode) -> usize {
        self.streams.push(Rx {
            rx: Receiver::with_limits(mode, 2, 8, 100),
            staged: HashMap::new(),
            verified: Vec::new(),
            failures: FailureLog::new(100),
        });
        self.streams.len() - 1
    }

    /// A file the standby already holds (durably).
    pub fn seed(&mut self, p: RelPath, d: &[u8]) {
        self.announced.entry(p.clone()).or_default().push(hash(d));
        self.names.insert(p.clone(), d.to_vec());
        self.durable.insert(p, d.to_vec());
    }

    pub fn lost(&self) -> bool {
        self.cut_after.is_some_and(|n| self.taken >= n)
    }

    /// One message on stream `s`; false once the connection is gone.
    pub fn take(&mut self, s: usize, m: &Msg) -> bool {
        if self.lost() {
            return false;
        }
        self.taken += 1;
        let input = match m {
            Msg::Sig(id, _) => Input::Sig { id: *id },
            Msg::Begin(id, path, size, delta) => Input::Begin {
                id: *id,
                path,
                size: *size,
                delta: *delta,
            },
            Msg::Data(id, d) => Input::Data {
                id: *id,
                len: d.len() as u64,
            },
            Msg::Delta(id, _) => Input::Delta { id: *id },
            Msg::End(id, _) => Input::End { id: *id },
            Msg::Abort(id) => Input::Abort { id: *id },
            Msg::Barrier(id) => Input::Barrier { id: *id },
            Msg::Commit(id) => Input::Commit { id: *id },
            Msg::StreamEnd => {
                self.streams[s].rx.handle_stream_end();
                self.effects(s, m);
                return true;
            }
        };
        if let Err(e) = self.streams[s].rx.handle(input) {
            self.reply(
                s,
                Reply::Fatal {
                    reason: e.to_string(),
                },
            );
            self.cut_after = Some(self.taken);
            return true;
        }
        self.effects(s, m);
        self.check();
        true
    }

    fn reply(&mut self, s: usize, r: Reply) {
        self.replies.entry(s).or_default().push_back(r);
    }

    fn effects(&mut self, s: usize, m: &Msg) {
        while let Some(e) = self.streams[s].rx.poll_effect() {
            match e {
                Effect::Forward { .. } => self.lane(s, m),
                Effect::Drop { id, .. } => {
                    self.streams[s].staged.remove(&id);
                }
                Effect::Flush => {
                    for (p, d) in std::mem::take(&mut self.streams[s].verified) {
                        self.names.insert(p, d);
                    }
                    let lf = std::mem::replace(&mut self.streams[s].failures, FailureLog::new(100));
                    self.streams[s].rx.handle_flushed(lf);
                }
                Effect::Sync => {
                    if self.hang_sync {
                        continue;
                    }
                    self.durable = self.names.clone();
                    self.streams[s].rx.handle_synced();
                }
                Effect::BarrierDone {
                    id,
                    failures,
                    dropped,
                } => {
                    if dropped > 0 {
                        self.reply(s, Reply::FailuresDropped { id, count: dropped });
                    }
                    self.reply(s, Reply::BarrierDone { id, failures });
                }
                Effect::RecordCommit { .. } | Effect::List | Effect::CaughtUp => {}
                Effect::Finished => self.reply(s, Reply::Finished { committed: 0 }),
            }
        }
    }

    /// One lane's work on a forwarded message.
    fn lane(&mut self, s: usize, m: &Msg) {
        match m {
            Msg::Sig(_, path) => {
                let r = if self.names.contains_key(path) {
                    Reply::Signature
                } else {
                    Reply::NoSignature
                };
                self.reply(s, r);
            }
            Msg::Begin(id, path, size, _) => {
                let st = Staged {
                    path: path.clone(),
                    size: *size,
                    data: Vec::new(),
                };
                self.streams[s].staged.insert(*id, st);
            }
            Msg::Data(id, d) | Msg::Delta(id, d) => {
                let corrupt = &mut self.corrupt;
                if let Some(f) = self.streams[s].staged.get_mut(id) {
                    let room = (f.size - f.data.len() as u64) as usize;
                    assert!(
                        matches!(m, Msg::Delta(..)) || d.len() <= room,
                        "more than announced reached a lane"
                    );
                    let at = f.data.len();
                    // A delta's output is stopped at the announced size.
                    f.data.extend_from_slice(&d[..d.len().min(room)]);
                    if f.data.len() > at && corrupt.remove(&f.path) {
                        f.data[at] ^= 0xff;
                    }
                }
            }
            Msg::End(id, want) => {
                let Some(f) = self.streams[s].staged.remove(id) else {
                    return;
                };
                self.announced
                    .entry(f.path.clone())
                    .or_default()
                    .push(*want);
                let got = hash(&f.data);
                match content_check(f.size, f.data.len() as u64, want, &got) {
                    Ok(()) => self.streams[s].verified.push((f.path, f.data)),
                    Err(error) => self.streams[s].failures.push(crate::model::Failure {
                        path: f.path,
                        error,
                        retry_whole: true,
                    }),
                }
            }
            Msg::Abort(id) => {
                self.streams[s].staged.remove(id);
            }
            _ => {}
        }
    }

    /// Never a partial file under a real name.
    fn check(&self) {
        for (p, d) in &self.names {
            let ok = self.announced.get(p).is_some_and(|v| v.contains(&hash(d)));
            assert!(ok, "{p} holds content no FileEnd announced");
        }
    }
}
