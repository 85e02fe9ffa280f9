//! `latency-proxy`: a TCP proxy that adds a round-trip time in front of an emulator
//! (see [`walcast_bench::proxy`]). Prints the address it listens on, then serves
//! until it is stopped.
//!
//! ```text
//! latency-proxy --upstream 127.0.0.1:4566 --rtt-ms 15     # prints 127.0.0.1:<port>
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    /// Where requests go (the emulator), e.g. 127.0.0.1:4566.
    #[arg(long)]
    upstream: SocketAddr,
    /// Milliseconds added to each request's round trip.
    #[arg(long)]
    rtt_ms: u64,
    /// Where to listen (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    println!("{}", listener.local_addr()?);
    walcast_bench::proxy::serve(listener, cli.upstream, Duration::from_millis(cli.rtt_ms)).await;
    Ok(())
}
