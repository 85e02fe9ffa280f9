#!/usr/bin/env bash
# Runs the whole pipeline locally, no AWS account and no Docker:
#
#   throwaway Postgres (wal_level=logical, sample schema)
#     → streamer (one slot, walcast) ─┬─ sink local_sqs → SQS FIFO queue → event source mapping → consumer-sqs
#                                     └─ sink local_sns → SNS topic → subscription             → consumer-sns
#
# The queue, topic, functions, mappings and DLQs come from the project's own template.yaml,
# deployed to MiniStack (a local AWS emulator, PyPI `ministack`) on 127.0.0.1; the functions
# are this checkout's consumer-sqs and consumer-sns, built for the host (MiniStack runs the
# provided.al2023 bootstrap as a local process and ignores the template's arm64). Applies
# sample writes, then shows what the handlers received and logged. Leaves it running for
# your own writes (it prints the psql line); Ctrl-C stops everything and removes the scratch
# directory.
#
#   infra/local.sh [--path sqs|sns|both]      (default both; one streamer, one sink per path)
#
# Demo-only deployment settings, printed as notices when applied:
#   - CreatePublisherUser=false: MiniStack 1.5.33 has no AWS::IAM::AccessKey; the
#     streamer uses MiniStack's test credentials instead of the publisher user.
#   - RUST_LOG=info,lambda_runtime=trace and AWS_LAMBDA_LOG_FORMAT=JSON on the deployed
#     functions (UpdateFunctionConfiguration, the template is unchanged): the Lambda
#     runtime then logs each raw event, which is what "received:" shows. That logs row
#     values: never do it in production.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

path=both
while [ $# -gt 0 ]; do
  case "$1" in
    --path) path="${2:-}"; shift 2 ;;
    --path=*) path="${1#--path=}"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "local.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$path" in
  sqs) delivery=SQS ;; sns) delivery=SNS ;; both) delivery=Both ;;
  *) echo "local.sh: --path must be sqs, sns or both, not '$path'" >&2; exit 2 ;;
esac

started=$SECONDS
step() { printf '[%4d s] %s\n' "$((SECONDS - started))" "$*"; }
step "installing what is missing: Postgres 15, MiniStack (infra/setup.sh --local)…"
bash infra/setup.sh --local >/dev/null
venv="$(bash infra/template/install-ministack.sh)"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Debug builds: they share the target directory with `cargo test`, and a debug bootstrap
# starts in milliseconds here. On a terminal cargo shows its progress bar; elsewhere
# (CI, a log file) it stays quiet and the step lines give the time.
step "building the streamer and the consumer functions (the first build takes a few minutes)…"
quiet=-q
[ -t 2 ] && quiet=
cargo build $quiet -p walcast-streamer -p consumer-sqs -p consumer-sns --bins
build="${CARGO_TARGET_DIR:-$root/target}/debug"
step "built"

work="$(mktemp -d /tmp/walcast-local.XXXXXX)"
port="$(free_port)"
aws_port="$(free_port)"
endpoint="http://127.0.0.1:$aws_port"
[ "$(id -u)" = 0 ] && chown postgres "$work"
pids=()       # streamers and log followers
ministack_pid=""
cleanup() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # MiniStack stops the function processes it started when it gets SIGTERM.
  if [ -n "$ministack_pid" ]; then kill -TERM "$ministack_pid" 2>/dev/null && wait "$ministack_pid" 2>/dev/null || true; fi
  run_pg "$bin/pg_ctl" -D "$work/data" stop -m fast >/dev/null 2>&1 || true
  # MiniStack's code cache is under $work/tmp (TMPDIR below); the /tmp one is where an
  # emulator that ignored TMPDIR would have put it.
  rm -rf "$work" "/tmp/ministack-provided-code-$aws_port"
  echo "stopped; removed $work"
}
# A signal stops everything and ends the script (the watch loop below must not carry on).
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# ---------------------------------------------------------------- Postgres
step "starting Postgres on 127.0.0.1:$port (scratch directory $work)…"
run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical" start >/dev/null
psql=(psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres)
"${psql[@]}" <<'SQL'
CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users, total numeric(12,2), status text);
ALTER TABLE orders REPLICA IDENTITY FULL;
SQL

# ---------------------------------------------------------------- MiniStack + template.yaml
# TMPDIR inside the scratch directory: MiniStack unpacks each function's code into
# $TMPDIR/ministack-provided-code-<port> (18-34 MB) and never removes it; there it goes
# with the rest on exit.
step "starting MiniStack on $endpoint…"
mkdir -p "$work/ministack" "$work/tmp"
(cd "$work/ministack" && TMPDIR="$work/tmp" BIND_HOST=127.0.0.1 GATEWAY_PORT=$aws_port MINISTACK_REGION=eu-west-1 \
  LOG_LEVEL=WARNING exec "$venv/bin/ministack" >"$work/ministack.log" 2>&1) &
ministack_pid=$!
deadline=$((SECONDS + 60))
until "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('$endpoint/_ministack/health', timeout=2)" 2>/dev/null; do
  if ((SECONDS > deadline)) || ! kill -0 "$ministack_pid" 2>/dev/null; then
    tail -20 "$work/ministack.log" >&2
    echo "local.sh: MiniStack did not start" >&2
    exit 1
  fi
  sleep 0.5
done

