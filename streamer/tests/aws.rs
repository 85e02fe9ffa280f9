//! Delivery to SQS and SNS through the fauxqs emulator: FIFO order per row,
//! standard queue, SNS topics through SQS subscriptions, dead-lettering.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use change_event::{Action, ChangeEvent};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use walcast_streamer::config::Config;
use walcast_streamer::pipeline::{self, PgConnector, Pipeline, PipelineError, Stopped};
use walcast_streamer::progress::Tracker;
use walcast_streamer::sink::SinkError;

use crate::support::emulator::Emulator;
use crate::support::{eventually, TestDb};
use crate::WAIT;

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// The pipeline in this process with the configured sinks (SQS, SNS, several).
pub(crate) struct AwsRun {
    pub(crate) tracker: Tracker,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<Stopped, PipelineError>>,
    driver: JoinHandle<()>,
}

impl Drop for AwsRun {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl AwsRun {
    pub(crate) async fn start(db: &TestDb, extra_yaml: &str) -> AwsRun {
        AwsRun::start_config(&db.config_yaml(extra_yaml)).await
    }

    /// A run of a whole configuration (e.g. a second slot of the same database).
    pub(crate) async fn start_config(yaml: &str) -> AwsRun {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = Arc::new(Config::load(Some(yaml), Vec::new()).expect("valid config"));
        // Every configured sink, wired as `streamer run` wires them.
        let planned = walcast_streamer::fanout::plan(&config)
            .await
            .expect("the sinks check");
        let slot = pipeline::setup(&config).await.expect("setup");
        let tracker = Tracker::new(slot.confirmed_flush_lsn);
        let (stop, rx) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let coordinator = walcast_streamer::backfill::Coordinator::new();
        let driver = tokio::spawn(walcast_streamer::backfill::drive(
            Arc::clone(&config),
            coordinator.clone(),
            tracker.clone(),
        ));
        let lanes =
            walcast_streamer::fanout::start(&config, planned, &tracker).expect("sinks start");
        let p = Pipeline::with_lanes(
            Arc::clone(&config),
            PgConnector::new(&config),
            lanes,
            tracker.clone(),
        )
        .with_backfills(coordinator);
        let handle = tokio::spawn(p.run(shutdown));
        AwsRun {
            tracker,
            stop: Some(stop),
            handle,
            driver,
        }
    }

    pub(crate) async fn stop(mut self) -> Stopped {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("pipeline stops")
            .expect("pipeline task")
            .expect("pipeline ends cleanly")
    }
}

pub(crate) async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let mut req = sqs.create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        req = req.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let url = req
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("url")
        .to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("queue arn");
    (url, arn)
}

/// A received message: body and String attributes.
pub(crate) struct Received {
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, String>,
}

impl Received {
    fn event(&self) -> ChangeEvent {
        serde_json::from_str(&self.body).expect("body is a change event")
    }
}

/// Receives (and deletes) until `n` messages arrived; then checks that no more come.
pub(crate) async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, n: usize) -> Vec<Received> {
    receive_until(sqs, url, n, true).await
}

/// Receives (and deletes) until at least `n` messages arrived; with `quiet`,
/// goes on until nothing more comes for two rounds.
async fn receive_until(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    n: usize,
    quiet: bool,
) -> Vec<Received> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut quiet_rounds = 0;
    loop {
        let r = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        let msgs = r.messages();
        if !quiet && out.len() >= n {
            // Delete what this round got below, then return.
            quiet_rounds = 2;
        }
        if msgs.is_empty() && out.len() >= n {
            quiet_rounds += 1;
            if quiet_rounds >= 2 {
                return out;
            }
            continue;
        }
        let mut del = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let attributes = m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Received {
                body: m.body().expect("body").to_owned(),
                attributes,
            });
            del.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().expect("receipt"))
                    .build()
                    .expect("entry"),
            );
        }
        if !del.is_empty() {
            sqs.delete_message_batch()
                .queue_url(url)
                .set_entries(Some(del))
                .send()
                .await
                .expect("delete");
        }
        if !quiet && out.len() >= n {
            return out;
        }
        let _ = quiet_rounds;
        assert!(
            tokio::time::Instant::now() < deadline,
            "received {} of {n} messages",
            out.len()
        );
    }
}

fn check_attributes(m: &Received, table: &str) {
    let e = m.event();
    assert_eq!(
        m.attributes.get("action").map(String::as_str),
        Some(e.action.as_str())
    );
    assert_eq!(
        m.attributes.get("table_schema").map(String::as_str),
        Some("public")
    );
    assert_eq!(
        m.attributes.get("table_name").map(String::as_str),
        Some(table)
    );
}

