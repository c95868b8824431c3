//! Rise/fall accounting for active health checks (sans-IO).
//!
//! A server is marked down after `fall` consecutive failed checks and comes
//! back only after `rise` consecutive successful ones, like keepalived's
//! `TCP_CHECK`/`HTTP_GET` with `retry`/`delay_before_retry`, or HAProxy's
//! `rise`/`fall`. Servers start up (a fresh proxy serves immediately).

/// The health of one server as seen by active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    up: bool,
    successes: u32,
    failures: u32,
}

/// A change of state caused by a check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            up: true,
            successes: 0,
            failures: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Record one check result with the configured thresholds.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise.max(1) {
                self.up = true;
                return Some(Transition::WentUp);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= fall.max(1) {
                self.up = false;
                return Some(Transition::WentDown);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_after_fall_consecutive_failures() {
        let mut h = Health::new();
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert!(h.is_up());
        assert_eq!(h.record(false, 2, 3), Some(Transition::WentDown));
        assert!(!h.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut h = Health::new();
        h.record(false, 2, 3);
        h.record(false, 2, 3);
        h.record(true, 2, 3);
        h.record(false, 2, 3);
        h.record(false, 2, 3);
        assert!(h.is_up(), "only two consecutive failures since the success");
    }

    #[test]
    fn comes_back_only_after_rise_consecutive_successes() {
        let mut h = Health::new();
        h.record(false, 3, 1);
        assert!(!h.is_up());
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(false, 3, 1), None, "already down: no transition");
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(true, 3, 1), None);
        assert!(!h.is_up());
        assert_eq!(h.record(true, 3, 1), Some(Transition::WentUp));
        assert!(h.is_up());
    }
}
