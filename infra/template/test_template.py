"""Tests of template.yaml, on the CloudFormation that the SAM transform produces.

Run from the repository root (infra/template/check.sh does):

    python -m unittest discover -s infra/template -p 'test_*.py' -v

The template is translated offline (translate.py, aws-sam-translator) and then, for a
given set of parameter values, reduced to the resources CloudFormation would create:
Conditions evaluated, Fn::If resolved, AWS::NoValue removed, parameter Refs and
Fn::FindInMap replaced by values (see `Effective`). The tests assert on that.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import unittest
from functools import lru_cache
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import translate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
INFRA = REPO / "infra"

PATHS = ("SQS", "SNS", "Both")
SQS_PUBLISH = {"sqs:SendMessage", "sqs:SendMessageBatch", "sqs:GetQueueAttributes"}
SNS_PUBLISH = {"sns:Publish", "sns:PublishBatch", "sns:GetTopicAttributes"}
STREAMER = {
    "StreamerImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/walcast-streamer:1",
    "StreamerSubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "StreamerSecurityGroupIds": "sg-0123456789abcdef0",
    "StreamerDatabaseUrlSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:walcast-db-AbCdEf",
}
# The streamer's configuration keys and their variables (streamer config contract).
CONFIG_KEYS = {
    "source": {"url", "slot", "publication", "tables", "name", "auth"},
    "sink": {
        "type", "name", "queue_url", "topic_arn", "region", "endpoint_url",
        "access_key_id", "secret_access_key", "dead_letter_queue_url",
    },
    "http": {"listen"},
    "log": {"format"},
}
CONFIG_ENV = {
    f"WALCAST_{section.upper()}_{key.upper()}" for section, keys in CONFIG_KEYS.items() for key in keys
} | {"WALCAST_SINK_S3_BUCKET",  # sink.s3.bucket: a key of a mapping inside sink
     "WALCAST_SINKS"}  # the whole `sinks:` list as JSON (DeliveryPath=Both)
# The payload bucket's objects: what the publisher may put and the functions may get.
PAYLOAD_OBJECTS = json.dumps({"Fn::Sub": "${PayloadBucket.Arn}/*"}, sort_keys=True)
STREAMER_CONFIG_RS = REPO / "streamer" / "src" / "config.rs"
STREAMER_OPS_RS = REPO / "streamer" / "src" / "ops.rs"
GRAFANA_DASHBOARD = INFRA / "grafana" / "walcast.json"
# The streamer's CloudWatch (EMF) metrics: namespace, names, dimension sets.
EMF_METRICS = INFRA / "metrics-emf.txt"
# AWS metrics the dashboard may plot, as AWS documents them: names and dimensions.
AWS_METRICS = {
    # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-available-cloudwatch-metrics.html
    "AWS/SQS": ({"ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesDelayed",
                 "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesVisible",
                 "NumberOfDeduplicatedSentMessages", "NumberOfEmptyReceives", "NumberOfMessagesDeleted",
                 "NumberOfMessagesReceived", "NumberOfMessagesSent", "SentMessageSize"},
                {"QueueName"}),
    # https://docs.aws.amazon.com/lambda/latest/dg/monitoring-metrics-types.html
    "AWS/Lambda": ({"Invocations", "Errors", "DeadLetterErrors", "DestinationDeliveryFailures", "Throttles",
                    "OversizedRecordCount", "ProvisionedConcurrencyInvocations",
                    "ProvisionedConcurrencySpilloverInvocations", "RecursiveInvocationsDropped", "Duration",
                    "PostRuntimeExtensionsDuration", "IteratorAge", "OffsetLag", "ConcurrentExecutions",
                    "ProvisionedConcurrentExecutions", "ProvisionedConcurrencyUtilization",
                    "UnreservedConcurrentExecutions", "ClaimedAccountConcurrency", "AsyncEventsReceived",
                    "AsyncEventAge", "AsyncEventsDropped"},
                   {"FunctionName", "Resource", "ExecutedVersion"}),
    # https://docs.aws.amazon.com/sns/latest/dg/sns-monitoring-using-cloudwatch.html
    "AWS/SNS": ({"NumberOfMessagesPublished", "NumberOfNotificationsDelivered", "NumberOfNotificationsFailed",
                 "NumberOfNotificationsFilteredOut", "NumberOfNotificationsFilteredOut-NoMessageAttributes",
                 "NumberOfNotificationsFilteredOut-InvalidAttributes", "NumberOfNotificationsFilteredOut-MessageBody",
                 "NumberOfNotificationsFilteredOut-InvalidMessageBody", "NumberOfNotificationsRedrivenToDlq",
                 "NumberOfNotificationsFailedToRedriveToDlq", "PublishSize"},
                {"TopicName"}),
}
# What each AWS dimension must name in this template: (resource type, attribute; None = Ref).
DIMENSION_TARGETS = {
    "QueueName": ("AWS::SQS::Queue", "QueueName"),
    "FunctionName": ("AWS::Lambda::Function", None),
    "TopicName": ("AWS::SNS::Topic", "TopicName"),
}
PSEUDO = {"AWS::AccountId", "AWS::Region", "AWS::Partition", "AWS::StackName", "AWS::StackId",
          "AWS::URLSuffix", "AWS::NoValue", "AWS::NotificationARNs"}


@lru_cache(maxsize=None)
def source_template() -> dict:
    return translate.yaml_parse(TEMPLATE.read_text())


@lru_cache(maxsize=None)
def translated(params: tuple) -> dict:
    return translate.translate(TEMPLATE, dict(params))


_NOVALUE = object()


class Effective:
    """The translated template as CloudFormation would instantiate it for `params`."""

    def __init__(self, **params: str):
        self.params = params
        self.template = translated(tuple(sorted(params.items())))
        declared = self.template["Parameters"]
        self.values: dict[str, object] = {}
        for name, spec in declared.items():
            raw = str(params.get(name, spec.get("Default", "")))
            if spec["Type"] == "CommaDelimitedList" or spec["Type"].startswith("List<"):
                self.values[name] = raw.split(",")
            else:
                self.values[name] = raw
        unknown = set(params) - set(declared)
        assert not unknown, f"unknown parameters {unknown}"
        self.values.update({"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012",
                            "AWS::Partition": "aws", "AWS::StackName": "walcast"})
        self._conditions: dict[str, bool] = {}
        self.resources = {
            lid: self.resolve(res)
            for lid, res in self.template["Resources"].items()
            if "Condition" not in res or self.condition(res["Condition"])
        }
        self.outputs = {
            name: self.resolve(out)
            for name, out in self.template.get("Outputs", {}).items()
            if "Condition" not in out or self.condition(out["Condition"])
        }

    # -- intrinsic functions -------------------------------------------------
    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = self.evaluate(self.template["Conditions"][name])
        return self._conditions[name]

    def evaluate(self, expr) -> bool:
        if isinstance(expr, dict) and len(expr) == 1:
            (fn, args), = expr.items()
            if fn == "Condition":
                return self.condition(args)
            if fn == "Fn::Equals":
                a, b = (self.scalar(x) for x in args)
                return a == b
            if fn == "Fn::Not":
                return not self.evaluate(args[0])
            if fn == "Fn::And":
                return all(self.evaluate(x) for x in args)
            if fn == "Fn::Or":
                return any(self.evaluate(x) for x in args)
        raise AssertionError(f"unsupported condition {expr!r}")

    def scalar(self, expr) -> str:
        if isinstance(expr, dict) and set(expr) == {"Ref"}:
            value = self.values[expr["Ref"]]
            return ",".join(value) if isinstance(value, list) else value
        return str(expr)

    def resolve(self, node):
        if isinstance(node, dict):
            if len(node) == 1:
                (fn, args), = node.items()
                if fn == "Fn::If":
                    return self.resolve(args[1] if self.condition(args[0]) else args[2])
                if fn == "Ref" and args == "AWS::NoValue":
                    return _NOVALUE
                if fn == "Ref" and args in self.values:
                    return self.values[args]
                if fn == "Fn::FindInMap":
                    name, top, second = (self.resolve(a) for a in args)
                    return self.template["Mappings"][name][str(top)][second]
            out = {}
            for key, value in node.items():
                value = self.resolve(value)
                if value is not _NOVALUE:
                    out[key] = value
            return out
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not _NOVALUE]
        return node

    # -- helpers ---------------------------------------------------------------
    def of_type(self, type_: str) -> dict:
        return {lid: r for lid, r in self.resources.items() if r["Type"] == type_}

    def props(self, logical_id: str) -> dict:
        return self.resources[logical_id].get("Properties", {})


def refs(node) -> set[str]:
    """Logical ids and parameters that `node` references (Ref, GetAtt, Sub, DependsOn)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                local = set(value[1]) if isinstance(value, list) else set()
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)} - local
                if isinstance(value, list):
                    found |= refs(value[1])
            elif key == "DependsOn":
                found |= set([value] if isinstance(value, str) else value)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def streamer_config_keys() -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """The configuration the streamer reads, from its source (streamer/src/config.rs): the
    keys of each section (the fields of `Config` and of each `<Section>Config` struct, with
    serde renames), and the variable of each (section, key) from its WALCAST_* table."""
    src = STREAMER_CONFIG_RS.read_text()
    structs = {m.group(1): m.group(2) for m in re.finditer(r"pub struct (\w*)Config \{(.*?)\n\}", src, re.S)}

    def fields(body: str) -> set[str]:
        keys = set()
        for f in re.finditer(r"((?:\s*#\[[^\n]*\]|\s*///[^\n]*)*)\s*pub (\w+):", body):
            if "serde(skip)" in f.group(1):
                continue
            renamed = re.search(r'rename\s*=\s*"(\w+)"', f.group(1))
            keys.add(renamed.group(1) if renamed else f.group(2))
        return keys

    # `sinks:` is a list of `sink:` sections (SinkConfig): its keys are listed as `sink`'s.
    sections = {("sink" if name == "sinks" else name): fields(structs["Sink" if name == "sinks" else name.capitalize()])
                for name in fields(structs[""])}
    env = {(section, key): var for var, section, key in
           re.findall(r'\(\s*"(WALCAST_\w+)",\s*"(\w+)",\s*"(\w+)"', src)}
    return sections, env


