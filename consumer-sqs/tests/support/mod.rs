//! Fixtures and a handler that records what it was given.

use std::path::PathBuf;
use std::sync::Mutex;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use consumer_sqs::TableEvent;
use serde_json::Value;
use walcast_lambda::sqs::Message;
use walcast_lambda::HandlerError;

/// Path of a file in `events/`.
pub fn event_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("events")
        .join(name)
}

/// A fixture from `events/` as JSON, to edit before use.
pub fn event_json(name: &str) -> Value {
    let text = std::fs::read_to_string(event_path(name)).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A fixture from `events/` as the Lambda runtime hands it over.
pub fn sqs_event(name: &str) -> SqsEvent {
    serde_json::from_value(event_json(name)).expect("fixture is an SQS event")
}

/// The message ids of a fixture's records, in order.
pub fn message_ids(event: &SqsEvent) -> Vec<String> {
    event
        .records
        .iter()
        .map(|r| r.message_id.clone().expect("fixture records have ids"))
        .collect()
}

/// The message ids a response reports, in order.
pub fn reported(response: &SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// A handler that records every call. (The library's tests fail records on
/// purpose: `lambda/tests/support`.)
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<(TableEvent, Message)>>,
}

impl Recorder {
    pub async fn handle(&self, event: TableEvent, message: Message) -> Result<(), HandlerError> {
        self.calls.lock().expect("lock").push((event, message));
        Ok(())
    }

    pub fn calls(&self) -> Vec<(TableEvent, Message)> {
        self.calls.lock().expect("lock").clone()
    }
}
