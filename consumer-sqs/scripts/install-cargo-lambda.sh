#!/usr/bin/env bash
# Installs cargo-lambda (with zig, for `cargo lambda build --arm64`) from PyPI into its own
# venv under ${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}, and links it into that folder's
# bin/ (put it on PATH: infra/test.sh does). A venv, because Debian's system Python refuses
# `pip install` outside one. Idempotent: does nothing when the pinned version is there.
set -euo pipefail

CARGO_LAMBDA_VERSION="${CARGO_LAMBDA_VERSION:-1.9.2}"
tools="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}"
venv="$tools/cargo-lambda"
mkdir -p "$tools/bin"

if [ -x "$venv/bin/cargo-lambda" ] && "$venv/bin/cargo-lambda" lambda --version 2>/dev/null | grep -q "$CARGO_LAMBDA_VERSION"; then
    ln -sf "$venv/bin/cargo-lambda" "$tools/bin/cargo-lambda"
    exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "install-cargo-lambda: python3-venv is missing (apt-get install python3-venv)" >&2
        exit 1
    fi
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check --quiet "cargo-lambda==${CARGO_LAMBDA_VERSION}"
ln -sf "$venv/bin/cargo-lambda" "$tools/bin/cargo-lambda"
echo "installed: $("$tools/bin/cargo-lambda" lambda --version) (link in $tools/bin)"
