//! One SQS batch in, one partial-failure report out.
//!
//! ```text
//!  SqsBatch (the invocation, records kept as raw JSON)
//!     │  every record has a message id? ──no──► Err: the whole batch is retried
//!     ▼ yes
//!  lanes:   standard queue: one lane per record         (no order)
//!           FIFO queue:     one lane per message group  (records in batch order)
//!                  │  up to `concurrency` lanes at a time
//!                  ▼
//!  in a lane, per record: raw JSON ─► SqsMessage ─► body ─► JSON (unwrap SNS envelope)
//!                         ─► S3 pointer? fetch the object ─► your Route type (TableEvent) ─► handler
//!           first failure in a FIFO lane: that record and every later one of
//!           the group are reported; the rest of the group is never handed over
//!                  ▼
//!  SqsBatchResponse { batchItemFailures: [message ids, in batch order] }
//! ```
//!
//! The contract, for the Lambda event source mapping with
//! `FunctionResponseTypes: [ReportBatchItemFailures]`:
//! - Each record is decoded on its own, from the raw invocation JSON: a record
//!   the event types cannot read (say a number where SQS sends a string) or a
//!   malformed body fails that record only, logged with its message id and
//!   never its content. (The runtime's own `SqsEvent` would reject the whole
//!   invocation before any record is handled.) `"stringListValues": null` and
//!   `"binaryListValues": null` in a message attribute, which AWS sends at
//!   times, are read as empty lists.
//! - Every failure is reported by message id, so SQS redelivers exactly those;
//!   an empty identifier would make Lambda fail (and retry) the whole batch, so
//!   a record without an id fails the invocation up front, before any side effect.
//! - FIFO is a property of the queue: its ARN (`eventSourceARN`) ends in
//!   `.fifo`. Within a group, a record is handed to the handler only if every
//!   earlier record of the group in this batch succeeded. The ones not handed
//!   over are reported failed, so the group is redelivered from the failure on,
//!   in order. Other groups go on. These are the semantics of the Powertools
//!   batch processors (`SqsFifoPartialProcessor` with `skip_group_on_error`).
//! - A standard queue's records carry a `MessageGroupId` too when it is a *fair
//!   queue* (or fed by a standard SNS topic that forwards it): the attribute
//!   does not make the queue ordered, so each record still fails alone.
//! - A body offloaded to S3 (an extended-client pointer, [`crate::Payloads`]) is
//!   fetched before decoding; a failed fetch is a retryable failure of that record.
//! - A permanent failure is reported like any other: the queue's redrive
//!   policy moves it to the DLQ after `maxReceiveCount` receives (in a FIFO
//!   queue the group waits behind it until then).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;

pub use aws_lambda_events::sqs::SqsBatchResponse;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use futures_util::stream::{self, StreamExt};
use lambda_runtime::Diagnostic;
use serde::Deserialize;
use serde_json::Value;
use tracing::{error, error_span, info, warn, Instrument};

use crate::envelope::{parse_body, Attributes};
use crate::error::{DecodeError, HandlerError};
use crate::payload::{PayloadError, Payloads, Unresolved};
use crate::table::{decode_event, Route};

/// An SQS invocation as Lambda sends it, each record kept as raw JSON so that
/// one record the event types cannot read fails alone. Use it as the event
/// type of the function (`LambdaEvent<SqsBatch>`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SqsBatch {
    /// The records, undecoded.
    #[serde(rename = "Records", default)]
    pub records: Vec<Value>,
}

impl From<SqsEvent> for SqsBatch {
    /// The records of an already decoded event (tests, or code that has one).
    fn from(event: SqsEvent) -> Self {
        Self {
            records: crate::envelope::raw_records(event.records),
        }
    }
}

/// The SQS message a change event came in, as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The SQS message id (never empty).
    pub message_id: String,
    /// The message group (by default `"<schema>.<table>:<pk…>"`): set on FIFO
    /// queues, and on fair queues, where it does not mean order. It holds key
    /// values: do not log it.
    pub group_id: Option<String>,
    /// How many times SQS has delivered this message (1 on the first try).
    pub receive_count: Option<u32>,
    /// The walcast message attributes.
    pub attributes: Attributes,
    /// Whether the body was an SNS envelope (topic → queue without raw delivery).
    pub via_sns: bool,
}

