#!/usr/bin/env bash
# Checks template.yaml and infra/ without an AWS account:
#   1. cfn-lint on template.yaml (it applies the SAM transform itself)
#   2. the SAM transform run offline with aws-sam-translator (translate.py)
#   3. infra/template/test_template.py on the translated CloudFormation (each test counts)
#   4. checkov on template.yaml, as written (default parameters)
#   5. checkov on the SAM source and on the translated template with every optional
#      resource switched on (checkov only sees resources whose condition holds for the
#      parameters' defaults, so the defaults are rewritten to DeliveryPath=Both, ECS on…)
#   6. every checkov skip declared in template.yaml is one checkov really applies
#   7. checkov on infra/Dockerfile; systemd-analyze verify on the systemd unit (if present)
#   8. `sam validate --lint` (aws-sam-cli, in its own venv: it pins boto3 versions that
#      checkov's pins conflict with); counted as skipped if it cannot be installed
#   9. `sam build` of this checkout: cargo-lambda builds both functions for arm64 (with
#      zig), into a scratch directory; the bootstraps must be aarch64 executables.
#      Counted as skipped, with the reason, when cargo, cargo-lambda or zig is missing
#      (consumer-sqs/scripts/install-cargo-lambda.sh installs the last two)
#  10. the template deployed to MiniStack (a local AWS emulator with CloudFormation and
#      the SAM transform, started here on 127.0.0.1 and stopped at the end), and the
#      created queues, mappings, subscription, roles, ECS service, alarms and dashboard
#      read back (ministack_deploy.py; each of its checks counts); then, after step 9,
#      `sam deploy` of the built template to the same MiniStack (through AWS_ENDPOINT_URL)
#      and its functions' code compared with the bootstraps sam build wrote
#
# Idempotent: the tools live in venvs under ${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}
# and are reinstalled only when the pinned versions below change. Needs python3 (with
# venv, or root to apt-get python3-venv) and PyPI. Makes no AWS call.
#
# The last line is "N passed, M failed" (", K skipped" when some step could not run);
# the exit status is non-zero when anything failed.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/infra/template"
TOOLS=${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}
VENV="$TOOLS/venv"
SAM_VENV="$TOOLS/venv-sam"
MINISTACK_VENV="$TOOLS/venv-ministack"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/walcast-template.XXXXXX")
MINISTACK_PID=
cleanup() {
  # Stop the MiniStack this script started (by its pid), then drop the scratch dir.
  if [[ -n "$MINISTACK_PID" ]]; then
    kill "$MINISTACK_PID" 2>/dev/null
    wait "$MINISTACK_PID" 2>/dev/null
  fi
  rm -rf "$OUT"
}
trap cleanup EXIT

# Pinned tool versions (bump deliberately; the venvs are rebuilt when these change).
LINT_REQUIREMENTS=(cfn-lint==1.58.0 aws-sam-translator==1.115.0 checkov==3.3.30)
SAM_REQUIREMENTS=(aws-sam-cli==1.170.0)
# MiniStack's pins are in install-ministack.sh (shared with infra/local.sh and tests/).

# No tool may reach AWS or use a developer's credentials; the region is a fake default.
export AWS_DEFAULT_REGION=eu-west-1 AWS_REGION=eu-west-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
export SAM_CLI_TELEMETRY=0 BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# cargo-lambda and zig (install-cargo-lambda.sh links them here) and cargo, for sam build.
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

# Every resource on: DeliveryPath=Both, the ECS streamer, alarm actions, the lag alarm.
ALL_ON=(
  DeliveryPath=Both
  AlarmTopicArn=arn:aws:sns:eu-west-1:123456789012:ops
  ReplicationLagDbInstanceId=app-db
  StreamerImageUri=123456789012.dkr.ecr.eu-west-1.amazonaws.com/walcast-streamer:1
  StreamerSubnetIds=subnet-0123456789abcdef0
  StreamerSecurityGroupIds=sg-0123456789abcdef0
  StreamerDatabaseUrlSecretArn=arn:aws:secretsmanager:eu-west-1:123456789012:secret:walcast-db-AbCdEf
  SnsFilterPolicy='{"table_name":["users"]}'
)

passed=0
failed=0
skipped=0

say() { printf '\n=== %s\n' "$*"; }
pass() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAILED: $1"; }
skip() { skipped=$((skipped + 1)); echo "skipped: $1"; }

# step NAME COMMAND...: runs a command, counts it as one passed or failed check.
step() {
  local name=$1
  shift
  say "$name"
  if "$@"; then pass "$name"; else fail "$name"; fi
}

