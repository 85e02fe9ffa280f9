//! ✏️ EDIT ME (1 of 2): the tables this function receives and their record types.
//!
//! One struct per table, one [`TableEvent`] variant per struct, one line in
//! its [`Route::route`] to route to it. Tables without a line arrive as
//! [`TableEvent::Other`] with the record kept as JSON.
//!
//! Column types follow `docs/change-event.md`: integers are numbers,
//! `numeric` keeps every digit (use [`serde_json::Number`], or a decimal crate
//! with its serde feature), timestamps are RFC 3339 strings, `json`/`jsonb`
//! are embedded JSON. Columns you leave out are ignored, so adding a column to
//! the table does not break the function.
//!
//! **Deletes**: without `REPLICA IDENTITY FULL` a delete carries only the key
//! columns, every other column `null`. Make every non-key field an `Option`
//! (as below), or decode deletes into a key-only struct.

use change_event::{Action, ChangeEvent, Metadata};
use serde::Deserialize;
use serde_json::{Number, Value};

use walcast_lambda::{DecodeError, Route, Table};

/// A row of `public.users`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    /// Primary key: present in every event, deletes included.
    pub id: i64,
    /// `text`
    pub name: Option<String>,
    /// `text`
    pub email: Option<String>,
    /// `numeric`: every digit Postgres holds.
    pub balance: Option<Number>,
    /// `text[]`
    pub tags: Option<Vec<String>>,
    /// `jsonb`
    pub profile: Option<Value>,
    /// `timestamptz`, e.g. `2024-03-21T15:30:00.127470Z`.
    pub created_at: Option<String>,
}

/// A row of `public.orders`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Order {
    /// Primary key.
    pub id: i64,
    /// `bigint` referencing `users.id`.
    pub user_id: Option<i64>,
    /// `text`: `placed`, `shipped`, …
    pub status: Option<String>,
    /// `numeric(12,2)`
    pub total: Option<Number>,
    /// `timestamptz`
    pub placed_at: Option<String>,
}

/// A change event, typed by the table it comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TableEvent {
    /// A change to `public.users`.
    Users(ChangeEvent<User>),
    /// A change to `public.orders`.
    Orders(ChangeEvent<Order>),
    /// A change to any other table, the record kept as JSON.
    Other(ChangeEvent),
}

impl Route for TableEvent {
    /// Routes a change event by `metadata.table_schema`/`table_name` and
    /// decodes its record into that table's type.
    fn route(table: &Table, event: Value) -> Result<Self, DecodeError> {
        Ok(match (table.schema(), table.name()) {
            ("public", "users") => Self::Users(table.decode(event)?),
            ("public", "orders") => Self::Orders(table.decode(event)?),
            _ => Self::Other(table.decode(event)?),
        })
    }
}

impl TableEvent {
    /// The event's metadata (table, commit position, idempotency key, …).
    pub fn metadata(&self) -> &Metadata {
        match self {
            Self::Users(event) => &event.metadata,
            Self::Orders(event) => &event.metadata,
            Self::Other(event) => &event.metadata,
        }
    }

    /// What happened to the row.
    pub fn action(&self) -> Action {
        match self {
            Self::Users(event) => event.action,
            Self::Orders(event) => event.action,
            Self::Other(event) => event.action,
        }
    }
}
