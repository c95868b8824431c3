//! The primary's protocol rules for one stream, without I/O.
//!
//! The shell (`syncd`'s `primary` module) sends requests and tells the
//! [`Sender`] what each one awaits ([`Sender::expect`]); it hands every
//! reply to [`Sender::handle_reply`] and carries out the [`Answer`]s it
//! polls. It waits for a reply no longer than [`Sender::poll_timeout`], then
//! calls [`Sender::handle_timeout`]. The rules:
//!
//! - the standby's first reply is its verdict on our Hello: a `Refused`
//!   (another protocol version, another export, newer data) is an error
//!   value carrying its reason and generation, never a half-open session;
//! - a barrier's failures may come in chunks before its `BarrierDone`, and
//!   those it only counted are added up for a whole-tree compare;
//! - a batch is acknowledged only by its commit's reply: a session that is
//!   lost or times out acknowledges nothing more ([`Sender::acknowledged`]);
//! - a standby's manifest is bounded (entries and bytes of names);
//! - a standby that stops answering ends the session after the reply
//!   deadline (QUIC keep-alives alone would hide a hung peer).
//!
//! What each file becomes is [`FileJob`]'s (whole or delta, reread, resent
//! whole after a failed check) and each read's size accounting is
//! [`Reading`]'s, so one reader in the shell serves every send path.

mod file;
mod read;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use file::{FileJob, Next, Outcome, Route, KEPT_CHANGING, REREADS, SMALL, WHOLE_TRIES};
pub use read::{Encoding, FileMsg, Finish, ReadEnd, Reading};

use crate::model::Failure;
use crate::pair::lineage::{Lineage, NodeId};

/// A standby's manifest larger than this is refused (a hostile or broken
/// standby could otherwise send an endless list): 50 million entries, or
/// 16 GiB of paths and targets.
pub const MAX_LIST_ENTRIES: usize = 50_000_000;
pub const MAX_LIST_BYTES: u64 = 16 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// How long to wait for the next reply; `None` waits as long as it takes.
    pub reply_deadline: Option<Duration>,
    pub max_list_entries: usize,
    pub max_list_bytes: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            reply_deadline: Some(Duration::from_secs(60)),
            max_list_entries: MAX_LIST_ENTRIES,
            max_list_bytes: MAX_LIST_BYTES,
        }
    }
}

/// What a request just sent awaits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The verdict on our Hello.
    Welcome,
    /// A manifest; `checksum` hashes the whole export first, which takes as
    /// long as it takes, so no deadline applies.
    List {
        checksum: bool,
    },
    /// A delta's base: `Signature` or `NoSignature`.
    Signature,
    Barrier(u64),
    /// A barrier whose reply means durable: the batch's acknowledgement.
    Commit(u64),
    /// A file stream's end: the verdict on what it carried.
    StreamEnd,
    Finished,
}

/// A reply, as far as the rules need to know it (the shell keeps list
/// entries and signatures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Welcome {
        version: u32,
        node: NodeId,
        lineage: Lineage,
    },
    Refused {
        reason: String,
        lineage: Option<Lineage>,
    },
    /// `entries` more, `bytes` of their names and targets.
    ListChunk {
        entries: usize,
        bytes: u64,
    },
    ListEnd,
    Signature,
    NoSignature,
    FailureChunk {
        id: u64,
        failures: Vec<Failure>,
    },
    FailuresDropped {
        id: u64,
        count: u64,
    },
    BarrierDone {
        id: u64,
        failures: Vec<Failure>,
    },
    Finished {
        committed: u64,
    },
    Fatal {
        reason: String,
    },
}

impl Reply {
    fn name(&self) -> &'static str {
        match self {
            Reply::Welcome { .. } => "Welcome",
            Reply::Refused { .. } => "Refused",
            Reply::ListChunk { .. } => "ListChunk",
            Reply::ListEnd => "ListEnd",
            Reply::Signature => "Signature",
            Reply::NoSignature => "NoSignature",
            Reply::FailureChunk { .. } => "FailureChunk",
            Reply::FailuresDropped { .. } => "FailuresDropped",
            Reply::BarrierDone { .. } => "BarrierDone",
            Reply::Finished { .. } => "Finished",
            Reply::Fatal { .. } => "Fatal",
        }
    }
}

