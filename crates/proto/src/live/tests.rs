//! `Live` under a simulated clock: each rule of the primary's loop, then
//! thousands of seeded runs with connect failures, lost sessions, files the
//! standby refuses and busy files, checking that every change reaches the
//! standby and that the loop never spins.

use super::*;
use std::collections::BTreeMap;
use syncd_testkit::rng::Rng;

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn cfg() -> LiveConfig {
    LiveConfig {
        batch: BatchConfig::default(),
        full_reconcile: Some(Duration::from_secs(3600)),
        watching: true,
    }
}

/// A live loop that has connected and shipped its first full compare.
fn up(t0: Instant) -> Live {
    let mut l = Live::new(cfg(), t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    match l.poll_action(t0) {
        Some(Action::Ship { batch, commit_id }) => {
            assert!(batch.full, "a session starts with a full compare");
            assert_eq!(commit_id, 1);
        }
        a => panic!("expected the first full ship, got {a:?}"),
    }
    l.handle_shipped(t0, Followups::default(), 0, true);
    assert_eq!(l.poll_event(), Some(Event::InSync));
    l
}

fn ship(l: &mut Live, now: Instant) -> Batch {
    match l.poll_action(now) {
        Some(Action::Ship { batch, .. }) => batch,
        a => panic!("expected a ship at {now:?}, got {a:?}"),
    }
}

#[test]
fn connect_backoff_doubles_to_a_cap_and_resets_on_success() {
    let t0 = Instant::now();
    let mut l = Live::new(cfg(), t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        assert_eq!(l.poll_action(now), Some(Action::Connect));
        assert_eq!(l.poll_timeout(), None, "no timer while connecting");
        let w = l.handle_connect_failed(now);
        waits.push(w.as_millis());
        assert_eq!(l.poll_action(now), None, "no reconnect before the backoff");
        assert_eq!(l.poll_timeout(), Some(now + w));
        now += w;
    }
    assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    assert_eq!(l.poll_action(now), Some(Action::Connect));
    l.handle_connected(now);
    let _ = ship(&mut l, now);
    l.handle_shipped(now, Followups::default(), 0, true);
    l.handle_session_lost(now);
    assert_eq!(
        l.poll_action(now),
        Some(Action::Connect),
        "a lost session reconnects at once"
    );
    assert_eq!(
        l.handle_connect_failed(now).as_millis(),
        200,
        "backoff reset by the success"
    );
}

#[test]
fn group_commit_ships_at_once_when_idle_and_gathers_while_in_flight() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let t0 = t0 + crate::batch::PACE;
    // Idle link: a closed file goes at once, no window.
    l.handle_change(Change::Settled(p("a/x")), t0);
    let b = ship(&mut l, t0);
    let paths: Vec<_> = b.scope.iter().map(|s| s.path.to_string()).collect();
    assert_eq!(paths, ["a", "a/x"]);
    // In flight: what arrives gathers, however long the ship takes.
    let t1 = t0 + Duration::from_millis(1);
    l.handle_change(Change::Settled(p("b")), t1);
    l.handle_change(Change::Settled(p("a/x")), t1);
    l.handle_change(Change::Writing(p("c")), t1);
    let t2 = t0 + Duration::from_millis(50);
    assert_eq!(l.poll_action(t2), None, "one ship at a time");
    assert_eq!(l.poll_timeout(), None, "nothing to time while in flight");
    assert_eq!(l.lag().ops, 4, "three queued, a/x unacknowledged");
    l.handle_shipped(t2, Followups::default(), 0, true);
    // Completed: the gathered changes go at once, as one batch; the file
    // still being written keeps waiting for its close.
    let b = ship(&mut l, t2);
    let paths: Vec<_> = b.scope.iter().map(|s| s.path.to_string()).collect();
    assert_eq!(paths, ["a", "a/x", "b"]);
    assert_eq!(b.changes, 3, "the write to c counts too");
    assert_eq!(b.oldest, Some(t1));
    assert_eq!(l.lag().ops, 4, "the batch in flight, and c");
    l.handle_shipped(t2, Followups::default(), 0, true);
    assert_eq!(l.lag().ops, 1, "c is still being written");
    assert_eq!(l.poll_action(t2), None);
    assert_eq!(l.poll_timeout(), Some(t1 + cfg().batch.settle));
    // Its close ships it once PACE after the last batch has passed (the
    // write's age does not make it overdue).
    l.handle_change(Change::Settled(p("c")), t2);
    assert_eq!(l.poll_action(t2), None);
    assert_eq!(scope_of(&ship(&mut l, t2 + crate::batch::PACE)), ["c"]);
}

