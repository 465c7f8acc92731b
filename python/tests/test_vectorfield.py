"""dynamo's vector-field API from Python (``cellfate.vf.VectorField``, ``vf.topography``,
``ext.ddhodge``, ``pd.fate``) against the CLI's ``vectorfield``/``topography``/``potential``/
``predict-fate`` on the same demo file: bit for bit on every slot both write; then the
landscape against the simulation's true time (the Rust test's thresholds)."""

from __future__ import annotations

import subprocess

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import cellfate as cr


def _cli(cli, *args):
    p = subprocess.run([str(cli), "-q", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def _same(a, b, what):
    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    b = b.toarray() if sp.issparse(b) else np.asarray(b)
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    assert np.array_equal(a, b, equal_nan=True), f"{what}: max |Δ| {np.nanmax(np.abs(a.astype(float) - b.astype(float)))}"


def _spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return np.corrcoef(rx, ry)[0, 1]


def test_vector_field_api_equals_the_cli(cli, tmp_path):
    demo = tmp_path / "demo.h5ad"
    _cli(cli, "run", "--demo", "-o", demo)
    _cli(cli, "vectorfield", demo, "-o", tmp_path / "vf.h5ad")
    _cli(cli, "potential", tmp_path / "vf.h5ad", "-o", tmp_path / "pot.h5ad")
    _cli(cli, "predict-fate", tmp_path / "pot.h5ad", "-o", tmp_path / "fate.h5ad", "--from-cluster", "Intermediate_Beta")
    want = anndata.read_h5ad(tmp_path / "fate.h5ad")

    a = anndata.read_h5ad(demo)
    with pytest.raises(KeyError, match="VectorField"):
        cr.vf.topography(a)
    cr.vf.VectorField(a, basis="pca")
    _same(a.obsm["velocity_pca"], want.obsm["velocity_pca"], "obsm['velocity_pca']")
    for key in ("X_ctrl", "C", "V", "P", "ctrl_idx", "beta", "sigma2"):
        _same(a.uns["VecFld_pca"][key], want.uns["VecFld_pca"][key], f"VecFld_pca[{key!r}]")
    for key in ("speed_pca", "divergence_pca", "curl_pca", "acceleration_pca", "curvature_pca", "control_point_pca", "inlier_prob_pca"):
        _same(a.obs[key].to_numpy(), want.obs[key].to_numpy(), f"obs[{key!r}]")
    # The field's streamlines, drawn from memory as `cellfate plot` draws them from the file.
    vf_fig = cr.pl.figures(a, "vector_field", format="svg")
    assert vf_fig.names == ["vector_field_pca"]
    _cli(cli, "plot", tmp_path / "vf.h5ad", "-o", tmp_path / "figs", "--format", "svg", "--kind", "vector_field")
    assert vf_fig[0].data == (tmp_path / "figs" / "vector_field_pca.svg").read_bytes()
    cr.ext.ddhodge(a, basis="pca")
    for key in ("pca_ddhodge_potential", "pca_ddhodge_div", "potential", "entropy"):
        _same(a.obs[key].to_numpy(), want.obs[key].to_numpy(), f"obs[{key!r}]")
    cells = a.obs_names[a.obs["clusters"] == "Intermediate_Beta"]
    cr.pd.fate(a, cells, basis="pca")
    for key in ("prediction", "end_cell", "t"):
        _same(a.uns["fate_pca"][key], want.uns["fate_pca"][key], f"fate_pca[{key!r}]")
    t = a.obs["true_time"].to_numpy()
    assert _spearman(a.obs["potential"].to_numpy(), t) <= -0.9
    b = anndata.read_h5ad(demo)
    cr.ext.ddhodge(b, flow="transition")
    _cli(cli, "potential", demo, "-o", tmp_path / "pot_t.h5ad", "--flow", "transition")
    want_t = anndata.read_h5ad(tmp_path / "pot_t.h5ad")
    for key in ("T_fwd_ddhodge_potential", "potential", "entropy"):
        _same(b.obs[key].to_numpy(), want_t.obs[key].to_numpy(), f"obs[{key!r}] (transition flow)")
    assert _spearman(a.obs["entropy"].to_numpy(), t) <= -0.8


def test_topography_of_a_two_dimensional_field(cli, tmp_path):
    demo = tmp_path / "demo.h5ad"
    _cli(cli, "run", "--demo", "-o", demo)
    _cli(cli, "vectorfield", demo, "-o", tmp_path / "vf2.h5ad", "--dims", "2")
    _cli(cli, "topography", tmp_path / "vf2.h5ad", "-o", tmp_path / "topo.h5ad")
    want = anndata.read_h5ad(tmp_path / "topo.h5ad")
    a = anndata.read_h5ad(demo)
    cr.vf.VectorField(a, basis="pca", dims=2)
    cr.vf.topography(a, basis="pca")
    for key in ("Xss", "ftype", "confidence", "fp_ind", "xlim", "ylim"):
        _same(a.uns["VecFld_pca"][key], want.uns["VecFld_pca"][key], f"VecFld_pca[{key!r}]")
    assert set(np.asarray(a.uns["VecFld_pca"]["ftype"]).tolist()) <= {-1, 0, 1}
    for nc in ("NCx", "NCy"):
        assert a.uns["VecFld_pca"][nc].keys() == want.uns["VecFld_pca"][nc].keys()
        for k in a.uns["VecFld_pca"][nc]:
            _same(a.uns["VecFld_pca"][nc][k], want.uns["VecFld_pca"][nc][k], f"{nc}[{k}]")