impl Message {
    fn new(message_id: String, record: &SqsMessage, envelope: Option<Attributes>) -> Self {
        let attributes = Attributes::from_fn(|name| {
            record
                .message_attributes
                .get(name)
                .and_then(|attribute| attribute.string_value.clone())
        });
        Self {
            message_id,
            group_id: record.attributes.get("MessageGroupId").cloned(),
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|count| count.parse().ok()),
            via_sns: envelope.is_some(),
            attributes: match envelope {
                Some(inner) => attributes.or(inner),
                None => attributes,
            },
        }
    }
}

/// How a batch is processed.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Lanes (standard: records; FIFO: message groups) handled at the same time.
    pub concurrency: NonZeroUsize,
    /// Where bodies offloaded to S3 are fetched from.
    pub payloads: Payloads,
}

impl BatchConfig {
    /// 8 lanes at a time.
    pub const DEFAULT_CONCURRENCY: NonZeroUsize = match NonZeroUsize::new(8) {
        Some(n) => n,
        None => unreachable!(),
    };
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            concurrency: Self::DEFAULT_CONCURRENCY,
            payloads: Payloads::from_environment(),
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
    Payload(PayloadError),
    Handler(HandlerError),
}

impl From<Unresolved> for Failure {
    fn from(error: Unresolved) -> Self {
        match error {
            Unresolved::Decode(error) => Self::Decode(error),
            Unresolved::Payload(error) => Self::Payload(error),
        }
    }
}

/// One record of the batch: its position, id and raw JSON.
struct Record {
    index: usize,
    message_id: String,
    raw: Value,
}

/// Records that must be processed in order (a FIFO group), or a single record.
struct Lane {
    ordered: bool,
    records: Vec<Record>,
}

/// Processes one SQS batch: decodes each record into `E` (your [`Route`]
/// type), hands it to `handler` with its [`Message`], and reports the
/// records that failed. See the module docs for the ordering and failure
/// contract.
///
/// ```
/// use change_event::ChangeEvent;
/// use walcast_lambda::sqs::{process, BatchConfig, Message, SqsBatch};
/// use walcast_lambda::HandlerError;
///
/// async fn handle(event: ChangeEvent, message: Message) -> Result<(), HandlerError> {
///     // Your code: `event.record` is the row as JSON here; use your own
///     // `Route` type (the template's `TableEvent`) for typed records.
///     let _ = (event.metadata.idempotency_key, message.message_id);
///     Ok(())
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let batch: SqsBatch = serde_json::from_str(r#"{"Records": [
///     {"messageId": "m1", "body": "{", "attributes": {},
///      "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:changes"}
/// ]}"#).unwrap();
/// let response = process(batch, &BatchConfig::default(), handle).await.unwrap();
/// // The malformed body is reported, by its message id.
/// assert_eq!(response.batch_item_failures[0].item_identifier, "m1");
/// # });
/// ```
pub async fn process<E, F, Fut>(
    batch: impl Into<SqsBatch>,
    config: &BatchConfig,
    handler: F,
) -> Result<SqsBatchResponse, BatchError>
where
    E: Route,
    F: Fn(E, Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let records = batch.into().records;
    let total = records.len();
    let lanes = into_lanes(records)?;
    let (handler, payloads) = (&handler, &config.payloads);
    let mut failed: Vec<(usize, String)> = stream::iter(lanes)
        .map(|lane| run_lane(lane, payloads, handler))
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
fn into_lanes(records: Vec<Value>) -> Result<Vec<Lane>, BatchError> {
    let mut checked = Vec::with_capacity(records.len());
    for (index, mut raw) in records.into_iter().enumerate() {
        null_lists_as_empty(&mut raw);
        match raw.get("messageId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => checked.push(Record {
                index,
                message_id: id.to_owned(),
                raw,
            }),
            _ => return Err(BatchError::MissingMessageId { index }),
        }
    }
    let mut lanes: Vec<Lane> = Vec::new();
    let mut groups: HashMap<(String, String), usize> = HashMap::new();
    for record in checked {
        match fifo_group(&record.raw) {
            Some(key) => {
                let lane = *groups.entry(key).or_insert_with(|| {
                    lanes.push(Lane {
                        ordered: true,
                        records: Vec::new(),
                    });
                    lanes.len() - 1
                });
                lanes[lane].records.push(record);
            }
            None => lanes.push(Lane {
                ordered: false,
                records: vec![record],
            }),
        }
    }
    Ok(lanes)
}

