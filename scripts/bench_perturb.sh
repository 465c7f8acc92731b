#!/usr/bin/env bash
# In-silico perturbation at 10,000 and 100,000 simulated cells (release build): one knockout
# (kinetic route) at each size, and a 50-gene screen at the first size (up to 10,000 cells); wall time and peak
# memory, one run each (BENCHMARKS.md). The screen reuses the unperturbed reference (kernel and
# fate probabilities computed once) across its genes.
# Usage: bash scripts/bench_perturb.sh [GENES] [CELLS...]   (default: 300 10000 100000)
# SCREEN_MAX_CELLS=N also screens larger sizes, SCREEN_GENES=K screens K genes (default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
cargo build -q --release --bin cellfate
B=target/release/cellfate
genes=${1:-300}
shift || true
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" > "$dir/out" 2>&1 || { cat "$dir/out"; exit 1; }
  read -r secs kb < "$dir/time"
  printf '%-22s %8.1f s %8.0f MB\n' "$name" "$secs" "$((kb / 1024))"
}
first=1
for cells in ${@:-10000 100000}; do
  echo "== $cells cells x $genes genes"
  $B -q simulate --circuit --cells "$cells" --genes "$genes" -o "$dir/sim.h5ad" > /dev/null
  measure run $B -q run "$dir/sim.h5ad" -o "$dir/run.h5ad"
  measure "knockout (1 gene)" $B -q perturb "$dir/run.h5ad" -o "$dir/ko.h5ad" --gene gene_2
  if [ $first = 1 ] && [ "$cells" -le "${SCREEN_MAX_CELLS:-10000}" ]; then
    k=${SCREEN_GENES:-50}
    measure "screen top_drivers:$k" $B -q perturb "$dir/run.h5ad" -o "$dir/screen.h5ad" --screen "top_drivers:$k" --n-boot 200
    first=0
  fi
  rm -f "$dir"/*.h5ad
done