/// What an awaited reply came to, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Welcome {
        version: u32,
        node: NodeId,
        lineage: Lineage,
    },
    /// A chunk of the manifest arrived (within the caps).
    ListChunk,
    ListEnd,
    /// Whether the standby has a base for the delta.
    Signature(bool),
    /// A barrier (or a file stream's end) and the failures since the last.
    BarrierDone {
        id: u64,
        failures: Vec<Failure>,
    },
    /// The batch is durable on the standby: acknowledged.
    Committed {
        id: u64,
        failures: Vec<Failure>,
    },
    Finished {
        committed: u64,
    },
}

/// Why a session ends.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SenderError {
    #[error("standby refused the session: {reason}")]
    Refused {
        reason: String,
        lineage: Option<Lineage>,
    },
    #[error("standby reported a fatal error: {0}")]
    Fatal(String),
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the standby's list exceeds {entries} entries or {bytes} bytes of names; refusing it (is the standby's export the right directory?)")]
    ListTooLarge { entries: usize, bytes: u64 },
    #[error(
        "no reply from the standby within {0:?}: it is hung or overloaded; ending the session"
    )]
    Timeout(Duration),
    #[error("the session has ended")]
    Ended,
}

#[derive(Debug)]
struct Wait {
    what: Expect,
    failures: Vec<Failure>,
}

/// The primary's rules for one stream (see the module documentation).
#[derive(Debug)]
pub struct Sender {
    cfg: SenderConfig,
    awaiting: VecDeque<Wait>,
    answers: VecDeque<Answer>,
    /// Since the last reply (or the request, when none was pending).
    progress: Option<Instant>,
    list: (usize, u64),
    dropped: u64,
    acknowledged: Option<u64>,
    ended: bool,
}

impl Sender {
    pub fn new(cfg: SenderConfig) -> Sender {
        Sender {
            cfg,
            awaiting: VecDeque::new(),
            answers: VecDeque::new(),
            progress: None,
            list: (0, 0),
            dropped: 0,
            acknowledged: None,
            ended: false,
        }
    }

    /// A request that awaits `what` went out at `now` (replies come in order).
    pub fn expect(&mut self, what: Expect, now: Instant) {
        if self.awaiting.is_empty() {
            self.progress = Some(now);
        }
        if matches!(what, Expect::List { .. }) {
            self.list = (0, 0);
        }
        self.awaiting.push_back(Wait {
            what,
            failures: Vec::new(),
        });
    }

    /// One reply. An error ends the session.
    pub fn handle_reply(&mut self, r: Reply, now: Instant) -> Result<(), SenderError> {
        if self.ended {
            return Err(SenderError::Ended);
        }
        let r = self.reply(r);
        if r.is_err() {
            self.end();
        }
        self.progress = Some(now);
        r
    }

    fn reply(&mut self, r: Reply) -> Result<(), SenderError> {
        if let Reply::Fatal { reason } = r {
            return Err(SenderError::Fatal(reason));
        }
        let got = r.name();
        let Some(wait) = self.awaiting.front_mut() else {
            return Err(SenderError::Unexpected {
                expected: "nothing",
                got,
            });
        };
        let what = wait.what;
        let unexpected = |expected| SenderError::Unexpected { expected, got };
        let answer = match (what, r) {
            (
                Expect::Welcome,
                Reply::Welcome {
                    version,
                    node,
                    lineage,
                },
            ) => Answer::Welcome {
                version,
                node,
                lineage,
            },
            (Expect::Welcome, Reply::Refused { reason, lineage }) => {
                return Err(SenderError::Refused { reason, lineage })
            }
            (Expect::Welcome, _) => return Err(unexpected("Welcome")),
            (Expect::List { .. }, Reply::ListChunk { entries, bytes }) => {
                return self.list_chunk(entries, bytes)
            }
            (Expect::List { .. }, Reply::ListEnd) => Answer::ListEnd,
            (Expect::List { .. }, _) => return Err(unexpected("a list")),
            (Expect::Signature, Reply::Signature) => Answer::Signature(true),
            (Expect::Signature, Reply::NoSignature) => Answer::Signature(false),
            (Expect::Signature, _) => return Err(unexpected("a signature")),
            (Expect::Finished, Reply::Finished { committed }) => Answer::Finished { committed },
            (Expect::Finished, _) => return Err(unexpected("Finished")),
            (Expect::Barrier(want) | Expect::Commit(want), r) => {
                return self.barrier_reply(Some(want), r)
            }
            (Expect::StreamEnd, r) => return self.barrier_reply(None, r),
        };
        self.awaiting.pop_front();
        self.answers.push_back(answer);
        Ok(())
    }

