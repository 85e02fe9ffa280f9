//! From an SNS record to what the handler sees: the message decoded as JSON,
//! the table it belongs to, and the [`Notification`] it came in.
//!
//! The message is parsed once into a [`serde_json::Value`]; routing reads
//! `metadata.table_schema`/`table_name` from it, then [`Table::decode`] turns
//! it into the record type of that table. `serde_json` is built with
//! `arbitrary_precision`, so `numeric` digits survive the detour.

use std::fmt;

use aws_lambda_events::sns::SnsMessage;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::DecodeError;

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

/// The message attributes the streamer sets on every message (the same
/// values as in the body, so subscription filter policies work without
/// parsing it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `insert`, `update`, `delete` or `read`.
    pub action: Option<String>,
    /// Schema of the changed table.
    pub table_schema: Option<String>,
    /// Name of the changed table.
    pub table_name: Option<String>,
}

impl Notification {
    pub(crate) fn new(message: &SnsMessage) -> Self {
        let get = |name: &str| {
            message
                .message_attributes
                .get(name)
                .filter(|attribute| attribute.data_type == "String")
                .map(|attribute| attribute.value.clone())
        };
        Self {
            message_id: message.message_id.clone(),
            topic_arn: message.topic_arn.clone(),
            attributes: Attributes {
                action: get("action"),
                table_schema: get("table_schema"),
                table_name: get("table_name"),
            },
        }
    }
}

/// Parses an SNS `Message` as JSON.
pub(crate) fn parse_message(message: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(message).map_err(|e| DecodeError::not_json(&e))
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

/// `change_event::ChangeEvent<consumer_sns::tables::User>` → `ChangeEvent<User>`.
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
    }
}
