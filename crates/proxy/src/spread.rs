//! Even spread of client connections over the workers.
//!
//! Each worker accepts on its own SO_REUSEPORT socket, and the kernel picks
//! the socket by a hash of the connection's addresses: 64 connections land
//! 40/24 as easily as 32/32. Each worker gets about the same CPU, so with a
//! closed loop every connection on the fuller worker waits longer for its
//! turn, and that worker's connections make the tail. A worker that holds
//! more open connections than the emptiest one hands a newly accepted
//! connection over to it (one cross-thread wake-up and a move between the
//! two reactors, once per connection: nothing per request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::sharded::Padded;

/// Where a connection accepted by worker `me` should run, given each
/// worker's open connections: `me` unless another worker has fewer, then
/// the emptiest one (the lowest index among equals). Keeps the counts within
/// one of each other whichever socket the kernel chose.
pub fn pick(me: usize, counts: &[usize]) -> usize {
    let Some(&mine) = counts.get(me) else {
        return me;
    };
    let (least, fewest) = counts
        .iter()
        .enumerate()
        .min_by_key(|&(i, &n)| (n, i))
        .map_or((me, mine), |(i, &n)| (i, n));
    if fewest < mine {
        least
    } else {
        me
    }
}

/// The workers' runtimes and their open connection counts (each on its own
/// cache lines: the owner writes its count once per connection, not per
/// request).
#[derive(Default)]
pub struct Spread {
    workers: Vec<Handle>,
    open: Box<[Padded<AtomicUsize>]>,
}

impl Spread {
    pub fn new(workers: Vec<Handle>) -> Spread {
        let open = (0..workers.len())
            .map(|_| Padded(AtomicUsize::new(0)))
            .collect();
        Spread { workers, open }
    }

    /// The worker for a connection accepted by worker `me`, with its count
    /// already raised (so the next accept, on any worker, sees it), and that
    /// worker's runtime when it is not `me`'s. Outside worker runtimes
    /// (tests that run listeners on their own runtime) every connection
    /// stays where it was accepted.
    pub fn place(self: &Arc<Self>, me: usize) -> (Open, Option<&Handle>) {
        let counts: Vec<usize> = if self.workers.len() > 1 {
            self.open
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed))
                .collect()
        } else {
            Vec::new()
        };
        let to = pick(me, &counts);
        let open = Open::new(self.clone(), to);
        let handle = if to == me { None } else { self.workers.get(to) };
        (open, handle)
    }

    /// Open connections per worker (tests).
    pub fn counts(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .collect()
    }
}

/// One open connection counted on its worker until dropped.
pub struct Open {
    spread: Arc<Spread>,
    worker: usize,
}

impl Open {
    fn new(spread: Arc<Spread>, worker: usize) -> Open {
        if let Some(c) = spread.open.get(worker) {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
        Open { spread, worker }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(c) = self.spread.open.get(self.worker) {
            c.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_emptiest_worker_only_when_it_has_fewer() {
        assert_eq!(pick(0, &[3, 3]), 0, "equal: stays");
        assert_eq!(pick(1, &[3, 3]), 1, "equal: stays");
        assert_eq!(pick(0, &[4, 3]), 1);
        assert_eq!(pick(1, &[2, 3]), 0);
        assert_eq!(pick(2, &[5, 1, 9, 1]), 1, "lowest index among the emptiest");
        assert_eq!(pick(1, &[5, 1, 9, 1]), 1);
        assert_eq!(pick(0, &[]), 0, "no workers known: stays");
        assert_eq!(pick(7, &[1, 2]), 7, "not a worker: stays");
    }

    #[test]
    fn a_skewed_arrival_order_still_ends_even() {
        // every connection arrives at worker 0 (the worst hash): the
        // counts stay within one of each other
        let mut counts = vec![0usize; 3];
        for _ in 0..64 {
            let to = pick(0, &counts);
            counts[to] += 1;
        }
        assert_eq!(counts, vec![22, 21, 21]);
    }

    #[test]
    fn placing_counts_on_the_chosen_worker_until_the_connection_ends() {
        let runtimes: Vec<_> = (0..2)
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
            })
            .collect();
        let s = Arc::new(Spread::new(
            runtimes.iter().map(|r| r.handle().clone()).collect(),
        ));
        let (a, to) = s.place(0);
        assert!(to.is_none(), "even: worker 0 keeps its connection");
        assert_eq!(s.counts(), [1, 0]);
        let (b, to) = s.place(0);
        assert!(to.is_some(), "worker 0 has more: handed to worker 1");
        assert_eq!(s.counts(), [1, 1]);
        let (c, to) = s.place(1);
        assert!(to.is_none());
        assert_eq!(s.counts(), [1, 2]);
        drop(b);
        assert_eq!(s.counts(), [1, 1]);
        drop((a, c));
        assert_eq!(s.counts(), [0, 0]);
        // one worker, or none: nothing moves
        let one = Arc::new(Spread::new(vec![runtimes[0].handle().clone()]));
        let (_x, to) = one.place(0);
        assert!(to.is_none());
        let (_y, to) = one.place(0);
        assert!(to.is_none());
        let none = Arc::new(Spread::new(Vec::new()));
        assert!(none.place(0).1.is_none());
    }
}
