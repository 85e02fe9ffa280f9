//! Test support: a throwaway Postgres with `wal_level=logical`, one per test
//! binary, and a fresh database per test.
//!
//! The major version is `WALCAST_PG_VERSION` (default 15): 15 runs Debian's
//! binaries (`/usr/lib/postgresql/15/bin`), the others those that
//! `infra/install-postgres.sh` put in the tools directory
//! (`$WALCAST_TOOLS/postgres-<version>/bin`); `WALCAST_PG_BIN` overrides both.
//! The server runs as the `postgres` user when the tests run as root (`initdb`
//! refuses root); when that user cannot reach the binaries (a tools directory
//! under a private home), they are linked or copied once into a temp dir it can
//! read. It listens on 127.0.0.1 at a free port with its socket in a temp dir. A
//! watchdog stops it and removes its files when the test process exits, however
//! it exits.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub mod emulator;

pub struct PgServer {
    pub port: u16,
    pub dir: PathBuf,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The Postgres major the tests run against (`WALCAST_PG_VERSION`, default 15).
pub fn pg_major() -> u32 {
    match std::env::var("WALCAST_PG_VERSION") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|_| panic!("WALCAST_PG_VERSION={v}: give a major, e.g. 17")),
        _ => 15,
    }
}

/// Where the binaries of `pg_major()` are installed.
fn installed_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WALCAST_PG_BIN") {
        return PathBuf::from(bin);
    }
    let major = pg_major();
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("initdb").exists() {
        return debian;
    }
    let tools = std::env::var_os("WALCAST_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/walcast-tools")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let prefix = format!("postgres-{major}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&tools)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && !name.contains(".tmp.") && !name.contains(".new.")
        })
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "Postgres {major} server binaries not found (in {} or {}/postgres-{major}.*): \
             run infra/setup.sh (or infra/install-postgres.sh {major}), or set WALCAST_PG_BIN",
            debian.display(),
            tools.display()
        )
    })
}

/// The binaries, where the user that runs the server can execute them.
fn bin_dir() -> PathBuf {
    BIN.get_or_init(|| {
        let bin = installed_bin();
        if !is_root() || pg_user_can_run(&bin) {
            return bin;
        }
        stage_for_pg_user(&bin)
    })
    .clone()
}

