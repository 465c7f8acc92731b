#!/usr/bin/env bash
# Default runs on simulations with known end states (BENCHMARKS.md, "Terminal states with the
# defaults"): for each (cells, fates, seed), simulate raw counts, run with no settings, evaluate.
# Usage: bash scripts/terminal_sweep.sh [WORKDIR]  (release build; Python with anndata in .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
C=target/release/cellfate
W=${1:-$(mktemp -d)}
for spec in "3000 1 1" "3000 2 1" "3000 3 1" "3000 6 1" "3000 1 2" "3000 2 2" "3000 3 2" "3000 6 2" \
  "3000 1 3" "3000 2 3" "3000 3 3" "3000 6 3" "3000 5 0" "3000 5 1" "10000 3 4" "10000 6 4" \
  "30000 2 5" "100000 3 0"; do
  read -r n f s <<<"$spec"
  "$C" simulate -q --cells "$n" --fates "$f" --seed "$s" -o "$W/sim.h5ad"
  "$C" run -q "$W/sim.h5ad" -o "$W/out.h5ad" >"$W/log.txt" 2>&1 || true
  echo "cells $n fates $f seed $s: $(grep -E '^terminal' "$W/log.txt") $(grep error "$W/log.txt" || true)"
  .venv/bin/python scripts/sim_fate_eval.py "$W/out.h5ad" 2>&1 | tail -1
done
