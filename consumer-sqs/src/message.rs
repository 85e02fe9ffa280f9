//! From an SQS record to what the handler sees: the body as JSON (with an SNS
//! envelope unwrapped), the table it belongs to, and the [`Message`] it came in.
//!
//! The body is parsed once into a [`serde_json::Value`]; routing reads
//! `metadata.table_schema`/`table_name` from it, then [`Table::decode`] turns
//! it into the record type of that table. `serde_json` is built with
//! `arbitrary_precision`, so `numeric` digits survive the detour.

use std::collections::HashMap;
use std::fmt;

use aws_lambda_events::sqs::SqsMessage;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::DecodeError;

/// The SQS message a change event came in, as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The SQS message id (never empty).
    pub message_id: String,
    /// FIFO queues: the message group (by default `"<schema>.<table>:<pk…>"`).
    /// It holds key values: do not log it.
    pub group_id: Option<String>,
    /// How many times SQS has delivered this message (1 on the first try).
    pub receive_count: Option<u32>,
    /// The walcast message attributes.
    pub attributes: Attributes,
    /// Whether the body was an SNS envelope (topic → queue without raw delivery).
    pub via_sns: bool,
}

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
    fn from_sqs(record: &SqsMessage) -> Self {
        let get = |name: &str| {
            record
                .message_attributes
                .get(name)
                .and_then(|attribute| attribute.string_value.clone())
        };
        Self {
            action: get("action"),
            table_schema: get("table_schema"),
            table_name: get("table_name"),
        }
    }

    fn from_envelope(envelope: &Envelope) -> Self {
        let get = |name: &str| {
            envelope
                .message_attributes
                .get(name)
                .map(|attribute| attribute.value.clone())
        };
        Self {
            action: get("action"),
            table_schema: get("table_schema"),
            table_name: get("table_name"),
        }
    }

    /// Each attribute from `self`, else from `other`.
    fn or(self, other: Self) -> Self {
        Self {
            action: self.action.or(other.action),
            table_schema: self.table_schema.or(other.table_schema),
            table_name: self.table_name.or(other.table_name),
        }
    }
}

impl Message {
    pub(crate) fn new(
        message_id: String,
        record: &SqsMessage,
        envelope: Option<Attributes>,
    ) -> Self {
        let attributes = Attributes::from_sqs(record);
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

/// An SNS notification as SQS receives it from a subscription without raw
/// message delivery: the change event is the string `Message`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope {
    #[serde(default)]
    message_attributes: HashMap<String, EnvelopeAttribute>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnvelopeAttribute {
    value: String,
}

/// Parses a message body; if it is an SNS envelope (`"Type": "Notification"`
/// with a string `"Message"`), parses the message inside instead and returns
/// the envelope's attributes too.
pub(crate) fn parse_body(body: &str) -> Result<(Value, Option<Attributes>), DecodeError> {
    let value: Value = serde_json::from_str(body).map_err(|e| DecodeError::not_json(&e))?;
    let is_envelope = value.get("Type").and_then(Value::as_str) == Some("Notification")
        && value.get("Message").is_some()
        && value.get("metadata").is_none();
    if !is_envelope {
        return Ok((value, None));
    }
    let Some(inner) = value.get("Message").and_then(Value::as_str) else {
        return Err(DecodeError::BadEnvelope);
    };
    let inner: Value = serde_json::from_str(inner).map_err(|e| DecodeError::not_json(&e))?;
    let envelope: Envelope = serde_path_to_error::deserialize(&value)
        .map_err(|e| DecodeError::shape("SNS envelope", &e))?;
    Ok((inner, Some(Attributes::from_envelope(&envelope))))
}

/// The table a change event belongs to, read from its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    schema: String,
    name: String,
}

#[derive(Deserialize)]
struct Probe {
    metadata: ProbeMetadata,
}

#[derive(Deserialize)]
struct ProbeMetadata {
    table_schema: String,
    table_name: String,
}

impl Table {
    /// Reads `metadata.table_schema` and `metadata.table_name` of a change event.
    pub fn of(event: &Value) -> Result<Self, DecodeError> {
        let probe: Probe = serde_path_to_error::deserialize(event)
            .map_err(|e| DecodeError::shape("change event", &e))?;
        Ok(Self {
            schema: probe.metadata.table_schema,
            name: probe.metadata.table_name,
        })
    }

    /// The schema, e.g. `public`.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name, e.g. `users`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decodes a change event of this table into `T` (typically
    /// `ChangeEvent<YourRecord>`); an error names the field path, not its value.
    pub fn decode<T: DeserializeOwned>(&self, event: Value) -> Result<T, DecodeError> {
        serde_path_to_error::deserialize(event).map_err(|e| {
            DecodeError::shape(format!("{self} event ({})", short_type_name::<T>()), &e)
        })
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// `change_event::ChangeEvent<consumer_sqs::tables::User>` → `ChangeEvent<User>`.
fn short_type_name<T>() -> String {
    fn flush(path: &mut String, out: &mut String) {
        out.push_str(path.rsplit("::").next().unwrap_or(path));
        path.clear();
    }
    let full = std::any::type_name::<T>();
    let (mut out, mut path) = (String::with_capacity(full.len()), String::new());
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else {
            flush(&mut path, &mut out);
            out.push(c);
        }
    }
    flush(&mut path, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_type_names() {
        assert_eq!(
            short_type_name::<change_event::ChangeEvent<Vec<String>>>(),
            "ChangeEvent<Vec<String>>"
        );
        assert_eq!(short_type_name::<u64>(), "u64");
    }

    #[test]
    fn a_plain_body_is_not_an_envelope() {
        let (value, envelope) =
            parse_body(r#"{"Type":"Notification","metadata":{}}"#).expect("a JSON object");
        assert!(envelope.is_none());
        assert!(value.get("metadata").is_some());
    }

    #[test]
    fn an_envelope_without_a_string_message_is_rejected() {
        assert_eq!(
            parse_body(r#"{"Type":"Notification","Message":{"record":1}}"#),
            Err(DecodeError::BadEnvelope)
        );
    }
}
