//! The one delivery core for SQS and SNS: batching, order per group, retries,
//! dead-lettering and acceptance. The core builds every batch entry (body,
//! attributes, group and deduplication ids: [`Entry`]); the services
//! ([`super::SqsQueue`], [`super::SnsTopic`]) only map its fields onto one API
//! call ([`Destination`]).
//!
//! ```text
//!  send() ──permit──▶ channel ──▶ worker: groups { group → queue, in flight? }
//!                                   │   ready: groups whose next events may go
//!                                   ▼
//!                     ≤ window batch tasks (≤ 10 entries, ≤ byte limit, up to
//!                     MAX_PER_GROUP consecutive events of a group, one batch
//!                     per group): send, retry failed entries with backoff,
//!                     dead-letter permanent rejections, tracker.accept(seq),
//!                     release permits, free the groups
//! ```
//!
//! **Order.** A group has at most one batch in flight, and its next events are
//! not even put in a batch before that one is done. A batch may carry up to
//! [`MAX_PER_GROUP`] consecutive events of a group, in commit order: SQS
//! enqueues the entries of one `SendMessageBatch` to a FIFO queue in the order
//! given, as SNS does those of one `PublishBatch` to a FIFO topic (AWS's API
//! references of both calls), so a hot row moves ten events per round trip,
//! not one. Events of different groups overtake each other freely.
//!
//! **Partial batch failure: the rule.** AWS reports each entry's result on its
//! own and says a FIFO batch is enqueued in order; it does not say whether an
//! entry that fails stops the later entries of its group in the same batch.
//! So the sink assumes it may not, and reads an answer group by group, in
//! batch order:
//!
//! 1. entries before a group's first failure are accepted;
//! 2. an entry refused for good (a bad message) goes to the dead-letter queue
//!    (or stops the sink): it never enters the queue, so what the queue holds
//!    of the group is still in order, and the group's next entry is judged alike;
//! 3. an entry that failed transiently (throttled, internal error) is sent
//!    again, and so is every later entry of its group in that batch that failed
//!    too, in order, before anything newer of the group is batched;
//! 4. a later entry of that group that **succeeded** while the earlier one failed
//!    transiently has overtaken it: the destination holds the group out of
//!    order. For a FIFO destination the sink stops at once with
//!    [`SinkError::Overtaken`] and does not send the failed entry again
//!    (sent now, it would land after its successor); the slot keeps the event,
//!    and the error says what a restart does. For a standard queue or topic the
//!    order of arrival is not observable (they deliver in any order): the
//!    failed entry is only retried.
//!
//! A whole call that fails transiently (throttled, 5xx, timed out: it may have
//! been applied or not) is sent again with the same entries in the same order;
//! a FIFO destination drops those it took already by their deduplication ids
//! (AWS's 5-minute window). Case 4 is detected, not prevented: no call of AWS
//! makes a later entry conditional on an earlier one. With [`MAX_PER_GROUP`]
//! at 1 it cannot arise, at one event per group per round trip (a tenth of
//! the rate of a hot row). An answer that names an entry neither successful
//! nor failed counts it failed (sent again), so nothing is taken for delivered
//! unless AWS said so.
//!
//! **Window.** How many batches are in flight is an adaptive window
//! ([`super::window`]): it grows while the calls come back fast and the window
//! is full, and shrinks on throttling (`RequestThrottled`, `ThrottlingException`,
//! KMS throttling), 5xx and timeouts, and on a rising round-trip time. A batch
//! backing off keeps its place, so throttling lowers the rate of calls.
//!
//! **Retries.** [`classify`] is the one place that decides, from a [`Fault`]
//! of a whole call or of one entry: throttling, 5xx, timeouts and connection
//! errors are retried forever with capped, fully jittered backoff
//! ([`crate::backoff::DELIVERY`]; the slot holds the WAL meanwhile, nothing
//! later is confirmed past the event). A message the destination refuses for
//! good goes to the dead-letter queue when one is configured (whose faults are
//! classified the same way), else the sink fails and the streamer stops (the
//! slot keeps the event). Errors about the destination itself (missing, access
//! denied) stop the streamer: dead-lettering every event would be worse.
//!
//! **Stats.** Once a second while it works, the worker logs at debug level
//! (`RUST_LOG=walcast_streamer::sink::aws=debug`) where an event's time went:
//! calls per second and entries per call, the window and the calls in flight,
//! the mean wait for a place in the window and the mean call, and the mean age
//! of events (since their commit, Postgres's clock) on reaching the sink and
//! on leaving in a batch: commit → sink is the pipeline's part, sink → batch
//! the sink's queue, the call the destination's.
//!
//! **Bounded.** `send` takes [`weight`] permits of [`MAX_HELD_KIB`] (one per KiB of
//! payload, at least one); they come back when the event is accepted, so the
//! events held stay under ~8 MiB whatever their size.
//!
//! **Quotas assumed** by the rates `bench/latency.sh` measures (20,000 events/s
//! to a FIFO queue, 30,000 to a standard queue or SNS standard topic, 2,000 for
//! five hot rows): a standard queue takes a nearly unlimited number of calls; a
//! FIFO queue needs high-throughput mode (70,000 calls/s per action in
//! us-east-1, us-west-2 and eu-west-1, 19,000 in us-east-2 and eu-central-1,
//! fewer elsewhere; without it, 300 calls/s, 3,000 events/s in full batches,
//! for the whole queue). SQS keeps a message group in one partition (by a hash
//! of its id) and a partition takes about 300 calls/s, so a hot row's rate is
//! bounded by its partition however wide the window: ten events per call is
//! what gets it past 300 events/s. SNS caps `Publish` per account and region,
//! counting each message of a `PublishBatch`; the figure differs by region
//! (AWS's SNS quotas page): check it before counting on 30,000/s.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::fault::{classify, Disposition, Fault, Refusal};
use super::s3::PayloadStore;
use super::window::{Calls, Outcome};
use super::{Failure, Sink, SinkError};
use crate::backoff;
use crate::event::Event;
use crate::progress::Tracker;

/// Events held by the sink (queued or in flight) before `send` waits.
pub const MAX_HELD_KIB: usize = 8 * 1024;

/// Permits an event holds while the sink has it: its payload in KiB, at least 1.
pub fn weight(e: &Event) -> u32 {
    (e.payload.len() / 1024).clamp(1, MAX_HELD_KIB) as u32
}
/// Entries per `SendMessageBatch` / `PublishBatch`.
pub const MAX_ENTRIES: usize = 10;
/// Consecutive events of one group in one batch, at most (see the rule above:
/// 1 makes an overtaken group impossible, at a tenth of a hot row's rate).
pub const MAX_PER_GROUP: usize = MAX_ENTRIES;
/// A batch that is not full leaves when nothing is in flight, or once its
/// first event has waited this long (a batch backing off does not hold it up).
const LINGER: Duration = Duration::from_millis(10);

/// One message to deliver: an event, or (for the dead-letter queue) an envelope about it.
#[derive(Debug, Clone)]
struct Message {
    /// The event.
    event: Arc<Event>,
    /// A body replacing the event's payload (dead-letter envelope).
    body: Option<String>,
    /// The event's payload is in S3: the pointer body, and the payload's size
    /// (the `ExtendedPayloadSize` attribute).
    pointer: Option<(String, usize)>,
}

