//! Routing by table: [`Table`] reads `metadata.table_schema`/`table_name` of a
//! change event, and a [`Route`] type (the template's `TableEvent`) turns the
//! event into the record type of its table.
//!
//! The event is parsed once into a [`serde_json::Value`]; routing reads the
//! table from it, then [`Table::decode`] turns it into the record type.
//! `serde_json` is built with `arbitrary_precision`, so `numeric` digits
//! survive the detour.

use std::fmt;

use change_event::ChangeEvent;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::DecodeError;

/// What a change event is decoded into before the handler sees it: usually
/// an enum with one variant per table (the templates' `TableEvent`), or
/// [`ChangeEvent<R>`] when every table has the same record type.
///
/// ```
/// use change_event::ChangeEvent;
/// use serde::Deserialize;
/// use walcast_lambda::{DecodeError, Route, Table};
///
/// #[derive(Deserialize)]
/// struct User {
///     id: i64,
///     email: Option<String>,
/// }
///
/// enum TableEvent {
///     Users(ChangeEvent<User>),
///     Other(ChangeEvent),
/// }
///
/// impl Route for TableEvent {
///     fn route(table: &Table, event: serde_json::Value) -> Result<Self, DecodeError> {
///         Ok(match (table.schema(), table.name()) {
///             ("public", "users") => Self::Users(table.decode(event)?),
///             _ => Self::Other(table.decode(event)?),
///         })
///     }
/// }
///
/// let body = serde_json::json!({
///     "record": {"id": 1, "email": null}, "changes": null, "action": "delete",
///     "metadata": {"table_schema": "public", "table_name": "users",
///         "commit_timestamp": "2024-03-21T15:30:00.127470Z", "commit_lsn": 1,
///         "commit_idx": 0, "idempotency_key": "MTow", "record_pks": ["1"],
///         "transaction_annotations": null, "database_name": "app",
///         "consumer": {"id": "c", "name": "users_sqs", "annotations": {}},
///         "database": {"id": "d", "name": "app", "annotations": {},
///                      "database": "app", "hostname": "db"}}
/// });
/// let Ok(TableEvent::Users(change)) = walcast_lambda::decode_event::<TableEvent>(body) else {
///     panic!("routed to users");
/// };
/// assert_eq!(change.record.id, 1);
/// ```
pub trait Route: Sized {
    /// Decodes `event`, a change event of `table`, into `Self`; usually
    /// `table.decode(event)` into the variant of that table.
    fn route(table: &Table, event: Value) -> Result<Self, DecodeError>;
}

/// Every table into the same record type `R` (`ChangeEvent` alone: the record as JSON).
impl<R: DeserializeOwned> Route for ChangeEvent<R> {
    fn route(table: &Table, event: Value) -> Result<Self, DecodeError> {
        table.decode(event)
    }
}

/// Decodes a change event (JSON) into `E`: reads its table, then routes it.
pub fn decode_event<E: Route>(event: Value) -> Result<E, DecodeError> {
    let table = Table::of(&event)?;
    E::route(&table, event)
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
}
