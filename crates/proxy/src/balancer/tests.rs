use super::testutil::*;
use super::*;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn fail(g: &mut Group<String>, now: Instant, want: &str) {
    let mut a = Attempt::new();
    let (id, name) = g.select(now, Key::default(), &mut a).expect("a server");
    assert_eq!(name, want);
    g.release(id, now, Outcome::Failure);
}

fn pick(g: &mut Group<String>, now: Instant) -> Option<String> {
    let mut a = Attempt::new();
    let (id, name) = g.select(now, Key::default(), &mut a)?;
    let name = name.clone();
    g.release(id, now, Outcome::Success);
    Some(name)
}

#[test]
fn max_fails_marks_down_for_fail_timeout_then_probes() {
    let t0 = Instant::now();
    let mut a = spec("a", 1);
    a.max_fails = 2;
    a.fail_timeout = secs(10);
    let mut g = group(Method::RoundRobin, vec![a, spec("b", 1)]);
    fail(&mut g, t0, "a");
    // one failure of two: still used
    assert_eq!(sequence(&mut g, t0 + secs(1), 2), "ba");
    let mut g2 = {
        let mut a = spec("a", 1);
        a.max_fails = 2;
        group(Method::RoundRobin, vec![a, spec("b", 1)])
    };
    fail(&mut g2, t0, "a");
    assert_eq!(pick(&mut g2, t0 + secs(1)), Some("b".into()));
    fail(&mut g2, t0 + secs(2), "a");
    // a is down for fail_timeout (10s after its last failure, inclusive)
    for s in [2, 5, 12] {
        assert_eq!(pick(&mut g2, t0 + secs(s)), Some("b".into()), "at t={s}s");
    }
    // after the window, one request probes a; success brings it back fully
    let probe_t = t0 + secs(13);
    let got: Vec<_> = (0..4).map(|_| pick(&mut g2, probe_t).unwrap()).collect();
    assert!(
        got.contains(&"a".to_string()),
        "a probed after fail_timeout: {got:?}"
    );
    assert_eq!(g2.peers().find(|p| p.spec.key == "a").unwrap().fails(), 0);
}

#[test]
fn failed_probe_keeps_server_down_for_another_window() {
    let t0 = Instant::now();
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1)]);
    fail(&mut g, t0, "a"); // max_fails = 1: down until t0+10s
    assert_eq!(pick(&mut g, t0 + secs(10)), Some("b".into()));
    assert_eq!(pick(&mut g, t0 + secs(10)), Some("b".into()));
    // t0+11: a is probed
    // t0+11: a is eligible again (its effective weight recovers by one per round)
    let mut probed = false;
    for _ in 0..5 {
        let mut at = Attempt::new();
        let (id, n) = g.select(t0 + secs(11), Key::default(), &mut at).unwrap();
        let is_a = n == "a";
        g.release(
            id,
            t0 + secs(11),
            if is_a {
                Outcome::Failure
            } else {
                Outcome::Success
            },
        );
        if is_a {
            probed = true;
            break;
        }
    }
    assert!(probed, "a was probed after fail_timeout");
    // the probe failed: down again until t0+21
    for s in [12, 15, 21] {
        assert_eq!(pick(&mut g, t0 + secs(s)), Some("b".into()), "at t={s}s");
    }
}

#[test]
fn failures_outside_the_window_do_not_accumulate() {
    let t0 = Instant::now();
    let mut a = spec("a", 1);
    a.max_fails = 2;
    let mut g = group(Method::RoundRobin, vec![a, spec("b", 1)]);
    fail(&mut g, t0, "a");
    // 11s later (window over) a success on a resets its failure count
    assert_eq!(sequence(&mut g, t0 + secs(11), 2), "ba");
    assert_eq!(g.peers().next().unwrap().fails(), 0);
    fail(&mut g, t0 + secs(12), "b");
    fail(&mut g, t0 + secs(12), "a");
    assert!(
        !g.peers().next().unwrap().passively_failed(t0 + secs(12)),
        "only one failure in window"
    );
}

#[test]
fn all_servers_failed_resets_and_serves() {
    let t0 = Instant::now();
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1)]);
    fail(&mut g, t0, "a");
    fail(&mut g, t0, "b");
    assert!(!g.any_usable(t0 + secs(1)));
    // both inside fail_timeout: nginx resets rather than answering 503
    let got = pick(&mut g, t0 + secs(1));
    assert!(got.is_some(), "a server is tried after the reset");
    assert!(g.peers().all(|p| p.fails() == 0));
    assert!(g.any_usable(t0 + secs(1)));
    assert_eq!(sequence(&mut g, t0 + secs(1), 4).len(), 4);
}

#[test]
fn no_reset_with_down_or_check_failed_servers_or_within_one_request() {
    let t0 = Instant::now();
    // a: marked down in the config; b: failed by active checks
    let mut a = spec("a", 1);
    a.down = true;
    let mut g = group(Method::RoundRobin, vec![a, spec("b", 1)]);
    let b_id = g.peers().nth(1).unwrap().id;
    g.record_check(b_id, false, 1, 1);
    assert_eq!(pick(&mut g, t0), None);

    // a is down by config, b failed passively: not an all-failed group
    let mut a = spec("a", 1);
    a.down = true;
    let mut g = group(Method::RoundRobin, vec![a, spec("b", 1), spec("c", 1)]);
    fail(&mut g, t0, "b");
    fail(&mut g, t0, "c");
    assert_eq!(pick(&mut g, t0 + secs(1)), None);

    // within one request, servers it already tried are not retried
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1)]);
    let mut at = Attempt::new();
    let mut seen = Vec::new();
    while let Some((id, n)) = g.select(t0, Key::default(), &mut at) {
        seen.push(n.clone());
        g.release(id, t0, Outcome::Failure);
    }
    assert_eq!(seen.len(), 2, "each server once: {seen:?}");
}

