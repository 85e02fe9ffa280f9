//! Large events through S3, as AWS's extended client libraries do it: the body
//! is put in a bucket and the message carries a [`PayloadPointer`] to it (with
//! the `ExtendedPayloadSize` attribute), which those libraries and
//! walcast-lambda read back. See `docs/change-event.md`.
//!
//! An event goes through S3 when its message (body and attributes, as AWS
//! counts them) is over the destination's limit or over `sink.s3.threshold_bytes`.
//! The object's key is `sink.s3.key_prefix` followed by the SHA-256 of the body:
//! sending an event again after a crash writes the same object and the same
//! pointer, so a FIFO destination's deduplication still drops the replay.
//! The upload is part of the delivery: it is retried like a send, and the event
//! is accepted (its LSN confirmable) only once S3 took the object *and* the
//! destination took the pointer.

use change_event::PayloadPointer;
use sha2::{Digest, Sha256};

use super::destinations::sdk_config;
use super::fault::Fault;
use super::SinkError;
use crate::config::{S3Config, SinkConfig};

/// The bucket large events go to.
#[derive(Debug, Clone)]
pub struct PayloadStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    key_prefix: String,
    threshold: Option<usize>,
    /// `sink.endpoint_url` is set (an unreachable endpoint is that setting's fault).
    endpoint_set: bool,
}

impl PayloadStore {
    /// A client for `sink.s3`, with the sink's region, endpoint and credentials
    /// (`main` is the queue URL or topic ARN, for the region). With
    /// `sink.endpoint_url` set (an emulator), path-style URLs.
    pub async fn connect(
        sink: &SinkConfig,
        s3: &S3Config,
        main: &str,
    ) -> Result<PayloadStore, SinkError> {
        let conf = sdk_config(sink, main).await?;
        let conf = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(sink.endpoint_url.is_some())
            .build();
        Ok(PayloadStore {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: s3.bucket.clone(),
            key_prefix: s3.key_prefix.clone(),
            threshold: s3.threshold_bytes,
            endpoint_set: sink.endpoint_url.is_some(),
        })
    }

    /// `s3://bucket/prefix`, for logs and errors.
    pub fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key_prefix)
    }

    /// Whether a message of `size` bytes goes through S3, given the destination's `limit`.
    pub fn wants(&self, size: usize, limit: usize) -> bool {
        size > limit || self.threshold.is_some_and(|t| size > t)
    }

    /// The pointer for `body` (its key is the body's SHA-256).
    pub fn pointer(&self, body: &str) -> PayloadPointer {
        PayloadPointer {
            bucket: self.bucket.clone(),
            key: format!("{}{}", self.key_prefix, hex::encode(Sha256::digest(body))),
        }
    }

    /// `PutObject` of `body` at `pointer`.
    pub async fn put(&self, pointer: &PayloadPointer, body: &str) -> Result<(), Fault> {
        self.client
            .put_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .content_type("application/json")
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .map(|_| ())
            .map_err(Fault::from_sdk)
    }

    /// Checks the bucket takes objects with these credentials: puts a small
    /// object, `<key_prefix>walcast-check` (the publisher may only `PutObject`,
    /// so nothing else can be asked). One line naming `sink.s3.bucket` on failure.
    pub async fn check(&self) -> Result<String, SinkError> {
        let probe = PayloadPointer {
            bucket: self.bucket.clone(),
            key: format!("{}walcast-check", self.key_prefix),
        };
        match self
            .put(&probe, "walcast: the streamer may write here")
            .await
        {
            Ok(()) => Ok(format!("S3 bucket {} takes objects", self.bucket)),
            Err(fault @ Fault::Unreachable(_)) if self.endpoint_set => Err(SinkError::Setting {
                setting: "sink.endpoint_url",
                reason: format!("S3 bucket {}: {fault}", self.bucket),
            }),
            Err(fault) => Err(SinkError::Setting {
                setting: "sink.s3.bucket",
                reason: format!(
                    "S3 bucket {} does not take objects ({fault}): check that it exists and \
                     that the publisher may s3:PutObject into it",
                    self.bucket
                ),
            }),
        }
    }
}
