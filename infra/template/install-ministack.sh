#!/usr/bin/env bash
# Installs MiniStack (PyPI `ministack`: a local AWS emulator whose CloudFormation applies
# the SAM transform and whose Lambda runs provided.al2023 bootstraps without Docker), with
# boto3 and the SAM translator, pinned, into its own venv under
# ${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}/venv-ministack. Used by check.sh (deploy
# checks), infra/local.sh (the local pipeline) and the end-to-end tests (tests/).
# Idempotent: reinstalls only when the pins below change. Prints the venv's path.
set -euo pipefail

# Bump deliberately: ministack_deploy.py documents the gaps of this version.
MINISTACK_REQUIREMENTS=(ministack==1.5.33 aws-sam-translator==1.115.0 boto3==1.43.106)

venv="${WALCAST_TOOLS:-$HOME/.cache/walcast-tools}/venv-ministack"
want="${MINISTACK_REQUIREMENTS[*]}"
if [[ -x "$venv/bin/ministack" && -f "$venv/.walcast-requirements" && "$(cat "$venv/.walcast-requirements")" == "$want" ]]; then
  echo "$venv"
  exit 0
fi
echo "install-ministack: installing into $venv: $want" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if ! python3 -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  # Debian/Ubuntu ship venv separately.
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get install -y -qq python3-venv >/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
  fi
  python3 -m venv "$venv" || {
    echo "install-ministack: python3 -m venv failed: install python3-venv (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet "${MINISTACK_REQUIREMENTS[@]}" >&2
echo "$want" >"$venv/.walcast-requirements"
echo "$venv"
