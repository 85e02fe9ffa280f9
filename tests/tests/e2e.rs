//! Postgres → streamer → SQS FIFO → event source mapping → consumer-sqs, and
//! → SNS → consumer-sns, through MiniStack with the project's own template.yaml
//! (see `walcast_e2e` for how the pipeline is started and observed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use change_event::ChangeEvent;
use serde_json::Value;
use walcast_e2e::{Delivery, Pipeline, Route};

/// A change as the test expects it: table, action, primary key, and one column's value
/// (`name` for users, `status total` for orders).
type Expected = (&'static str, &'static str, i64, String);

/// Checks one delivered body against the event contract and returns it decoded.
fn decode(delivery: &Delivery, sink: &str) -> Result<ChangeEvent> {
    let event: ChangeEvent = serde_json::from_str(&delivery.body)
        .with_context(|| format!("not a change event: {}", delivery.body))?;
    // Exactly the spec's fields, in the spec's order, numbers with every digit: the body
    // survives a round trip through the contract type byte for byte.
    ensure!(
        serde_json::to_string(&event)? == delivery.body,
        "body is not in the spec's exact shape: {}",
        delivery.body
    );
    let m = &event.metadata;
    ensure!(
        m.idempotency_key == change_event::idempotency_key(m.commit_lsn, m.commit_idx),
        "idempotency key does not match commit_lsn:commit_idx: {}",
        delivery.body
    );
    ensure!(
        m.record_pks == vec![event.record["id"].to_string()],
        "record_pks is not [id]: {}",
        delivery.body
    );
    ensure!(m.table_schema == "public" && m.database_name == "e2e-db");
    ensure!(
        m.consumer.name == sink,
        "consumer.name {} != {sink}",
        m.consumer.name
    );
    ensure!(m.database.database == "postgres" && m.database.hostname == "127.0.0.1");
    Ok(event)
}

fn summary(event: &ChangeEvent) -> (String, String, i64, String) {
    let r = &event.record;
    let value = match event.metadata.table_name.as_str() {
        "users" => r["name"].as_str().unwrap_or_default().to_owned(),
        _ => format!(
            "{} {}",
            r["status"].as_str().unwrap_or_default(),
            r["total"]
        ),
    };
    (
        event.metadata.table_name.clone(),
        event.action.to_string(),
        r["id"].as_i64().unwrap_or_default(),
        value,
    )
}

/// Every expected change delivered exactly once, with the spec's payload; returns the
/// decoded events in delivery order.
fn check_exactly_once(
    deliveries: &[Delivery],
    sink: &str,
    expected: &[Expected],
) -> Result<Vec<ChangeEvent>> {
    let events = deliveries
        .iter()
        .map(|d| decode(d, sink))
        .collect::<Result<Vec<_>>>()?;
    let keys: BTreeSet<&str> = events
        .iter()
        .map(|e| e.metadata.idempotency_key.as_str())
        .collect();
    ensure!(
        keys.len() == events.len(),
        "a change was delivered more than once: {:#?}",
        events.iter().map(summary).collect::<Vec<_>>()
    );
    let mut in_commit_order = events.clone();
    in_commit_order.sort_by_key(|e| (e.metadata.commit_lsn, e.metadata.commit_idx));
    let got: Vec<_> = in_commit_order.iter().map(summary).collect();
    let want: Vec<_> = expected
        .iter()
        .map(|(t, a, id, v)| (t.to_string(), a.to_string(), *id, v.clone()))
        .collect();
    assert_eq!(got, want, "{sink}: the changes delivered, in commit order");
    Ok(events)
}

/// Function log lines at WARN or ERROR (a handler failure, a decode error).
fn failures(pipeline: &Pipeline, route: Route) -> Result<Vec<Value>> {
    Ok(pipeline
        .log_lines(route)?
        .into_iter()
        .filter(|l| matches!(l["level"].as_str(), Some("WARN" | "ERROR")))
        .collect())
}

const WRITES: &str = "
    INSERT INTO users (name, email) VALUES ('alice', 'alice@example.com');
    UPDATE users SET name = 'alicia' WHERE id = 1;
    UPDATE users SET name = 'alice b.' WHERE id = 1;
    BEGIN;
    INSERT INTO users (name) VALUES ('bob');
    INSERT INTO orders (user_id, total, status) VALUES (2, 19.99, 'new');
    UPDATE orders SET status = 'paid' WHERE id = 1;
    COMMIT;
    UPDATE orders SET status = 'shipped' WHERE id = 1;
    DELETE FROM orders WHERE id = 1;
    DELETE FROM users WHERE id = 2;
";

