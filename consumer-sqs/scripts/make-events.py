#!/usr/bin/env python3
"""Writes the Lambda test events in consumer-sqs/events/ and consumer-sns/events/, and
the AWS payload shapes the walcast-lambda library is tested with (lambda/events/).

Bodies are what the streamer emits: compact JSON of a change event. The users
events are the change-event crate's fixtures (change-event/fixtures/*.json),
compacted byte for byte (no re-encoding, so numeric digits and key order stay
exact); the orders events are written here in the same shape. Message
attributes (action, table_schema, table_name), FIFO group ids
("<schema>.<table>:<pk>") and deduplication ids follow
docs/change-event.md.

Run from the repository root: python3 consumer-sqs/scripts/make-events.py
"""
import base64
import hashlib
import json
import pathlib
import struct
import uuid

ROOT = pathlib.Path(__file__).resolve().parents[2]
SQS_DIR = ROOT / "consumer-sqs" / "events"
SNS_DIR = ROOT / "consumer-sns" / "events"
LAMBDA_DIR = ROOT / "lambda" / "events"

REGION = "us-east-1"
ACCOUNT = "123456789012"
STANDARD_QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:walcast-changes"
FIFO_QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:walcast-changes.fifo"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:walcast-changes"
NAMESPACE = uuid.UUID("5f0c6b8e-2b1d-4c3a-9e7f-1a2b3c4d5e6f")


def compact(text: str) -> str:
    """Drops the whitespace outside strings: serde_json's compact form of its pretty output."""
    out, in_string, escaped = [], False, False
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif not ch.isspace():
            out.append(ch)
    return "".join(out)


def fixture(action: str) -> str:
    return compact((ROOT / "change-event" / "fixtures" / f"{action}.json").read_text())


def idempotency_key(lsn: int, idx: int) -> str:
    return base64.b64encode(f"{lsn}:{idx}".encode()).decode()


def order_event(action: str, record: str, changes: str, lsn: int, idx: int, ts: str) -> str:
    """An orders change event as compact JSON (written by hand to keep numeric digits)."""
    return (
        '{"record":' + record + ',"changes":' + changes + ',"action":"' + action + '",'
        '"metadata":{"table_schema":"public","table_name":"orders",'
        '"commit_timestamp":"' + ts + '","commit_lsn":' + str(lsn) + ',"commit_idx":' + str(idx) + ','
        '"idempotency_key":"' + idempotency_key(lsn, idx) + '","record_pks":["1001"],'
        '"transaction_annotations":null,"database_name":"myapp-prod",'
        '"consumer":{"id":"8a6e4f4e-2f5a-4c51-9a7e-0d1c2b3a4f5e","name":"users_sqs","annotations":{}},'
        '"database":{"id":"0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b","name":"myapp-prod",'
        '"annotations":{"team":"core"},"database":"myapp-prod","hostname":"db.example.com"}}}'
    )


ORDER_INSERT = order_event(
    "insert",
    '{"id":1001,"user_id":1,"status":"placed","total":42.50,"placed_at":"2024-03-21T15:31:00.000001Z"}',
    "null", 123456999, 0, "2024-03-21T15:31:00.000001Z",
)
ORDER_UPDATE = order_event(
    "update",
    '{"id":1001,"user_id":1,"status":"shipped","total":42.50,"placed_at":"2024-03-21T15:31:00.000001Z"}',
    '{"status":"placed"}', 123457111, 0, "2024-03-21T16:00:00.000000Z",
)

# Bodies that are not change events a consumer can decode.
TRUNCATED = '{"record":{"id":1,"name":"alicia","email":"alice@exa'
NOT_AN_EVENT = '{"hello":"world"}'
WRONG_TYPE = fixture("update").replace('"record":{"id":1,', '"record":{"id":"one",', 1)


def event_body(name: str) -> str:
    return {
        "insert": fixture("insert"),
        "update": fixture("update"),
        "delete": fixture("delete"),
        "read": fixture("read"),
        "order-insert": ORDER_INSERT,
        "order-update": ORDER_UPDATE,
        "truncated": TRUNCATED,
        "not-an-event": NOT_AN_EVENT,
        "wrong-type": WRONG_TYPE,
    }[name]