/// `"stringListValues": null` and `"binaryListValues": null` in the record's
/// message attributes (AWS sends them at times; `SqsMessageAttribute` wants a
/// list) made empty lists.
fn null_lists_as_empty(raw: &mut Value) {
    let Some(attributes) = raw
        .get_mut("messageAttributes")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for attribute in attributes.values_mut().filter_map(Value::as_object_mut) {
        for field in ["stringListValues", "binaryListValues"] {
            if let Some(value @ Value::Null) = attribute.get_mut(field) {
                *value = Value::Array(Vec::new());
            }
        }
    }
}

/// The lane key (queue ARN, message group) of a record from a FIFO queue;
/// `None` for a standard queue, fair queues included. Read from the raw
/// record, so that even a record that cannot be decoded keeps its group's
/// order. A FIFO record without a group id (never seen in practice) shares
/// one lane with the others like it, which keeps them in order.
fn fifo_group(raw: &Value) -> Option<(String, String)> {
    let arn = raw.get("eventSourceARN").and_then(Value::as_str)?;
    if !arn.ends_with(".fifo") {
        return None;
    }
    let group = raw
        .get("attributes")
        .and_then(|a| a.get("MessageGroupId"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some((arn.to_owned(), group.to_owned()))
}

/// Runs the records of one lane in order; returns the failed ones
/// (index in the batch, message id).
async fn run_lane<E, F, Fut>(lane: Lane, payloads: &Payloads, handler: &F) -> Vec<(usize, String)>
where
    E: Route,
    F: Fn(E, Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut failed = Vec::new();
    let mut records = lane.records.into_iter();
    while let Some(record) = records.next() {
        // At ERROR level, so it is on whatever the log level: a warning or error
        // (the handler's own too) names its message even with AWS_LAMBDA_LOG_LEVEL=WARN.
        let span = error_span!("record", message_id = %record.message_id);
        let outcome = run_record(&record, payloads, handler)
            .instrument(span.clone())
            .await;
        let Err(failure) = outcome else { continue };
        span.in_scope(|| log_failure(&failure));
        if lane.ordered {
            for later in records.by_ref() {
                warn!(
                    message_id = %later.message_id,
                    failed_message_id = %record.message_id,
                    "not processed: an earlier message of its FIFO group failed in this batch; \
                     reported as failed so the group is redelivered in order"
                );
                failed.push((later.index, later.message_id));
            }
        }
        failed.push((record.index, record.message_id));
    }
    failed
}

async fn run_record<E, F, Fut>(
    record: &Record,
    payloads: &Payloads,
    handler: &F,
) -> Result<(), Failure>
where
    E: Route,
    F: Fn(E, Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let sqs: SqsMessage = serde_path_to_error::deserialize(&record.raw)
        .map_err(|e| Failure::Decode(DecodeError::shape("SQS record", &e)))?;
    let body = sqs.body.as_deref().ok_or(DecodeError::MissingBody);
    let body = body.and_then(parse_body).map_err(Failure::Decode)?;
    let event = payloads.resolve(body.message).await?;
    let event = decode_event::<E>(event).map_err(Failure::Decode)?;
    let message = Message::new(record.message_id.clone(), &sqs, body.envelope);
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
        Failure::Payload(error) => warn!(
            %error,
            retryable = true,
            "the offloaded body was not fetched: reported as failed, SQS redelivers it"
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
