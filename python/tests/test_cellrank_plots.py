"""CellRank 2.3.3 itself uses what cellfate's Python API wrote into the AnnData: after the
getting-started calls with ``import cellfate as cr``, the AnnData (saved with anndata) goes to
CellRank's own ``GPCCA.from_adata``, whose properties hold our results, and CellRank's
plotting draws from them: ``plot_fate_probabilities``, ``plot_macrostates``,
``cr.pl.circular_projection``."""

from __future__ import annotations

import subprocess
import textwrap

import anndata

import cellfate as cr

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    warnings.filterwarnings("ignore")
    import matplotlib
    matplotlib.use("Agg")
    import anndata, cellrank as cr, numpy as np
    a = anndata.read_h5ad(sys.argv[1])
    out = sys.argv[2]
    g = cr.estimators.GPCCA.from_adata(a, obsp_key="T_fwd")
    assert sorted(g.terminal_states.cat.categories) == ["Alpha", "Beta", "Delta", "Epsilon"], g.terminal_states.cat.categories
    assert len(g.macrostates.cat.categories) == 8
    fp = g.fate_probabilities
    assert fp.shape == (a.n_obs, 4) and np.allclose(np.asarray(fp).sum(1), 1.0)
    g.plot_fate_probabilities(basis="pca", same_plot=False, save=f"{out}/fates.png")
    g.plot_macrostates(which="all", basis="pca", save=f"{out}/macrostates.png")
    cr.pl.circular_projection(a, keys="clusters", save=f"{out}/circular.png")
    print("ok")
    """
)


def test_cellranks_plots_work_on_cellfates_results(pancreas_path, cellrank_python, tmp_path):
    adata = anndata.read_h5ad(pancreas_path)
    adata.X = adata.layers["Ms"].copy()  # CellRank's estimators need an X; the reference keeps none
    for key in ("macrostates_fwd", "term_states_fwd", "cflare_term_states_fwd"):
        del adata.obs[key]  # CellRank's own results in the reference: drop them
    for key in ("lineages_fwd", "macrostates_fwd_memberships", "schur_vectors_fwd", "cflare_lineages_fwd"):
        del adata.obsm[key]
    vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()
    ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()
    k = 0.8 * vk + 0.2 * ck
    k.write_to_adata()
    g = cr.estimators.GPCCA(k)
    g.compute_schur(n_components=20)
    g.compute_macrostates(n_states=8, cluster_key="clusters")
    g.predict_terminal_states()
    assert sorted(g.terminal_states.cat.categories) == ["Alpha", "Beta"]
    # As CellRank's pancreas tutorial does: all four endocrine fates (the circular projection
    # needs at least three lineages).
    g.set_terminal_states(["Alpha", "Beta", "Delta", "Epsilon"])
    g.compute_fate_probabilities()
    g.compute_lineage_drivers()
    path = tmp_path / "cellfate.h5ad"
    # anndata reads the reference's obs names as nullable strings and refuses to write them
    # back unless allowed (its own setting, unrelated to cellfate's slots).
    anndata.settings.allow_write_nullable_strings = True
    adata.write_h5ad(path)
    res = subprocess.run([str(cellrank_python), "-c", SCRIPT, str(path), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr
    for name in ("fates", "macrostates", "circular"):
        files = list(tmp_path.rglob(f"{name}*.png"))
        assert files and files[0].stat().st_size > 10_000, (name, files)