def meta_of(body: str):
    """(action, schema, table, group id, dedup id) of a body, or a guess for broken ones."""
    try:
        event = json.loads(body)
        m = event["metadata"]
        group = f'{m["table_schema"]}.{m["table_name"]}:' + ":".join(m["record_pks"])
        return event["action"], m["table_schema"], m["table_name"], group, m["idempotency_key"]
    except (ValueError, KeyError):
        return "update", "public", "users", "public.users:1", "broken-" + hashlib.sha256(body.encode()).hexdigest()[:16]


def sqs_attributes_md5(attrs: dict) -> str:
    """MD5 of message attributes as SQS computes it (String values only)."""
    buf = b""
    for name in sorted(attrs):
        value = attrs[name]
        for part in (name, value["dataType"]):
            raw = part.encode()
            buf += struct.pack(">I", len(raw)) + raw
        raw = value["stringValue"].encode()
        buf += b"\x01" + struct.pack(">I", len(raw)) + raw
    return hashlib.md5(buf).hexdigest()


def string_attr(value: str) -> dict:
    return {"stringValue": value, "stringListValues": [], "binaryListValues": [], "dataType": "String"}


def sns_envelope(message_id: str, body: str, action: str, schema: str, table: str) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": TOPIC,
            "Message": body,
            "Timestamp": "2024-03-21T15:30:00.200Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
            "SigningCertURL": f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
            "UnsubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55",
            "MessageAttributes": {
                "action": {"Type": "String", "Value": action},
                "table_name": {"Type": "String", "Value": table},
                "table_schema": {"Type": "String", "Value": schema},
            },
        },
        separators=(",", ":"),
    )


def sqs_record(name: str, n: int, queue: str, fifo: bool, envelope: bool = False) -> dict:
    body = event_body(name)
    action, schema, table, group, dedup = meta_of(body)
    message_id = str(uuid.uuid5(NAMESPACE, f"{queue}/{n}/{name}"))
    sent = 1711035000200 + n * 10
    attributes = {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": str(sent),
        "SenderId": "AROAEXAMPLEROLEID0001:walcast-streamer",
        "ApproximateFirstReceiveTimestamp": str(sent + 5),
    }
    message_attributes = {
        "action": string_attr(action),
        "table_name": string_attr(table),
        "table_schema": string_attr(schema),
    }
    if fifo:
        attributes["SequenceNumber"] = str(18849496460467696128 + n)
        attributes["MessageGroupId"] = group
        attributes["MessageDeduplicationId"] = dedup
    if envelope:
        # SNS -> SQS without raw message delivery: the body is the SNS envelope
        # and the attributes travel inside it, not as SQS message attributes.
        body = sns_envelope(str(uuid.uuid5(NAMESPACE, f"sns/{n}/{name}")), body, action, schema, table)
        message_attributes = {}
    record = {
        "messageId": message_id,
        "receiptHandle": base64.b64encode(hashlib.sha256(message_id.encode()).digest() * 3).decode(),
        "body": body,
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue,
        "awsRegion": REGION,
    }
    if message_attributes:
        record["md5OfMessageAttributes"] = sqs_attributes_md5(message_attributes)
    return record


def sqs_event(names, queue: str, fifo: bool, envelope: bool = False) -> dict:
    return {"Records": [sqs_record(name, n, queue, fifo, envelope) for n, name in enumerate(names)]}


def sns_event(name: str) -> dict:
    body = event_body(name)
    action, schema, table, _, _ = meta_of(body)
    message_id = str(uuid.uuid5(NAMESPACE, f"sns-lambda/{name}"))
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": f"{TOPIC}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55",
                "Sns": {
                    "Type": "Notification",
                    "MessageId": message_id,
                    "TopicArn": TOPIC,
                    "Subject": None,
                    "Message": body,
                    "Timestamp": "2024-03-21T15:30:00.200Z",
                    "SignatureVersion": "1",
                    "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
                    "SigningCertUrl": f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
                    "UnsubscribeUrl": f"https://sns.{REGION}.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={TOPIC}:2bcfbf39-05c3-41de-beaa-fcfcc21c8f55",
                    "MessageAttributes": {
                        "action": {"Type": "String", "Value": action},
                        "table_name": {"Type": "String", "Value": table},
                        "table_schema": {"Type": "String", "Value": schema},
                    },
                },
            }
        ]
    }


