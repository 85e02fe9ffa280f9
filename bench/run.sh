#!/usr/bin/env bash
# walcast benchmark: the streamer against Postgres's own limit and the sink's ceiling,
# side by side, in one run.
#
#   bash bench/run.sh                                # every scenario (1M-row transaction included)
#   ROWS=100000 TXNS=10000 LATENCY_SECS=10 bash bench/run.sh   # smaller
#
# For each scenario, three slots are created before the workload, so every reader decodes the
# same WAL:
#   - pg_recvlogical (pgoutput, to /dev/null): the limit;
#   - the streamer with the stdout sink (to a pipe that counts the events);
#   - the streamer with the SQS sink, to a FIFO queue of the local emulator (fauxqs), beside
#     a plain SDK loop of SendMessageBatch sending as many messages of the same average size
#     to the same emulator (bench/src/main.rs): the sink's ceiling.
# All stop at the same LSN (--endpos / --until-lsn). Then the latency run: a steady 5,000
# single-row inserts/s for LATENCY_SECS (pgbench --rate) with the streamer live on the SQS
# sink; commit → accepted is read from its /metrics histogram.
# Results: markdown tables on stdout and in bench/results.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
ROWS="${ROWS:-1000000}"
TXNS="${TXNS:-100000}"
LATENCY_SECS="${LATENCY_SECS:-20}"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build -q --release -p walcast-streamer --bin streamer -p walcast-bench --bin sqs-ceiling
target="${CARGO_TARGET_DIR:-$root/target}"
streamer="$target/release/streamer"
ceiling="$target/release/sqs-ceiling"
fauxqs="$(bash infra/install-emulator.sh | tail -n 1)"

