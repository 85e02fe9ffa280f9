//! The payload shapes AWS sends (`events/`, written by
//! `consumer-sqs/scripts/make-events.py`), and big generated batches.

use serde_json::{json, Value};
use walcast_lambda::sqs::{process, BatchConfig, SqsBatch};

use crate::support::{message_ids, reported, sorted, sqs_batch, Logs, Recorder, TableEvent};

/// Whether the runtime's own `SqsEvent` rejects the whole invocation.
fn sqs_event_rejects(batch: &SqsBatch) -> bool {
    serde_json::from_value::<aws_lambda_events::sqs::SqsEvent>(json!({
        "Records": batch.records.clone()
    }))
    .is_err()
}

/// A record the event types cannot read fails alone, with its message id and
/// the field at fault; the rest are handled.
#[tokio::test]
async fn a_record_the_event_types_cannot_read_fails_alone() {
    let batch = sqs_batch("sqs-unreadable-record.json");
    // The runtime's own event type rejects the whole invocation.
    assert!(
        sqs_event_rejects(&batch),
        "the fixture must hold a record SqsEvent cannot read"
    );
    let ids = message_ids(&batch);
    let recorder = Recorder::default();
    let logs = Logs::capture();

    let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[1].clone()]);
    assert_eq!(recorder.handled(), sorted([ids[0].clone(), ids[2].clone()]));
    let logs = logs.text();
    let line = logs
        .lines()
        .find(|l| l.contains(&ids[1]) && l.contains("cannot decode"))
        .unwrap_or_else(|| panic!("no failure logged for {}:\n{logs}", ids[1]));
    assert!(
        line.contains("SQS record does not match the JSON at `attributes.ApproximateReceiveCount`"),
        "{line}"
    );
}

/// `"stringListValues": null` / `"binaryListValues": null` in a message
/// attribute, as AWS sends them at times: read as empty lists, so the record
/// is handled, its attributes read.
#[tokio::test]
async fn null_attribute_lists_are_read_as_empty() {
    let batch = sqs_batch("sqs-string-list-values-null.json");
    assert!(
        sqs_event_rejects(&batch),
        "the fixture must hold a null list SqsEvent cannot read"
    );
    let ids = message_ids(&batch);
    let recorder = Recorder::default();

    let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let mut calls = recorder.calls();
    calls.sort_by_key(|(_, m)| ids.iter().position(|id| *id == m.message_id));
    let actions: Vec<Option<&str>> = calls
        .iter()
        .map(|(_, m)| m.attributes.action.as_deref())
        .collect();
    assert_eq!(actions, [Some("insert"), Some("update"), Some("delete")]);
    assert_eq!(calls[2].1.attributes.table_name.as_deref(), Some("users"));
}

/// Every shape that holds change events only: all handled, nothing reported.
#[tokio::test]
async fn every_readable_shape_is_handled_whole() {
    // (fixture, tables in batch order, whether the records carry our attributes)
    for (name, tables, attributes) in [
        (
            "sqs-batching-window-nulls.json",
            &["users", "users", "orders"][..],
            false,
        ),
        (
            "sqs-binary-number-attributes.json",
            &["users", "orders"],
            true,
        ),
        (
            "sqs-sns-envelopes-signed-unsigned.json",
            &["users", "users"],
            true,
        ),
        (
            "sqs-sns-raw-delivery-fifo.json",
            &["users", "orders", "users"],
            true,
        ),
    ] {
        let batch = sqs_batch(name);
        let ids = message_ids(&batch);
        let recorder = Recorder::default();

        let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
            .await
            .expect(name);

        assert!(
            response.batch_item_failures.is_empty(),
            "{name}: {response:?}"
        );
        let mut calls = recorder.calls();
        calls.sort_by_key(|(_, m)| ids.iter().position(|id| *id == m.message_id));
        let routed: Vec<&str> = calls
            .iter()
            .map(|(e, _)| match e {
                TableEvent::Users(_) => "users",
                TableEvent::Orders(_) => "orders",
                TableEvent::Other(_) => "other",
            })
            .collect();
        assert_eq!(routed, tables, "{name}");
        for (_, message) in &calls {
            // Our String attributes are read wherever they travel (SQS
            // attributes or the SNS envelope); Binary/Number ones are not ours.
            assert_eq!(
                message.attributes.action.is_some(),
                attributes,
                "{name}: {message:?}"
            );
            assert_eq!(
                message.attributes.table_name.is_some(),
                attributes,
                "{name}: {message:?}"
            );
        }
    }
}