impl Message {
    fn new(event: Arc<Event>) -> Message {
        Message {
            event,
            body: None,
            pointer: None,
        }
    }

    /// The message body.
    fn body(&self) -> &str {
        match (&self.body, &self.pointer) {
            (Some(body), _) | (None, Some((body, _))) => body,
            (None, None) => &self.event.payload,
        }
    }

    /// The message attributes (`action`, `table_schema`, `table_name`), with any
    /// character SQS and SNS refuse written as `\uXXXX` ([`aws_text`]).
    fn attributes(&self) -> [(&'static str, Cow<'_, str>); 3] {
        [
            ("action", Cow::Borrowed(self.event.action.as_str())),
            ("table_schema", aws_text(&self.event.table.schema)),
            ("table_name", aws_text(&self.event.table.name)),
        ]
    }

    /// Size as SQS and SNS count it: body plus attribute names, types and values.
    fn size(&self) -> usize {
        let pointer = self.pointer.as_ref().map_or(0, |(_, bytes)| {
            change_event::SIZE_ATTRIBUTE.len() + "Number".len() + bytes.to_string().len()
        });
        self.body().len()
            + pointer
            + self
                .attributes()
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }

    /// This message as entry `index` of a batch for a FIFO or standard destination.
    fn entry(&self, index: usize, fifo: bool) -> Entry<'_> {
        Entry {
            id: index.to_string(),
            body: self.body(),
            attributes: self.attributes(),
            group_id: fifo.then_some(self.event.group_id.as_str()),
            deduplication_id: fifo.then(|| self.event.deduplication_id()),
            payload_size: self.pointer.as_ref().map(|(_, bytes)| *bytes),
        }
    }
}

/// The entries of a batch for `dest`.
fn entries<'a>(dest: &impl Destination, batch: &'a [Message]) -> Vec<Entry<'a>> {
    let fifo = dest.is_fifo();
    batch
        .iter()
        .enumerate()
        .map(|(i, m)| m.entry(i, fifo))
        .collect()
}

/// One entry of a batch as SQS and SNS both take it, built by the core; a
/// service only maps its fields onto its request type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's id in the batch: its index (failed entries name it).
    pub id: String,
    /// The message body.
    pub body: &'a str,
    /// String attributes `action`, `table_schema`, `table_name` (escaped as `aws_text` does).
    pub attributes: [(&'static str, Cow<'a, str>); 3],
    /// `MessageGroupId` (the event's group id), for a FIFO destination.
    pub group_id: Option<&'a str>,
    /// `MessageDeduplicationId` (the event's idempotency key, hashed when over 128
    /// characters: [`Event::deduplication_id`]), for a FIFO destination.
    pub deduplication_id: Option<Cow<'a, str>>,
    /// The body is an S3 pointer to a payload of this many bytes: the Number
    /// attribute `ExtendedPayloadSize` ([`change_event::SIZE_ATTRIBUTE`]).
    pub payload_size: Option<usize>,
}

/// One batch call as both SDKs make it: each [`Entry`] mapped onto the
/// service's batch entry type `$entry` (body through `$body`: `message_body`
/// for SQS, `message` for SNS; attributes of type `$value`), the request that
/// `$call` builds from them sent, and its failed entries read back.
/// A macro, not a function: the two SDKs are generated from the same shapes,
/// so the calls are the same on types that share no trait.
macro_rules! send_batch {
    ($entries:expr, $entry:ident, $body:ident, $value:ident, |$request:ident| $call:expr) => {{
        use $crate::sink::Fault;
        let $request = $entries
            .iter()
            .map(|e| -> Result<$entry, Fault> {
                let mut r = $entry::builder()
                    .id(&e.id)
                    .$body(e.body)
                    .set_message_group_id(e.group_id.map(str::to_owned))
                    .set_message_deduplication_id(e.deduplication_id.as_deref().map(str::to_owned));
                for (name, value) in &e.attributes {
                    let value = $value::builder()
                        .data_type("String")
                        .string_value(value.as_ref())
                        .build()
                        .map_err(Fault::construction)?;
                    r = r.message_attributes(*name, value);
                }
                if let Some(bytes) = e.payload_size {
                    let value = $value::builder()
                        .data_type("Number")
                        .string_value(bytes.to_string())
                        .build()
                        .map_err(Fault::construction)?;
                    r = r.message_attributes(change_event::SIZE_ATTRIBUTE, value);
                }
                r.build().map_err(Fault::construction)
            })
            .collect::<Result<Vec<$entry>, Fault>>()?;
        let out = $call.send().await.map_err(Fault::from_sdk)?;
        let failed = out
            .failed()
            .iter()
            .map(|f| Fault::failed_entry(f.id(), f.code(), f.message(), f.sender_fault()))
            .collect();
        // SQS names a successful entry's id as `&str`, SNS as `Option<&str>`.
        let successful = out.successful().iter().map(|ok| ok.id().into());
        Ok($crate::sink::aws::failures(
            $entries.len(),
            successful,
            failed,
        ))
    }};
}
pub(super) use send_batch;

/// Whether SQS and SNS accept `c` in a message: XML 1.0's characters, `#x9 #xA
/// #xD #x20–#xD7FF #xE000–#xFFFD #x10000–#x10FFFF` (a `char` is never a surrogate).
fn accepted_by_aws(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='\u{FFFD}' | '\u{10000}'..)
}

