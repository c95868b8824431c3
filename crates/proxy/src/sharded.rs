//! Per-worker copies of hot shared state. Two workers that write the same
//! cache line on every request (a counter, a lock word, a reference count)
//! make it bounce between cores; nginx's workers share nothing on the
//! request path. Each worker writes its own slot, on its own cache lines,
//! and readers (`/metrics`, the retry budget) add the slots up.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::workers;

/// Slots per sharded value. Workers beyond this share slots (still correct,
/// only less isolated); threads outside workers use slot 0.
pub const SHARDS: usize = 16;

/// Aligned to two cache lines: x86's adjacent-line prefetcher pulls lines in
/// pairs, so one line of padding is not enough to keep neighbours apart.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// `SHARDS` copies of `T`, one per worker.
#[derive(Debug)]
pub struct Sharded<T> {
    slots: Box<[Padded<T>]>,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded {
            slots: (0..SHARDS).map(|_| Padded(T::default())).collect(),
        }
    }
}

impl<T> Sharded<T> {
    /// The calling worker's slot.
    pub fn local(&self) -> &T {
        &self.slots[workers::index() % SHARDS].0
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }

    /// The sum of one counter over all slots.
    pub fn sum(&self, field: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_write_their_own_slot_and_sums_add_up() {
        let s: std::sync::Arc<Sharded<AtomicU64>> = Default::default();
        // worker index 0 (this thread) and three worker threads
        s.local().fetch_add(1, Ordering::Relaxed);
        let threads: Vec<_> = (1..=3)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    workers::set_index(i);
                    for _ in 0..1000 {
                        s.local().fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.sum(|c| c), 3001);
        let per_slot: Vec<u64> = s.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(&per_slot[..4], &[1, 1000, 1000, 1000]);
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 128);
    }
}
