//! Sinks: where events go. [`Sink`] is the contract every sink keeps; the
//! delivery guarantees of the project rest on it.
//!
//! - [`AwsSink`]: SQS queues and SNS topics through one delivery core
//!   (batching, order per group, retries, dead-lettering); the services
//!   ([`SqsQueue`], [`SnsTopic`]) only map a batch onto their API.
//!   [`Destinations`] connects and checks what the configuration names,
//!   before anything else happens. Events too large for the destination go
//!   through S3 ([`PayloadStore`]) when `sink.s3` is set.
//! - [`StdoutSink`]: one JSON line per event, written on a thread of its own.
//! - [`MemorySink`]: keeps events in memory (tests).

mod aws;
mod destinations;
mod fault;
mod memory;
mod s3;
mod sns;
mod sqs;
mod stdout;
mod window;

pub use aws::{dead_letter_body, AwsSink, Destination, Entry};
pub use destinations::Destinations;
pub use fault::{Fault, Refusal};
pub use memory::MemorySink;
pub use s3::PayloadStore;
pub use sns::SnsTopic;
pub use sqs::SqsQueue;
pub use stdout::StdoutSink;

use std::future::Future;
use std::sync::Arc;

use crate::event::Event;

/// Why a sink stopped for good. The streamer stops rather than lose an event:
/// the slot keeps every event not yet accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// A setting is wrong, or what it names cannot be used: found by the check
    /// before anything is created.
    #[error("{}{reason}", if setting.is_empty() { String::new() } else { format!("{setting}: ") })]
    Setting {
        /// The setting to fix, e.g. `sink.queue_url`; empty when the reason names
        /// its settings itself (`sinks[1].columns.public.users: …`).
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The destination refused an event for good and no dead-letter queue is set.
    #[error(
        "{destination} refused the change {idempotency_key} of {table} for good ({refusal}) and no \
         sink.dead_letter_queue_url is set; the slot keeps the event: set a dead-letter queue or \
         fix the cause, then restart"
    )]
    Refused {
        /// Queue URL or topic ARN.
        destination: String,
        /// The event's idempotency key.
        idempotency_key: String,
        /// The event's table, `schema.table`.
        table: String,
        /// Why.
        refusal: Box<Refusal>,
    },
    /// The dead-letter queue refused an event for good.
    #[error(
        "the dead-letter queue {queue} refused the change {idempotency_key} of {table}: {fault}; \
         the slot keeps the event"
    )]
    DeadLetterRefused {
        /// The dead-letter queue's URL.
        queue: String,
        /// The event's idempotency key.
        idempotency_key: String,
        /// The event's table, `schema.table`.
        table: String,
        /// What the queue answered.
        fault: Box<Fault>,
    },
    /// The destination itself cannot be used (missing, access denied, credentials refused).
    #[error(
        "{destination} cannot be used: {fault} (the slot keeps the events; fix the destination \
         or the credentials and restart)"
    )]
    Unusable {
        /// Queue URL or topic ARN.
        destination: String,
        /// What it answered.
        fault: Box<Fault>,
    },
    /// A FIFO destination took a later event of a group although an earlier
    /// one of the same batch failed transiently: it holds the group out of
    /// order (the rule is in `sink/aws.rs`). The sink stops rather than send
    /// the earlier event after its successor.
    #[error(
        "{destination} took the change {taken} of {table} but not the earlier change {failed} of \
         the same message group in the same batch ({fault}), so the queue holds that group out \
         of order; the sink stopped before sending {failed} again. The slot keeps it: a restart \
         sends it again after {taken} (whose copy AWS drops as a duplicate within 5 minutes), so \
         consumers of that group see {taken} first; guard by position (docs/change-event.md) or \
         repair that group before restarting"
    )]
    Overtaken {
        /// Queue URL or topic ARN.
        destination: String,
        /// The events' table, `schema.table`.
        table: String,
        /// The idempotency key of the event that failed.
        failed: String,
        /// The idempotency key of the later event of its group that was taken.
        taken: String,
        /// Why the earlier one failed.
        fault: Box<Fault>,
    },
    /// Writing the output failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error (shared: a sink reports its failure to every later call).
        error: Arc<std::io::Error>,
    },
    /// The sink was closed: it takes no more events.
    #[error("the sink is closed")]
    Closed,
    /// The sink's worker ended without a reason: a bug.
    #[error("the sink stopped: {0} (please report this as a bug)")]
    Stopped(String),
}

