"""The reference preprocessing recipe (../shared/reference/README.md steps 1-3, exactly the calls
of reference/recipe/run_cellrank.py, float32 as scanpy/scVelo default to) with every
intermediate kept, so that `cellfate preprocess` can be compared stage by stage:

    .venv-cellrank/bin/python scripts/scvelo_recipe_stages.py RAW.h5ad OUT.h5ad [--compare REF.h5ad]

OUT holds, over the genes kept by `filter_genes` (all of them, before the HVG subset):
  obs   initial_size_spliced / _unspliced / initial_size (recorded before the gene filter),
        n_counts (after normalisation, over the kept genes)
  var   highly_variable, means, dispersions, dispersions_norm, velocity_gamma, velocity_r2,
        velocity_genes (NaN / False outside the HVG subset)
  layers spliced, unspliced (normalised), X_log1p (normalised log1p X); Ms, Mu, velocity
        (zero outside the HVG subset)
  obsm  X_pca; obsp distances, connectivities
With --compare, prints how far this run is from a stored reference (e.g. the pancreas
reference.h5ad), to show the run reproduces it. Not used by the Rust build or tests.
"""

import argparse
import warnings

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import scvelo as scv

warnings.filterwarnings("ignore")
scv.settings.verbosity = 0

p = argparse.ArgumentParser()
p.add_argument("raw")
p.add_argument("out")
p.add_argument("--compare")
args = p.parse_args()

a = ad.read_h5ad(args.raw)
scv.pp.filter_and_normalize(a, min_shared_counts=20)
sc.pp.log1p(a)
full = a.copy()  # every kept gene, before the HVG subset
sc.pp.highly_variable_genes(a, n_top_genes=min(2000, a.n_vars), subset=True)
sc.tl.pca(a, random_state=0)
sc.pp.neighbors(a, n_pcs=30, n_neighbors=30, random_state=0)
scv.pp.moments(a, n_pcs=None, n_neighbors=None)
scv.tl.velocity(a, mode="stochastic")

hv = full.var_names.isin(a.var_names)
out = ad.AnnData(
    X=None,
    obs=a.obs[["initial_size_spliced", "initial_size_unspliced", "initial_size", "n_counts"]].copy(),
    var=full.var[[]].copy(),
)
out.var["highly_variable"] = hv
for k in ("means", "dispersions", "dispersions_norm", "velocity_gamma", "velocity_r2"):
    col = np.full(full.n_vars, np.nan)
    col[hv] = a.var[k].to_numpy()
    out.var[k] = col
vg = np.zeros(full.n_vars, dtype=bool)
vg[hv] = a.var["velocity_genes"].to_numpy()
out.var["velocity_genes"] = vg
out.layers["X_log1p"] = sp.csr_matrix(full.X)
for k in ("spliced", "unspliced"):
    out.layers[k] = sp.csr_matrix(full.layers[k])
for k in ("Ms", "Mu", "velocity"):
    m = np.zeros((full.n_obs, full.n_vars), dtype=np.float32)
    m[:, hv] = a.layers[k]
    out.layers[k] = m
out.obsm["X_pca"] = a.obsm["X_pca"]
out.obsp["distances"] = a.obsp["distances"]
out.obsp["connectivities"] = a.obsp["connectivities"]
out.write_h5ad(args.out)
print(f"{args.out}: {a.n_obs} cells, {full.n_vars} genes kept, {a.n_vars} HVGs, "
      f"{int(vg.sum())} velocity genes")

if args.compare:
    r = ad.read_h5ad(args.compare)
    assert list(r.var_names) == list(a.var_names), "gene sets differ"

    def rel(x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return np.nanmax(np.abs(x - y)) / np.nanmax(np.abs(y))

    for k in ("initial_size_spliced", "initial_size_unspliced", "initial_size", "n_counts"):
        print(f"obs {k}: {rel(a.obs[k], r.obs[k]):.2e} of max")
    print("X_pca:", f"{rel(np.abs(a.obsm['X_pca']), np.abs(r.obsm['X_pca'])):.2e} of max (|.|)")
    for k in ("distances", "connectivities"):
        print(f"obsp {k}: {rel(a.obsp[k].toarray(), r.obsp[k].toarray()):.2e} of max")
    for k in ("Ms", "Mu", "velocity"):
        print(f"layers {k}: {rel(a.layers[k], r.layers[k]):.2e} of max")
    g, gr = a.var["velocity_gamma"].to_numpy(), r.var["velocity_gamma"].to_numpy()
    m = r.var["velocity_genes"].to_numpy()
    print(f"velocity_gamma: max rel {np.max(np.abs(g - gr)[m] / np.abs(gr[m])):.2e} on {m.sum()} "
          f"velocity genes; velocity_genes equal: {bool((a.var['velocity_genes'] == r.var['velocity_genes']).all())}")
