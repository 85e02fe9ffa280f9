#!/usr/bin/env python3
"""Deploy template.yaml to a local MiniStack with the real consumer functions, and read
their logs. Used by infra/local.sh (the local pipeline) and the end-to-end tests
(tests/, crate walcast-e2e); ministack_deploy.py does the packaging and the stack.

  ministack_local.py deploy ENDPOINT STACK [--param K=V]... [--code LOGICAL_ID=BOOTSTRAP]...
                                           [--env LOGICAL_ID:NAME=VALUE]...
      Creates the stack from the project's own template.yaml (not a copy), each listed
      function's code zipped from the given bootstrap executable, then sets the listed
      environment variables on the deployed functions (UpdateFunctionConfiguration: a
      change to the deployment, not to the template). Prints the stack outputs, plus
      "log group" entries `<Output>LogGroup` for each function, as one JSON object.
      Known MiniStack gap (1.5.33): no AWS::IAM::AccessKey, so pass
      CreatePublisherUser=false (the callers print that as a notice).

  ministack_local.py logs ENDPOINT GROUP [--follow] [--prefix TEXT] [--readable]
      Prints the messages of a CloudWatch Logs group (where MiniStack writes a function's
      output), oldest first, one per line, prefixed with TEXT; with --follow, keeps
      printing new ones until killed. --readable: JSON log lines shown as text, and the
      raw events the runtime logs at TRACE as one "received: {change event}" line each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import ministack_deploy as md


def deploy(args: argparse.Namespace) -> int:
    c = md.clients(args.endpoint)
    code = {}
    for item in args.code:
        logical_id, _, path = item.partition("=")
        with open(path, "rb") as f:
            code[logical_id] = f.read()
    params = dict(p.split("=", 1) for p in args.param)
    body = md.packaged_template(c, code)
    # md.deploy prints one "ok:"/"FAILED:" line (stack status): send it to stderr so
    # stdout is only the JSON.
    stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        stack = md.deploy(c, body, args.stack, params)
    finally:
        sys.stdout = stdout
    if md.failed:
        return 1
    outputs = dict(stack["outputs"])
    env: dict[str, dict[str, str]] = {}
    for item in args.env:
        logical_id, _, assignment = item.partition(":")
        name, _, value = assignment.partition("=")
        env.setdefault(logical_id, {})[name] = value
    for logical_id, resource in stack["resources"].items():
        if resource["ResourceType"] != "AWS::Lambda::Function":
            continue
        name = resource["PhysicalResourceId"]
        config = c["lambda"].get_function_configuration(FunctionName=name)
        if logical_id in env:
            variables = dict(config.get("Environment", {}).get("Variables", {}))
            variables.update(env[logical_id])
            config = c["lambda"].update_function_configuration(
                FunctionName=name, Environment={"Variables": variables})
        group = (config.get("LoggingConfig") or {}).get("LogGroup") or f"/aws/lambda/{name}"
        outputs[f"{logical_id}LogGroup"] = group
    print(json.dumps(outputs, indent=2, sort_keys=True))
    return 0


def logs(args: argparse.Namespace) -> int:
    logs_client = md.boto3.client("logs", endpoint_url=args.endpoint, region_name=md.REGION,
                                  aws_access_key_id="test", aws_secret_access_key="test")
    seen: set[str] = set()
    start = 0
    while True:
        events = []
        try:
            paginator = logs_client.get_paginator("filter_log_events")
            for page in paginator.paginate(logGroupName=args.group, startTime=start):
                events.extend(page.get("events", []))
        except logs_client.exceptions.ResourceNotFoundException:
            pass  # no invocation yet: the group appears with the first one
        events.sort(key=lambda e: (e["timestamp"], e.get("ingestionTime", 0)))
        for event in events:
            key = event.get("eventId") or f"{event['logStreamName']}/{event['timestamp']}/{event['message']}"
            if key in seen:
                continue
            seen.add(key)
            start = max(start, event["timestamp"] - 5000)
            for line in (readable(event["message"]) if args.readable else [event["message"].rstrip()]):
                print(f"{args.prefix}{line}", flush=True)
        if not args.follow:
            return 0
        time.sleep(1)


RAW_EVENT = "raw JSON event received from Lambda"


def readable(message: str) -> list[str]:
    """A function's JSON log line (AWS_LAMBDA_LOG_FORMAT=JSON) as text: the raw event the
    Lambda runtime logs at TRACE becomes one line per change event it carries; other lines
    become "LEVEL message key=value"; START/END/REPORT lines are dropped."""
    try:
        line = json.loads(message)
    except ValueError:
        return [] if message.startswith(("START ", "END ", "REPORT ")) else [message.rstrip()]
    if not isinstance(line, dict):
        return [message.rstrip()]
    if line.get("message") == RAW_EVENT:
        try:
            records = json.loads(line.get("body", "")).get("Records", [])
        except (ValueError, AttributeError):
            return [message.rstrip()]
        out = []
        for record in records:
            if "Sns" in record:
                body = record["Sns"].get("Message", "")
            else:
                body = record.get("body", "")
            out.append(f"received: {body}")
        return out
    if line.get("level") == "TRACE":
        return []
    skip = {"timestamp", "level", "message", "span", "spans", "target", "body"}
    fields = " ".join(f"{k}={v}" for k, v in line.items() if k not in skip)
    ids = [s.get("message_id") for s in line.get("spans", []) if s.get("message_id")]
    where = f" message_id={ids[-1]}" if ids else ""
    return [f"{line.get('level', '')} {line.get('message', '')}{where} {fields}".rstrip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deploy")
    p.add_argument("endpoint")
    p.add_argument("stack")
    p.add_argument("--param", action="append", default=[])
    p.add_argument("--code", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.set_defaults(run=deploy)
    p = sub.add_parser("logs")
    p.add_argument("endpoint")
    p.add_argument("group")
    p.add_argument("--follow", action="store_true")
    p.add_argument("--prefix", default="")
    p.add_argument("--readable", action="store_true")
    p.set_defaults(run=logs)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
