//! The template's own handler, wired as in `main`.

use consumer_sns::{function_handler, Clients};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use walcast_lambda::sns::NotificationError;
use walcast_lambda::Payloads;

use crate::support::{event_json, sns_event, FIXTURES};

#[tokio::test]
async fn the_template_handler_accepts_every_fixture_and_remembers_what_it_did() {
    let clients = Clients::new();
    for (name, _, _) in FIXTURES {
        let payload = sns_event(name);
        let message: Value = serde_json::from_str(&payload.records[0].sns.message).expect("JSON");
        let meta = &message["metadata"];
        let key = format!(
            "{}/{}/{}",
            meta["database"]["id"].as_str().expect("source id"),
            meta["consumer"]["id"].as_str().expect("sink id"),
            meta["idempotency_key"].as_str().expect("key")
        );
        let event = LambdaEvent {
            payload: payload.into(),
            context: Context::default(),
        };

        function_handler(event, &clients, &Payloads::default())
            .await
            .expect(name);

        assert!(clients.processed.contains(&key), "{name}: {key} noted");
    }
    // A redelivery is acknowledged without doing the work again.
    let event = LambdaEvent {
        payload: sns_event("sns.json").into(),
        context: Context::default(),
    };
    function_handler(event, &clients, &Payloads::default())
        .await
        .expect("duplicate");
}

#[tokio::test]
async fn the_template_handler_rejects_a_negative_order_total_for_good() {
    let mut json = event_json("sns-order-insert.json");
    let message = json["Records"][0]["Sns"]["Message"]
        .as_str()
        .expect("message")
        .replace(r#""total":42.50"#, r#""total":-0.01"#);
    json["Records"][0]["Sns"]["Message"] = Value::from(message);
    let event = LambdaEvent {
        payload: serde_json::from_value(json).expect("SNS event"),
        context: Context::default(),
    };

    let error = function_handler(event, &Clients::new(), &Payloads::default())
        .await
        .expect_err("rejected");

    assert!(matches!(error, NotificationError::Handler { .. }));
    assert!(!error.is_retryable());
    assert!(
        error
            .to_string()
            .ends_with("handler failed: order total is negative"),
        "{error}"
    );
}
