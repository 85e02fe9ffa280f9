#!/usr/bin/env python3
"""Translate template.yaml (AWS SAM) to plain CloudFormation JSON, offline.

This is what CloudFormation's AWS::Serverless-2016-10-31 transform does on deploy, run
locally with the same library (aws-sam-translator) so tests can check the resources SAM
generates (event source mappings, roles, permissions, subscriptions).

No AWS call is made: the region, partition and account id are fixed fakes, and the
managed-policy loader is a stub (the template names no managed policy by name; SAM adds
its own by ARN). Local CodeUri paths are replaced by fake S3 URIs first, as
`sam build`/`sam package` would do.

Usage:
    translate.py [--template template.yaml] [--out out.json] [--bake-defaults] [--no-transform] [Name=Value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
from pathlib import Path

# The translator reads the region from boto3's default session; fix it before import.
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
os.environ.setdefault("AWS_REGION", os.environ["AWS_DEFAULT_REGION"])
# Never pick up a developer's real credentials or config: nothing here may reach AWS.
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(var, None)

from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402

# The translator records usage metrics for the AWS service and warns, on every run,
# that nobody published them. Offline, nobody will.
logging.getLogger("samtranslator.metrics.metrics").setLevel(logging.ERROR)

FAKE_ACCOUNT_ID = "123456789012"
REPO_ROOT = Path(__file__).resolve().parents[2]


class OfflineManagedPolicyLoader:
    """Stands in for samtranslator's ManagedPolicyLoader, which lists IAM policies.

    Only consulted when a function's `Policies` names an AWS managed policy by name
    (e.g. `AmazonSQSFullAccess`); the template does not, so an empty map is right.
    """

    def load(self) -> dict[str, str]:
        return {}


def packaged(template: dict) -> dict:
    """Replace local CodeUri directories by S3 URIs, as `sam package` does."""
    out = copy.deepcopy(template)
    for logical_id, resource in out.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.setdefault("Properties", {})
        code_uri = props.get("CodeUri")
        if isinstance(code_uri, str) and not code_uri.startswith("s3://"):
            if not (REPO_ROOT / code_uri).is_dir():
                # Not an error here: the crate may not exist yet. Tests check the path.
                print(f"note: {logical_id} CodeUri {code_uri} is not a directory yet", file=sys.stderr)
            props["CodeUri"] = f"s3://walcast-offline-artifacts/{logical_id}.zip"
    return out


def translate(template_path: Path, parameters: dict[str, str]) -> dict:
    template = yaml_parse(template_path.read_text())
    values = {"AWS::AccountId": FAKE_ACCOUNT_ID, **parameters}
    return transform(packaged(template), values, OfflineManagedPolicyLoader())


def bake_defaults(template: dict, parameters: dict[str, str]) -> dict:
    """Make `parameters` the template's defaults.

    Scanners such as checkov evaluate Conditions with the parameters' defaults and skip
    resources whose condition is false; baking in other values lets them see the
    resources of another scenario (e.g. DeliveryPath=Both with the ECS streamer).
    """
    out = copy.deepcopy(template)
    declared = out.get("Parameters", {})
    for name, value in parameters.items():
        if name not in declared:
            raise SystemExit(f"unknown parameter {name}")
        declared[name]["Default"] = value
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", type=Path, default=REPO_ROOT / "template.yaml")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--bake-defaults", action="store_true",
                        help="also write the overrides as the parameters' defaults (for scanners)")
    parser.add_argument("--no-transform", action="store_true",
                        help="do not translate: output the SAM template itself as JSON (with --bake-defaults)")
    parser.add_argument("params", nargs="*", help="parameter overrides, Name=Value")
    args = parser.parse_args(argv)

    parameters = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"parameter override {item!r} is not Name=Value")
        parameters[name] = value

    if args.no_transform:
        result_doc = yaml_parse(args.template.read_text())
    else:
        result_doc = translate(args.template, parameters)
    if args.bake_defaults:
        result_doc = bake_defaults(result_doc, parameters)
    result = json.dumps(result_doc, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(result + "\n")
    else:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
