//! `consumer_sns::process`: typed decoding, attributes, and the error paths.

use change_event::Action;
use consumer_sns::{process, HandlerError, NotificationError, TableEvent};
use lambda_runtime::Diagnostic;
use serde_json::{json, Value};

use crate::support::{event_json, sns_event, Logs, Recorder, FIXTURES};

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
        process(sns_event(name), |e, n| recorder.handle(e, n))
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
async fn a_malformed_message_fails_the_invocation_without_calling_the_handler() {
    let event = sns_event("sns-malformed.json");
    let message_id = event.records[0].sns.message_id.clone();
    let recorder = Recorder::default();
    let logs = Logs::capture();

    let error = process(event, |e, n| recorder.handle(e, n))
        .await
        .expect_err("a malformed message fails");

    assert!(
        matches!(error, NotificationError::Decode { .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(recorder.calls().is_empty());
    let diagnostic = Diagnostic::from(error);
    assert_eq!(diagnostic.error_type, "DecodeError");
    assert!(
        diagnostic.error_message.contains(&message_id),
        "{}",
        diagnostic.error_message
    );
    assert!(
        diagnostic.error_message.contains("not valid JSON"),
        "{}",
        diagnostic.error_message
    );
    let logs = logs.text();
    assert!(logs.contains(&message_id), "{logs}");
    for secret in ["alicia", "alice@"] {
        assert!(!logs.contains(secret), "payload in the logs: {logs}");
        assert!(!diagnostic.error_message.contains(secret));
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

    let error = process(serde_json::from_value(json).expect("SNS event"), |e, n| {
        recorder.handle(e, n)
    })
    .await
    .expect_err("wrong shape");

    let text = error.to_string();
    assert!(
        text.contains(
            "public.users event (ChangeEvent<User>) does not match the message at `record.email`"
        ),
        "{text}"
    );
    assert!(!text.contains("alice@"), "{text}");
}

#[tokio::test]
async fn handler_errors_fail_the_invocation_and_keep_their_kind() {
    for (fail, retryable, error_type) in [
        (
            (|| HandlerError::retryable("orders API timed out")) as fn() -> HandlerError,
            true,
            "HandlerError.Retryable",
        ),
        (
            || HandlerError::permanent("order total is negative"),
            false,
            "HandlerError.Permanent",
        ),
    ] {
        let event = sns_event("sns-order-update.json");
        let message_id = event.records[0].sns.message_id.clone();
        let recorder = Recorder::failing(fail);

        let error = process(event, |e, n| recorder.handle(e, n))
            .await
            .expect_err("fails");

        assert!(
            matches!(error, NotificationError::Handler { .. }),
            "{error:?}"
        );
        assert_eq!(error.is_retryable(), retryable);
        assert_eq!(recorder.calls().len(), 1);
        let diagnostic = Diagnostic::from(error);
        assert_eq!(diagnostic.error_type, error_type);
        assert!(diagnostic
            .error_message
            .starts_with(&format!("SNS message {message_id}: handler failed: ")));
    }
}

#[tokio::test]
async fn several_records_run_in_order_and_stop_at_the_first_failure() {
    let mut json = event_json("sns.json");
    let records: Vec<Value> = ["sns.json", "sns-malformed.json", "sns-update.json"]
        .iter()
        .map(|name| event_json(name)["Records"][0].clone())
        .collect();
    json["Records"] = json!(records);
    let recorder = Recorder::default();

    let error = process(serde_json::from_value(json).expect("SNS event"), |e, n| {
        recorder.handle(e, n)
    })
    .await
    .expect_err("the second record fails");

    assert!(matches!(error, NotificationError::Decode { .. }));
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1, "the third record is not handled");
    assert_eq!(calls[0].0.action(), Action::Insert);
}
