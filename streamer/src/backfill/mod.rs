//! Backfills: the rows a table already holds, as `read` events, while
//! streaming goes on (DBLog's watermarks, Netflix 2019).
//!
//! ```text
//!  driver (own SQL connection)                 pipeline (the slot, in commit order)
//!  ───────────────────────────                 ─────────────────────────────────────
//!  emit LOW(run, id, k) ──────── WAL ────────▶ LOW: open the window (table, k)
//!  wait until the pipeline saw LOW ◀────────── note every key changed in the table
//!  SELECT … WHERE key > last ORDER BY key LIMIT n
//!  hand the chunk over
//!  emit HIGH(run, id, k) ─────── WAL ────────▶ HIGH: drop the chunk's rows whose key
//!                                                changed in the window, send the rest
//!                                                as `read` events right here, in order
//!  wait until the reads are accepted ◀──────── (the high watermark's transaction
//!  store progress (last key, rows sent)          confirms only once they are)
//! ```
//!
//! **Why no read overwrites a newer change.** A change committed before LOW
//! reached the pipeline was visible to the SELECT, which starts only after the
//! pipeline saw LOW; its event went out before the chunk's. A change committed
//! between LOW and HIGH may or may not be in the SELECT: its row is dropped
//! from the chunk (its change event carries the row). A change committed after
//! HIGH comes after the chunk in the stream. Each chunk's reads are therefore
//! in stream order with every change of their rows, and a FIFO message group
//! (one row) sees them in that order. The watermarks carry this process's
//! `run` number, so after a restart the old watermarks still in the slot are
//! ignored and the chunk is read again.
//!
//! **Resumable.** Progress lives in the source database
//! ([`store`]: `walcast.backfills`), written after a chunk's reads were
//! accepted by the sink; a restarted streamer continues after the last
//! finished chunk. A chunk whose reads went out but whose progress was not yet
//! written is sent again (at least once, with the same idempotency keys).
//!
//! **Bounded.** One chunk at a time; its size adapts to a time budget.

pub mod cli;
mod driver;
pub mod store;

pub use driver::run as drive;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::event::{ReadAt, Table};

/// Prefix of the low watermark message.
pub const LOW: &str = "walcast.backfill.low";
/// Prefix of the high watermark message.
pub const HIGH: &str = "walcast.backfill.high";
/// The schema of the progress table; its tables are never streamed.
pub const SCHEMA: &str = "walcast";

/// A watermark's content: which process, backfill and chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    /// This process's run number (watermarks of earlier runs are ignored).
    pub run: u64,
    /// The backfill (`walcast.backfills.id`).
    pub id: u64,
    /// The chunk number within the backfill.
    pub chunk: u64,
}

/// Rows read for one chunk, waiting for their high watermark.
#[derive(Debug)]
pub struct Chunk {
    /// Whose chunk.
    pub mark: Mark,
    /// The table (columns as the stream has them, key, group key).
    pub table: Arc<Table>,
    /// The rows' values, in the type's text output (as pgoutput sends them).
    pub rows: Rows,
    /// When the rows were read, microseconds since the Unix epoch.
    pub read_time_micros: i64,
}

/// Rows of text values in one buffer: no allocation per value.
#[derive(Debug, Default)]
pub struct Rows {
    /// The values, back to back.
    buf: Vec<u8>,
    /// Per value (rows × columns): its range in `buf`, `None` for NULL.
    values: Vec<Option<(u32, u32)>>,
    columns: usize,
}

impl Rows {
    /// Parses COPY's text format (one row per line, tab-separated, `\N` for NULL,
    /// backslash escapes) of rows with `columns` values each.
    pub fn from_copy_text(text: &[u8], columns: usize) -> Result<Rows, String> {
        let mut rows = Rows {
            buf: Vec::with_capacity(text.len()),
            values: Vec::new(),
            columns,
        };
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let before = rows.values.len();
            for field in line.split(|&b| b == b'\t') {
                if field == b"\\N" {
                    rows.values.push(None);
                    continue;
                }
                let start = rows.buf.len() as u32;
                if field.contains(&b'\\') {
                    unescape(field, &mut rows.buf)?;
                } else {
                    rows.buf.extend_from_slice(field);
                }
                rows.values
                    .push(Some((start, rows.buf.len() as u32 - start)));
            }
            if rows.values.len() - before != columns {
                return Err(format!(
                    "a COPY row has {} values, the table {columns}",
                    rows.values.len() - before
                ));
            }
        }
        Ok(rows)
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.columns).unwrap_or(0)
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Text bytes held.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Row `i`: each value's text (`None`: NULL).
    pub fn row(&self, i: usize) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        self.values[i * self.columns..(i + 1) * self.columns]
            .iter()
            .map(|v| v.map(|(s, n)| &self.buf[s as usize..(s + n) as usize]))
    }
}

