//! An in-memory sink for tests: accepts every event at once and keeps it.

use std::sync::{Arc, Mutex};

use super::{Sink, SinkError};
use crate::event::Event;
use crate::progress::Tracker;

/// Keeps events in memory; cheap to clone (clones share the events).
#[derive(Debug, Clone)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<Event>>>,
    tracker: Tracker,
}

impl MemorySink {
    /// A sink that reports acceptance to `tracker`.
    pub fn new(tracker: Tracker) -> Self {
        MemorySink {
            events: Arc::default(),
            tracker,
        }
    }

    /// The events received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Sink for MemorySink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        let seq = event.seq;
        self.tracker.metrics().delivered(&event);
        self.events
            .lock()
            .map_err(|_| SinkError::Fatal("memory sink poisoned".into()))?
            .push(event);
        self.tracker.accept(seq);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
