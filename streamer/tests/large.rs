//! Large events through S3 (`sink.s3`), end to end: a real Postgres row, the
//! streamer's SQS or SNS sink on fauxqs (SQS, SNS and S3 on 127.0.0.1), and
//! what arrives handed to the Lambda handlers' library (`walcast-lambda`), which
//! must resolve the pointer to the whole event, byte for byte.

use std::sync::Mutex;

use change_event::{ChangeEvent, PayloadPointer, SIZE_ATTRIBUTE};
use serde_json::{json, Value};
use walcast_lambda::sns::SnsBatch;
use walcast_lambda::sqs::{BatchConfig, SqsBatch};
use walcast_lambda::{HandlerError, Payloads};
use walcast_streamer::config::Config;
use walcast_streamer::sink::{Destinations, SinkError};

use crate::aws::{create_queue, receive, topic_with_queue, unique, AwsRun, Received};
use crate::support::emulator::Emulator;
use crate::support::{connect, eventually, TestDb};
use crate::WAIT;

/// A bucket of its own on the shared emulator.
async fn bucket(emu: &Emulator) -> String {
    let name = unique("walcast-payloads").to_ascii_lowercase();
    emu.s3()
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("CreateBucket");
    name
}

fn s3_yaml(bucket: &str, extra: &str) -> String {
    format!("  s3:\n    bucket: {bucket}\n    key_prefix: walcast/\n{extra}")
}

/// Rows of a few MB with characters JSON escapes, quotes and non-ASCII.
const BIG_ROW: &str =
    "INSERT INTO big VALUES (1, (SELECT string_agg(md5(g::text) || 'é✓\"\\\t', '') \
                       FROM generate_series(1, 130000) g))";

