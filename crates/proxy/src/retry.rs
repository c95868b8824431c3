//! Retry policy (sans-IO): which failures may be retried on another server,
//! and a proxy-wide retry budget so that a struggling backend pool is not
//! hit by a snowball of retries.

use std::time::{Duration, Instant};

use hyper::Method;

/// nginx never replays these once sent (`proxy_next_upstream ... non_idempotent` off).
pub fn is_idempotent(method: &Method) -> bool {
    !matches!(method.as_str(), "POST" | "PATCH" | "LOCK")
}

/// How an attempt on one server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect refused/unreachable: the request never left.
    Connect,
    /// TCP connect did not finish in `connect_timeout`: the request never left.
    ConnectTimeout,
    /// A pooled connection turned out closed before the request was written.
    StaleUnsent,
    /// The request was (maybe partly) sent, then the connection closed or
    /// reset before any response byte.
    ResetAfterSend,
    /// No response header within `read_timeout`.
    ResponseTimeout,
    /// The response could not be parsed.
    InvalidResponse,
    /// The client's request body broke off while it was being forwarded:
    /// not the server's fault, and nothing to retry.
    ClientAborted,
    /// The client stopped sending its request body for
    /// `client_body_timeout`: the client's fault (408), never the server's.
    ClientTimeout,
}

impl Failure {
    /// Did the request (possibly) reach the server?
    pub fn request_sent(self) -> bool {
        !matches!(
            self,
            Failure::Connect | Failure::ConnectTimeout | Failure::StaleUnsent
        )
    }

    /// Does it count toward `max_fails`? A stale pooled connection is not the
    /// server's fault: the server closed an idle connection, as it may.
    pub fn counts_as_server_failure(self) -> bool {
        !matches!(
            self,
            Failure::StaleUnsent | Failure::ClientAborted | Failure::ClientTimeout
        )
    }

    pub fn is_timeout(self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::ResponseTimeout)
    }
}

/// May this failure be retried, considering the method and whether the body
/// can be sent again?
pub fn retryable(failure: Failure, method: &Method, body_replayable: bool) -> bool {
    if matches!(failure, Failure::ClientAborted | Failure::ClientTimeout) {
        return false; // the client is the problem; another server will not help
    }
    if !failure.request_sent() {
        return true; // nothing reached the server
    }
    is_idempotent(method) && body_replayable
}

/// A reused keep-alive connection closed before any response byte: may the
/// request go out once more, on a fresh connection to the same server?
/// An idempotent one may (nginx retries it too); a POST only when the
/// server provably read none of it (`unread`: it closed the idle
/// connection before the request arrived and acknowledged none of its
/// bytes), which nginx cannot tell and answers with 502. The body must
/// still be in hand. Never on a fresh connection: that is the server's
/// failure, for the attempt loop to judge.
pub fn replay_fresh(reused: bool, unread: bool, idempotent: bool, body_replayable: bool) -> bool {
    reused && body_replayable && (idempotent || unread)
}

