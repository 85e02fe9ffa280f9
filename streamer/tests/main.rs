//! Integration tests against a real Postgres (15 by default, any of 14 to 18 with
//! `WALCAST_PG_VERSION`; see `support`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use change_event::{Action, ChangeEvent};
use serde_json::Value;
use support::{eventually, TestDb};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use walcast_streamer::backfill;
use walcast_streamer::config::Config;
use walcast_streamer::pipeline::{self, PgConnector, Pipeline, PipelineError, Stopped};
use walcast_streamer::progress::Tracker;
use walcast_streamer::sink::MemorySink;

mod aws;
mod aws_batches;
mod backfill_tests;
mod binary;
mod faults;
mod large;
mod shaping;
mod sinks;
mod streaming;
mod tls;
mod types;
mod versions;

const WAIT: Duration = Duration::from_secs(60);

/// The pipeline running in this process with a memory sink.
pub struct Running {
    pub sink: MemorySink,
    pub tracker: Tracker,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<Stopped, PipelineError>>,
    driver: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Running {
    pub async fn start(db: &TestDb, extra_yaml: &str) -> Running {
        Running::start_yaml(&db.config_yaml(extra_yaml)).await
    }

    pub async fn start_yaml(yaml: &str) -> Running {
        let config = Arc::new(Config::load(Some(yaml), Vec::new()).expect("valid config"));
        let slot = pipeline::setup(&config).await.expect("setup");
        let tracker = Tracker::new(slot.confirmed_flush_lsn);
        let sink = MemorySink::new(tracker.clone());
        let (stop, rx) = oneshot::channel::<()>();
        let coordinator = backfill::Coordinator::new();
        let driver = tokio::spawn(backfill::drive(
            Arc::clone(&config),
            coordinator.clone(),
            tracker.clone(),
        ));
        let pipeline = Pipeline::new(
            Arc::clone(&config),
            PgConnector::new(&config),
            sink.clone(),
            tracker.clone(),
        )
        .with_backfills(coordinator);
        let handle = tokio::spawn(pipeline.run(async {
            let _ = rx.await;
        }));
        Running {
            sink,
            tracker,
            stop: Some(stop),
            handle,
            driver,
        }
    }

    /// Waits for at least `n` events and returns them all, parsed.
    pub async fn events(&self, n: usize) -> Vec<ChangeEvent> {
        eventually(WAIT, || async { self.sink.events().len() >= n }).await;
        self.sink
            .events()
            .iter()
            .map(|e| serde_json::from_str(&e.payload).expect("event JSON matches the model"))
            .collect()
    }

    /// Waits for the pipeline to stop on its own with an error; returns the message.
    pub async fn failure(&mut self) -> String {
        match tokio::time::timeout(WAIT, &mut self.handle).await {
            Ok(Ok(Err(e))) => e.to_string(),
            other => panic!("expected the pipeline to fail, got {other:?}"),
        }
    }

    pub async fn stop(mut self) -> Stopped {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("pipeline stops")
            .expect("pipeline task")
            .expect("pipeline ends cleanly")
    }
}

pub fn record(e: &ChangeEvent) -> &serde_json::Map<String, Value> {
    e.record.as_object().expect("record is an object")
}

pub fn actions(events: &[ChangeEvent]) -> Vec<Action> {
    events.iter().map(|e| e.action).collect()
}