#[test]
fn quick_batches_start_at_least_pace_apart() {
    let pace = crate::batch::PACE;
    let t0 = Instant::now();
    let mut l = up(t0);
    let t = t0 + pace;
    l.handle_change(Change::Settled(p("a")), t);
    let _ = ship(&mut l, t);
    let t1 = t + Duration::from_micros(500);
    l.handle_shipped(t1, Followups::default(), 0, true);
    l.handle_change(Change::Settled(p("b")), t1);
    assert_eq!(l.poll_action(t1), None, "the last batch started just now");
    assert_eq!(l.poll_timeout(), Some(t + pace));
    assert_eq!(scope_of(&ship(&mut l, t + pace)), ["b"]);
}

#[test]
fn a_configured_window_still_lingers_up_to_max_delay() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.batch.window = Duration::from_millis(5);
    c.batch.max_delay = Duration::from_millis(10);
    let mut l = Live::new(c, t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let _ = ship(&mut l, t0);
    l.handle_shipped(t0, Followups::default(), 0, true);
    l.handle_change(Change::Settled(p("a")), t0);
    assert_eq!(l.poll_action(t0), None);
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_millis(5)));
    // a steady stream: max_delay bounds it
    for i in 1..10 {
        let now = t0 + Duration::from_millis(i);
        l.handle_change(Change::Settled(p(&format!("f{i}"))), now);
        assert_eq!(l.poll_action(now), None);
    }
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_millis(10)));
    assert_eq!(ship(&mut l, t0 + Duration::from_millis(10)).scope.len(), 10);
}

#[test]
fn a_young_close_record_is_compared_again_after_just_the_remainder() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let t0 = t0 + crate::batch::PACE;
    l.handle_change(Change::Settled(p("nfs")), t0);
    let _ = ship(&mut l, t0);
    let at = t0 + Duration::from_millis(9);
    l.handle_shipped(
        t0 + Duration::from_millis(1),
        Followups {
            later: vec![(p("nfs"), at)],
            ..Followups::default()
        },
        0,
        true,
    );
    assert_eq!(l.lag().ops, 1, "not on the standby yet");
    assert_eq!(l.poll_timeout(), Some(at), "the remainder, not settle");
    assert_eq!(l.poll_action(at - Duration::from_millis(1)), None);
    assert_eq!(scope_of(&ship(&mut l, at)), ["nfs"]);
    // a write seen meanwhile puts it back under the settle rule
    l.handle_shipped(
        at,
        Followups {
            later: vec![(p("nfs"), at + Duration::from_millis(5))],
            ..Followups::default()
        },
        0,
        true,
    );
    l.handle_change(Change::Writing(p("nfs")), at);
    assert_eq!(l.poll_timeout(), Some(at + cfg().batch.settle));
}

#[test]
fn a_rename_is_not_cut_in_half() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let t0 = t0 + crate::batch::PACE;
    l.handle_change(Change::MovedAway(p("a")), t0);
    assert_eq!(l.poll_action(t0), None, "waits for the second half");
    l.handle_change(Change::Tree(p("b")), t0);
    l.handle_change(
        Change::Renamed {
            from: p("a"),
            to: p("b"),
        },
        t0,
    );
    let b = ship(&mut l, t0);
    assert_eq!(b.renames, [(p("a"), p("b"))]);
    l.handle_shipped(t0, Followups::default(), 0, true);
    // moved out of the export: no second half comes; a delete after PAIR_WAIT
    let t1 = t0 + crate::batch::PACE;
    l.handle_change(Change::MovedAway(p("c")), t1);
    assert_eq!(l.poll_action(t1), None);
    assert_eq!(l.poll_timeout(), Some(t1 + crate::batch::PAIR_WAIT));
    assert_eq!(scope_of(&ship(&mut l, t1 + crate::batch::PAIR_WAIT)), ["c"]);
}