# make_venv DIR REQUIREMENTS...: creates (or reuses) a venv holding exactly these pins.
make_venv() {
  local dir=$1
  shift
  local want="$*"
  if [[ -x "$dir/bin/python" && -f "$dir/.walcast-requirements" && "$(cat "$dir/.walcast-requirements")" == "$want" ]]; then
    return 0
  fi
  echo "installing into $dir: $want"
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  if ! python3 -m venv "$dir" 2>/dev/null; then
    rm -rf "$dir"
    # Debian/Ubuntu ship venv separately.
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get install -y -qq python3-venv >/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
    fi
    python3 -m venv "$dir" || {
      echo "python3 -m venv failed: install python3-venv (Debian: apt-get install python3-venv)" >&2
      return 1
    }
  fi
  "$dir/bin/python" -m pip install --quiet --upgrade pip &&
    "$dir/bin/python" -m pip install --quiet "$@" &&
    echo "$want" >"$dir/.walcast-requirements"
}

run_unittests() {
  say "unit tests on the translated template (infra/template/test_template.py)"
  local log="$OUT/unittest.log" ran bad
  (cd "$ROOT" && "$VENV/bin/python" -m unittest discover -s infra/template -p 'test_*.py' -v) >"$log" 2>&1
  local status=$?
  cat "$log"
  ran=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1/p' "$log" | tail -1)
  if [[ -z "$ran" ]]; then
    fail "unit tests did not run"
    return
  fi
  # One count per failing test (a test with failing subtests counts once).
  bad=$(grep -E '^(FAIL|ERROR): ' "$log" | sed -E 's/ \(.*//' | sort -u | wc -l)
  if ((status != 0 && bad == 0)); then bad=1; fi
  passed=$((passed + ran - bad))
  failed=$((failed + bad))
  echo "unit tests: $((ran - bad)) ok, $bad failed"
}

# checkov_scan FILE FRAMEWORK: fails on any finding, and also when checkov could not
# parse the file or found no resource in it (checkov itself exits 0 in both cases).
checkov_scan() {
  local dir
  dir=$(mktemp -d "$OUT/checkov.XXXXXX")
  (cd "$(dirname "$1")" && "$VENV/bin/checkov" -f "$(basename "$1")" --framework "$2" \
    --skip-download --compact --quiet --output cli --output json --output-file-path "$dir" >/dev/null) || true
  cat "$dir/results_cli.txt" 2>/dev/null
  "$VENV/bin/python" - "$dir/results_json.json" <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except (OSError, ValueError) as error:
    sys.exit(f"no checkov report: {error}")
reports = report if isinstance(report, list) else [report]
summary = {k: sum(r["summary"].get(k, 0) for r in reports) for k in ("failed", "parsing_errors", "resource_count")}
print(f"checkov summary: {summary}")
sys.exit(1 if summary["failed"] or summary["parsing_errors"] or not summary["resource_count"] else 0)
PY
}

# Every checkov skip written in template.yaml must match a check checkov actually runs
# (and skips) on that resource; a stale skip would hide nothing and mislead the reader.
checkov_skips_are_used() { # checkov_skips_are_used SAM_JSON
  (cd "$(dirname "$1")" && "$VENV/bin/checkov" -f "$(basename "$1")" --framework cloudformation \
    --skip-download --compact --output json >"$OUT/checkov-all-on.json" 2>/dev/null)
  "$VENV/bin/python" - "$1" "$OUT/checkov-all-on.json" <<'PY'
import json, sys
template = json.load(open(sys.argv[1]))
report = json.load(open(sys.argv[2]))
reports = report if isinstance(report, list) else [report]
used = {(c["resource"].split(".")[-1], c["check_id"])
        for r in reports for c in r["results"].get("skipped_checks", [])}
declared = {(lid, s["id"]) for lid, res in template["Resources"].items()
            for s in res.get("Metadata", {}).get("checkov", {}).get("skip", [])}
for lid, check in sorted(declared):
    print(f"  {check:<12} {lid:<36} {'skipped as declared' if (lid, check) in used else 'NOT USED'}")
stale = declared - used
if stale:
    print(f"stale checkov skips (checkov does not run these checks there): {sorted(stale)}")
sys.exit(1 if stale else 0)
PY
}