step "deploying template.yaml (DeliveryPath=$delivery) with this checkout's functions…"
echo "notice: deploying template.yaml with CreatePublisherUser=false (MiniStack has no AWS::IAM::AccessKey);"
echo "notice: the functions get RUST_LOG=info,lambda_runtime=trace so their logs show each raw event (demo only)"
demo_env=(RUST_LOG=info,lambda_runtime=trace AWS_LAMBDA_LOG_FORMAT=JSON)
deploy_args=(deploy "$endpoint" walcast-local --param CreatePublisherUser=false --param "DeliveryPath=$delivery"
  --code "ConsumerSqsFunction=$build/consumer-sqs" --code "ConsumerSnsFunction=$build/consumer-sns")
for e in "${demo_env[@]}"; do deploy_args+=(--env "ConsumerSqsFunction:$e" --env "ConsumerSnsFunction:$e"); done
if ! (cd "$work" && AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  "$venv/bin/python" "$root/infra/template/ministack_local.py" "${deploy_args[@]}" >"$work/stack.json" 2>"$work/deploy.log"); then
  cat "$work/deploy.log" >&2
  exit 1
fi
output() { python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$work/stack.json" "$1"; }

# ---------------------------------------------------------------- streamer
# One streamer, one slot: Postgres decodes the WAL once, and each path is a sink of it.
kinds=()
[ "$delivery" != SNS ] && kinds+=(sqs)
[ "$delivery" != SQS ] && kinds+=(sns)
config="$work/streamer.yaml"
cat >"$config" <<YAML
source:
  url: postgres://postgres@127.0.0.1:$port/postgres
  tables: [public.users, public.orders]
  slot: walcast
  publication: walcast
  name: local-demo
sinks:
YAML
for kind in "${kinds[@]}"; do
  cat >>"$config" <<YAML
  - name: local_$kind
    type: $kind
    $(if [ "$kind" = sqs ]; then echo "queue_url: $(output QueueUrl)"; else echo "topic_arn: $(output TopicArn)"; fi)
    endpoint_url: $endpoint
    region: eu-west-1
    access_key_id: test
    secret_access_key: test
YAML
done
follow_logs() { # follow_logs LOG_GROUP PREFIX
  "$venv/bin/python" "$root/infra/template/ministack_local.py" logs "$endpoint" "$1" --follow --readable --prefix "$2" &
  pids+=($!)
}
step "starting the streamer: one slot, sinks ${kinds[*]/#/local_}…"
"$build/streamer" run --config "$config" >"$work/streamer.log" 2>&1 &
pids+=($!)
# Wait until it streams (it creates the slot and the publication when missing).
deadline=$((SECONDS + 30))
until [ "$("${psql[@]}" -Atc "SELECT count(*) FROM pg_replication_slots WHERE active")" = 1 ]; do
  if ((SECONDS > deadline)); then
    tail -n 20 "$work/streamer.log" >&2
    echo "local.sh: the streamer did not start streaming" >&2
    exit 1
  fi
  sleep 0.3
done
[ "$delivery" != SNS ] && follow_logs "$(output ConsumerSqsFunctionLogGroup)" "consumer-sqs | "
[ "$delivery" != SQS ] && follow_logs "$(output ConsumerSnsFunctionLogGroup)" "consumer-sns | "

# ---------------------------------------------------------------- sample writes
step "applying sample writes: insert, update, a multi-row transaction, delete…"
echo "note: users has REPLICA IDENTITY DEFAULT, so its update arrives with \"changes\":{}: Postgres writes"
echo "      no old row for it (nothing to compare, not \"nothing changed\"); orders is FULL, so its update"
echo "      carries the old status in \"changes\" (docs/change-event.md, \"record and changes by replica identity\")."
if [ "$delivery" != SQS ]; then
  echo "note: SNS → Lambda keeps no order: consumer-sns may log a row's delete before its insert. Each event"
  echo "      carries its position (commit_lsn, commit_idx) for consumers to sort that out (README \"Guarantees\")."
fi
"${psql[@]}" <<'SQL'
INSERT INTO users (name, email) VALUES ('alice', 'alice@example.com');
UPDATE users SET name = 'alicia' WHERE id = 1;
BEGIN;
INSERT INTO users (name) VALUES ('bob');
INSERT INTO orders (user_id, total, status) VALUES (2, 19.99, 'new');
UPDATE orders SET status = 'paid' WHERE id = 1;
COMMIT;
DELETE FROM orders WHERE id = 1;
SQL
sleep 3
echo
echo "Up in $((SECONDS - started)) s. Handlers' logs stream above (\"received:\" is each event as delivered)."
echo "Write to the database and watch them:"
echo "  psql -h 127.0.0.1 -p $port -U postgres -d postgres"
echo "  (an order with a negative total is rejected by the example handlers: consumer-sqs retries it,"
echo "   then the queue moves it to the DLQ after 5 receives, ~15 min with the template's 180 s visibility timeout)"
echo "Backfill the rows the tables already hold (read events reach every sink's handler):"
echo "  $build/streamer backfill --config $config public.users public.orders"
echo "AWS endpoint (MiniStack): $endpoint   stack outputs: $work/stack.json"
echo "streamer log: $work/streamer.log   MiniStack log: $work/ministack.log"
echo "Ctrl-C to stop."
while :; do
  for pid in "${pids[@]}" "$ministack_pid"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "local.sh: a process of the pipeline exited (pid $pid); see the logs in $work" >&2
      tail -n 20 "$work/streamer.log" >&2
      exit 1
    fi
  done
  sleep 1
done
