#!/usr/bin/env bash
# Vector field, topography and potential on a preprocessed file of any size (BENCHMARKS.md,
# 1,000,000 cells): `kernel --projection pca` first (the velocities in the PCA basis), then each
# command on the previous output with its defaults (basis pca, all components). Wall time and
# peak memory of each, one run each, release build; every command writes a full copy of its
# input (as a user's run does), and each intermediate is removed once the next one exists, so
# the disk needs about twice the input's size.
# Usage: bash scripts/bench_vectorfield_file.sh PREPROCESSED.h5ad [WORKDIR]
#   e.g. target/release/cellfate simulate --cells 1000000 -o sim.h5ad &&
#        target/release/cellfate preprocess sim.h5ad -o pre.h5ad
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
input=$(realpath "$1")
dir=${2:-$(mktemp -d)}
mkdir -p "$dir"
cargo build -q --release --bin cellfate
B=$(realpath target/release/cellfate)
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" > "$dir/out" 2>&1 || { cat "$dir/out"; exit 1; }
  read -r secs kb < "$dir/time"
  printf '%-14s %8.1f s %8.0f MB\n' "$name" "$secs" "$((kb / 1024))"
}
measure "kernel+proj" $B -q kernel "$input" -o "$dir/k.h5ad" --projection pca
measure vectorfield $B -q vectorfield "$dir/k.h5ad" -o "$dir/vf.h5ad"
rm -f "$dir/k.h5ad"
measure topography $B -q topography "$dir/vf.h5ad" -o "$dir/topo.h5ad"
rm -f "$dir/vf.h5ad"
measure potential $B -q potential "$dir/topo.h5ad" -o "$dir/pot.h5ad"
rm -f "$dir/topo.h5ad" "$dir/pot.h5ad"