/// A destination for events. What a caller may rely on, from every sink:
///
/// - **Accepted once, when durable, in any order.** For each event handed to
///   [`send`](Sink::send), the sink calls `accept` on the
///   [`Tracker`](crate::progress::Tracker) it was built with exactly once, and
///   only once its destination holds the event (AWS answered, the line was
///   written and flushed) or, refused for good, the dead-letter queue holds
///   it. Events are accepted in any order (batches of different groups finish
///   out of order); the tracker confirms an LSN only once everything before it
///   was accepted.
/// - **At least once.** An event handed over is accepted, or the sink fails
///   with a [`SinkError`]: nothing is dropped silently. After a crash, events
///   after the last confirmed LSN are sent again (FIFO destinations drop the
///   replays by their deduplication id).
/// - **Order per group.** Two events with the same `group_id` reach the
///   destination in the order they were sent; events of different groups may
///   overtake each other.
/// - **Bounded.** `send` waits while the sink holds as much as it may: memory
///   stays bounded whatever the transaction size.
/// - **Failure is final, and late.** Delivery runs behind `send`, so an `Err`
///   from any method may belong to an event handed over earlier; once a sink
///   has failed, every later call fails too.
pub trait Sink: Send {
    /// Hands over one event whose `seq` is registered with the tracker.
    /// Returns once the sink holds it, not once it is delivered (acceptance
    /// says that); waits while the sink is full. An `Err` may be about an
    /// earlier event; this one is then not held (nor accepted: the slot keeps it).
    fn send(&mut self, event: Event) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Hands over several events, in order, as [`send`](Sink::send) would one by
    /// one (a sink may take them at once: a backfill block's reads). On `Err`,
    /// some may be held and the rest are not.
    fn send_all(
        &mut self,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        async move {
            for event in events {
                self.send(event).await?;
            }
            Ok(())
        }
    }

    /// Nothing more for now (a transaction ended, or the stream is quiet):
    /// hands what is buffered to delivery without waiting for a full batch or
    /// chunk. Returns once it is handed over, **without waiting for delivery**
    /// (wait on [`Tracker::drained`](crate::progress::Tracker::drained) for
    /// that). Returns the sink's failure if it has failed, also with nothing
    /// buffered: the pipeline calls it on a timer to learn of a failure while
    /// the stream is quiet.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Stops taking events and waits until the sink is done with what it
    /// holds (delivered and accepted, or failed) and its worker has ended.
    /// Later calls of `send` and `flush` return [`SinkError::Closed`]. It waits
    /// as long as delivery does, retries included: bound it with a timeout
    /// (dropping the future leaves the worker to finish on its own, and a later
    /// `close` waits again). `Err`: the sink had failed.
    fn close(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Why a sink's worker (task or thread) stopped, once it has: set once by the
/// worker, reported to every later call. Cheap to clone (clones share it).
#[derive(Debug, Clone, Default)]
struct Failure(Arc<std::sync::OnceLock<SinkError>>);

impl Failure {
    /// Records why the worker stopped (the first reason stays).
    fn set(&self, e: SinkError) {
        let _ = self.0.set(e);
    }

    /// The recorded failure, if any.
    fn get(&self) -> Option<&SinkError> {
        self.0.get()
    }

    /// `Err` with the recorded failure, else `ok`.
    fn or(&self, ok: Result<(), SinkError>) -> Result<(), SinkError> {
        self.get().map_or(ok, |e| Err(e.clone()))
    }

    /// Why a call cannot go on: the recorded failure, else the sink is closed
    /// (not `open`), else `worker` ended without saying why.
    fn error(&self, open: bool, worker: &str) -> SinkError {
        match (self.get(), open) {
            (Some(e), _) => e.clone(),
            (None, false) => SinkError::Closed,
            (None, true) => SinkError::Stopped(format!("{worker} ended")),
        }
    }
}

/// An insert into `public.t` with idempotency key `k<seq>`, for the sinks' tests.
#[cfg(test)]
fn test_event(seq: u64, group: &str, payload: String) -> Event {
    let table = Arc::new(crate::event::Table::new(
        1,
        "public".into(),
        "t".into(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    ));
    Event {
        seq,
        commit_lsn: 1,
        commit_idx: seq,
        commit_time_micros: 0,
        action: change_event::Action::Insert,
        table,
        group_id: group.into(),
        idempotency_key: format!("k{seq}"),
        pks: String::from("[]"),
        payload,
        dedup_scope: None,
    }
}
