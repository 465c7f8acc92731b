"""Which numbers of macrostates CellRank 2.3.3 completes on its own pancreas transition matrix.

Runs GPCCA (CellRank's defaults: pyGPCCA's Nelder-Mead rotation, n_cells=30) on
obsp["T_combined"] of ../shared/reference/pancreas_3696/reference.h5ad for m = 3..12 and writes
a small JSON (m -> completed?, the number of states CellRank used, crispness, names, error),
which tests/it/gpcca_robust.rs reads. Run in .venv-cellrank (CELLFATE_CELLRANK=1 bash
scripts/setup.sh):

    .venv-cellrank/bin/python scripts/cellrank_macrostates_m.py \
        ../shared/reference/pancreas_3696/reference.h5ad tests/data/cellrank_macrostates_pancreas.json
"""

import json
import sys
import time
import warnings

import anndata as ad
import cellrank as cr
import numpy as np

warnings.filterwarnings("ignore")


def main(path: str, out: str) -> None:
    adata = ad.read_h5ad(path)
    for k in list(adata.obsm.keys()):
        if k.startswith("macrostates") or k.startswith("lineages") or k.startswith("schur"):
            del adata.obsm[k]
    if adata.X is None:  # the reference stores no X; CellRank's estimator needs its dtype
        import scipy.sparse as sp

        adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    kernel = cr.kernels.PrecomputedKernel(adata, obsp_key="T_combined")
    g = cr.estimators.GPCCA(kernel)
    t0 = time.time()
    # 13 macrostates at most (12 + one when 12 splits a complex pair), one more to test.
    g.compute_schur(n_components=14)
    schur_s = time.time() - t0
    results = {}
    for m in range(3, 13):
        entry = {"m": m}
        try:
            g.compute_macrostates(n_states=m, cluster_key="clusters")
            ms = g.macrostates
            names = [str(c) for c in ms.cat.categories]
            entry.update(
                completed=True,
                n_states=len(names),
                names=names,
                crispness=float(g._gpcca.optimal_crispness),
                coarse_stability=[float(x) for x in np.diag(np.asarray(g.coarse_T))],
            )
        except Exception as e:  # noqa: BLE001 - record CellRank's failure as it is
            entry.update(completed=False, error=f"{type(e).__name__}: {e}")
        results[str(m)] = entry
        print(m, entry.get("completed"), entry.get("names", entry.get("error")), flush=True)
    doc = {
        "source": "CellRank "
        + cr.__version__
        + " GPCCA(PrecomputedKernel(obsp['T_combined'])).compute_schur(n_components=14); "
        "compute_macrostates(n_states=m, cluster_key='clusters') for m = 3..12",
        "input": "reference/pancreas_3696/reference.h5ad",
        "schur_seconds": schur_s,
        "results": results,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
