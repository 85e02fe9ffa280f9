//! Typed decoding of every action, SNS envelopes, and the template's own
//! handler wired as in `main`.

use change_event::Action;
use consumer_sqs::{function_handler, Clients, TableEvent};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use walcast_lambda::sqs::{process, BatchConfig};

use crate::support::{event_json, message_ids, reported, sqs_event, Recorder};

/// The change-event crate's fixtures, as the streamer writes them.
fn change_event_fixture(action: &str) -> Value {
    let path = format!(
        "{}/../change-event/fixtures/{action}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

#[test]
fn fixture_bodies_are_the_change_event_fixtures_compacted() {
    let event = sqs_event("sqs-standard.json");
    for (record, action) in event
        .records
        .iter()
        .zip(["insert", "update", "delete", "read"])
    {
        let body = record.body.as_deref().expect("body");
        let expected = change_event_fixture(action);
        assert_eq!(
            body,
            serde_json::to_string(&expected).expect("compact"),
            "{action}"
        );
        let attribute = |name: &str| {
            record.message_attributes[name]
                .string_value
                .clone()
                .expect("string attribute")
        };
        assert_eq!(attribute("action"), action);
        assert_eq!(attribute("table_schema"), "public");
        assert_eq!(attribute("table_name"), "users");
    }
}

#[tokio::test]
async fn every_action_decodes_into_its_table_type() {
    let event = sqs_event("sqs-standard.json");
    let recorder = Recorder::default();
    let response = process(event, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");
    assert!(response.batch_item_failures.is_empty());

    let mut calls = recorder.calls();
    calls.sort_by_key(|(event, _)| event.metadata().commit_lsn * 10 + event.metadata().commit_idx);
    let events: Vec<TableEvent> = calls.into_iter().map(|(event, _)| event).collect();
    let [read, insert, update, delete, order] = events.as_slice() else {
        panic!("five events: {events:#?}");
    };

    let TableEvent::Users(insert) = insert else {
        panic!("{insert:?}")
    };
    assert_eq!(insert.action, Action::Insert);
    assert_eq!(insert.record.id, 1);
    assert_eq!(insert.record.name.as_deref(), Some("alice"));
    assert_eq!(
        insert
            .record
            .balance
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("12345678901234567890.123456789"),
        "numeric keeps every digit"
    );
    assert_eq!(
        insert.record.tags.as_deref(),
        Some(&["a".to_owned(), "b".to_owned()][..])
    );
    assert!(insert.changes.is_none());
    assert!(insert.metadata.transaction_annotations.is_some());

    let TableEvent::Users(update) = update else {
        panic!("{update:?}")
    };
    assert_eq!(update.action, Action::Update);
    assert_eq!(update.record.name.as_deref(), Some("alicia"));
    let changes = update.changes.as_ref().expect("update has changes");
    assert_eq!(changes.get("name"), Some(&Value::from("alice")));

    let TableEvent::Users(delete) = delete else {
        panic!("{delete:?}")
    };
    assert_eq!(delete.action, Action::Delete);
    assert_eq!(delete.record.id, 1, "the key is always there");
    assert_eq!(
        delete.record.name, None,
        "other columns are null without REPLICA IDENTITY FULL"
    );
    assert_eq!(delete.record.balance, None);

    let TableEvent::Users(read) = read else {
        panic!("{read:?}")
    };
    assert_eq!(read.action, Action::Read);
    assert_eq!(read.metadata.idempotency_key, "YmFja2ZpbGwtMTox");

    let TableEvent::Orders(order) = order else {
        panic!("{order:?}")
    };
    assert_eq!(order.action, Action::Insert);
    assert_eq!(order.record.id, 1001);
    assert_eq!(order.record.user_id, Some(1));
    assert_eq!(
        order
            .record
            .total
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("42.50"),
        "numeric keeps its scale"
    );
}

#[tokio::test]
async fn message_details_reach_the_handler() {
    let event = sqs_event("sqs-fifo.json");
    let ids = message_ids(&event);
    let recorder = Recorder::default();
    process(event, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    let calls = recorder.calls();
    let (_, message) = calls
        .iter()
        .find(|(_, m)| m.message_id == ids[1])
        .expect("called");
    assert_eq!(message.group_id.as_deref(), Some("public.orders:1001"));
    assert_eq!(message.receive_count, Some(1));
    assert_eq!(message.attributes.action.as_deref(), Some("insert"));
    assert_eq!(message.attributes.table_schema.as_deref(), Some("public"));
    assert_eq!(message.attributes.table_name.as_deref(), Some("orders"));
    assert!(!message.via_sns);
}

/// SNS → SQS without raw message delivery: the body is the SNS envelope.
#[tokio::test]
async fn sns_envelopes_are_unwrapped() {
    let event = sqs_event("sqs-sns-envelope.json");
    assert!(event.records[0]
        .body
        .as_deref()
        .expect("body")
        .contains(r#""Type":"Notification""#));
    let recorder = Recorder::default();

    let response = process(event, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    assert!(response.batch_item_failures.is_empty());
    let mut calls = recorder.calls();
    calls.sort_by_key(|(event, _)| event.metadata().commit_lsn);
    let [(users, users_message), (orders, orders_message)] = calls.as_slice() else {
        panic!("two events: {calls:#?}");
    };
    let TableEvent::Users(users) = users else {
        panic!("{users:?}")
    };
    assert_eq!(users.action, Action::Insert);
    assert_eq!(users.record.email.as_deref(), Some("alice@example.com"));
    let TableEvent::Orders(orders) = orders else {
        panic!("{orders:?}")
    };
    assert_eq!(orders.action, Action::Update);
    assert_eq!(orders.record.status.as_deref(), Some("shipped"));

    // The attributes travel inside the envelope.
    assert!(users_message.via_sns && orders_message.via_sns);
    assert_eq!(
        users_message.attributes.table_name.as_deref(),
        Some("users")
    );
    assert_eq!(orders_message.attributes.action.as_deref(), Some("update"));
}

#[tokio::test]
async fn the_template_handler_accepts_every_fixture_and_remembers_what_it_did() {
    let clients = Clients::new();
    let config = BatchConfig::default();
    for name in [
        "sqs-standard.json",
        "sqs-fifo.json",
        "sqs-sns-envelope.json",
    ] {
        let payload = sqs_event(name);
        let keys: Vec<String> = payload
            .records
            .iter()
            .map(|r| {
                let body: Value =
                    serde_json::from_str(r.body.as_deref().expect("body")).expect("JSON");
                let event = match body.get("Message").and_then(Value::as_str) {
                    Some(inner) => serde_json::from_str(inner).expect("JSON"),
                    None => body,
                };
                let meta = &event["metadata"];
                format!(
                    "{}/{}/{}",
                    meta["database"]["id"].as_str().expect("source id"),
                    meta["consumer"]["id"].as_str().expect("sink id"),
                    meta["idempotency_key"].as_str().expect("key")
                )
            })
            .collect();
        let event = LambdaEvent {
            payload: payload.into(),
            context: Context::default(),
        };

        let response = function_handler(event, &clients, &config)
            .await
            .expect("batch answered");

        assert!(
            response.batch_item_failures.is_empty(),
            "{name}: {response:?}"
        );
        for key in keys {
            assert!(clients.processed.contains(&key), "{name}: {key} noted");
        }
    }
}

#[tokio::test]
async fn the_template_handler_sends_a_negative_order_total_to_the_dlq() {
    let mut json = event_json("sqs-fifo.json");
    let record = &mut json["Records"][1];
    let body = record["body"]
        .as_str()
        .expect("body")
        .replace(r#""total":42.50"#, r#""total":-1.00"#);
    record["body"] = Value::from(body);
    let payload = serde_json::from_value(json).expect("SQS event");
    let ids = message_ids(&payload);
    let event = LambdaEvent {
        payload: payload.into(),
        context: Context::default(),
    };

    let response = function_handler(event, &Clients::new(), &BatchConfig::default())
        .await
        .expect("batch answered");

    // The bad order and the later order of its group; users are unaffected.
    assert_eq!(reported(&response), [ids[1].clone(), ids[3].clone()]);
}
