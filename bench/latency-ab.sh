#!/usr/bin/env bash
# The latency scenario of bench/latency.sh (a steady RATE single-row inserts/s, pgbench -c 4,
# for SECS seconds, to a FIFO queue on fauxqs through the proxy at RTT ms) for several streamer
# binaries taking turns in one run, ROUNDS times: an A/B of two builds under the same load.
# One line per run (p50/p99 commit -> accepted in ms, peak RSS, streamer CPU, load) on stdout
# and in $OUT/summary.tsv; the streamers' logs stay in $OUT (PROBE_LOG sets their RUST_LOG,
# e.g. walcast_streamer::sink::aws=debug for the sink's stats; PERF=1 records 10 s of perf).
# Nothing is appended to results.md. Needs the bench binaries built (bench/latency.sh does).
#
#   STREAMERS="old=/tmp/streamer-e19b840 new=target/release/streamer" ROUNDS=3 bash bench/latency-ab.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
RATE="${RATE:-5000}"; SECS="${SECS:-20}"; RTT="${RTT:-15}"; OUT="${OUT:-$(mktemp -d /tmp/walcast-lat-ab.XXXXXX)}"
mkdir -p "$OUT"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
target="${CARGO_TARGET_DIR:-$root/target}"
ceiling="$target/release/sqs-ceiling"; proxy_bin="$target/release/latency-proxy"
fauxqs="$(bash infra/install-emulator.sh | tail -n 1)"
work="$(mktemp -d /tmp/walcast-probe.XXXXXX)"; [ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(free_port)"; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; run_pg "$bin/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off -c max_replication_slots=64 -c max_wal_senders=16" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
sqs_port="$(free_port)"; emulator="http://127.0.0.1:$sqs_port"
NODE_OPTIONS=--max-old-space-size=8192 FAUXQS_PORT=$sqs_port FAUXQS_HOST=localhost FAUXQS_LOGGER=false "$fauxqs" >"$work/fauxqs.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do "$ceiling" --endpoint "$emulator" create bench-probe >/dev/null 2>&1 && break; sleep 0.1; done
"$proxy_bin" --upstream "127.0.0.1:$sqs_port" --rtt-ms "$RTT" > "$work/proxy.addr" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/proxy.addr" ] && break; sleep 0.05; done
ep="http://$(head -n 1 "$work/proxy.addr")"
creds="access_key_id: test, secret_access_key: test, region: us-east-1"
SMALL="CREATE TABLE bench_t (id bigint PRIMARY KEY, name text, email text, n int, amount numeric(12,2), created timestamptz DEFAULT now(), payload text)"
psql -c "$SMALL" -c "CREATE SEQUENCE bench_seq" -c "CREATE PUBLICATION bench_p FOR TABLE bench_t" >/dev/null 2>&1
echo "INSERT INTO bench_t (id, name, email, n, amount, payload) VALUES (nextval('bench_seq'), 'n', 'e@example.com', 1, 1.50, repeat('x', 80));" > "$work/single.sql"
for round in $(seq "${ROUNDS:-1}"); do
for spec in $STREAMERS; do
  name="${spec%%=*}"; exe="${spec#*=}"
  http_port="$(free_port)"
  q="$("$ceiling" --endpoint "$emulator" create "lat-$name-$(date +%s%N).fifo")"
  cat > "$work/$name.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: lat_${name}_$round, publication: bench_p, tables: [bench_t]}
sink: {type: sqs, queue_url: "$q", endpoint_url: "$ep", $creds}
http: {listen: "127.0.0.1:$http_port"}
log: {format: json}
YAML
  RUST_LOG="${PROBE_LOG:-info}" "$exe" run --config "$work/$name.yaml" >/dev/null 2>"$OUT/$name-$round.log" &
  sp=$!; pids+=("$sp")
  for _ in $(seq 200); do WALCAST_HTTP_LISTEN="127.0.0.1:$http_port" "$exe" healthz >/dev/null 2>&1 && break; sleep 0.1; done
  l0="$(cut -d' ' -f1 /proc/loadavg)"
  [ -n "${PERF:-}" ] && { perf record -F 499 --call-graph dwarf,16384 -p "$sp" -o "$OUT/perf-$name-$round.data" -- sleep 10 >/dev/null 2>&1 & }
  pgbench -n -c 4 -j 2 -R "$RATE" -T "$SECS" -f "$work/single.sql" > "$OUT/pgbench-$name-$round.log" 2>&1 || true
  metric() { python3 -c "import sys, urllib.request; m = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/metrics').read().decode(); print([l.split()[-1] for l in m.splitlines() if l.startswith(sys.argv[2] + ' ')][0])" "$http_port" "$1"; }
  for _ in $(seq 300); do [ "$(metric walcast_events_in_flight)" = 0 ] && break; sleep 0.1; done
  lat="$(python3 "$root/bench/histogram.py" "$http_port")"
  rss="$(awk '/^VmHWM/ {print $2}' "/proc/$sp/status")"
  cpu="$(awk '{print ($14+$15)/100}' /proc/$sp/stat)"
  kill -TERM "$sp"; wait "$sp" || true
  tps="$(grep -Eo 'tps = [0-9.]+' "$OUT/pgbench-$name-$round.log" | head -1 | cut -d' ' -f3)"
  printf '%s\tround %s\ttps %s\t%s\trss_kib %s\tcpu_s %s\tload %s→%s\n' "$name" "$round" "$tps" "$lat" "$rss" "$cpu" "$l0" "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT/summary.tsv"
  psql -c "SELECT pg_drop_replication_slot('lat_${name}_$round')" >/dev/null 2>&1 || true
done
done
