"""scVelo 0.3.4 itself uses the velocity keys cellfate's Python API wrote: from raw pancreas
counts, ``cellfate.pp.filter_and_normalize`` + ``pp.moments`` + ``tl.velocity`` +
``tl.velocity_graph`` + ``tl.velocity_confidence``, saved with anndata; then, in CellRank's
environment (which holds scVelo), scVelo's ``tl.velocity_embedding`` projects our velocity
graph and ``pl.velocity_embedding_stream``, ``pl.velocity_embedding_grid`` and ``pl.scatter``
(colour ``velocity_confidence``) draw from it."""

from __future__ import annotations

import subprocess
import textwrap

import anndata
import numpy as np

import cellfate as cr

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.filterwarnings("ignore")
    import matplotlib
    matplotlib.use("Agg")
    import anndata, numpy as np, scvelo as scv
    a = anndata.read_h5ad(sys.argv[1])
    out = sys.argv[2]
    scv.settings.figdir = out
    scv.tl.velocity_embedding(a, basis="pca")
    e = a.obsm["velocity_pca"]
    assert e.shape == a.obsm["X_pca"].shape and np.isfinite(e).all() and np.abs(e).sum() > 0
    scv.pl.velocity_embedding_stream(a, basis="pca", color="clusters", save="stream.png", show=False)
    scv.pl.velocity_embedding_grid(a, basis="pca", color="clusters", save="grid.png", show=False)
    # scVelo 0.3.4's scatter indexes a continuous obs column by position (c[0]), which pandas 3
    # refuses for any such column (S_score too): the values go in as an array.
    scv.pl.scatter(a, basis="pca", color=a.obs["velocity_confidence"].to_numpy(), save="confidence.png", show=False)
    print("ok")
    """
)


def test_scvelos_plots_work_on_cellfates_velocities(cellrank_python, tmp_path):
    from conftest import SHARED, _need

    raw = _need(SHARED / "data" / "pancreas_supercell_3696" / "pancreas_3696x2000.h5ad", "raw pancreas counts")
    a = anndata.read_h5ad(raw)
    cr.pp.filter_and_normalize(a, min_shared_counts=20, n_top_genes=2000)
    cr.pp.moments(a, n_pcs=30, n_neighbors=30)
    cr.tl.velocity(a)
    cr.tl.velocity_graph(a)
    cr.tl.velocity_confidence(a)
    assert np.isfinite(a.obs["velocity_confidence"]).all()
    path = tmp_path / "velocity.h5ad"
    a.write_h5ad(path)
    res = subprocess.run([str(cellrank_python), "-c", SCRIPT, str(path), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr
    for name in ("stream", "grid", "confidence"):
        files = list(tmp_path.rglob(f"*{name}*.png"))
        assert files and files[0].stat().st_size > 10_000, (name, files)
