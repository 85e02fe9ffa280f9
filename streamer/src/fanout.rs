//! One slot, many sinks. Postgres decodes the WAL once; each change becomes
//! one event per sink that takes it (a *lane*): the sink's own tables, actions
//! and columns, its `metadata.consumer`, its FIFO group, then its `filter`,
//! `transform` and `route`.
//!
//! ```text
//!  change ─┬─▶ lane "orders-fifo": select → build (its columns) → filter/transform → route ─▶ queue A | queue B
//!          └─▶ lane "fanout":      select → build               → filter/transform         ─▶ topic
//!                    one sequence number for the change, accepted once every lane that took it has
//! ```
//!
//! **Progress.** A change gets one sequence number for all the lanes that take
//! it ([`Tracker::register_for`]); the LSN confirmed to Postgres is the lowest
//! that every sink has accepted, so a failing or slow sink holds the slot for
//! all (the WAL stays until it recovers). A change no lane takes is not
//! registered at all.
//!
//! **Errors.** A setting that cannot work with a table (an excluded key column,
//! a column that does not exist) stops the streamer with the setting's name,
//! before any event of that table goes out. An expression that fails on one event
//! (a runtime jq error, a route naming no destination) sends that event to the
//! sink's dead-letter queue with the reason, when one is set; otherwise the
//! streamer stops, naming the setting and the event's position (never a value).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use change_event::Action;
use globset::GlobMatcher;

use crate::config::{parse_table, table_glob, ColumnSelection, SinkConfig, SinkType};
use crate::event::{self, Event, EventBuilder, Table, View};
use crate::jq::{Input, Program, Shape, Shaped};
use crate::ops::Metrics;
use crate::progress::Tracker;
use crate::sink::{dead_letter_body, AwsSink, Destinations, Sink, SinkError, StdoutSink};

/// A per-table setting: `(schema, table)` and its value.
type PerTable<V> = Vec<((String, String), V)>;

/// The largest dead-letter body (SQS takes 1 MiB; room for the attributes).
const DEAD_LETTER_MAX: usize = 1024 * 1024 - 4096;

/// Where one lane's events go.
pub struct Outlets<S> {
    /// The sink's own queue, topic or stdout.
    pub main: S,
    /// The destinations `route` may name, by name.
    pub routes: BTreeMap<String, S>,
    /// The dead-letter queue for events an expression fails on.
    pub dead_letter: Option<S>,
}

impl<S> Outlets<S> {
    /// Only the sink's own destination.
    pub fn single(main: S) -> Self {
        Outlets {
            main,
            routes: BTreeMap::new(),
            dead_letter: None,
        }
    }
}

/// A sink's `tables`: the globs it includes (none: every table) and excludes.
#[derive(Debug, Default)]
struct TableGlobs {
    include: Vec<GlobMatcher>,
    exclude: Vec<GlobMatcher>,
}

impl TableGlobs {
    fn compile(tables: &crate::config::TableSelection) -> Result<TableGlobs, String> {
        let (include, exclude) = tables.globs();
        let globs = |list: &[String]| -> Result<Vec<GlobMatcher>, String> {
            list.iter().map(|g| table_glob(g)).collect()
        };
        Ok(TableGlobs {
            include: globs(include)?,
            exclude: globs(exclude)?,
        })
    }

    /// Whether the sink takes the table `schema.table`.
    fn takes(&self, qualified: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.is_match(qualified)))
            && !self.exclude.iter().any(|g| g.is_match(qualified))
    }
}

/// An expression's error (`sinks[0].transform: <reason>`) as (setting, reason):
/// `transform` and the reason.
fn setting_and_reason(e: &str) -> (String, String) {
    let (setting, reason) = e.split_once(": ").unwrap_or(("transform", e));
    let setting = setting.rsplit('.').next().unwrap_or(setting);
    (setting.to_owned(), reason.to_owned())
}

/// What a lane makes of one change.
#[derive(Debug)]
pub enum Verdict {
    /// Send the event to outlet `n` (0: the sink's own, then the routes in name order).
    Send(usize, Event),
    /// An expression failed: send this envelope to the dead-letter queue.
    DeadLetter(Event),
}

/// One sink's view of the stream: its selection, shaping and destinations.
pub struct Lane<S> {
    /// The sink's name (`metadata.consumer.name`, the metrics' `sink` label).
    pub name: String,
    /// `sink` or `sinks[N]`, for messages.
    at: String,
    builder: EventBuilder,
    tables: TableGlobs,
    actions: Option<Vec<Action>>,
    columns: PerTable<ColumnSelection>,
    /// The sink's own group columns; `None` when the tables' (the first sink's) apply.
    group_columns: Option<PerTable<Vec<String>>>,
    /// Per relation: the table as last seen, and this lane's view of it (`None`: not taken).
    views: HashMap<u32, (Arc<Table>, Option<Arc<View>>)>,
    shape: Shape,
    route: Option<Program>,
    group: Option<Program>,
    /// Some expression has a native plan: scan events for it (else jaq parses them).
    native: bool,
    /// Outlet 0 is the sink's own; then `routes` in name order.
    outlets: Vec<S>,
    route_names: Vec<String>,
    dead_letter: Option<S>,
    metrics: Arc<Metrics>,
    /// `metrics` are this sink's alone (not the slot's): it counts what it was handed.
    own_metrics: bool,
    /// The sink shares a FIFO destination with another: its deduplication ids are its own.
    dedup_scope: Option<Arc<str>>,
}