fn int(e: &ChangeEvent, col: &str) -> i64 {
    e.record
        .get(col)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{col} in {:?}", e.record))
}

/// Several writer connections update a few shared rows; per row, the values
/// arrive in commit order (each update adds one), and every change exactly once.
#[tokio::test]
async fn fifo_queue_keeps_row_order_under_concurrent_writers() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("order"))).await;
    let db = TestDb::new("aws_fifo").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
        .await;
    const ROWS: i32 = 20;
    const WRITERS: usize = 4;
    const UPDATES: usize = 600;
    let run = AwsRun::start(
        &db,
        &format!("  tables: [t]\n{}", emu.sink_yaml("sqs", &url, "")),
    )
    .await;
    db.exec(&format!(
        "INSERT INTO t SELECT g, 0 FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = crate::support::connect(&db.url).await;
        writers.push(tokio::spawn(async move {
            for i in 0..UPDATES {
                let id = ((i * 7 + w * 3) % ROWS as usize) as i32 + 1;
                client
                    .execute("UPDATE t SET v = v + 1 WHERE id = $1", &[&id])
                    .await
                    .expect("update");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let total = ROWS as usize + WRITERS * UPDATES;
    let got = receive(&sqs, &url, total).await;
    assert_eq!(got.len(), total, "every change exactly once");
    let mut last: HashMap<i64, i64> = HashMap::new();
    for m in &got {
        check_attributes(m, "t");
        let e = m.event();
        let (id, v) = (int(&e, "id"), int(&e, "v"));
        let expect = match e.action {
            Action::Insert => 0,
            _ => last.get(&id).copied().expect("insert first") + 1,
        };
        assert_eq!(v, expect, "row {id}: out of order");
        last.insert(id, v);
    }
    let sum: i64 = last.values().sum();
    assert_eq!(sum as usize, WRITERS * UPDATES);
    // Everything accepted: the confirmable LSN reaches the current WAL position.
    let (_, current) = db.slot_lsns(&format!("s_{}", db.name)).await;
    eventually(WAIT, || async { run.tracker.confirmable() >= current }).await;
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn standard_queue_gets_every_change_with_attributes() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &unique("std")).await;
    let db = TestDb::new("aws_std").await;
    db.exec("CREATE TABLE s (id int PRIMARY KEY, name text)")
        .await;
    let run = AwsRun::start(
        &db,
        &format!("  tables: [s]\n{}", emu.sink_yaml("sqs", &url, "")),
    )
    .await;
    db.exec(
        "INSERT INTO s SELECT g, 'n' || g FROM generate_series(1, 300) g;
         DELETE FROM s WHERE id <= 10;",
    )
    .await;
    let got = receive(&sqs, &url, 310).await;
    assert_eq!(got.len(), 310);
    let mut ids: Vec<(Action, i64)> = got
        .iter()
        .map(|m| {
            check_attributes(m, "s");
            let e = m.event();
            (e.action, int(&e, "id"))
        })
        .collect();
    ids.sort_by_key(|(a, id)| (a.as_str(), *id));
    let deletes: Vec<i64> = ids
        .iter()
        .filter(|x| x.0 == Action::Delete)
        .map(|x| x.1)
        .collect();
    let inserts: Vec<i64> = ids
        .iter()
        .filter(|x| x.0 == Action::Insert)
        .map(|x| x.1)
        .collect();
    assert_eq!(deletes, (1..=10).collect::<Vec<_>>());
    assert_eq!(inserts, (1..=300).collect::<Vec<_>>());
    run.stop().await;
    db.drop_db().await;
}

/// A topic (FIFO or not) with a queue subscribed to it, with or without raw
/// message delivery: (topic ARN, queue URL, queue ARN).
pub(crate) async fn topic_with_queue(
    emu: &Emulator,
    fifo: bool,
    raw: bool,
) -> (String, String, String) {
    let (sqs, sns) = (emu.sqs(), emu.sns());
    let suffix = if fifo { ".fifo" } else { "" };
    let name = unique("topic");
    let mut req = sns.create_topic().name(format!("{name}{suffix}"));
    if fifo {
        req = req.attributes("FifoTopic", "true");
    }
    let arn = req
        .send()
        .await
        .expect("create topic")
        .topic_arn()
        .expect("arn")
        .to_owned();
    let (url, qarn) = create_queue(&sqs, &format!("{name}-sub{suffix}")).await;
    sns.subscribe()
        .topic_arn(&arn)
        .protocol("sqs")
        .endpoint(&qarn)
        .attributes("RawMessageDelivery", raw.to_string())
        .send()
        .await
        .expect("subscribe");
    (arn, url, qarn)
}

async fn sns_to_sqs(fifo: bool) {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (arn, url, _) = topic_with_queue(emu, fifo, true).await;
    let db = TestDb::new("aws_sns").await;
    db.exec("CREATE TABLE n (id int PRIMARY KEY, v int)").await;
    let run = AwsRun::start(
        &db,
        &format!("  tables: [n]\n{}", emu.sink_yaml("sns", &arn, "")),
    )
    .await;
    for i in 0..5 {
        db.exec(&format!(
            "INSERT INTO n SELECT g, {i} FROM generate_series({}, {}) g ON CONFLICT (id) DO UPDATE SET v = excluded.v",
            1,
            40
        ))
        .await;
    }
    let got = receive(&sqs, &url, 200).await;
    assert_eq!(got.len(), 200);
    let mut last: HashMap<i64, i64> = HashMap::new();
    for m in &got {
        check_attributes(m, "n");
        let e = m.event();
        let (id, v) = (int(&e, "id"), int(&e, "v"));
        if fifo {
            assert_eq!(
                v,
                last.get(&id).map_or(0, |p| p + 1),
                "row {id} out of order"
            );
        }
        last.insert(id, v);
    }
    assert_eq!(last.len(), 40);
    run.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn sns_standard_topic_through_sqs_subscription() {
    sns_to_sqs(false).await;
}

#[tokio::test]
async fn sns_fifo_topic_through_sqs_subscription() {
    sns_to_sqs(true).await;
}

/// A row whose event is over SQS's 1 MiB goes to the dead-letter queue (as
/// metadata: the envelope would be too big too); the changes around it flow on.
#[tokio::test]
async fn oversized_event_is_dead_lettered_and_the_rest_flow_on() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("main"))).await;
    let (dlq, _) = create_queue(&sqs, &format!("{}.fifo", unique("dlq"))).await;
    let db = TestDb::new("aws_dlq").await;
    db.exec("CREATE TABLE b (id int PRIMARY KEY, big text)")
        .await;
    let run = AwsRun::start(
        &db,
        &format!(
            "  tables: [b]\n{}",
            emu.sink_yaml("sqs", &url, &format!("  dead_letter_queue_url: {dlq}\n"))
        ),
    )
    .await;
    db.exec(
        "INSERT INTO b VALUES (1, 'small');
         INSERT INTO b VALUES (2, repeat('x', 1100000));
         INSERT INTO b VALUES (3, 'small');",
    )
    .await;
    let got = receive(&sqs, &url, 2).await;
    let ids: Vec<i64> = got.iter().map(|m| int(&m.event(), "id")).collect();
    assert_eq!(ids, [1, 3]);
    let dead = receive(&sqs, &dlq, 1).await;
    assert_eq!(dead.len(), 1);
    let env: Value = serde_json::from_str(&dead[0].body).expect("envelope JSON");
    let reason = env["reason"].as_str().expect("reason");
    assert!(reason.contains("limit"), "{reason}");
    assert_eq!(env["event"]["table_name"], "b");
    assert!(env["event"]["idempotency_key"].is_string(), "{env}");
    assert_eq!(
        dead[0].attributes.get("table_name").map(String::as_str),
        Some("b")
    );
    // The slot moves past the dead-lettered event.
    let (_, current) = db.slot_lsns(&format!("s_{}", db.name)).await;
    eventually(WAIT, || async { run.tracker.confirmable() >= current }).await;
    run.stop().await;
    db.drop_db().await;
}

/// Without a dead-letter queue, an event refused for good stops the streamer
/// (the slot keeps it) instead of being dropped.
#[tokio::test]
async fn oversized_event_without_dead_letter_queue_stops_the_sink() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &unique("nodlq")).await;
    let db = TestDb::new("aws_nodlq").await;
    db.exec("CREATE TABLE b (id int PRIMARY KEY, big text)")
        .await;
    let mut run = AwsRun::start(
        &db,
        &format!("  tables: [b]\n{}", emu.sink_yaml("sqs", &url, "")),
    )
    .await;
    db.exec("INSERT INTO b VALUES (2, repeat('x', 1100000)); INSERT INTO b VALUES (3, 'a');")
        .await;
    // The pipeline stops on the next event it hands to the failed sink.
    let mut i = 10;
    let res = loop {
        if run.handle.is_finished() {
            break (&mut run.handle).await.expect("task");
        }
        db.exec(&format!("INSERT INTO b VALUES ({i}, 'a')")).await;
        i += 1;
        assert!(i < 600, "the pipeline did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let err = res.expect_err("the sink fails");
    assert!(err.to_string().contains("dead_letter_queue_url"), "{err}");
    let PipelineError::Sink(SinkError::Refused {
        idempotency_key, ..
    }) = &err
    else {
        panic!("{err:?}");
    };
    // The refused change's commit LSN, from its idempotency key ("<commit_lsn>:<idx>").
    let decoded = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, idempotency_key)
            .expect("base64"),
    )
    .expect("utf8");
    let commit_lsn: u64 = decoded
        .split(':')
        .next()
        .and_then(|l| l.parse().ok())
        .expect("commit lsn");
    assert!(
        run.tracker.confirmable() <= commit_lsn,
        "nothing confirmed past the refused event"
    );
    let (confirmed, _) = db.slot_lsns(&format!("s_{}", db.name)).await;
    assert!(
        confirmed <= commit_lsn,
        "the slot moved past the refused event"
    );
    db.drop_db().await;
}

