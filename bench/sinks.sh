#!/usr/bin/env bash
# walcast benchmark: the cost of shaping, and of many sinks, side by side in one run.
#
#   bash bench/sinks.sh                      # ROWS=1000000 RUNS=3
#   ROWS=200000 RUNS=3 bash bench/sinks.sh   # smaller
#
# 1. Shaping. The same WAL (ROWS inserts in one transaction, then ROWS/10 updates and
#    ROWS/10 deletes), read by the streamer with the stdout sink, plain and with a typical
#    filter + transform (leave out the deletes; drop 2 columns and rename the keys). Each
#    run has its own slot, all created before the workload; the two are alternated, RUNS
#    each; medians. Ratio = plain time / shaped time (1.0: shaping costs nothing). Also the
#    streamer's CPU time (user + sys): the wall time is Postgres's as long as the streamer
#    keeps up, its CPU time is what shaping costs.
# 2. Two sinks, one slot, against two streamers on two slots, the same WAL (ROWS/5
#    inserts): the sinks are stdout and a standard SQS queue on the emulator (fauxqs).
#    Measured: Postgres's CPU time for the run (user + sys of the backends that ended in
#    it: the walsenders and the streamers' catalog connections, from the postmaster's
#    cutime/cstime in /proc), and the wall time.
# Results: markdown on stdout and appended to bench/results.md.
#
#   STREAMER=/tmp/streamer-before bash bench/sinks.sh   # measure another build (before/after)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
ROWS="${ROWS:-1000000}"
RUNS="${RUNS:-3}"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cargo build -q --release -p walcast-streamer --bin streamer -p walcast-bench --bin sqs-ceiling
target="${CARGO_TARGET_DIR:-$root/target}"
streamer="${STREAMER:-$target/release/streamer}"
ceiling="$target/release/sqs-ceiling"
fauxqs="$(bash infra/install-emulator.sh | tail -n 1)"

