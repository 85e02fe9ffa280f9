//! `streamer.example.yaml`, the configuration the README points at, is one the streamer
//! accepts as it is: `streamer check` gets past loading it (exit 2 would be a bad
//! configuration) and fails only at reaching the database and the sink, both pointed at
//! a closed loopback port so that nothing outside this machine is asked.
//! (That it shows every key the streamer reads is checked by infra/template/test_template.py.)

use std::process::Command;

use anyhow::{ensure, Result};
use walcast_e2e::{build_binaries, repo_root};

#[test]
fn the_streamer_accepts_the_example_configuration() -> Result<()> {
    let bin = build_binaries()?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = Command::new(bin.join("streamer"))
        .arg("check")
        .arg("--config")
        .arg(repo_root().join("streamer.example.yaml"))
        .env(
            "WALCAST_SOURCE_URL",
            format!("postgres://walcast@127.0.0.1:{closed}/app?sslmode=disable"),
        )
        .env(
            "WALCAST_SINK_ENDPOINT_URL",
            format!("http://127.0.0.1:{closed}"),
        )
        .env("WALCAST_SINK_ACCESS_KEY_ID", "test")
        .env("WALCAST_SINK_SECRET_ACCESS_KEY", "test")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.code() == Some(1),
        "expected exit 1 (the database and sink cannot be reached), got {:?}:\n{text}",
        out.status.code()
    );
    ensure!(!text.contains("invalid config"), "{text}");
    ensure!(
        text.contains(&closed.to_string()),
        "check named neither target:\n{text}"
    );
    Ok(())
}
