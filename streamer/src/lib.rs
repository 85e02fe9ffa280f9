//! walcast streamer: Postgres changes, read from a logical replication slot,
//! delivered as change events.
//!
//! A tour of the crate:
//!
//! - [`config`]: the one configuration (YAML + `WALCAST_*` environment), validated once.
//! - [`replication`]: the slot. Inside, `transport` wraps the replication
//!   connection ([`replication::connect`]), `pgoutput` decodes the protocol
//!   ([`replication::decode`]), `catalog` sets up the slot and publication and
//!   resolves types ([`replication::Catalog`]); `tls` makes libpq's `sslmode`
//!   attempts on both connections, [`replication::iam`] signs RDS IAM tokens.
//! - [`event`]: a row change → the JSON of the change event (exact value mapping).
//! - [`sink`]: where events go. The contract every sink keeps is on the
//!   [`sink::Sink`] trait; one delivery core serves SQS and SNS (typed
//!   [`sink::SinkError`]s, one classification of [`sink::Fault`]s), and
//!   [`sink::Destinations`] checks the queue or topic before anything is created.
//! - [`fanout`]: one slot, many sinks: each sink's tables, actions, columns,
//!   filter, transform, routing and group, from one decode.
//! - [`progress`]: which LSN may be confirmed: only what every sink accepted.
//! - [`pipeline`]: the loop tying them together, with reconnects and shutdown
//!   (set-up comes after the sink's check; see `main.rs`).
//! - [`backfill`]: the rows tables already hold, as `read` events, bracketed by
//!   watermarks in the stream while streaming goes on; progress kept in the database.
//! - [`backoff`]: the one retry schedule (capped, fully jittered), for deliveries and reconnects.
//! - [`check`]: `streamer check`, a diagnosis of the database and the sink.
//! - [`heartbeat`]: optional heartbeats through the slot (`source.heartbeat_secs`).
//! - [`ops`]: `/healthz` and `/metrics`.
#![warn(missing_docs)]

pub mod backfill;
pub mod backoff;
pub mod check;
pub mod config;
pub mod event;
pub mod fanout;
pub mod heartbeat;
pub mod jq;
pub mod ops;
pub mod pipeline;
pub mod progress;
pub mod replication;
pub mod sink;