def emf_metrics() -> tuple[str, dict[str, set[frozenset[str]]]]:
    """infra/metrics-emf.txt: the namespace, and each metric's dimension sets."""
    namespace, metrics = "", {}
    for line in EMF_METRICS.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "namespace":
            namespace = words[1]
            continue
        name, _unit, *dimension_sets = words
        metrics[name] = {frozenset(d.split(",")) for d in dimension_sets}
    return namespace, metrics


def substitute(eff: Effective, node) -> str:
    """A string built with Fn::Join and Fn::Sub, as CloudFormation would build it for
    `eff`: parameters and pseudo parameters by value, `${!x}` as `${x}`, and a resource
    (`${Queue.QueueName}`, `${ConsumerSqsFunction}`) as `<Queue.QueueName>` after checking
    that it exists in this scenario."""
    if isinstance(node, str):
        return node
    (fn, args), = node.items()
    if fn == "Fn::Join":
        return args[0].join(substitute(eff, part) for part in args[1])
    if fn == "Fn::Sub":
        assert isinstance(args, str), "Fn::Sub with a variable map is not handled here"

        def one(match: re.Match) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in eff.values:
                value = eff.values[name]
                return ",".join(value) if isinstance(value, list) else str(value)
            assert name.split(".")[0] in eff.resources, f"${{{name}}}: no such resource in this scenario"
            return f"<{name}>"

        return re.sub(r"\$\{([^}]*)\}", one, args)
    raise AssertionError(f"unsupported function {fn} in a string")


def dashboard(eff: Effective) -> dict:
    return json.loads(substitute(eff, eff.props("Dashboard")["DashboardBody"]))


SEARCH = re.compile(r"""^SEARCH\('\{([^}]*)\}\s+MetricName="([^"]+)"\s*',\s*'(\w+)',\s*(\d+)\)$""")


def plotted(body: dict) -> list[dict]:
    """Every metric the dashboard's widgets plot: namespace, name, dimensions (name → value,
    or None for a SEARCH over every value), and the widget's title."""
    out = []
    for widget in body["widgets"]:
        props = widget["properties"]
        for entry in props["metrics"]:
            if isinstance(entry[0], dict) and "expression" in entry[0]:
                found = SEARCH.match(entry[0]["expression"])
                assert found, f"{props['title']}: not a SEARCH this test reads: {entry[0]['expression']}"
                namespace, *dimensions = found.group(1).split(",")
                out.append({"namespace": namespace, "name": found.group(2), "title": props["title"],
                            "dimensions": dict.fromkeys(dimensions)})
            else:
                fields = [x for x in entry if not isinstance(x, dict)]
                assert "." not in fields, f"{props['title']}: spell out every metric (no '.')"
                namespace, name, *pairs = fields
                assert len(pairs) % 2 == 0, entry
                out.append({"namespace": namespace, "name": name, "title": props["title"],
                            "dimensions": dict(zip(pairs[::2], pairs[1::2]))})
    return out


def prometheus_metrics() -> tuple[set[str], set[str]]:
    """The series names and the label names the streamer's /metrics writes, from its source
    (streamer/src/ops.rs): every string literal that starts with `walcast_`, and every
    label in the exposition format strings (`{{table=\"{t}\",…}}`, `"sink=\"{n}\","`,
    `{{{l}le=\"{b}\"}}`)."""
    src = STREAMER_OPS_RS.read_text()
    names = set(re.findall(r'"(walcast_[a-z0-9_]+)', src))
    labels = set(re.findall(r'[{,"}]([a-z_]+)=\\"', src))
    return names, labels


