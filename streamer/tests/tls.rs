//! `sslmode` as libpq means it, on both connections, against servers of their
//! own on loopback with a certificate made by the test (`support`): one that
//! accepts only TLS (`hostssl`, as RDS with `rds.force_ssl=1`), one without TLS.

use std::sync::Arc;

use serde_json::json;
use walcast_streamer::config::Config;
use walcast_streamer::pipeline;
use walcast_streamer::replication::{self, ConnectInfo, ReplicationError};

use crate::support::{connect, eventually, PgServer};
use crate::{record, Running, WAIT};

fn config(url: &str) -> Arc<Config> {
    let yaml =
        format!("source:\n  url: '{url}'\n  slot: s_tls\n  publication: p_tls\n  tables: [t]\n");
    Arc::new(Config::load(Some(&yaml), Vec::new()).expect("valid config"))
}

/// Which of the streamer's connections use TLS (`walcast`, `walcast-catalog`).
async fn encrypted(admin: &tokio_postgres::Client) -> Vec<(String, bool)> {
    let rows = admin
        .query(
            "SELECT a.application_name::text, s.ssl FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name IN ('walcast', 'walcast-catalog') ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let mut seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    seen.dedup();
    seen
}

/// Streams one insert with `url`, and says which connections were encrypted.
async fn stream_one(admin: &tokio_postgres::Client, url: &str, id: i32) -> Vec<(String, bool)> {
    let run = Running::start_yaml(&config(url).source_yaml()).await;
    admin
        .batch_execute(&format!("INSERT INTO t VALUES ({id})"))
        .await
        .expect("insert");
    // A run resumes after what the previous one confirmed: wait for this row.
    eventually(WAIT, || async {
        run.events(1)
            .await
            .iter()
            .any(|e| json!(record(e)) == json!({"id": id}))
    })
    .await;
    let seen = encrypted(admin).await;
    run.stop().await;
    seen
}

trait SourceYaml {
    fn source_yaml(&self) -> String;
}

impl SourceYaml for Config {
    fn source_yaml(&self) -> String {
        format!(
            "source:\n  url: '{}'\n  slot: {}\n  publication: {}\n  tables: [t]\n",
            self.source.url.expose(),
            self.source.slot,
            self.source.publication
        )
    }
}

/// An admin connection to `url`, after creating the table the tests stream.
async fn with_table(url: &str) -> tokio_postgres::Client {
    let admin = connect(url).await;
    admin
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .expect("table");
    admin
}

async fn replication_error(url: &str) -> ReplicationError {
    let cfg = config(url);
    let info = ConnectInfo::from_config(&cfg.postgres());
    match replication::connect(&info, "s_tls", "p_tls", 0).await {
        Ok(_) => panic!("{url}: the replication connection was expected to fail"),
        Err(e) => e,
    }
}

/// A server whose pg_hba.conf accepts TCP connections only over TLS, with a
/// certificate for a name that is not the address connected to.
#[tokio::test]
async fn prefer_finds_tls_where_the_server_insists_and_verify_modes_check_the_certificate() {
    let server = PgServer::dedicated_tls(
        "hostssl",
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        "DNS:db.walcast.test",
    );
    let admin = with_table(&server.socket_url("postgres")).await;
    let base = server.url("postgres");

    // No sslmode: prefer, TLS on both connections.
    let seen = stream_one(&admin, &base, 1).await;
    assert_eq!(
        seen,
        [
            ("walcast".to_owned(), true),
            ("walcast-catalog".to_owned(), true)
        ]
    );
    // allow: plain first, refused, then TLS.
    let seen = stream_one(&admin, &format!("{base}?sslmode=allow"), 2).await;
    assert_eq!(
        seen,
        [
            ("walcast".to_owned(), true),
            ("walcast-catalog".to_owned(), true)
        ]
    );
    // require: TLS without verification, whatever the certificate's name.
    pipeline::setup(&config(&format!("{base}?sslmode=require")))
        .await
        .expect("require connects");

    // disable: refused, and the error says TLS is the way in (not the password).
    let err = pipeline::setup(&config(&format!("{base}?sslmode=disable")))
        .await
        .expect_err("plain is refused")
        .to_string();
    assert!(
        err.contains("accepts only TLS")
            && err.contains("sslmode=require")
            && !err.contains("password")
            && !err.contains('\n'),
        "{err}"
    );
    let err = replication_error(&format!("{base}?sslmode=disable")).await;
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("accepts only TLS"), "{err}");

    // verify-ca: the chain is checked against sslrootcert, the name is not.
    let ca = server.ca_cert();
    let verify_ca = format!("{base}?sslmode=verify-ca&sslrootcert={}", ca.display());
    pipeline::setup(&config(&verify_ca))
        .await
        .expect("verify-ca ignores the name");
    // Not yet on the replication connection: pgwire-replication 0.5 checks the name
    // there (streaming::tls_verify_full_on_both_connections streams with a matching
    // one). The error says so.
    let err = replication_error(&verify_ca).await;
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("does not name 127.0.0.1"), "{err}");
    // ... and another CA's certificate is refused, naming TLS.
    let other_ca = PgServer::get().ca_cert();
    let wrong_ca = format!(
        "{base}?sslmode=verify-ca&sslrootcert={}",
        other_ca.display()
    );
    let err = pipeline::setup(&config(&wrong_ca))
        .await
        .expect_err("another CA");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    let err = replication_error(&wrong_ca).await;
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");

    // verify-full: the name must match too; 127.0.0.1 is not db.walcast.test.
    let verify_full = format!("{base}?sslmode=verify-full&sslrootcert={}", ca.display());
    let err = pipeline::setup(&config(&verify_full))
        .await
        .expect_err("name mismatch");
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(text.contains("TLS") && text.contains("name"), "{text}");
    let err = replication_error(&verify_full).await;
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    drop(admin);
    drop(server);
}

/// A server without TLS: prefer and allow connect in the clear; require and
/// stronger refuse on both connections, saying the server offers no TLS.
#[tokio::test]
async fn prefer_is_plain_where_the_server_has_no_tls_and_require_refuses() {
    let server = PgServer::dedicated("notls", "-c ssl=off");
    let admin = with_table(&server.url("postgres")).await;
    let base = server.url("postgres");
    let seen = stream_one(&admin, &base, 1).await;
    assert_eq!(
        seen,
        [
            ("walcast".to_owned(), false),
            ("walcast-catalog".to_owned(), false)
        ]
    );
    let seen = stream_one(&admin, &format!("{base}?sslmode=allow"), 2).await;
    assert!(seen.iter().all(|(_, tls)| !*tls), "{seen:?}");
    for mode in ["require", "verify-full"] {
        let url = format!("{base}?sslmode={mode}");
        let err = pipeline::setup(&config(&url))
            .await
            .expect_err("no TLS")
            .to_string();
        assert!(err.contains("does not offer TLS"), "{mode}: {err}");
        let err = replication_error(&url).await;
        assert!(!err.is_transient(), "{mode}: {err}");
        assert!(
            err.to_string().contains("does not offer TLS"),
            "{mode}: {err}"
        );
    }
    drop(admin);
    drop(server);
}
