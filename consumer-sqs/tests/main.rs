//! Integration tests, compiled as one binary.
//!
//! - `batch`: ordering and partial-failure semantics, with a recording handler.
//! - `decoding`: typed decoding of every action, SNS envelopes, the real handler.
//! - `cargo_lambda`: both functions under `cargo lambda watch`, invoked over
//!   the local Invoke API (needs cargo-lambda: `scripts/install-cargo-lambda.sh`).

mod batch;
mod cargo_lambda;
mod decoding;
mod support;
