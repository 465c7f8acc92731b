"""Stage-by-stage comparison of `cellfate preprocess` output with scVelo's recipe, as dumped by
scripts/scvelo_recipe_stages.py (or with the pancreas reference.h5ad, which lacks the
normalised layers and X):

    python scripts/compare_preprocess_stages.py OURS.h5ad THEIRS.h5ad

Every figure is over the genes THEIRS holds (matched by name). Not used by the build or tests.
"""

import sys

import anndata as ad
import numpy as np
import scipy.sparse as sp

ours, theirs = ad.read_h5ad(sys.argv[1]), ad.read_h5ad(sys.argv[2])
pos = ours.var_names.get_indexer(theirs.var_names)
assert (pos >= 0).all(), "genes of THEIRS missing in OURS"


def dense(m):
    return np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float64)


def rel(x, y):
    return np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-300)


for k in ("initial_size_spliced", "initial_size_unspliced", "initial_size", "n_counts"):
    if k in ours.obs and k in theirs.obs:
        print(f"obs {k:24s} {rel(ours.obs[k].to_numpy(float), theirs.obs[k].to_numpy(float)):.2e} of max")

pairs = [("layers/spliced", "spliced"), ("layers/unspliced", "unspliced"), ("X", "X_log1p")]
for slot, theirs_key in pairs:
    if theirs_key in theirs.layers:
        a = dense(ours.X if slot == "X" else ours.layers[slot.split("/")[1]])[:, pos]
        print(f"{slot:28s} {rel(a, dense(theirs.layers[theirs_key])):.2e} of max")

hv_o = ours.var["highly_variable"].to_numpy(bool)[pos]
hv_t = theirs.var["highly_variable"].to_numpy(bool)
print(f"highly variable: ours {hv_o.sum()}, theirs {hv_t.sum()}, differ on {(hv_o != hv_t).sum()}")

a, b = dense(ours.obsm["X_pca"]), dense(theirs.obsm["X_pca"])
k = min(a.shape[1], b.shape[1], 30)
sign = np.sign((a[:, :k] * b[:, :k]).sum(0))
print(f"X_pca (30 comps, up to sign)  {rel(a[:, :k] * sign, b[:, :k]):.2e} of max; "
      f"per comp: {' '.join(f'{rel(a[:, j] * sign[j], b[:, j]):.0e}' for j in range(k))}")

do, dt = ours.obsp["distances"].tocsr(), theirs.obsp["distances"].tocsr()
diff = [i for i in range(do.shape[0]) if set(do[i].indices) != set(dt[i].indices)]
print(f"kNN sets differ for {len(diff)} of {do.shape[0]} cells")
same = np.setdiff1d(np.arange(do.shape[0]), diff)
if len(same):
    print(f"distances (cells with equal sets) {rel(dense(do[same]), dense(dt[same])):.2e} of max")
print(f"connectivities {rel(dense(ours.obsp['connectivities']), dense(theirs.obsp['connectivities'])):.2e} of max")

hv = hv_t
for k in ("Ms", "Mu", "velocity"):
    x = dense(ours.layers[k])[:, pos][:, hv]
    y = dense(theirs.layers[k])[:, hv]
    print(f"layers {k:10s} {rel(x, y):.2e} of max")

vg_o = ours.var["velocity_genes"].to_numpy(bool)[pos]
vg_t = theirs.var["velocity_genes"].to_numpy(bool)
g_o = ours.var["velocity_gamma"].to_numpy(float)[pos]
g_t = theirs.var["velocity_gamma"].to_numpy(float)
r = np.abs(g_o - g_t)[vg_t] / np.abs(g_t[vg_t])
print(f"velocity genes: ours {vg_o.sum()}, theirs {vg_t.sum()}, differ on {(vg_o != vg_t).sum()}")
print(f"velocity_gamma rel on theirs' velocity genes: max {r.max():.2e}, median {np.median(r):.2e}")
