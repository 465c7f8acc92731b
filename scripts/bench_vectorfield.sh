#!/usr/bin/env bash
# Vector field, topography, potential and fate prediction at 10,000 and 100,000 simulated cells
# (release build): wall time and peak memory of each command, one run each (BENCHMARKS.md).
# Usage: bash scripts/bench_vectorfield.sh [CELLS...]   (default: 10000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
cargo build -q --release --bin cellfate
B=target/release/cellfate
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" > "$dir/out" 2>&1 || { cat "$dir/out"; exit 1; }
  read -r secs kb < "$dir/time"
  printf '%-14s %8.1f s %8.0f MB\n' "$name" "$secs" "$((kb / 1024))"
}
for n in "${@:-10000 100000}"; do
  for cells in $n; do
    echo "== $cells cells"
    $B -q run --demo --demo-cells "$cells" -o "$dir/demo.h5ad" > /dev/null
    measure vectorfield $B -q vectorfield "$dir/demo.h5ad" -o "$dir/vf.h5ad"
    measure topography $B -q topography "$dir/vf.h5ad" -o "$dir/topo.h5ad"
    measure potential $B -q potential "$dir/topo.h5ad" -o "$dir/pot.h5ad"
    measure predict-fate $B -q predict-fate "$dir/pot.h5ad" -o "$dir/fate.h5ad" --from-cluster Progenitor
    rm -f "$dir"/*.h5ad
  done
done
