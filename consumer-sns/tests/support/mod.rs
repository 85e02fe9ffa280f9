//! Fixtures and a handler that records what it was given.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Mutex, Once};

use aws_lambda_events::sns::SnsEvent;
use consumer_sns::{HandlerError, Notification, TableEvent};
use serde_json::Value;

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

/// A handler that records every call and fails as told.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<(TableEvent, Notification)>>,
    pub fail: Option<fn() -> HandlerError>,
}

impl Recorder {
    pub fn failing(fail: fn() -> HandlerError) -> Self {
        Self {
            fail: Some(fail),
            ..Self::default()
        }
    }

    pub async fn handle(
        &self,
        event: TableEvent,
        notification: Notification,
    ) -> Result<(), HandlerError> {
        self.calls.lock().expect("lock").push((event, notification));
        match self.fail {
            None => Ok(()),
            Some(error) => Err(error()),
        }
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
