//! The walcast change event: the contract between the streamer and every consumer.
//!
//! One JSON object per row change, compatible with Sequin's message shape
//! (see `docs/change-event.md`). The streamer writes it; the Lambda
//! handler templates read it, typed by table:
//!
//! ```
//! use change_event::{Action, ChangeEvent};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct User { id: i64, name: String }
//!
//! let json = include_str!("../fixtures/insert.json");
//! let event: ChangeEvent<User> = serde_json::from_str(json).unwrap();
//! assert_eq!(event.action, Action::Insert);
//! assert_eq!(event.record.name, "alice");
//! assert_eq!(event.metadata.table_name, "users");
//! ```
//!
//! `ChangeEvent` with no type arguments keeps the record as a
//! [`serde_json::Value`] (column order and numeric digits preserved).
//!
//! An event too large for SQS or SNS travels through S3: the message body is
//! then a [`PayloadPointer`] in the format of AWS's extended client libraries.
#![warn(missing_docs)]

mod pointer;

pub use pointer::{
    MalformedPointer, PayloadPointer, LEGACY_POINTER_CLASS, LEGACY_SIZE_ATTRIBUTE, POINTER_CLASS,
    SIZE_ATTRIBUTE,
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON object: column name → value, in table column order.
pub type Row = Map<String, Value>;

/// One row change.
///
/// `R` is the record type (a user's struct for one table, or [`Value`]);
/// `C` is the type of `changes`, the old values of the columns an update
/// changed (by default a JSON object, since it holds only some columns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent<R = Value, C = Row> {
    /// The row after the change; for `delete`, the old row.
    pub record: R,
    /// `update` only: the old values of the columns that changed (`{}` when
    /// the table has no old tuple, i.e. REPLICA IDENTITY is not FULL);
    /// `null` for the other actions.
    pub changes: Option<C>,
    /// What happened to the row.
    pub action: Action,
    /// Where and when the change happened.
    pub metadata: Metadata,
}

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A new row.
    Insert,
    /// A changed row.
    Update,
    /// A removed row.
    Delete,
    /// A row sent by a backfill, not by a change.
    Read,
}

impl Action {
    /// The lowercase name used in JSON and in the `action` message attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Read => "read",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metadata of a change event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Schema of the changed table.
    pub table_schema: String,
    /// Name of the changed table.
    pub table_name: String,
    /// Commit time (RFC 3339, UTC, microseconds); for `read`, when the row was read.
    pub commit_timestamp: String,
    /// The transaction's commit LSN as an integer.
    pub commit_lsn: u64,
    /// 0-based position of the change within its transaction.
    pub commit_idx: u64,
    /// Base64 of `"<commit_lsn>:<commit_idx>"` (see [`idempotency_key`]).
    pub idempotency_key: String,
    /// Primary key values as strings, in key order.
    pub record_pks: Vec<String>,
    /// JSON set in the transaction with
    /// `pg_logical_emit_message(true, 'sequin:transaction_annotations.set', '{…}')`.
    pub transaction_annotations: Option<Value>,
    /// The source database's configured name.
    pub database_name: String,
    /// The sink that delivered the event.
    pub consumer: Consumer,
    /// The source database.
    pub database: Database,
}

impl Metadata {
    /// The idempotency key qualified by the source and the sink that sent the event:
    /// `"<database.id>/<consumer.id>/<idempotency_key>"`. An `idempotency_key` is
    /// unique only within one streamer's sink: two streamers (two slots, or two
    /// databases) feeding one queue can give two different changes the same key.
    /// Note this one instead, and give such streamers' sinks different names (or
    /// `sink.id`s).
    ///
    /// ```
    /// let event: change_event::ChangeEvent = serde_json::from_str(
    ///     r#"{"record": {"id": 1}, "changes": null, "action": "insert", "metadata": {
    ///         "table_schema": "public", "table_name": "users",
    ///         "commit_timestamp": "2024-03-21T15:30:00.127470Z", "commit_lsn": 1,
    ///         "commit_idx": 0, "idempotency_key": "MTowMA==", "record_pks": ["1"],
    ///         "transaction_annotations": null, "database_name": "app",
    ///         "consumer": {"id": "users_sqs", "name": "users_sqs", "annotations": {}},
    ///         "database": {"id": "app", "name": "app", "annotations": {},
    ///                      "database": "app", "hostname": "db"}}}"#,
    /// )
    /// .unwrap();
    /// assert_eq!(event.metadata.unique_key(), "app/users_sqs/MTowMA==");
    /// ```
    pub fn unique_key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.database.id, self.consumer.id, self.idempotency_key
        )
    }
}