fn pg_user_can_run(bin: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(bin.join("postgres"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Links (or, across file systems, copies) the installation that holds `bin`
/// (`bin/`, `lib/`, `share/`) into a temp dir the `postgres` user can read;
/// removed when this process exits.
fn stage_for_pg_user(bin: &Path) -> PathBuf {
    let install = bin.parent().expect("bin dir has a parent");
    let staged = std::env::temp_dir().join(format!("walcast-pgbin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staged);
    let linked = Command::new("cp")
        .arg("-al")
        .arg(install)
        .arg(&staged)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !linked {
        let _ = std::fs::remove_dir_all(&staged);
        let ok = Command::new("cp")
            .arg("-a")
            .arg(install)
            .arg(&staged)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "copying {} to {} failed",
            install.display(),
            staged.display()
        );
    }
    let ok = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&staged)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "chmod of {} failed", staged.display());
    let staged_bin = staged.join(bin.file_name().expect("bin dir name"));
    assert!(
        pg_user_can_run(&staged_bin),
        "the postgres user cannot run {}",
        staged_bin.display()
    );
    // Removed when this process exits, however it exits (after the servers' watchdogs
    // have stopped them: those use these binaries).
    let cleanup = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; sleep 5; rm -rf {dir}",
        pid = std::process::id(),
        dir = staged.display()
    );
    spawn_watchdog(&cleanup);
    staged_bin
}

/// Runs `script` in the background, never waited on: it outlives this process
/// (to stop a server, remove files) however the process exits.
fn spawn_watchdog(script: &str) {
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("watchdog");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command run as the `postgres` user when we are root.
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgServer {
    /// The server of this test binary, started on first use.
    pub fn get() -> &'static PgServer {
        SERVER.get_or_init(PgServer::start)
    }

    fn start() -> PgServer {
        PgServer::start_with("main", "", None, DEFAULT_NAMES)
    }

    /// A server of its own (for tests that restart it or need other settings,
    /// e.g. `-c wal_level=replica -c ssl=off`), stopped and removed on drop.
    pub fn dedicated(tag: &str, settings: &str) -> PgServer {
        PgServer::start_with(tag, settings, None, DEFAULT_NAMES)
    }

    /// A server of its own with this `pg_hba.conf` and a certificate for these
    /// names (`subjectAltName` syntax, e.g. `DNS:db.example`).
    pub fn dedicated_tls(tag: &str, hba: &str, names: &str) -> PgServer {
        PgServer::start_with(tag, "", Some(hba), names)
    }

    fn start_with(tag: &str, settings: &str, hba: Option<&str>, names: &str) -> PgServer {
        let bin = bin_dir();
        let base = std::env::temp_dir().join(format!("walcast-pg-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let data = base.join("data");
        let sock = base.join("sock");
        std::fs::create_dir_all(&sock).expect("temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&base)
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown of {} failed", base.display());
        }
        let out = as_pg_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "--no-sync",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(hba) = hba {
            let path = data.join("pg_hba.conf");
            std::fs::write(&path, hba).expect("write pg_hba.conf");
        }
        make_certificates(&base, names);
        let port = free_port();
        let log = base.join("postgres.log");
        let mut pg = as_pg_user(&bin.join("pg_ctl"));
        pg.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
                 -c max_replication_slots=64 -c max_wal_senders=64 -c max_connections=200 \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                 -c wal_sender_timeout=60s -c ssl=on -c ssl_cert_file={base}/server.crt \
                 -c ssl_key_file={base}/server.key {settings}",
                sock.display(),
                base = base.display(),
            ))
            .arg("start")
            .stdout(Stdio::null());
        let status = pg.status().expect("pg_ctl start");
        assert!(
            status.success(),
            "postgres did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Watchdog: stop the server when this process exits, however it exits.
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {base}",
            pid = std::process::id(),
            ctl = if is_root() {
                format!("runuser -u postgres -- {}", bin.join("pg_ctl").display())
            } else {
                bin.join("pg_ctl").display().to_string()
            },
            data = data.display(),
            base = base.display(),
        );
        spawn_watchdog(&stop);
        PgServer { port, dir: base }
    }

    /// Restarts the server; `immediate` crashes it first (no shutdown checkpoint).
    pub fn restart(&self, immediate: bool) {
        let mode = if immediate { "immediate" } else { "fast" };
        let ok = as_pg_user(&bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-m", mode, "restart"])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "pg_ctl restart failed");
    }

    /// The CA that signed the server's certificate (for `sslrootcert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Over the Unix socket (which pg_hba.conf's `local` lines govern).
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.join("sock").display(),
            self.port
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_pg_user(&bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const DEFAULT_NAMES: &str = "DNS:localhost,IP:127.0.0.1";

/// A throwaway CA and a server certificate for `names` (by default `localhost`
/// and 127.0.0.1), so the server speaks TLS and tests can connect with
/// `sslmode=verify-full`.
fn make_certificates(dir: &Path, names: &str) {
    let sh = format!(
        "set -e; cd {dir}
         openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=walcast-test-ca
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost
         printf 'subjectAltName={names}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext
         chmod 600 server.key",
        dir = dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &sh])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "making test certificates failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if is_root() {
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.join("server.key"))
            .arg(dir.join("server.crt"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "chown of the server key failed");
    }
}

/// A fresh database for one test; dropped (with its slots) by `TestDb::drop_db`.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Client,
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    pub async fn new(prefix: &str) -> TestDb {
        TestDb::with_options(prefix, "").await
    }

    /// A database created `WITH` these options (e.g. `ENCODING 'SQL_ASCII' …`).
    pub async fn with_options(prefix: &str, options: &str) -> TestDb {
        let server = PgServer::get();
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let admin = connect(&server.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} {options}"))
            .await
            .expect("create database");
        let url = server.url(&name);
        let client = connect(&url).await;
        TestDb { name, url, client }
    }

    /// Drops the database and its slots.
    pub async fn drop_db(self) {
        let server = PgServer::get();
        let admin = connect(&server.url("postgres")).await;
        let _ = admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                   WHERE database = '{0}' AND active_pid IS NOT NULL;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                   WHERE datname = '{0}' AND pid <> pg_backend_pid();",
                self.name
            ))
            .await;
        drop(self.client);
        let mut last_error;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let slots = admin
                .batch_execute(&format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                       WHERE database = '{}' AND NOT active",
                    self.name
                ))
                .await;
            let r = match slots {
                Ok(()) => {
                    admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            self.name
                        ))
                        .await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) => last_error = format!("{e:?}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cannot drop database {}: {last_error}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `pg_current_wal_insert_lsn()`: past every commit so far (the write position,
    /// `pg_current_wal_lsn()`, may lag with `synchronous_commit=off`).
    pub async fn insert_lsn(&self) -> u64 {
        let row = self
            .client
            .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
            .await
            .expect("insert LSN");
        row.get::<_, i64>(0) as u64
    }

    /// The slot's confirmed_flush_lsn and the current WAL position.
    pub async fn slot_lsns(&self, slot: &str) -> (u64, u64) {
        let row = self
            .client
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint, (pg_current_wal_lsn() - '0/0')::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slot exists");
        (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
    }

    /// Waits until a walsender streams from `slot`. Not merely `active`: while
    /// `pg_create_logical_replication_slot` builds the slot (waiting for older
    /// transactions), the creating backend holds it, and a transaction that
    /// commits before the slot's consistent point is never streamed.
    pub async fn wait_streaming(&self, slot: &str) {
        eventually(Duration::from_secs(60), || async {
            self.client
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                     ON r.pid = s.active_pid WHERE s.slot_name = $1",
                    &[&slot],
                )
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await;
    }

    pub fn config_yaml(&self, extra: &str) -> String {
        format!(
            "source:\n  url: {}\n  slot: s_{}\n  publication: p_{}\n{extra}",
            self.url, self.name, self.name
        )
    }
}

/// Polls `cond` until it holds or `timeout` passes (then panics).
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Spawns the streamer binary (`streamer run --config CONFIG`, RUST_LOG=info), its
/// stderr into `log`, its stdout discarded.
pub fn spawn_streamer(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_streamer"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn streamer")
}

/// Inserts rows `(id, 0)` with ids 1..=n into `table`, `batch` rows a transaction,
/// on a connection of its own, in a task.
pub async fn insert_in_batches(
    url: &str,
    table: &'static str,
    n: usize,
    batch: usize,
) -> tokio::task::JoinHandle<()> {
    let client = connect(url).await;
    tokio::spawn(async move {
        for b in 0..n.div_ceil(batch) {
            let last = ((b + 1) * batch).min(n);
            client
                .batch_execute(&format!(
                    "INSERT INTO {table} SELECT g, 0 FROM generate_series({}, {last}) g",
                    b * batch + 1
                ))
                .await
                .expect("insert");
        }
    })
}
