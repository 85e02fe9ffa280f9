//! consumer-sqs: a Lambda function template that consumes walcast change
//! events from an SQS queue (standard or FIFO), typed by table.
//!
//! A tour, in the order a message travels:
//!
//! | module | what | edit it? |
//! |---|---|---|
//! | `main.rs` | wiring: logging, [`Clients`], the Lambda runtime | rarely |
//! | `batch` | the batch: lanes, FIFO order, partial failures ([`process`]) | no |
//! | `message` | body → JSON (SNS envelopes unwrapped), [`Message`], [`Table`] | no |
//! | `tables` | record types and routing by table ([`TableEvent`]) | **yes** |
//! | `handler` | your logic: [`handle`], [`Clients`], [`Ctx`] | **yes** |
//! | `error` | [`HandlerError`] (retryable or permanent), [`DecodeError`] | no |
//! | `idempotency` | an in-memory note of handled events ([`ProcessedKeys`]) | no |
//!
//! [`function_handler`] is what `main` runs for each invocation: the batch
//! machinery with your [`handle`] plugged in. Tests plug in their own handler
//! through [`process`].
#![warn(missing_docs)]

mod batch;
mod error;
mod handler;
mod idempotency;
mod message;
mod tables;

pub use batch::{process, BatchConfig, BatchError};
pub use error::{BoxError, DecodeError, HandlerError};
pub use handler::{handle, Clients, Ctx};
pub use idempotency::ProcessedKeys;
pub use message::{Attributes, Message, Table};
pub use tables::{Order, TableEvent, User};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;

/// Handles one invocation: the batch in `event`, each record given to [`handle`].
pub async fn function_handler(
    event: LambdaEvent<SqsEvent>,
    clients: &Clients,
    config: &BatchConfig,
) -> Result<SqsBatchResponse, BatchError> {
    process(event.payload, config, |event, message| async move {
        handle(event, &Ctx { clients, message }).await
    })
    .await
}
