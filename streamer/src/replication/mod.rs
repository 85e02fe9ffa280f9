//! Reading a logical replication slot.
//!
//! ```text
//!   Postgres ──START_REPLICATION (pgoutput)──▶ transport ──▶ pgoutput decoder
//!      ▲   ◀─── standby status (confirmed LSN) ───┘                 │
//!      │                                                             ▼
//!      └── catalog (SQL): types, primary keys, slot, publication   pipeline ──▶ sink
//! ```
//!
//! - **Setup** is idempotent: the publication and the slot are created when
//!   missing and reused when present (`catalog::ensure_*`).
//! - **Streaming** starts at the slot's `confirmed_flush_lsn`, so a restart
//!   resumes exactly after the last transaction every event of which the sink
//!   accepted: nothing is skipped, and what was in flight is sent again.
//! - **Progress** is confirmed on a timer by the transport, from the
//!   [`Tracker`](crate::progress::Tracker); when nothing is in flight a
//!   keepalive's `wal_end` is confirmed, so idle tables never pin WAL.
//! - **Errors** come in two kinds. Transient ones (connection lost, server
//!   restarting, slot still held by a previous connection) reconnect with
//!   backoff and resume from the slot. Definite ones (slot or publication
//!   dropped, permission denied, bad password) stop the streamer with a
//!   message that says what to do. The stream ending is always an error.

mod catalog;
pub mod iam;
mod pgoutput;
mod tls;
mod transport;

pub use catalog::{
    format_lsn, parse_lsn, quote_ident, Catalog, Publication, RelationInfo, SlotState, TableInfo,
};
pub use pgoutput::{decode, Datum, DecodeError, OldTuple, PgOutput, RelationColumn, Tuple};
pub use transport::{connect, ConnectInfo, PgwireStream, WalMessage, WalStream, SESSION_OPTIONS};

/// Why reading the slot stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Reconnect and resume from the slot.
    #[error("{0}")]
    Transient(String),
    /// Needs a person: the message says what to do.
    #[error("{0}")]
    Definite(String),
}

impl ReplicationError {
    /// Transient errors are retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, ReplicationError::Transient(_))
    }
}

/// Classifies a server error by its SQLSTATE (in the message text).
pub(crate) fn classify_server_error(context: &str, message: &str, slot: &str) -> ReplicationError {
    let code = message
        .split("SQLSTATE ")
        .nth(1)
        .map(|s| s.chars().take(5).collect::<String>())
        .unwrap_or_default();
    classify_code(context, message, &code, slot)
}

