#!/usr/bin/env bash
# The HTML report and the figures at several sizes (BENCHMARKS.md): a demo run (simulation,
# preprocessing, kernels, estimators; no figures) per size, then `cellfate report` and
# `cellfate plot` on its output. Wall time, peak memory and the report's size; one run each,
# release build.
# Usage: bash scripts/bench_report.sh [CELLS...]   (default: 10000 20000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS=1
cargo build -q --release --bin cellfate
B=target/release/cellfate
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$dir/time" "$@" > "$dir/out" 2>&1 || { cat "$dir/out"; return 1; }
  read -r secs kb < "$dir/time"
  printf '%-34s %8.1f s %8.0f MB\n' "$name" "$secs" "$((kb / 1024))"
}
for cells in ${@:-10000 20000 100000}; do
  echo "== $cells cells (demo simulation, 300 genes)"
  measure "run --demo (for reference)" $B -q run --demo --demo-cells "$cells" -o "$dir/demo.h5ad"
  # The demo output has no embedding: lay out the UMAP the figures use, as run --plots does.
  measure "umap (for reference)" $B -q umap "$dir/demo.h5ad" -o "$dir/umap.h5ad"
  measure "report" $B -q report "$dir/umap.h5ad" -o "$dir/report.html"
  printf '%-34s %8.1f MB\n' "report size" "$(echo "scale=1; $(stat -c %s "$dir/report.html") / 1048576" | bc)"
  measure "plot (every default figure, png)" $B -q plot "$dir/umap.h5ad" -o "$dir/figs" --format png
  rm -rf "$dir"/*.h5ad "$dir/figs" "$dir/report.html"
done
