"""In-silico perturbation from Python (``cellfate.pd.perturbation``, ``pd.perturbation_screen``)
against ``cellfate perturb`` on the same fate-mapped simulation (with the regulatory circuit):
bit for bit on every slot both write, the same screen ranking, and errors as exceptions."""

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
    return p.stdout


def _same(a, b, what):
    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    b = b.toarray() if sp.issparse(b) else np.asarray(b)
    assert a.shape == b.shape, f"{what}: {a.shape} vs {b.shape}"
    assert np.array_equal(a, b), f"{what}: max |Δ| {np.max(np.abs(a.astype(float) - b.astype(float)))}"


@pytest.fixture(scope="module")
def run_file(cli, tmp_path_factory):
    d = tmp_path_factory.mktemp("perturb")
    _cli(cli, "simulate", "--circuit", "--cells", "1500", "-o", d / "sim.h5ad")
    _cli(cli, "run", d / "sim.h5ad", "-o", d / "run.h5ad")
    return d / "run.h5ad"


def test_perturbation_equals_the_cli(cli, run_file, tmp_path):
    _cli(cli, "perturb", run_file, "-o", tmp_path / "ko.h5ad", "--gene", "gene_2", "--cluster", "Progenitor")
    want = anndata.read_h5ad(tmp_path / "ko.h5ad")
    a = anndata.read_h5ad(run_file)
    table = cr.pd.perturbation(a, "gene_2", cluster="Progenitor")
    for key in ("lineages_fwd_perturbed", "lineages_fwd_perturbed_shift", "velocity_pca_perturbed"):
        _same(a.obsm[key], want.obsm[key], f"obsm[{key!r}]")
    _same(a.obs["fate_changed_perturbed"].to_numpy(), want.obs["fate_changed_perturbed"].to_numpy(), "fate_changed")
    _same(a.obsp["perturbed_transition_matrix"], want.obsp["perturbed_transition_matrix"], "transition matrix")
    assert a.uns["perturbed"] == want.uns["perturbed"]
    # The table: the perturbed cells first, the knocked-out branch loses probability.
    first = table[table["group"] == "Progenitor"]
    alpha = first[first["lineage"] == "Alpha"].iloc[0]
    assert alpha["mean_shift"] < 0 and alpha["ci_high"] < 0


def test_screen_equals_the_cli(cli, run_file, tmp_path):
    genes = ["gene_2", "gene_4", "gene_6", "gene_1"]
    _cli(cli, "perturb", run_file, "-o", tmp_path / "s.h5ad", "--screen", "genes:" + ",".join(genes), "--csv", tmp_path / "s.csv")
    want = np.genfromtxt(tmp_path / "s.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    a = anndata.read_h5ad(run_file)
    ranking = cr.pd.perturbation_screen(a, genes=genes)
    assert list(ranking["gene"]) == [str(g) for g in want["gene"]]
    assert np.array_equal(ranking["magnitude"].to_numpy(), want["magnitude"].astype(float))
    assert "perturbed_screen" in a.uns


def test_errors_are_exceptions_naming_the_problem(run_file):
    a = anndata.read_h5ad(run_file)
    with pytest.raises(KeyError, match="closest"):
        cr.pd.perturbation(a, "gene_2x")
    with pytest.raises(ValueError, match="exclude each other"):
        cr.pd.perturbation(a, "gene_2", level=0, fold=2)
    with pytest.raises(KeyError, match="VectorField"):
        cr.pd.perturbation(a, "gene_2", method="jacobian")
    b = a.copy()
    del b.obs["term_states_fwd"]
    with pytest.raises(KeyError, match="term_states_fwd"):
        cr.pd.perturbation(b, "gene_2")