#[test]
fn max_fails_zero_never_marks_down() {
    let t0 = Instant::now();
    let mut a = spec("a", 1);
    a.max_fails = 0;
    let mut g = group(Method::RoundRobin, vec![a, spec("b", 1)]);
    for _ in 0..5 {
        fail(&mut g, t0, "a");
        assert_eq!(pick(&mut g, t0), Some("b".into()));
    }
}

#[test]
fn single_server_group_is_never_marked_down() {
    let t0 = Instant::now();
    let mut g = group(Method::RoundRobin, vec![spec("only", 1)]);
    for _ in 0..10 {
        fail(&mut g, t0, "only");
    }
    assert_eq!(pick(&mut g, t0 + secs(1)), Some("only".into()));
    assert_eq!(g.peers().next().unwrap().fails(), 0);
}

#[test]
fn single_primary_with_backup_is_not_single() {
    let t0 = Instant::now();
    let mut b = spec("bk", 1);
    b.backup = true;
    let mut g = group(Method::RoundRobin, vec![spec("p", 1), b]);
    assert!(!g.is_single());
    fail(&mut g, t0, "p");
    assert_eq!(pick(&mut g, t0 + secs(1)), Some("bk".into()));
}

#[test]
fn backup_used_only_when_all_primaries_unavailable() {
    let t0 = Instant::now();
    let mut bk = spec("z", 1);
    bk.backup = true;
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1), bk]);
    assert!(!sequence(&mut g, t0, 20).contains('z'));
    fail(&mut g, t0, "a");
    assert_eq!(sequence(&mut g, t0, 4), "bbbb");
    fail(&mut g, t0, "b");
    assert_eq!(sequence(&mut g, t0 + secs(1), 3), "zzz");
    // after fail_timeout, primaries are probed again before the backup
    assert!(!sequence(&mut g, t0 + secs(11), 2).contains('z'));
}

#[test]
fn retries_skip_tried_servers_and_then_use_backup() {
    let t0 = Instant::now();
    let mut bk = spec("z", 1);
    bk.backup = true;
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1), bk]);
    let mut at = Attempt::new();
    let mut seen = Vec::new();
    while let Some((id, n)) = g.select(t0, Key::default(), &mut at) {
        seen.push(n.clone());
        g.release(id, t0, Outcome::Failure);
    }
    assert_eq!(seen, vec!["a", "b", "z"]);
    assert_eq!(at.count(), 3);
}

#[test]
fn down_and_max_conns_are_respected() {
    let t0 = Instant::now();
    let mut a = spec("a", 1);
    a.down = true;
    let mut b = spec("b", 1);
    b.max_conns = 1;
    let mut g = group(Method::RoundRobin, vec![a, b, spec("c", 1)]);
    let mut at1 = Attempt::new();
    let (b_id, _) = g.select(t0, Key::default(), &mut at1).unwrap();
    assert_eq!(g.peer(b_id).unwrap().spec.key, "b");
    // b is at max_conns while the first request is in flight
    assert_eq!(sequence(&mut g, t0, 3), "ccc");
    g.release(b_id, t0, Outcome::Success);
    assert!(sequence(&mut g, t0, 2).contains('b'));
}

#[test]
fn active_health_down_excludes_and_rise_restores() {
    let t0 = Instant::now();
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1)]);
    let a_id = g.peers().next().unwrap().id;
    assert_eq!(
        g.record_check(a_id, false, 2, 1),
        Some(Transition::WentDown)
    );
    assert_eq!(sequence(&mut g, t0, 4), "bbbb");
    assert_eq!(g.record_check(a_id, true, 2, 1), None);
    assert_eq!(
        sequence(&mut g, t0, 4),
        "bbbb",
        "one success of rise=2 is not enough"
    );
    assert_eq!(g.record_check(a_id, true, 2, 1), Some(Transition::WentUp));
    assert!(sequence(&mut g, t0, 4).contains('a'));
}

#[test]
fn reconfigure_keeps_state_by_key() {
    let t0 = Instant::now();
    let mut g = group(Method::RoundRobin, vec![spec("a", 1), spec("b", 1)]);
    let a_id = g.peers().next().unwrap().id;
    g.record_check(a_id, false, 1, 1);
    let mut at = Attempt::new();
    let (b_id, _) = g.select(t0, Key::default(), &mut at).unwrap();
    g.reconfigure(
        Method::RoundRobin,
        vec![
            (spec("a", 2), "a".into()),
            (spec("b", 1), "b".into()),
            (spec("c", 1), "c".into()),
        ],
    );
    let a = g.peers().find(|p| p.spec.key == "a").unwrap();
    assert_eq!(a.id, a_id);
    assert!(!a.health_up(), "health survives reload");
    assert_eq!(a.spec.weight, 2);
    assert_eq!(
        g.peer(b_id).unwrap().conns(),
        1,
        "in-flight conns survive reload"
    );
    g.release(b_id, t0, Outcome::Success);
    assert_eq!(g.peer(b_id).unwrap().conns(), 0);
    assert_eq!(g.len(), 3);
}
