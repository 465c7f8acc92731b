"""scVelo 0.3.4's dynamical workflow on one .h5ad with Ms, Mu and a kNN graph (obsp
connectivities, distances), timed call by call, as `cellfate velocity --mode dynamical
--var-names all` runs it: recover_dynamics(var_names="all", n_jobs=2), velocity(mode="dynamical"),
velocity_graph(n_jobs=2), latent_time, velocity_confidence. Prints one JSON line of timings.
Reading and writing are timed too (the whole command is what BENCHMARKS.md compares).
Needs scvelo==0.3.4 with pandas<3 (scripts/dynamical_side_by_side.sh makes that venv).
Usage: python scvelo_dynamical.py IN.h5ad OUT.h5ad"""
import json
import sys
import time

t_all = time.perf_counter()
import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import scvelo as scv  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
t = {}
t0 = time.perf_counter()
a = ad.read_h5ad(src)
keep = ad.AnnData(X=np.asarray(a.layers["Ms"]), obs=a.obs[[]].copy(), var=a.var[[]].copy())
for k in ("Ms", "Mu"):
    keep.layers[k] = np.asarray(a.layers[k])
for k in ("connectivities", "distances"):
    keep.obsp[k] = a.obsp[k]
keep.uns["neighbors"] = {
    "connectivities_key": "connectivities",
    "distances_key": "distances",
    "params": {"n_neighbors": int(a.obsp["distances"][0].nnz) + 1, "method": "umap"},
}
del a
t["read_s"] = time.perf_counter() - t0
for name, call in [
    ("recover_dynamics_s", lambda: scv.tl.recover_dynamics(keep, var_names="all", n_jobs=2)),
    ("velocity_s", lambda: scv.tl.velocity(keep, mode="dynamical")),
    ("velocity_graph_s", lambda: scv.tl.velocity_graph(keep, n_jobs=2)),
    ("latent_time_s", lambda: scv.tl.latent_time(keep)),
    ("velocity_confidence_s", lambda: scv.tl.velocity_confidence(keep)),
]:
    t0 = time.perf_counter()
    call()
    t[name] = time.perf_counter() - t0
print(json.dumps(t), flush=True)
t0 = time.perf_counter()
# Plain string names: anndata refuses to write pandas' nullable string arrays by default.
keep.obs_names = [str(x) for x in keep.obs_names]
keep.var_names = [str(x) for x in keep.var_names]
keep.write_h5ad(dst)
t["write_s"] = time.perf_counter() - t0
t["total_s"] = time.perf_counter() - t_all
t["cells"], t["genes"] = keep.n_obs, keep.n_vars
t["genes_fitted"] = int(np.isfinite(keep.var["fit_alpha"]).sum())
print(json.dumps(t))
