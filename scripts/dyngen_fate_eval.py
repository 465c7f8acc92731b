"""Fate accuracy of a cellfate output on dyngen's bifurcation (../shared/data/dyngen_bifurcating_sim)
and the accuracy a *supervised* classifier reaches on the same cells, as a bound.

Committed cells: `obs["to"]` in sC, sD (edges right after the branch point sBmid) or sEndC, sEndD;
their branch is C or D. cellfate's answer is the argmax of `obsm["lineages_fwd"]` (a lineage
named sEndC* counts as branch C). The bound: leave-one-out k-nearest-neighbour vote among the
other committed cells, *given their true branch*, in the output's PCA (30 and 10 components) and in
dyngen's own embedding `obsm["X_emb"]`. An unsupervised fate map cannot be expected to beat
it: where the labelled neighbours of a cell disagree, so does its expression.

Usage: python scripts/dyngen_fate_eval.py RAW.h5ad OUT.h5ad   (needs h5py, numpy)."""
import sys
import h5py
import numpy as np


def text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def categorical(f, key):
    g = f[key]
    if isinstance(g, h5py.Group):
        cats = [text(c) for c in g["categories"][()]]
        return np.array([cats[c] if c >= 0 else "" for c in g["codes"][()]], dtype=object)
    return np.array([text(x) for x in g[()]], dtype=object)


raw = h5py.File(sys.argv[1], "r")
out = h5py.File(sys.argv[2], "r")
to = categorical(out, "obs/to")
branch = {"sC": 0, "sEndC": 0, "sD": 1, "sEndD": 1}
committed = np.array([t in branch for t in to])
y = np.array([branch.get(t, -1) for t in to])
names = [text(n) for n in out["uns/lineages_fwd_names"][()]]
lineages = out["obsm/lineages_fwd"][()]
pred_branch = np.array(
    [0 if n.startswith("sEndC") else 1 if n.startswith("sEndD") else -1 for n in names]
)[lineages.argmax(1)]
print("terminal states", names)
right = pred_branch == y
for c in ["sC", "sD", "sEndC", "sEndD"]:
    m = to == c
    print(f"  {c}: {m.sum()} cells, {right[m].mean():.3f} right")
print(f"cellfate: {right[committed].mean():.4f} of {committed.sum()} committed cells")

def loo_knn(z, k):
    z = z[committed]
    d = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nb = np.argsort(d, axis=1, kind="stable")[:, :k]
    vote = y[committed][nb].mean(1)
    return ((vote > 0.5).astype(int) == y[committed]).mean()

pca = out["obsm/X_pca"][()]
for label, z in [("PCA 30", pca[:, :30]), ("PCA 10", pca[:, :10]), ("X_emb", raw["obsm/X_emb"][()])]:
    figures = ", ".join(f"k={k}: {loo_knn(z, k):.4f}" for k in (5, 15, 30))
    print(f"supervised kNN bound ({label}): {figures}")
