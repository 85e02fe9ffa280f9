//! Integration tests, compiled as one binary.
//!
//! - `decoding`: typed decoding of every action, SNS envelopes, the real handler.
//!   (The batch semantics, ordering and partial failures, are the library's:
//!   `lambda/tests/`.)
//! - `cargo_lambda`: both functions under `cargo lambda watch`, invoked over
//!   the local Invoke API (needs cargo-lambda: `scripts/install-cargo-lambda.sh`).

mod cargo_lambda;
mod decoding;
mod support;