impl<S> Lane<S> {
    /// A lane for `config` (validated by `Config::load`). `first`: the first sink,
    /// whose group columns the tables were resolved with. `metrics` is where this
    /// sink's figures go (the tracker its outlets accept on records there too).
    pub fn new(
        config: &SinkConfig,
        first: bool,
        database: &change_event::Database,
        outlets: Outlets<S>,
        metrics: Arc<Metrics>,
    ) -> Result<Lane<S>, String> {
        let consumer = change_event::Consumer {
            id: config.id.clone().unwrap_or_else(|| config.name.clone()),
            name: config.name.clone(),
            annotations: config.annotations.clone(),
        };
        let compile = |key: &str, code: &Option<String>| {
            code.as_deref()
                .map(|c| Program::compile(c).map_err(|e| format!("{}: jq: {e}", config.key(key))))
                .transpose()
        };

        let Outlets {
            main,
            routes,
            dead_letter,
        } = outlets;
        let shape = Shape::compile_at(
            &config.at,
            config.filter.as_deref(),
            config.transform.as_deref(),
        )?;
        let route = compile("route", &config.route)?;
        let group = compile("group_id", &config.group_id)?;
        let programs = [&shape.filter, &shape.transform, &route, &group];
        let native = programs.into_iter().flatten().any(Program::is_native);
        let route_names: Vec<String> = routes.keys().cloned().collect();
        let mut all = vec![main];
        all.extend(routes.into_values());
        Ok(Lane {
            name: config.name.clone(),
            at: config.at.clone(),
            builder: {
                let builder = EventBuilder::new(&consumer, database);
                match config.kind {
                    SinkType::Stdout => builder.without_groups(),
                    _ => builder,
                }
            },
            tables: TableGlobs::compile(&config.tables)?,
            actions: config.actions.clone(),
            columns: by_table(&config.columns),
            group_columns: (!first).then(|| by_table(&config.group_columns)),
            views: HashMap::new(),
            native,
            shape,
            route,
            group,
            outlets: all,
            route_names,
            dead_letter,
            metrics,
            own_metrics: false,
            dedup_scope: None,
        })
    }

    /// The scope of this sink's FIFO deduplication ids (see [`Event::dedup_scope`]):
    /// [`dedup_scope`] of the streamer, and of the sink when it shares a FIFO queue or
    /// topic with another sink of the streamer.
    pub fn with_dedup_scope(mut self, scope: String) -> Self {
        self.dedup_scope = Some(Arc::from(scope));
        self
    }

    /// The lane's metrics are its own, not the slot's: it also counts the events
    /// handed to it (`walcast_events_received_total` counts decoded ones on the slot's).
    pub fn with_own_metrics(mut self) -> Self {
        self.own_metrics = true;
        self
    }

    /// The builder of this sink's events.
    pub fn builder(&self) -> &EventBuilder {
        &self.builder
    }

