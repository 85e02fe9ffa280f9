//! The one delivery core for SQS and SNS: batching, order per group, retries,
//! dead-lettering and acceptance. The services ([`super::sqs`], [`super::sns`])
//! only turn a batch of [`Message`]s into one API call ([`Destination`]).
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
//! **Retries.** [`classify`] is the one place that decides: throttling, 5xx,
//! timeouts and connection errors are retried forever with capped, fully
//! jittered backoff ([`crate::backoff::DELIVERY`]; the slot holds the WAL meanwhile, nothing later is
//! confirmed past the event). A message the destination refuses for good goes
//! to the dead-letter queue when one is configured, else the sink fails and the
//! streamer stops (the slot keeps the event). Errors about the destination
//! itself (missing, access denied) stop the streamer: dead-lettering every
//! event would be worse.
//!
//! **Bounded.** `send` takes [`weight`] permits of [`MAX_HELD_KIB`] (one per KiB of
//! payload, at least one); they come back when the event is accepted, so the
//! events held stay under ~8 MiB whatever their size.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::{Sink, SinkError};
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
pub struct Message {
    /// The event.
    pub event: Arc<Event>,
    /// A body replacing the event's payload (dead-letter envelope).
    pub body: Option<String>,
}

impl Message {
    /// The message body.
    pub fn body(&self) -> &str {
        self.body.as_deref().unwrap_or(&self.event.payload)
    }

    /// The message attributes (`action`, `table_schema`, `table_name`), with any
    /// character SQS and SNS refuse written as `\uXXXX` ([`aws_text`]).
    pub fn attributes(&self) -> [(&'static str, Cow<'_, str>); 3] {
        [
            ("action", Cow::Borrowed(self.event.action.as_str())),
            ("table_schema", aws_text(&self.event.table.schema)),
            ("table_name", aws_text(&self.event.table.name)),
        ]
    }