/// The queue is unreachable for a while mid-stream: nothing is confirmed past
/// the undelivered changes meanwhile, and all of them arrive once it is back.
#[tokio::test]
async fn emulator_outage_holds_the_slot_and_loses_nothing() {
    let name = format!("{}.fifo", unique("outage"));
    let init = serde_json::json!({
        "queues": [{ "name": name, "attributes": { "FifoQueue": "true" } }]
    })
    .to_string();
    let emu = Emulator::dedicated(Some(&init));
    let sqs = emu.sqs();
    let url = sqs
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .expect("queue from the init file")
        .queue_url()
        .expect("url")
        .to_owned();
    let db = TestDb::new("aws_outage").await;
    db.exec("CREATE TABLE o (id int PRIMARY KEY, v int)").await;
    let slot = format!("s_{}", db.name);
    let run = AwsRun::start(
        &db,
        &format!("  tables: [o]\n{}", emu.sink_yaml("sqs", &url, "")),
    )
    .await;
    for i in 1..=50 {
        db.exec(&format!("INSERT INTO o VALUES ({i}, 0)")).await;
    }
    assert_eq!(receive(&sqs, &url, 50).await.len(), 50);

    emu.stop();
    // A position inside the first undelivered transaction (before its commit).
    let before = db
        .client
        .query_one(
            "INSERT INTO o VALUES (51, 0) RETURNING (pg_current_wal_insert_lsn() - '0/0')::bigint",
            &[],
        )
        .await
        .expect("insert")
        .get::<_, i64>(0) as u64;
    for i in 52..=100 {
        db.exec(&format!("INSERT INTO o VALUES ({i}, 0)")).await;
    }
    // Nothing may be confirmed past the undelivered changes while the queue is down:
    // watch for a while (an absence cannot be waited for).
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < watch_until {
        assert!(
            run.tracker.confirmable() <= before,
            "confirmed past an undelivered change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (confirmed, _) = db.slot_lsns(&slot).await;
    assert!(
        confirmed <= before,
        "the slot moved past an undelivered change"
    );

    emu.restart();
    let got = receive(&sqs, &url, 50).await;
    let mut ids: Vec<i64> = got.iter().map(|m| int(&m.event(), "id")).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (51..=100).collect::<Vec<_>>(),
        "every change after the outage, once"
    );
    let (_, current) = db.slot_lsns(&slot).await;
    eventually(WAIT, || async { run.tracker.confirmable() >= current }).await;
    run.stop().await;
    db.drop_db().await;
    emu.stop();
}

/// `kill -9` of the streamer binary mid-stream, then a restart: the changes
/// after the last confirmed LSN are sent again, and the FIFO queue drops the
/// replays by their deduplication id: every change exactly once.
#[tokio::test]
async fn fifo_exactly_once_across_kill_9_of_the_binary() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("kill"))).await;
    let db = TestDb::new("aws_kill").await;
    db.exec("CREATE TABLE k (id int PRIMARY KEY, v int)").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("streamer.yaml");
    std::fs::write(
        &config,
        db.config_yaml(&format!(
            "  tables: [k]\n{}",
            emu.sink_yaml("sqs", &url, "")
        )),
    )
    .expect("config");
    let start = |run: u32| {
        crate::support::spawn_streamer(&config, &dir.path().join(format!("err-{run}.log")))
    };
    let mut child = start(1);
    // Changes count from the slot's consistent point on: wait until it streams.
    db.wait_streaming(&format!("s_{}", db.name)).await;
    const N: usize = 2000;
    let writer = crate::support::insert_in_batches(&db.url, "k", N, 100).await;
    let mut got = receive_until(&sqs, &url, 300, false).await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    writer.await.expect("writer");
    let mut child = start(2);
    got.extend(receive(&sqs, &url, N - got.len()).await);
    let _ = child.kill();
    let _ = child.wait();
    let mut ids: Vec<i64> = got.iter().map(|m| int(&m.event(), "id")).collect();
    ids.sort_unstable();
    let log = std::fs::read_to_string(dir.path().join("err-2.log")).unwrap_or_default();
    assert_eq!(
        ids.len(),
        N,
        "every change exactly once; second run log:\n{log}"
    );
    assert_eq!(ids, (1..=N as i64).collect::<Vec<_>>());
    db.drop_db().await;
}

