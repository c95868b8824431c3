//! The standby's protocol rules for one stream of requests, without I/O.
//!
//! The shell (`syncd`'s `standby::session`) decodes each request, tells the
//! [`Receiver`] what it is ([`Input`]), then carries out the [`Effect`]s it
//! polls, reporting back the ones that take time (`handle_flushed`,
//! `handle_synced`). File content itself is staged, hashed and renamed by
//! the shell's workers (lanes); the Receiver decides what reaches them:
//!
//! - a verify session changes nothing: any mutating request ends it;
//! - a file is written only between its `FileBegin` and its end, never past
//!   the size it announced, and only so many are open at once;
//! - a barrier is answered only after every lane has committed what came
//!   before it, and a commit only after that is durable (acknowledged means
//!   flushed); lanes given nothing since the last flush are not asked again
//!   (a live batch's listing and its commit after the last barrier would
//!   each cost a round of thread hand-offs for nothing);
//! - hostile sequences (data for a file never opened, a file opened twice,
//!   a commit replayed, a second Hello, a request after Finish) end the session with a clear
//!   error.

mod failures;
mod hello;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

pub use failures::FailureLog;
pub use hello::{check_hello, check_verify_slot, HelloError};

use crate::model::Failure;
use crate::path::RelPath;

/// Files begun but not yet ended, per stream: each costs the shell
/// descriptors and a buffer; an honest primary has a handful in flight.
pub const MAX_IN_FLIGHT: usize = 256;
/// Failures kept with full detail between two barriers; more are counted and
/// reported as a number, which makes the primary compare the whole tree.
pub const MAX_FAILURES: usize = 10_000;

/// What a session may do, fixed by its Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A writing session's control stream.
    Write,
    /// A compare: lists only, never a change.
    Verify,
    /// One large file's own stream: file requests only.
    FileStream,
}

/// A decoded request, as far as the rules need to know it. The shell keeps
/// the request itself and hands it on when told to ([`Effect::Forward`]).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Hello,
    /// A peer-session message (state, ask, answer).
    Peer,
    List,
    ListScope,
    /// An ordered metadata change: mkdir, delete, rename, symlink, link, set metadata.
    Meta,
    Sig {
        id: u64,
    },
    Begin {
        id: u64,
        path: &'a RelPath,
        size: u64,
        delta: bool,
    },
    Data {
        id: u64,
        len: u64,
    },
    Delta {
        id: u64,
    },
    End {
        id: u64,
    },
    Abort {
        id: u64,
    },
    Barrier {
        id: u64,
    },
    Commit {
        id: u64,
    },
    CaughtUp,
    Finish,
}

impl Input<'_> {
    /// How errors name it.
    pub fn name(&self) -> &'static str {
        match self {
            Input::Hello => "Hello",
            Input::Peer => "a peer message",
            Input::List | Input::ListScope => "List",
            Input::Meta => "a metadata request",
            Input::Sig { .. } => "SigRequest",
            Input::Begin { .. } => "FileBegin",
            Input::Data { .. } => "FileData",
            Input::Delta { .. } => "DeltaSegment",
            Input::End { .. } => "FileEnd",
            Input::Abort { .. } => "FileAbort",
            Input::Barrier { .. } | Input::Commit { .. } => "a barrier",
            Input::CaughtUp => "CaughtUp",
            Input::Finish => "Finish",
        }
    }

    /// Whether it may change the export (refused in a verify session).
    fn mutating(&self) -> bool {
        !matches!(
            self,
            Input::List | Input::ListScope | Input::Finish | Input::CaughtUp
        )
    }

    fn file_request(&self) -> bool {
        matches!(
            self,
            Input::Sig { .. }
                | Input::Begin { .. }
                | Input::Data { .. }
                | Input::Delta { .. }
                | Input::End { .. }
                | Input::Abort { .. }
        )
    }
}

/// What the shell does next, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Hand the request just handled to worker `lane`.
    Forward { lane: usize },
    /// Tell worker `lane` to drop file `id`: what it staged is removed.
    Drop { lane: usize, id: u64 },
    /// Every lane finishes what it was given and commits its verified files
    /// (renamed into place after a flush); then call [`Receiver::handle_flushed`].
    Flush,
    /// Make the export durable (`syncfs`); then call [`Receiver::handle_synced`].
    Sync,
    /// Scan the export and send the manifest (the request says which part).
    List,
    /// Note batch `id` in the generation record (before its sync).
    RecordCommit { id: u64 },
    /// The primary's catch-up is complete.
    CaughtUp,
    /// Answer barrier or commit `id`.
    BarrierDone {
        id: u64,
        failures: Vec<Failure>,
        dropped: u64,
    },
    /// Save what is kept between runs, answer `Finished`; the stream is done.
    Finished,
}

