//! SNS envelopes, and the message attributes the streamer sets.
//!
//! A queue subscribed to a topic *without* raw message delivery receives the
//! SNS envelope as the body (`{"Type":"Notification","Message":"…",
//! "MessageAttributes":{…}}`, with or without `Signature` fields): the change
//! event is the string `Message`, and the attributes travel in the envelope.
//! With raw delivery the body is the change event itself and the attributes
//! are SQS message attributes. A queue subscribed across accounts also
//! receives the topic's `SubscriptionConfirmation`: that is not a change
//! event, and is reported as such (with what to do), not as broken JSON.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::DecodeError;

/// The message attributes the streamer sets on every message (the same
/// values as in the body, so filters work without parsing it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `insert`, `update`, `delete` or `read`.
    pub action: Option<String>,
    /// Schema of the changed table.
    pub table_schema: Option<String>,
    /// Name of the changed table.
    pub table_name: Option<String>,
}

impl Attributes {
    /// The three attributes, each looked up with `get` by name.
    pub(crate) fn from_fn(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            action: get("action"),
            table_schema: get("table_schema"),
            table_name: get("table_name"),
        }
    }

    /// Each attribute from `self`, else from `other`.
    pub(crate) fn or(self, other: Self) -> Self {
        Self {
            action: self.action.or(other.action),
            table_schema: self.table_schema.or(other.table_schema),
            table_name: self.table_name.or(other.table_name),
        }
    }
}

/// Decoded records back to raw JSON, for `SqsBatch`/`SnsBatch` built from
/// the runtime's event types. (They always serialize; a `null` record would
/// fail alone for want of a message id.)
pub(crate) fn raw_records<T: serde::Serialize>(records: Vec<T>) -> Vec<Value> {
    records
        .into_iter()
        .map(|record| serde_json::to_value(record).unwrap_or(Value::Null))
        .collect()
}

/// An SNS notification as SQS receives it from a subscription without raw
/// message delivery. Only what is needed is read: signatures may be absent.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    #[serde(default)]
    message_attributes: HashMap<String, EnvelopeAttribute>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnvelopeAttribute {
    #[serde(rename = "Type", default)]
    data_type: Option<String>,
    value: String,
}

/// An SQS body, parsed: the change event (JSON, not yet decoded) and, when
/// it came in an SNS envelope, the envelope's attributes.
pub(crate) struct Body {
    /// The message inside (the body itself without an envelope).
    pub(crate) message: Value,
    /// The envelope's String attributes, if the body was an envelope.
    pub(crate) envelope: Option<Attributes>,
}

/// Parses a message body; if it is an SNS envelope (`"Type": "Notification"`
/// with a string `"Message"`), parses the message inside instead and returns
/// the envelope's attributes too.
pub(crate) fn parse_body(body: &str) -> Result<Body, DecodeError> {
    let value: Value = serde_json::from_str(body).map_err(|e| DecodeError::not_json(&e))?;
    let sns_type = if value.get("metadata").is_none() {
        value.get("Type").and_then(Value::as_str)
    } else {
        None
    };
    match sns_type {
        Some("Notification") if value.get("Message").is_some() => {}
        Some("SubscriptionConfirmation") if value.get("Token").is_some() => {
            return Err(DecodeError::SubscriptionMessage {
                kind: "SubscriptionConfirmation",
                fix: "confirm the subscription (open its SubscribeURL, or `aws sns \
                      confirm-subscription` with its Token), then delete this message",
            })
        }
        Some("UnsubscribeConfirmation") if value.get("Token").is_some() => {
            return Err(DecodeError::SubscriptionMessage {
                kind: "UnsubscribeConfirmation",
                fix: "the queue was unsubscribed from the topic; delete this message",
            })
        }
        _ => {
            return Ok(Body {
                message: value,
                envelope: None,
            })
        }
    }
    let Some(inner) = value.get("Message").and_then(Value::as_str) else {
        return Err(DecodeError::BadEnvelope);
    };
    let message: Value = serde_json::from_str(inner).map_err(|e| DecodeError::not_json(&e))?;
    let envelope: Envelope = serde_path_to_error::deserialize(&value)
        .map_err(|e| DecodeError::shape("SNS envelope", &e))?;
    let attributes = Attributes::from_fn(|name| {
        envelope
            .message_attributes
            .get(name)
            .filter(|a| a.data_type.as_deref().is_none_or(|t| t == "String"))
            .map(|a| a.value.clone())
    });
    Ok(Body {
        message,
        envelope: Some(attributes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_body_is_not_an_envelope() {
        let body = parse_body(r#"{"Type":"Notification","metadata":{}}"#).expect("a JSON object");
        assert!(body.envelope.is_none());
        assert!(body.message.get("metadata").is_some());
    }

    #[test]
    fn an_envelope_without_a_string_message_is_rejected() {
        assert_eq!(
            parse_body(r#"{"Type":"Notification","Message":{"record":1}}"#).err(),
            Some(DecodeError::BadEnvelope)
        );
    }

    #[test]
    fn attributes_of_other_types_are_not_taken_as_strings() {
        let body = parse_body(
            r#"{"Type":"Notification","Message":"{}","MessageAttributes":{
                "action":{"Type":"Binary","Value":"aW5zZXJ0"},
                "table_name":{"Type":"String","Value":"users"}}}"#,
        )
        .expect("an envelope");
        let attributes = body.envelope.expect("attributes");
        assert_eq!(attributes.action, None);
        assert_eq!(attributes.table_name.as_deref(), Some("users"));
    }
}
