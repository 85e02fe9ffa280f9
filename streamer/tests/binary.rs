//! The `streamer` binary: stdout sink, SIGTERM, kill -9 and restart, `check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use change_event::ChangeEvent;

use crate::support::{eventually, TestDb};
use crate::WAIT;

struct Streamer {
    child: Child,
    out: PathBuf,
}

fn write_config(db: &TestDb, dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("streamer.yaml");
    std::fs::write(&path, db.config_yaml(extra)).expect("write config");
    path
}

impl Streamer {
    fn start(config: &Path, dir: &Path, run: u32) -> Streamer {
        Streamer::start_env(config, dir, run, &[])
    }

    fn start_env(config: &Path, dir: &Path, run: u32, env: &[(&str, &str)]) -> Streamer {
        let out = dir.join(format!("out-{run}.jsonl"));
        let err = dir.join(format!("err-{run}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_streamer"))
            .args(["run", "--config"])
            .arg(config)
            // The suite's own knob is not the streamer's (which refuses unknown WALCAST_*).
            .env_remove("WALCAST_BACKFILL_TEST_ROWS")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(std::fs::File::create(&out).expect("out")))
            .stderr(Stdio::from(std::fs::File::create(err).expect("err")))
            .spawn()
            .expect("spawn streamer");
        Streamer { child, out }
    }

    fn lines(&self) -> Vec<ChangeEvent> {
        read_events(&self.out)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }

    async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "streamer did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Complete lines only (a killed process may leave half a line).
fn read_events(path: &Path) -> Vec<ChangeEvent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).expect("each line is one event"))
        .collect()
}

fn id_of(e: &ChangeEvent) -> i64 {
    e.record["id"].as_i64().expect("id")
}

#[tokio::test]
async fn stdout_sink_sigterm_confirms_and_restart_sends_nothing_twice() {
    let db = TestDb::new("bin_term").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v text)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&db, dir.path(), "  tables: [t]\n");
    let mut s = Streamer::start(&config, dir.path(), 1);
    let slot = format!("s_{}", db.name);
    db.wait_streaming(&slot).await;
    db.exec("INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 500) i")
        .await;
    eventually(WAIT, || async { s.lines().len() >= 500 }).await;
    s.signal("-TERM");
    assert!(s.wait_exit().await.success(), "SIGTERM exits 0");
    let (confirmed, _) = db.slot_lsns(&slot).await;
    let last_commit = s.lines()[499].metadata.commit_lsn;
    assert!(
        confirmed > last_commit,
        "the slot moved past the delivered transaction"
    );

    db.exec("INSERT INTO t VALUES (501, 'after')").await;
    let s2 = Streamer::start(&config, dir.path(), 2);
    eventually(WAIT, || async { !s2.lines().is_empty() }).await;
    let again = s2.lines();
    assert_eq!(again.len(), 1, "only the new change after a clean stop");
    assert_eq!(id_of(&again[0]), 501);
    drop(s2);
    db.drop_db().await;
}

#[tokio::test]
async fn kill_9_mid_stream_loses_nothing() {
    let db = TestDb::new("bin_kill").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&db, dir.path(), "  tables: [t]\n");
    let mut s1 = Streamer::start(&config, dir.path(), 1);
    let slot = format!("s_{}", db.name);
    db.wait_streaming(&slot).await;
    // A writer: 400 transactions of 5 inserts, then an update of each row.
    let url = db.url.clone();
    let writer = tokio::spawn(async move {
        let c = crate::support::connect(&url).await;
        for t in 0..400 {
            let base = t * 5;
            c.batch_execute(&format!(
                "INSERT INTO t SELECT i, 0 FROM generate_series({}, {}) i",
                base + 1,
                base + 5
            ))
            .await
            .expect("insert");
        }
        c.batch_execute("UPDATE t SET v = 1").await.expect("update");
    });
    eventually(WAIT, || async { s1.lines().len() >= 300 }).await;
    s1.signal("-KILL");
    let _ = s1.wait_exit().await;
    writer.await.expect("writer");
    let s2 = Streamer::start(&config, dir.path(), 2);
    // Every row's insert and update arrive, across both runs.
    let all = || {
        let mut v = read_events(&dir.path().join("out-1.jsonl"));
        v.extend(s2.lines());
        v
    };
    eventually(WAIT, || async {
        let mut seen: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for e in all() {
            seen.entry(id_of(&e))
                .or_default()
                .push(e.action.to_string());
        }
        seen.len() == 2000 && seen.values().all(|a| a.iter().any(|x| x == "update"))
    })
    .await;
    // Per row, the insert comes before the update in each run's output.
    for run in [read_events(&dir.path().join("out-1.jsonl")), s2.lines()] {
        let mut last: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        for e in run {
            let pos = (e.metadata.commit_lsn, e.metadata.commit_idx);
            if let Some(prev) = last.insert(id_of(&e), pos) {
                assert!(prev < pos, "row {} went backwards", id_of(&e));
            }
        }
    }
    drop(s2);
    db.drop_db().await;
}

