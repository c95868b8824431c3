use super::*;

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
    let mut l = connected(c, t0);
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
    let mut l = connected(
        LiveConfig {
            full_reconcile: Some(Duration::from_secs(60)),
            ..cfg()
        },
        t0,
    );
    assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    assert!(ship(&mut l, t0 + Duration::from_secs(60)).full);

    // no watch at all: every 5 s
    let l = connected(
        LiveConfig {
            watching: false,
            ..cfg()
        },
        t0,
    );
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
