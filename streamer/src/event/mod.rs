//! Change events: a decoded row change plus its table and transaction,
//! written as the JSON of `docs/change-event.md`.
//!
//! The JSON is written straight into one `String` per event; the parts that
//! never change (the source and sink metadata) are rendered once at start-up
//! and the per-table parts once per Relation message.

mod value;

pub use value::{write_str, write_value, TypeKind, ValueError};

use std::sync::Arc;

use change_event::Action;
use sha2::{Digest, Sha256};

use crate::replication::{Datum, OldTuple, Tuple};

/// A table as the stream last described it (Relation message + catalog).
#[derive(Debug, Clone)]
pub struct Table {
    /// Relation OID.
    pub id: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// Indices of the primary key columns, in key order (`record_pks`).
    pub primary_key: Vec<usize>,
    /// Indices of the columns that make the FIFO message group (default: the primary key).
    pub group_key: Vec<usize>,
    /// `schema.table`, for logs, metrics and message attributes.
    pub qualified: String,
    /// `"metadata":{"table_schema":…,"table_name":…,"commit_timestamp":`, rendered once.
    metadata_head: String,
    /// About the size of this table's last event body (its buffer's first capacity).
    payload_hint: SizeHint,
}

/// A size that grows and shrinks with what is measured, shared without locks.
#[derive(Debug, Default)]
struct SizeHint(std::sync::atomic::AtomicUsize);

impl Clone for SizeHint {
    fn clone(&self) -> Self {
        SizeHint(self.get().into())
    }
}

