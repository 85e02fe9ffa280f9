//! The S3 payload pointer of AWS's extended client libraries
//! (`amazon-sqs-java-extended-client-lib`, `amazon-sns-java-extended-client-lib`,
//! the Python `amazon-sqs-extended-client`): when a message is too large for
//! SQS or SNS, its body is stored as an S3 object and the message carries a
//! pointer to it instead, with the [`SIZE_ATTRIBUTE`] message attribute.
//!
//! The body is Jackson's typed form of `PayloadS3Pointer`, a two-element array:
//!
//! ```json
//! ["software.amazon.payloadoffloading.PayloadS3Pointer",
//!  {"s3BucketName": "walcast-payloads", "s3Key": "walcast/0a1b…"}]
//! ```
//!
//! and `ExtendedPayloadSize` (DataType `Number`) holds the object's size in
//! bytes. The streamer writes exactly this, so the extended clients read
//! walcast's large events unchanged, and walcast-lambda reads theirs.
//!
//! ```
//! use change_event::PayloadPointer;
//!
//! let body = r#"["software.amazon.payloadoffloading.PayloadS3Pointer",
//!                {"s3BucketName":"b","s3Key":"k"}]"#;
//! let value: serde_json::Value = serde_json::from_str(body).unwrap();
//! let pointer = PayloadPointer::from_value(&value).unwrap().unwrap();
//! assert_eq!((pointer.bucket.as_str(), pointer.key.as_str()), ("b", "k"));
//! assert_eq!(PayloadPointer::from_value(&serde_json::json!({"record": {}})), None);
//! ```

use serde_json::Value;

/// The class name the current extended clients write (payload-offloading common lib).
pub const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
/// The class name older Java SQS extended clients wrote (still read by all of them).
pub const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";
/// The message attribute (DataType `Number`) with the offloaded body's size in bytes.
pub const SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The attribute older extended clients used instead of [`SIZE_ATTRIBUTE`].
pub const LEGACY_SIZE_ATTRIBUTE: &str = "SQSLargePayloadSize";

/// Where an offloaded message body is: an S3 object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPointer {
    /// `s3BucketName`.
    pub bucket: String,
    /// `s3Key`.
    pub key: String,
}

/// A body that names the pointer class but does not hold a bucket and a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedPointer;

impl std::fmt::Display for MalformedPointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the body is an S3 payload pointer without a string s3BucketName and s3Key \
             (expected [\"software.amazon.payloadoffloading.PayloadS3Pointer\", \
             {\"s3BucketName\": …, \"s3Key\": …}])",
        )
    }
}

impl std::error::Error for MalformedPointer {}

impl PayloadPointer {
    /// The pointer a message body holds: `None` when the body is not a
    /// pointer at all (a change event is an object, never an array), `Some(Err)`
    /// when it names the pointer class but lacks the bucket or the key.
    pub fn from_value(body: &Value) -> Option<Result<Self, MalformedPointer>> {
        let items = body.as_array()?;
        let class = items.first()?.as_str()?;
        if class != POINTER_CLASS && class != LEGACY_POINTER_CLASS {
            return None;
        }
        let field = |name: &str| {
            items
                .get(1)
                .and_then(|fields| fields.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Some(match (items.len(), field("s3BucketName"), field("s3Key")) {
            (2, Some(bucket), Some(key)) => Ok(Self { bucket, key }),
            _ => Err(MalformedPointer),
        })
    }

    /// The message body in the extended clients' format (compact JSON).
    pub fn to_body(&self) -> String {
        serde_json::json!([
            POINTER_CLASS,
            { "s3BucketName": self.bucket, "s3Key": self.key }
        ])
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_format_round_trips() {
        let text = include_str!("../fixtures/pointer.json");
        let value: Value = serde_json::from_str(text).expect("JSON");
        let pointer = PayloadPointer::from_value(&value)
            .expect("a pointer")
            .expect("well formed");
        assert_eq!(pointer.bucket, "walcast-payloads-123456789012");
        assert_eq!(pointer.key, "walcast/9f6c2d1e-5b7a-4c3d-8e9f-0a1b2c3d4e5f");
        let body = pointer.to_body();
        assert_eq!(body, serde_json::to_string(&value).expect("compact"));
        assert!(body.starts_with(r#"["software.amazon.payloadoffloading.PayloadS3Pointer",{"#));
    }

    #[test]
    fn the_legacy_class_is_read_and_broken_pointers_are_errors() {
        let legacy = serde_json::json!([LEGACY_POINTER_CLASS, {"s3BucketName": "b", "s3Key": "k"}]);
        assert!(matches!(PayloadPointer::from_value(&legacy), Some(Ok(_))));
        let broken = serde_json::json!([POINTER_CLASS, {"s3BucketName": "b"}]);
        assert_eq!(
            PayloadPointer::from_value(&broken),
            Some(Err(MalformedPointer))
        );
        assert_eq!(
            PayloadPointer::from_value(&serde_json::json!(["x", {}])),
            None
        );
        assert_eq!(PayloadPointer::from_value(&serde_json::json!([1, 2])), None);
    }
}