fn expected() -> Vec<Expected> {
    let s = |v: &str| v.to_owned();
    vec![
        ("users", "insert", 1, s("alice")),
        ("users", "update", 1, s("alicia")),
        ("users", "update", 1, s("alice b.")),
        ("users", "insert", 2, s("bob")),
        ("orders", "insert", 1, s("new 19.99")),
        ("orders", "update", 1, s("paid 19.99")),
        ("orders", "update", 1, s("shipped 19.99")),
        ("orders", "delete", 1, s("shipped 19.99")),
        // users has the default REPLICA IDENTITY: a delete carries the key only.
        ("users", "delete", 2, s("")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_reaches_both_handlers_once_in_commit_order_with_the_specs_payload(
) -> Result<()> {
    let pipeline = Pipeline::start("Both", &[], &[Route::Sqs, Route::Sns]).await?;
    pipeline.db().await?.batch_execute(WRITES).await?;
    let expected = expected();
    let n = expected.len();

    for (route, sink) in [(Route::Sqs, "e2e_sqs"), (Route::Sns, "e2e_sns")] {
        pipeline
            .wait_for_deliveries(route, Duration::from_secs(60), |d| d.len() >= n)
            .await?;
        // A little longer, so that a duplicate delivery would show.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let deliveries = pipeline.deliveries(route)?;
        let events = check_exactly_once(&deliveries, sink, &expected)?;
        let failures = failures(&pipeline, route)?;
        assert!(
            failures.is_empty(),
            "{sink}: handler failures: {failures:#?}"
        );

        if route == Route::Sqs {
            // FIFO: one message group per row, and each group's changes arrive in
            // commit order.
            let mut groups: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
            let mut group_of_row: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
            for (delivery, event) in deliveries.iter().zip(&events) {
                let group = delivery
                    .group
                    .clone()
                    .context("a FIFO record without group")?;
                let m = &event.metadata;
                groups
                    .entry(group.clone())
                    .or_default()
                    .push((m.commit_lsn, m.commit_idx));
                group_of_row
                    .entry((
                        m.table_name.clone(),
                        event.record["id"].as_i64().unwrap_or(0),
                    ))
                    .or_default()
                    .insert(group);
            }
            for (row, groups) in &group_of_row {
                assert_eq!(groups.len(), 1, "row {row:?} spread over groups {groups:?}");
            }
            for (group, positions) in &groups {
                assert!(
                    positions.windows(2).all(|w| w[0] < w[1]),
                    "group {group} delivered out of commit order: {positions:?}"
                );
            }
            assert_eq!(groups.len(), 3, "groups: users 1, users 2, orders 1");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_is_retried_then_dead_lettered_while_the_others_proceed() -> Result<()> {
    let max_receive_count = 3;
    let pipeline = Pipeline::start(
        "SQS",
        &[("MaxReceiveCount", &max_receive_count.to_string())],
        &[Route::Sqs],
    )
    .await?;
    // The template's visibility timeout is 6 x the function timeout (180 s by default):
    // each retry would wait that long. Shorten it on the deployed queue for the test.
    let queue = pipeline.output("QueueUrl")?;
    pipeline
        .sqs
        .set_queue_attributes()
        .queue_url(&queue)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "1",
        )
        .send()
        .await?;

    // The example handler rejects an order with a negative total for good.
    pipeline
        .db()
        .await?
        .batch_execute(
            "INSERT INTO users (name) VALUES ('carol');
             INSERT INTO orders (user_id, total, status) VALUES (1, -5.00, 'refund?');
             INSERT INTO orders (user_id, total, status) VALUES (1, 10.00, 'new');
             UPDATE users SET name = 'caroline' WHERE id = 1;
             UPDATE orders SET status = 'paid' WHERE id = 2;",
        )
        .await?;

    // The DLQ gets the rejected event after maxReceiveCount receives.
    let dlq = pipeline.output("DlqUrl")?;
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while dead.is_empty() {
        ensure!(
            std::time::Instant::now() < deadline,
            "nothing reached the DLQ in 90 s; deliveries: {:#?}",
            pipeline.deliveries(Route::Sqs)?
        );
        let out = pipeline
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await?;
        dead.extend(out.messages.unwrap_or_default());
    }
    assert_eq!(
        dead.len(),
        1,
        "exactly one message dead-lettered: {dead:#?}"
    );
    let dead_event: ChangeEvent = serde_json::from_str(dead[0].body().unwrap_or_default())?;
    assert_eq!(
        summary(&dead_event),
        ("orders".into(), "insert".into(), 1, "refund? -5.00".into())
    );
    let dead_id = dead[0].message_id().unwrap_or_default().to_owned();

    let deliveries = pipeline.deliveries(Route::Sqs)?;
    let (rejected, others): (Vec<_>, Vec<_>) =
        deliveries.iter().partition(|d| d.message_id == dead_id);
    assert_eq!(
        rejected.iter().map(|d| d.receive_count).collect::<Vec<_>>(),
        (1..=max_receive_count).map(Some).collect::<Vec<_>>(),
        "the rejected message is delivered maxReceiveCount times, then moved"
    );
    // The others, in their own groups, each arrived once and were processed.
    let others: Vec<Delivery> = others.into_iter().cloned().collect();
    check_exactly_once(
        &others,
        "e2e_sqs",
        &[
            ("users", "insert", 1, "carol".into()),
            ("orders", "insert", 2, "new 10.00".into()),
            ("users", "update", 1, "caroline".into()),
            ("orders", "update", 2, "paid 10.00".into()),
        ],
    )?;
    // Every failure logged is about the rejected message, as a permanent one.
    let failures = failures(&pipeline, Route::Sqs)?;
    assert!(!failures.is_empty());
    for line in &failures {
        let text = line.to_string();
        assert!(
            text.contains(&dead_id) || line["message"] == "batch processed with failures",
            "a failure other than the rejected record: {text}"
        );
    }
    assert!(failures
        .iter()
        .any(|l| l["error"] == "order total is negative" && l["retryable"] == false));
    // Nothing is left on the queue.
    let attributes = pipeline
        .sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await?;
    let count = |name| {
        attributes
            .attributes()
            .and_then(|a| a.get(&name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages),
        "0"
    );
    Ok(())
}