#[tokio::test]
async fn check_diagnoses_a_misconfigured_database() {
    let db = TestDb::new("bin_check").await;
    db.exec(
        "CREATE TABLE nopk (v text);
         CREATE TABLE toasty (id int PRIMARY KEY, body text);
         CREATE TABLE fine (id int PRIMARY KEY, n int);
         CREATE ROLE weak LOGIN;",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&db, dir.path(), "  tables: [nopk, toasty, fine]\n");
    let out = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a FAIL exits non-zero:\n{text}");
    assert!(text.contains("ok   wal_level is logical"), "{text}");
    assert!(
        text.contains("FAIL public.nopk has no replica identity")
            && text.contains("ALTER TABLE public.nopk REPLICA IDENTITY FULL"),
        "{text}"
    );
    assert!(
        text.contains("warn public.toasty has TOAST-able columns"),
        "{text}"
    );
    assert!(text.contains("REPLICA IDENTITY FULL"), "{text}");
    assert!(
        text.contains("slot s_") && text.contains("does not exist"),
        "{text}"
    );

    // A user without REPLICATION is told how to fix it.
    let weak_url = db.url.replace("postgres@", "weak@");
    let out = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["check"])
        .env("WALCAST_SOURCE_URL", &weak_url)
        .env("WALCAST_SOURCE_TABLES", "fine")
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL user weak lacks the REPLICATION attribute"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));

    // Bad config: one error naming the field, exit 2, no secret printed.
    let out = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["check"])
        .env("WALCAST_SOURCE_URL", "postgres://u:hunter2@h/db")
        .env("WALCAST_SINK_TYPE", "sqs")
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("sink.queue_url"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    db.exec("DROP ROLE weak").await;
    db.drop_db().await;
}

/// `127.0.0.1:<a free port>` for the operations listener.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to the ops listener");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read");
    out
}

/// `streamer healthz` against `addr`: whether it exits 0. Its output (`healthy`,
/// `unhealthy: Connection refused` while nothing listens yet) is captured, not printed:
/// the tests poll it and expect failures on the way.
fn healthz(addr: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_streamer"))
        .arg("healthz")
        .env("WALCAST_HTTP_LISTEN", addr)
        .output()
        .expect("run healthz")
        .status
        .success()
}

#[tokio::test]
async fn healthz_and_metrics() {
    let db = TestDb::new("bin_ops").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(&db, dir.path(), "  tables: [t]\n");
    let addr = free_addr();
    assert!(!healthz(&addr), "nothing listens yet");
    let mut s = Streamer::start_env(&config, dir.path(), 1, &[("WALCAST_HTTP_LISTEN", &addr)]);
    eventually(WAIT, || async { healthz(&addr) }).await;
    db.exec("INSERT INTO t SELECT generate_series(1, 5); DELETE FROM t WHERE id = 1;")
        .await;
    eventually(WAIT, || async { s.lines().len() >= 6 }).await;
    eventually(WAIT, || async {
        http_get(&addr, "/metrics").contains("walcast_delivery_latency_seconds_count 6")
    })
    .await;
    let m = http_get(&addr, "/metrics");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for line in [
        "walcast_events_received_total{table=\"public.t\",action=\"insert\"} 5",
        "walcast_events_received_total{table=\"public.t\",action=\"delete\"} 1",
        "walcast_events_delivered_total{table=\"public.t\"} 6",
        "walcast_events_dead_lettered_total{table=\"public.t\"} 0",
        "walcast_replication_connected 1",
        "walcast_events_in_flight 0",
        "walcast_up 1",
    ] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    let confirmed: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("walcast_confirmed_lsn "))
        .and_then(|v| v.parse().ok())
        .expect("confirmed LSN gauge");
    assert!(confirmed > 0);
    eventually(WAIT, || async {
        http_get(&addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("walcast_replication_lag_bytes "))
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|lag| lag >= 0)
    })
    .await;
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    s.signal("-TERM");
    assert!(s.wait_exit().await.success());
    assert!(!healthz(&addr), "a stopped streamer is not healthy");
    db.drop_db().await;
}

