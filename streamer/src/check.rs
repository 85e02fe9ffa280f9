//! `streamer check`: connects and reports what would stop or degrade
//! streaming, one line each with the fix.

use std::fmt;

use crate::config::{Config, SinkType};
use crate::replication::catalog::{format_lsn, quote_ident, Catalog};
use crate::replication::ReplicationError;
use crate::sink::{SnsTopic, SqsQueue};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, with a caveat.
    Warn,
    /// Streaming will fail or lose information.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// What was found, and the fix.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{tag} {}", self.message)
    }
}

fn push(out: &mut Vec<Finding>, level: Level, message: impl Into<String>) {
    out.push(Finding {
        level,
        message: message.into(),
    });
}

/// Checks the source database. Connection failure is itself a finding.
pub async fn check_source(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let catalog = match Catalog::connect(&config.postgres(), &config.source.slot).await {
        Ok(c) => c,
        Err(e) => {
            push(
                &mut out,
                Level::Fail,
                format!("cannot connect to Postgres: {e}"),
            );
            return out;
        }
    };
    if let Err(e) = check_with(&catalog, config, &mut out).await {
        push(&mut out, Level::Fail, format!("check interrupted: {e}"));
    }
    out
}

async fn check_with(
    catalog: &Catalog,
    config: &Config,
    out: &mut Vec<Finding>,
) -> Result<(), ReplicationError> {
    let db = catalog.client();
    let q = |e: tokio_postgres::Error| ReplicationError::Transient(e.to_string());
    let setting = |name: &'static str| async move {
        db.query_one("SELECT current_setting($1)", &[&name])
            .await
            .map(|r| r.get::<_, String>(0))
    };

    let wal_level = setting("wal_level").await.map_err(q)?;
    if wal_level == "logical" {
        push(out, Level::Ok, "wal_level is logical");
    } else {
        push(out, Level::Fail, format!(
            "wal_level is {wal_level}: set wal_level = logical (RDS/Aurora: rds.logical_replication = 1 in the parameter group) and restart Postgres"
        ));
    }
    for (name, what) in [
        ("max_replication_slots", "slot"),
        ("max_wal_senders", "WAL sender"),
    ] {
        let v: i64 = setting(name).await.map_err(q)?.parse().unwrap_or(0);
        if v < 1 {
            push(
                out,
                Level::Fail,
                format!(
                    "{name} is {v}: the streamer needs one {what}; raise it and restart Postgres"
                ),
            );
        }
    }

    let role = db
        .query_one(
            "SELECT r.rolname::text, r.rolsuper, r.rolreplication, \
                    coalesce(pg_has_role(r.oid, 'rds_replication', 'MEMBER'), false) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await;
    let role = match role {
        Ok(r) => r,
        // rds_replication does not exist outside RDS.
        Err(_) => db
            .query_one(
                "SELECT r.rolname::text, r.rolsuper, r.rolreplication, false \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(q)?,
    };
    let user: String = role.get(0);
    let (sup, repl, rds): (bool, bool, bool) = (role.get(1), role.get(2), role.get(3));
    if sup || repl || rds {
        push(out, Level::Ok, format!("user {user} may replicate"));
    } else {
        push(out, Level::Fail, format!(
            "user {user} lacks the REPLICATION attribute: ALTER ROLE {} WITH REPLICATION (RDS: GRANT rds_replication TO {})",
            quote_ident(&user), quote_ident(&user)
        ));
    }

    let publication = &config.source.publication;
    let pubrow = db
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(q)?;
    let published: Vec<(String, String)> = match pubrow {
        None => {
            push(out, Level::Warn, format!(
                "publication {publication} does not exist: `streamer run` creates it (needs ownership of the tables, or superuser for all tables)"
            ));
            config.tables()
        }
        Some(_) => {
            let rows = db
                .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[publication])
                .await
                .map_err(q)?;
            let have: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            push(
                out,
                Level::Ok,
                format!(
                    "publication {publication} exists with {} table(s)",
                    have.len()
                ),
            );
            for t in config.tables() {
                if !have.contains(&t) {
                    push(out, Level::Warn, format!(
                        "{}.{} is configured but not in publication {publication}: `streamer run` adds it (ALTER PUBLICATION … ADD TABLE)",
                        t.0, t.1
                    ));
                }
            }
            have
        }
    };

    let slot = &config.source.slot;
    let slotrow = db
        .query_opt(
            "SELECT plugin::text, active, confirmed_flush_lsn::text, \
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(q)?;
    match slotrow {
        None => push(
            out,
            Level::Warn,
            format!("slot {slot} does not exist: `streamer run` creates it"),
        ),
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            let active: bool = r.get(1);
            let lag: Option<i64> = r.get(3);
            if plugin.as_deref() != Some("pgoutput") {
                push(out, Level::Fail, format!("slot {slot} uses plugin {plugin:?}, not pgoutput: choose another source.slot"));
            } else {
                let lsn: Option<String> = r.get(2);
                push(
                    out,
                    Level::Ok,
                    format!(
                        "slot {slot} exists (confirmed {}, {} bytes behind, {})",
                        lsn.unwrap_or_default(),
                        lag.unwrap_or(0),
                        if active {
                            "in use by a connection"
                        } else {
                            "not in use"
                        }
                    ),
                );
            }
        }
    }

    for (schema, table) in &published {
        let row = db
            .query_opt(
                "SELECT c.oid, c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                        EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                                AND NOT a.attisdropped AND a.attstorage IN ('x', 'e')), \
                        has_table_privilege(c.oid, 'SELECT') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[schema, table],
            )
            .await
            .map_err(q)?;
        let name = format!("{schema}.{table}");
        let Some(r) = row else {
            push(
                out,
                Level::Fail,
                format!("table {name} does not exist: fix source.tables"),
            );
            continue;
        };
        let ident: String = r.get(1);
        let (has_pk, toastable, can_select): (bool, bool, bool) = (r.get(2), r.get(3), r.get(4));
        let full = format!(
            "ALTER TABLE {}.{} REPLICA IDENTITY FULL",
            quote_ident(schema),
            quote_ident(table)
        );
        if !can_select {
            push(
                out,
                Level::Fail,
                format!(
                    "no SELECT on {name}: GRANT SELECT ON {} TO the streamer's user",
                    name
                ),
            );
        }
        match (ident.as_str(), has_pk) {
            ("n", _) => push(out, Level::Fail, format!(
                "{name} has REPLICA IDENTITY NOTHING: Postgres refuses its UPDATEs and DELETEs while published; {full}"
            )),
            ("d", false) => push(out, Level::Fail, format!(
                "{name} has no primary key: its UPDATEs and DELETEs fail while published, and events have no record_pks; add a primary key, or {full}"
            )),
            ("f", false) => push(out, Level::Warn, format!(
                "{name} has no primary key: events have empty record_pks and one FIFO message group; add a primary key"
            )),
            ("f", true) => push(out, Level::Ok, format!("{name}: primary key, REPLICA IDENTITY FULL")),
            (_, _) if toastable => push(out, Level::Warn, format!(
                "{name} has TOAST-able columns without REPLICA IDENTITY FULL: unchanged large values arrive as \"unchanged_toast\" and updates carry no old values (changes = {{}}); {full}"
            )),
            _ => push(out, Level::Ok, format!("{name}: primary key (no old values in `changes` without REPLICA IDENTITY FULL)")),
        }
    }
    if let Ok(Some((lsn, active))) = catalog.slot_position(slot).await {
        tracing::debug!(confirmed = %format_lsn(lsn), active, "slot position");
    }
    Ok(())
}

