//! Field faults reported against CDC tools, each with the right value: the
//! application's writes never break, rows are never mislabelled, the streamer
//! never hangs, and every error says what to do.

use std::sync::Arc;
use std::time::Duration;

use change_event::Action;
use serde_json::json;
use walcast_streamer::check::{self, Finding, Level};
use walcast_streamer::config::Config;
use walcast_streamer::pipeline;
use walcast_streamer::replication::{parse_lsn, WalMessage};

use crate::support::{eventually, PgServer, TestDb};
use crate::{record, Running, WAIT};

fn config(yaml: &str) -> Arc<Config> {
    Arc::new(Config::load(Some(yaml), Vec::new()).expect("valid config"))
}

async fn findings(config: &Config) -> Vec<Finding> {
    check::check_source(config).await
}

fn has(findings: &[Finding], level: Level, needles: &[&str]) -> bool {
    findings
        .iter()
        .any(|f| f.level == level && needles.iter().all(|n| f.message.contains(n)))
}

fn report(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn publication_count(db: &TestDb) -> i64 {
    db.client
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .expect("pg_publication")
        .get(0)
}

/// 1. A table without a replica identity is never published: `check` names it
/// and the fix, `run` refuses before creating anything, and the application's
/// UPDATE and DELETE keep working, also on tables created later.
#[tokio::test]
async fn tables_without_replica_identity_are_never_published() {
    let db = TestDb::new("f_ident").await;
    db.exec(
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE order_events (order_id int, label text);
         INSERT INTO order_events VALUES (1, 'a');",
    )
    .await;
    let default = config(&db.config_yaml(""));
    let f = findings(&default).await;
    assert!(
        has(
            &f,
            Level::Fail,
            &[
                "public.order_events has no replica identity",
                "REPLICA IDENTITY FULL"
            ]
        ),
        "{}",
        report(&f)
    );
    let err = pipeline::setup(&default)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("public.order_events")
            && err.contains("REPLICA IDENTITY FULL")
            && err.contains("source.tables")
            && !err.contains("public.users"),
        "{err}"
    );
    assert_eq!(publication_count(&db).await, 0, "nothing was created");
    db.exec("UPDATE order_events SET label = 'b'; DELETE FROM order_events WHERE order_id = 1;")
        .await;

    // Listed explicitly: the same refusal; a missing table is named as such.
    let listed = config(&db.config_yaml("  tables: [users, order_events, nope]\n"));
    let err = pipeline::setup(&listed)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("public.order_events"), "{err}");
    assert!(
        err.contains("table public.nope does not exist: fix source.tables"),
        "{err}"
    );
    assert!(
        !err.contains("owner"),
        "no ownership hint for a typo: {err}"
    );
    assert_eq!(publication_count(&db).await, 0);

    // With an identity, the default publication lists today's tables (never FOR ALL TABLES).
    db.exec("ALTER TABLE order_events REPLICA IDENTITY FULL")
        .await;
    let run = Running::start_yaml(&db.config_yaml("")).await;
    let row = db
        .client
        .query_one(
            "SELECT puballtables, pubviaroot, (SELECT count(*) FROM pg_publication_tables WHERE pubname = p.pubname) \
             FROM pg_publication p",
            &[],
        )
        .await
        .expect("publication");
    assert_eq!(
        (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, i64>(2)
        ),
        (false, true, 2)
    );
    // A table created later without a key does not break the application.
    db.exec(
        "CREATE TABLE later (v text); INSERT INTO later VALUES ('x');
         UPDATE later SET v = 'y'; DELETE FROM later;
         INSERT INTO users VALUES (1, 'alice');",
    )
    .await;
    let ev = run.events(1).await;
    assert_eq!(ev[0].metadata.table_name, "users");
    run.stop().await;
    db.drop_db().await;
}

