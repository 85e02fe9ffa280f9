//! Wiring only: logging, clients built once, the Lambda runtime.
//! Your code goes in `src/handler.rs` (and your tables in `src/tables.rs`).

use consumer_sns::{function_handler, Clients};
use lambda_runtime::{run, service_fn, Error};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use walcast_lambda::Payloads;

/// Settings read from the environment, once, at cold start.
struct Config {
    /// `AWS_LAMBDA_LOG_FORMAT=JSON` (Lambda's advanced logging controls).
    log_json: bool,
    /// `AWS_LAMBDA_LOG_LEVEL` (set by Lambda), else `RUST_LOG`, else `info`.
    log_filter: String,
}

impl Config {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let log_filter = match var("AWS_LAMBDA_LOG_LEVEL") {
            // Lambda's levels are TRACE..ERROR plus FATAL, which tracing lacks.
            Some(level) if level.eq_ignore_ascii_case("fatal") => "error".to_owned(),
            Some(level) => level.to_ascii_lowercase(),
            None => var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
        };
        Self {
            log_json: var("AWS_LAMBDA_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json")),
            log_filter,
        }
    }
}

fn init_tracing(config: &Config) {
    // `info`, `debug`, `info,lambda_runtime=trace`: a level, and levels per
    // target (module path). tracing-subscriber's `Targets`, not `EnvFilter`,
    // whose span and field filters link a regex engine (an eighth of the arm64
    // binary; lambda/README.md, "Cold start and size").
    let filter: Targets = config
        .log_filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let logs = tracing_subscriber::fmt()
        // The builder's own filter (INFO by default) would drop what `filter`
        // lets through below it: `filter` alone decides.
        .with_max_level(tracing::Level::TRACE)
        .with_target(false)
        .with_ansi(false);
    if config.log_json {
        // One JSON object per line, fields at the top level, as CloudWatch
        // Logs Insights reads them.
        logs.json().flatten_event(true).finish().with(filter).init();
    } else {
        // CloudWatch stamps every line already.
        logs.without_time().finish().with(filter).init();
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::from_env();
    init_tracing(&config);
    let clients = Clients::new();
    // S3 (for bodies offloaded there) is only set up when the first one arrives.
    let payloads = Payloads::from_environment();
    let (clients, payloads) = (&clients, &payloads);
    run(service_fn(move |event| {
        function_handler(event, clients, payloads)
    }))
    .await
}
