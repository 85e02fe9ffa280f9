#!/usr/bin/env bash
# The Lambda functions' binary size and cold start, this checkout against a base
# commit (by default 3faf231, main before the walcast-lambda library: the templates
# with their own copies, no S3), built the same way for both.
#
#   bench/lambda-size.sh [--base COMMIT] [--runs N] [--rounds R] [--no-arm64]
#
# Size: the arm64 `bootstrap` that `sam build` ships (template.yaml: provided.al2023,
# arm64, BuildMethod rust-cargolambda, i.e. `cargo lambda build --release --arm64` in
# the function's directory: the release profile of the function's .cargo/config.toml
# over the workspace's, where there is one, and cargo-lambda's own additions: panic
# "abort" unless the workspace's profile sets panic, target-cpu), and the x86_64
# release binary (`cargo build --release` in the function's directory, so the same
# profile; panic as the workspace sets it).
# Init: lambda/scripts/cold-start.py on the x86_64 binaries (this machine cannot run
# arm64 ones): process start to the first `GET /runtime/invocation/next`, N cold
# starts per binary and round, base and head taking turns; the median of each round.
# Set CARGO_TARGET_DIR to share a build directory; CARGO_NET_OFFLINE=true works.
# Needs cargo-lambda and zig (consumer-sqs/scripts/install-cargo-lambda.sh) for arm64.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
base=3faf231
runs=50
rounds=2
arm64=1
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --no-arm64) arm64=0; shift ;;
    *) echo "usage: $0 [--base COMMIT] [--runs N] [--rounds R] [--no-arm64]" >&2; exit 2 ;;
  esac
done
export PATH="$HOME/.cache/walcast-tools/bin:$PATH"
target="${CARGO_TARGET_DIR:-$here/target}"
export CARGO_TARGET_DIR="$target"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# The base tree, as committed.
mkdir -p "$out/src/base"
git -C "$here" archive "$base" | tar -x -C "$out/src/base"

build() { # NAME TREE TARGET_DIR
  local name="$1" tree="$2" dir="$3" fn
  for fn in consumer-sqs consumer-sns; do
    if [ "$arm64" = 1 ]; then
      (cd "$tree/$fn" && CARGO_TARGET_DIR="$dir" \
        cargo lambda build --release --arm64 --lambda-dir "$out/$name/arm64" >&2)
    fi
  done
  mkdir -p "$out/$name/x86_64"
  for fn in consumer-sqs consumer-sns; do
    # In the function's directory: cargo reads its .cargo/config.toml from there.
    (cd "$tree/$fn" && CARGO_TARGET_DIR="$dir" cargo build --release >&2)
    cp "$dir/release/$fn" "$out/$name/x86_64/$fn"
  done
}
# Two build directories: cargo names a workspace's own crates by their path inside
# the workspace, so the base tree's change-event or consumer-sqs would pass for this
# checkout's in a shared one (and be reused, stale).
build base "$out/src/base" "$target/lambda-size-base"
build head "$here" "$target"

size() { stat -c %s "$1"; }
echo "# base $(git -C "$here" rev-parse --short "$base"), head $(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet HEAD || echo ' (with uncommitted changes)'), $(date -u +%F)"
echo
echo "| binary | base (B) | head (B) | growth |"
echo "|---|---|---|---|"
for fn in consumer-sqs consumer-sns; do
  for arch in arm64 x86_64; do
    [ "$arch" = arm64 ] && [ "$arm64" = 0 ] && continue
    if [ "$arch" = arm64 ]; then rel="$arch/$fn/bootstrap"; else rel="$arch/$fn"; fi
    b=$(size "$out/base/$rel"); h=$(size "$out/head/$rel")
    echo "| $fn $arch | $b | $h | $(python3 -c "print(f'{($h/$b-1)*100:+.1f} %')") |"
  done
done

event() { case "$1" in consumer-sqs) echo "$here/consumer-sqs/events/sqs-standard.json" ;; *) echo "$here/consumer-sns/events/sns.json" ;; esac; }
echo
echo "Init, x86_64, median of $runs cold starts per round, base and head taking turns, $rounds rounds (load $(cut -d' ' -f1-3 /proc/loadavg)):"
echo
echo "| binary | base (ms) | head (ms) |"
echo "|---|---|---|"
for fn in consumer-sqs consumer-sns; do
  b="" h=""
  for round in $(seq "$rounds"); do
    report=$(python3 "$here/lambda/scripts/cold-start.py" "$out/base/x86_64/$fn" "$(event "$fn")" \
      -n "$runs" --also "$out/head/x86_64/$fn")
    medians=($(sed -n 's/.*cold starts: median \([0-9.]*\) ms.*/\1/p' <<<"$report"))
    b="$b${b:+ / }${medians[0]}" h="$h${h:+ / }${medians[1]}"
  done
  echo "| $fn | $b | $h |"
done
