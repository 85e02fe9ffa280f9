//! The backfill driver: runs beside the pipeline in the streamer, reads
//! chunks on its own SQL connection and brackets each with watermarks (see
//! the [module documentation](super)).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::{Backfill, State, Store};
use super::{Chunk, Coordinator, Mark, Snapshot, HIGH, LOW};
use crate::config::Config;
use crate::event::Table;
use crate::progress::Tracker;
use crate::replication::{
    quote_ident, Catalog, RelationColumn, RelationInfo, ReplicationError, SESSION_OPTIONS,
};

/// Rows in the first chunk; then adapted to [`CHUNK_BUDGET`].
const FIRST_CHUNK: usize = 1000;
const MIN_CHUNK: usize = 100;
const MAX_CHUNK: usize = 20_000;
/// A chunk's text over this halves the next one (memory stays bounded).
const MAX_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Time one chunk should take, watermarks to accepted reads.
const CHUNK_BUDGET: Duration = Duration::from_millis(500);
/// How long to wait for the pipeline to see a watermark before reading the chunk again.
const WATERMARK_WAIT: Duration = Duration::from_secs(60);
/// How often to look for new requests when no notification came.
const POLL: Duration = Duration::from_secs(1);

/// A table, as a backfill reads it.
pub struct Described {
    /// As the stream describes it (columns, key, group key).
    pub table: Arc<Table>,
    /// `format_type` of each column (for casts of key values).
    pub(crate) types: Vec<String>,
    /// About the text bytes of a row, as read last (the next chunk's buffer).
    row_bytes: std::sync::atomic::AtomicUsize,
}

/// Describes `schema.table` for a backfill: its columns as the stream sends them,
/// and its key (the same as `record_pks`). Refuses a table without one.
pub async fn describe(
    catalog: &mut Catalog,
    config: &Config,
    schema: &str,
    name: &str,
) -> Result<Described, ReplicationError> {
    let with_generated = catalog.server_version().await? >= 180000;
    let row = catalog
        .client()
        .query_opt(
            "SELECT c.oid, c.relreplident::text, \
               array_agg(a.attname::text ORDER BY a.attnum), \
               array_agg(a.atttypid ORDER BY a.attnum), \
               array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum), \
               coalesce((SELECT array_agg(pa.attname::text) FROM pg_index i \
                 JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}'), \
               coalesce((SELECT array_agg(pa.attname::text) FROM pg_index i \
                 JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = c.oid AND i.indisreplident), '{}') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               AND (a.attgenerated = '' OR $3) \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
             GROUP BY c.oid, c.relreplident",
            &[&schema, &name, &with_generated],
        )
        .await
        .map_err(|e| ReplicationError::Transient(format!("describing {schema}.{name}: {e}")))?;
    let Some(row) = row else {
        return Err(ReplicationError::Definite(format!(
            "table {schema}.{name} does not exist"
        )));
    };
    let oid: u32 = row.get(0);
    let identity = row.get::<_, String>(1).bytes().next().unwrap_or(b'd');
    let names: Vec<String> = row.get(2);
    let oids: Vec<u32> = row.get(3);
    let types: Vec<String> = row.get(4);
    let pk: Vec<String> = row.get(5);
    let index: Vec<String> = row.get(6);
    let keyed: &[String] = match identity {
        b'i' => &index,
        b'f' => &names,
        _ => &pk,
    };
    let columns: Vec<RelationColumn> = names
        .iter()
        .zip(&oids)
        .map(|(n, &type_oid)| RelationColumn {
            key: keyed.contains(n),
            name: n.clone(),
            type_oid,
            type_modifier: -1,
        })
        .collect();
    let relation = RelationInfo {
        schema,
        name,
        replica_identity: identity,
        columns: &columns,
    };
    let table = catalog
        .table(oid, relation, |s, t| config.group_columns(s, t))
        .await?;
    if table.primary_key.is_empty() {
        return Err(ReplicationError::Definite(format!(
            "{schema}.{name} has no primary key (nor a replica identity index): a backfill reads in key \
             order so that a row's read and its changes stay in order; add a primary key (or \
             ALTER TABLE … REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>)"
        )));
    }
    Ok(Described {
        table: Arc::new(table),
        types,
        row_bytes: 0.into(),
    })
}

/// Runs the backfills requested for this streamer's slot, one at a time, until the
/// process ends. Failures of one backfill are stored with it; connection trouble is
/// retried.
pub async fn run(config: Arc<Config>, coordinator: Coordinator, tracker: Tracker) {
    let mut failures = 0u32;
    loop {
        match poll(&config, &coordinator, &tracker).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "backfill driver interrupted; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(2) * failures.clamp(1, 15)).await;
    }
}