impl SizeHint {
    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes a size: kept when over the hint or under half of it (few writes).
    fn note(&self, len: usize) {
        let hint = self.get();
        if len > hint || len < hint / 2 {
            self.0
                .store(len + len / 8, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A column of a [`Table`].
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// How its values are written.
    pub kind: TypeKind,
    /// Part of the replica identity key.
    pub identity: bool,
    /// `"name":`, rendered once.
    json_key: String,
}

impl Column {
    /// A column.
    pub fn new(name: String, kind: TypeKind, identity: bool) -> Self {
        let mut json_key = String::with_capacity(name.len() + 3);
        write_str(&mut json_key, &name);
        json_key.push(':');
        Column {
            name,
            kind,
            identity,
            json_key,
        }
    }
}

impl Table {
    /// A table. `group_key` empty means: group by the primary key.
    pub fn new(
        id: u32,
        schema: String,
        name: String,
        columns: Vec<Column>,
        primary_key: Vec<usize>,
        group_key: Vec<usize>,
    ) -> Self {
        let mut metadata_head = String::from("\"metadata\":{\"table_schema\":");
        write_str(&mut metadata_head, &schema);
        metadata_head.push_str(",\"table_name\":");
        write_str(&mut metadata_head, &name);
        metadata_head.push_str(",\"commit_timestamp\":");
        let group_key = if group_key.is_empty() {
            primary_key.clone()
        } else {
            group_key
        };
        Table {
            id,
            qualified: format!("{schema}.{name}"),
            schema,
            name,
            columns,
            primary_key,
            group_key,
            metadata_head,
            payload_hint: SizeHint::default(),
        }
    }
}

/// One change event, ready for a sink.
#[derive(Debug, Clone)]
pub struct Event {
    /// Position in the stream, assigned by the progress tracker.
    pub seq: u64,
    /// Commit LSN of the transaction.
    pub commit_lsn: u64,
    /// Position within the transaction.
    pub commit_idx: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// The kind of change.
    pub action: Action,
    /// The table.
    pub table: Arc<Table>,
    /// FIFO `MessageGroupId`: `schema.table:pk…`, or its SHA-256 when SQS would refuse it.
    pub group_id: String,
    /// The idempotency key (the FIFO `MessageDeduplicationId`: see [`Event::deduplication_id`]).
    pub idempotency_key: String,
    /// `record_pks` as JSON (`["1","a"]`): the row's identity.
    pub pks: String,
    /// The event's JSON.
    pub payload: String,
    /// What makes the deduplication id this streamer's (and this sink's) own: set
    /// by the sink's lane to `<source id>/<slot>`, with `/<sink name>` when another
    /// sink of the streamer sends to the same FIFO destination (see
    /// [`crate::fanout::dedup_scope`]). Else a FIFO destination two streamers or two
    /// sinks share would drop one's event as a replay of the other's.
    pub dedup_scope: Option<std::sync::Arc<str>>,
}

impl Event {
    /// The FIFO `MessageDeduplicationId`: the idempotency key, or its SHA-256 hex when
    /// over the 128 characters SQS and SNS accept (a `read` of a long key); with a
    /// [`dedup_scope`](Event::dedup_scope), the SHA-256 hex of `scope:key`.
    pub fn deduplication_id(&self) -> std::borrow::Cow<'_, str> {
        match &self.dedup_scope {
            Some(scope) => {
                let mut h = Sha256::new();
                h.update(scope.as_bytes());
                h.update(b":");
                h.update(self.idempotency_key.as_bytes());
                std::borrow::Cow::Owned(hex::encode(h.finalize()))
            }
            None if self.idempotency_key.len() <= 128 => {
                std::borrow::Cow::Borrowed(&self.idempotency_key)
            }
            None => std::borrow::Cow::Owned(hex::encode(Sha256::digest(
                self.idempotency_key.as_bytes(),
            ))),
        }
    }
}

/// The transaction the next changes belong to.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Commit LSN (known at Begin).
    pub commit_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    commit_timestamp_json: String,
    /// JSON set by `sequin:transaction_annotations.set`, for the changes after it.
    pub annotations: Option<String>,
    /// The next change's `commit_idx`.
    pub next_idx: u64,
}

/// Microseconds between 1970-01-01 and 2000-01-01 (the Postgres epoch).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

impl Transaction {
    /// A transaction from its Begin message (`commit_time` in Postgres epoch microseconds).
    pub fn begin(commit_lsn: u64, commit_time: i64) -> Self {
        let commit_time_micros = commit_time + PG_EPOCH_OFFSET_MICROS;
        let mut commit_timestamp_json = String::with_capacity(30);
        write_str(
            &mut commit_timestamp_json,
            &change_event::format_timestamp_micros(commit_time_micros),
        );
        Transaction {
            commit_lsn,
            commit_time_micros,
            commit_timestamp_json,
            annotations: None,
            next_idx: 0,
        }
    }
}

impl Transaction {
    /// The next change's `commit_idx`, and counts it.
    pub fn take_idx(&mut self) -> u64 {
        let idx = self.next_idx;
        self.next_idx += 1;
        idx
    }
}

/// A row change as decoded from the stream.
#[derive(Debug, Clone, Copy)]
pub enum RowChange<'a> {
    /// Insert.
    Insert(&'a Tuple<'a>),
    /// Update, with the old image when the stream carried one.
    Update(Option<&'a OldTuple<'a>>, &'a Tuple<'a>),
    /// Delete.
    Delete(&'a OldTuple<'a>),
}

impl RowChange<'_> {
    /// The event's action.
    pub fn action(&self) -> Action {
        match self {
            RowChange::Insert(_) => Action::Insert,
            RowChange::Update(..) => Action::Update,
            RowChange::Delete(_) => Action::Delete,
        }
    }
}

/// Why a change could not become an event. Definite: it needs a person.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The tuple does not match the relation the stream described.
    #[error("{table}: tuple has {got} columns, relation has {want}")]
    ColumnCount {
        /// The table.
        table: String,
        /// Columns in the tuple.
        got: usize,
        /// Columns in the relation.
        want: usize,
    },
    /// A value's text did not parse as its type (never includes the value).
    #[error("{table}.{column}: {source}")]
    Value {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What was wrong.
        source: ValueError,
    },
    /// Binary-format values are never requested; receiving one is a bug.
    #[error("{table}.{column}: unexpected binary value")]
    Binary {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
}

/// Writes events. Holds the parts of the JSON that never change.
#[derive(Debug, Clone)]
pub struct EventBuilder {
    /// `,"database_name":…,"consumer":{…},"database":{…}}}`
    suffix: String,
    /// The sink's `metadata.consumer`.
    consumer: serde_json::Value,
    /// Whether events get a [`Event::group_id`] (a sink without message groups,
    /// stdout, needs none: it is left empty).
    groups: bool,
}

