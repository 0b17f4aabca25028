#!/usr/bin/env bash
# Regenerates the comparisons behind docs/results.md (see there for the configuration and timings).
# Seed-major: each scenario with seed 0 first, then seed 1 added by a resumed run, so an
# interruption still leaves complete single-seed comparisons. Output: runs/compare/<scenario>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
FEDVOX=${FEDVOX:-.venv/bin/fedvox}
common=(
  --strategies fedavg,fedprox,fedbn,fedper,fedadam,scaffold,fedma
  --sites 3 --size 64 --train-cases 8 --val-cases 2 --test-cases 5
  --rounds 5 --local-steps 60 --set train.patch_size=24 --threads 1
)
for seeds in 1 2; do
  for scenario in scanner-shift mixed; do
    echo "== $scenario, seeds $seeds ($(date -u +%H:%M:%S))"
    "$FEDVOX" compare --scenario "$scenario" --seeds "$seeds" --out "runs/compare/$scenario" "${common[@]}"
  done
done
echo "== done ($(date -u +%H:%M:%S))"
