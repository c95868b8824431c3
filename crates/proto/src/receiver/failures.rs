//! Failures between two barriers, bounded: a peer that makes every file fail
//! cannot grow the standby's memory.

use crate::model::Failure;

/// The first `cap` failures in full, the rest only counted.
#[derive(Debug)]
pub struct FailureLog {
    cap: usize,
    kept: Vec<Failure>,
    dropped: u64,
}

impl Default for FailureLog {
    fn default() -> Self {
        FailureLog::new(super::MAX_FAILURES)
    }
}

impl FailureLog {
    pub fn new(cap: usize) -> FailureLog {
        FailureLog {
            cap,
            kept: Vec::new(),
            dropped: 0,
        }
    }

    pub fn push(&mut self, f: Failure) {
        if self.kept.len() < self.cap {
            self.kept.push(f);
        } else {
            self.dropped += 1;
        }
    }

    /// Adds another log's failures, within this one's cap.
    pub fn absorb(&mut self, other: FailureLog) {
        self.dropped += other.dropped;
        for f in other.kept {
            self.push(f);
        }
    }

    /// What was kept and how many more there were; the log starts empty again.
    pub fn take(&mut self) -> (Vec<Failure>, u64) {
        let dropped = std::mem::take(&mut self.dropped);
        (std::mem::take(&mut self.kept), dropped)
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }
}