const UNCHANGED_TOAST: &str = "\"unchanged_toast\"";

impl EventBuilder {
    /// A builder for one source and sink.
    pub fn new(consumer: &change_event::Consumer, database: &change_event::Database) -> Self {
        let mut suffix = String::from(",\"database_name\":");
        write_str(&mut suffix, &database.name);
        suffix.push_str(",\"consumer\":");
        suffix.push_str(&serde_json::to_string(consumer).unwrap_or_else(|_| "null".into()));
        suffix.push_str(",\"database\":");
        suffix.push_str(&serde_json::to_string(database).unwrap_or_else(|_| "null".into()));
        suffix.push_str("}}");
        EventBuilder {
            suffix,
            consumer: serde_json::to_value(consumer).unwrap_or_default(),
            groups: true,
        }
    }

    /// This builder, leaving [`Event::group_id`] empty: for a sink that has no
    /// message groups (stdout).
    pub fn without_groups(mut self) -> Self {
        self.groups = false;
        self
    }

    /// The sink's `metadata.consumer`, as JSON.
    pub fn consumer_json(&self) -> serde_json::Value {
        self.consumer.clone()
    }

    /// Builds the event for one change and advances the transaction's `commit_idx`.
    pub fn build(
        &self,
        tx: &mut Transaction,
        table: &Arc<Table>,
        change: RowChange<'_>,
    ) -> Result<Event, EventError> {
        let idx = tx.take_idx();
        self.build_at(tx, idx, table, change, &View::ALL)
    }

    /// Builds the event for change `idx` of the transaction as `view` sees the table
    /// (one sink's columns and group); the caller numbers the changes
    /// ([`Transaction::take_idx`]), so that every sink's event of a change has one index.
    pub fn build_at(
        &self,
        tx: &Transaction,
        idx: u64,
        table: &Arc<Table>,
        change: RowChange<'_>,
        view: &View,
    ) -> Result<Event, EventError> {
        let (action, record, old) = match change {
            RowChange::Insert(new) => (Action::Insert, new, None),
            RowChange::Update(old, new) => (Action::Update, new, old),
            RowChange::Delete(old) => (Action::Delete, old.tuple(), None),
        };
        let at = Position {
            commit_lsn: tx.commit_lsn,
            commit_time_micros: tx.commit_time_micros,
            timestamp_json: &tx.commit_timestamp_json,
            idx,
            annotations: tx.annotations.as_deref(),
            backfill: None,
        };
        self.write(table, action, record, old, at, view)
    }

    /// Builds the `read` event of a row a backfill read: at the position of the
    /// backfill's high watermark (`at.commit_lsn`), numbered within its chunk.
    pub fn build_read(
        &self,
        table: &Arc<Table>,
        row: &Tuple<'_>,
        at: &ReadAt,
        idx: u64,
        view: &View,
    ) -> Result<Event, EventError> {
        let at = Position {
            commit_lsn: at.commit_lsn,
            commit_time_micros: at.read_time_micros,
            timestamp_json: &at.timestamp_json,
            idx,
            annotations: None,
            backfill: Some(&at.backfill_text),
        };
        self.write(table, Action::Read, row, None, at, view)
    }

    fn write(
        &self,
        table: &Arc<Table>,
        action: Action,
        record: &Tuple<'_>,
        old: Option<&OldTuple<'_>>,
        at: Position<'_>,
        view: &View,
    ) -> Result<Event, EventError> {
        let want = table.columns.len();
        for t in std::iter::once(record).chain(old.map(OldTuple::tuple)) {
            if t.len() != want {
                return Err(EventError::ColumnCount {
                    table: table.qualified.clone(),
                    got: t.len(),
                    want,
                });
            }
        }
        // Unchanged TOAST values are filled from the old image when the stream carried
        // one: the whole row (FULL), or the key (Postgres sends the old key when a key
        // column is stored out of line, so key columns are always known).
        let old_tuple = old.map(OldTuple::tuple);
        let value_at = |i: usize| -> Datum<'_> {
            match (record[i], old_tuple) {
                (Datum::UnchangedToast, Some(o)) if o[i] != Datum::UnchangedToast => o[i],
                (d, _) => d,
            }
        };

