//! Sinks: where events go.
//!
//! The contract every sink keeps (the delivery guarantees of the project rest on it):
//!
//! - **At least once.** An event handed to [`Sink::send`] is delivered, or the
//!   sink fails with a [`SinkError`] and the streamer stops. Nothing is dropped
//!   silently. After a crash, events after the last confirmed LSN are sent
//!   again (FIFO destinations drop the replays by their deduplication id).
//! - **Order per group.** Two events with the same `group_id` are delivered in
//!   the order they were sent; events of different groups may overtake each other.
//! - **Accepted means durable.** A sink reports an event accepted to the
//!   [`Tracker`](crate::progress::Tracker) only once its destination holds it
//!   (AWS answered, the line is written and flushed). Only accepted events
//!   let the LSN confirmed to Postgres move past them.
//! - **Bounded.** `send` waits when the sink holds as much as it may: memory
//!   stays bounded whatever the transaction size.

pub mod aws;
mod memory;
pub mod sns;
pub mod sqs;
mod stdout;

pub use aws::AwsSink;
pub use memory::MemorySink;
pub use sns::SnsTopic;
pub use sqs::SqsQueue;
pub use stdout::StdoutSink;

use std::future::Future;

use crate::event::Event;

/// A sink failed for good: the streamer stops rather than lose an event.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed and cannot be retried.
    #[error("sink failed: {0}")]
    Fatal(String),
}

/// A destination for events. See the module documentation for the contract.
pub trait Sink: Send {
    /// Takes one event whose `seq` is registered with the tracker. Returns once
    /// the sink holds it; waits while the sink is full.
    fn send(&mut self, event: Event) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// No more events for now (a transaction ended, or the stream is idle):
    /// deliver what is buffered without waiting for a full batch.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}
