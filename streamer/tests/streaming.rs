//! Row changes, transactions, schema changes and progress, through the pipeline.

use std::time::Duration;

use change_event::Action;
use serde_json::json;

use crate::support::{eventually, TestDb};
use crate::{actions, record, Running, WAIT};

#[tokio::test]
async fn insert_update_delete_with_default_and_full_identity() {
    let db = TestDb::new("iud").await;
    db.exec(
        "CREATE TABLE d (id int PRIMARY KEY, name text, n int);
         CREATE TABLE f (id int PRIMARY KEY, name text, n int);
         ALTER TABLE f REPLICA IDENTITY FULL;",
    )
    .await;
    let run = Running::start(&db, "  tables: [d, public.f]\n").await;
    for t in ["d", "f"] {
        db.exec(&format!(
            "INSERT INTO {t} VALUES (1, 'alice', 10);
             UPDATE {t} SET name = 'alicia' WHERE id = 1;
             UPDATE {t} SET id = 2 WHERE id = 1;
             DELETE FROM {t} WHERE id = 2;"
        ))
        .await;
    }
    let ev = run.events(8).await;
    assert_eq!(
        actions(&ev),
        [
            Action::Insert,
            Action::Update,
            Action::Update,
            Action::Delete
        ]
        .repeat(2)
    );
    let (d, f) = ev.split_at(4);
    for e in ev.iter() {
        assert_eq!(e.metadata.table_schema, "public");
    }
    assert_eq!(d[0].metadata.table_name, "d");
    assert_eq!(f[0].metadata.table_name, "f");
    // Insert: the new row, no changes.
    assert_eq!(
        json!(record(&d[0])),
        json!({"id": 1, "name": "alice", "n": 10})
    );
    assert_eq!(d[0].changes, None);
    assert_eq!(d[0].metadata.record_pks, ["1"]);
    // DEFAULT: no old tuple, changes = {} ...
    assert_eq!(json!(d[1].changes), json!({}));
    // ... except the key change, which carries the old key.
    assert_eq!(json!(d[2].changes), json!({"id": 1}));
    assert_eq!(d[2].metadata.record_pks, ["2"]);
    // DEFAULT delete: the key, the rest null.
    assert_eq!(
        json!(record(&d[3])),
        json!({"id": 2, "name": null, "n": null})
    );
    assert_eq!(d[3].metadata.record_pks, ["2"]);
    // FULL: old values of the changed columns only; the whole old row on delete.
    assert_eq!(json!(f[1].changes), json!({"name": "alice"}));
    assert_eq!(json!(f[2].changes), json!({"id": 1}));
    assert_eq!(
        json!(record(&f[3])),
        json!({"id": 2, "name": "alicia", "n": 10})
    );
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn unchanged_toast_values() {
    let db = TestDb::new("toast").await;
    db.exec(
        "CREATE TABLE d (id int PRIMARY KEY, big text, n int);
         CREATE TABLE f (id int PRIMARY KEY, big text, n int);
         ALTER TABLE f REPLICA IDENTITY FULL;",
    )
    .await;
    let run = Running::start(&db, "  tables: [d, f]\n").await;
    for t in ["d", "f"] {
        db.exec(&format!(
            "INSERT INTO {t} SELECT 1, string_agg(md5(i::text), ''), 0 FROM generate_series(1, 2000) i;
             UPDATE {t} SET n = 1 WHERE id = 1;"
        ))
        .await;
    }
    let ev = run.events(4).await;
    let big = record(&ev[0])["big"].as_str().expect("text").to_owned();
    assert_eq!(big.len(), 64000);
    assert_eq!(record(&ev[1])["big"], json!("unchanged_toast"));
    assert_eq!(record(&ev[1])["n"], json!(1));
    // With FULL the old value fills the gap, and it is not a change.
    assert_eq!(record(&ev[3])["big"], json!(big));
    assert_eq!(json!(ev[3].changes), json!({"n": 0}));
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn transactions_keep_order_and_commit_idx() {
    let db = TestDb::new("txn").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY);")
        .await;
    let run = Running::start(&db, "").await; // FOR ALL TABLES
    db.exec(
        "BEGIN;
         INSERT INTO t VALUES (1, 'a'), (2, 'b');
         INSERT INTO u VALUES (10);
         UPDATE t SET v = 'c' WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         COMMIT;
         INSERT INTO t VALUES (3, 'd');",
    )
    .await;
    let ev = run.events(6).await;
    let first = &ev[..5];
    let lsn = first[0].metadata.commit_lsn;
    for (i, e) in first.iter().enumerate() {
        assert_eq!(e.metadata.commit_lsn, lsn);
        assert_eq!(e.metadata.commit_idx, i as u64);
        assert_eq!(
            e.metadata.idempotency_key,
            change_event::idempotency_key(lsn, i as u64)
        );
        assert_eq!(
            e.metadata.commit_timestamp,
            first[0].metadata.commit_timestamp
        );
    }
    assert_eq!(
        actions(first),
        [
            Action::Insert,
            Action::Insert,
            Action::Insert,
            Action::Update,
            Action::Delete
        ]
    );
    assert_eq!(first[2].metadata.table_name, "u");
    assert!(ev[5].metadata.commit_lsn > lsn);
    assert_eq!(ev[5].metadata.commit_idx, 0);
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn alter_table_mid_stream() {
    let db = TestDb::new("alter").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, a text, gone int)")
        .await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    db.exec("INSERT INTO t VALUES (1, 'x', 7)").await;
    run.events(1).await;
    db.exec(
        "ALTER TABLE t ADD COLUMN added jsonb DEFAULT '{\"k\": 1}', DROP COLUMN gone;
         INSERT INTO t (id, a) VALUES (2, 'y');
         ALTER TABLE t ALTER COLUMN a TYPE int USING length(a);
         INSERT INTO t VALUES (3, 42, '[1]');",
    )
    .await;
    let ev = run.events(3).await;
    assert_eq!(json!(record(&ev[0])), json!({"id": 1, "a": "x", "gone": 7}));
    assert_eq!(
        json!(record(&ev[1])),
        json!({"id": 2, "a": "y", "added": {"k": 1}})
    );
    assert_eq!(
        json!(record(&ev[2])),
        json!({"id": 3, "a": 42, "added": [1]})
    );
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn transaction_annotations() {
    let db = TestDb::new("annot").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    db.exec(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.set', '{\"user\": \"ada\", \"n\": 1.50}');
         INSERT INTO t VALUES (1);
         SELECT pg_logical_emit_message(true, 'sequin:transaction_annotations.clear', '');
         INSERT INTO t VALUES (2);
         COMMIT;
         INSERT INTO t VALUES (3);
         SELECT pg_logical_emit_message(false, 'sequin:transaction_annotations.set', '{\"no\": 1}');
         INSERT INTO t VALUES (4);",
    )
    .await;
    let ev = run.events(4).await;
    assert_eq!(
        ev[0].metadata.transaction_annotations,
        Some(serde_json::from_str(r#"{"user":"ada","n":1.50}"#).expect("json"))
    );
    for e in &ev[1..] {
        assert_eq!(e.metadata.transaction_annotations, None);
    }
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn idle_publication_does_not_pin_wal() {
    let db = TestDb::new("idle").await;
    db.exec("CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int PRIMARY KEY, pad text);")
        .await;
    let run = Running::start(&db, "  tables: [quiet]\n").await;
    let slot = format!("s_{}", db.name);
    let (before, _) = db.slot_lsns(&slot).await;
    db.exec("INSERT INTO busy SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i")
        .await;
    let (_, target) = db.slot_lsns(&slot).await;
    assert!(target > before);
    eventually(WAIT, || async { db.slot_lsns(&slot).await.0 >= target }).await;
    assert!(run.sink.events().is_empty());
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn confirmed_lsn_follows_accepted_events_and_restart_resumes() {
    let db = TestDb::new("resume").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let slot = format!("s_{}", db.name);
    let run = Running::start(&db, "  tables: [t]\n").await;
    db.exec("INSERT INTO t SELECT generate_series(1, 100)")
        .await;
    run.events(100).await;
    let stopped = run.stop().await;
    let (confirmed, _) = db.slot_lsns(&slot).await;
    assert_eq!(
        confirmed, stopped.confirmed,
        "the slot has what the pipeline confirmed"
    );
    // Written while the streamer is down.
    db.exec("INSERT INTO t SELECT generate_series(101, 150); DELETE FROM t WHERE id = 1;")
        .await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    let ev = run.events(51).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev2 = run.sink.events();
    assert_eq!(ev2.len(), 51, "nothing replayed, nothing skipped");
    assert_eq!(record(&ev[0])["id"], json!(101));
    assert_eq!(ev[50].action, Action::Delete);
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn tls_verify_full_on_both_connections() {
    let db = TestDb::new("tls").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let ca = crate::support::PgServer::get().ca_cert();
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url.replace("127.0.0.1", "localhost"),
        ca.display()
    );
    let yaml = format!(
        "source:\n  url: '{url}'\n  slot: s_{0}\n  publication: p_{0}\n  tables: [t]\n",
        db.name
    );
    let run = Running::start_yaml(&yaml).await;
    db.exec("INSERT INTO t VALUES (1)").await;
    let ev = run.events(1).await;
    assert_eq!(record(&ev[0])["id"], json!(1));
    // Both the replication and the catalog connection are encrypted.
    let rows = db
        .client
        .query(
            "SELECT a.application_name::text, s.ssl FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1 \
             AND a.application_name IN ('walcast', 'walcast-catalog')",
            &[&db.name],
        )
        .await
        .expect("pg_stat_ssl");
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(names.contains(&"walcast".to_owned()), "{names:?}");
    assert!(names.contains(&"walcast-catalog".to_owned()), "{names:?}");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(1)),
        "every connection uses TLS"
    );
    run.stop().await;

    // Without our CA, verify-full refuses the server: a definite error, not a retry loop.
    let untrusted = format!(
        "{}?sslmode=verify-full",
        db.url.replace("127.0.0.1", "localhost")
    );
    let config = walcast_streamer::config::Config::load(
        Some(&format!("source:\n  url: '{untrusted}'\n")),
        Vec::new(),
    )
    .expect("valid config");
    let err = walcast_streamer::pipeline::setup(&config)
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(!err.is_transient(), "{err}");
    db.drop_db().await;
}

#[tokio::test]
async fn connection_loss_reconnects_and_a_dropped_slot_stops() {
    let db = TestDb::new("reconnect").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let slot = format!("s_{}", db.name);
    let mut run = Running::start(&db, "  tables: [t]\n").await;
    db.exec("INSERT INTO t SELECT generate_series(1, 10)").await;
    run.events(10).await;
    // Transient: the walsender dies (as in a failover or an admin's pg_terminate_backend).
    let terminate = format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
         WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
    );
    db.exec(&terminate).await;
    db.exec("INSERT INTO t SELECT generate_series(11, 20)")
        .await;
    // At least once: what was in flight before the reconnect may come again; every row must come.
    let distinct = || {
        let mut ids: Vec<i64> = run
            .sink
            .events()
            .iter()
            .map(|e| {
                let ev: change_event::ChangeEvent =
                    serde_json::from_str(&e.payload).expect("event JSON");
                ev.record["id"].as_i64().expect("id")
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    eventually(WAIT, || async { distinct().len() == 20 }).await;
    assert_eq!(
        distinct(),
        (1..=20).collect::<Vec<_>>(),
        "nothing lost across the reconnect"
    );

    // Definite: the slot is dropped while the streamer is away; it stops and says why.
    let drop_slot = format!(
        "DO $$ BEGIN
           PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = '{slot}' AND active_pid IS NOT NULL;
           PERFORM pg_sleep(0.2);
           PERFORM pg_drop_replication_slot('{slot}');
         END $$"
    );
    eventually(WAIT, || async {
        db.client.batch_execute(&drop_slot).await.is_ok()
    })
    .await;
    let err = run.failure().await;
    assert!(err.contains("replication slot"), "{err}");
    assert!(err.contains("dropped"), "{err}");
    db.drop_db().await;
}

/// A heartbeat (`walcast:heartbeat`, non-transactional) makes no event; the
/// pipeline notes its age for `/metrics`. Other non-transactional messages are
/// ignored too.
#[tokio::test]
async fn heartbeat_messages_make_no_event() {
    let db = TestDb::new("heartbeat").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    assert_eq!(run.tracker.metrics().heartbeat_age(), None);
    let sent = walcast_streamer::ops::now_micros();
    db.exec(&format!(
        "SELECT pg_logical_emit_message(false, 'walcast:heartbeat', '{sent}');
         SELECT pg_logical_emit_message(false, 'someone:else', 'x');
         INSERT INTO t VALUES (1);"
    ))
    .await;
    let ev = run.events(1).await;
    eventually(WAIT, || async {
        run.tracker.metrics().heartbeat_age().is_some()
    })
    .await;
    let age = run.tracker.metrics().heartbeat_age().expect("seen");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(ev.len(), 1, "only the insert");
    assert_eq!(record(&ev[0])["id"], json!(1));
    run.stop().await;
    db.drop_db().await;
}
