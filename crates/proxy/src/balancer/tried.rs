//! The servers a request already tried: a few inline (a request rarely
//! tries more than a handful), the rest spilled to the heap, so a request's
//! first tries allocate nothing.

/// Tries kept inline.
const INLINE: usize = 4;

#[derive(Debug, Default, Clone)]
pub(crate) struct Tried {
    inline: [u64; INLINE],
    len: usize,
    more: Vec<u64>,
}

impl Tried {
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.inline[..self.len.min(INLINE)].contains(&id) || self.more.contains(&id)
    }

    /// Add `id` (the caller checks it is not there yet).
    pub(crate) fn push(&mut self, id: u64) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = id,
            None => self.more.push(id),
        }
        self.len += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_then_spilled() {
        let mut t = Tried::default();
        for id in 10..20 {
            assert!(!t.contains(id));
            t.push(id);
            assert!(t.contains(id));
            assert_eq!(t.len(), (id - 9) as usize);
        }
        assert!((10..20).all(|id| t.contains(id)));
        assert!(!t.contains(0), "an unused inline slot is no try");
        assert!(!t.contains(20));
    }
}
