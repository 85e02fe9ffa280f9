//! The ordinary SQL connection: slot and publication setup, and what the
//! stream does not say (type details, primary keys).
//!
//! Types are resolved once per OID and cached: domains to their base type,
//! arrays to their element type, enums and extension types to text.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use super::tls::{self, Refusal, Wire};
use super::{from_sql, sql_refusal, ReplicationError};
use crate::config::{Auth, Postgres};
use crate::event::{Column, Table, TypeKind};
use crate::replication::pgoutput::RelationColumn;

/// An open SQL connection to the source.
pub struct Catalog {
    client: Client,
    slot: String,
    types: HashMap<u32, TypeKind>,
    /// Woken by each notification (`LISTEN`) the connection receives.
    notified: Arc<tokio::sync::Notify>,
}

/// A publication as `pg_publication` describes it.
#[derive(Debug, Clone)]
pub struct Publication {
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// `publish_via_partition_root`.
    pub via_root: bool,
    /// The published tables (for partitioned tables: the root when `via_root`, else the partitions).
    pub tables: Vec<(String, String)>,
    /// The tables added to it by name (`FOR TABLE`, `ADD TABLE`; a partitioned table as itself).
    pub members: Vec<(String, String)>,
}

/// A table, as far as publishing it is concerned.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, others are not publishable.
    pub kind: u8,
    /// Not temporary or unlogged (those cannot be published).
    pub permanent: bool,
    /// The table itself or its leaf partitions (`schema.name`, quoted) that have no
    /// usable replica identity: Postgres refuses their UPDATEs and DELETEs once published.
    pub without_identity: Vec<String>,
    /// Stored generated columns (pgoutput sends them from Postgres 18 on, when asked).
    pub generated: Vec<String>,
    /// Leaf partitions, for a partitioned table.
    pub partitions: i64,
    /// For a partition: the root of its tree (`schema.name`, quoted as needed).
    pub root: Option<String>,
}

impl TableInfo {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Why this table cannot be published without breaking writes or failing, if so:
    /// one sentence, with the fix.
    pub fn identity_problem(&self) -> Option<String> {
        let name = self.qualified();
        if !self.exists {
            return Some(format!("table {name} does not exist: fix source.tables"));
        }
        if !matches!(self.kind, b'r' | b'p') || !self.permanent {
            return Some(format!(
                "{name} is not a permanent table (views, temporary and unlogged tables cannot be published): leave it out of source.tables"
            ));
        }
        if self.without_identity.is_empty() {
            return None;
        }
        let which = if self.kind == b'p' {
            format!("{name} (partitions {})", self.without_identity.join(", "))
        } else {
            name.clone()
        };
        let target = self.without_identity[0].clone();
        Some(format!(
            "{which} has no replica identity (no primary key, and not REPLICA IDENTITY FULL or USING INDEX): \
             once published, Postgres refuses the application's UPDATE and DELETE on it. \
             Fix: add a primary key, or ALTER TABLE {target} REPLICA IDENTITY FULL \
             (or REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>), or leave it out of source.tables"
        ))
    }
}

/// Refuses to publish tables that would break the application's writes.
fn refuse_unpublishable(
    publication: &str,
    infos: &[TableInfo],
    default_list: bool,
) -> Result<(), ReplicationError> {
    let problems: Vec<String> = infos
        .iter()
        .filter_map(TableInfo::identity_problem)
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let hint = if default_list {
        " (source.tables is empty, so every table would be published: list the tables to stream in source.tables)"
    } else {
        ""
    };
    Err(ReplicationError::Definite(format!(
        "not publishing in {publication}{hint}: {}",
        problems.join("; ")
    )))
}

/// Where a value that is not UTF-8 was found.
#[derive(Debug, Clone)]
struct NonUtf8 {
    table: String,
    column: String,
    commit_lsn: u64,
    end_lsn: u64,
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
    /// Connects (the connection task runs until the `Catalog` is dropped), with
    /// TLS as `sslmode` says (libpq's attempts: see `tls`).
    pub async fn connect(pg: &Postgres, slot: &str) -> Result<Catalog, ReplicationError> {
        let context = &format!("connecting to Postgres at {}", pg.endpoint());
        let notified = Arc::new(tokio::sync::Notify::new());
        let client = tls::connect_as_libpq(pg.tls.mode, |wire| {
            connect_once(pg, wire, context, slot, Arc::clone(&notified))
        })
        .await?;
        Ok(Catalog {
            client,
            slot: slot.to_owned(),
            types: HashMap::new(),
            notified,
        })
    }

