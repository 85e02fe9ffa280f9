//! The pipeline: slot → decoder → events → sink, with progress confirmed
//! back to Postgres only for what the sink accepted.
//!
//! One session is one replication connection. A transient error ends the
//! session: the sink is drained (what it holds is delivered), and a new
//! session resumes from the slot after a capped, fully jittered backoff
//! ([`backoff::RECONNECT`]). A definite error, or the shutdown signal, ends
//! the run.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backfill::Coordinator;
use crate::backoff;
use crate::config::Config;
use crate::event::{self, EventBuilder, RowChange, Table, Transaction};
use crate::fanout::{Lane, Outlets, Verdict};
use crate::heartbeat;
use crate::progress::Tracker;
use crate::replication::{
    self, format_lsn, Catalog, ConnectInfo, Datum, PgOutput, RelationInfo, ReplicationError,
    SlotState, Tuple, WalMessage, WalStream,
};
use crate::sink::{Sink, SinkError};

/// Logical message prefixes that set and clear transaction annotations (Sequin's).
pub const ANNOTATIONS_SET: &str = "sequin:transaction_annotations.set";
/// See [`ANNOTATIONS_SET`].
pub const ANNOTATIONS_CLEAR: &str = "sequin:transaction_annotations.clear";

/// Rows of a backfill chunk built and sent together (on two threads).
const READ_BLOCK: usize = 4096;

/// Why the run stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading the slot failed for good.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The sink failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// One of several sinks failed for good.
    #[error("sink `{sink}`: {error}")]
    Lane {
        /// The sink's name.
        sink: String,
        /// Why.
        error: SinkError,
    },
}

/// A sink's failure: named when the streamer has several.
fn lane_error(lanes: usize, name: &str, error: SinkError) -> PipelineError {
    if lanes > 1 {
        PipelineError::Lane {
            sink: name.to_owned(),
            error,
        }
    } else {
        PipelineError::Sink(error)
    }
}

/// Opens replication sessions (a trait so tests can script the stream).
pub trait Connector: Send + Sync {
    /// The stream type.
    type Stream: WalStream;
    /// Opens a stream at the slot's confirmed position; `ack_lsn` is what we have confirmed.
    fn connect(
        &self,
        ack_lsn: u64,
    ) -> impl Future<Output = Result<Self::Stream, ReplicationError>> + Send;
}

/// Connects with pgwire-replication.
pub struct PgConnector {
    info: ConnectInfo,
    slot: String,
    publication: String,
}

impl PgConnector {
    /// From the configuration.
    pub fn new(config: &Config) -> Self {
        PgConnector {
            info: ConnectInfo::from_config(&config.postgres()),
            slot: config.source.slot.clone(),
            publication: config.source.publication.clone(),
        }
    }
}

impl Connector for PgConnector {
    type Stream = replication::PgwireStream;
    async fn connect(&self, ack_lsn: u64) -> Result<Self::Stream, ReplicationError> {
        replication::connect(&self.info, &self.slot, &self.publication, ack_lsn).await
    }
}

/// Idempotent setup: creates the publication and the slot when missing.
/// Returns the slot's state (where streaming resumes).
pub async fn setup(config: &Config) -> Result<SlotState, ReplicationError> {
    let catalog = Catalog::connect(&config.postgres(), &config.source.slot).await?;
    catalog.preflight().await?;
    let publication = &config.source.publication;
    catalog
        .ensure_publication(publication, &config.tables())
        .await?;
    let tables = catalog.published(publication).await?;
    for warning in catalog.stream_warnings(publication, &tables).await? {
        tracing::warn!("{warning}");
    }
    catalog
        .ensure_slot(&config.source.slot, config.source.failover_slot)
        .await
}

/// How the shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The LSN confirmed last.
    pub confirmed: u64,
}

