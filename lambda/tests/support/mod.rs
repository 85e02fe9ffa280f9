//! Fixtures, record types like a template's, handlers that record what they
//! were given, and a log capture.

#[cfg(feature = "s3")]
pub mod fauxqs;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use aws_lambda_events::sqs::SqsBatchResponse;
use change_event::ChangeEvent;
use serde::Deserialize;
use serde_json::Value;
use walcast_lambda::sns::Notification;
use walcast_lambda::sqs::{Message, SqsBatch};
use walcast_lambda::{DecodeError, HandlerError, Route, Table};

/// A fixture: `lambda/events/NAME` (AWS's payload shapes), or, for names
/// starting with `sqs-`/`sns-` that are not there, the templates' events
/// (the streamer's real bodies: `consumer-sqs/scripts/make-events.py`).
pub fn event_path(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let own = root.join("events").join(name);
    if own.exists() {
        return own;
    }
    let template = if name.starts_with("sns") {
        "consumer-sns"
    } else {
        "consumer-sqs"
    };
    root.join("..").join(template).join("events").join(name)
}

/// A fixture as JSON, to edit before use.
pub fn event_json(name: &str) -> Value {
    let path = event_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A fixture as the function receives it.
pub fn sqs_batch(name: &str) -> SqsBatch {
    serde_json::from_value(event_json(name)).expect("fixture is an SQS invocation")
}

/// The message ids of a batch's records, in order.
pub fn message_ids(batch: &SqsBatch) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|r| {
            r["messageId"]
                .as_str()
                .expect("fixture records have ids")
                .to_owned()
        })
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

/// The strings, sorted.
pub fn sorted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.into_iter().collect();
    items.sort();
    items
}

/// A row of `public.users`, as a template declares it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    pub id: i64,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A row of `public.orders`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Order {
    pub id: i64,
    pub status: Option<String>,
}

/// Routing as a template's `tables.rs` does it.
#[derive(Debug, Clone, PartialEq)]
pub enum TableEvent {
    Users(ChangeEvent<User>),
    Orders(ChangeEvent<Order>),
    Other(ChangeEvent),
}

impl Route for TableEvent {
    fn route(table: &Table, event: Value) -> Result<Self, DecodeError> {
        Ok(match (table.schema(), table.name()) {
            ("public", "users") => Self::Users(table.decode(event)?),
            ("public", "orders") => Self::Orders(table.decode(event)?),
            _ => Self::Other(table.decode(event)?),
        })
    }
}

/// What the recording handler should do for a message id.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Retryable,
    Permanent,
}

impl Outcome {
    fn error(self) -> HandlerError {
        match self {
            Outcome::Retryable => HandlerError::retryable("downstream timed out"),
            Outcome::Permanent => HandlerError::permanent("row rejected"),
        }
    }
}

/// An SQS handler that records every call, in order, and fails where told.
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
        outcome.map_or(Ok(()), |o| Err(o.error()))
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

    /// Message ids of the calls, sorted (for batches that run concurrently).
    pub fn handled(&self) -> Vec<String> {
        sorted(self.order())
    }

    pub fn calls(&self) -> Vec<(TableEvent, Message)> {
        self.calls.lock().expect("lock").clone()
    }
}

/// An SNS handler that records every call and fails as told.
#[derive(Default)]
pub struct SnsRecorder {
    calls: Mutex<Vec<(TableEvent, Notification)>>,
    fail: Option<Outcome>,
}

impl SnsRecorder {
    pub fn failing(fail: Outcome) -> Self {
        Self {
            calls: Mutex::default(),
            fail: Some(fail),
        }
    }

    pub async fn handle(
        &self,
        event: TableEvent,
        notification: Notification,
    ) -> Result<(), HandlerError> {
        self.calls.lock().expect("lock").push((event, notification));
        self.fail.map_or(Ok(()), |o| Err(o.error()))
    }

    pub fn calls(&self) -> Vec<(TableEvent, Notification)> {
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
