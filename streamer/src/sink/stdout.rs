//! The `stdout` sink: one JSON event per line.
//!
//! Lines are gathered into chunks of about 64 KiB on the runtime and written
//! by a thread of their own, so a reader that stops reading (a full pipe)
//! blocks only that thread: the pipeline still sees the shutdown signal and
//! the operations listener still answers. An event counts as accepted once
//! the write holding it has returned. At most [`CHUNKS_IN_FLIGHT`] chunks wait
//! for the writer; past that, `send` waits (memory stays bounded). `flush`
//! hands the partial chunk over; `close` also lets the writer finish and
//! waits for it (a wait that a timeout can cut short: the writer may be stuck
//! on a full pipe).

use std::io::Write;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Failure, Sink, SinkError};
use crate::event::{Event, Table};
use crate::progress::Tracker;

/// A chunk is handed to the writer once it holds this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued for the writer before `send` waits.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Lines (each event's body with its newline: written as they are, with one
/// `writev` for many, not copied), their bytes, and the events they hold: (seq,
/// table, commit time).
struct Chunk {
    lines: Vec<String>,
    bytes: usize,
    events: Vec<(u64, Arc<Table>, i64)>,
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            lines: Vec::new(),
            bytes: 0,
            events: Vec::new(),
        }
    }

    /// Adds the event's line.
    fn push(&mut self, event: Event) {
        let mut line = event.payload;
        line.push('\n');
        self.bytes += line.len();
        self.lines.push(line);
        self.events
            .push((event.seq, event.table, event.commit_time_micros));
    }
}

/// Slices per `writev` (Linux takes at most 1,024).
const LINES_PER_WRITE: usize = 512;

