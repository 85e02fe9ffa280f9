//! Wiring only: logging, clients built once, the Lambda runtime.
//! Your code goes in `src/handler.rs` (and your tables in `src/tables.rs`).

use consumer_sns::{function_handler, Clients};
use lambda_runtime::{run, service_fn, Error};
use walcast_lambda::{LogSettings, Payloads};

#[tokio::main]
async fn main() -> Result<(), Error> {
    // AWS_LAMBDA_LOG_FORMAT, AWS_LAMBDA_LOG_LEVEL (else RUST_LOG): walcast-lambda's logs module.
    LogSettings::from_env().init();
    let clients = Clients::new();
    // S3 (for bodies offloaded there) is only set up when the first one arrives.
    let payloads = Payloads::from_environment();
    let (clients, payloads) = (&clients, &payloads);
    run(service_fn(move |event| {
        function_handler(event, clients, payloads)
    }))
    .await
}