fn scope_of(b: &Batch) -> Vec<String> {
    b.scope.iter().map(|s| s.path.to_string()).collect()
}

#[test]
fn failed_files_come_back_after_a_doubling_delay_until_they_succeed() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let mut now = t0;
    let mut delays = Vec::new();
    l.handle_change(Change::Settled(p("big")), now);
    now += cfg().batch.max_delay;
    for _ in 0..9 {
        let b = ship(&mut l, now);
        assert!(
            b.scope.iter().any(|s| s.path == p("big")),
            "big is in the batch"
        );
        let failed = Followups {
            failed: vec![(p("big"), 1000)],
            ..Followups::default()
        };
        l.handle_shipped(now, failed, 0, true);
        let lag = l.lag();
        assert_eq!((lag.ops, lag.bytes), (1, 1000), "a refused file is lag");
        let Some(Event::Retrying { after, .. }) = l.poll_event() else {
            panic!("a retry must be announced")
        };
        delays.push(after.as_secs());
        assert_eq!(l.poll_action(now + after - Duration::from_millis(1)), None);
        now += after;
        // the retried path is batched like a change: due at once
        assert_eq!(l.poll_timeout(), Some(now));
    }
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    let _ = ship(&mut l, now);
    l.handle_shipped(now, Followups::default(), 0, true);
    assert_eq!(l.lag().ops, 0);
    // the next failure starts from the minimum again
    l.handle_change(Change::Settled(p("c")), now);
    now += cfg().batch.max_delay;
    let _ = ship(&mut l, now);
    l.handle_shipped(
        now,
        Followups {
            failed: vec![(p("c"), 1)],
            ..Followups::default()
        },
        0,
        true,
    );
    assert_eq!(
        l.poll_event(),
        Some(Event::Retrying {
            files: 1,
            after: RETRY_MIN
        })
    );
}

#[test]
fn deferred_links_bring_a_full_compare_within_a_second() {
    let t0 = Instant::now();
    let mut l = up(t0);
    l.handle_change(Change::Settled(p("ln")), t0);
    let now = t0 + cfg().batch.max_delay;
    let _ = ship(&mut l, now);
    l.handle_shipped(now, Followups::default(), 2, true);
    assert_eq!(l.poll_timeout(), Some(now + LINKS_DELAY));
    assert!(ship(&mut l, now + LINKS_DELAY).full);
    l.handle_shipped(now + LINKS_DELAY, Followups::default(), 0, true);
    // back to the configured period, not a 5 s loop
    assert_eq!(
        l.poll_timeout(),
        Some(now + LINKS_DELAY + Duration::from_secs(3600))
    );
}