/// `s` with each character SQS and SNS refuse written as the six characters
/// `\uXXXX`, as a JSON escape would (attribute values are plain text, not JSON).
pub fn aws_text(s: &str) -> Cow<'_, str> {
    if s.chars().all(accepted_by_aws) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 12);
    for c in s.chars() {
        if accepted_by_aws(c) {
            out.push(c);
        } else {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// One SQS queue or SNS topic: the per-service part of the sink.
pub trait Destination: Send + Sync + 'static {
    /// Queue URL or topic ARN, for logs.
    fn name(&self) -> &str;
    /// A FIFO queue or topic (entries carry group and deduplication ids).
    fn is_fifo(&self) -> bool;
    /// Limit on one message and on one batch together, in bytes.
    fn max_bytes(&self) -> usize;
    /// Sends up to `MAX_ENTRIES` (10) entries in one call. `Ok` lists the entries
    /// the service refused, by index, each with a [`Fault::Entry`]; `Err` is the
    /// fault of the whole call.
    fn send_batch(
        &self,
        entries: &[Entry<'_>],
    ) -> impl Future<Output = Result<Vec<(usize, Fault)>, Fault>> + Send;
}

struct Shared<D, L> {
    dest: D,
    dead_letter: Option<L>,
    offload: Option<PayloadStore>,
    tracker: Tracker,
    permits: Arc<Semaphore>,
    /// The window of calls in flight: the worker starts batches while it has
    /// room, and each call (retries too) takes a place in it.
    calls: Calls,
    stats: Stats,
}

/// What the debug log of the worker reports (see **Stats** above): sums since
/// the last report, in microseconds.
#[derive(Default)]
struct Stats {
    calls: AtomicU64,
    entries: AtomicU64,
    /// Waiting for a place in the window, over calls.
    window_us: AtomicU64,
    /// The calls themselves.
    call_us: AtomicU64,
    /// Events that reached the worker, and their ages then (commit → sink).
    arrived: AtomicU64,
    arrived_age_us: AtomicU64,
    /// The ages of the events put in batches (commit → batch).
    batched_age_us: AtomicU64,
}

impl Stats {
    fn arrived(&self, e: &Event, now_micros: i64) {
        self.arrived.fetch_add(1, Relaxed);
        let age = (now_micros - e.commit_time_micros).max(0) as u64;
        self.arrived_age_us.fetch_add(age, Relaxed);
    }

    fn batched(&self, batch: &[Message]) {
        let now = crate::ops::now_micros();
        let age: i64 = batch
            .iter()
            .map(|m| (now - m.event.commit_time_micros).max(0))
            .sum();
        self.batched_age_us.fetch_add(age as u64, Relaxed);
    }

    fn call(&self, entries: usize, waited: Duration, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.entries.fetch_add(entries as u64, Relaxed);
        self.window_us.fetch_add(waited.as_micros() as u64, Relaxed);
        self.call_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Logs the sums since `since` (and starts them over).
    fn report(&self, since: Instant, limit: usize, peak_calls: usize, peak_waiting: usize) {
        let ms = |us: &AtomicU64, n: u64| us.swap(0, Relaxed) as f64 / n.max(1) as f64 / 1e3;
        let (calls, entries, arrived) = (
            self.calls.swap(0, Relaxed),
            self.entries.swap(0, Relaxed),
            self.arrived.swap(0, Relaxed),
        );
        tracing::debug!(
            calls_per_s = (calls as f64 / since.elapsed().as_secs_f64()).round(),
            entries_per_call = entries as f64 / calls.max(1) as f64,
            window = limit,
            peak_calls,
            peak_waiting,
            window_wait_ms = ms(&self.window_us, calls),
            call_ms = ms(&self.call_us, calls),
            age_at_sink_ms = ms(&self.arrived_age_us, arrived),
            age_at_batch_ms = ms(&self.batched_age_us, entries),
            "sink stats"
        );
    }
}

/// The SQS/SNS sink: see the module documentation.
pub struct AwsSink {
    /// `None` once closed.
    tx: Option<mpsc::UnboundedSender<Event>>,
    permits: Arc<Semaphore>,
    /// Why the worker stopped, once it has.
    failure: Failure,
    /// The delivery worker, until [`Sink::close`] saw it end.
    worker: Option<JoinHandle<()>>,
}

impl AwsSink {
    /// Starts the delivery worker on the current runtime. `dead_letter` receives
    /// messages the destination refuses for good; `offload` takes the bodies of
    /// messages too large for the destination (or over its threshold).
    pub fn start<D: Destination, L: Destination>(
        dest: D,
        dead_letter: Option<L>,
        offload: Option<PayloadStore>,
        tracker: Tracker,
    ) -> AwsSink {
        let permits = Arc::new(Semaphore::new(MAX_HELD_KIB));
        let failure = Failure::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dest,
            dead_letter,
            offload,
            tracker,
            permits: Arc::clone(&permits),
            calls: Calls::new(),
            stats: Stats::default(),
        });
        // The worker and its calls log in the span the sink was started in (the sink's name).
        let worker = tokio::spawn(tracing::Instrument::in_current_span(worker(
            shared,
            rx,
            failure.clone(),
        )));
        AwsSink {
            tx: Some(tx),
            permits,
            failure,
            worker: Some(worker),
        }
    }

    fn failed(&self) -> SinkError {
        self.failure.error(self.tx.is_some(), "the delivery worker")
    }
}

impl Sink for AwsSink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        let Some(tx) = &self.tx else {
            return Err(SinkError::Closed);
        };
        match self.permits.acquire_many(weight(&event)).await {
            Ok(p) => p.forget(),
            Err(_) => return Err(self.failed()),
        }
        tx.send(event).map_err(|_| self.failed())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // Batches leave as soon as a slot is free; nothing waits for a full batch.
        if self.permits.is_closed() || self.tx.is_none() {
            return Err(self.failed());
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        // Without a sender the worker delivers what it holds, then ends.
        self.tx = None;
        if let Some(worker) = self.worker.as_mut() {
            let ended = worker.await;
            self.worker = None;
            if let Err(e) = ended {
                self.failure.set(SinkError::Stopped(format!(
                    "the delivery worker failed: {e}"
                )));
            }
        }
        self.failure.or(Ok(()))
    }
}

#[derive(Default)]
struct Group {
    queue: VecDeque<Arc<Event>>,
    in_flight: bool,
}

/// The events waiting, by group: which groups may go next, and how much
/// the next batches can take.
#[derive(Default)]
struct Groups {
    groups: HashMap<String, Group>,
    /// Groups not in flight with events queued, oldest first.
    ready: VecDeque<String>,
    /// Events of the groups in `ready`.
    waiting: usize,
    /// Since when `waiting` has been above zero.
    waiting_since: Option<Instant>,
}

impl Groups {
    fn add(&mut self, e: Event) {
        let g = self.groups.entry(e.group_id.clone()).or_default();
        let first = g.queue.is_empty();
        let key = (first && !g.in_flight).then(|| e.group_id.clone());
        g.queue.push_back(Arc::new(e));
        if !g.in_flight {
            self.waiting += 1;
            self.waiting_since.get_or_insert_with(Instant::now);
        }
        if let Some(key) = key {
            self.ready.push_back(key);
        }
    }

    /// The next batch: from the ready groups in turn, each group's next events
    /// (up to [`MAX_PER_GROUP`], in order) while there is room (entries and
    /// `max` bytes). An oversized message goes alone, to be offloaded or refused
    /// up front. Every group in it is in flight until [`release`](Groups::release).
    fn batch(&mut self, max: usize) -> Vec<Message> {
        let mut batch = Vec::with_capacity(MAX_ENTRIES);
        let mut bytes = 0;
        while batch.len() < MAX_ENTRIES {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(g) = self.groups.get_mut(&key) else {
                continue;
            };
            let (mut taken, mut full) = (0, false);
            while taken < MAX_PER_GROUP && batch.len() < MAX_ENTRIES {
                let Some(front) = g.queue.front() else { break };
                let m = Message::new(Arc::clone(front));
                let size = m.size();
                if !batch.is_empty() && (bytes + size > max || size > max) {
                    full = true;
                    break;
                }
                g.queue.pop_front();
                taken += 1;
                bytes += size;
                batch.push(m);
                if size > max {
                    full = true;
                    break;
                }
            }
            if taken == 0 {
                if full {
                    self.ready.push_front(key);
                    break;
                }
                continue;
            }
            // The group's later events wait for this batch: no longer waiting.
            g.in_flight = true;
            self.waiting -= taken + g.queue.len();
            if full {
                break;
            }
        }
        self.waiting_since = (self.waiting > 0).then(Instant::now);
        batch
    }

    /// The groups of a finished batch may go on.
    fn release(&mut self, keys: Vec<String>) {
        for key in keys {
            let Some(g) = self.groups.get_mut(&key) else {
                continue;
            };
            g.in_flight = false;
            if g.queue.is_empty() {
                self.groups.remove(&key);
            } else {
                self.waiting += g.queue.len();
                self.waiting_since.get_or_insert_with(Instant::now);
                self.ready.push_back(key);
            }
        }
    }
}

