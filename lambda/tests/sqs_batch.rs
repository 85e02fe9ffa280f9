//! Ordering and partial-failure semantics of `walcast_lambda::sqs::process`,
//! on the templates' events (the streamer's real bodies).

use std::num::NonZeroUsize;

use serde_json::{json, Value};
use walcast_lambda::sqs::{process, BatchConfig, BatchError};

use crate::support::{
    event_json, message_ids, reported, sorted, sqs_batch, Logs, Outcome, Recorder,
};

fn one_at_a_time() -> BatchConfig {
    BatchConfig {
        concurrency: NonZeroUsize::MIN,
        ..BatchConfig::default()
    }
}

fn concurrent() -> BatchConfig {
    BatchConfig::default()
}

/// `sqs-fifo.json`: 0 users:1 insert, 1 orders:1001 insert, 2 users:1 update,
/// 3 orders:1001 update, 4 users:1 delete.
#[tokio::test]
async fn fifo_failure_in_the_middle_of_a_group_stops_that_group_only() {
    let event = sqs_batch("sqs-fifo.json");
    let ids = message_ids(&event);
    let recorder = Recorder::failing([(ids[2].clone(), Outcome::Retryable)]);

    let response = process(event, &one_at_a_time(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    // The failed update and the delete after it, in batch order.
    assert_eq!(reported(&response), [ids[2].clone(), ids[4].clone()]);
    // One lane at a time: the users group up to its failure, then all of
    // orders. The delete (4) is never handed over.
    assert_eq!(
        recorder.order(),
        [
            ids[0].clone(),
            ids[2].clone(),
            ids[1].clone(),
            ids[3].clone()
        ]
    );
}

#[tokio::test]
async fn fifo_groups_run_concurrently_but_each_in_order() {
    let event = sqs_batch("sqs-fifo.json");
    let ids = message_ids(&event);
    let recorder = Recorder::failing([(ids[2].clone(), Outcome::Permanent)]);

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[2].clone(), ids[4].clone()]);
    let order = recorder.order();
    let users: Vec<_> = order
        .iter()
        .filter(|id| [&ids[0], &ids[2], &ids[4]].contains(id))
        .collect();
    let orders: Vec<_> = order
        .iter()
        .filter(|id| [&ids[1], &ids[3]].contains(id))
        .collect();
    assert_eq!(users, [&ids[0], &ids[2]]);
    assert_eq!(orders, [&ids[1], &ids[3]]);
    // Both groups started before either finished: they did run side by side.
    assert!(
        order[..2].contains(&ids[0]) && order[..2].contains(&ids[1]),
        "{order:?}"
    );
}

#[tokio::test]
async fn fifo_all_good_keeps_commit_order_per_group() {
    let event = sqs_batch("sqs-fifo.json");
    let ids = message_ids(&event);
    let recorder = Recorder::default();

    let response = process(event, &one_at_a_time(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        recorder.order(),
        [
            ids[0].clone(),
            ids[2].clone(),
            ids[4].clone(),
            ids[1].clone(),
            ids[3].clone()
        ]
    );
    let groups: Vec<_> = recorder
        .calls()
        .into_iter()
        .map(|(_, m)| m.group_id.expect("FIFO records have a group"))
        .collect();
    assert_eq!(
        groups,
        [
            "public.users:1",
            "public.users:1",
            "public.users:1",
            "public.orders:1001",
            "public.orders:1001"
        ]
    );
}

/// `sqs-fifo-with-bad-record.json`: record 2 (users:1) is a truncated body.
#[tokio::test]
async fn fifo_malformed_record_blocks_the_rest_of_its_group() {
    let event = sqs_batch("sqs-fifo-with-bad-record.json");
    let ids = message_ids(&event);
    let recorder = Recorder::default();
    let logs = Logs::capture();

    let response = process(event, &one_at_a_time(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[2].clone(), ids[4].clone()]);
    assert_eq!(
        recorder.order(),
        [ids[0].clone(), ids[1].clone(), ids[3].clone()]
    );
    let logs = logs.text();
    assert!(
        logs.contains(&ids[2]),
        "the decode failure names its message id:\n{logs}"
    );
    assert!(
        logs.contains("not processed: an earlier message of its FIFO group failed"),
        "{logs}"
    );
}

/// A fair queue: a *standard* queue whose messages carry `MessageGroupId`
/// (standard SNS topics forward it too). The group id does not make it FIFO:
/// each failure stays alone, the group's later records are handled.
#[tokio::test]
async fn a_group_id_on_a_standard_queue_is_not_fifo() {
    let mut json = event_json("sqs-fifo.json");
    for record in records(&mut json) {
        record["eventSourceARN"] = json!("arn:aws:sqs:us-east-1:123456789012:not-named-fifo");
    }
    let event: walcast_lambda::sqs::SqsBatch = serde_json::from_value(json).expect("SQS event");
    let ids = message_ids(&event);
    let recorder = Recorder::failing([(ids[0].clone(), Outcome::Retryable)]);

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[0].clone()]);
    assert_eq!(
        recorder.handled(),
        sorted(ids.clone()),
        "the group's later records are handled too"
    );
    // The handler still sees the group id (it is the queue's fairness key).
    assert!(recorder.calls().iter().all(|(_, m)| m.group_id.is_some()));
}

/// The case: on a standard queue, a malformed record (body `{`) of
/// group `tenant-a` fails alone; the healthy record after it in the same
/// group is handled.
#[tokio::test]
async fn fair_queue_malformed_record_fails_alone() {
    let batch = sqs_batch("sqs-fair-queue-bad-record.json");
    let ids = message_ids(&batch);
    let recorder = Recorder::default();

    let response = process(batch, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[0].clone()]);
    assert_eq!(recorder.order(), [ids[1].clone()]);
}

