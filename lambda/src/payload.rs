//! Bodies offloaded to S3: a message whose body is an extended-client pointer
//! ([`change_event::PayloadPointer`], the format of AWS's SQS and SNS extended
//! client libraries) is replaced by the S3 object it points to, before
//! decoding, so your handler sees the whole change event, never the pointer.
//!
//! The S3 client is built on the first pointer, not at cold start: a function
//! that never receives one never loads an AWS configuration. Failing to fetch
//! an object (missing, access denied, S3 unreachable) is a retryable failure
//! of that record, reported with a one-line reason naming the object (bucket
//! and key, never its content).
//!
//! The function's role needs `s3:GetObject` on the bucket (and `kms:Decrypt`
//! when the bucket encrypts with a customer-managed KMS key).

use std::fmt;
use std::sync::Arc;

use change_event::PayloadPointer;
use serde_json::Value;

use crate::error::DecodeError;

/// Where offloaded bodies are fetched from. Cheap to clone (clones share the
/// client).
///
/// ```
/// use walcast_lambda::Payloads;
///
/// // In `main`: nothing is loaded until a pointer arrives.
/// let payloads = Payloads::from_environment();
/// assert!(!payloads.client_built());
/// ```
#[derive(Clone, Default)]
pub struct Payloads {
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    #[cfg(feature = "s3")]
    client: tokio::sync::OnceCell<aws_sdk_s3::Client>,
}

impl fmt::Debug for Payloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payloads")
            .field("client_built", &self.client_built())
            .finish()
    }
}

/// Why an offloaded body could not be fetched. Retryable: the record is
/// reported failed and delivered again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// S3 did not hand over the object.
    #[error("cannot fetch the offloaded body s3://{bucket}/{key}: {reason}")]
    Fetch {
        /// The pointer's bucket.
        bucket: String,
        /// The pointer's key.
        key: String,
        /// The error code and what to do, e.g. `NoSuchKey: …`.
        reason: String,
    },
    /// The library was built without S3 support.
    #[error(
        "the body is an S3 payload pointer, but walcast-lambda was built without its `s3` \
         feature: enable it (it is on by default)"
    )]
    Unsupported,
}

/// Why a message could not be turned into a change event.
pub(crate) enum Unresolved {
    Decode(DecodeError),
    Payload(PayloadError),
}

impl Payloads {
    /// Fetches with a client built from the environment (`aws_config`'s
    /// defaults: the function's role and region) on the first pointer.
    pub fn from_environment() -> Self {
        Self::default()
    }

    /// Fetches with `client` (tests, or a client configured your way).
    #[cfg(feature = "s3")]
    pub fn with_s3_client(client: aws_sdk_s3::Client) -> Self {
        let inner = Inner {
            client: tokio::sync::OnceCell::new_with(Some(client)),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether the S3 client exists yet (it is built on the first pointer).
    pub fn client_built(&self) -> bool {
        #[cfg(feature = "s3")]
        return self.inner.client.initialized();
        #[cfg(not(feature = "s3"))]
        return false;
    }

    /// The change event a message holds: the message itself, or, when it is
    /// a payload pointer, the S3 object it points to, parsed.
    pub(crate) async fn resolve(&self, message: Value) -> Result<Value, Unresolved> {
        let pointer = match PayloadPointer::from_value(&message) {
            None => return Ok(message),
            Some(Ok(pointer)) => pointer,
            Some(Err(_)) => return Err(Unresolved::Decode(DecodeError::MalformedPointer)),
        };
        let bytes = self.fetch(&pointer).await.map_err(Unresolved::Payload)?;
        serde_json::from_slice(&bytes).map_err(|e| Unresolved::Decode(DecodeError::not_json(&e)))
    }

    #[cfg(feature = "s3")]
    async fn fetch(&self, pointer: &PayloadPointer) -> Result<Vec<u8>, PayloadError> {
        use aws_sdk_s3::error::ProvideErrorMetadata;

        let client = self
            .inner
            .client
            .get_or_init(|| async {
                let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                aws_sdk_s3::Client::new(&config)
            })
            .await;
        let failed = |reason: String| PayloadError::Fetch {
            bucket: pointer.bucket.clone(),
            key: pointer.key.clone(),
            reason,
        };
        let object = client
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
            .map_err(|error| {
                failed(match error.code() {
                    Some(code) => reason_for(code, error.message()),
                    // Not an answer from S3: a timeout, DNS, a refused connection.
                    None => format!("S3 did not answer ({})", causes(&error)),
                })
            })?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|error| failed(format!("the download broke off ({})", causes(&error))))?;
        Ok(body.into_bytes().to_vec())
    }

    #[cfg(not(feature = "s3"))]
    async fn fetch(&self, _pointer: &PayloadPointer) -> Result<Vec<u8>, PayloadError> {
        Err(PayloadError::Unsupported)
    }
}

/// An S3 error code, with what it means here and what to do.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn reason_for(code: &str, message: Option<&str>) -> String {
    match code {
        "NoSuchKey" => "NoSuchKey: the object is gone (deleted, or expired by the bucket's \
                        lifecycle rule before the message was handled: keep the expiry longer \
                        than the queue's retention and the DLQ's)"
            .to_owned(),
        "NoSuchBucket" => "NoSuchBucket: the bucket does not exist (is it the streamer's \
                           sink.s3.bucket, in this region?)"
            .to_owned(),
        "AccessDenied" | "Forbidden" => format!(
            "{code}: the function's role may not read it: grant s3:GetObject on the bucket \
             (and kms:Decrypt for a customer-managed KMS key)"
        ),
        _ => match message {
            Some(message) => format!("{code}: {}", one_line(message)),
            None => code.to_owned(),
        },
    }
}

/// An error and its sources, on one line: `dispatch failure: io error: …`.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = one_line(&error.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// `text` on one line.
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_what_to_do() {
        assert!(reason_for("NoSuchKey", None).contains("lifecycle"));
        assert!(reason_for("AccessDenied", Some("Access Denied")).contains("s3:GetObject"));
        assert_eq!(
            reason_for("SlowDown", Some("Please reduce\nyour request rate.")),
            "SlowDown: Please reduce your request rate."
        );
    }
}
