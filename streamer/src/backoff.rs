//! Capped exponential backoff with full jitter, for every retry in the crate:
//! the sink's delivery retries and the pipeline's reconnects.
//!
//! Attempt `n` (from 1) waits a uniformly random time between zero and
//! `min(cap, base · 2ⁿ⁻¹)` ("full jitter"): retries from many streamers, or
//! from many batches of one, spread out instead of arriving together.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A backoff schedule: the ceiling of attempt `n` is `min(cap, base · 2ⁿ⁻¹)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first attempt.
    pub base: Duration,
    /// The highest ceiling.
    pub cap: Duration,
}

/// Delivery retries of the SQS/SNS sink: up to 100 ms, 200 ms, … 20 s.
pub const DELIVERY: Backoff = Backoff {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(20),
};

/// Reconnects of the pipeline: up to 500 ms, 1 s, … 30 s.
pub const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(500),
    cap: Duration::from_secs(30),
};

impl Backoff {
    /// The longest wait of `attempt` (1 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// How long to wait before `attempt`: uniform in `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        // Each `RandomState` is seeded afresh (per thread, then stepped on every
        // call): random enough for jitter, without a dependency.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        Duration::from_nanos(h.finish() % (ceiling + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        assert_eq!(DELIVERY.ceiling(1), Duration::from_millis(100));
        assert_eq!(DELIVERY.ceiling(2), Duration::from_millis(200));
        assert_eq!(DELIVERY.ceiling(9), Duration::from_millis(20_000));
        assert_eq!(DELIVERY.ceiling(u32::MAX), Duration::from_secs(20));
        assert_eq!(RECONNECT.ceiling(1), Duration::from_millis(500));
        assert_eq!(RECONNECT.ceiling(50), Duration::from_secs(30));
        assert_eq!(DELIVERY.ceiling(0), DELIVERY.ceiling(1));
    }

    #[test]
    fn delays_spread_over_the_whole_range() {
        for attempt in [1, 3, 40] {
            let ceiling = RECONNECT.ceiling(attempt);
            let delays: Vec<Duration> = (0..400).map(|_| RECONNECT.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "{attempt}");
            // Full jitter: both halves of the range are used (each miss has odds 2^-400).
            assert!(delays.iter().any(|d| *d < ceiling / 2), "{attempt}");
            assert!(delays.iter().any(|d| *d > ceiling / 2), "{attempt}");
        }
    }
}
