//! How many batch calls the SQS/SNS sink keeps in flight: an adaptive window
//! (additive increase, multiplicative decrease), in the spirit of vector's
//! adaptive request concurrency, in place of a fixed number.
//!
//! Throughput through one connection is one batch per round trip, so at a
//! region's 10–30 ms the number of calls in flight is what sets the rate
//! (30,000 events/s at 15 ms needs ~45 full batches in flight). How many the
//! service takes is not known in advance (quotas, partitions, the link), so
//! the window finds it, one interval (about one round trip) at a time:
//!
//! ```text
//!   throttled, 5xx or no answer ──▶ limit × 0.5   (at once; once per window of calls)
//!   mean RTT > 2 × base RTT     ──▶ limit × 0.9   (a queue is building somewhere;
//!                                                  not below INITIAL: a slower
//!                                                  answer alone is no refusal)
//!   window was full, all well   ──▶ limit × 2 (slow start, until the first decrease)
//!                                   limit + 1 (afterwards)
//! ```
//!
//! A congestion signal from a call that started before the last decrease is
//! about the old, larger window: it does not shrink the window again (TCP's
//! recovery rule), so one burst of throttled answers halves it once, not down
//! to 1. The base RTT follows a lower mean at once and a higher one slowly,
//! so a lasting change of route is learnt and a queue is not.
//!
//! The window bounds calls, retries included ([`Calls::start`] waits for
//! room): after throttling, batches that back off and try again share the
//! smaller window with new ones, so throttling lowers the rate of calls
//! instead of adding retries to it. Time is tokio's (paused in tests).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Calls in flight at the start (the former fixed number).
pub const INITIAL: usize = 8;
/// Calls in flight at most: ~64,000 events/s at 20 ms in full batches; one
/// HTTP connection each.
pub const MAX: usize = 128;
/// A mean RTT over this many times the base RTT shrinks the window.
const RISE: f64 = 2.0;
/// The factor after throttling, a 5xx or a call without an answer.
const ON_CONGESTION: f64 = 0.5;
/// The factor after a rise of the RTT.
const ON_RISE: f64 = 0.9;
/// The shortest interval between adjustments.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// How a call ended, for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The service answered (entries may have failed for other reasons).
    Answered,
    /// Throttling, a 5xx, a timeout or no connection: send less.
    Congested,
}

/// The window shared by a sink's batches: calls wait in [`Calls::start`]
/// while it is full.
#[derive(Debug)]
pub struct Calls {
    window: Mutex<Window>,
    room: Notify,
}

/// One call in the window; [`Call::done`] says how it went and frees its place
/// (dropped without it, the place is freed and nothing learnt).
#[derive(Debug)]
pub struct Call<'a> {
    calls: &'a Calls,
    started: Instant,
    ended: bool,
}

impl Calls {
    /// A window of [`INITIAL`] calls.
    pub fn new() -> Calls {
        Calls {
            window: Mutex::new(Window::new(Instant::now())),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // A panic elsewhere while holding it leaves a usable window.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls that may be in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit()
    }

    /// The sink had a batch ready and the window was full: a reason to grow.
    pub fn full(&self) {
        self.lock().full();
    }

    /// Waits for room in the window and takes a place for one call.
    pub async fn start(&self) -> Call<'_> {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut w = self.lock();
                if w.in_flight < w.limit() {
                    w.in_flight += 1;
                    return Call {
                        calls: self,
                        started: Instant::now(),
                        ended: false,
                    };
                }
                w.full();
            }
            room.await;
        }
    }

    fn end(&self, started: Instant, outcome: Option<Outcome>) {
        {
            let mut w = self.lock();
            w.in_flight -= 1;
            if let Some(outcome) = outcome {
                w.record(started, Instant::now(), outcome);
            }
        }
        self.room.notify_waiters();
    }
}

impl Default for Calls {
    fn default() -> Self {
        Calls::new()
    }
}

impl Call<'_> {
    /// The call ended with `outcome`.
    pub fn done(mut self, outcome: Outcome) {
        self.ended = true;
        self.calls.end(self.started, Some(outcome));
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.calls.end(self.started, None);
        }
    }
}

/// The adaptive limit on calls in flight (see the module documentation).
#[derive(Debug)]
pub struct Window {
    /// Calls holding a place.
    in_flight: usize,
    limit: f64,
    /// Doubling while below this (slow start); `MAX` until the first decrease.
    threshold: f64,
    /// The RTT without queueing, as far as known.
    base: Option<Duration>,
    /// When the window last shrank: signals from calls started before are stale.
    shrunk_at: Option<Instant>,
    interval: Interval,
}

#[derive(Debug)]
struct Interval {
    started: Instant,
    calls: u32,
    rtt_total: Duration,
    /// The sink had a batch to start and the window was full.
    full: bool,
}

impl Interval {
    fn new(started: Instant) -> Interval {
        Interval {
            started,
            calls: 0,
            rtt_total: Duration::ZERO,
            full: false,
        }
    }
}

impl Window {
    /// A window of [`INITIAL`] calls, its first interval starting at `now`.
    pub fn new(now: Instant) -> Window {
        Window {
            in_flight: 0,
            limit: INITIAL as f64,
            threshold: MAX as f64,
            base: None,
            shrunk_at: None,
            interval: Interval::new(now),
        }
    }