async fn worker<D: Destination, L: Destination>(
    shared: Arc<Shared<D, L>>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    failure: Failure,
) {
    let mut groups = Groups::default();
    let mut tasks: JoinSet<Result<Vec<String>, SinkError>> = JoinSet::new();
    let mut open = true;
    let max = shared.dest.max_bytes();
    let stats = tracing::enabled!(tracing::Level::DEBUG);
    let (mut reported, mut peak_calls, mut peak_waiting) = (Instant::now(), 0, 0);
    loop {
        if stats {
            peak_calls = peak_calls.max(tasks.len());
            peak_waiting = peak_waiting.max(groups.waiting);
            if reported.elapsed() >= Duration::from_secs(1) {
                let limit = shared.calls.limit();
                shared
                    .stats
                    .report(reported, limit, peak_calls, peak_waiting);
                (reported, peak_calls, peak_waiting) = (Instant::now(), 0, 0);
            }
        }
        // Start batches while the window has room. A batch that is not full
        // leaves only when nothing is in flight (the stream is slow, or
        // drained) or its first event has lingered: under load, batches fill up
        // while earlier ones are on the wire, so every call carries the most it can.
        let lingered = |g: &Groups| g.waiting_since.is_some_and(|t| t.elapsed() >= LINGER);
        while !groups.ready.is_empty()
            && (groups.waiting >= MAX_ENTRIES || tasks.is_empty() || !open || lingered(&groups))
        {
            if tasks.len() >= shared.calls.limit() {
                shared.calls.full();
                break;
            }
            let batch = groups.batch(max);
            if batch.is_empty() {
                break;
            }
            if stats {
                shared.stats.batched(&batch);
            }
            let s = Arc::clone(&shared);
            tasks.spawn(tracing::Instrument::in_current_span(async move {
                deliver(&s, batch).await
            }));
        }
        if !open && tasks.is_empty() && groups.ready.is_empty() {
            return;
        }
        // A partial batch waiting for a slot that is free: wake when it has lingered.
        let linger = groups
            .waiting_since
            .filter(|_| tasks.len() < shared.calls.limit())
            .map(|t| t + LINGER);
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let done = match done {
                    Ok(r) => r,
                    Err(e) => Err(SinkError::Stopped(format!("a delivery task failed: {e}"))),
                };
                match done {
                    Ok(keys) => groups.release(keys),
                    Err(e) => {
                        tracing::error!(error = %e, destination = %shared.dest.name(), "sink failed");
                        failure.set(e);
                        shared.permits.close();
                        return;
                    }
                }
            }
            e = rx.recv(), if open => match e {
                Some(e) => {
                    let now = stats.then(crate::ops::now_micros);
                    let mut add = |e: Event| {
                        if let Some(now) = now {
                            shared.stats.arrived(&e, now);
                        }
                        groups.add(e);
                    };
                    add(e);
                    while let Ok(e) = rx.try_recv() {
                        add(e);
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {}
            else => return,
        }
    }
}

/// The failures of a batch answer, by entry index: `failures` as the service
/// listed them, and every entry it named neither successful nor failed (never
/// seen from AWS; an emulator might) as failed, so that it is sent again:
/// nothing counts as delivered unless the service said so.
pub(super) fn failures<'a>(
    entries: usize,
    successful: impl IntoIterator<Item = Option<&'a str>>,
    mut failures: Vec<(usize, Fault)>,
) -> Vec<(usize, Fault)> {
    let mut answered = vec![false; entries];
    let ids = successful
        .into_iter()
        .flatten()
        .filter_map(|id| id.parse::<usize>().ok());
    for i in ids.chain(failures.iter().map(|f| f.0)) {
        if let Some(a) = answered.get_mut(i) {
            *a = true;
        }
    }
    for (i, _) in answered.iter().enumerate().filter(|(_, a)| !**a) {
        failures.push((
            i,
            Fault::Entry {
                code: "UnansweredBatchEntry".into(),
                sender_fault: false,
                message: "the answer names this entry neither successful nor failed".into(),
            },
        ));
    }
    failures
}

/// Each entry's fault, by position; an answer naming an entry not in the
/// batch fails them all (sent again: FIFO deduplication drops what was taken).
fn by_entry(len: usize, failures: Vec<(usize, Fault)>) -> Vec<Option<Fault>> {
    let mut failed: Vec<Option<Fault>> = vec![None; len];
    for (index, fault) in failures {
        match failed.get_mut(index) {
            Some(slot) => *slot = Some(fault),
            None => {
                failed.fill(Some(Fault::Entry {
                    code: "UnmatchedBatchEntry".into(),
                    sender_fault: false,
                    message: "failed entry id not in the batch".into(),
                }));
                break;
            }
        }
    }
    failed
}

