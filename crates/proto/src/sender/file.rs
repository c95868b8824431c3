//! One file of a plan, from the first read to its outcome: whole or delta,
//! reread when it changed while being read, resent whole when the standby's
//! content check failed.

use super::read::{Encoding, ReadEnd};
use crate::model::Failure;
use crate::path::RelPath;

/// Files at most this big are read in one go and pipelined on the control
/// stream; bigger ones (and every delta) get a stream each.
pub const SMALL: u64 = 1 << 20;
/// A small file that changed while being read is read again this often.
pub const REREADS: u32 = 3;
/// Whole sends of one file in a session: a failed content check is resent
/// whole once.
pub const WHOLE_TRIES: u32 = 2;

/// Where a file's content travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// In order with the metadata; checked at the next barrier.
    Control,
    /// On its own stream, which ends with the standby's verdict.
    Stream,
}

/// What the shell does next for a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read it (again) and send it this way. For a delta, first ask for the
    /// standby's signature and report it with [`FileJob::handle_signature`].
    Send(Encoding),
    /// Wait for the standby's verdict on it ([`FileJob::handle_verdict`]):
    /// the next barrier, or the end of its stream.
    Verdict,
    Done(Outcome),
}

/// How a file's send ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// On the standby and checked; `as_delta` says how it went.
    Sent {
        as_delta: bool,
    },
    Vanished,
    /// Open for writing elsewhere: compare it again once closed.
    Busy,
    /// Not on the standby; retried by a later compare.
    Failed(Failure),
}

/// The text of a file that never held still.
pub const KEPT_CHANGING: &str =
    "kept changing while being read; skipped (the next run will send it)";

/// One file of a plan (see the module documentation).
#[derive(Debug)]
pub struct FileJob {
    path: RelPath,
    route: Route,
    encoding: Encoding,
    whole_tries: u32,
    rereads: u32,
    /// How the last read ended, until the verdict.
    last: Option<ReadEnd>,
}

impl FileJob {
    /// `size` from the compare; `delta` when the plan asks for one and the
    /// shell can make one against the standby's copy.
    pub fn new(path: RelPath, size: u64, delta: bool) -> (FileJob, Next) {
        let route = if delta || size > SMALL {
            Route::Stream
        } else {
            Route::Control
        };
        let encoding = if delta {
            Encoding::Delta
        } else {
            Encoding::Whole
        };
        let mut j = FileJob {
            path,
            route,
            encoding,
            whole_tries: 0,
            rereads: 0,
            last: None,
        };
        let next = j.send(encoding);
        (j, next)
    }

    pub fn path(&self) -> &RelPath {
        &self.path
    }

    pub fn route(&self) -> Route {
        self.route
    }

