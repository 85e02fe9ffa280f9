//! Integration tests, compiled as one binary.
//!
//! - `sqs_batch`: ordering and partial-failure semantics on the templates'
//!   events, with a recording handler.
//! - `shapes`: every payload shape in `events/` (AWS's docs and public
//!   reports: batching-window nulls, Binary/Number attributes, SNS envelopes
//!   with and without signatures, raw delivery, confirmations, fair queues,
//!   unreadable records) and generated big batches.
//! - `pointers`: bodies offloaded to S3, resolved against fauxqs (SQS, SNS envelope, direct SNS),
//!   and an https endpoint with an untrusted certificate refused.
//! - `sns`: direct SNS invocations: order, failure kinds, unreadable records.
//! - `templates`: both templates copied out of the workspace still build.
//! - `without_s3` (`--no-default-features`): a pointer fails its record, saying why.

#[cfg(feature = "s3")]
mod pointers;
mod shapes;
mod sns;
mod sqs_batch;
mod support;
mod templates;
#[cfg(not(feature = "s3"))]
mod without_s3;
