//! Backfills: the rows a table already holds, as `read` events, while
//! streaming goes on (DBLog's watermarks, Netflix 2019, with each read's
//! snapshot deciding which rows it may send).
//!
//! ```text
//!  driver (own SQL connection)                 pipeline (the slot, in commit order)
//!  ───────────────────────────                 ─────────────────────────────────────
//!  emit LOW(run, id) ─────────── WAL ────────▶ LOW: watch the table: log the
//!  wait until the pipeline saw LOW ◀────────── (transaction id, key) of each change
//!  per chunk, without waiting for the last:
//!    BEGIN REPEATABLE READ; pg_current_snapshot();
//!    COPY (SELECT … WHERE key > last ORDER BY key LIMIT n); COMMIT
//!    hand the chunk and its snapshot over
//!    emit HIGH(run, id, k) ───── WAL ────────▶ HIGH k: drop the chunk's rows whose key
//!                                                a transaction changed that the read's
//!                                                snapshot did not see; send the rest as
//!                                                `read` events right here, in order
//!  once chunk k's reads are accepted ◀──────── (the high watermark's transaction
//!  store progress (last key, rows sent)          confirms only once they are)
//! ```
//!
//! **Why no read overwrites a newer change.** Take a row of chunk k and a
//! change of it committed by transaction T. If the read's snapshot saw T, the
//! read holds T's row or a later one, and T committed before the read began, so
//! before HIGH k: T's event is ahead of the read in the stream, and any change
//! after T the read also holds is either seen (the same argument) or unseen
//! (below). If the snapshot did not see T and T comes before HIGH k in the
//! stream, the pipeline logged T's key (T commits after LOW, see below) and the
//! row is dropped from the chunk: T's event carries it. If T comes after HIGH k,
//! its event follows the read. Each chunk's reads therefore sit in stream order
//! with every change of their rows, and a FIFO message group (one row) sees
//! them in that order.
//!
//! A transaction the first read did not see but whose commit is before LOW in
//! the stream would escape the log: Postgres writes a commit record before it
//! makes the transaction visible (a synchronous standby's acknowledgement comes
//! in between). The first read of each watch therefore also asks
//! `pg_xact_status` of every transaction its snapshot holds as running, and
//! takes a new snapshot while one of them has in fact committed.
//!
//! The log keeps only what a later read might not see: at each high watermark,
//! changes the chunk's snapshot saw are forgotten (a later snapshot sees them
//! too). Reads go on while earlier chunks are built and sent (a few in flight),
//! so a chunk costs its `COPY`, not its round trips. The watermarks carry this
//! process's `run` number, so after a restart the old watermarks still in the
//! slot are ignored and the chunk is read again.
//!
//! **Resumable.** Progress lives in the source database
//! ([`store`]: `walcast.backfills`), written after a chunk's reads were
//! accepted by the sink, in chunk order; a restarted streamer continues after
//! the last finished chunk. A chunk whose reads went out but whose progress was
//! not yet written is sent again (at least once, with the same idempotency keys).
//!
//! **Bounded.** A few chunks in flight; their size adapts to a time budget and
//! a byte cap.

pub mod cli;
mod driver;
pub mod store;