def shapes() -> dict:
    """The payload shapes of AWS's docs and public reports, each with the change
    events of the fixtures above; lambda/tests/shapes.rs says what each must do."""
    out = {}

    # A fair queue: a standard queue whose messages carry MessageGroupId. The
    # issue's case: m1 (body "{") and m2 (valid) in group tenant-a.
    fair = sqs_event(["truncated", "insert"], STANDARD_QUEUE, False)
    for r in fair["Records"]:
        r["body"] = "{" if r["body"] == TRUNCATED else r["body"]
        r["md5OfBody"] = hashlib.md5(r["body"].encode()).hexdigest()
        r["attributes"]["MessageGroupId"] = "tenant-a"
    out["sqs-fair-queue-bad-record.json"] = fair

    # "stringListValues": null (and "binaryListValues": null) in message attributes,
    # as AWS sometimes sends them: the runtime's SqsEvent cannot read them, the
    # library reads them as empty lists, so every record is handled.
    nulls = sqs_event(["insert", "update", "delete"], STANDARD_QUEUE, False)
    nulls["Records"][1]["messageAttributes"]["action"]["stringListValues"] = None
    nulls["Records"][2]["messageAttributes"]["table_name"]["binaryListValues"] = None
    out["sqs-string-list-values-null.json"] = nulls

    # A record the event types cannot read (a number where SQS sends a string,
    # as hand-written test events have it): only that record may fail.
    unreadable = sqs_event(["insert", "update", "delete"], STANDARD_QUEUE, False)
    unreadable["Records"][1]["attributes"]["ApproximateReceiveCount"] = 1
    out["sqs-unreadable-record.json"] = unreadable

    # A batching window (MaximumBatchingWindowInSeconds): fields AWS sends as null
    # or leaves out, a record without messageAttributes at all, AWSTraceHeader.
    window = sqs_event(["insert", "update", "order-insert"], STANDARD_QUEUE, False)
    window["Records"][0]["md5OfMessageAttributes"] = None
    window["Records"][0]["messageAttributes"] = {}
    window["Records"][1]["messageAttributes"] = None
    window["Records"][1]["attributes"]["AWSTraceHeader"] = "Root=1-65fc4f2a-0123456789abcdef01234567;Parent=1a2b3c4d5e6f7a8b;Sampled=0"
    del window["Records"][2]["messageAttributes"]
    del window["Records"][2]["md5OfMessageAttributes"]
    out["sqs-batching-window-nulls.json"] = window

    # Binary and Number attributes beside ours (another producer's, or a tracer's).
    typed = sqs_event(["insert", "order-update"], STANDARD_QUEUE, False)
    for r in typed["Records"]:
        r["messageAttributes"]["trace"] = {"binaryValue": base64.b64encode(b"\x00\x01trace").decode(),
                                           "stringListValues": [], "binaryListValues": [], "dataType": "Binary"}
        r["messageAttributes"]["attempt"] = {"stringValue": "3", "stringListValues": [], "binaryListValues": [],
                                             "dataType": "Number.int"}
    out["sqs-binary-number-attributes.json"] = typed

    # SNS -> SQS without raw delivery: envelopes signed (SignatureVersion 2) and
    # unsigned (no Signature fields at all, as emulators and some proxies send).
    signed = sqs_event(["insert", "update"], STANDARD_QUEUE, False, envelope=True)
    envelope = json.loads(signed["Records"][0]["body"])
    envelope["SignatureVersion"] = "2"
    signed["Records"][0]["body"] = json.dumps(envelope, separators=(",", ":"))
    unsigned = json.loads(signed["Records"][1]["body"])
    for field in ["SignatureVersion", "Signature", "SigningCertURL", "UnsubscribeURL"]:
        del unsigned[field]
    unsigned["MessageAttributes"]["trace"] = {"Type": "Binary", "Value": base64.b64encode(b"trace").decode()}
    signed["Records"][1]["body"] = json.dumps(unsigned, separators=(",", ":"))
    for r in signed["Records"]:
        r["md5OfBody"] = hashlib.md5(r["body"].encode()).hexdigest()
    out["sqs-sns-envelopes-signed-unsigned.json"] = signed

    # SNS FIFO topic -> SQS FIFO queue with raw delivery: the body is the event,
    # SNS's message attributes are SQS message attributes, the group is kept.
    out["sqs-sns-raw-delivery-fifo.json"] = sqs_event(["insert", "order-insert", "update"], FIFO_QUEUE, True)

    # A cross-account subscription's confirmation, in the queue before any event.
    confirmation = sqs_event(["insert", "insert"], STANDARD_QUEUE, False)
    confirmation["Records"][0]["body"] = json.dumps({
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e2425dacbba1c6d3c7d5b4a8b9a0f1e2d3c4b5a69788",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": f"https://sns.{REGION}.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f",
        "Timestamp": "2024-03-21T15:29:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
        "SigningCertURL": f"https://sns.{REGION}.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
    }, separators=(",", ":"))
    confirmation["Records"][0]["messageAttributes"] = {}
    del confirmation["Records"][0]["md5OfMessageAttributes"]
    out["sqs-subscription-confirmation.json"] = confirmation

    # SNS -> Lambda: SignatureVersion 2, a Binary attribute, and a record whose
    # Sns object lacks the fields the runtime's SnsEvent needs.
    sns = sns_event("insert")
    sns["Records"][0]["Sns"]["SignatureVersion"] = "2"
    sns["Records"][0]["Sns"]["MessageAttributes"]["trace"] = {"Type": "Binary", "Value": base64.b64encode(b"trace").decode()}
    out["sns-signature-v2-binary-attribute.json"] = sns
    broken = sns_event("update")
    for field in ["Signature", "SigningCertUrl", "Timestamp"]:
        del broken["Records"][0]["Sns"][field]
    out["sns-record-missing-fields.json"] = broken

    # A body offloaded to S3, as the streamer and AWS's extended clients send it:
    # the pointer (change-event/fixtures/pointer.json, compacted) and ExtendedPayloadSize.
    pointer = sqs_event(["insert"], STANDARD_QUEUE, False)
    r = pointer["Records"][0]
    r["messageId"] = "5e0f4a4c-3a57-4bde-9b55-0c3f7c1b2a91"
    r["body"] = compact((ROOT / "change-event" / "fixtures" / "pointer.json").read_text())
    r["md5OfBody"] = hashlib.md5(r["body"].encode()).hexdigest()
    r["messageAttributes"]["ExtendedPayloadSize"] = {"stringValue": "3145728", "stringListValues": [],
                                                     "binaryListValues": [], "dataType": "Number"}
    del r["md5OfMessageAttributes"]
    out["sqs-extended-client-pointer.json"] = pointer
    return out


