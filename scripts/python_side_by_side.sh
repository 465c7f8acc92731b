#!/usr/bin/env bash
# CellRank's getting-started pipeline in one Python process each, cellfate (`import cellfate
# as cr`, a release wheel built with `pip install ./python` into .venv-bench) against CellRank
# 2.3.3 (.venv-cellrank, as scripts/setup.sh makes it with CELLFATE_CELLRANK=1), in the same
# run: scripts/python_getting_started.py prints one JSON line per package (timings per call,
# import included; peak RSS; terminal states). CellRank is capped at 30 minutes.
# Usage: bash scripts/python_side_by_side.sh IN.h5ad [--skip-schur]
set -euo pipefail
in=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
export OPENBLAS_NUM_THREADS=1
bench=${BENCH_VENV:-$root/.venv-bench}
if [ ! -x "$bench/bin/python" ] || ! "$bench/bin/python" -c "import cellfate, anndata" 2>/dev/null; then
  python3 -m venv "$bench"
  "$bench/bin/pip" install -q "anndata==0.12.19"
fi
"$bench/bin/pip" install -q --force-reinstall --no-deps "$root/python"
crv=${CELLRANK_VENV:-$root/.venv-cellrank}
echo "== cellfate"
"$bench/bin/python" "$root/scripts/python_getting_started.py" cellfate "$in" "$@"
echo "== cellrank 2.3.3 (capped at 30 min)"
timeout 1800 "$crv/bin/python" "$root/scripts/python_getting_started.py" cellrank "$in" "$@" ||
  echo "cellrank: not finished within 30 minutes (or failed, exit $?)"
