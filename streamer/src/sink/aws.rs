//! The one delivery core for SQS and SNS: batching, order per group, retries,
//! dead-lettering and acceptance. The core builds every batch entry (body,
//! attributes, group and deduplication ids: [`Entry`]); the services
//! ([`super::SqsQueue`], [`super::SnsTopic`]) only map its fields onto one API
//! call ([`Destination`]).
//!
//! ```text
//!  send() ──permit──▶ channel ──▶ worker: groups { group → queue, in flight? }
//!                                   │   ready: groups whose next event may go
//!                                   ▼
//!                     ≤ MAX_IN_FLIGHT batch tasks (≤ 10 entries, ≤ byte limit,
//!                     at most one event per group): send, retry failed entries
//!                     with backoff, dead-letter permanent rejections,
//!                     tracker.accept(seq), release permits, free the groups
//! ```
//!
//! **Order.** A group has at most one event in flight; its next event is not
//! even put in a batch before the previous one was accepted (or dead-lettered),
//! so neither concurrent batches nor a partial batch failure can reorder a group.
//! Events of different groups overtake each other freely.
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
//! **Bounded.** `send` takes [`weight`] permits of [`MAX_HELD_KIB`] (one per KiB of
//! payload, at least one); they come back when the event is accepted, so the
//! events held stay under ~8 MiB whatever their size.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::fault::{classify, Disposition, Fault, Refusal};
use super::s3::PayloadStore;
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
/// Batches in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Entries per `SendMessageBatch` / `PublishBatch`.
pub const MAX_ENTRIES: usize = 10;

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
        Ok(out
            .failed()
            .iter()
            .map(|f| Fault::failed_entry(f.id(), f.code(), f.message(), f.sender_fault()))
            .collect())
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
        });
        let worker = tokio::spawn(worker(shared, rx, failure.clone()));
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

