//! The ordinary SQL connection: slot and publication setup, and what the
//! stream does not say (type details, primary keys).
//!
//! Types are resolved once per OID and cached: domains to their base type,
//! arrays to their element type, enums and extension types to text.

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls};

use super::{from_sql, tls, ReplicationError};
use crate::config::Postgres;
use crate::event::{Column, Table, TypeKind};
use crate::replication::pgoutput::RelationColumn;

/// An open SQL connection to the source.
pub struct Catalog {
    client: Client,
    slot: String,
    types: HashMap<u32, TypeKind>,
}

/// The slot's state, as Postgres reports it.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// Where streaming resumes.
    pub confirmed_flush_lsn: u64,
    /// Whether this call created it.
    pub created: bool,
}

/// Parses `XXX/YYY`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats an LSN as `XXX/YYY`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl Catalog {
    /// Connects (the connection task runs until the `Catalog` is dropped).
    pub async fn connect(pg: &Postgres, slot: &str) -> Result<Catalog, ReplicationError> {
        let mut config = pg.config.clone();
        config.application_name("walcast-catalog");
        let context = "connecting to Postgres";
        let client = match tls::client_config(&pg.tls)? {
            None => {
                let (client, conn) = config
                    .connect(NoTls)
                    .await
                    .map_err(|e| from_sql(context, &e, slot))?;
                tokio::spawn(watch_connection(conn));
                client
            }
            Some(rustls) => {
                let (client, conn) = config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(rustls))
                    .await
                    .map_err(|e| from_sql(context, &e, slot))?;
                tokio::spawn(watch_connection(conn));
                client
            }
        };
        Ok(Catalog {
            client,
            slot: slot.to_owned(),
            types: HashMap::new(),
        })
    }

    /// The underlying client (for `check`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn err(&self, context: &str, e: tokio_postgres::Error) -> ReplicationError {
        from_sql(context, &e, &self.slot)
    }

    /// Creates the publication when missing; adds configured tables it lacks.
    pub async fn ensure_publication(
        &self,
        name: &str,
        tables: &[(String, String)],
    ) -> Result<(), ReplicationError> {
        let row = self
            .client
            .query_opt(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(|e| self.err("reading pg_publication", e))?;
        let list = tables
            .iter()
            .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        match row {
            None => {
                let sql = if tables.is_empty() {
                    format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(name))
                } else {
                    format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name))
                };
                self.client.batch_execute(&sql).await.map_err(|e| {
                    definite_with(
                        self.err("creating the publication", e),
                        "Create it as a user that owns the tables (FOR ALL TABLES needs a superuser), \
                         or create it yourself: CREATE PUBLICATION … FOR TABLE ….",
                    )
                })?;
                tracing::info!(publication = name, "created publication");
            }
            Some(row) => {
                let all: bool = row.get(0);
                if all || tables.is_empty() {
                    return Ok(());
                }
                let published = self
                    .client
                    .query(
                        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
                        &[&name],
                    )
                    .await
                    .map_err(|e| self.err("reading pg_publication_tables", e))?;
                let have: Vec<(String, String)> =
                    published.iter().map(|r| (r.get(0), r.get(1))).collect();
                for (s, t) in tables {
                    if !have.iter().any(|(hs, ht)| hs == s && ht == t) {
                        let sql = format!(
                            "ALTER PUBLICATION {} ADD TABLE {}.{}",
                            quote_ident(name),
                            quote_ident(s),
                            quote_ident(t)
                        );
                        self.client
                            .batch_execute(&sql)
                            .await
                            .map_err(|e| self.err("adding a table to the publication", e))?;
                        tracing::info!(publication = name, table = %format!("{s}.{t}"), "added table to publication");
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the logical slot (pgoutput) when missing; returns its state.
    pub async fn ensure_slot(&self, slot: &str) -> Result<SlotState, ReplicationError> {
        let mut created = false;
        loop {
            let row = self
                .client
                .query_opt(
                    "SELECT plugin, slot_type, database, confirmed_flush_lsn::text \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|e| self.err("reading pg_replication_slots", e))?;
            if let Some(row) = row {
                let plugin: Option<String> = row.get(0);
                let kind: String = row.get(1);
                let db: Option<String> = row.get(2);
                let current: String = self
                    .client
                    .query_one("SELECT current_database()::text", &[])
                    .await
                    .map_err(|e| self.err("reading current_database()", e))?
                    .get(0);
                if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
                    return Err(ReplicationError::Definite(format!(
                        "slot `{slot}` exists but is {kind} with plugin {}: choose another \
                         source.slot, or drop it (SELECT pg_drop_replication_slot('{slot}'))",
                        plugin.as_deref().unwrap_or("none")
                    )));
                }
                if db.as_deref() != Some(current.as_str()) {
                    return Err(ReplicationError::Definite(format!(
                        "slot `{slot}` belongs to database {}, not {current}: choose another source.slot",
                        db.as_deref().unwrap_or("?")
                    )));
                }
                let lsn: Option<String> = row.get(3);
                return Ok(SlotState {
                    confirmed_flush_lsn: lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
                    created,
                });
            }
            self.client
                .query(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await
                .map_err(|e| {
                    definite_with(
                        self.err("creating the replication slot", e),
                        "The user needs the REPLICATION attribute (RDS: GRANT rds_replication), \
                         and wal_level must be logical.",
                    )
                })?;
            tracing::info!(slot, "created replication slot");
            created = true;
        }
    }

    /// Moves the slot forward to `lsn` while no one streams from it (shutdown fallback).
    pub async fn advance_slot(&self, slot: &str, lsn: u64) -> Result<(), ReplicationError> {
        self.client
            .query(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &format_lsn(lsn)],
            )
            .await
            .map_err(|e| self.err("advancing the slot", e))?;
        Ok(())
    }

    /// The slot's confirmed position and whether a connection streams from it.
    pub async fn slot_position(&self, slot: &str) -> Result<Option<(u64, bool)>, ReplicationError> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| self.err("reading pg_replication_slots", e))?;
        Ok(row.map(|r| {
            let lsn: Option<String> = r.get(0);
            (lsn.as_deref().and_then(parse_lsn).unwrap_or(0), r.get(1))
        }))
    }

    /// `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot, in bytes.
    pub async fn slot_lag(&self, slot: &str) -> Result<Option<i64>, ReplicationError> {
        let row = self
            .client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| self.err("reading the slot's lag", e))?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// How values of type `oid` are written (cached).
    pub async fn type_kind(&mut self, oid: u32) -> Result<TypeKind, ReplicationError> {
        if let Some(k) = TypeKind::builtin(oid) {
            return Ok(k);
        }
        if let Some(k) = self.types.get(&oid) {
            return Ok(k.clone());
        }
        let row = self
            .client
            .query_opt(
                "SELECT t.typtype::text, t.typbasetype, t.typelem, t.typcategory::text, \
                        coalesce(e.typdelim::text, ',') \
                 FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem WHERE t.oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| self.err("reading pg_type", e))?;
        let kind = match row {
            None => TypeKind::Text,
            Some(r) => {
                let typtype: String = r.get(0);
                let base: u32 = r.get(1);
                let elem: u32 = r.get(2);
                let category: String = r.get(3);
                let delim: String = r.get(4);
                if typtype == "d" && base != 0 {
                    Box::pin(self.type_kind(base)).await?
                } else if category == "A" && elem != 0 {
                    let inner = Box::pin(self.type_kind(elem)).await?;
                    TypeKind::Array(Box::new(inner), delim.bytes().next().unwrap_or(b','))
                } else {
                    TypeKind::Text
                }
            }
        };
        self.types.insert(oid, kind.clone());
        Ok(kind)
    }

    /// Primary key column names in key order (empty when the table has none).
    pub async fn primary_key(&self, relation: u32) -> Result<Vec<String>, ReplicationError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&relation],
            )
            .await
            .map_err(|e| self.err("reading the primary key", e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Builds a [`Table`] from a Relation message.
    pub async fn table(
        &mut self,
        id: u32,
        schema: &str,
        name: &str,
        columns: &[RelationColumn],
        group_columns: Option<&[String]>,
    ) -> Result<Table, ReplicationError> {
        let mut cols = Vec::with_capacity(columns.len());
        for c in columns {
            cols.push(Column::new(
                c.name.clone(),
                self.type_kind(c.type_oid).await?,
                c.key,
            ));
        }
        let index_of = |n: &str| columns.iter().position(|c| c.name == n);
        let pk_names = self.primary_key(id).await?;
        let mut primary_key: Vec<usize> = pk_names.iter().filter_map(|n| index_of(n)).collect();
        if primary_key.is_empty() {
            // No primary key: the replica identity index, when it is not FULL (all columns).
            if !columns.iter().all(|c| c.key) {
                primary_key = columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.key)
                    .map(|(i, _)| i)
                    .collect();
            }
        }
        let mut group_key = Vec::new();
        if let Some(names) = group_columns {
            for n in names {
                group_key.push(index_of(n).ok_or_else(|| {
                    ReplicationError::Definite(format!(
                        "sink.group_columns: {schema}.{name} has no column `{n}`"
                    ))
                })?);
            }
        }
        Ok(Table::new(
            id,
            schema.to_owned(),
            name.to_owned(),
            cols,
            primary_key,
            group_key,
        ))
    }
}

async fn watch_connection<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "catalog connection closed");
    }
}

fn definite_with(e: ReplicationError, hint: &str) -> ReplicationError {
    match e {
        ReplicationError::Definite(m) if !m.ends_with('.') || !m.contains(hint) => {
            ReplicationError::Definite(format!("{m} {hint}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