/// Throughput to the emulator, against the emulator's own ceiling (a plain
/// loop of `SendMessageBatch`, 8 calls in flight). Figures only:
/// `cargo test -p walcast-streamer --test main aws::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn throughput_against_a_plain_send_message_batch_loop() {
    const N: usize = 20_000;
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &unique("bench")).await;
    let db = TestDb::new("aws_bench").await;
    db.exec("CREATE TABLE w (id int PRIMARY KEY, name text, n int)")
        .await;
    let run = AwsRun::start(
        &db,
        &format!("  tables: [w]\n{}", emu.sink_yaml("sqs", &url, "")),
    )
    .await;
    let t = std::time::Instant::now();
    db.exec(&format!(
        "INSERT INTO w SELECT g, 'name ' || g, g FROM generate_series(1, {N}) g"
    ))
    .await;
    let (_, current) = db.slot_lsns(&format!("s_{}", db.name)).await;
    eventually(Duration::from_secs(300), || async {
        run.tracker.confirmable() >= current
    })
    .await;
    let streamer = N as f64 / t.elapsed().as_secs_f64();
    run.stop().await;

    let body = "x".repeat(400);
    let t = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let (sqs, url, body) = (sqs.clone(), url.clone(), body.clone());
        tasks.spawn(async move {
            for b in (w..N / 10).step_by(8) {
                let entries = (0..10)
                    .map(|i| {
                        aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(format!("{b}{body}"))
                            .build()
                            .expect("entry")
                    })
                    .collect();
                sqs.send_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("send");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let plain = N as f64 / t.elapsed().as_secs_f64();
    eprintln!("streamer → SQS (emulator): {streamer:.0} events/s; plain SendMessageBatch loop: {plain:.0} messages/s");
    db.drop_db().await;
}

#[tokio::test]
async fn check_reports_the_sink() {
    let db = TestDb::new("aws_check").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (fifo, _) = create_queue(&sqs, &format!("{}.fifo", unique("chk"))).await;
    let (standard, _) = create_queue(&sqs, &unique("chk-std")).await;
    let check_yaml = |yaml: String| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamer"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("run check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let check = |target: String| {
        check_yaml(format!(
            "{}{}",
            db.config_yaml("  tables: [t]\n"),
            emu.sink_yaml("sqs", &target, "")
        ))
    };
    let (ok, text) = check(fifo.clone());
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("ok   SQS queue {fifo} reachable (FIFO)")),
        "{text}"
    );
    // A standard queue behind a `.fifo`-looking name cannot exist, but the other way can:
    // a FIFO queue's URL with the suffix cut off names a queue that does not exist.
    let missing = fifo.trim_end_matches(".fifo").to_owned();
    let (ok, text) = check(missing.clone());
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "FAIL sink.queue_url: SQS queue {missing} does not exist ("
        )),
        "{text}"
    );
    let (ok, text) = check(standard.clone());
    assert!(ok && text.contains("(standard)"), "{text}");
    // An endpoint nothing listens on: one line with the OS error, no debug dump.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (_, text) = check_yaml(format!(
        "{}sink:\n  type: sqs\n  queue_url: {standard}\n  endpoint_url: http://127.0.0.1:{closed}\n  access_key_id: test\n  secret_access_key: test\n",
        db.config_yaml("  tables: [t]\n"),
    ));
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL sink.endpoint_url: SQS queue"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("cannot reach the endpoint") && line.contains("Connection refused"),
        "{line}"
    );
    assert!(line.len() < 300 && !line.contains('{'), "{line}");
    db.drop_db().await;
}