/// The configured sink ("consumer" in Sequin's terms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    /// Stable identifier of the sink.
    pub id: String,
    /// Name of the sink.
    pub name: String,
    /// Free-form annotations from the configuration.
    #[serde(default)]
    pub annotations: Row,
}

/// The configured source database.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Database {
    /// Stable identifier of the source.
    pub id: String,
    /// Name of the source.
    pub name: String,
    /// Free-form annotations from the configuration.
    #[serde(default)]
    pub annotations: Row,
    /// The Postgres database name.
    pub database: String,
    /// The Postgres host name.
    pub hostname: String,
}

/// The idempotency key of a streamed change: base64 of `"<commit_lsn>:<commit_idx>"`.
pub fn idempotency_key(commit_lsn: u64, commit_idx: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{commit_lsn}:{commit_idx}"))
}

/// The idempotency key of a backfilled row: base64 of `"<backfill_id>:<pk1>:<pk2>…"`.
pub fn read_idempotency_key<I>(backfill_id: &str, pks: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut raw = String::with_capacity(backfill_id.len() + 32);
    raw.push_str(backfill_id);
    for pk in pks {
        raw.push(':');
        raw.push_str(pk.as_ref());
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Formats microseconds since the Unix epoch as RFC 3339 UTC with six
/// fractional digits, e.g. `2024-03-21T15:30:00.127470Z`.
pub fn format_timestamp_micros(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: [(&str, &str); 4] = [
        ("insert", include_str!("../fixtures/insert.json")),
        ("update", include_str!("../fixtures/update.json")),
        ("delete", include_str!("../fixtures/delete.json")),
        ("read", include_str!("../fixtures/read.json")),
    ];

    #[test]
    fn fixtures_round_trip_byte_for_byte() {
        for (name, text) in FIXTURES {
            let event: ChangeEvent = serde_json::from_str(text).expect(name);
            assert_eq!(event.action.as_str(), name);
            let pretty = serde_json::to_string_pretty(&event).expect(name) + "\n";
            assert_eq!(pretty, text, "{name}.json does not round-trip");
            let compact = serde_json::to_string(&event).expect(name);
            let reparsed: ChangeEvent = serde_json::from_str(&compact).expect(name);
            assert_eq!(reparsed, event);
        }
    }

    #[test]
    fn numeric_digits_survive() {
        let event: ChangeEvent = serde_json::from_str(FIXTURES[0].1).expect("insert");
        let out = serde_json::to_string(&event).expect("serialize");
        assert!(out.contains("\"balance\":12345678901234567890.123456789"));
    }

    #[test]
    fn typed_records_and_changes() {
        #[derive(Deserialize, Debug)]
        struct User {
            id: i64,
            name: String,
        }
        #[derive(Deserialize, Debug)]
        struct UserChanges {
            name: Option<String>,
        }
        let update: ChangeEvent<User, UserChanges> =
            serde_json::from_str(FIXTURES[1].1).expect("update");
        assert_eq!(update.record.id, 1);
        assert_eq!(update.record.name, "alicia");
        assert_eq!(
            update.changes.and_then(|c| c.name).as_deref(),
            Some("alice")
        );
        // Without REPLICA IDENTITY FULL a delete carries only the key columns
        // (the rest are null): decode deletes into a key type, or use Options.
        assert!(serde_json::from_str::<ChangeEvent<User>>(FIXTURES[2].1).is_err());
        #[derive(Deserialize, Debug)]
        struct UserKey {
            id: i64,
        }
        let delete: ChangeEvent<UserKey> = serde_json::from_str(FIXTURES[2].1).expect("delete");
        assert_eq!(delete.record.id, 1);
        assert_eq!(delete.action, Action::Delete);
        assert!(delete.changes.is_none());
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(123456789, 0), "MTIzNDU2Nzg5OjA=");
        assert_eq!(read_idempotency_key("bf1", &["1", "a"]), "YmYxOjE6YQ==");
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_timestamp_micros(1_711_035_000_127_470),
            "2024-03-21T15:30:00.127470Z"
        );
        assert_eq!(format_timestamp_micros(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_timestamp_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