pub(crate) fn classify_code(
    context: &str,
    message: &str,
    code: &str,
    slot: &str,
) -> ReplicationError {
    let text = format!("{context}: {message}");
    match code {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
        // object_in_use (the slot is still held by a previous connection), serialization.
        "57P01" | "57P02" | "57P03" | "53300" | "55006" | "40001" | "08000" | "08003"
        | "08006" | "08001" | "08004" => ReplicationError::Transient(text),
        "42704" if message.contains("slot") => ReplicationError::Definite(format!(
            "{text}. The replication slot `{slot}` was dropped: changes since it was dropped \
             cannot be recovered from it. Restart the streamer to create it again, and backfill \
             what was missed."
        )),
        "42704" if message.contains("publication") => ReplicationError::Definite(format!(
            "{text}. The publication was dropped while streaming: restart the streamer to \
             recreate it."
        )),
        "42501" => ReplicationError::Definite(format!(
            "{text}. Grant the streamer's user the REPLICATION attribute (on RDS: \
             GRANT rds_replication TO <user>) and SELECT on the published tables."
        )),
        // pg_hba.conf has no line for this connection. "no encryption" (before 14:
        // "SSL off"): only TLS connections are accepted from here (`hostssl`).
        "28000" if message.contains("no encryption") || message.contains("SSL off") => {
            ReplicationError::Definite(format!(
                "{text}. The server accepts only TLS connections from here (pg_hba.conf hostssl; \
                 RDS: rds.force_ssl=1): set sslmode=require (or verify-full with sslrootcert) in source.url."
            ))
        }
        "28000" if message.contains("SSL encryption") || message.contains("SSL on") => {
            ReplicationError::Definite(format!(
                "{text}. The server refuses TLS connections from here (pg_hba.conf hostnossl): \
                 set sslmode=prefer or disable in source.url."
            ))
        }
        "28000" if message.contains("pg_hba.conf") => ReplicationError::Definite(format!(
            "{text}. Add a pg_hba.conf line for this host, user and database on the server."
        )),
        // RDS IAM authentication runs through PAM: the token was refused.
        "28P01" | "28000" if message.contains("PAM authentication failed") => {
            ReplicationError::Definite(format!(
                "{text}. The IAM token was refused: GRANT rds_iam TO the user, give the streamer's \
                 role rds-db:connect on the user's arn:aws:rds-db:REGION:ACCOUNT:dbuser:RESOURCE-ID/USER \
                 (template.yaml: StreamerDbUserArn), and set source.region to the database's region."
            ))
        }
        "28P01" | "28000" => ReplicationError::Definite(format!(
            "{text}. Check the user and password in source.url \
             (with source.auth: iam, the user's rds_iam grant, rds-db:connect and source.region)."
        )),
        "3D000" => ReplicationError::Definite(format!(
            "{text}. Check the database name in source.url."
        )),
        "55000" if message.contains("wal_level") => ReplicationError::Definite(format!(
            "{text}. Set wal_level = logical (on RDS: rds.logical_replication = 1) and restart Postgres."
        )),
        _ => ReplicationError::Definite(text),
    }
}

/// Classifies an error of the SQL connection.
pub(crate) fn from_sql(context: &str, e: &tokio_postgres::Error, slot: &str) -> ReplicationError {
    match e.as_db_error() {
        Some(db) => classify_code(context, db.message(), db.code().code(), slot),
        // A certificate the settings refuse will be refused again: say what to fix.
        None if tls_failure(e).is_some() => ReplicationError::Definite(format!(
            "{context}: TLS: {e}: {}. Check sslmode and sslrootcert in source.url.",
            tls_failure(e).unwrap_or_default()
        )),
        // sslmode=require (or verify-*) against a server without TLS: it will not change.
        None if error_chain(e).contains("server does not support TLS") => {
            ReplicationError::Definite(format!(
                "{context}: the server does not offer TLS, and sslmode in source.url requires it: \
                 enable ssl on the server, or set sslmode=prefer (or disable; not with source.auth: iam, \
                 which needs TLS)"
            ))
        }
        // Not from the server: the connection failed or closed (the OS error is a source).
        None => {
            let chain = error_chain(e);
            let hint = if chain.contains("Connection refused") {
                ": is Postgres listening there? Check the host and port in source.url"
            } else if chain.contains("lookup address")
                || chain.contains("Name or service not known")
            {
                ": check the host name in source.url"
            } else {
                ""
            };
            ReplicationError::Transient(format!("{context}: {chain}{hint}"))
        }
    }
}

/// How a failed SQL connection attempt bears on trying the other kind (see `tls`).
pub(crate) fn sql_refusal(e: &tokio_postgres::Error) -> tls::Refusal {
    match e.as_db_error() {
        // Class 28: pg_hba.conf, authentication.
        Some(db) if db.code().code().starts_with("28") => tls::Refusal::Refused,
        Some(_) => tls::Refusal::Other,
        None if tls_failure(e).is_some() => tls::Refusal::Refused,
        None if error_chain(e).contains("server does not support TLS") => tls::Refusal::NoTls,
        None => tls::Refusal::Other,
    }
}

/// An error and its sources, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        cur = inner.source();
    }
    out
}

/// The TLS error under a connection error, if that is what it is.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        cur = err.source();
    }
    None
}