        let mut out = String::with_capacity(table.payload_hint.get().clamp(256, 64 * 1024));
        out.push_str("{\"record\":{");
        let mut first = true;
        for (i, col) in table.columns.iter().enumerate() {
            if !view.keeps(i) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&col.json_key);
            write_datum(&mut out, table, col, value_at(i))?;
        }
        out.push_str("},\"changes\":");
        if action == Action::Update {
            out.push('{');
            if let Some(old) = old {
                let mut first = true;
                let key_only = matches!(old, OldTuple::Key(_));
                for (i, col) in table.columns.iter().enumerate() {
                    if (key_only && !col.identity) || !view.keeps(i) {
                        continue;
                    }
                    let before = old.tuple()[i];
                    if before == Datum::UnchangedToast || before == value_at(i) {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&col.json_key);
                    write_datum(&mut out, table, col, before)?;
                }
            }
            out.push('}');
        } else {
            out.push_str("null");
        }
        out.push_str(",\"action\":\"");
        out.push_str(action.as_str());
        out.push_str("\",");
        out.push_str(&table.metadata_head);
        out.push_str(at.timestamp_json);
        let mut pks = String::with_capacity(16);
        pks.push('[');
        for (n, &i) in table.primary_key.iter().enumerate() {
            if n > 0 {
                pks.push(',');
            }
            write_key(&mut pks, table, &table.columns[i], value_at(i))?;
        }
        pks.push(']');
        let idempotency_key = match at.backfill {
            None => change_event::idempotency_key(at.commit_lsn, at.idx),
            Some(id) => read_key(id, &pks),
        };
        let mut digits = itoa::Buffer::new();
        out.push_str(",\"commit_lsn\":");
        out.push_str(digits.format(at.commit_lsn));
        out.push_str(",\"commit_idx\":");
        out.push_str(digits.format(at.idx));
        out.push_str(",\"idempotency_key\":\"");
        out.push_str(&idempotency_key);
        out.push_str("\",\"record_pks\":");
        out.push_str(&pks);
        out.push_str(",\"transaction_annotations\":");
        out.push_str(at.annotations.unwrap_or("null"));
        out.push_str(&self.suffix);
        escape_refused(&mut out);
        table.payload_hint.note(out.len());

        Ok(Event {
            seq: 0,
            commit_lsn: at.commit_lsn,
            commit_idx: at.idx,
            commit_time_micros: at.commit_time_micros,
            action,
            group_id: if self.groups {
                group_id(
                    table,
                    view.group_key.as_deref().unwrap_or(&table.group_key),
                    &value_at,
                )
            } else {
                String::new()
            },
            table: Arc::clone(table),
            idempotency_key,
            pks,
            payload: out,
            dedup_scope: None,
        })
    }
}

/// How one sink sees a table: the columns it takes, and its FIFO group columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Per column (table order), whether the sink takes it; `None`: every column.
    pub keep: Option<Vec<bool>>,
    /// Indices of the group columns; `None`: the table's ([`Table::group_key`]).
    pub group_key: Option<Vec<usize>>,
}

impl View {
    /// Every column, the table's group.
    pub const ALL: View = View {
        keep: None,
        group_key: None,
    };

    fn keeps(&self, column: usize) -> bool {
        self.keep
            .as_ref()
            .is_none_or(|k| k.get(column).copied().unwrap_or(true))
    }
}

/// Where an event sits: its transaction (or backfill chunk) and index.
struct Position<'a> {
    commit_lsn: u64,
    commit_time_micros: i64,
    timestamp_json: &'a str,
    idx: u64,
    annotations: Option<&'a str>,
    /// For a `read`: the backfill's id (the idempotency key names it).
    backfill: Option<&'a str>,
}

