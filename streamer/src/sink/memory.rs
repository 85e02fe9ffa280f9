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
    /// This handle was closed (its clones may still take events).
    closed: bool,
}

impl MemorySink {
    /// A sink that reports acceptance to `tracker`.
    pub fn new(tracker: Tracker) -> Self {
        MemorySink {
            events: Arc::default(),
            tracker,
            closed: false,
        }
    }

    /// The events received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Sink for MemorySink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        if self.closed {
            return Err(SinkError::Closed);
        }
        let seq = event.seq;
        self.tracker.metrics().delivered(&event);
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        self.tracker.accept(seq);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        match self.closed {
            true => Err(SinkError::Closed),
            false => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.closed = true;
        Ok(())
    }
}