/// A token bucket shared by all requests: each request deposits `ratio`
/// tokens, each retry withdraws one; on top, `min_per_sec` retries per
/// second are always allowed (so a quiet proxy can still retry).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Tokens are counted in thousandths so that 0.1 * 10 is exactly 1.
    ratio_milli: u64,
    min_per_sec: u32,
    balance_milli: u64,
    cap_milli: u64,
    window_start: Option<Instant>,
    used_in_window: u32,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: u32) -> RetryBudget {
        let mut b = RetryBudget {
            ratio_milli: 0,
            min_per_sec,
            balance_milli: 0,
            cap_milli: 0,
            window_start: None,
            used_in_window: 0,
        };
        b.reconfigure(ratio, min_per_sec);
        b
    }

    pub fn reconfigure(&mut self, ratio: f64, min_per_sec: u32) {
        self.ratio_milli = (ratio.max(0.0) * 1000.0).round() as u64;
        self.min_per_sec = min_per_sec;
        // bound the savings so a long quiet period cannot fund a storm
        self.cap_milli = (self.ratio_milli * 1000).max(10_000);
        self.balance_milli = self.balance_milli.min(self.cap_milli);
    }

    /// A new request arrived.
    pub fn deposit(&mut self) {
        self.deposit_n(1);
    }

    /// `n` new requests arrived (the same as `n` single deposits).
    pub fn deposit_n(&mut self, n: u64) {
        let add = self.ratio_milli.saturating_mul(n);
        self.balance_milli = self.balance_milli.saturating_add(add).min(self.cap_milli);
    }

    /// Try to spend one retry. Returns false when the budget is exhausted.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        let fresh = match self.window_start {
            Some(s) => now.saturating_duration_since(s) >= Duration::from_secs(1),
            None => true,
        };
        if fresh {
            self.window_start = Some(now);
            self.used_in_window = 0;
        }
        if self.used_in_window < self.min_per_sec {
            self.used_in_window += 1;
            return true;
        }
        if self.balance_milli >= 1000 {
            self.balance_milli -= 1000;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_idempotent_methods_follow_nginx() {
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
        assert!(!is_idempotent(&Method::from_bytes(b"LOCK").unwrap()));
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(is_idempotent(&Method::DELETE));
    }

    #[test]
    fn post_is_retried_only_if_it_never_left() {
        assert!(retryable(Failure::Connect, &Method::POST, false));
        assert!(retryable(Failure::StaleUnsent, &Method::POST, false));
        assert!(!retryable(Failure::ResetAfterSend, &Method::POST, true));
        assert!(!retryable(Failure::ResponseTimeout, &Method::POST, true));
        assert!(retryable(Failure::ResetAfterSend, &Method::GET, true));
        assert!(
            !retryable(Failure::ResetAfterSend, &Method::PUT, false),
            "streamed body cannot be replayed"
        );
        assert!(!retryable(Failure::ClientAborted, &Method::PUT, true));
        assert!(!Failure::ClientAborted.counts_as_server_failure());
        // a client that stalls its upload is never the server's failure
        assert!(!retryable(Failure::ClientTimeout, &Method::PUT, true));
        assert!(!Failure::ClientTimeout.counts_as_server_failure());
        assert!(!Failure::ClientTimeout.is_timeout(), "408, not 504");
    }

    #[test]
    fn a_reused_connection_replays_only_what_the_server_never_read() {
        // (reused, unread, idempotent, body in hand)
        assert!(replay_fresh(true, false, true, true), "GET after the race");
        assert!(
            replay_fresh(true, true, false, true),
            "POST the server never read"
        );
        assert!(
            !replay_fresh(true, false, false, true),
            "POST maybe read: never twice"
        );
        assert!(
            !replay_fresh(true, true, false, false),
            "streamed body gone"
        );
        assert!(
            !replay_fresh(false, true, true, true),
            "fresh connection: no"
        );
    }

    #[test]
    fn budget_limits_retries_to_ratio_plus_minimum() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.1, 2);
        for _ in 0..100 {
            b.deposit();
        }
        // 2 free per second + 10 from the ratio
        let granted = (0..50).filter(|_| b.withdraw(t0)).count();
        assert_eq!(granted, 12);
        // next second: the per-second minimum is available again, nothing more
        let granted = (0..50)
            .filter(|_| b.withdraw(t0 + Duration::from_millis(1000)))
            .count();
        assert_eq!(granted, 2);
    }

    #[test]
    fn budget_savings_are_capped() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, 0);
        for _ in 0..1_000_000 {
            b.deposit();
        }
        let granted = (0..10_000).filter(|_| b.withdraw(t0)).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn a_batch_of_deposits_equals_single_ones_cap_included() {
        let t0 = Instant::now();
        for n in [0u64, 1, 7, 37, 1_000_000] {
            let mut single = RetryBudget::new(0.2, 0);
            let mut batch = single.clone();
            for _ in 0..n {
                single.deposit();
            }
            batch.deposit_n(n);
            let granted = |b: &mut RetryBudget| (0..10_000).filter(|_| b.withdraw(t0)).count();
            assert_eq!(granted(&mut single), granted(&mut batch), "{n} deposits");
        }
    }
}