def statements(policy_document: dict) -> list[dict]:
    stmts = policy_document["Statement"]
    return stmts if isinstance(stmts, list) else [stmts]


def grants(policy_document: dict) -> set[tuple[str, str]]:
    """(action, resource) pairs an Allow policy grants, resources as canonical JSON."""
    pairs = set()
    for stmt in statements(policy_document):
        assert stmt["Effect"] == "Allow", stmt
        assert "NotAction" not in stmt and "NotResource" not in stmt, stmt
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        resources = stmt["Resource"] if isinstance(stmt["Resource"], list) else [stmt["Resource"]]
        for action in actions:
            for resource in resources:
                pairs.add((action, json.dumps(resource, sort_keys=True)))
    return pairs


def expected_publisher_grants(path: str) -> set[tuple[str, str]]:
    queue = json.dumps({"Fn::GetAtt": ["Queue", "Arn"]}, sort_keys=True)
    topic = json.dumps({"Ref": "Topic"}, sort_keys=True)
    want = set()
    if path in ("SQS", "Both"):
        want |= {(a, queue) for a in SQS_PUBLISH}
    if path in ("SNS", "Both"):
        want |= {(a, topic) for a in SNS_PUBLISH}
    return want | {("s3:PutObject", PAYLOAD_OBJECTS)}


def all_scenarios():
    for path, queue_type, streamer, user in itertools.product(
        PATHS, ("fifo", "standard"), (False, True), ("true", "false")
    ):
        params = {"DeliveryPath": path, "QueueType": queue_type, "CreatePublisherUser": user}
        if streamer:
            params.update(STREAMER)
        yield params


class TranslationTest(unittest.TestCase):
    def test_every_scenario_is_self_consistent(self):
        """No resource or output of a scenario references one its conditions removed."""
        for params in all_scenarios():
            with self.subTest(**{k: v for k, v in params.items() if not k.startswith("Streamer")},
                              streamer="StreamerImageUri" in params):
                eff = Effective(**params)
                known = set(eff.resources) | set(eff.values) | PSEUDO
                for name, node in {**eff.resources, **eff.outputs}.items():
                    missing = refs(node) - known
                    self.assertFalse(missing, f"{name} references {missing}, absent in this scenario")

    def test_translation_generates_the_expected_sam_resources(self):
        eff = Effective(DeliveryPath="Both")
        self.assertIn("ConsumerSqsFunctionQueue", eff.of_type("AWS::Lambda::EventSourceMapping"))
        self.assertIn("ConsumerSnsFunctionTopic", eff.of_type("AWS::SNS::Subscription"))
        self.assertIn("ConsumerSnsFunctionEventInvokeConfig", eff.of_type("AWS::Lambda::EventInvokeConfig"))
        self.assertEqual(set(eff.of_type("AWS::Lambda::Function")), {"ConsumerSqsFunction", "ConsumerSnsFunction"})


class SqsPathTest(unittest.TestCase):
    def test_event_source_mapping_reports_batch_item_failures(self):
        for path in ("SQS", "Both"):
            eff = Effective(DeliveryPath=path, SqsBatchSize="7", SqsMaximumConcurrency="12")
            (esm,) = eff.of_type("AWS::Lambda::EventSourceMapping").values()
            props = esm["Properties"]
            self.assertEqual(props["FunctionResponseTypes"], ["ReportBatchItemFailures"])
            self.assertEqual(props["EventSourceArn"], {"Fn::GetAtt": ["Queue", "Arn"]})
            self.assertEqual(props["FunctionName"], {"Ref": "ConsumerSqsFunction"})
            self.assertEqual(props["BatchSize"], "7")
            self.assertEqual(props["ScalingConfig"], {"MaximumConcurrency": "12"})

    def test_batch_parameters_stay_within_aws_limits(self):
        params = source_template()["Parameters"]
        self.assertEqual(params["SqsBatchSize"]["MinValue"], 1)
        self.assertLessEqual(params["SqsBatchSize"]["MaxValue"], 10, "FIFO event sources take at most 10")
        self.assertGreaterEqual(params["SqsMaximumConcurrency"]["MinValue"], 2)
        self.assertLessEqual(params["SqsMaximumConcurrency"]["MaxValue"], 1000)
        self.assertEqual(params["DeliveryPath"]["Default"], "SQS")
        self.assertEqual(params["QueueType"]["Default"], "fifo")
        self.assertEqual(params["MaxReceiveCount"]["Default"], 5)

    def test_fifo_queue_is_fifo_with_high_throughput_and_explicit_deduplication(self):
        eff = Effective(QueueType="fifo")
        queue = eff.props("Queue")
        self.assertIs(queue["FifoQueue"], True)
        self.assertIs(queue["ContentBasedDeduplication"], False)
        self.assertEqual(queue["DeduplicationScope"], "messageGroup")
        self.assertEqual(queue["FifoThroughputLimit"], "perMessageGroupId")
        self.assertIs(eff.props("DeadLetterQueue")["FifoQueue"], True, "a FIFO queue needs a FIFO DLQ")

    def test_standard_queue_has_no_fifo_attributes(self):
        eff = Effective(QueueType="standard")
        for lid in ("Queue", "DeadLetterQueue"):
            props = eff.props(lid)
            for key in ("FifoQueue", "ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit"):
                self.assertNotIn(key, props, f"{lid}.{key}")

    def test_redrive_policy_points_at_the_dead_letter_queue(self):
        for queue_type in ("fifo", "standard"):
            eff = Effective(QueueType=queue_type, MaxReceiveCount="7")
            redrive = eff.props("Queue")["RedrivePolicy"]
            self.assertEqual(redrive["deadLetterTargetArn"], {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]})
            self.assertEqual(redrive["maxReceiveCount"], "7")
            self.assertEqual(eff.props("DeadLetterQueue")["MessageRetentionPeriod"], 1209600)

    def test_visibility_timeout_is_at_least_six_times_the_function_timeout(self):
        allowed = source_template()["Parameters"]["ConsumerTimeout"]["AllowedValues"]
        for timeout in allowed:
            eff = Effective(ConsumerTimeout=str(timeout))
            function_timeout = int(eff.props("ConsumerSqsFunction")["Timeout"])
            visibility = int(eff.props("Queue")["VisibilityTimeout"])
            self.assertEqual(function_timeout, int(timeout))
            self.assertGreaterEqual(visibility, 6 * function_timeout, f"timeout {timeout}")
            self.assertLessEqual(visibility, 43200, "SQS maximum visibility timeout")

    def test_consumer_sqs_function(self):
        eff = Effective()
        props = eff.props("ConsumerSqsFunction")
        self.assertEqual(props["Runtime"], "provided.al2023")
        self.assertEqual(props["Architectures"], ["arm64"])
        self.assertEqual(props["Handler"], "bootstrap")
        self.assertEqual(props["LoggingConfig"]["LogGroup"], {"Ref": "ConsumerSqsLogGroup"})
        role = eff.props("ConsumerSqsFunctionRole")
        self.assertTrue(any("AWSLambdaSQSQueueExecutionRole" in json.dumps(arn) for arn in role["ManagedPolicyArns"]))