/// 2. A TOASTed primary key under REPLICA IDENTITY DEFAULT: Postgres sends the old
/// key, and the key is filled in from it.
#[tokio::test]
async fn toasted_primary_key_is_filled_from_the_old_key() {
    let db = TestDb::new("f_toastpk").await;
    db.exec(
        "CREATE TABLE urls (url text PRIMARY KEY, hits int);
         ALTER TABLE urls ALTER COLUMN url SET STORAGE EXTERNAL;",
    )
    .await;
    let run = Running::start(&db, "  tables: [urls]\n").await;
    let url = format!("https://example.com/{}", "x".repeat(2560));
    assert_eq!(url.len(), 2580);
    db.client
        .execute("INSERT INTO urls VALUES ($1, 1)", &[&url])
        .await
        .expect("insert");
    db.exec("UPDATE urls SET hits = hits + 1").await;
    db.client
        .execute("DELETE FROM urls WHERE url = $1", &[&url])
        .await
        .expect("delete");
    let ev = run.events(3).await;
    assert_eq!(ev[1].action, Action::Update);
    assert_eq!(json!(record(&ev[1])), json!({"url": url, "hits": 2}));
    assert_eq!(json!(ev[1].changes), json!({}));
    for e in &ev {
        assert_eq!(e.metadata.record_pks, [url.as_str()], "{:?}", e.action);
    }
    run.stop().await;
    db.drop_db().await;
}

/// 3. The key of a change is the replica identity as of that change: a key column
/// renamed or a primary key replaced while the streamer was down relabels nothing.
#[tokio::test]
async fn key_is_the_identity_as_of_the_change() {
    let db = TestDb::new("f_keyddl").await;
    db.exec(
        "CREATE TABLE pairs (a int, b int, v text, PRIMARY KEY (b, a));
         CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL, v text);",
    )
    .await;
    let run = Running::start(&db, "  tables: [pairs, items]\n").await;
    run.stop().await;
    // Down: changes, then DDL, then more changes.
    db.exec(
        "INSERT INTO pairs VALUES (1, 2, 'old');
         INSERT INTO items VALUES (7, 'seven', 'old');
         ALTER TABLE pairs RENAME COLUMN b TO c;
         ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (code);
         INSERT INTO pairs VALUES (3, 4, 'new');
         INSERT INTO items VALUES (8, 'eight', 'new');",
    )
    .await;
    let run = Running::start(&db, "  tables: [pairs, items]\n").await;
    let ev = run.events(4).await;
    let pks: Vec<(&str, Vec<String>)> = ev
        .iter()
        .map(|e| {
            (
                e.metadata.table_name.as_str(),
                e.metadata.record_pks.clone(),
            )
        })
        .collect();
    assert_eq!(
        pks,
        [
            // In key order (PRIMARY KEY (b, a)), with the names of the time.
            ("pairs", vec!["2".to_string(), "1".to_string()]),
            ("items", vec!["7".to_string()]),
            ("pairs", vec!["4".to_string(), "3".to_string()]),
            ("items", vec!["eight".to_string()]),
        ]
    );
    assert!(record(&ev[0]).contains_key("b") && record(&ev[2]).contains_key("c"));
    run.stop().await;
    db.drop_db().await;
}

/// 4. Generated columns cannot be streamed before Postgres 18: `check` says so,
/// naming them (the binary's start-up warning is checked in `binary.rs`).
/// 5. BC dates and timestamps in astronomical year numbering.
#[tokio::test]
async fn generated_columns_are_named_and_bc_dates_are_iso() {
    let db = TestDb::new("f_gen").await;
    db.exec(
        "CREATE TABLE people (id int PRIMARY KEY, height_cm numeric,
           height_in numeric GENERATED ALWAYS AS (height_cm / 2.54) STORED,
           born date, at timestamp, at_tz timestamptz, days date[]);",
    )
    .await;
    let cfg = config(&db.config_yaml("  tables: [people]\n"));
    let f = findings(&cfg).await;
    // Postgres 18 streams them (versions::generated_columns_stream_from_18).
    let before_18 = crate::support::pg_major() < 18;
    assert_eq!(
        has(
            &f,
            Level::Warn,
            &["public.people", "height_in", "Postgres 18"]
        ),
        before_18,
        "{}",
        report(&f)
    );
    let run = Running::start(&db, "  tables: [people]\n").await;
    db.exec(
        "INSERT INTO people (id, height_cm, born, at, at_tz, days) VALUES
           (1, 180, '0044-03-15 BC', '0044-03-15 12:00:00 BC', '0044-03-15 12:00:00.5+00 BC',
            ARRAY['0001-01-01 BC'::date, '2024-03-21']),
           (2, 170, '10000-01-01', '10000-01-01 00:00:00', 'infinity', NULL);",
    )
    .await;
    let ev = run.events(2).await;
    let mut first = record(&ev[0]).clone();
    assert_eq!(first.remove("height_in").is_some(), !before_18);
    assert_eq!(
        json!(first),
        json!({"id": 1, "height_cm": 180, "born": "-0043-03-15",
               "at": "-0043-03-15T12:00:00.000000", "at_tz": "-0043-03-15T12:00:00.500000Z",
               "days": ["0000-01-01", "2024-03-21"]})
    );
    assert_eq!(record(&ev[1])["born"], json!("10000-01-01"));
    assert_eq!(record(&ev[1])["at"], json!("10000-01-01T00:00:00.000000"));
    assert_eq!(record(&ev[1])["at_tz"], json!("infinity"));
    run.stop().await;
    db.drop_db().await;
}

