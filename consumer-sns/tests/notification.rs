//! The template's tables under `walcast_lambda::sns::process`: typed decoding,
//! attributes, a wrong shape. (Failure kinds and order are the library's: `lambda/tests/sns.rs`.)

use change_event::Action;
use consumer_sns::TableEvent;
use serde_json::Value;
use walcast_lambda::sns::{process, SnsBatch};
use walcast_lambda::Payloads;

use crate::support::{event_json, sns_event, Recorder, FIXTURES};

#[test]
fn fixture_messages_are_the_change_event_fixtures_compacted() {
    for (name, action) in [
        ("sns.json", "insert"),
        ("sns-update.json", "update"),
        ("sns-delete.json", "delete"),
        ("sns-read.json", "read"),
    ] {
        let event = sns_event(name);
        let path = format!(
            "{}/../change-event/fixtures/{action}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
        assert_eq!(
            event.records[0].sns.message,
            serde_json::to_string(&expected).expect("compact")
        );
    }
}

#[tokio::test]
async fn every_action_decodes_into_its_table_type() {
    for (name, table, action) in FIXTURES {
        let recorder = Recorder::default();
        process(sns_event(name), &Payloads::default(), |e, n| {
            recorder.handle(e, n)
        })
        .await
        .expect(name);

        let calls = recorder.calls();
        let [(event, notification)] = calls.as_slice() else {
            panic!("{name}: one call")
        };
        assert_eq!(event.action().as_str(), action, "{name}");
        assert_eq!(
            notification.attributes.action.as_deref(),
            Some(action),
            "{name}"
        );
        assert_eq!(
            notification.attributes.table_schema.as_deref(),
            Some("public"),
            "{name}"
        );
        assert_eq!(
            notification.attributes.table_name.as_deref(),
            Some(table),
            "{name}"
        );
        assert!(
            notification.topic_arn.ends_with(":walcast-changes"),
            "{name}"
        );
        assert!(!notification.message_id.is_empty(), "{name}");
        match (event, table) {
            (TableEvent::Users(change), "users") => {
                assert_eq!(change.record.id, 1);
                match change.action {
                    Action::Delete => assert_eq!(change.record.email, None, "key columns only"),
                    _ => assert_eq!(change.record.email.as_deref(), Some("alice@example.com")),
                }
                assert_eq!(
                    change.action == Action::Update,
                    change
                        .changes
                        .as_ref()
                        .is_some_and(|c| c.contains_key("name")),
                    "{name}"
                );
            }
            (TableEvent::Orders(change), "orders") => {
                assert_eq!(change.record.id, 1001);
                assert_eq!(
                    change
                        .record
                        .total
                        .as_ref()
                        .map(ToString::to_string)
                        .as_deref(),
                    Some("42.50")
                );
            }
            other => panic!("{name}: routed wrongly: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_message_of_the_wrong_shape_names_the_field_not_the_value() {
    let mut json = event_json("sns.json");
    let message = json["Records"][0]["Sns"]["Message"]
        .as_str()
        .expect("message")
        .replace(
            r#""email":"alice@example.com""#,
            r#""email":["alice@example.com"]"#,
        );
    json["Records"][0]["Sns"]["Message"] = Value::from(message);
    let recorder = Recorder::default();

    let error = process(sns_batch(json), &Payloads::default(), |e, n| {
        recorder.handle(e, n)
    })
    .await
    .expect_err("wrong shape");

    let text = error.to_string();
    assert!(
        text.contains(
            "public.users event (ChangeEvent<User>) does not match the JSON at `record.email`"
        ),
        "{text}"
    );
    assert!(!text.contains("alice@"), "{text}");
}

fn sns_batch(json: Value) -> SnsBatch {
    serde_json::from_value(json).expect("SNS event")
}
