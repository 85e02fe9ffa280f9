//! Backfills: existing rows as `read` events while streaming goes on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use change_event::{Action, ChangeEvent};
use walcast_streamer::backfill::cli::{self, Command};
use walcast_streamer::backfill::store::{State, Store};
use walcast_streamer::config::Config;

use crate::support::{eventually, TestDb};
use crate::{Running, WAIT};

fn config(yaml: &str) -> Config {
    Config::load(Some(yaml), Vec::new()).expect("valid config")
}

async fn request(db: &TestDb, extra: &str, tables: &[&str], where_from: Option<&str>) {
    cli::run(
        &config(&db.config_yaml(extra)),
        Command::Request {
            tables: tables.iter().map(|t| t.to_string()).collect(),
            where_from: where_from.map(str::to_owned),
            detach: true,
        },
    )
    .await
    .expect("backfill requested");
}

/// Waits until every backfill of the database is final; returns their states.
async fn finished(db: &TestDb, timeout: Duration) -> Vec<State> {
    let slot = format!("s_{}", db.name);
    let states = || async {
        let list = Store::new(&db.client)
            .list(&slot, true)
            .await
            .expect("list");
        list.iter().map(|b| b.state).collect::<Vec<_>>()
    };
    eventually(timeout, || async {
        let s = states().await;
        !s.is_empty() && s.iter().all(|b| b.is_final())
    })
    .await;
    states().await
}

fn events(run: &Running) -> Vec<ChangeEvent> {
    run.sink
        .events()
        .iter()
        .map(|e| serde_json::from_str(&e.payload).expect("event JSON"))
        .collect()
}

fn id(e: &ChangeEvent) -> i64 {
    e.record["id"].as_i64().expect("id")
}