    /// This sink's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether this sink takes `action` events.
    pub fn takes(&self, action: Action) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(&action))
    }

    /// This lane's view of `table`, `None` when it does not take the table; an
    /// error when its settings cannot work with the table (names the setting).
    pub fn view(&mut self, table: &Arc<Table>) -> Result<Option<Arc<View>>, String> {
        if let Some((seen, view)) = self.views.get(&table.id) {
            if Arc::ptr_eq(seen, table) {
                return Ok(view.clone());
            }
        }
        let view = self.resolve(table)?.map(Arc::new);
        self.views
            .insert(table.id, (Arc::clone(table), view.clone()));
        Ok(view)
    }

    fn resolve(&self, table: &Table) -> Result<Option<View>, String> {
        let name = &table.qualified;
        if !self.tables.takes(name) {
            return Ok(None);
        }
        let this = |(s, t): &(String, String)| *s == table.schema && *t == table.name;
        let index_of = |setting: &str, column: &str| {
            table
                .columns
                .iter()
                .position(|c| c.name == column)
                .ok_or_else(|| format!("{}: {name} has no column `{column}`", self.at_key(setting)))
        };
        let mut view = View::default();
        if let Some((_, rule)) = self.columns.iter().find(|(k, _)| this(k)) {
            let setting = format!("columns.{name}");
            let mut keep = vec![rule.include.is_none(); table.columns.len()];
            for c in rule.include.iter().flatten() {
                keep[index_of(&setting, c)?] = true;
            }
            for c in &rule.exclude {
                keep[index_of(&setting, c)?] = false;
            }
            if let Some(&k) = table.primary_key.iter().find(|&&k| !keep[k]) {
                return Err(format!(
                    "{}: leaves out `{}`, a key column of {name}: the key is the event's identity \
                     (record_pks, the FIFO group); keep it",
                    self.at_key(&setting),
                    table.columns[k].name
                ));
            }
            view.keep = Some(keep);
        }
        if let Some(own) = &self.group_columns {
            let key = match own.iter().find(|(k, _)| this(k)) {
                Some((_, cols)) => cols
                    .iter()
                    .map(|c| index_of("group_columns", c))
                    .collect::<Result<Vec<_>, _>>()?,
                None => table.primary_key.clone(),
            };
            if key != table.group_key {
                view.group_key = Some(key);
            }
        }
        Ok(Some(view))
    }

    fn at_key(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    /// Builds this lane's event of a change (numbered `idx` in its transaction).
    pub fn build(
        &self,
        tx: &event::Transaction,
        idx: u64,
        table: &Arc<Table>,
        change: event::RowChange<'_>,
        view: &View,
    ) -> Result<Event, event::EventError> {
        self.builder.build_at(tx, idx, table, change, view)
    }

    /// Builds this lane's `read` event of a backfilled row.
    pub fn build_read(
        &self,
        table: &Arc<Table>,
        row: &crate::replication::Tuple<'_>,
        at: &event::ReadAt,
        idx: u64,
        view: &View,
    ) -> Result<Event, event::EventError> {
        self.builder.build_read(table, row, at, idx, view)
    }

    /// Route, group, filter and transform one event: what to send, `None` when the
    /// filter leaves it out; `Err` (the reason the streamer stops) when an
    /// expression fails and there is no dead-letter queue.
    pub fn verdict(&self, mut event: Event) -> Result<Option<Verdict>, String> {
        if self.route.is_none() && self.group.is_none() && self.shape.is_empty() {
            return Ok(Some(Verdict::Send(0, event)));
        }
        // One parse for every expression of the sink.
        let parsed = if self.native {
            Input::parse(&event.payload)
        } else {
            Input::parse_for_jaq(&event.payload)
        };
        let input = match parsed {
            Ok(i) => i,
            Err(e) => return self.failed(event, "transform", e).map(Some),
        };
        let outlet = match self.outlet(&input) {
            Ok(o) => o,
            Err(reason) => return self.failed(event, "route", reason).map(Some),
        };
        if let Some(group) = &self.group {
            match text_output(group, &input) {
                Ok(Some(id)) => event.group_id = event::group_id_text(id),
                Ok(None) => {
                    return self
                        .failed(event, "group_id", "yielded no string".into())
                        .map(Some)
                }
                Err(e) => return self.failed(event, "group_id", e).map(Some),
            }
        }
        match self.shape.apply_to(&input) {
            Ok(Shaped::Keep) => Ok(Some(Verdict::Send(outlet, event))),
            Ok(Shaped::Send(body)) => {
                event.payload = body;
                Ok(Some(Verdict::Send(outlet, event)))
            }
            Ok(Shaped::Filtered | Shaped::Empty) => {
                self.metrics.filtered(&event);
                Ok(None)
            }
            Err(e) => {
                let (setting, reason) = setting_and_reason(&e);
                self.failed(event, &setting, reason).map(Some)
            }
        }
    }

    /// The outlet `route` names for the event (0 when there is no route or it yields null).
    fn outlet(&self, input: &Input<'_>) -> Result<usize, String> {
        let Some(route) = &self.route else {
            return Ok(0);
        };
        match text_output(route, input)? {
            None => Ok(0),
            Some(name) => self
                .route_names
                .iter()
                .position(|n| *n == name)
                .map(|i| i + 1)
                .ok_or_else(|| {
                    format!(
                        "yielded `{name}`, which is not one of {}.destinations ({})",
                        self.at,
                        self.route_names.join(", ")
                    )
                }),
        }
    }

    /// `setting` failed on `event`: its dead-letter envelope, or why the streamer stops.
    fn failed(&self, event: Event, setting: &str, reason: String) -> Result<Verdict, String> {
        let key = self.at_key(setting);
        if self.dead_letter.is_none() {
            return Err(format!(
                "{key} failed on an event of {} (commit_lsn {}, commit_idx {}; the reason is not \
                 logged, it can quote row values): fix the expression, or set \
                 {}.dead_letter_queue_url to set such events aside with their reason; try it on a \
                 sample event of that table with `streamer transform --config FILE --sink {} < \
                 event.json`",
                event.table.qualified, event.commit_lsn, event.commit_idx, self.at, self.name
            ));
        }
        // The reason may quote values (jq's messages do): it goes to the dead-letter
        // queue, which holds the event anyway, and never to the log.
        tracing::warn!(
            sink = %self.name,
            setting = %key,
            table = %event.table.qualified,
            commit_lsn = event.commit_lsn,
            commit_idx = event.commit_idx,
            "an expression failed on an event; dead-lettering it"
        );
        let body = dead_letter_body(&event, &format!("{key}: {reason}"), DEAD_LETTER_MAX);
        Ok(Verdict::DeadLetter(Event {
            payload: body,
            ..event
        }))
    }

    /// What this sink would send for a change event given as JSON (`streamer
    /// transform`): its selection (tables, actions, columns), its `metadata.consumer`,
    /// then route, group, filter and transform, as [`Lane::verdict`] does.
    pub fn preview(&self, event: &str) -> Result<Preview, String> {
        let mut v: serde_json::Value =
            serde_json::from_str(event).map_err(|e| format!("not JSON: {e}"))?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let (schema, name) = (
            text(&v["metadata"]["table_schema"]),
            text(&v["metadata"]["table_name"]),
        );
        let table = format!("{schema}.{name}");
        if !self.tables.takes(&table) {
            return Ok(Preview::Skipped(format!(
                "{table} is not among {}",
                self.at_key("tables")
            )));
        }
        let action: Option<Action> = serde_json::from_value(v["action"].clone()).ok();
        if let Some(a) = action.filter(|a| !self.takes(*a)) {
            return Ok(Preview::Skipped(format!(
                "{} is not among {}",
                a.as_str(),
                self.at_key("actions")
            )));
        }
        if let Some((_, rule)) = self
            .columns
            .iter()
            .find(|((s, t), _)| *s == schema && *t == name)
        {
            // `check` and `run` compare the names with the table; here the event's
            // record stands for it, so a misspelt name is not shown as "hidden".
            if let Some(record) = v["record"].as_object() {
                let named = rule.include.iter().flatten().chain(&rule.exclude);
                if let Some(missing) = named.into_iter().find(|c| !record.contains_key(*c)) {
                    return Err(format!(
                        "{}.{name}: {table} has no column `{missing}` (this event's record has no such key)",
                        self.at_key("columns")
                    ));
                }
            }
            for part in ["record", "changes"] {
                if let Some(o) = v[part].as_object_mut() {
                    o.retain(|k, _| {
                        rule.include.as_ref().is_none_or(|i| i.contains(k))
                            && !rule.exclude.contains(k)
                    });
                }
            }
        }
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.insert("consumer".into(), self.builder.consumer_json());
        }
        let payload = v.to_string();
        let input = Input::parse(&payload)?;
        let fail = |setting: &str, reason: String| {
            let reason = format!("{}: {reason}", self.at_key(setting));
            if self.dead_letter.is_some() {
                Ok(Preview::DeadLettered(reason))
            } else {
                Err(reason)
            }
        };
        let destination = match self.outlet(&input) {
            Ok(0) => None,
            Ok(i) => self.route_names.get(i - 1).cloned(),
            Err(e) => return fail("route", e),
        };
        let group = match &self.group {
            None => None,
            Some(g) => match text_output(g, &input) {
                Ok(Some(id)) => Some(event::group_id_text(id)),
                Ok(None) => return fail("group_id", "yielded no string".into()),
                Err(e) => return fail("group_id", e),
            },
        };
        let body = match self.shape.apply_to(&input) {
            Ok(Shaped::Keep) => payload,
            Ok(Shaped::Send(body)) => body,
            Ok(Shaped::Filtered) => {
                return Ok(Preview::Skipped(format!(
                    "{} did not yield true",
                    self.at_key("filter")
                )))
            }
            Ok(Shaped::Empty) => {
                return Ok(Preview::Skipped(format!(
                    "{} yielded nothing",
                    self.at_key("transform")
                )))
            }
            Err(e) => {
                let (setting, reason) = setting_and_reason(&e);
                return fail(&setting, reason);
            }
        };
        Ok(Preview::Sent {
            body,
            destination,
            group,
        })
    }
}

