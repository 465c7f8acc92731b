#!/usr/bin/env bash
# UMAP at several sizes (BENCHMARKS.md): cellfate's `umap` on the kNN graph of a preprocessed
# simulation, and scanpy's `sc.tl.umap` (umap-learn) on the same file when a scanpy
# environment is given (SCANPY_PYTHON=/path/to/python; capped at 30 minutes). Wall time and
# peak memory, one run each, release build. Trustworthiness (k = 15, against X_pca) on up to
# 20,000 cells.
# Usage: bash scripts/bench_umap.sh [CELLS...]   (default: 10000 100000)
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
  printf '%-28s %8.1f s %8.0f MB\n' "$name" "$secs" "$((kb / 1024))"
}
for cells in ${@:-10000 100000}; do
  echo "== $cells cells (simulation, 300 genes, 30 neighbours)"
  $B -q simulate --cells "$cells" -o "$dir/sim.h5ad" > /dev/null
  measure "preprocess (for reference)" $B -q preprocess "$dir/sim.h5ad" -o "$dir/pre.h5ad"
  measure "cellfate umap" $B -q umap "$dir/pre.h5ad" -o "$dir/umap.h5ad"
  if [ -n "${SCANPY_PYTHON:-}" ]; then
    cat > "$dir/sc.py" <<'PY'
import sys, anndata, scanpy as sc
a = anndata.read_h5ad(sys.argv[1])
sc.tl.umap(a, random_state=0)
a.write_h5ad(sys.argv[2])
PY
    measure "scanpy tl.umap (umap-learn)" timeout 1800 "$SCANPY_PYTHON" "$dir/sc.py" "$dir/pre.h5ad" "$dir/scanpy.h5ad" || echo "scanpy: failed or over 30 minutes"
    if [ "$cells" -le 20000 ] && [ -f "$dir/scanpy.h5ad" ]; then
      "$SCANPY_PYTHON" - "$dir/umap.h5ad" "$dir/scanpy.h5ad" <<'PY'
import sys, anndata, numpy as np
from sklearn.manifold import trustworthiness
for name, path in (("cellfate", sys.argv[1]), ("scanpy", sys.argv[2])):
    a = anndata.read_h5ad(path)
    t = trustworthiness(np.asarray(a.obsm["X_pca"]), np.asarray(a.obsm["X_umap"]), n_neighbors=15)
    print(f"trustworthiness (k=15) {name:9s} {t:.4f}")
PY
    fi
  fi
  rm -f "$dir"/*.h5ad
done
