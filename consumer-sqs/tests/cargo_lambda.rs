//! Both functions under `cargo lambda watch`, invoked over its local Invoke
//! API with the fixtures in `events/`, exactly as the READMEs tell users to.
//!
//! Needs cargo-lambda (`consumer-sqs/scripts/install-cargo-lambda.sh`); fails
//! without it, unless `WALCAST_SKIP_CARGO_LAMBDA=1` says to skip. `cargo lambda
//! watch` compiles the functions itself, so the first invocation can take a
//! few minutes on a cold target directory.

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{event_json, event_path};

/// Until the first invocation answers: includes compiling both functions.
const READY_WITHIN: Duration = Duration::from_secs(15 * 60);
/// Any later invocation (a function is compiled on its first invocation).
const INVOKE_WITHIN: Duration = Duration::from_secs(5 * 60);
/// How often to look again while waiting for something.
const POLL: Duration = Duration::from_millis(200);

#[test]
fn both_functions_answer_under_cargo_lambda_watch() {
    if std::env::var("WALCAST_SKIP_CARGO_LAMBDA").as_deref() == Ok("1") {
        // Straight to the stderr handle: libtest would swallow an eprintln!
        // of a passing test.
        let _ = std::io::stderr().write_all(
            b"\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
              !! SKIPPED: cargo lambda watch test (WALCAST_SKIP_CARGO_LAMBDA=1)        !!\n\
              !! The functions were NOT run under the local Lambda emulator.           !!\n\
              !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n",
        );
        return;
    }
    let version = cargo_lambda().arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "cargo-lambda is not installed: run consumer-sqs/scripts/install-cargo-lambda.sh \
             (or set WALCAST_SKIP_CARGO_LAMBDA=1 to skip this test, loudly)"
        ),
    }

    let port = free_port();
    let watch = Watch::start(port);

    // The Invoke API listens first, then compiles a function on its first
    // invocation: wait for both, by polling, within a deadline.
    let deadline = Instant::now() + READY_WITHIN;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        watch.assert_alive();
        assert!(
            Instant::now() < deadline,
            "the Invoke API never listened on port {port}\n{}",
            watch.log()
        );
        std::thread::sleep(POLL);
    }
    let first = loop {
        let out = invoke(
            port,
            "consumer-sqs",
            &event_path("sqs-standard.json"),
            deadline,
            &watch,
        );
        if out.status.success() {
            break out;
        }
        // Not ready yet (the runtime still starting): try again until the deadline.
        watch.assert_alive();
        assert!(
            Instant::now() < deadline,
            "consumer-sqs never answered:\n{}\n{}",
            describe(&out),
            watch.log()
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(json_of(&first), json!({ "batchItemFailures": [] }));

    // SQS: the partial-failure reports.
    let cases = [
        ("sqs-fifo.json", vec![]),
        ("sqs-fifo-with-bad-record.json", vec![2, 4]),
        ("sqs-standard-with-bad-records.json", vec![1, 3, 4]),
        ("sqs-sns-envelope.json", vec![]),
    ];
    for (name, failed) in cases {
        let ids: Vec<Value> = event_json(name)["Records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| r["messageId"].clone())
            .collect();
        let expected: Vec<Value> = failed
            .iter()
            .map(|&i| json!({ "itemIdentifier": ids[i] }))
            .collect();
        let out = invoke(
            port,
            "consumer-sqs",
            &event_path(name),
            Instant::now() + INVOKE_WITHIN,
            &watch,
        );
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            describe(&out),
            watch.log()
        );
        assert_eq!(
            json_of(&out),
            json!({ "batchItemFailures": expected }),
            "{name}"
        );
    }

    // SNS: null on success, an error the on-failure destination can type.
    let sns = Path::new(env!("CARGO_MANIFEST_DIR")).join("../consumer-sns/events");
    for name in [
        "sns.json",
        "sns-update.json",
        "sns-delete.json",
        "sns-read.json",
        "sns-order-insert.json",
        "sns-order-update.json",
    ] {
        let out = invoke(
            port,
            "consumer-sns",
            &sns.join(name),
            Instant::now() + INVOKE_WITHIN,
            &watch,
        );
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            describe(&out),
            watch.log()
        );
        assert_eq!(json_of(&out), Value::Null, "{name}");
    }
    let out = invoke(
        port,
        "consumer-sns",
        &sns.join("sns-malformed.json"),
        Instant::now() + INVOKE_WITHIN,
        &watch,
    );
    assert!(
        !out.status.success(),
        "a malformed message must fail the invocation"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DecodeError") && stderr.contains("not valid JSON"),
        "{}",
        describe(&out)
    );

    // The functions logged their work, and no row values.
    let log = watch.log();
    assert!(log.contains("batch processed with failures"), "{log}");
    assert!(log.contains("cannot decode the message"), "{log}");
    assert!(
        !log.contains("alice@example.com"),
        "a row value reached the logs:\n{log}"
    );

    let group = watch.pgid;
    drop(watch);
    assert!(
        !group_alive(group),
        "cargo lambda watch left processes behind (group {group})"
    );
}

