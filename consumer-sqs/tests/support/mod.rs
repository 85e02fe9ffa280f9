//! Fixtures and a handler that records what it was given.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use consumer_sqs::{HandlerError, Message, TableEvent};
use serde_json::Value;

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

/// What the recording handler should do for a message id.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Retryable,
    Permanent,
}

/// A handler that records every call, in order, and fails where told.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<(TableEvent, Message)>>,
    fail: HashMap<String, Outcome>,
}

impl Recorder {
    pub fn failing(fail: impl IntoIterator<Item = (String, Outcome)>) -> Self {
        Self {
            calls: Mutex::default(),
            fail: fail.into_iter().collect(),
        }
    }

    pub async fn handle(&self, event: TableEvent, message: Message) -> Result<(), HandlerError> {
        // Let other lanes run in between, as real I/O would.
        tokio::task::yield_now().await;
        let outcome = self.fail.get(&message.message_id).copied();
        self.calls.lock().expect("lock").push((event, message));
        tokio::task::yield_now().await;
        match outcome {
            None => Ok(()),
            Some(Outcome::Retryable) => Err(HandlerError::retryable("downstream timed out")),
            Some(Outcome::Permanent) => Err(HandlerError::permanent("row rejected")),
        }
    }

    /// Message ids of the calls, in call order.
    pub fn order(&self) -> Vec<String> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, m)| m.message_id.clone())
            .collect()
    }

    pub fn calls(&self) -> Vec<(TableEvent, Message)> {
        self.calls.lock().expect("lock").clone()
    }
}

thread_local! {
    static CAPTURED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The log lines this test thread writes (`#[tokio::test]` runs the test
/// on its own thread, with a current-thread runtime).
///
/// One global subscriber writes every thread's logs to that thread's buffer.
/// A subscriber per test (`set_default`) would be simpler but is flaky: tracing
/// caches each callsite's interest, and tests on other threads race with it.
pub struct Logs;

impl Logs {
    /// Starts capturing: clears this thread's buffer.
    pub fn capture() -> Self {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            tracing_subscriber::fmt()
                .with_writer(|| ThreadBuffer)
                .with_ansi(false)
                .with_max_level(tracing::Level::TRACE)
                .init();
        });
        CAPTURED.with(|buffer| buffer.borrow_mut().clear());
        Self
    }

    pub fn text(&self) -> String {
        CAPTURED.with(|buffer| String::from_utf8_lossy(&buffer.borrow()).into_owned())
    }
}

struct ThreadBuffer;

impl Write for ThreadBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with(|buffer| buffer.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
