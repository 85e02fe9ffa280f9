//! One SNS invocation: each notification decoded into a [`TableEvent`] and
//! handed to the handler, in order.
//!
//! ```text
//!  SnsEvent ──► per record, in order:
//!                 Sns.Message ─► JSON ─► TableEvent ─► handler
//!                      │ any failure (decode or handler)
//!                      ▼
//!               Err: the invocation fails
//!                 → Lambda retries it (async invocation, MaximumRetryAttempts)
//!                 → then the on-failure destination / DLQ gets the event
//! ```
//!
//! SNS invokes Lambda with one record per event, so "the invocation fails"
//! and "the record fails" are the same thing. There is no partial-failure
//! report for SNS: the only way to keep a change event is to fail.

use std::future::Future;

use aws_lambda_events::sns::SnsEvent;
use lambda_runtime::Diagnostic;
use tracing::{error, info, info_span, warn, Instrument};

use crate::error::{DecodeError, HandlerError};
use crate::message::{parse_message, Notification};
use crate::tables::TableEvent;

/// Why an invocation failed. The text names the message id and what went
/// wrong, never a row value; it is what the on-failure destination records.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// The message is not a change event this function can read. Retrying
    /// will not help: look for it at the on-failure destination.
    #[error("SNS message {message_id}: cannot decode it: {error}")]
    Decode {
        /// The SNS message id.
        message_id: String,
        /// What is wrong with it.
        error: DecodeError,
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
            Self::Handler { error, .. } => error.is_retryable(),
        }
    }
}

impl From<NotificationError> for Diagnostic {
    fn from(error: NotificationError) -> Self {
        let error_type = match &error {
            NotificationError::Decode { .. } => "DecodeError",
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

/// Processes one SNS invocation: decodes each record's message into a
/// [`TableEvent`] and hands it to `handler` with its [`Notification`]. Stops
/// at the first failure and returns it, so Lambda retries the invocation.
///
/// `handler` is your code (`handler::handle` in production, a recorder in tests).
pub async fn process<F, Fut>(event: SnsEvent, handler: F) -> Result<(), NotificationError>
where
    F: Fn(TableEvent, Notification) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    for record in event.records {
        let notification = Notification::new(&record.sns);
        let message_id = notification.message_id.clone();
        let span = info_span!("notification", message_id = %message_id);
        let outcome = async {
            let event = parse_message(&record.sns.message)
                .and_then(TableEvent::decode)
                .map_err(|error| NotificationError::Decode {
                    message_id: message_id.clone(),
                    error,
                })?;
            handler(event, notification)
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
