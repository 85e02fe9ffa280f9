//! The `stdout` sink: one JSON event per line.
//!
//! Lines are buffered and written synchronously; an event counts as accepted
//! once the buffer holding it has been flushed to the file descriptor.

use std::io::Write;

use super::{Sink, SinkError};
use crate::event::Event;
use crate::progress::Tracker;

/// Flush at least this often (in events) so acceptance keeps moving inside big transactions.
const MAX_UNFLUSHED: usize = 4096;

/// Writes events as JSON lines.
pub struct StdoutSink {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    /// (seq, table, commit time) of the lines written since the last flush.
    unflushed: Vec<(u64, std::sync::Arc<crate::event::Table>, i64)>,
    tracker: Tracker,
}

impl StdoutSink {
    /// A sink writing to standard output.
    pub fn new(tracker: Tracker) -> Self {
        Self::with_writer(Box::new(std::io::stdout()), tracker)
    }

    /// A sink writing to any writer (tests).
    pub fn with_writer(w: Box<dyn Write + Send>, tracker: Tracker) -> Self {
        StdoutSink {
            out: std::io::BufWriter::with_capacity(256 * 1024, w),
            unflushed: Vec::with_capacity(MAX_UNFLUSHED),
            tracker,
        }
    }

    fn flush_now(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .map_err(|e| SinkError::Fatal(format!("writing to stdout: {e}")))?;
        let metrics = self.tracker.metrics();
        for (_, table, at) in &self.unflushed {
            metrics.delivered_at(&table.qualified, *at);
        }
        self.tracker
            .accept_all(self.unflushed.drain(..).map(|(seq, _, _)| seq));
        Ok(())
    }
}

impl Sink for StdoutSink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        self.out
            .write_all(event.payload.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| SinkError::Fatal(format!("writing to stdout: {e}")))?;
        self.unflushed
            .push((event.seq, event.table, event.commit_time_micros));
        if self.unflushed.len() >= MAX_UNFLUSHED {
            self.flush_now()?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.flush_now()
    }
}
