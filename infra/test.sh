#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what is missing, then: format, lints, every crate's tests (real Postgres,
# real emulator) on Postgres 15, the streamer's core tests on Postgres 14, 16, 17 and
# 18, and the SAM template checks.
#
#   WALCAST_PG_VERSIONS=all        the streamer's whole suite on 14, 16, 17 and 18 too
#   WALCAST_PG_VERSIONS="16 18"    only these majors besides 15 (core tests)
#   WALCAST_PG_VERSIONS=none       Postgres 15 only
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh
export PATH="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}/bin:$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace

# The version matrix: the same streamer tests against other Postgres majors
# (infra/install-postgres.sh put them in the tools dir; see README "Postgres versions").
# The core: types, identities and TOAST, DDL mid-stream, reconnect, kill -9, check,
# TLS, and what differs between versions. Filters are test-name substrings.
core=(types:: streaming:: versions:: tls:: binary::kill_9 binary::check_ faults::toasted
  faults::key_is_the_identity faults::generated_columns faults::postgres_restart
  faults::stream_resumes faults::errors_name)
matrix="${WALCAST_PG_VERSIONS:-14 16 17 18}"
filters=("${core[@]}")
case "$matrix" in
  all) matrix="14 16 17 18"; filters=() ;;
  none) matrix="" ;;
esac
for major in ${matrix//,/ }; do
  [ "$major" = 15 ] && continue
  echo "test: Postgres $major (${filters[*]:-every streamer test})"
  WALCAST_PG_VERSION="$major" cargo test -p walcast-streamer --test main -- "${filters[@]}"
done
if [ -f infra/template/check.sh ]; then bash infra/template/check.sh; fi
