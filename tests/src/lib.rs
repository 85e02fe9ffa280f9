//! The whole pipeline, started for one test: a throwaway Postgres, MiniStack (a local AWS
//! emulator) with the project's own `template.yaml` deployed to it, and one streamer on
//! one slot with a sink per delivery path.
//!
//! ```text
//!  Postgres ──► streamer (slot e2e) ─┬─ sink e2e_sqs ──► SQS FIFO ──► event source mapping ──► consumer-sqs
//!                                    └─ sink e2e_sns ──► SNS topic ──► subscription ─────────► consumer-sns
//!                                                         (both in MiniStack, as local processes)
//! ```
//!
//! What a handler received is read from its own logs: the deployed functions get
//! `RUST_LOG=info,lambda_runtime=trace` and `AWS_LAMBDA_LOG_FORMAT=JSON` (set on the
//! deployment with UpdateFunctionConfiguration; the template is not changed), so the
//! Lambda runtime logs each raw invocation event as a JSON line before the handler runs,
//! and MiniStack writes the function's output to its CloudWatch Logs group.
//!
//! Deployment and log reading go through `infra/template/ministack_local.py`, the same
//! code `infra/local.sh` uses. Everything started here is stopped when the [`Pipeline`]
//! is dropped, and by a watchdog process if the test process dies without dropping it.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::Value;

/// The message the Lambda runtime logs (at TRACE) with each raw invocation event.
const RAW_EVENT: &str = "raw JSON event received from Lambda";

/// The repository root (this crate is `tests/` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the streamer and the two functions (debug, as `cargo test` already did for
/// the workspace) and returns the directory holding the binaries.
pub fn build_binaries() -> Result<PathBuf> {
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(
        Command::new(cargo).current_dir(&root).args([
            "build",
            "-q",
            "-p",
            "walcast-streamer",
            "-p",
            "consumer-sqs",
            "-p",
            "consumer-sns",
            "--bins",
        ]),
        "cargo build of the streamer and the consumers",
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug"))
}

/// Starts a shell that waits for this process to exit, then runs `then`: it stops what
/// the test started even when the test process is killed.
fn watchdog(then: &str) -> Result<()> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {then}",
        pid = std::process::id()
    );
    // Deliberately not waited on: it outlives this process.
    #[allow(clippy::zombie_processes)]
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the watchdog")?;
    Ok(())
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. MiniStack and the streamer both
/// clean up on SIGTERM (MiniStack stops the function processes it started).
fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A throwaway Postgres 15 cluster with `wal_level=logical`.
struct Postgres {
    port: u16,
    data: PathBuf,
    pg_ctl: String,
    running: bool,
}

impl Postgres {
    fn start(work: &Path) -> Result<Self> {
        let bin = std::env::var_os("WALCAST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        ensure!(
            bin.join("initdb").exists(),
            "Postgres 15 server binaries not found in {} (run infra/setup.sh, or set WALCAST_PG_BIN)",
            bin.display()
        );
        let as_pg = |program: &str| {
            let path = bin.join(program);
            if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            } else {
                Command::new(path)
            }
        };
        let data = work.join("pgdata");
        run(
            as_pg("initdb").arg("-D").arg(&data).args([
                "--no-sync",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]),
            "initdb",
        )?;
        let port = free_port()?;
        let pg_ctl = if is_root() {
            format!("runuser -u postgres -- {}", bin.join("pg_ctl").display())
        } else {
            bin.join("pg_ctl").display().to_string()
        };
        watchdog(&format!(
            "{pg_ctl} -D {} stop -m immediate >/dev/null 2>&1",
            data.display()
        ))?;
        run(
            as_pg("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(work.join("postgres.log"))
                .args(["-w", "-o"])
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical \
                     -c fsync=off -c synchronous_commit=off",
                    work.display()
                ))
                .arg("start"),
            "pg_ctl start",
        )?;
        Ok(Self {
            port,
            data,
            pg_ctl,
            running: true,
        })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Postgres {
    fn stop(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "{} -D {} stop -m fast >/dev/null 2>&1",
                    self.pg_ctl,
                    self.data.display()
                ),
            ])
            .status();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One delivery of one change event to a handler, as the handler's logs show it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The SQS or SNS message id.
    pub message_id: String,
    /// The FIFO message group (SQS only).
    pub group: Option<String>,
    /// How many times SQS has delivered this message (SQS only).
    pub receive_count: Option<u32>,
    /// The message body as delivered (the change event's JSON text).
    pub body: String,
}

impl Delivery {
    /// The body parsed as JSON.
    pub fn event(&self) -> Result<Value> {
        serde_json::from_str(&self.body).context("a delivered body is not JSON")
    }
}

/// A delivery path: where a streamer publishes and which function receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// SQS FIFO queue → consumer-sqs.
    Sqs,
    /// SNS topic → consumer-sns.
    Sns,
}

/// The running pipeline. Dropping it stops everything it started (streamers, MiniStack
/// and the function processes it runs, Postgres) and removes the scratch directory.
pub struct Pipeline {
    work: PathBuf,
    venv: PathBuf,
    endpoint: String,
    outputs: Value,
    streamers: Vec<Child>,
    ministack: Child,
    pg: Postgres,
    /// An SQS client on the emulator.
    pub sqs: aws_sdk_sqs::Client,
}

