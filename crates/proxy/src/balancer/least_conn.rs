//! `least_conn`, as in `ngx_http_upstream_get_least_conn_peer`: the server
//! with the fewest active connections relative to its weight
//! (`conns / weight`); ties are broken by smooth weighted round-robin among
//! the tied servers.

use std::time::Instant;

use super::{Attempt, Peer};

pub fn select<T>(
    set: &mut [Peer<T>],
    now: Instant,
    single: bool,
    attempt: &Attempt,
) -> Option<usize> {
    let eligible = |p: &Peer<T>| !attempt.tried(p.id) && p.usable(now, single);
    let mut best: Option<usize> = None;
    let mut many = false;
    for (i, p) in set.iter().enumerate() {
        if !eligible(p) {
            continue;
        }
        match best {
            None => best = Some(i),
            Some(b) => {
                let bp = &set[b];
                // p.conns / p.weight < b.conns / b.weight, without division
                let lhs = u64::from(p.conns) * u64::from(bp.spec.weight);
                let rhs = u64::from(bp.conns) * u64::from(p.spec.weight);
                if lhs < rhs {
                    best = Some(i);
                    many = false;
                } else if lhs == rhs {
                    many = true;
                }
            }
        }
    }
    let b = best?;
    if !many {
        return Some(b);
    }
    // several servers share the lowest ratio: smooth WRR among them
    let (bc, bw) = (u64::from(set[b].conns), u64::from(set[b].spec.weight));
    let mut total = 0i64;
    let mut chosen: Option<usize> = None;
    for i in b..set.len() {
        let tied = {
            let p = &set[i];
            eligible(p) && u64::from(p.conns) * bw == bc * u64::from(p.spec.weight)
        };
        if !tied {
            continue;
        }
        let p = &mut set[i];
        p.current_weight += p.effective_weight;
        total += p.effective_weight;
        if p.effective_weight < i64::from(p.spec.weight) {
            p.effective_weight += 1;
        }
        match chosen {
            Some(c) if set[c].current_weight >= set[i].current_weight => {}
            _ => chosen = Some(i),
        }
    }
    let c = chosen?;
    set[c].current_weight -= total;
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Attempt, Key, Method, Outcome};
    use std::time::Instant;

    #[test]
    fn picks_fewest_active_connections() {
        let t0 = Instant::now();
        let mut g = group(
            Method::LeastConn,
            vec![spec("a", 1), spec("b", 1), spec("c", 1)],
        );
        let mut held = Vec::new();
        // three requests in flight spread over the three servers
        let mut names = Vec::new();
        for _ in 0..3 {
            let mut at = Attempt::new();
            let (id, n) = g.select(t0, Key::default(), &mut at).unwrap();
            names.push(n.clone());
            held.push(id);
        }
        names.sort();
        assert_eq!(names, vec!["a", "b", "c"]);
        // finish the one on b: the next request must go to b
        let b_id = g.peers().find(|p| p.spec.key == "b").unwrap().id;
        g.release(b_id, t0, Outcome::Success);
        let mut at = Attempt::new();
        let (_, n) = g.select(t0, Key::default(), &mut at).unwrap();
        assert_eq!(n, "b");
    }

    #[test]
    fn weights_scale_the_connection_count() {
        let t0 = Instant::now();
        let mut g = group(Method::LeastConn, vec![spec("a", 3), spec("b", 1)]);
        // hold every connection open: a (weight 3) should carry 3x as many
        let mut counts = std::collections::HashMap::new();
        for _ in 0..8 {
            let mut at = Attempt::new();
            let (_, n) = g.select(t0, Key::default(), &mut at).unwrap();
            *counts.entry(n.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts["a"], 6);
        assert_eq!(counts["b"], 2);
    }

    #[test]
    fn ties_use_weighted_round_robin() {
        let t0 = Instant::now();
        let mut g = group(
            Method::LeastConn,
            vec![spec("a", 5), spec("b", 1), spec("c", 1)],
        );
        // released immediately, so every pick is a tie at zero connections
        assert_eq!(sequence(&mut g, t0, 7), "aabacaa");
    }
}