    fn list_chunk(&mut self, entries: usize, bytes: u64) -> Result<(), SenderError> {
        let (n, b) = self.list;
        let (n, b) = (n.saturating_add(entries), b.saturating_add(bytes));
        let (max_entries, max_bytes) = (self.cfg.max_list_entries, self.cfg.max_list_bytes);
        if n > max_entries || b > max_bytes {
            return Err(SenderError::ListTooLarge {
                entries: max_entries,
                bytes: max_bytes,
            });
        }
        self.list = (n, b);
        self.answers.push_back(Answer::ListChunk);
        Ok(())
    }

    /// Replies to barrier `want` (any id on a file stream).
    fn barrier_reply(&mut self, want: Option<u64>, r: Reply) -> Result<(), SenderError> {
        let got = r.name();
        let ours = |id: u64| want.is_none_or(|w| w == id);
        let Some(wait) = self.awaiting.front_mut() else {
            return Err(SenderError::Ended);
        };
        match r {
            Reply::FailureChunk { id, failures } if ours(id) => {
                wait.failures.extend(failures);
                Ok(())
            }
            Reply::FailuresDropped { id, count } if ours(id) => {
                self.dropped = self.dropped.saturating_add(count);
                Ok(())
            }
            Reply::BarrierDone { id, failures } if ours(id) => {
                let Some(Wait {
                    what,
                    failures: mut all,
                }) = self.awaiting.pop_front()
                else {
                    return Err(SenderError::Ended);
                };
                all.extend(failures);
                let answer = match what {
                    Expect::Commit(id) => {
                        self.acknowledged = Some(id);
                        Answer::Committed { id, failures: all }
                    }
                    _ => Answer::BarrierDone { id, failures: all },
                };
                self.answers.push_back(answer);
                Ok(())
            }
            _ => Err(SenderError::Unexpected {
                expected: "BarrierDone",
                got,
            }),
        }
    }

    /// The next answer, if any.
    pub fn poll_answer(&mut self) -> Option<Answer> {
        self.answers.pop_front()
    }

    /// When to give up waiting for the awaited reply.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wait = self.awaiting.front()?;
        if self.ended || matches!(wait.what, Expect::List { checksum: true }) {
            return None;
        }
        Some(self.progress? + self.cfg.reply_deadline?)
    }

    /// The clock reached `now` without a reply: past the deadline the
    /// session ends.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SenderError> {
        match (self.poll_timeout(), self.cfg.reply_deadline) {
            (Some(t), Some(d)) if now >= t => {
                self.end();
                Err(SenderError::Timeout(d))
            }
            _ => Ok(()),
        }
    }

    /// The connection is gone: whatever was awaited is not acknowledged.
    pub fn handle_lost(&mut self) {
        self.end();
    }

    fn end(&mut self) {
        self.ended = true;
        self.awaiting.clear();
    }

    /// Caps on a manifest (tests play a standby with an endless one).
    pub fn set_list_limits(&mut self, entries: usize, bytes: u64) {
        (self.cfg.max_list_entries, self.cfg.max_list_bytes) = (entries, bytes);
    }

    /// The last batch the standby acknowledged in this session.
    pub fn acknowledged(&self) -> Option<u64> {
        self.acknowledged
    }

    /// Replies still awaited.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Failures the standby only counted since the last call: which files
    /// they were is unknown, so a whole-tree compare retries them.
    pub fn take_failures_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}