# count_ministack_checks LOG: adds the "ministack checks: N ok, M failed" line of LOG to
# the totals (a missing line is one failure).
count_ministack_checks() {
  local line
  line=$(tail -1 "$1")
  if [[ "$line" =~ ^ministack\ checks:\ ([0-9]+)\ ok,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
  else
    fail "$2 did not finish"
  fi
}

# sam build of the two functions (BuildMethod rust-cargolambda: cargo lambda build
# --release --arm64), into $OUT, with the caller's CARGO_TARGET_DIR if set. Sets
# SAM_BUILT to the build directory when it worked.
SAM_BUILT=
sam_build() {
  local missing=() started=$SECONDS log="$OUT/sam-build.log"
  ((have_sam)) || missing+=("aws-sam-cli (not installable here)")
  command -v cargo >/dev/null || missing+=("cargo")
  command -v cargo-lambda >/dev/null || missing+=("cargo-lambda (consumer-sqs/scripts/install-cargo-lambda.sh)")
  command -v zig >/dev/null || missing+=("zig (consumer-sqs/scripts/install-cargo-lambda.sh links it)")
  if ((${#missing[@]})); then
    skip "sam build: missing ${missing[*]}"
    return
  fi
  say "sam build (cargo lambda build --release --arm64 of consumer-sqs and consumer-sns)"
  if ! (cd "$ROOT" && "$SAM_VENV/bin/sam" build --template-file template.yaml \
    --build-dir "$OUT/sam-build" --cache-dir "$OUT/sam-cache" </dev/null) >"$log" 2>&1; then
    grep -v '^ *Compiling ' "$log" | tail -40
    fail "sam build"
    return
  fi
  grep -v '^ *Compiling ' "$log" | sed -n '/Build Succeeded/,/Built Template/p'
  if "$VENV/bin/python" - "$OUT/sam-build" ConsumerSqsFunction ConsumerSnsFunction <<'PY'; then
import pathlib, sys
root = pathlib.Path(sys.argv[1])
ok = True
for function in sys.argv[2:]:
    path = root / function / "bootstrap"
    head = path.read_bytes()[:20] if path.is_file() else b""
    arm64 = head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    print(f"  {path}: {'aarch64 executable' if arm64 else 'MISSING or not aarch64'}")
    ok &= arm64
sys.exit(0 if ok else 1)
PY
    pass "sam build ($((SECONDS - started)) s)"
    SAM_BUILT="$OUT/sam-build"
  else
    fail "sam build wrote no aarch64 bootstrap"
  fi
}

# sam deploy of sam build's output to the MiniStack on PORT, through AWS_ENDPOINT_URL
# (sam's boto3 honours it for every service), then its functions' code checked.
sam_deploy_to_ministack() { # sam_deploy_to_ministack PORT
  local endpoint="http://127.0.0.1:$1" log="$OUT/sam-deploy.log"
  say "sam deploy of the built template to MiniStack (AWS_ENDPOINT_URL=$endpoint)"
  if ! (cd "$OUT" && AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    "$SAM_VENV/bin/sam" deploy --template-file "$SAM_BUILT/template.yaml" --stack-name walcast-sam \
    --resolve-s3 --capabilities CAPABILITY_IAM --region eu-west-1 --no-confirm-changeset --no-progressbar \
    --parameter-overrides DeliveryPath=Both CreatePublisherUser=false </dev/null) >"$log" 2>&1; then
    tail -30 "$log"
    fail "sam deploy to MiniStack"
    return
  fi
  grep -E 'CREATE_COMPLETE +AWS::CloudFormation::Stack|Successfully created' "$log"
  pass "sam deploy to MiniStack"
  "$MINISTACK_VENV/bin/python" "$HERE/ministack_deploy.py" "$endpoint" --sam-stack walcast-sam "$SAM_BUILT" \
    >"$OUT/sam-stack.log" 2>&1
  cat "$OUT/sam-stack.log"
  count_ministack_checks "$OUT/sam-stack.log" "the check of the sam-deployed stack"
}

# Deploys the template to a MiniStack started here on a free loopback port, and counts
# each check of ministack_deploy.py.
ministack_deploy() {
  say "deploy to MiniStack (local CloudFormation + SAM transform) and check the resources"
  local port log="$OUT/ministack-deploy.log" deadline
  port=$("$MINISTACK_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # TMPDIR: MiniStack's function code cache (ministack-provided-code-<port>) goes with $OUT.
  (cd "$OUT" && TMPDIR="$OUT" BIND_HOST=127.0.0.1 GATEWAY_PORT=$port MINISTACK_REGION=eu-west-1 LOG_LEVEL=WARNING \
    exec "$MINISTACK_VENV/bin/ministack" >"$OUT/ministack.log" 2>&1) &
  MINISTACK_PID=$!
  deadline=$((SECONDS + 60))
  until "$MINISTACK_VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/_ministack/health', timeout=2)" 2>/dev/null; do
    if ((SECONDS > deadline)) || ! kill -0 "$MINISTACK_PID" 2>/dev/null; then
      tail -20 "$OUT/ministack.log"
      fail "MiniStack did not start"
      return
    fi
    sleep 0.5
  done
  "$MINISTACK_VENV/bin/python" "$HERE/ministack_deploy.py" "http://127.0.0.1:$port" >"$log" 2>&1
  cat "$log"
  count_ministack_checks "$log" "MiniStack deployment script"
  if [[ -n "$SAM_BUILT" ]]; then
    sam_deploy_to_ministack "$port"
  else
    skip "sam deploy to MiniStack (no sam build output)"
  fi
  kill "$MINISTACK_PID" 2>/dev/null
  wait "$MINISTACK_PID" 2>/dev/null
  MINISTACK_PID=
}

# systemd-analyze verify on the unit, with the streamer binary (not installed here)
# replaced by /bin/true; any message (unknown key, bad value) fails the step.
systemd_verify() {
  local dir="$OUT/systemd" messages
  mkdir -p "$dir"
  sed 's#/usr/local/bin/streamer#/bin/true#' "$ROOT/infra/ec2/walcast-streamer.service" >"$dir/walcast-streamer.service"
  messages=$(cd "$dir" && systemd-analyze verify ./walcast-streamer.service 2>&1) || { echo "$messages"; return 1; }
  [[ -z "$messages" ]] || { echo "$messages"; return 1; }
}

sam_validate() {
  (cd "$ROOT" && "$SAM_VENV/bin/sam" validate --lint --template-file template.yaml --region eu-west-1)
}

# ---------------------------------------------------------------------------- tools
say "tools ($TOOLS)"
if ! make_venv "$VENV" "${LINT_REQUIREMENTS[@]}"; then
  fail "install ${LINT_REQUIREMENTS[*]}"
  echo
  echo "$passed passed, $failed failed"
  exit 1
fi
"$VENV/bin/cfn-lint" --version
"$VENV/bin/checkov" --version | sed 's/^/checkov /'
have_sam=1
if ! make_venv "$SAM_VENV" "${SAM_REQUIREMENTS[@]}"; then
  have_sam=0
  echo "could not install ${SAM_REQUIREMENTS[*]}; sam validate will be skipped" >&2
fi
have_ministack=1
if ! bash "$HERE/install-ministack.sh" >/dev/null; then
  have_ministack=0
  echo "could not install MiniStack (install-ministack.sh); the MiniStack deployment will be skipped" >&2
fi

# ---------------------------------------------------------------------------- checks
step "cfn-lint template.yaml" bash -c "cd '$ROOT' && '$VENV/bin/cfn-lint' template.yaml"

step "SAM transform (aws-sam-translator, offline)" \
  "$VENV/bin/python" "$HERE/translate.py" --template "$ROOT/template.yaml" --out "$OUT/translated.json"

run_unittests

step "checkov template.yaml (defaults)" checkov_scan "$ROOT/template.yaml" cloudformation

mkdir -p "$OUT/sam" "$OUT/cfn"
if "$VENV/bin/python" "$HERE/translate.py" --no-transform --bake-defaults --out "$OUT/sam/template-all-on.json" "${ALL_ON[@]}" &&
  "$VENV/bin/python" "$HERE/translate.py" --bake-defaults --out "$OUT/cfn/translated-all-on.json" "${ALL_ON[@]}"; then
  step "checkov template.yaml (every resource on)" checkov_scan "$OUT/sam/template-all-on.json" cloudformation
  step "checkov translated template (every resource on)" checkov_scan "$OUT/cfn/translated-all-on.json" cloudformation
  step "every checkov skip in template.yaml is used, with its reason" checkov_skips_are_used "$OUT/sam/template-all-on.json"
else
  fail "write the every-resource-on variants"
fi

step "checkov infra/Dockerfile" checkov_scan "$ROOT/infra/Dockerfile" dockerfile

if command -v systemd-analyze >/dev/null; then
  step "systemd-analyze verify infra/ec2/walcast-streamer.service" systemd_verify
else
  skip "systemd-analyze verify (systemd-analyze not installed)"
fi

if ((have_sam)); then
  step "sam validate --lint" sam_validate
else
  skip "sam validate --lint (aws-sam-cli not installable here)"
fi

sam_build

if ((have_ministack)); then
  ministack_deploy
else
  skip "MiniStack deployment (ministack not installable here)"
fi

echo
if ((skipped)); then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
((failed == 0))