/// Rows backfilled while 4 writers update and delete: replaying what was delivered,
/// row by row in order, gives the table's final state, and no `read` carries an
/// older value than a change delivered before it (values only grow).
#[tokio::test]
async fn backfill_under_concurrent_writers_gives_the_final_state() {
    // 1M rows; WALCAST_BACKFILL_TEST_ROWS=… for a quicker run.
    let rows_env = std::env::var("WALCAST_BACKFILL_TEST_ROWS").ok();
    let rows: i64 = rows_env.and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    #[allow(non_snake_case)]
    let ROWS = rows;
    let db = TestDb::new("bf_writers").await;
    db.exec(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, v bigint NOT NULL, pad text);
         INSERT INTO t SELECT i, 0, repeat('p', 40) FROM generate_series(1, {ROWS}) i;"
    ))
    .await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    request(&db, "  tables: [t]\n", &["t"], None).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let client = crate::support::connect(&db.url).await;
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut x: i64 = 7919 * (w + 1);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x = (x * 48271 + 11) % 2_147_483_647;
                let row = 1 + x % ROWS;
                let sql = if x % 10 == 0 {
                    "DELETE FROM t WHERE id = $1"
                } else {
                    "UPDATE t SET v = v + 1 WHERE id = $1"
                };
                client.execute(sql, &[&row]).await.expect("write");
                n += 1;
            }
            n
        }));
    }
    let states = finished(&db, Duration::from_secs(900)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.expect("writer");
    }
    assert_eq!(states, [State::Done]);
    assert!(writes > 100, "the writers ran ({writes} writes)");
    let end = db.insert_lsn().await;
    eventually(WAIT, || async { run.tracker.confirmable() >= end }).await;

    let backfill_id = Store::new(&db.client)
        .list(&format!("s_{}", db.name), true)
        .await
        .expect("list")[0]
        .id
        .to_string();
    let mut rows: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    let mut reads = 0;
    for e in events(&run) {
        let key = id(&e);
        let value = e.record["v"].as_i64();
        match e.action {
            Action::Read | Action::Insert | Action::Update => {
                if let Some(Some(before)) = rows.get(&key) {
                    let now = value.expect("v");
                    assert!(
                        now >= *before,
                        "row {key}: {:?} carries v={now} after v={before}",
                        e.action
                    );
                }
                if e.action == Action::Read {
                    reads += 1;
                    assert!(
                        !matches!(rows.get(&key), Some(None)),
                        "row {key}: a read after its delete"
                    );
                    assert_eq!(
                        e.metadata.idempotency_key,
                        change_event::read_idempotency_key(&backfill_id, &[key.to_string()])
                    );
                }
                rows.insert(key, value);
            }
            Action::Delete => {
                rows.insert(key, None);
            }
        }
    }
    let table: BTreeMap<i64, i64> = db
        .client
        .query("SELECT id, v FROM t", &[])
        .await
        .expect("table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let replayed: BTreeMap<i64, i64> = rows
        .iter()
        .filter_map(|(k, v)| v.map(|v| (*k, v)))
        .collect();
    let missing: Vec<i64> = table
        .keys()
        .filter(|k| !replayed.contains_key(k))
        .copied()
        .collect();
    let bf = Store::new(&db.client)
        .list(&format!("s_{}", db.name), true)
        .await
        .expect("list");
    assert!(
        missing.is_empty(),
        "{} rows missing (first {:?}, last {:?}); {reads} reads; {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        missing.last(),
        bf.iter()
            .map(|b| (b.rows_sent, b.chunks, b.last_key.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        replayed.len(),
        table.len(),
        "rows after replay vs in the table"
    );
    assert!(replayed == table, "the replay differs from the table");
    assert!(reads > ROWS / 2, "{reads} reads");
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn backfill_quiet_table_sends_every_row() {
    let db = TestDb::new("bf_quiet").await;
    db.exec(
        "CREATE TABLE t (id bigint PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 30000) i;",
    )
    .await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    request(&db, "  tables: [t]\n", &["t"], None).await;
    assert_eq!(finished(&db, WAIT).await, [State::Done]);
    let ev = events(&run);
    let ids: std::collections::BTreeSet<i64> = ev.iter().map(id).collect();
    assert_eq!((ev.len(), ids.len()), (30000, 30000));
    run.stop().await;
    db.drop_db().await;
}

/// Partial (from a sort column's value on), a composite key, and the refusals:
/// a table that is not published, a table without a key.
#[tokio::test]
async fn partial_composite_and_refused_backfills() {
    let db = TestDb::new("bf_shapes").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, updated_at date NOT NULL);
         INSERT INTO items SELECT i, date '2026-01-01' + i FROM generate_series(1, 300) i;
         CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b));
         INSERT INTO pairs SELECT i % 7, 'k' || i, i FROM generate_series(1, 500) i;
         CREATE TABLE loose (v text); ALTER TABLE loose REPLICA IDENTITY FULL;
         CREATE TABLE unpublished (id int PRIMARY KEY);",
    )
    .await;
    let extra = "  tables: [items, pairs, loose]\n";
    let run = Running::start(&db, extra).await;
    // Several tables in one request; one of them partial.
    request(&db, extra, &["items"], Some("updated_at=2026-10-01")).await;
    request(&db, extra, &["pairs"], None).await;
    assert_eq!(finished(&db, WAIT).await, [State::Done, State::Done]);
    let ev = events(&run);
    let items: Vec<&ChangeEvent> = ev
        .iter()
        .filter(|e| e.metadata.table_name == "items")
        .collect();
    // 2026-10-01 is day 273 of 2026: ids 273..=300.
    assert_eq!(items.len(), 28);
    assert!(items
        .iter()
        .all(|e| e.action == Action::Read && id(e) >= 273));
    let pairs: Vec<&ChangeEvent> = ev
        .iter()
        .filter(|e| e.metadata.table_name == "pairs")
        .collect();
    assert_eq!(pairs.len(), 500);
    let bf = Store::new(&db.client)
        .list(&format!("s_{}", db.name), true)
        .await
        .expect("list");
    // Estimates from the planner, without statistics too (rough then: from the table's
    // size); a partial one counts only the rows from the sort value on.
    db.exec("ANALYZE items").await;
    let ids = Store::new(&db.client)
        .request(
            &format!("s_{}", db.name),
            &[("public".into(), "items".into())],
            Some(&("updated_at".into(), "2026-10-01".into())),
        )
        .await
        .expect("request");
    let again = Store::new(&db.client).get(&ids).await.expect("get");
    let partial = again[0].rows_estimate;
    assert!(
        partial.is_some_and(|n| (14..=56).contains(&n)),
        "{partial:?}"
    );
    assert!(
        bf[1].rows_estimate.is_some_and(|n| n > 0),
        "{:?}",
        bf[1].rows_estimate
    );
    Store::new(&db.client)
        .cancel(&format!("s_{}", db.name), &ids)
        .await
        .expect("cancel");
    let pair_id = bf[1].id.to_string();
    for e in &pairs {
        let (a, b) = (
            e.record["a"].as_i64().expect("a").to_string(),
            e.record["b"].as_str().expect("b").to_string(),
        );
        assert_eq!(e.metadata.record_pks, [a.clone(), b.clone()]);
        assert_eq!(
            e.metadata.idempotency_key,
            change_event::read_idempotency_key(&pair_id, &[a, b])
        );
        assert_eq!(e.changes, None);
    }
    // In key order: (a, b) ascending.
    let keys: Vec<(i64, String)> = pairs
        .iter()
        .map(|e| {
            (
                e.record["a"].as_i64().expect("a"),
                e.record["b"].as_str().expect("b").to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let refused = |tables: &'static [&'static str]| {
        let cfg = config(&db.config_yaml(extra));
        async move {
            cli::run(
                &cfg,
                Command::Request {
                    tables: tables.iter().map(|t| t.to_string()).collect(),
                    where_from: None,
                    detach: true,
                },
            )
            .await
            .expect_err("refused")
            .to_string()
        }
    };
    let e = refused(&["unpublished"]).await;
    assert!(
        e.contains("public.unpublished is not in publication") && e.contains("source.tables"),
        "{e}"
    );
    let e = refused(&["loose"]).await;
    assert!(e.contains("public.loose has no primary key"), "{e}");
    let e = refused(&["nope"]).await;
    assert!(e.contains("does not exist"), "{e}");
    // A --where-from value that is not of the column's type is refused up front.
    let e = cli::run(
        &config(&db.config_yaml(extra)),
        Command::Request {
            tables: vec!["items".into()],
            where_from: Some("updated_at=notadate".into()),
            detach: true,
        },
    )
    .await
    .expect_err("refused")
    .to_string();
    assert!(e.contains("not a value of type date"), "{e}");
    run.stop().await;
    db.drop_db().await;
}