/// What [`Lane::preview`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Preview {
    /// Sent: this body, to the named destination (`None`: the sink's own), with this
    /// FIFO group when `group_id` is set.
    Sent {
        /// The message body.
        body: String,
        /// The `destinations` entry `route` chose.
        destination: Option<String>,
        /// The group `group_id` yielded.
        group: Option<String>,
    },
    /// Left out, and why.
    Skipped(String),
    /// An expression failed; the sink's dead-letter queue would get it with this reason.
    DeadLettered(String),
}

impl<S: Sink> Lane<S> {
    /// Hands a verdict's event, numbered `seq`, to its outlet.
    pub async fn send(&mut self, seq: u64, verdict: Verdict) -> Result<(), SinkError> {
        match verdict {
            Verdict::Send(outlet, event) => {
                let event = self.outgoing(seq, event);
                self.metrics.sent(1);
                self.outlets[outlet].send(event).await
            }
            Verdict::DeadLetter(mut event) => {
                self.stamp(seq, &mut event);
                self.metrics.dead_lettered(&event);
                match &mut self.dead_letter {
                    Some(dlq) => dlq.send(event).await,
                    None => Err(SinkError::Stopped("a dead letter without a queue".into())),
                }
            }
        }
    }

    /// Hands each verdict to its outlet, in order, as [`Lane::send`] would: runs
    /// of events for one outlet go over in one call.
    pub async fn send_all(&mut self, verdicts: Vec<(u64, Verdict)>) -> Result<(), SinkError> {
        let mut run: Vec<Event> = Vec::new();
        let mut run_outlet = 0;
        for (seq, verdict) in verdicts {
            match verdict {
                Verdict::Send(outlet, event) => {
                    if outlet != run_outlet && !run.is_empty() {
                        self.send_run(run_outlet, &mut run).await?;
                    }
                    run_outlet = outlet;
                    run.push(self.outgoing(seq, event));
                }
                dead => {
                    self.send_run(run_outlet, &mut run).await?;
                    self.send(seq, dead).await?;
                }
            }
        }
        self.send_run(run_outlet, &mut run).await
    }

    /// Gives the event its sequence number and this sink's deduplication scope.
    fn stamp(&self, seq: u64, event: &mut Event) {
        event.seq = seq;
        event.dedup_scope = self.dedup_scope.clone();
    }

    /// The event, stamped, as it goes to an outlet (counted as received when
    /// this sink keeps its own figures).
    fn outgoing(&self, seq: u64, mut event: Event) -> Event {
        self.stamp(seq, &mut event);
        if self.own_metrics {
            self.metrics.received(&event);
        }
        event
    }

    /// Sends the run of events gathered for `outlet`.
    async fn send_run(&mut self, outlet: usize, run: &mut Vec<Event>) -> Result<(), SinkError> {
        if run.is_empty() {
            return Ok(());
        }
        self.metrics.sent(run.len() as u64);
        self.outlets[outlet].send_all(std::mem::take(run)).await
    }

    fn all(&mut self) -> impl Iterator<Item = &mut S> {
        self.outlets.iter_mut().chain(self.dead_letter.as_mut())
    }

    /// Flushes every outlet.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        for s in self.all() {
            s.flush().await?;
        }
        Ok(())
    }

    /// Closes every outlet.
    pub async fn close(&mut self) -> Result<(), SinkError> {
        let mut first = Ok(());
        for s in self.all() {
            let r = s.close().await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// A per-table setting with its keys parsed (`users` is `public.users`).
fn by_table<V: Clone>(m: &BTreeMap<String, V>) -> PerTable<V> {
    m.iter()
        .filter_map(|(t, v)| parse_table(t).map(|k| (k, v.clone())))
        .collect()
}

/// The first output of `program` on `payload` as text: a string's content, a
/// number's digits; `None` for null or no output.
fn text_output(program: &Program, input: &Input<'_>) -> Result<Option<String>, String> {
    let out = program.run_on(input)?;
    let Some(first) = out.into_iter().next() else {
        return Ok(None);
    };
    match serde_json::from_str::<serde_json::Value>(&first) {
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(serde_json::Value::String(s)) => Ok(Some(s)),
        Ok(serde_json::Value::Number(_)) => Ok(Some(first)),
        _ => Err(format!("yielded {}, not a string", kind_of(&first))),
    }
}

fn kind_of(json: &str) -> &'static str {
    match json.trim_start().chars().next() {
        Some('{') => "an object",
        Some('[') => "an array",
        Some('t' | 'f') => "a boolean",
        _ => "a value",
    }
}

/// A sink of any kind, for a streamer whose sinks differ.
pub enum AnySink {
    /// SQS or SNS.
    Aws(AwsSink),
    /// Standard output.
    Stdout(StdoutSink),
}

impl Sink for AnySink {
    async fn send(&mut self, event: Event) -> Result<(), SinkError> {
        match self {
            AnySink::Aws(s) => s.send(event).await,
            AnySink::Stdout(s) => s.send(event).await,
        }
    }

    async fn send_all(&mut self, events: Vec<Event>) -> Result<(), SinkError> {
        match self {
            AnySink::Aws(s) => s.send_all(events).await,
            AnySink::Stdout(s) => s.send_all(events).await,
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::Aws(s) => s.flush().await,
            AnySink::Stdout(s) => s.flush().await,
        }
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::Aws(s) => s.close().await,
            AnySink::Stdout(s) => s.close().await,
        }
    }
}

