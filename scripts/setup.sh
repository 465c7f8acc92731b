#!/usr/bin/env bash
# Installs what cellfate needs on a fresh Debian machine, idempotently:
#   - system libraries: HDF5 (h5ad I/O), OpenBLAS/LAPACK/ARPACK (Schur decompositions), gfortran
#   - Chromium (headless, for the report test) in CI or with CELLFATE_BROWSER=1
#   - Rust components: rustfmt, clippy
#   - .venv: a Python virtual environment with anndata, used only by the interoperability
#     tests (a file written by cellfate must open in Python anndata). Never a build dependency.
# Set CELLFATE_SKIP_PYTHON=1 to skip the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(libhdf5-dev libopenblas-dev liblapack-dev libarpack2-dev gfortran pkg-config)
# Debian's Chromium renders the HTML report headless in a test (every image loaded, every
# section there): installed in CI, or locally with CELLFATE_BROWSER=1 (elsewhere that test
# skips with a message).
if [ "${CI:-}" = "true" ] || [ "${CELLFATE_BROWSER:-0}" = "1" ]; then
  PKGS+=(chromium)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for c in rustfmt clippy; do
    echo "$installed" | grep -q "^$c" || rustup component add "$c"
  done
fi

if [ "${CELLFATE_SKIP_PYTHON:-0}" != "1" ]; then
  if ! .venv/bin/python -c "import anndata" >/dev/null 2>&1; then
    echo "setup: creating .venv with anndata (for interoperability tests)"
    # Prefer Python 3.12 (pyenv's shims exist for versions that are not active: run them
    # to check), else the default python3.
    PY=python3
    for cand in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3" python3.11; do
      if "$cand" -c "import sys, venv" >/dev/null 2>&1; then PY="$cand"; break; fi
    done
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "anndata==0.12.19"
  fi
fi
# CellRank 2.3.3 (Python >= 3.12) for the read-back test (CellRank's GPCCA.from_adata on our
# output): created in CI, or locally with CELLFATE_CELLRANK=1. Pins as in ../shared/reference.
if [ "${CI:-}" = "true" ] || [ "${CELLFATE_CELLRANK:-0}" = "1" ]; then
  if ! .venv-cellrank/bin/python -c "import cellrank" >/dev/null 2>&1; then
    PY312=""
    for cand in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3"; do
      if "$cand" -c "import sys; assert sys.version_info >= (3, 12)" >/dev/null 2>&1; then PY312="$cand"; break; fi
    done
    if [ -n "$PY312" ]; then
      echo "setup: creating .venv-cellrank with cellrank 2.3.3 (read-back test)"
      rm -rf .venv-cellrank
      "$PY312" -m venv .venv-cellrank
      .venv-cellrank/bin/pip install -q --disable-pip-version-check \
        "cellrank==2.3.3" "scvelo==0.3.4" "numpy<2.4" "pynndescent<0.7"
    else
      echo "setup: no Python >= 3.12 found; the CellRank read-back test will fail under CI"
    fi
  fi
fi
# dynamo 1.5.3 (imports on CPython 3.12 only with these pins, ../shared/docs/dynamo-notes.md §0)
# for the vector-field parity test: created in CI, or locally with CELLFATE_DYNAMO=1.
if [ "${CI:-}" = "true" ] || [ "${CELLFATE_DYNAMO:-0}" = "1" ]; then
  if ! .venv-dynamo/bin/python -c "import dynamo" >/dev/null 2>&1; then
    PY312=""
    for cand in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3"; do
      if "$cand" -c "import sys; assert sys.version_info >= (3, 12)" >/dev/null 2>&1; then PY312="$cand"; break; fi
    done
    if [ -n "$PY312" ]; then
      echo "setup: creating .venv-dynamo with dynamo 1.5.3 (parity test)"
      rm -rf .venv-dynamo
      "$PY312" -m venv .venv-dynamo
      .venv-dynamo/bin/pip install -q --disable-pip-version-check \
        "dynamo-release==1.5.3" six "statsmodels==0.14.4" "scipy<1.15" "numpy<2.3"
    else
      echo "setup: no Python >= 3.12 found; the dynamo parity test will fail under CI"
    fi
  fi
fi
echo "setup: ok"