/// The Lambda SQS record for a received message (as the event source mapping builds it).
fn sqs_record(m: &Received, n: usize, queue_arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .attributes
        .iter()
        .map(|(k, v)| {
            let kind = if k == SIZE_ATTRIBUTE { "Number" } else { "String" };
            (
                k.clone(),
                json!({"stringValue": v, "stringListValues": [], "binaryListValues": [], "dataType": kind}),
            )
        })
        .collect();
    json!({
        "messageId": format!("m{n}"),
        "receiptHandle": "r",
        "body": m.body,
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": attributes,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    })
}

/// Collects the events the library hands to a handler.
#[derive(Default)]
struct Handled(Mutex<Vec<ChangeEvent>>);

impl Handled {
    fn push(&self, event: ChangeEvent) -> Result<(), HandlerError> {
        self.0.lock().expect("lock").push(event);
        Ok(())
    }

    fn take(&self) -> Vec<ChangeEvent> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

/// The pointer a received message carries, checked against the published format.
fn pointer_of(m: &Received, bucket: &str) -> PayloadPointer {
    let body: Value = serde_json::from_str(&m.body).expect("JSON body");
    let pointer = PayloadPointer::from_value(&body)
        .unwrap_or_else(|| panic!("not a pointer: {}", &m.body[..m.body.len().min(200)]))
        .expect("well formed");
    assert_eq!(
        pointer.to_body(),
        m.body,
        "exactly the extended clients' format"
    );
    assert_eq!(pointer.bucket, bucket);
    assert!(pointer.key.starts_with("walcast/"), "{}", pointer.key);
    assert!(
        m.attributes.contains_key(SIZE_ATTRIBUTE),
        "{:?}",
        m.attributes
    );
    pointer
}

/// The object a pointer names, from the emulator.
async fn object(
    emu: &Emulator,
    pointer: &PayloadPointer,
) -> aws_sdk_s3::primitives::AggregatedBytes {
    emu.s3()
        .get_object()
        .bucket(&pointer.bucket)
        .key(&pointer.key)
        .send()
        .await
        .expect("the object")
        .body
        .collect()
        .await
        .expect("its body")
}

/// consumer-sqs's path: the records through `walcast_lambda::sqs::process`, every
/// one handled; the events, ordered by `id`.
async fn through_sqs_handler(records: Vec<Value>, payloads: Payloads) -> Vec<ChangeEvent> {
    let config = BatchConfig {
        payloads,
        ..BatchConfig::default()
    };
    let handled = Handled::default();
    let response = walcast_lambda::sqs::process(SqsBatch { records }, &config, |e, _| {
        let out = handled.push(e);
        async move { out }
    })
    .await
    .expect("batch answered");
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let mut events = handled.take();
    events.sort_by_key(|e| e.record["id"].as_i64());
    events
}

async fn value_in_postgres(db: &TestDb, id: i32) -> String {
    connect(&db.url)
        .await
        .query_one("SELECT v FROM big WHERE id = $1", &[&id])
        .await
        .expect("the row")
        .get(0)
}

/// A 5 MB row on an SQS queue: the message is a pointer, the object holds
/// the event, and consumer-sqs's library path hands the whole event over.
#[tokio::test]
async fn a_5_mb_row_reaches_the_sqs_handler_whole_through_s3() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let bucket = bucket(emu).await;
    let (url, arn) = create_queue(&sqs, &unique("large")).await;
    let db = TestDb::new("large_sqs").await;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await;
    let run = AwsRun::start(
        &db,
        &format!(
            "  tables: [big]\n{}{}",
            emu.sink_yaml("sqs", &url, ""),
            s3_yaml(&bucket, "")
        ),
    )
    .await;
    db.exec(&format!("{BIG_ROW}; INSERT INTO big VALUES (2, 'small');"))
        .await;
    let expected = value_in_postgres(&db, 1).await;
    assert!(expected.len() > 5_000_000, "{}", expected.len());

    let got = receive(&sqs, &url, 2).await;
    let (large, small): (Vec<&Received>, Vec<&Received>) =
        got.iter().partition(|m| m.body.starts_with('['));
    assert_eq!(
        (large.len(), small.len()),
        (1, 1),
        "only the large row through S3"
    );
    let pointer = pointer_of(large[0], &bucket);
    let object = object(emu, &pointer).await.into_bytes();
    assert_eq!(
        large[0].attributes[SIZE_ATTRIBUTE],
        object.len().to_string(),
        "ExtendedPayloadSize is the object's size"
    );
    assert_eq!(
        large[0].attributes["table_name"], "big",
        "our attributes stay"
    );

    let records: Vec<Value> = got
        .iter()
        .enumerate()
        .map(|(n, m)| sqs_record(m, n, &arn))
        .collect();
    let events = through_sqs_handler(records, Payloads::with_s3_client(emu.s3())).await;
    assert_eq!(
        events[0].record["v"].as_str(),
        Some(expected.as_str()),
        "byte for byte"
    );
    assert_eq!(
        serde_json::to_vec(&events[0]).expect("serializes"),
        object,
        "the handler's event is the object, whole"
    );
    assert_eq!(events[1].record["v"], "small");

    // Accepted only once object and pointer were: the slot moves past both.
    let (_, current) = db.slot_lsns(&format!("s_{}", db.name)).await;
    eventually(WAIT, || async { run.tracker.confirmable() >= current }).await;
    run.stop().await;
    db.drop_db().await;
}

/// An SNS topic (through an SQS subscription without raw delivery, to see
/// what SNS delivers): a 5 MB row and a 200 KB row, under SNS's 256 KiB
/// limit but over `threshold_bytes`, both go through S3; a small row does
/// not. consumer-sns's path (direct SNS) and consumer-sqs's (the SNS envelope
/// in an SQS body) both hand over the whole events.
#[tokio::test]
async fn rows_over_the_limit_or_the_threshold_reach_the_sns_handler_through_s3() {
    let emu = Emulator::get();
    let sqs = emu.sqs();
    let bucket = bucket(emu).await;
    let (topic, url, arn) = topic_with_queue(emu, false, false).await;
    let db = TestDb::new("large_sns").await;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await;
    let run = AwsRun::start(
        &db,
        &format!(
            "  tables: [big]\n{}{}",
            emu.sink_yaml("sns", &topic, ""),
            s3_yaml(&bucket, "    threshold_bytes: 100000\n")
        ),
    )
    .await;
    db.exec(&format!(
        "{BIG_ROW}; INSERT INTO big VALUES (2, repeat('ü', 100000)); INSERT INTO big VALUES (3, 'small');"
    ))
    .await;
    let expected = [
        value_in_postgres(&db, 1).await,
        value_in_postgres(&db, 2).await,
    ];
    assert!(expected[1].len() == 200_000, "a 200 KB row");

    let got = receive(&sqs, &url, 3).await;
    let mut records = Vec::new();
    let mut direct = Vec::new();
    let mut through_s3 = 0;
    for (n, m) in got.iter().enumerate() {
        let envelope: Value = serde_json::from_str(&m.body).expect("an SNS envelope");
        let message = envelope["Message"].as_str().expect("Message");
        if message.starts_with('[') {
            through_s3 += 1;
            let pointer: Value = serde_json::from_str(message).expect("JSON");
            let pointer = PayloadPointer::from_value(&pointer)
                .expect("a pointer")
                .expect("well formed");
            assert_eq!(
                pointer.to_body(),
                message,
                "exactly the extended clients' format"
            );
            assert_eq!(
                envelope["MessageAttributes"][SIZE_ATTRIBUTE]["Type"], "Number",
                "{envelope}"
            );
        }
        records.push(sqs_record(m, n, &arn));
        // The same notification as SNS hands it to a Lambda function (which spells
        // the two URLs `…Url`, where the SQS envelope has `…URL`).
        let mut sns_message = envelope.clone();
        let fields = sns_message.as_object_mut().expect("an object");
        for (lambda, sqs, default) in [
            (
                "SigningCertUrl",
                "SigningCertURL",
                "https://sns.us-east-1.amazonaws.com/cert.pem",
            ),
            (
                "UnsubscribeUrl",
                "UnsubscribeURL",
                "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
            ),
        ] {
            let value = fields.remove(sqs).unwrap_or_else(|| json!(default));
            fields.insert(lambda.to_owned(), value);
        }
        for (field, default) in [("SignatureVersion", "1"), ("Signature", "EXAMPLE")] {
            fields.entry(field).or_insert_with(|| json!(default));
        }
        direct.push(json!({
            "EventSource": "aws:sns",
            "EventVersion": "1.0",
            "EventSubscriptionArn": format!("{topic}:sub"),
            "Sns": sns_message,
        }));
    }
    assert_eq!(
        through_s3, 2,
        "the 5 MB row (over the limit) and the 200 KB row (over the threshold)"
    );

    let payloads = Payloads::with_s3_client(emu.s3());
    let check = |mut events: Vec<ChangeEvent>| {
        events.sort_by_key(|e| e.record["id"].as_i64());
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].record["v"].as_str(), Some(expected[0].as_str()));
        assert_eq!(events[1].record["v"].as_str(), Some(expected[1].as_str()));
        assert_eq!(events[2].record["v"], "small");
    };
    let handled = Handled::default();
    for record in direct {
        walcast_lambda::sns::process(
            SnsBatch {
                records: vec![record],
            },
            &payloads,
            |e, _| {
                let out = handled.push(e);
                async move { out }
            },
        )
        .await
        .expect("the SNS handler's path");
    }
    check(handled.take());
    check(through_sqs_handler(records, payloads).await);
    run.stop().await;
    db.drop_db().await;
}

