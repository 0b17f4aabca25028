#!/usr/bin/env bash
# The test command: sets up .venv if needed, checks generated code, lint, types, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fedavg).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=${FEDVOX_VENV:-.venv}
export PATH="$PWD/$venv/bin:$PATH"
echo "== generated protobuf code is current"
bash scripts/gen_protos.sh
git diff --exit-code --stat -- proto/fedvox/v1 || {
  echo "proto/fedvox/v1 changed on regeneration: run scripts/gen_protos.sh and commit" >&2; exit 1; }
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
mypy proto/fedvox server/fedvox client/fedvox tests benchmarks
echo "== pytest"
python -m pytest -q "$@"
