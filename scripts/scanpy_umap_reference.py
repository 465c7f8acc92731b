"""scanpy's `sc.tl.umap` (defaults) on the pancreas reference graph, for the UMAP quality test.

Runs scanpy 1.12.4 / umap-learn 0.5 once on `obsp["connectivities"]` of
`../shared/reference/pancreas_3696/reference.h5ad` (CellRank's own preprocessing: 30
neighbours on 30 PCs) and writes the layout's trustworthiness (k = 15, against the first 30
principal components, the space the graph was built in) and its time to
`tests/data/scanpy_umap_pancreas.json`. The test `umap::layout_as_trustworthy_as_scanpys`
compares cellfate's layout of the same graph with it.

Usage (from the repository root, in the CellRank/scanpy environment):
    python scripts/scanpy_umap_reference.py ../shared/reference/pancreas_3696/reference.h5ad
"""

import json
import sys
import time
from importlib.metadata import version

import anndata
import numpy as np
import scanpy as sc
from sklearn.manifold import trustworthiness


def main(path: str) -> None:
    adata = anndata.read_h5ad(path)
    before = adata.obsp["connectivities"].copy()
    t0 = time.perf_counter()
    sc.tl.umap(adata, random_state=0)
    seconds = time.perf_counter() - t0
    changed = abs(adata.obsp["connectivities"] - before).max()
    x = np.asarray(adata.obsm["X_pca"][:, :30], dtype=np.float64)
    y = np.asarray(adata.obsm["X_umap"], dtype=np.float64)
    out = {
        "n_cells": int(adata.n_obs),
        "scanpy": version("scanpy"),
        "umap_learn": version("umap-learn"),
        "seconds": round(seconds, 3),
        "a": float(adata.uns["umap"]["params"]["a"]),
        "b": float(adata.uns["umap"]["params"]["b"]),
        "trustworthiness_15": float(trustworthiness(x, y, n_neighbors=15)),
        "connectivities_changed_by": float(changed),
    }
    with open("tests/data/scanpy_umap_pancreas.json", "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
