//! Replication progress: which LSN may be confirmed to Postgres.
//!
//! Every event gets a sequence number when it is handed to the sinks (one
//! number for all the sinks that take it: it is accepted once each of them has
//! accepted it, so the slot waits for the slowest sink). Sinks
//! accept events in any order (batches of different message groups finish
//! out of order); the tracker keeps the lowest sequence number not yet
//! accepted (the *low-water mark*). A transaction's `end_lsn` becomes
//! confirmable once every event registered before its Commit is accepted.
//!
//! ```text
//!   seq:      0  1  2 | 3  4 | 5        (| = a Commit, with its end_lsn)
//!   accepted: ✓  ✓  ✓ | ✓  ✗ | ✓
//!                     ^ confirmable: the first commit's end_lsn
//! ```
//!
//! Two invariants, checked by `debug_assert!`s: the confirmable LSN only moves
//! forward (it is published under the lock, so in order), and each event is
//! accepted once. With nothing in flight and no
//! transaction open, a keepalive's `wal_end` is confirmable too, so an idle
//! publication never pins WAL.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::ops::Metrics;

/// Shared between the pipeline (registers events and commits) and the sinks
/// (accept events). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: std::sync::Arc<Mutex<Inner>>,
    confirmable: watch::Sender<u64>,
    metrics: std::sync::Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence number of `accepted[0]`: the low-water mark.
    base: u64,
    /// Per event from `base` on, how many sinks have yet to accept it (0: accepted).
    accepted: VecDeque<u32>,
    /// (sequence number after the transaction's last event, end_lsn), in order.
    commits: VecDeque<(u64, u64)>,
    /// A transaction is open (Begin seen, Commit not yet).
    in_transaction: bool,
    confirmable: u64,
}

impl Inner {
    fn next_seq(&self) -> u64 {
        self.base + self.accepted.len() as u64
    }

    fn advance(&mut self) -> Option<u64> {
        while self.accepted.front() == Some(&0) {
            self.accepted.pop_front();
            self.base += 1;
        }
        let mut advanced = None;
        while let Some(&(after, lsn)) = self.commits.front() {
            if after > self.base {
                break;
            }
            self.commits.pop_front();
            advanced = self.raise(lsn).or(advanced);
        }
        advanced
    }

    /// Moves the confirmable LSN up to `lsn` (never down); the new value if it moved.
    fn raise(&mut self, lsn: u64) -> Option<u64> {
        (lsn > self.confirmable).then(|| {
            self.confirmable = lsn;
            lsn
        })
    }
}

impl Tracker {
    /// A tracker whose confirmable LSN starts at `start` (the slot's confirmed position).
    pub fn new(start: u64) -> Self {
        let inner = Inner {
            confirmable: start,
            ..Inner::default()
        };
        Tracker {
            inner: std::sync::Arc::new(Mutex::new(inner)),
            confirmable: watch::Sender::new(start),
            metrics: std::sync::Arc::default(),
        }
    }

