#!/usr/bin/env bash
# The Python package's tests: builds the cellfate wheel (python/, PyO3 + maturin; dev profile,
# reusing `cargo test`'s build), installs it into a fresh virtual environment `.venv-py` with
# pytest and anndata, and runs `pytest python/tests` from the repository root. Idempotent; the
# venv is recreated under CI=true (a fresh environment, as a user's `pip install` gets).
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
PY=python3
for cand in python3.11 python3 "$HOME/.pyenv/versions/3.11.7/bin/python3"; do
  if "$cand" -c "import sys, venv; assert sys.version_info >= (3, 10)" >/dev/null 2>&1; then PY="$cand"; break; fi
done
if [ "${CI:-}" = "true" ] || ! .venv-py/bin/python -c "import maturin, pytest, anndata, tqdm" >/dev/null 2>&1; then
  echo "python-tests: creating .venv-py"
  rm -rf .venv-py
  "$PY" -m venv .venv-py
  .venv-py/bin/pip install -q --disable-pip-version-check "maturin>=1.9,<2" pytest tqdm "anndata==0.12.19"
fi
rm -rf target/wheels-ci
echo "python-tests: building the wheel"
.venv-py/bin/maturin build -q -m python/Cargo.toml --profile dev --compatibility linux \
  --auditwheel skip -i .venv-py/bin/python -o target/wheels-ci
.venv-py/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels-ci/cellfate-*.whl
.venv-py/bin/python -c "import cellfate, sys; print('python-tests: cellfate', cellfate.__version__, 'on Python', sys.version.split()[0])"
# From the repository root, so that `import cellfate` is the installed wheel, not python/.
.venv-py/bin/python -m pytest -q -p no:cacheprovider python/tests "$@"
