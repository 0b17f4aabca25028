#!/usr/bin/env bash
# Creates .venv (once) with torch (CPU build from the local wheel), fedvox and the dev tools.
# Re-running is quick: it reinstalls only when a requirements or pyproject file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FEDVOX_VENV:-.venv}
stamp="$venv/.fedvox-installed"
want=$(cat requirements-dev.txt proto/pyproject.toml server/pyproject.toml client/pyproject.toml \
  | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
  | grep -v -E "^WARNING: (Location|The directory)" || true; }
pip install --upgrade pip
# torch first, pinned to the CPU wheel; the client's torch range is satisfied by it
pip install torch==2.13.0
pip install -r requirements-dev.txt
pip install -e proto -e server -e client
"$venv/bin/python" -c "import torch, monai, nibabel, grpc, fedvox.server.app, fedvox.client.runner"
echo "$want" > "$stamp"