/// Where a backfill chunk's `read` events sit.
#[derive(Debug, Clone)]
pub struct ReadAt {
    /// The backfill.
    pub backfill_id: u64,
    /// Commit LSN of the high watermark the chunk is emitted at.
    pub commit_lsn: u64,
    /// When the chunk was read, microseconds since the Unix epoch.
    pub read_time_micros: i64,
    timestamp_json: String,
    backfill_text: String,
}

impl ReadAt {
    /// A chunk of backfill `backfill_id` read at `read_time_micros`, emitted at `commit_lsn`.
    pub fn new(backfill_id: u64, commit_lsn: u64, read_time_micros: i64) -> Self {
        let mut timestamp_json = String::with_capacity(30);
        write_str(
            &mut timestamp_json,
            &change_event::format_timestamp_micros(read_time_micros),
        );
        ReadAt {
            backfill_id,
            commit_lsn,
            read_time_micros,
            timestamp_json,
            backfill_text: backfill_id.to_string(),
        }
    }
}

fn write_datum(
    out: &mut String,
    table: &Table,
    col: &Column,
    datum: Datum<'_>,
) -> Result<(), EventError> {
    match datum {
        Datum::Null => out.push_str("null"),
        Datum::UnchangedToast => out.push_str(UNCHANGED_TOAST),
        Datum::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| EventError::Value {
                table: table.qualified.clone(),
                column: col.name.clone(),
                source: ValueError::not_utf8(),
            })?;
            return write_datum(out, table, col, Datum::Str(text));
        }
        Datum::Str(text) => {
            write_value(out, &col.kind, text).map_err(|source| EventError::Value {
                table: table.qualified.clone(),
                column: col.name.clone(),
                source,
            })?;
        }
        Datum::Binary(_) => {
            return Err(EventError::Binary {
                table: table.qualified.clone(),
                column: col.name.clone(),
            })
        }
    }
    Ok(())
}

/// The idempotency key of a `read` of the row whose `record_pks` is `pks`.
fn read_key(backfill_id: &str, pks: &str) -> String {
    change_event::read_idempotency_key(backfill_id, key_values(pks))
}

/// The strings of a `record_pks` JSON array (without a JSON parse, nor a list, when
/// nothing is escaped).
fn key_values(pks: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let escaped = memchr::memchr(b'\\', pks.as_bytes()).is_some();
    let parsed: Vec<String> = if escaped {
        serde_json::from_str(pks).unwrap_or_default()
    } else {
        Vec::new()
    };
    let plain = (!escaped)
        .then(|| pks.strip_prefix("[\"").and_then(|p| p.strip_suffix("\"]")))
        .flatten();
    parsed.into_iter().map(Cow::Owned).chain(
        plain
            .into_iter()
            // Unescaped, no value holds a quote: `a","b` splits at each one.
            .flat_map(|inner| inner.split('"').step_by(2))
            .map(Cow::Borrowed),
    )
}

/// `record_pks` as JSON of a change's row (what its event's `record_pks` holds).
pub fn change_key(table: &Table, change: &RowChange<'_>) -> Result<String, EventError> {
    let (record, old) = match change {
        RowChange::Insert(new) => (*new, None),
        RowChange::Update(old, new) => (*new, old.map(OldTuple::tuple)),
        RowChange::Delete(old) => (old.tuple(), None),
    };
    let filled: Tuple<'_> = record
        .iter()
        .enumerate()
        .map(|(i, d)| match (d, old) {
            (Datum::UnchangedToast, Some(o))
                if o.get(i).is_some_and(|v| *v != Datum::UnchangedToast) =>
            {
                o[i]
            }
            _ => *d,
        })
        .collect();
    key_json(table, &filled)
}

/// `record_pks` as JSON for a row image (e.g. the old key of an update that moved it).
pub fn key_json(table: &Table, tuple: &Tuple<'_>) -> Result<String, EventError> {
    let mut out = String::from("[");
    for (n, &i) in table.primary_key.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let datum = tuple.get(i).copied().unwrap_or(Datum::Null);
        write_key(&mut out, table, &table.columns[i], datum)?;
    }
    out.push(']');
    Ok(out)
}

