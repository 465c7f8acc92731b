"""CellRank 2's getting-started pipeline in one Python process, with `cellfate` or `cellrank`
as `cr`: timings per call (import included, as a notebook user pays it), peak RSS and the
terminal states, as one JSON line. Run by scripts/python_side_by_side.sh in each package's
own venv.

    python scripts/python_getting_started.py {cellfate,cellrank} IN.h5ad [--skip-schur]

IN needs what CellRank's getting-started reads: layers Ms and velocity, obsp connectivities,
obs clusters. Drivers are computed on layers["Ms"] (the reference files keep no X)."""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
import warnings

warnings.simplefilter("ignore")
backend, path = sys.argv[1], sys.argv[2]
skip_schur = "--skip-schur" in sys.argv
times = {}
t0 = time.perf_counter()


def lap(name, t):
    times[name] = round(time.perf_counter() - t, 3)
    return time.perf_counter()


t = time.perf_counter()
cr = importlib.import_module(backend)
import anndata  # noqa: E402  (after the backend: its import time is the backend's)

t = lap("import", t)
adata = anndata.read_h5ad(path)
if adata.X is None:  # CellRank's estimators need an X; the reference files keep none
    adata.X = adata.layers["Ms"]
t = lap("read", t)
vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()
t = lap("velocity_kernel", t)
ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()
combined = 0.8 * vk + 0.2 * ck
_ = combined.transition_matrix
t = lap("connectivity_kernel_and_sum", t)
g = cr.estimators.GPCCA(combined)
result = {"backend": backend, "version": cr.__version__, "n_obs": adata.n_obs}
if not skip_schur:
    g.compute_schur(n_components=20)
    t = lap("compute_schur", t)
    g.compute_macrostates(n_states=8, cluster_key="clusters")
    t = lap("compute_macrostates", t)
    g.predict_terminal_states()
    t = lap("predict_terminal_states", t)
    g.compute_fate_probabilities()
    t = lap("compute_fate_probabilities", t)
    g.compute_lineage_drivers(layer="Ms", cluster_key="clusters")
    t = lap("compute_lineage_drivers", t)
    result["terminal_states"] = sorted(str(c) for c in g.terminal_states.cat.categories)
times["total"] = round(time.perf_counter() - t0, 3)
result["times_s"] = times
result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(result))
