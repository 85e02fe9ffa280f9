//! One SQS batch in, one partial-failure report out.
//!
//! ```text
//!  SqsEvent ──► every record has a message id? ──no──► Err: the whole batch is retried
//!                  │ yes
//!                  ▼
//!  lanes:   standard queue: one lane per record         (no order)
//!           FIFO queue:     one lane per message group  (records in batch order)
//!                  │  up to `concurrency` lanes at a time
//!                  ▼
//!  in a lane, per record: body ─► JSON (unwrap SNS envelope) ─► TableEvent ─► handler
//!           first failure in a FIFO lane: that record and every later one of
//!           the group are reported; the rest of the group is never handed over
//!                  ▼
//!  SqsBatchResponse { batchItemFailures: [message ids, in batch order] }
//! ```
//!
//! The contract, for the Lambda event source mapping with
//! `FunctionResponseTypes: [ReportBatchItemFailures]`:
//! - Each record is decoded on its own: a malformed body fails that record
//!   only, logged with its message id and never its content.
//! - Every failure is reported by message id, so SQS redelivers exactly those;
//!   an empty identifier would make Lambda fail (and retry) the whole batch, so
//!   a record without an id fails the invocation up front, before any side effect.
//! - FIFO: within a group, a record is handed to the handler only if every
//!   earlier record of the group in this batch succeeded. The ones not handed
//!   over are reported failed, so the group is redelivered from the failure on,
//!   in order. Other groups go on. These are the semantics of the Powertools
//!   batch processors for Python, TypeScript and Java (`SqsFifoPartialProcessor`
//!   with `skip_group_on_error`).
//! - A permanent failure is reported like any other: the queue's redrive
//!   policy moves it to the DLQ after `maxReceiveCount` receives (in a FIFO
//!   queue the group waits behind it until then).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::stream::{self, StreamExt};
use lambda_runtime::Diagnostic;
use tracing::{error, info, info_span, warn, Instrument};

use crate::error::{DecodeError, HandlerError};
use crate::message::{parse_body, Message};
use crate::tables::TableEvent;

/// How a batch is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// How many lanes (standard queue: records; FIFO: message groups) run at
    /// the same time. 1 processes the batch strictly one record at a time.
    pub concurrency: NonZeroUsize,
}

impl BatchConfig {
    /// The default concurrency.
    pub const DEFAULT_CONCURRENCY: NonZeroUsize = match NonZeroUsize::new(8) {
        Some(n) => n,
        None => NonZeroUsize::MIN,
    };
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            concurrency: Self::DEFAULT_CONCURRENCY,
        }
    }
}

/// A batch that cannot be answered with a partial-failure report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A record has no (or an empty) message id, so it cannot be reported.
    #[error(
        "record {index} of the batch has no message id, so it cannot be reported as a \
         partial failure: failing the whole batch"
    )]
    MissingMessageId {
        /// 0-based position of the record in the batch.
        index: usize,
    },
}

impl From<BatchError> for Diagnostic {
    fn from(error: BatchError) -> Self {
        Diagnostic {
            error_type: match error {
                BatchError::MissingMessageId { .. } => "MissingMessageId".to_owned(),
            },
            error_message: error.to_string(),
        }
    }
}

/// Why one record failed.
#[derive(Debug)]
enum Failure {
    Decode(DecodeError),
    Handler(HandlerError),
}

/// Records that must be processed in order (a FIFO group), or a single record.
struct Lane {
    ordered: bool,
    records: Vec<(usize, String, SqsMessage)>,
}

/// Processes one SQS batch: decodes each record into a [`TableEvent`], hands
/// it to `handler` with its [`Message`], and reports the records that failed.
///
/// `handler` is your code (`handler::handle` in production, a recorder in
/// tests). See the module docs for the ordering and failure contract.
pub async fn process<F, Fut>(
    event: SqsEvent,
    config: &BatchConfig,
    handler: F,
) -> Result<SqsBatchResponse, BatchError>
where
    F: Fn(TableEvent, Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let total = event.records.len();
    let lanes = into_lanes(event.records)?;
    let handler = &handler;
    let mut failed: Vec<(usize, String)> = stream::iter(lanes)
        .map(|lane| run_lane(lane, handler))
        .buffer_unordered(config.concurrency.get())
        .flat_map(stream::iter)
        .collect()
        .await;
    failed.sort_unstable_by_key(|(index, _)| *index);

    if failed.is_empty() {
        info!(records = total, "batch processed");
    } else {
        warn!(
            records = total,
            failed = failed.len(),
            "batch processed with failures"
        );
    }
    let mut response = SqsBatchResponse::default();
    for (_, message_id) in failed {
        debug_assert!(!message_id.is_empty());
        response.add_failure(message_id);
    }
    Ok(response)
}

