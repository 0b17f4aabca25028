#!/usr/bin/env bash
# The main job on the embedded default data: a 3-site federation over real gRPC on loopback.
# Extra arguments go to `fedvox simulate` (e.g. scripts/demo.sh --rounds 10).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs/demo-$(date +%Y%m%d-%H%M%S)
exec "${FEDVOX_VENV:-.venv}/bin/fedvox" simulate --sites 3 --rounds 5 --strategy fedavg --out "$out" "$@"