/// Delivers one batch: retries what failed transiently, dead-letters what is
/// refused for good, and stops when a FIFO group was overtaken (the rule in
/// the module documentation). Returns the groups freed, or why the sink must stop.
async fn deliver<D: Destination, L: Destination>(
    s: &Shared<D, L>,
    batch: Vec<Message>,
) -> Result<Vec<String>, SinkError> {
    // A group's events are side by side in a batch.
    let mut keys: Vec<String> = batch.iter().map(|m| m.event.group_id.clone()).collect();
    keys.dedup();
    let limit = s.dest.max_bytes();
    let fifo = s.dest.is_fifo();
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        let m = match &s.offload {
            Some(store) if store.wants(m.size(), limit) => match offload(s, store, m).await? {
                Some(m) => m,
                None => continue,
            },
            _ => m,
        };
        let bytes = m.size();
        if bytes > limit {
            reject(s, &m.event, Refusal::TooLarge { bytes, limit }).await?;
        } else {
            pending.push(m);
        }
    }
    let unusable = |fault| SinkError::Unusable {
        destination: s.dest.name().to_owned(),
        fault: Box::new(fault),
    };
    let mut attempt = 0u32;
    // After a whole call is refused as bad, send one at a time to find the culprit.
    let mut one_by_one = false;
    while !pending.is_empty() {
        let take = if one_by_one { 1 } else { pending.len() };
        let chunk: Vec<Message> = pending.drain(..take).collect();
        let mut retry: Vec<Message> = Vec::new();
        // The fault behind the retry, for the warning.
        let mut last = None;
        let metrics = s.tracker.metrics();
        metrics.batch();
        let asked = Instant::now();
        let call = s.calls.start().await;
        let started = Instant::now();
        let sent = s.dest.send_batch(&entries(&s.dest, &chunk)).await;
        s.stats
            .call(chunk.len(), started - asked, started.elapsed());
        let congested = match &sent {
            Ok(failures) => failures.iter().any(|(_, f)| f.is_congestion()),
            Err(fault) => fault.is_congestion(),
        };
        call.done(if congested {
            Outcome::Congested
        } else {
            Outcome::Answered
        });
        match sent {
            Ok(failures) => {
                let failed = by_entry(chunk.len(), failures);
                let mut accepted = Vec::with_capacity(chunk.len());
                let mut released = 0usize;
                // Per group of this call: the first entry to be sent again.
                let mut held: Vec<(Arc<Event>, Fault)> = Vec::new();
                let mut overtaken = None;
                for (m, fault) in chunk.into_iter().zip(failed) {
                    let earlier = held.iter().find(|(e, _)| e.group_id == m.event.group_id);
                    let Some(fault) = fault else {
                        if let (true, Some((first, fault)), None) = (fifo, earlier, &overtaken) {
                            overtaken = Some(SinkError::Overtaken {
                                destination: s.dest.name().to_owned(),
                                table: m.event.table.qualified.clone(),
                                failed: first.idempotency_key.clone(),
                                taken: m.event.idempotency_key.clone(),
                                fault: Box::new(fault.clone()),
                            });
                        }
                        metrics.delivered(&m.event);
                        released += weight(&m.event) as usize;
                        accepted.push(m.event.seq);
                        continue;
                    };
                    match classify(&fault) {
                        Disposition::Retry => {
                            metrics.failed(&m.event);
                            if earlier.is_none() {
                                held.push((Arc::clone(&m.event), fault.clone()));
                            }
                            retry.push(m);
                            last = Some(fault);
                        }
                        Disposition::RejectMessage => {
                            metrics.failed(&m.event);
                            reject(s, &m.event, Refusal::Fault(fault)).await?;
                        }
                        Disposition::Fatal => return Err(unusable(fault)),
                    }
                }
                if !accepted.is_empty() {
                    s.tracker.accept_all(accepted);
                    s.permits.add_permits(released);
                }
                if let Some(e) = overtaken {
                    return Err(e);
                }
            }
            Err(fault) => match classify(&fault) {
                Disposition::Retry => {
                    chunk.iter().for_each(|m| metrics.failed(&m.event));
                    retry = chunk;
                    last = Some(fault);
                }
                Disposition::RejectMessage if chunk.len() > 1 => {
                    one_by_one = true;
                    retry = chunk;
                    last = Some(fault);
                }
                Disposition::RejectMessage => {
                    for m in &chunk {
                        reject(s, &m.event, Refusal::Fault(fault.clone())).await?;
                    }
                }
                Disposition::Fatal => return Err(unusable(fault)),
            },
        }
        if retry.is_empty() {
            attempt = 0;
            continue;
        }
        attempt += 1;
        let delay = backoff::DELIVERY.delay(attempt);
        let fault = last.as_ref();
        metrics.retrying(format!(
            "{}: {}",
            s.dest.name(),
            fault.map(ToString::to_string).unwrap_or_default()
        ));
        tracing::warn!(
            destination = %s.dest.name(),
            code = fault.and_then(Fault::code).unwrap_or("none"),
            error = %fault.map(ToString::to_string).unwrap_or_default(),
            messages = retry.len(),
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "delivery failed; retrying"
        );
        tokio::time::sleep(delay).await;
        // Retried messages go first, in their order, before what was not tried yet.
        retry.append(&mut pending);
        pending = retry;
    }
    Ok(keys)
}

