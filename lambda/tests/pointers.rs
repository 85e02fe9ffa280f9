//! Bodies offloaded to S3 (AWS's extended-client pointer), resolved against
//! a real S3 emulator (fauxqs on 127.0.0.1, started and stopped per test).

use std::sync::Mutex;

use change_event::{ChangeEvent, PayloadPointer, SIZE_ATTRIBUTE};
use serde_json::{json, Value};
use walcast_lambda::sns::{self, NotificationError, SnsBatch};
use walcast_lambda::sqs::{process, BatchConfig, Message, SqsBatch};
use walcast_lambda::{HandlerError, Payloads};

use crate::support::fauxqs::{settings, Fauxqs};
use crate::support::{event_json, reported, sqs_batch, Logs, Recorder};

const BUCKET: &str = "walcast-payloads-123456789012";
const KEY: &str = "walcast/9f6c2d1e-5b7a-4c3d-8e9f-0a1b2c3d4e5f";

/// A change event of about `size` bytes (compact JSON), its `name` column
/// holding quotes, backslashes, non-ASCII and characters JSON escapes.
fn big_event(size: usize) -> String {
    let mut event: Value =
        serde_json::from_str(include_str!("../../change-event/fixtures/insert.json"))
            .expect("fixture");
    let piece = "é\"\\ñ\u{1F600}\t<x>\u{7}";
    event["record"]["name"] = json!(piece.repeat(size / piece.len()));
    serde_json::to_string(&event).expect("serializes")
}

async fn put(client: &aws_sdk_s3::Client, key: &str, body: &str) {
    client
        .put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body.as_bytes().to_vec().into())
        .send()
        .await
        .expect("PutObject");
}

async fn bucket(client: &aws_sdk_s3::Client) {
    client
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("CreateBucket");
}

/// Records the events it is given, as raw change events.
#[derive(Default)]
struct Events(Mutex<Vec<ChangeEvent>>);

impl Events {
    async fn sqs(&self, event: ChangeEvent, _: Message) -> Result<(), HandlerError> {
        self.0.lock().expect("lock").push(event);
        Ok(())
    }

    async fn sns(&self, event: ChangeEvent, _: sns::Notification) -> Result<(), HandlerError> {
        self.0.lock().expect("lock").push(event);
        Ok(())
    }

    fn texts(&self) -> Vec<String> {
        let events = self.0.lock().expect("lock");
        events
            .iter()
            .map(|e| serde_json::to_string(e).expect("serializes"))
            .collect()
    }
}

fn config(payloads: Payloads) -> BatchConfig {
    BatchConfig {
        payloads,
        ..BatchConfig::default()
    }
}

/// The fixture is the published format: the Java/Python extended clients'
/// pointer, with `ExtendedPayloadSize` as a Number attribute.
#[test]
fn the_pointer_fixture_is_in_the_published_format() {
    let batch = sqs_batch("sqs-extended-client-pointer.json");
    let record = &batch.records[0];
    let body: Value = serde_json::from_str(record["body"].as_str().expect("body")).expect("JSON");
    let pointer = PayloadPointer::from_value(&body)
        .expect("a pointer")
        .expect("well formed");
    assert_eq!(
        pointer,
        PayloadPointer {
            bucket: BUCKET.into(),
            key: KEY.into()
        }
    );
    assert_eq!(
        record["messageAttributes"][SIZE_ATTRIBUTE]["dataType"],
        json!("Number")
    );
    assert_eq!(pointer.to_body(), record["body"].as_str().expect("body"));
}

/// No pointer, no S3 client: cold start does not grow for functions that
/// never receive one.
#[tokio::test]
async fn the_s3_client_is_built_only_for_a_pointer() {
    let payloads = Payloads::from_environment();
    let recorder = Recorder::default();
    let response = process(
        sqs_batch("sqs-standard.json"),
        &config(payloads.clone()),
        |e, m| recorder.handle(e, m),
    )
    .await
    .expect("batch answered");
    assert!(response.batch_item_failures.is_empty());
    assert!(!payloads.client_built(), "{payloads:?}");
}

