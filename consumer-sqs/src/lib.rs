//! consumer-sqs: a Lambda function template that consumes walcast change
//! events from an SQS queue (standard or FIFO), typed by table.
//!
//! | file | what | edit it? |
//! |---|---|---|
//! | `main.rs` | wiring: logging, [`Clients`], the Lambda runtime | rarely |
//! | `tables.rs` | record types and routing by table ([`TableEvent`]) | **yes** |
//! | `handler.rs` | your logic: [`handle`], [`Clients`], [`Ctx`] | **yes** |
//!
//! The machinery (records decoded one by one, FIFO order, partial batch
//! failures, SNS envelopes, [`HandlerError`](walcast_lambda::HandlerError)) is
//! the `walcast-lambda` library: [`walcast_lambda::sqs::process`].
//! [`function_handler`] is what `main` runs for each invocation: that
//! machinery with your [`handle`] plugged in.
#![warn(missing_docs)]

mod handler;
mod tables;

pub use handler::{handle, Clients, Ctx};
pub use tables::{Order, TableEvent, User};

use lambda_runtime::LambdaEvent;
use walcast_lambda::sqs::{self, BatchConfig, BatchError, SqsBatch, SqsBatchResponse};

/// Handles one invocation: the batch in `event`, each record given to [`handle`].
pub async fn function_handler(
    event: LambdaEvent<SqsBatch>,
    clients: &Clients,
    config: &BatchConfig,
) -> Result<SqsBatchResponse, BatchError> {
    sqs::process(event.payload, config, |event, message| async move {
        handle(event, &Ctx { clients, message }).await
    })
    .await
}
