#!/usr/bin/env bash
# Delivery at a region's round-trip time: the streamer to the emulator (fauxqs) through a
# proxy that adds RTT to every request (bench/src/proxy.rs), beside a plain SDK loop of
# SendMessageBatch through the same proxy (the ceiling), for each RTT.
#
#   bash bench/latency.sh                        # RTTS="0 5 15 30", 20,000 rows, 4,000 hot updates, 3 runs
#   RTTS="15" ROWS=100000 HOT=10000 RUNS=3 bash bench/latency.sh
#
# Scenarios (each WAL written once; one slot per RTT, sink and run, so every run decodes the same WAL):
#   - distinct rows: ROWS rows inserted in one transaction → FIFO queue (a group per row);
#   - hot rows: HOT updates over 5 rows in one transaction → FIFO queue (5 groups);
#   - distinct rows → standard queue; distinct rows → standard SNS topic;
#   - latency: a steady LAT_RATE (5,000) single-row inserts/s (pgbench --rate) for LATENCY_SECS through
#     the proxy at LAT_RTT ms (default 15; LATENCY_SECS=0 skips it): p50/p99 commit → accepted.
# events/s = events / (streamer start → --until-lsn reached), the median of RUNS runs; the
# ceilings (8 and 128 calls in flight: the old fixed number and the sink's widest window) are
# medians too. Peak RSS: the highest of the streamer's runs. Results: a markdown table on
# stdout, appended to bench/results.md with the date, the commit and the load.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
RTTS="${RTTS:-0 5 15 30}"
ROWS="${ROWS:-20000}"
HOT="${HOT:-4000}"
RUNS="${RUNS:-3}"
LAT_RTT="${LAT_RTT:-15}"
LATENCY_SECS="${LATENCY_SECS:-20}"
LAT_RATE="${LAT_RATE:-5000}"
# The 8-in-flight ceiling is slow at high RTT: it sends at most this many.
CEIL8_MSGS="${CEIL8_MSGS:-20000}"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# BUILD=0 uses the release binaries as they are (e.g. after a change to tests only).
[ "${BUILD:-1}" = 0 ] || cargo build -q --release -p walcast-streamer --bin streamer -p walcast-bench --bin sqs-ceiling --bin latency-proxy
target="${CARGO_TARGET_DIR:-$root/target}"
streamer="$target/release/streamer"
ceiling="$target/release/sqs-ceiling"
proxy_bin="$target/release/latency-proxy"
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
all_rtts="$(printf '%s\n' $RTTS $([ "$LATENCY_SECS" != 0 ] && echo "$LAT_RTT") | sort -un)"
for rtt in $all_rtts; do
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
median() { python3 -c "import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
# Peak RSS in KiB over every streamer run (each leaves its /usr/bin/time output in $work/*.rss).
peak_rss_kib() { cat "$work"/*.rss 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -n 1; }

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
  /usr/bin/time -f "%M" -o "$work/$1.rss" "$streamer" run --config "$work/$1.yaml" --until-lsn "$endpos" \
    >/dev/null 2>"$work/$1.log"
  elapsed_of "$work/$1.log"
}
# ceiling ENDPOINT MESSAGES CONCURRENCY: seconds of a plain SendMessageBatch loop to a new FIFO queue.
ceiling_secs() {
  local q s
  q="$("$ceiling" --endpoint "$emulator" create "lat-ceil-$(date +%s%N).fifo")"
  s="$("$ceiling" --endpoint "$1" send --queue-url "$q" --messages "$2" --size 400 --concurrency "$3" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')"
  "$ceiling" --endpoint "$emulator" delete "$q"
  echo "$s"
}
creds="access_key_id: test, secret_access_key: test, region: us-east-1"

: > "$work/rows.tsv"
slots=(); for rtt in $RTTS; do for r in $(seq "$RUNS"); do slots+=("fifo_${rtt}_$r" "std_${rtt}_$r" "sns_${rtt}_$r"); done; done
prepare "distinct rows: 1 txn × $ROWS" "$SMALL" \
  "INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, $ROWS) i" "${slots[@]}"
ceil8_n=$(( ROWS < CEIL8_MSGS ? ROWS : CEIL8_MSGS ))
for rtt in $RTTS; do
  ep="${endpoint[$rtt]}"
  f=(); s=(); n=(); c8=(); c128=()
  for r in $(seq "$RUNS"); do
    fifo="$("$ceiling" --endpoint "$emulator" create "lat-$rtt-$(date +%s%N).fifo")"
    std="$("$ceiling" --endpoint "$emulator" create "lat-$rtt-$(date +%s%N)")"
    topic="$("$ceiling" --endpoint "$emulator" create-topic "lat-$rtt-$(date +%s%N)")"
    f+=("$(run_streamer "fifo_${rtt}_$r" "{type: sqs, queue_url: \"$fifo\", endpoint_url: \"$ep\", $creds}")")
    s+=("$(run_streamer "std_${rtt}_$r" "{type: sqs, queue_url: \"$std\", endpoint_url: \"$ep\", $creds}")")
    n+=("$(run_streamer "sns_${rtt}_$r" "{type: sns, topic_arn: \"$topic\", endpoint_url: \"$ep\", $creds}")")
    c8+=("$(ceiling_secs "$ep" "$ceil8_n" 8)")
    c128+=("$(ceiling_secs "$ep" "$ROWS" 128)")
    for q in "$fifo" "$std"; do "$ceiling" --endpoint "$emulator" delete "$q"; done
  done
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rtt" "$(rate "$ROWS" "$(median "${f[@]}")")" \
    "$(rate "$ROWS" "$(median "${s[@]}")")" "$(rate "$ROWS" "$(median "${n[@]}")")" \
    "$(rate "$ceil8_n" "$(median "${c8[@]}")")" "$(rate "$ROWS" "$(median "${c128[@]}")")" >> "$work/rows.tsv"
done

: > "$work/hot.tsv"
slots=(); for rtt in $RTTS; do for r in $(seq "$RUNS"); do slots+=("hot_${rtt}_$r"); done; done
prepare "hot rows: $HOT updates over 5 rows, 1 txn" "$SMALL; INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, 5) i" \
  "DO \$\$ BEGIN FOR i IN 1..$HOT LOOP UPDATE bench_t SET n = n + 1 WHERE id = 1 + i % 5; END LOOP; END \$\$" "${slots[@]}"
for rtt in $RTTS; do
  h=()
  for r in $(seq "$RUNS"); do
    fifo="$("$ceiling" --endpoint "$emulator" create "hot-$rtt-$(date +%s%N).fifo")"
    h+=("$(run_streamer "hot_${rtt}_$r" "{type: sqs, queue_url: \"$fifo\", endpoint_url: \"${endpoint[$rtt]}\", $creds}")")
    "$ceiling" --endpoint "$emulator" delete "$fifo"
  done
  printf '%s\t%s\n' "$rtt" "$(rate "$HOT" "$(median "${h[@]}")")" >> "$work/hot.tsv"
done

# Latency: a steady LAT_RATE (5,000) single-row inserts/s, the streamer live on a FIFO queue through the proxy.
latency=""
if [ "$LATENCY_SECS" != 0 ]; then
  echo "== latency at $LAT_RATE changes/s for ${LATENCY_SECS}s, RTT $LAT_RTT ms" >&2
  psql -c "DROP TABLE IF EXISTS bench_t CASCADE" -c "$SMALL" -c "DROP SEQUENCE IF EXISTS bench_seq" \
    -c "CREATE SEQUENCE bench_seq" -c "DROP PUBLICATION IF EXISTS bench_p" \
    -c "CREATE PUBLICATION bench_p FOR TABLE bench_t" >/dev/null 2>&1
  echo "INSERT INTO bench_t (id, name, email, n, amount, payload) VALUES (nextval('bench_seq'), 'n', 'e@example.com', 1, 1.50, repeat('x', 80));" > "$work/single.sql"
  http_port="$(free_port)"
  lat_q="$("$ceiling" --endpoint "$emulator" create "lat-live-$(date +%s%N).fifo")"
  cat > "$work/lat.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: bench_lat, publication: bench_p, tables: [bench_t]}
sink: {type: sqs, queue_url: "$lat_q", endpoint_url: "${endpoint[$LAT_RTT]}", $creds}
http: {listen: "127.0.0.1:$http_port"}
log: {format: json}
YAML
  "$streamer" run --config "$work/lat.yaml" >/dev/null 2>"$work/lat.log" &
  lat_pid=$!
  pids+=("$lat_pid")
  for _ in $(seq 200); do WALCAST_HTTP_LISTEN="127.0.0.1:$http_port" "$streamer" healthz >/dev/null 2>&1 && break; sleep 0.1; done
  pgbench -n -c 4 -j 2 -R "$LAT_RATE" -T "$LATENCY_SECS" -f "$work/single.sql" > "$work/pgbench-lat.log" 2>&1 || true
  metric() { python3 -c "import sys, urllib.request; m = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/metrics').read().decode(); print([l.split()[-1] for l in m.splitlines() if l.startswith(sys.argv[2] + ' ')][0])" "$http_port" "$1"; }
  for _ in $(seq 100); do [ "$(metric walcast_events_in_flight)" = 0 ] && break; sleep 0.1; done
  lat="$(python3 "$root/bench/histogram.py" "$http_port" | awk -F'\t' '{printf "%s events, p50 %s ms, p99 %s ms", $1, $2, $3}')"
  # Its peak RSS before it stops (the kernel's high-water mark), in KiB.
  awk '/^VmHWM/ {print $2}' "/proc/$lat_pid/status" > "$work/lat.rss"
  kill -TERM "$lat_pid"; wait "$lat_pid" || true
  tps="$(grep -Eo 'tps = [0-9]+' "$work/pgbench-lat.log" | head -1 | cut -d' ' -f3)"
  latency="Latency, commit → accepted, at a steady ${tps:-?} changes/s (pgbench --rate $LAT_RATE, 4 clients, single-row inserts) to a FIFO queue through the proxy at $LAT_RTT ms for ${LATENCY_SECS}s: **$lat** (interpolated in the streamer's histogram buckets; commit time is Postgres's clock, same machine)."
fi

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- streamer bench || echo '+changes')"
table=$(
  echo "Delivery through a proxy adding RTT per request (fauxqs behind it), events/s, medians of $RUNS runs; $ROWS distinct rows in one transaction, $HOT updates of 5 hot rows in one transaction; ceilings: a plain SendMessageBatch loop (10 per call) to a FIFO queue through the same proxy, 8 and 128 calls in flight. Commit $commit; load average $load_before before, $load_after after (2 cores). Streamer peak RSS over all runs: $(( $(peak_rss_kib || echo 0) / 1024 )) MiB."
  echo
  echo "| RTT ms | FIFO, distinct rows | standard queue | SNS standard topic | FIFO, 5 hot rows | SDK loop, 8 in flight | SDK loop, 128 in flight |"
  echo "|---|---|---|---|---|---|---|"
  paste "$work/rows.tsv" "$work/hot.tsv" | while IFS=$'\t' read -r rtt f s n c8 c128 _ h; do
    echo "| $rtt | $f | $s | $n | $h | $c8 | $c128 |"
  done
  [ -n "$latency" ] && { echo; echo "$latency"; }
)
echo "$table"
{ echo; echo "## Delivery at round-trip times (${BENCH_DATE:-$(date -u +%Y-%m-%d)})"; echo; echo "$table"; } >> bench/results.md
