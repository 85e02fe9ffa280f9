#!/usr/bin/env bash
# Delivery at a region's round-trip time: the streamer to the emulator (fauxqs) through a
# proxy that adds RTT to every request (bench/src/proxy.rs), beside a plain SDK loop of
# SendMessageBatch through the same proxy (the ceiling), for each RTT.
#
#   bash bench/latency.sh                        # RTTS="0 5 15 30", 20,000 rows, 4,000 hot updates
#   RTTS="15" ROWS=5000 HOT=1000 bash bench/latency.sh
#
# Scenarios (each WAL written once; one slot per RTT and sink, so every run decodes the same WAL):
#   - distinct rows: ROWS rows inserted in one transaction → FIFO queue (a group per row);
#   - hot rows: HOT updates over 5 rows in one transaction → FIFO queue (5 groups);
#   - distinct rows → standard queue; distinct rows → standard SNS topic.
# events/s = events / (streamer start → --until-lsn reached). Results: a markdown table on
# stdout, appended to bench/results.md with the date.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
RTTS="${RTTS:-0 5 15 30}"
ROWS="${ROWS:-20000}"
HOT="${HOT:-4000}"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build -q --release -p walcast-streamer --bin streamer -p walcast-bench --bin sqs-ceiling --bin latency-proxy
streamer="$root/target/release/streamer"
ceiling="$root/target/release/sqs-ceiling"
proxy_bin="$root/target/release/latency-proxy"
fauxqs="$(bash infra/install-emulator.sh | tail -n 1)"

work="$(mktemp -d /tmp/walcast-bench-lat.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(free_port)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  run_pg "$bin/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off \
   -c max_replication_slots=64 -c max_wal_senders=16" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

sqs_port="$(free_port)"
emulator="http://127.0.0.1:$sqs_port"
NODE_OPTIONS=--max-old-space-size=8192 FAUXQS_PORT=$sqs_port FAUXQS_HOST=localhost FAUXQS_LOGGER=false \
  "$fauxqs" >"$work/fauxqs.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do "$ceiling" --endpoint "$emulator" create bench-probe >/dev/null 2>&1 && break; sleep 0.1; done

# One proxy per RTT, started once: endpoint[rtt] is what the SDKs talk to.
declare -A endpoint
for rtt in $RTTS; do
  "$proxy_bin" --upstream "127.0.0.1:$sqs_port" --rtt-ms "$rtt" > "$work/proxy-$rtt.addr" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/proxy-$rtt.addr" ] && break; sleep 0.05; done
  endpoint[$rtt]="http://$(head -n 1 "$work/proxy-$rtt.addr")"
done

elapsed_of() {
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if "elapsed_ms" in j:
        print(j["elapsed_ms"] / 1000)
PY
}
rate() { python3 -c "import sys; n, s = float(sys.argv[1]), float(sys.argv[2]); print(f'{n / s:,.0f}' if s > 0 else '–')" "$1" "$2"; }

SMALL="CREATE TABLE bench_t (id bigint PRIMARY KEY, name text, email text, n int, amount numeric(12,2), created timestamptz DEFAULT now(), payload text)"
SMALL_ROW="'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, now(), repeat('x', 80)"

# prepare NAME SETUP_SQL WORKLOAD_SQL SLOT…: table, publication, slots, then the workload;
# sets $endpos and $events.
prepare() {
  local name="$1" setup="$2" workload="$3"; shift 3
  echo "== $name" >&2
  psql -c "DROP TABLE IF EXISTS bench_t CASCADE" -c "$setup" >/dev/null 2>&1
  psql -c "DROP PUBLICATION IF EXISTS bench_p" -c "CREATE PUBLICATION bench_p FOR TABLE bench_t" >/dev/null 2>&1
  for s in "$@"; do
    psql -c "SELECT pg_drop_replication_slot('$s') FROM pg_replication_slots WHERE slot_name = '$s'" >/dev/null
    psql -c "SELECT pg_create_logical_replication_slot('$s', 'pgoutput')" >/dev/null
  done
  psql -c "$workload" >/dev/null
  endpos="$(psql -At -c "SELECT pg_current_wal_insert_lsn()")"
}