/// A reader that stops reading (a full pipe) blocks only the stdout writer: the
/// operations listener answers, and SIGTERM ends the process within the drain
/// timeout. Start-up warns about what the stream cannot carry, without colour codes.
#[tokio::test]
async fn blocked_stdout_neither_hangs_healthz_nor_shutdown() {
    let db = TestDb::new("bin_blocked").await;
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int GENERATED ALWAYS AS (id * 2) STORED)",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let config = write_config(
        &db,
        dir.path(),
        &format!("  tables: [t]\nsink:\n  drain_timeout_secs: 2\nhttp:\n  listen: {addr}\n"),
    );
    let err = dir.path().join("err.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&err).expect("err")))
        .spawn()
        .expect("spawn streamer");
    // Held, never read: once the pipe is full, every write blocks.
    let _unread = child.stdout.take();
    eventually(WAIT, || async { healthz(&addr) }).await;
    db.exec("INSERT INTO t (id, v) SELECT i, repeat('x', 100) FROM generate_series(1, 100000) i")
        .await;
    let received = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "walcast_events_received_total{table=\"public.t\",action=\"insert\"} ",
                )
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    eventually(WAIT, || async {
        received(&http_get(&addr, "/metrics")) > 300
    })
    .await;
    // Stuck on the pipe now (the count no longer moves), yet the listener answers.
    let stuck_at = received(&http_get(&addr, "/metrics"));
    assert!(stuck_at < 100_000, "the pipe cannot hold 100k events");
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1"));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not end the process within the drain timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&err).expect("stderr");
    // Postgres 18 streams them: no warning there.
    assert_eq!(
        log.contains("generated columns n are not streamed"),
        crate::support::pg_major() < 18,
        "{log}"
    );
    assert!(log.contains("drain timed out"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI colour codes when stderr is a file: {log}"
    );
    db.drop_db().await;
}

/// No configuration at all: one line that says how to give one, exit code 2.
#[tokio::test]
async fn no_configuration_says_how_to_give_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .arg("run")
        .env_remove("WALCAST_SOURCE_URL")
        .env_remove("WALCAST_CONFIG")
        .output()
        .expect("run streamer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--config") && err.contains("WALCAST_SOURCE_URL"),
        "{err}"
    );
}