    /// Returns once a notification arrived on a channel this connection listens
    /// to (`LISTEN`), also one that arrived since the last call, or after `wait`.
    pub async fn notification_within(&self, wait: std::time::Duration) {
        let _ = tokio::time::timeout(wait, self.notified.notified()).await;
    }

    /// The underlying client (for `check`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn err(&self, context: &str, e: tokio_postgres::Error) -> ReplicationError {
        from_sql(context, &e, &self.slot)
    }

    /// A server setting, e.g. `wal_level`.
    pub async fn setting(&self, name: &str) -> Result<String, ReplicationError> {
        Ok(self
            .client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(|e| self.err(&format!("reading {name}"), e))?
            .get(0))
    }

    /// `server_version_num`, e.g. 150012.
    pub async fn server_version(&self) -> Result<u32, ReplicationError> {
        Ok(self
            .setting("server_version_num")
            .await?
            .parse()
            .unwrap_or(0))
    }

    /// The publication as it is now, if it exists.
    pub async fn publication(&self, name: &str) -> Result<Option<Publication>, ReplicationError> {
        let row = self
            .client
            .query_opt(
                "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(|e| self.err("reading pg_publication", e))?;
        let Some(row) = row else { return Ok(None) };
        let tables = self
            .client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&name],
            )
            .await
            .map_err(|e| self.err("reading pg_publication_tables", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let members = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel pr \
                 JOIN pg_publication p ON p.oid = pr.prpubid \
                 JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE p.pubname = $1",
                &[&name],
            )
            .await
            .map_err(|e| self.err("reading pg_publication_rel", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(Some(Publication {
            all_tables: row.get(0),
            via_root: row.get(1),
            tables,
            members,
        }))
    }

    /// The tables a publication made without `source.tables` lists: every
    /// permanent table (partitioned tables by their root) outside the system
    /// schemas that is not part of an extension.
    pub async fn user_tables(&self) -> Result<Vec<(String, String)>, ReplicationError> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p' \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'walcast') \
                   AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                                   AND d.objid = c.oid AND d.deptype = 'e') \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| self.err("listing tables", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// A table's columns (in order) and its key columns (the primary key, or the
    /// replica identity index): `None` when there is no such table.
    pub async fn columns_and_key(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, ReplicationError> {
        let row = self
            .client
            .query_opt(
                "SELECT array(SELECT a.attname::text FROM pg_attribute a                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),                  array(SELECT a.attname::text FROM pg_index i                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)                    WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&schema, &table],
            )
            .await
            .map_err(|e| self.err("reading a table's columns", e))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// What each table is, and why publishing it would break the application's
    /// writes, if it would (see [`TableInfo::identity_problem`]).
    pub async fn table_info(
        &self,
        tables: &[(String, String)],
    ) -> Result<Vec<TableInfo>, ReplicationError> {
        let schemas: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
        let names: Vec<&str> = tables.iter().map(|t| t.1.as_str()).collect();
        // A leaf is the table itself, or each leaf partition of a partitioned table: the
        // relation an UPDATE or DELETE changes, whose replica identity Postgres checks.
        let rows = self
            .client
            .query(
                "SELECT t.schema, t.name, c.oid IS NOT NULL, coalesce(c.relkind::text, ''), \
                   coalesce(c.relpersistence = 'p', false), \
                   coalesce((SELECT array_agg(format('%I.%I', ln.nspname, l.relname) ORDER BY l.relname) \
                     FROM pg_class l JOIN pg_namespace ln ON ln.oid = l.relnamespace \
                     WHERE l.oid IN (SELECT c.oid WHERE c.relkind <> 'p' \
                                     UNION SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf) \
                       AND NOT (l.relreplident = 'f' \
                         OR (l.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid AND i.indisprimary)) \
                         OR (l.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid AND i.indisreplident)))), \
                     '{}'), \
                   coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated <> ''), '{}'), \
                   coalesce((SELECT count(*) FROM pg_partition_tree(c.oid) WHERE isleaf AND c.relkind = 'p'), 0), \
                   CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::regclass::text END \
                 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(schema, name, ord) \
                 LEFT JOIN pg_namespace n ON n.nspname = t.schema \
                 LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.name \
                 ORDER BY t.ord",
                &[&schemas, &names],
            )
            .await
            .map_err(|e| self.err("reading the tables' replica identities", e))?;
        Ok(rows
            .iter()
            .map(|r| TableInfo {
                schema: r.get(0),
                name: r.get(1),
                exists: r.get(2),
                kind: r.get::<_, String>(3).bytes().next().unwrap_or(b' '),
                permanent: r.get(4),
                without_identity: r.get(5),
                generated: r.get(6),
                partitions: r.get(7),
                root: r.get(8),
            })
            .collect())
    }

    /// The tables of a publication, described.
    pub async fn published(&self, publication: &str) -> Result<Vec<TableInfo>, ReplicationError> {
        match self.publication(publication).await? {
            Some(p) => self.table_info(&p.tables).await,
            None => Ok(Vec::new()),
        }
    }

    /// What stops streaming before anything is created: `wal_level`, and the
    /// user's right to replicate. Checked first, so a failing `run` leaves no
    /// publication or slot behind.
    pub async fn preflight(&self) -> Result<(), ReplicationError> {
        let wal_level = self.setting("wal_level").await?;
        if wal_level != "logical" {
            return Err(ReplicationError::Definite(format!(
                "wal_level is {wal_level}: set wal_level = logical (RDS/Aurora: rds.logical_replication = 1 \
                 in the parameter group) and restart Postgres"
            )));
        }
        let (user, may) = self.replication_role().await?;
        if !may {
            return Err(ReplicationError::Definite(format!(
                "user {user} may not replicate: ALTER ROLE {} WITH REPLICATION (RDS: GRANT rds_replication TO {})",
                quote_ident(&user),
                quote_ident(&user)
            )));
        }
        Ok(())
    }

    /// The current user, and whether it may open a replication connection
    /// (superuser, REPLICATION, or RDS's `rds_replication`).
    pub async fn replication_role(&self) -> Result<(String, bool), ReplicationError> {
        let row = self
            .client
            .query_one(
                "SELECT r.rolname::text, r.rolsuper OR r.rolreplication OR \
                   EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' \
                           AND pg_has_role(r.oid, g.oid, 'MEMBER')) \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| self.err("reading the user's attributes", e))?;
        Ok((row.get(0), row.get(1)))
    }

    /// What the stream will not carry, or carry differently, for these tables:
    /// one warning each, with the reason and the fix.
    pub async fn stream_warnings(
        &self,
        publication: &str,
        tables: &[TableInfo],
    ) -> Result<Vec<String>, ReplicationError> {
        let version = self.server_version().await?;
        let mut out = Vec::new();
        if self.server_encoding().await? == "SQL_ASCII" {
            out.push(
                "the database's encoding is SQL_ASCII: a text value that is not valid UTF-8 stops the \
                 stream (the stop names its table, column and LSN); move the database to UTF8 encoding"
                    .to_owned(),
            );
        }
        let gencols = if version >= 180000 {
            self.client
                .query_opt(
                    "SELECT pubgencols::text FROM pg_publication WHERE pubname = $1",
                    &[&publication],
                )
                .await
                .map_err(|e| self.err("reading pg_publication", e))?
                .map(|r| r.get::<_, String>(0) == "s")
                .unwrap_or(true)
        } else {
            false
        };
        for t in tables.iter().filter(|t| !t.generated.is_empty()) {
            let cols = t.generated.join(", ");
            if version < 180000 {
                out.push(format!(
                    "{}: generated columns {cols} are not streamed: Postgres {} cannot send them \
                     (Postgres 18 can); compute them in the consumer",
                    t.qualified(),
                    version / 10000
                ));
            } else if !gencols {
                out.push(format!(
                    "{}: generated columns {cols} are not streamed: ALTER PUBLICATION {} SET \
                     (publish_generated_columns = stored)",
                    t.qualified(),
                    quote_ident(publication)
                ));
            }
        }
        Ok(out)
    }

    /// Creates the publication when missing (for `tables`, or for every user
    /// table when `tables` is empty); adds configured tables it lacks.
    ///
    /// It never publishes a table whose UPDATEs and DELETEs Postgres would then
    /// refuse (no primary key, no replica identity index, not FULL): that
    /// would break the application's writes. It refuses instead, naming the
    /// tables and the fix. `FOR ALL TABLES` is never created, for the same
    /// reason: it would publish tables created later, whatever their identity.
    pub async fn ensure_publication(
        &self,
        name: &str,
        tables: &[(String, String)],
    ) -> Result<(), ReplicationError> {
        self.ensure_publication_once(name, tables, true).await
    }

    /// [`Self::ensure_publication`]; `retry`: look again (once) when another
    /// streamer created the publication or added a table since we looked.
    async fn ensure_publication_once(
        &self,
        name: &str,
        tables: &[(String, String)],
        retry: bool,
    ) -> Result<(), ReplicationError> {
        let existing = self.publication(name).await?;
        let (to_add, create) = match &existing {
            None if tables.is_empty() => (self.user_tables().await?, true),
            None => (tables.to_vec(), true),
            Some(p) if p.all_tables || tables.is_empty() => (Vec::new(), false),
            Some(p) => (
                tables
                    .iter()
                    .filter(|t| !p.tables.contains(t) && !p.members.contains(t))
                    .cloned()
                    .collect(),
                false,
            ),
        };
        let infos = self.table_info(&to_add).await?;
        refuse_unpublishable(name, &infos, tables.is_empty())?;
        let list = to_add
            .iter()
            .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
            .collect::<Vec<_>>()
            .join(", ");
        if create {
            let mut options = vec!["publish_via_partition_root = true"];
            if self.server_version().await? >= 180000 {
                options.push("publish_generated_columns = stored");
            }
            let sql = format!(
                "CREATE PUBLICATION {}{} WITH ({})",
                quote_ident(name),
                if list.is_empty() {
                    String::new()
                } else {
                    format!(" FOR TABLE {list}")
                },
                options.join(", ")
            );
            if let Err(e) = self.client.batch_execute(&sql).await {
                // Another streamer created it meanwhile: take it as it is.
                if retry && raced(&e) {
                    return Box::pin(self.ensure_publication_once(name, tables, false)).await;
                }
                return Err(denied_with(
                    "creating the publication",
                    &e,
                    &self.slot,
                    "The streamer's user must own the tables, or create the publication yourself \
                     (CREATE PUBLICATION … FOR TABLE … WITH (publish_via_partition_root = true)).",
                ));
            }
            if to_add.is_empty() {
                tracing::warn!(publication = name, "created publication with no tables: there is no table to stream yet; list tables in source.tables");
            } else {
                tracing::info!(
                    publication = name,
                    tables = to_add.len(),
                    "created publication"
                );
            }
        } else if !list.is_empty() {
            let sql = format!("ALTER PUBLICATION {} ADD TABLE {list}", quote_ident(name));
            if let Err(e) = self.client.batch_execute(&sql).await {
                if retry && raced(&e) {
                    return Box::pin(self.ensure_publication_once(name, tables, false)).await;
                }
                return Err(denied_with(
                    "adding tables to the publication",
                    &e,
                    &self.slot,
                    "The streamer's user must own the tables, or add them yourself (ALTER PUBLICATION … ADD TABLE …).",
                ));
            }
            tracing::info!(publication = name, tables = %list, "added tables to publication");
        }
        Ok(())
    }

    /// `server_encoding`, e.g. `UTF8` or `SQL_ASCII`.
    pub async fn server_encoding(&self) -> Result<String, ReplicationError> {
        self.setting("server_encoding").await
    }

    /// Explains a stream that stopped with "invalid byte sequence for encoding
    /// UTF8": in a SQL_ASCII database a text value can hold any bytes, and the
    /// walsender cannot convert them to the UTF-8 the protocol asks for. Peeks
    /// the slot's changes (up to the failing transaction, `upto`) in a session
    /// whose `client_encoding` is SQL_ASCII too, so nothing is converted,
    /// decodes them and names the table, the column and the LSN (never the value).
    /// `None` when the database is not SQL_ASCII (the error speaks for itself).
    ///
    /// This leaves the connection's `client_encoding` at SQL_ASCII: call it only
    /// when the session ends.
    pub async fn explain_encoding_error(
        &self,
        slot: &str,
        publication: &str,
        upto: Option<u64>,
    ) -> Option<ReplicationError> {
        if self.server_encoding().await.ok()? != "SQL_ASCII" {
            return None;
        }
        let found = self.find_non_utf8(slot, publication, upto).await;
        let fix = "The database's encoding is SQL_ASCII, which stores any bytes, and logical \
                   replication sends text as UTF-8. Correct the value in the table, then skip \
                   the transaction with";
        Some(ReplicationError::Definite(match found {
            Ok(Some(at)) => format!(
                "a text value is not UTF-8: table {}, column {}, in the transaction committed at LSN {}. \
                 {fix} SELECT pg_replication_slot_advance('{slot}', '{}') (its changes are then not \
                 streamed: backfill the table) and restart; for good, move the database to UTF8 encoding",
                at.table,
                at.column,
                format_lsn(at.commit_lsn),
                format_lsn(at.end_lsn)
            ),
            Ok(None) => format!(
                "a text value is not UTF-8 (SQLSTATE 22021){}. {fix} \
                 pg_replication_slot_advance('{slot}', <the LSN after it>) and restart; for good, \
                 move the database to UTF8 encoding",
                upto.map(|l| format!(" in the transaction committed at LSN {}", format_lsn(l)))
                    .unwrap_or_default()
            ),
            Err(e) => format!(
                "a text value is not UTF-8 (SQLSTATE 22021){}; finding it failed ({e}). {fix} \
                 pg_replication_slot_advance('{slot}', <the LSN after it>) and restart",
                upto.map(|l| format!(" in the transaction committed at LSN {}", format_lsn(l)))
                    .unwrap_or_default()
            ),
        }))
    }

    async fn find_non_utf8(
        &self,
        slot: &str,
        publication: &str,
        upto: Option<u64>,
    ) -> Result<Option<NonUtf8>, ReplicationError> {
        use crate::replication::pgoutput::{decode, Datum, PgOutput};
        // The walsender that failed releases the slot as it exits.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some((_, true)) = self.slot_position(slot).await? {
            if tokio::time::Instant::now() > deadline {
                return Err(ReplicationError::Transient(
                    "the slot is still in use".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.client
            .batch_execute("SET client_encoding TO 'SQL_ASCII'")
            .await
            .map_err(|e| self.err("setting client_encoding", e))?;
        let upto = upto.map(|l| format_lsn(l + 1));
        let rows = self
            .client
            .query(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::text::pg_lsn, NULL, \
                 'proto_version', '1', 'publication_names', $3)",
                &[&slot, &upto, &publication],
            )
            .await
            .map_err(|e| self.err("peeking the slot", e))?;
        let mut tables: HashMap<u32, (String, Vec<String>)> = HashMap::new();
        let mut found: Option<NonUtf8> = None;
        let mut commit_lsn = 0;
        for row in &rows {
            let data: &[u8] = row.get(0);
            let Ok(msg) = decode(data) else { continue };
            let (relation, tuples) = match msg {
                PgOutput::Begin { final_lsn, .. } => {
                    commit_lsn = final_lsn;
                    continue;
                }
                PgOutput::Commit { end_lsn, .. } => {
                    if let Some(f) = found.as_mut() {
                        f.end_lsn = end_lsn;
                        break;
                    }
                    continue;
                }
                PgOutput::Relation {
                    id,
                    namespace,
                    name,
                    columns,
                    ..
                } => {
                    let names = columns.into_iter().map(|c| c.name).collect();
                    tables.insert(id, (format!("{namespace}.{name}"), names));
                    continue;
                }
                PgOutput::Insert { relation, new } => (relation, vec![new]),
                PgOutput::Update { relation, old, new } => (
                    relation,
                    old.map(|o| o.tuple().clone())
                        .into_iter()
                        .chain([new])
                        .collect(),
                ),
                PgOutput::Delete { relation, old } => (relation, vec![old.tuple().clone()]),
                _ => continue,
            };
            if found.is_some() {
                continue;
            }
            let bad = tuples.iter().find_map(|t| {
                t.iter()
                    .position(|d| matches!(d, Datum::Text(b) if std::str::from_utf8(b).is_err()))
            });
            if let Some(i) = bad {
                let (table, columns) = tables.get(&relation).cloned().unwrap_or_default();
                found = Some(NonUtf8 {
                    table,
                    column: columns
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("#{}", i + 1)),
                    commit_lsn,
                    end_lsn: commit_lsn,
                });
            }
        }
        Ok(found)
    }

    /// Creates the logical slot (pgoutput) when missing; returns its state.
    ///
    /// With `failover` (`source.failover_slot`) the slot is created as a failover
    /// slot, which needs Postgres 17; an existing slot without it is used with a
    /// warning (a slot's failover property is only changed by dropping it, or by
    /// `ALTER_REPLICATION_SLOT` on a replication connection).
    pub async fn ensure_slot(
        &self,
        slot: &str,
        failover: bool,
    ) -> Result<SlotState, ReplicationError> {
        let version = self.server_version().await?;
        if failover && version < 170000 {
            return Err(ReplicationError::Definite(format!(
                "source.failover_slot: Postgres {} has no failover slots (they came with 17): \
                 remove source.failover_slot, or upgrade (RDS Multi-AZ DB clusters copy slots \
                 to their readers without it)",
                version / 10000
            )));
        }
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
                if failover && !self.slot_failover(slot).await?.unwrap_or(false) {
                    tracing::warn!(
                        slot,
                        "the slot is not a failover slot (it was created without \
                         source.failover_slot): a promoted standby will not have it; stop the \
                         streamer, drop the slot (SELECT pg_drop_replication_slot('{slot}')) and \
                         start it again to create it with failover, then backfill what changed \
                         in between"
                    );
                }
                return Ok(SlotState {
                    confirmed_flush_lsn: lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
                    created,
                });
            }
            let made = if failover {
                // (name, plugin, temporary, two-phase, failover): Postgres 17+.
                self.client
                    .query(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)",
                        &[&slot],
                    )
                    .await
            } else {
                self.client
                    .query(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&slot],
                    )
                    .await
            };
            match made {
                Ok(_) => {
                    tracing::info!(slot, "created replication slot");
                    created = true;
                }
                // Another streamer created it meanwhile: read it as it is.
                Err(e) if raced(&e) => {}
                Err(e) => {
                    return Err(denied_with(
                        "creating the replication slot",
                        &e,
                        slot,
                        "Give the streamer's user the REPLICATION attribute \
                         (ALTER ROLE … WITH REPLICATION; RDS: GRANT rds_replication TO …).",
                    ))
                }
            }
        }
    }

    /// Whether the slot is a failover slot (`None` before Postgres 17, or no such slot).
    pub async fn slot_failover(&self, slot: &str) -> Result<Option<bool>, ReplicationError> {
        if self.server_version().await? < 170000 {
            return Ok(None);
        }
        Ok(self
            .client
            .query_opt(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| self.err("reading pg_replication_slots", e))?
            .map(|r| r.get(0)))
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

    /// Builds a [`Table`] from a Relation message.
    ///
    /// The key (`record_pks`) is the replica identity *as the stream described
    /// it at that change*: the Relation message's key flags, which Postgres
    /// takes from the catalog as of the change, so DDL since (a key column
    /// renamed, the primary key replaced) never relabels older changes. Only
    /// with REPLICA IDENTITY FULL, where every column is flagged, is the
    /// primary key read from today's catalog (by name; by position when the
    /// columns were renamed since but are as many).
    ///
    /// A partition is named after the root of its partition tree: the table
    /// the user created and queries.
    pub async fn table<'c>(
        &mut self,
        id: u32,
        relation: RelationInfo<'_>,
        group_columns: impl Fn(&str, &str) -> Option<&'c [String]>,
    ) -> Result<Table, ReplicationError> {
        let RelationInfo {
            schema,
            name,
            replica_identity,
            columns,
        } = relation;
        let mut cols = Vec::with_capacity(columns.len());
        for c in columns {
            cols.push(Column::new(
                c.name.clone(),
                self.type_kind(c.type_oid).await?,
                c.key,
            ));
        }
        let row = self
            .client
            .query_opt(
                "SELECT rn.nspname::text, r.relname::text, \
                   coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = c.oid AND i.indisprimary), '{}'), \
                   coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = c.oid AND i.indisreplident), '{}'), \
                   coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a \
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}') \
                 FROM pg_class c \
                 JOIN pg_class r ON r.oid = CASE WHEN c.relispartition THEN pg_partition_root(c.oid) ELSE c.oid END \
                 JOIN pg_namespace rn ON rn.oid = r.relnamespace \
                 WHERE c.oid = $1",
                &[&id],
            )
            .await
            .map_err(|e| self.err("reading the table's primary key", e))?;
        let (root_schema, root_name, pk_names, index_names, current_columns) = match row {
            Some(r) => (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get::<_, Vec<String>>(3),
                r.get(4),
            ),
            // Dropped since: the stream's names, and its key flags alone.
            None => (
                schema.to_owned(),
                name.to_owned(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ),
        };
        let catalog_key = if replica_identity == b'i' {
            &index_names
        } else {
            &pk_names
        };
        let primary_key = key_columns(replica_identity, columns, catalog_key, &current_columns);
        let index_of = |n: &str| columns.iter().position(|c| c.name == n);
        let mut group_key = Vec::new();
        if let Some(names) = group_columns(&root_schema, &root_name) {
            for n in names {
                group_key.push(index_of(n).ok_or_else(|| {
                    ReplicationError::Definite(format!(
                        "sink.group_columns: {root_schema}.{root_name} has no column `{n}`"
                    ))
                })?);
            }
        }
        Ok(Table::new(
            id,
            root_schema,
            root_name,
            cols,
            primary_key,
            group_key,
        ))
    }
}

/// What a Relation message says about a table.
#[derive(Debug, Clone, Copy)]
pub struct RelationInfo<'a> {
    /// Schema name.
    pub schema: &'a str,
    /// Table name.
    pub name: &'a str,
    /// `d`efault, `n`othing, `f`ull, `i`ndex.
    pub replica_identity: u8,
    /// The columns, with their key flags.
    pub columns: &'a [RelationColumn],
}

/// The key columns (indices into `columns`, in key order) of a change: the
/// Relation's key flags, in the order of today's key (`key_names`: the primary
/// key, or the replica identity index under USING INDEX) when it holds the
/// same columns, else in column order (the key changed since). Under FULL
/// every column is flagged, and the primary key of the catalog is used: by
/// name, or by position when the names no longer match but the columns are as
/// many (renamed since). FULL without a primary key has no key.
fn key_columns(
    replica_identity: u8,
    columns: &[RelationColumn],
    key_names: &[String],
    current_columns: &[String],
) -> Vec<usize> {
    let pk_names = key_names;
    if replica_identity != b'f' {
        let flagged: Vec<usize> = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        let in_key_order: Option<Vec<usize>> = key_names
            .iter()
            .map(|n| flagged.iter().copied().find(|&i| &columns[i].name == n))
            .collect();
        if let Some(ordered) = in_key_order.filter(|o| o.len() == flagged.len()) {
            return ordered;
        }
        // Renamed since (as many columns as today): today's key by position.
        if current_columns.len() == columns.len() {
            let by_position: Vec<usize> = key_names
                .iter()
                .filter_map(|n| current_columns.iter().position(|c| c == n))
                .collect();
            let mut sorted = by_position.clone();
            sorted.sort_unstable();
            if sorted == flagged {
                return by_position;
            }
        }
        return flagged;
    }
    let by_name: Option<Vec<usize>> = pk_names
        .iter()
        .map(|n| columns.iter().position(|c| &c.name == n))
        .collect();
    match by_name {
        Some(key) => key,
        None if current_columns.len() == columns.len() => pk_names
            .iter()
            .filter_map(|n| current_columns.iter().position(|c| c == n))
            .collect(),
        None => {
            tracing::warn!(
                columns = columns.len(),
                "the primary key of a REPLICA IDENTITY FULL table changed since this change was written: record_pks left empty"
            );
            Vec::new()
        }
    }
}

/// One connection attempt over `wire`.
async fn connect_once(
    pg: &Postgres,
    wire: Wire,
    context: &str,
    slot: &str,
    notified: Arc<tokio::sync::Notify>,
) -> Result<Client, (Refusal, ReplicationError)> {
    let mut config = pg.config.clone();
    config.application_name("walcast-catalog");
    if let Auth::Iam { region } = &pg.auth {
        let info = super::ConnectInfo::from_config(pg);
        let token = super::iam::token(region.as_deref(), &info.host, info.port, &info.user)
            .await
            .map_err(|e| (Refusal::Other, e))?;
        config.password(token);
    }
    let failed = |e: tokio_postgres::Error| (sql_refusal(&e), from_sql(context, &e, slot));
    let mode = match wire {
        Wire::Plain => SslMode::Disable,
        Wire::TlsIfOffered => SslMode::Prefer,
        Wire::Tls => SslMode::Require,
    };
    config.ssl_mode(mode);
    if wire == Wire::Plain {
        let (client, conn) = config.connect(NoTls).await.map_err(failed)?;
        tokio::spawn(watch_connection(conn, notified));
        return Ok(client);
    }
    let rustls = tls::client_config(&pg.tls).map_err(|e| (Refusal::Other, e))?;
    let (client, conn) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(rustls))
        .await
        .map_err(failed)?;
    tokio::spawn(watch_connection(conn, notified));
    Ok(client)
}

/// Runs the connection until it closes, waking `notified` at each notification
/// (polled as a plain future, a connection drops them).
async fn watch_connection<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    notified: Arc<tokio::sync::Notify>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ended = std::future::poll_fn(|cx| loop {
        match std::task::ready!(conn.poll_message(cx)) {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => notified.notify_one(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return std::task::Poll::Ready(Err(e)),
            None => return std::task::Poll::Ready(Ok(())),
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "catalog connection closed");
    }
}

/// The object was created (or the table added) by someone else since we looked:
/// duplicate_object, or the unique index of the catalog.
fn raced(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.code().code(), "42710" | "23505"))
}