    /// Size as SQS and SNS count it: body plus attribute names, types and values.
    pub fn size(&self) -> usize {
        self.body().len()
            + self
                .attributes()
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

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

/// An entry of a batch the destination refused (inside a successful response).
#[derive(Debug, Clone)]
pub struct EntryFailure {
    /// Index of the entry in the batch.
    pub index: usize,
    /// Error code.
    pub code: String,
    /// Error message.
    pub message: String,
    /// The request was at fault (not the service).
    pub sender_fault: bool,
}

/// A whole call failed.
#[derive(Debug, Clone)]
pub struct CallError {
    /// Service error code, when the service answered.
    pub code: Option<String>,
    /// HTTP status, when the service answered.
    pub status: Option<u16>,
    /// No answer: timeout, connection or dispatch failure (always retried).
    pub transport: bool,
    /// What happened (no message contents).
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, self.status) {
            (Some(c), Some(s)) => write!(f, "{c} (HTTP {s}): {}", self.message),
            (Some(c), None) => write!(f, "{c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Converts an AWS SDK error (SQS or SNS: the same type) into a [`CallError`].
pub fn call_error<E>(
    e: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> CallError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(se) => CallError {
            code: se.err().code().map(str::to_owned),
            status: Some(se.raw().status().as_u16()),
            transport: false,
            message: se.err().message().unwrap_or("").to_owned(),
        },
        SdkError::ConstructionFailure(_) => CallError {
            code: Some("ConstructionFailure".into()),
            status: None,
            transport: false,
            message: format!("{}", aws_sdk_sqs::error::DisplayErrorContext(&e)),
        },
        other => {
            // One line: what kind of failure, and its innermost cause (the OS error).
            let what = match &other {
                SdkError::TimeoutError(_) => "timed out",
                SdkError::DispatchFailure(_) => "cannot reach the endpoint",
                SdkError::ResponseError(_) => "unreadable response",
                _ => "request failed",
            };
            let mut cause: &(dyn std::error::Error + 'static) = &other;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let cause = cause.to_string();
            CallError {
                code: None,
                status: None,
                transport: true,
                message: if cause == other.to_string() {
                    what.to_owned()
                } else {
                    format!("{what}: {cause}")
                },
            }
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: back off and send again.
    Retry,
    /// This message is refused for good: dead-letter it (or stop).
    RejectMessage,
    /// The destination itself is unusable (missing, no access): stop.
    Fatal,
}

/// The one place where failures are classified.
///
/// `entry` is true for a failed entry of a batch (then `sender_fault` matters),
/// false for a failed call.
pub fn classify(
    code: Option<&str>,
    status: Option<u16>,
    transport: bool,
    entry: bool,
    sender_fault: bool,
) -> Disposition {
    if transport {
        return Disposition::Retry;
    }
    let c = code.unwrap_or("").to_ascii_lowercase();
    let any = |keys: &[&str]| keys.iter().any(|k| c.contains(k));
    if any(&[
        "throttl",
        "toomanyrequests",
        "slowdown",
        "serviceunavailable",
        "internalerror",
        "internalfailure",
        "requesttimeout",
        "expiredtoken",
        "requestexpired",
    ]) {
        return Disposition::Retry;
    }
    if any(&[
        "nonexistentqueue",
        "queuedoesnotexist",
        "notfound",
        "accessdenied",
        "authorization",
        "invalidclienttokenid",
        "signaturedoesnotmatch",
        "unrecognizedclient",
        "invalidsecurity",
        "kms",
        "invalidaddress",
        "unsupportedoperation",
        "missingauthentication",
        "optinrequired",
        "constructionfailure",
    ]) {
        return Disposition::Fatal;
    }
    if any(&[
        "toolong",
        "toolarge",
        "invalidmessagecontents",
        "invalidparameter",
        "invalidattribute",
        "validation",
        "malformed",
    ]) {
        return Disposition::RejectMessage;
    }
    match status {
        Some(s) if s >= 500 || s == 429 => Disposition::Retry,
        _ if entry && !sender_fault => Disposition::Retry,
        _ if entry => Disposition::RejectMessage,
        // An unknown refusal of a whole call: stop and say so rather than guess.
        _ => Disposition::Fatal,
    }
}

/// One SQS queue or SNS topic.
pub trait Destination: Send + Sync + 'static {
    /// Queue URL or topic ARN, for logs.
    fn name(&self) -> &str;
    /// A FIFO queue or topic.
    fn is_fifo(&self) -> bool;
    /// Limit on one message and on one batch together, in bytes.
    fn max_bytes(&self) -> usize;
    /// Sends up to [`MAX_ENTRIES`] messages in one call. `Ok` lists the failed entries.
    fn send_batch(
        &self,
        batch: &[Message],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, CallError>> + Send;
}

struct Shared<D, L> {
    dest: D,
    dead_letter: Option<L>,
    tracker: Tracker,
    permits: Arc<Semaphore>,
}

/// The SQS/SNS sink: see the module documentation.
pub struct AwsSink {
    tx: mpsc::UnboundedSender<Event>,
    permits: Arc<Semaphore>,
    fatal: Arc<Mutex<Option<String>>>,
}

impl AwsSink {
    /// Starts the delivery worker on the current runtime. `dead_letter` receives
    /// messages the destination refuses for good.
    pub fn start<D: Destination, L: Destination>(
        dest: D,
        dead_letter: Option<L>,
        tracker: Tracker,
    ) -> AwsSink {
        let permits = Arc::new(Semaphore::new(MAX_HELD_KIB));
        let fatal = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            dest,
            dead_letter,
            tracker,
            permits: Arc::clone(&permits),
        });
        tokio::spawn(worker(shared, rx, Arc::clone(&fatal)));
        AwsSink { tx, permits, fatal }
    }

    fn failed(&self) -> SinkError {
        let msg = self
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "the delivery worker stopped".into());
        SinkError::Fatal(msg)
    }
}

impl Sink for AwsSink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        match self.permits.acquire_many(weight(&event)).await {
            Ok(p) => p.forget(),
            Err(_) => return Err(self.failed()),
        }
        self.tx.send(event).map_err(|_| self.failed())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // Batches leave as soon as a slot is free; nothing waits for a full batch.
        if self.permits.is_closed() {
            return Err(self.failed());
        }
        Ok(())
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
    fatal: Arc<Mutex<Option<String>>>,
) {
    let mut groups: HashMap<String, Group> = HashMap::new();
    let mut ready: VecDeque<String> = VecDeque::new();
    let mut tasks: JoinSet<Result<Vec<String>, String>> = JoinSet::new();
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
                let m = Message {
                    event: Arc::clone(front),
                    body: None,
                };
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
                    Err(e) => Err(format!("delivery task failed: {e}")),
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
                    Err(msg) => {
                        tracing::error!(error = %msg, destination = %shared.dest.name(), "sink failed");
                        *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
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
/// refused for good. Returns the groups freed, or a fatal error.
async fn deliver<D: Destination, L: Destination>(
    s: &Shared<D, L>,
    batch: Vec<Message>,
) -> Result<Vec<String>, String> {
    let keys: Vec<String> = batch.iter().map(|m| m.event.group_id.clone()).collect();
    let max = s.dest.max_bytes();
    let mut pending = Vec::with_capacity(batch.len());
    for m in batch {
        if m.size() > max {
            let reason = format!(
                "message of {} bytes is over the {} byte limit of {}",
                m.size(),
                max,
                s.dest.name()
            );
            reject(s, &m.event, &reason).await?;
        } else {
            pending.push(m);
        }
    }
    let mut attempt = 0u32;
    // After a whole call is refused as bad, send one at a time to find the culprit.
    let mut one_by_one = false;
    while !pending.is_empty() {
        let take = if one_by_one { 1 } else { pending.len() };
        let chunk: Vec<Message> = pending.drain(..take).collect();
        let mut retry: Vec<Message> = Vec::new();
        let metrics = s.tracker.metrics();
        metrics.batch();
        match s.dest.send_batch(&chunk).await {
            Ok(failures) => {
                let mut failed = vec![None; chunk.len()];
                for f in failures {
                    match failed.get_mut(f.index) {
                        Some(slot) => *slot = Some(f),
                        // An answer we cannot match to an entry: send them all again.
                        None => failed.iter_mut().for_each(|slot| {
                            *slot = Some(EntryFailure {
                                index: 0,
                                code: "UnmatchedBatchEntry".into(),
                                message: "failed entry id not in the batch".into(),
                                sender_fault: false,
                            })
                        }),
                    }
                }
                let mut accepted = Vec::with_capacity(chunk.len());
                let mut released = 0usize;
                for (m, f) in chunk.into_iter().zip(failed) {
                    match f {
                        None => {
                            metrics.delivered(&m.event);
                            released += weight(&m.event) as usize;
                            accepted.push(m.event.seq)
                        }
                        Some(f) => match classify(
                            Some(&f.code),
                            None,
                            false,
                            true,
                            f.sender_fault,
                        ) {
                            Disposition::Retry => {
                                metrics.failed(&m.event);
                                retry.push(m)
                            }
                            Disposition::RejectMessage => {
                                metrics.failed(&m.event);
                                reject(s, &m.event, &format!("{}: {}", f.code, f.message)).await?
                            }
                            Disposition::Fatal => {
                                return Err(format!(
                                    "{} refused a message: {}: {} (the slot keeps the event; fix the destination and restart)",
                                    s.dest.name(),
                                    f.code,
                                    f.message
                                ))
                            }
                        },
                    }
                }
                if !accepted.is_empty() {
                    s.tracker.accept_all(accepted);
                    s.permits.add_permits(released);
                }
                if retry.is_empty() {
                    attempt = 0;
                }
            }
            Err(e) => match classify(e.code.as_deref(), e.status, e.transport, false, false) {
                Disposition::Retry => {
                    chunk.iter().for_each(|m| metrics.failed(&m.event));
                    retry = chunk
                }
                Disposition::RejectMessage if chunk.len() > 1 => {
                    one_by_one = true;
                    retry = chunk;
                }
                Disposition::RejectMessage => {
                    for m in &chunk {
                        reject(s, &m.event, &e.to_string()).await?;
                    }
                }
                Disposition::Fatal => {
                    return Err(format!(
                        "{} refused the request: {e} (the slot keeps the events; fix the destination or credentials and restart)",
                        s.dest.name()
                    ))
                }
            },
        }
        if !retry.is_empty() {
            attempt += 1;
            let delay = backoff::DELIVERY.delay(attempt);
            tracing::warn!(
                destination = %s.dest.name(),
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
    }
    Ok(keys)
}

/// A message refused for good: to the dead-letter queue, or a fatal error.
async fn reject<D: Destination, L: Destination>(
    s: &Shared<D, L>,
    event: &Arc<Event>,
    reason: &str,
) -> Result<(), String> {
    let Some(dlq) = &s.dead_letter else {
        return Err(format!(
            "{} refused the change {} of {} for good ({reason}) and no sink.dead_letter_queue_url is set; \
             the slot keeps the event: set a dead-letter queue or fix the cause, then restart",
            s.dest.name(),
            event.idempotency_key,
            event.table.qualified
        ));
    };
    tracing::warn!(
        table = %event.table.qualified,
        idempotency_key = %event.idempotency_key,
        reason,
        dead_letter_queue = %dlq.name(),
        "message refused for good; dead-lettering it"
    );
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
    };
    if m.size() > dlq.max_bytes() {
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
    let mut attempt = 0;
    loop {
        let err = match dlq.send_batch(std::slice::from_ref(&m)).await {
            Ok(f) if f.is_empty() => break,
            Ok(f) => {
                let f = &f[0];
                CallError {
                    code: Some(f.code.clone()),
                    status: None,
                    transport: false,
                    message: f.message.clone(),
                }
            }
            Err(e) => e,
        };
        if classify(err.code.as_deref(), err.status, err.transport, false, false)
            != Disposition::Retry
        {
            return Err(format!(
                "the dead-letter queue {} refused the change {} of {}: {err}; the slot keeps the event",
                dlq.name(),
                event.idempotency_key,
                event.table.qualified
            ));
        }
        attempt += 1;
        let delay = backoff::DELIVERY.delay(attempt);
        tracing::warn!(error = %err, dead_letter_queue = %dlq.name(), attempt, "dead-lettering failed; retrying");
        tokio::time::sleep(delay).await;
    }
    s.tracker.metrics().dead_lettered(event);
    s.tracker.accept(event.seq);
    s.permits.add_permits(weight(event) as usize);
    Ok(())
}

/// The region of a queue URL (`https://sqs.REGION.amazonaws.com/…`, the legacy
/// `https://REGION.queue.amazonaws.com/…`) or topic ARN (`arn:aws:sns:REGION:…`).
pub fn region_of(url_or_arn: &str) -> Option<String> {
    if let Some(rest) = url_or_arn.strip_prefix("arn:") {
        return rest
            .split(':')
            .nth(2)
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
    }
    let host = url::Url::parse(url_or_arn).ok()?.host_str()?.to_owned();
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        ["sqs", region, ..] if region.contains('-') => Some((*region).to_owned()),
        [region, "queue", ..] if region.contains('-') => Some((*region).to_owned()),
        _ => None,
    }
}

/// The AWS configuration for one destination: region (configured, else from the
/// URL/ARN, else `us-east-1` with an endpoint override), credentials (static
/// keys from the config, else the default chain), no SDK retries (ours decide).
pub async fn sdk_config(
    sink: &crate::config::SinkConfig,
    url_or_arn: &str,
) -> Result<aws_config::SdkConfig, SinkError> {
    let region = match (&sink.region, region_of(url_or_arn), &sink.endpoint_url) {
        (Some(r), _, _) => r.clone(),
        (None, Some(r), _) => r,
        (None, None, Some(_)) => "us-east-1".to_owned(),
        (None, None, None) => {
            return Err(SinkError::Fatal(format!(
                "cannot tell the AWS region of {url_or_arn}: set sink.region"
            )))
        }
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(ep) = &sink.endpoint_url {
        loader = loader.endpoint_url(ep);
    }
    if let (Some(id), Some(secret)) = (&sink.access_key_id, &sink.secret_access_key) {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id.clone(),
            secret.expose().to_owned(),
            None,
            None,
            "walcast-config",
        ));
    }
    Ok(loader.load().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use Disposition::*;
        let call = |c: &str, s: u16| classify(Some(c), Some(s), false, false, false);
        assert_eq!(classify(None, None, true, false, false), Retry);
        assert_eq!(call("ThrottlingException", 400), Retry);
        assert_eq!(call("AWS.SimpleQueueService.RequestThrottled", 403), Retry);
        assert_eq!(call("InternalError", 500), Retry);
        assert_eq!(call("Whatever", 503), Retry);
        assert_eq!(call("AWS.SimpleQueueService.NonExistentQueue", 400), Fatal);
        assert_eq!(call("QueueDoesNotExist", 400), Fatal);
        assert_eq!(call("NotFound", 404), Fatal);
        assert_eq!(call("AccessDenied", 403), Fatal);
        assert_eq!(call("InvalidMessageContents", 400), RejectMessage);
        assert_eq!(call("InvalidParameterValue", 400), RejectMessage);
        assert_eq!(call("SomethingNew", 400), Fatal);
        let entry = |c: &str, sf: bool| classify(Some(c), None, false, true, sf);
        assert_eq!(entry("InternalError", false), Retry);
        assert_eq!(entry("SomethingNew", false), Retry);
        assert_eq!(entry("SomethingNew", true), RejectMessage);
        assert_eq!(entry("InvalidParameterValue", true), RejectMessage);
    }

    /// A scripted destination (our trait, not AWS): fails each event's first
    /// attempt as given, records what it accepted, in order.
    #[derive(Default)]
    struct Script {
        /// seq → failure code of its first attempt (a whole call fails when the code starts with "call:").
        fail_first: Mutex<HashMap<u64, &'static str>>,
        accepted: Mutex<Vec<(String, u64)>>,
        calls: Mutex<Vec<usize>>,
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
        async fn send_batch(&self, batch: &[Message]) -> Result<Vec<EntryFailure>, CallError> {
            self.calls.lock().expect("lock").push(batch.len());
            let mut fail = self.fail_first.lock().expect("lock");
            for m in batch {
                if let Some(code) = fail.get(&m.event.seq) {
                    if let Some(code) = code.strip_prefix("call:") {
                        fail.remove(&m.event.seq);
                        return Err(CallError {
                            code: Some(code.into()),
                            status: Some(400),
                            transport: false,
                            message: "scripted".into(),
                        });
                    }
                }
            }
            let mut failures = Vec::new();
            let mut acc = self.accepted.lock().expect("lock");
            for (i, m) in batch.iter().enumerate() {
                match fail.remove(&m.event.seq) {
                    Some(code) => failures.push(EntryFailure {
                        index: i,
                        code: code.into(),
                        message: "scripted".into(),
                        sender_fault: code != "InternalError",
                    }),
                    None => acc.push((
                        m.event.group_id.clone(),
                        m.body.as_ref().map_or(m.event.seq, |_| u64::MAX),
                    )),
                }
            }
            Ok(failures)
        }
    }

    fn event(seq: u64, group: &str, payload_len: usize) -> Event {
        let table = Arc::new(crate::event::Table::new(
            1,
            "public".into(),
            "t".into(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ));
        Event {
            seq,
            commit_lsn: 1,
            commit_idx: seq,
            commit_time_micros: 0,
            action: change_event::Action::Insert,
            table,
            group_id: group.into(),
            idempotency_key: format!("k{seq}"),
            payload: "x".repeat(payload_len),
        }
    }

    async fn run_script(
        script: &Arc<Script>,
        dlq: Option<Arc<Script>>,
        events: Vec<Event>,
    ) -> Tracker {
        let tracker = Tracker::new(0);
        let mut sink = AwsSink::start(Arc::clone(script), dlq, tracker.clone());
        for e in events {
            assert_eq!(tracker.register(), e.seq);
            sink.send(e).await.expect("send");
        }
        sink.flush().await.expect("flush");
        tokio::time::timeout(Duration::from_secs(20), tracker.drained())
            .await
            .expect("all accepted");
        tracker
    }

    #[tokio::test]
    async fn partial_failures_are_retried_without_reordering_a_group() {
        let script = Arc::new(Script::default());
        script.fail_first.lock().expect("lock").extend([
            (0, "InternalError"),
            (5, "InternalError"),
            (7, "call:ThrottlingException"),
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
        let script = Arc::new(Script::default());
        let dlq = Arc::new(Script::default());
        script.fail_first.lock().expect("lock").extend([
            (2, "InvalidParameterValue"),
            (4, "call:InvalidMessageContents"),
        ]);
        // seq 6 is over the 1000-byte limit: refused up front.
        let events = (0..10)
            .map(|i| event(i, "g", if i == 6 { 2000 } else { 10 }))
            .collect();
        run_script(&script, Some(Arc::clone(&dlq)), events).await;
        let acc: Vec<u64> = script
            .accepted
            .lock()
            .expect("lock")
            .iter()
            .map(|x| x.1)
            .collect();
        assert_eq!(acc, [0, 1, 3, 5, 7, 8, 9]);
        assert_eq!(dlq.accepted.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn permanent_refusal_without_dead_letter_queue_is_fatal() {
        let script = Arc::new(Script::default());
        script
            .fail_first
            .lock()
            .expect("lock")
            .insert(1, "InvalidParameterValue");
        let tracker = Tracker::new(0);
        let mut sink = AwsSink::start(Arc::clone(&script), None::<Arc<Script>>, tracker.clone());
        let mut failed = None;
        for i in 0..200 {
            tracker.register();
            if let Err(e) = sink.send(event(i, "g", 10)).await {
                failed = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = failed.expect("the sink fails").to_string();
        assert!(e.contains("dead_letter_queue_url"), "{e}");
        let acc: Vec<u64> = script
            .accepted
            .lock()
            .expect("lock")
            .iter()
            .map(|x| x.1)
            .collect();
        assert_eq!(acc, [0], "nothing of the group after the refused event");
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

    #[test]
    fn regions() {
        let r = |s: &str| region_of(s);
        assert_eq!(
            r("https://sqs.eu-west-1.amazonaws.com/123/q.fifo").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            r("https://us-east-2.queue.amazonaws.com/123/q").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(
            r("arn:aws:sns:ap-south-1:123:t.fifo").as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(r("http://127.0.0.1:4566/000000000000/q"), None);
    }
}