/// `streamer run` checks the sink before set-up: a queue that does not exist
/// stops start-up with one line naming the setting (exit code 2), and neither
/// the publication nor the slot is created.
#[tokio::test]
async fn run_with_a_missing_queue_stops_before_creating_anything() {
    let db = TestDb::new("aws_missing").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let emu = Emulator::get();
    let sqs = emu.sqs();
    // A queue URL of the emulator's shape, for a queue nobody created.
    let (existing, _) = create_queue(&sqs, &unique("present")).await;
    let missing = format!("{}-absent", existing);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("streamer.yaml");
    std::fs::write(
        &config,
        db.config_yaml(&format!(
            "  tables: [t]\n{}",
            emu.sink_yaml("sqs", &missing, "")
        )),
    )
    .expect("config");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_streamer"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .output(),
    )
    .await
    .expect("the streamer exits")
    .expect("run the streamer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "error: sink.queue_url: SQS queue {missing} does not exist ("
        )),
        "{stderr}"
    );
    let count = |sql: &'static str| {
        let client = &db.client;
        let name = db.name.clone();
        async move {
            client
                .query_one(sql, &[&name])
                .await
                .expect("query")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM pg_replication_slots WHERE database = $1").await,
        0,
        "no slot"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_publication WHERE current_database() = $1").await,
        0,
        "no publication"
    );
    db.drop_db().await;
}

