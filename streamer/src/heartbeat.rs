//! Heartbeats (`source.heartbeat_secs`): every N seconds the streamer writes a
//! non-transactional logical message, `pg_logical_emit_message(false,
//! 'walcast:heartbeat', <now in Unix microseconds>)`, on a catalog connection
//! of its own.
//!
//! ```text
//!   heartbeat ──pg_logical_emit_message──▶ WAL ──slot──▶ pipeline: no event;
//!                                                        /metrics: its age
//! ```
//!
//! The message goes through the slot like a change: while the published tables
//! are idle the stream still moves (a keepalive after it is confirmed, so the
//! slot keeps advancing even where the only other writes are in other
//! databases, as on RDS), and `/metrics` shows how old the newest heartbeat that
//! came back through the stream is (`walcast_heartbeat_age_seconds`): the whole
//! path's freshness, growing when Postgres, the slot or the streamer lags. The
//! pipeline makes no event of it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Postgres;
use crate::ops::{now_micros, Metrics};
use crate::replication::Catalog;

/// The logical message prefix of a heartbeat.
pub const PREFIX: &str = "walcast:heartbeat";

/// Writes a heartbeat every `every`, forever; reconnects after a failure (and
/// says so once per outage).
pub async fn run(pg: Postgres, slot: String, every: Duration, metrics: Arc<Metrics>) {
    let mut failing = false;
    loop {
        match Catalog::connect(&pg, &slot).await {
            Ok(catalog) => loop {
                let sent = catalog
                    .client()
                    .execute(
                        "SELECT pg_logical_emit_message(false, $1, $2)",
                        &[&PREFIX, &now_micros().to_string()],
                    )
                    .await;
                match sent {
                    Ok(_) => {
                        if failing {
                            tracing::info!("heartbeats written again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot write a heartbeat; retrying");
                            failing = true;
                        }
                        break;
                    }
                }
                metrics.heartbeat_sent();
                tokio::time::sleep(every).await;
            },
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot connect to write heartbeats; retrying");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The emit time a heartbeat's content carries (Unix microseconds).
pub fn sent_at(content: &[u8]) -> Option<i64> {
    std::str::from_utf8(content).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_is_the_emit_time() {
        assert_eq!(
            super::sent_at(b"1767225600000000"),
            Some(1_767_225_600_000_000)
        );
        assert_eq!(super::sent_at(b"not a time"), None);
    }
}
