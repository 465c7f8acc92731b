#!/usr/bin/env bash
# Thin wrapper: side-by-side comparison of cellfate with CellRank 2.3.3 (see scripts/compare.py).
#   bash scripts/compare.sh ../shared/data/pancreas_supercell_3696/pancreas_3696x2000.h5ad --out compare-out/pancreas
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/compare.py "$@"
