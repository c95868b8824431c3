//! The ledger's map, compact: path → stamp, in path order.
//!
//! A `BTreeMap<Vec<u8>, S>` costs a 24-byte key and a heap block per path
//! beside the stamp, in nodes about two-thirds full: ~150 bytes an entry
//! for a 48-byte stamp, the standby's largest holder at a million files.
//! Here the bulk of the map is one sorted run: every path back to back in
//! one buffer, an end offset and a stamp per entry (~75 bytes an entry for
//! a 20-byte path). Changes go to a small `BTreeMap` beside it (a `None`
//! hides a run entry) and are merged into the run once they grow past a
//! fraction of it, so a put costs a few entry copies, amortised.

use std::cmp::Ordering;
use std::collections::btree_map;
use std::collections::BTreeMap;
use std::iter::Peekable;

/// Changes kept beside the run before a merge: at least this many...
const RECENT_MIN: usize = 4096;
/// ...or one per this many run entries (a merge copies the whole run).
const RECENT_RATIO: usize = 8;

#[derive(Clone)]
pub(super) struct PathMap<S> {
    /// The run's paths, back to back, sorted.
    names: Vec<u8>,
    /// Where each run path ends in `names` (it starts where the last ends).
    ends: Vec<usize>,
    vals: Vec<S>,
    /// Changes since the last merge: `Some` sets, `None` hides a run entry.
    recent: BTreeMap<Vec<u8>, Option<S>>,
    len: usize,
}

impl<S> Default for PathMap<S> {
    fn default() -> Self {
        PathMap {
            names: Vec::new(),
            ends: Vec::new(),
            vals: Vec::new(),
            recent: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for PathMap<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
            .finish()
    }
}

impl<S: PartialEq> PartialEq for PathMap<S> {
    fn eq(&self, o: &Self) -> bool {
        self.len == o.len && self.iter().eq(o.iter())
    }
}

impl<S: Eq> Eq for PathMap<S> {}

impl<S> PathMap<S> {
    /// A map of `entries`; a path given twice keeps its last stamp.
    pub(super) fn from_entries(entries: impl IntoIterator<Item = (Vec<u8>, S)>) -> Self {
        let mut all: Vec<(Vec<u8>, S)> = entries.into_iter().collect();
        // Stable: equal paths stay in the order given, the last one wins.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = PathMap::default();
        let bytes = all.iter().map(|(p, _)| p.len()).sum();
        m.names.reserve_exact(bytes);
        m.ends.reserve_exact(all.len());
        m.vals.reserve_exact(all.len());
        let mut it = all.into_iter().peekable();
        while let Some((p, s)) = it.next() {
            if it.peek().is_some_and(|(q, _)| *q == p) {
                continue;
            }
            m.push(&p, s);
        }
        m.len = m.ends.len();
        m
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, p: &[u8], s: S) {
        self.names.extend_from_slice(p);
        self.ends.push(self.names.len());
        self.vals.push(s);
    }

    fn run_path(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.names[start..self.ends[i]]
    }

    /// The first run entry not before `p`, and whether it is `p`.
    fn run_seek(&self, p: &[u8]) -> (usize, bool) {
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.run_path(mid).cmp(p) {
                Ordering::Less => lo = mid + 1,
                Ordering::Equal => return (mid, true),
                Ordering::Greater => hi = mid,
            }
        }
        (lo, false)
    }

    pub(super) fn get(&self, p: &[u8]) -> Option<&S> {
        if let Some(v) = self.recent.get(p) {
            return v.as_ref();
        }
        match self.run_seek(p) {
            (i, true) => Some(&self.vals[i]),
            _ => None,
        }
    }

    pub(super) fn insert(&mut self, p: Vec<u8>, s: S) {
        if self.get(&p).is_none() {
            self.len += 1;
        }
        self.recent.insert(p, Some(s));
        self.maybe_merge();
    }

    pub(super) fn remove(&mut self, p: &[u8]) -> Option<S>
    where
        S: Clone,
    {
        let was = self.get(p).cloned();
        if self.run_seek(p).1 {
            self.recent.insert(p.to_vec(), None);
        } else {
            self.recent.remove(p);
        }
        if was.is_some() {
            self.len -= 1;
        }
        self.maybe_merge();
        was
    }

    pub(super) fn clear(&mut self) {
        *self = PathMap::default();
    }

    /// Every entry at or after `from`, in path order.
    pub(super) fn range_from<'a>(&'a self, from: &[u8]) -> Iter<'a, S> {
        Iter {
            map: self,
            at: self.run_seek(from).0,
            recent: self
                .recent
                .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
                .peekable(),
        }
    }

    pub(super) fn iter(&self) -> Iter<'_, S> {
        self.range_from(b"")
    }
}

impl<S> PathMap<S> {
    fn maybe_merge(&mut self) {
        if self.recent.len() > RECENT_MIN.max(self.ends.len() / RECENT_RATIO) {
            self.merge();
        }
    }

