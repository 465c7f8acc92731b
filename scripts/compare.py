#!/usr/bin/env python3
"""Side-by-side comparison of cellfate with CellRank 2.3.3 (issue #8).

Usage (from the repository root; any python3 starts it, the script re-executes itself inside its
own cached venv):

  # 1. one dataset: reference pipeline vs cellfate, stage by stage, timing + agreement tables
  python3 scripts/compare.py ../shared/data/pancreas_supercell_3696/pancreas_3696x2000.h5ad \
      --out compare-out/pancreas --n-states 8 --cluster-key clusters

  # 2. ground truth on a simulation (cellfate simulate; 3 fates) for both tools
  python3 scripts/compare.py --ground-truth 3000 --gt-terminal top_n --gt-n-cells 100 --out compare-out/gt

  # 3. scale series on the simulator (cellfate always; the reference until a stage hits the cap)
  python3 scripts/compare.py --scale 10000,100000 --gt-terminal top_n --stage-timeout 600 --out compare-out/scale

  (--reuse-reference re-uses the reference results already under --out for --scale and
  --ground-truth, so that only cellfate is re-run, e.g. after a rebuild.)

  (the three modes can be combined in one call; `bash scripts/compare.sh ...` is the same.)

What it does
  * Venv: `.venv-compare/` in the repository (pins in scripts/compare_requirements.txt:
    cellrank==2.3.3 scvelo==0.3.4 scanpy==1.12.4 pygpcca==1.0.4 numpy<2.4 pynndescent<0.7
    psutil), created once with a CPython >= 3.12 (pyenv's 3.12.1 if present) and reused when it
    imports. Override with --venv DIR.
  * Reference (CellRank 2.3.3; the recipe of ../shared/reference/recipe/run_cellrank.py,
    re-written here stage by stage): scv.pp.filter_and_normalize(min_shared_counts=20), log1p,
    2,000 HVG (subset), PCA, neighbours (30 PCs, 30 neighbours), moments, scv.tl.velocity
    (stochastic), VelocityKernel + ConnectivityKernel, 0.8*vk + 0.2*ck, GPCCA compute_schur(20),
    compute_macrostates(n_states, cluster_key), predict_terminal_states, compute_fate_probabilities,
    (compute_absorption_times with --ground-truth; when the default iterative solve fails its
    row-sum check, the call is repeated with solver='direct' and a note is recorded),
    compute_lineage_drivers (and, untimed, the same call on X upcast to float64). All stages run in ONE
    child Python process after a numba warm-up on a 400-cell subsample (reported separately).
    Wall time: time.perf_counter around each call. Peak RSS per stage: a thread samples the
    process RSS (psutil) every 10 ms; when ru_maxrss rose during the stage the stage peak is
    ru_maxrss (exact), else the sampled maximum. The parent kills the child when one stage exceeds
    --stage-timeout seconds or its RSS exceeds --mem-limit-gb, and records where and why it stopped.
  * cellfate (target/release/cellfate; --cellfate PATH): every stage is its own subprocess
    (preprocess, kernel, macrostates = Schur + GPCCA + terminal states, fates, drivers): wall time
    around the process, peak RSS = ru_maxrss of that child (os.wait4). These include reading and
    writing the .h5ad; the reference times do not include I/O.
    Two cellfate chains: (A) on the reference's processed file (same input: agreement gates and
    kernel..drivers timings) and (B) from the raw file (preprocess timing, full-pipeline agreement,
    ground truth, scale series). `cellfate run` on (A)'s input is also run once to split the
    macrostates stage into Schur / GPCCA / terminal states (in-process times, marked †).
  * Agreement, gated (exit code 1 if any fails): T max|dT| <= 1e-6 (same input; also the velocity
    and connectivity kernels alone), top max(n_states+2, 10) eigenvalues <= 1e-8 (matched one to
    one as complex numbers, conjugate pairs kept whole), same terminal-state set, fate
    probabilities <= 1e-5 computed from the reference's T and terminal states, driver
    correlations <= 1e-6 computed from the reference's fate probabilities against CellRank on X
    upcast to float64 (CellRank keeps float32 X in float32: ~3e-5, reported). Everything else
    (Schur subspace angles, membership and fate differences of cellfate's own chain, the
    full-pipeline comparison with different PCA/kNN/velocity implementations) is reported only.
  * Output (--out DIR, default compare-out/): timing.md / timing.json, agreement.md /
    agreement.json, ground_truth.{md,json}, scale.{md,json}, the .h5ad files and logs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQS = os.path.join(REPO, "scripts", "compare_requirements.txt")
DEFAULT_VENV = os.path.join(REPO, ".venv-compare")
PROBE = (
    "import cellrank, scvelo, scanpy, pygpcca, numpy, pynndescent, psutil, h5py, scipy;"
    "assert cellrank.__version__ == '2.3.3' and scvelo.__version__ == '0.3.4';"
    "assert scanpy.__version__ == '1.12.4' and pygpcca.__version__ == '1.0.4';"
    "assert tuple(int(x) for x in numpy.__version__.split('.')[:2]) < (2, 4)"
)


# ----------------------------------------------------------------------------------------------
# venv bootstrap (stdlib only)
# ----------------------------------------------------------------------------------------------
def _find_python312() -> str:
    cands = [sys.executable] if sys.version_info >= (3, 12) else []
    cands += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")))
    for name in ("python3.12", "python3.13"):
        p = shutil.which(name)
        if p:
            cands.append(p)
    for c in cands:
        try:
            out = subprocess.run([c, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                                 capture_output=True, text=True, timeout=30)
            if out.stdout.strip() == "True":
                return c
        except (OSError, subprocess.SubprocessError):
            pass
    sys.exit("compare.py: needs a CPython >= 3.12 to build the CellRank 2.3.3 venv (none found)")


def ensure_venv(venv: str) -> str:
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py) and subprocess.run([py, "-c", PROBE], capture_output=True).returncode == 0:
        return py
    print(f"[venv] creating {venv} (pins: {REQS}); this takes a few minutes ...", flush=True)
    if not os.path.exists(py):
        subprocess.run([_find_python312(), "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "-r", REQS], check=True)
    r = subprocess.run([py, "-c", PROBE], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"compare.py: venv {venv} does not import the pinned packages:\n{r.stderr}")
    return py


def _in_venv(venv: str) -> bool:
    return os.path.realpath(sys.prefix) == os.path.realpath(venv)


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def log(msg: str):
    print(f"[{_dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.{nd}g}" if abs(x) < 1 else f"{x:.{nd}f}".rstrip("0").rstrip(".")
    return str(x)


def _mb(x):
    return None if x is None else int(round(x))


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for r in rows:
        out.append("| " + " | ".join((fmt(c) if not isinstance(c, str) else c).replace("|", "\\|").replace("\n", " ") for c in r) + " |")
    return "\n".join(out)


def machine_info():
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return {"date": _dt.date.today().isoformat(), "cpus": os.cpu_count(), "mem_gb": round(mem, 1),
            "platform": platform.platform(), "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------------------------
# cellfate stages: one subprocess each, wall time + ru_maxrss of the child
# ----------------------------------------------------------------------------------------------
class CF:
    def __init__(self, exe: str, workdir: str, timeout: float, mem_limit_gb: float = 20.0):
        self.exe = exe
        self.workdir = workdir
        self.timeout = timeout
        self.mem_limit_gb = mem_limit_gb
        self._help = {}

    def has_flag(self, sub: str, flag: str) -> bool:
        if sub not in self._help:
            r = subprocess.run([self.exe, sub, "--help"], capture_output=True, text=True)
            self._help[sub] = r.stdout + r.stderr
        return flag in self._help[sub]

    def run(self, name: str, args: list[str]) -> dict:
        logf = os.path.join(self.workdir, f"cellfate.{name}.log")
        cmd = [self.exe] + args
        log(f"cellfate {name}: {' '.join(args)}")
        t0 = time.perf_counter()
        with open(logf, "w") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            timed_out = over_mem = False
            try:
                import psutil
                pp = psutil.Process(p.pid)
            except Exception:  # noqa: BLE001
                pp = None
            k = 0
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                k += 1
                if pp is not None and k % 10 == 0:
                    try:
                        over_mem = pp.memory_info().rss > self.mem_limit_gb * 2**30
                    except Exception:  # noqa: BLE001
                        pass
                if time.perf_counter() - t0 > self.timeout or over_mem:
                    p.kill()
                    pid, status, ru = os.wait4(p.pid, 0)
                    timed_out = not over_mem
                    break
                time.sleep(0.02)
            p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        rec = {"stage": name, "cmd": " ".join(cmd), "seconds": wall, "peak_mb": ru.ru_maxrss / 1024.0,
               "exit": p.returncode, "log": logf,
               "status": "timeout" if timed_out else ("memory" if over_mem else ("ok" if p.returncode == 0 else "failed"))}
        if rec["status"] != "ok":
            with open(logf) as fh:
                rec["error"] = fh.read()[-1500:]
            if over_mem:
                rec["error"] += f"\nkilled by compare.py: RSS above the {self.mem_limit_gb} GB limit"
            elif timed_out:
                rec["error"] += f"\nkilled by compare.py: over the {self.timeout:.0f} s cap"
            elif p.returncode < 0:
                rec["error"] += f"\nkilled by signal {-p.returncode} (OOM killer?)"
            log(f"cellfate {name}: {rec['status']} (see {logf})")
        else:
            log(f"cellfate {name}: {wall:.2f}s, peak {rec['peak_mb']:.0f} MB")
        return rec


def cf_run_split(cf: CF, inp: str, out: str, extra: list[str]) -> dict:
    """`cellfate run` (not quiet) prints '[t] stage' progress lines: in-process split."""
    rec = cf.run("run_split", ["run", inp, "-o", out, "--json"] + extra)
    split = {}
    if rec["status"] in ("ok", "failed"):
        marks = []
        with open(rec["log"]) as fh:
            for line in fh:
                line = line.strip()
                if line.startswith("[") and "s]" in line:
                    try:
                        t = float(line[1:line.index("s]")])
                        marks.append((t, line[line.index("s]") + 2:].strip().rstrip(".")))
                    except ValueError:
                        pass
        for (t, st), (t2, _) in zip(marks, marks[1:]):
            split[st] = split.get(st, 0.0) + (t2 - t)
    rec["split"] = split
    return rec


# ----------------------------------------------------------------------------------------------
# reference worker (runs inside the venv, in its own process)
# ----------------------------------------------------------------------------------------------
def reference_worker(cfg_path: str) -> int:
    import logging
    import random
    import warnings

    import numpy as np
    import pandas as pd
    import psutil
    import scipy.sparse as sp
    import anndata as ad
    import scanpy as sc
    import scvelo as scv
    import cellrank as cr

    warnings.simplefilter("ignore")
    cfg = json.load(open(cfg_path))
    out = cfg["out"]
    prog_path = os.path.join(out, "reference_progress.json")
    proc = psutil.Process()
    state = {"stages": [], "current": None, "warmup_seconds": None, "notes": {}}
    lock = threading.Lock()
    sampled = {"peak": 0}

    def flush():
        with lock:
            doc = dict(state)
            tmp = prog_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(doc, fh, indent=1, default=str)
            os.replace(tmp, prog_path)

    stop = threading.Event()

    def sampler():
        while not stop.wait(0.01):
            try:
                r = proc.memory_info().rss
            except Exception:  # noqa: BLE001
                continue
            if r > sampled["peak"]:
                sampled["peak"] = r

    threading.Thread(target=sampler, daemon=True).start()
    cr.settings.logging_level = logging.ERROR
    sc.settings.verbosity = 0
    scv.settings.verbosity = 0

    def stage(name, fn, *a, record=True, **kw):
        if not record:
            return fn(*a, **kw)
        maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sampled["peak"] = proc.memory_info().rss
        state["current"] = {"stage": name, "started": time.time()}
        flush()
        t = time.perf_counter()
        res = fn(*a, **kw)
        sec = time.perf_counter() - t
        maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss1 / 1024.0 if maxrss1 > maxrss0 else sampled["peak"] / 2**20
        state["stages"].append({"stage": name, "seconds": sec, "peak_mb": round(peak, 1),
                                "rss_after_mb": round(proc.memory_info().rss / 2**20, 1)})
        state["current"] = None
        flush()
        print(f"[reference] {name}: {sec:.3f}s peak {peak:.0f} MB", flush=True)
        return res

    def pipeline(adata, record: bool, proc_path: str | None):
        random.seed(0)
        np.random.seed(0)
        ck = cfg["cluster_key"]
        if ck in adata.obs and not isinstance(adata.obs[ck].dtype, pd.CategoricalDtype):
            adata.obs[ck] = adata.obs[ck].astype(str).astype("category")
        S = lambda n, f, *a, **k: stage(n, f, *a, record=record, **k)  # noqa: E731
        S("pp.filter_and_normalize", scv.pp.filter_and_normalize, adata, min_shared_counts=20)
        S("pp.log1p", sc.pp.log1p, adata)
        S("pp.highly_variable_genes", sc.pp.highly_variable_genes, adata,
          n_top_genes=min(2000, adata.n_vars), subset=True)
        S("pp.pca", sc.tl.pca, adata, random_state=0)
        S("pp.neighbors", sc.pp.neighbors, adata, n_pcs=min(30, adata.obsm["X_pca"].shape[1]),
          n_neighbors=30, random_state=0)
        S("pp.moments", scv.pp.moments, adata, n_pcs=None, n_neighbors=None)
        S("velocity", scv.tl.velocity, adata, mode=cfg["velocity_mode"])
        if proc_path:
            t = time.perf_counter()
            adata.write_h5ad(proc_path)
            state["notes"]["write_processed_seconds"] = time.perf_counter() - t
        vk = S("kernel.velocity", lambda: cr.kernels.VelocityKernel(adata).compute_transition_matrix())
        ckk = S("kernel.connectivity", lambda: cr.kernels.ConnectivityKernel(adata).compute_transition_matrix())

        def comb():
            k = 0.8 * vk + 0.2 * ckk
            _ = k.transition_matrix
            return k

        k = S("kernel.combine", comb)
        res = {"adata": adata, "vk": vk, "ck": ckk, "k": k}
        if cfg.get("kernels_only"):
            return res
        g = cr.estimators.GPCCA(k)
        res["g"] = g
        S("schur", g.compute_schur, n_components=20)
        ncell = {"n_cells": cfg["n_cells"]} if cfg.get("n_cells") else {}
        S("macrostates", g.compute_macrostates, n_states=cfg["n_states"], cluster_key=ck, **ncell)

        def term():
            if cfg.get("terminal_top_n"):
                g.predict_terminal_states(method="top_n", n_states=cfg["terminal_top_n"], **ncell)
            else:
                g.predict_terminal_states(**ncell)
                if g.terminal_states is None:
                    g.predict_terminal_states(method="top_n", n_states=2)
                    state["notes"]["terminal_fallback"] = "top_n 2"

        S("terminal_states", term)
        def with_direct_fallback(fn, what):
            # CellRank's default iterative solve can fail its row-sum check (1e-3) on nearly closed
            # terminal states; its error message suggests solver='direct', which is then used
            try:
                return fn(show_progress_bar=False)
            except ValueError as e:
                state["notes"][f"{what}_fallback"] = "solver='direct' after: " + str(e)[:300]
                return fn(show_progress_bar=False, solver="direct")

        S("fates", with_direct_fallback, g.compute_fate_probabilities, "fates")
        if cfg.get("absorption_times"):
            S("absorption_times", with_direct_fallback, g.compute_absorption_times, "absorption_times")
        res["drivers"] = S("drivers", g.compute_lineage_drivers, cluster_key=ck, show_progress_bar=False)
        if record and adata.X.dtype != np.float64:
            # the same call on X upcast to float64 (CellRank keeps float32 X in float32): not timed
            x32 = adata.X
            try:
                adata.X = x32.astype(np.float64)
                res["drivers_f64"] = g.compute_lineage_drivers(cluster_key=ck, show_progress_bar=False).copy()
            finally:
                adata.X = x32
        return res

    # ---- warm-up (numba JIT etc.), not recorded per stage
    t = time.perf_counter()
    state["current"] = {"stage": "warmup", "started": time.time()}
    flush()
    try:
        a = ad.read_h5ad(cfg["input"])
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(a.n_obs, min(400, a.n_obs), replace=False))
        a = a[keep].copy()
        try:
            wcfg_n = cfg["n_states"]
            cfg["n_states"] = min(wcfg_n, 3)
            try:
                pipeline(a, record=False, proc_path=None)
            finally:
                cfg["n_states"] = wcfg_n
        except Exception as e:  # noqa: BLE001
            state["notes"]["warmup_error"] = repr(e)[:500]
        if cfg.get("n_obs_hint", 0) >= 8192:  # scanpy switches to pynndescent at >= 8192 cells
            tiny = ad.AnnData(rng.normal(size=(600, 30)).astype(np.float32))
            tiny.obsm["X_pca"] = tiny.X.copy()
            sc.pp.neighbors(tiny, n_neighbors=30, transformer="pynndescent", random_state=0)
        del a
    except Exception as e:  # noqa: BLE001
        state["notes"]["warmup_error"] = repr(e)[:500]
    state["warmup_seconds"] = time.perf_counter() - t
    state["current"] = None
    flush()
    print(f"[reference] warm-up {state['warmup_seconds']:.1f}s", flush=True)

    # ---- timed run
    adata = stage("load", ad.read_h5ad, cfg["input"])
    proc_path = os.path.join(out, "reference_processed.h5ad")
    res = pipeline(adata, record=True, proc_path=proc_path)
    state["current"] = {"stage": "write_outputs", "started": time.time()}
    flush()

    # ---- outputs: processed file + every result under plain keys (not timed)
    o = ad.read_h5ad(proc_path)
    o.obsp["T_vk"] = sp.csr_matrix(res["vk"].transition_matrix).astype(np.float64)
    o.obsp["T_ck"] = sp.csr_matrix(res["ck"].transition_matrix).astype(np.float64)
    o.obsp["T_combined"] = sp.csr_matrix(res["k"].transition_matrix).astype(np.float64)
    g = res.get("g")
    if g is not None:
        o.obsm["schur_vectors_fwd"] = np.asarray(g.schur_vectors)
        ev = np.asarray(g.eigendecomposition["D"])
        o.uns["ref_eigenvalues_real"] = ev.real.copy()
        o.uns["ref_eigenvalues_imag"] = ev.imag.copy()
        o.obs["macrostates_fwd"] = pd.Categorical(np.asarray(g.macrostates.astype(object)))
        mm = g.macrostates_memberships
        o.obsm["macrostates_fwd_memberships"] = np.asarray(mm)
        o.uns["macrostates_fwd_names"] = np.array(list(mm.names), dtype=object)
        o.obs["term_states_fwd"] = pd.Categorical(np.asarray(g.terminal_states.astype(object)))
        fp = g.fate_probabilities
        o.obsm["lineages_fwd"] = np.asarray(fp)
        o.uns["lineages_fwd_names"] = np.array(list(fp.names), dtype=object)
        if cfg.get("absorption_times") and g.absorption_times is not None:
            at = g.absorption_times
            for c in at.columns:
                o.obs[f"ref_abs_{c}"] = np.asarray(at[c], dtype=float)
        dr = res.get("drivers")
        for prefix, dr in (("ref_drivers_", dr), ("ref_drivers64_", res.get("drivers_f64"))):
            if dr is not None:
                dr = pd.DataFrame(dr).reindex(o.var_names)
                for c in dr.columns:
                    o.var[f"{prefix}{c}"] = np.asarray(dr[c], dtype=float)
    o.uns["reference_versions"] = json.dumps({
        n: __import__("importlib.metadata").metadata.version(n)
        for n in ("cellrank", "scvelo", "scanpy", "anndata", "numpy", "scipy", "pygpcca", "numba")})
    o.write_h5ad(os.path.join(out, "reference_outputs.h5ad"))
    state["current"] = None
    state["finished"] = True
    flush()
    stop.set()
    return 0


def run_reference(py: str, cfg: dict, timeout: float, mem_limit_gb: float) -> dict:
    import psutil

    out = cfg["out"]
    os.makedirs(out, exist_ok=True)
    cfg_path = os.path.join(out, "reference_config.json")
    json.dump(cfg, open(cfg_path, "w"), indent=1)
    prog_path = os.path.join(out, "reference_progress.json")
    if os.path.exists(prog_path):
        os.remove(prog_path)
    logf = os.path.join(out, "reference.log")
    log(f"reference: CellRank 2.3.3 on {cfg['input']} (log {logf})")
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(logf, "w") as fh:
        p = subprocess.Popen([py, os.path.abspath(__file__), "--_reference-worker", cfg_path],
                             stdout=fh, stderr=subprocess.STDOUT, env=env)
        pp = psutil.Process(p.pid)
        stopped = None
        while p.poll() is None:
            time.sleep(0.5)
            try:
                prog = json.load(open(prog_path))
            except (OSError, ValueError):
                prog = {}
            cur = prog.get("current")
            try:
                rss = pp.memory_info().rss / 2**30
            except psutil.Error:
                rss = 0
            if cur and cur.get("stage") not in ("write_outputs",) and time.time() - cur["started"] > timeout:
                stopped = {"stage": cur["stage"], "reason": f"stage exceeded the {timeout:.0f} s cap",
                           "seconds_so_far": time.time() - cur["started"], "rss_gb": round(rss, 2)}
            elif rss > mem_limit_gb:
                stopped = {"stage": (cur or {}).get("stage"), "reason": f"RSS {rss:.1f} GB > {mem_limit_gb} GB limit",
                           "seconds_so_far": time.time() - cur["started"] if cur else None}
            if stopped:
                p.kill()
                p.wait()
                log(f"reference stopped: {stopped}")
                break
    try:
        prog = json.load(open(prog_path))
    except (OSError, ValueError):
        prog = {"stages": []}
    prog["exit"] = p.returncode
    prog["wall_seconds"] = time.perf_counter() - t0
    prog["stopped"] = stopped
    if p.returncode != 0 and not stopped:
        with open(logf) as fh:
            tail = fh.read()[-3000:]
        cur = prog.get("current") or {}
        last = [ln for ln in tail.strip().splitlines() if ln.strip()]
        prog["stopped"] = {"stage": cur.get("stage"), "reason": "error: " + (last[-1][:200] if last else "?"),
                           "seconds_so_far": (time.time() - cur["started"]) if cur.get("started") else None,
                           "error": tail}
        log(f"reference failed at {prog['stopped']['stage']}: see {logf}")
    prog["outputs"] = os.path.join(out, "reference_outputs.h5ad") if prog.get("finished") else None
    json.dump(prog, open(os.path.join(out, "reference_result.json"), "w"), indent=1, default=str)
    return prog


# ----------------------------------------------------------------------------------------------
# reading results (h5py; only the slots needed)
# ----------------------------------------------------------------------------------------------
def h5_str(a):
    import numpy as np

    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in a], dtype=object)


def read_csr(f, key):
    import scipy.sparse as sp

    g = f[key]
    shape = tuple(int(x) for x in g.attrs["shape"])
    return sp.csr_matrix((g["data"][...], g["indices"][...], g["indptr"][...]), shape=shape)


def read_obs_col(f, group, col):
    import numpy as np

    g = f[group][col]
    if isinstance(g, type(f)) or hasattr(g, "keys"):  # categorical
        cats = read_strings(g["categories"])
        codes = g["codes"][...]
        return np.array([cats[c] if c >= 0 else None for c in codes], dtype=object)
    v = g[...]
    if v.dtype.kind in "SO":
        return h5_str(v)
    return v


def read_strings(node):
    """A string array: plain dataset or anndata's nullable-string-array group (values + mask)."""
    if hasattr(node, "keys"):
        vals = h5_str(node["values"][...])
        if "mask" in node:
            mask = node["mask"][...]
            vals = [None if m else v for v, m in zip(vals, mask)]
        return list(vals)
    return list(h5_str(node[...]))


