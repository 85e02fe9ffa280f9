//! Where backfills are requested and their progress kept: the table
//! `walcast.backfills` in the source database, so a restarted task (an ECS
//! task has no disk that survives it) finds them. One row per table of a
//! request; `streamer backfill` inserts rows, the running streamer whose slot
//! they name picks them up, and writes its progress after every chunk.
//!
//! Privileges: creating the schema needs `CREATE` on the database (or an
//! owner runs `CREATE SCHEMA walcast AUTHORIZATION <the streamer's user>`);
//! after that, only the streamer's own table.

use tokio_postgres::Client;

use super::SCHEMA;
use crate::replication::{quote_ident, ReplicationError};

/// The channel of backfill notifications (`LISTEN`/`NOTIFY`).
pub const CHANNEL: &str = "walcast_backfill";

/// Where a backfill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requested; not started.
    Pending,
    /// Being sent.
    Running,
    /// Every row was sent.
    Done,
    /// Cancelled (`streamer backfill --cancel`).
    Cancelled,
    /// Stopped for good; `error` says why.
    Failed,
}

impl State {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "running" => State::Running,
            "done" => State::Done,
            "cancelled" => State::Cancelled,
            "failed" => State::Failed,
            _ => State::Pending,
        }
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Cancelled | State::Failed)
    }
}

/// One table's backfill, as stored.
#[derive(Debug, Clone)]
pub struct Backfill {
    /// Its id (in every `read` event's idempotency key).
    pub id: u64,
    /// The slot (streamer) that runs it.
    pub slot: String,
    /// Schema of the table.
    pub schema: String,
    /// The table.
    pub table: String,
    /// Partial backfill: the column, and the value from which on (inclusive) rows are sent.
    pub where_from: Option<(String, String)>,
    /// Where it stands.
    pub state: State,
    /// Key values (text) of the last row of the last finished chunk.
    pub last_key: Option<Vec<String>>,
    /// Rows in the table when it started (`pg_class.reltuples`, an estimate).
    pub rows_estimate: Option<i64>,
    /// `read` events sent so far.
    pub rows_sent: i64,
    /// Chunks finished.
    pub chunks: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// Seconds since it started, when it has.
    pub running_secs: Option<f64>,
}

impl Backfill {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// How many rows the table holds: the rows sent once the backfill is done (then
    /// exact), else Postgres's estimate (`reltuples`; never below the rows sent),
    /// unknown when Postgres has none yet.
    pub fn rows_total(&self) -> Option<i64> {
        match self.state {
            State::Done => Some(self.rows_sent),
            _ => self
                .rows_estimate
                .filter(|t| *t > 0)
                .map(|t| t.max(self.rows_sent)),
        }
    }

    /// Rows per second since it started.
    pub fn rate(&self) -> Option<f64> {
        self.running_secs
            .filter(|s| *s > 0.0)
            .map(|s| self.rows_sent as f64 / s)
    }

    /// Seconds left at the current rate.
    /// Unknown without an estimate (a table Postgres has not analyzed yet).
    pub fn eta_secs(&self) -> Option<f64> {
        let total = self.rows_total()?;
        let left = (total - self.rows_sent).max(0) as f64;
        self.rate().filter(|r| *r > 0.0).map(|r| left / r)
    }
}

fn err(context: &str, e: &tokio_postgres::Error, user_hint: &str) -> ReplicationError {
    match e.as_db_error() {
        Some(db) if db.code().code() == "42501" => ReplicationError::Definite(format!(
            "{context}: {}. The backfill progress lives in {SCHEMA}.backfills: {user_hint}",
            db.message()
        )),
        Some(db) => ReplicationError::Definite(format!("{context}: {}", db.message())),
        None => ReplicationError::Transient(format!("{context}: {e}")),
    }
}

const COLUMNS: &str = "id, slot, table_schema, table_name, where_column, where_from, state, \
     last_key, rows_estimate, rows_sent, chunks, error, \
     extract(epoch FROM (coalesce(finished_at, now()) - started_at))::float8";

fn row_to_backfill(r: &tokio_postgres::Row) -> Backfill {
    let column: Option<String> = r.get(4);
    let from: Option<String> = r.get(5);
    Backfill {
        id: r.get::<_, i64>(0) as u64,
        slot: r.get(1),
        schema: r.get(2),
        table: r.get(3),
        where_from: column.zip(from),
        state: State::parse(r.get(6)),
        last_key: r.get(7),
        rows_estimate: r.get(8),
        rows_sent: r.get(9),
        chunks: r.get(10),
        error: r.get(11),
        running_secs: r.get(12),
    }
}