    /// Folds the recent changes into a new run.
    fn merge(&mut self) {
        let recent = std::mem::take(&mut self.recent);
        let old = std::mem::take(self);
        let bytes = old.names.len() + recent.keys().map(|k| k.len()).sum::<usize>();
        let n = old.len;
        self.names.reserve_exact(bytes);
        self.ends.reserve_exact(n);
        self.vals.reserve_exact(n);
        let mut start = 0;
        let mut run = old.ends.iter().zip(old.vals).map(|(&end, v)| {
            let p = &old.names[start..end];
            start = end;
            (p, v)
        });
        let mut rec = recent.into_iter().peekable();
        let mut next_run = run.next();
        loop {
            let order = match (&next_run, rec.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((p, _)), Some((q, _))) => (*p).cmp(q.as_slice()),
            };
            if order != Ordering::Greater {
                if let Some((p, v)) = next_run.take() {
                    next_run = run.next();
                    // Equal: replaced or hidden by the recent change.
                    if order == Ordering::Less {
                        self.push(p, v);
                    }
                }
            } else if let Some((q, Some(v))) = rec.next() {
                self.push(&q, v);
            }
        }
        self.len = self.ends.len();
    }
}

/// Entries in path order: the run and the recent changes, merged.
pub(super) struct Iter<'a, S> {
    map: &'a PathMap<S>,
    at: usize,
    recent: Peekable<btree_map::Range<'a, Vec<u8>, Option<S>>>,
}

impl<'a, S> Iterator for Iter<'a, S> {
    type Item = (&'a [u8], &'a S);

    fn next(&mut self) -> Option<Self::Item> {
        let m = self.map;
        loop {
            let run = (self.at < m.ends.len()).then(|| m.run_path(self.at));
            let order = match (run, self.recent.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(p), Some((q, _))) => p.cmp(q.as_slice()),
            };
            if order == Ordering::Less {
                let i = self.at;
                self.at += 1;
                return Some((m.run_path(i), &m.vals[i]));
            }
            if order == Ordering::Equal {
                self.at += 1; // the recent change wins
            }
            if let Some((q, Some(v))) = self.recent.next() {
                return Some((q.as_slice(), v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use syncd_testkit::rng::Rng;

    fn same_as(m: &PathMap<u32>, model: &BTreeMap<Vec<u8>, u32>) {
        assert_eq!(m.len(), model.len());
        let got: Vec<(Vec<u8>, u32)> = m.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
        let want: Vec<(Vec<u8>, u32)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
    }

    /// Names that sort in awkward places: raw bytes (not UTF-8), `/` and
    /// `-` neighbours, a prefix of another, a deep path.
    fn name(rng: &mut Rng) -> Vec<u8> {
        const PARTS: [&[u8]; 6] = [b"a", b"a-b", b"\xff\xfe", b"d/e", b"\x01", b"z"];
        let depth = 1 + rng.below(4);
        let mut p = Vec::new();
        for i in 0..depth {
            if i > 0 {
                p.push(b'/');
            }
            p.extend_from_slice(PARTS[rng.below(PARTS.len())]);
        }
        if rng.chance(5) {
            p.extend(std::iter::repeat_n(b'x', 2000));
        }
        p
    }

    #[test]
    fn built_from_entries_it_lists_them_in_order_last_stamp_winning() {
        let mut rng = Rng(7);
        let mut model = BTreeMap::new();
        let mut given = Vec::new();
        for i in 0..3000u32 {
            let p = name(&mut rng);
            model.insert(p.clone(), i);
            given.push((p, i));
        }
        let m = PathMap::from_entries(given);
        same_as(&m, &model);
        for (k, v) in &model {
            assert_eq!(m.get(k), Some(v));
        }
        assert_eq!(m.get(b"not/there"), None);
        assert_eq!(m, m.clone());
    }

    /// Puts and removals, enough to merge the recent changes into the run
    /// several times, always agree with a `BTreeMap`.
    #[test]
    fn changes_across_merges_agree_with_a_btreemap() {
        for seed in 1..4u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut model: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
            let mut m =
                PathMap::from_entries((0..500u32).map(|i| (format!("r/{i:04}").into_bytes(), i)));
            model.extend((0..500u32).map(|i| (format!("r/{i:04}").into_bytes(), i)));
            for step in 0..30_000u32 {
                let p = if rng.chance(50) {
                    format!("r/{:04}", rng.below(20_000)).into_bytes()
                } else {
                    name(&mut rng)
                };
                if rng.chance(35) {
                    assert_eq!(m.remove(&p), model.remove(&p), "seed {seed} step {step}");
                } else {
                    m.insert(p.clone(), step);
                    model.insert(p.clone(), step);
                }
                assert_eq!(m.get(&p), model.get(&p));
                if step % 5000 == 0 {
                    same_as(&m, &model);
                }
            }
            same_as(&m, &model);
            let from = b"a-b".as_slice();
            let got: Vec<_> = m.range_from(from).map(|(k, _)| k.to_vec()).collect();
            let want: Vec<_> = model
                .range(from.to_vec()..)
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_removed_run_entry_is_hidden_until_put_again() {
        let mut m = PathMap::from_entries([(b"a".to_vec(), 1), (b"a/b".to_vec(), 2)]);
        assert_eq!(m.remove(b"a"), Some(1));
        assert_eq!(m.remove(b"a"), None);
        assert_eq!((m.get(b"a"), m.len()), (None, 1));
        let keys: Vec<_> = m.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, [b"a/b".to_vec()]);
        m.insert(b"a".to_vec(), 3);
        assert_eq!((m.get(b"a"), m.len()), (Some(&3), 2));
        m.merge();
        assert_eq!(
            (m.get(b"a"), m.get(b"a/b"), m.len()),
            (Some(&3), Some(&2), 2)
        );
        m.clear();
        assert_eq!((m.len(), m.iter().count()), (0, 0));
    }
}
