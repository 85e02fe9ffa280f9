//! Integration tests, compiled as one binary.
//!
//! - `notification`: decoding every action, attributes, the error paths.
//! - `template`: the template's own handler wired as in `main`.
//!
//! Both functions are also run under `cargo lambda watch` by consumer-sqs's
//! `cargo_lambda` test.

mod notification;
mod support;
mod template;
