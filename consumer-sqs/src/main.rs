//! Wiring only: logging, clients built once, the Lambda runtime.
//! Your code goes in `src/handler.rs` (and your tables in `src/tables.rs`).

use std::num::NonZeroUsize;

use anyhow::Context as _;
use consumer_sqs::{function_handler, Clients};
use lambda_runtime::{run, service_fn, Error};
use walcast_lambda::sqs::BatchConfig;
use walcast_lambda::{LogSettings, Payloads};

/// Settings read from the environment, once, at cold start.
struct Config {
    /// AWS_LAMBDA_LOG_FORMAT, AWS_LAMBDA_LOG_LEVEL (else RUST_LOG): walcast-lambda's logs module.
    logs: LogSettings,
    /// `BATCH_CONCURRENCY`: records (standard) or message groups (FIFO) in flight.
    batch: BatchConfig,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let concurrency = match var("BATCH_CONCURRENCY") {
            Some(text) => text.parse::<NonZeroUsize>().with_context(|| {
                format!("BATCH_CONCURRENCY must be a whole number of at least 1, not {text:?}")
            })?,
            None => BatchConfig::DEFAULT_CONCURRENCY,
        };
        Ok(Self {
            logs: LogSettings::from_env(),
            batch: BatchConfig {
                concurrency,
                // S3 (for bodies offloaded there) is only set up when the first one arrives.
                payloads: Payloads::from_environment(),
            },
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let config = Config::from_env()?;
    config.logs.init();
    let clients = Clients::new();
    let (clients, batch) = (&clients, &config.batch);
    run(service_fn(move |event| {
        function_handler(event, clients, batch)
    }))
    .await
}
