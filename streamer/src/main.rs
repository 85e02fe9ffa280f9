//! The `streamer` binary: wiring only.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use walcast_streamer::backfill;
use walcast_streamer::check::{self, Level};
use walcast_streamer::config::{Config, LogFormat};
use walcast_streamer::fanout;
use walcast_streamer::ops;
use walcast_streamer::pipeline::{self, PgConnector, Pipeline};
use walcast_streamer::progress::Tracker;
use walcast_streamer::replication::parse_lsn;
use walcast_streamer::sink::{Sink, SinkError};

#[derive(Parser)]
#[command(
    name = "streamer",
    version,
    about = "Streams Postgres changes to SQS and SNS"
)]
struct Cli {
    /// Configuration file (YAML). Every key can also be set by WALCAST_* variables.
    #[arg(long, short, global = true, env = "WALCAST_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream changes until SIGTERM or Ctrl-C.
    Run {
        /// Stop cleanly once everything up to this LSN (e.g. 0/16B3748) is confirmed
        /// (bounded replays and benchmarks, like pg_recvlogical --endpos).
        #[arg(long, value_name = "LSN")]
        until_lsn: Option<String>,
    },
    /// Diagnose the database (and sink) and exit non-zero on a failure.
    Check,
    /// Show what the sink would send for the change events on stdin (JSON, one after
    /// another, e.g. the shipped fixtures), through its filter and transform.
    Transform {
        /// The sink's name (sink.name), when given.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
    /// Send the rows tables already hold as `read` events, through the running streamer
    /// (the one reading source.slot), while streaming goes on. Follows progress until done.
    Backfill {
        /// Tables to backfill (`schema.table`).
        #[arg(value_name = "TABLE")]
        tables: Vec<String>,
        /// Only rows whose COLUMN is at least VALUE, e.g. `updated_at=2026-01-01`.
        #[arg(long, value_name = "COLUMN=VALUE")]
        where_from: Option<String>,
        /// Return once requested, without following progress.
        #[arg(long)]
        detach: bool,
        /// List this slot's backfills and their progress.
        #[arg(long, conflicts_with_all = ["tables", "cancel"])]
        status: bool,
        /// Cancel backfills by id (all unfinished ones of this slot without an id).
        #[arg(long, value_name = "ID", num_args = 0.., conflicts_with = "tables")]
        cancel: Option<Vec<u64>>,
    },
    /// Ask a running streamer's /healthz (exit 0 when healthy): the container health check.
    /// Reads only http.listen / WALCAST_HTTP_LISTEN (default 127.0.0.1:9187).
    Healthz,
}

fn main() -> ExitCode {
    // The benchmark compares `--until-lsn` runs from process start.
    let started = std::time::Instant::now();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    if let Command::Healthz = cli.command {
        return healthz(cli.config.as_deref());
    }
    let yaml = match &cli.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: cannot read config file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let config = match Config::load(yaml.as_deref(), std::env::vars()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let config_format = config.log.format;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { until_lsn } => run(config, until_lsn.as_deref(), started).await,
            Command::Check => check(config).await,
            Command::Transform { sink } => transform(&config, sink.as_deref()),
            Command::Backfill {
                tables,
                where_from,
                detach,
                status,
                cancel,
            } => {
                let command = match (status, cancel) {
                    (true, _) => backfill::cli::Command::Status,
                    (false, Some(ids)) => backfill::cli::Command::Cancel(ids),
                    (false, None) => backfill::cli::Command::Request {
                        tables,
                        where_from,
                        detach,
                    },
                };
                backfill::cli::run(&config, command).await?;
                Ok(ExitCode::SUCCESS)
            }
            // Answered above, before the configuration is loaded.
            Command::Healthz => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Once: a JSON log line for log collectors, else a plain line.
            match config_format {
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "streamer stopped"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            // A setting to fix (the sink's check before set-up): like a bad configuration.
            let setting = |e: &SinkError| matches!(e, SinkError::Setting { .. });
            match (
                e.downcast_ref::<SinkError>(),
                e.downcast_ref::<fanout::PlanError>(),
            ) {
                (Some(s), _) if setting(s) => ExitCode::from(2),
                (_, Some(p)) if setting(&p.error) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(config.log.level.as_deref().unwrap_or("info"))
    });
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// `streamer transform`: each event on stdin through a sink's filter and transform
/// (`--sink NAME`, or the only sink); bodies on stdout, what was not sent (and why)
/// on stderr; exit 1 when one failed.
fn transform(config: &Config, sink: Option<&str>) -> anyhow::Result<ExitCode> {
    let names = || {
        config
            .sinks
            .iter()
            .map(|s| format!("`{}`", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen = match sink {
        Some(name) => config
            .sinks
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no sink named `{name}` in this configuration (its sinks: {})",
                    names()
                )
            })?,
        None if config.sinks.len() == 1 => &config.sinks[0],
        None => anyhow::bail!(
            "this configuration has several sinks ({}): choose one with --sink NAME",
            names()
        ),
    };
    let outlets = fanout::Outlets {
        main: (),
        routes: chosen
            .destinations
            .keys()
            .map(|n| (n.clone(), ()))
            .collect(),
        dead_letter: chosen.dead_letter_queue_url.as_ref().map(|_| ()),
    };
    let lane = fanout::Lane::new(
        chosen,
        true,
        &walcast_streamer::pipeline::database_meta(config),
        outlets,
        Arc::default(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .map_err(|e| anyhow::anyhow!("reading stdin: {e}"))?;
    let mut failed = false;
    let values = serde_json::Deserializer::from_str(&input).into_iter::<serde_json::Value>();
    for (n, value) in values.enumerate() {
        let n = n + 1;
        let value = value.map_err(|e| anyhow::anyhow!("event {n} on stdin is not JSON: {e}"))?;
        match lane.preview(&value.to_string()) {
            Ok(fanout::Preview::Sent {
                body,
                destination,
                group,
            }) => {
                println!("{body}");
                if destination.is_some() || group.is_some() {
                    eprintln!(
                        "event {n}: to {}{}",
                        destination.map_or_else(
                            || "the sink's own destination".to_owned(),
                            |d| format!("destination `{d}`")
                        ),
                        group
                            .map(|g| format!(", message group {g}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(fanout::Preview::Skipped(why)) => eprintln!("event {n}: not sent: {why}"),
            Ok(fanout::Preview::DeadLettered(reason)) => {
                failed = true;
                eprintln!("event {n}: to the dead-letter queue: {reason}");
            }
            Err(e) => {
                failed = true;
                eprintln!("event {n}: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested: finishing in-flight events");
}

async fn run(
    config: Arc<Config>,
    until_lsn: Option<&str>,
    started: std::time::Instant,
) -> anyhow::Result<ExitCode> {
    let until = match until_lsn {
        Some(s) => Some(
            parse_lsn(s).with_context(|| format!("--until-lsn {s}: not an LSN like 0/16B3748"))?,
        ),
        None => None,
    };
    // The sinks first: a wrong queue, topic, region or credential stops start-up
    // with the setting to fix before the publication and the slot exist.
    let planned = fanout::plan(&config).await?;
    // What the sinks select, against the tables: a column that cannot be left out, or
    // a typo that would send what it meant to hide, stops here (exit 2).
    {
        let catalog = walcast_streamer::replication::Catalog::connect(
            &config.postgres(),
            &config.source.slot,
        )
        .await?;
        let mut refused = Vec::new();
        for finding in fanout::check_selections(&config, &catalog).await? {
            match finding {
                Ok(warning) => tracing::warn!("{warning}"),
                Err(problem) => refused.push(problem),
            }
        }
        if !refused.is_empty() {
            return Err(SinkError::Setting {
                setting: "",
                reason: refused.join("; "),
            }
            .into());
        }
    }
    let slot = pipeline::setup(&config).await?;
    if slot.created && config.backfill.initial {
        let ids = backfill::cli::request_initial(&config)
            .await
            .context("backfill.initial")?;
        tracing::info!(
            backfills = ids.len(),
            "initial backfill requested for every published table"
        );
    }
    let tracker = Tracker::new(slot.confirmed_flush_lsn);
    if config.metrics.cloudwatch {
        tokio::spawn(ops::emf::write(
            tracker.clone(),
            config.source.slot.clone(),
            config.sinks[0].name.clone(),
            std::time::Duration::from_secs(config.metrics.interval_secs),
        ));
    }
    if let Some(secs) = config.source.heartbeat_secs {
        tokio::spawn(walcast_streamer::heartbeat::run(
            config.postgres(),
            config.source.slot.clone(),
            std::time::Duration::from_secs(secs),
            Arc::clone(tracker.metrics()),
        ));
    }
    if let Some(addr) = &config.http.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("http.listen {addr}: cannot listen"))?;
        // The bound address: with port 0 the system picks one, and this names it.
        let bound = listener
            .local_addr()
            .map_or(addr.clone(), |a| a.to_string());
        tracing::info!(listen = %bound, "serving /healthz and /metrics");
        tokio::spawn(ops::serve(listener, tracker.clone()));
        tokio::spawn(ops::probe_lag(
            config.postgres(),
            config.source.slot.clone(),
            Arc::clone(tracker.metrics()),
        ));
    }
    let lanes = fanout::start(&config, planned, &tracker)?;
    run_with(config, lanes, tracker, until, started).await
}

async fn run_with<S: Sink>(
    config: Arc<Config>,
    lanes: Vec<fanout::Lane<S>>,
    tracker: Tracker,
    until: Option<u64>,
    started: std::time::Instant,
) -> anyhow::Result<ExitCode> {
    let connector = PgConnector::new(&config);
    let mut confirmed = tracker.subscribe();
    let reached = async move {
        match until {
            Some(lsn) => {
                let _ = confirmed.wait_for(|c| *c >= lsn).await;
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "reached --until-lsn"
                );
            }
            None => std::future::pending().await,
        }
    };
    let shutdown = async {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = reached => {}
        }
    };
    let coordinator = backfill::Coordinator::new();
    // Backfill reads on a thread (and runtime) of their own: on the pipeline's, the
    // next chunk's COPY waited while the last chunk's events were sent. One thread
    // for the rest is what keeps a stream of small transactions cheapest.
    let driver = (Arc::clone(&config), coordinator.clone(), tracker.clone());
    std::thread::Builder::new()
        .name("walcast-backfill".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(backfill::drive(driver.0, driver.1, driver.2)),
                Err(e) => tracing::error!(error = %e, "cannot start the backfill runtime: backfills will not run"),
            }
        })
        .context("starting the backfill thread")?;
    let mut pipeline = Pipeline::with_lanes(Arc::clone(&config), connector, lanes, tracker)
        .with_backfills(coordinator);
    pipeline.drain_timeout = std::time::Duration::from_secs(
        config
            .sinks
            .iter()
            .map(|s| s.drain_timeout_secs)
            .max()
            .unwrap_or(60),
    );
    pipeline.run(shutdown).await.context("streaming stopped")?;
    Ok(ExitCode::SUCCESS)
}

async fn check(config: Arc<Config>) -> anyhow::Result<ExitCode> {
    let mut findings = check::check_source(&config).await;
    findings.extend(check::check_sink(&config).await);
    let mut failed = false;
    for f in &findings {
        println!("{f}");
        failed |= f.level == Level::Fail;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `streamer healthz`: GET /healthz on the configured listener.
fn healthz(config: Option<&std::path::Path>) -> ExitCode {
    let from_file = config
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|y| serde_norway::from_str::<serde_norway::Value>(&y).ok())
        .and_then(|v| v.get("http")?.get("listen")?.as_str().map(str::to_owned));
    let listen = std::env::var("WALCAST_HTTP_LISTEN")
        .ok()
        .or(from_file)
        .unwrap_or_else(|| "127.0.0.1:9187".into());
    let Ok(mut addr) = listen.parse::<std::net::SocketAddr>() else {
        eprintln!("error: http.listen `{listen}` is not host:port");
        return ExitCode::from(2);
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ops::probe(addr)) {
        Ok(()) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}
