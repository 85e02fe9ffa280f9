//! Operations: `/healthz` and `/metrics` (Prometheus text format) on `http.listen`.
//!
//! Metrics are recorded where things happen: the pipeline counts received
//! events, sinks count delivered / failed / dead-lettered ones and batches
//! (through the [`Tracker`](crate::progress::Tracker) they already hold), the
//! lag probe asks Postgres how far the slot is behind. Labels carry table
//! names and actions only, never row values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use change_event::Action;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::event::Event;
use crate::progress::Tracker;

/// Latency buckets, seconds (commit → accepted by the sink).
const BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A sink with events in flight and no acceptance for this long is unhealthy.
pub const STALL: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone)]
struct TableCounters {
    received: [u64; 4],
    delivered: u64,
    failed: u64,
    dead_lettered: u64,
    filtered: u64,
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Insert => 0,
        Action::Update => 1,
        Action::Delete => 2,
        Action::Read => 3,
    }
}

const ACTIONS: [&str; 4] = ["insert", "update", "delete", "read"];

/// The process's metrics. Shared through the tracker.
#[derive(Debug)]
pub struct Metrics {
    tables: Mutex<BTreeMap<String, TableCounters>>,
    latency: Mutex<([u64; BUCKETS.len()], u64, f64)>,
    batches: AtomicU64,
    truncates: AtomicU64,
    reconnects: AtomicU64,
    lag_bytes: AtomicI64,
    /// Emit time (Unix µs) of the newest heartbeat seen in the stream; 0: none.
    heartbeat_seen: AtomicI64,
    heartbeats_sent: AtomicU64,
    connected: AtomicBool,
    sink_error: Mutex<Option<String>>,
    last_accept: Mutex<Option<Instant>>,
    /// Why the last delivery attempt was retried (cleared when one is accepted), for
    /// `/healthz` of a stalled sink: AWS's code and message, never an event's values.
    last_retry: Mutex<Option<String>>,
    started: Instant,
    backfills: Mutex<BTreeMap<String, BackfillGauge>>,
    /// Events handed to this sink minus those it accepted (per-sink metrics only).
    in_flight: AtomicI64,
    /// Each sink's own metrics, by name, in configuration order (the root's only).
    sinks: Mutex<Vec<(String, Arc<Metrics>)>>,
}

/// A backfill's figures, per table.
#[derive(Debug, Clone, Default)]
struct BackfillGauge {
    state: &'static str,
    rows_estimate: i64,
    rows_sent: i64,
    rate: f64,
    eta: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            tables: Mutex::default(),
            latency: Mutex::new(([0; BUCKETS.len()], 0, 0.0)),
            batches: AtomicU64::new(0),
            truncates: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            lag_bytes: AtomicI64::new(-1),
            heartbeat_seen: AtomicI64::new(0),
            heartbeats_sent: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            sink_error: Mutex::default(),
            last_accept: Mutex::default(),
            last_retry: Mutex::default(),
            started: Instant::now(),
            backfills: Mutex::default(),
            in_flight: AtomicI64::new(0),
            sinks: Mutex::default(),
        }
    }
}

