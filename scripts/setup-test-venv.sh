#!/usr/bin/env bash
# Install the official `openai` Python client into .venv-test/ (git-ignored)
# for crates/server/tests/openai_client.rs. Idempotent: a venv that already
# imports the pinned version is kept.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv="$top/.venv-test"
OPENAI_VERSION=3.57.0
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  exit 0
fi
if ! python3 -m venv "$venv" 2>/dev/null; then
  # Debian/Ubuntu ship venv support separately.
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing python3-venv (apt-get) ..." >&2
    $sudo apt-get update -qq && $sudo apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  else
    echo "python3 -m venv failed: install Python's venv module" >&2
    exit 1
  fi
fi
echo "installing openai==$OPENAI_VERSION into .venv-test (PyPI) ..." >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