async fn worker<D: Destination, L: Destination>(
    shared: Arc<Shared<D, L>>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    failure: Failure,
) {
    let mut groups: HashMap<String, Group> = HashMap::new();
    let mut ready: VecDeque<String> = VecDeque::new();
    let mut tasks: JoinSet<Result<Vec<String>, SinkError>> = JoinSet::new();
    let mut open = true;
    let add = |groups: &mut HashMap<String, Group>, ready: &mut VecDeque<String>, e: Event| {
        let g = groups.entry(e.group_id.clone()).or_default();
        g.queue.push_back(Arc::new(e));
        if !g.in_flight && g.queue.len() == 1 {
            ready.push_back(g.queue[0].group_id.clone());
        }
    };
    loop {
        // Start batches while slots are free. A partial batch leaves only when nothing is
        // in flight (the stream is slow, or drained): under load, batches fill up while
        // earlier ones are on the wire, so every call carries the most it can.
        while tasks.len() < MAX_IN_FLIGHT
            && !ready.is_empty()
            && (ready.len() >= MAX_ENTRIES || tasks.is_empty() || !open)
        {
            let max = shared.dest.max_bytes();
            let mut batch = Vec::with_capacity(MAX_ENTRIES);
            let mut bytes = 0;
            while batch.len() < MAX_ENTRIES {
                let Some(key) = ready.pop_front() else { break };
                let Some(g) = groups.get_mut(&key) else {
                    continue;
                };
                let Some(front) = g.queue.front() else {
                    continue;
                };
                let m = Message::new(Arc::clone(front));
                let size = m.size();
                // Oversized messages go alone (to be rejected up front).
                if !batch.is_empty() && (bytes + size > max || size > max) {
                    ready.push_front(key);
                    break;
                }
                g.queue.pop_front();
                g.in_flight = true;
                bytes += size;
                batch.push(m);
                if size > max {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            let s = Arc::clone(&shared);
            tasks.spawn(async move { deliver(&s, batch).await });
        }
        if !open && tasks.is_empty() && ready.is_empty() {
            return;
        }
        tokio::select! {
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let done = match done {
                    Ok(r) => r,
                    Err(e) => Err(SinkError::Stopped(format!("a delivery task failed: {e}"))),
                };
                match done {
                    Ok(keys) => {
                        for key in keys {
                            if let Some(g) = groups.get_mut(&key) {
                                g.in_flight = false;
                                if g.queue.is_empty() {
                                    groups.remove(&key);
                                } else {
                                    ready.push_back(key);
                                }
                            }
                        }
                    }
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
                    add(&mut groups, &mut ready, e);
                    while let Ok(e) = rx.try_recv() {
                        add(&mut groups, &mut ready, e);
                    }
                }
                None => open = false,
            },
            else => return,
        }
    }
}

/// Delivers one batch: retries what failed transiently, dead-letters what is
/// refused for good. Returns the groups freed, or why the sink must stop.
async fn deliver<D: Destination, L: Destination>(
    s: &Shared<D, L>,
    batch: Vec<Message>,
) -> Result<Vec<String>, SinkError> {
    let keys: Vec<String> = batch.iter().map(|m| m.event.group_id.clone()).collect();
    let limit = s.dest.max_bytes();
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
        let sent = s.dest.send_batch(&entries(&s.dest, &chunk)).await;
        match sent {
            Ok(failures) => {
                let mut failed: Vec<Option<Fault>> = vec![None; chunk.len()];
                for (index, fault) in failures {
                    match failed.get_mut(index) {
                        Some(slot) => *slot = Some(fault),
                        // An answer we cannot match to an entry: send them all again.
                        None => failed.fill(Some(Fault::Entry {
                            code: "UnmatchedBatchEntry".into(),
                            sender_fault: false,
                            message: "failed entry id not in the batch".into(),
                        })),
                    }
                }
                let mut accepted = Vec::with_capacity(chunk.len());
                let mut released = 0usize;
                for (m, fault) in chunk.into_iter().zip(failed) {
                    let Some(fault) = fault else {
                        metrics.delivered(&m.event);
                        released += weight(&m.event) as usize;
                        accepted.push(m.event.seq);
                        continue;
                    };
                    match classify(&fault) {
                        Disposition::Retry => {
                            metrics.failed(&m.event);
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
    let mut body = String::with_capacity(event.payload.len() + reason.len() + 40);
    body.push_str("{\"reason\":");
    crate::event::write_str(&mut body, reason);
    body.push_str(",\"event\":");
    let head = body.len();
    body.push_str(&event.payload);
    body.push('}');
    let mut m = Message {
        event: Arc::clone(event),
        body: Some(body),
        pointer: None,
    };
    if m.size() > limit {
        let b = m.body.get_or_insert_with(String::new);
        b.truncate(head);
        b.push_str("{\"idempotency_key\":");
        crate::event::write_str(b, &event.idempotency_key);
        b.push_str(",\"action\":");
        crate::event::write_str(b, event.action.as_str());
        b.push_str(",\"table_schema\":");
        crate::event::write_str(b, &event.table.schema);
        b.push_str(",\"table_name\":");
        crate::event::write_str(b, &event.table.name);
        b.push_str(&format!(
            ",\"commit_lsn\":{},\"commit_idx\":{},\"payload_bytes\":{}}}}}",
            event.commit_lsn,
            event.commit_idx,
            event.payload.len()
        ));
    }
    m
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

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

    /// A scripted destination (our trait, not AWS): fails each event's first
    /// attempt as given, records what it accepted, in order.
    #[derive(Default)]
    struct Script {
        /// seq → the fault of its first attempt (a whole call fails on a `Fault::Call`).
        fail_first: Mutex<HashMap<u64, Fault>>,
        /// (group, seq) accepted, in order; dead-letter envelopes as seq `u64::MAX`.
        accepted: Mutex<Vec<(String, u64)>>,
        calls: Mutex<Vec<usize>>,
    }

    impl Script {
        fn failing(faults: impl IntoIterator<Item = (u64, Fault)>) -> Arc<Script> {
            let script = Script::default();
            script.fail_first.lock().expect("lock").extend(faults);
            Arc::new(script)
        }

        fn accepted_seqs(&self) -> Vec<u64> {
            let accepted = self.accepted.lock().expect("lock");
            accepted.iter().map(|x| x.1).collect()
        }
    }

    /// The event's seq, from its deduplication id (`k<seq>`, see `event`).
    fn seq_of(e: &Entry<'_>) -> u64 {
        e.deduplication_id
            .as_deref()
            .and_then(|k| k.strip_prefix('k'))
            .and_then(|n| n.parse().ok())
            .expect("a FIFO entry of a test event")
    }

    impl Destination for Arc<Script> {
        fn name(&self) -> &str {
            "script"
        }
        fn is_fifo(&self) -> bool {
            true
        }
        fn max_bytes(&self) -> usize {
            1000
        }
        async fn send_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
            self.calls.lock().expect("lock").push(entries.len());
            let mut fail = self.fail_first.lock().expect("lock");
            for e in entries {
                if let Some(Fault::Call { .. }) = fail.get(&seq_of(e)) {
                    return Err(fail.remove(&seq_of(e)).expect("scripted"));
                }
            }
            let mut failures = Vec::new();
            let mut acc = self.accepted.lock().expect("lock");
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.id, i.to_string());
                match fail.remove(&seq_of(e)) {
                    Some(fault) => failures.push((i, fault)),
                    None => acc.push((
                        e.group_id.expect("FIFO").to_owned(),
                        if e.body.starts_with("{\"reason\":") {
                            u64::MAX
                        } else {
                            seq_of(e)
                        },
                    )),
                }
            }
            Ok(failures)
        }
    }

    fn event(seq: u64, group: &str, payload_len: usize) -> Event {
        super::super::test_event(seq, group, "x".repeat(payload_len))
    }

    async fn run_script(
        script: &Arc<Script>,
        dlq: Option<Arc<Script>>,
        events: Vec<Event>,
    ) -> Tracker {
        let tracker = Tracker::new(0);
        let mut sink = AwsSink::start(Arc::clone(script), dlq, None, tracker.clone());
        for e in events {
            assert_eq!(tracker.register(), e.seq);
            sink.send(e).await.expect("send");
        }
        sink.flush().await.expect("flush");
        tokio::time::timeout(Duration::from_secs(20), tracker.drained())
            .await
            .expect("all accepted");
        sink.close().await.expect("close");
        tracker
    }

    /// Sends events until the sink fails; returns its error.
    async fn failure(script: &Arc<Script>, dlq: Option<Arc<Script>>) -> SinkError {
        let tracker = Tracker::new(0);
        let mut sink = AwsSink::start(Arc::clone(script), dlq, None, tracker.clone());
        for i in 0..200 {
            tracker.register();
            if let Err(e) = sink.send(event(i, "g", 10)).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the sink did not fail");
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
            ("7", "xxxxx", Some("g"), Some("k3"))
        );
        assert_eq!(
            e.attributes.map(|(k, v)| format!("{k}={v}")),
            ["action=insert", "table_schema=public", "table_name=t"]
        );
        let e = m.entry(0, false);
        assert_eq!((e.group_id, e.deduplication_id.as_deref()), (None, None));
    }

    #[tokio::test]
    async fn partial_failures_are_retried_without_reordering_a_group() {
        let script = Script::failing([
            (0, entry("InternalError", false)),
            (5, entry("InternalError", false)),
            (7, call("ThrottlingException")),
        ]);
        let events = (0..40)
            .map(|i| event(i, &format!("g{}", i % 3), 10))
            .collect();
        run_script(&script, None, events).await;
        let acc = script.accepted.lock().expect("lock").clone();
        assert_eq!(acc.len(), 40);
        for g in ["g0", "g1", "g2"] {
            let seqs: Vec<u64> = acc.iter().filter(|(k, _)| k == g).map(|x| x.1).collect();
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            assert_eq!(seqs, sorted, "group {g} reordered");
        }
        assert!(script
            .calls
            .lock()
            .expect("lock")
            .iter()
            .all(|&n| n <= MAX_ENTRIES));
    }

    #[tokio::test]
    async fn permanent_refusals_are_dead_lettered_and_the_group_goes_on() {
        let script = Script::failing([
            (2, entry("InvalidParameterValue", true)),
            (4, call("InvalidMessageContents")),
        ]);
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
        let script = Script::failing([
            (1, entry("InvalidParameterValue", true)),
            (3, entry("InvalidParameterValue", true)),
        ]);
        let dlq = Script::failing([
            (1, entry("SomethingNew", false)),
            (3, call("ThrottlingException")),
        ]);
        let events = (0..5).map(|i| event(i, "g", 10)).collect();
        run_script(&script, Some(Arc::clone(&dlq)), events).await;
        assert_eq!(script.accepted_seqs(), [0, 2, 4]);
        assert_eq!(dlq.accepted_seqs(), [u64::MAX; 2]);

        let script = Script::failing([(1, entry("InvalidParameterValue", true))]);
        let dlq = Script::failing([(1, entry("SomethingNew", true))]);
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
        let script = Script::failing([(1, entry("InvalidParameterValue", true))]);
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
        let script = Script::failing([(0, call("AWS.SimpleQueueService.NonExistentQueue"))]);
        let e = failure(&script, None).await;
        assert!(
            matches!(&e, SinkError::Unusable { fault, .. }
                if fault.code() == Some("AWS.SimpleQueueService.NonExistentQueue")),
            "{e:?}"
        );
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