/// Writes every line, in order, with as few calls as the writer allows.
fn write_lines(out: &mut dyn Write, lines: &[String]) -> std::io::Result<()> {
    for group in lines.chunks(LINES_PER_WRITE) {
        let mut slices: Vec<std::io::IoSlice<'_>> = group
            .iter()
            .map(|l| std::io::IoSlice::new(l.as_bytes()))
            .collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match out.write_vectored(left) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => std::io::IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Writes events as JSON lines.
pub struct StdoutSink {
    chunk: Chunk,
    /// `None` once closed.
    tx: Option<mpsc::Sender<Chunk>>,
    /// Why the writer stopped, once it has.
    failure: Failure,
    /// Ends (with an error: nothing is sent on it) when the writer thread does.
    writer_done: Option<oneshot::Receiver<()>>,
}

impl StdoutSink {
    /// A sink writing to standard output (through its own file descriptor, so a
    /// blocked write never holds the process's stdout lock).
    pub fn new(tracker: Tracker) -> Result<Self, SinkError> {
        use std::os::fd::AsFd;
        let fd = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| io_error("opening stdout", e))?;
        Ok(Self::with_writer(
            Box::new(std::fs::File::from(fd)),
            tracker,
        ))
    }

    /// A sink writing to any writer (tests).
    pub fn with_writer(out: Box<dyn Write + Send>, tracker: Tracker) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (done, writer_done) = oneshot::channel();
        let failure = Failure::default();
        let failed = failure.clone();
        std::thread::Builder::new()
            .name("walcast-stdout".into())
            .spawn(move || write_chunks(out, rx, tracker, failed, done))
            .map(drop)
            .unwrap_or_else(|e| {
                failure.set(io_error("cannot start the stdout writer", e));
            });
        StdoutSink {
            chunk: Chunk::new(),
            tx: Some(tx),
            failure,
            writer_done: Some(writer_done),
        }
    }

    fn failed(&self) -> SinkError {
        self.failure.error(self.tx.is_some(), "the stdout writer")
    }

    /// The way to the writer, while the sink is open and the writer has not failed.
    fn writer(&self) -> Result<&mpsc::Sender<Chunk>, SinkError> {
        match &self.tx {
            Some(tx) if self.failure.get().is_none() => Ok(tx),
            _ => Err(self.failed()),
        }
    }

    /// Adds the event to the chunk, handing the chunk over once it is full.
    async fn add(&mut self, event: Event) -> Result<(), SinkError> {
        self.chunk.push(event);
        if self.chunk.bytes >= CHUNK_BYTES {
            self.hand_over().await?;
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<(), SinkError> {
        let tx = self.writer()?.clone();
        if self.chunk.events.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Chunk::new());
        tx.send(chunk).await.map_err(|_| self.failed())
    }
}

fn io_error(context: &'static str, error: std::io::Error) -> SinkError {
    SinkError::Io {
        context,
        error: Arc::new(error),
    }
}

/// The writer thread: writes each chunk, then accepts its events. Drops
/// `_done` when it ends, however it ends.
fn write_chunks(
    mut out: Box<dyn Write + Send>,
    mut rx: mpsc::Receiver<Chunk>,
    tracker: Tracker,
    failure: Failure,
    _done: oneshot::Sender<()>,
) {
    while let Some(chunk) = rx.blocking_recv() {
        if let Err(e) = write_lines(&mut out, &chunk.lines).and_then(|()| out.flush()) {
            failure.set(io_error("writing to stdout", e));
            return;
        }
        let metrics = tracker.metrics();
        let now = crate::ops::now_micros();
        metrics.delivered_all(
            chunk
                .events
                .iter()
                .map(|(_, table, at)| (table.qualified.as_str(), *at)),
            now,
        );
        tracker.accept_all(chunk.events.into_iter().map(|(seq, _, _)| seq));
    }
}

impl Sink for StdoutSink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        self.writer()?;
        self.add(event).await
    }

    async fn send_all(&mut self, events: Vec<Event>) -> Result<(), SinkError> {
        self.writer()?;
        for event in events {
            self.add(event).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.hand_over().await
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let handed = match self.tx {
            Some(_) => self.hand_over().await,
            None => Ok(()),
        };
        // Without a sender the writer writes what it has, then ends.
        self.tx = None;
        if let Some(done) = self.writer_done.as_mut() {
            let _ = done.await;
            self.writer_done = None;
        }
        self.failure.or(handed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(seq: u64) -> Event {
        super::super::test_event(seq, "g", format!("{{\"n\":{seq}}}"))
    }

    #[tokio::test]
    async fn close_writes_the_partial_chunk_and_waits_for_the_writer() {
        let out = Shared::default();
        let tracker = Tracker::new(0);
        let mut sink = StdoutSink::with_writer(Box::new(out.clone()), tracker.clone());
        for _ in 0..3 {
            let seq = tracker.register();
            sink.send(event(seq)).await.expect("send");
        }
        sink.close().await.expect("close");
        assert_eq!(tracker.in_flight(), 0, "accepted once close returned");
        let written = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(written, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
        assert!(matches!(sink.send(event(3)).await, Err(SinkError::Closed)));
        assert!(matches!(sink.flush().await, Err(SinkError::Closed)));
    }

    #[test]
    fn lines_are_written_whole_and_in_order_through_short_writes() {
        /// Takes at most 5 bytes a call, and is interrupted every other call.
        struct Dribble(Vec<u8>, bool);
        impl Write for Dribble {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(5);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines: Vec<String> = (0..1100).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let mut out = Dribble(Vec::new(), false);
        write_lines(&mut out, &lines).expect("written");
        assert_eq!(String::from_utf8(out.0).expect("utf8"), lines.concat());
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_later_call() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let tracker = Tracker::new(0);
        let mut sink = StdoutSink::with_writer(Box::new(Broken), tracker.clone());
        let seq = tracker.register();
        sink.send(event(seq)).await.expect("held");
        sink.flush().await.expect("handed over");
        match sink.close().await {
            Err(SinkError::Io { context, error }) => {
                assert_eq!(context, "writing to stdout");
                assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(tracker.in_flight(), 1, "not accepted");
        assert!(matches!(
            sink.send(event(1)).await,
            Err(SinkError::Io { .. })
        ));
    }
}