async fn poll(
    config: &Config,
    coordinator: &Coordinator,
    tracker: &Tracker,
) -> Result<(), ReplicationError> {
    let mut catalog = Catalog::connect(&config.postgres(), &config.source.slot).await?;
    catalog
        .client()
        .batch_execute(&session_settings())
        .await
        .map_err(|e| ReplicationError::Transient(format!("backfill session settings: {e}")))?;
    // Woken by a request (`streamer backfill` notifies); the poll is for a
    // notification that cannot reach us (a connection pooler in between).
    Store::new(catalog.client()).listen().await?;
    loop {
        let store = Store::new(catalog.client());
        if store.exists().await? {
            for bf in store.list(&config.source.slot, false).await? {
                backfill(&mut catalog, config, coordinator, tracker, bf).await?;
            }
        }
        catalog.notification_within(POLL).await;
    }
}

/// `SET` statements equal to the replication connection's session options, so a
/// `col::text` here is the text pgoutput sends.
fn session_settings() -> String {
    SESSION_OPTIONS
        .split("-c ")
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| format!("SET {k} TO '{v}';"))
        .chain(["SET standard_conforming_strings TO on;".to_owned()])
        .collect()
}

/// One backfill to its end; a definite failure is stored with it (and ends it).
async fn backfill(
    catalog: &mut Catalog,
    config: &Config,
    coordinator: &Coordinator,
    tracker: &Tracker,
    bf: Backfill,
) -> Result<(), ReplicationError> {
    let (id, table) = (bf.id, bf.qualified());
    let failed = bf.clone();
    match send_all(catalog, config, coordinator, tracker, bf).await {
        Err(ReplicationError::Definite(why)) => {
            tracing::error!(backfill = id, table = %table, error = %why, "backfill failed");
            tracker.metrics().backfill(&table, "failed", &failed, None);
            Store::new(catalog.client())
                .finish(id, State::Failed, Some(&why))
                .await
        }
        other => other,
    }
}

async fn send_all(
    catalog: &mut Catalog,
    config: &Config,
    coordinator: &Coordinator,
    tracker: &Tracker,
    mut bf: Backfill,
) -> Result<(), ReplicationError> {
    let described = describe(catalog, config, &bf.schema, &bf.table).await?;
    Store::new(catalog.client()).start(bf.id).await?;
    tracing::info!(backfill = bf.id, table = %bf.qualified(), resume_after_key = ?bf.last_key, "backfill running");
    let metrics = Arc::clone(tracker.metrics());
    let mut size = FIRST_CHUNK;
    let mut numbers = 0u64;
    let started = Instant::now();
    let sent_before = bf.rows_sent;
    // Each pass watches the table from a new low watermark and reads from the last
    // stored key; a chunk the pipeline could not send starts a new pass.
    'watch: loop {
        numbers += 1;
        let low = Mark {
            run: coordinator.run(),
            id: bf.id,
            chunk: numbers,
        };
        coordinator.expect(&described.table.qualified);
        emit(catalog, LOW, low).await?;
        let seen = coordinator
            .wait_for(WATERMARK_WAIT, |v| {
                (v.low_seen() == Some(low)).then_some(())
            })
            .await;
        if seen.is_none() {
            tracing::warn!(backfill = bf.id, "low watermark not seen; watching again");
            continue;
        }
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut next_key = bf.last_key.clone();
        let mut first = true;
        let mut read_all = false;
        loop {
            // Settle the oldest chunks: when too many are out, or when all is read.
            while in_flight.len() >= IN_FLIGHT || (read_all && !in_flight.is_empty()) {
                let Some(f) = in_flight.pop_front() else {
                    break;
                };
                let Some(sent) = settle(coordinator, tracker, &f).await else {
                    tracing::warn!(
                        backfill = bf.id,
                        chunk = f.mark.chunk,
                        "chunk not sent at its high watermark; reading it again"
                    );
                    continue 'watch;
                };
                Store::new(catalog.client())
                    .progress(bf.id, &f.last_key, sent)
                    .await?;
                bf.rows_sent += sent as i64;
                bf.chunks += 1;
                bf.last_key = Some(f.last_key);
                let rate =
                    (bf.rows_sent - sent_before) as f64 / started.elapsed().as_secs_f64().max(1e-3);
                metrics.backfill(&bf.qualified(), "running", &bf, Some(rate));
                let took = f.started.elapsed();
                size = if f.bytes > MAX_CHUNK_BYTES || took > CHUNK_BUDGET * 2 {
                    (size / 2).max(MIN_CHUNK)
                } else if took < CHUNK_BUDGET / 2 {
                    (size * 2).min(MAX_CHUNK)
                } else {
                    size
                };
            }
            if read_all {
                Store::new(catalog.client())
                    .finish(bf.id, State::Done, None)
                    .await?;
                tracing::info!(backfill = bf.id, table = %bf.qualified(), rows = bf.rows_sent, "backfill done");
                bf.state = State::Done;
                metrics.backfill(&bf.qualified(), "done", &bf, None);
                return Ok(());
            }
            if Store::new(catalog.client()).state(bf.id).await? == State::Cancelled {
                tracing::info!(backfill = bf.id, "backfill cancelled");
                metrics.backfill(&bf.qualified(), "cancelled", &bf, None);
                return Ok(());
            }
            numbers += 1;
            let mark = Mark {
                run: coordinator.run(),
                id: bf.id,
                chunk: numbers,
            };
            let t0 = Instant::now();
            let read =
                read_chunk(catalog, &described, &bf, next_key.as_deref(), size, first).await?;
            first = false;
            read_all = read.rows.len() < size;
            let Some(last_key) = last_key(&described, &read.rows) else {
                continue;
            };
            let bytes = read.rows.bytes();
            coordinator.hand_over(Chunk {
                mark,
                table: Arc::clone(&described.table),
                rows: read.rows,
                read_time_micros: read.time_micros,
                snapshot: read.snapshot,
            });
            emit(catalog, HIGH, mark).await?;
            tracing::debug!(
                chunk = mark.chunk,
                read_ms = t0.elapsed().as_millis() as u64,
                "backfill chunk read"
            );
            next_key = Some(last_key.clone());
            in_flight.push_back(InFlight {
                mark,
                last_key,
                bytes,
                started: t0,
            });
        }
    }
}

