use super::*;
use std::collections::BTreeMap;
use syncd_testkit::rng::Rng;

#[test]
fn seeded_runs_deliver_every_change_and_never_spin() {
    for seed in 1..=3000u64 {
        run_seed(seed);
    }
}

/// One seeded run against a simulated standby that applies a ship unless
/// told to fail: what it holds is, per path, the newest change time it has
/// seen committed.
fn run_seed(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let t0 = Instant::now();
    let mut now = t0;
    let mut l = Live::new(cfg(), t0);
    let names: Vec<RelPath> = (0..12).map(|i| p(&format!("d{}/f{i}", i % 3))).collect();
    // path -> time of its newest change; removed once a ship that covers it
    // and was taken after that change succeeds
    let mut dirty: BTreeMap<RelPath, Instant> = BTreeMap::new();
    // the ship in progress and when it was taken
    let mut shipping: Option<(Batch, Instant)> = None;
    let mut connecting = false;
    let faults_until = t0 + Duration::from_secs(120);
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 100_000, "seed {seed}: no progress");
        let faulty = now < faults_until;
        while l.poll_event().is_some() {}
        if connecting {
            connecting = false;
            if faulty && rng.chance(30) {
                l.handle_connect_failed(now);
            } else {
                l.handle_connected(now);
                // a connect starts from a full compare: the standby is
                // reconciled by it, so nothing is dirty beyond its take time
            }
            continue;
        }
        if let Some((b, taken)) = shipping.take() {
            if faulty && rng.chance(5) {
                l.handle_session_lost(now);
                continue;
            }
            let mut f = Followups::default();
            let mut keep = Vec::new();
            for (path, &changed) in &dirty {
                if changed <= taken && covers(&b, path) {
                    if faulty && rng.chance(10) {
                        f.failed.push((path.clone(), 10));
                    } else if faulty && rng.chance(5) {
                        f.busy.push(path.clone());
                    } else {
                        keep.push(path.clone());
                    }
                }
            }
            for path in keep {
                dirty.remove(&path);
            }
            l.handle_shipped(now, f, u64::from(rng.chance(3)), true);
            continue;
        }
        match l.poll_action(now) {
            Some(Action::Connect) => connecting = true,
            Some(Action::Ship { batch, .. }) => shipping = Some((batch, now)),
            Some(Action::Stop { .. }) => panic!("seed {seed}: no shutdown was asked"),
            None => {
                let due = l.poll_timeout();
                if let Some(d) = due {
                    assert!(d > now, "seed {seed}: idle with a timer already due (spin)");
                }
                // next input: a change while faults last, else the timer
                let input = faulty && rng.chance(70);
                let step = Duration::from_millis(rng.below(400) as u64);
                match due {
                    Some(d) if !input || d <= now + step => now = d,
                    _ if input => {
                        now += step;
                        let path = names[rng.below(names.len())].clone();
                        // also while down: the next connect's full compare
                        // must carry it
                        dirty.insert(path.clone(), now);
                        l.handle_change(Change::Settled(path), now);
                    }
                    _ => break,
                }
            }
        }
        if !faulty && dirty.is_empty() && shipping.is_none() && l.lag().ops == 0 {
            break;
        }
        if now > faults_until + Duration::from_secs(600) {
            break;
        }
    }
    assert!(
        dirty.is_empty(),
        "seed {seed}: changes never reached the standby: {:?}",
        dirty.keys().collect::<Vec<_>>()
    );
    assert_eq!(l.lag().ops, 0, "seed {seed}: lag left after convergence");
}

#[test]
fn seeded_pipelined_runs_deliver_every_change() {
    let most = (1..=3000u64).map(run_pipelined).max();
    assert_eq!(most, Some(MAX_IN_FLIGHT), "the cap was never reached");
}