/// 6. Partitioned tables: events are named after the root, whether the publication
/// publishes via the root (ours) or the partitions (one made by hand without it).
#[tokio::test]
async fn partitions_are_named_after_their_root() {
    let db = TestDb::new("f_part").await;
    db.exec(
        "CREATE TABLE measurements (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE measurements_2026_11 PARTITION OF measurements FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
         CREATE TABLE measurements_2026_12 PARTITION OF measurements FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');",
    )
    .await;
    let ours = config(&db.config_yaml("  tables: [measurements]\n"));
    let f = findings(&ours).await;
    assert!(
        has(
            &f,
            Level::Ok,
            &[
                "public.measurements is partitioned (2 partition(s))",
                "named public.measurements"
            ]
        ),
        "{}",
        report(&f)
    );
    let run = Running::start(&db, "  tables: [measurements]\n").await;
    db.exec("INSERT INTO measurements VALUES (1, '2026-11-05', 1), (2, '2026-12-05', 2)")
        .await;
    let ev = run.events(2).await;
    for e in &ev {
        assert_eq!(e.metadata.table_name, "measurements");
    }
    assert_eq!(ev[1].metadata.record_pks, ["2", "2026-12-05"]);
    run.stop().await;

    // A publication made by hand, without publish_via_partition_root.
    db.exec("CREATE PUBLICATION by_hand FOR TABLE measurements")
        .await;
    let yaml = db
        .config_yaml("  tables: [measurements]\n")
        .replace(
            &format!("publication: p_{}", db.name),
            "publication: by_hand",
        )
        .replace(
            &format!("slot: s_{}", db.name),
            &format!("slot: h_{}", db.name),
        );
    let hand = config(&yaml);
    let f = findings(&hand).await;
    assert!(
        has(
            &f,
            Level::Ok,
            &["public.measurements_2026_11 is a partition of measurements"]
        ),
        "{}",
        report(&f)
    );
    let run = Running::start_yaml(&yaml).await;
    db.exec("INSERT INTO measurements VALUES (3, '2026-11-06', 3)")
        .await;
    let ev = run.events(1).await;
    assert_eq!(ev[0].metadata.table_name, "measurements");
    run.stop().await;
    db.drop_db().await;
}

