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
    connected: AtomicBool,
    sink_error: Mutex<Option<String>>,
    last_accept: Mutex<Option<Instant>>,
    started: Instant,
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
            connected: AtomicBool::new(false),
            sink_error: Mutex::default(),
            last_accept: Mutex::default(),
            started: Instant::now(),
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Metrics {
    fn table(&self, name: &str, f: impl FnOnce(&mut TableCounters)) {
        if let Ok(mut t) = self.tables.lock() {
            match t.get_mut(name) {
                Some(c) => f(c),
                None => f(t.entry(name.to_owned()).or_default()),
            }
        }
    }

    /// The pipeline built an event.
    pub fn received(&self, e: &Event) {
        self.table(&e.table.qualified, |c| {
            c.received[action_index(e.action)] += 1
        });
    }

    /// The sink's destination accepted an event.
    pub fn delivered(&self, e: &Event) {
        self.delivered_at(&e.table.qualified, e.commit_time_micros);
    }

    /// The sink's destination accepted an event of `table` committed at `commit_time_micros`.
    pub fn delivered_at(&self, table: &str, commit_time_micros: i64) {
        self.table(table, |c| c.delivered += 1);
        let secs = (now_micros() - commit_time_micros).max(0) as f64 / 1e6;
        if let Ok(mut l) = self.latency.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    l.0[i] += 1;
                }
            }
            l.1 += 1;
            l.2 += secs;
        }
        if let Ok(mut t) = self.last_accept.lock() {
            *t = Some(Instant::now());
        }
    }

    /// A delivery attempt of an event failed (it will be retried or dead-lettered).
    pub fn failed(&self, e: &Event) {
        self.table(&e.table.qualified, |c| c.failed += 1);
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

    /// Healthy: replication connected, sink not failed, and not stalled with events in flight.
    pub fn health(&self, tracker: &Tracker) -> Result<(), String> {
        if let Ok(s) = self.sink_error.lock() {
            if let Some(e) = s.as_ref() {
                return Err(format!("sink failed: {e}"));
            }
        }
        if !self.connected.load(Ordering::Relaxed) {
            return Err("replication not connected".into());
        }
        if tracker.in_flight() > 0 {
            let last = self.last_accept.lock().ok().and_then(|t| *t);
            if last.unwrap_or(self.started).elapsed() > STALL {
                return Err(format!(
                    "sink has events in flight and accepted none for {}s",
                    STALL.as_secs()
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
        ] {
            counter(&mut out, name, help);
            for (t, c) in &tables {
                let _ = writeln!(out, "{name}{{table=\"{t}\"}} {}", get(c));
            }
        }
        counter(
            &mut out,
            "walcast_batches_total",
            "Batches sent to the destination.",
        );
        let _ = writeln!(
            out,
            "walcast_batches_total {}",
            self.batches.load(Ordering::Relaxed)
        );
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
        if let Ok(l) = self.latency.lock() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "walcast_delivery_latency_seconds_bucket{{le=\"{b}\"}} {}",
                    l.0[i]
                );
            }
            let _ = writeln!(
                out,
                "walcast_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}",
                l.1
            );
            let _ = writeln!(out, "walcast_delivery_latency_seconds_sum {}", l.2);
            let _ = writeln!(out, "walcast_delivery_latency_seconds_count {}", l.1);
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
            "walcast_replication_connected",
            "1 while the replication connection is up.",
            u8::from(self.connected.load(Ordering::Relaxed)).to_string(),
        );
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
