#!/usr/bin/env bash
# Side by side, one run each: `cellfate velocity --mode dynamical --var-names all` against
# scVelo 0.3.4 (scripts/scvelo_dynamical.py: recover_dynamics(n_jobs=2), velocity, velocity
# graph, latent time, confidence, reading and writing) on the same input, with wall time and
# peak memory (/usr/bin/time). scVelo is stopped after 30 minutes and reported as not
# finished. The scVelo venv (.venv-scvelo: scvelo 0.3.4, pandas < 3, numpy < 2.4) is made
# on first use, apart from the Rust build.
# Usage: bash scripts/dynamical_side_by_side.sh IN.h5ad [CELLFATE_BINARY]
set -euo pipefail
in=$1
bin=${2:-target/release/cellfate}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${SCVELO_VENV:-$root/.venv-scvelo}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import scvelo" 2>/dev/null; then
  py=$(command -v python3.11 || command -v python3)
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q "scvelo==0.3.4" "pandas<3" "numpy<2.4"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OPENBLAS_NUM_THREADS=1
echo "== cellfate ($bin)"
/usr/bin/time -f "cellfate: %e s wall, %U s user, %M kB peak" \
  "$bin" velocity "$in" --mode dynamical --var-names all -o "$out/cellfate.h5ad"
echo "== scVelo 0.3.4 (capped at 30 min)"
if timeout 1800 /usr/bin/time -f "scvelo: %e s wall, %U s user, %M kB peak" \
  "$venv/bin/python" "$root/scripts/scvelo_dynamical.py" "$in" "$out/scvelo.h5ad"; then
  :
else
  echo "scvelo: not finished within 30 minutes (or failed, exit $?)"
fi