    /// How the current (or last) read is sent.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn send(&mut self, e: Encoding) -> Next {
        self.encoding = e;
        if e == Encoding::Whole {
            self.whole_tries += 1;
        }
        Next::Send(e)
    }

    fn failed(&self, error: &str) -> Next {
        Next::Done(Outcome::Failed(Failure {
            path: self.path.clone(),
            error: error.into(),
            retry_whole: false,
        }))
    }

    /// The standby's answer to the signature request: without one the file
    /// goes whole.
    pub fn handle_signature(&mut self, have: bool) -> Next {
        if have {
            Next::Send(Encoding::Delta)
        } else {
            self.send(Encoding::Whole)
        }
    }

    /// A read ended.
    pub fn handle_read(&mut self, end: ReadEnd) -> Next {
        match (&end, self.encoding, self.route) {
            // A delta that could not be made, or a file that changed under
            // it, goes whole on the same stream.
            (ReadEnd::Changed | ReadEnd::NoDelta, Encoding::Delta, _) => {
                return self.send(Encoding::Whole)
            }
            (ReadEnd::Changed, Encoding::Whole, Route::Control) => {
                if self.rereads < REREADS {
                    self.rereads += 1;
                    return Next::Send(Encoding::Whole);
                }
                return self.failed(KEPT_CHANGING);
            }
            (ReadEnd::Vanished, _, Route::Control) => return Next::Done(Outcome::Vanished),
            (ReadEnd::Busy, _, Route::Control) => return Next::Done(Outcome::Busy),
            (ReadEnd::Failed(e), _, Route::Control) => return self.failed(&format!("read: {e}")),
            _ => {}
        }
        // A file stream always ends with the standby's verdict, whatever
        // went out on it; on the control stream only a sent file waits.
        self.last = Some(end);
        Next::Verdict
    }

    /// The standby's verdict: its failure for this file, if any.
    pub fn handle_verdict(&mut self, failure: Option<Failure>) -> Next {
        let last = self.last.take();
        if let Some(f) = failure {
            if f.retry_whole && self.whole_tries < WHOLE_TRIES {
                return self.send(Encoding::Whole);
            }
            return Next::Done(Outcome::Failed(f));
        }
        match last {
            Some(ReadEnd::Sent) => Next::Done(Outcome::Sent {
                as_delta: self.encoding == Encoding::Delta,
            }),
            Some(ReadEnd::Vanished) => Next::Done(Outcome::Vanished),
            Some(ReadEnd::Busy) => Next::Done(Outcome::Busy),
            Some(ReadEnd::Failed(e)) => self.failed(&format!("local read: {e}")),
            Some(ReadEnd::Changed | ReadEnd::NoDelta) | None => self.failed(KEPT_CHANGING),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(size: u64, delta: bool) -> (FileJob, Next) {
        FileJob::new(RelPath::new("f").unwrap(), size, delta)
    }

    fn check_failed(retry_whole: bool) -> Option<Failure> {
        Some(Failure {
            path: RelPath::new("f").unwrap(),
            error: "content check failed".into(),
            retry_whole,
        })
    }

    #[test]
    fn small_files_go_whole_in_order_and_large_ones_or_deltas_on_a_stream() {
        let (j, n) = job(SMALL, false);
        assert_eq!(
            (j.route(), n),
            (Route::Control, Next::Send(Encoding::Whole))
        );
        let (j, n) = job(SMALL + 1, false);
        assert_eq!((j.route(), n), (Route::Stream, Next::Send(Encoding::Whole)));
        let (j, n) = job(10, true);
        assert_eq!((j.route(), n), (Route::Stream, Next::Send(Encoding::Delta)));
    }

    #[test]
    fn a_small_file_that_keeps_changing_is_reread_then_reported() {
        let (mut j, _) = job(5, false);
        for _ in 0..REREADS {
            assert_eq!(j.handle_read(ReadEnd::Changed), Next::Send(Encoding::Whole));
        }
        match j.handle_read(ReadEnd::Changed) {
            Next::Done(Outcome::Failed(f)) => assert_eq!(f.error, KEPT_CHANGING),
            n => panic!("{n:?}"),
        }
    }

    #[test]
    fn a_delta_falls_back_to_whole() {
        let (mut j, _) = job(5, true);
        assert_eq!(j.handle_signature(false), Next::Send(Encoding::Whole));
        let (mut j, _) = job(5, true);
        assert_eq!(j.handle_signature(true), Next::Send(Encoding::Delta));
        assert_eq!(j.handle_read(ReadEnd::NoDelta), Next::Send(Encoding::Whole));
        assert_eq!(j.handle_read(ReadEnd::Sent), Next::Verdict);
        assert_eq!(
            j.handle_verdict(None),
            Next::Done(Outcome::Sent { as_delta: false })
        );
    }

    #[test]
    fn a_failed_check_is_resent_whole_once() {
        let (mut j, _) = job(5, false);
        assert_eq!(j.handle_read(ReadEnd::Sent), Next::Verdict);
        assert_eq!(
            j.handle_verdict(check_failed(true)),
            Next::Send(Encoding::Whole)
        );
        j.handle_read(ReadEnd::Sent);
        assert!(matches!(
            j.handle_verdict(check_failed(true)),
            Next::Done(Outcome::Failed(_))
        ));
        // A delta that failed its check gets two whole tries.
        let (mut j, _) = job(5, true);
        j.handle_signature(true);
        j.handle_read(ReadEnd::Sent);
        assert_eq!(
            j.handle_verdict(check_failed(true)),
            Next::Send(Encoding::Whole)
        );
        j.handle_read(ReadEnd::Sent);
        assert_eq!(
            j.handle_verdict(check_failed(true)),
            Next::Send(Encoding::Whole)
        );
        j.handle_read(ReadEnd::Sent);
        assert!(matches!(
            j.handle_verdict(None),
            Next::Done(Outcome::Sent { as_delta: false })
        ));
        // Not worth a resend: reported at once.
        let (mut j, _) = job(5, false);
        j.handle_read(ReadEnd::Sent);
        assert!(matches!(
            j.handle_verdict(check_failed(false)),
            Next::Done(Outcome::Failed(_))
        ));
    }

    #[test]
    fn a_file_stream_waits_for_its_verdict_whatever_the_read() {
        for (end, out) in [
            (ReadEnd::Vanished, Outcome::Vanished),
            (ReadEnd::Busy, Outcome::Busy),
        ] {
            let (mut j, _) = job(SMALL + 1, false);
            assert_eq!(j.handle_read(end), Next::Verdict);
            assert_eq!(j.handle_verdict(None), Next::Done(out));
        }
        let (mut j, _) = job(SMALL + 1, false);
        assert_eq!(j.handle_read(ReadEnd::Changed), Next::Verdict);
        assert!(
            matches!(j.handle_verdict(None), Next::Done(Outcome::Failed(f)) if f.error == KEPT_CHANGING)
        );
        let (mut j, _) = job(1, false);
        assert_eq!(j.handle_read(ReadEnd::Busy), Next::Done(Outcome::Busy));
    }
}
