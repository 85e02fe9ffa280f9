//! `streamer check`: connects and reports what would stop or degrade
//! streaming, one line each with the fix.

use std::fmt;

use crate::config::Config;
use crate::fanout::Planned;
use crate::replication::{format_lsn, quote_ident, Catalog, ReplicationError};

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

    let (user, may_replicate) = catalog.replication_role().await?;
    if may_replicate {
        push(out, Level::Ok, format!("user {user} may replicate"));
    } else {
        push(out, Level::Fail, format!(
            "user {user} lacks the REPLICATION attribute: ALTER ROLE {} WITH REPLICATION (RDS: GRANT rds_replication TO {})",
            quote_ident(&user), quote_ident(&user)
        ));
    }
    let version = catalog.server_version().await?;
    push(out, Level::Ok, version_report(version));
    if config.source.failover_slot && version < 170000 {
        push(out, Level::Fail, format!(
            "source.failover_slot is set, but Postgres {} has no failover slots (17+): remove it, or upgrade",
            version / 10000
        ));
    }

    let publication = &config.source.publication;
    let configured = config.tables();
    let tables = match catalog.publication(publication).await? {
        None => {
            let list = if configured.is_empty() {
                catalog.user_tables().await?
            } else {
                configured.clone()
            };
            push(out, Level::Warn, format!(
                "publication {publication} does not exist: `streamer run` creates it FOR TABLE with {} table(s){} \
                 WITH (publish_via_partition_root = true); tables without a replica identity are refused",
                list.len(),
                if configured.is_empty() { " (every table: source.tables is empty; tables created later are not added)" } else { "" }
            ));
            catalog.table_info(&list).await?
        }
        Some(p) => {
            push(
                out,
                Level::Ok,
                format!(
                    "publication {publication} exists with {} table(s)",
                    p.tables.len()
                ),
            );
            if p.all_tables {
                push(out, Level::Warn, format!(
                    "publication {publication} is FOR ALL TABLES: a table created later without a primary key or \
                     replica identity will refuse UPDATE and DELETE; create a publication FOR TABLE … and point \
                     source.publication at it"
                ));
            }
            let mut list = p.tables.clone();
            for t in &configured {
                if !p.all_tables && !p.tables.contains(t) && !p.members.contains(t) {
                    push(out, Level::Warn, format!(
                        "{}.{} is configured but not in publication {publication}: `streamer run` adds it (ALTER PUBLICATION … ADD TABLE)",
                        t.0, t.1
                    ));
                    list.push(t.clone());
                }
            }
            let infos = catalog.table_info(&list).await?;
            if !p.via_root && infos.iter().any(|t| t.root.is_some()) {
                push(out, Level::Ok, format!(
                    "publication {publication} publishes partitions (publish_via_partition_root is off): \
                     events are named after each partition's root table all the same"
                ));
            }
            infos
        }
    };

    let slot = &config.source.slot;
    let slot_failover = catalog.slot_failover(slot).await?;
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
                        "slot {slot} exists (confirmed {}, {} bytes behind, {}{})",
                        lsn.unwrap_or_default(),
                        lag.unwrap_or(0),
                        if active {
                            "in use by a connection"
                        } else {
                            "not in use"
                        },
                        match slot_failover {
                            Some(true) => ", a failover slot",
                            Some(false) => ", not a failover slot",
                            None => "",
                        }
                    ),
                );
                if config.source.failover_slot && slot_failover == Some(false) {
                    push(out, Level::Warn, format!(
                        "slot {slot} is not a failover slot although source.failover_slot is set: a promoted \
                         standby will not have it; stop the streamer, SELECT pg_drop_replication_slot('{slot}'), \
                         start it again (it creates the slot with failover) and backfill what changed in between"
                    ));
                }
            }
        }
    }

    for info in &tables {
        let name = info.qualified();
        if let Some(problem) = info.identity_problem() {
            push(out, Level::Fail, problem);
            continue;
        }
        if info.kind == b'p' {
            push(
                out,
                Level::Ok,
                format!(
                    "{name} is partitioned ({} partition(s)): its events are named {name}",
                    info.partitions
                ),
            );
        }
        if let Some(root) = &info.root {
            push(
                out,
                Level::Ok,
                format!("{name} is a partition of {root}: its events are named {root}"),
            );
        }
        let (schema, table) = (&info.schema, &info.name);
        let row = db
            .query_one(
                "SELECT c.relreplident::text, \
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
        let ident: String = row.get(0);
        let (has_pk, toastable, can_select): (bool, bool, bool) =
            (row.get(1), row.get(2), row.get(3));
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
                    "no SELECT on {name}: GRANT SELECT ON {}.{} TO the streamer's user",
                    quote_ident(schema),
                    quote_ident(table)
                ),
            );
        }
        match (ident.as_str(), has_pk) {
            ("f", false) => push(out, Level::Warn, format!(
                "{name} has no primary key: events have empty record_pks and one FIFO message group; add a primary key"
            )),
            ("f", true) => push(out, Level::Ok, format!("{name}: primary key, REPLICA IDENTITY FULL")),
            (_, _) if toastable => push(out, Level::Warn, format!(
                "{name} has TOAST-able columns without REPLICA IDENTITY FULL: unchanged large values arrive as \"unchanged_toast\" and updates carry no old values (changes = {{}}); {full}"
            )),
            ("i", _) => push(out, Level::Ok, format!("{name}: REPLICA IDENTITY USING INDEX (its columns are the key; no old values in `changes` without FULL)")),
            _ => push(out, Level::Ok, format!("{name}: primary key (no old values in `changes` without REPLICA IDENTITY FULL)")),
        }
    }
    for warning in catalog.stream_warnings(publication, &tables).await? {
        push(out, Level::Warn, warning);
    }
    let store = crate::backfill::store::Store::new(db);
    if store.exists().await.unwrap_or(false) {
        for bf in store.list(slot, false).await.unwrap_or_default() {
            push(out, Level::Ok, crate::backfill::cli::line(&bf));
        }
    }
    if let Ok(Some((lsn, active))) = catalog.slot_position(slot).await {
        tracing::debug!(confirmed = %format_lsn(lsn), active, "slot position");
    }
    Ok(())
}

