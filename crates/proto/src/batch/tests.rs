//! The batcher under a simulated clock.

use super::*;

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

fn cfg() -> BatchConfig {
    BatchConfig {
        window: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        max_paths: 3,
        settle: Duration::from_millis(500),
    }
}

fn scope(b: &Batch) -> Vec<(String, bool)> {
    b.scope
        .iter()
        .map(|s| (s.path.to_string(), s.recursive))
        .collect()
}

#[test]
fn many_writes_to_one_file_are_one_entry_after_the_window() {
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg());
    for i in 0..5 {
        b.push(Change::Writing(p("d/f")), t0 + Duration::from_millis(i));
    }
    b.push(Change::Settled(p("d/f")), t0 + Duration::from_millis(5));
    assert_eq!(
        b.take(t0 + Duration::from_millis(10)),
        None,
        "window not over"
    );
    assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(15)));
    let got = b.take(t0 + Duration::from_millis(15)).unwrap();
    assert_eq!(scope(&got), [("d".into(), false), ("d/f".into(), false)]);
    assert_eq!(got.changes, 6);
    assert_eq!(got.oldest, Some(t0));
    assert!(b.take(t0 + Duration::from_secs(9)).is_none());
    assert_eq!(b.pending(), 0);
}

#[test]
fn max_delay_bounds_a_steady_stream() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatchConfig {
        max_paths: 10_000,
        ..cfg()
    });
    let mut shipped = None;
    for i in 0..200u64 {
        let now = t0 + Duration::from_millis(i);
        b.push(Change::Settled(p(&format!("f{i}"))), now);
        if let Some(x) = b.take(now) {
            shipped = Some((i, x));
            break;
        }
    }
    let (i, x) = shipped.expect("a batch within max_delay");
    assert_eq!(i, 100);
    assert_eq!(x.scope.len(), 101);
}

#[test]
fn max_paths_ships_at_once() {
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg());
    b.push(Change::Settled(p("a")), t0);
    b.push(Change::Settled(p("b")), t0);
    assert!(b.take(t0).is_none());
    b.push(Change::Settled(p("c")), t0);
    assert_eq!(b.take(t0).unwrap().scope.len(), 3);
}

#[test]
fn a_file_being_written_waits_for_close_or_quiet() {
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg());
    b.push(Change::Writing(p("log")), t0);
    assert!(b.take(t0 + Duration::from_millis(200)).is_none());
    assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(500)));
    b.push(Change::Writing(p("log")), t0 + Duration::from_millis(300));
    assert!(
        b.take(t0 + Duration::from_millis(600)).is_none(),
        "still written"
    );
    let got = b.take(t0 + Duration::from_millis(800)).unwrap();
    assert_eq!(scope(&got), [("log".into(), false)]);
    // Rewritten after a close: waits for the new close.
    b.push(Change::Settled(p("y")), t0 + Duration::from_millis(900));
    b.push(Change::Writing(p("y")), t0 + Duration::from_millis(901));
    assert!(b.take(t0 + Duration::from_millis(950)).is_none());
    b.push(Change::Settled(p("y")), t0 + Duration::from_millis(960));
    assert_eq!(
        scope(&b.take(t0 + Duration::from_millis(970)).unwrap()),
        [("y".into(), false)]
    );
    // Closed: ships after the window, not after settle.
    b.push(Change::Writing(p("x")), t0 + Duration::from_secs(1));
    b.push(Change::Settled(p("x")), t0 + Duration::from_millis(1001));
    assert!(b.take(t0 + Duration::from_millis(1011)).is_some());
}

#[test]
fn renames_keep_order_and_compare_the_new_tree() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatchConfig {
        max_paths: 100,
        ..cfg()
    });
    b.push(Change::Writing(p("a/x")), t0);
    b.push(
        Change::Renamed {
            from: p("a"),
            to: p("b"),
        },
        t0,
    );
    b.push(
        Change::Renamed {
            from: p("b"),
            to: p("c/d"),
        },
        t0,
    );
    let got = b.take(t0 + Duration::from_millis(10)).unwrap();
    assert_eq!(got.renames, [(p("a"), p("b")), (p("b"), p("c/d"))]);
    assert_eq!(
        scope(&got),
        [
            ("a".into(), false),
            ("b".into(), true),
            ("c".into(), false),
            ("c/d".into(), true)
        ]
    );
    assert_eq!(b.pending(), 0, "the write under a/ moved with it");
}

#[test]
fn new_tree_is_recursive_and_lost_events_mean_full() {
    let t0 = Instant::now();
    let mut b = Batcher::new(cfg());
    b.push(Change::Tree(p("x/y")), t0);
    b.push(Change::Settled(p("x/y")), t0);
    b.push(Change::Lost, t0);
    let got = b.take(t0 + Duration::from_millis(10)).unwrap();
    assert!(got.full);
    assert_eq!(scope(&got), [("x".into(), false), ("x/y".into(), true)]);
    b.force_full(t0);
    assert!(b.take(t0 + Duration::from_millis(20)).unwrap().full);
}