# run_streamer SLOT SINK_YAML: seconds until --until-lsn.
run_streamer() {
  cat > "$work/$1.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: $1, publication: bench_p, tables: [bench_t]}
sink: $2
log: {format: json}
YAML
  "$streamer" run --config "$work/$1.yaml" --until-lsn "$endpos" >/dev/null 2>"$work/$1.log"
  elapsed_of "$work/$1.log"
}
creds="access_key_id: test, secret_access_key: test, region: us-east-1"

: > "$work/rows.tsv"
slots=(); for rtt in $RTTS; do slots+=("fifo_$rtt" "std_$rtt" "sns_$rtt"); done
prepare "distinct rows: 1 txn × $ROWS" "$SMALL" \
  "INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, $ROWS) i" "${slots[@]}"
for rtt in $RTTS; do
  ep="${endpoint[$rtt]}"
  fifo="$("$ceiling" --endpoint "$emulator" create "lat-$rtt-$(date +%s%N).fifo")"
  std="$("$ceiling" --endpoint "$emulator" create "lat-$rtt-$(date +%s%N)")"
  topic="$("$ceiling" --endpoint "$emulator" create-topic "lat-$rtt-$(date +%s%N)")"
  ceil_q="$("$ceiling" --endpoint "$emulator" create "lat-ceil-$rtt-$(date +%s%N).fifo")"
  f_s="$(run_streamer "fifo_$rtt" "{type: sqs, queue_url: \"$fifo\", endpoint_url: \"$ep\", $creds}")"
  s_s="$(run_streamer "std_$rtt" "{type: sqs, queue_url: \"$std\", endpoint_url: \"$ep\", $creds}")"
  n_s="$(run_streamer "sns_$rtt" "{type: sns, topic_arn: \"$topic\", endpoint_url: \"$ep\", $creds}")"
  c_s="$("$ceiling" --endpoint "$ep" send --queue-url "$ceil_q" --messages "$ROWS" --size 400 | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')"
  printf '%s\t%s\t%s\t%s\t%s\n' "$rtt" "$(rate "$ROWS" "$f_s")" "$(rate "$ROWS" "$s_s")" \
    "$(rate "$ROWS" "$n_s")" "$(rate "$ROWS" "$c_s")" >> "$work/rows.tsv"
  for q in "$fifo" "$std" "$ceil_q"; do "$ceiling" --endpoint "$emulator" delete "$q"; done
done

: > "$work/hot.tsv"
slots=(); for rtt in $RTTS; do slots+=("hot_$rtt"); done
prepare "hot rows: $HOT updates over 5 rows, 1 txn" "$SMALL; INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, 5) i" \
  "DO \$\$ BEGIN FOR i IN 1..$HOT LOOP UPDATE bench_t SET n = n + 1 WHERE id = 1 + i % 5; END LOOP; END \$\$" "${slots[@]}"
for rtt in $RTTS; do
  fifo="$("$ceiling" --endpoint "$emulator" create "hot-$rtt-$(date +%s%N).fifo")"
  h_s="$(run_streamer "hot_$rtt" "{type: sqs, queue_url: \"$fifo\", endpoint_url: \"${endpoint[$rtt]}\", $creds}")"
  printf '%s\t%s\n' "$rtt" "$(rate "$HOT" "$h_s")" >> "$work/hot.tsv"
  "$ceiling" --endpoint "$emulator" delete "$fifo"
done

table=$(
  echo "Delivery through a proxy adding RTT per request (fauxqs behind it), events/s; $ROWS distinct rows in one transaction, $HOT updates of 5 hot rows in one transaction; ceiling: a plain SendMessageBatch loop (10 per call, 8 in flight) to a FIFO queue through the same proxy:"
  echo
  echo "| RTT ms | FIFO, distinct rows | standard queue | SNS standard topic | FIFO, 5 hot rows | SDK loop ceiling (FIFO) |"
  echo "|---|---|---|---|---|---|"
  paste "$work/rows.tsv" "$work/hot.tsv" | while IFS=$'\t' read -r rtt f s n c _ h; do
    echo "| $rtt | $f | $s | $n | $h | $c |"
  done
)
echo "$table"
{ echo; echo "## Delivery at round-trip times ($(date -u +%Y-%m-%d))"; echo; echo "$table"; } >> bench/results.md