/// Characters SQS refuses (U+FFFE, U+FFFF; valid in Postgres text and identifiers)
/// are escaped: the body decodes to the same string, the attributes carry `\uXXXX`,
/// and the FIFO group id is hashed. The emulator refuses them raw, as AWS does.
#[tokio::test]
async fn characters_sqs_refuses_are_escaped() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("chars"))).await;
    let db = TestDb::new("aws_chars").await;
    db.exec("CREATE TABLE U&\"odd\\FFFF\" (id text PRIMARY KEY, v text, j jsonb)")
        .await;
    let run = AwsRun::start(
        &db,
        &format!(
            "  tables: [\"public.odd\\uFFFF\"]\n{}",
            emu.sink_yaml("sqs", &url, "")
        ),
    )
    .await;
    db.exec(
        "INSERT INTO U&\"odd\\FFFF\" VALUES (U&'k\\FFFE', U&'a\\FFFF b', jsonb_build_object('x', U&'\\FFFF'))",
    )
    .await;
    let got = receive(&sqs, &url, 1).await;
    let e = got[0].event();
    assert_eq!(e.metadata.table_name, "odd\u{FFFF}");
    assert_eq!(e.record["v"], Value::from("a\u{FFFF} b"));
    assert_eq!(e.record["j"]["x"], Value::from("\u{FFFF}"));
    assert_eq!(e.metadata.record_pks, ["k\u{FFFE}"]);
    assert_eq!(
        got[0].attributes.get("table_name").map(String::as_str),
        Some("odd\\uffff")
    );
    run.stop().await;
    db.drop_db().await;
}

/// A backfill through the SQS path: every row as a `read` on the FIFO queue, with
/// the attributes of any event, while a change to one row keeps its order.
#[tokio::test]
async fn backfill_reaches_a_fifo_queue() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("bf"))).await;
    let db = TestDb::new("aws_bf").await;
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 2000) g;",
    )
    .await;
    let extra = format!("  tables: [t]\n{}", emu.sink_yaml("sqs", &url, ""));
    let run = AwsRun::start(&db, &extra).await;
    walcast_streamer::backfill::cli::run(
        &Config::load(Some(&db.config_yaml(&extra)), Vec::new()).expect("config"),
        walcast_streamer::backfill::cli::Command::Request {
            tables: vec!["t".into()],
            where_from: None,
            detach: true,
        },
    )
    .await
    .expect("backfill requested");
    let got = receive(&sqs, &url, 2000).await;
    let mut ids = std::collections::BTreeSet::new();
    for m in &got {
        check_attributes(m, "t");
        let e = m.event();
        assert_eq!(e.action, Action::Read);
        ids.insert(int(&e, "id"));
    }
    assert_eq!(ids.len(), 2000);
    run.stop().await;
    db.drop_db().await;
}