/// Appends one `record_pks` element: the JSON string of the column's value as
/// `record` has it (a string's content as is, a number's digits, `true`/`false`).
fn write_key(
    out: &mut String,
    table: &Table,
    col: &Column,
    datum: Datum<'_>,
) -> Result<(), EventError> {
    match datum {
        Datum::Text(_) | Datum::Str(_) => {
            let start = out.len();
            write_datum(out, table, col, datum)?;
            if !out[start..].starts_with('"') {
                // Numbers and booleans hold no character that needs escaping: quoted
                // in place. JSON objects (a json key) are written as their text.
                if out[start..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                {
                    out.insert(start, '"');
                    out.push('"');
                } else {
                    let json = out.split_off(start);
                    write_str(out, &json);
                }
            }
        }
        // Key columns are never NULL, and Postgres sends them even when stored out of line.
        Datum::Null => out.push_str("\"\""),
        Datum::UnchangedToast => out.push_str(UNCHANGED_TOAST),
        Datum::Binary(_) => write_datum(out, table, col, datum)?,
    }
    Ok(())
}

/// SQS and SNS refuse characters outside XML 1.0's range. Of those, a JSON
/// text can hold only U+FFFE and U+FFFF raw (control characters are already
/// escaped, surrogates cannot occur in a `str`); both can appear only inside
/// JSON strings, where `\ufffe` and `\uffff` decode to the same characters.
pub fn escape_refused(json: &mut String) {
    // Both are EF BF BE / EF BF BF in UTF-8; most events have no 0xEF byte at all.
    if memchr::memchr(0xEF, json.as_bytes()).is_none() || !json.contains(['\u{FFFE}', '\u{FFFF}']) {
        return;
    }
    *json = json
        .replace('\u{FFFE}', "\\ufffe")
        .replace('\u{FFFF}', "\\uffff");
}

/// `schema.table:v1:v2…` over the group columns; its SHA-256 hex when over
/// 128 characters or holding characters SQS refuses in a `MessageGroupId`.
fn group_id<'a>(table: &Table, key: &[usize], value_at: &impl Fn(usize) -> Datum<'a>) -> String {
    let mut id = String::with_capacity(table.qualified.len() + 24);
    id.push_str(&table.qualified);
    for &i in key {
        id.push(':');
        match value_at(i) {
            Datum::Text(t) => id.push_str(&String::from_utf8_lossy(t)),
            Datum::Str(t) => id.push_str(t),
            _ => id.push_str("null"),
        }
    }
    group_id_text(id)
}

