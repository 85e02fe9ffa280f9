//! One slot, many sinks (`sinks:`), against the fauxqs emulator: each sink gets
//! only its tables, actions and columns, transformed; a failing expression is
//! dead-lettered with its reason while the rest flow; routing by table to two
//! queues; `kill -9` with two sinks loses nothing on either.

use std::collections::BTreeSet;

use serde_json::Value;
use walcast_streamer::config::Config;
use walcast_streamer::fanout;

use crate::aws::{create_queue, receive, topic_with_queue, unique, AwsRun, Received};
use crate::support::emulator::Emulator;
use crate::support::TestDb;
use crate::WAIT;

/// One entry of a `sinks:` list for the emulator; `extra` lines are indented
/// like the entry's keys (four spaces).
fn entry(emu: &Emulator, name: &str, kind: &str, target: &str, extra: &str) -> String {
    let key = if kind == "sqs" {
        "queue_url"
    } else {
        "topic_arn"
    };
    format!(
        "  - name: {name}\n    type: {kind}\n    {key}: {target}\n    endpoint_url: {}\n    access_key_id: test\n    secret_access_key: test\n{extra}",
        emu.endpoint
    )
}

fn body(m: &Received) -> Value {
    serde_json::from_str(&m.body).expect("JSON body")
}