#[tokio::test]
async fn envelopes_with_and_without_signatures_are_unwrapped() {
    let recorder = Recorder::default();
    process(
        sqs_batch("sqs-sns-envelopes-signed-unsigned.json"),
        &BatchConfig::default(),
        |e, m| recorder.handle(e, m),
    )
    .await
    .expect("batch answered");
    let calls = recorder.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|(_, m)| m.via_sns));
}

/// SNS FIFO → SQS FIFO with raw delivery keeps the group order.
#[tokio::test]
async fn raw_delivery_from_a_fifo_topic_keeps_group_order() {
    let batch = sqs_batch("sqs-sns-raw-delivery-fifo.json");
    let ids = message_ids(&batch);
    let recorder = Recorder::failing([(ids[0].clone(), crate::support::Outcome::Retryable)]);

    let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    // users:1 insert failed: its update (2) waits; orders (1) goes on.
    assert_eq!(reported(&response), [ids[0].clone(), ids[2].clone()]);
    assert!(!recorder.calls().iter().any(|(_, m)| m.via_sns));
}

/// A subscription confirmation fails alone, with what to do, not as a broken event.
#[tokio::test]
async fn a_subscription_confirmation_says_what_to_do() {
    let batch = sqs_batch("sqs-subscription-confirmation.json");
    let ids = message_ids(&batch);
    let recorder = Recorder::default();
    let logs = Logs::capture();

    let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert_eq!(reported(&response), [ids[0].clone()]);
    assert_eq!(recorder.order(), [ids[1].clone()]);
    let logs = logs.text();
    assert!(
        logs.contains("the message is an SNS SubscriptionConfirmation, not a change event: confirm the subscription"),
        "{logs}"
    );
    assert!(
        !logs.contains("2336412f37fb"),
        "the token is not logged: {logs}"
    );
}

/// A standard queue with a batching window: up to 10,000 records in one
/// invocation. Every record is handled once; the bad ones (every 1000th)
/// are reported, in batch order.
#[tokio::test]
async fn ten_thousand_records() {
    let template = sqs_batch("sqs-standard.json").records[0].clone();
    let records: Vec<Value> = (0..10_000)
        .map(|n| {
            let mut record = template.clone();
            record["messageId"] = json!(format!("m{n:05}"));
            if n % 1000 == 999 {
                record["body"] = json!("{\"record\":");
            }
            record
        })
        .collect();
    let recorder = Recorder::default();

    let response = process(SqsBatch { records }, &BatchConfig::default(), |e, m| {
        recorder.handle(e, m)
    })
    .await
    .expect("batch answered");

    let expected: Vec<String> = (0..10).map(|k| format!("m{:05}", k * 1000 + 999)).collect();
    assert_eq!(reported(&response), expected);
    assert_eq!(recorder.order().len(), 9_990);
}

/// A 6 MB invocation (Lambda's synchronous payload limit): 6 records of
/// ~1 MB each (SQS's message limit), decoded whole.
#[tokio::test]
async fn a_six_megabyte_invocation() {
    let template = sqs_batch("sqs-standard.json").records[0].clone();
    let body: Value =
        serde_json::from_str(template["body"].as_str().expect("body")).expect("JSON body");
    let big = "x".repeat(1_000_000);
    let records: Vec<Value> = (0..6)
        .map(|n| {
            let mut event = body.clone();
            event["record"]["name"] = json!(big);
            let mut record = template.clone();
            record["messageId"] = json!(format!("big-{n}"));
            record["body"] = json!(serde_json::to_string(&event).expect("serializes"));
            record
        })
        .collect();
    let invocation = serde_json::to_string(&json!({ "Records": records })).expect("serializes");
    assert!(invocation.len() > 6_000_000, "{}", invocation.len());
    let batch: SqsBatch = serde_json::from_str(&invocation).expect("the invocation parses");
    let recorder = Recorder::default();

    let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert!(response.batch_item_failures.is_empty());
    for (event, _) in recorder.calls() {
        let TableEvent::Users(change) = event else {
            panic!("routed to users")
        };
        assert_eq!(change.record.name.as_deref().map(str::len), Some(1_000_000));
    }
}
