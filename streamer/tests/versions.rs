//! What differs between Postgres majors (the suite runs on 14 to 18: see
//! `support::pg_major` and `infra/test.sh`).

use std::sync::Arc;

use serde_json::json;
use walcast_streamer::check::{self, Level};
use walcast_streamer::config::Config;
use walcast_streamer::pipeline;

use crate::support::{pg_major, TestDb};
use crate::{record, Running};

/// The server is the major the run asked for: a matrix entry that silently ran
/// another version would prove nothing.
#[tokio::test]
async fn server_is_the_requested_major() {
    let db = TestDb::new("v_major").await;
    let num: String = db
        .client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .expect("server_version_num")
        .get(0);
    let num: u32 = num.parse().expect("a number");
    assert_eq!(num / 10000, pg_major(), "server_version_num {num}");
    // `check` reports the version and what follows from it.
    let config = Config::load(Some(&db.config_yaml("")), Vec::new()).expect("valid config");
    let findings = check::check_source(&config).await;
    let line = findings
        .iter()
        .find(|f| f.message.starts_with("Postgres "))
        .unwrap_or_else(|| panic!("no version line: {findings:?}"));
    assert_eq!(line.level, Level::Ok, "{line}");
    assert!(
        line.message
            .starts_with(&format!("Postgres {}.{}", num / 10000, num % 10000)),
        "{line}"
    );
    db.drop_db().await;
}

/// A transaction applied under a replication origin (as a logical replication
/// subscriber or a bidirectional set-up writes) carries an Origin message
/// before its changes: the changes stream, the message makes no event.
#[tokio::test]
async fn changes_under_a_replication_origin_stream() {
    let db = TestDb::new("v_origin").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let run = Running::start(&db, "  tables: [t]\n").await;
    let origin = format!("o_{}", db.name);
    db.exec(&format!(
        "SELECT pg_replication_origin_create('{origin}');
         SELECT pg_replication_origin_session_setup('{origin}');
         BEGIN;
         SELECT pg_replication_origin_xact_setup('0/1000', now());
         INSERT INTO t VALUES (1, 'from elsewhere');
         COMMIT;
         SELECT pg_replication_origin_session_reset();
         INSERT INTO t VALUES (2, 'local');"
    ))
    .await;
    let ev = run.events(2).await;
    assert_eq!(ev.len(), 2, "one event per row, none for the origin");
    assert_eq!(
        json!(record(&ev[0])),
        json!({"id": 1, "v": "from elsewhere"})
    );
    assert_eq!(json!(record(&ev[1])), json!({"id": 2, "v": "local"}));
    run.stop().await;
    db.exec(&format!("SELECT pg_replication_origin_drop('{origin}')"))
        .await;
    db.drop_db().await;
}

fn config(yaml: &str) -> Arc<Config> {
    Arc::new(Config::load(Some(yaml), Vec::new()).expect("valid config"))
}

/// Postgres 18 publishes stored generated columns (the publication is created
/// with `publish_generated_columns = stored`); before 18 they are left out and
/// `check` names them.
#[tokio::test]
async fn generated_columns_stream_from_18() {
    let db = TestDb::new("v_gen").await;
    db.exec(
        "CREATE TABLE g (id int PRIMARY KEY, cm numeric,
           inch numeric GENERATED ALWAYS AS (cm / 2.54) STORED)",
    )
    .await;
    let cfg = config(&db.config_yaml("  tables: [g]\n"));
    let findings = check::check_source(&cfg).await;
    let warned = findings
        .iter()
        .any(|f| f.level == Level::Warn && f.message.contains("inch"));
    assert_eq!(warned, pg_major() < 18, "{findings:?}");
    let run = Running::start(&db, "  tables: [g]\n").await;
    db.exec("INSERT INTO g (id, cm) VALUES (1, 180)").await;
    let ev = run.events(1).await;
    if pg_major() >= 18 {
        let inch: String = db
            .client
            .query_one("SELECT inch::text FROM g WHERE id = 1", &[])
            .await
            .expect("inch")
            .get(0);
        let expected: serde_json::Value = serde_json::from_str(&inch).expect("a number");
        assert_eq!(
            json!(record(&ev[0])),
            json!({"id": 1, "cm": 180, "inch": expected})
        );
    } else {
        assert_eq!(json!(record(&ev[0])), json!({"id": 1, "cm": 180}));
    }
    run.stop().await;
    db.drop_db().await;
}

/// `source.failover_slot`: on 17 and later the slot is created with `failover`
/// (and `check` says which kind a slot is, warning about one made without it);
/// before 17 it is refused, by `check` and at start, before the slot is created.
#[tokio::test]
async fn failover_slot_from_17() {
    let db = TestDb::new("v_failover").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let cfg = config(&db.config_yaml("  tables: [t]\n  failover_slot: true\n"));
    let slot = cfg.source.slot.clone();
    let findings = check::check_source(&cfg).await;
    if pg_major() < 17 {
        assert!(
            findings
                .iter()
                .any(|f| f.level == Level::Fail && f.message.contains("source.failover_slot")),
            "{findings:?}"
        );
        let err = pipeline::setup(&cfg)
            .await
            .expect_err("no failover slots before 17");
        assert!(!err.is_transient(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("source.failover_slot") && text.contains("17"),
            "{text}"
        );
        let slot_row = db
            .client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("pg_replication_slots");
        assert!(slot_row.is_none(), "no slot created");
        db.drop_db().await;
        return;
    }
    assert!(
        findings.iter().all(|f| f.level != Level::Fail),
        "{findings:?}"
    );
    let run = Running::start(&db, "  tables: [t]\n  failover_slot: true\n").await;
    let failover: bool = db
        .client
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("the slot")
        .get(0);
    assert!(failover, "created as a failover slot");
    db.exec("INSERT INTO t VALUES (1)").await;
    assert_eq!(json!(record(&run.events(1).await[0])), json!({"id": 1}));
    run.stop().await;
    let findings = check::check_source(&cfg).await;
    assert!(
        findings
            .iter()
            .any(|f| f.level == Level::Ok && f.message.contains(", a failover slot")),
        "{findings:?}"
    );
    // A slot made without it: used, and `check` says how to recreate it.
    let plain = format!("{slot}_plain");
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{plain}', 'pgoutput')"
    ))
    .await;
    let cfg = config(&format!(
        "source:\n  url: {}\n  slot: {plain}\n  publication: p_{}\n  tables: [t]\n  failover_slot: true\n",
        db.url, db.name
    ));
    let findings = check::check_source(&cfg).await;
    assert!(
        findings.iter().any(|f| f.level == Level::Warn
            && f.message.contains("not a failover slot")
            && f.message.contains("pg_drop_replication_slot")),
        "{findings:?}"
    );
    pipeline::setup(&cfg)
        .await
        .expect("an existing slot is used");
    db.drop_db().await;
}
