//! The replication connection, behind a small trait of ours.
//!
//! `pgwire-replication` does the wire work: START_REPLICATION with
//! `proto_version '1'`, `publication_names` and `messages 'true'`, SCRAM,
//! TLS, keepalive replies and standby status updates on a timer. It splits
//! out Begin, Commit and logical messages; everything else arrives as raw
//! pgoutput bytes for our decoder.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};

use super::tls::{connect_as_libpq, Refusal, Wire};
use super::{classify_server_error, ReplicationError};
use crate::config::{Auth, Postgres, SslMode, Tls};

/// What the stream delivers.
#[derive(Debug)]
pub enum WalMessage {
    /// A transaction begins.
    Begin {
        /// Commit LSN.
        final_lsn: u64,
        /// The transaction's id (the low 32 bits, as Postgres's `xid`).
        xid: u32,
        /// Commit time, Postgres epoch microseconds.
        commit_time: i64,
    },
    /// The transaction ends.
    Commit {
        /// End of the commit record.
        end_lsn: u64,
    },
    /// Any other pgoutput message, undecoded.
    Data(Bytes),
    /// `pg_logical_emit_message`.
    Message {
        /// Part of a transaction.
        transactional: bool,
        /// Prefix.
        prefix: String,
        /// Content.
        content: Bytes,
    },
    /// The server is at `wal_end` and has nothing more for now.
    KeepAlive {
        /// Server WAL position.
        wal_end: u64,
    },
}

/// A replication stream.
pub trait WalStream: Send {
    /// The next message. The stream ending is an error, never a clean end.
    fn recv(&mut self) -> impl Future<Output = Result<WalMessage, ReplicationError>> + Send;
    /// Confirms everything up to `lsn` (monotonic; sent on the status timer).
    fn confirm(&mut self, lsn: u64);
    /// Whether a confirmed position has not reached the server yet.
    fn confirm_pending(&self) -> bool;
    /// Stops streaming and closes the connection.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Where and how to connect; built from `source.url`.
#[derive(Clone)]
pub struct ConnectInfo {
    /// Host name, IP, or a Unix socket directory (starting with `/`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (may be empty).
    pub password: String,
    /// Database.
    pub database: String,
    /// TLS settings.
    pub tls: Tls,
    /// Where the password comes from (`Auth::Iam`: a fresh token per connection).
    pub auth: Auth,
}

impl std::fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{} ({:?})",
            self.user, self.host, self.port, self.database, self.tls.mode
        )
    }
}

impl ConnectInfo {
    /// From the parsed `source.url`.
    pub fn from_config(pg: &Postgres) -> Self {
        let c = &pg.config;
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        ConnectInfo {
            host,
            port: c.get_ports().first().copied().unwrap_or(5432),
            user: c.get_user().unwrap_or("postgres").to_owned(),
            password: c
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            database: c.get_dbname().unwrap_or("postgres").to_owned(),
            tls: pg.tls.clone(),
            auth: pg.auth.clone(),
        }
    }
}

/// Session settings that make pgoutput's text output have one form per type.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c IntervalStyle=iso_8601 -c TimeZone=UTC \
     -c bytea_output=hex -c extra_float_digits=1";

/// The pgwire-replication stream.
pub struct PgwireStream {
    client: ReplicationClient,
    slot: String,
}

/// Opens the replication stream at the slot's confirmed position, with TLS as
/// `sslmode` says (libpq's attempts: see `tls`). Returns once the server has
/// accepted START_REPLICATION, so a refused connection is known here.
pub async fn connect(
    info: &ConnectInfo,
    slot: &str,
    publication: &str,
    ack_lsn: u64,
) -> Result<PgwireStream, ReplicationError> {
    let context = format!("connecting for replication to {}:{}", info.host, info.port);
    let client = connect_as_libpq(info.tls.mode, |wire| {
        connect_once(info, wire, slot, publication, ack_lsn, &context)
    })
    .await?;
    Ok(PgwireStream {
        client,
        slot: slot.to_owned(),
    })
}

