//! One SNS invocation: each notification decoded into your [`Route`] type
//! and handed to the handler, in order.
//!
//! ```text
//!  SnsBatch (records kept as raw JSON) ──► per record, in order:
//!                 raw JSON ─► SnsRecord ─► Sns.Message ─► JSON ─► S3 pointer? fetch
//!                 ─► TableEvent ─► handler
//!                      │ any failure (decode or handler)
//!                      ▼
//!               Err: the invocation fails
//!                 → Lambda retries it (async invocation, MaximumRetryAttempts)
//!                 → then the on-failure destination / DLQ gets the event
//! ```
//!
//! SNS invokes Lambda with one record per event, so "the invocation fails"
//! and "the record fails" are the same thing. There is no partial-failure
//! report for SNS: the only way to keep a change event is to fail. Records
//! are decoded one by one from the raw invocation, so a record the event
//! types cannot read fails with its message id and the field at fault
//! (`DecodeError`), not as the runtime's anonymous `DeserializeError`.

use std::future::Future;

use aws_lambda_events::sns::{SnsMessage, SnsRecord};
use lambda_runtime::Diagnostic;
use serde::Deserialize;
use serde_json::Value;
use tracing::{error, error_span, info, warn, Instrument};

use crate::envelope::Attributes;
use crate::error::{DecodeError, HandlerError};
use crate::payload::{PayloadError, Payloads, Unresolved};
use crate::table::{decode_event, Route};

/// An SNS invocation as Lambda sends it, each record kept as raw JSON. Use it
/// as the event type of the function (`LambdaEvent<SnsBatch>`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SnsBatch {
    /// The records, undecoded.
    #[serde(rename = "Records", default)]
    pub records: Vec<Value>,
}

impl From<aws_lambda_events::sns::SnsEvent> for SnsBatch {
    /// The records of an already decoded event (tests, or code that has one).
    fn from(event: aws_lambda_events::sns::SnsEvent) -> Self {
        Self {
            records: crate::envelope::raw_records(event.records),
        }
    }
}

/// The SNS notification a change event came in, as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The SNS message id.
    pub message_id: String,
    /// The topic it was published to.
    pub topic_arn: String,
    /// The walcast message attributes.
    pub attributes: Attributes,
}

impl Notification {
    fn new(message: &SnsMessage) -> Self {
        Self {
            message_id: message.message_id.clone(),
            topic_arn: message.topic_arn.clone(),
            attributes: Attributes::from_fn(|name| {
                message
                    .message_attributes
                    .get(name)
                    .filter(|attribute| attribute.data_type == "String")
                    .map(|attribute| attribute.value.clone())
            }),
        }
    }
}

/// Why an invocation failed. The text names the message id and what went
/// wrong, never a row value; it is what the on-failure destination records.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// The message is not a change event this function can read. Retrying
    /// will not help: look for it at the on-failure destination.
    #[error("SNS message {message_id}: cannot decode it: {error}")]
    Decode {
        /// The SNS message id (`<none>` when the record has none).
        message_id: String,
        /// What is wrong with it.
        error: DecodeError,
    },
    /// The message's body is offloaded to S3 and could not be fetched.
    /// Retryable: Lambda's retries may find it.
    #[error("SNS message {message_id}: {error}")]
    Payload {
        /// The SNS message id.
        message_id: String,
        /// Why the object was not fetched.
        error: PayloadError,
    },
    /// The handler returned an error.
    #[error("SNS message {message_id}: handler failed: {error}")]
    Handler {
        /// The SNS message id.
        message_id: String,
        /// The handler's error.
        error: HandlerError,
    },
}

impl NotificationError {
    /// Whether processing the same event again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Decode { .. } => false,
            Self::Payload { .. } => true,
            Self::Handler { error, .. } => error.is_retryable(),
        }
    }
}

impl From<NotificationError> for Diagnostic {
    fn from(error: NotificationError) -> Self {
        let error_type = match &error {
            NotificationError::Decode { .. } => "DecodeError",
            NotificationError::Payload { .. } => "PayloadError",
            NotificationError::Handler { error, .. } if error.is_retryable() => {
                "HandlerError.Retryable"
            }
            NotificationError::Handler { .. } => "HandlerError.Permanent",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Processes one SNS invocation: decodes each record's message into `E`
/// (your [`Route`] type; a body offloaded to S3 is fetched from `payloads`
/// first) and hands it to `handler` with its [`Notification`]. Stops at the first failure and returns it, so Lambda
/// retries the invocation.
///
/// ```
/// use change_event::ChangeEvent;
/// use walcast_lambda::sns::{process, Notification, NotificationError, SnsBatch};
/// use walcast_lambda::{HandlerError, Payloads};
///
/// async fn handle(_event: ChangeEvent, _n: Notification) -> Result<(), HandlerError> {
///     Ok(())
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let batch: SnsBatch = serde_json::from_str(r#"{"Records": [{"Sns": {"MessageId": "n1"}}]}"#).unwrap();
/// let error = process(batch, &Payloads::from_environment(), handle).await.unwrap_err();
/// assert!(matches!(error, NotificationError::Decode { .. }));
/// assert!(error.to_string().starts_with("SNS message n1: cannot decode it: SNS record"));
/// # });
/// ```
pub async fn process<E, F, Fut>(
    batch: impl Into<SnsBatch>,
    payloads: &Payloads,
    handler: F,
) -> Result<(), NotificationError>
where
    E: Route,
    F: Fn(E, Notification) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    for raw in batch.into().records {
        let message_id = raw
            .get("Sns")
            .and_then(|sns| sns.get("MessageId"))
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_owned();
        // At ERROR level, so it is on whatever the log level (see sqs.rs).
        let span = error_span!("notification", message_id = %message_id);
        let decode = |error| NotificationError::Decode {
            message_id: message_id.clone(),
            error,
        };
        let outcome = async {
            let record: SnsRecord = serde_path_to_error::deserialize(&raw)
                .map_err(|e| decode(DecodeError::shape("SNS record", &e)))?;
            let message: Value = serde_json::from_str(&record.sns.message)
                .map_err(|e| decode(DecodeError::not_json(&e)))?;
            let event = payloads
                .resolve(message)
                .await
                .map_err(|error| match error {
                    Unresolved::Decode(error) => decode(error),
                    Unresolved::Payload(error) => NotificationError::Payload {
                        message_id: message_id.clone(),
                        error,
                    },
                })?;
            let event = decode_event::<E>(event).map_err(decode)?;
            handler(event, Notification::new(&record.sns))
                .await
                .map_err(|error| NotificationError::Handler {
                    message_id: message_id.clone(),
                    error,
                })
        }
        .instrument(span.clone())
        .await;
        if let Err(failure) = outcome {
            span.in_scope(|| log_failure(&failure));
            return Err(failure);
        }
    }
    info!("notifications processed");
    Ok(())
}

fn log_failure(failure: &NotificationError) {
    let retryable = failure.is_retryable();
    let error: &dyn std::error::Error = match failure {
        NotificationError::Decode { error, .. } => error,
        NotificationError::Payload { error, .. } => error,
        NotificationError::Handler { error, .. } => error,
    };
    if retryable {
        warn!(
            %error,
            retryable,
            "handler failed: failing the invocation, Lambda retries it"
        );
    } else {
        error!(
            %error,
            retryable,
            "cannot process the message: failing the invocation; after Lambda's retries \
             the on-failure destination gets it"
        );
    }
}