    /// Calls that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The sink had a batch ready and the window was full: a reason to grow.
    pub fn full(&mut self) {
        self.interval.full = true;
    }

    /// A call that started at `started` ended at `now` with `outcome`.
    pub fn record(&mut self, started: Instant, now: Instant, outcome: Outcome) {
        if outcome == Outcome::Congested {
            let stale = self.shrunk_at.is_some_and(|at| started < at);
            if !stale {
                self.shrink(ON_CONGESTION, now);
            }
            return;
        }
        self.interval.calls += 1;
        self.interval.rtt_total += now.saturating_duration_since(started);
        let length = self.base.unwrap_or(MIN_INTERVAL).max(MIN_INTERVAL);
        if now.saturating_duration_since(self.interval.started) >= length {
            self.adjust(now);
        }
    }

    /// The end of an interval: shrink on a risen RTT, grow when the window was full.
    fn adjust(&mut self, now: Instant) {
        let mean = self.interval.rtt_total / self.interval.calls.max(1);
        let full = self.interval.full;
        let risen = self
            .base
            .is_some_and(|base| mean.as_secs_f64() > base.as_secs_f64() * RISE);
        if risen && self.limit > INITIAL as f64 {
            self.shrink(ON_RISE, now);
            self.limit = self.limit.max(INITIAL as f64);
            self.threshold = self.limit;
        } else if !risen && full {
            let grown = if self.limit < self.threshold {
                self.limit * 2.0
            } else {
                self.limit + 1.0
            };
            self.limit = grown.min(MAX as f64);
        }
        // Down at once, up by an eighth of the difference per interval.
        self.base = Some(match self.base {
            Some(base) if mean > base => base + (mean - base) / 8,
            _ => mean,
        });
        self.interval = Interval::new(now);
    }

    fn shrink(&mut self, factor: f64, now: Instant) {
        self.limit = (self.limit * factor).max(1.0);
        self.threshold = self.limit;
        self.shrunk_at = Some(now);
        self.interval = Interval::new(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One interval: the sink found the window full, then a call of `rtt` ended at `at`.
    fn round(w: &mut Window, at: Instant, rtt: Duration) {
        w.full();
        w.record(at - rtt, at, Outcome::Answered);
    }

    /// Three full intervals of 15 ms calls: 8 doubled to 64. The end of the last one.
    fn grown(w: &mut Window, t0: Instant) -> Instant {
        let mut at = t0;
        for _ in 0..3 {
            at += 15 * MS;
            round(w, at, 15 * MS);
        }
        assert_eq!(w.limit(), 64);
        at
    }

    #[test]
    fn grows_by_doubling_then_by_one_while_full_and_fast() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        assert_eq!(w.limit(), INITIAL);
        let mut at = t0;
        for expect in [16, 32, 64, 128, 128] {
            at += 15 * MS;
            round(&mut w, at, 15 * MS);
            assert_eq!(w.limit(), expect);
        }
        // Not full: no reason to grow.
        let mut w = Window::new(t0);
        w.record(t0, t0 + 15 * MS, Outcome::Answered);
        w.record(t0 + 15 * MS, t0 + 30 * MS, Outcome::Answered);
        assert_eq!(w.limit(), INITIAL);
    }

    #[test]
    fn throttling_halves_once_per_window_of_calls() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let mut at = grown(&mut w, t0);
        // 64 calls sent before the first throttled answer all come back throttled.
        let sent = at;
        at += 15 * MS;
        for _ in 0..64 {
            w.record(sent, at, Outcome::Congested);
        }
        assert_eq!(w.limit(), 32, "halved once, not to 1");
        // A call sent after the decrease is throttled again: halved again.
        w.record(at + MS, at + 16 * MS, Outcome::Congested);
        assert_eq!(w.limit(), 16);
        // Then growth is additive: no doubling back into the throttle.
        at += 16 * MS;
        for expect in [17, 18, 19] {
            at += 15 * MS;
            round(&mut w, at, 15 * MS);
            assert_eq!(w.limit(), expect);
        }
        // Never below one call.
        for i in 1..20 {
            let t = at + i * 20 * MS;
            w.record(t, t + MS, Outcome::Congested);
        }
        assert_eq!(w.limit(), 1);
    }

    #[test]
    fn a_rising_rtt_shrinks_and_a_steady_one_does_not() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let mut at = grown(&mut w, t0);
        // A queue builds: 40 ms against a base of 15 ms.
        at += 40 * MS;
        round(&mut w, at, 40 * MS);
        assert_eq!(w.limit(), 57, "× 0.9");
        // At INITIAL a rise shrinks it no further: only refusals do that.
        let mut slow = Window::new(t0);
        slow.record(t0, t0 + 15 * MS, Outcome::Answered);
        round(&mut slow, t0 + 115 * MS, 100 * MS);
        assert_eq!(slow.limit(), INITIAL);
        // Jitter within the base's double does not shrink it.
        let before = w.limit();
        at += 25 * MS;
        round(&mut w, at, 25 * MS);
        assert!(w.limit() > before, "{} after {before}", w.limit());
    }
}
