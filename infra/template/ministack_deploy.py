#!/usr/bin/env python3
"""Deploy template.yaml to a local MiniStack and check what the stack created.

MiniStack (PyPI `ministack`) emulates CloudFormation with the SAM transform, SQS, SNS,
Lambda, IAM, ECS, CloudWatch and Secrets Manager on one local port. This script
packages the template as `sam package` would (the functions' code is a placeholder
`bootstrap`: nothing is invoked), creates stacks for a few parameter sets, and reads the
resources back through the service APIs.

Known MiniStack gaps (1.5.33): it does not implement AWS::IAM::AccessKey, so every stack
here is created with CreatePublisherUser=false; it does not report an SNS topic's
KmsMasterKeyId; the user, key, secret and topic encryption are covered by
test_template.py on the translated template only. It also returns the nested members of
a container's healthCheck and secrets in PascalCase, so those are read from the raw
response (see raw_task_definition).

Usage: ministack_deploy.py ENDPOINT_URL      (e.g. http://127.0.0.1:4599)
       ministack_deploy.py ENDPOINT_URL --sam-stack NAME BUILD_DIR
The second form checks a stack that `sam deploy` created from `sam build`'s output in
BUILD_DIR (check.sh does both): it is complete, and each function runs on arm64 with
exactly the `bootstrap` that sam build wrote.
Prints one line per check and ends with "ministack checks: N ok, M failed"; exits 1 on
any failure.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import boto3
from samtranslator.yaml_helper import yaml_parse

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
BUCKET = "walcast-artifacts"
SECRET_ARN_NAME = "walcast-db"

passed = 0
failed = 0


def check(label: str, ok: bool, detail: object = "") -> None:
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok: {label}")
    else:
        failed += 1
        print(f"  FAILED: {label} {detail}")


def clients(endpoint: str) -> dict:
    kw = dict(endpoint_url=endpoint, region_name=REGION,
              aws_access_key_id="test", aws_secret_access_key="test")
    return {name: boto3.client(name, **kw) for name in
            ("s3", "cloudformation", "sqs", "sns", "lambda", "iam", "ecs", "cloudwatch", "secretsmanager")}


def packaged_template(c: dict, code: dict[str, bytes] | None = None) -> str:
    """template.yaml with each function's CodeUri pointing at an uploaded zip.

    `code` maps a function's logical id to its `bootstrap` executable; functions not in
    it get a placeholder that fails when invoked (what the deployment checks need).
    """
    code = code or {}
    template = yaml_parse((REPO / "template.yaml").read_text())
    try:
        c["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    except c["s3"].exceptions.BucketAlreadyOwnedByYou:
        pass
    placeholder = b"#!/bin/sh\necho 'placeholder: build with sam build' >&2\nexit 1\n"
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
                info = zipfile.ZipInfo("bootstrap")
                info.external_attr = 0o755 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, code.get(logical_id, placeholder))
            key = f"{logical_id}.zip"
            c["s3"].put_object(Bucket=BUCKET, Key=key, Body=archive.getvalue())
            resource["Properties"]["CodeUri"] = f"s3://{BUCKET}/{key}"
    return json.dumps(template)


def deploy(c: dict, body: str, name: str, params: dict[str, str]) -> dict:
    cfn = c["cloudformation"]
    cfn.create_stack(
        StackName=name, TemplateBody=body,
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    )
    deadline = time.monotonic() + 180
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    check(f"{name}: stack status {stack['StackStatus']}", stack["StackStatus"] == "CREATE_COMPLETE",
          [(e["LogicalResourceId"], e.get("ResourceStatusReason"))
           for e in cfn.describe_stack_events(StackName=name)["StackEvents"] if "FAILED" in e["ResourceStatus"]])
    resources = {r["LogicalResourceId"]: r for r in cfn.describe_stack_resources(StackName=name)["StackResources"]}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return {"resources": resources, "outputs": outputs}


def physical(stack: dict, logical_id: str) -> str:
    return stack["resources"][logical_id]["PhysicalResourceId"]


def check_sqs_path(c: dict, name: str, stack: dict) -> None:
    attrs = c["sqs"].get_queue_attributes(QueueUrl=stack["outputs"]["QueueUrl"], AttributeNames=["All"])["Attributes"]
    dlq = c["sqs"].get_queue_attributes(QueueUrl=stack["outputs"]["DlqUrl"], AttributeNames=["All"])["Attributes"]
    check(f"{name}: queue is FIFO", attrs.get("FifoQueue") == "true", attrs.get("FifoQueue"))
    check(f"{name}: ContentBasedDeduplication false", attrs.get("ContentBasedDeduplication") == "false",
          attrs.get("ContentBasedDeduplication"))
    check(f"{name}: high-throughput FIFO",
          (attrs.get("DeduplicationScope"), attrs.get("FifoThroughputLimit")) == ("messageGroup", "perMessageGroupId"),
          (attrs.get("DeduplicationScope"), attrs.get("FifoThroughputLimit")))
    check(f"{name}: visibility timeout 180 s (6 x 30 s)", attrs.get("VisibilityTimeout") == "180",
          attrs.get("VisibilityTimeout"))
    redrive = json.loads(attrs.get("RedrivePolicy", "{}"))
    check(f"{name}: redrive to the DLQ after 5 receives",
          redrive.get("deadLetterTargetArn") == dlq.get("QueueArn") and int(redrive.get("maxReceiveCount", 0)) == 5,
          redrive)
    check(f"{name}: DLQ is FIFO", dlq.get("FifoQueue") == "true", dlq.get("FifoQueue"))
    check(f"{name}: SSE-SQS on", attrs.get("SqsManagedSseEnabled") == "true", attrs.get("SqsManagedSseEnabled"))

    function = stack["outputs"]["ConsumerSqsFunctionName"]
    config = c["lambda"].get_function_configuration(FunctionName=function)
    check(f"{name}: consumer-sqs is provided.al2023/arm64/bootstrap",
          (config.get("Runtime"), config.get("Architectures"), config.get("Handler"))
          == ("provided.al2023", ["arm64"], "bootstrap"),
          (config.get("Runtime"), config.get("Architectures"), config.get("Handler")))
    mappings = c["lambda"].list_event_source_mappings(FunctionName=function)["EventSourceMappings"]
    check(f"{name}: one event source mapping on the queue",
          [m["EventSourceArn"] for m in mappings] == [stack["outputs"]["QueueArn"]], mappings)
    if mappings:
        m = mappings[0]
        check(f"{name}: ReportBatchItemFailures", m.get("FunctionResponseTypes") == ["ReportBatchItemFailures"],
              m.get("FunctionResponseTypes"))
        check(f"{name}: batch size 10, maximum concurrency 5",
              (m.get("BatchSize"), m.get("ScalingConfig", {}).get("MaximumConcurrency")) == (10, 5),
              (m.get("BatchSize"), m.get("ScalingConfig")))


def check_payload_bucket(c: dict, name: str, stack: dict) -> None:
    bucket = stack["outputs"]["PayloadBucketName"]
    check(f"{name}: payload bucket exists", physical(stack, "PayloadBucket") == bucket, bucket)
    rules = c["s3"].get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    check(f"{name}: payload bucket encrypted (SSE-S3)",
          [r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] for r in rules] == ["AES256"], rules)
    block = c["s3"].get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    check(f"{name}: payload bucket blocks public access", all(block.values()) and len(block) == 4, block)
    # (MiniStack does not apply a bucket's LifecycleConfiguration from CloudFormation:
    # GetBucketLifecycleConfiguration answers NoSuchLifecycleConfiguration; the expiry
    # rule is checked on the translated template by test_template.py.)
    policy = json.loads(c["s3"].get_bucket_policy(Bucket=bucket)["Policy"])
    check(f"{name}: payload bucket is TLS-only",
          any(st.get("Effect") == "Deny" and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
              for st in policy["Statement"]), policy)


def check_sns_path(c: dict, name: str, stack: dict, filter_policy: dict) -> None:
    topic = stack["outputs"]["TopicArn"]
    attrs = c["sns"].get_topic_attributes(TopicArn=topic)["Attributes"]
    # (MiniStack does not report KmsMasterKeyId back; test_template.py checks it.)
    check(f"{name}: topic is a standard topic", attrs.get("FifoTopic", "false") == "false", attrs)
    subs = c["sns"].list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    function = stack["outputs"]["ConsumerSnsFunctionName"]
    lambda_subs = [s for s in subs if s["Protocol"] == "lambda" and s["Endpoint"].endswith(f":{function}")]
    check(f"{name}: consumer-sns subscribed to the topic", len(lambda_subs) == 1, subs)
    if lambda_subs:
        sub = c["sns"].get_subscription_attributes(SubscriptionArn=lambda_subs[0]["SubscriptionArn"])["Attributes"]
        dlq_arn = c["sqs"].get_queue_attributes(QueueUrl=stack["outputs"]["SnsSubscriptionDlqUrl"],
                                                AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        check(f"{name}: subscription redrive to its DLQ",
              json.loads(sub.get("RedrivePolicy", "{}")).get("deadLetterTargetArn") == dlq_arn, sub.get("RedrivePolicy"))
        check(f"{name}: filter policy applied", json.loads(sub.get("FilterPolicy", "null")) == filter_policy,
              sub.get("FilterPolicy"))
    invoke = c["lambda"].get_function_event_invoke_config(FunctionName=function, Qualifier="$LATEST")
    failure_arn = c["sqs"].get_queue_attributes(QueueUrl=stack["outputs"]["SnsFailureQueueUrl"],
                                                AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    check(f"{name}: on-failure destination is the failure queue",
          invoke.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination") == failure_arn, invoke)


def raw_task_definition(c: dict, task_definition: str) -> dict:
    """DescribeTaskDefinition's JSON as sent, not as botocore parses it.

    MiniStack 1.5.33 keeps the nested members of `healthCheck` and `secrets` in
    CloudFormation's PascalCase (`Command`, `ValueFrom`); botocore drops members it does
    not know, so the parsed response would show them empty.
    """
    ecs = c["ecs"]
    body = json.dumps({"taskDefinition": task_definition}).encode()
    request = urllib.request.Request(
        ecs.meta.endpoint_url + "/", data=body, method="POST",
        headers={"Content-Type": "application/x-amz-json-1.1",
                 "X-Amz-Target": "AmazonEC2ContainerServiceV20141113.DescribeTaskDefinition",
                 "Authorization": f"AWS4-HMAC-SHA256 Credential=test/20240101/{REGION}/ecs/aws4_request, "
                                  "SignedHeaders=host, Signature=0"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["taskDefinition"]


def lower_keys(value: dict) -> dict:
    """The first letter of each key lowercased (PascalCase and camelCase compare equal)."""
    return {k[:1].lower() + k[1:]: v for k, v in value.items()}


def check_streamer(c: dict, name: str, stack: dict, secret_arn: str) -> None:
    role = physical(stack, "StreamerTaskRole")
    doc = c["iam"].get_role_policy(RoleName=role, PolicyName="walcast-publisher")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    actions = sorted(a for s in doc["Statement"] for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
    check(f"{name}: task role has exactly the six publish actions and s3:PutObject",
          actions == sorted(["sqs:SendMessage", "sqs:SendMessageBatch", "sqs:GetQueueAttributes",
                             "sns:Publish", "sns:PublishBatch", "sns:GetTopicAttributes", "s3:PutObject"]),
          actions)
    resources = sorted(str(s["Resource"]) for s in doc["Statement"])
    bucket_objects = f"arn:aws:s3:::{stack['outputs']['PayloadBucketName']}/*"
    check(f"{name}: ... on exactly the queue, the topic and the payload bucket's objects",
          resources == sorted([stack["outputs"]["QueueArn"], stack["outputs"]["TopicArn"], bucket_objects]),
          resources)
    cluster = stack["outputs"]["StreamerClusterName"]
    services = c["ecs"].describe_services(cluster=cluster, services=[stack["outputs"]["StreamerServiceName"]])["services"]
    check(f"{name}: one ECS service", len(services) == 1, services)
    if services:
        svc = services[0]
        dc = svc.get("deploymentConfiguration", {})
        check(f"{name}: desired 1, max 100 %, min healthy 0 %",
              (svc.get("desiredCount"), dc.get("maximumPercent"), dc.get("minimumHealthyPercent")) == (1, 100, 0),
              (svc.get("desiredCount"), dc))
        td = raw_task_definition(c, svc["taskDefinition"])
        (container,) = td["containerDefinitions"]
        check(f"{name}: Fargate 256/512", (td.get("cpu"), td.get("memory"), td.get("requiresCompatibilities"))
              == ("256", "512", ["FARGATE"]), (td.get("cpu"), td.get("memory")))
        health = lower_keys(container.get("healthCheck", {}))
        check(f"{name}: health check is `streamer healthz`",
              health.get("command") == ["CMD", "/usr/local/bin/streamer", "healthz"], health)
        check(f"{name}: stop timeout 120 s", container.get("stopTimeout") == 120, container.get("stopTimeout"))
        secrets = [lower_keys(x) for x in container.get("secrets", [])]
        check(f"{name}: database URL from the secret",
              secrets == [{"name": "WALCAST_SOURCE_URL", "valueFrom": secret_arn}], secrets)
        env = {e["name"]: e["value"] for e in container.get("environment", [])}
        if "TopicArn" in stack["outputs"] and "QueueUrl" in stack["outputs"]:
            # DeliveryPath=Both: one streamer, two sinks (the `sinks:` list as JSON).
            try:
                sinks = json.loads(env.get("WALCAST_SINKS", ""))
            except ValueError:
                sinks = None
            check(f"{name}: one streamer publishes to the queue and the topic",
                  isinstance(sinks, list) and [(s.get("type"), s.get("queue_url") or s.get("topic_arn")) for s in sinks]
                  == [("sqs", stack["outputs"]["QueueUrl"]), ("sns", stack["outputs"]["TopicArn"])]
                  and not any(k.startswith("WALCAST_SINK_") for k in env),
                  env)
        else:
            check(f"{name}: streamer publishes to the queue",
                  env.get("WALCAST_SINK_TYPE") == "sqs" and env.get("WALCAST_SINK_QUEUE_URL") == stack["outputs"]["QueueUrl"],
                  env)


def check_dashboard(c: dict, name: str, stack: dict) -> None:
    """The dashboard exists, its body is JSON, and it names this stack's queue and functions."""
    dashboard = physical(stack, "Dashboard")
    body = json.loads(c["cloudwatch"].get_dashboard(DashboardName=dashboard)["DashboardBody"])
    dimensions = {d for w in body["widgets"] for m in w["properties"]["metrics"] for d in m
                  if isinstance(d, str)}
    queue = stack["outputs"].get("QueueUrl", "").rsplit("/", 1)[-1]
    wanted = {queue, stack["outputs"].get("ConsumerSqsFunctionName"), stack["outputs"].get("ConsumerSnsFunctionName")}
    wanted.discard("")
    wanted.discard(None)
    check(f"{name}: dashboard {dashboard} plots the queue and the functions", wanted <= dimensions,
          wanted - dimensions)
    check(f"{name}: DashboardUrl output names it", stack["outputs"].get("DashboardUrl", "").endswith(f"name={dashboard}"),
          stack["outputs"].get("DashboardUrl"))