/// COPY text escapes: `\b \f \n \r \t \v \\`, octal `\NNN`, hex `\xHH`.
fn unescape(field: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let next = *field.get(i + 1).ok_or("a COPY value ends in a backslash")?;
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Ok(())
}

impl Chunk {
    /// Where the chunk's reads sit once the high watermark at `commit_lsn` arrived.
    pub fn read_at(&self, commit_lsn: u64) -> ReadAt {
        ReadAt::new(self.mark.id, commit_lsn, self.read_time_micros)
    }
}

/// What the pipeline did with a chunk at its high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    /// The chunk.
    pub mark: Mark,
    /// Commit LSN of the high watermark's transaction: the reads are accepted
    /// once the confirmable LSN is past it.
    pub commit_lsn: u64,
    /// Reads sent, or `None` when the window was not seen whole (read the chunk again).
    pub sent: Option<u64>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The table the next window watches (`schema.table`), set by the driver.
    expected: Option<String>,
    /// The window opened by a low watermark: table and the keys changed since.
    window: Option<(Mark, String, HashSet<String>)>,
    low_seen: Option<Mark>,
    pending: Option<Chunk>,
    emitted: Option<Emitted>,
}

/// Shared by the pipeline (which sees the watermarks in the stream) and the
/// driver (which reads chunks). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Coordinator {
    run: u64,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    /// A window is open: changes must be looked at (the fast path of every change).
    open: Arc<AtomicBool>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl Coordinator {
    /// A coordinator with a fresh run number.
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Coordinator {
            // Kept below 2^53 so it survives any JSON reader.
            run: h.finish() >> 11,
            shared: Arc::default(),
            changed: Arc::new(Notify::new()),
            open: Arc::default(),
        }
    }

    /// This process's run number.
    pub fn run(&self) -> u64 {
        self.run
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Pipeline: a watermark message. Returns the chunk to emit at a high
    /// watermark whose window was seen whole.
    pub fn watermark(&self, prefix: &str, content: &[u8]) -> Option<Chunk> {
        let Ok(mark) = serde_json::from_slice::<Mark>(content) else {
            return None;
        };
        if mark.run != self.run {
            return None;
        }
        let mut g = self.lock();
        let out = match prefix {
            LOW => {
                let table = g.expected.clone().unwrap_or_default();
                g.window = Some((mark, table, HashSet::new()));
                g.low_seen = Some(mark);
                self.open.store(true, Ordering::Release);
                None
            }
            HIGH => {
                let whole = matches!(&g.window, Some((m, _, _)) if *m == mark);
                let chunk = match g.pending.take() {
                    Some(c) if c.mark == mark && whole => Some(c),
                    _ => None,
                };
                if chunk.is_none() {
                    g.window = None;
                    self.open.store(false, Ordering::Release);
                    g.emitted = Some(Emitted {
                        mark,
                        commit_lsn: 0,
                        sent: None,
                    });
                }
                chunk
            }
            _ => None,
        };
        drop(g);
        self.wake();
        out
    }

    /// Pipeline: a change of `table` (`schema.table`) to the row with key `pks`
    /// (`record_pks` as JSON); recorded while a window on that table is open.
    pub fn changed(&self, table: &str, pks: &str) {
        if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut g = self.lock();
        if let Some((_, t, keys)) = g.window.as_mut() {
            if t == table {
                keys.insert(pks.to_owned());
            }
        }
    }

    /// Pipeline: whether the row with key `pks` changed inside the open window.
    pub fn changed_in_window(&self, pks: &str) -> bool {
        let g = self.lock();
        g.window
            .as_ref()
            .is_some_and(|(_, _, keys)| keys.contains(pks))
    }

    /// Pipeline: the chunk's reads were handed to the sink in the high watermark's
    /// transaction (committed at `commit_lsn`).
    pub fn emitted(&self, mark: Mark, commit_lsn: u64, sent: u64) {
        let mut g = self.lock();
        g.window = None;
        self.open.store(false, Ordering::Release);
        g.emitted = Some(Emitted {
            mark,
            commit_lsn,
            sent: Some(sent),
        });
        drop(g);
        self.wake();
    }

    /// Driver: the table whose keys the next window records (`schema.table`).
    pub(crate) fn expect(&self, table: &str) {
        let mut g = self.lock();
        g.pending = None;
        g.emitted = None;
        g.low_seen = None;
        g.window = None;
        self.open.store(false, Ordering::Release);
        g.expected = Some(table.to_owned());
    }

    /// Driver: hands a chunk over before emitting its high watermark.
    pub(crate) fn hand_over(&self, chunk: Chunk) {
        self.lock().pending = Some(chunk);
    }

    /// Driver: waits until `f` finds what it waits for.
    pub(crate) async fn wait_for<T>(
        &self,
        timeout: std::time::Duration,
        mut f: impl FnMut(&mut SharedView<'_>) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut g = self.lock();
                let mut view = SharedView { shared: &mut g };
                if let Some(v) = f(&mut view) {
                    return Some(v);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// What the driver may look at while waiting.
pub(crate) struct SharedView<'a> {
    shared: &'a mut Shared,
}

impl SharedView<'_> {
    /// The last low watermark the pipeline saw.
    pub(crate) fn low_seen(&self) -> Option<Mark> {
        self.shared.low_seen
    }
    /// Takes what the pipeline did with the last high watermark.
    pub(crate) fn take_emitted(&mut self) -> Option<Emitted> {
        self.shared.emitted.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, TypeKind};

    fn chunk(mark: Mark) -> Chunk {
        Chunk {
            mark,
            table: Arc::new(Table::new(
                1,
                "public".into(),
                "t".into(),
                vec![Column::new("id".into(), TypeKind::Integer, true)],
                vec![0],
                vec![],
            )),
            rows: Rows::from_copy_text(b"1\n", 1).expect("rows"),
            read_time_micros: 0,
        }
    }

    fn content(m: Mark) -> Vec<u8> {
        serde_json::to_vec(&m).expect("json")
    }

    #[test]
    fn copy_text_rows_are_unescaped_without_copies_per_value() {
        let rows =
            Rows::from_copy_text(b"1\ta\\tb\t\\N\n2\tc\\\\d\\x41\\101\tx\n", 3).expect("rows");
        assert_eq!(rows.len(), 2);
        let r0: Vec<Option<&[u8]>> = rows.row(0).collect();
        assert_eq!(r0, [Some(&b"1"[..]), Some(&b"a\tb"[..]), None]);
        let r1: Vec<Option<&[u8]>> = rows.row(1).collect();
        assert_eq!(r1, [Some(&b"2"[..]), Some(&b"c\\dAA"[..]), Some(&b"x"[..])]);
        assert!(Rows::from_copy_text(b"1\t2\n", 3).is_err());
        assert!(Rows::from_copy_text(b"", 3).expect("empty").is_empty());
    }

    #[test]
    fn a_chunk_goes_out_only_at_the_high_watermark_of_a_window_seen_whole() {
        let c = Coordinator::new();
        let m = Mark {
            run: c.run(),
            id: 7,
            chunk: 1,
        };
        c.expect("public.t");
        c.changed("public.t", "[\"9\"]"); // before the window: not recorded
        assert!(c.watermark(LOW, &content(m)).is_none());
        c.changed("public.t", "[\"1\"]");
        c.changed("public.other", "[\"2\"]");
        c.hand_over(chunk(m));
        let out = c.watermark(HIGH, &content(m)).expect("the chunk");
        assert_eq!(out.mark, m);
        assert!(c.changed_in_window("[\"1\"]"));
        assert!(!c.changed_in_window("[\"2\"]") && !c.changed_in_window("[\"9\"]"));
        c.emitted(m, 100, 0);
        assert!(!c.changed_in_window("[\"1\"]"), "the window closed");
    }

    #[test]
    fn watermarks_of_another_run_or_a_window_not_seen_are_ignored() {
        let c = Coordinator::new();
        let m = Mark {
            run: c.run(),
            id: 7,
            chunk: 2,
        };
        let old = Mark {
            run: c.run() ^ 1,
            ..m
        };
        c.expect("public.t");
        assert!(c.watermark(LOW, &content(old)).is_none());
        c.hand_over(chunk(m));
        // HIGH without its LOW (a reconnect skipped it): no chunk, read it again.
        assert!(c.watermark(HIGH, &content(m)).is_none());
        let mut view_emitted = None;
        {
            let mut g = c.lock();
            let mut v = SharedView { shared: &mut g };
            view_emitted = view_emitted.or(v.take_emitted());
        }
        assert_eq!(view_emitted.map(|e| e.sent), Some(None));
        assert!(c.watermark(HIGH, b"not json").is_none());
    }
}
