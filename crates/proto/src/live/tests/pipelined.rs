use super::*;

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
fn sessions_that_fail_again_and_again_wait_longer_each_time_until_one_is_in_sync() {
    let t0 = Instant::now();
    let mut l = up(t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let wait = l.handle_session_failed(now);
        waits.push(wait);
        assert_eq!(l.poll_action(now), None, "no connect before the wait");
        assert_eq!(l.poll_action(now + wait - Duration::from_millis(1)), None);
        now += wait;
        assert_eq!(l.poll_action(now), Some(Action::Connect));
        // A connect does not reset it: the failure comes after the connect.
        l.handle_connected(now);
    }
    let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
    // A session that gets through its first compare resets it.
    let (_, id) = ship_sent(&mut l, now);
    acked(&mut l, id, now);
    assert_eq!(l.poll_event(), Some(Event::InSync));
    assert_eq!(l.handle_session_failed(now), BACKOFF_MIN);
}