/// Now, microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Metrics {
    /// A sink's own metrics (deliveries, failures, latency, its error), shown with
    /// `sink="<name>"`; the slot's (received, lag, backfills) stay here.
    pub fn add_sink(&self, name: &str) -> Arc<Metrics> {
        let m = Arc::new(Metrics::default());
        if let Ok(mut s) = self.sinks.lock() {
            s.push((name.to_owned(), Arc::clone(&m)));
        }
        m
    }

    /// The sinks' metrics: those added, else these (one sink, no name).
    fn each_sink(&self) -> Vec<(Option<String>, Arc<Metrics>)> {
        self.sinks
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(n, m)| (Some(n.clone()), Arc::clone(m)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Copies the sink figures of `other` (rendering one sink that records on the root).
    fn absorb(&self, other: &Metrics) {
        if let (Ok(mut t), Ok(o)) = (self.tables.lock(), other.tables.lock()) {
            *t = o.clone();
        }
        if let (Ok(mut l), Ok(o)) = (self.latency.lock(), other.latency.lock()) {
            *l = *o;
        }
        self.batches
            .store(other.batches.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// `n` events were handed to this sink.
    pub fn sent(&self, n: u64) {
        self.in_flight.fetch_add(n as i64, Ordering::Relaxed);
    }

    /// `n` events were accepted by this sink (counted by its tracker).
    pub fn accepted(&self, n: u64) {
        self.in_flight.fetch_sub(n as i64, Ordering::Relaxed);
    }

    /// Events handed to this sink and not yet accepted.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn table(&self, name: &str, f: impl FnOnce(&mut TableCounters)) {
        if let Ok(mut t) = self.tables.lock() {
            match t.get_mut(name) {
                Some(c) => f(c),
                None => f(t.entry(name.to_owned()).or_default()),
            }
        }
    }

    /// A backfill of `table` moved on (`state`: running, done, cancelled, failed);
    /// `rate` in rows per second while running.
    pub fn backfill(
        &self,
        table: &str,
        state: &'static str,
        bf: &crate::backfill::store::Backfill,
        rate: Option<f64>,
    ) {
        let rate = rate.unwrap_or(0.0);
        let estimate = bf.rows_total().unwrap_or(bf.rows_sent);
        let eta = if rate > 0.0 {
            (estimate - bf.rows_sent).max(0) as f64 / rate
        } else {
            0.0
        };
        if let Ok(mut b) = self.backfills.lock() {
            b.insert(
                table.to_owned(),
                BackfillGauge {
                    state,
                    rows_estimate: estimate,
                    rows_sent: bf.rows_sent,
                    rate,
                    eta,
                },
            );
        }
    }

    /// The pipeline built an event.
    pub fn received(&self, e: &Event) {
        self.received_n(&e.table.qualified, e.action, 1);
    }

    /// `n` events of `table` and `action` were decoded (one lock for many).
    pub fn received_n(&self, table: &str, action: change_event::Action, n: u64) {
        self.table(table, |c| c.received[action_index(action)] += n);
    }

    /// The sink's destination accepted an event.
    pub fn delivered(&self, e: &Event) {
        self.delivered_at(&e.table.qualified, e.commit_time_micros);
    }

    /// The sink's destination accepted an event of `table` committed at `commit_time_micros`.
    pub fn delivered_at(&self, table: &str, commit_time_micros: i64) {
        self.delivered_by(table, commit_time_micros, now_micros());
    }

    /// [`Metrics::delivered_at`], accepted at `now_micros` (one clock read for many events).
    pub fn delivered_by(&self, table: &str, commit_time_micros: i64, now_micros: i64) {
        self.delivered_all(std::iter::once((table, commit_time_micros)), now_micros);
    }

    /// [`Metrics::delivered_by`] for many events at once, `(table, commit time)` each
    /// (one lock for all: the stdout sink accepts thousands per write).
    pub fn delivered_all<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, i64)>,
        now_micros: i64,
    ) {
        let (Ok(mut tables), Ok(mut l)) = (self.tables.lock(), self.latency.lock()) else {
            return;
        };
        let mut any = false;
        for (table, commit_time_micros) in events {
            any = true;
            match tables.get_mut(table) {
                Some(c) => c.delivered += 1,
                None => tables.entry(table.to_owned()).or_default().delivered += 1,
            }
            let secs = (now_micros - commit_time_micros).max(0) as f64 / 1e6;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    l.0[i] += 1;
                }
            }
            l.1 += 1;
            l.2 += secs;
        }
        drop((tables, l));
        if any {
            if let Ok(mut t) = self.last_accept.lock() {
                *t = Some(Instant::now());
            }
            if let Ok(mut r) = self.last_retry.lock() {
                *r = None;
            }
        }
    }

    /// Delivery attempts are being retried for `reason` (shown by `/healthz` while
    /// the sink is stalled).
    pub fn retrying(&self, reason: String) {
        if let Ok(mut r) = self.last_retry.lock() {
            *r = Some(reason);
        }
    }

    /// A delivery attempt of an event failed (it will be retried or dead-lettered).
    pub fn failed(&self, e: &Event) {
        self.table(&e.table.qualified, |c| c.failed += 1);
    }

    /// An event went to the dead-letter destination.
    /// The sink's filter (or an empty transform) left an event out.
    pub fn filtered(&self, e: &Event) {
        self.table(&e.table.qualified, |c| c.filtered += 1);
    }

    /// An event went to the dead-letter destination.
    pub fn dead_lettered(&self, e: &Event) {
        self.table(&e.table.qualified, |c| c.dead_lettered += 1);
        if let Ok(mut t) = self.last_accept.lock() {
            *t = Some(Instant::now());
        }
    }

    /// The sink sent a batch.
    pub fn batch(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// A TRUNCATE was skipped.
    pub fn truncate(&self) {
        self.truncates.fetch_add(1, Ordering::Relaxed);
    }

    /// The replication connection is up (or not).
    pub fn set_connected(&self, up: bool) {
        if !up && self.connected.swap(false, Ordering::Relaxed) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if up {
            self.connected.store(true, Ordering::Relaxed);
        }
    }

    /// The sink failed for good.
    pub fn set_sink_error(&self, e: &str) {
        if let Ok(mut s) = self.sink_error.lock() {
            *s = Some(e.to_owned());
        }
    }

    /// `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot.
    pub fn set_lag(&self, bytes: i64) {
        self.lag_bytes.store(bytes, Ordering::Relaxed);
    }

    /// A heartbeat was written (`source.heartbeat_secs`).
    pub fn heartbeat_sent(&self) {
        self.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A heartbeat written at `sent_micros` came through the stream.
    pub fn heartbeat_seen(&self, sent_micros: i64) {
        self.heartbeat_seen
            .fetch_max(sent_micros, Ordering::Relaxed);
    }

    /// Seconds since the newest heartbeat seen in the stream was written, if any.
    pub fn heartbeat_age(&self) -> Option<f64> {
        match self.heartbeat_seen.load(Ordering::Relaxed) {
            0 => None,
            sent => Some(((now_micros() - sent).max(0)) as f64 / 1e6),
        }
    }

    /// Healthy: replication connected, no sink failed, and none stalled with events in flight.
    pub fn health(&self, tracker: &Tracker) -> Result<(), String> {
        let sinks = self.each_sink();
        if sinks.is_empty() {
            return self.sink_health(None, tracker.in_flight() > 0);
        }
        if let Some(e) = self.sink_error.lock().ok().and_then(|s| s.clone()) {
            return Err(format!("sink failed: {e}"));
        }
        for (name, m) in &sinks {
            m.sink_health(name.as_deref(), m.in_flight() > 0)?;
        }
        if !self.connected.load(Ordering::Relaxed) {
            return Err("replication not connected".into());
        }
        Ok(())
    }

    fn sink_health(&self, name: Option<&str>, holding: bool) -> Result<(), String> {
        let sink = name.map_or_else(|| "sink".to_owned(), |n| format!("sink `{n}`"));
        if let Ok(s) = self.sink_error.lock() {
            if let Some(e) = s.as_ref() {
                return Err(format!("{sink} failed: {e}"));
            }
        }
        if name.is_none() && !self.connected.load(Ordering::Relaxed) {
            return Err("replication not connected".into());
        }
        if holding {
            let last = self.last_accept.lock().ok().and_then(|t| *t);
            if last.unwrap_or(self.started).elapsed() > STALL {
                let retry = self.last_retry.lock().ok().and_then(|r| r.clone());
                return Err(format!(
                    "{sink} has events in flight and accepted none for {}s{}",
                    STALL.as_secs(),
                    retry.map_or_else(String::new, |r| format!("; retrying: {r}"))
                ));
            }
        }
        Ok(())
    }

    /// The Prometheus text exposition.
    pub fn render(&self, tracker: &Tracker) -> String {
        let mut out = String::with_capacity(4096);
        let tables = self.tables.lock().map(|t| t.clone()).unwrap_or_default();
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(
            &mut out,
            "walcast_events_received_total",
            "Change events built from the slot.",
        );
        for (t, c) in &tables {
            for (i, a) in ACTIONS.iter().enumerate() {
                if c.received[i] > 0 {
                    let _ = writeln!(
                        out,
                        "walcast_events_received_total{{table=\"{t}\",action=\"{a}\"}} {}",
                        c.received[i]
                    );
                }
            }
        }
        // Per sink: with `sink="<name>"` when the sinks have their own metrics.
        let mut sinks = self.each_sink();
        let me = Arc::new(Metrics::default());
        let lone = sinks.is_empty();
        if lone {
            // One sink recording here: its figures are these.
            me.absorb(self);
            sinks.push((None, Arc::clone(&me)));
        }
        let label = |name: &Option<String>| match name {
            Some(n) => format!("sink=\"{n}\","),
            None => String::new(),
        };
        for (name, help, get) in [
            (
                "walcast_events_delivered_total",
                "Events the destination accepted.",
                (|c: &TableCounters| c.delivered) as fn(&TableCounters) -> u64,
            ),
            (
                "walcast_events_failed_total",
                "Failed delivery attempts (retried or dead-lettered).",
                |c: &TableCounters| c.failed,
            ),
            (
                "walcast_events_dead_lettered_total",
                "Events sent to the dead-letter destination.",
                |c: &TableCounters| c.dead_lettered,
            ),
            (
                "walcast_events_filtered_total",
                "Events the sink's selection, filter (or an empty transform) left out.",
                |c: &TableCounters| c.filtered,
            ),
        ] {
            counter(&mut out, name, help);
            for (sink, m) in &sinks {
                let tables = m.tables.lock().map(|t| t.clone()).unwrap_or_default();
                for (t, c) in &tables {
                    let _ = writeln!(out, "{name}{{{}table=\"{t}\"}} {}", label(sink), get(c));
                }
            }
        }
        counter(
            &mut out,
            "walcast_batches_total",
            "Batches sent to the destination.",
        );
        for (sink, m) in &sinks {
            let l = label(sink);
            let l = l.trim_end_matches(',');
            let l = if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            };
            let _ = writeln!(
                out,
                "walcast_batches_total{l} {}",
                m.batches.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "walcast_truncates_skipped_total",
            "TRUNCATEs seen (not streamed).",
        );
        let _ = writeln!(
            out,
            "walcast_truncates_skipped_total {}",
            self.truncates.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "walcast_replication_reconnects_total",
            "Replication sessions that ended and were reopened.",
        );
        let _ = writeln!(
            out,
            "walcast_replication_reconnects_total {}",
            self.reconnects.load(Ordering::Relaxed)
        );

        let _ = writeln!(out, "# HELP walcast_delivery_latency_seconds Commit (Postgres clock) to accepted by the destination.\n# TYPE walcast_delivery_latency_seconds histogram");
        for (sink, m) in &sinks {
            let l = label(sink);
            let bare = l.trim_end_matches(',');
            let bare = if bare.is_empty() {
                String::new()
            } else {
                format!("{{{bare}}}")
            };
            if let Ok(h) = m.latency.lock() {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "walcast_delivery_latency_seconds_bucket{{{l}le=\"{b}\"}} {}",
                        h.0[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "walcast_delivery_latency_seconds_bucket{{{l}le=\"+Inf\"}} {}",
                    h.1
                );
                let _ = writeln!(out, "walcast_delivery_latency_seconds_sum{bare} {}", h.2);
                let _ = writeln!(out, "walcast_delivery_latency_seconds_count{bare} {}", h.1);
            }
        }
        if !lone {
            let _ = writeln!(out, "# HELP walcast_sink_events_in_flight Events handed to the sink and not yet accepted by it.\n# TYPE walcast_sink_events_in_flight gauge");
            for (sink, m) in &sinks {
                let _ = writeln!(
                    out,
                    "walcast_sink_events_in_flight{{{}}} {}",
                    label(sink).trim_end_matches(','),
                    m.in_flight()
                );
            }
            let _ = writeln!(out, "# HELP walcast_sink_up 1 while the sink has not failed nor stalled.\n# TYPE walcast_sink_up gauge");
            for (sink, m) in &sinks {
                let _ = writeln!(
                    out,
                    "walcast_sink_up{{{}}} {}",
                    label(sink).trim_end_matches(','),
                    u8::from(m.sink_health(sink.as_deref(), m.in_flight() > 0).is_ok())
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "walcast_confirmed_lsn",
            "LSN confirmed to Postgres (every event up to it accepted).",
            tracker.confirmable().to_string(),
        );
        gauge(
            &mut out,
            "walcast_events_in_flight",
            "Events handed to the sink and not yet accepted.",
            tracker.in_flight().to_string(),
        );
        gauge(
            &mut out,
            "walcast_replication_lag_bytes",
            "pg_current_wal_lsn() - the slot's confirmed_flush_lsn (-1: unknown).",
            self.lag_bytes.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "walcast_heartbeat_age_seconds",
            "Seconds since the newest heartbeat seen in the stream was written (-1: none yet; source.heartbeat_secs).",
            self.heartbeat_age()
                .map(|a| format!("{a:.3}"))
                .unwrap_or_else(|| "-1".into()),
        );
        counter(
            &mut out,
            "walcast_heartbeats_sent_total",
            "Heartbeats written (source.heartbeat_secs).",
        );
        let _ = writeln!(
            out,
            "walcast_heartbeats_sent_total {}",
            self.heartbeats_sent.load(Ordering::Relaxed)
        );
        gauge(
            &mut out,
            "walcast_replication_connected",
            "1 while the replication connection is up.",
            u8::from(self.connected.load(Ordering::Relaxed)).to_string(),
        );
        let backfills = self.backfills.lock().map(|b| b.clone()).unwrap_or_default();
        for (name, help, get) in [
            (
                "walcast_backfill_rows_estimate",
                "Rows in the table when its backfill started (estimate).",
                (|g: &BackfillGauge| g.rows_estimate.to_string()) as fn(&BackfillGauge) -> String,
            ),
            (
                "walcast_backfill_rows_sent",
                "Rows a backfill sent as read events.",
                |g: &BackfillGauge| g.rows_sent.to_string(),
            ),
            (
                "walcast_backfill_rows_per_second",
                "A running backfill's rate since it started in this process.",
                |g: &BackfillGauge| format!("{:.1}", g.rate),
            ),
            (
                "walcast_backfill_eta_seconds",
                "A running backfill's time left at its rate (0: unknown or finished).",
                |g: &BackfillGauge| format!("{:.0}", g.eta),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (t, g) in &backfills {
                let _ = writeln!(out, "{name}{{table=\"{t}\"}} {}", get(g));
            }
        }
        let _ = writeln!(out, "# HELP walcast_backfill_state 1 for the backfill's state.\n# TYPE walcast_backfill_state gauge");
        for (t, g) in &backfills {
            let _ = writeln!(
                out,
                "walcast_backfill_state{{table=\"{t}\",state=\"{}\"}} 1",
                g.state
            );
        }
        gauge(
            &mut out,
            "walcast_up",
            "1 while the streamer is healthy (see /healthz).",
            u8::from(self.health(tracker).is_ok()).to_string(),
        );
        out
    }
}

/// Serves `/healthz` and `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, tracker: Tracker) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let tracker = tracker.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), respond(conn, &tracker)).await;
        });
    }
}

