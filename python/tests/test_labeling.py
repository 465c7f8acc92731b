"""Metabolic labeling from Python (``tl.dynamics``, ``LabelingTimeKernel``,
``compute_random_control``) against the CLI's ``preprocess`` and ``kernel --random-control`` on
the same simulated counts: the same numbers (tolerance 0 for the kinetics, 1e-12 for the
control's per-cell score)."""

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
    return p


def _dense(m):
    return m.toarray() if sp.issparse(m) else np.asarray(m)


@pytest.fixture(scope="module")
def labeling_files(cli, tmp_path_factory):
    d = tmp_path_factory.mktemp("labeling")
    raw, pp = d / "raw.h5ad", d / "pp.h5ad"
    _cli(cli, "simulate", "--experiment", "kinetics", "--cells", "600", "--genes", "80", "-o", raw)
    _cli(cli, "preprocess", raw, "-o", pp)
    return d, raw, pp


def test_dynamics_equals_the_cli(labeling_files):
    _, _, pp = labeling_files
    cli_out = anndata.read_h5ad(pp)
    adata = cli_out.copy()
    for k in ["M_n", "M_t", "M_tn", "M_nn", "M_tt", "velocity_N", "velocity_T", "cell_wise_alpha", "X_new", "X_total"]:
        del adata.layers[k]
    for k in ["alpha", "gamma", "half_life", "use_for_dynamics"]:
        del adata.var[k]
    del adata.uns["dynamics"]
    cr.tl.dynamics(adata)
    assert adata.uns["dynamics"]["experiment_type"] == "kin"
    for k in ["M_n", "M_t", "velocity_N", "velocity_T", "cell_wise_alpha"]:
        assert np.array_equal(_dense(adata.layers[k]), _dense(cli_out.layers[k]), equal_nan=True), k
    for k in ["alpha", "gamma", "half_life"]:
        assert np.array_equal(adata.var[k].to_numpy(), cli_out.var[k].to_numpy(), equal_nan=True), k
    assert np.array_equal(adata.varm["vel_params"], cli_out.varm["vel_params"], equal_nan=True)
    # The experiment type can be set; a bad one is a ValueError naming it.
    with pytest.raises(ValueError, match="pulse"):
        cr.tl.dynamics(adata.copy(), experiment_type="pulse")
    with pytest.raises(ValueError, match="several labeling times"):
        cr.tl.dynamics(adata.copy(), labeling_time=2.0, experiment_type="kin")
    with pytest.raises(KeyError, match="labeling time"):
        cr.tl.dynamics(adata.copy(), tkey="hours")


def test_labeling_kernel_and_random_control_equal_the_cli(cli, labeling_files):
    d, _, pp = labeling_files
    k_out = d / "k.h5ad"
    _cli(cli, "kernel", pp, "-o", k_out, "--kernel", "labeling_time", "--random-control")
    theirs = anndata.read_h5ad(k_out)
    adata = anndata.read_h5ad(pp)
    k = cr.kernels.LabelingTimeKernel(adata).compute_transition_matrix()
    assert abs(k.transition_matrix - theirs.obsp["T_fwd"]).max() == 0
    res = k.compute_random_control(seed=0)
    assert res["score"] > 0.3, res
    assert abs(adata.obsp["T_fwd_rnd"] - theirs.obsp["T_fwd_rnd"]).max() == 0
    np.testing.assert_allclose(adata.obs["random_control_score"], theirs.obs["random_control_score"], rtol=0, atol=1e-12)
    assert abs(res["score"] - float(theirs.uns["random_control"]["score"])) < 1e-12
    with pytest.raises(KeyError, match="obsm"):
        k.compute_random_control(basis="tsne")
