#!/usr/bin/env bash
# Installs what walcast's tests and local pipeline need on a fresh Debian machine
# with Rust. Idempotent: what is already there is left alone.
#   - Postgres 15 server binaries (Debian's postgresql-15): the tests start throwaway clusters
#   - MiniStack (the AWS emulator of infra/local.sh, tests/ and the template checks)
#   - for the tests only: nodejs/npm and fauxqs (the streamer tests' SQS/SNS emulator),
#     openssl (TLS test certificates), cargo-lambda and zig (the consumer tests, sam build),
#     Postgres 14, 16, 17 and 18 server binaries from npm (the version matrix,
#     infra/install-postgres.sh)
#
#   infra/setup.sh            everything the tests need (infra/test.sh)
#   infra/setup.sh --local    only what infra/local.sh uses: Postgres and MiniStack
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
local_only=0
case "${1:-}" in
  --local) local_only=1 ;;
  "") ;;
  *) echo "setup: unknown argument $1 (infra/setup.sh [--local])" >&2; exit 2 ;;
esac

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi
}

if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  echo "setup: installing postgresql-15"
  as_root apt-get update -qq
  # The server binaries only: don't create or start the distribution's default cluster.
  as_root mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.d/walcast.conf >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
fi
id postgres >/dev/null 2>&1 || { echo "setup: no postgres user after installing postgresql-15" >&2; exit 1; }

if ((local_only)); then
  bash "$here/template/install-ministack.sh" >/dev/null
  echo "setup: done (infra/local.sh's part)"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm (for the SQS/SNS emulator)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! command -v openssl >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

for extra in "$here/install-emulator.sh" "$here/install-postgres.sh" "$root/consumer-sqs/scripts/install-cargo-lambda.sh"; do
  if [ -f "$extra" ]; then bash "$extra"; fi
done
bash "$here/template/install-ministack.sh" >/dev/null # the AWS emulator of infra/local.sh and tests/
echo "setup: done"