work="$(mktemp -d /tmp/walcast-bench.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(free_port)"
fauxqs_pid=""
cleanup() {
  # Never stop half-way (set -e): an emulator that already died must not leave Postgres running.
  [ -n "$fauxqs_pid" ] && kill "$fauxqs_pid" 2>/dev/null || true
  run_pg "$bin/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_size=8GB \
   -c shared_buffers=512MB -c fsync=off -c logical_decoding_work_mem=256MB \
   -c max_replication_slots=32 -c max_wal_senders=32 -c max_connections=50" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

sqs_port="$(free_port)"
endpoint="http://127.0.0.1:$sqs_port"
# fauxqs keeps messages in memory: give Node room, and delete each scenario's queues after it.
NODE_OPTIONS=--max-old-space-size=8192 FAUXQS_PORT=$sqs_port FAUXQS_HOST=localhost FAUXQS_LOGGER=false \
  "$fauxqs" >"$work/fauxqs.log" 2>&1 &
fauxqs_pid=$!
for _ in $(seq 200); do "$ceiling" --endpoint "$endpoint" create bench-probe >/dev/null 2>&1 && break; sleep 0.1; done
# A fresh FIFO queue (called in $(…), a subshell: the name must not rely on a counter).
new_queue() { "$ceiling" --endpoint "$endpoint" create "bench-$(date +%s%N).fifo"; }
# Seconds from the streamer's start until --until-lsn was reached (from its JSON log).
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
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

: > "$work/results.tsv"
: > "$work/sqs.tsv"

# scenario NAME SETUP_SQL WORKLOAD(command)
scenario() {
  local name="$1" setup="$2" workload="$3"
  echo "== $name" >&2
  psql -c "DROP TABLE IF EXISTS bench_t CASCADE" -c "$setup" >/dev/null 2>&1
  psql -c "DROP PUBLICATION IF EXISTS bench_p" -c "CREATE PUBLICATION bench_p FOR TABLE bench_t" >/dev/null 2>&1
  for s in bench_rec bench_str bench_sqs; do
    psql -c "SELECT pg_drop_replication_slot('$s') FROM pg_replication_slots WHERE slot_name = '$s'" >/dev/null
    psql -c "SELECT pg_create_logical_replication_slot('$s', 'pgoutput')" >/dev/null
  done
  eval "$workload"
  # The insert position is at or past every commit made so far (the write position may not be).
  local endpos; endpos="$(psql -At -c "SELECT pg_current_wal_insert_lsn()")"

  # The limit: pg_recvlogical draining its slot.
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$work/rec.rss" "$bin/pg_recvlogical" -d postgres --slot bench_rec --start \
    --endpos "$endpos" --no-loop -o proto_version=1 -o publication_names=bench_p -f /dev/null
  t1=$(date +%s.%N)
  local rec_s; rec_s=$(python3 -c "print($t1 - $t0)")

  # The streamer, stdout sink, stopping at the same LSN; the pipe counts events and bytes.
  cat > "$work/cfg.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: bench_str, publication: bench_p, tables: [bench_t]}
sink: {type: stdout}
log: {format: json}
YAML
  /usr/bin/time -f "%M" -o "$work/str.rss" "$streamer" run --config "$work/cfg.yaml" --until-lsn "$endpos" \
    2>"$work/str.log" | wc -lc > "$work/str.count"
  local count bytes; read -r count bytes < "$work/str.count"
  local str_s; str_s="$(elapsed_of "$work/str.log")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$count" "$rec_s" "$(cat "$work/rec.rss")" \
    "$str_s" "$(cat "$work/str.rss")" >> "$work/results.tsv"

  # The streamer to the emulator (FIFO), then the emulator's ceiling for as many messages
  # of the same average size.
  local q1 q2; q1="$(new_queue)"; q2="$(new_queue)"
  cat > "$work/sqs.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: bench_sqs, publication: bench_p, tables: [bench_t]}
sink: {type: sqs, queue_url: "$q1", endpoint_url: "$endpoint", access_key_id: test, secret_access_key: test}
log: {format: json}
YAML
  /usr/bin/time -f "%M" -o "$work/sqs.rss" "$streamer" run --config "$work/sqs.yaml" --until-lsn "$endpos" \
    >/dev/null 2>"$work/sqs.log"
  local sqs_s; sqs_s="$(elapsed_of "$work/sqs.log")"
  local avg=$(( bytes / (count > 0 ? count : 1) ))
  local ceil_json; ceil_json="$("$ceiling" --endpoint "$endpoint" send --queue-url "$q2" --messages "$count" --size "$avg")"
  "$ceiling" --endpoint "$endpoint" delete "$q1"; "$ceiling" --endpoint "$endpoint" delete "$q2"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$count" "$sqs_s" "$(json_field "$ceil_json" seconds)" \
    "$(cat "$work/sqs.rss")" >> "$work/sqs.tsv"
}

SMALL="CREATE TABLE bench_t (id bigint PRIMARY KEY, name text, email text, n int, amount numeric(12,2), created timestamptz DEFAULT now(), payload text)"
SMALL_ROW="'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, now(), repeat('x', 80)"
BIG_ROW="'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, now(), repeat(md5(i::text), 58)"

cat > "$work/single.sql" <<'SQL'
INSERT INTO bench_t (id, name, email, n, amount, payload) VALUES (nextval('bench_seq'), 'n', 'e@example.com', 1, 1.50, repeat('x', 80));
SQL
cat > "$work/mixed.sql" <<'SQL'
\set r random(1, 10)
\set k random(1, 50000)
\if :r <= 6
INSERT INTO bench_t (id, name, email, n, amount, payload) VALUES (nextval('bench_seq'), 'n', 'e@example.com', 1, 1.50, repeat('x', 80));
\elif :r <= 9
UPDATE bench_t SET n = n + 1 WHERE id = :k;
\else
DELETE FROM bench_t WHERE id = :k;
\endif
SQL
per_client=$((TXNS / 4))

scenario "1 txn × $((ROWS / 10)) rows (~200 B)" "$SMALL" \
  "psql -c \"INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, $((ROWS / 10))) i\""
scenario "1 txn × $ROWS rows (~200 B)" "$SMALL" \
  "psql -c \"INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, $ROWS) i\""
scenario "1 txn × $((ROWS / 5)) rows (~2 KB)" "$SMALL; ALTER TABLE bench_t ALTER payload SET STORAGE PLAIN" \
  "psql -c \"INSERT INTO bench_t SELECT i, $BIG_ROW FROM generate_series(1, $((ROWS / 5))) i\""
scenario "$TXNS single-row txns, 4 clients (pgbench)" "$SMALL; DROP SEQUENCE IF EXISTS bench_seq; CREATE SEQUENCE bench_seq" \
  "pgbench -n -c 4 -j 2 -t $per_client -f $work/single.sql >/dev/null 2>&1"
scenario "$TXNS txns mixed 60/30/10 ins/upd/del (pgbench)" \
  "$SMALL; DROP SEQUENCE IF EXISTS bench_seq; CREATE SEQUENCE bench_seq START 50001; INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, 50000) i" \
  "pgbench -n -c 4 -j 2 -t $per_client -f $work/mixed.sql >/dev/null 2>&1"

# Latency: a steady 5,000 single-row inserts/s, the streamer live on the SQS sink.
echo "== latency at 5,000 changes/s for ${LATENCY_SECS}s" >&2
psql -c "DROP TABLE IF EXISTS bench_t CASCADE" -c "$SMALL" -c "DROP SEQUENCE IF EXISTS bench_seq" \
  -c "CREATE SEQUENCE bench_seq" >/dev/null 2>&1
http_port="$(free_port)"
cat > "$work/lat.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: bench_lat, publication: bench_p, tables: [bench_t]}
sink: {type: sqs, queue_url: "$(new_queue)", endpoint_url: "$endpoint", access_key_id: test, secret_access_key: test}
http: {listen: "127.0.0.1:$http_port"}
log: {format: json}
YAML
"$streamer" run --config "$work/lat.yaml" >/dev/null 2>"$work/lat.log" &
lat_pid=$!
for _ in $(seq 200); do WALCAST_HTTP_LISTEN="127.0.0.1:$http_port" "$streamer" healthz >/dev/null 2>&1 && break; sleep 0.1; done
pgbench -n -c 4 -j 2 -R 5000 -T "$LATENCY_SECS" -f "$work/single.sql" > "$work/pgbench-lat.log" 2>&1 || true
# Let the last changes arrive before reading the histogram.
for _ in $(seq 100); do
  inflight="$(python3 -c "import urllib.request; m=urllib.request.urlopen('http://127.0.0.1:$http_port/metrics').read().decode(); print([l.split()[-1] for l in m.splitlines() if l.startswith('walcast_events_in_flight ')][0])")"
  [ "$inflight" = 0 ] && break; sleep 0.1
done
python3 "$root/bench/histogram.py" "$http_port" > "$work/latency.txt"
kill -TERM "$lat_pid"; wait "$lat_pid" || true
rate="$(grep -Eo 'tps = [0-9.]+' "$work/pgbench-lat.log" | head -1 | cut -d' ' -f3)"

python3 - "$work/results.tsv" "$work/sqs.tsv" "$work/latency.txt" "${rate:-?}" <<'PY' | tee "$root/bench/results.md"
import sys, datetime, os
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"# walcast benchmark ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores)\n")
print("Same WAL, same run. pg_recvlogical (pgoutput → /dev/null) is the limit; `streamer run` writes to the")
print("stdout sink, piped to `wc` (which counts the events). Speed ratio = pg_recvlogical time / streamer time.\n")
print("| scenario | events | pg_recvlogical s | streamer s | streamer / pg_recvlogical | pg_recvlogical peak RSS | streamer peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, ev, rs, rrss, ss, srss in rows:
    rs, ss = float(rs), float(ss)
    print(f"| {name} | {ev} | {rs:.2f} | {ss:.2f} | {rs / ss:.2f} | {int(rrss) / 1024:.1f} MiB | {int(srss) / 1024:.1f} MiB |")
sqs = [l.rstrip("\n").split("\t") for l in open(sys.argv[2]) if l.strip()]
print("\nTo the SQS emulator (fauxqs, a FIFO queue, one message group per row): the streamer, against a plain")
print("SDK loop of SendMessageBatch (10 per call, 8 calls in flight) sending as many messages of the same")
print("shape (same average body size, the three String attributes, group and dedup ids).\n")
print("| scenario | events | streamer → SQS s | SDK loop s | streamer / SDK loop | streamer peak RSS |")
print("|---|---:|---:|---:|---:|---:|")
for name, ev, ss, cs, rss in sqs:
    ss, cs = float(ss), float(cs)
    print(f"| {name} | {ev} | {ss:.2f} | {cs:.2f} | {cs / ss:.2f} | {int(rss) / 1024:.1f} MiB |")
n, p50, p99 = open(sys.argv[3]).read().split()
print(f"\nLatency, commit → accepted by the emulator, at a steady {sys.argv[4]} changes/s (pgbench --rate 5000,")
print(f"4 clients, single-row inserts), {n} events: **p50 {p50} ms, p99 {p99} ms** (interpolated in the")
print("streamer's histogram buckets; commit time is Postgres's clock, same machine).")
PY
