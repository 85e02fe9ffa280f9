//! consumer-sns: a Lambda function template that consumes walcast change
//! events from an SNS topic subscription, typed by table.
//!
//! | file | what | edit it? |
//! |---|---|---|
//! | `main.rs` | wiring: logging, [`Clients`], the Lambda runtime | rarely |
//! | `tables.rs` | record types and routing by table ([`TableEvent`]) | **yes** |
//! | `handler.rs` | your logic: [`handle`], [`Clients`], [`Ctx`] | **yes** |
//!
//! The machinery (each notification decoded on its own, failing the
//! invocation so Lambda retries, [`HandlerError`](walcast_lambda::HandlerError))
//! is the `walcast-lambda` library: [`walcast_lambda::sns::process`].
//! [`function_handler`] is what `main` runs for each invocation, with your
//! [`handle`] plugged in.
#![warn(missing_docs)]

mod handler;
mod tables;

pub use handler::{handle, Clients, Ctx};
pub use tables::{Order, TableEvent, User};

use lambda_runtime::LambdaEvent;
use walcast_lambda::sns::{self, NotificationError, SnsBatch};
use walcast_lambda::Payloads;

/// Handles one invocation: each notification in `event` given to [`handle`]
/// (a body offloaded to S3 fetched from `payloads` first).
pub async fn function_handler(
    event: LambdaEvent<SnsBatch>,
    clients: &Clients,
    payloads: &Payloads,
) -> Result<(), NotificationError> {
    sns::process(event.payload, payloads, |event, notification| async move {
        handle(
            event,
            &Ctx {
                clients,
                notification,
            },
        )
        .await
    })
    .await
}