work="$(mktemp -d /tmp/walcast-bench-sinks.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(free_port)"
fauxqs_pid=""
cleanup() {
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
postmaster="$(head -1 "$work/data/postmaster.pid")"

sqs_port="$(free_port)"
endpoint="http://127.0.0.1:$sqs_port"
NODE_OPTIONS=--max-old-space-size=8192 FAUXQS_PORT=$sqs_port FAUXQS_HOST=localhost FAUXQS_LOGGER=false \
  "$fauxqs" >"$work/fauxqs.log" 2>&1 &
fauxqs_pid=$!
for _ in $(seq 200); do "$ceiling" --endpoint "$endpoint" create bench-probe >/dev/null 2>&1 && break; sleep 0.1; done

# Seconds from the streamer's start until --until-lsn was reached (from its JSON log).
elapsed_of() {
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if "elapsed_ms" in j:
        print(j["elapsed_ms"] / 1000)' "$1"
}
# Runs "$@" (stdout and stderr as they are) and writes its CPU seconds (user + sys) to $1.
with_cpu() {
  python3 -c '
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{u.ru_utime + u.ru_stime}\n")
sys.exit(code)' "$@"
}
# CPU seconds (user + sys) of the postmaster's ended children so far.
pg_cpu() { python3 -c '
import os, sys
f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split()
print((int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK"))' "$postmaster"; }
median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
source_yaml() { echo "source: {url: \"postgres://postgres@127.0.0.1:$port/postgres\", slot: $1, publication: bench_p, tables: [bench_t]}"; }
new_slot() {
  psql -c "SELECT pg_drop_replication_slot('$1') FROM pg_replication_slots WHERE slot_name = '$1'" >/dev/null
  psql -c "SELECT pg_create_logical_replication_slot('$1', 'pgoutput')" >/dev/null
}
setup_table() {
  psql -c "DROP TABLE IF EXISTS bench_t CASCADE" -c "CREATE TABLE bench_t (id bigint PRIMARY KEY, name text, email text, n int, amount numeric(12,2), secret text, payload text)" >/dev/null 2>&1
  psql -c "DROP PUBLICATION IF EXISTS bench_p" -c "CREATE PUBLICATION bench_p FOR TABLE bench_t" >/dev/null 2>&1
}
ROW="'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, md5(i::text), repeat('x', 60)"

# ---------------------------------------------------------------- 1. shaping
echo "== shaping: plain vs filter + transform, $ROWS rows, $RUNS runs each" >&2
setup_table
for r in $(seq "$RUNS"); do new_slot "plain_$r"; new_slot "shaped_$r"; done
psql -c "INSERT INTO bench_t SELECT i, $ROW FROM generate_series(1, $ROWS) i" \
  -c "UPDATE bench_t SET n = n + 1 WHERE id % 10 = 0" -c "DELETE FROM bench_t WHERE id % 10 = 5" >/dev/null
endpos="$(psql -At -c "SELECT pg_current_wal_insert_lsn()")"
plain=() shaped=() plain_cpu=() shaped_cpu=() plain_n=0 shaped_n=0
for r in $(seq "$RUNS"); do
  for kind in plain shaped; do
    {
      source_yaml "${kind}_$r"
      if [ "$kind" = plain ]; then
        echo "sink: {type: stdout}"
      else
        cat <<'YAML'
sink:
  type: stdout
  filter: '.action != "delete"'
  transform: '{id: .record.id, user: .record.name, mail: .record.email, count: .record.n, total: .record.amount, op: .action, at: .metadata.commit_timestamp, lsn: .metadata.commit_lsn}'
YAML
      fi
      echo "log: {format: json}"
    } >"$work/$kind.yaml"
    with_cpu "$work/$kind.cpu" "$streamer" run --config "$work/$kind.yaml" --until-lsn "$endpos" 2>"$work/$kind.log" | wc -l >"$work/$kind.count"
    s="$(elapsed_of "$work/$kind.log")"
    c="$(cat "$work/$kind.cpu")"
    if [ "$kind" = plain ]; then
      plain+=("$s"); plain_cpu+=("$c"); plain_n=$(cat "$work/$kind.count")
    else
      shaped+=("$s"); shaped_cpu+=("$c"); shaped_n=$(cat "$work/$kind.count")
    fi
    echo "   run $r $kind: $s s, streamer CPU $c s" >&2
  done
done
plain_s="$(median "${plain[@]}")"
shaped_s="$(median "${shaped[@]}")"
plain_c="$(median "${plain_cpu[@]}")"
shaped_c="$(median "${shaped_cpu[@]}")"

# ---------------------------------------------------------------- 2. two sinks, one slot
n2=$((ROWS / 5))
echo "== two sinks on one slot vs two streamers on two slots, $n2 rows" >&2
setup_table
new_slot both; new_slot one_a; new_slot one_b
psql -c "INSERT INTO bench_t SELECT i, $ROW FROM generate_series(1, $n2) i" >/dev/null
endpos="$(psql -At -c "SELECT pg_current_wal_insert_lsn()")"
queue() { "$ceiling" --endpoint "$endpoint" create "bench-sinks-$(date +%s%N)"; }
sqs_yaml() { echo "{type: sqs, name: $1, queue_url: \"$(queue)\", endpoint_url: \"$endpoint\", access_key_id: test, secret_access_key: test}"; }
{
  source_yaml both
  echo "sinks:"
  echo "  - {type: stdout, name: out}"
  echo "  - $(sqs_yaml queue)"
  echo "log: {format: json}"
} >"$work/both.yaml"
{ source_yaml one_a; echo "sink: {type: stdout, name: out}"; echo "log: {format: json}"; } >"$work/one_a.yaml"
{ source_yaml one_b; echo "sink: $(sqs_yaml queue)"; echo "log: {format: json}"; } >"$work/one_b.yaml"

cpu0="$(pg_cpu)"; t0=$(date +%s.%N)
"$streamer" run --config "$work/both.yaml" --until-lsn "$endpos" 2>"$work/both.log" | wc -l >"$work/both.count"
t1=$(date +%s.%N); sleep 0.5; cpu1="$(pg_cpu)"
"$streamer" run --config "$work/one_a.yaml" --until-lsn "$endpos" 2>"$work/one_a.log" | wc -l >"$work/one_a.count" &
a=$!
"$streamer" run --config "$work/one_b.yaml" --until-lsn "$endpos" >/dev/null 2>"$work/one_b.log" &
b=$!
wait "$a" "$b"
t2=$(date +%s.%N); sleep 0.5; cpu2="$(pg_cpu)"
one_cpu=$(python3 -c "print($cpu1 - $cpu0)"); two_cpu=$(python3 -c "print($cpu2 - $cpu1)")
one_wall=$(python3 -c "print($t1 - $t0)"); two_wall=$(python3 -c "print($t2 - $t1 - 0.5)")

python3 - "$plain_s" "$shaped_s" "$plain_n" "$shaped_n" "$RUNS" "$ROWS" "$n2" "$one_cpu" "$two_cpu" \
  "$one_wall" "$two_wall" "$(cat "$work/both.count")" "$(cat "$work/one_a.count")" \
  "$plain_c" "$shaped_c" "${STREAMER:-}" <<'PY' | tee -a "$root/bench/results.md"
import sys, datetime, os, subprocess
(plain, shaped, plain_n, shaped_n, runs, rows, n2, one_cpu, two_cpu, one_wall, two_wall,
 both_n, one_n, plain_c, shaped_c, other) = sys.argv[1:]
plain, shaped, plain_c, shaped_c = float(plain), float(shaped), float(plain_c), float(shaped_c)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
what = f"streamer {other}" if other else f"commit {commit}"
print(f"\n## Sinks: shaping and one slot for two sinks ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {what})\n")
print(f"`bash bench/sinks.sh`: {rows} inserts in one transaction, then {int(rows)//10} updates and")
print(f"{int(rows)//10} deletes; the stdout sink, each run on its own slot of the same WAL, medians of {runs}")
print("(alternated). Shaped: `filter: '.action != \"delete\"'` and a transform that keeps 6 of the")
print("7 columns under new names, with the action, commit time and LSN.\n")
print("| reader | events out | s (median) | events in / s | × plain | streamer CPU s (median) | µs CPU / event in |")
print("|---|---:|---:|---:|---:|---:|---:|")
total = int(rows) + 2 * (int(rows) // 10)
print(f"| stdout, plain | {plain_n} | {plain:.2f} | {total / plain:,.0f} | 1.00 | {plain_c:.2f} | {plain_c / total * 1e6:.1f} |")
print(f"| stdout, filter + transform | {shaped_n} | {shaped:.2f} | {total / shaped:,.0f} | {plain / shaped:.2f} | {shaped_c:.2f} | {shaped_c / total * 1e6:.1f} |")
print(f"\nTwo sinks (stdout and a standard SQS queue on fauxqs), {n2} inserts: one streamer on one slot,")
print("then two streamers on two slots side by side, the same WAL. Postgres CPU is user + sys of the")
print("backends that ended in the run (walsenders and the streamers' catalog connections).\n")
print("| setup | Postgres CPU s | wall s | stdout events |")
print("|---|---:|---:|---:|")
print(f"| one streamer, two sinks, one slot | {float(one_cpu):.2f} | {float(one_wall):.2f} | {both_n} |")
print(f"| two streamers, two slots | {float(two_cpu):.2f} | {float(two_wall):.2f} | {one_n} |")
print(f"\nPostgres CPU, one slot / two slots: **{float(one_cpu) / max(float(two_cpu), 1e-9):.2f}**.")
PY
