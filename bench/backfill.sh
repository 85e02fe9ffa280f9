#!/usr/bin/env bash
# Backfill benchmark: `streamer backfill` against Postgres's own limit for reading a table,
# `COPY (SELECT …) TO STDOUT` to /dev/null, in the same run, on the same table.
#
#   bash bench/backfill.sh                      # 1M rows of ~200 B, 3 runs each (medians)
#   ROWS=100000 RUNS=1 bash bench/backfill.sh   # smaller
#   RSS_ROWS=10000000 bash bench/backfill.sh    # also: peak RSS backfilling 10M rows
#
# Streamer, stdout sink (to a pipe that counts lines): time from the request to `done`.
# Streamer, SQS sink (a FIFO queue of the local emulator, fauxqs): the same, once.
# Results: a markdown table on stdout, appended to bench/results.md with the date.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-3}"
RSS_ROWS="${RSS_ROWS:-0}"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

cargo build -q --release -p walcast-streamer --bin streamer -p walcast-bench --bin sqs-ceiling
target="${CARGO_TARGET_DIR:-$root/target}"
streamer="$target/release/streamer"
ceiling="$target/release/sqs-ceiling"
fauxqs="$(bash infra/install-emulator.sh | tail -n 1)"

work="$(mktemp -d /tmp/walcast-bench-bf.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(free_port)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The streamers run inside `( … | wc )` subshells: stop them by their config path.
  pkill -f "run --config $work/" 2>/dev/null || true
  run_pg "$bin/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_size=8GB \
   -c shared_buffers=512MB -c fsync=off -c max_replication_slots=8 -c max_wal_senders=8" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
url="postgres://postgres@127.0.0.1:$port/postgres"

make_table() {
  psql -c "DROP TABLE IF EXISTS bench_bf" \
    -c "CREATE TABLE bench_bf (id bigint PRIMARY KEY, name text, email text, n int, amount numeric(12,2), created timestamptz, payload text)" \
    -c "INSERT INTO bench_bf SELECT i, 'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, now(), repeat('x', 80) FROM generate_series(1, $1) i" \
    -c "VACUUM ANALYZE bench_bf" >/dev/null
}

# start_streamer NAME SINK_YAML: runs `streamer run` in the background; stdout counted into NAME.count.
start_streamer() {
  cat > "$work/$1.yaml" <<YAML
source: {url: "$url", slot: $1, publication: bench_bf_p, tables: [bench_bf]}
sink: $2
log: {format: json}
YAML
  ( "$streamer" run --config "$work/$1.yaml" 2>"$work/$1.log" | wc -l > "$work/$1.count" ) &
  pids+=($!)
  for _ in $(seq 300); do
    [ "$(psql -At -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$1' AND active")" = 1 ] && return
    sleep 0.1
  done
  echo "streamer $1 did not start: $(cat "$work/$1.log")" >&2; exit 1
}

# backfill_secs NAME: seconds from the request until done (the CLI follows it).
backfill_secs() {
  local t0 t1
  t0=$(date +%s.%N)
  "$streamer" backfill --config "$work/$1.yaml" bench_bf >/dev/null 2>"$work/$1.cli"
  t1=$(date +%s.%N)
  python3 -c "print($t1 - $t0)"
}

vm_hwm() { awk '/VmHWM/ {print $2}' "/proc/$(pgrep -f "run --config $work/$1.yaml" | head -n 1)/status"; }

echo "== table: $ROWS rows" >&2
make_table "$ROWS"
bytes=$(psql -At -c "SELECT pg_total_relation_size('bench_bf')")
copy_runs=(); for _ in $(seq "$RUNS"); do
  t0=$(date +%s.%N); psql -c "COPY (SELECT * FROM bench_bf) TO STDOUT" >/dev/null; t1=$(date +%s.%N)
  copy_runs+=("$(python3 -c "print($t1 - $t0)")")
done
copy_s=$(median "${copy_runs[@]}")

echo "== streamer backfill, stdout sink" >&2
start_streamer bf_stdout "{type: stdout}"
bf_runs=(); for _ in $(seq "$RUNS"); do bf_runs+=("$(backfill_secs bf_stdout)"); done
bf_s=$(median "${bf_runs[@]}")
bf_rss=$(vm_hwm bf_stdout)

echo "== streamer backfill, SQS sink (emulator)" >&2
sqs_port="$(free_port)"
endpoint="http://127.0.0.1:$sqs_port"
NODE_OPTIONS=--max-old-space-size=8192 FAUXQS_PORT=$sqs_port FAUXQS_HOST=localhost FAUXQS_LOGGER=false \
  "$fauxqs" >"$work/fauxqs.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do "$ceiling" --endpoint "$endpoint" create bench-probe >/dev/null 2>&1 && break; sleep 0.1; done
queue="$("$ceiling" --endpoint "$endpoint" create "bench-bf-$(date +%s%N).fifo")"
start_streamer bf_sqs "{type: sqs, queue_url: \"$queue\", endpoint_url: \"$endpoint\", access_key_id: test, secret_access_key: test}"
sqs_s=$(backfill_secs bf_sqs)
sqs_rss=$(vm_hwm bf_sqs)

rss_line=""
if [ "$RSS_ROWS" -gt 0 ]; then
  echo "== peak RSS, $RSS_ROWS rows, stdout sink" >&2
  make_table "$RSS_ROWS"
  start_streamer bf_rss "{type: stdout}"
  rss_s=$(backfill_secs bf_rss)
  rss_line="| stdout, $RSS_ROWS rows | $(python3 -c "print(f'{$RSS_ROWS / $rss_s:,.0f}')") | – | $(python3 -c "print(f'{$(vm_hwm bf_rss) / 1024:.1f}')") |"
fi

table=$(cat <<MD
Backfill, $ROWS rows of ~$(( bytes / ROWS )) B on disk, medians of $RUNS (COPY and stdout), 1 run (SQS):

| reader | rows/s | × COPY | peak RSS MiB |
|---|---|---|---|
| \`COPY (SELECT …) TO STDOUT\` → /dev/null | $(python3 -c "print(f'{$ROWS / $copy_s:,.0f}')") | 1.00 | – |
| streamer backfill, stdout | $(python3 -c "print(f'{$ROWS / $bf_s:,.0f}')") | $(python3 -c "print(f'{$copy_s / $bf_s:.2f}')") | $(python3 -c "print(f'{$bf_rss / 1024:.1f}')") |
| streamer backfill, SQS FIFO (emulator) | $(python3 -c "print(f'{$ROWS / $sqs_s:,.0f}')") | $(python3 -c "print(f'{$copy_s / $sqs_s:.2f}')") | $(python3 -c "print(f'{$sqs_rss / 1024:.1f}')") |
$rss_line
MD
)
echo "$table"
{ echo; echo "## Backfill ($(date -u +%Y-%m-%d))"; echo; echo "$table"; } >> bench/results.md