/// 9. A SQL_ASCII database holding a byte that is not UTF-8: `check` warns, and the
/// stop names the table, the column and the LSN, never the value.
#[tokio::test]
async fn non_utf8_text_in_a_sql_ascii_database_is_named() {
    let db = TestDb::with_options(
        "f_ascii",
        "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await;
    let cfg = config(&db.config_yaml("  tables: [notes]\n"));
    let f = findings(&cfg).await;
    assert!(
        has(&f, Level::Warn, &["SQL_ASCII", "UTF8"]),
        "{}",
        report(&f)
    );
    let mut run = Running::start(&db, "  tables: [notes]\n").await;
    db.exec("INSERT INTO notes VALUES (1, 'fine')").await;
    run.events(1).await;
    db.exec("INSERT INTO notes VALUES (2, E'secret\\xff')")
        .await;
    let commit = db.insert_lsn().await;
    let msg = run.failure().await;
    assert!(
        msg.contains("table public.notes")
            && msg.contains("column body")
            && msg.contains("LSN")
            && msg.contains("pg_replication_slot_advance")
            && !msg.contains("secret"),
        "{msg}"
    );
    let lsn = msg
        .split("committed at LSN ")
        .nth(1)
        .and_then(|r| r.split(['.', ' ']).next())
        .and_then(parse_lsn)
        .expect("an LSN in the message");
    assert!(lsn <= commit, "{msg}");
    db.drop_db().await;
}

/// 10. The stream starts at the higher of the slot's position and ours: after a
/// server restart the slot may be behind what the streamer confirmed.
#[tokio::test]
async fn stream_resumes_from_the_higher_of_slot_and_streamer() {
    use walcast_streamer::pipeline::{Connector, PgConnector};
    use walcast_streamer::replication::WalStream;
    let db = TestDb::new("f_resume").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let cfg = config(&db.config_yaml("  tables: [t]\n"));
    let slot = pipeline::setup(&cfg).await.expect("setup");
    db.exec("INSERT INTO t VALUES (1)").await;
    let after_first = db.insert_lsn().await;
    db.exec("INSERT INTO t VALUES (2)").await;
    // The slot is at its creation point, behind both inserts; we confirmed the first.
    assert!(slot.confirmed_flush_lsn < after_first);
    let mut stream = PgConnector::new(&cfg)
        .connect(after_first)
        .await
        .expect("connect");
    let first_begin = tokio::time::timeout(WAIT, async {
        loop {
            if let WalMessage::Begin { final_lsn, .. } = stream.recv().await.expect("message") {
                return final_lsn;
            }
        }
    })
    .await
    .expect("a transaction");
    assert!(
        first_begin > after_first,
        "the first insert was sent again: begin {first_begin} <= {after_first}"
    );
    stream.close().await;
    db.drop_db().await;
}

/// 11. Errors a new user meets: one line with the cause and the fix, nothing
/// created before a definite failure.
#[tokio::test]
async fn errors_name_the_cause_and_the_fix() {
    // wal_level = replica, no TLS: a server of its own.
    let server = PgServer::dedicated("replica", "-c wal_level=replica -c ssl=off");
    let admin = crate::support::connect(&server.url("postgres")).await;
    admin
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    let url = server.url("postgres");
    let cfg = config(&format!("source:\n  url: {url}\n  tables: [t]\n"));
    let err = pipeline::setup(&cfg)
        .await
        .expect_err("wal_level")
        .to_string();
    assert!(
        err.starts_with("wal_level is replica: set wal_level = logical")
            && !err.contains("REPLICATION")
            && !err.contains('\n'),
        "{err}"
    );
    let n: i64 = admin
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "no publication created before the failure");

    // sslmode=require against a server without TLS.
    let cfg = config(&format!("source:\n  url: {url}?sslmode=require\n"));
    let err = pipeline::setup(&cfg).await.expect_err("no TLS").to_string();
    assert!(
        err.contains("does not offer TLS") && err.contains("sslmode"),
        "{err}"
    );

    // Connection refused: host:port and the OS error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let cfg = config(&format!(
        "source:\n  url: postgres://u@127.0.0.1:{port}/db\n"
    ));
    let err = pipeline::setup(&cfg)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("refused"),
        "{err}"
    );
    drop(admin);
    drop(server);
}