#[test]
fn by_default_a_closed_file_is_due_at_once_and_a_written_one_is_not() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatchConfig::default());
    b.push(Change::Writing(p("f")), t0);
    assert!(b.take(t0).is_none(), "not closed yet");
    assert_eq!(b.deadline(), Some(t0 + BatchConfig::default().settle));
    b.push(Change::Settled(p("f")), t0);
    assert_eq!(b.deadline(), Some(t0));
    assert_eq!(scope(&b.take(t0).unwrap()), [("f".into(), false)]);
    // the next batch: PACE after this one
    b.push(Change::Meta(p("g")), t0);
    b.push(Change::Tree(p("h")), t0);
    assert!(b.take(t0).is_none());
    assert_eq!(b.deadline(), Some(t0 + PACE));
    assert_eq!(b.take(t0 + PACE).unwrap().scope.len(), 2);
}

#[test]
fn the_first_half_of_a_rename_waits_for_its_second() {
    let t0 = Instant::now();
    let mut b = Batcher::new(BatchConfig::default());
    b.push(Change::Settled(p("x")), t0);
    b.push(Change::MovedAway(p("a")), t0);
    assert!(b.take(t0).is_none(), "a delete or half a rename");
    assert_eq!(b.deadline(), Some(t0 + PAIR_WAIT));
    b.push(Change::Tree(p("b")), t0);
    b.push(
        Change::Renamed {
            from: p("a"),
            to: p("b"),
        },
        t0,
    );
    let got = b.take(t0).expect("paired: due at once");
    assert_eq!(got.renames, [(p("a"), p("b"))]);
    // never paired (moved out of the export): goes after PAIR_WAIT
    let t1 = t0 + PACE;
    b.push(Change::MovedAway(p("c")), t1);
    assert!(b.take(t1 + PAIR_WAIT - Duration::from_micros(1)).is_none());
    assert_eq!(
        scope(&b.take(t1 + PAIR_WAIT).unwrap()),
        [("c".into(), false)]
    );
}

#[test]
fn a_deferred_file_comes_back_at_its_time_unless_an_event_comes_first() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut b = Batcher::new(BatchConfig::default());
    b.defer(p("f"), t0 + ms(8), t0);
    b.defer(p("g"), t0 + ms(3), t0);
    assert_eq!(b.pending(), 2);
    assert_eq!(b.oldest(), Some(t0));
    assert_eq!(b.deadline(), Some(t0 + ms(3)));
    assert!(b.take(t0 + ms(2)).is_none());
    assert_eq!(scope(&b.take(t0 + ms(3)).unwrap()), [("g".into(), false)]);
    assert_eq!(b.oldest(), Some(t0), "f is still lag");
    assert_eq!(b.deadline(), Some(t0 + ms(8)));
    // its close event arrives first: due at once (once PACE has passed)
    b.push(Change::Settled(p("f")), t0 + ms(6));
    assert_eq!(scope(&b.take(t0 + ms(6)).unwrap()), [("f".into(), false)]);
    assert_eq!(b.pending(), 0);
    // a write supersedes the deferral: the settle rule applies
    b.defer(p("h"), t0 + ms(9), t0 + ms(5));
    b.push(Change::Writing(p("h")), t0 + ms(6));
    assert_eq!(
        b.deadline(),
        Some(t0 + ms(6) + BatchConfig::default().settle)
    );
    // renamed away: it moves with its directory's recursive compare
    b.defer(p("d/k"), t0 + ms(9), t0 + ms(6));
    b.push(
        Change::Renamed {
            from: p("d"),
            to: p("e"),
        },
        t0 + ms(6),
    );
    let got = b.take(t0 + ms(9)).unwrap();
    assert_eq!(scope(&got), [("d".into(), false), ("e".into(), true)]);
    assert_eq!(b.pending(), 1, "only h, being written");
}

/// A file written for a long time must not make every other change overdue:
/// `max_delay` counts from when a change could ship, not from the oldest
/// write still in progress.
#[test]
fn a_long_writer_does_not_make_every_batch_due_at_once() {
    let ms = Duration::from_millis;
    let t0 = Instant::now();
    let mut b = Batcher::new(BatchConfig {
        window: ms(20),
        max_delay: ms(100),
        max_paths: 10_000,
        settle: Duration::from_secs(60),
    });
    // A log file written every 10 ms for 2 s.
    for i in 0..200 {
        b.push(Change::Writing(p("log")), t0 + ms(10 * i));
    }
    b.push(Change::Settled(p("a")), t0 + ms(1_990));
    // The window of 20 ms after the last event still applies...
    assert_eq!(b.take(t0 + ms(1_995)), None, "a's window is not over");
    assert_eq!(b.deadline(), Some(t0 + ms(2_010)));
    let got = b.take(t0 + ms(2_010)).expect("a ships after its window");
    assert_eq!(scope(&got), [("a".into(), false)]);
    // ...and the lag still counts from the writer's first event.
    assert_eq!(got.oldest, Some(t0));
    assert_eq!(
        b.oldest(),
        Some(t0 + ms(1_990)),
        "the writer is still pending"
    );
    // The next change waits for its own window, not for nothing.
    b.push(Change::Writing(p("log")), t0 + ms(2_011));
    b.push(Change::Settled(p("b")), t0 + ms(2_012));
    assert_eq!(b.take(t0 + ms(2_013)), None, "b's window is not over");
    // A change under a steady stream of events still ships by max_delay.
    for i in 0..20 {
        b.push(Change::Writing(p("log")), t0 + ms(2_012 + 10 * i));
    }
    assert!(
        b.take(t0 + ms(2_112)).is_some(),
        "max_delay from b's arrival"
    );
}