/// The pipeline.
pub struct Pipeline<S: Sink, C: Connector> {
    config: Arc<Config>,
    connector: C,
    /// The sinks, each with its selection, shaping and destinations.
    lanes: Vec<Lane<S>>,
    tracker: Tracker,
    /// Backfills: watermarks seen in the stream, and chunks to send at them.
    backfills: Option<Coordinator>,
    /// How long a shutdown waits for the sink to deliver what it holds.
    pub drain_timeout: Duration,
}

enum SessionEnd {
    Shutdown,
}

/// What one replication session knows.
#[derive(Default)]
struct Session {
    /// Tables by relation OID, as the stream last described them.
    relations: HashMap<u32, Arc<Table>>,
    /// The open transaction.
    tx: Option<Transaction>,
    /// Its id.
    xid: u32,
    /// Events went to the sink since its last flush.
    unflushed: bool,
    /// When the sink was last flushed for a quiet stream.
    flushed_at: Option<tokio::time::Instant>,
}

/// How long a quiet stream's events may wait for more before the sink is flushed:
/// many small transactions then go out together instead of one flush each, and a
/// lone change waits at most this long (none when the last flush is older).
const FLUSH_LINGER: Duration = Duration::from_millis(1);

/// Awaits `work` unless `shutdown` resolves first (then `None`).
async fn unless<T>(
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = shutdown.as_mut() => None,
        r = work => Some(r),
    }
}

impl<S: Sink, C: Connector> Pipeline<S, C> {
    /// A pipeline with the one sink of `config` (`sink:`, or the first of `sinks:`).
    /// `tracker` is the one the sink reports to, started at the slot's confirmed LSN.
    pub fn new(config: Arc<Config>, connector: C, sink: S, tracker: Tracker) -> Self {
        let lane = Lane::new(
            &config.sinks[0],
            true,
            &database_meta(&config),
            Outlets::single(sink),
            Arc::clone(tracker.metrics()),
        )
        .expect("the sink's settings were checked when the configuration was loaded");
        Self::with_lanes(config, connector, vec![lane], tracker)
    }

    /// A pipeline feeding `lanes` (one per configured sink, in order).
    pub fn with_lanes(
        config: Arc<Config>,
        connector: C,
        lanes: Vec<Lane<S>>,
        tracker: Tracker,
    ) -> Self {
        Pipeline {
            config,
            connector,
            lanes,
            tracker,
            backfills: None,
            drain_timeout: Duration::from_secs(60),
        }
    }

    /// Hands what every sink buffers to delivery.
    async fn flush(&mut self) -> Result<(), PipelineError> {
        let n = self.lanes.len();
        for lane in &mut self.lanes {
            lane.flush()
                .await
                .map_err(|e| lane_error(n, &lane.name, e))?;
        }
        Ok(())
    }

    /// Sends backfill chunks at their watermarks (the driver runs beside the pipeline,
    /// see [`crate::backfill`]).
    pub fn with_backfills(mut self, coordinator: Coordinator) -> Self {
        self.backfills = Some(coordinator);
        self
    }