def check_sam_stack(c: dict, name: str, build_dir: Path) -> None:
    """A stack `sam deploy` made from `sam build`'s output: complete, and each function's
    deployed code is the bootstrap sam build wrote for it (arm64, as the template says)."""
    cfn = c["cloudformation"]
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    check(f"{name}: stack status {stack['StackStatus']}", stack["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"))
    resources = {r["LogicalResourceId"]: r for r in cfn.describe_stack_resources(StackName=name)["StackResources"]}
    functions = sorted(lid for lid, r in resources.items() if r["ResourceType"] == "AWS::Lambda::Function")
    check(f"{name}: both functions deployed", functions == ["ConsumerSnsFunction", "ConsumerSqsFunction"], functions)
    for logical_id in functions:
        built = (build_dir / logical_id / "bootstrap").read_bytes()
        function = c["lambda"].get_function(FunctionName=resources[logical_id]["PhysicalResourceId"])
        config = function["Configuration"]
        check(f"{name}: {logical_id} is provided.al2023 on arm64",
              (config.get("Runtime"), config.get("Architectures")) == ("provided.al2023", ["arm64"]),
              (config.get("Runtime"), config.get("Architectures")))
        with urllib.request.urlopen(function["Code"]["Location"], timeout=30) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
        deployed = archive.read("bootstrap") if "bootstrap" in archive.namelist() else b""
        check(f"{name}: {logical_id} runs the bootstrap sam build wrote ({len(built)} bytes, aarch64 ELF)",
              deployed == built and built[:4] == b"\x7fELF" and int.from_bytes(built[18:20], "little") == 183,
              (len(deployed), archive.namelist()))


