//! consumer-sns: a Lambda function template that consumes walcast change
//! events from an SNS topic subscription, typed by table.
//!
//! A tour, in the order a notification travels:
//!
//! | module | what | edit it? |
//! |---|---|---|
//! | `main.rs` | wiring: logging, [`Clients`], the Lambda runtime | rarely |
//! | `notification` | the invocation: decode, handle, fail so Lambda retries ([`process`]) | no |
//! | `message` | message → JSON, [`Notification`] with its attributes, [`Table`] | no |
//! | `tables` | record types and routing by table ([`TableEvent`]) | **yes** |
//! | `handler` | your logic: [`handle`], [`Clients`], [`Ctx`] | **yes** |
//! | `error` | [`HandlerError`] (retryable or permanent), [`DecodeError`] | no |
//! | `idempotency` | an in-memory note of handled events ([`ProcessedKeys`]) | no |
//!
//! [`function_handler`] is what `main` runs for each invocation, with your
//! [`handle`] plugged in. Tests plug in their own handler through [`process`].
#![warn(missing_docs)]

mod error;
mod handler;
mod idempotency;
mod message;
mod notification;
mod tables;

pub use error::{BoxError, DecodeError, HandlerError};
pub use handler::{handle, Clients, Ctx};
pub use idempotency::ProcessedKeys;
pub use message::{Attributes, Notification, Table};
pub use notification::{process, NotificationError};
pub use tables::{Order, TableEvent, User};

use aws_lambda_events::sns::SnsEvent;
use lambda_runtime::LambdaEvent;

/// Handles one invocation: each notification in `event` given to [`handle`].
pub async fn function_handler(
    event: LambdaEvent<SnsEvent>,
    clients: &Clients,
) -> Result<(), NotificationError> {
    process(event.payload, |event, notification| async move {
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