    /// The metrics of this pipeline (sinks record deliveries here).
    pub fn metrics(&self) -> &std::sync::Arc<Metrics> {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only plain numbers behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a new confirmable LSN. Called with the lock held, so that two
    /// threads that advance it in turn publish in that order too.
    fn publish(&self, _held: &MutexGuard<'_, Inner>, advanced: Option<u64>) {
        if let Some(lsn) = advanced {
            let before = self.confirmable.send_replace(lsn);
            debug_assert!(
                lsn > before,
                "the confirmable LSN went from {before} back to {lsn}"
            );
        }
    }

    /// A transaction begins: keepalives no longer move progress until it commits.
    pub fn begin(&self) {
        self.lock().in_transaction = true;
    }

    /// Assigns the next sequence number to an event about to be handed to the sink.
    pub fn register(&self) -> u64 {
        self.register_for(1)
    }

    /// Assigns the next sequence number to an event about to be handed to `sinks`
    /// sinks (at least one): it is accepted once each has accepted it.
    pub fn register_for(&self, sinks: u32) -> u64 {
        self.register_each(std::iter::once(sinks))
    }

    /// Assigns consecutive sequence numbers to events about to be handed to sinks,
    /// one per item of `takers` (each its number of sinks, at least one), under one
    /// lock; returns the first.
    pub fn register_each(&self, takers: impl IntoIterator<Item = u32>) -> u64 {
        let mut g = self.lock();
        let first = g.next_seq();
        for sinks in takers {
            debug_assert!(sinks > 0, "an event registered for no sink");
            g.accepted.push_back(sinks.max(1));
        }
        first
    }

    /// This tracker, recording a sink's deliveries in `metrics` (its own, by name):
    /// acceptances still count for the one LSN confirmed to Postgres.
    pub fn for_sink(&self, metrics: std::sync::Arc<Metrics>) -> Tracker {
        Tracker {
            metrics,
            ..self.clone()
        }
    }

    /// The sink accepted (durably) the event with this sequence number.
    pub fn accept(&self, seq: u64) {
        self.accept_all(std::iter::once(seq));
    }

    /// The sink accepted these events.
    ///
    /// Each sink accepts an event once: an acceptance beyond the sinks it was
    /// registered for is a sink's bug (a debug build panics; a release build ignores it).
    pub fn accept_all(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut g = self.lock();
        let mut n = 0;
        for seq in seqs {
            n += 1;
            debug_assert!(seq < g.next_seq(), "accepting an unregistered event {seq}");
            debug_assert!(seq >= g.base, "event {seq} accepted twice");
            if let Some(i) = seq.checked_sub(g.base) {
                if let Some(left) = g.accepted.get_mut(i as usize) {
                    debug_assert!(*left > 0, "event {seq} accepted twice");
                    *left = left.saturating_sub(1);
                }
            }
        }
        self.metrics.accepted(n);
        let advanced = g.advance();
        self.publish(&g, advanced);
    }

    /// The open transaction committed; `end_lsn` is confirmable once its events are accepted.
    pub fn commit(&self, end_lsn: u64) {
        let mut g = self.lock();
        g.in_transaction = false;
        let after = g.next_seq();
        g.commits.push_back((after, end_lsn));
        let advanced = g.advance();
        self.publish(&g, advanced);
    }

    /// The stream is at `wal_end` (keepalive): confirmable if nothing is in flight.
    pub fn idle(&self, wal_end: u64) {
        let mut g = self.lock();
        let advanced = if g.in_transaction || !g.accepted.is_empty() || !g.commits.is_empty() {
            None
        } else {
            g.raise(wal_end)
        };
        self.publish(&g, advanced);
    }

    /// A new replication session starts: a transaction left open by the old one
    /// will be sent again from its Begin.
    pub fn reset_transaction(&self) {
        self.lock().in_transaction = false;
    }

    /// The highest LSN at and below which every event was accepted.
    pub fn confirmable(&self) -> u64 {
        *self.confirmable.borrow()
    }

    /// Wakes when the confirmable LSN moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.confirmable.subscribe()
    }

    /// Events registered but not yet accepted.
    pub fn in_flight(&self) -> u64 {
        let g = self.lock();
        g.accepted.iter().filter(|a| **a > 0).count() as u64
    }