async fn connect_once(
    info: &ConnectInfo,
    wire: Wire,
    slot: &str,
    publication: &str,
    ack_lsn: u64,
    context: &str,
) -> Result<ReplicationClient, (Refusal, ReplicationError)> {
    let root = info.tls.root_cert.clone();
    let tls = match (wire, info.tls.mode) {
        (Wire::Plain, _) => TlsConfig::disabled(),
        (Wire::TlsIfOffered, _) => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::disabled()
        },
        (Wire::Tls, SslMode::VerifyCa) => TlsConfig::verify_ca(root),
        (Wire::Tls, SslMode::VerifyFull) => TlsConfig::verify_full(root),
        (Wire::Tls, _) => TlsConfig::require(),
    };
    let password = match &info.auth {
        Auth::Password => info.password.clone(),
        Auth::Iam { region } => {
            super::iam::token(region.as_deref(), &info.host, info.port, &info.user)
                .await
                .map_err(|e| (Refusal::Other, e))?
        }
    };
    let cfg = ReplicationConfig::new(
        info.host.clone(),
        info.user.clone(),
        password,
        info.database.clone(),
        slot,
        publication,
    )
    .with_port(info.port)
    .with_tls(tls)
    // Postgres starts at the higher of this and the slot's confirmed_flush_lsn.
    .with_start_lsn(Lsn::from_u64(ack_lsn))
    .with_ack_lsn(Lsn::from_u64(ack_lsn))
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(10))
    .with_buffer_size(1024)
    .with_options(SESSION_OPTIONS)
    .with_application_name("walcast")
    // Needed so `feedback_pending_since` reports whether the server has our position.
    .with_feedback_observer(pgwire_replication::FeedbackObserver::new(|_| {}));
    let verify_ca = wire == Wire::Tls && info.tls.mode == SslMode::VerifyCa;
    let failed = |e: PgWireError| {
        let why = refusal(&e);
        match &e {
            // pgwire-replication 0.5 misses rustls's newer name error under verify-ca.
            PgWireError::Tls(m) if verify_ca && m.contains("not valid for name") => (
                why,
                ReplicationError::Definite(format!(
                    "{context}: TLS: the server's certificate does not name {}: under sslmode=verify-ca \
                     the replication connection (pgwire-replication 0.5) checks the name as well: \
                     connect by a name the certificate holds, or use verify-full with it",
                    info.host
                )),
            ),
            _ => (why, classify(context, e, slot)),
        }
    };
    let mut client = ReplicationClient::connect(cfg).await.map_err(failed)?;
    client.wait_started().await.map_err(failed)?;
    Ok(client)
}

/// How a failed attempt bears on trying the other kind of connection.
fn refusal(e: &PgWireError) -> Refusal {
    match e {
        PgWireError::Tls(m) if m.contains("SSLRequest rejected") => Refusal::NoTls,
        PgWireError::Tls(_) | PgWireError::Auth(_) => Refusal::Refused,
        // Class 28: pg_hba.conf, authentication.
        PgWireError::Server(m) if m.contains("SQLSTATE 28") => Refusal::Refused,
        _ => Refusal::Other,
    }
}

fn classify(context: &str, e: PgWireError, slot: &str) -> ReplicationError {
    match &e {
        PgWireError::Server(msg) => classify_server_error(context, msg, slot),
        PgWireError::Tls(m) if m.contains("SSLRequest rejected") => {
            ReplicationError::Definite(format!(
                "{context}: the server does not offer TLS, and sslmode in source.url requires it: \
                 enable ssl on the server, or set sslmode=prefer (or disable; not with source.auth: iam, \
                 which needs TLS)"
            ))
        }
        PgWireError::Tls(m) => ReplicationError::Definite(format!(
            "{context}: TLS: {}. Check sslmode and sslrootcert in source.url.",
            m.trim_end_matches('.')
        )),
        PgWireError::Auth(m) => ReplicationError::Definite(format!(
            "{context}: authentication failed: {}. Check the user and password in source.url \
             (with source.auth: iam, the user's rds_iam grant, rds-db:connect and source.region).",
            m.trim_end_matches('.')
        )),
        PgWireError::MessageTooLarge { .. }
        | PgWireError::Protocol(_)
        | PgWireError::Internal(_) => ReplicationError::Definite(format!("{context}: {e}")),
        _ => ReplicationError::Transient(format!("{context}: {e}")),
    }
}

impl WalStream for PgwireStream {
    async fn recv(&mut self) -> Result<WalMessage, ReplicationError> {
        loop {
            let ev = match self.client.recv().await {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    return Err(ReplicationError::Transient(
                        "the replication stream ended".into(),
                    ))
                }
                Err(e) => return Err(classify("replication stream", e, &self.slot)),
            };
            return Ok(match ev {
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => WalMessage::Begin {
                    final_lsn: final_lsn.as_u64(),
                    xid,
                    commit_time: commit_time_micros,
                },
                ReplicationEvent::Commit { end_lsn, .. } => WalMessage::Commit {
                    end_lsn: end_lsn.as_u64(),
                },
                ReplicationEvent::XLogData { data, .. } => WalMessage::Data(data),
                ReplicationEvent::Message {
                    transactional,
                    prefix,
                    content,
                    ..
                } => WalMessage::Message {
                    transactional,
                    prefix,
                    content,
                },
                ReplicationEvent::KeepAlive { wal_end, .. } => WalMessage::KeepAlive {
                    wal_end: wal_end.as_u64(),
                },
                // Only with stop_at_lsn, which we never set.
                ReplicationEvent::StoppedAt { .. } => continue,
            });
        }
    }

    fn confirm(&mut self, lsn: u64) {
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
    }

    fn confirm_pending(&self) -> bool {
        self.client.feedback_pending_since().is_some()
    }

    async fn close(mut self) {
        let _ = self.client.shutdown().await;
    }
}
