#!/usr/bin/env bash
# Runs the pipeline locally: a throwaway Postgres (wal_level=logical) with a sample
# schema → the streamer → events printed as JSON lines. Leaves it running for your own
# writes (it prints the psql line); Ctrl-C stops everything and removes the cluster.
#
# Not yet wired here: the SQS/SNS emulator and the Lambda handlers (issue 6).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh >/dev/null
bin=/usr/lib/postgresql/15/bin
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

echo "building the streamer…"
cargo build -q -p walcast-streamer --bin streamer

work="$(mktemp -d /tmp/walcast-local.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
[ "$(id -u)" = 0 ] && chown postgres "$work"
streamer_pid=""
cleanup() {
  trap - EXIT INT TERM
  [ -n "$streamer_pid" ] && kill -TERM "$streamer_pid" 2>/dev/null && wait "$streamer_pid" 2>/dev/null || true
  run_pg "$bin/pg_ctl" -D "$work/data" stop -m fast >/dev/null 2>&1 || true
  rm -rf "$work"
  echo "stopped; removed $work"
}
trap cleanup EXIT INT TERM

run_pg "$bin/initdb" -D "$work/data" --no-sync -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
run_pg "$bin/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -k $work -c listen_addresses=127.0.0.1 -c wal_level=logical" start >/dev/null
psql=(psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres)
"${psql[@]}" <<'SQL'
CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL, email text, created_at timestamptz DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users, total numeric(12,2), status text);
ALTER TABLE orders REPLICA IDENTITY FULL;
SQL

cat > "$work/streamer.yaml" <<YAML
source:
  url: postgres://postgres@127.0.0.1:$port/postgres
  tables: [public.users, public.orders]
  name: local-demo
sink:
  type: stdout
  name: local_stdout
YAML
./target/debug/streamer check --config "$work/streamer.yaml" || true
./target/debug/streamer run --config "$work/streamer.yaml" &
streamer_pid=$!
sleep 1

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

echo
echo "Streaming. Write to the database and watch the events:"
echo "  psql -h 127.0.0.1 -p $port -U postgres -d postgres"
echo "Ctrl-C to stop."
wait "$streamer_pid"
