"""scVelo's velocity_graph, velocity_confidence and latent_time from Python, against scVelo
0.3.4's own outputs on pancreas (``../shared/reference/pancreas_3696/dynamical.h5ad``, from
scVelo's velocities and fit_t), with the Rust test's tolerances (tests/it/dynamical_confidence.rs):
self-transition 1e-5, confidence 1e-6, length 0.005 + 1e-5 of scVelo's rounded value,
transition confidence 1e-4, latent time Spearman >= 0.99."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

import cellfate as cr


@pytest.fixture(scope="module")
def pancreas_dynamical(pancreas_path):
    ref = anndata.read_h5ad(pancreas_path)
    dyn = anndata.read_h5ad(pancreas_path.parent / "dynamical.h5ad")
    a = anndata.AnnData(obs=ref.obs[["clusters"]].copy(), var=ref.var[[]].copy())
    a.layers["Ms"] = ref.layers["Ms"]
    a.layers["velocity"] = dyn.layers["velocity"]
    a.layers["fit_t"] = dyn.layers["fit_t"]
    a.var["velocity_genes"] = dyn.var["velocity_genes"].to_numpy()
    a.var["fit_likelihood"] = dyn.var["fit_likelihood"].to_numpy()
    a.obsp["distances"] = ref.obsp["distances"]
    a.obsp["connectivities"] = ref.obsp["connectivities"]
    a.uns["velocity_params"] = {"mode": "dynamical"}
    return a, dyn


def _spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return np.corrcoef(rx, ry)[0, 1]


def test_velocity_graph_and_confidence_match_scvelo(pancreas_dynamical):
    a, dyn = pancreas_dynamical
    cr.tl.velocity_graph(a)
    assert a.uns["velocity_graph"].shape == (a.n_obs, a.n_obs)
    assert np.abs(a.obs["velocity_self_transition"] - dyn.obs["velocity_self_transition"]).max() <= 1e-5
    cr.tl.velocity_confidence(a)
    assert np.abs(a.obs["velocity_confidence"] - dyn.obs["velocity_confidence"]).max() <= 1e-6
    assert np.abs(a.obs["velocity_length"] - dyn.obs["velocity_length"]).max() <= 0.005 + 1e-5
    assert np.abs(a.obs["velocity_confidence_transition"] - dyn.obs["velocity_confidence_transition"]).max() <= 1e-4
    assert "velocity_coherence" in a.obs


def test_latent_time_matches_scvelo(pancreas_dynamical):
    a, dyn = pancreas_dynamical
    cr.tl.latent_time(a)
    lt = a.obs["latent_time"].to_numpy()
    assert lt.min() == 0.0 and lt.max() == 1.0
    assert _spearman(lt, dyn.obs["latent_time"].to_numpy()) >= 0.99
    assert np.abs(lt - dyn.obs["latent_time"].to_numpy()).max() <= 0.01
    # A root cluster as scores: latent time starts there.
    a.obs["root_scores"] = (a.obs["clusters"] == "Ductal").astype(float)
    cr.tl.latent_time(a, root_key="root_scores")
    ductal = a.obs["clusters"] == "Ductal"
    assert a.obs.loc[ductal, "latent_time"].median() < a.obs.loc[~ductal, "latent_time"].median()
    with pytest.raises(KeyError, match="fit the dynamical model"):
        b = a.copy()
        del b.layers["fit_t"]
        cr.tl.latent_time(b)


def test_float32_layers_are_used_as_stored(pancreas_dynamical):
    """float32 layers (as scVelo stores them) are read without a float64 copy; the results
    are those of the same values widened to float64, to the bit."""
    a, _ = pancreas_dynamical
    a = a.copy()
    assert a.layers["Ms"].dtype == np.float32 and a.layers["fit_t"].dtype == np.float32
    b = a.copy()
    for k in ("Ms", "velocity", "fit_t"):
        b.layers[k] = np.asarray(b.layers[k], dtype=np.float64)
    keys = ["velocity_self_transition", "velocity_length", "velocity_confidence",
            "velocity_confidence_transition", "velocity_coherence", "latent_time"]
    for x in (a, b):
        cr.tl.velocity_graph(x)
        cr.tl.velocity_confidence(x)
        cr.tl.latent_time(x)
    for k in keys:
        assert np.array_equal(a.obs[k].to_numpy(), b.obs[k].to_numpy(), equal_nan=True), k
    assert (a.uns["velocity_graph"] != b.uns["velocity_graph"]).nnz == 0