/// The progress table, on one connection.
pub struct Store<'a> {
    client: &'a Client,
}

impl<'a> Store<'a> {
    /// The store on `client`; [`Store::ensure`] creates the table when missing.
    pub fn new(client: &'a Client) -> Self {
        Store { client }
    }

    /// Whether the table exists (without creating it).
    pub async fn exists(&self) -> Result<bool, ReplicationError> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{SCHEMA}.backfills")],
            )
            .await
            .map_err(|e| err("looking for the backfill table", &e, ""))?;
        Ok(row.get(0))
    }

    /// Creates the schema and table when missing.
    pub async fn ensure(&self) -> Result<(), ReplicationError> {
        if self.exists().await? {
            return Ok(());
        }
        let hint = self.grant_hint().await;
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
             CREATE TABLE IF NOT EXISTS {SCHEMA}.backfills (
               id bigserial PRIMARY KEY,
               slot text NOT NULL,
               table_schema text NOT NULL,
               table_name text NOT NULL,
               where_column text,
               where_from text,
               state text NOT NULL DEFAULT 'pending',
               last_key text[],
               rows_estimate bigint,
               rows_sent bigint NOT NULL DEFAULT 0,
               chunks bigint NOT NULL DEFAULT 0,
               error text,
               requested_at timestamptz NOT NULL DEFAULT now(),
               started_at timestamptz,
               updated_at timestamptz NOT NULL DEFAULT now(),
               finished_at timestamptz)"
        );
        match self.client.batch_execute(&sql).await {
            Ok(()) => Ok(()),
            // Created meanwhile by another streamer.
            Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "23505") => Ok(()),
            Err(e) => Err(err("creating the backfill table", &e, &hint)),
        }
    }

    async fn grant_hint(&self) -> String {
        let names = self
            .client
            .query_one("SELECT current_database()::text, current_user::text", &[])
            .await
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .unwrap_or_else(|_| ("<database>".into(), "<user>".into()));
        format!(
            "GRANT CREATE ON DATABASE {} TO {} (or, as an owner: CREATE SCHEMA {SCHEMA} AUTHORIZATION {})",
            quote_ident(&names.0),
            quote_ident(&names.1),
            quote_ident(&names.1)
        )
    }

    /// Requests a backfill of `tables` for `slot`; returns the new rows' ids.
    pub async fn request(
        &self,
        slot: &str,
        tables: &[(String, String)],
        where_from: Option<&(String, String)>,
    ) -> Result<Vec<u64>, ReplicationError> {
        let mut ids = Vec::with_capacity(tables.len());
        for (schema, table) in tables {
            let estimate = self.estimate(schema, table, where_from).await;
            let row = self
                .client
                .query_one(
                    &format!(
                        "INSERT INTO {SCHEMA}.backfills (slot, table_schema, table_name, where_column, where_from, rows_estimate) \
                         SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint \
                         RETURNING id"
                    ),
                    &[
                        &slot,
                        schema,
                        table,
                        &where_from.map(|w| w.0.as_str()),
                        &where_from.map(|w| w.1.as_str()),
                        &estimate,
                    ],
                )
                .await
                .map_err(|e| err("requesting a backfill", &e, "GRANT INSERT, UPDATE ON it"))?;
            ids.push(row.get::<_, i64>(0) as u64);
        }
        self.notify().await;
        Ok(ids)
    }

    /// Wakes whoever listens on [`CHANNEL`]: the streamers' backfill drivers (a
    /// request or a cancel) and `streamer backfill` following its progress (an
    /// end). Only a wake-up: both also look on their own, every second.
    pub async fn notify(&self) {
        if let Err(e) = self
            .client
            .execute("SELECT pg_notify($1, '')", &[&CHANNEL])
            .await
        {
            tracing::debug!(error = %e, "backfill notification not sent");
        }
    }

    /// Listens on [`CHANNEL`] on this connection (see
    /// [`crate::replication::Catalog::notification_within`]).
    pub async fn listen(&self) -> Result<(), ReplicationError> {
        self.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| err("listening for backfill requests", &e, ""))
    }

    /// The planner's estimate of the rows a backfill will read (the filter of
    /// `--where-from` included; without statistics, from the table's size).
    async fn estimate(
        &self,
        schema: &str,
        table: &str,
        where_from: Option<&(String, String)>,
    ) -> Option<i64> {
        let filter = where_from
            .map(|(column, from)| {
                format!(
                    " WHERE {} >= '{}'",
                    quote_ident(column),
                    from.replace('\'', "''")
                )
            })
            .unwrap_or_default();
        let sql = format!(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM {}.{}{filter}",
            quote_ident(schema),
            quote_ident(table)
        );
        let rows = self.client.simple_query(&sql).await.ok()?;
        let plan = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })?;
        let plan: serde_json::Value = serde_json::from_str(&plan).ok()?;
        plan[0]["Plan"]["Plan Rows"]
            .as_f64()
            .map(|n| n.max(0.0) as i64)
    }

    /// Backfills of `slot` not yet final, oldest first; with `all`, every one of `slot`.
    pub async fn list(&self, slot: &str, all: bool) -> Result<Vec<Backfill>, ReplicationError> {
        let filter = if all {
            ""
        } else {
            " AND state IN ('pending', 'running')"
        };
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM {SCHEMA}.backfills WHERE slot = $1{filter} ORDER BY id"
                ),
                &[&slot],
            )
            .await
            .map_err(|e| err("reading backfills", &e, "GRANT SELECT ON it"))?;
        Ok(rows.iter().map(row_to_backfill).collect())
    }

    /// The backfills with these ids.
    pub async fn get(&self, ids: &[u64]) -> Result<Vec<Backfill>, ReplicationError> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let rows = self
            .client
            .query(
                &format!("SELECT {COLUMNS} FROM {SCHEMA}.backfills WHERE id = ANY($1) ORDER BY id"),
                &[&ids],
            )
            .await
            .map_err(|e| err("reading backfills", &e, "GRANT SELECT ON it"))?;
        Ok(rows.iter().map(row_to_backfill).collect())
    }

    /// The backfill's state now (it may have been cancelled).
    pub async fn state(&self, id: u64) -> Result<State, ReplicationError> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT state FROM {SCHEMA}.backfills WHERE id = $1"),
                &[&(id as i64)],
            )
            .await
            .map_err(|e| err("reading a backfill", &e, "GRANT SELECT ON it"))?;
        Ok(row
            .map(|r| State::parse(r.get(0)))
            .unwrap_or(State::Cancelled))
    }

    /// Marks it running (from pending).
    pub async fn start(&self, id: u64) -> Result<(), ReplicationError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {SCHEMA}.backfills SET state = 'running', \
                     started_at = coalesce(started_at, now()), updated_at = now() \
                     WHERE id = $1 AND state IN ('pending', 'running')"
                ),
                &[&(id as i64)],
            )
            .await
            .map_err(|e| err("starting a backfill", &e, "GRANT UPDATE ON it"))?;
        Ok(())
    }

    /// A chunk's reads were accepted: store where the next one starts.
    pub async fn progress(
        &self,
        id: u64,
        last_key: &[String],
        sent: u64,
    ) -> Result<(), ReplicationError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {SCHEMA}.backfills SET last_key = $2, rows_sent = rows_sent + $3, \
                     chunks = chunks + 1, updated_at = now() WHERE id = $1"
                ),
                &[&(id as i64), &last_key, &(sent as i64)],
            )
            .await
            .map_err(|e| err("storing backfill progress", &e, "GRANT UPDATE ON it"))?;
        Ok(())
    }

    /// Ends it (`Done`, `Failed` with its reason, or `Cancelled`).
    pub async fn finish(
        &self,
        id: u64,
        state: State,
        error: Option<&str>,
    ) -> Result<(), ReplicationError> {
        self.client
            .execute(
                &format!(
                    "UPDATE {SCHEMA}.backfills SET state = $2, error = $3, finished_at = now(), \
                     updated_at = now() WHERE id = $1 AND state NOT IN ('done', 'cancelled', 'failed')"
                ),
                &[&(id as i64), &state.as_str(), &error],
            )
            .await
            .map_err(|e| err("finishing a backfill", &e, "GRANT UPDATE ON it"))?;
        self.notify().await;
        Ok(())
    }

    /// Cancels the unfinished backfills among `ids` (or all of `slot`'s); returns how many.
    pub async fn cancel(&self, slot: &str, ids: &[u64]) -> Result<u64, ReplicationError> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let cancelled = self
            .client
            .execute(
                &format!(
                    "UPDATE {SCHEMA}.backfills SET state = 'cancelled', finished_at = now(), updated_at = now() \
                     WHERE slot = $1 AND state IN ('pending', 'running') \
                       AND (cardinality($2::bigint[]) = 0 OR id = ANY($2))"
                ),
                &[&slot, &ids],
            )
            .await
            .map_err(|e| err("cancelling backfills", &e, "GRANT UPDATE ON it"));
        self.notify().await;
        cancelled
    }
}
