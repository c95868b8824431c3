//! One timer per connection for nginx-style per-operation limits ("no
//! bytes moved for `limit` while waiting"), instead of a fresh
//! `tokio::time::timeout` around every read and write.
//!
//! A wait starts at the first `Pending` after progress and ends at the next
//! progress; the limit counts from that start, exactly as a per-read
//! timeout would. The difference is cost: the timer is created once per
//! connection and is moved only when it fires, not on every request. While
//! it sits at an earlier deadline it fires early, finds the current wait
//! younger than the limit, and is re-armed for the wait's real deadline, so
//! a busy connection touches the timer wheel about once per `limit` instead
//! of once per request (insert and remove).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The stall timer of one connection (or one direction of it).
#[derive(Debug, Default)]
pub struct Stall {
    /// Created on the first wait; reused for the connection's life.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Start of the current wait; `None` after progress.
    since: Option<Instant>,
}

impl Stall {
    pub fn new() -> Stall {
        Stall::default()
    }

    /// Bytes moved: the current wait, if any, is over.
    pub fn progress(&mut self) {
        self.since = None;
    }

    /// The operation is pending: `Ready` once this wait has lasted `limit`.
    /// Registers the waker like any timer.
    pub fn poll_stalled(&mut self, limit: Duration, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let due = since + limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            // a later deadline (a longer limit before) must not delay this one
            if sleep.deadline() > due {
                sleep.as_mut().reset(due);
            }
            ready!(sleep.as_mut().poll(cx));
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            // fired for an older wait: re-arm for this one
            sleep.as_mut().reset(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Waits until the stall timer fires; returns the simulated time taken.
    async fn wait(s: &mut Stall, limit: Duration) -> Duration {
        let t = Instant::now();
        poll_fn(|cx| s.poll_stalled(limit, cx)).await;
        t.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_timed_from_its_own_start() {
        let limit = Duration::from_secs(10);
        let mut s = Stall::new();
        // a first wait that ends in progress after 7 s
        let r = tokio::time::timeout(Duration::from_secs(7), wait(&mut s, limit)).await;
        assert!(r.is_err(), "7 s < limit: not stalled");
        s.progress();
        // a long pause with no wait at all (the client not reading) counts
        // for nothing
        tokio::time::sleep(Duration::from_secs(60)).await;
        // the next wait gets the whole limit, though the timer was armed
        // for the first one's deadline
        assert_eq!(wait(&mut s, limit).await, limit);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_limit_and_a_shorter_limit_applies() {
        let mut s = Stall::new();
        let r = tokio::time::timeout(
            Duration::from_secs(8),
            wait(&mut s, Duration::from_secs(10)),
        )
        .await;
        assert!(r.is_err());
        // without progress the same wait goes on: 2 s are left
        assert_eq!(
            wait(&mut s, Duration::from_secs(10)).await,
            Duration::from_secs(2)
        );
        s.progress();
        // the timer sits at a later deadline; a shorter limit still holds
        let mut s = Stall::new();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            wait(&mut s, Duration::from_secs(100)),
        )
        .await;
        assert!(r.is_err());
        s.progress();
        assert_eq!(
            wait(&mut s, Duration::from_secs(3)).await,
            Duration::from_secs(3)
        );
    }
}