def index_of(f, group):
    key = f[group].attrs.get("_index", "_index")
    if isinstance(key, bytes):
        key = key.decode()
    return read_strings(f[group][str(key)])


def read_names(f, key):
    return read_strings(f[key])


def read_dense(f, key):
    import numpy as np

    g = f[key]
    if hasattr(g, "keys"):  # sparse group
        return read_csr(f, key).toarray()
    return np.asarray(g[...])


def read_df(f, key):
    import pandas as pd

    g = f[key]
    cols = {c: g[c][...] for c in g.keys() if c != g.attrs.get("_index", "_index")}
    return pd.DataFrame(cols)


# ----------------------------------------------------------------------------------------------
# agreement metrics
# ----------------------------------------------------------------------------------------------
def max_abs_diff_sparse(a, b):
    d = (a - b).tocsr()
    return float(abs(d).max()) if d.nnz else 0.0


def eig_match(ref, cf, k):
    """Max |lambda_ref - lambda_cf| over the top-k reference eigenvalues (by real part), matched
    one-to-one as complex numbers (Hungarian), a conjugate pair never split."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    ref = np.asarray(ref, dtype=complex)
    cf = np.asarray(cf, dtype=complex)
    order = np.argsort(-ref.real, kind="stable")
    ref = ref[order]
    k = min(k, len(ref))
    while k < len(ref) and abs(ref[k - 1].imag) > 1e-12 and abs(ref[k].real - ref[k - 1].real) < 1e-8:
        k += 1  # keep the pair whole
    top = ref[:k]
    cost = np.abs(top[:, None] - cf[None, :])
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].max()), k


def subspace_angle(a, b, k):
    import numpy as np
    from scipy.linalg import subspace_angles

    k = min(k, a.shape[1], b.shape[1])
    return float(np.max(subspace_angles(a[:, :k], b[:, :k]))), k


def state_sets(labels):
    out = {}
    for i, l in enumerate(labels):
        if l is not None and l == l and str(l) != "nan":
            out.setdefault(str(l), set()).add(i)
    return out


def jaccard(a, b):
    return len(a & b) / max(1, len(a | b))


def lineage_base(name: str) -> str:
    import re

    return re.sub(r"_\d+$", "", str(name))


def fates_compare(ref_P, ref_names, cf_P, cf_names):
    import numpy as np

    res = {"common": [], "max_abs": None, "pearson": {}}
    common = [n for n in ref_names if n in cf_names]
    res["common"] = common
    if not common:
        return res
    mx = 0.0
    for n in common:
        a = ref_P[:, ref_names.index(n)]
        b = cf_P[:, cf_names.index(n)]
        mx = max(mx, float(np.max(np.abs(a - b))))
        res["pearson"][n] = float(np.corrcoef(a, b)[0, 1])
    res["max_abs"] = mx
    return res


def drivers_compare(ref_corr: dict, cf_corr: dict, ref_genes, cf_genes, top=50):
    """ref_corr/cf_corr: lineage -> corr array over ref_genes / cf_genes (NaN = untested)."""
    import numpy as np

    res = {}
    cf_idx = {g: i for i, g in enumerate(cf_genes)}
    for lin, rc in ref_corr.items():
        if lin not in cf_corr:
            continue
        cc = cf_corr[lin]
        pairs = [(i, cf_idx[g]) for i, g in enumerate(ref_genes) if g in cf_idx]
        ri = np.array([p[0] for p in pairs])
        ci = np.array([p[1] for p in pairs])
        a, b = rc[ri], cc[ci]
        ok = np.isfinite(a) & np.isfinite(b)
        genes = np.asarray(ref_genes)[ri]
        ga, gb = genes[ok], genes[ok]
        ta = set(ga[np.argsort(-a[ok], kind="stable")[:top]])
        tb = set(gb[np.argsort(-b[ok], kind="stable")[:top]])
        res[lin] = {"n_genes": int(ok.sum()), "max_abs_corr_diff": float(np.max(np.abs(a[ok] - b[ok]))) if ok.any() else None,
                    f"top{top}_overlap": len(ta & tb) / float(top)}
    return res


def ref_drivers_from_var(f, lineages, prefix="ref_drivers_"):
    import numpy as np

    genes = index_of(f, "var")
    out = {}
    for lin in lineages:
        key = f"{prefix}{lin}_corr"
        if key in f["var"]:
            out[lin] = np.asarray(f["var"][key][...], dtype=float)
    return out, genes


def cf_drivers(f, lineages):
    import numpy as np

    genes = index_of(f, "var")
    out = {}
    if "varm/terminal_lineage_drivers" in f:
        g = f["varm/terminal_lineage_drivers"]
        for lin in lineages:
            if f"{lin}_corr" in g:
                out[lin] = np.asarray(g[f"{lin}_corr"][...], dtype=float)
    return out, genes


# ----------------------------------------------------------------------------------------------
# mode 1: one dataset
# ----------------------------------------------------------------------------------------------
def compare_dataset(args, py, cf: CF, inp: str, out: str) -> tuple[dict, dict, bool]:
    import h5py
    import numpy as np

    os.makedirs(out, exist_ok=True)
    with h5py.File(inp, "r") as f:
        n_obs = len(index_of(f, "obs"))
    cfg = {"input": os.path.abspath(inp), "out": os.path.abspath(out), "cluster_key": args.cluster_key,
           "n_states": args.n_states, "velocity_mode": args.ref_velocity_mode, "n_obs_hint": n_obs}
    ref = run_reference(py, cfg, args.stage_timeout, args.mem_limit_gb) if not args.skip_reference else None
    refout = ref["outputs"] if ref else args.reference_outputs
    J = lambda n: os.path.join(out, n)  # noqa: E731
    opt = ["--optimizer", args.optimizer] if args.optimizer else []
    mac = ["--n-states", str(args.n_states), "--cluster-key", args.cluster_key] + opt
    chainA, chainB = {}, {}
    if refout:
        # (A) same input: the reference's processed file
        chainA["kernel"] = cf.run("A.kernel", ["kernel", refout, "-o", J("cfA.kernel.h5ad"),
                                               "--kernel", "0.8*velocity + 0.2*connectivity"])
        chainA["kernel_vk"] = cf.run("A.kernel_vk", ["kernel", refout, "-o", J("cfA.vk.h5ad"), "--kernel", "velocity"])
        chainA["kernel_ck"] = cf.run("A.kernel_ck", ["kernel", refout, "-o", J("cfA.ck.h5ad"), "--kernel", "connectivity"])
        chainA["macrostates"] = cf.run("A.macrostates", ["macrostates", J("cfA.kernel.h5ad"), "-o", J("cfA.macro.h5ad")] + mac)
        chainA["fates"] = cf.run("A.fates", ["fates", J("cfA.macro.h5ad"), "-o", J("cfA.fates.h5ad"), "--priming", "none"])
        chainA["drivers"] = cf.run("A.drivers", ["drivers", J("cfA.fates.h5ad"), "-o", J("cfA.drivers.h5ad")])
        # gated inputs: the reference's own T + terminal states; the reference's own fates
        chainA["fates_refT"] = cf.run("A.fates_refT", ["fates", refout, "-o", J("cfA.fates_refT.h5ad"),
                                                       "--transition-key", "T_combined", "--priming", "none"])
        chainA["drivers_refP"] = cf.run("A.drivers_refP", ["drivers", refout, "-o", J("cfA.drivers_refP.h5ad")])
        chainA["run_split"] = cf_run_split(cf, J("cfA.kernel.h5ad"), J("cfA.run.h5ad"),
                                           ["--transition-key", "T_fwd"] + mac)
    # (B) from the raw file
    pre = ["preprocess", inp, "-o", J("cfB.pp.h5ad")]
    if cf.has_flag("preprocess", "--velocity-mode") and args.ref_velocity_mode == "stochastic":
        pre += ["--velocity-mode", "stochastic"]
    chainB["preprocess"] = cf.run("B.preprocess", pre)
    if chainB["preprocess"]["status"] == "ok":
        chainB["kernel"] = cf.run("B.kernel", ["kernel", J("cfB.pp.h5ad"), "-o", J("cfB.kernel.h5ad")])
        chainB["macrostates"] = cf.run("B.macrostates", ["macrostates", J("cfB.kernel.h5ad"), "-o", J("cfB.macro.h5ad")] + mac)
        chainB["fates"] = cf.run("B.fates", ["fates", J("cfB.macro.h5ad"), "-o", J("cfB.fates.h5ad"), "--priming", "none"])
        chainB["drivers"] = cf.run("B.drivers", ["drivers", J("cfB.fates.h5ad"), "-o", J("cfB.drivers.h5ad")])

    timing = timing_table(ref, chainA, chainB)
    agreement, ok = agreement_tables(args, refout, out, chainA, chainB)
    timing["dataset"] = inp
    agreement["dataset"] = inp
    return timing, agreement, ok


def timing_table(ref, chainA, chainB):
    rs = {s["stage"]: s for s in (ref or {}).get("stages", [])}

    def rsum(names):
        xs = [rs[n] for n in names if n in rs]
        if not xs or len(xs) < len(names):
            return None, None
        return sum(x["seconds"] for x in xs), max(x["peak_mb"] for x in xs)

    def c(rec):
        if not rec or rec.get("status") != "ok":
            return None, None
        return rec["seconds"], rec["peak_mb"]

    split = (chainA.get("run_split") or {}).get("split", {})
    pp_names = ["pp.filter_and_normalize", "pp.log1p", "pp.highly_variable_genes", "pp.pca",
                "pp.neighbors", "pp.moments", "velocity"]
    rows = []

    def add(label, rtm, ctm, note=""):
        rt, rm = rtm
        ct, cm = ctm
        ratio = (rt / ct) if (rt is not None and ct) else None
        rows.append({"stage": label, "reference_s": rt, "cellfate_s": ct, "ratio": ratio,
                     "reference_mb": rm, "cellfate_mb": cm, "note": note})

    add("load (.h5ad read)", rsum(["load"]), (None, None), "cellfate reads inside each stage")
    add("preprocess: normalise → velocity (total)", rsum(pp_names), c(chainB.get("preprocess")), "cellfate: raw file (B)")
    for n in pp_names:
        add(f"  {n}", rsum([n]), (None, None), "in cellfate preprocess")
    add("kernels: 0.8·velocity + 0.2·connectivity", rsum(["kernel.velocity", "kernel.connectivity", "kernel.combine"]),
        c(chainA.get("kernel")), "same input (A)")
    add("  velocity kernel", rsum(["kernel.velocity"]), c(chainA.get("kernel_vk")), "separate cellfate run")
    add("  connectivity kernel", rsum(["kernel.connectivity"]), c(chainA.get("kernel_ck")), "separate cellfate run")
    add("Schur + macrostates + terminal states", rsum(["schur", "macrostates", "terminal_states"]),
        c(chainA.get("macrostates")), "same input (A)")
    sp_ = lambda k: (split.get(k), None)  # noqa: E731
    add("  Schur (20/21 vectors) †", rsum(["schur"]), sp_("Schur decomposition"), "† in-process split of `cellfate run`")
    add("  macrostates (GPCCA) †", rsum(["macrostates"]),
        ((split.get("stationary distribution") or 0) + (split.get("macrostates (GPCCA)") or 0) or None, None), "† incl. stationary distribution")
    add("  terminal states †", rsum(["terminal_states"]), sp_("terminal states"), "†")
    add("fate probabilities", rsum(["fates"]), c(chainA.get("fates")), "same input (A)")
    add("lineage drivers", rsum(["drivers"]), c(chainA.get("drivers")), "same input (A)")
    tot_names = pp_names + ["kernel.velocity", "kernel.connectivity", "kernel.combine", "schur", "macrostates",
                            "terminal_states", "fates", "drivers"]
    cf_tot = None
    parts = [chainB.get("preprocess"), chainA.get("kernel"), chainA.get("macrostates"), chainA.get("fates"), chainA.get("drivers")]
    if all(p and p.get("status") == "ok" for p in parts):
        cf_tot = (sum(p["seconds"] for p in parts), max(p["peak_mb"] for p in parts))
    add("**total** (preprocess → drivers)", rsum(tot_names), cf_tot or (None, None), "cellfate incl. file I/O of 5 processes")
    return {"rows": rows, "reference": ref, "cellfate_A": chainA, "cellfate_B": chainB,
            "warmup_seconds": (ref or {}).get("warmup_seconds")}


def agreement_tables(args, refout, out, chainA, chainB):
    import h5py
    import numpy as np

    rows = []
    ok_all = True

    def row(quantity, inputs, value, tol=None, note=""):
        nonlocal ok_all
        passed = None
        if tol is not None:
            passed = value is not None and not (isinstance(value, float) and math.isnan(value)) and (
                value <= tol if not isinstance(value, bool) else value)
            ok_all &= bool(passed)
        rows.append({"quantity": quantity, "inputs": inputs, "value": value, "tolerance": tol,
                     "pass": passed, "note": note})

    J = lambda n: os.path.join(out, n)  # noqa: E731
    okA = lambda k: chainA.get(k, {}).get("status") == "ok"  # noqa: E731
    if refout is None:
        row("reference outputs", "—", "missing (reference stopped)", None)
        return {"rows": rows}, False
    R = h5py.File(refout, "r")
    same = "reference's processed file (same input)"
    if okA("kernel"):
        with h5py.File(J("cfA.kernel.h5ad"), "r") as f:
            row("T = 0.8·vk + 0.2·ck: max |ΔT|", same, max_abs_diff_sparse(read_csr(f, "obsp/T_fwd"), read_csr(R, "obsp/T_combined")), 1e-6)
    else:
        row("T combined", same, "cellfate kernel failed", 1e-6)
    for k, key in (("kernel_vk", "T_vk"), ("kernel_ck", "T_ck")):
        if okA(k):
            with h5py.File(J(f"cfA.{k[-2:]}.h5ad"), "r") as f:
                row(f"{key}: max |ΔT|", same, max_abs_diff_sparse(read_csr(f, "obsp/T_fwd"), read_csr(R, f"obsp/{key}")), 1e-6)
    n_states = args.n_states
    ref_ts = read_obs_col(R, "obs", "term_states_fwd")
    ref_lin = read_names(R, "uns/lineages_fwd_names")
    ref_P = np.asarray(R["obsm/lineages_fwd"][...])
    same_T_ts = False
    if okA("macrostates"):
        with h5py.File(J("cfA.macro.h5ad"), "r") as f:
            ev_cf = np.asarray(f["uns/eigendecomposition_fwd/D"][...])
            ev_ref = np.asarray(R["uns/ref_eigenvalues_real"][...]) + 1j * np.asarray(R["uns/ref_eigenvalues_imag"][...])
            k_gate = max(n_states + 2, 10)
            d, kk = eig_match(ev_ref, ev_cf, k_gate)
            row(f"eigenvalues, top {kk}: max |Δλ|", same + ", cellfate T", d, 1e-8, "matched as complex numbers")
            d_all, kk_all = eig_match(ev_ref, ev_cf, len(ev_ref))
            row(f"eigenvalues, all {kk_all}: max |Δλ|", same + ", cellfate T", d_all, None, "report only")
            Xr = np.asarray(R["obsm/schur_vectors_fwd"][...])
            Xc = np.asarray(f["obsm/schur_vectors_fwd"][...])
            a, k1 = subspace_angle(Xr, Xc, n_states)
            row(f"Schur subspace, first {k1} vectors: max principal angle (rad)", same + ", cellfate T", a, None)
            a2, k2 = subspace_angle(Xr, Xc, min(Xr.shape[1], Xc.shape[1]))
            row(f"Schur subspace, all {k2} vectors: max principal angle (rad)", same + ", cellfate T", a2, None)
            ms_r = state_sets(read_obs_col(R, "obs", "macrostates_fwd"))
            ms_c = state_sets(read_obs_col(f, "obs", "macrostates_fwd"))
            row("macrostate names identical", same, sorted(ms_r) == sorted(ms_c), None,
                f"reference {sorted(ms_r)} / cellfate {sorted(ms_c)}")
            if sorted(ms_r) == sorted(ms_c):
                row("macrostate cells: min Jaccard over states", same, min(jaccard(ms_r[k], ms_c[k]) for k in ms_r), None)
                mr = np.asarray(R["obsm/macrostates_fwd_memberships"][...])
                mc = np.asarray(f["obsm/macrostates_fwd_memberships"][...])
                nr, nc = read_names(R, "uns/macrostates_fwd_names"), read_names(f, "uns/macrostates_fwd_names")
                if sorted(nr) == sorted(nc):
                    row("macrostate memberships: max |Δ|", same, float(max(np.max(np.abs(mr[:, nr.index(n)] - mc[:, nc.index(n)])) for n in nr)), None,
                        f"optimizer {args.optimizer or 'default'}")
            ts_r = state_sets(ref_ts)
            ts_c = state_sets(read_obs_col(f, "obs", "term_states_fwd"))
            same_set = sorted(ts_r) == sorted(ts_c)
            row("terminal states: same set", same, same_set, True, f"reference {sorted(ts_r)} / cellfate {sorted(ts_c)}")
            if same_set:
                jac = {k: jaccard(ts_r[k], ts_c[k]) for k in ts_r}
                row("terminal-state cells: min Jaccard", same, min(jac.values()) if jac else None, None, json.dumps({k: round(v, 4) for k, v in jac.items()}))
                same_T_ts = all(v == 1.0 for v in jac.values())
    else:
        row("terminal states: same set", same, "cellfate macrostates failed", True)
    if okA("fates"):
        with h5py.File(J("cfA.fates.h5ad"), "r") as f:
            fc = fates_compare(ref_P, ref_lin, np.asarray(f["obsm/lineages_fwd"][...]), read_names(f, "uns/lineages_fwd_names"))
            row("fate probabilities (cellfate T + cellfate terminal states): max |Δ|", same, fc["max_abs"], None,
                "identical terminal cells" if same_T_ts else "terminal cells differ")
            row("  per-lineage Pearson r", same, ", ".join(f"{k} {v:.8f}" for k, v in fc["pearson"].items()), None)
    if okA("fates_refT"):
        with h5py.File(J("cfA.fates_refT.h5ad"), "r") as f:
            fc = fates_compare(ref_P, ref_lin, np.asarray(f["obsm/lineages_fwd"][...]), read_names(f, "uns/lineages_fwd_names"))
            row("fate probabilities from the reference's T + terminal states: max |Δ|", same + " + reference T_combined, term_states_fwd",
                fc["max_abs"], 1e-5, "CellRank solves with GMRES at tol 1e-6")
            row("  per-lineage Pearson r", "same", ", ".join(f"{k} {v:.10f}" for k, v in fc["pearson"].items()), None)
    else:
        row("fate probabilities from the reference's T + terminal states", same, "cellfate fates failed", 1e-5)
    rdr, rgenes = ref_drivers_from_var(R, ref_lin)
    rdr64, _ = ref_drivers_from_var(R, ref_lin, "ref_drivers64_")
    if okA("drivers_refP"):
        with h5py.File(J("cfA.drivers_refP.h5ad"), "r") as f:
            cdr, cgenes = cf_drivers(f, ref_lin)
            dc = drivers_compare(rdr, cdr, rgenes, cgenes)
            mx = max((v["max_abs_corr_diff"] for v in dc.values() if v["max_abs_corr_diff"] is not None), default=None)
            gate64 = bool(rdr64)
            row("driver correlations from the reference's fate probabilities: max |Δcorr|", same + " + reference lineages_fwd", mx,
                None if gate64 else 1e-6, "CellRank as run: float32 X computed in float32" + ("; gated on the float64 row below" if gate64 else ""))
            row("  top-50 driver overlap per lineage", "same", ", ".join(f"{k} {v['top50_overlap']:.2f}" for k, v in dc.items()), None)
            if gate64:
                dc64 = drivers_compare(rdr64, cdr, rgenes, cgenes)
                mx64 = max((v["max_abs_corr_diff"] for v in dc64.values() if v["max_abs_corr_diff"] is not None), default=None)
                row("driver correlations vs CellRank on X upcast to float64: max |Δcorr|", same + " + reference lineages_fwd", mx64, 1e-6,
                    "same call, adata.X.astype(float64)")
    else:
        row("driver correlations from the reference's fates", same, "cellfate drivers failed", 1e-6)
    if okA("drivers"):
        with h5py.File(J("cfA.drivers.h5ad"), "r") as f:
            cdr, cgenes = cf_drivers(f, ref_lin)
            dc = drivers_compare(rdr, cdr, rgenes, cgenes)
            mx = max((v["max_abs_corr_diff"] for v in dc.values() if v["max_abs_corr_diff"] is not None), default=None)
            row("driver correlations, cellfate's own chain: max |Δcorr|", same + ", cellfate T/states/fates", mx, None)
    # (B) full pipeline from raw
    full = "raw file: each tool's own preprocessing (report only)"
    if chainB.get("fates", {}).get("status") == "ok":
        with h5py.File(J("cfB.fates.h5ad"), "r") as f:
            ts_c = state_sets(read_obs_col(f, "obs", "term_states_fwd"))
            row("full pipeline: terminal states", full, sorted(state_sets(ref_ts)) == sorted(ts_c), None,
                f"reference {sorted(state_sets(ref_ts))} / cellfate {sorted(ts_c)}")
            fc = fates_compare(ref_P, ref_lin, np.asarray(f["obsm/lineages_fwd"][...]), read_names(f, "uns/lineages_fwd_names"))
            if fc["common"]:
                row("full pipeline: fate probabilities max |Δ|", full, fc["max_abs"], None)
                row("full pipeline: per-lineage Pearson r", full, ", ".join(f"{k} {v:.5f}" for k, v in fc["pearson"].items()), None)
    if chainB.get("kernel", {}).get("status") == "ok":
        with h5py.File(J("cfB.kernel.h5ad"), "r") as f:
            cg, rg = index_of(f, "var"), index_of(R, "var")
            ci = {g: i for i, g in enumerate(cg)}
            common = [(i, ci[g]) for i, g in enumerate(rg) if g in ci]
            row("full pipeline: genes after filtering / HVG", full, f"reference {len(rg)}, cellfate {len(cg)} (all kept), common {len(common)}", None)
            try:
                Cr, Cc = read_csr(R, "obsp/connectivities"), read_csr(f, "obsp/connectivities")
                row("full pipeline: kNN connectivities max |Δ|", full, max_abs_diff_sparse(Cc.astype(float), Cr.astype(float)), None)
                row("full pipeline: T max |ΔT|", full, max_abs_diff_sparse(read_csr(f, "obsp/T_fwd"), read_csr(R, "obsp/T_combined")), None)
                ri = np.array([a for a, _ in common])
                cj = np.array([b for _, b in common])
                vr = read_dense(R, "layers/velocity")[:, ri].astype(float)
                vc = read_dense(f, "layers/velocity")[:, cj].astype(float)
                ok = np.isfinite(vr) & np.isfinite(vc)
                row("full pipeline: velocity max |Δ| (common genes, finite)", full, float(np.max(np.abs(vr - vc)[ok])) if ok.any() else None, None,
                    f"max |velocity| {float(np.nanmax(np.abs(vr))):.3g}")
            except Exception as e:  # noqa: BLE001
                row("full pipeline: T / kNN / velocity", full, f"not compared: {e!r}"[:200], None)
    if chainB.get("drivers", {}).get("status") == "ok":
        with h5py.File(J("cfB.drivers.h5ad"), "r") as f:
            cdr, cgenes = cf_drivers(f, ref_lin)
            dc = drivers_compare(rdr, cdr, rgenes, cgenes)
            if dc:
                row("full pipeline: top-50 driver overlap", full, ", ".join(f"{k} {v['top50_overlap']:.2f}" for k, v in dc.items()), None)
    R.close()
    return {"rows": rows, "pass": ok_all}, ok_all


# ----------------------------------------------------------------------------------------------
# mode 2: ground truth on a simulation
# ----------------------------------------------------------------------------------------------
def ground_truth_metrics(sim_path, result_path, tool, vel_path=None, abs_prefix=None):
    """Velocity cosine (velocity genes), most-likely-fate accuracy, Spearman(true_time, -E[absorption time])."""
    import h5py
    import numpy as np
    from scipy.stats import spearmanr

    res = {"tool": tool}
    with h5py.File(sim_path, "r") as S:
        sg = index_of(S, "var")
        tv_all = read_dense(S, "layers/true_velocity")
        true_fate = read_obs_col(S, "obs", "true_fate")
        true_state = read_obs_col(S, "obs", "true_state")
        true_time = np.asarray(S["obs/true_time"][...], dtype=float)
    with h5py.File(vel_path or result_path, "r") as F:
        genes = index_of(F, "var")
        v = read_dense(F, "layers/velocity").astype(float)
        vg = np.asarray(F["var/velocity_genes"][...], dtype=bool) if "var/velocity_genes" in F else np.ones(len(genes), bool)
    idx = {g: i for i, g in enumerate(sg)}
    cols = [i for i, g in enumerate(genes) if vg[i] and g in idx]
    tv = tv_all[:, [idx[genes[i]] for i in cols]].astype(float)
    vv = np.nan_to_num(v[:, cols])
    num = (vv * tv).sum(1)
    den = np.linalg.norm(vv, axis=1) * np.linalg.norm(tv, axis=1)
    okc = den > 0
    cos = num[okc] / den[okc]
    res["n_velocity_genes"] = len(cols)
    res["velocity_cosine_median"] = float(np.median(cos))
    res["velocity_cosine_mean"] = float(np.mean(cos))
    if result_path is None or not os.path.exists(result_path):
        res["error"] = "no fate probabilities (see the stage logs); velocity only"
        return res
    with h5py.File(result_path, "r") as F:
        P = np.asarray(F["obsm/lineages_fwd"][...])
        names = read_names(F, "uns/lineages_fwd_names")
        base = [lineage_base(n) for n in names]
        pred = np.array([base[i] for i in np.argmax(P, axis=1)], dtype=object)
        res["lineages"] = names
        res["fate_accuracy_all"] = float(np.mean(pred == true_fate))
        committed = np.array([s != "Progenitor" for s in true_state])
        res["fate_accuracy_committed"] = float(np.mean(pred[committed] == true_fate[committed]))
        fate_cols = [j for j, b in enumerate(base) if b in set(true_fate)]
        if fate_cols and len(fate_cols) < len(base):
            pred2 = np.array([base[fate_cols[i]] for i in np.argmax(P[:, fate_cols], axis=1)], dtype=object)
            res["fate_accuracy_all_fate_lineages_only"] = float(np.mean(pred2 == true_fate))
            res["fate_accuracy_committed_fate_lineages_only"] = float(np.mean(pred2[committed] == true_fate[committed]))
        t_abs = None
        if abs_prefix is None and "obsm/absorption_times_fwd" in F:
            df = read_df(F, "obsm/absorption_times_fwd")
            means = {c[:-5]: np.asarray(df[c], float) for c in df.columns if c.endswith("_mean")}
        else:
            means = {k[len(abs_prefix):-5]: np.asarray(F["obs"][k][...], float)
                     for k in F["obs"].keys() if abs_prefix and k.startswith(abs_prefix) and k.endswith("_mean")}
        if means and all(n in means for n in names):
            # fate-weighted mean absorption time; a cell that never gets absorbed (inf) ranks last
            fin = [m[np.isfinite(m)] for m in means.values()]
            big = 10 * max((float(x.max()) for x in fin if x.size), default=1.0) + 1
            res["n_cells_infinite_absorption_time"] = int(sum((~np.isfinite(means[n])).sum() for n in names) / len(names))
            t_abs = sum(P[:, j] * np.where(np.isfinite(means[n]), means[n], big) for j, n in enumerate(names))
        if t_abs is not None:
            res["spearman_true_time_vs_minus_absorption"] = float(spearmanr(true_time, -t_abs).statistic)
    return res


def ground_truth(args, py, cf: CF, out: str):
    os.makedirs(out, exist_ok=True)
    J = lambda n: os.path.join(out, n)  # noqa: E731
    n = args.ground_truth
    sim = J(f"sim{n}.h5ad")
    recs = {"simulate": cf.run("gt.simulate", ["simulate", "-o", sim, "--cells", str(n), "--fates", "3", "--seed", str(args.gt_seed)])}
    nst = ["--n-states", "4", "--cluster-key", "clusters"]
    if args.gt_terminal == "top_n":
        nst += ["--terminal-method", "top_n", "--n-terminal", "3"]
    if args.gt_n_cells:
        nst += ["--n-cells", str(args.gt_n_cells)]
    recs["preprocess"] = cf.run("gt.preprocess", ["preprocess", sim, "-o", J("cf.pp.h5ad")])
    recs["kernel"] = cf.run("gt.kernel", ["kernel", J("cf.pp.h5ad"), "-o", J("cf.kernel.h5ad")])
    recs["macrostates"] = cf.run("gt.macrostates", ["macrostates", J("cf.kernel.h5ad"), "-o", J("cf.macro.h5ad")] + nst)
    recs["fates"] = cf.run("gt.fates", ["fates", J("cf.macro.h5ad"), "-o", J("cf.fates.h5ad"), "--priming", "none"])
    recs["absorption_times"] = cf.run("gt.absorption_times", ["fates", J("cf.macro.h5ad"), "-o", J("cf.abs.h5ad"),
                                                               "--absorption-times", "--priming", "none"])
    rows = []
    vmode = "stochastic" if cf.has_flag("preprocess", "stochastic") else "steady-state"
    try:
        res_path = J("cf.abs.h5ad") if recs["absorption_times"]["status"] == "ok" else J("cf.fates.h5ad")
        rows.append(ground_truth_metrics(sim, res_path if recs["fates"]["status"] == "ok" else None,
                                         f"cellfate ({vmode} velocity)", vel_path=J("cf.pp.h5ad")))
        if recs["fates"]["status"] == "ok" and recs["absorption_times"]["status"] != "ok":
            rows[-1]["error"] = "absorption times: " + recs["absorption_times"].get("error", "")[-160:].strip()
        if recs["fates"]["status"] != "ok":
            rows[-1]["error"] = "cellfate fates: " + recs["fates"].get("error", "")[-200:].strip()
    except Exception as e:  # noqa: BLE001
        rows.append({"tool": "cellfate", "error": repr(e)})
    cfg = {"input": os.path.abspath(sim), "out": os.path.abspath(J("reference")), "cluster_key": "clusters",
           "n_states": 4, "terminal_top_n": 3 if args.gt_terminal == "top_n" else None,
           "velocity_mode": args.ref_velocity_mode, "absorption_times": True, "n_cells": args.gt_n_cells,
           "n_obs_hint": n}
    saved = os.path.join(cfg["out"], "reference_result.json")
    if args.reuse_reference and os.path.exists(saved):
        ref = json.load(open(saved))
        log(f"reference: reusing {saved}")
    else:
        ref = run_reference(py, cfg, args.stage_timeout, args.mem_limit_gb)
    if ref.get("outputs"):
        try:
            rows.append(ground_truth_metrics(sim, ref["outputs"], f"CellRank 2.3.3 ({args.ref_velocity_mode} velocity)", abs_prefix="ref_abs_"))
        except Exception as e:  # noqa: BLE001
            rows.append({"tool": "CellRank", "error": repr(e)})
        # same-input: cellfate's estimators on the reference's processed simulation
        recs["A.kernel"] = cf.run("gt.A.kernel", ["kernel", ref["outputs"], "-o", J("cfA.kernel.h5ad")])
        recs["A.macrostates"] = cf.run("gt.A.macrostates", ["macrostates", J("cfA.kernel.h5ad"), "-o", J("cfA.macro.h5ad")] + nst)
        recs["A.fates"] = cf.run("gt.A.fates", ["fates", J("cfA.macro.h5ad"), "-o", J("cfA.fates.h5ad"), "--priming", "none"])
        try:
            rows.append(ground_truth_metrics(sim, J("cfA.fates.h5ad") if recs["A.fates"]["status"] == "ok" else None,
                                             "cellfate estimators on CellRank's processed file", vel_path=ref["outputs"]))
            if recs["A.fates"]["status"] != "ok":
                rows[-1]["error"] = "cellfate fates: " + recs["A.fates"].get("error", "")[-200:].strip()
        except Exception as e:  # noqa: BLE001
            rows.append({"tool": "cellfate on reference input", "error": repr(e)})
    else:
        proc = os.path.join(cfg["out"], "reference_processed.h5ad")
        row = {"tool": f"CellRank 2.3.3 ({args.ref_velocity_mode} velocity)"}
        if os.path.exists(proc):
            row = ground_truth_metrics(sim, None, row["tool"], vel_path=proc)
        st = ref.get("stopped") or {}
        err = (st.get("error") or "").strip().splitlines()
        row["error"] = f"stopped in {st.get('stage')}: " + (err[-1][:300] if err else str(st.get("reason")))
        rows.append(row)
    return {"n_cells": n, "rows": rows, "cellfate": recs, "reference": ref}


# ----------------------------------------------------------------------------------------------
# mode 3: scale series
# ----------------------------------------------------------------------------------------------
def scale_series(args, py, cf: CF, out: str):
    os.makedirs(out, exist_ok=True)
    series = []
    for n in [int(x) for x in args.scale.split(",") if x]:
        d = os.path.join(out, f"n{n}")
        os.makedirs(d, exist_ok=True)
        J = lambda s: os.path.join(d, s)  # noqa: E731
        sim = J("sim.h5ad")
        c = {}
        c["simulate"] = cf.run(f"n{n}.simulate", ["simulate", "-o", sim, "--cells", str(n), "--seed", "0"])
        nst = ["--n-states", "4", "--cluster-key", "clusters"]
        if args.gt_terminal == "top_n":
            nst += ["--terminal-method", "top_n", "--n-terminal", "3"]
        if args.gt_n_cells:
            nst += ["--n-cells", str(args.gt_n_cells)]
        chain = [("preprocess", ["preprocess", sim, "-o", J("pp.h5ad")]),
                 ("kernel", ["kernel", J("pp.h5ad"), "-o", J("kernel.h5ad")]),
                 ("macrostates", ["macrostates", J("kernel.h5ad"), "-o", J("macro.h5ad")] + nst),
                 ("fates", ["fates", J("macro.h5ad"), "-o", J("fates.h5ad"), "--priming", "none"]),
                 ("drivers", ["drivers", J("fates.h5ad"), "-o", J("drivers.h5ad")])]
        for name, a in chain:
            if c["simulate"]["status"] != "ok" or any(v["status"] != "ok" for v in c.values()):
                break
            c[name] = cf.run(f"n{n}.{name}", a)
        ref = None
        saved = J("reference/reference_result.json")
        if args.reuse_reference and os.path.exists(saved):
            ref = json.load(open(saved))
            log(f"reference: reusing {saved}")
        elif n <= args.ref_max_cells and c["simulate"]["status"] == "ok":
            cfg = {"input": os.path.abspath(sim), "out": os.path.abspath(J("reference")), "cluster_key": "clusters",
                   "n_states": 4, "terminal_top_n": 3 if args.gt_terminal == "top_n" else None,
                   "velocity_mode": args.ref_velocity_mode, "n_obs_hint": n}
            ref = run_reference(py, cfg, args.stage_timeout, args.mem_limit_gb)
        # cellfate's estimators on the reference's preprocessing (same input; also covers a failed
        # cellfate preprocess)
        a = {}
        proc = J("reference/reference_processed.h5ad")
        if os.path.exists(proc):
            chainA = [("kernel", ["kernel", proc, "-o", J("A.kernel.h5ad")]),
                      ("macrostates", ["macrostates", J("A.kernel.h5ad"), "-o", J("A.macro.h5ad")] + nst),
                      ("fates", ["fates", J("A.macro.h5ad"), "-o", J("A.fates.h5ad"), "--priming", "none"]),
                      ("drivers", ["drivers", J("A.fates.h5ad"), "-o", J("A.drivers.h5ad")])]
            for name, argv_ in chainA:
                if any(v["status"] != "ok" for v in a.values()):
                    break
                a[name] = cf.run(f"n{n}.A.{name}", argv_)
        series.append({"n_cells": n, "cellfate": c, "cellfate_on_reference_input": a, "reference": ref})
        json.dump(series, open(os.path.join(out, "scale.json"), "w"), indent=1, default=str)
    return series


def scale_md(series):
    groups = [("preprocess", ["pp.filter_and_normalize", "pp.log1p", "pp.highly_variable_genes", "pp.pca",
                              "pp.neighbors", "pp.moments", "velocity"]),
              ("kernel", ["kernel.velocity", "kernel.connectivity", "kernel.combine"]),
              ("macrostates", ["schur", "macrostates", "terminal_states"]),
              ("fates", ["fates"]), ("drivers", ["drivers"])]
    rows = []

    def cf_cell(c):
        if not c:
            return "not run", None
        if c["status"] == "ok":
            return c["seconds"], c["peak_mb"]
        err = (c.get("error") or "").strip().splitlines()
        msg = (err[-1] if err else "").replace("the solve did not reach the required accuracy: ", "").split(": ")[-1][:90]
        return f"{c['status']} after {c['seconds']:.0f} s (exit {c.get('exit')}): {msg}", c["peak_mb"]

    for s in series:
        ref = s.get("reference") or {}
        rs = {x["stage"]: x for x in ref.get("stages", [])}
        stopped = ref.get("stopped")
        for label, names in groups:
            ct, cm = cf_cell(s["cellfate"].get(label))
            a = (s.get("cellfate_on_reference_input") or {}).get(label)
            at, am = cf_cell(a) if a else (None, None)
            if all(n in rs for n in names):
                rt = sum(rs[n]["seconds"] for n in names)
                rm = max(rs[n]["peak_mb"] for n in names)
            elif stopped and (stopped.get("stage") in names or any(n in rs for n in names)):
                rss = f", RSS {stopped['rss_gb']} GB" if stopped.get("rss_gb") else ""
                rt = f"stopped in {stopped.get('stage')} after {stopped.get('seconds_so_far') or 0:.0f} s{rss}: {str(stopped.get('reason'))[-110:]}"
                rm = None
            elif not ref:
                rt, rm = "not run", None
            else:
                rt, rm = "—", None
            ratio = rt / ct if isinstance(rt, float) and isinstance(ct, float) and ct else None
            if ratio is None and isinstance(rt, float) and isinstance(at, float) and at:
                ratio = rt / at
            rows.append([f"{s['n_cells']:,}", label, rt, ct, at, (f"{ratio:.1f}×" if ratio and ratio >= 1 else (f"{ratio:.2f}×" if ratio else None)),
                         _mb(rm), _mb(cm), _mb(am)])
        simr = s["cellfate"].get("simulate")
        if simr:
            rows.append([f"{s['n_cells']:,}", "(simulate, cellfate only)", "—", simr["seconds"] if simr["status"] == "ok" else simr["status"],
                         None, None, None, _mb(simr["peak_mb"]), None])
    return md_table(["cells", "stage", "reference s", "cellfate s (own preprocessing)", "cellfate s (on reference's preprocessing)",
                     "ratio", "reference MB", "cellfate MB (own)", "cellfate MB (on reference's)"], rows)


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_reference-worker"]:
        return reference_worker(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help=".h5ad with raw spliced/unspliced counts")
    p.add_argument("--out", default=os.path.join(REPO, "compare-out"))
    p.add_argument("--n-states", type=int, default=8)
    p.add_argument("--cluster-key", default="clusters")
    p.add_argument("--optimizer", default="nelder-mead", help="cellfate macrostates optimizer for the comparison (default nelder-mead = CellRank parity)")
    p.add_argument("--ref-velocity-mode", default="stochastic", help="scv.tl.velocity mode of the reference (recipe: stochastic)")
    p.add_argument("--stage-timeout", type=float, default=900.0, help="seconds per stage before a run is stopped (default 900)")
    p.add_argument("--mem-limit-gb", type=float, default=20.0, help="stop the reference or a cellfate stage above this RSS (default 20)")
    p.add_argument("--ground-truth", type=int, default=None, metavar="N", help="also simulate N cells and score both tools against the truth")
    p.add_argument("--gt-seed", type=int, default=0, help="seed of the ground-truth simulation (default 0)")
    p.add_argument("--gt-n-cells", type=int, default=None,
                   help="cells per macrostate/terminal state in the ground-truth runs, both tools (default: their 30)")
    p.add_argument("--gt-terminal", default="stability", choices=["stability", "top_n"],
                   help="terminal-state rule of the ground-truth runs, the same for both tools (top_n = 3 states)")
    p.add_argument("--scale", default=None, help="comma-separated cell counts for the scale series, e.g. 10000,100000")
    p.add_argument("--ref-max-cells", type=int, default=10**9, help="do not run the reference above this many cells in --scale")
    p.add_argument("--reuse-reference", action="store_true", help="--scale/--ground-truth: reuse reference results already in --out")
    p.add_argument("--skip-reference", action="store_true", help="(debug) reuse --reference-outputs instead of running CellRank")
    p.add_argument("--reference-outputs", default=None)
    p.add_argument("--cellfate", default=os.path.join(REPO, "target", "release", "cellfate"))
    p.add_argument("--venv", default=DEFAULT_VENV)
    args = p.parse_args(argv)
    if not args.input and not args.ground_truth and not args.scale:
        p.error("give an INPUT.h5ad, --ground-truth N and/or --scale N1,N2")

    if not _in_venv(args.venv):
        py = ensure_venv(args.venv)
        os.execv(py, [py, os.path.abspath(__file__)] + argv)
    py = sys.executable
    if not os.path.exists(args.cellfate):
        log("building cellfate (cargo build --release --bin cellfate)")
        subprocess.run(["cargo", "build", "--release", "--bin", "cellfate"], cwd=REPO, check=True)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    info = machine_info()
    info["cellfate"] = subprocess.run([args.cellfate, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        info["cellfate_git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    info["command"] = "python3 scripts/compare.py " + " ".join(argv)
    ok = True
    md = [f"# cellfate vs CellRank 2.3.3 — {info['date']}, {info['cpus']} cores, {info['mem_gb']} GB ({info['cellfate']}, git {info.get('cellfate_git')})", ""]
    if args.input:
        cf = CF(args.cellfate, out, args.stage_timeout, args.mem_limit_gb)
        timing, agreement, ok = compare_dataset(args, py, cf, args.input, out)
        timing["machine"] = agreement["machine"] = info
        rows = [[r["stage"], r["reference_s"], r["cellfate_s"], ((f"{r['ratio']:.1f}×" if r["ratio"] >= 1 else f"{r['ratio']:.2f}×") if r["ratio"] else None),
                 _mb(r["reference_mb"]), _mb(r["cellfate_mb"]), r["note"]] for r in timing["rows"]]
        tmd = md_table(["stage", "reference s", "cellfate s", "ratio", "reference MB", "cellfate MB", "note"], rows)
        w = timing.get("warmup_seconds")
        tmd += f"\n\nReference numba warm-up (400-cell subsample, not in the table): {fmt(w)} s."
        arows = [[r["quantity"], r["inputs"], r["value"] if not isinstance(r["value"], bool) else ("yes" if r["value"] else "NO"),
                  r["tolerance"] if not isinstance(r["tolerance"], bool) else "same",
                  {True: "pass", False: "**FAIL**", None: ""}[r["pass"]], r["note"]] for r in agreement["rows"]]
        amd = md_table(["quantity", "inputs", "value", "tolerance", "gate", "note"], arows)
        json.dump(timing, open(os.path.join(out, "timing.json"), "w"), indent=1, default=str)
        json.dump(agreement, open(os.path.join(out, "agreement.json"), "w"), indent=1, default=str)
        open(os.path.join(out, "timing.md"), "w").write(tmd + "\n")
        open(os.path.join(out, "agreement.md"), "w").write(amd + "\n")
        md += [f"## {os.path.basename(args.input)}: time and peak memory per stage", "", tmd, "",
               "## Agreement", "", amd, ""]
    if args.ground_truth:
        cf = CF(args.cellfate, os.path.join(out, "ground_truth"), args.stage_timeout, args.mem_limit_gb)
        gt = ground_truth(args, py, cf, os.path.join(out, "ground_truth"))
        gt["machine"] = info
        json.dump(gt, open(os.path.join(out, "ground_truth.json"), "w"), indent=1, default=str)
        def acc(r, k):
            a, b = r.get(k), r.get(k.replace("all", "all_fate_lineages_only").replace("committed", "committed_fate_lineages_only"))
            return None if a is None else (fmt(a) if b is None else f"{fmt(a)} ({fmt(b)})")

        rows = [[r.get("tool"), r.get("velocity_cosine_median"), r.get("velocity_cosine_mean"), r.get("n_velocity_genes"),
                 acc(r, "fate_accuracy_all"), acc(r, "fate_accuracy_committed"),
                 r.get("spearman_true_time_vs_minus_absorption"), r.get("error", ", ".join(r.get("lineages", [])))] for r in gt["rows"]]
        gmd = md_table(["tool", "velocity cosine (median)", "(mean)", "velocity genes", "fate accuracy (all cells)",
                        "(committed cells)", "Spearman(true_time, −E[absorption time])", "lineages / error"], rows)
        open(os.path.join(out, "ground_truth.md"), "w").write(gmd + "\n")
        md += [f"## Ground truth: simulation of {args.ground_truth:,} cells, 3 fates (seed {args.gt_seed}, terminal states: {args.gt_terminal}, n_cells {args.gt_n_cells or 30})", "",
               gmd, "", "Fate accuracy in parentheses: argmax over the lineages named after a true fate only.", ""]
    if args.scale:
        cf = CF(args.cellfate, os.path.join(out, "scale"), args.stage_timeout, args.mem_limit_gb)
        series = scale_series(args, py, cf, os.path.join(out, "scale"))
        smd = scale_md(series)
        json.dump({"machine": info, "series": series}, open(os.path.join(out, "scale.json"), "w"), indent=1, default=str)
        open(os.path.join(out, "scale.md"), "w").write(smd + "\n")
        md += ["## Scale series (cellfate simulate, 300 genes, 3 fates)", "", smd, ""]
    report = "\n".join(md)
    open(os.path.join(out, "report.md"), "w").write(report + "\n")
    print(report)
    if args.input and not ok:
        print("compare.py: agreement below tolerance (see agreement.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
