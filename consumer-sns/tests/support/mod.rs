//! Fixtures and a handler that records what it was given.

use std::sync::Mutex;

use aws_lambda_events::sns::SnsEvent;
use consumer_sns::TableEvent;
use serde_json::Value;
use walcast_lambda::sns::Notification;
use walcast_lambda::HandlerError;

/// A fixture from `events/` as JSON, to edit before use.
pub fn event_json(name: &str) -> Value {
    let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A fixture from `events/` as the Lambda runtime hands it over.
pub fn sns_event(name: &str) -> SnsEvent {
    serde_json::from_value(event_json(name)).expect("fixture is an SNS event")
}

/// The SNS fixtures of change events, with the action each holds.
pub const FIXTURES: [(&str, &str, &str); 6] = [
    ("sns.json", "users", "insert"),
    ("sns-update.json", "users", "update"),
    ("sns-delete.json", "users", "delete"),
    ("sns-read.json", "users", "read"),
    ("sns-order-insert.json", "orders", "insert"),
    ("sns-order-update.json", "orders", "update"),
];

/// A handler that records every call.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<(TableEvent, Notification)>>,
}

impl Recorder {
    pub async fn handle(
        &self,
        event: TableEvent,
        notification: Notification,
    ) -> Result<(), HandlerError> {
        self.calls.lock().expect("lock").push((event, notification));
        Ok(())
    }

    pub fn calls(&self) -> Vec<(TableEvent, Notification)> {
        self.calls.lock().expect("lock").clone()
    }
}
