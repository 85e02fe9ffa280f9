//! A sink's jq `filter` and `transform` against a real Postgres.

use crate::support::*;
use crate::{Running, WAIT};

#[tokio::test]
async fn filter_and_transform_shape_what_the_sink_sends() {
    let db = TestDb::new("shape").await;
    db.exec(
        "CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text, total numeric(30,10))",
    )
    .await;
    let extra = r#"  tables: [users]
sink:
  type: stdout
  filter: '.action != "delete"'
  transform: '{id: .record.id, action, total: .record.total, user: (.record | del(.password_hash))}'
"#;
    let run = Running::start(&db, extra).await;
    db.exec(
        "INSERT INTO users VALUES (1, 'a@example.com', 'secret-hash', 12345678901234567890.0123456789);
         UPDATE users SET email = 'b@example.com' WHERE id = 1;
         DELETE FROM users WHERE id = 1;
         INSERT INTO users VALUES (2, 'c@example.com', 'x', 1);",
    )
    .await;
    eventually(WAIT, || async { run.sink.events().len() >= 3 }).await;
    // The delete is left out; the last insert proves nothing is pending behind it.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = run.sink.events();
    let bodies: Vec<&str> = sent.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"id":1,"action":"insert","total":12345678901234567890.0123456789,"user":{"id":1,"email":"a@example.com","total":12345678901234567890.0123456789}}"#,
            r#"{"id":1,"action":"update","total":12345678901234567890.0123456789,"user":{"id":1,"email":"b@example.com","total":12345678901234567890.0123456789}}"#,
            r#"{"id":2,"action":"insert","total":1.0000000000,"user":{"id":2,"email":"c@example.com","total":1.0000000000}}"#,
        ]
    );
    // Attributes and groups stay those of the change, not of the body.
    assert!(sent.iter().all(|e| e.table.qualified == "public.users"));
    assert_eq!(sent[0].pks, r#"["1"]"#);
    assert!(run
        .tracker
        .metrics()
        .render(&run.tracker)
        .contains(r#"walcast_events_filtered_total{table="public.users"} 1"#));
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_transform_failing_at_run_time_stops_naming_the_setting_not_the_values() {
    let db = TestDb::new("shape_err").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let extra = "  tables: [t]\nsink:\n  transform: '.record.v + 1'\n";
    let mut run = Running::start(&db, extra).await;
    db.exec("INSERT INTO t VALUES (1, 'private-value')").await;
    let e = run.failure().await;
    assert!(
        e.contains("sink.transform failed on an event of public.t") && e.contains("commit_lsn"),
        "{e}"
    );
    assert!(
        !e.contains("private-value"),
        "no row value in the error: {e}"
    );
    assert!(run.sink.events().is_empty(), "nothing was sent");
    db.drop_db().await;
}

#[test]
fn a_bad_expression_is_a_configuration_error_with_its_place() {
    let yaml = "source: {url: 'postgres://u@localhost/db'}\nsink:\n  filter: '.action =='\n";
    let e = walcast_streamer::config::Config::load(Some(yaml), Vec::new())
        .expect_err("refused")
        .to_string();
    assert_eq!(
        e,
        "invalid config: sink.filter: jq: expected term at line 1, column 11"
    );
}