pub use driver::run as drive;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::event::{ReadAt, Table};
use crate::replication::Datum;

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
    /// What the read saw.
    pub snapshot: Snapshot,
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
    /// Parses COPY's text format (one row per line, tab-separated, `\\N` for NULL,
    /// backslash escapes) of rows with `columns` values each.
    pub fn from_copy_text(text: &[u8], columns: usize) -> Result<Rows, String> {
        let mut rows = Rows::new(columns);
        rows.push_copy_text(text)?;
        Ok(rows)
    }

    /// No rows yet, of `columns` values each.
    pub fn new(columns: usize) -> Rows {
        Rows {
            buf: Vec::new(),
            values: Vec::new(),
            columns,
        }
    }

    /// Room for `rows` more rows of `bytes` text in all.
    pub fn reserve(&mut self, rows: usize, bytes: usize) {
        self.values.reserve(rows * self.columns);
        self.buf.reserve(bytes);
    }

    /// Adds one CopyData message of a `COPY … TO STDOUT` (Postgres sends a row in
    /// each; a row split across messages waits in `carry`, whose rest the caller
    /// passes to [`Rows::push_copy_text`] at the end).
    pub fn push_copy_part(&mut self, part: &[u8], carry: &mut Vec<u8>) -> Result<(), String> {
        if carry.is_empty() && part.ends_with(b"\n") {
            return self.push_copy_text(part);
        }
        carry.extend_from_slice(part);
        if let Some(end) = memchr::memrchr(b'\n', carry) {
            self.push_copy_text(&carry[..=end])?;
            carry.drain(..=end);
        }
        Ok(())
    }

    /// Adds whole lines of COPY's text format (as each CopyData message of a
    /// `COPY … TO STDOUT` holds: one row).
    pub fn push_copy_text(&mut self, text: &[u8]) -> Result<(), String> {
        let columns = self.columns;
        let mut rest = text;
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let (line, after) = (&rest[..end], rest.get(end + 1..).unwrap_or_default());
            rest = after;
            if line.is_empty() {
                continue;
            }
            let before = self.values.len();
            let mut field_start = 0;
            let mut escaped = false;
            // One pass over the line: tabs end fields, a backslash marks one to unescape.
            for at in memchr::memchr2_iter(b'\t', b'\\', line).chain([line.len()]) {
                if at < line.len() && line[at] == b'\\' {
                    escaped = true;
                    continue;
                }
                let field = &line[field_start..at];
                field_start = at + 1;
                if field == b"\\N" {
                    self.values.push(None);
                } else {
                    let start = self.buf.len() as u32;
                    if escaped {
                        unescape(field, &mut self.buf)?;
                    } else {
                        self.buf.extend_from_slice(field);
                    }
                    self.values
                        .push(Some((start, self.buf.len() as u32 - start)));
                }
                escaped = false;
            }
            if self.values.len() - before != columns {
                return Err(format!(
                    "a COPY row has {} values, the table {columns}",
                    self.values.len() - before
                ));
            }
        }
        Ok(())
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

    /// Rows `range`, their text checked as UTF-8 in one pass (the values of
    /// consecutive rows lie back to back): `None` when some of it is not UTF-8.
    pub fn text(&self, range: std::ops::Range<usize>) -> Option<RowsText<'_>> {
        let values = &self.values[range.start * self.columns..range.end * self.columns];
        let start = values.iter().flatten().next().map_or(0, |&(s, _)| s);
        let end = values
            .iter()
            .rev()
            .flatten()
            .next()
            .map_or(start, |&(s, n)| s + n);
        let text = std::str::from_utf8(&self.buf[start as usize..end as usize]).ok()?;
        Some(RowsText {
            rows: self,
            text,
            start,
        })
    }
}

/// Rows whose text is known to be UTF-8: see [`Rows::text`].
pub struct RowsText<'a> {
    rows: &'a Rows,
    text: &'a str,
    /// Where `text` starts in the rows' buffer.
    start: u32,
}

impl<'a> RowsText<'a> {
    /// Row `i` (of the rows, not of the range) as [`Rows::row`] gives it, each value
    /// as `str`. A value that does not start and end on a character boundary is not
    /// UTF-8 on its own: it is given as bytes, for the caller's check to name it.
    pub fn row(&self, i: usize) -> impl Iterator<Item = Datum<'a>> + '_ {
        let (rows, text, base) = (self.rows, self.text, self.start);
        rows.values[i * rows.columns..(i + 1) * rows.columns]
            .iter()
            .map(move |v| match *v {
                None => Datum::Null,
                Some((s, n)) => {
                    let (from, to) = ((s - base) as usize, (s + n - base) as usize);
                    match text.get(from..to) {
                        Some(t) => Datum::Str(t),
                        None => Datum::Text(&rows.buf[s as usize..(s + n) as usize]),
                    }
                }
            })
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
    /// Reads sent, or `None` when the chunk was not there to send (read it again).
    pub sent: Option<u64>,
}

/// A chunk due at its high watermark, and the keys it must leave to their changes.
#[derive(Debug)]
pub struct Due {
    /// The chunk.
    pub chunk: Chunk,
    /// Keys (`record_pks` JSON) changed by transactions the read did not see
    /// that are before the high watermark in the stream.
    pub changed: HashSet<String>,
}

/// The visibility of one read: `pg_current_snapshot()` of its transaction,
/// transaction ids cut to the 32 bits the stream's Begin messages carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    xmin: u32,
    xmax: u32,
    xip: Vec<u32>,
}