/// Puts the event's payload in S3 and returns the message with the pointer
/// instead, retrying transient faults like a send (the group waits meanwhile).
/// `None`: S3 refused the object for good and the event went the way of a
/// refused message (dead-lettered). An unusable bucket stops the sink.
async fn offload<D: Destination, L: Destination>(
    s: &Shared<D, L>,
    store: &PayloadStore,
    m: Message,
) -> Result<Option<Message>, SinkError> {
    let payload = m.event.payload.as_str();
    let pointer = store.pointer(payload);
    let mut attempt = 0u32;
    loop {
        let Err(fault) = store.put(&pointer, payload).await else {
            break;
        };
        match classify(&fault) {
            Disposition::Retry => {}
            Disposition::RejectMessage => {
                reject(s, &m.event, Refusal::Fault(fault)).await?;
                return Ok(None);
            }
            Disposition::Fatal => {
                return Err(SinkError::Unusable {
                    destination: format!("sink.s3.bucket {}", store.name()),
                    fault: Box::new(fault),
                })
            }
        }
        attempt += 1;
        let delay = backoff::DELIVERY.delay(attempt);
        tracing::warn!(
            bucket = %store.name(),
            code = fault.code().unwrap_or("none"),
            error = %fault,
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "upload to S3 failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::debug!(
        table = %m.event.table.qualified,
        idempotency_key = %m.event.idempotency_key,
        bytes = payload.len(),
        key = %pointer.key,
        "event sent through S3"
    );
    Ok(Some(Message {
        pointer: Some((pointer.to_body(), payload.len())),
        ..m
    }))
}

/// A message refused for good: to the dead-letter queue (retrying what is
/// transient there too), or the reason the sink stops.
async fn reject<D: Destination, L: Destination>(
    s: &Shared<D, L>,
    event: &Arc<Event>,
    refusal: Refusal,
) -> Result<(), SinkError> {
    let Some(dlq) = &s.dead_letter else {
        return Err(SinkError::Refused {
            destination: s.dest.name().to_owned(),
            idempotency_key: event.idempotency_key.clone(),
            table: event.table.qualified.clone(),
            refusal: Box::new(refusal),
        });
    };
    let reason = refusal.to_string();
    tracing::warn!(
        table = %event.table.qualified,
        idempotency_key = %event.idempotency_key,
        reason,
        dead_letter_queue = %dlq.name(),
        "message refused for good; dead-lettering it"
    );
    let envelope = [envelope(event, &reason, dlq.max_bytes())];
    let mut attempt = 0;
    loop {
        let fault = match dlq.send_batch(&entries(dlq, &envelope)).await {
            Ok(failed) => match failed.into_iter().next() {
                None => break,
                Some((_, fault)) => fault,
            },
            Err(fault) => fault,
        };
        // An entry's fault is an entry's fault here too: an unknown one on the
        // service's side is retried, as in `deliver`.
        if classify(&fault) != Disposition::Retry {
            return Err(SinkError::DeadLetterRefused {
                queue: dlq.name().to_owned(),
                idempotency_key: event.idempotency_key.clone(),
                table: event.table.qualified.clone(),
                fault: Box::new(fault),
            });
        }
        attempt += 1;
        let delay = backoff::DELIVERY.delay(attempt);
        tracing::warn!(
            dead_letter_queue = %dlq.name(),
            code = fault.code().unwrap_or("none"),
            error = %fault,
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "dead-lettering failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
    s.tracker.metrics().dead_lettered(event);
    s.tracker.accept(event.seq);
    s.permits.add_permits(weight(event) as usize);
    Ok(())
}

/// The dead-letter message about `event`: `{"reason": …, "event": <the event>}`,
/// or, when that is over `limit`, the event's metadata in place of the event.
fn envelope(event: &Arc<Event>, reason: &str, limit: usize) -> Message {
    // What the attributes take of the limit (the size of the message with the payload as body).
    let attributes = Message::new(Arc::clone(event)).size() - event.payload.len();
    Message {
        event: Arc::clone(event),
        body: Some(dead_letter_body(
            event,
            reason,
            limit.saturating_sub(attributes),
        )),
        pointer: None,
    }
}

/// The body of a dead-letter message about `event` (the one format of every
/// dead-letter message the streamer sends): `{"reason": …, "event": <the event>}`,
/// or, when that is over `room` bytes, the event's metadata in place of the event.
pub fn dead_letter_body(event: &Event, reason: &str, room: usize) -> String {
    let mut body = String::with_capacity(event.payload.len() + reason.len() + 40);
    body.push_str("{\"reason\":");
    crate::event::write_str(&mut body, reason);
    body.push_str(",\"event\":");
    let head = body.len();
    body.push_str(&event.payload);
    body.push('}');
    if body.len() > room {
        body.truncate(head);
        body.push_str("{\"idempotency_key\":");
        crate::event::write_str(&mut body, &event.idempotency_key);
        body.push_str(",\"action\":");
        crate::event::write_str(&mut body, event.action.as_str());
        body.push_str(",\"table_schema\":");
        crate::event::write_str(&mut body, &event.table.schema);
        body.push_str(",\"table_name\":");
        crate::event::write_str(&mut body, &event.table.name);
        body.push_str(&format!(
            ",\"commit_lsn\":{},\"commit_idx\":{},\"payload_bytes\":{}}}}}",
            event.commit_lsn,
            event.commit_idx,
            event.payload.len()
        ));
    }
    body
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::window;
    use super::*;

    fn call(code: &str) -> Fault {
        Fault::Call {
            code: Some(code.into()),
            status: Some(400),
            message: "scripted".into(),
        }
    }

    fn entry(code: &str, sender_fault: bool) -> Fault {
        Fault::Entry {
            code: code.into(),
            sender_fault,
            message: "scripted".into(),
        }
    }

    /// A scripted destination (our trait, not AWS): a queue that keeps what it
    /// took, in order, and (FIFO) drops copies by deduplication id as SQS does,
    /// with faults scripted per event.
    #[derive(Default)]
    struct Script {
        /// seq → the fault of its first attempt (a whole call fails on a `Fault::Call`).
        fail_first: Mutex<HashMap<u64, Fault>>,
        /// seq → the fault of every attempt: a message refused for good.
        refuse: HashMap<u64, Fault>,
        /// An entry that fails fails the later entries of its group in the same
        /// call too (what a service that stops a group at its first failure does).
        stops_group: bool,
        /// A standard destination: no group or deduplication ids.
        standard: bool,
        /// How long each call takes (tokio time: tests with a window pause it).
        latency: Duration,
        /// While set, every call is throttled.
        throttled: AtomicBool,
        /// seqs whose call is applied and then answered with a timeout, once.
        lost_answer: Mutex<HashSet<u64>>,
        /// (group, seq) the queue holds, in order; dead-letter envelopes as seq `u64::MAX`.
        accepted: Mutex<Vec<(String, u64)>>,
        /// Deduplication ids taken, and copies dropped by them.
        seen: Mutex<HashSet<String>>,
        dropped: AtomicUsize,
        /// Entries of each call.
        calls: Mutex<Vec<usize>>,
        /// Calls in flight, and the most at once since the last reset.
        in_flight: AtomicUsize,
        peak: AtomicUsize,
        /// Groups in a call in flight; set when a group was in two at once.
        groups_in_flight: Mutex<HashSet<String>>,
        overlap: AtomicBool,
    }

    impl Script {
        fn failing(faults: impl IntoIterator<Item = (u64, Fault)>) -> Script {
            let script = Script::default();
            script.fail_first.lock().expect("lock").extend(faults);
            script
        }

        fn accepted_seqs(&self) -> Vec<u64> {
            let accepted = self.accepted.lock().expect("lock");
            accepted.iter().map(|x| x.1).collect()
        }

        /// The seqs each group holds, in the order taken.
        fn by_group(&self) -> HashMap<String, Vec<u64>> {
            let mut out: HashMap<String, Vec<u64>> = HashMap::new();
            for (g, seq) in self.accepted.lock().expect("lock").iter() {
                out.entry(g.clone()).or_default().push(*seq);
            }
            out
        }

        fn answer(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
            if self.throttled.load(Ordering::SeqCst) {
                return Err(call("ThrottlingException"));
            }
            let mut fail = self.fail_first.lock().expect("lock");
            for e in entries {
                let seq = seq_of(e);
                if let Some(Fault::Call { .. } | Fault::Unreachable(_)) = fail.get(&seq) {
                    return Err(fail.remove(&seq).expect("scripted"));
                }
                if let Some(f @ Fault::Call { .. }) = self.refuse.get(&seq) {
                    return Err(f.clone());
                }
            }
            let lost = {
                let mut lost = self.lost_answer.lock().expect("lock");
                entries.iter().any(|e| lost.remove(&seq_of(e)))
            };
            let mut failures = Vec::new();
            let mut stopped: Vec<&str> = Vec::new();
            let mut acc = self.accepted.lock().expect("lock");
            let mut seen = self.seen.lock().expect("lock");
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.id, i.to_string());
                let seq = seq_of(e);
                let group = e.group_id.unwrap_or("");
                let fault = fail
                    .remove(&seq)
                    .or_else(|| self.refuse.get(&seq).cloned())
                    .or_else(|| {
                        stopped
                            .contains(&group)
                            .then(|| entry("InternalError", false))
                    });
                if let Some(fault) = fault {
                    if self.stops_group {
                        stopped.push(group);
                    }
                    failures.push((i, fault));
                    continue;
                }
                let new = match &e.deduplication_id {
                    Some(id) => seen.insert(id.to_string()),
                    None => true,
                };
                if !new {
                    self.dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let dead_letter = e.body.starts_with("{\"reason\":");
                acc.push((group.to_owned(), if dead_letter { u64::MAX } else { seq }));
            }
            if lost {
                return Err(Fault::Unreachable("timed out".into()));
            }
            Ok(failures)
        }
    }

    /// The event's seq, from its body (`<seq>x…`, see `event`) or, in a
    /// dead-letter envelope, from its deduplication id (`k<seq>`).
    fn seq_of(e: &Entry<'_>) -> u64 {
        let digits: String = e.body.chars().take_while(char::is_ascii_digit).collect();
        digits
            .parse()
            .ok()
            .or_else(|| {
                e.deduplication_id
                    .as_deref()
                    .and_then(|k| k.strip_prefix('k'))
                    .and_then(|n| n.parse().ok())
            })
            .expect("an entry of a test event")
    }

    impl Destination for Arc<Script> {
        fn name(&self) -> &str {
            "script"
        }
        fn is_fifo(&self) -> bool {
            !self.standard
        }
        fn max_bytes(&self) -> usize {
            1000
        }
        async fn send_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
            self.calls.lock().expect("lock").push(entries.len());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            let mut groups: Vec<String> = entries
                .iter()
                .filter_map(|e| e.group_id.map(str::to_owned))
                .collect();
            groups.dedup();
            {
                let mut in_flight = self.groups_in_flight.lock().expect("lock");
                for g in &groups {
                    if !in_flight.insert(g.clone()) {
                        self.overlap.store(true, Ordering::SeqCst);
                    }
                }
            }
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            let answer = self.answer(entries);
            {
                let mut in_flight = self.groups_in_flight.lock().expect("lock");
                for g in &groups {
                    in_flight.remove(g);
                }
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            answer
        }
    }

    /// Event `seq` of `group`, its payload `<seq>` and `payload_len` more bytes.
    fn event(seq: u64, group: &str, payload_len: usize) -> Event {
        super::super::test_event(seq, group, format!("{seq}{}", "x".repeat(payload_len)))
    }

    fn start(script: &Arc<Script>, dlq: Option<Arc<Script>>) -> (AwsSink, Tracker) {
        let tracker = Tracker::new(0);
        let sink = AwsSink::start(Arc::clone(script), dlq, None, tracker.clone());
        (sink, tracker)
    }

    /// Hands `events` over all at once (the worker runs only once the test
    /// task waits, so they are queued together), then waits until every one
    /// is accepted and closes the sink.
    async fn run_script(
        script: &Arc<Script>,
        dlq: Option<Arc<Script>>,
        events: Vec<Event>,
    ) -> Tracker {
        let (mut sink, tracker) = start(script, dlq);
        for e in events {
            assert_eq!(tracker.register(), e.seq);
            sink.send(e).await.expect("send");
        }
        drain(&mut sink, &tracker).await;
        sink.close().await.expect("close");
        assert!(
            !script.overlap.load(Ordering::SeqCst),
            "a group was in two calls at once"
        );
        tracker
    }

    /// Waits until every event is accepted; panics at once if the sink fails.
    async fn drain(sink: &mut AwsSink, tracker: &Tracker) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let step = tokio::time::timeout(Duration::from_millis(50), tracker.drained());
            if step.await.is_ok() {
                return;
            }
            sink.flush().await.expect("the sink goes on");
            assert!(Instant::now() < deadline, "not all accepted in time");
        }
    }

    /// Sends events one at a time until the sink fails; returns its error.
    async fn failure(script: &Arc<Script>, dlq: Option<Arc<Script>>) -> SinkError {
        let (mut sink, tracker) = start(script, dlq);
        for i in 0..200 {
            tracker.register();
            if let Err(e) = sink.send(event(i, "g", 10)).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the sink did not fail");
    }

    /// Hands `events` over all at once and returns how the sink ended.
    async fn closed(script: &Arc<Script>, events: Vec<Event>) -> Result<(), SinkError> {
        let (mut sink, tracker) = start(script, None);
        for e in events {
            tracker.register();
            sink.send(e).await.expect("send");
        }
        tokio::time::timeout(Duration::from_secs(600), sink.close())
            .await
            .expect("the sink ends")
    }

    /// Per group, seqs strictly rising: in order, and each once.
    fn assert_in_order(script: &Script) {
        for (g, seqs) in script.by_group() {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "group {g} out of order or twice: {seqs:?}"
            );
        }
    }

    #[tokio::test]
    async fn entries_carry_body_attributes_and_fifo_ids() {
        let m = Message::new(Arc::new(event(3, "g", 5)));
        let e = m.entry(7, true);
        assert_eq!(
            (
                e.id.as_str(),
                e.body,
                e.group_id,
                e.deduplication_id.as_deref()
            ),
            ("7", "3xxxxx", Some("g"), Some("k3"))
        );
        assert_eq!(
            e.attributes.map(|(k, v)| format!("{k}={v}")),
            ["action=insert", "table_schema=public", "table_name=t"]
        );
        let e = m.entry(0, false);
        assert_eq!((e.group_id, e.deduplication_id.as_deref()), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_carries_up_to_ten_consecutive_events_of_a_group() {
        let script = Arc::new(Script {
            latency: Duration::from_millis(15),
            ..Script::default()
        });
        let events = (0..35).map(|i| event(i, "hot", 10)).collect();
        run_script(&script, None, events).await;
        assert_eq!(script.accepted_seqs(), (0..35).collect::<Vec<_>>());
        let calls = script.calls.lock().expect("lock").clone();
        assert_eq!(calls, [10, 10, 10, 5], "in commit order, ten a call");
        assert_eq!(
            script.peak.load(Ordering::SeqCst),
            1,
            "one batch of a group at a time"
        );
        // Two groups: a batch is filled from both, each group's events side by side.
        let script = Arc::new(Script::default());
        let events = (0..6)
            .map(|i| event(i, ["a", "b"][i as usize % 2], 10))
            .collect();
        run_script(&script, None, events).await;
        assert_eq!(script.accepted_seqs(), [0, 2, 4, 1, 3, 5]);
    }

    #[tokio::test]
    async fn failures_that_stop_the_group_are_retried_in_order() {
        let script = Arc::new(Script {
            stops_group: true,
            ..Script::failing([
                (0, entry("InternalError", false)),
                (5, entry("ServiceUnavailable", false)),
                (13, entry("ThrottlingException", false)),
                (7, call("ThrottlingException")),
            ])
        });
        let events = (0..40)
            .map(|i| event(i, &format!("g{}", i % 3), 10))
            .collect();
        run_script(&script, None, events).await;
        let mut seqs = script.accepted_seqs();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..40).collect::<Vec<_>>(), "each event once");
        assert_in_order(&script);
        let calls = script.calls.lock().expect("lock").clone();
        assert!(calls.iter().all(|&n| n <= MAX_ENTRIES), "{calls:?}");
        assert!(calls.len() > 4, "failed entries were sent again: {calls:?}");
    }

    /// Entry 0 of group g0 fails transiently while entry 1 of g0, later in the
    /// same batch, is taken: the queue holds g0 out of order. A FIFO sink stops,
    /// and never sends 0 after 1.
    #[tokio::test]
    async fn a_group_overtaken_in_a_batch_stops_a_fifo_sink() {
        let script = Arc::new(Script::failing([(0, entry("InternalError", false))]));
        let events = (0..10).map(|i| event(i, "g0", 10)).collect();
        match closed(&script, events).await {
            Err(SinkError::Overtaken {
                failed,
                taken,
                fault,
                ..
            }) => {
                assert_eq!((failed.as_str(), taken.as_str()), ("k0", "k1"));
                assert_eq!(*fault, entry("InternalError", false));
            }
            other => panic!("{other:?}"),
        }
        let g0 = script.by_group().remove("g0").unwrap_or_default();
        assert!(
            !g0.contains(&0),
            "0 was not sent after its successor: {g0:?}"
        );
        assert_eq!(
            script.calls.lock().expect("lock").len(),
            1,
            "nothing sent after it"
        );

        // A standard queue's arrival order is not observable: the entry is retried.
        let script = Arc::new(Script {
            standard: true,
            ..Script::failing([(0, entry("InternalError", false))])
        });
        let events = (0..10).map(|i| event(i, "g0", 10)).collect();
        run_script(&script, None, events).await;
        let mut seqs = script.accepted_seqs();
        assert_eq!(seqs.last(), Some(&0), "sent again, after its successors");
        seqs.sort_unstable();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    }

    /// A call applied by the service but answered with a timeout is sent again
    /// as it was: the copies are dropped by deduplication id, the order holds.
    #[tokio::test]
    async fn timed_out_calls_are_sent_again_in_the_same_order() {
        let script = Arc::new(Script {
            lost_answer: Mutex::new([0, 13, 31].into_iter().collect()),
            ..Script::failing([(20, Fault::Unreachable("timed out".into()))])
        });
        let events = (0..45)
            .map(|i| event(i, &format!("g{}", i % 3), 10))
            .collect();
        run_script(&script, None, events).await;
        let mut seqs = script.accepted_seqs();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..45).collect::<Vec<_>>(), "each event once");
        assert_in_order(&script);
        assert!(
            script.dropped.load(Ordering::SeqCst) > 0,
            "copies were sent"
        );
    }

    /// Throttling shrinks the window down to one call, retries included, and
    /// it grows again afterwards; nothing lost, nothing reordered.
    #[tokio::test(start_paused = true)]
    async fn throttling_shrinks_the_window_and_retries_share_it() {
        let script = Arc::new(Script {
            latency: Duration::from_millis(15),
            ..Script::default()
        });
        let (mut sink, tracker) = start(&script, None);
        const N: u64 = 20_000;
        for i in 0..N {
            tracker.register();
            sink.send(event(i, &format!("g{}", i % 500), 10))
                .await
                .expect("send");
        }
        let wait_peak = |at_least: usize| {
            let script = Arc::clone(&script);
            async move {
                while script.peak.load(Ordering::SeqCst) < at_least {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait_peak(4 * window::INITIAL))
            .await
            .expect("the window grows past its start while calls come back fast");
        script.throttled.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        script.peak.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            script.peak.load(Ordering::SeqCst) <= 1,
            "calls in flight while throttled: {}",
            script.peak.load(Ordering::SeqCst)
        );
        script.throttled.store(false, Ordering::SeqCst);
        script.peak.store(0, Ordering::SeqCst);
        drain(&mut sink, &tracker).await;
        sink.close().await.expect("close");
        assert!(
            script.peak.load(Ordering::SeqCst) > 1,
            "the window opens again"
        );
        let mut seqs = script.accepted_seqs();
        assert_in_order(&script);
        seqs.sort_unstable();
        assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "each event once");
        assert!(!script.overlap.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn permanent_refusals_are_dead_lettered_and_the_group_goes_on() {
        let script = Arc::new(Script {
            refuse: [
                (2, entry("InvalidParameterValue", true)),
                (4, call("InvalidMessageContents")),
            ]
            .into_iter()
            .collect(),
            ..Script::default()
        });
        let dlq = Arc::new(Script::default());
        // seq 6 is over the 1000-byte limit: refused up front.
        let events = (0..10)
            .map(|i| event(i, "g", if i == 6 { 2000 } else { 10 }))
            .collect();
        run_script(&script, Some(Arc::clone(&dlq)), events).await;
        assert_eq!(script.accepted_seqs(), [0, 1, 3, 5, 7, 8, 9]);
        assert_eq!(dlq.accepted_seqs(), [u64::MAX; 3]);
    }

    /// While dead-lettering, an entry's fault is classified as an entry's: an
    /// unknown fault on the service's side is retried (it was fatal there once),
    /// a throttled call too; a refusal of the request stops the sink.
    #[tokio::test]
    async fn dead_letter_faults_are_classified_as_in_delivery() {
        let script = Arc::new(Script::failing([
            (1, entry("InvalidParameterValue", true)),
            (3, entry("InvalidParameterValue", true)),
        ]));
        let dlq = Arc::new(Script::failing([
            (1, entry("SomethingNew", false)),
            (3, call("ThrottlingException")),
        ]));
        let events = (0..5).map(|i| event(i, "g", 10)).collect();
        run_script(&script, Some(Arc::clone(&dlq)), events).await;
        assert_eq!(script.accepted_seqs(), [0, 2, 4]);
        assert_eq!(dlq.accepted_seqs(), [u64::MAX; 2]);

        let script = Arc::new(Script::failing([(1, entry("InvalidParameterValue", true))]));
        let dlq = Arc::new(Script::failing([(1, entry("SomethingNew", true))]));
        match failure(&script, Some(dlq)).await {
            SinkError::DeadLetterRefused {
                idempotency_key,
                fault,
                ..
            } => {
                assert_eq!(idempotency_key, "k1");
                assert_eq!(*fault, entry("SomethingNew", true));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn permanent_refusal_without_dead_letter_queue_is_fatal() {
        let script = Arc::new(Script::failing([(1, entry("InvalidParameterValue", true))]));
        match failure(&script, None).await {
            SinkError::Refused {
                idempotency_key,
                refusal,
                ..
            } => {
                assert_eq!(idempotency_key, "k1");
                assert_eq!(
                    *refusal,
                    Refusal::Fault(entry("InvalidParameterValue", true))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            script.accepted_seqs(),
            [0],
            "nothing of the group after the refused event"
        );
    }

    #[tokio::test]
    async fn a_missing_destination_is_fatal() {
        let script = Arc::new(Script::failing([(
            0,
            call("AWS.SimpleQueueService.NonExistentQueue"),
        )]));
        let e = failure(&script, None).await;
        assert!(
            matches!(&e, SinkError::Unusable { fault, .. }
                if fault.code() == Some("AWS.SimpleQueueService.NonExistentQueue")),
            "{e:?}"
        );
    }

    #[test]
    fn entries_an_answer_does_not_name_count_as_failed() {
        let throttled = entry("ThrottlingException", false);
        let got = failures(
            4,
            [Some("0"), None, Some("x"), Some("3")],
            vec![(1, throttled.clone())],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (1, throttled));
        assert_eq!(got[1].0, 2);
        assert_eq!(got[1].1.code(), Some("UnansweredBatchEntry"));
        assert_eq!(classify(&got[1].1), Disposition::Retry);
        assert!(failures(2, [Some("0"), Some("1")], Vec::new()).is_empty());
        // An id outside the batch fails every entry (sent again).
        let all = by_entry(3, vec![(7, throttled_entry())]);
        assert!(all
            .iter()
            .all(|f| f.as_ref().and_then(Fault::code) == Some("UnmatchedBatchEntry")));
    }

    fn throttled_entry() -> Fault {
        entry("ThrottlingException", false)
    }

    #[tokio::test]
    async fn close_delivers_what_the_sink_holds_then_refuses_more() {
        let script = Arc::new(Script::default());
        let tracker = Tracker::new(0);
        let mut sink = AwsSink::start(
            Arc::clone(&script),
            None::<Arc<Script>>,
            None,
            tracker.clone(),
        );
        for i in 0..25 {
            tracker.register();
            sink.send(event(i, &format!("g{}", i % 2), 10))
                .await
                .expect("send");
        }
        tokio::time::timeout(Duration::from_secs(20), sink.close())
            .await
            .expect("closed in time")
            .expect("close");
        assert_eq!(
            tracker.in_flight(),
            0,
            "everything accepted before close returned"
        );
        assert_eq!(script.accepted_seqs().len(), 25);
        assert!(matches!(
            sink.send(event(25, "g", 1)).await,
            Err(SinkError::Closed)
        ));
        assert!(matches!(sink.flush().await, Err(SinkError::Closed)));
        sink.close().await.expect("closing again");
    }

    #[test]
    fn refused_characters_are_escaped_in_attributes() {
        assert!(matches!(aws_text("orders"), Cow::Borrowed("orders")));
        assert_eq!(
            aws_text("a\u{FFFF}b\u{1}c\u{FFFE}"),
            "a\\uffffb\\u0001c\\ufffe"
        );
        assert_eq!(aws_text("tab\tünï😀"), "tab\tünï😀");
    }
}
