//! Integration tests, compiled as one binary.
//!
//! - `sqs_batch`: ordering and partial-failure semantics on the templates'
//!   events, with a recording handler.
//! - `shapes`: every payload shape in `events/` (AWS's docs and public
//!   reports: batching-window nulls, Binary/Number attributes, SNS envelopes
//!   with and without signatures, raw delivery, confirmations, fair queues,
//!   unreadable records) and generated big batches.
//! - `sns`: direct SNS invocations: order, failure kinds, unreadable records.
//! - `templates`: both templates copied out of the workspace still build.

mod shapes;
mod sns;
mod sqs_batch;
mod support;
mod templates;
