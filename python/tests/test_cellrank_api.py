"""CellRank 2.3.3's getting-started calls with ``import cellfate as cr``, against CellRank's
own outputs on the same input (``../shared/reference``), with the Rust parity tests'
tolerances: transition matrices within 1e-9, Schur eigenvalues within 1e-8 (first 15),
memberships within 1e-3, the same macrostate and terminal-state names, fate probabilities
within 1e-5, driver correlations within 1e-5 and p/q-values within 1e-4."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellfate as cr


def _cellrank_results(adata):
    """CellRank's results in the reference file, copied before cellfate writes its own."""
    run = json.loads(adata.uns["cellrank_run"])
    return {
        "T": adata.obsp["T_combined"].copy(),
        "lineages": adata.obsm["lineages_fwd"].copy(),
        "lineage_names": [str(x) for x in adata.uns["lineages_fwd_names"]],
        "macrostate_names": [str(x) for x in adata.uns["macrostates_fwd_names"]],
        "memberships": adata.obsm["macrostates_fwd_memberships"].copy(),
        "eig": np.asarray(adata.uns["schur_eigenvalues_real"]) + 1j * np.asarray(adata.uns["schur_eigenvalues_imag"]),
        "terminal": sorted(run["notes"]["gpcca_terminal_states"]),
        "term_states": adata.obs["term_states_fwd"].copy(),
    }


def test_getting_started_on_pancreas_gives_cellranks_results(pancreas_path):
    adata = anndata.read_h5ad(pancreas_path)
    ref = _cellrank_results(adata)

    vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()
    ck = cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()
    combined = 0.8 * vk + 0.2 * ck
    t = combined.transition_matrix
    assert sp.isspmatrix_csr(t) and t.shape == (adata.n_obs, adata.n_obs)
    d = abs(t - ref["T"]).max()
    assert d <= 1e-9, f"combined kernel differs from CellRank's by {d:e}"
    assert combined.params["terms"][0][1]["softmax_scale"] > 0  # estimated, as CellRank does

    g = cr.estimators.GPCCA(combined)
    g.compute_schur(n_components=20)
    ev = g.eigendecomposition["D"]
    n = min(15, len(ev))
    assert np.abs(ev[:n] - ref["eig"][:n]).max() <= 1e-8
    assert g.schur_vectors.shape[0] == adata.n_obs

    g.compute_macrostates(n_states=8, cluster_key="clusters")
    assert sorted(g.macrostates.cat.categories) == sorted(ref["macrostate_names"])
    chi = g.macrostates_memberships
    worst = max(np.abs(chi[name].X[:, 0] - ref["memberships"][:, ref["macrostate_names"].index(name)]).max() for name in chi.names)
    assert worst <= 1e-3, f"memberships differ by {worst:e}"
    assert g.coarse_T.shape == (8, 8)
    assert np.allclose(g.coarse_T.sum(axis=1), 1.0)

    g.predict_terminal_states()
    assert sorted(g.terminal_states.cat.categories) == ref["terminal"]
    # Which 30 cells represent Beta depends on memberships that are flat at the top (within
    # the 1e-3 the memberships agree to, 28 of CellRank's 30 Beta cells change), so the fate
    # probabilities are compared in two ways: from our own terminal cells, the most likely
    # fate of every cell and a correlation >= 0.999 per lineage; from CellRank's terminal
    # cells (as GPCCA.from_adata restores them), within 1e-5 — the Rust parity test's bound.
    g.compute_fate_probabilities()
    fp = g.fate_probabilities
    assert isinstance(fp, cr.Lineage) and sorted(fp.names) == sorted(ref["lineage_names"])
    theirs = ref["lineages"][:, [ref["lineage_names"].index(n) for n in fp.names]]
    assert (fp.X.argmax(axis=1) == theirs.argmax(axis=1)).all()
    for j, name in enumerate(fp.names):
        assert np.corrcoef(fp.X[:, j], theirs[:, j])[0, 1] >= 0.999, name
    np.testing.assert_allclose(fp.X.sum(axis=1), 1.0, atol=1e-10)
    g.set_terminal_states(ref["term_states"])
    g.compute_fate_probabilities()
    fp = g.fate_probabilities
    worst = max(np.abs(fp[name].X[:, 0] - ref["lineages"][:, ref["lineage_names"].index(name)]).max() for name in fp.names)
    assert worst <= 1e-5, f"fate probabilities differ by {worst:e}"

    drivers = g.compute_lineage_drivers(layer="Ms", cluster_key="clusters")
    assert list(drivers.index[:1]) == ["Gcg"]  # Alpha's top driver, as in CellRank's notebook
    assert {"Alpha_corr", "Alpha_pval", "Alpha_qval", "Alpha_ci_low", "Alpha_ci_high"} <= set(drivers.columns)

    # Written into the AnnData under CellRank's keys.
    for slot in ("term_states_fwd", "term_states_fwd_probs", "macrostates_fwd"):
        assert slot in adata.obs
    for key in ("lineages_fwd", "macrostates_fwd_memberships", "schur_vectors_fwd"):
        assert key in adata.obsm
    for key in ("lineages_fwd_names", "lineages_fwd_colors", "coarse_fwd", "eigendecomposition_fwd"):
        assert key in adata.uns
    assert "terminal_lineage_drivers" in adata.varm


