//! The two ways a record can fail: it cannot be decoded ([`DecodeError`], never
//! worth retrying), or the handler says so ([`HandlerError`], retryable or not).
//!
//! Neither ever carries a column value: error text ends up in logs, in the
//! queue's failure reports and at on-failure destinations, and rows may hold
//! personal data.

/// Any error a handler wraps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the handler returns when it could not process an event.
///
/// - **SQS** ([`crate::sqs::process`]): both kinds are reported as a batch item
///   failure: the message goes back to the queue and, once it has been received
///   `maxReceiveCount` times, the queue's redrive policy moves it to the
///   dead-letter queue. The kind changes how loudly it is logged (`warn` for
///   retryable, `error` for permanent) and what an operator should do: wait, or
///   fix the code or data.
/// - **SNS** ([`crate::sns::process`]): both kinds fail the invocation: Lambda
///   retries an asynchronous invocation (`MaximumRetryAttempts`), then hands the
///   event to the function's on-failure destination or DLQ, where the error
///   type reads `HandlerError.Retryable` or `HandlerError.Permanent`.
///
/// Keep the message free of row values: say *what* failed, not with which data.
///
/// ```
/// use walcast_lambda::HandlerError;
///
/// fn store(total: f64) -> Result<(), HandlerError> {
///     if total < 0.0 {
///         // Retrying cannot fix the data: let it go to the DLQ.
///         return Err(HandlerError::permanent("order total is negative"));
///     }
///     // A client call that may time out:
///     std::fs::metadata("/").map_err(HandlerError::retryable)?;
///     Ok(())
/// }
///
/// assert!(!store(-1.0).unwrap_err().is_retryable());
/// assert_eq!(store(-1.0).unwrap_err().to_string(), "order total is negative");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Transient: throttling, a timeout, a dependency that is down. Retrying
    /// the same event later may succeed.
    #[error("{0}")]
    Retryable(BoxError),
    /// Definite: the event can never be processed as it is (a row your code
    /// cannot accept, a bug). Retrying will not help; it belongs in the DLQ.
    #[error("{0}")]
    Permanent(BoxError),
}

impl HandlerError {
    /// A transient failure: `HandlerError::retryable("orders API timed out")`,
    /// or `.map_err(HandlerError::retryable)` on a client call.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self::Retryable(error.into())
    }

    /// A failure that retrying will not fix.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }

    /// Whether processing the same event again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

/// A record or message that is not a change event this function can read.
///
/// The text names what was being read, the field path and what was expected,
/// never the value found: serde's own messages quote values (`invalid type:
/// string "alice@example.com", expected i64`), so they are reduced before they
/// get here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The SQS record has no body.
    #[error("the message has no body")]
    MissingBody,
    /// The message is not valid JSON.
    #[error("the message is not valid JSON ({category} error at line {line}, column {column})")]
    NotJson {
        /// `syntax`, `eof` or `data`.
        category: &'static str,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The body is an SNS envelope whose `Message` is not a string.
    #[error("the body is an SNS notification whose Message is not a string")]
    BadEnvelope,
    /// The body names the S3 payload pointer class but lacks the bucket or the key.
    #[error("{}", change_event::MalformedPointer)]
    MalformedPointer,
    /// The body is an SNS subscription message, not a notification.
    #[error("the message is an SNS {kind}, not a change event: {fix}")]
    SubscriptionMessage {
        /// `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
        kind: &'static str,
        /// What to do about it.
        fix: &'static str,
    },
    /// The JSON does not have the shape the target type needs.
    #[error("{target} does not match the JSON at `{path}`: {reason}")]
    Shape {
        /// What was being decoded, e.g. `public.users event (ChangeEvent<User>)`
        /// or `SQS record`.
        target: String,
        /// Path of the field that did not match, e.g. `record.id`.
        path: String,
        /// What was wrong, without the value: e.g. `invalid type, expected i64`.
        reason: String,
    },
}

impl DecodeError {
    /// Describes a JSON syntax error by position only.
    pub(crate) fn not_json(error: &serde_json::Error) -> Self {
        let category = match error.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        Self::NotJson {
            category,
            line: error.line(),
            column: error.column(),
        }
    }

    /// Describes a shape error by path and expectation, dropping any value
    /// serde quoted in its message.
    pub(crate) fn shape(
        target: impl Into<String>,
        error: &serde_path_to_error::Error<serde_json::Error>,
    ) -> Self {
        let path = error.path().to_string();
        Self::Shape {
            target: target.into(),
            path: if path.is_empty() {
                ".".to_owned()
            } else {
                path
            },
            reason: reason_without_values(&error.inner().to_string()),
        }
    }
}

/// Keeps the parts of a serde message that come from the schema (field
/// names, the expected type) and drops those that come from the data.
fn reason_without_values(message: &str) -> String {
    // serde_json appends " at line L column C"; from a `Value` there is none.
    let message = message.split(" at line ").next().unwrap_or(message);
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if message.starts_with(kind) {
            // "invalid type: string \"alice\", expected i64": the found value is
            // between ':' and ", expected"; the expectation is the schema's.
            return match message.rfind(", expected ") {
                Some(at) => format!("{kind}{}", &message[at..]),
                None => kind.to_owned(),
            };
        }
    }
    if message.starts_with("unknown variant") {
        // "unknown variant `upsert`, expected one of `insert`, ...": the variant is data.
        return match message.find(", expected ") {
            Some(at) => format!("unknown variant{}", &message[at..]),
            None => "unknown variant".to_owned(),
        };
    }
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        // Field names are the schema's.
        return message.to_owned();
    }
    "the data does not match the type".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_never_quote_values() {
        assert_eq!(
            reason_without_values(r#"invalid type: string "alice@example.com", expected i64"#),
            "invalid type, expected i64"
        );
        assert_eq!(
            reason_without_values("invalid value: integer `-3`, expected u64 at line 1 column 9"),
            "invalid value, expected u64"
        );
        assert_eq!(
            reason_without_values(
                "unknown variant `upsert`, expected one of `insert`, `update`, `delete`, `read`"
            ),
            "unknown variant, expected one of `insert`, `update`, `delete`, `read`"
        );
        assert_eq!(
            reason_without_values("missing field `metadata`"),
            "missing field `metadata`"
        );
        assert_eq!(
            reason_without_values("custom error mentioning secret-value"),
            "the data does not match the type"
        );
    }

    #[test]
    fn retryable_or_not() {
        assert!(HandlerError::retryable("timed out").is_retryable());
        assert!(!HandlerError::permanent("negative total").is_retryable());
        assert_eq!(
            HandlerError::permanent("negative total").to_string(),
            "negative total"
        );
    }
}