def guarded(label: str, fn, *args) -> None:
    """Runs a group of checks; an API error (e.g. an operation MiniStack lacks) fails it."""
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001 - report and continue with the next group
        check(f"{label} ({type(error).__name__})", False, error)


def main(endpoint: str) -> int:
    c = clients(endpoint)
    body = packaged_template(c)

    print("== stack walcast-defaults (DeliveryPath=SQS, FIFO, no streamer)")
    stack = deploy(c, body, "walcast-defaults", {"CreatePublisherUser": "false"})
    check("walcast-defaults: no SNS or ECS resources",
          not any(r["ResourceType"].startswith(("AWS::SNS::", "AWS::ECS::")) for r in stack["resources"].values()),
          sorted(stack["resources"]))
    check("walcast-defaults: DLQ and Errors alarms", {"DeadLetterQueueAlarm", "ConsumerSqsErrorsAlarm"}
          <= set(stack["resources"]), sorted(stack["resources"]))
    guarded("walcast-defaults: SQS path", check_sqs_path, c, "walcast-defaults", stack)
    guarded("walcast-defaults: payload bucket", check_payload_bucket, c, "walcast-defaults", stack)
    guarded("walcast-defaults: dashboard", check_dashboard, c, "walcast-defaults", stack)

    print("== stack walcast-all (DeliveryPath=Both, filter policy, lag alarm, ECS streamer)")
    secret_arn = c["secretsmanager"].create_secret(
        Name=f"{SECRET_ARN_NAME}-{int(time.time())}",
        SecretString="postgres://walcast:secret@db.example.invalid:5432/app?sslmode=require")["ARN"]
    filter_policy = {"table_name": ["users"], "action": ["insert", "update"]}
    stack = deploy(c, body, "walcast-all", {
        "CreatePublisherUser": "false",
        "DeliveryPath": "Both",
        "SnsFilterPolicy": json.dumps(filter_policy),
        "ReplicationLagDbInstanceId": "app-db",
        "StreamerImageUri": "000000000000.dkr.ecr.eu-west-1.amazonaws.com/walcast-streamer:1",
        "StreamerSubnetIds": "subnet-0123456789abcdef0",
        "StreamerSecurityGroupIds": "sg-0123456789abcdef0",
        "StreamerDatabaseUrlSecretArn": secret_arn,
    })
    guarded("walcast-all: SQS path", check_sqs_path, c, "walcast-all", stack)
    guarded("walcast-all: SNS path", check_sns_path, c, "walcast-all", stack, filter_policy)
    guarded("walcast-all: streamer", check_streamer, c, "walcast-all", stack, secret_arn)
    guarded("walcast-all: dashboard", check_dashboard, c, "walcast-all", stack)
    alarms = [a["AlarmName"] for a in c["cloudwatch"].describe_alarms()["MetricAlarms"]]
    for logical_id in ("DeadLetterQueueAlarm", "SnsSubscriptionDeadLetterQueueAlarm", "SnsFailureQueueAlarm",
                       "ConsumerSqsErrorsAlarm", "ConsumerSnsErrorsAlarm", "ReplicationLagAlarm"):
        name = stack["resources"].get(logical_id, {}).get("PhysicalResourceId")
        check(f"walcast-all: alarm {logical_id} exists", name in alarms, name)

    print(f"\nministack checks: {passed} ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[2] == "--sam-stack":
        guarded(f"{sys.argv[3]}: sam deploy", check_sam_stack, clients(sys.argv[1]), sys.argv[3], Path(sys.argv[4]))
        print(f"\nministack checks: {passed} ok, {failed} failed")
        sys.exit(1 if failed else 0)
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