def write(path: pathlib.Path, event: dict) -> None:
    path.write_text(json.dumps(event, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    SQS_DIR.mkdir(exist_ok=True)
    SNS_DIR.mkdir(exist_ok=True)
    write(SQS_DIR / "sqs-standard.json",
          sqs_event(["insert", "update", "delete", "read", "order-insert"], STANDARD_QUEUE, False))
    write(SQS_DIR / "sqs-standard-with-bad-records.json",
          sqs_event(["insert", "truncated", "update", "wrong-type", "not-an-event"], STANDARD_QUEUE, False))
    write(SQS_DIR / "sqs-fifo.json",
          sqs_event(["insert", "order-insert", "update", "order-update", "delete"], FIFO_QUEUE, True))
    write(SQS_DIR / "sqs-fifo-with-bad-record.json",
          sqs_event(["insert", "order-insert", "truncated", "order-update", "delete"], FIFO_QUEUE, True))
    write(SQS_DIR / "sqs-sns-envelope.json",
          sqs_event(["insert", "order-update"], STANDARD_QUEUE, False, envelope=True))
    write(SNS_DIR / "sns.json", sns_event("insert"))
    for name in ["update", "delete", "read", "order-insert", "order-update"]:
        write(SNS_DIR / f"sns-{name}.json", sns_event(name))
    write(SNS_DIR / "sns-malformed.json", sns_event("truncated"))
    LAMBDA_DIR.mkdir(exist_ok=True)
    for name, event in shapes().items():
        write(LAMBDA_DIR / name, event)


if __name__ == "__main__":
    main()
