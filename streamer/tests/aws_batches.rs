//! The sink's partial-failure rule against the emulator: a FIFO queue of
//! fauxqs behind a [`Destination`] of ours that throttles calls, loses
//! answers after the queue took a batch, and fails entries (the SDK and the
//! queue are real; only which entries reach it is scripted). What the queue
//! holds is read back: per row in commit order, each change once, or (for a
//! group overtaken in a batch) the streamer stopped before sending the
//! failed change after its successor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use walcast_streamer::config::Config;
use walcast_streamer::pipeline::{self, PgConnector, Pipeline, PipelineError, Stopped};
use walcast_streamer::progress::Tracker;
use walcast_streamer::sink::{AwsSink, Destination, Entry, Fault, SqsQueue};

use crate::aws::{create_queue, receive, unique, Received};
use crate::support::emulator::Emulator;
use crate::support::{eventually, TestDb};
use crate::WAIT;

/// What a call of [`Scripted`] does, by its number (from 0).
#[derive(Clone, Copy)]
enum Plan {
    /// Calls `n % every == at` are throttled (nothing sent), answers of calls
    /// `n % every == lost` are lost after the queue took them, and in calls
    /// `n % every == fail` the first entry of the first group with two or more
    /// fails, with the rest of its group in that call (what a service that stops
    /// a group at its first failure does).
    Faults {
        every: usize,
        throttle: usize,
        lost: usize,
        fail: usize,
    },
    /// In the first call with two entries of a group, the first of them fails
    /// alone and the later one reaches the queue: the group is overtaken.
    Overtake,
}

/// A real queue behind scripted faults.
struct Scripted {
    queue: SqsQueue,
    plan: Plan,
    calls: AtomicUsize,
    /// Set once `Plan::Overtake` failed an entry (shared with the test).
    overtaken: Arc<AtomicBool>,
}

fn internal_error() -> Fault {
    Fault::Entry {
        code: "InternalError".into(),
        sender_fault: false,
        message: "scripted".into(),
    }
}

impl Scripted {
    /// Sends the entries not in `failed` to the queue (renumbered, as the
    /// sink numbers a batch) and answers with `failed` and the queue's own
    /// failures, by the caller's indices.
    async fn send_except(
        &self,
        entries: &[Entry<'_>],
        failed: Vec<usize>,
    ) -> Result<Vec<(usize, Fault)>, Fault> {
        let sent: Vec<usize> = (0..entries.len()).filter(|i| !failed.contains(i)).collect();
        let subset: Vec<Entry<'_>> = sent
            .iter()
            .enumerate()
            .map(|(n, &i)| Entry {
                id: n.to_string(),
                ..entries[i].clone()
            })
            .collect();
        let mut answer: Vec<(usize, Fault)> =
            failed.into_iter().map(|i| (i, internal_error())).collect();
        if !subset.is_empty() {
            for (n, fault) in self.queue.send_batch(&subset).await? {
                answer.push((sent[n], fault));
            }
        }
        Ok(answer)
    }

    /// The first group with two or more entries in `entries`: their indices.
    fn doubled_group(entries: &[Entry<'_>]) -> Option<Vec<usize>> {
        let mut by_group: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_group
                .entry(e.group_id.unwrap_or(""))
                .or_default()
                .push(i);
        }
        let mut doubled: Vec<Vec<usize>> = by_group.into_values().filter(|v| v.len() > 1).collect();
        doubled.sort();
        doubled.into_iter().next()
    }
}

impl Destination for Scripted {
    fn name(&self) -> &str {
        self.queue.name()
    }
    fn is_fifo(&self) -> bool {
        self.queue.is_fifo()
    }
    fn max_bytes(&self) -> usize {
        self.queue.max_bytes()
    }
    async fn send_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<(usize, Fault)>, Fault> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.plan {
            Plan::Faults {
                every,
                throttle,
                lost,
                fail,
            } => match n % every {
                k if k == throttle => Err(Fault::Call {
                    code: Some("AWS.SimpleQueueService.RequestThrottled".into()),
                    status: Some(403),
                    message: "scripted".into(),
                }),
                k if k == lost => {
                    self.queue.send_batch(entries).await?;
                    Err(Fault::Unreachable("timed out".into()))
                }
                k if k == fail => {
                    let failed = Self::doubled_group(entries)
                        .or_else(|| (!entries.is_empty()).then(|| vec![0]))
                        .unwrap_or_default();
                    self.send_except(entries, failed).await
                }
                _ => self.queue.send_batch(entries).await,
            },
            Plan::Overtake => match Self::doubled_group(entries) {
                // Only once: later calls go through.
                Some(group) if !self.overtaken.swap(true, Ordering::SeqCst) => {
                    self.send_except(entries, vec![group[0]]).await
                }
                _ => self.queue.send_batch(entries).await,
            },
        }
    }
}

/// The pipeline in this process, delivering through `plan` to the FIFO queue `url`.
struct Run {
    tracker: Tracker,
    overtaken: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<Stopped, PipelineError>>,
}