/// Chunks read at once: the next is read while the last is built and sent.
const IN_FLIGHT: usize = 2;

/// A chunk read and handed over, not yet accepted.
struct InFlight {
    mark: Mark,
    /// Key of its last row (where the next chunk starts).
    last_key: Vec<String>,
    /// Text bytes read.
    bytes: usize,
    /// When its read began.
    started: Instant,
}

/// Waits until the pipeline sent the chunk at its high watermark and the sink
/// accepted every read: the reads sent, or `None` when the chunk must be read again.
async fn settle(coordinator: &Coordinator, tracker: &Tracker, f: &InFlight) -> Option<u64> {
    let mark = f.mark;
    let emitted = coordinator
        .wait_for(WATERMARK_WAIT, |v| v.take_emitted(mark))
        .await?;
    let sent = emitted.sent?;
    // Progress is stored only once the sink accepted every read of the chunk.
    let mut confirmed = tracker.subscribe();
    let _ = confirmed.wait_for(|c| *c > emitted.commit_lsn).await;
    tracing::debug!(
        chunk = mark.chunk,
        sent,
        accepted_ms = f.started.elapsed().as_millis() as u64,
        "backfill chunk accepted"
    );
    Some(sent)
}

/// A watermark, in a transaction of its own.
async fn emit(catalog: &Catalog, prefix: &str, mark: Mark) -> Result<(), ReplicationError> {
    let content = serde_json::to_string(&mark).unwrap_or_default();
    catalog
        .client()
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&prefix, &content],
        )
        .await
        .map(|_| ())
        .map_err(|e| ReplicationError::Transient(format!("emitting a watermark: {e}")))
}

/// The key of the last row, as text (`None`: no rows).
fn last_key(d: &Described, rows: &super::Rows) -> Option<Vec<String>> {
    let last: Vec<Option<&[u8]>> = rows.row(rows.len().checked_sub(1)?).collect();
    Some(
        d.table
            .primary_key
            .iter()
            .map(|&i| String::from_utf8_lossy(last[i].unwrap_or_default()).into_owned())
            .collect(),
    )
}

/// `'…'::type`: a value as an SQL literal of its column's type
/// (`standard_conforming_strings` is on in this session: only quotes are doubled).
fn literal(value: &str, ty: &str) -> String {
    format!("'{}'::{ty}", value.replace('\'', "''"))
}