/// A bucket that does not exist stops start-up with one line naming the setting.
#[tokio::test]
async fn a_missing_bucket_fails_the_check_naming_the_setting() {
    let emu = Emulator::get();
    let (url, _) = create_queue(&emu.sqs(), &unique("nobucket")).await;
    let yaml = format!(
        "source:\n  url: postgres://u@127.0.0.1/d\n{}{}",
        emu.sink_yaml("sqs", &url, ""),
        s3_yaml("walcast-no-such-bucket", "")
    );
    let config = Config::load(Some(&yaml), Vec::new()).expect("valid config");
    let destinations = Destinations::connect(&config.sinks[0])
        .await
        .expect("connects")
        .expect("an SQS sink");
    let error = destinations.verify().await.expect_err("no bucket");
    let SinkError::Setting { setting, reason } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*setting, "sink.s3.bucket");
    assert!(reason.contains("walcast-no-such-bucket"), "{reason}");
    assert!(!error.to_string().contains('\n'), "one line: {error}");
}

/// S3 (and the queue: one emulator) unreachable while a large event waits:
/// its upload is retried like a send, nothing is confirmed past it meanwhile,
/// and once S3 is back the object and the pointer arrive, and the slot moves.
#[tokio::test]
async fn a_failed_upload_is_retried_and_nothing_is_confirmed_before_it() {
    let (name, bucket) = (unique("s3-outage"), unique("walcast-outage"));
    let init = json!({ "queues": [{ "name": name }], "buckets": [bucket] }).to_string();
    let emu = Emulator::dedicated(Some(&init));
    let sqs = emu.sqs();
    let url = sqs
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .expect("queue from the init file")
        .queue_url()
        .expect("url")
        .to_owned();
    let db = TestDb::new("large_outage").await;
    db.exec("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await;
    let slot = format!("s_{}", db.name);
    let run = AwsRun::start(
        &db,
        &format!(
            "  tables: [big]\n{}{}",
            emu.sink_yaml("sqs", &url, ""),
            s3_yaml(&bucket, "")
        ),
    )
    .await;
    db.exec("INSERT INTO big VALUES (1, 'before')").await;
    assert_eq!(receive(&sqs, &url, 1).await.len(), 1);

    emu.stop();
    let before = db
        .client
        .query_one(
            "INSERT INTO big VALUES (2, repeat('x', 1100000)) \
             RETURNING (pg_current_wal_insert_lsn() - '0/0')::bigint",
            &[],
        )
        .await
        .expect("insert")
        .get::<_, i64>(0) as u64;
    db.exec("INSERT INTO big VALUES (3, 'after')").await;
    let watch_until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < watch_until {
        assert!(
            run.tracker.confirmable() <= before,
            "confirmed past an event whose object is not in S3"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    emu.restart();
    let got = receive(&sqs, &url, 2).await;
    let large = got
        .iter()
        .find(|m| m.body.starts_with('['))
        .expect("the large row, as a pointer");
    let pointer = pointer_of(large, &bucket);
    // Uploaded once S3 was back, whole.
    let object = object(&emu, &pointer).await;
    assert_eq!(
        object.into_bytes().len().to_string(),
        large.attributes[SIZE_ATTRIBUTE]
    );
    let (_, current) = db.slot_lsns(&slot).await;
    eventually(WAIT, || async { run.tracker.confirmable() >= current }).await;
    run.stop().await;
    db.drop_db().await;
    emu.stop();
}