    /// Waits until every registered event is accepted.
    pub async fn drained(&self) {
        let mut rx = self.subscribe();
        loop {
            {
                let g = self.lock();
                if g.accepted.is_empty() {
                    return;
                }
            }
            // Any acceptance that empties the window also advances `base`; poll on
            // changes of the confirmable LSN, with a short fallback tick.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), rx.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_fully_accepted_transactions() {
        let t = Tracker::new(10);
        t.begin();
        let a = t.register();
        let b = t.register();
        t.commit(100);
        t.begin();
        let c = t.register();
        t.commit(200);
        assert_eq!(t.confirmable(), 10);
        t.accept(c);
        assert_eq!(
            t.confirmable(),
            10,
            "a later transaction must not pass an earlier one"
        );
        t.accept(b);
        assert_eq!(t.confirmable(), 10);
        t.accept(a);
        assert_eq!(t.confirmable(), 200);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partial_transaction_holds_progress() {
        let t = Tracker::new(0);
        t.begin();
        let a = t.register();
        t.commit(50);
        t.accept(a);
        assert_eq!(t.confirmable(), 50);
        t.begin();
        let b = t.register();
        t.accept(b);
        assert_eq!(t.confirmable(), 50, "no commit yet");
        t.idle(500);
        assert_eq!(
            t.confirmable(),
            50,
            "keepalive inside a transaction is ignored"
        );
        t.commit(60);
        assert_eq!(t.confirmable(), 60);
    }

    #[test]
    fn keepalive_advances_when_idle_and_never_backwards() {
        let t = Tracker::new(100);
        t.idle(90);
        assert_eq!(t.confirmable(), 100);
        t.idle(300);
        assert_eq!(t.confirmable(), 300);
        t.begin();
        let a = t.register();
        t.commit(400);
        t.idle(500);
        assert_eq!(t.confirmable(), 300, "an event is in flight");
        t.accept(a);
        assert_eq!(t.confirmable(), 400);
        t.idle(500);
        assert_eq!(t.confirmable(), 500);
    }

    #[test]
    fn empty_transaction_confirms_at_commit() {
        let t = Tracker::new(0);
        t.begin();
        t.commit(42);
        assert_eq!(t.confirmable(), 42);
    }

    #[test]
    fn the_confirmable_lsn_is_published_in_order() {
        let t = Tracker::new(0);
        let rx = t.subscribe();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        t.begin();
                        let seq = t.register();
                        t.commit(seq + 1);
                        t.accept(seq);
                    }
                })
            })
            .collect();
        let mut last = 0;
        while threads.iter().any(|h| !h.is_finished()) {
            let now = *rx.borrow();
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
        for h in threads {
            h.join().expect("thread");
        }
        assert_eq!(t.confirmable(), 2000);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "accepted twice")]
    fn a_second_acceptance_is_a_bug() {
        let t = Tracker::new(0);
        let a = t.register();
        let _b = t.register();
        t.accept(a);
        t.accept(a);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "accepted twice")]
    fn a_second_acceptance_below_the_low_water_mark_is_a_bug() {
        let t = Tracker::new(0);
        let a = t.register();
        t.accept(a);
        t.accept(a);
    }

    #[test]
    fn an_event_of_two_sinks_waits_for_both() {
        let t = Tracker::new(0);
        let (a, b) = (
            t.for_sink(std::sync::Arc::default()),
            t.for_sink(std::sync::Arc::default()),
        );
        t.begin();
        let e = t.register_for(2);
        t.commit(70);
        a.accept(e);
        assert_eq!(t.confirmable(), 0, "one sink of two accepted");
        assert_eq!(t.in_flight(), 1);
        b.accept(e);
        assert_eq!(t.confirmable(), 70);
        assert_eq!(
            a.metrics().in_flight(),
            -1,
            "sent counts are the lanes' (none here)"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "accepted twice")]
    fn a_third_acceptance_of_a_two_sink_event_is_a_bug() {
        let t = Tracker::new(0);
        let e = t.register_for(2);
        let _next = t.register();
        t.accept(e);
        t.accept(e);
        t.accept(e);
    }

    #[tokio::test]
    async fn drained_waits_for_acceptance() {
        let t = Tracker::new(0);
        t.begin();
        let a = t.register();
        t.commit(5);
        let t2 = t.clone();
        let h = tokio::spawn(async move { t2.drained().await });
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        t.accept(a);
        tokio::time::timeout(std::time::Duration::from_secs(2), h)
            .await
            .expect("drained in time")
            .expect("task");
    }
}
