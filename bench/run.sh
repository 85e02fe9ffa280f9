#!/usr/bin/env bash
# walcast benchmark: the streamer against Postgres's own limit, side by side, same run.
#
#   bash bench/run.sh            # every scenario (1M-row transaction included)
#   ROWS=100000 bash bench/run.sh  # smaller
#
# For each scenario, two slots are created before the workload, so both readers decode the
# same WAL: pg_recvlogical (pgoutput, to /dev/null) is the limit; the streamer with the stdout
# sink to /dev/null is measured against it. Both stop at the same LSN (--endpos / --until-lsn).
# Results: a markdown table on stdout and in bench/results.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
ROWS="${ROWS:-1000000}"
TXNS="${TXNS:-100000}"
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cargo build -q --release -p walcast-streamer --bin streamer
streamer="$root/target/release/streamer"

work="$(mktemp -d /tmp/walcast-bench.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres "$work"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cleanup() { run_pg "$bin/pg_ctl" -D "$work/data" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_size=8GB \
   -c shared_buffers=512MB -c fsync=off -c logical_decoding_work_mem=256MB \
   -c max_replication_slots=32 -c max_wal_senders=32 -c max_connections=50" start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }

results="$work/results.tsv"
: > "$results"

# scenario NAME SETUP_SQL WORKLOAD(command) EVENTS
scenario() {
  local name="$1" setup="$2" workload="$3" events="$4"
  echo "== $name" >&2
  psql -c "DROP TABLE IF EXISTS bench_t CASCADE" -c "$setup" >/dev/null
  psql -c "DROP PUBLICATION IF EXISTS bench_p" -c "CREATE PUBLICATION bench_p FOR TABLE bench_t" >/dev/null
  for s in bench_rec bench_str; do
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

  # The streamer, stdout sink to /dev/null, stopping at the same LSN.
  cat > "$work/cfg.yaml" <<YAML
source: {url: "postgres://postgres@127.0.0.1:$port/postgres", slot: bench_str, publication: bench_p, tables: [bench_t]}
sink: {type: stdout}
log: {format: json}
YAML
  /usr/bin/time -f "%M" -o "$work/str.rss" "$streamer" run --config "$work/cfg.yaml" --until-lsn "$endpos" \
    2>"$work/str.log" | wc -l > "$work/str.count"
  local str_ms; str_ms=$(python3 -c "
import json,sys
for l in open('$work/str.log'):
    try: j=json.loads(l)
    except Exception: continue
    if 'elapsed_ms' in j: print(j['elapsed_ms'])")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$(cat "$work/str.count")" "$rec_s" "$(cat "$work/rec.rss")" \
    "$(python3 -c "print($str_ms/1000)")" "$(cat "$work/str.rss")" >> "$results"
}

SMALL="CREATE TABLE bench_t (id bigint PRIMARY KEY, name text, email text, n int, amount numeric(12,2), created timestamptz DEFAULT now(), payload text)"
SMALL_ROW="'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, now(), repeat('x', 80)"
BIG_ROW="'name-' || i, 'user' || i || '@example.com', i % 1000, (i % 10000) / 100.0, now(), repeat(md5(i::text), 58)"

scenario "1 txn × $((ROWS/10)) rows (~200 B)" "$SMALL" \
  "psql -c \"INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, $((ROWS/10))) i\"" $((ROWS/10))
scenario "1 txn × $ROWS rows (~200 B)" "$SMALL" \
  "psql -c \"INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, $ROWS) i\"" "$ROWS"
scenario "1 txn × $((ROWS/5)) rows (~2 KB)" "$SMALL" \
  "psql -c \"ALTER TABLE bench_t ALTER payload SET STORAGE PLAIN\" -c \"INSERT INTO bench_t SELECT i, $BIG_ROW FROM generate_series(1, $((ROWS/5))) i\"" $((ROWS/5))

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
scenario "$TXNS single-row txns, 4 clients (pgbench)" "$SMALL; DROP SEQUENCE IF EXISTS bench_seq; CREATE SEQUENCE bench_seq" \
  "pgbench -n -c 4 -j 2 -t $per_client -f $work/single.sql >/dev/null 2>&1" "$TXNS"
scenario "$TXNS mixed 60/30/10 ins/upd/del txns (pgbench)" \
  "$SMALL; DROP SEQUENCE IF EXISTS bench_seq; CREATE SEQUENCE bench_seq START 50001; INSERT INTO bench_t SELECT i, $SMALL_ROW FROM generate_series(1, 50000) i" \
  "pgbench -n -c 4 -j 2 -t $per_client -f $work/mixed.sql >/dev/null 2>&1" "~$TXNS"

python3 - "$results" <<'PY' | tee "$root/bench/results.md"
import sys, datetime, os
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"# walcast benchmark ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores)\n")
print("Same WAL, same run: pg_recvlogical (pgoutput → /dev/null) vs `streamer run` (stdout sink → a pipe to `wc -l`, which counts the events).\n")
print("| scenario | events | pg_recvlogical s | streamer s | streamer / pg_recvlogical (speed) | pg_recvlogical peak RSS | streamer peak RSS |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, ev, rs, rrss, ss, srss in rows:
    rs, ss = float(rs), float(ss)
    print(f"| {name} | {ev} | {rs:.2f} | {ss:.2f} | {rs/ss:.2f} | {int(rrss)/1024:.1f} MiB | {int(srss)/1024:.1f} MiB |")
PY
