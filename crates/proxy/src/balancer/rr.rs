//! Smooth weighted round-robin, as in `ngx_http_upstream_get_peer`.
//!
//! Every eligible server's `current_weight` grows by its `effective_weight`;
//! the largest wins (first one on ties) and pays back the total. Weights
//! 5,1,1 give `a a b a c a a`, the same sequence as nginx.

use std::time::Instant;

use super::{Attempt, Peer};

/// Select among `set`; returns the index of the chosen server.
pub fn select<T>(
    set: &mut [Peer<T>],
    now: Instant,
    single: bool,
    attempt: &Attempt,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut total: i64 = 0;
    for i in 0..set.len() {
        let p = &mut set[i];
        if attempt.tried(p.id) || !p.usable(now, single) {
            continue;
        }
        p.current_weight += p.effective_weight;
        total += p.effective_weight;
        if p.effective_weight < i64::from(p.spec.weight) {
            p.effective_weight += 1;
        }
        match best {
            Some(b) if set[b].current_weight >= set[i].current_weight => {}
            _ => best = Some(i),
        }
    }
    let b = best?;
    set[b].current_weight -= total;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Method;
    use std::time::Instant;

    fn seq(weights: &[(&str, u32)], n: usize) -> String {
        let specs = weights.iter().map(|(k, w)| spec(k, *w)).collect();
        let mut g = group(Method::RoundRobin, specs);
        sequence(&mut g, Instant::now(), n)
    }

    #[test]
    fn nginx_golden_sequence_5_1_1() {
        assert_eq!(seq(&[("a", 5), ("b", 1), ("c", 1)], 7), "aabacaa");
        // and it repeats with period 7
        assert_eq!(seq(&[("a", 5), ("b", 1), ("c", 1)], 14), "aabacaaaabacaa");
    }

    #[test]
    fn golden_sequences_other_weights() {
        assert_eq!(seq(&[("a", 1), ("b", 1), ("c", 1)], 6), "abcabc");
        assert_eq!(seq(&[("a", 2), ("b", 1)], 6), "abaaba");
        // 4,2,1: hand-computed with nginx's algorithm
        assert_eq!(seq(&[("a", 4), ("b", 2), ("c", 1)], 7), "abacaba");
        assert_eq!(seq(&[("a", 3), ("b", 3), ("c", 2)], 8), "abcabcab");
    }

    #[test]
    fn distribution_follows_weights_over_many_picks() {
        let s = seq(&[("a", 3), ("b", 2), ("c", 1)], 600);
        assert_eq!(s.matches('a').count(), 300);
        assert_eq!(s.matches('b').count(), 200);
        assert_eq!(s.matches('c').count(), 100);
    }
}