/// A live loop with `c` that has connected and shipped its first compare.
fn connected(c: LiveConfig, t0: Instant) -> Live {
    let mut l = Live::new(c, t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let _ = ship(&mut l, t0);
    l.handle_shipped(t0, Followups::default(), 0, true);
    l
}

#[test]
fn without_periodic_compares_a_deferred_link_is_one_full_compare() {
    let t0 = Instant::now();
    let mut l = Live::new(
        LiveConfig {
            full_reconcile: None,
            ..cfg()
        },
        t0,
    );
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let _ = ship(&mut l, t0);
    l.handle_shipped(t0, Followups::default(), 1, true);
    assert!(ship(&mut l, t0 + LINKS_DELAY).full);
    l.handle_shipped(t0 + LINKS_DELAY, Followups::default(), 0, true);
    assert_eq!(l.poll_timeout(), None, "nothing periodic was configured");
}

#[test]
fn periodic_and_fallback_compares() {
    let t0 = Instant::now();
    // configured period
    let mut l = Live::new(
        LiveConfig {
            full_reconcile: Some(Duration::from_secs(60)),
            ..cfg()
        },
        t0,
    );
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let _ = ship(&mut l, t0);
    l.handle_shipped(t0, Followups::default(), 0, true);
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    assert!(ship(&mut l, t0 + Duration::from_secs(60)).full);

    // no watch at all: every 5 s
    let mut l = Live::new(
        LiveConfig {
            watching: false,
            ..cfg()
        },
        t0,
    );
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let _ = ship(&mut l, t0);
    l.handle_shipped(t0, Followups::default(), 0, true);
    assert_eq!(l.poll_timeout(), Some(t0 + PERIODIC_NO_WATCH));

    // the watch limit is hit while running: every 5 s from then on, once
    let mut l = up(t0);
    let t1 = t0 + Duration::from_secs(100);
    l.handle_watch_limit(t1);
    l.handle_watch_limit(t1);
    assert_eq!(l.poll_event(), Some(Event::WatchLimit));
    assert_eq!(l.poll_event(), None);
    assert_eq!(l.poll_timeout(), Some(t1 + PERIODIC_NO_WATCH));
    let t2 = t1 + PERIODIC_NO_WATCH;
    assert!(ship(&mut l, t2).full);
    l.handle_shipped(t2, Followups::default(), 0, true);
    assert_eq!(l.poll_timeout(), Some(t2 + PERIODIC_NO_WATCH));
}

#[test]
fn lost_events_force_a_full_compare() {
    let t0 = Instant::now();
    let mut l = up(t0);
    l.handle_change(Change::Lost, t0);
    assert_eq!(l.poll_event(), Some(Event::EventsLost));
    let now = l.poll_timeout().unwrap();
    assert!(ship(&mut l, now).full);
}

#[test]
fn changes_without_a_session_are_left_to_the_first_full_compare() {
    let t0 = Instant::now();
    let mut l = Live::new(cfg(), t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    let w = l.handle_connect_failed(t0);
    for i in 0..1000 {
        l.handle_change(Change::Settled(p(&format!("f{i}"))), t0);
    }
    assert_eq!(l.pending(), 0, "nothing is held while disconnected");
    assert_eq!(l.poll_action(t0 + w), Some(Action::Connect));
    l.handle_connected(t0 + w);
    assert!(ship(&mut l, t0 + w).full);
}

#[test]
fn busy_files_wait_to_settle() {
    let t0 = Instant::now();
    let mut l = up(t0);
    l.handle_change(Change::Settled(p("log")), t0);
    let now = t0 + cfg().batch.max_delay;
    let _ = ship(&mut l, now);
    l.handle_shipped(
        now,
        Followups {
            failed: vec![],
            busy: vec![p("log")],
            ..Followups::default()
        },
        0,
        true,
    );
    assert_eq!(l.lag().ops, 1, "a busy file is still lag");
    assert_eq!(l.poll_timeout(), Some(now + cfg().batch.settle));
    let b = ship(&mut l, now + cfg().batch.settle);
    assert!(b.scope.iter().any(|s| s.path == p("log")));
}

#[test]
fn in_sync_waits_for_large_transfers_and_is_said_once_per_session() {
    let t0 = Instant::now();
    let mut l = Live::new(cfg(), t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let _ = ship(&mut l, t0);
    l.handle_shipped(t0, Followups::default(), 0, false);
    assert_eq!(l.poll_event(), None, "a large file is still on its way");
    l.handle_transfer_done(t0, Some(p("huge")), Followups::default());
    let now = l.poll_timeout().unwrap();
    let b = ship(&mut l, now);
    assert!(
        b.scope.iter().any(|s| s.path == p("huge")),
        "a finished transfer is compared once more"
    );
    l.handle_shipped(now, Followups::default(), 0, true);
    assert_eq!(l.poll_event(), Some(Event::InSync));
    l.handle_change(Change::Settled(p("x")), now);
    let now = l.poll_timeout().unwrap();
    let _ = ship(&mut l, now);
    l.handle_shipped(now, Followups::default(), 0, true);
    assert_eq!(l.poll_event(), None);
    l.handle_session_lost(now);
    assert_eq!(l.poll_action(now), Some(Action::Connect));
    l.handle_connected(now);
    let _ = ship(&mut l, now);
    l.handle_shipped(now, Followups::default(), 0, true);
    assert_eq!(
        l.poll_event(),
        Some(Event::InSync),
        "said again after a reconnect"
    );
}

#[test]
fn shutdown_flushes_what_is_seen_and_waits_for_a_ship_in_progress() {
    let t0 = Instant::now();
    let mut l = up(t0);
    l.handle_change(Change::Settled(p("a")), t0);
    l.handle_shutdown();
    match l.poll_action(t0) {
        Some(Action::Stop {
            flush: Some((b, id)),
        }) => {
            assert_eq!(b.scope.last().map(|s| s.path.clone()), Some(p("a")));
            assert_eq!(id, 2);
        }
        a => panic!("expected a stop with a flush, got {a:?}"),
    }
    assert_eq!(l.poll_action(t0), None);
    assert_eq!(l.poll_timeout(), None);

    // mid-ship: the stop comes after the ship's outcome
    let mut l = up(t0);
    l.handle_change(Change::Settled(p("b")), t0);
    let now = l.poll_timeout().unwrap();
    let _ = ship(&mut l, now);
    l.handle_shutdown();
    assert_eq!(l.poll_action(now), None);
    l.handle_shipped(now, Followups::default(), 0, true);
    assert_eq!(l.poll_action(now), Some(Action::Stop { flush: None }));

    // disconnected: nothing to flush
    let mut l = Live::new(cfg(), t0);
    l.handle_shutdown();
    assert_eq!(l.poll_action(t0), Some(Action::Stop { flush: None }));
}

/// Without a watch on every directory (the watch limit, or none at all),
/// a change since the last periodic compare is known to no one: the stop's
/// flush compares the whole tree, so a leader handing over ships it first.
#[test]
fn a_stop_without_a_full_watch_compares_the_whole_tree() {
    let t0 = Instant::now();
    let stop_flush = |l: &mut Live| match l.poll_action(t0) {
        Some(Action::Stop { flush }) => flush.map(|(b, _)| b.full),
        a => panic!("expected a stop, got {a:?}"),
    };
    // watched: nothing seen, nothing to ship
    let mut l = up(t0);
    l.handle_shutdown();
    assert_eq!(stop_flush(&mut l), None);

    let mut l = up(t0);
    l.handle_watch_limit(t0);
    assert_eq!(l.poll_event(), Some(Event::WatchLimit));
    l.handle_shutdown();
    assert_eq!(stop_flush(&mut l), Some(true), "the watch limit was hit");

    let c = LiveConfig {
        watching: false,
        ..cfg()
    };
    let mut l = connected(c, t0);
    l.handle_shutdown();
    assert_eq!(stop_flush(&mut l), Some(true), "nothing is watched");
}

/// A standby that applies a ship unless told to fail: what it holds is, per
/// path, the newest change time it has seen committed.
fn covers(b: &Batch, path: &RelPath) -> bool {
    b.full
        || b.scope
            .iter()
            .any(|s| &s.path == path || (s.recursive && path.starts_with(&s.path)))
}

#[test]
fn seeded_runs_deliver_every_change_and_never_spin() {
    for seed in 1..=3000u64 {
        run_seed(seed);
    }
}

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
fn a_superseded_primary_waits_before_it_reconnects_and_ids_resume() {
    let t0 = Instant::now();
    let mut l = up(t0);
    l.handle_superseded(t0);
    assert_eq!(l.poll_action(t0), None);
    assert_eq!(l.poll_timeout(), Some(t0 + SUPERSEDED_WAIT));
    assert_eq!(l.poll_action(t0 + SUPERSEDED_WAIT), Some(Action::Connect));
    let mut l = Live::new(cfg(), t0);
    l.resume_commits(41);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    assert!(matches!(
        l.poll_action(t0),
        Some(Action::Ship { commit_id: 42, .. })
    ));
}

/// Ships the next batch at `now` and reports its commit sent; its id.
fn ship_sent(l: &mut Live, now: Instant) -> (Batch, u64) {
    match l.poll_action(now) {
        Some(Action::Ship { batch, commit_id }) => {
            l.handle_commit_sent();
            (batch, commit_id)
        }
        a => panic!("expected a ship at {now:?}, got {a:?}"),
    }
}

fn acked(l: &mut Live, id: u64, now: Instant) {
    l.handle_committed(id, now, Followups::default(), 0, true)
        .unwrap();
}

#[test]
fn the_next_batch_starts_while_the_last_commits_and_two_at_most_are_in_flight() {
    let pace = crate::batch::PACE;
    let t0 = Instant::now();
    let mut l = up(t0);
    let t1 = t0 + pace;
    l.handle_change(Change::Settled(p("a")), t1);
    let (b, one) = ship_sent(&mut l, t1);
    assert_eq!(scope_of(&b), ["a"]);
    // Its commit is on its way: the next change ships once PACE allows,
    // without waiting for the answer.
    let t2 = t1 + Duration::from_micros(500);
    l.handle_change(Change::Settled(p("b")), t2);
    assert_eq!(l.poll_action(t2), None, "PACE still holds");
    assert_eq!(l.poll_timeout(), Some(t1 + pace));
    let t3 = t1 + pace;
    let (b, two) = ship_sent(&mut l, t3);
    assert_eq!(scope_of(&b), ["b"]);
    assert_eq!(two, one + 1);
    assert_eq!(l.in_flight().collect::<Vec<_>>(), [one, two]);
    // The cap: a third waits for the oldest answer, however long it takes.
    let t4 = t3 + Duration::from_secs(5);
    l.handle_change(Change::Settled(p("c")), t3);
    assert_eq!(l.poll_action(t4), None, "two batches in flight at most");
    assert_eq!(l.poll_timeout(), None, "only an answer frees a slot");
    // Unacknowledged batches are lag, from the oldest change shipped.
    let lag = l.lag();
    assert_eq!((lag.ops, lag.oldest), (3, Some(t1)));
    acked(&mut l, one, t4);
    assert_eq!(l.lag().oldest, Some(t2), "b is still in flight");
    let (b, three) = ship_sent(&mut l, t4);
    assert_eq!((scope_of(&b), three), (vec!["c".to_string()], two + 1));
    acked(&mut l, two, t4);
    acked(&mut l, three, t4);
    assert_eq!(l.lag().ops, 0);
    assert_eq!(l.in_flight().count(), 0);
}

#[test]
fn commits_are_acknowledged_in_order_and_only_at_their_answer() {
    let t0 = Instant::now();
    let mut l = Live::new(cfg(), t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let (b, full) = ship_sent(&mut l, t0);
    assert!(b.full);
    assert_eq!(l.poll_event(), None, "not in sync at the commit's sending");
    assert!(!l.in_sync());
    let t1 = t0 + crate::batch::PACE;
    l.handle_change(Change::Settled(p("a")), t1);
    let (_, next) = ship_sent(&mut l, t1);
    // The later answer first: refused, nothing acknowledged.
    assert_eq!(
        l.handle_committed(next, t1, Followups::default(), 0, true),
        Err(LiveError::OutOfOrder {
            got: next,
            want: Some(full)
        })
    );
    assert!(!l.in_sync());
    assert_eq!(l.lag().ops, 2, "the full compare and a");
    // A failure reported with the full compare's answer is retried.
    let f = Followups {
        failed: vec![(p("x"), 7)],
        ..Followups::default()
    };
    l.handle_committed(full, t1, f, 0, true).unwrap();
    assert!(matches!(
        l.poll_event(),
        Some(Event::Retrying { files: 1, .. })
    ));
    assert!(!l.in_sync(), "x is not on the standby");
    acked(&mut l, next, t1);
    assert_eq!(l.lag().ops, 1, "x, to be retried");
    assert_eq!(
        l.handle_committed(next, t1, Followups::default(), 0, true),
        Err(LiveError::OutOfOrder {
            got: next,
            want: None
        }),
        "an answer is taken once"
    );
}

/// A retry in flight may fail again: "in sync" waits for its own answer,
/// even when an earlier batch's answer comes first.
#[test]
fn in_sync_waits_for_a_retry_in_flight() {
    let t0 = Instant::now();
    let mut l = Live::new(cfg(), t0);
    assert_eq!(l.poll_action(t0), Some(Action::Connect));
    l.handle_connected(t0);
    let (_, full) = ship_sent(&mut l, t0);
    let f = Followups {
        failed: vec![(p("x"), 7)],
        ..Followups::default()
    };
    l.handle_committed(full, t0, f, 0, true).unwrap();
    let Some(Event::Retrying { after, .. }) = l.poll_event() else {
        panic!("a retry must be announced")
    };
    // A change ships; while its commit is in flight, the retry comes due
    // and ships too.
    let t1 = t0 + after;
    l.handle_change(Change::Settled(p("a")), t1 - Duration::from_millis(100));
    let (b, one) = ship_sent(&mut l, t1 - Duration::from_millis(100));
    assert_eq!(scope_of(&b), ["a"]);
    let (b, two) = ship_sent(&mut l, t1);
    assert_eq!(scope_of(&b), ["x"]);
    acked(&mut l, one, t1);
    assert_eq!(l.poll_event(), None, "x may fail again");
    assert!(!l.in_sync());
    acked(&mut l, two, t1);
    assert_eq!(l.poll_event(), Some(Event::InSync));
}

/// A batch in flight is lag even when it counts no new change (a file
/// still being written when an earlier batch took the change count, now
/// settled): a switchover must not see lag 0 then.
#[test]
fn a_batch_in_flight_is_lag_even_without_new_changes() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let t1 = t0 + crate::batch::PACE;
    l.handle_change(Change::Writing(p("w")), t1);
    l.handle_change(Change::Settled(p("a")), t1);
    let (b, id) = ship_sent(&mut l, t1);
    assert_eq!(scope_of(&b), ["a"], "w is still being written");
    acked(&mut l, id, t1);
    let t2 = t1 + cfg().batch.settle;
    let (b, id) = ship_sent(&mut l, t2);
    assert_eq!(scope_of(&b), ["w"]);
    assert!(l.lag().ops >= 1, "w is not on the standby yet");
    acked(&mut l, id, t2);
    assert_eq!(l.lag().ops, 0);
}

#[test]
fn a_session_lost_with_two_batches_in_flight_loses_nothing() {
    let pace = crate::batch::PACE;
    let t0 = Instant::now();
    let mut l = up(t0);
    let t1 = t0 + pace;
    l.handle_change(Change::Settled(p("a")), t1);
    let (_, one) = ship_sent(&mut l, t1);
    let t2 = t1 + pace;
    l.handle_change(Change::Settled(p("b")), t2);
    let (_, two) = ship_sent(&mut l, t2);
    acked(&mut l, one, t2);
    l.handle_session_lost(t2);
    assert_eq!(l.in_flight().count(), 0);
    // An answer read after the loss is not an acknowledgement.
    assert!(l
        .handle_committed(two, t2, Followups::default(), 0, true)
        .is_err());
    // The next session starts with a full compare: b is redone by it, and
    // commit ids go on (the standby refuses a replayed one).
    assert_eq!(l.poll_action(t2), Some(Action::Connect));
    l.handle_connected(t2);
    assert!(!l.in_sync());
    let (b, id) = ship_sent(&mut l, t2);
    assert!(b.full, "both batches are covered by the full compare");
    assert_eq!(id, two + 1);
    acked(&mut l, id, t2);
    assert_eq!(l.poll_event(), Some(Event::InSync));
}

#[test]
fn a_stop_with_a_commit_in_flight_flushes_after_it() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let t1 = t0 + crate::batch::PACE;
    l.handle_change(Change::Settled(p("a")), t1);
    let (_, one) = ship_sent(&mut l, t1);
    l.handle_change(Change::Settled(p("b")), t1);
    l.handle_shutdown();
    // The shell waits for commit `one`'s answer before it ships the flush.
    match l.poll_action(t1) {
        Some(Action::Stop {
            flush: Some((b, id)),
        }) => {
            assert_eq!(scope_of(&b), ["b"]);
            assert_eq!(id, one + 1);
        }
        a => panic!("expected a stop with a flush, got {a:?}"),
    }
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
