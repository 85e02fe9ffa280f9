#!/usr/bin/env bash
# Installs cargo-lambda (with zig, for `cargo lambda build --arm64`) from PyPI into its own
# venv under ${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}, and links both into that folder's
# bin/ (put it on PATH: infra/test.sh does). A venv, because Debian's system Python refuses
# `pip install` outside one. Idempotent: does nothing when the pinned version is there.
#
# zig is linked as `zig` because cargo-lambda looks for it on PATH (or as the system
# python3's `ziglang` module, which the venv's is not): without the link, `cargo lambda
# build --arm64` and `sam build` stop with "Zig is not installed in your system".
set -euo pipefail

CARGO_LAMBDA_VERSION="${CARGO_LAMBDA_VERSION:-1.9.2}"
tools="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}"
venv="$tools/cargo-lambda"
mkdir -p "$tools/bin"

link() {
    ln -sf "$venv/bin/cargo-lambda" "$tools/bin/cargo-lambda"
    ln -sf "$venv/bin/python-zig" "$tools/bin/zig"
}
if [ -x "$venv/bin/cargo-lambda" ] && [ -x "$venv/bin/python-zig" ] &&
    "$venv/bin/cargo-lambda" lambda --version 2>/dev/null | grep -q "$CARGO_LAMBDA_VERSION"; then
    link
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
link
echo "installed: $("$tools/bin/cargo-lambda" lambda --version), zig $("$tools/bin/zig" version) (links in $tools/bin)"