impl Snapshot {
    /// Parses `pg_snapshot` text output: `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Result<Snapshot, String> {
        let bad = || format!("not a pg_snapshot: {text:?}");
        let mut parts = text.trim().splitn(3, ':');
        let xid = |s: Option<&str>| -> Result<u32, String> {
            // xid8: epoch in the high 32 bits; the stream carries the low 32.
            s.and_then(|s| s.parse::<u64>().ok())
                .map(|x| x as u32)
                .ok_or_else(bad)
        };
        let xmin = xid(parts.next())?;
        let xmax = xid(parts.next())?;
        let xip = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse::<u64>().map(|x| x as u32).map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// Whether the committed transaction `xid` is visible to this snapshot
    /// (Postgres's `XidInMVCCSnapshot`, for a transaction known to have committed).
    pub fn sees(&self, xid: u32) -> bool {
        // Modulo-2^32 order, as Postgres compares normal transaction ids.
        let precedes = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        if precedes(xid, self.xmin) {
            return true;
        }
        precedes(xid, self.xmax) && !self.xip.contains(&xid)
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// The table the next low watermark starts watching (`schema.table`), set by the driver.
    expected: Option<String>,
    /// The low watermark seen last and the table watched since.
    watching: Option<(Mark, String)>,
    /// Changes of the watched table since the low watermark: transaction id and key.
    /// Entries every later read sees are dropped at each high watermark.
    log: Vec<(u32, String)>,
    low_seen: Option<Mark>,
    /// Chunks read, waiting for their high watermarks (in order).
    pending: VecDeque<Chunk>,
    /// What the pipeline did at high watermarks the driver has not collected yet.
    emitted: Vec<Emitted>,
}

/// Shared by the pipeline (which sees the watermarks in the stream) and the
/// driver (which reads chunks). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Coordinator {
    run: u64,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    /// A table is watched: changes must be looked at (the fast path of every change).
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

    /// Pipeline: a watermark message. Returns the chunk due at a high watermark.
    pub fn watermark(&self, prefix: &str, content: &[u8]) -> Option<Due> {
        let Ok(mark) = serde_json::from_slice::<Mark>(content) else {
            return None;
        };
        if mark.run != self.run {
            return None;
        }
        let mut g = self.lock();
        let out = match prefix {
            // A low watermark seen again (the stream restarted before it) changes nothing.
            LOW if g.watching.as_ref().is_some_and(|(m, _)| *m == mark) => None,
            LOW => {
                let table = g.expected.clone().unwrap_or_default();
                g.watching = Some((mark, table));
                g.log.clear();
                g.low_seen = Some(mark);
                self.open.store(true, Ordering::Release);
                None
            }
            HIGH => {
                let watched = g.watching.as_ref().is_some_and(|(m, _)| m.id == mark.id);
                let at = g.pending.iter().position(|c| c.mark == mark);
                match at.filter(|_| watched) {
                    Some(at) => {
                        let chunk = g.pending.remove(at)?;
                        let snapshot = &chunk.snapshot;
                        let changed = g
                            .log
                            .iter()
                            .filter(|(xid, _)| !snapshot.sees(*xid))
                            .map(|(_, key)| key.clone())
                            .collect();
                        // What this read saw, every later read sees.
                        g.log.retain(|(xid, _)| !snapshot.sees(*xid));
                        Some(Due { chunk, changed })
                    }
                    None => {
                        g.emitted.push(Emitted {
                            mark,
                            commit_lsn: 0,
                            sent: None,
                        });
                        None
                    }
                }
            }
            _ => None,
        };
        drop(g);
        self.wake();
        out
    }

