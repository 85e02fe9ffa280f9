//! `walcast_lambda::sns::process`: direct SNS invocations.

use change_event::Action;
use lambda_runtime::Diagnostic;
use serde_json::{json, Value};
use walcast_lambda::sns::{process, NotificationError, SnsBatch};
use walcast_lambda::Payloads;

use crate::support::{event_json, Logs, Outcome, SnsRecorder, TableEvent};

fn sns_batch(name: &str) -> SnsBatch {
    serde_json::from_value(event_json(name)).expect("an SNS invocation")
}

#[tokio::test]
async fn a_malformed_message_fails_the_invocation_without_calling_the_handler() {
    let batch = sns_batch("sns-malformed.json");
    let message_id = batch.records[0]["Sns"]["MessageId"]
        .as_str()
        .expect("id")
        .to_owned();
    let recorder = SnsRecorder::default();
    let logs = Logs::capture();

    let error = process(batch, &Payloads::default(), |e, n| recorder.handle(e, n))
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
async fn handler_errors_fail_the_invocation_and_keep_their_kind() {
    for (fail, retryable, error_type) in [
        (Outcome::Retryable, true, "HandlerError.Retryable"),
        (Outcome::Permanent, false, "HandlerError.Permanent"),
    ] {
        let batch = sns_batch("sns-order-update.json");
        let message_id = batch.records[0]["Sns"]["MessageId"]
            .as_str()
            .expect("id")
            .to_owned();
        let recorder = SnsRecorder::failing(fail);

        let error = process(batch, &Payloads::default(), |e, n| recorder.handle(e, n))
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
    let records: Vec<Value> = ["sns.json", "sns-malformed.json", "sns-update.json"]
        .iter()
        .map(|name| event_json(name)["Records"][0].clone())
        .collect();
    let batch: SnsBatch = serde_json::from_value(json!({ "Records": records })).expect("SNS");
    let recorder = SnsRecorder::default();

    let error = process(batch, &Payloads::default(), |e, n| recorder.handle(e, n))
        .await
        .expect_err("the second record fails");

    assert!(matches!(error, NotificationError::Decode { .. }));
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1, "the third record is not handled");
    let TableEvent::Users(change) = &calls[0].0 else {
        panic!("users")
    };
    assert_eq!(change.action, Action::Insert);
}

/// SignatureVersion 2 and a Binary attribute: handled; the Binary attribute
/// is not taken for one of ours.
#[tokio::test]
async fn signature_v2_and_binary_attributes() {
    let recorder = SnsRecorder::default();
    process(
        sns_batch("sns-signature-v2-binary-attribute.json"),
        &Payloads::default(),
        |e, n| recorder.handle(e, n),
    )
    .await
    .expect("handled");
    let calls = recorder.calls();
    let [(TableEvent::Users(_), notification)] = calls.as_slice() else {
        panic!("one users event: {calls:?}")
    };
    assert_eq!(notification.attributes.action.as_deref(), Some("insert"));
}

/// A record the event types cannot read fails with its message id and the
/// field at fault, not the runtime's anonymous `DeserializeError`.
#[tokio::test]
async fn an_unreadable_record_names_its_message_id_and_field() {
    let batch = sns_batch("sns-record-missing-fields.json");
    let message_id = batch.records[0]["Sns"]["MessageId"]
        .as_str()
        .expect("id")
        .to_owned();
    let recorder = SnsRecorder::default();

    let error = process(batch, &Payloads::default(), |e, n| recorder.handle(e, n))
        .await
        .expect_err("unreadable");

    assert!(recorder.calls().is_empty());
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "SNS message {message_id}: cannot decode it: SNS record does not match the JSON at `Sns"
        )),
        "{text}"
    );
    assert!(text.contains("missing field"), "{text}");
}
