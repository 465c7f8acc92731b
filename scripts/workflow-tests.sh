#!/usr/bin/env bash
# The Snakemake workflow (workflow/Snakefile) on three small simulated samples with the local
# executor: outputs and one summary, a re-run that does nothing, a changed input that redoes
# only its sample, a failing sample with --keep-going, and the Slurm profile's plan (a dry
# run). Snakemake comes from PyPI into its own venv `.venv-snakemake` (recreated under
# CI=true); the cellfate binary is CELLFATE_BIN or the debug build `cargo test` made.
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
BIN="${CELLFATE_BIN:-target/debug/cellfate}"
if [ ! -x "$BIN" ]; then
  echo "workflow-tests: building $BIN"
  cargo build -q --bin cellfate
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
PY=python3
for cand in python3.11 python3 "$HOME/.pyenv/versions/3.11.7/bin/python3"; do
  if "$cand" -c "import sys, venv; assert sys.version_info >= (3, 11)" >/dev/null 2>&1; then PY="$cand"; break; fi
done
SMK=.venv-snakemake/bin/snakemake
if [ "${CI:-}" = "true" ] || ! "$SMK" --version >/dev/null 2>&1 \
  || ! .venv-snakemake/bin/python -c "import snakemake_executor_plugin_slurm" >/dev/null 2>&1; then
  echo "workflow-tests: creating .venv-snakemake"
  rm -rf .venv-snakemake
  "$PY" -m venv .venv-snakemake
  .venv-snakemake/bin/pip install -q --disable-pip-version-check "snakemake>=8,<10" \
    "snakemake-executor-plugin-slurm<3"
fi
echo "workflow-tests: snakemake $("$SMK" --version), cellfate $("$BIN" --version)"
tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
mkdir -p "$tmp/data"
for i in 1 2 3; do
  "$BIN" simulate -q --cells 400 --genes 60 --fates 2 --seed "$i" -o "$tmp/data/s$i.h5ad"
done
printf 'kernel = "0.8*velocity + 0.2*connectivity"\n' > "$tmp/fate.toml"
cat > "$tmp/config.yaml" <<YAML
inputs: "$tmp/data/*.h5ad"
outdir: "$tmp/results"
cellfate: "$BIN"
spec: "$tmp/fate.toml"
args: "--cluster-key clusters --n-states 4 --terminal-method top_n --n-terminal 2 --n-cells 60 -q"
threads: 1
mem_mb: 2000
runtime: 10
YAML
smk() { "$SMK" -s workflow/Snakefile --directory "$tmp" --configfile "$tmp/config.yaml" "$@"; }
smk --cores 2 --quiet
R="$tmp/results"
.venv-snakemake/bin/python - "$R" <<'PY'
import csv, json, pathlib, sys
r = pathlib.Path(sys.argv[1])
rows = list(csv.DictReader(open(r / "summary.csv", newline="")))
assert [x["sample"] for x in rows] == ["s1", "s2", "s3"], rows
for x in rows:
    assert x["status"] == "ok", x
    assert len(x["terminal_states"].split(";")) == 2, x
    assert float(x["seconds"]) > 0, x
    assert x["output"].endswith(x["sample"] + ".h5ad"), x
    assert (r / (x["sample"] + ".h5ad")).stat().st_size > 0
j = json.loads((r / "summary.json").read_text())
assert j["complete"] is True and len(j["samples"]) == 3, j
assert 'kernel = "0.8*velocity + 0.2*connectivity"' in j["config"], j["config"]
print("workflow-tests: 3 samples, summary ok:", [x["terminal_states"] for x in rows])
PY
# Up to date: nothing to do.
plan=$(smk --cores 2 --dry-run 2>&1)
if ! grep -q "Nothing to be done" <<<"$plan"; then
  echo "workflow-tests: a second run has work to do" >&2
  echo "$plan" >&2
  exit 1
fi
# A changed input redoes its sample (and the summary) only. (Snakemake >= 9.18 compares
# checksums: a touched but unchanged input is not a change.)
m1=$(stat -c %y "$R/s1.h5ad"); m2=$(stat -c %y "$R/s2.h5ad"); m3=$(stat -c %y "$R/s3.h5ad")
sleep 1.1
"$BIN" simulate -q --cells 400 --genes 60 --fates 2 --seed 22 -o "$tmp/data/s2.h5ad"
smk --cores 2 --quiet
[ "$(stat -c %y "$R/s1.h5ad")" = "$m1" ] && [ "$(stat -c %y "$R/s3.h5ad")" = "$m3" ] \
  || { echo "workflow-tests: unchanged samples were recomputed" >&2; exit 1; }
[ "$(stat -c %y "$R/s2.h5ad")" != "$m2" ] \
  || { echo "workflow-tests: the changed sample was not recomputed" >&2; exit 1; }
# A failing sample: the others (a new s5) finish with --keep-going, the run fails, the log
# says why.
printf '\x89HDF\r\n\x1a\nnot really' > "$tmp/data/s4.h5ad"
"$BIN" simulate -q --cells 400 --genes 60 --fates 2 --seed 5 -o "$tmp/data/s5.h5ad"
if smk --cores 2 --quiet --keep-going >"$tmp/fail.log" 2>&1; then
  echo "workflow-tests: a corrupt sample did not fail the workflow" >&2
  exit 1
fi
grep -q "s4.h5ad" "$R/logs/s4.log" || { echo "workflow-tests: the log does not name the file" >&2; cat "$R/logs/s4.log" >&2; exit 1; }
[ ! -e "$R/s4.h5ad" ] || { echo "workflow-tests: a failed sample left an output" >&2; exit 1; }
[ -s "$R/s5.h5ad" ] || { echo "workflow-tests: --keep-going did not finish s5" >&2; exit 1; }
rm "$tmp/data/s4.h5ad"
# The Slurm profile: a dry run plans one job per sample and the local summary.
smk --profile workflow/profiles/slurm --dry-run --forceall > "$tmp/slurm.log" 2>&1 \
  || { cat "$tmp/slurm.log" >&2; exit 1; }
grep -q "fate_map" "$tmp/slurm.log" && grep -q "summary" "$tmp/slurm.log" \
  || { echo "workflow-tests: the Slurm dry run planned no jobs" >&2; cat "$tmp/slurm.log" >&2; exit 1; }
echo "workflow-tests: passed"