#[tokio::test]
async fn two_sinks_from_one_slot_each_get_their_tables_actions_and_columns() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (fifo, _) = create_queue(&sqs, &format!("{}.fifo", unique("users"))).await;
    let (topic, subscribed, _) = topic_with_queue(emu, false, true).await;
    let db = TestDb::new("sinks_two").await;
    db.exec(
        "CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total numeric(30,10))",
    )
    .await;
    let yaml = format!(
        "  tables: [users, orders]\nsinks:\n{}{}",
        entry(
            emu,
            "users-fifo",
            "sqs",
            &fifo,
            "    tables: [users]\n    columns:\n      users: {exclude: [password_hash]}\n    transform: '{id: .record.id, email: .record.email, action, keys: (.record | keys), consumer: .metadata.consumer.name}'\n"
        ),
        entry(
            emu,
            "orders-fanout",
            "sns",
            &topic,
            "    tables: {include: ['public.*'], exclude: [users]}\n    actions: [insert, delete]\n"
        ),
    );
    let run = AwsRun::start(&db, &yaml).await;
    db.exec(
        "INSERT INTO users VALUES (1, 'a@example.com', 'h1'), (2, 'b@example.com', 'h2');
         INSERT INTO orders VALUES (10, 1, 12345678901234567890.1234567890), (11, 2, 1);
         UPDATE users SET email = 'a2@example.com', password_hash = 'h3' WHERE id = 1;
         UPDATE orders SET total = 2 WHERE id = 11;
         DELETE FROM orders WHERE id = 10",
    )
    .await;
    let users = receive(&sqs, &fifo, 3).await;
    let got: Vec<Value> = users.iter().map(body).collect();
    assert_eq!(
        got,
        vec![
            serde_json::json!({"id": 1, "email": "a@example.com", "action": "insert", "keys": ["email", "id"], "consumer": "users-fifo"}),
            serde_json::json!({"id": 2, "email": "b@example.com", "action": "insert", "keys": ["email", "id"], "consumer": "users-fifo"}),
            serde_json::json!({"id": 1, "email": "a2@example.com", "action": "update", "keys": ["email", "id"], "consumer": "users-fifo"}),
        ],
        "the FIFO sink: users only, without password_hash, transformed, in order"
    );
    for m in &users {
        assert_eq!(
            m.attributes.get("table_name").map(String::as_str),
            Some("users")
        );
    }
    let orders = receive(&sqs, &subscribed, 3).await;
    let mut seen: Vec<(String, i64)> = orders
        .iter()
        .map(|m| {
            let e = body(m);
            assert_eq!(e["metadata"]["table_name"], "orders");
            assert_eq!(e["metadata"]["consumer"]["name"], "orders-fanout");
            (
                e["action"].as_str().expect("action").to_owned(),
                e["record"]["id"].as_i64().expect("id"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("delete".into(), 10),
            ("insert".into(), 10),
            ("insert".into(), 11)
        ],
        "the SNS sink: orders only, inserts and deletes only"
    );
    assert!(
        orders
            .iter()
            .any(|m| m.body.contains("\"total\":12345678901234567890.1234567890")),
        "numbers keep their digits"
    );
    crate::support::eventually(WAIT, || async { run.tracker.in_flight() == 0 }).await;
    let metrics = run.tracker.metrics().render(&run.tracker);
    for line in [
        "walcast_events_delivered_total{sink=\"users-fifo\",table=\"public.users\"} 3",
        "walcast_events_delivered_total{sink=\"orders-fanout\",table=\"public.orders\"} 3",
        "walcast_sink_up{sink=\"users-fifo\"} 1",
        "walcast_sink_up{sink=\"orders-fanout\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let stopped = run.stop().await;
    let (confirmed, _) = db.slot_lsns(&format!("s_{}", db.name)).await;
    assert!(
        confirmed >= stopped.confirmed,
        "one slot, confirmed past every change"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_failing_expression_is_dead_lettered_with_its_reason_and_the_rest_flow() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (queue, _) = create_queue(&sqs, &unique("notes")).await;
    let (dlq, _) = create_queue(&sqs, &unique("notes-dlq")).await;
    let db = TestDb::new("sinks_dlq").await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY, note text)")
        .await;
    let yaml = format!(
        "  tables: [notes]\nsinks:\n{}",
        entry(
            emu,
            "notes",
            "sqs",
            &queue,
            &format!("    dead_letter_queue_url: {dlq}\n    transform: '{{id: .record.id, note: (.record.note | ascii_downcase)}}'\n"),
        ),
    );
    let run = AwsRun::start(&db, &yaml).await;
    db.exec("INSERT INTO notes VALUES (1, 'Hello'), (2, NULL), (3, 'World')")
        .await;
    let sent: BTreeSet<String> = receive(&sqs, &queue, 2)
        .await
        .iter()
        .map(|m| body(m).to_string())
        .collect();
    assert_eq!(
        sent,
        BTreeSet::from([
            r#"{"id":1,"note":"hello"}"#.to_owned(),
            r#"{"id":3,"note":"world"}"#.to_owned()
        ])
    );
    let dead = receive(&sqs, &dlq, 1).await;
    let envelope = body(&dead[0]);
    let reason = envelope["reason"].as_str().expect("reason");
    assert!(reason.starts_with("sinks[0].transform: "), "{reason}");
    assert_eq!(envelope["event"]["record"]["id"], 2, "the whole event");
    crate::support::eventually(WAIT, || async { run.tracker.in_flight() == 0 }).await;
    let metrics = run.tracker.metrics().render(&run.tracker);
    assert!(
        metrics.contains("walcast_events_dead_lettered_total{table=\"public.notes\"} 1"),
        "{metrics}"
    );
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn routing_by_table_to_two_queues() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (default, _) = create_queue(&sqs, &format!("{}.fifo", unique("default"))).await;
    let (users, _) = create_queue(&sqs, &format!("{}.fifo", unique("r-users"))).await;
    let (orders, _) = create_queue(&sqs, &format!("{}.fifo", unique("r-orders"))).await;
    let db = TestDb::new("sinks_route").await;
    db.exec(
        "CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE orders (id int PRIMARY KEY);
         CREATE TABLE misc (id int PRIMARY KEY)",
    )
    .await;
    let yaml = format!(
        "  tables: [users, orders, misc]\nsinks:\n{}",
        entry(
            emu,
            "routed",
            "sqs",
            &default,
            &format!(
                "    destinations:\n      users: {users}\n      orders: {orders}\n    route: 'if .metadata.table_name == \"misc\" then null else .metadata.table_name end'\n    group_id: '.metadata.table_name'\n"
            ),
        ),
    );
    let run = AwsRun::start(&db, &yaml).await;
    db.exec(
        "INSERT INTO users SELECT generate_series(1, 5); INSERT INTO orders VALUES (1), (2);
         INSERT INTO misc VALUES (9)",
    )
    .await;
    let ids = |got: &[Received], table: &str| -> Vec<i64> {
        got.iter()
            .map(|m| {
                let e = body(m);
                assert_eq!(e["metadata"]["table_name"], table);
                e["record"]["id"].as_i64().expect("id")
            })
            .collect()
    };
    assert_eq!(
        ids(&receive(&sqs, &users, 5).await, "users"),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(ids(&receive(&sqs, &orders, 2).await, "orders"), vec![1, 2]);
    assert_eq!(ids(&receive(&sqs, &default, 1).await, "misc"), vec![9]);
    run.stop().await;
    db.drop_db().await;
}

/// `kill -9` of the binary with two sinks mid-stream, then a restart: neither
/// sink loses a change (the slot waits for the slower; the FIFO queue drops the
/// replays, the standard topic may deliver some twice).
#[tokio::test]
async fn kill_9_with_two_sinks_loses_nothing_on_either() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (fifo, _) = create_queue(&sqs, &format!("{}.fifo", unique("k2"))).await;
    let (topic, subscribed, _) = topic_with_queue(emu, false, true).await;
    let db = TestDb::new("sinks_kill").await;
    db.exec("CREATE TABLE k (id int PRIMARY KEY, v int)").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("streamer.yaml");
    std::fs::write(
        &config,
        db.config_yaml(&format!(
            "  tables: [k]\nsinks:\n{}{}",
            entry(emu, "fifo", "sqs", &fifo, ""),
            entry(
                emu,
                "topic",
                "sns",
                &topic,
                "    transform: '{id: .record.id}'\n"
            ),
        )),
    )
    .expect("config");
    let start = |run: u32| {
        crate::support::spawn_streamer(&config, &dir.path().join(format!("err-{run}.log")))
    };
    let mut child = start(1);
    db.wait_streaming(&format!("s_{}", db.name)).await;
    const N: usize = 1000;
    let writer = crate::support::insert_in_batches(&db.url, "k", N, 50).await;
    crate::support::eventually(WAIT, || async {
        sqs.get_queue_attributes()
            .queue_url(&fifo)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .ok()
            .and_then(|a| {
                a.attributes()?
                    .get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)?
                    .parse::<usize>()
                    .ok()
            })
            .is_some_and(|n| n >= 100)
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    writer.await.expect("writer");
    let mut child = start(2);
    let from_fifo = receive(&sqs, &fifo, N).await;
    let log = std::fs::read_to_string(dir.path().join("err-2.log")).unwrap_or_default();
    let mut ids: Vec<i64> = from_fifo
        .iter()
        .map(|m| body(m)["record"]["id"].as_i64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=N as i64).collect::<Vec<_>>(),
        "FIFO: each exactly once; log:\n{log}"
    );
    let topic_ids: BTreeSet<i64> = receive(&sqs, &subscribed, N)
        .await
        .iter()
        .map(|m| body(m)["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(
        topic_ids,
        (1..=N as i64).collect(),
        "topic: every change at least once"
    );
    let _ = child.kill();
    let _ = child.wait();
    db.drop_db().await;
}

/// The selections against the tables, before anything is created: a typo in a
/// `columns` table or column, or a key column left out, is refused (exit 2 from
/// `streamer run`, no slot made); a `tables` selection matching nothing is a warning.
#[tokio::test]
async fn selections_are_checked_against_the_tables_before_anything_is_created() {
    let db = TestDb::new("sinks_check").await;
    db.exec("CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text)")
        .await;
    let q = "https://sqs.eu-west-1.amazonaws.com/1/q";
    let sinks = format!(
        "sinks:\n  - {{name: a, columns: {{public.user: {{exclude: [password_hash]}}}}}}\n  - {{name: b, type: sqs, queue_url: '{q}', columns: {{users: {{exclude: [password_hsh]}}}}}}\n  - {{name: c, type: sqs, queue_url: '{q}', columns: {{users: {{include: [email]}}}}, tables: [userz]}}\n"
    );
    let yaml = db.config_yaml(&sinks);
    let config = Config::load(Some(&yaml), Vec::new()).expect("valid config");
    let catalog =
        walcast_streamer::replication::Catalog::connect(&config.postgres(), &config.source.slot)
            .await
            .expect("catalog");
    let found = fanout::check_selections(&config, &catalog)
        .await
        .expect("checked");
    let fail: Vec<&str> = found
        .iter()
        .filter_map(|f| f.as_ref().err())
        .map(String::as_str)
        .collect();
    let warn: Vec<&str> = found
        .iter()
        .filter_map(|f| f.as_ref().ok())
        .map(String::as_str)
        .collect();
    assert_eq!(
        fail,
        vec![
            "sinks[0].columns: `public.user` is not a published table (published: public.users)",
            "sinks[1].columns.users: public.users has no column `password_hsh`",
            "sinks[2].columns.users: leaves out `id`, a key column of public.users: the key is the event's identity (record_pks, the FIFO group); keep it",
        ]
    );
    assert_eq!(
        warn,
        vec!["sinks[2].tables: matches no published table (published: public.users): sink `c` receives nothing"]
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("streamer.yaml");
    std::fs::write(
        &file,
        db.config_yaml(
            "sinks:\n  - {name: a, columns: {public.user: {exclude: [password_hash]}}}\n",
        ),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .expect("streamer runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`public.user` is not a published table"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: sinks[") && !stderr.contains("sinks: sinks["),
        "the setting is named once: {stderr}"
    );
    let slots = crate::support::connect(&db.url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .expect("slots")
        .get::<_, i64>(0);
    assert_eq!(slots, 0, "refused before the slot was made");
    db.drop_db().await;
}

/// Two streamers (two slots, two publications of one database) sending to one FIFO
/// queue: one transaction's first change of each publication has the same commit
/// LSN and index, so the same idempotency key; both arrive, since each streamer's
/// deduplication ids are scoped by its slot.
#[tokio::test]
async fn two_streamers_on_one_fifo_queue_both_arrive() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (fifo, _) = create_queue(&sqs, &format!("{}.fifo", unique("two_slots"))).await;
    let db = TestDb::new("sinks_two_slots").await;
    db.exec("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
        .await;
    let one = AwsRun::start(
        &db,
        &format!(
            "  tables: [a]\nsinks:\n{}",
            entry(emu, "one", "sqs", &fifo, "")
        ),
    )
    .await;
    let second = db
        .config_yaml(&format!(
            "  tables: [b]\nsinks:\n{}",
            entry(emu, "two", "sqs", &fifo, "")
        ))
        .replace("slot: s_", "slot: t_")
        .replace("publication: p_", "publication: q_");
    let two = AwsRun::start_config(&second).await;
    db.exec("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (2); COMMIT")
        .await;
    let got = receive(&sqs, &fifo, 2).await;
    let mut tables: Vec<_> = got
        .iter()
        .map(|m| {
            body(m)["metadata"]["table_name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    tables.sort();
    let keys: Vec<_> = got
        .iter()
        .map(|m| body(m)["metadata"]["idempotency_key"].clone())
        .collect();
    assert_eq!(
        (tables, keys.first() == keys.last()),
        (vec![Some("a".into()), Some("b".into())], true),
        "both changes, with one idempotency key"
    );
    one.stop().await;
    two.stop().await;
    db.drop_db().await;
}

/// Two sinks sending to one FIFO queue: each copy arrives (their deduplication ids
/// are their own), and each sink's replays would still be dropped.
#[tokio::test]
async fn two_sinks_on_one_fifo_queue_both_arrive() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (fifo, _) = create_queue(&sqs, &format!("{}.fifo", unique("shared"))).await;
    let db = TestDb::new("sinks_shared").await;
    db.exec("CREATE TABLE s (id int PRIMARY KEY)").await;
    let yaml = format!(
        "  tables: [s]\nsinks:\n{}{}",
        entry(emu, "full", "sqs", &fifo, ""),
        entry(
            emu,
            "short",
            "sqs",
            &fifo,
            "    transform: '{id: .record.id}'\n"
        ),
    );
    let run = AwsRun::start(&db, &yaml).await;
    db.exec("INSERT INTO s VALUES (1), (2), (3)").await;
    let got = receive(&sqs, &fifo, 6).await;
    let short = got
        .iter()
        .filter(|m| body(m).get("metadata").is_none())
        .count();
    assert_eq!((got.len(), short), (6, 3), "both sinks' copies");
    run.stop().await;
    db.drop_db().await;
}