/// Checks every record has a message id, then groups the records into lanes:
/// one per FIFO message group (in batch order), one per standard record.
fn into_lanes(records: Vec<SqsMessage>) -> Result<Vec<Lane>, BatchError> {
    let mut lanes: Vec<Lane> = Vec::new();
    let mut groups: HashMap<(Option<String>, String), usize> = HashMap::new();
    let mut checked = Vec::with_capacity(records.len());
    for (index, mut record) in records.into_iter().enumerate() {
        match record.message_id.take() {
            Some(id) if !id.is_empty() => checked.push((index, id, record)),
            _ => return Err(BatchError::MissingMessageId { index }),
        }
    }
    for (index, id, record) in checked {
        match fifo_group(&record) {
            Some(group) => {
                let key = (record.event_source_arn.clone(), group);
                let lane = *groups.entry(key).or_insert_with(|| {
                    lanes.push(Lane {
                        ordered: true,
                        records: Vec::new(),
                    });
                    lanes.len() - 1
                });
                lanes[lane].records.push((index, id, record));
            }
            None => lanes.push(Lane {
                ordered: false,
                records: vec![(index, id, record)],
            }),
        }
    }
    Ok(lanes)
}

/// The message group of a FIFO record; `None` for a standard queue. A FIFO
/// record without a group id (never seen in practice) shares one lane with
/// the others like it, which keeps them in order.
fn fifo_group(record: &SqsMessage) -> Option<String> {
    if let Some(group) = record.attributes.get("MessageGroupId") {
        return Some(group.clone());
    }
    let fifo_queue = record
        .event_source_arn
        .as_deref()
        .is_some_and(|arn| arn.ends_with(".fifo"));
    fifo_queue.then(String::new)
}

/// Runs the records of one lane in order; returns the failed ones
/// (index in the batch, message id).
async fn run_lane<F, Fut>(lane: Lane, handler: &F) -> Vec<(usize, String)>
where
    F: Fn(TableEvent, Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut failed = Vec::new();
    let mut records = lane.records.into_iter();
    while let Some((index, message_id, record)) = records.next() {
        let span = info_span!("record", message_id = %message_id);
        let outcome = run_record(&message_id, &record, handler)
            .instrument(span.clone())
            .await;
        let Err(failure) = outcome else { continue };
        span.in_scope(|| log_failure(&failure));
        if lane.ordered {
            for (later, later_id, _) in records.by_ref() {
                warn!(
                    message_id = %later_id,
                    failed_message_id = %message_id,
                    "not processed: an earlier message of its FIFO group failed in this batch; \
                     reported as failed so the group is redelivered in order"
                );
                failed.push((later, later_id));
            }
        }
        failed.push((index, message_id));
    }
    failed
}

async fn run_record<F, Fut>(
    message_id: &str,
    record: &SqsMessage,
    handler: &F,
) -> Result<(), Failure>
where
    F: Fn(TableEvent, Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let body = record.body.as_deref().ok_or(DecodeError::MissingBody);
    let (event, envelope) = body.and_then(parse_body).map_err(Failure::Decode)?;
    let event = TableEvent::decode(event).map_err(Failure::Decode)?;
    let message = Message::new(message_id.to_owned(), record, envelope);
    handler(event, message).await.map_err(Failure::Handler)
}

fn log_failure(failure: &Failure) {
    match failure {
        Failure::Decode(error) => error!(
            %error,
            retryable = false,
            "cannot decode the message: reported as failed; after maxReceiveCount the \
             redrive policy moves it to the DLQ"
        ),
        Failure::Handler(error) if error.is_retryable() => warn!(
            %error,
            retryable = true,
            "handler failed: reported as failed, SQS redelivers it"
        ),
        Failure::Handler(error) => error!(
            %error,
            retryable = false,
            "handler failed permanently: reported as failed; after maxReceiveCount the \
             redrive policy moves it to the DLQ"
        ),
    }
}
