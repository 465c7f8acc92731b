"""The reference preprocessing recipe (../shared/reference/README.md, steps 1-3) run in float64.

scanpy/scVelo work in float32 by default (X, PCA, moments), which limits agreement with any
float64 implementation to ~1e-5. This script runs the same calls on float64 data so that the
parity test (tests/it/upstream_parity.rs) can hold cellfate's preprocessing to 1e-6:

    python upstream_f64.py RAW.h5ad OUT.h5ad N_TOP_GENES [RAW OUT N ...]

Used only by the tests, with the CellRank virtual environment (scanpy 1.12, scVelo 0.3.4).
"""

import sys
import warnings

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import scvelo as scv

warnings.filterwarnings("ignore")
scv.settings.verbosity = 0


def recipe(raw, out, n_top):
    a = ad.read_h5ad(raw)
    a.X = sp.csr_matrix(a.X, dtype=np.float64)
    for k in ("spliced", "unspliced"):
        a.layers[k] = sp.csr_matrix(a.layers[k], dtype=np.float64)
    scv.pp.filter_and_normalize(a, min_shared_counts=20)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=min(n_top, a.n_vars), subset=True)
    sc.tl.pca(a, n_comps=50, random_state=0, dtype="float64", svd_solver="arpack")
    sc.pp.neighbors(a, n_pcs=30, n_neighbors=30, random_state=0)
    scv.pp.moments(a, n_pcs=None, n_neighbors=None)
    scv.tl.velocity(a, mode="stochastic")
    keep = ad.AnnData(
        X=a.X,
        obs=a.obs[[]],
        var=a.var[["velocity_gamma", "velocity_r2", "velocity_genes"]],
        layers={k: a.layers[k] for k in ("spliced", "unspliced", "Ms", "Mu", "velocity")},
        obsm={"X_pca": a.obsm["X_pca"][:, :30]},
        obsp={k: a.obsp[k] for k in ("distances", "connectivities")},
    )
    keep.write_h5ad(out)
    print(out, a.n_obs, "cells", a.n_vars, "genes", flush=True)


args = sys.argv[1:]
if not args or len(args) % 3:
    sys.exit("usage: upstream_f64.py RAW.h5ad OUT.h5ad N_TOP_GENES [RAW OUT N ...]")
for i in range(0, len(args), 3):
    recipe(args[i], args[i + 1], int(args[i + 2]))
