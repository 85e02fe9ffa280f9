//! Bodies offloaded to S3: a message whose body is an extended-client pointer
//! ([`change_event::PayloadPointer`], the format of AWS's SQS and SNS extended
//! client libraries) is replaced by the S3 object it points to, before
//! decoding, so your handler sees the whole change event, never the pointer.
//!
//! The S3 client is built on the first pointer, not at cold start: a function
//! that never receives one reads no settings and loads no certificates.
//! Failing to fetch an object (missing, access denied, S3 unreachable) is a
//! retryable failure of that record, reported with a one-line reason naming
//! the object (bucket and key, never its content). The request itself is
//! `crate::s3`: a signed GetObject, not the AWS SDK (see there why).
//!
//! The function's role needs `s3:GetObject` on the bucket (and `kms:Decrypt`
//! when the bucket encrypts with a customer-managed KMS key).

use std::fmt;
use std::sync::Arc;

use change_event::PayloadPointer;
use serde_json::Value;

use crate::error::DecodeError;
#[cfg(feature = "s3")]
use crate::s3::{self, GetError, S3Settings};

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
    /// `None`: read from the environment on the first pointer.
    #[cfg(feature = "s3")]
    settings: Option<S3Settings>,
    #[cfg(feature = "s3")]
    client: tokio::sync::OnceCell<s3::Client>,
    /// A client of the AWS SDK given by [`Payloads::with_s3_client`].
    #[cfg(feature = "aws-sdk-s3")]
    sdk: Option<aws_sdk_s3::Client>,
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
    /// Fetches as the function: region and credentials from the environment
    /// Lambda sets (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`; the endpoint from `AWS_ENDPOINT_URL_S3` or
    /// `AWS_ENDPOINT_URL`, see [`S3Settings::from_vars`]), read on the first
    /// pointer.
    pub fn from_environment() -> Self {
        Self::default()
    }

    /// Fetches with these settings (tests, an emulator, credentials of your own).
    #[cfg(feature = "s3")]
    pub fn with_s3(settings: S3Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: Some(settings),
                ..Inner::default()
            }),
        }
    }

    /// Fetches with an AWS SDK client (code that has one configured its own
    /// way). Needs the `aws-sdk-s3` feature, which links the SDK: about 8 MB
    /// more binary, which is why the default is [`Payloads::with_s3`]'s client.
    #[cfg(feature = "aws-sdk-s3")]
    pub fn with_s3_client(client: aws_sdk_s3::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                sdk: Some(client),
                ..Inner::default()
            }),
        }
    }

    /// Whether the S3 client exists yet (it is built on the first pointer).
    pub fn client_built(&self) -> bool {
        #[cfg(feature = "aws-sdk-s3")]
        if self.inner.sdk.is_some() {
            return true;
        }
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
        let failed = |reason: String| PayloadError::Fetch {
            bucket: pointer.bucket.clone(),
            key: pointer.key.clone(),
            reason,
        };
        #[cfg(feature = "aws-sdk-s3")]
        if let Some(client) = &self.inner.sdk {
            return sdk_fetch(client, pointer).await.map_err(failed);
        }
        let client = self
            .inner
            .client
            .get_or_try_init(|| async {
                let settings = match &self.inner.settings {
                    Some(settings) => settings.clone(),
                    None => S3Settings::from_vars(|name| std::env::var(name).ok())?,
                };
                s3::Client::new(settings)
            })
            .await
            .map_err(failed)?;
        client
            .get_object(&pointer.bucket, &pointer.key)
            .await
            .map_err(|error| {
                failed(match error {
                    GetError::Service { code, message } => reason_for(&code, message.as_deref()),
                    // Not an answer from S3: a timeout, DNS, a refused connection.
                    GetError::Transport(reason) => format!("S3 did not answer ({reason})"),
                    GetError::Request(reason) => reason,
                })
            })
    }

    #[cfg(not(feature = "s3"))]
    async fn fetch(&self, _pointer: &PayloadPointer) -> Result<Vec<u8>, PayloadError> {
        Err(PayloadError::Unsupported)
    }
}

/// A GetObject through the AWS SDK's client; the reason on failure.
#[cfg(feature = "aws-sdk-s3")]
async fn sdk_fetch(
    client: &aws_sdk_s3::Client,
    pointer: &PayloadPointer,
) -> Result<Vec<u8>, String> {
    use aws_sdk_s3::error::ProvideErrorMetadata;

    let object = client
        .get_object()
        .bucket(&pointer.bucket)
        .key(&pointer.key)
        .send()
        .await
        .map_err(|error| match error.code() {
            Some(code) => reason_for(code, error.message()),
            None => format!("S3 did not answer ({})", causes(&error)),
        })?;
    let body = object
        .body
        .collect()
        .await
        .map_err(|error| format!("the download broke off ({})", causes(&error)))?;
    Ok(body.into_bytes().to_vec())
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
        "PermanentRedirect" | "AuthorizationHeaderMalformed" => format!(
            "{code}: the bucket is in another region than the function's (AWS_REGION): \
             keep the bucket and the function in one region"
        ),
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
pub(crate) fn causes(error: &(dyn std::error::Error + 'static)) -> String {
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