/// `cargo lambda watch`, in its own process group so that stopping it stops
/// the functions and the compiler it started, even when the test fails.
struct Watch {
    child: Child,
    pgid: u32,
    log_path: PathBuf,
}

impl Watch {
    fn start(port: u16) -> Self {
        let log_path =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cargo-lambda-watch-{port}.log"));
        let log = File::create(&log_path).expect("log file");
        let child = cargo_lambda()
            // --ignore-changes: an edit anywhere in the workspace would restart
            // the functions mid-test.
            .args([
                "watch",
                "--ignore-changes",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
            ])
            .arg(port.to_string())
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("cargo lambda watch starts");
        let pgid = child.id();
        Self {
            child,
            pgid,
            log_path,
        }
    }

    fn assert_alive(&self) {
        assert!(
            group_alive(self.pgid),
            "cargo lambda watch exited:\n{}",
            self.log()
        );
    }

    /// The end of what `cargo lambda watch` and the functions printed.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        format!(
            "--- cargo lambda watch ({}) ---\n{tail}",
            self.log_path.display()
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        signal_group(self.pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(self.pgid) && Instant::now() < deadline {
            // Reap the leader as soon as it exits, so the group can empty.
            let _ = self.child.try_wait();
            std::thread::sleep(POLL);
        }
        if group_alive(self.pgid) {
            signal_group(self.pgid, "KILL");
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_alive(self.pgid) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Whether any process of the group is still there (zombies excepted: they
/// have exited and only wait to be reaped).
fn group_alive(pgid: u32) -> bool {
    let Ok(out) = Command::new("ps")
        .args(["-e", "-o", "pgid=,stat="])
        .output()
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next() == Some(pgid.to_string().as_str())
            && fields.next().is_some_and(|state| !state.starts_with('Z'))
    })
}

/// `cargo lambda invoke NAME --data-file FILE`, given up on at `deadline`.
fn invoke(port: u16, function: &str, data: &Path, deadline: Instant, watch: &Watch) -> Output {
    let mut command = cargo_lambda();
    command
        .args([
            "invoke",
            function,
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(port.to_string())
        .arg("--data-file")
        .arg(data)
        .args(["--output-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command.spawn().expect("cargo lambda invoke starts");
    let pgid = child.id();
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match outcome.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(output) => output.expect("cargo lambda invoke runs"),
        Err(_) => {
            signal_group(pgid, "KILL");
            panic!(
                "cargo lambda invoke {function} did not answer in time\n{}",
                watch.log()
            );
        }
    }
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(out)))
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cargo_lambda() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.arg("lambda");
    command
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
    listener.local_addr().expect("bound").port()
}
