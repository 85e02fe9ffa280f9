#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run runs exactly this).
# Installs what is missing, then: format, lints, every crate's tests (real Postgres,
# real emulator), and the SAM template checks.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash infra/setup.sh
export PATH="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}/bin:$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
if [ -f infra/template/check.sh ]; then bash infra/template/check.sh; fi
