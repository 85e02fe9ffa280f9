//! The `stdout` sink: one JSON event per line.
//!
//! Lines are gathered into chunks of about 64 KiB on the runtime and written
//! by a thread of their own, so a reader that stops reading (a full pipe)
//! blocks only that thread: the pipeline still sees the shutdown signal and
//! the operations listener still answers. An event counts as accepted once
//! the write holding it has returned. At most [`CHUNKS_IN_FLIGHT`] chunks wait
//! for the writer; past that, `send` waits (memory stays bounded).

use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{Sink, SinkError};
use crate::event::{Event, Table};
use crate::progress::Tracker;

/// A chunk is handed to the writer once it holds this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued for the writer before `send` waits.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Lines, and the events they hold: (seq, table, commit time).
struct Chunk {
    bytes: Vec<u8>,
    events: Vec<(u64, Arc<Table>, i64)>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            bytes: Vec::with_capacity(CHUNK_BYTES + 4096),
            events: Vec::new(),
        }
    }
}

/// Writes events as JSON lines.
pub struct StdoutSink {
    chunk: Chunk,
    tx: mpsc::Sender<Chunk>,
    /// Why the writer stopped, once it has.
    failure: Arc<Mutex<Option<String>>>,
}

impl StdoutSink {
    /// A sink writing to standard output (through its own file descriptor, so a
    /// blocked write never holds the process's stdout lock).
    pub fn new(tracker: Tracker) -> Result<Self, SinkError> {
        use std::os::fd::AsFd;
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| SinkError::Fatal(format!("opening stdout: {e}")))?;
        Ok(Self::with_writer(
            Box::new(std::fs::File::from(fd)),
            tracker,
        ))
    }

    /// A sink writing to any writer (tests).
    pub fn with_writer(out: Box<dyn Write + Send>, tracker: Tracker) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&failure);
        std::thread::Builder::new()
            .name("walcast-stdout".into())
            .spawn(move || write_chunks(out, rx, tracker, failed))
            .map(drop)
            .unwrap_or_else(|e| {
                *lock(&failure) = Some(format!("cannot start the stdout writer: {e}"));
            });
        StdoutSink {
            chunk: Chunk::new(),
            tx,
            failure,
        }
    }

    fn failed(&self) -> SinkError {
        SinkError::Fatal(
            lock(&self.failure)
                .clone()
                .unwrap_or_else(|| "the stdout writer stopped".into()),
        )
    }

    async fn hand_over(&mut self) -> Result<(), SinkError> {
        if self.chunk.events.is_empty() {
            return match lock(&self.failure).is_some() {
                true => Err(self.failed()),
                false => Ok(()),
            };
        }
        let chunk = std::mem::replace(&mut self.chunk, Chunk::new());
        self.tx.send(chunk).await.map_err(|_| self.failed())
    }
}

fn lock(m: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer thread: writes each chunk, then accepts its events.
fn write_chunks(
    mut out: Box<dyn Write + Send>,
    mut rx: mpsc::Receiver<Chunk>,
    tracker: Tracker,
    failure: Arc<Mutex<Option<String>>>,
) {
    while let Some(chunk) = rx.blocking_recv() {
        if let Err(e) = out.write_all(&chunk.bytes).and_then(|()| out.flush()) {
            *lock(&failure) = Some(format!("writing to stdout: {e}"));
            return;
        }
        let metrics = tracker.metrics();
        let now = crate::ops::now_micros();
        for (_, table, at) in &chunk.events {
            metrics.delivered_by(&table.qualified, *at, now);
        }
        tracker.accept_all(chunk.events.into_iter().map(|(seq, _, _)| seq));
    }
}

impl Sink for StdoutSink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        self.chunk.bytes.extend_from_slice(event.payload.as_bytes());
        self.chunk.bytes.push(b'\n');
        self.chunk
            .events
            .push((event.seq, event.table, event.commit_time_micros));
        if self.chunk.bytes.len() >= CHUNK_BYTES {
            self.hand_over().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.hand_over().await
    }
}