/// A backfill survives kill -9 three times: each restart continues after the last
/// finished chunk (never from zero), and every row arrives.
#[tokio::test]
async fn backfill_resumes_after_kill_9() {
    const ROWS: usize = 150_000;
    let db = TestDb::new("bin_bf").await;
    db.exec(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, repeat('v', 20) FROM generate_series(1, {ROWS}) i;"
    ))
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let config = write_config(
        &db,
        dir.path(),
        &format!("  tables: [t]\nhttp:\n  listen: {addr}\n"),
    );
    let mut s = Streamer::start(&config, dir.path(), 1);
    eventually(WAIT, || async { healthz(&addr) }).await;
    let out = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["backfill", "t", "--detach", "--config"])
        .arg(&config)
        .output()
        .expect("streamer backfill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = || async {
        db.client
            .query_one("SELECT rows_sent FROM walcast.backfills", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    let mut stored = 0;
    for (run, at_least) in [(2u32, 20_000i64), (3, 50_000), (4, 80_000)] {
        eventually(Duration::from_secs(120), || async {
            sent().await >= at_least
        })
        .await;
        if run == 2 {
            let m = http_get(&addr, "/metrics");
            assert!(
                m.contains("walcast_backfill_rows_sent{table=\"public.t\"}"),
                "{m}"
            );
            assert!(
                m.contains("walcast_backfill_state{table=\"public.t\",state=\"running\"} 1"),
                "{m}"
            );
        }
        s.signal("-KILL");
        s.wait_exit().await;
        let now = sent().await;
        assert!(now >= stored, "progress never goes back: {now} < {stored}");
        stored = now;
        s = Streamer::start(&config, dir.path(), run);
        // The first read after the restart comes after the stored position.
        eventually(Duration::from_secs(120), || async {
            s.lines()
                .iter()
                .any(|e| e.action == change_event::Action::Read)
        })
        .await;
        let first = s
            .lines()
            .into_iter()
            .find(|e| e.action == change_event::Action::Read)
            .map(|e| id_of(&e))
            .expect("a read");
        assert!(first > 1, "run {run} started the backfill from zero");
    }
    eventually(Duration::from_secs(180), || async {
        db.client
            .query_one("SELECT state FROM walcast.backfills", &[])
            .await
            .map(|r| r.get::<_, String>(0) == "done")
            .unwrap_or(false)
    })
    .await;
    let text = Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["backfill", "--status", "--config"])
        .arg(&config)
        .output()
        .expect("status");
    let status = String::from_utf8_lossy(&text.stdout);
    assert!(status.contains("public.t done"), "{status}");
    s.signal("-TERM");
    s.wait_exit().await;
    let mut seen = std::collections::BTreeSet::new();
    for run in 1..=4 {
        for e in read_events(&dir.path().join(format!("out-{run}.jsonl"))) {
            if e.action == change_event::Action::Read {
                seen.insert(id_of(&e));
            }
        }
    }
    assert_eq!(seen.len(), ROWS, "every row arrived");
    db.drop_db().await;
}

/// `source.heartbeat_secs`: heartbeats go through the slot and come back as no
/// event; `/metrics` shows their age, and the slot advances while the tables are idle.
#[tokio::test]
async fn heartbeats_advance_the_slot_and_show_their_age() {
    let db = TestDb::new("bin_heartbeat").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let config = write_config(
        &db,
        dir.path(),
        &format!("  tables: [t]\n  heartbeat_secs: 1\nhttp:\n  listen: {addr}\n"),
    );
    let mut s = Streamer::start(&config, dir.path(), 1);
    eventually(WAIT, || async { healthz(&addr) }).await;
    let slot = format!("s_{}", db.name);
    let (start, _) = db.slot_lsns(&slot).await;
    let gauge = |m: &str, name: &str| -> Option<f64> {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
    };
    eventually(WAIT, || async {
        let m = http_get(&addr, "/metrics");
        gauge(&m, "walcast_heartbeats_sent_total").is_some_and(|n| n >= 3.0)
            && gauge(&m, "walcast_heartbeat_age_seconds").is_some_and(|a| (0.0..10.0).contains(&a))
    })
    .await;
    // Nothing was written to the tables: the slot moved on all the same (keepalives
    // after the heartbeats are confirmed; the age above could only come from them).
    eventually(WAIT, || async { db.slot_lsns(&slot).await.0 > start }).await;
    assert!(s.lines().is_empty(), "heartbeats make no event");
    s.signal("-TERM");
    assert!(s.wait_exit().await.success());
    db.drop_db().await;
}

/// `http.listen` on port 0: the system picks a port, and the log names the one bound.
#[tokio::test]
async fn the_log_names_the_port_bound_for_port_0() {
    let db = TestDb::new("bin_port0").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &db,
        dir.path(),
        "  tables: [t]\nhttp:\n  listen: 127.0.0.1:0\n",
    );
    let mut s = Streamer::start(&config, dir.path(), 1);
    let log = dir.path().join("err-1.log");
    let bound = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = text.lines().find(|l| l.contains("serving /healthz"))?;
        let at = line.find("listen=")? + "listen=".len();
        Some(line[at..].split_whitespace().next()?.to_owned())
    };
    eventually(WAIT, || async { bound().is_some() }).await;
    let addr = bound().expect("logged");
    assert!(!addr.ends_with(":0"), "{addr}");
    eventually(WAIT, || async { healthz(&addr) }).await;
    s.signal("-TERM");
    assert!(s.wait_exit().await.success());
    db.drop_db().await;
}
