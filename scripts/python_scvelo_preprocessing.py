"""scVelo's preprocessing and velocity in one Python process, for the side-by-side benchmark:
raw counts -> filter_and_normalize(min_shared_counts=20), log1p, 2,000 highly variable genes,
PCA, 30 neighbours, moments -> velocity(stochastic) -> velocity_graph: with cellfate
(`filter_and_normalize(..., n_top_genes=2000)` + `moments`) or with scVelo 0.3.4 + scanpy (the
reference recipe, scripts/scvelo_recipe_stages.py). Prints one JSON line: seconds per call (import included), peak RSS,
and a checksum of the velocity genes.

Usage: python scripts/python_scvelo_preprocessing.py cellfate|scvelo RAW.h5ad"""

import json
import resource
import sys
import time
import warnings

warnings.filterwarnings("ignore")
which, path = sys.argv[1], sys.argv[2]
t = {}
start = time.perf_counter()
if which == "cellfate":
    import cellfate as scv
else:
    import scvelo as scv
import anndata

t["import"] = time.perf_counter() - start


def timed(name, f, *a, **k):
    s = time.perf_counter()
    f(*a, **k)
    t[name] = time.perf_counter() - s


s = time.perf_counter()
adata = anndata.read_h5ad(path)
t["read"] = time.perf_counter() - s
if which == "cellfate":
    timed("filter_and_normalize", scv.pp.filter_and_normalize, adata, min_shared_counts=20, n_top_genes=2000)
    timed("moments", scv.pp.moments, adata, n_pcs=30, n_neighbors=30)
else:
    # scVelo 0.3.4 dropped filter_and_normalize's n_top_genes and log: the reference recipe
    # (scripts/scvelo_recipe_stages.py) takes them from scanpy.
    import scanpy as sc

    timed("filter_and_normalize", scv.pp.filter_and_normalize, adata, min_shared_counts=20)
    timed("log1p + hvg", lambda: (sc.pp.log1p(adata), sc.pp.highly_variable_genes(adata, n_top_genes=2000, subset=True)))
    timed("pca + neighbors", lambda: (sc.tl.pca(adata, random_state=0), sc.pp.neighbors(adata, n_pcs=30, n_neighbors=30, random_state=0)))
    timed("moments", scv.pp.moments, adata, n_pcs=None, n_neighbors=None)
timed("velocity", scv.tl.velocity, adata)
timed("velocity_graph", scv.tl.velocity_graph, adata)
t["total"] = time.perf_counter() - start
print(json.dumps({
    "package": which,
    "seconds": {k: round(v, 3) for k, v in t.items()},
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "genes": int(adata.n_vars),
    "velocity_genes": int(adata.var["velocity_genes"].sum()),
}))
