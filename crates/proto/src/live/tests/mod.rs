//! `Live` under a simulated clock: each rule of the primary's loop (`rules`),
//! commits pipelined two deep (`pipelined`), then thousands of seeded runs
//! with connect failures, lost sessions, files the standby refuses and busy
//! files, checking that every change reaches the standby and that the loop
//! never spins (`seeded`).

use super::*;

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

fn scope_of(b: &Batch) -> Vec<String> {
    b.scope.iter().map(|s| s.path.to_string()).collect()
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

/// Whether batch `b` carries `path` (a full compare carries everything).
fn covers(b: &Batch, path: &RelPath) -> bool {
    b.full
        || b.scope
            .iter()
            .any(|s| &s.path == path || (s.recursive && path.starts_with(&s.path)))
}

mod pipelined;
mod rules;
mod seeded;
