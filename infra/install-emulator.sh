#!/usr/bin/env sh
# Installs the SQS/SNS emulator used by the streamer's integration tests:
# fauxqs (npm), pinned, into ${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}/fauxqs.
# Idempotent: does nothing when the pinned version is already there.
# Prints the path of the fauxqs executable on success.
set -eu

FAUXQS_VERSION="${FAUXQS_VERSION:-1.9.2}" # 1.9.x runs on Node 20; 2.x needs a newer Node
TOOLS="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}"
PREFIX="$TOOLS/fauxqs-$FAUXQS_VERSION"
BIN="$PREFIX/node_modules/.bin/fauxqs"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

command -v npm >/dev/null 2>&1 || {
    echo "install-emulator: npm not found (install Node.js 20 or newer)" >&2
    exit 1
}

mkdir -p "$PREFIX"
tmp="$PREFIX.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm init -y >/dev/null 2>&1 &&
    npm install --no-audit --no-fund --loglevel=error "fauxqs@$FAUXQS_VERSION" >&2)
rm -rf "$PREFIX"
mv "$tmp" "$PREFIX"
trap - EXIT
echo "$BIN"