class SnsPathTest(unittest.TestCase):
    def test_topic_is_standard_because_lambda_cannot_subscribe_to_fifo(self):
        for path in ("SNS", "Both"):
            topic = Effective(DeliveryPath=path).props("Topic")
            self.assertNotIn("FifoTopic", topic)
            self.assertEqual(topic["KmsMasterKeyId"], "alias/aws/sns")

    def test_subscription_has_a_dead_letter_queue_sns_may_write_to(self):
        eff = Effective(DeliveryPath="SNS")
        sub = eff.props("ConsumerSnsFunctionTopic")
        self.assertEqual(sub["Protocol"], "lambda")
        self.assertEqual(sub["TopicArn"], {"Ref": "Topic"})
        self.assertEqual(sub["RedrivePolicy"]["deadLetterTargetArn"],
                         {"Fn::GetAtt": ["SnsSubscriptionDeadLetterQueue", "Arn"]})
        policy = eff.props("SnsSubscriptionDeadLetterQueuePolicy")
        self.assertEqual(policy["Queues"], [{"Ref": "SnsSubscriptionDeadLetterQueue"}])
        (stmt,) = statements(policy["PolicyDocument"])
        self.assertEqual(stmt["Principal"], {"Service": "sns.amazonaws.com"})
        self.assertEqual(stmt["Action"], "sqs:SendMessage")
        self.assertEqual(stmt["Condition"], {"ArnEquals": {"aws:SourceArn": {"Ref": "Topic"}}})

    def test_filter_policy_is_optional(self):
        self.assertNotIn("FilterPolicy", Effective(DeliveryPath="SNS").props("ConsumerSnsFunctionTopic"))
        policy = '{"table_name":["users"],"action":["insert","update"]}'
        sub = Effective(DeliveryPath="SNS", SnsFilterPolicy=policy).props("ConsumerSnsFunctionTopic")
        self.assertEqual(json.loads(sub["FilterPolicy"]), json.loads(policy))

    def test_failed_invocations_go_to_the_on_failure_queue(self):
        eff = Effective(DeliveryPath="SNS")
        config = eff.props("ConsumerSnsFunctionEventInvokeConfig")
        self.assertEqual(config["FunctionName"], {"Ref": "ConsumerSnsFunction"})
        self.assertEqual(config["DestinationConfig"]["OnFailure"]["Destination"],
                         {"Fn::GetAtt": ["SnsFailureQueue", "Arn"]})
        role_policies = eff.props("ConsumerSnsFunctionRole")["Policies"]
        pairs = set().union(*(grants(p["PolicyDocument"]) for p in role_policies))
        self.assertIn(("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["SnsFailureQueue", "Arn"]})), pairs)

    def test_consumer_sns_function(self):
        props = Effective(DeliveryPath="SNS").props("ConsumerSnsFunction")
        self.assertEqual(props["Runtime"], "provided.al2023")
        self.assertEqual(props["Architectures"], ["arm64"])
        self.assertEqual(props["Handler"], "bootstrap")


class SamSourceTest(unittest.TestCase):
    """Properties `sam build` reads from the SAM source, which the transform drops."""

    def test_functions_build_with_cargo_lambda_from_their_crates(self):
        resources = source_template()["Resources"]
        for lid, crate in (("ConsumerSqsFunction", "consumer-sqs"), ("ConsumerSnsFunction", "consumer-sns")):
            res = resources[lid]
            self.assertEqual(res["Type"], "AWS::Serverless::Function")
            self.assertEqual(res["Properties"]["CodeUri"], f"{crate}/")
            self.assertEqual(res["Metadata"]["BuildMethod"], "rust-cargolambda")
            self.assertEqual(res["Metadata"]["BuildProperties"]["Binary"], crate)
            cargo = REPO / crate / "Cargo.toml"
            if cargo.exists():  # the crate is built in parallel with this template
                self.assertRegex(cargo.read_text(), rf'(?m)^name\s*=\s*"{re.escape(crate)}"')

    def test_every_checkov_skip_is_justified(self):
        for lid, res in source_template()["Resources"].items():
            for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
                self.assertRegex(skip["id"], r"^CKV2?_AWS_\d+$", lid)
                self.assertGreater(len(skip.get("comment", "")), 40, f"{lid} {skip['id']} needs a reason")


class PayloadBucketTest(unittest.TestCase):
    """The bucket large events go through (sink.s3.bucket; docs/change-event.md)."""

    def test_bucket_is_encrypted_private_expiring_and_tls_only(self):
        for path in PATHS:
            eff = Effective(DeliveryPath=path)
            bucket = eff.props("PayloadBucket")
            (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            self.assertIn(rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"], ("AES256", "aws:kms"))
            block = bucket["PublicAccessBlockConfiguration"]
            for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
                self.assertIs(block[flag], True, flag)
            (expiry,) = [r for r in bucket["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r]
            self.assertEqual(expiry["Status"], "Enabled")
            # Longer than any queue keeps a pointer (the DLQs: 14 days).
            self.assertGreaterEqual(int(expiry["ExpirationInDays"]), 15)
            policy = eff.props("PayloadBucketPolicy")
            self.assertEqual(policy["Bucket"], {"Ref": "PayloadBucket"})
            (deny,) = statements(policy["PolicyDocument"])
            self.assertEqual(deny["Effect"], "Deny")
            self.assertEqual(deny["Condition"], {"Bool": {"aws:SecureTransport": "false"}})
            self.assertEqual(deny["Action"], "s3:*")
            self.assertEqual(len(deny["Resource"]), 2, "the bucket and its objects")
            self.assertEqual(eff.outputs["PayloadBucketName"]["Value"], {"Ref": "PayloadBucket"})

    def test_functions_may_only_get_objects_of_the_bucket(self):
        eff = Effective(DeliveryPath="Both")
        for role in ("ConsumerSqsFunctionRole", "ConsumerSnsFunctionRole"):
            pairs = set().union(*(grants(p["PolicyDocument"]) for p in eff.props(role)["Policies"]))
            s3 = {(a, r) for a, r in pairs if a.startswith("s3:")}
            self.assertEqual(s3, {("s3:GetObject", PAYLOAD_OBJECTS)}, role)

    def test_the_ecs_streamer_is_told_the_bucket(self):
        eff = Effective(DeliveryPath="SQS", **STREAMER)
        (container,) = eff.props("StreamerTaskDefinition")["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        self.assertEqual(env["WALCAST_SINK_S3_BUCKET"], {"Ref": "PayloadBucket"})


class PublisherIdentityTest(unittest.TestCase):
    def test_user_policy_has_exactly_the_publish_actions_on_exactly_the_resources(self):
        for path in PATHS:
            eff = Effective(DeliveryPath=path)
            (policy,) = eff.props("PublisherUser")["Policies"]
            self.assertEqual(grants(policy["PolicyDocument"]), expected_publisher_grants(path), path)

    def test_user_is_the_only_principal_of_its_policy(self):
        eff = Effective()
        self.assertNotIn("ManagedPolicyArns", eff.props("PublisherUser"))
        self.assertNotIn("Groups", eff.props("PublisherUser"))
        self.assertFalse(eff.of_type("AWS::IAM::Policy"))
        self.assertFalse(eff.of_type("AWS::IAM::ManagedPolicy"))

    def test_task_role_has_the_same_policy(self):
        for path in PATHS:
            eff = Effective(DeliveryPath=path, **STREAMER)
            (policy,) = eff.props("StreamerTaskRole")["Policies"]
            self.assertEqual(grants(policy["PolicyDocument"]), expected_publisher_grants(path), path)
            self.assertNotIn("ManagedPolicyArns", eff.props("StreamerTaskRole"))

    def test_policy_files_in_infra_iam_match_the_template(self):
        for name, actions, service in (("publisher-sqs.json", SQS_PUBLISH, "sqs"),
                                       ("publisher-sns.json", SNS_PUBLISH, "sns")):
            doc = json.loads((INFRA / "iam" / name).read_text())
            self.assertEqual(doc["Version"], "2012-10-17")
            (stmt,) = statements(doc)
            self.assertEqual({a for a, _ in grants(doc)}, actions, name)
            self.assertRegex(stmt["Resource"], rf"^arn:aws:{service}:[^:*]+:[^:*]+:[^:*]+$", name)

    def test_access_key_lands_in_secrets_manager_and_never_in_outputs(self):
        eff = Effective()
        secret = json.dumps(eff.props("PublisherSecret")["SecretString"])
        self.assertIn("${PublisherAccessKey.SecretAccessKey}", secret)
        self.assertIn("${PublisherAccessKey}", secret)
        self.assertIn('\\"access_key_id\\"', secret)
        self.assertIn('\\"secret_access_key\\"', secret)
        for name, output in eff.template["Outputs"].items():
            self.assertNotIn("PublisherAccessKey", refs(output), f"output {name} exposes the key")
        for lid, res in eff.resources.items():
            if lid != "PublisherSecret":
                self.assertNotIn("SecretAccessKey", json.dumps(res), f"{lid} holds the secret key")
        self.assertEqual(eff.outputs["PublisherSecretArn"]["Value"], {"Ref": "PublisherSecret"})

    def test_publisher_user_is_optional(self):
        eff = Effective(CreatePublisherUser="false", **STREAMER)
        for lid in ("PublisherUser", "PublisherAccessKey", "PublisherSecret"):
            self.assertNotIn(lid, eff.resources)
        self.assertNotIn("PublisherSecretArn", eff.outputs)


class ConditionsTest(unittest.TestCase):
    SQS_ONLY = {"Queue", "DeadLetterQueue", "ConsumerSqsFunction", "ConsumerSqsFunctionQueue",
                "ConsumerSqsFunctionRole", "ConsumerSqsLogGroup", "DeadLetterQueueAlarm", "ConsumerSqsErrorsAlarm"}
    SNS_ONLY = {"Topic", "SnsSubscriptionDeadLetterQueue", "SnsSubscriptionDeadLetterQueuePolicy",
                "SnsFailureQueue", "ConsumerSnsFunction", "ConsumerSnsFunctionTopic",
                "ConsumerSnsFunctionTopicPermission", "ConsumerSnsFunctionEventInvokeConfig",
                "ConsumerSnsFunctionRole", "ConsumerSnsLogGroup", "SnsSubscriptionDeadLetterQueueAlarm",
                "SnsFailureQueueAlarm", "ConsumerSnsErrorsAlarm"}

    def test_each_path_creates_its_resources_and_only_those(self):
        for path, present, absent in (("SQS", self.SQS_ONLY, self.SNS_ONLY),
                                      ("SNS", self.SNS_ONLY, self.SQS_ONLY),
                                      ("Both", self.SQS_ONLY | self.SNS_ONLY, set())):
            eff = Effective(DeliveryPath=path)
            self.assertLessEqual(present, set(eff.resources), path)
            self.assertFalse(absent & set(eff.resources), path)

    def test_outputs_follow_the_path(self):
        sqs = {"QueueUrl", "DlqUrl", "ConsumerSqsFunctionName"}
        sns = {"TopicArn", "ConsumerSnsFunctionName", "SnsSubscriptionDlqUrl", "SnsFailureQueueUrl"}
        for path, present, absent in (("SQS", sqs, sns), ("SNS", sns, sqs), ("Both", sqs | sns, set())):
            outputs = set(Effective(DeliveryPath=path).outputs)
            self.assertLessEqual(present | {"PublisherSecretArn"}, outputs, path)
            self.assertFalse(absent & outputs, path)

    def test_ecs_resources_exist_only_with_an_image(self):
        ecs_types = {"AWS::ECS::Cluster", "AWS::ECS::TaskDefinition", "AWS::ECS::Service"}
        for path in PATHS:
            without = Effective(DeliveryPath=path)
            self.assertFalse({r["Type"] for r in without.resources.values()} & ecs_types, path)
            self.assertFalse({"StreamerTaskRole", "StreamerExecutionRole", "StreamerLogGroup"} & set(without.resources))
            with_image = Effective(DeliveryPath=path, **STREAMER)
            self.assertLessEqual(ecs_types, {r["Type"] for r in with_image.resources.values()}, path)

    def test_rules_reject_an_image_without_network_or_secret(self):
        rule = source_template()["Rules"]["StreamerNeedsNetworkAndSecret"]
        self.assertEqual(rule["RuleCondition"], {"Fn::Not": [{"Fn::Equals": [{"Ref": "StreamerImageUri"}, ""]}]})
        asserted = json.dumps(rule["Assertions"])
        for param in ("StreamerSubnetIds", "StreamerSecurityGroupIds", "StreamerDatabaseUrlSecretArn"):
            self.assertIn(param, asserted)


class StreamerOnEcsTest(unittest.TestCase):
    def effective(self, **extra) -> Effective:
        return Effective(**{**STREAMER, **extra})

    def container(self, eff: Effective) -> dict:
        (container,) = eff.props("StreamerTaskDefinition")["ContainerDefinitions"]
        return container

    def test_task_definition(self):
        eff = self.effective(StreamerCpuArchitecture="X86_64")
        td = eff.props("StreamerTaskDefinition")
        self.assertEqual((td["Cpu"], td["Memory"]), ("256", "512"))
        self.assertEqual(td["RequiresCompatibilities"], ["FARGATE"])
        self.assertEqual(td["NetworkMode"], "awsvpc")
        self.assertEqual(td["RuntimePlatform"]["CpuArchitecture"], "X86_64")
        self.assertEqual(td["TaskRoleArn"], {"Fn::GetAtt": ["StreamerTaskRole", "Arn"]})
        self.assertEqual(td["ExecutionRoleArn"], {"Fn::GetAtt": ["StreamerExecutionRole", "Arn"]})
        c = self.container(eff)
        self.assertEqual(c["Image"], STREAMER["StreamerImageUri"])
        self.assertEqual(c["HealthCheck"]["Command"], ["CMD", "/usr/local/bin/streamer", "healthz"])
        self.assertEqual(c["StopTimeout"], 120)
        self.assertEqual(c["LogConfiguration"]["Options"]["awslogs-group"], {"Ref": "StreamerLogGroup"})
        self.assertNotIn("Command", c, "the image's CMD (run) applies")

    def test_database_url_comes_from_secrets_manager(self):
        eff = self.effective()
        c = self.container(eff)
        self.assertEqual(c["Secrets"], [{"Name": "WALCAST_SOURCE_URL",
                                         "ValueFrom": STREAMER["StreamerDatabaseUrlSecretArn"]}])
        self.assertNotIn("WALCAST_SOURCE_URL", {e["Name"] for e in c["Environment"]})
        (stmt,) = statements(eff.props("StreamerExecutionRole")["Policies"][0]["PolicyDocument"])
        self.assertEqual(stmt["Action"], "secretsmanager:GetSecretValue")
        self.assertEqual(stmt["Resource"], STREAMER["StreamerDatabaseUrlSecretArn"])
        keyed = self.container(self.effective(StreamerDatabaseUrlSecretKey="url"))
        self.assertEqual(keyed["Secrets"][0]["ValueFrom"],
                         {"Fn::Sub": "${StreamerDatabaseUrlSecretArn}:${StreamerDatabaseUrlSecretKey}::"})

    def test_environment_uses_the_streamer_configuration_names(self):
        for path, sink, target_var, target in (("SQS", "sqs", "WALCAST_SINK_QUEUE_URL", {"Ref": "Queue"}),
                                               ("SNS", "sns", "WALCAST_SINK_TOPIC_ARN", {"Ref": "Topic"})):
            env = {e["Name"]: e["Value"] for e in self.container(self.effective(DeliveryPath=path))["Environment"]}
            self.assertLessEqual(set(env), CONFIG_ENV, "the streamer refuses unknown WALCAST_ variables")
            self.assertEqual(env["WALCAST_SINK_TYPE"], sink)
            self.assertEqual(env[target_var], target)
            self.assertNotIn("WALCAST_SINKS", env)
            self.assertEqual(env["WALCAST_HTTP_LISTEN"], "0.0.0.0:9187")
            self.assertEqual(env["WALCAST_LOG_FORMAT"], "json")
            self.assertFalse({"WALCAST_SINK_ACCESS_KEY_ID", "WALCAST_SINK_SECRET_ACCESS_KEY"} & set(env),
                             "on ECS the task role provides credentials")

    def test_both_paths_are_one_streamer_with_two_sinks(self):
        eff = self.effective(DeliveryPath="Both", StreamerSinkName="app")
        env = {e["Name"]: e["Value"] for e in self.container(eff)["Environment"]}
        self.assertLessEqual(set(env), CONFIG_ENV)
        self.assertFalse({v for v in env if v.startswith("WALCAST_SINK_")},
                         "the one-sink variables are refused beside a sinks list")
        sinks = json.loads(substitute(eff, env["WALCAST_SINKS"]))
        self.assertEqual(sinks, [
            {"name": "app_sqs", "type": "sqs", "queue_url": "<Queue>", "region": eff.values["AWS::Region"],
             "s3": {"bucket": "<PayloadBucket>"}},
            {"name": "app_sns", "type": "sns", "topic_arn": "<Topic>", "region": eff.values["AWS::Region"],
             "s3": {"bucket": "<PayloadBucket>"}},
        ])
        for entry in sinks:
            self.assertLessEqual(set(entry) - {"s3"}, CONFIG_KEYS["sink"], entry)

    def test_iam_database_authentication_is_opt_in(self):
        arn = "arn:aws:rds-db:eu-west-1:123456789012:dbuser:db-ABCDEFGHIJKL01234/walcast"
        plain = self.effective()
        self.assertEqual(len(plain.props("StreamerTaskRole")["Policies"]), 1)
        self.assertNotIn("WALCAST_SOURCE_AUTH", {e["Name"] for e in self.container(plain)["Environment"]})
        eff = self.effective(StreamerDbUserArn=arn)
        publisher, rds = eff.props("StreamerTaskRole")["Policies"]
        self.assertEqual(publisher["PolicyName"], "walcast-publisher")
        (stmt,) = statements(rds["PolicyDocument"])
        self.assertEqual((stmt["Effect"], stmt["Action"], stmt["Resource"]), ("Allow", "rds-db:connect", arn))
        env = {e["Name"]: e["Value"] for e in self.container(eff)["Environment"]}
        self.assertEqual(env["WALCAST_SOURCE_AUTH"], "iam")
        self.assertLessEqual(set(env), CONFIG_ENV)
        pattern = re.compile(source_template()["Parameters"]["StreamerDbUserArn"]["AllowedPattern"])
        self.assertTrue(pattern.match(arn) and pattern.match(""))
        self.assertFalse(pattern.match("arn:aws:rds:eu-west-1:123456789012:db:app"))

    def test_service_runs_one_task_and_never_two(self):
        eff = self.effective()
        svc = eff.props("StreamerService")
        self.assertEqual(svc["DesiredCount"], 1)
        self.assertEqual(svc["DeploymentConfiguration"]["MaximumPercent"], 100)
        self.assertEqual(svc["DeploymentConfiguration"]["MinimumHealthyPercent"], 0)
        self.assertEqual(svc["LaunchType"], "FARGATE")
        vpc = svc["NetworkConfiguration"]["AwsvpcConfiguration"]
        self.assertEqual(vpc["Subnets"], STREAMER["StreamerSubnetIds"].split(","))
        self.assertEqual(vpc["SecurityGroups"], [STREAMER["StreamerSecurityGroupIds"]])
        self.assertEqual(vpc["AssignPublicIp"], "DISABLED")

    def test_log_groups_have_retention(self):
        eff = Effective(DeliveryPath="Both", LogRetentionDays="14", **STREAMER)
        groups = eff.of_type("AWS::Logs::LogGroup")
        self.assertEqual(set(groups), {"ConsumerSqsLogGroup", "ConsumerSnsLogGroup", "StreamerLogGroup"})
        for lid, group in groups.items():
            self.assertEqual(group["Properties"]["RetentionInDays"], "14", lid)


class AlarmsAndEncryptionTest(unittest.TestCase):
    def dead_letter_targets(self, eff: Effective) -> set[str]:
        """Queues that hold failures: redrive targets, subscription DLQs, on-failure destinations."""
        text = json.dumps(
            [r["Properties"].get("RedrivePolicy", {}) for r in eff.resources.values() if "Properties" in r]
            + [r["Properties"]["DestinationConfig"] for r in eff.of_type("AWS::Lambda::EventInvokeConfig").values()]
        )
        return {lid for lid in eff.of_type("AWS::SQS::Queue") if f'["{lid}", "Arn"]' in text}

    def test_every_dead_letter_queue_has_an_alarm(self):
        for path in PATHS:
            eff = Effective(DeliveryPath=path)
            dlqs = self.dead_letter_targets(eff)
            self.assertTrue(dlqs, path)
            watched = set()
            for alarm in eff.of_type("AWS::CloudWatch::Alarm").values():
                p = alarm["Properties"]
                if p["Namespace"] == "AWS/SQS" and p["MetricName"] == "ApproximateNumberOfMessagesVisible":
                    self.assertEqual((p["ComparisonOperator"], p["Threshold"]), ("GreaterThanThreshold", 0))
                    watched.add(p["Dimensions"][0]["Value"]["Fn::GetAtt"][0])
            self.assertEqual(watched, dlqs, path)

    def test_every_function_has_an_errors_alarm(self):
        for path in PATHS:
            eff = Effective(DeliveryPath=path)
            watched = {a["Properties"]["Dimensions"][0]["Value"]["Ref"]
                       for a in eff.of_type("AWS::CloudWatch::Alarm").values()
                       if a["Properties"]["MetricName"] == "Errors"}
            self.assertEqual(watched, set(eff.of_type("AWS::Lambda::Function")), path)

    def test_alarm_actions_and_lag_alarm_are_optional(self):
        eff = Effective(DeliveryPath="Both")
        self.assertNotIn("ReplicationLagAlarm", eff.resources)
        for lid, alarm in eff.of_type("AWS::CloudWatch::Alarm").items():
            self.assertNotIn("AlarmActions", alarm["Properties"], lid)
        topic = "arn:aws:sns:eu-west-1:123456789012:ops"
        eff = Effective(DeliveryPath="Both", AlarmTopicArn=topic, ReplicationLagDbInstanceId="app-db")
        lag = eff.props("ReplicationLagAlarm")
        self.assertEqual((lag["Namespace"], lag["MetricName"]), ("AWS/RDS", "OldestReplicationSlotLag"))
        for lid, alarm in eff.of_type("AWS::CloudWatch::Alarm").items():
            self.assertEqual(alarm["Properties"]["AlarmActions"], [topic], lid)

    def test_queues_and_topic_are_encrypted(self):
        eff = Effective(DeliveryPath="Both")
        for lid, queue in eff.of_type("AWS::SQS::Queue").items():
            self.assertIs(queue["Properties"]["SqsManagedSseEnabled"], True, lid)
        self.assertTrue(eff.props("Topic")["KmsMasterKeyId"])


class DashboardTest(unittest.TestCase):
    """The CloudWatch dashboard plots only metrics that exist, and the ones that matter."""

    def scenarios(self):
        for path, queue_type, streamer in itertools.product(PATHS, ("fifo", "standard"), (False, True)):
            params = {"DeliveryPath": path, "QueueType": queue_type, **(STREAMER if streamer else {})}
            yield params, Effective(**params)

    def test_body_is_json_with_a_metric_widget_list_in_every_scenario(self):
        for params, eff in self.scenarios():
            with self.subTest(path=params["DeliveryPath"], queue=params["QueueType"]):
                body = dashboard(eff)
                self.assertTrue(body["widgets"])
                for widget in body["widgets"]:
                    props = widget["properties"]
                    self.assertEqual(widget["type"], "metric")
                    self.assertEqual(props["region"], "eu-west-1")
                    self.assertTrue(props["title"] and props["metrics"], props)
                    self.assertLessEqual(widget.get("width", 6), 24)
        self.assertEqual(Effective().outputs["DashboardUrl"]["Value"]["Fn::Sub"].count("${Dashboard}"), 1)

    def test_every_aws_metric_is_one_aws_documents_on_a_resource_of_this_stack(self):
        for params, eff in self.scenarios():
            for metric in plotted(dashboard(eff)):
                if not metric["namespace"].startswith("AWS/"):
                    continue
                label = f"{params['DeliveryPath']}: {metric['title']}: {metric['namespace']} {metric['name']}"
                self.assertIn(metric["namespace"], AWS_METRICS, label)
                names, dimensions = AWS_METRICS[metric["namespace"]]
                self.assertIn(metric["name"], names, f"{label} is not a documented metric")
                self.assertLessEqual(set(metric["dimensions"]), dimensions, label)
                for dimension, value in metric["dimensions"].items():
                    type_, attribute = DIMENSION_TARGETS[dimension]
                    target = re.fullmatch(r"<(\w+)(?:\.(\w+))?>", value or "")
                    self.assertTrue(target, f"{label}: {dimension} is not a resource of the stack")
                    logical_id, attr = target.groups()
                    self.assertEqual((eff.resources[logical_id]["Type"], attr), (type_, attribute), label)

    def test_every_streamer_metric_is_one_it_publishes(self):
        namespace, metrics = emf_metrics()
        self.assertEqual(namespace, "walcast")
        self.assertTrue(metrics, "infra/metrics-emf.txt lists no metric")
        seen = set()
        for params, eff in self.scenarios():
            for metric in plotted(dashboard(eff)):
                if metric["namespace"].startswith("AWS/"):
                    continue
                label = f"{metric['title']}: {metric['namespace']} {metric['name']}"
                self.assertEqual(metric["namespace"], namespace, label)
                self.assertIn(metric["name"], metrics, f"{label}: not in infra/metrics-emf.txt")
                self.assertIn(frozenset(metric["dimensions"]), metrics[metric["name"]],
                              f"{label}: the streamer publishes it with {sorted(map(sorted, metrics[metric['name']]))}")
                seen.add(metric["name"])
        for wanted in ("EventsReceived", "EventsDelivered", "ReplicationLagBytes", "DeliveryLatency"):
            self.assertIn(wanted, seen, "the streamer's throughput, lag and latency are on the dashboard")

    def test_every_queue_function_and_topic_of_a_scenario_is_watched(self):
        for params, eff in self.scenarios():
            with self.subTest(path=params["DeliveryPath"], queue=params["QueueType"]):
                metrics = plotted(dashboard(eff))

                def on(logical_id: str) -> set[str]:
                    return {m["name"] for m in metrics
                            if any((v or "").split(".")[0] == f"<{logical_id}" for v in m["dimensions"].values())
                            or f"<{logical_id}>" in m["dimensions"].values()}

                for queue in eff.of_type("AWS::SQS::Queue"):
                    self.assertIn("ApproximateNumberOfMessagesVisible", on(queue), queue)
                if "Queue" in eff.resources:
                    self.assertIn("ApproximateAgeOfOldestMessage", on("Queue"))
                for function in eff.of_type("AWS::Lambda::Function"):
                    self.assertLessEqual({"Errors", "Duration", "ConcurrentExecutions", "Throttles"}, on(function),
                                         function)
                if "Topic" in eff.resources:
                    self.assertLessEqual({"NumberOfNotificationsFailed", "NumberOfNotificationsDelivered"}, on("Topic"))


class GrafanaDashboardTest(unittest.TestCase):
    """infra/grafana/walcast.json queries only series and labels the streamer's /metrics has."""

    # Labels Prometheus adds to every scraped series.
    TARGET_LABELS = {"instance", "job"}

    def dashboard(self) -> dict:
        return json.loads(GRAFANA_DASHBOARD.read_text())

    def expressions(self) -> list[tuple[str, str]]:
        out = []
        for panel in self.dashboard()["panels"]:
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))
        for variable in self.dashboard()["templating"]["list"]:
            if variable["type"] == "query":
                out.append((f"variable {variable['name']}", variable["definition"]))
        return out

    def test_ops_rs_was_read(self):
        names, labels = prometheus_metrics()
        self.assertIn("walcast_events_delivered_total", names)
        self.assertIn("walcast_delivery_latency_seconds_bucket", names)
        self.assertLessEqual({"table", "action", "le"}, labels)

    def test_every_walcast_series_is_one_the_streamer_writes(self):
        names, _ = prometheus_metrics()
        used = set()
        for title, expr in self.expressions():
            series = set(re.findall(r"\bwalcast_[a-z0-9_]+", expr))
            self.assertTrue(series, f"{title}: no walcast_ series in {expr}")
            self.assertLessEqual(series, names, f"{title}: not in streamer/src/ops.rs: {series - names}")
            used |= series
        for wanted in ("walcast_events_delivered_total", "walcast_replication_lag_bytes",
                       "walcast_delivery_latency_seconds_bucket", "walcast_up"):
            self.assertIn(wanted, used)

    def test_every_label_is_one_the_streamer_or_prometheus_sets(self):
        _, labels = prometheus_metrics()
        allowed = labels | self.TARGET_LABELS
        for title, expr in self.expressions():
            selectors = re.findall(r"\{([^}]*)\}", expr)
            used = {m for sel in selectors for m in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", sel)}
            used |= {m for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                     for m in re.findall(r"[a-z_]+", group)}
            self.assertLessEqual(used, allowed, f"{title}: unknown labels {used - allowed}")
            self.assertEqual(expr.count("("), expr.count(")"), title)
            self.assertEqual(expr.count("{"), expr.count("}"), title)
        for panel in self.dashboard()["panels"]:
            for legend in (t.get("legendFormat", "") for t in panel.get("targets", [])):
                self.assertLessEqual(set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", legend)), allowed, panel["title"])

    def test_panels_are_laid_out_and_use_the_datasource_variable(self):
        dashboard = self.dashboard()
        ids = [p["id"] for p in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)), "panel ids are unique")
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        self.assertLessEqual({"datasource", "instance"}, variables)
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
            if panel["type"] != "row":
                self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
                for target in panel["targets"]:
                    self.assertIn('instance=~"$instance"', target["expr"], panel["title"])


class InfraFilesTest(unittest.TestCase):
    def test_example_configs_use_only_documented_keys(self):
        for rel, sink in (("ecs/streamer.yaml", "sqs"), ("ec2/streamer.yaml", "sqs")):
            config = yaml.safe_load((INFRA / rel).read_text())
            self.assertLessEqual(set(config), set(CONFIG_KEYS), rel)
            for section, keys in config.items():
                self.assertLessEqual(set(keys), CONFIG_KEYS[section], f"{rel}: {section}")
            self.assertEqual(config["sink"]["type"], sink)
            self.assertNotIn("url", config["source"], f"{rel}: the database URL is a secret")
            self.assertNotIn("secret_access_key", config["sink"], rel)

    def test_root_example_config_has_every_key_the_streamer_reads(self):
        """streamer.example.yaml shows every key of streamer/src/config.rs, each with its
        variable; keys that are commented out (topic_arn, credentials, …) count once
        uncommented. A key added to the streamer fails this until the example shows it."""
        text = (REPO / "streamer.example.yaml").read_text()
        sections, env = streamer_config_keys()
        self.assertTrue(sections.get("source") and sections.get("sink"), "config.rs parsed")
        active = yaml.safe_load(text)
        for section, keys in active.items():
            self.assertLessEqual(set(keys), sections.get(section, set()), f"unknown keys in {section}")
        uncommented = yaml.safe_load(re.sub(r"(?m)^(\s*)# (?=[a-z_]+: )", r"\1", text))
        self.assertIn("sinks", uncommented, "the example shows the sinks list")
        self.assertRegex(text, r"(?m)^# sinks: .*# WALCAST_SINKS\b")
        del uncommented["sinks"]
        self.assertEqual(set(uncommented), set(sections))
        for section, keys in sections.items():
            self.assertEqual(set(uncommented[section]), keys, section)
        for (section, key), var in env.items():
            lines = [line for line in text.splitlines() if re.match(rf"\s*(# )?{key}: ", line)]
            self.assertTrue(any(re.search(rf"# {var}\b", line) for line in lines),
                            f"no line of {section}.{key} shows {var}")
        self.assertEqual(active["source"]["url"].split("@")[0], "postgres://walcast:secret",
                         "a placeholder password only")
        self.assertNotIn("secret_access_key", active["sink"], "credentials stay commented out")

    def test_systemd_unit(self):
        unit = (INFRA / "ec2" / "walcast-streamer.service").read_text()
        for line in ("ExecStart=/usr/local/bin/streamer run --config /etc/walcast/streamer.yaml",
                     "User=walcast", "Restart=always", "TimeoutStopSec=120", "KillSignal=SIGTERM",
                     "EnvironmentFile=/etc/walcast/streamer.env", "WantedBy=multi-user.target"):
            self.assertIn(f"\n{line}\n", unit)

    def test_dockerfile(self):
        text = (INFRA / "Dockerfile").read_text()
        instructions = [l for l in text.splitlines() if l and not l.startswith(("#", " "))]
        froms = [l for l in instructions if l.startswith("FROM ")]
        self.assertEqual(froms, ["FROM rust:1-bookworm AS builder", "FROM debian:bookworm-slim"])
        self.assertIn("cargo build --locked --release -p walcast-streamer --bin streamer", text)
        self.assertIn("ca-certificates", text)
        self.assertRegex(text, r"(?m)^USER (?!root|0\b)\S+")
        self.assertIn('ENTRYPOINT ["/usr/local/bin/streamer"]', instructions)
        self.assertIn('CMD ["run"]', instructions)
        self.assertIn("EXPOSE 9187", instructions)


if __name__ == "__main__":
    unittest.main()