/// Checks the sink: the queue / topic (and dead-letter queue) exist, the credentials
/// work, and FIFO-ness matches the URL or ARN (`GetQueueAttributes` / `GetTopicAttributes`).
pub async fn check_sink(config: &Config) -> Vec<Finding> {
    let finding = |r: Result<String, String>| match r {
        Ok(message) => Finding {
            level: Level::Ok,
            message,
        },
        Err(message) => Finding {
            level: Level::Fail,
            message,
        },
    };
    let sink = &config.sink;
    let mut out = Vec::new();
    let mut queues: Vec<&str> = Vec::new();
    if sink.kind == SinkType::Sqs {
        queues.extend(sink.queue_url.as_deref());
    }
    queues.extend(sink.dead_letter_queue_url.as_deref());
    for url in queues {
        let r = match SqsQueue::connect(sink, url).await {
            Ok(q) => q.check().await.map_err(|e| format!("SQS queue {url}: {e}")),
            Err(e) => Err(e.to_string()),
        };
        out.push(finding(r));
    }
    if sink.kind == SinkType::Sns {
        if let Some(arn) = sink.topic_arn.as_deref() {
            let r = match SnsTopic::connect(sink, arn).await {
                Ok(t) => t.check().await.map_err(|e| format!("SNS topic {arn}: {e}")),
                Err(e) => Err(e.to_string()),
            };
            out.push(finding(r));
        }
    }
    out
}