/// `COPY (SELECT … FROM t WHERE (key) > (last) [AND col >= from] ORDER BY key LIMIT n) TO STDOUT`:
/// COPY is Postgres's fastest way out, and its text is each type's output, as pgoutput's.
fn copy_sql(d: &Described, bf: &Backfill, last_key: Option<&[String]>, limit: usize) -> String {
    let t = &d.table;
    let cols = t
        .columns
        .iter()
        .map(|c| format!("src.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let key = t
        .primary_key
        .iter()
        .map(|&i| format!("src.{}", quote_ident(&t.columns[i].name)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut filters = Vec::new();
    if let Some(last) = last_key.filter(|k| k.len() == t.primary_key.len()) {
        let values = t
            .primary_key
            .iter()
            .zip(last)
            .map(|(&i, v)| literal(v, &d.types[i]))
            .collect::<Vec<_>>()
            .join(", ");
        filters.push(format!("({key}) > ({values})"));
    }
    if let Some((column, from)) = &bf.where_from {
        let ty = t
            .columns
            .iter()
            .position(|c| &c.name == column)
            .map(|i| d.types[i].clone())
            .unwrap_or_else(|| "text".into());
        filters.push(format!(
            "src.{} >= {}",
            quote_ident(column),
            literal(from, &ty)
        ));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    format!(
        "COPY (SELECT {cols} FROM {}.{} AS src{filter} ORDER BY {key} LIMIT {limit}) TO STDOUT",
        quote_ident(&t.schema),
        quote_ident(&t.name)
    )
}

/// One chunk's read.
struct Read {
    rows: super::Rows,
    /// When the rows were read, microseconds since the Unix epoch.
    time_micros: i64,
    /// What the read saw.
    snapshot: Snapshot,
}

/// How often the first read of a watch takes a new snapshot while a transaction
/// it holds as running has committed (see the [module documentation](super)).
const STRAGGLER_TRIES: u32 = 100;

/// Reads one chunk in a transaction of its own, with its snapshot. `first`: the
/// first read since the low watermark, which waits for committed transactions its
/// snapshot did not see.
async fn read_chunk(
    catalog: &Catalog,
    d: &Described,
    bf: &Backfill,
    after: Option<&[String]>,
    size: usize,
    first: bool,
) -> Result<Read, ReplicationError> {
    let client = catalog.client();
    let failed = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) if db.code().code() == "42501" => ReplicationError::Definite(format!(
            "reading {}: {}: GRANT SELECT ON {} TO the streamer's user",
            d.table.qualified,
            db.message(),
            d.table.qualified
        )),
        Some(db) => {
            ReplicationError::Definite(format!("reading {}: {}", d.table.qualified, db.message()))
        }
        None => ReplicationError::Transient(format!("reading {}: {e}", d.table.qualified)),
    };
    let read = read_in_transaction(client, d, bf, after, size, first, &failed).await;
    if read.is_err() {
        // Leave the session usable (the failure is stored with the backfill through it).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    read
}

async fn read_in_transaction(
    client: &tokio_postgres::Client,
    d: &Described,
    bf: &Backfill,
    after: Option<&[String]>,
    size: usize,
    first: bool,
    failed: &impl Fn(tokio_postgres::Error) -> ReplicationError,
) -> Result<Read, ReplicationError> {
    let mut tries = 0;
    let snapshot = loop {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(failed)?;
        // The first statement takes the transaction's snapshot.
        let row = client
            .query_one(
                "SELECT s::text, (SELECT count(*) FROM pg_snapshot_xip(s) x \
                   WHERE $1 AND pg_xact_status(x) = 'committed') \
                 FROM pg_current_snapshot() s",
                &[&first],
            )
            .await
            .map_err(failed)?;
        let committed: i64 = row.get(1);
        if committed == 0 || tries >= STRAGGLER_TRIES {
            if committed > 0 {
                tracing::warn!(
                    backfill = bf.id,
                    "transactions stayed committed but not visible; reading anyway"
                );
            }
            break Snapshot::parse(row.get(0)).map_err(ReplicationError::Definite)?;
        }
        tries += 1;
        client.batch_execute("ROLLBACK").await.map_err(failed)?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let time_micros = change_event_now_micros();
    let sql = copy_sql(d, bf, after, size);
    let stream = client.copy_out(sql.as_str()).await.map_err(failed)?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = super::Rows::new(d.table.columns.len());
    rows.reserve(
        size,
        d.row_bytes.load(std::sync::atomic::Ordering::Relaxed) * size,
    );
    let mut carry = Vec::new();
    let parse_failed =
        |e: String| ReplicationError::Definite(format!("reading {}: {e}", d.table.qualified));
    while let Some(part) = futures_util::StreamExt::next(&mut stream).await {
        rows.push_copy_part(&part.map_err(failed)?, &mut carry)
            .map_err(parse_failed)?;
    }
    rows.push_copy_text(&carry).map_err(parse_failed)?;
    client.batch_execute("COMMIT").await.map_err(failed)?;
    if let Some(per_row) = rows.bytes().checked_div(rows.len()) {
        d.row_bytes
            .store(per_row + per_row / 8, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Read {
        rows,
        time_micros,
        snapshot,
    })
}

fn change_event_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