/// Why a session ends: sent to the primary as `Fatal`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiverError {
    #[error("a verify session may not change anything ({0} refused)")]
    VerifyChanges(&'static str),
    #[error("{0} on a file stream")]
    NotOnFileStream(&'static str),
    #[error("duplicate Hello")]
    DuplicateHello,
    #[error("{0} on a replication session")]
    NotHere(&'static str),
    #[error("too many files in flight: more than {0} begun without FileEnd")]
    TooManyInFlight(usize),
    #[error("{what} for file {id}, which was never opened")]
    NotOpen { id: u64, what: &'static str },
    #[error("FileBegin for file {0}, which is already open")]
    AlreadyOpen(u64),
    #[error("{0} after Finish")]
    AfterFinish(&'static str),
    #[error("{0} while the previous request is still being carried out")]
    Busy(&'static str),
    #[error("Commit {id} after Commit {last}: commit ids must increase")]
    CommitReplayed { id: u64, last: u64 },
}

/// A file between its begin and its end.
#[derive(Debug)]
struct Open {
    path: RelPath,
    size: u64,
    /// Whole-file bytes handed on so far.
    sent: u64,
    delta: bool,
    /// Already reported and dropped: what follows for it is ignored.
    failed: bool,
}

/// What a request waiting on the shell does once the wait is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Barrier(u64),
    Commit(u64),
    List,
    CaughtUp,
    Finish,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Flush(Then),
    Sync(Then),
}

/// The standby's rules for one stream (see the module documentation).
#[derive(Debug)]
pub struct Receiver {
    mode: Mode,
    lanes: usize,
    max_in_flight: usize,
    open: HashMap<u64, Open>,
    failures: FailureLog,
    effects: VecDeque<Effect>,
    waiting: Option<Wait>,
    finished: bool,
    /// The last commit answered in this session: a batch is acknowledged once.
    last_commit: Option<u64>,
    /// Something went to the lanes since their last flush.
    lanes_dirty: bool,
}

impl Receiver {
    /// A stream whose files are spread over `lanes` workers by id.
    pub fn new(mode: Mode, lanes: usize) -> Receiver {
        Receiver::with_limits(mode, lanes, MAX_IN_FLIGHT, MAX_FAILURES)
    }

    pub fn with_limits(
        mode: Mode,
        lanes: usize,
        max_in_flight: usize,
        max_failures: usize,
    ) -> Receiver {
        Receiver {
            mode,
            lanes: lanes.max(1),
            max_in_flight,
            open: HashMap::new(),
            failures: FailureLog::new(max_failures),
            effects: VecDeque::new(),
            waiting: None,
            finished: false,
            last_commit: None,
            lanes_dirty: false,
        }
    }

    /// One decoded request. An error ends the session (nothing of the
    /// request was carried out).
    pub fn handle(&mut self, input: Input<'_>) -> Result<(), ReceiverError> {
        let name = input.name();
        if self.finished {
            return Err(ReceiverError::AfterFinish(name));
        }
        if self.waiting.is_some() {
            return Err(ReceiverError::Busy(name));
        }
        match self.mode {
            Mode::Verify if input.mutating() => return Err(ReceiverError::VerifyChanges(name)),
            Mode::FileStream if !input.file_request() => {
                return Err(ReceiverError::NotOnFileStream(name))
            }
            _ => {}
        }
        match input {
            Input::Hello => return Err(ReceiverError::DuplicateHello),
            Input::Peer => return Err(ReceiverError::NotHere(name)),
            // A listing sees what came before it (a full batch's renames
            // on lane 0); with idle lanes that costs nothing.
            Input::List | Input::ListScope => self.flush_then(Then::List),
            Input::Meta => self.give_lane(Effect::Forward { lane: 0 }),
            Input::Sig { id } => self.forward(id),
            Input::Begin {
                id,
                path,
                size,
                delta,
            } => self.begin(id, path, size, delta)?,
            Input::Data { id, len } => self.data(id, len)?,
            Input::Delta { id } => self.delta(id)?,
            Input::End { id } => self.end(id)?,
            Input::Abort { id } => {
                // An abort needs no open file: the primary may give up on a
                // file whose begin it never sent.
                if self.open.remove(&id).is_some_and(|f| !f.failed) {
                    self.forward(id);
                }
            }
            Input::Barrier { id } => self.flush_then(Then::Barrier(id)),
            Input::Commit { id } => {
                if let Some(last) = self.last_commit.filter(|&l| id <= l) {
                    return Err(ReceiverError::CommitReplayed { id, last });
                }
                self.last_commit = Some(id);
                self.flush_then(Then::Commit(id))
            }
            Input::CaughtUp => self.flush_then(Then::CaughtUp),
            Input::Finish => self.flush_then(Then::Finish),
        }
        Ok(())
    }

    /// A file stream ended cleanly: answer it once its file is committed.
    pub fn handle_stream_end(&mut self) {
        self.open.clear();
        self.flush_then(Then::Barrier(0));
    }

    /// Every lane has committed what it was given; `lanes` are the failures
    /// they met meanwhile.
    pub fn handle_flushed(&mut self, lanes: FailureLog) {
        self.failures.absorb(lanes);
        let Some(Wait::Flush(then)) = self.waiting.take() else {
            return;
        };
        match then {
            Then::Commit(id) => {
                self.effects.push_back(Effect::RecordCommit { id });
                self.sync_then(then);
            }
            Then::Finish => self.sync_then(then),
            _ => self.after_wait(then),
        }
    }

    /// The export is durable.
    pub fn handle_synced(&mut self) {
        if let Some(Wait::Sync(then)) = self.waiting.take() {
            self.after_wait(then);
        }
    }

    /// The next thing to do, if any.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// `Finish` has been answered: the stream is done.
    pub fn is_finished(&self) -> bool {
        self.finished && self.effects.is_empty()
    }

    /// Files begun and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.open.len()
    }

    fn lane(&self, id: u64) -> usize {
        (id % self.lanes as u64) as usize
    }

    fn forward(&mut self, id: u64) {
        let lane = self.lane(id);
        self.give_lane(Effect::Forward { lane });
    }

    /// A job for a lane: the next flush has something to wait for.
    fn give_lane(&mut self, e: Effect) {
        self.lanes_dirty = true;
        self.effects.push_back(e);
    }

    fn flush_then(&mut self, then: Then) {
        self.waiting = Some(Wait::Flush(then));
        if std::mem::take(&mut self.lanes_dirty) {
            self.effects.push_back(Effect::Flush);
        } else {
            // Every job so far was committed, and its failures reported,
            // at the last flush: nothing for the lanes to do.
            self.handle_flushed(FailureLog::default());
        }
    }

    fn sync_then(&mut self, then: Then) {
        self.waiting = Some(Wait::Sync(then));
        self.effects.push_back(Effect::Sync);
    }

    fn after_wait(&mut self, then: Then) {
        match then {
            Then::Barrier(id) | Then::Commit(id) => {
                let (failures, dropped) = self.failures.take();
                self.effects.push_back(Effect::BarrierDone {
                    id,
                    failures,
                    dropped,
                });
            }
            Then::List => self.effects.push_back(Effect::List),
            Then::CaughtUp => self.effects.push_back(Effect::CaughtUp),
            Then::Finish => {
                self.finished = true;
                self.effects.push_back(Effect::Finished);
            }
        }
    }

    fn begin(
        &mut self,
        id: u64,
        path: &RelPath,
        size: u64,
        delta: bool,
    ) -> Result<(), ReceiverError> {
        if self.open.contains_key(&id) {
            return Err(ReceiverError::AlreadyOpen(id));
        }
        if self.open.len() >= self.max_in_flight {
            return Err(ReceiverError::TooManyInFlight(self.max_in_flight));
        }
        let path = path.clone();
        self.open.insert(
            id,
            Open {
                path,
                size,
                sent: 0,
                delta,
                failed: false,
            },
        );
        self.forward(id);
        Ok(())
    }

    /// The open file `id`, or `None` when it already failed.
    fn file(&mut self, id: u64, what: &'static str) -> Result<Option<&mut Open>, ReceiverError> {
        match self.open.get_mut(&id) {
            None => Err(ReceiverError::NotOpen { id, what }),
            Some(f) if f.failed => Ok(None),
            Some(f) => Ok(Some(f)),
        }
    }

    fn data(&mut self, id: u64, len: u64) -> Result<(), ReceiverError> {
        let Some(f) = self.file(id, "FileData")? else {
            return Ok(());
        };
        match f.sent.checked_add(len).filter(|&n| n <= f.size) {
            Some(n) => {
                f.sent = n;
                self.forward(id);
            }
            None => self.fail(id, "more data than the announced size".into(), false),
        }
        Ok(())
    }

    fn delta(&mut self, id: u64) -> Result<(), ReceiverError> {
        let Some(f) = self.file(id, "DeltaSegment")? else {
            return Ok(());
        };
        if f.delta {
            // How much a segment writes is known only once applied: the
            // lane stops it at the announced size.
            self.forward(id);
        } else {
            self.fail(id, "delta for a file announced whole".into(), true);
        }
        Ok(())
    }

    fn end(&mut self, id: u64) -> Result<(), ReceiverError> {
        self.file(id, "FileEnd")?;
        if self.open.remove(&id).is_some_and(|f| !f.failed) {
            // The lane checks size and hash, then holds it for the next commit.
            self.forward(id);
        }
        Ok(())
    }

    /// File `id` cannot be applied: reported with the next barrier, dropped
    /// by its lane, and what else comes for it ignored.
    fn fail(&mut self, id: u64, error: String, retry_whole: bool) {
        let lane = self.lane(id);
        if let Some(f) = self.open.get_mut(&id) {
            f.failed = true;
            self.failures.push(Failure {
                path: f.path.clone(),
                error,
                retry_whole,
            });
            self.give_lane(Effect::Drop { lane, id });
        }
    }
}

/// The lane's check of a finished file: all the announced bytes, and the
/// primary's hash. A file that fails it is asked again whole.
pub fn content_check(
    size: u64,
    written: u64,
    want: &[u8; 32],
    got: &[u8; 32],
) -> Result<(), String> {
    if written == size && want == got {
        return Ok(());
    }
    Err(format!(
        "content check failed (got {written} of {size} bytes, BLAKE3 {}); not committed",
        if want == got { "ok" } else { "mismatch" }
    ))
}