#[tokio::test]
async fn fifo_is_recognised_by_queue_arn_alone() {
    let mut json = event_json("sqs-fifo.json");
    for record in records(&mut json) {
        record["attributes"]
            .as_object_mut()
            .expect("attributes")
            .remove("MessageGroupId");
    }
    let event: walcast_lambda::sqs::SqsBatch = serde_json::from_value(json).expect("SQS event");
    let ids = message_ids(&event);
    let recorder = Recorder::failing([(ids[1].clone(), Outcome::Retryable)]);

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    // Without group ids the whole batch is one group: everything from the failure on.
    assert_eq!(reported(&response), ids[1..].to_vec());
    assert_eq!(recorder.order(), ids[..2].to_vec());
}

/// `sqs-standard.json`: insert, update, delete, read of users; insert of an order.
#[tokio::test]
async fn standard_queue_reports_exactly_the_failed_records() {
    let event = sqs_batch("sqs-standard.json");
    let ids = message_ids(&event);
    let recorder = Recorder::failing([
        (ids[1].clone(), Outcome::Retryable),
        (ids[3].clone(), Outcome::Permanent),
    ]);
    let logs = Logs::capture();

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[1].clone(), ids[3].clone()]);
    assert_eq!(
        recorder.handled(),
        sorted(ids.clone()),
        "every record is handed over, failures or not"
    );
    let logs = logs.text();
    assert!(
        logs.contains("handler failed: reported as failed, SQS redelivers it"),
        "{logs}"
    );
    assert!(logs.contains("handler failed permanently"), "{logs}");
}

/// `sqs-standard-with-bad-records.json`: 0 ok, 1 truncated JSON, 2 ok,
/// 3 `record.id` is a string, 4 JSON that is not a change event.
#[tokio::test]
async fn malformed_bodies_fail_alone_and_are_logged_without_their_content() {
    let event = sqs_batch("sqs-standard-with-bad-records.json");
    let ids = message_ids(&event);
    let bodies: Vec<String> = event
        .records
        .iter()
        .map(|r| r["body"].as_str().expect("body").to_owned())
        .collect();
    let recorder = Recorder::default();
    let logs = Logs::capture();

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(
        reported(&response),
        [ids[1].clone(), ids[3].clone(), ids[4].clone()]
    );
    assert_eq!(recorder.handled(), sorted([ids[0].clone(), ids[2].clone()]));

    let logs = logs.text();
    for id in [&ids[1], &ids[3], &ids[4]] {
        let line = logs
            .lines()
            .find(|line| line.contains(id.as_str()) && line.contains("cannot decode"))
            .unwrap_or_else(|| panic!("no decode failure logged for {id}:\n{logs}"));
        for secret in ["alicia", "alice@", "one", "hello", "world"] {
            assert!(!line.contains(secret), "payload in the log: {line}");
        }
    }
    assert!(logs.contains("not valid JSON (eof error"), "{logs}");
    assert!(
        logs.contains("public.users event (ChangeEvent<User>) does not match the JSON at `record.id`: invalid type, expected i64"),
        "{logs}"
    );
    assert!(logs.contains("missing field `metadata`"), "{logs}");
    for body in &bodies {
        assert!(!logs.contains(body.as_str()));
    }
}

#[tokio::test]
async fn a_record_without_a_body_fails_alone() {
    let mut json = event_json("sqs-standard.json");
    records(&mut json)[2]
        .as_object_mut()
        .expect("record")
        .remove("body");
    let event: walcast_lambda::sqs::SqsBatch = serde_json::from_value(json).expect("SQS event");
    let ids = message_ids(&event);
    let recorder = Recorder::default();

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[2].clone()]);
    assert_eq!(recorder.order().len(), 4);
}

#[tokio::test]
async fn a_record_without_a_message_id_fails_the_whole_batch_before_any_work() {
    for missing in [Value::Null, json!("")] {
        let mut json = event_json("sqs-fifo.json");
        records(&mut json)[3]["messageId"] = missing.clone();
        let event: walcast_lambda::sqs::SqsBatch = serde_json::from_value(json).expect("SQS event");
        let recorder = Recorder::default();

        let outcome = process(event, &concurrent(), |e, m| recorder.handle(e, m)).await;

        assert_eq!(
            outcome,
            Err(BatchError::MissingMessageId { index: 3 }),
            "{missing}"
        );
        assert!(
            recorder.order().is_empty(),
            "nothing handled before failing"
        );
    }
}

#[tokio::test]
async fn the_response_is_what_lambda_expects() {
    let event = sqs_batch("sqs-fifo-with-bad-record.json");
    let ids = message_ids(&event);
    let recorder = Recorder::default();

    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(
        serde_json::to_value(&response).expect("serializes"),
        json!({ "batchItemFailures": [
            { "itemIdentifier": ids[2] },
            { "itemIdentifier": ids[4] },
        ]})
    );
}

#[tokio::test]
async fn an_empty_batch_reports_nothing() {
    let event: walcast_lambda::sqs::SqsBatch =
        serde_json::from_value(json!({ "Records": [] })).expect("SQS event");
    let recorder = Recorder::default();
    let response = process(event, &concurrent(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");
    assert!(response.batch_item_failures.is_empty());
}

fn records(json: &mut Value) -> &mut Vec<Value> {
    json["Records"].as_array_mut().expect("Records")
}