/// A permission error (SQLSTATE 42501) gets `hint`, the fix for this statement, in place
/// of the generic one; every other error is classified as usual.
fn denied_with(
    context: &str,
    e: &tokio_postgres::Error,
    slot: &str,
    hint: &str,
) -> ReplicationError {
    match e.as_db_error() {
        Some(db) if db.code().code() == "42501" => {
            ReplicationError::Definite(format!("{context}: {}. {hint}", db.message()))
        }
        _ => from_sql(context, e, slot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, key: bool) -> RelationColumn {
        RelationColumn {
            key,
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
        }
    }

    #[test]
    fn keys_come_from_the_relation_flags() {
        let cols = [col("a", true), col("b", true), col("v", false)];
        // Today's catalog says otherwise (renamed, replaced): the flags win.
        assert_eq!(
            key_columns(b'd', &cols, &["x".into()], &["x".into()]),
            [0, 1]
        );
        assert_eq!(key_columns(b'i', &cols, &[], &[]), [0, 1]);
        // The same columns as today's key: in its order (PRIMARY KEY (b, a)) ...
        assert_eq!(
            key_columns(b'd', &cols, &["b".into(), "a".into()], &[]),
            [1, 0]
        );
        // ... also when renamed since (b → c), by position.
        let now = ["a".to_string(), "c".to_string(), "v".to_string()];
        assert_eq!(
            key_columns(b'd', &cols, &["c".into(), "a".into()], &now),
            [1, 0]
        );
        // A key replaced since (today: v): the flags, in column order.
        assert_eq!(key_columns(b'd', &cols, &["v".into()], &now), [0, 1]);
        assert_eq!(
            key_columns(b'n', &[col("a", false)], &[], &[]),
            Vec::<usize>::new()
        );
        // FULL: every column flagged; the primary key by name ...
        let full = [col("a", true), col("b", true), col("v", true)];
        let now = ["a".to_string(), "b".to_string(), "v".to_string()];
        assert_eq!(key_columns(b'f', &full, &["b".into()], &now), [1]);
        // ... by position when renamed since ...
        let renamed = ["a".to_string(), "c".to_string(), "v".to_string()];
        assert_eq!(
            key_columns(b'f', &full, &["a".into(), "c".into()], &renamed),
            [0, 1]
        );
        // ... and none without a primary key.
        assert_eq!(key_columns(b'f', &full, &[], &now), Vec::<usize>::new());
    }

    #[test]
    fn lsn_text() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