async fn respond(mut conn: TcpStream, tracker: &Tracker) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let metrics = tracker.metrics();
    let (status, ctype, body) = match (line.starts_with("GET "), path) {
        (true, "/healthz") => match metrics.health(tracker) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
        },
        (true, "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render(tracker),
        ),
        (true, _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

/// `GET /healthz` on `addr` (for `streamer healthz`, the container health check).
pub async fn probe(addr: SocketAddr) -> Result<(), String> {
    let run = async {
        let mut conn = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = String::new();
        conn.read_to_string(&mut resp)
            .await
            .map_err(|e| e.to_string())?;
        if resp.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(resp
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or("no answer")
                .trim()
                .to_owned())
        }
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Every 10 s, asks Postgres how far the slot is behind.
pub async fn probe_lag(pg: crate::config::Postgres, slot: String, metrics: Arc<Metrics>) {
    loop {
        if let Ok(catalog) = crate::replication::Catalog::connect(&pg, &slot).await {
            loop {
                match catalog.slot_lag(&slot).await {
                    Ok(Some(lag)) => metrics.set_lag(lag),
                    Ok(None) => metrics.set_lag(-1),
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// CloudWatch Embedded Metric Format: the key figures as log lines that
/// CloudWatch Logs turns into metrics (namespace `walcast`), so an ECS task
/// needs no agent or scraper. Counts are per interval (deltas).
pub mod emf {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::time::Duration;

    use super::{Metrics, TableCounters, BUCKETS};
    use crate::progress::Tracker;

    /// The metric names, for dashboards (kept in step with `infra/metrics-emf.txt`).
    pub const METRICS: [&str; 8] = [
        "EventsReceived",
        "EventsDelivered",
        "EventsFailed",
        "EventsDeadLettered",
        "DeliveryLatency",
        "ReplicationLagBytes",
        "EventsInFlight",
        "BackfillRowsSent",
    ];

    /// What the previous interval had, to report deltas.
    #[derive(Debug, Default)]
    pub struct Previous {
        tables: BTreeMap<String, TableCounters>,
        buckets: Vec<u64>,
        backfills: BTreeMap<String, i64>,
    }

    fn json_str(s: &str) -> String {
        serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
    }

    fn head(out: &mut String, millis: u128, dims: &[&str], metrics: &[(&str, &str)]) {
        let dims = dims
            .iter()
            .map(|d| json_str(d))
            .collect::<Vec<_>>()
            .join(",");
        let metrics = metrics
            .iter()
            .map(|(n, u)| format!("{{\"Name\":{},\"Unit\":{}}}", json_str(n), json_str(u)))
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(
            out,
            "{{\"_aws\":{{\"Timestamp\":{millis},\"CloudWatchMetrics\":[{{\"Namespace\":\"walcast\",\"Dimensions\":[[{dims}]],\"Metrics\":[{metrics}]}}]}}"
        );
    }

    fn now_millis() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    }

    /// The EMF documents for one interval (one JSON object per line), of a
    /// streamer whose one sink records on the tracker's metrics.
    pub fn lines(
        metrics: &Metrics,
        tracker: &Tracker,
        slot: &str,
        sink: &str,
        prev: &mut Previous,
    ) -> Vec<String> {
        let millis = now_millis();
        let mut out = sink_lines(metrics, tracker.in_flight(), slot, sink, prev, millis);
        out.extend(slot_lines(metrics, slot, prev, millis));
        out
    }

    /// Per table and per sink: the sink's counts and latency.
    fn sink_lines(
        metrics: &Metrics,
        in_flight: impl std::fmt::Display,
        slot: &str,
        sink: &str,
        prev: &mut Previous,
        millis: u128,
    ) -> Vec<String> {
        let tables = metrics.tables.lock().map(|t| t.clone()).unwrap_or_default();
        let mut out = Vec::new();
        let mut totals = [0u64; 4];
        let counts = [
            (
                "EventsReceived",
                (|c: &TableCounters| c.received.iter().sum()) as fn(&TableCounters) -> u64,
            ),
            ("EventsDelivered", |c: &TableCounters| c.delivered),
            ("EventsFailed", |c: &TableCounters| c.failed),
            ("EventsDeadLettered", |c: &TableCounters| c.dead_lettered),
        ];
        for (table, now) in &tables {
            let before = prev.tables.get(table).cloned().unwrap_or_default();
            let mut line = String::new();
            head(
                &mut line,
                millis,
                &["Slot", "Sink", "Table"],
                &counts.map(|(n, _)| (n, "Count")),
            );
            let _ = write!(
                line,
                ",\"Slot\":{},\"Sink\":{},\"Table\":{}",
                json_str(slot),
                json_str(sink),
                json_str(table)
            );
            for (i, (name, get)) in counts.iter().enumerate() {
                let delta = get(now).saturating_sub(get(&before));
                totals[i] += delta;
                let _ = write!(line, ",\"{name}\":{delta}");
            }
            line.push('}');
            out.push(line);
        }
        prev.tables = tables;

        // Per slot and sink: totals, in flight, and the latency distribution as up to
        // 100 values (bucket bounds, each as often as its share), so CloudWatch's
        // percentile statistics work on it.
        let cumulative = metrics
            .latency
            .lock()
            .map(|l| l.0.to_vec())
            .unwrap_or_default();
        let delta: Vec<u64> = cumulative
            .iter()
            .enumerate()
            .map(|(i, &n)| n.saturating_sub(prev.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        let per_bucket: Vec<u64> = delta
            .iter()
            .enumerate()
            .map(|(i, &d)| d.saturating_sub(if i == 0 { 0 } else { delta[i - 1] }))
            .collect();
        prev.buckets = cumulative;
        let total: u64 = per_bucket.iter().sum();
        let mut values = Vec::new();
        if total > 0 {
            for (i, &n) in per_bucket.iter().enumerate() {
                let share = ((n as f64 / total as f64) * 100.0).round() as usize;
                let share = if n > 0 { share.max(1) } else { 0 };
                for _ in 0..share {
                    values.push(format!("{}", BUCKETS[i] * 1000.0));
                }
            }
            values.truncate(100);
        }
        let mut line = String::new();
        let mut names: Vec<(&str, &str)> = counts.iter().map(|(n, _)| (*n, "Count")).collect();
        names.push(("EventsInFlight", "Count"));
        if !values.is_empty() {
            names.push(("DeliveryLatency", "Milliseconds"));
        }
        head(&mut line, millis, &["Slot", "Sink"], &names);
        let _ = write!(
            line,
            ",\"Slot\":{},\"Sink\":{}",
            json_str(slot),
            json_str(sink)
        );
        for (i, (name, _)) in counts.iter().enumerate() {
            let _ = write!(line, ",\"{name}\":{}", totals[i]);
        }
        let _ = write!(line, ",\"EventsInFlight\":{in_flight}");
        if !values.is_empty() {
            let _ = write!(line, ",\"DeliveryLatency\":[{}]", values.join(","));
        }
        line.push('}');
        out.push(line);
        out
    }

    /// Per slot: lag, and backfills per table.
    fn slot_lines(metrics: &Metrics, slot: &str, prev: &mut Previous, millis: u128) -> Vec<String> {
        let mut out = Vec::new();
        let lag = metrics.lag_bytes.load(std::sync::atomic::Ordering::Relaxed);
        if lag >= 0 {
            let mut line = String::new();
            head(
                &mut line,
                millis,
                &["Slot"],
                &[("ReplicationLagBytes", "Bytes")],
            );
            let _ = write!(
                line,
                ",\"Slot\":{},\"ReplicationLagBytes\":{lag}}}",
                json_str(slot)
            );
            out.push(line);
        }
        let backfills = metrics
            .backfills
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        for (table, g) in &backfills {
            let before = prev.backfills.get(table).copied().unwrap_or(0);
            let mut line = String::new();
            head(
                &mut line,
                millis,
                &["Slot", "Table"],
                &[("BackfillRowsSent", "Count")],
            );
            let _ = write!(
                line,
                ",\"Slot\":{},\"Table\":{},\"BackfillRowsSent\":{}}}",
                json_str(slot),
                json_str(table),
                (g.rows_sent - before).max(0)
            );
            prev.backfills.insert(table.clone(), g.rows_sent);
            out.push(line);
        }
        out
    }

    /// Writes the documents to stderr (the task's log stream) every `interval`, until dropped.
    pub async fn write(tracker: Tracker, slot: String, sink: String, interval: Duration) {
        let mut prev = Intervals::default();
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let lines = interval_lines(&tracker, &slot, &sink, &mut prev);
            let mut err = std::io::stderr().lock();
            for l in lines {
                let _ = writeln!(err, "{l}");
            }
        }
    }

    /// What the previous interval had, for the slot and for each sink.
    #[derive(Debug, Default)]
    pub struct Intervals {
        slot: Previous,
        sinks: BTreeMap<String, Previous>,
    }

    /// One interval's documents: [`lines`] for a streamer with one sink (`sink`, recording
    /// on the tracker's metrics), else each sink's (its `Sink` dimension is its name) and
    /// the slot's.
    pub fn interval_lines(
        tracker: &Tracker,
        slot: &str,
        sink: &str,
        prev: &mut Intervals,
    ) -> Vec<String> {
        let root = tracker.metrics();
        let sinks = root.each_sink();
        if sinks.is_empty() {
            return lines(root, tracker, slot, sink, &mut prev.slot);
        }
        let millis = now_millis();
        let mut out = Vec::new();
        for (name, m) in sinks {
            let name = name.unwrap_or_default();
            let p = prev.sinks.entry(name.clone()).or_default();
            out.extend(sink_lines(&m, m.in_flight(), slot, &name, p, millis));
        }
        out.extend(slot_lines(root, slot, &mut prev.slot, millis));
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::event::{Column, Event, Table, TypeKind};
        use std::sync::Arc;

        fn event(seq: u64) -> Event {
            Event {
                seq,
                commit_lsn: 1,
                commit_idx: seq,
                commit_time_micros: super::super::now_micros() - 5_000,
                action: change_event::Action::Insert,
                table: Arc::new(Table::new(
                    1,
                    "public".into(),
                    "users".into(),
                    vec![Column::new("id".into(), TypeKind::Integer, true)],
                    vec![0],
                    vec![],
                )),
                group_id: "g".into(),
                idempotency_key: "k".into(),
                pks: "[\"1\"]".into(),
                payload: "{}".into(),
                dedup_scope: None,
            }
        }

        #[test]
        fn documents_follow_the_embedded_metric_format_with_deltas() {
            let tracker = Tracker::new(0);
            let m = tracker.metrics();
            for seq in 0..3 {
                m.received(&event(seq));
                m.delivered(&event(seq));
            }
            m.set_lag(4096);
            let mut prev = Previous::default();
            let docs: Vec<serde_json::Value> =
                lines(m, &tracker, "walcast", "users_sqs", &mut prev)
                    .iter()
                    .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
                    .collect();
            assert_eq!(docs.len(), 3, "per table, per sink, lag");
            for d in &docs {
                let directive = &d["_aws"]["CloudWatchMetrics"][0];
                assert_eq!(directive["Namespace"], "walcast");
                assert!(d["_aws"]["Timestamp"].as_u64().is_some());
                for dim in directive["Dimensions"][0].as_array().expect("dimensions") {
                    assert!(d[dim.as_str().expect("name")].is_string(), "{d}");
                }
                for metric in directive["Metrics"].as_array().expect("metrics") {
                    let name = metric["Name"].as_str().expect("name");
                    assert!(METRICS.contains(&name), "{name}");
                    assert!(d[name].is_number() || d[name].is_array(), "{d}");
                }
            }
            assert_eq!(docs[0]["Table"], "public.users");
            assert_eq!(docs[0]["EventsDelivered"], 3);
            assert_eq!(docs[1]["EventsReceived"], 3);
            let latency = docs[1]["DeliveryLatency"]
                .as_array()
                .expect("latency values");
            assert!(!latency.is_empty() && latency.len() <= 100);
            assert_eq!(docs[2]["ReplicationLagBytes"], 4096);
            // The next interval reports what happened since.
            m.delivered(&event(9));
            let again = lines(m, &tracker, "walcast", "users_sqs", &mut prev);
            let per_table: serde_json::Value = serde_json::from_str(&again[0]).expect("json");
            assert_eq!(per_table["EventsDelivered"], 1);
            assert_eq!(per_table["EventsReceived"], 0);
        }

        #[test]
        fn each_sink_of_several_has_its_own_documents() {
            let tracker = Tracker::new(0);
            let root = tracker.metrics();
            let (a, b) = (root.add_sink("a"), root.add_sink("b"));
            for seq in 0..3 {
                root.received(&event(seq));
                a.received(&event(seq));
                a.delivered(&event(seq));
            }
            b.received(&event(0));
            b.sent(1);
            root.set_lag(10);
            let mut prev = Intervals::default();
            let docs: Vec<serde_json::Value> = interval_lines(&tracker, "walcast", "x", &mut prev)
                .iter()
                .map(|l| serde_json::from_str(l).expect("json"))
                .collect();
            let per_sink: Vec<&serde_json::Value> = docs
                .iter()
                .filter(|d| d.get("Table").is_none() && d.get("Sink").is_some())
                .collect();
            assert_eq!(per_sink.len(), 2, "{docs:?}");
            assert_eq!(
                (
                    per_sink[0]["Sink"].as_str(),
                    per_sink[0]["EventsDelivered"].as_u64()
                ),
                (Some("a"), Some(3))
            );
            assert_eq!(
                (
                    per_sink[1]["Sink"].as_str(),
                    per_sink[1]["EventsInFlight"].as_i64()
                ),
                (Some("b"), Some(1))
            );
            assert_eq!(
                per_sink[1]["EventsReceived"], 1,
                "what was handed to that sink"
            );
            assert!(
                docs.iter().any(|d| d["ReplicationLagBytes"] == 10),
                "the slot's once"
            );
        }

        #[test]
        fn health_and_metrics_name_the_sink_that_failed() {
            let tracker = Tracker::new(0);
            let root = tracker.metrics();
            root.set_connected(true);
            let (a, b) = (root.add_sink("a"), root.add_sink("b"));
            a.delivered(&event(0));
            assert_eq!(root.health(&tracker), Ok(()));
            b.set_sink_error("the queue is gone");
            assert_eq!(
                root.health(&tracker),
                Err("sink `b` failed: the queue is gone".into())
            );
            let text = root.render(&tracker);
            assert!(text.contains("walcast_sink_up{sink=\"a\"} 1"), "{text}");
            assert!(text.contains("walcast_sink_up{sink=\"b\"} 0"), "{text}");
            assert!(
                text.contains(
                    "walcast_events_delivered_total{sink=\"a\",table=\"public.users\"} 1"
                ),
                "{text}"
            );
            assert!(text.contains("walcast_up 0"), "{text}");
        }

        #[test]
        fn a_stalled_sink_says_why_it_retries_until_one_is_accepted() {
            let tracker = Tracker::new(0);
            let root = tracker.metrics();
            root.set_connected(true);
            let stalled = || {
                *root.last_accept.lock().expect("lock") =
                    Some(std::time::Instant::now() - 2 * crate::ops::STALL);
            };
            stalled();
            root.retrying("orders.fifo: ThrottlingException: Rate exceeded".into());
            assert_eq!(
                root.sink_health(None, true),
                Err("sink has events in flight and accepted none for 120s; retrying: orders.fifo: ThrottlingException: Rate exceeded".into())
            );
            root.delivered(&event(0));
            assert_eq!(root.sink_health(None, true), Ok(()));
            stalled();
            assert_eq!(
                root.sink_health(None, true),
                Err("sink has events in flight and accepted none for 120s".into()),
                "an accepted event clears the reason"
            );
        }

        #[test]
        fn the_list_dashboards_are_checked_against_matches() {
            let listed: Vec<&str> = include_str!("../../infra/metrics-emf.txt")
                .lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("namespace "))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            assert_eq!(listed, METRICS);
        }
    }
}