/// A 3 MB event behind a pointer reaches the handler whole, byte for byte,
/// through each path: SQS raw body, SQS with an SNS envelope, direct SNS.
#[tokio::test]
async fn a_pointer_is_resolved_whole_on_every_path() {
    let emulator = Fauxqs::start();
    let s3 = emulator.s3();
    bucket(&s3).await;
    let event = big_event(3 << 20);
    put(&s3, KEY, &event).await;
    let payloads = Payloads::with_s3(emulator.settings());
    assert!(!payloads.client_built());

    // SQS, the body a pointer (SQS extended client, or SNS with raw delivery).
    let events = Events::default();
    let response = process(
        sqs_batch("sqs-extended-client-pointer.json"),
        &config(payloads.clone()),
        |e, m| events.sqs(e, m),
    )
    .await
    .expect("batch answered");
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(events.texts(), std::slice::from_ref(&event));
    assert!(payloads.client_built());

    // SQS, the pointer inside an SNS envelope (SNS extended client, no raw delivery).
    let pointer = sqs_batch("sqs-extended-client-pointer.json").records[0]["body"].clone();
    let mut json = event_json("sqs-sns-envelope.json");
    let mut envelope: Value =
        serde_json::from_str(json["Records"][0]["body"].as_str().expect("body")).expect("JSON");
    envelope["Message"] = pointer.clone();
    envelope["MessageAttributes"][SIZE_ATTRIBUTE] =
        json!({"Type": "Number", "Value": event.len().to_string()});
    json["Records"][0]["body"] = json!(envelope.to_string());
    json["Records"].as_array_mut().expect("records").truncate(1);
    let batch: SqsBatch = serde_json::from_value(json).expect("SQS");
    let events = Events::default();
    let response = process(batch, &config(payloads.clone()), |e, m| events.sqs(e, m))
        .await
        .expect("batch answered");
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(events.texts(), std::slice::from_ref(&event));

    // Direct SNS.
    let mut json = event_json("sns.json");
    json["Records"][0]["Sns"]["Message"] = pointer;
    let batch: SnsBatch = serde_json::from_value(json).expect("SNS");
    let events = Events::default();
    sns::process(batch, &payloads, |e, n| events.sns(e, n))
        .await
        .expect("handled");
    assert_eq!(events.texts(), [event]);
}

/// An AWS SDK client of your own (the `aws-sdk-s3` feature) resolves a
/// pointer the same way, and fails with the same reasons.
#[cfg(feature = "aws-sdk-s3")]
#[tokio::test]
async fn an_sdk_client_of_your_own_resolves_the_same() {
    let emulator = Fauxqs::start();
    let s3 = emulator.s3();
    let payloads = Payloads::with_s3_client(s3.clone());
    let batch = || sqs_batch("sqs-extended-client-pointer.json");
    let logs = Logs::capture();
    let events = Events::default();

    let response = process(batch(), &config(payloads.clone()), |e, m| events.sqs(e, m))
        .await
        .expect("batch answered");
    assert_eq!(response.batch_item_failures.len(), 1);
    assert!(
        logs.text().contains(&format!(
            "cannot fetch the offloaded body s3://{BUCKET}/{KEY}: NoSuchBucket"
        )),
        "{}",
        logs.text()
    );

    bucket(&s3).await;
    let event = big_event(1 << 20);
    put(&s3, KEY, &event).await;
    let response = process(batch(), &config(payloads), |e, m| events.sqs(e, m))
        .await
        .expect("batch answered");
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(events.texts(), [event]);
}