/// Like [`run_seed`], with commits answered some time after they are sent
/// (the next batch shipped meanwhile), answers now and then offered out of
/// order (refused: the session ends), and sessions lost with one or two
/// batches in flight.
fn run_pipelined(seed: u64) -> usize {
    let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let t0 = Instant::now();
    let mut now = t0;
    let mut l = Live::new(cfg(), t0);
    let names: Vec<RelPath> = (0..12).map(|i| p(&format!("d{}/f{i}", i % 3))).collect();
    let mut dirty: BTreeMap<RelPath, Instant> = BTreeMap::new();
    // commits sent, oldest first: batch, when taken, id
    let mut sent: VecDeque<(Batch, Instant, u64)> = VecDeque::new();
    let mut connecting = false;
    let mut max_in_flight = 0;
    let faults_until = t0 + Duration::from_secs(120);
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 200_000, "seed {seed}: no progress");
        let faulty = now < faults_until;
        while l.poll_event().is_some() {}
        if connecting {
            connecting = false;
            if faulty && rng.chance(30) {
                l.handle_connect_failed(now);
            } else {
                l.handle_connected(now);
            }
            continue;
        }
        max_in_flight = max_in_flight.max(sent.len());
        assert!(sent.len() <= MAX_IN_FLIGHT, "seed {seed}: over the cap");
        assert_eq!(
            l.in_flight().collect::<Vec<_>>(),
            sent.iter().map(|s| s.2).collect::<Vec<_>>(),
            "seed {seed}"
        );
        // An answer arrives (or the session fails) before the next action.
        if !sent.is_empty() && rng.chance(50) {
            if faulty && rng.chance(5) {
                l.handle_session_lost(now);
                sent.clear();
                continue;
            }
            if sent.len() == 2 && faulty && rng.chance(5) {
                let got = sent[1].2;
                assert!(l
                    .handle_committed(got, now, Followups::default(), 0, true)
                    .is_err());
                l.handle_session_lost(now);
                sent.clear();
                continue;
            }
            let (b, taken, id) = sent.pop_front().unwrap();
            let mut f = Followups::default();
            let mut keep = Vec::new();
            for (path, &changed) in &dirty {
                if changed <= taken && covers(&b, path) {
                    if faulty && rng.chance(10) {
                        f.failed.push((path.clone(), 10));
                    } else if faulty && rng.chance(5) {
                        f.busy.push(path.clone());
                    } else {
                        keep.push(path.clone());
                    }
                }
            }
            for path in keep {
                dirty.remove(&path);
            }
            l.handle_committed(id, now, f, u64::from(rng.chance(3)), true)
                .unwrap();
            continue;
        }
        match l.poll_action(now) {
            Some(Action::Connect) => connecting = true,
            Some(Action::Ship { batch, commit_id }) => {
                if faulty && rng.chance(5) {
                    l.handle_session_lost(now);
                    sent.clear();
                    continue;
                }
                l.handle_commit_sent();
                sent.push_back((batch, now, commit_id));
            }
            Some(Action::Stop { .. }) => panic!("seed {seed}: no shutdown was asked"),
            None if !sent.is_empty() => {
                // waiting for an answer: time passes
                now += Duration::from_millis(rng.below(5) as u64);
            }
            None => {
                let due = l.poll_timeout();
                if let Some(d) = due {
                    assert!(d > now, "seed {seed}: idle with a timer already due (spin)");
                }
                let input = faulty && rng.chance(70);
                let step = Duration::from_millis(rng.below(400) as u64);
                match due {
                    Some(d) if !input || d <= now + step => now = d,
                    _ if input => {
                        now += step;
                        let path = names[rng.below(names.len())].clone();
                        dirty.insert(path.clone(), now);
                        l.handle_change(Change::Settled(path), now);
                    }
                    _ => break,
                }
            }
        }
        if !faulty && dirty.is_empty() && sent.is_empty() && l.lag().ops == 0 {
            break;
        }
        if now > faults_until + Duration::from_secs(600) {
            break;
        }
    }
    assert!(
        dirty.is_empty(),
        "seed {seed}: changes never reached the standby: {:?}",
        dirty.keys().collect::<Vec<_>>()
    );
    assert_eq!(l.lag().ops, 0, "seed {seed}: lag left after convergence");
    max_in_flight
}