/// The stdout writer never blocks the pipeline: with a reader that stopped
/// reading, a shutdown still ends the run within the drain timeout.
#[tokio::test]
async fn blocked_writer_does_not_block_shutdown() {
    use walcast_streamer::pipeline::{PgConnector, Pipeline};
    use walcast_streamer::progress::Tracker;
    use walcast_streamer::sink::StdoutSink;

    /// A writer whose reader never reads: every write waits.
    struct Stuck(std::sync::mpsc::Receiver<()>);
    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::Error::other("closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let db = TestDb::new("f_stuck").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let cfg = config(&db.config_yaml("  tables: [t]\n"));
    let slot = pipeline::setup(&cfg).await.expect("setup");
    let tracker = Tracker::new(slot.confirmed_flush_lsn);
    let (release, stuck) = std::sync::mpsc::channel();
    let sink = StdoutSink::with_writer(Box::new(Stuck(stuck)), tracker.clone());
    let mut p = Pipeline::new(
        Arc::clone(&cfg),
        PgConnector::new(&cfg),
        sink,
        tracker.clone(),
    );
    p.drain_timeout = Duration::from_secs(1);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(p.run(async {
        let _ = rx.await;
    }));
    db.exec("INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i")
        .await;
    // The pipeline is stuck on the full sink: the writer holds a chunk, a few wait.
    eventually(WAIT, || async {
        tracker
            .metrics()
            .render(&tracker)
            .contains("walcast_events_received_total{table=\"public.t\",action=\"insert\"}")
    })
    .await;
    let _ = stop.send(());
    let stopped = tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("shutdown is not blocked by the writer")
        .expect("task")
        .expect("clean stop");
    let _ = stopped;
    let metrics = tracker.metrics().render(&tracker);
    assert!(
        metrics.contains("walcast_events_delivered_total{table=\"public.t\"} 0\n"),
        "nothing was accepted:\n{metrics}"
    );
    drop(release);
    db.drop_db().await;
}

/// 10, end to end: Postgres restarted (crashed) under a running streamer. The slot's
/// position on disk may be older than what the streamer confirmed; nothing the
/// streamer confirmed is sent again.
#[tokio::test]
async fn postgres_restart_sends_nothing_confirmed_again() {
    let server = PgServer::dedicated("restart", "");
    let url = server.url("postgres");
    let admin = crate::support::connect(&url).await;
    admin
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    let run = Running::start_yaml(&format!("source:\n  url: {url}\n  tables: [t]\n")).await;
    for i in 1..=10 {
        admin
            .execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .expect("insert");
    }
    run.events(10).await;
    let lsn_of = |sql: &'static str| {
        let admin = &admin;
        async move {
            let row = admin.query_one(sql, &[]).await.expect("lsn");
            row.get::<_, Option<i64>>(0).unwrap_or(0) as u64
        }
    };
    let written = lsn_of("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").await;
    // The streamer confirmed the inserts, and Postgres heard it (in memory).
    eventually(WAIT, || async {
        run.tracker.confirmable() >= written
            && lsn_of("SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots")
                .await
                >= written
    })
    .await;
    drop(admin);
    server.restart(true);
    let admin = crate::support::connect(&url).await;
    admin
        .execute("INSERT INTO t VALUES (11)", &[])
        .await
        .expect("insert after restart");
    let ev = run.events(11).await;
    let after = {
        let row = admin
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
            .await
            .expect("lsn");
        row.get::<_, i64>(0) as u64
    };
    eventually(WAIT, || async { run.tracker.confirmable() >= after }).await;
    let ids: Vec<i64> = run
        .sink
        .events()
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.payload).expect("json");
            v["record"]["id"].as_i64().expect("id")
        })
        .collect();
    assert_eq!(ids, (1..=11).collect::<Vec<_>>(), "{} events", ev.len());
    run.stop().await;
    drop(admin);
    drop(server);
}

/// Two streamers starting at once (one per sink, as `infra/local.sh` runs them) both
/// find the publication and the slot, whichever created them.
#[tokio::test]
async fn concurrent_setups_share_the_publication() {
    let db = TestDb::new("f_race").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    for round in 0..3 {
        let yaml = |slot: &str| {
            db.config_yaml("")
                .replace(
                    &format!("slot: s_{}", db.name),
                    &format!("slot: {slot}_{round}"),
                )
                .replace(
                    &format!("publication: p_{}", db.name),
                    &format!("publication: race_{round}"),
                )
        };
        let (a, b) = (config(&yaml("a")), config(&yaml("b")));
        let (ra, rb) = tokio::join!(pipeline::setup(&a), pipeline::setup(&b));
        ra.expect("first streamer");
        rb.expect("second streamer");
    }
    db.drop_db().await;
}