impl Run {
    async fn start(db: &TestDb, emu: &Emulator, url: &str, plan: Plan) -> Run {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let yaml = format!("  tables: [t]\n{}", emu.sink_yaml("sqs", url, ""));
        let config =
            Arc::new(Config::load(Some(&db.config_yaml(&yaml)), Vec::new()).expect("valid config"));
        let queue = SqsQueue::connect(&config.sinks[0], "sink.queue_url", url)
            .await
            .expect("queue");
        let slot = pipeline::setup(&config).await.expect("setup");
        let tracker = Tracker::new(slot.confirmed_flush_lsn);
        let overtaken = Arc::new(AtomicBool::new(false));
        let scripted = Scripted {
            queue,
            plan,
            calls: AtomicUsize::new(0),
            overtaken: Arc::clone(&overtaken),
        };
        let sink = AwsSink::start(scripted, None::<SqsQueue>, None, tracker.clone());
        let (stop, rx) = oneshot::channel::<()>();
        let p = Pipeline::new(
            Arc::clone(&config),
            PgConnector::new(&config),
            sink,
            tracker.clone(),
        );
        let handle = tokio::spawn(p.run(async {
            let _ = rx.await;
        }));
        Run {
            tracker,
            overtaken,
            stop: Some(stop),
            handle,
        }
    }

    async fn end(mut self) -> Result<Stopped, PipelineError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("pipeline stops")
            .expect("pipeline task")
    }
}

/// (id, v) of each received change of `t`, in the order received.
fn rows(got: &[Received]) -> Vec<(i64, i64)> {
    got.iter()
        .map(|m| {
            let e: Value = serde_json::from_str(&m.body).expect("a change event");
            let col = |c: &str| e["record"][c].as_i64().expect("int column");
            (col("id"), col("v"))
        })
        .collect()
}

/// Hot rows and distinct rows through throttled calls, lost answers and
/// entries that fail with the rest of their group: per row, every value once,
/// in commit order.
#[tokio::test]
async fn fifo_order_holds_through_throttling_lost_answers_and_partial_failures() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("batches"))).await;
    let db = TestDb::new("aws_batches").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
        .await;
    let plan = Plan::Faults {
        every: 5,
        throttle: 1,
        lost: 2,
        fail: 3,
    };
    let run = Run::start(&db, emu, &url, plan).await;
    const HOT: i64 = 5;
    const UPDATES: i64 = 400;
    const DISTINCT: i64 = 200;
    db.exec(&format!(
        "INSERT INTO t SELECT g, 0 FROM generate_series(1, {HOT}) g"
    ))
    .await;
    // One transaction: the hot rows' changes queue up together, ten to a batch.
    db.exec(&format!(
        "DO $$ BEGIN FOR i IN 1..{UPDATES} LOOP UPDATE t SET v = v + 1 WHERE id = 1 + i % {HOT}; END LOOP; END $$"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO t SELECT g, 0 FROM generate_series(100, {}) g",
        99 + DISTINCT
    ))
    .await;
    let total = (HOT + UPDATES + DISTINCT) as usize;
    let got = rows(&receive(&sqs, &url, total).await);
    assert_eq!(got.len(), total, "every change exactly once");
    let mut last: HashMap<i64, i64> = HashMap::new();
    for (id, v) in got {
        let expect = last.get(&id).map_or(0, |v| v + 1);
        assert_eq!(v, expect, "row {id}: out of order or twice");
        last.insert(id, v);
    }
    assert_eq!(last.values().sum::<i64>(), UPDATES);
    let (_, current) = db.slot_lsns(&format!("s_{}", db.name)).await;
    eventually(WAIT, || async { run.tracker.confirmable() >= current }).await;
    run.end().await.expect("pipeline ends cleanly");
    db.drop_db().await;
}

/// A batch whose first entry of a hot row fails while the row's next change
/// reaches the queue: the streamer stops with the reason, and the failed
/// change never reaches the queue after its successor.
#[tokio::test]
async fn fifo_group_overtaken_in_a_batch_stops_the_streamer() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let (url, _) = create_queue(&sqs, &format!("{}.fifo", unique("overtaken"))).await;
    let db = TestDb::new("aws_overtaken").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
        .await;
    let run = Run::start(&db, emu, &url, Plan::Overtake).await;
    db.exec("INSERT INTO t VALUES (1, 0)").await;
    // The insert alone first; then the updates, which queue up together.
    let lsn = db.insert_lsn().await;
    eventually(WAIT, || async { run.tracker.confirmable() >= lsn }).await;
    db.exec(
        "DO $$ BEGIN FOR i IN 1..30 LOOP UPDATE t SET v = v + 1 WHERE id = 1; END LOOP; END $$",
    )
    .await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            if run.handle.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        run.overtaken.load(Ordering::SeqCst),
        "no batch carried two changes of the row (nothing to overtake)"
    );
    assert!(ended.is_ok(), "the streamer stopped by itself");
    let error = run
        .end()
        .await
        .expect_err("stopped with an error")
        .to_string();
    assert!(error.contains("holds that group out of order"), "{error}");
    // Everything that reached the queue, in the queue's order: one gap, never filled.
    let got = rows(&receive(&sqs, &url, 0).await);
    let values: Vec<i64> = got.iter().map(|r| r.1).collect();
    let mut sorted = values.clone();
    sorted.sort_unstable();
    assert_eq!(
        values, sorted,
        "nothing sent after its successor: {values:?}"
    );
    let gaps = values.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(gaps, 1, "exactly the failed change is missing: {values:?}");
    db.drop_db().await;
}