    /// Pipeline: a change of `table` (`schema.table`) to the row with key `pks`
    /// (`record_pks` as JSON) by transaction `xid`; logged while the table is watched.
    pub fn changed(&self, table: &str, xid: u32, pks: &str) {
        if !self.open.load(Ordering::Acquire) {
            return;
        }
        let mut g = self.lock();
        if g.watching.as_ref().is_some_and(|(_, t)| t == table) {
            g.log.push((xid, pks.to_owned()));
        }
    }

    /// Pipeline: the chunk's reads were handed to the sink in the high watermark's
    /// transaction (committed at `commit_lsn`).
    pub fn emitted(&self, mark: Mark, commit_lsn: u64, sent: u64) {
        self.lock().emitted.push(Emitted {
            mark,
            commit_lsn,
            sent: Some(sent),
        });
        self.wake();
    }

    /// Driver: the table the next low watermark starts watching (`schema.table`);
    /// forgets every chunk of before.
    pub(crate) fn expect(&self, table: &str) {
        let mut g = self.lock();
        *g = Shared {
            expected: Some(table.to_owned()),
            ..Shared::default()
        };
        self.open.store(false, Ordering::Release);
    }

    /// Driver: hands a chunk over before emitting its high watermark.
    pub(crate) fn hand_over(&self, chunk: Chunk) {
        self.lock().pending.push_back(chunk);
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
    /// Takes what the pipeline did at the high watermark of `mark`.
    pub(crate) fn take_emitted(&mut self, mark: Mark) -> Option<Emitted> {
        let at = self.shared.emitted.iter().position(|e| e.mark == mark)?;
        Some(self.shared.emitted.swap_remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, TypeKind};

    fn chunk(mark: Mark, snapshot: &str) -> Chunk {
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
            snapshot: Snapshot::parse(snapshot).expect("snapshot"),
        }
    }

    fn content(m: Mark) -> Vec<u8> {
        serde_json::to_vec(&m).expect("json")
    }

    fn emitted(c: &Coordinator, m: Mark) -> Option<Emitted> {
        let mut g = c.lock();
        SharedView { shared: &mut g }.take_emitted(m)
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
        // Messages that split rows (and escapes) anywhere give the same rows.
        let text = b"1\ta\\tb\t\\N\n2\tc\\\\d\\x41\\101\tx\n";
        for cut in 0..text.len() {
            let (mut parts, mut carry) = (Rows::new(3), Vec::new());
            parts
                .push_copy_part(&text[..cut], &mut carry)
                .expect("first");
            parts
                .push_copy_part(&text[cut..], &mut carry)
                .expect("second");
            parts.push_copy_text(&carry).expect("rest");
            assert_eq!(parts.len(), 2, "cut at {cut}");
            assert_eq!(parts.row(1).collect::<Vec<_>>(), r1, "cut at {cut}");
        }
        assert!(Rows::from_copy_text(b"", 3).expect("empty").is_empty());
    }

    #[test]
    fn rows_text_is_checked_once_and_each_value_on_its_own_boundaries() {
        let rows = Rows::from_copy_text("1\tné\t\\N\n2\t€\tx\n".as_bytes(), 3).expect("rows");
        let text = rows.text(0..2).expect("UTF-8");
        assert_eq!(
            text.row(1).collect::<Vec<_>>(),
            [Datum::Str("2"), Datum::Str("€"), Datum::Str("x")]
        );
        assert_eq!(text.row(0).nth(2), Some(Datum::Null));
        let second = rows.text(1..2).expect("UTF-8");
        assert_eq!(second.row(1).nth(1), Some(Datum::Str("€")));
        // é split over two values: the text is UTF-8, neither value is.
        let split = Rows::from_copy_text(b"\\xc3\t\\xa9\n", 2).expect("rows");
        let text = split.text(0..1).expect("UTF-8 as a whole");
        assert_eq!(
            text.row(0).collect::<Vec<_>>(),
            [Datum::Text(b"\xc3"), Datum::Text(b"\xa9")]
        );
        let bad = Rows::from_copy_text(b"a\t\\xff\n", 2).expect("rows");
        assert!(bad.text(0..1).is_none());
        assert!(Rows::new(2).text(0..0).is_some(), "no rows");
    }

    #[test]
    fn snapshots_see_what_postgres_sees() {
        let s = Snapshot::parse("100:105:100,102").expect("snapshot");
        assert!(s.sees(99), "finished before xmin");
        assert!(!s.sees(100) && !s.sees(102), "running");
        assert!(s.sees(101) && s.sees(104), "finished between");
        assert!(!s.sees(105) && !s.sees(200), "started after");
        // xid8 values carry the epoch in the high bits; the stream has the low 32.
        let epoch = 1u64 << 32;
        let s = Snapshot::parse(&format!("{}:{}:", epoch + 7, epoch + 9)).expect("snapshot");
        assert!(s.sees(6) && s.sees(8) && !s.sees(9));
        // Around wraparound, order is modulo 2^32.
        let s = Snapshot::parse(&format!("{}:{}:", u32::MAX - 1, epoch + 3)).expect("snapshot");
        assert!(s.sees(u32::MAX) && s.sees(2) && !s.sees(3) && s.sees(u32::MAX - 5));
        assert!(Snapshot::parse("x:1:").is_err() && Snapshot::parse("1").is_err());
    }

    #[test]
    fn a_chunk_leaves_rows_to_changes_its_read_did_not_see() {
        let c = Coordinator::new();
        let m = |chunk| Mark {
            run: c.run(),
            id: 7,
            chunk,
        };
        c.expect("public.t");
        c.changed("public.t", 90, "[\"9\"]"); // before the low watermark: not watched
        assert!(c.watermark(LOW, &content(m(0))).is_none());
        c.changed("public.t", 100, "[\"1\"]"); // seen by the read below
        c.changed("public.t", 105, "[\"2\"]"); // started after it
        c.changed("public.t", 102, "[\"3\"]"); // running when it began
        c.changed("public.other", 106, "[\"4\"]");
        c.hand_over(chunk(m(1), "101:105:102"));
        c.hand_over(chunk(m(2), "106:107:"));
        let due = c.watermark(HIGH, &content(m(1))).expect("the chunk");
        assert_eq!(due.chunk.mark, m(1));
        let mut changed: Vec<_> = due.changed.into_iter().collect();
        changed.sort();
        assert_eq!(changed, ["[\"2\"]", "[\"3\"]"]);
        // The second read saw all of them: nothing of before is left to it.
        c.changed("public.t", 107, "[\"5\"]");
        let due = c.watermark(HIGH, &content(m(2))).expect("the second chunk");
        assert_eq!(due.changed.into_iter().collect::<Vec<_>>(), ["[\"5\"]"]);
        assert_eq!(c.lock().log.len(), 1, "only what a later read may not see");
        // A low watermark seen again (the stream restarted) keeps the log.
        assert!(c.watermark(LOW, &content(m(0))).is_none());
        assert_eq!(c.lock().log.len(), 1);
    }

    #[test]
    fn watermarks_of_another_run_or_a_chunk_not_held_are_not_sent() {
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
        c.hand_over(chunk(m, "1:1:"));
        // HIGH without its LOW (the watch began in an earlier run): read it again.
        assert!(c.watermark(HIGH, &content(m)).is_none());
        assert_eq!(emitted(&c, m).map(|e| e.sent), Some(None));
        assert!(emitted(&c, m).is_none(), "taken once");
        assert!(c.watermark(HIGH, b"not json").is_none());
        // A new watch forgets the chunks of the last.
        c.expect("public.t");
        assert!(c.lock().pending.is_empty());
    }
}