impl Pipeline {
    /// Starts Postgres (with the `users`/`orders` sample schema) and MiniStack, deploys
    /// `template.yaml` with `DeliveryPath` = `delivery` and the extra `params`, and starts
    /// the streamer with a sink for each path in `paths`, on one slot.
    pub async fn start(delivery: &str, params: &[(&str, &str)], paths: &[Route]) -> Result<Self> {
        let root = repo_root();
        let bin = build_binaries()?;
        let venv = run(
            Command::new("bash").arg(root.join("infra/template/install-ministack.sh")),
            "infra/template/install-ministack.sh",
        )?
        .trim()
        .to_owned();
        let venv = PathBuf::from(venv);

        let work = std::env::temp_dir().join(format!(
            "walcast-e2e-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&work)?;
        if is_root() {
            run(
                Command::new("chown").arg("postgres").arg(&work),
                "chown of the scratch dir",
            )?;
        }
        watchdog(&format!("sleep 2; rm -rf {}", work.display()))?;
        let pg = Postgres::start(&work)?;
        let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        db.batch_execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, email text, \
                                 created_at timestamptz DEFAULT now());
             CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users, \
                                  total numeric(12,2), status text);
             ALTER TABLE orders REPLICA IDENTITY FULL;",
        )
        .await?;

