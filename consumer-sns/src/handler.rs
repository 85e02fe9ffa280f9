//! ✏️ EDIT ME (2 of 2): your business logic, in [`handle`].
//!
//! `handle` is called once per change event, with the event typed by table
//! (see `tables.rs`) and a [`Ctx`]: the clients built once in `main`, and the
//! SNS notification the event came in (message id, topic, the `action`,
//! `table_schema` and `table_name` message attributes). What it returns
//! decides the event's fate:
//!
//! | returns | the event |
//! |---|---|
//! | `Ok(())` | is done |
//! | `Err(HandlerError::Retryable(..))` | fails the invocation: Lambda retries it (twice by default), then hands it to the on-failure destination |
//! | `Err(HandlerError::Permanent(..))` | the same (SNS has no partial success), logged as an error and typed `HandlerError.Permanent` at the destination |
//!
//! What you can rely on, and what you cannot:
//! - **At least once.** The same event can arrive twice (SNS redelivery,
//!   Lambda's retries, a streamer restart): use `metadata.unique_key()`, as below.
//! - **No order.** SNS → Lambda delivers concurrently and in no particular
//!   order; subscribe an SQS FIFO queue (and use consumer-sqs) if order matters,
//!   or guard writes with `commit_lsn`/`commit_idx` as below.
//! - **No row values in logs or error messages**: log keys and counts, not data.

use change_event::{Action, ChangeEvent, Row};
use tracing::{info, warn};

use walcast_lambda::sns::Notification;
use walcast_lambda::{HandlerError, ProcessedKeys};

use crate::tables::{Order, TableEvent, User};

/// Clients and state built once per execution environment, in `main`, and
/// shared by every invocation: put your SDK clients here.
#[derive(Debug)]
pub struct Clients {
    /// Idempotency keys of events this environment has already handled.
    pub processed: ProcessedKeys,
    // e.g. `pub dynamodb: aws_sdk_dynamodb::Client,` built in `Clients::new`
    // from `aws_config::load_defaults(BehaviorVersion::latest()).await`.
}

impl Clients {
    /// Builds the clients; called once, in `main`.
    pub fn new() -> Self {
        Self {
            processed: ProcessedKeys::with_capacity(10_000),
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything [`handle`] gets besides the event.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The clients built once in `main`.
    pub clients: &'a Clients,
    /// The SNS notification the event came in (id, topic, message attributes).
    pub notification: Notification,
}

// ───────────────────────────── ✏️ EDIT BELOW ─────────────────────────────

/// Handles one change event. Worked example: users and orders.
pub async fn handle(event: TableEvent, ctx: &Ctx<'_>) -> Result<(), HandlerError> {
    // Idempotency. This in-memory note only catches redeliveries to this warm
    // environment. In production, make the write itself conditional on the key,
    // e.g. DynamoDB `PutItem` with `ConditionExpression: attribute_not_exists(pk)`
    // and pk = that key (a `ConditionalCheckFailedException` means
    // "already done": return Ok), in the same `TransactWriteItems` as your
    // change; or guard an upsert with the event's position,
    // `commit_lsn < :lsn OR (commit_lsn = :lsn AND commit_idx < :idx)`, which
    // also drops stale events that arrive late.
    // The key qualified by source and sink: `idempotency_key` alone is unique only
    // within one streamer's sink (two streamers can feed one queue).
    let key = event.metadata().unique_key();
    if ctx.clients.processed.contains(&key) {
        info!(idempotency_key = %key, "already handled; skipping");
        return Ok(());
    }

    match event {
        TableEvent::Users(change) => users(&change).await?,
        TableEvent::Orders(change) => orders(&change).await?,
        TableEvent::Other(change) => {
            // Acknowledged and dropped. Return `Err(HandlerError::permanent(..))`
            // instead to keep unexpected tables at the on-failure destination,
            // or filter them out in the subscription's filter policy on the
            // `table_name` attribute (`ctx.notification.attributes`).
            warn!(
                table = %format_args!("{}.{}", change.metadata.table_schema, change.metadata.table_name),
                "no handler for this table; acknowledged"
            );
        }
    }

    ctx.clients.processed.insert(key);
    Ok(())
}

async fn users(change: &ChangeEvent<User>) -> Result<(), HandlerError> {
    match change.action {
        Action::Insert | Action::Read => {
            // e.g. `store.put_user(&change.record).await.map_err(HandlerError::retryable)?`
            info!(action = %change.action, "user stored");
        }
        Action::Update => {
            if changed(&change.changes, "email") {
                // e.g. send a verification mail to the new address.
                info!("user email changed");
            }
            info!(action = %change.action, "user stored");
        }
        Action::Delete => {
            // Only `id` is set unless the table has REPLICA IDENTITY FULL.
            info!(action = %change.action, "user removed");
        }
    }
    Ok(())
}

async fn orders(change: &ChangeEvent<Order>) -> Result<(), HandlerError> {
    let order = &change.record;
    if order
        .total
        .as_ref()
        .and_then(|t| t.as_f64())
        .is_some_and(|t| t < 0.0)
    {
        // Retrying cannot fix the data: let it go to the on-failure destination.
        return Err(HandlerError::permanent("order total is negative"));
    }
    if change.action == Action::Update
        && changed(&change.changes, "status")
        && order.status.as_deref() == Some("shipped")
    {
        // e.g. `notifier.shipped(order.id).await.map_err(HandlerError::retryable)?`
        info!("order shipped; customer notified");
    }
    Ok(())
}

/// Whether an update changed `column`. Needs `REPLICA IDENTITY FULL`: without
/// it `changes` is `{}` and this is always false.
fn changed(changes: &Option<Row>, column: &str) -> bool {
    changes.as_ref().is_some_and(|old| old.contains_key(column))
}