/// A sink's destinations, connected and checkable, not started.
pub struct Planned {
    main: Option<Destinations>,
    routes: BTreeMap<String, Destinations>,
    dead_letter: Option<Destinations>,
}

/// The same sink, sending to `target` (a route's queue or topic).
fn aimed_at(sink: &SinkConfig, target: &str) -> SinkConfig {
    let mut c = sink.clone();
    match c.kind {
        SinkType::Sqs => c.queue_url = Some(target.to_owned()),
        SinkType::Sns => c.topic_arn = Some(target.to_owned()),
        SinkType::Stdout => {}
    }
    c
}

impl Planned {
    /// Connects what `sink` names: its queue or topic (and their dead-letter queue
    /// and S3 bucket), each route's destination, and, when an expression could fail,
    /// the dead-letter queue for those events.
    pub async fn connect(sink: &SinkConfig) -> Result<Planned, SinkError> {
        let main = Destinations::connect(sink).await?;
        let mut routes = BTreeMap::new();
        for (name, target) in &sink.destinations {
            if let Some(d) = Destinations::connect(&aimed_at(sink, target)).await? {
                routes.insert(name.clone(), d);
            }
        }
        let expressions = sink.filter.is_some()
            || sink.transform.is_some()
            || sink.route.is_some()
            || sink.group_id.is_some();
        let dead_letter = match (&sink.dead_letter_queue_url, expressions) {
            (Some(url), true) => {
                let mut c = sink.clone();
                c.kind = SinkType::Sqs;
                c.queue_url = Some(url.clone());
                c.dead_letter_queue_url = None;
                Destinations::connect(&c).await?
            }
            _ => None,
        };
        Ok(Planned {
            main,
            routes,
            dead_letter,
        })
    }

