"""scVelo's preprocessing and velocity from Python (``pp.filter_and_normalize``,
``pp.moments``, ``tl.velocity``, ``tl.recover_dynamics``) against the CLI's ``preprocess`` and
``velocity --mode dynamical`` on the same raw pancreas counts: bit for bit (tolerance 0) on every
slot both write. The CLI's steps are themselves tested against scVelo 0.3.4
(tests/it/upstream_parity.rs, tests/it/dynamical.rs)."""

from __future__ import annotations

import subprocess

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import cellfate as cr


@pytest.fixture(scope="module")
def raw_pancreas():
    from conftest import SHARED, _need

    return _need(SHARED / "data" / "pancreas_supercell_3696" / "pancreas_3696x2000.h5ad", "raw pancreas counts")


def _cli(cli, *args):
    p = subprocess.run([str(cli), "-q", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def _dense(m):
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _same(ours, theirs, what):
    a, b = _dense(ours), _dense(theirs)
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    assert a.dtype == b.dtype, f"{what}: {a.dtype} vs {b.dtype}"
    assert np.array_equal(a, b, equal_nan=True), f"{what}: max |Δ| {np.nanmax(np.abs(a - b))}"


def test_preprocessing_and_velocity_equal_the_clis_preprocess(raw_pancreas, cli, tmp_path):
    out = tmp_path / "pre.h5ad"
    _cli(cli, "preprocess", raw_pancreas, "-o", out)
    want = anndata.read_h5ad(out)
    hvg = want.var["highly_variable"].to_numpy(dtype=bool)

    a = anndata.read_h5ad(raw_pancreas)
    before = a.layers["spliced"].copy()
    cr.pp.filter_and_normalize(a, min_shared_counts=20, n_top_genes=2000)
    assert list(a.var_names) == list(want.var_names[hvg]), "the genes kept are the CLI's highly variable genes"
    for key in ("initial_size", "initial_size_spliced", "initial_size_unspliced", "n_counts"):
        _same(a.obs[key].to_numpy(), want.obs[key].to_numpy(), f"obs[{key!r}]")
    _same(a.X, want.X[:, hvg], "X")
    for key in ("spliced", "unspliced"):
        _same(a.layers[key], want.layers[key][:, hvg], f"layers[{key!r}]")
    assert (a.layers["spliced"] != before[:, hvg]).nnz > 0, "the layers were normalised"

    cr.pp.moments(a, n_pcs=30, n_neighbors=30)
    _same(a.obsm["X_pca"], want.obsm["X_pca"], "obsm['X_pca']")
    for key in ("distances", "connectivities"):
        _same(a.obsp[key], want.obsp[key], f"obsp[{key!r}]")
    assert a.uns["neighbors"]["params"]["n_neighbors"] == 30
    for key in ("Ms", "Mu"):
        _same(a.layers[key], want.layers[key][:, hvg], f"layers[{key!r}]")

    cr.tl.velocity(a)
    for key in ("velocity", "variance_velocity"):
        _same(a.layers[key], want.layers[key][:, hvg], f"layers[{key!r}]")
    for key in ("velocity_gamma", "velocity_r2", "velocity_qreg_ratio"):
        _same(a.var[key].to_numpy(), want.var[key].to_numpy()[hvg], f"var[{key!r}]")
    _same(a.var["velocity_genes"].to_numpy(dtype=bool), want.var["velocity_genes"].to_numpy(dtype=bool)[hvg], "velocity_genes")
    assert a.uns["velocity_params"]["mode"] == "stochastic"

    # The steady-state model drops the stochastic variance, as the CLI does.
    cr.tl.velocity(a, mode="deterministic")
    assert "variance_velocity" not in a.layers and a.uns["velocity_params"]["mode"] == "deterministic"
    # Then the summaries run on what these wrote.
    cr.tl.velocity_graph(a)
    assert a.uns["velocity_graph"].shape == (a.n_obs, a.n_obs)


def test_normalised_layers_keep_their_counts_type(raw_pancreas):
    """X, spliced and unspliced come out in their counts' type, as scVelo and scanpy keep
    them: float32 for float32 or integer counts, float64 for float64 counts; the float32
    values are the float64 normalisation rounded."""
    out = {}
    for dtype in (np.int32, np.float32, np.float64):
        a = anndata.read_h5ad(raw_pancreas)[:500].copy()
        a.X = a.X.astype(dtype)
        for key in ("spliced", "unspliced"):
            a.layers[key] = a.layers[key].astype(dtype)
        cr.pp.filter_and_normalize(a, min_shared_counts=20, n_top_genes=300)
        want = np.float64 if dtype == np.float64 else np.float32
        for what, m in (("X", a.X), ("spliced", a.layers["spliced"]), ("unspliced", a.layers["unspliced"])):
            assert m.dtype == want, f"{what} from {np.dtype(dtype)} counts: {m.dtype}"
        out[np.dtype(dtype).name] = a
    for what in ("X", "spliced", "unspliced"):
        get = (lambda a: a.X) if what == "X" else (lambda a, k=what: a.layers[k])
        m32, m64, mint = (get(out[k]) for k in ("float32", "float64", "int32"))
        assert np.array_equal(m32.data, m64.data.astype(np.float32)), what
        assert np.array_equal(m32.data, mint.data), what
    a = out["float32"]
    cr.pp.moments(a, n_pcs=30, n_neighbors=30)
    assert a.obsp["connectivities"].dtype == np.float32


def test_recover_dynamics_equals_the_clis_dynamical_velocity(raw_pancreas, cli, tmp_path):
    pre = tmp_path / "pre.h5ad"
    _cli(cli, "preprocess", raw_pancreas, "-o", pre)
    full = anndata.read_h5ad(pre)
    # 120 highly variable genes keep the test short; every gene is fitted alone.
    genes = np.flatnonzero(full.var["highly_variable"].to_numpy(dtype=bool))[:120]
    sub = full[:, genes].copy()
    for key in [k for k in sub.layers if k not in ("spliced", "unspliced", "Ms", "Mu")]:
        del sub.layers[key]
    small = tmp_path / "small.h5ad"
    sub.write_h5ad(small)
    out = tmp_path / "dyn.h5ad"
    _cli(cli, "velocity", small, "-o", out, "--mode", "dynamical", "--var-names", "all")
    want = anndata.read_h5ad(out)

    a = anndata.read_h5ad(small)
    with pytest.raises(KeyError, match="recover_dynamics"):
        cr.tl.velocity(a, mode="dynamical")
    cr.tl.recover_dynamics(a, var_names="all")
    cr.tl.velocity(a, mode="dynamical")
    fitted = np.isfinite(a.var["fit_alpha"].to_numpy(dtype=float)).sum()
    assert fitted >= 100, fitted
    for key in ("fit_t", "fit_tau", "fit_tau_", "velocity", "velocity_u"):
        _same(a.layers[key], want.layers[key], f"layers[{key!r}]")
    for key in [c for c in want.var.columns if c.startswith("fit_")]:
        _same(a.var[key].to_numpy(dtype=float), want.var[key].to_numpy(dtype=float), f"var[{key!r}]")
    _same(a.var["velocity_genes"].to_numpy(dtype=bool), want.var["velocity_genes"].to_numpy(dtype=bool), "velocity_genes")
    _same(a.varm["loss"], want.varm["loss"], "varm['loss']")
    assert a.uns["velocity_params"]["mode"] == "dynamical"
    # latent time runs on the fit.
    cr.tl.latent_time(a)
    assert np.isfinite(a.obs["latent_time"]).all()


def test_upstream_errors_name_what_is_missing():
    a = anndata.AnnData(X=sp.random(40, 10, density=0.5, format="csr", random_state=0))
    with pytest.raises(KeyError, match="spliced"):
        cr.pp.filter_and_normalize(a)
    a.layers["spliced"] = a.X.copy()
    a.layers["unspliced"] = a.X.copy()
    a.layers["unspliced"].data[0] = -1.0
    with pytest.raises(ValueError, match=r"layers\[\"unspliced\"\].*-1"):
        cr.pp.filter_and_normalize(a)
    with pytest.raises(NotImplementedError, match="min_cells"):
        cr.pp.filter_and_normalize(a, min_cells=3)
    with pytest.raises(ValueError, match="n_neighbors = 30"):
        cr.pp.neighbors(anndata.AnnData(X=sp.random(20, 10, density=0.5, format="csr", random_state=1)))


def test_umap_equals_the_clis_layout_and_leaves_the_graph(pancreas_path, cli, tmp_path):
    """``cellfate.tl.umap`` (scanpy's ``tl.umap`` signature) lays out the graph as
    ``cellfate umap`` does, bit for bit, writes scanpy's keys and does not modify the graph;
    options it does not have are refused."""
    out = tmp_path / "umap.h5ad"
    _cli(cli, "umap", pancreas_path, "-o", out)
    want = anndata.read_h5ad(out)
    a = anndata.read_h5ad(pancreas_path)
    before = a.obsp["connectivities"].copy()
    cr.tl.umap(a)
    _same(a.obsm["X_umap"], want.obsm["X_umap"], "obsm['X_umap']")
    assert a.obsm["X_umap"].dtype == np.float32
    assert set(a.uns["umap"]["params"]) == {"a", "b"}
    assert abs(a.uns["umap"]["params"]["a"] - 0.583030) < 1e-5
    assert (a.obsp["connectivities"] != before).nnz == 0
    b = cr.tl.umap(a, random_state=1, maxiter=50, copy=True)
    assert not np.array_equal(b.obsm["X_umap"], a.obsm["X_umap"])
    assert b.uns["umap"]["params"]["random_state"] == 1
    with pytest.raises(NotImplementedError, match="n_components"):
        cr.tl.umap(a, n_components=3)
    with pytest.raises(ValueError, match="min_dist"):
        cr.tl.umap(a, min_dist=5.0)
    del a.obsp["connectivities"]
    with pytest.raises(KeyError, match="connectivities"):
        cr.tl.umap(a)
