//! Built without the `s3` feature, a body offloaded to S3 fails its record
//! with a reason that says how to fix it; the other records are handled.

use walcast_lambda::sqs::{process, BatchConfig, SqsBatch};

use crate::support::{event_json, reported, sqs_batch, Logs, Recorder};

#[tokio::test]
async fn a_pointer_fails_its_record_saying_to_enable_the_feature() {
    let pointer = sqs_batch("sqs-extended-client-pointer.json").records[0].clone();
    let mut json = event_json("sqs-standard.json");
    json["Records"][0] = pointer.clone();
    let batch: SqsBatch = serde_json::from_value(json).expect("SQS");
    let recorder = Recorder::default();
    let logs = Logs::capture();

    let response = process(batch, &BatchConfig::default(), |e, m| recorder.handle(e, m))
        .await
        .expect("batch answered");

    let id = pointer["messageId"].as_str().map(str::to_owned);
    assert_eq!(reported(&response).first(), id.as_ref());
    assert_eq!(reported(&response).len(), 1);
    assert_eq!(recorder.order().len(), 4);
    assert!(
        logs.text()
            .contains("built without its `s3` feature: enable it"),
        "{}",
        logs.text()
    );
}