def test_dentate_gyrus_drivers_match_cellrank(dentate_paths):
    ref_path, data_path = dentate_paths
    ref = anndata.read_h5ad(ref_path)
    data = anndata.read_h5ad(data_path)
    theirs = {c: ref.var[c].to_numpy() for c in ref.var.columns if c.startswith("drivers_")}
    # CellRank's fate probabilities with its terminal states, as GPCCA.from_adata restores them.
    g = cr.estimators.GPCCA(cr.kernels.PrecomputedKernel(ref, obsp_key="T_combined").compute_transition_matrix())
    g.set_terminal_states(ref.obs["term_states_fwd"])
    g.compute_fate_probabilities()
    names = [str(x) for x in ref.uns["lineages_fwd_names"]]
    worst = max(np.abs(g.fate_probabilities[n].X[:, 0] - ref.obsm["lineages_fwd"][:, names.index(n)]).max() for n in names)
    assert worst <= 1e-5
    # Drivers against the input's X (what CellRank used).
    ref_x = anndata.AnnData(X=data.X, obs=pd.DataFrame(index=ref.obs_names), var=pd.DataFrame(index=ref.var_names))
    g.adata = ref_x
    table = g.compute_lineage_drivers()
    compared = 0
    for col in table.columns:
        a = table.loc[ref.var_names, col].to_numpy()
        b = theirs[f"drivers_{col}"]
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        ok = ~np.isnan(a)
        tol = 1e-5 if col.endswith("_corr") or "_ci_" in col else 1e-4
        assert np.abs(a[ok] - b[ok]).max() <= tol, col
        compared += ok.sum()
    assert compared > 0


def test_cflare_finds_cellranks_terminal_states(pancreas_path):
    adata = anndata.read_h5ad(pancreas_path)
    want = set(str(x) for x in adata.obs["cflare_term_states_fwd"].cat.categories)
    k = cr.kernels.PrecomputedKernel(adata, obsp_key="T_combined").compute_transition_matrix()
    c = cr.estimators.CFLARE(k)
    c.compute_eigendecomposition(k=20)
    c.predict(cluster_key="clusters")
    assert set(c.terminal_states.cat.categories) == want


def test_from_adata_restores_what_cellfate_and_cellrank_stored(pancreas_path):
    adata = anndata.read_h5ad(pancreas_path)
    ref = _cellrank_results(adata)
    # CellRank's own results in the reference file.
    theirs = cr.estimators.GPCCA.from_adata(adata, obsp_key="T_combined")
    assert sorted(theirs.terminal_states.cat.categories) == ref["terminal"]
    assert sorted(theirs.macrostates.cat.categories) == sorted(ref["macrostate_names"])
    fp = theirs.fate_probabilities
    np.testing.assert_array_equal(fp.X, ref["lineages"][:, [ref["lineage_names"].index(n) for n in fp.names]])
    assert "lineages_fwd" in adata.obsm and adata.obsm["lineages_fwd"] is not None
    np.testing.assert_array_equal(adata.obsm["lineages_fwd"], ref["lineages"])  # not modified
    # What cellfate's Python API wrote, restored, goes on working.
    k = cr.kernels.PrecomputedKernel(adata, obsp_key="T_combined").compute_transition_matrix()
    k.write_to_adata()
    g = cr.estimators.GPCCA(k)
    g.compute_schur(n_components=20)
    g.compute_macrostates(n_states=8, cluster_key="clusters")
    g.predict_terminal_states()
    g.compute_fate_probabilities()
    back = cr.estimators.GPCCA.from_adata(adata, obsp_key="T_fwd")
    pd.testing.assert_series_equal(back.macrostates, g.macrostates)
    pd.testing.assert_series_equal(back.terminal_states, g.terminal_states)
    np.testing.assert_array_equal(back.fate_probabilities.X, g.fate_probabilities.X)
    np.testing.assert_array_equal(back.macrostates_memberships.X, g.macrostates_memberships.X)
    pd.testing.assert_frame_equal(back.coarse_T, g.coarse_T)
    np.testing.assert_array_equal(back.eigendecomposition["D"], g.eigendecomposition["D"])
    back.compute_fate_probabilities()  # restored fates carry no absorption system: solved again
    np.testing.assert_array_equal(back.fate_probabilities.X, g.fate_probabilities.X)
    back.compute_absorption_times()
    assert set(back.absorption_times.columns) >= {"Alpha_mean", "Beta_mean"}
    c = cr.estimators.CFLARE.from_adata(adata, obsp_key="T_fwd")
    assert sorted(c.terminal_states.cat.categories) == ["Alpha", "Beta"]


def test_cellfates_own_defaults_are_one_keyword_away(pancreas_path):
    """The gradient optimiser and the `sinks` terminal rule (the CLI's defaults) from Python."""
    adata = anndata.read_h5ad(pancreas_path)
    g = cr.estimators.GPCCA(cr.kernels.PrecomputedKernel(adata, obsp_key="T_combined").compute_transition_matrix())
    g.compute_schur(n_components=20)
    g.compute_macrostates(n_states=8, cluster_key="clusters", optimizer="gradient", seed=0)
    assert len(g.macrostates.cat.categories) == 8
    g.predict_terminal_states(method="sinks")
    assert sorted(g.terminal_states.cat.categories) == ["Alpha", "Beta"]
    g.predict_initial_states()
    assert g.initial_states.cat.categories[0].startswith("Ductal")