    /// Checks every destination: what was found, or the failure naming the setting.
    pub async fn check(&self) -> Vec<Result<String, SinkError>> {
        let mut out: Vec<Result<String, SinkError>> = Vec::new();
        for d in self.main.iter().chain(self.routes.values()) {
            for r in d.check().await {
                // The routes share the sink's dead-letter queue and bucket: say it once.
                let seen = matches!(&r, Ok(m) if out.iter().any(|o| matches!(o, Ok(x) if x == m)));
                if !seen {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The first failure of [`check`](Planned::check), if any.
    pub async fn verify(&self) -> Result<(), SinkError> {
        for d in self.main.iter().chain(self.routes.values()) {
            d.verify().await?;
        }
        Ok(())
    }

    /// Starts the sinks, accepting on `tracker`.
    pub fn start(self, tracker: &Tracker) -> Result<Outlets<AnySink>, SinkError> {
        let main = match self.main {
            Some(d) => AnySink::Aws(d.start(tracker.clone())),
            None => AnySink::Stdout(StdoutSink::new(tracker.clone())?),
        };
        Ok(Outlets {
            main,
            routes: self
                .routes
                .into_iter()
                .map(|(n, d)| (n, AnySink::Aws(d.start(tracker.clone()))))
                .collect(),
            // Its own figures: the lane counts what it dead-letters.
            dead_letter: self
                .dead_letter
                .map(|d| AnySink::Aws(d.start(tracker.for_sink(Arc::default())))),
        })
    }
}

/// What the sinks' selections say about the tables they will see, checked against
/// the catalog before anything is created: `Err` lines are settings that cannot
/// work (a `columns` or `group_columns` entry naming a table that is not published,
/// or a column the table lacks, or leaving out a key column); `Ok` lines are
/// warnings (a `tables` selection that matches no published table).
pub async fn check_selections(
    config: &crate::config::Config,
    catalog: &crate::replication::Catalog,
) -> Result<Vec<Result<String, String>>, crate::replication::ReplicationError> {
    // The tables the slot will stream: the publication's, else those it will be made of.
    let tables = match catalog.publication(&config.source.publication).await? {
        Some(p) => p.tables,
        None if config.source.tables.is_empty() => catalog.user_tables().await?,
        None => config.tables(),
    };
    let names: Vec<String> = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    let list = || {
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    let mut out = Vec::new();
    for sink in &config.sinks {
        // Validated when the configuration was loaded.
        let globs = TableGlobs::compile(&sink.tables).unwrap_or_default();
        let taken = names.iter().filter(|n| globs.takes(n)).count();
        if taken == 0 && !names.is_empty() {
            out.push(Ok(format!(
                "{}: matches no published table (published: {}): sink `{}` receives nothing",
                sink.key("tables"),
                list(),
                sink.name
            )));
        }
        let per_table = sink
            .columns
            .iter()
            .map(|(t, c)| (t, "columns", Some(c), None))
            .chain(
                sink.group_columns
                    .iter()
                    .map(|(t, g)| (t, "group_columns", None, Some(g))),
            );
        for (table, setting, columns, group) in per_table {
            let key = sink.key(setting);
            let Some((schema, name)) = parse_table(table) else {
                continue;
            };
            if !tables.iter().any(|(s, n)| *s == schema && *n == name) {
                out.push(Err(format!(
                    "{key}: `{table}` is not a published table (published: {})",
                    list()
                )));
                continue;
            }
            let Some((all, key_columns)) = catalog.columns_and_key(&schema, &name).await? else {
                continue;
            };
            let at = format!("{key}.{table}");
            let named = columns
                .into_iter()
                .flat_map(|c| c.include.iter().flatten().chain(&c.exclude))
                .chain(group.into_iter().flatten());
            for c in named {
                if !all.contains(c) {
                    out.push(Err(format!("{at}: {schema}.{name} has no column `{c}`")));
                }
            }
            if let Some(c) = columns {
                let left_out = key_columns.iter().find(|k| {
                    c.exclude.contains(k) || c.include.as_ref().is_some_and(|i| !i.contains(k))
                });
                if let Some(k) = left_out {
                    out.push(Err(format!(
                        "{at}: leaves out `{k}`, a key column of {schema}.{name}: the key is the \
                         event's identity (record_pks, the FIFO group); keep it"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// Connects and checks every sink of `config` (before set-up: a wrong queue,
/// topic or credential stops the start with the setting to fix). The error
/// names the sink when there are several.
pub async fn plan(config: &crate::config::Config) -> Result<Vec<Planned>, PlanError> {
    let mut planned = Vec::with_capacity(config.sinks.len());
    for sink in &config.sinks {
        let named = |error: SinkError| PlanError {
            sink: (config.sinks.len() > 1).then(|| format!("{} ({})", sink.name, sink.at)),
            error,
        };
        let p = Planned::connect(sink).await.map_err(named)?;
        p.verify().await.map_err(named)?;
        planned.push(p);
    }
    Ok(planned)
}

/// A sink that cannot be used: which (when there are several), and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", sink.as_ref().map(|s| format!("sink `{s}`: ")).unwrap_or_default())]
pub struct PlanError {
    /// The sink, when the streamer has several.
    pub sink: Option<String>,
    /// Why.
    #[source]
    pub error: SinkError,
}

/// What makes this streamer's FIFO deduplication ids its own: `<source id>/<slot>`
/// (the source id is `source.id`, by default `source.name`, by default the
/// database's name). Two streamers (two slots of one database, or two databases)
/// can give different changes the same idempotency key, the commit LSN and the
/// change's index in its transaction among the tables each publishes; a FIFO queue
/// both send to would drop the second as a replay of the first. The scope is
/// stable across restarts, so a streamer's own replays are still dropped.
pub fn dedup_scope(config: &crate::config::Config) -> String {
    format!(
        "{}/{}",
        crate::pipeline::database_meta(config).id,
        config.source.slot
    )
}

/// Starts the planned sinks ([`plan`]), one lane each, accepting on `tracker`.
/// One sink records its figures on the tracker's metrics; several, each on its
/// own (`sink="<name>"` in `/metrics`).
pub fn start(
    config: &crate::config::Config,
    planned: Vec<Planned>,
    tracker: &Tracker,
) -> Result<Vec<Lane<AnySink>>, SinkError> {
    let database = crate::pipeline::database_meta(config);
    let stream = dedup_scope(config);
    let several = config.sinks.len() > 1;
    // FIFO destinations named by more than one sink: the FIFO queue would drop the
    // second sink's copy of an event as a replay of the first (same idempotency key).
    let fifo_targets = |s: &SinkConfig| -> Vec<String> {
        s.target()
            .into_iter()
            .chain(s.destinations.values().map(String::as_str))
            .chain(s.dead_letter_queue_url.as_deref())
            .filter(|t| t.ends_with(".fifo"))
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let mut users: BTreeMap<String, usize> = BTreeMap::new();
    for s in &config.sinks {
        for t in fifo_targets(s) {
            *users.entry(t).or_default() += 1;
        }
    }
    let mut lanes = Vec::with_capacity(planned.len());
    for (i, (sink, planned)) in config.sinks.iter().zip(planned).enumerate() {
        let metrics = if several {
            tracker.metrics().add_sink(&sink.name)
        } else {
            Arc::clone(tracker.metrics())
        };
        // Everything the sink logs names it (with several).
        let span = tracing::info_span!("sink", sink = %sink.name);
        let outlets = if several {
            span.in_scope(|| planned.start(&tracker.for_sink(Arc::clone(&metrics))))?
        } else {
            planned.start(&tracker.for_sink(Arc::clone(&metrics)))?
        };
        let lane = Lane::new(sink, i == 0, &database, outlets, metrics).map_err(|reason| {
            SinkError::Setting {
                setting: "",
                reason,
            }
        })?;
        let lane = if several {
            lane.with_own_metrics()
        } else {
            lane
        };
        let shares = fifo_targets(sink).iter().any(|t| users.get(t) > Some(&1));
        lanes.push(lane.with_dedup_scope(if shares {
            format!("{stream}/{}", sink.name)
        } else {
            stream.clone()
        }));
        tracing::info!(
            sink = %sink.name,
            kind = ?sink.kind,
            target = sink.target().unwrap_or("stdout"),
            routes = sink.destinations.len(),
            shares_fifo_destination = shares,
            "sink started"
        );
    }
    Ok(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, TypeKind};
    use crate::replication::Datum;
    use crate::sink::MemorySink;

    fn users() -> Arc<Table> {
        named("users")
    }

    fn named(name: &str) -> Arc<Table> {
        Arc::new(Table::new(
            7,
            "public".into(),
            name.into(),
            vec![
                Column::new("id".into(), TypeKind::Integer, true),
                Column::new("email".into(), TypeKind::Text, false),
                Column::new("password_hash".into(), TypeKind::Text, false),
                Column::new("tenant".into(), TypeKind::Text, false),
            ],
            vec![0],
            vec![],
        ))
    }

    fn config(yaml: &str) -> SinkConfig {
        let full = format!("source: {{url: 'postgres://u@h/d'}}\nsinks:\n{yaml}");
        crate::config::Config::load(Some(&full), std::iter::empty())
            .expect("valid")
            .sinks
            .remove(0)
    }

    #[test]
    fn the_dedup_scope_is_the_source_and_the_slot() {
        let scope = |source: &str| {
            let yaml = format!("source: {{url: 'postgres://u@h/app', {source}}}");
            dedup_scope(
                &crate::config::Config::load(Some(&yaml), std::iter::empty()).expect("valid"),
            )
        };
        assert_eq!(scope("slot: one"), "app/one");
        assert_eq!(
            scope("slot: two"),
            "app/two",
            "another slot of the database"
        );
        assert_eq!(scope("slot: one, name: billing"), "billing/one");
        assert_eq!(scope("slot: one, name: billing, id: b-7"), "b-7/one");
    }

    fn lane(yaml: &str, tracker: &Tracker) -> Lane<MemorySink> {
        let database = change_event::Database {
            id: "d".into(),
            name: "d".into(),
            annotations: Default::default(),
            database: "d".into(),
            hostname: "h".into(),
        };
        let c = config(yaml);
        let outlets = Outlets {
            main: MemorySink::new(tracker.clone()),
            routes: c
                .destinations
                .keys()
                .map(|n| (n.clone(), MemorySink::new(tracker.clone())))
                .collect(),
            dead_letter: c
                .dead_letter_queue_url
                .as_ref()
                .map(|_| MemorySink::new(tracker.clone())),
        };
        Lane::new(&c, false, &database, outlets, Arc::default()).expect("lane")
    }

    fn insert(lane: &mut Lane<MemorySink>, table: &Arc<Table>, values: [&str; 4]) -> Event {
        let tuple: Vec<Datum<'_>> = values.iter().map(|v| Datum::Text(v.as_bytes())).collect();
        let tx = event::Transaction::begin(100, 0);
        let view = lane.view(table).expect("works").expect("taken");
        lane.build(&tx, 0, table, event::RowChange::Insert(&tuple), &view)
            .expect("builds")
    }

    #[test]
    fn tables_are_taken_by_glob_minus_exclusions() {
        let t = Tracker::new(0);
        let users = users();
        let other = |name: &str| {
            Arc::new(Table::new(
                9,
                "audit".into(),
                name.into(),
                vec![Column::new("id".into(), TypeKind::Integer, true)],
                vec![0],
                vec![],
            ))
        };
        let mut l = lane(
            "  - {name: a, tables: {include: ['public.*', 'audit.log_*'], exclude: [audit.log_secret]}}",
            &t,
        );
        assert!(l.view(&users).expect("ok").is_some());
        assert!(l.view(&other("log_1")).expect("ok").is_some());
        assert!(l.view(&other("log_secret")).expect("ok").is_none());
        let mut only = lane("  - {name: a, tables: [orders]}", &t);
        assert!(only.view(&users).expect("ok").is_none());
        let actions = lane("  - {name: a, actions: [delete]}", &t);
        assert!(actions.takes(Action::Delete) && !actions.takes(Action::Insert));
    }

    #[test]
    fn excluded_columns_leave_record_and_changes() {
        let t = Tracker::new(0);
        let users = users();
        let mut l = lane(
            "  - {name: a, columns: {public.users: {exclude: [password_hash]}}}",
            &t,
        );
        let e = insert(&mut l, &users, ["1", "a@x", "secret", "t1"]);
        assert!(!e.payload.contains("password_hash") && !e.payload.contains("secret"));
        assert!(e.payload.contains("\"email\":\"a@x\""), "{}", e.payload);
        let v: serde_json::Value = serde_json::from_str(&e.payload).expect("json");
        assert_eq!(v["metadata"]["consumer"]["name"], "a");
        let mut only = lane(
            "  - {name: a, columns: {users: {include: [id, tenant]}}}",
            &t,
        );
        let e = insert(&mut only, &users, ["1", "a@x", "secret", "t1"]);
        let v: serde_json::Value = serde_json::from_str(&e.payload).expect("json");
        assert_eq!(v["record"], serde_json::json!({"id": 1, "tenant": "t1"}));
    }

    #[test]
    fn a_column_setting_that_cannot_work_names_itself() {
        let t = Tracker::new(0);
        let users = users();
        let mut typo = lane(
            "  - {name: a, columns: {public.users: {exclude: [password_hsh]}}}",
            &t,
        );
        assert_eq!(
            typo.view(&users).expect_err("refused"),
            "sinks[0].columns.public.users: public.users has no column `password_hsh`"
        );
        let mut key = lane(
            "  - {name: a, columns: {public.users: {exclude: [id]}}}",
            &t,
        );
        assert!(key
            .view(&users)
            .expect_err("refused")
            .starts_with("sinks[0].columns.public.users: leaves out `id`, a key column"));
    }

    #[test]
    fn own_group_columns_and_a_group_expression() {
        let t = Tracker::new(0);
        let users = users();
        let fifo = "type: sqs, queue_url: 'https://sqs.eu-west-1.amazonaws.com/1/q.fifo'";
        let mut l = lane(
            &format!("  - {{name: a, {fifo}, group_columns: {{public.users: [tenant]}}}}"),
            &t,
        );
        let e = insert(&mut l, &users, ["1", "a@x", "s", "t1"]);
        assert_eq!(e.group_id, "public.users:t1");
        // stdout has no message groups: none is made.
        let mut stdout = lane("  - {name: a}", &t);
        assert_eq!(
            insert(&mut stdout, &users, ["1", "a@x", "s", "t1"]).group_id,
            ""
        );
        let mut g = lane(
            &format!("  - {{name: a, {fifo}, group_id: '.record.tenant + \"-x\"'}}"),
            &t,
        );
        let e = insert(&mut g, &users, ["1", "a@x", "s", "t1"]);
        let Some(Verdict::Send(0, e)) = g.verdict(e).expect("ok") else {
            panic!("sent")
        };
        assert_eq!(e.group_id, "t1-x");
    }

    #[test]
    fn routes_choose_a_destination_by_name() {
        let t = Tracker::new(0);
        let users = users();
        let yaml = "  - name: a\n    type: sqs\n    queue_url: https://sqs.eu-west-1.amazonaws.com/1/main\n    destinations: {users: 'https://sqs.eu-west-1.amazonaws.com/1/u', zzz: 'https://sqs.eu-west-1.amazonaws.com/1/z'}\n    route: 'if .metadata.table_name == \"users\" then \"users\" elif .record.id == 2 then \"nope\" else null end'\n";
        let mut l = lane(yaml, &t);
        let e = insert(&mut l, &users, ["1", "a@x", "s", "t1"]);
        assert!(matches!(l.verdict(e), Ok(Some(Verdict::Send(1, _)))));
        let other = named("orders");
        let e = insert(&mut l, &other, ["1", "a@x", "s", "t1"]);
        assert!(matches!(l.verdict(e), Ok(Some(Verdict::Send(0, _)))));
        let e = insert(&mut l, &other, ["2", "a@x", "s", "t1"]);
        let stop = l.verdict(e).expect_err("no dead-letter queue");
        assert!(
            stop.starts_with(
                "sinks[0].route failed on an event of public.orders (commit_lsn 100, commit_idx 0;"
            ),
            "{stop}"
        );
        assert!(!stop.contains("a@x"), "no values in the reason: {stop}");
    }

    #[test]
    fn transform_previews_the_whole_sink() {
        let t = Tracker::new(0);
        let users = users();
        let yaml = "  - name: a\n    type: sqs\n    queue_url: https://sqs.eu-west-1.amazonaws.com/1/main.fifo\n    tables: [users]\n    actions: [insert]\n    columns: {users: {exclude: [password_hash]}}\n    destinations: {t: 'https://sqs.eu-west-1.amazonaws.com/1/t.fifo'}\n    route: '\"t\"'\n    group_id: '.record.tenant'\n";
        let mut l = lane(yaml, &t);
        let e = insert(&mut l, &users, ["1", "a@x", "secret", "t1"]);
        let mut plain = lane("  - {name: other}", &t);
        let source = insert(&mut plain, &users, ["1", "a@x", "secret", "t1"]).payload;
        let Ok(Preview::Sent {
            body,
            destination,
            group,
        }) = l.preview(&source)
        else {
            panic!("sent")
        };
        assert_eq!(
            body, e.payload,
            "what the pipeline itself builds for the sink"
        );
        assert_eq!(
            (destination.as_deref(), group.as_deref()),
            (Some("t"), Some("t1"))
        );
        let update = source.replace("\"action\":\"insert\"", "\"action\":\"update\"");
        assert_eq!(
            l.preview(&update),
            Ok(Preview::Skipped(
                "update is not among sinks[0].actions".into()
            ))
        );
        let orders = insert(&mut plain, &named("orders"), ["1", "a", "b", "c"]).payload;
        assert_eq!(
            l.preview(&orders),
            Ok(Preview::Skipped(
                "public.orders is not among sinks[0].tables".into()
            ))
        );
        // The skip names the expression that skipped.
        let filtered = lane("  - {name: f, filter: '.record.id == \"2\"'}", &t);
        assert_eq!(
            filtered.preview(&source),
            Ok(Preview::Skipped(
                "sinks[0].filter did not yield true".into()
            ))
        );
        let emptied = lane("  - {name: f, transform: empty}", &t);
        assert_eq!(
            emptied.preview(&source),
            Ok(Preview::Skipped(
                "sinks[0].transform yielded nothing".into()
            ))
        );
        // A misspelt column is an error, not a column shown as if hidden.
        let typo = lane(
            "  - {name: f, columns: {users: {exclude: [password_hsh]}}}",
            &t,
        );
        assert_eq!(
            typo.preview(&source),
            Err("sinks[0].columns.users: public.users has no column `password_hsh` (this event's record has no such key)".into())
        );
    }

    #[test]
    fn a_failing_expression_dead_letters_with_its_reason() {
        let t = Tracker::new(0);
        let users = users();
        let yaml = "  - name: a\n    type: sqs\n    queue_url: https://sqs.eu-west-1.amazonaws.com/1/main\n    dead_letter_queue_url: https://sqs.eu-west-1.amazonaws.com/1/dlq\n    transform: '.record.email + 1'\n";
        let mut l = lane(yaml, &t);
        let e = insert(&mut l, &users, ["1", "a@x", "s", "t1"]);
        let Ok(Some(Verdict::DeadLetter(dead))) = l.verdict(e) else {
            panic!("dead-lettered")
        };
        let v: serde_json::Value = serde_json::from_str(&dead.payload).expect("json");
        assert!(
            v["reason"]
                .as_str()
                .expect("reason")
                .starts_with("sinks[0].transform: cannot calculate"),
            "{v}"
        );
        assert_eq!(v["event"]["record"]["email"], "a@x");
    }
}
