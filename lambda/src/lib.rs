//! walcast-lambda: the machinery under walcast's Lambda templates
//! (`consumer-sqs`, `consumer-sns`). The templates keep what you edit (your
//! tables and your `handle` function) and the wiring; everything every user
//! needs the same way lives here, tested once.
//!
//! A tour, in the order a message travels:
//!
//! | module | what |
//! |---|---|
//! | [`sqs`] | an SQS batch: records decoded one by one, lanes, FIFO order (by the queue's `.fifo` ARN), partial failures ([`sqs::process`]) |
//! | [`sns`] | an SNS invocation: each notification decoded and handled in order, failing the invocation on error ([`sns::process`]) |
//! | `envelope` | SNS envelopes in SQS bodies unwrapped, [`Attributes`] |
//! | `payload` | bodies offloaded to S3 by the streamer or AWS's extended clients, fetched lazily ([`Payloads`]) |
//! | `s3` | the fetch: a SigV4-signed GetObject over HTTPS, no AWS SDK ([`S3Settings`]) |
//! | `table` | routing by table: [`Table`], the [`Route`] trait your `TableEvent` implements |
//! | `error` | [`HandlerError`] (retryable or permanent), [`DecodeError`] |
//! | `idempotency` | an in-memory note of handled events ([`ProcessedKeys`]) |
//! | `logs` | logging as Lambda's logging controls ask for it ([`LogSettings`]) |
//!
//! A complete SQS function (the templates add typed tables and logging):
//!
//! ```no_run
//! use change_event::ChangeEvent;
//! use lambda_runtime::{run, service_fn, LambdaEvent};
//! use walcast_lambda::sqs::{self, BatchConfig, Message, SqsBatch};
//! use walcast_lambda::HandlerError;
//!
//! async fn handle(event: ChangeEvent, message: Message) -> Result<(), HandlerError> {
//!     // Your code. Return HandlerError::retryable(..) or ::permanent(..) on failure.
//!     let _ = (event, message);
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_runtime::Error> {
//!     let config = BatchConfig::default();
//!     let config = &config;
//!     run(service_fn(move |event: LambdaEvent<SqsBatch>| {
//!         sqs::process(event.payload, config, handle)
//!     }))
//!     .await
//! }
//! ```
//!
//! The event contract (what the body holds) is `docs/change-event.md` in the
//! walcast repository, and the `change-event` crate.
#![warn(missing_docs)]

mod envelope;
mod error;
mod idempotency;
mod logs;
mod payload;
#[cfg(feature = "s3")]
mod s3;
pub mod sns;
pub mod sqs;
mod table;

pub use envelope::Attributes;
pub use error::{BoxError, DecodeError, HandlerError};
pub use idempotency::ProcessedKeys;
pub use logs::LogSettings;
pub use payload::{PayloadError, Payloads};
#[cfg(feature = "s3")]
pub use s3::S3Settings;
pub use table::{decode_event, Route, Table};