/// A `MessageGroupId` SQS and SNS accept: `id`, or its SHA-256 hex when over 128
/// characters or holding a character they refuse (outside printable ASCII).
pub fn group_id_text(id: String) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id
    } else {
        hex::encode(Sha256::digest(id.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use change_event::{ChangeEvent, Consumer, Database};
    use serde_json::json;

    fn users() -> Arc<Table> {
        Arc::new(Table::new(
            1,
            "public".into(),
            "users".into(),
            vec![
                Column::new("id".into(), TypeKind::Integer, true),
                Column::new("name".into(), TypeKind::Text, false),
                Column::new("bio".into(), TypeKind::Text, false),
            ],
            vec![0],
            vec![],
        ))
    }

    fn builder() -> EventBuilder {
        EventBuilder::new(
            &Consumer {
                id: "c".into(),
                name: "users_sqs".into(),
                ..Default::default()
            },
            &Database {
                id: "d".into(),
                name: "app".into(),
                database: "app".into(),
                hostname: "localhost".into(),
                ..Default::default()
            },
        )
    }

    fn parse(e: &Event) -> ChangeEvent {
        serde_json::from_str(&e.payload).expect("valid event JSON")
    }

    #[test]
    fn insert_event_matches_the_model() {
        let mut tx = Transaction::begin(123456789, 0);
        let new = vec![Datum::Text(b"1"), Datum::Text(b"alice"), Datum::Null];
        let e = builder()
            .build(&mut tx, &users(), RowChange::Insert(&new))
            .expect("event");
        let ev = parse(&e);
        assert_eq!(ev.record, json!({"id": 1, "name": "alice", "bio": null}));
        assert_eq!(ev.changes, None);
        assert_eq!(ev.metadata.commit_timestamp, "2000-01-01T00:00:00.000000Z");
        assert_eq!(ev.metadata.idempotency_key, "MTIzNDU2Nzg5OjA=");
        assert_eq!(ev.metadata.record_pks, vec!["1"]);
        assert_eq!(ev.metadata.database_name, "app");
        assert_eq!(ev.metadata.consumer.name, "users_sqs");
        assert_eq!(e.group_id, "public.users:1");
        assert_eq!(tx.next_idx, 1);
    }

    #[test]
    fn update_changes_and_toast() {
        let mut tx = Transaction::begin(1, 0);
        let b = builder();
        let new = vec![
            Datum::Text(b"1"),
            Datum::Text(b"alicia"),
            Datum::UnchangedToast,
        ];
        // Without an old tuple: changes is {} and the TOAST value is marked.
        let e = b
            .build(&mut tx, &users(), RowChange::Update(None, &new))
            .expect("event");
        let ev = parse(&e);
        assert_eq!(ev.changes, Some(serde_json::Map::new()));
        assert_eq!(ev.record["bio"], json!("unchanged_toast"));
        // With FULL: the TOAST value is filled in, changes has old values of changed columns.
        let old = OldTuple::Full(vec![
            Datum::Text(b"1"),
            Datum::Text(b"alice"),
            Datum::Text(b"long"),
        ]);
        let ev = parse(
            &b.build(&mut tx, &users(), RowChange::Update(Some(&old), &new))
                .expect("event"),
        );
        assert_eq!(ev.record["bio"], json!("long"));
        assert_eq!(json!(ev.changes), json!({"name": "alice"}));
        assert_eq!(ev.metadata.commit_idx, 1);
    }

    #[test]
    fn toasted_key_is_filled_from_the_old_key() {
        // REPLICA IDENTITY DEFAULT, key stored out of line: Postgres sends the old key.
        let urls = Arc::new(Table::new(
            3,
            "public".into(),
            "urls".into(),
            vec![
                Column::new("url".into(), TypeKind::Text, true),
                Column::new("hits".into(), TypeKind::Integer, false),
            ],
            vec![0],
            vec![],
        ));
        let mut tx = Transaction::begin(1, 0);
        let old = OldTuple::Key(vec![Datum::Text(b"https://x"), Datum::Null]);
        let new = vec![Datum::UnchangedToast, Datum::Text(b"2")];
        let e = builder()
            .build(&mut tx, &urls, RowChange::Update(Some(&old), &new))
            .expect("event");
        let ev = parse(&e);
        assert_eq!(ev.record, json!({"url": "https://x", "hits": 2}));
        assert_eq!(ev.changes, Some(serde_json::Map::new()));
        assert_eq!(ev.metadata.record_pks, ["https://x"]);
        assert_eq!(e.group_id, "public.urls:https://x");
    }

    #[test]
    fn record_pks_hold_the_record_values_as_strings() {
        let t = Arc::new(Table::new(
            4,
            "public".into(),
            "k".into(),
            vec![
                Column::new("flag".into(), TypeKind::Bool, true),
                Column::new("at".into(), TypeKind::Timestamp, true),
                Column::new("n".into(), TypeKind::Decimal, true),
                Column::new("s".into(), TypeKind::Text, true),
            ],
            vec![0, 1, 2, 3],
            vec![],
        ));
        let mut tx = Transaction::begin(1, 0);
        let new = vec![
            Datum::Text(b"t"),
            Datum::Text(b"2024-03-21 15:30:00"),
            Datum::Text(b"1.50"),
            Datum::Text(b"a\"b"),
        ];
        let ev = parse(
            &builder()
                .build(&mut tx, &t, RowChange::Insert(&new))
                .expect("event"),
        );
        assert_eq!(
            ev.metadata.record_pks,
            ["true", "2024-03-21T15:30:00.000000", "1.50", "a\"b"]
        );
    }

    #[test]
    fn key_values_of_record_pks() {
        let values = |pks| key_values(pks).collect::<Vec<_>>();
        assert_eq!(values(r#"["1","a"]"#), ["1", "a"]);
        assert_eq!(values(r#"["x"]"#), ["x"]);
        assert_eq!(values(r#"["","a",""]"#), ["", "a", ""]);
        assert_eq!(values(r#"["a\"b","c"]"#), ["a\"b", "c"]);
        assert!(values("[]").is_empty());
    }

    #[test]
    fn characters_aws_refuses_are_escaped() {
        let mut tx = Transaction::begin(1, 0);
        let new = vec![
            Datum::Text(b"1"),
            Datum::Text("a\u{FFFF}b\u{FFFE}".as_bytes()),
            Datum::Null,
        ];
        let e = builder()
            .build(&mut tx, &users(), RowChange::Insert(&new))
            .expect("event");
        assert!(!e.payload.contains(['\u{FFFE}', '\u{FFFF}']));
        assert!(e.payload.contains(r#""name":"a\uffffb\ufffe""#));
        assert_eq!(parse(&e).record["name"], json!("a\u{FFFF}b\u{FFFE}"));
        let mut plain = String::from(r#"{"a":"ünï €"}"#);
        escape_refused(&mut plain);
        assert_eq!(plain, r#"{"a":"ünï €"}"#);
    }

    #[test]
    fn delete_and_annotations() {
        let mut tx = Transaction::begin(1, 0);
        tx.annotations = Some(r#"{"by":"admin"}"#.into());
        let old = OldTuple::Key(vec![Datum::Text(b"7"), Datum::Null, Datum::Null]);
        let ev = parse(
            &builder()
                .build(&mut tx, &users(), RowChange::Delete(&old))
                .expect("event"),
        );
        assert_eq!(ev.record, json!({"id": 7, "name": null, "bio": null}));
        assert_eq!(ev.transaction_annotations(), Some(&json!({"by": "admin"})));
    }

    trait Ann {
        fn transaction_annotations(&self) -> Option<&serde_json::Value>;
    }
    impl Ann for ChangeEvent {
        fn transaction_annotations(&self) -> Option<&serde_json::Value> {
            self.metadata.transaction_annotations.as_ref()
        }
    }

    #[test]
    fn a_dedup_scope_makes_the_deduplication_id_the_sinks_own() {
        let table = users();
        let mut tx = Transaction::begin(100, 0);
        let row = [Datum::Text(b"1"), Datum::Text(b"a"), Datum::Null];
        let mut e = builder()
            .build(&mut tx, &table, RowChange::Insert(&row.to_vec()))
            .expect("event");
        let plain = e.deduplication_id().into_owned();
        assert_eq!(plain, e.idempotency_key);
        e.dedup_scope = Some("a".into());
        let a = e.deduplication_id().into_owned();
        e.dedup_scope = Some("b".into());
        let b = e.deduplication_id().into_owned();
        assert!(a != plain && a != b && a.len() == 64, "{a} {b}");
        e.dedup_scope = Some("a".into());
        assert_eq!(
            e.deduplication_id(),
            a,
            "stable: replays of a sink are still dropped"
        );
    }

    #[test]
    fn long_or_odd_group_ids_are_hashed() {
        let mut tx = Transaction::begin(1, 0);
        let tags = Arc::new(Table::new(
            2,
            "public".into(),
            "tags".into(),
            vec![Column::new("name".into(), TypeKind::Text, true)],
            vec![0],
            vec![],
        ));
        let mut group = |pk: &str| {
            let new = vec![Datum::Text(pk.as_bytes())];
            builder()
                .build(&mut tx, &tags, RowChange::Insert(&new))
                .expect("event")
                .group_id
        };
        assert_eq!(group("ok:fine"), "public.tags:ok:fine");
        assert_eq!(group(&"x".repeat(200)).len(), 64);
        assert_eq!(group("a b").len(), 64);
        assert_eq!(group("ünï").len(), 64);
    }

    #[test]
    fn mismatched_tuple_is_an_error() {
        let mut tx = Transaction::begin(1, 0);
        let new = vec![Datum::Text(b"1")];
        assert!(matches!(
            builder().build(&mut tx, &users(), RowChange::Insert(&new)),
            Err(EventError::ColumnCount {
                got: 1,
                want: 3,
                ..
            })
        ));
    }
}