        // MiniStack on a free loopback port, its files in the scratch dir. TMPDIR too:
        // MiniStack unpacks each function's code into $TMPDIR/ministack-provided-code-<port>
        // (tens of MB) and never removes it; there it goes with the scratch dir.
        let port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(work.join("ministack.log"))?;
        let tmp = work.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let mut ministack = Command::new(venv.join("bin/ministack"))
            .current_dir(&work)
            .env("TMPDIR", &tmp)
            .env("BIND_HOST", "127.0.0.1")
            .env("GATEWAY_PORT", port.to_string())
            .env("MINISTACK_REGION", "eu-west-1")
            .env("LOG_LEVEL", "WARNING")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start MiniStack")?;
        watchdog(&format!("kill -TERM {} 2>/dev/null", ministack.id()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || ministack.try_wait()?.is_some() {
                terminate(&mut ministack, Duration::from_secs(5));
                bail!(
                    "MiniStack did not start: {}",
                    std::fs::read_to_string(work.join("ministack.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .region(aws_sdk_sqs::config::Region::new("eu-west-1"))
                .endpoint_url(&endpoint)
                .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                    "test", "test", None, None, "e2e",
                ))
                .build(),
        );
        let mut pipeline = Self {
            work,
            venv,
            endpoint,
            outputs: Value::Null,
            streamers: Vec::new(),
            ministack,
            pg,
            sqs,
        };
        pipeline.deploy(&bin, delivery, params)?;
        pipeline.start_streamer(&bin, paths)?;
        // The streamer creates its slot (and the publication) when missing.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE active",
                    &[],
                )
                .await?;
            if row.get::<_, i64>(0) == 1 {
                break;
            }
            for streamer in &mut pipeline.streamers {
                ensure!(
                    streamer.try_wait()?.is_none(),
                    "a streamer exited: {}",
                    pipeline.streamer_logs()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the streamers did not start streaming: {}",
                pipeline.streamer_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(pipeline)
    }

    /// `python ministack_local.py ARGS…` in the MiniStack venv; its stdout.
    fn helper(&self, args: &[&str]) -> Result<String> {
        run(
            Command::new(self.venv.join("bin/python"))
                .arg(repo_root().join("infra/template/ministack_local.py"))
                .args(args)
                .env("AWS_CONFIG_FILE", "/dev/null")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            &format!("ministack_local.py {}", args.first().unwrap_or(&"")),
        )
    }

    fn deploy(&mut self, bin: &Path, delivery: &str, params: &[(&str, &str)]) -> Result<()> {
        let mut args: Vec<String> = vec![
            "deploy".into(),
            self.endpoint.clone(),
            "walcast-e2e".into(),
            // MiniStack 1.5.33 has no AWS::IAM::AccessKey: no publisher user here.
            "--param=CreatePublisherUser=false".into(),
            format!("--param=DeliveryPath={delivery}"),
            format!(
                "--code=ConsumerSqsFunction={}",
                bin.join("consumer-sqs").display()
            ),
            format!(
                "--code=ConsumerSnsFunction={}",
                bin.join("consumer-sns").display()
            ),
        ];
        for (k, v) in params {
            args.push(format!("--param={k}={v}"));
        }
        for function in ["ConsumerSqsFunction", "ConsumerSnsFunction"] {
            args.push(format!(
                "--env={function}:RUST_LOG=info,lambda_runtime=trace"
            ));
            args.push(format!("--env={function}:AWS_LAMBDA_LOG_FORMAT=JSON"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.outputs = serde_json::from_str(&self.helper(&args)?)
            .context("the deploy helper did not print JSON")?;
        Ok(())
    }

    /// One streamer on one slot, a sink per path (as `infra/local.sh` and the template's
    /// `DeliveryPath=Both` run it).
    fn start_streamer(&mut self, bin: &Path, paths: &[Route]) -> Result<()> {
        let mut sinks = String::new();
        for path in paths {
            let (kind, key, target) = match path {
                Route::Sqs => ("sqs", "queue_url", self.output("QueueUrl")?),
                Route::Sns => ("sns", "topic_arn", self.output("TopicArn")?),
            };
            sinks.push_str(&format!(
                "  - name: e2e_{kind}\n    type: {kind}\n    {key}: {target}\n    \
                 endpoint_url: {}\n    region: eu-west-1\n    access_key_id: test\n    \
                 secret_access_key: test\n",
                self.endpoint
            ));
        }
        let config = self.work.join("streamer.yaml");
        std::fs::write(
            &config,
            format!(
                "source:\n  url: {url}\n  tables: [public.users, public.orders]\n  \
                 slot: e2e\n  publication: walcast\n  name: e2e-db\nsinks:\n{sinks}",
                url = self.pg.url()
            ),
        )?;
        let log = std::fs::File::create(self.work.join("streamer.log"))?;
        let child = Command::new(bin.join("streamer"))
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the streamer")?;
        watchdog(&format!("kill -TERM {} 2>/dev/null", child.id()))?;
        self.streamers.push(child);
        Ok(())
    }

    fn streamer_logs(&self) -> String {
        std::fs::read_to_string(self.work.join("streamer.log")).unwrap_or_default()
    }

    /// A stack output (`QueueUrl`, `DlqUrl`, `TopicArn`, …) or a function's log group
    /// (`ConsumerSqsFunctionLogGroup`, …).
    pub fn output(&self, key: &str) -> Result<String> {
        self.outputs
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("no stack output {key} in {}", self.outputs))
    }

    /// A connection to the database.
    pub async fn db(&self) -> Result<tokio_postgres::Client> {
        let (db, conn) = tokio_postgres::connect(&self.pg.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(db)
    }

    /// The JSON log lines of a function (`Route::Sqs`: consumer-sqs), in the order the
    /// function wrote them.
    pub fn log_lines(&self, path: Route) -> Result<Vec<Value>> {
        let group = match path {
            Route::Sqs => self.output("ConsumerSqsFunctionLogGroup")?,
            Route::Sns => self.output("ConsumerSnsFunctionLogGroup")?,
        };
        let text = self.helper(&["logs", &self.endpoint, &group])?;
        let mut lines: Vec<Value> = text
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        // Each invocation has its own log stream; the runtime's own timestamps
        // (RFC 3339, UTC, same width) order the lines across them.
        lines.sort_by(|a, b| {
            let t = |v: &Value| v["timestamp"].as_str().unwrap_or_default().to_owned();
            t(a).cmp(&t(b))
        });
        Ok(lines)
    }

    /// Every record the function was invoked with, in invocation order (records of one
    /// invocation in batch order), redeliveries included.
    pub fn deliveries(&self, path: Route) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for line in self.log_lines(path)? {
            if line["message"] != RAW_EVENT {
                continue;
            }
            let event: Value = serde_json::from_str(line["body"].as_str().unwrap_or_default())
                .context("the raw event logged by the runtime is not JSON")?;
            for record in event["Records"].as_array().into_iter().flatten() {
                let delivery = match path {
                    Route::Sqs => Delivery {
                        message_id: record["messageId"].as_str().unwrap_or_default().into(),
                        group: record["attributes"]["MessageGroupId"]
                            .as_str()
                            .map(str::to_owned),
                        receive_count: record["attributes"]["ApproximateReceiveCount"]
                            .as_str()
                            .and_then(|n| n.parse().ok()),
                        body: record["body"].as_str().unwrap_or_default().into(),
                    },
                    Route::Sns => Delivery {
                        message_id: record["Sns"]["MessageId"]
                            .as_str()
                            .unwrap_or_default()
                            .into(),
                        group: None,
                        receive_count: None,
                        body: record["Sns"]["Message"].as_str().unwrap_or_default().into(),
                    },
                };
                out.push(delivery);
            }
        }
        Ok(out)
    }

    /// Waits until `done` holds for the function's deliveries, up to `timeout`; returns them.
    pub async fn wait_for_deliveries(
        &self,
        path: Route,
        timeout: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + timeout;
        loop {
            let deliveries = self.deliveries(path)?;
            if done(&deliveries) {
                return Ok(deliveries);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {path:?} deliveries; got {}: {:#?}\nstreamer logs:\n{}",
                    deliveries.len(),
                    deliveries.iter().map(|d| &d.body).collect::<Vec<_>>(),
                    self.streamer_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for streamer in &mut self.streamers {
            terminate(streamer, Duration::from_secs(10));
        }
        terminate(&mut self.ministack, Duration::from_secs(10));
        self.pg.stop();
        let _ = std::fs::remove_dir_all(&self.work);
        // Where MiniStack's code cache would be had it ignored TMPDIR.
        if let Some(port) = self.endpoint.rsplit(':').next() {
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("ministack-provided-code-{port}")),
            );
        }
    }
}