/// A missing object or bucket fails that record alone, retryable, with a
/// one-line reason naming the object, and no row value in the logs.
#[tokio::test]
async fn a_missing_object_or_bucket_fails_the_record_with_its_reason() {
    let emulator = Fauxqs::start();
    let s3 = emulator.s3();
    let payloads = Payloads::with_s3(emulator.settings());
    let pointer = sqs_batch("sqs-extended-client-pointer.json").records[0].clone();
    let mut json = event_json("sqs-standard.json");
    json["Records"][1] = pointer.clone();
    let batch: SqsBatch = serde_json::from_value(json).expect("SQS");
    let recorder = Recorder::default();
    let logs = Logs::capture();

    // No bucket yet.
    let response = process(batch.clone(), &config(payloads.clone()), |e, m| {
        recorder.handle(e, m)
    })
    .await
    .expect("batch answered");
    let id = pointer["messageId"].as_str().expect("id").to_owned();
    assert_eq!(reported(&response), std::slice::from_ref(&id));
    assert_eq!(recorder.order().len(), 4, "the other records are handled");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains(&id) && l.contains("offloaded body was not fetched"))
        .unwrap_or_else(|| panic!("no failure logged for {id}:\n{text}"));
    assert!(
        line.contains(&format!(
            "cannot fetch the offloaded body s3://{BUCKET}/{KEY}: NoSuchBucket"
        )),
        "{line}"
    );
    assert!(line.contains("retryable=true"), "{line}");

    // The bucket, but not the object.
    bucket(&s3).await;
    let logs = Logs::capture();
    let response = process(batch, &config(payloads.clone()), |e, m| {
        recorder.handle(e, m)
    })
    .await
    .expect("batch answered");
    assert_eq!(reported(&response), std::slice::from_ref(&id));
    let text = logs.text();
    assert!(text.contains(": NoSuchKey: the object is gone"), "{text}");
    assert!(!text.contains("alice"), "a row value in the logs:\n{text}");

    // Direct SNS: the invocation fails, retryable, typed PayloadError.
    let mut json = event_json("sns.json");
    json["Records"][0]["Sns"]["Message"] = pointer["body"].clone();
    let batch: SnsBatch = serde_json::from_value(json).expect("SNS");
    let error = sns::process(batch, &payloads, |e: ChangeEvent, _| async move {
        drop(e);
        Ok(())
    })
    .await
    .expect_err("not fetched");
    assert!(
        matches!(error, NotificationError::Payload { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(
        lambda_runtime::Diagnostic::from(error).error_type,
        "PayloadError"
    );
}

/// The fixture's pointer through `payloads`: its record must fail alone; the
/// logs, and the line that says why.
async fn the_pointer_fails(payloads: Payloads) -> (String, String) {
    let logs = Logs::capture();
    let recorder = Recorder::default();
    let response = process(
        sqs_batch("sqs-extended-client-pointer.json"),
        &config(payloads),
        |e, m| recorder.handle(e, m),
    )
    .await
    .expect("batch answered");
    assert_eq!(response.batch_item_failures.len(), 1);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("cannot fetch the offloaded body"))
        .unwrap_or_else(|| panic!("no failure logged:\n{text}"))
        .to_owned();
    (text, line)
}

/// S3 unreachable (nothing listens): a retryable failure on one line.
#[tokio::test]
async fn s3_unreachable_is_a_one_line_retryable_failure() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let payloads = Payloads::with_s3(settings(&format!("http://127.0.0.1:{port}")));
    let (text, line) = the_pointer_fails(payloads).await;
    assert!(line.contains("retryable=true"), "{line}");
    // The reason (the connection's error) is on that line: nothing of it spills onto the next.
    let next = text.lines().skip_while(|l| *l != line).nth(1).unwrap_or("");
    assert!(
        next.is_empty() || next.contains(" INFO ") || next.contains(" WARN "),
        "{text}"
    );
}

/// Over https the object is fetched through TLS, and a certificate the system
/// does not trust is refused: the record fails, retryable, the reason naming
/// the certificate. (A self-signed one for 127.0.0.1, served by Python.)
#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("untrusted-tls");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success(), "openssl req failed");
    let server = "import http.server, ssl, sys\n\
        class H(http.server.BaseHTTPRequestHandler):\n    \
            def do_GET(self):\n        \
                self.send_response(200); self.send_header('Content-Length', '2'); \
                self.end_headers(); self.wfile.write(b'{}')\n    \
            def log_message(self, *a): pass\n\
        s = http.server.HTTPServer(('127.0.0.1', 0), H)\n\
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(sys.argv[1], sys.argv[2])\n\
        s.socket = c.wrap_socket(s.socket, server_side=True)\n\
        print(s.server_address[1], flush=True)\n\
        s.serve_forever()\n";
    let mut child = Command::new("python3")
        .args(["-c", server])
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut port = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("the server's port");
    let _server = Kill(child);
    let payloads = Payloads::with_s3(settings(&format!("https://127.0.0.1:{}", port.trim())));
    let (_, line) = the_pointer_fails(payloads).await;
    assert!(line.contains("S3 did not answer"), "{line}");
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer"),
        "{line}"
    );
    assert!(line.contains("retryable=true"), "{line}");
}