    /// Runs until `shutdown` resolves (then drains and confirms) or a definite error.
    ///
    /// Nothing the pipeline waits on (the stream, a full sink, a blocked
    /// stdout) keeps it from seeing `shutdown`: every wait races it.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Stopped, PipelineError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = 0u32;
        loop {
            let began = tokio::time::Instant::now();
            let ended = self.session(&mut shutdown).await;
            // A session that streamed for a while starts the backoff over.
            if began.elapsed() > Duration::from_secs(60) {
                failures = 0;
            }
            match ended {
                Ok(SessionEnd::Shutdown) => {
                    return Ok(Stopped {
                        confirmed: self.tracker.confirmable(),
                    })
                }
                Err(PipelineError::Replication(e)) if e.is_transient() => {
                    self.tracker.metrics().set_connected(false);
                    failures += 1;
                    let delay = backoff::RECONNECT.delay(failures);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "replication interrupted; reconnecting");
                    // Deliver what the sink holds before the slot sends it again.
                    let waited = unless(&mut shutdown, async {
                        self.flush().await?;
                        tokio::time::sleep(delay).await;
                        Ok::<_, PipelineError>(())
                    })
                    .await;
                    match waited {
                        Some(r) => r?,
                        None => {
                            self.drain().await;
                            return Ok(Stopped {
                                confirmed: self.tracker.confirmable(),
                            });
                        }
                    }
                }
                Err(e) => {
                    let metrics = self.tracker.metrics();
                    metrics.set_connected(false);
                    match &e {
                        PipelineError::Sink(s) => metrics.set_sink_error(&s.to_string()),
                        PipelineError::Lane { sink, error } => {
                            if let Some(lane) = self.lanes.iter().find(|l| l.name == *sink) {
                                lane.metrics().set_sink_error(&error.to_string());
                            }
                        }
                        PipelineError::Replication(_) => {}
                    }
                    return Err(e);
                }
            }
        }
    }

    /// At the end of the run: delivers what the sink holds and closes it,
    /// waiting at most `drain_timeout`; whether all was accepted.
    async fn drain(&mut self) -> bool {
        let drained = tokio::time::timeout(self.drain_timeout, async {
            self.flush().await?;
            self.tracker.drained().await;
            let n = self.lanes.len();
            for lane in &mut self.lanes {
                lane.close()
                    .await
                    .map_err(|e| lane_error(n, &lane.name, e))?;
            }
            Ok::<_, PipelineError>(())
        })
        .await;
        match drained {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sink failed while draining");
                false
            }
            Err(_) => {
                tracing::warn!(
                    timeout_s = self.drain_timeout.as_secs(),
                    "drain timed out: the events not yet accepted are not confirmed, and are sent again at the next start"
                );
                false
            }
        }
    }

    /// Ends a session on shutdown: drain, confirm, close.
    async fn stop(
        &mut self,
        stream: C::Stream,
        catalog: &Catalog,
    ) -> Result<SessionEnd, PipelineError> {
        let mut stream = stream;
        let drained = self.drain().await;
        let slot = &self.config.source.slot;
        let lsn = self.tracker.confirmable();
        stream.confirm(lsn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while stream.confirm_pending() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stream.close().await;
        // If the last status update did not make it, move the slot ourselves.
        if let Ok(Some((at, false))) = catalog.slot_position(slot).await {
            if at < lsn {
                let _ = catalog.advance_slot(slot, lsn).await;
            }
        }
        tracing::info!(confirmed = %format_lsn(lsn), drained, "stopped");
        Ok(SessionEnd::Shutdown)
    }

    async fn session(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<SessionEnd, PipelineError> {
        let slot = self.config.source.slot.clone();
        let mut catalog = Catalog::connect(&self.config.postgres(), &slot).await?;
        // Postgres starts at the higher of this and the slot's confirmed_flush_lsn: after
        // a server restart the slot may be behind what we confirmed (it is saved at
        // checkpoints), and what we confirmed must not be sent again.
        let mut stream = self.connector.connect(self.tracker.confirmable()).await?;
        let metrics = std::sync::Arc::clone(self.tracker.metrics());
        metrics.set_connected(true);
        self.tracker.reset_transaction();
        tracing::info!(slot = %slot, confirmed = %format_lsn(self.tracker.confirmable()), "streaming");
        let mut state = Session::default();
        let mut confirm_rx = self.tracker.subscribe();

        'stream: loop {
            // Take what is ready; when nothing is, flush the sink before waiting.
            let msg = match tokio::time::timeout(Duration::ZERO, stream.recv()).await {
                Ok(msg) => msg,
                Err(_) => 'quiet: {
                    if state.unflushed {
                        let since = state.flushed_at.map_or(FLUSH_LINGER, |t| t.elapsed());
                        if since < FLUSH_LINGER {
                            if let Ok(msg) =
                                tokio::time::timeout(FLUSH_LINGER - since, stream.recv()).await
                            {
                                break 'quiet msg;
                            }
                        }
                        match unless(shutdown, self.flush()).await {
                            Some(r) => r?,
                            None => return self.stop(stream, &catalog).await,
                        }
                        state.unflushed = false;
                        state.flushed_at = Some(tokio::time::Instant::now());
                    }
                    let waited = tokio::select! {
                        biased;
                        _ = shutdown.as_mut() => None,
                        _ = confirm_rx.changed() => {
                            stream.confirm(*confirm_rx.borrow_and_update());
                            continue 'stream;
                        }
                        // A sink that fails while the stream is quiet must still stop the run.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {
                            state.unflushed = true;
                            continue 'stream;
                        }
                        msg = stream.recv() => Some(msg),
                    };
                    match waited {
                        Some(msg) => msg,
                        None => return self.stop(stream, &catalog).await,
                    }
                }
            };
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => return Err(self.explain(e, &state, &catalog).await.into()),
            };
            match unless(shutdown, self.handle(msg, &mut state, &mut catalog)).await {
                Some(r) => r?,
                None => return self.stop(stream, &catalog).await,
            }
        }
    }

    /// Adds what only the catalog can tell to a replication error.
    async fn explain(
        &self,
        e: ReplicationError,
        state: &Session,
        catalog: &Catalog,
    ) -> ReplicationError {
        match &e {
            ReplicationError::Definite(m) if m.contains("SQLSTATE 22021") => {
                let at = state.tx.as_ref().map(|t| t.commit_lsn);
                catalog
                    .explain_encoding_error(
                        &self.config.source.slot,
                        &self.config.source.publication,
                        at,
                    )
                    .await
                    .unwrap_or(e)
            }
            _ => e,
        }
    }

    /// One message of the stream.
    async fn handle(
        &mut self,
        msg: WalMessage,
        state: &mut Session,
        catalog: &mut Catalog,
    ) -> Result<(), PipelineError> {
        match msg {
            WalMessage::Begin {
                final_lsn,
                xid,
                commit_time,
            } => {
                self.tracker.begin();
                state.xid = xid;
                state.tx = Some(Transaction::begin(final_lsn, commit_time));
            }
            WalMessage::Commit { end_lsn } => {
                state.tx = None;
                self.tracker.commit(end_lsn);
            }
            WalMessage::KeepAlive { wal_end } => {
                if state.tx.is_none() && !state.unflushed {
                    self.tracker.idle(wal_end);
                }
            }
            WalMessage::Message {
                transactional,
                prefix,
                content,
            } => {
                if transactional {
                    self.message(state, &prefix, &content).await?;
                } else if prefix == heartbeat::PREFIX {
                    // No event: only its age, for /metrics.
                    if let Some(sent) = heartbeat::sent_at(&content) {
                        self.tracker.metrics().heartbeat_seen(sent);
                    }
                }
            }
            WalMessage::Data(data) => {
                let decoded = replication::decode(&data).map_err(|e| {
                    ReplicationError::Definite(format!("{e} (please report this as a bug)"))
                })?;
                let change = match &decoded {
                    PgOutput::Relation {
                        id,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    } => {
                        let relation = RelationInfo {
                            schema: namespace,
                            name,
                            replica_identity: *replica_identity,
                            columns,
                        };
                        let config = &self.config;
                        let table = catalog
                            .table(*id, relation, |s, t| config.group_columns(s, t))
                            .await?;
                        tracing::debug!(table = %table.qualified, columns = table.columns.len(), "relation");
                        state.relations.insert(*id, Arc::new(table));
                        None
                    }
                    PgOutput::Insert { relation, new } => Some((*relation, RowChange::Insert(new))),
                    PgOutput::Update { relation, old, new } => {
                        Some((*relation, RowChange::Update(old.as_ref(), new)))
                    }
                    PgOutput::Delete { relation, old } => Some((*relation, RowChange::Delete(old))),
                    PgOutput::Truncate {
                        relations: rels, ..
                    } => {
                        let names: Vec<&str> = rels
                            .iter()
                            .filter_map(|r| state.relations.get(r).map(|t| t.qualified.as_str()))
                            .collect();
                        tracing::warn!(tables = ?names, "TRUNCATE is not streamed as events: consumers keep the rows they had");
                        self.tracker.metrics().truncate();
                        None
                    }
                    PgOutput::Message {
                        transactional: true,
                        prefix,
                        content,
                        ..
                    } => {
                        self.message(state, prefix, content).await?;
                        None
                    }
                    PgOutput::Message { .. } => None,
                    PgOutput::Begin { .. }
                    | PgOutput::Commit { .. }
                    | PgOutput::Origin { .. }
                    | PgOutput::Type { .. } => None,
                };
                if let Some((relation, change)) = change {
                    self.emit(
                        &state.relations,
                        state.tx.as_mut(),
                        state.xid,
                        relation,
                        change,
                    )
                    .await?;
                    state.unflushed = true;
                }
            }
        }
        Ok(())
    }

    /// A transactional logical message: annotations, or a backfill watermark.
    async fn message(
        &mut self,
        state: &mut Session,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), PipelineError> {
        let Some(tx) = state.tx.as_mut() else {
            return Ok(());
        };
        if !prefix.starts_with("walcast.backfill.") {
            annotate(tx, prefix, content);
            return Ok(());
        }
        let Some(coordinator) = self.backfills.clone() else {
            return Ok(());
        };
        let Some(due) = coordinator.watermark(prefix, content) else {
            return Ok(());
        };
        let crate::backfill::Due { chunk, changed } = due;
        // The chunk's reads go out here, at the high watermark, in stream order with
        // every change; rows changed by transactions the read did not see are left
        // to their changes.
        let at = chunk.read_at(tx.commit_lsn);
        let mark = chunk.mark;
        let table = Arc::clone(&chunk.table);
        let rows = Arc::new(chunk.rows);
        let n = rows.len();
        // The sinks that take the table's reads, with how each sees the table.
        let mut views = Vec::new();
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            if !lane.takes(change_event::Action::Read) {
                continue;
            }
            if let Some(view) = lane.view(&table).map_err(ReplicationError::Definite)? {
                views.push((k, view));
            }
        }
        let lanes = self.lanes.len();
        let mut sent = 0u64;
        // Built and sent a block at a time: a block's events stay in cache and the
        // memory a chunk needs is its rows and two blocks, not every event of it.
        // The next block is built (off the runtime) while this one is sent.
        let builders: Arc<Vec<(EventBuilder, Arc<event::View>)>> = Arc::new(
            views
                .iter()
                .map(|(k, view)| (self.lanes[*k].builder().clone(), view.clone()))
                .collect(),
        );
        let build = |block: std::ops::Range<usize>| {
            let (builders, table, rows, at) = (
                Arc::clone(&builders),
                Arc::clone(&table),
                Arc::clone(&rows),
                at.clone(),
            );
            tokio::task::spawn_blocking(move || {
                builders
                    .iter()
                    .map(|(builder, view)| {
                        build_reads(builder, &table, &rows, block.clone(), &at, view)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        };
        let block_at = |start: usize| start..n.min(start + READ_BLOCK);
        let mut next = (n > 0 && !views.is_empty()).then(|| build(block_at(0)));
        let mut start = 0;
        while let Some(building) = next.take() {
            let block = block_at(start);
            start = block.end;
            if start < n {
                next = Some(build(block_at(start)));
            }
            let built_all = building
                .await
                .map_err(|e| {
                    ReplicationError::Definite(format!("backfill: building a chunk failed: {e}"))
                })?
                .map_err(|e| ReplicationError::Definite(format!("backfill: {e}")))?;
            // Per sink: the verdicts of the rows it takes, each with its row's index
            // in the block until the row's sequence number replaces it.
            let mut per_lane: Vec<(usize, Vec<(u64, Verdict)>)> = Vec::with_capacity(views.len());
            for (j, ((k, _), built)) in views.iter().zip(built_all).enumerate() {
                let lane = &self.lanes[*k];
                if built.len() != block.len() {
                    return Err(ReplicationError::Definite(
                        "backfill: building a chunk failed".into(),
                    )
                    .into());
                }
                if j == 0 {
                    self.tracker.metrics().received_n(
                        &table.qualified,
                        change_event::Action::Read,
                        built.len() as u64,
                    );
                }
                let mut verdicts = Vec::with_capacity(built.len());
                for (i, event) in built.into_iter().enumerate() {
                    if changed.contains(&event.pks) {
                        continue;
                    }
                    if let Some(v) = lane.verdict(event).map_err(ReplicationError::Definite)? {
                        verdicts.push((i as u64, v));
                    }
                }
                per_lane.push((*k, verdicts));
            }
            // Sequence numbers in row order (a row's is shared by the sinks taking
            // it), then each sink's events of the block in one call.
            let mut takers = vec![0u32; block.len()];
            for (_, verdicts) in &per_lane {
                for (i, _) in verdicts {
                    takers[*i as usize] += 1;
                }
            }
            let first = self
                .tracker
                .register_each(takers.iter().copied().filter(|&t| t > 0));
            let mut next = first;
            let seqs: Vec<u64> = takers
                .iter()
                .map(|&t| {
                    next += u64::from(t > 0);
                    next - 1
                })
                .collect();
            sent += next - first;
            for (k, mut verdicts) in per_lane {
                for v in &mut verdicts {
                    v.0 = seqs[v.0 as usize];
                }
                let lane = &mut self.lanes[k];
                lane.send_all(verdicts)
                    .await
                    .map_err(|e| lane_error(lanes, &lane.name, e))?;
            }
        }
        state.unflushed = true;
        coordinator.emitted(mark, tx.commit_lsn, sent);
        Ok(())
    }

    async fn emit(
        &mut self,
        relations: &HashMap<u32, Arc<Table>>,
        tx: Option<&mut Transaction>,
        xid: u32,
        relation: u32,
        change: RowChange<'_>,
    ) -> Result<(), PipelineError> {
        let tx = tx.ok_or_else(|| {
            ReplicationError::Definite("a change arrived outside a transaction".into())
        })?;
        let table = relations.get(&relation).ok_or_else(|| {
            ReplicationError::Definite(format!(
                "a change for relation {relation} arrived before its Relation message"
            ))
        })?;
        // The streamer's own bookkeeping (a FOR ALL TABLES publication includes it).
        if table.schema == crate::backfill::SCHEMA {
            return Ok(());
        }
        // An update that changed the key also changed the row under the old key.
        let old_key = match (&self.backfills, &change) {
            (Some(_), RowChange::Update(Some(old), _)) => Some(
                event::key_json(table, old.tuple())
                    .map_err(|e| ReplicationError::Definite(e.to_string()))?,
            ),
            _ => None,
        };
        let action = change.action();
        let idx = tx.take_idx();
        let mut verdicts: Vec<(usize, Verdict)> = Vec::with_capacity(self.lanes.len());
        let (mut pks, mut built) = (None, false);
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            if !lane.takes(action) {
                continue;
            }
            let Some(view) = lane.view(table).map_err(ReplicationError::Definite)? else {
                continue;
            };
            let event = lane
                .build(tx, idx, table, change, &view)
                .map_err(|e| ReplicationError::Definite(e.to_string()))?;
            if !built {
                built = true;
                self.tracker.metrics().received(&event);
                // The backfills' log needs the row's key (a sink's own build has it).
                if self.backfills.is_some() {
                    pks = Some(event.pks.clone());
                }
            }
            if let Some(v) = lane.verdict(event).map_err(ReplicationError::Definite)? {
                verdicts.push((k, v));
            }
        }
        if let Some(coordinator) = &self.backfills {
            let pks = match pks {
                Some(p) => p,
                None => event::change_key(table, &change)
                    .map_err(|e| ReplicationError::Definite(e.to_string()))?,
            };
            coordinator.changed(&table.qualified, xid, &pks);
            if let Some(old) = old_key.filter(|k| *k != pks) {
                coordinator.changed(&table.qualified, xid, &old);
            }
        }
        if verdicts.is_empty() {
            return Ok(());
        }
        let seq = self.tracker.register_for(verdicts.len() as u32);
        let lanes = self.lanes.len();
        for (k, v) in verdicts {
            let lane = &mut self.lanes[k];
            lane.send(seq, v)
                .await
                .map_err(|e| lane_error(lanes, &lane.name, e))?;
        }
        Ok(())
    }
}

/// The `read` events of a block of a chunk's rows as one sink sees them; on two
/// threads for a large block (building is the costly part of a chunk).
fn build_reads(
    builder: &EventBuilder,
    table: &Arc<Table>,
    rows: &crate::backfill::Rows,
    block: std::ops::Range<usize>,
    at: &event::ReadAt,
    view: &event::View,
) -> Result<Vec<event::Event>, event::EventError> {
    let build = |range: std::ops::Range<usize>| -> Result<Vec<event::Event>, event::EventError> {
        let mut tuple: Tuple<'_> = Vec::with_capacity(table.columns.len());
        // One UTF-8 check for the range's text, not one per value.
        let text = rows.text(range.clone());
        range
            .map(|i| {
                tuple.clear();
                match &text {
                    Some(text) => tuple.extend(text.row(i)),
                    None => tuple.extend(rows.row(i).map(|v| v.map_or(Datum::Null, Datum::Text))),
                }
                builder.build_read(table, &tuple, at, i as u64, view)
            })
            .collect()
    };
    if block.len() < 1024 {
        return build(block);
    }
    let middle = block.start + block.len() / 2;
    std::thread::scope(|s| {
        let second = s.spawn(|| build(middle..block.end));
        let first = build(block.start..middle);
        let second = second.join().unwrap_or_else(|_| Ok(Vec::new()));
        first.and_then(|mut f| {
            f.extend(second?);
            Ok(f)
        })
    })
}

/// Applies a transaction-annotations message to the rest of the transaction.
fn annotate(tx: &mut Transaction, prefix: &str, content: &[u8]) {
    match prefix {
        ANNOTATIONS_SET => match serde_json::from_slice::<serde_json::Value>(content) {
            Ok(v) => tx.annotations = Some(v.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring transaction annotations that are not JSON")
            }
        },
        ANNOTATIONS_CLEAR => tx.annotations = None,
        _ => {}
    }
}

/// The source's metadata block.
pub fn database_meta(config: &Config) -> change_event::Database {
    let pg = config.postgres().config;
    let dbname = pg.get_dbname().unwrap_or("postgres").to_owned();
    let hostname = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".into(),
    };
    let name = config.source.name.clone().unwrap_or_else(|| dbname.clone());
    change_event::Database {
        id: config.source.id.clone().unwrap_or_else(|| name.clone()),
        name,
        annotations: config.source.annotations.clone(),
        database: dbname,
        hostname,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_set_and_clear() {
        let mut tx = Transaction::begin(1, 0);
        annotate(&mut tx, ANNOTATIONS_SET, br#"{"a": 1}"#);
        assert_eq!(tx.annotations.as_deref(), Some(r#"{"a":1}"#));
        annotate(&mut tx, ANNOTATIONS_SET, b"not json");
        assert_eq!(tx.annotations.as_deref(), Some(r#"{"a":1}"#));
        annotate(&mut tx, ANNOTATIONS_CLEAR, b"");
        assert_eq!(tx.annotations, None);
    }
}
