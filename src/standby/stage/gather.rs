//! Requests gathered for one lane before they are handed on as one job:
//! a burst of small files reaches a lane as a few wake-ups, not three a
//! file.

use crate::wire::Request;

/// Handed on at this many requests...
pub(super) const OPS: usize = 48;
/// ...or this many bytes of frames. Every request counts its whole frame,
/// not only file data: a peer's long symlink targets or paths are bounded
/// as data is. A whole-file chunk (`wire::CHUNK`, the same size) ends a
/// job.
pub(super) const BYTES: usize = 256 << 10;

#[derive(Default)]
pub(super) struct Gather {
    ops: Vec<Request>,
    bytes: usize,
}

impl Gather {
    /// Adds `op`, read as a frame of `frame` bytes; whether the lane should
    /// now be handed what is gathered.
    pub fn push(&mut self, op: Request, frame: usize) -> bool {
        self.ops.push(op);
        self.bytes = self.bytes.saturating_add(frame);
        self.ops.len() >= OPS || self.bytes >= BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// What was gathered, in the order it came; empty after.
    pub fn take(&mut self) -> Vec<Request> {
        self.bytes = 0;
        std::mem::replace(&mut self.ops, Vec::with_capacity(OPS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncd_proto::path::RelPath;

    fn abort(id: u64) -> Request {
        Request::FileAbort { id }
    }

    fn ids(ops: &[Request]) -> Vec<u64> {
        ops.iter()
            .map(|r| match r {
                Request::FileAbort { id } => *id,
                _ => u64::MAX,
            })
            .collect()
    }

    #[test]
    fn requests_go_on_in_order_once_enough_are_gathered() {
        let mut g = Gather::default();
        for id in 0..OPS as u64 - 1 {
            assert!(!g.push(abort(id), 16), "handed on early at {id}");
        }
        assert!(g.push(abort(OPS as u64 - 1), 16));
        let ops = g.take();
        assert_eq!(ids(&ops), (0..OPS as u64).collect::<Vec<_>>());
        assert!(g.is_empty());
        // counting starts over
        assert!(!g.push(abort(100), 16));
        assert_eq!(ids(&g.take()), [100]);
    }

    #[test]
    fn every_request_counts_its_whole_frame() {
        let mut g = Gather::default();
        // A symlink's target is no file data, yet a long one fills a job
        // on its own: a peer cannot pile up megabytes in "small" requests.
        let link = Request::Symlink {
            path: RelPath::new(b"l".to_vec()).unwrap(),
            target: vec![b'x'; BYTES],
            meta: crate::wire::Meta {
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
            },
        };
        assert!(g.push(link, BYTES + 32));
        assert_eq!(g.take().len(), 1);
        // Just under the limit in bytes, then over it.
        assert!(!g.push(abort(1), BYTES - 1));
        assert!(g.push(abort(2), 1));
        assert_eq!(ids(&g.take()), [1, 2]);
    }
}
