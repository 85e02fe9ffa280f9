//! Benchmark helpers shared by the binaries: the latency proxy.

pub mod proxy;