/// The server's version and what walcast makes of it, as one line.
pub fn version_report(version: u32) -> String {
    let major = version / 10000;
    // pgoutput protocol versions by server: 2 (streaming of large in-progress
    // transactions) from 14, 3 (two-phase) from 15, 4 (parallel streaming) from 16.
    let protocol = match major {
        ..=13 => 1,
        14 => 2,
        15 => 3,
        _ => 4,
    };
    let mut parts = vec![format!(
        "pgoutput protocol 1 (the server speaks 1 to {protocol}; walcast reads whole committed \
         transactions, for which 1 carries everything)"
    )];
    parts.push(if major >= 17 {
        "failover slots available (source.failover_slot)".into()
    } else {
        "no failover slots (17+)".into()
    });
    parts.push(if major >= 18 {
        "generated columns published".into()
    } else {
        "generated columns cannot be streamed before Postgres 18".into()
    });
    format!("Postgres {major}.{}: {}", version % 10000, parts.join(", "))
}

/// Checks every sink: its queue or topic, its routes' destinations and the
/// dead-letter queue exist, the credentials work, and FIFO-ness matches the names
/// and each other ([`Planned::check`], the check `streamer run` makes before set-up).
/// With several sinks, each finding names its sink.
pub async fn check_sink(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Ok(catalog) =
        crate::replication::Catalog::connect(&config.postgres(), &config.source.slot).await
    {
        match crate::fanout::check_selections(config, &catalog).await {
            Ok(found) => findings.extend(found.into_iter().map(|f| match f {
                Ok(message) => Finding {
                    level: Level::Warn,
                    message,
                },
                Err(message) => Finding {
                    level: Level::Fail,
                    message,
                },
            })),
            Err(e) => findings.push(Finding {
                level: Level::Fail,
                message: format!("checking the sinks' tables and columns: {e}"),
            }),
        }
    }
    for sink in &config.sinks {
        let results = match Planned::connect(sink).await {
            Ok(p) => p.check().await,
            Err(e) => vec![Err(e)],
        };
        let prefix = if config.sinks.len() > 1 {
            format!("sink `{}`: ", sink.name)
        } else {
            String::new()
        };
        findings.extend(results.into_iter().map(|r| match r {
            Ok(message) => Finding {
                level: Level::Ok,
                message: format!("{prefix}{message}"),
            },
            Err(e) => Finding {
                level: Level::Fail,
                message: format!("{prefix}{e}"),
            },
        }));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::version_report;

    #[test]
    fn the_version_line_says_what_follows_from_it() {
        let v14 = version_report(140023);
        assert!(
            v14.starts_with("Postgres 14.23: pgoutput protocol 1 (the server speaks 1 to 2"),
            "{v14}"
        );
        assert!(
            v14.contains("no failover slots (17+)")
                && v14.contains("cannot be streamed before Postgres 18"),
            "{v14}"
        );
        let v16 = version_report(160014);
        assert!(v16.contains("speaks 1 to 4"), "{v16}");
        let v17 = version_report(170010);
        assert!(
            v17.contains("failover slots available (source.failover_slot)"),
            "{v17}"
        );
        let v18 = version_report(180004);
        assert!(
            v18.starts_with("Postgres 18.4:") && v18.contains("generated columns published"),
            "{v18}"
        );
    }
}
