"""In-memory results equal the CLI's file results bit for bit; errors are the exceptions
CellRank raises, with the library's messages; inputs are neither copied needlessly nor
leaked."""

from __future__ import annotations

import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellfate as cr


def _run(cli, *args):
    p = subprocess.run([str(cli), "-q", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_in_memory_results_equal_the_clis_file_results(pancreas_path, cli, tmp_path):
    # The CLI: kernel, then Schur + macrostates + terminal states with CellRank's choices,
    # then fate probabilities.
    k_out, m_out, f_out = tmp_path / "k.h5ad", tmp_path / "m.h5ad", tmp_path / "f.h5ad"
    _run(cli, "kernel", pancreas_path, "-o", k_out, "--kernel", "0.8*velocity + 0.2*connectivity")
    _run(cli, "macrostates", k_out, "-o", m_out, "--n-states", "8", "--n-components", "20",
         "--cluster-key", "clusters", "--optimizer", "nelder-mead", "--terminal-method", "stability")
    _run(cli, "fates", m_out, "-o", f_out)
    filed = anndata.read_h5ad(f_out)

    adata = anndata.read_h5ad(pancreas_path)
    k = 0.8 * cr.kernels.VelocityKernel(adata).compute_transition_matrix() + 0.2 * cr.kernels.ConnectivityKernel(adata).compute_transition_matrix()
    k.write_to_adata()
    g = cr.estimators.GPCCA(k)
    g.compute_schur(n_components=20)
    g.compute_macrostates(n_states=8, cluster_key="clusters")
    g.predict_terminal_states()
    g.compute_fate_probabilities()

    t_file, t_mem = filed.obsp["T_fwd"], adata.obsp["T_fwd"]
    assert (t_file != t_mem).nnz == 0 and t_file.dtype == t_mem.dtype == np.float64
    assert adata.uns["T_fwd_params"]["spec"] == filed.uns["T_fwd_params"]["spec"]
    for key in ("macrostates_fwd_memberships", "lineages_fwd", "schur_vectors_fwd"):
        np.testing.assert_array_equal(adata.obsm[key], filed.obsm[key], err_msg=key)
    for key in ("macrostates_fwd", "term_states_fwd", "term_states_fwd_probs"):
        pd.testing.assert_series_equal(adata.obs[key], filed.obs[key], check_names=False, check_index_type=False)
    for key in ("lineages_fwd_names", "macrostates_fwd_names", "lineages_fwd_colors"):
        assert list(adata.uns[key]) == list(filed.uns[key]), key
    np.testing.assert_array_equal(adata.uns["coarse_fwd"].X, filed.uns["coarse_fwd"].X)
    np.testing.assert_array_equal(adata.uns["eigendecomposition_fwd"]["D"], filed.uns["eigendecomposition_fwd"]["D"])


def _toy(n=60, genes=8, seed=0):
    rng = np.random.default_rng(seed)
    a = anndata.AnnData(X=rng.random((n, genes)).astype(np.float32))
    a.layers["Ms"] = rng.random((n, genes)).astype(np.float32)
    a.layers["velocity"] = rng.normal(size=(n, genes)).astype(np.float32)
    rows = np.repeat(np.arange(n), 4)
    cols = (rows + np.tile([1, 2, n - 1, n - 2], n)) % n
    a.obsp["connectivities"] = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n, n))
    a.obs["clusters"] = pd.Categorical(np.where(np.arange(n) < n // 2, "a", "b"))
    return a


def test_errors_are_cellranks_exceptions_with_the_librarys_messages():
    a = _toy()
    with pytest.raises(KeyError, match=r"layers\[\"nope\"\].*not found.*available: X, Ms, velocity"):
        cr.kernels.VelocityKernel(a, vkey="nope").compute_transition_matrix()
    with pytest.raises(KeyError, match=r"obsp\[\"knn\"\]"):
        cr.kernels.ConnectivityKernel(a, conn_key="knn").compute_transition_matrix()
    with pytest.raises(ValueError, match="unknown variant `euclid`, expected one of `correlation`, `cosine`"):
        cr.kernels.VelocityKernel(a).compute_transition_matrix(similarity="euclid")
    with pytest.raises(TypeError, match="unexpected keyword"):
        cr.kernels.VelocityKernel(a).compute_transition_matrix(bogus=1)
    ck = cr.kernels.ConnectivityKernel(a).compute_transition_matrix()
    g = cr.estimators.GPCCA(ck)
    with pytest.raises(RuntimeError, match="compute_schur"):
        g.compute_macrostates(n_states=2)
    with pytest.raises(RuntimeError, match="terminal states"):
        g.compute_fate_probabilities()
    with pytest.raises(ValueError, match="method 'nope'"):
        g.compute_schur(method="nope")
    g.compute_schur(n_components=5)
    with pytest.raises(KeyError, match="categorical obs columns are: clusters"):
        g.compute_macrostates(n_states=2, cluster_key="missing")
    with pytest.raises(RuntimeError, match="VelocityKernel: compute the transition matrix first"):
        (0.5 * cr.kernels.VelocityKernel(a) + 0.5 * ck).transition_matrix
    bwd = cr.kernels.VelocityKernel(a, backward=True).compute_transition_matrix()
    fwd = cr.kernels.VelocityKernel(a).compute_transition_matrix()
    with pytest.raises(ValueError, match="backward"):
        (fwd + bwd).transition_matrix


def test_kernel_algebra_and_round_trip():
    a = _toy()
    vk = cr.kernels.VelocityKernel(a).compute_transition_matrix()
    ck = cr.kernels.ConnectivityKernel(a).compute_transition_matrix()
    s = (3 * vk + 1 * ck).transition_matrix
    np.testing.assert_allclose((s - (0.75 * vk.transition_matrix + 0.25 * ck.transition_matrix)).toarray(), 0, atol=1e-15)
    p = (vk * ck).transition_matrix
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    inv = ~vk
    assert inv.backward is True and vk.backward is False
    assert inv.compute_transition_matrix().backward is True
    k = 0.8 * vk + 0.2 * ck
    k.write_to_adata(key="T_test")
    back = cr.kernels.Kernel.from_adata(a, "T_test")
    assert (back.transition_matrix != k.transition_matrix).nnz == 0
    assert back.params == k.params


def test_inputs_are_not_copied_into_python_or_leaked():
    a = _toy(n=400, genes=50)
    ms, vel, conn = a.layers["Ms"], a.layers["velocity"], a.obsp["connectivities"]
    before = [sys.getrefcount(x) for x in (ms, vel, conn, conn.data, a)]
    for _ in range(5):
        k = cr.kernels.VelocityKernel(a).compute_transition_matrix()
        g = cr.estimators.GPCCA(k)
        g.compute_schur(n_components=4)
        del g, k
    after = [sys.getrefcount(x) for x in (ms, vel, conn, conn.data, a)]
    assert before == after
    # The inputs are untouched.
    assert a.layers["Ms"] is ms and ms.dtype == np.float32


def test_stages_report_through_python_logging(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="cellfate")
    a = _toy()
    k = cr.kernels.ConnectivityKernel(a).compute_transition_matrix()
    g = cr.estimators.GPCCA(k)
    g.compute_schur(n_components=4)
    msgs = [r.getMessage() for r in caplog.records if r.name == "cellfate"]
    assert any(m.startswith("ConnectivityKernel.compute_transition_matrix: done in") for m in msgs), msgs
    assert any(m.startswith("GPCCA.compute_schur: done in") for m in msgs), msgs
    # One start and one end per call, not one per nested call.
    assert sum("ConnectivityKernel.compute_transition_matrix: computing" in m for m in msgs) == 1


def test_large_layers_are_read_in_place_not_copied():
    """20,000 cells x 2,000 genes (Ms and velocity float32, 160 MB each): the velocity kernel
    reads them in place, so the call's peak RSS stays within 10 % of its inputs plus outputs,
    and the inputs' reference counts are unchanged afterwards."""
    import resource

    # One-time process set-up (module imports, the thread pool and its allocator arenas) is
    # not the call's: a small call first.
    cr.kernels.VelocityKernel(_toy()).compute_transition_matrix().transition_matrix
    n, genes, k = 20_000, 2_000, 30
    rng = np.random.default_rng(0)
    a = anndata.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))
    a.layers["Ms"] = rng.random((n, genes), dtype=np.float32)
    a.layers["velocity"] = rng.standard_normal((n, genes), dtype=np.float32)
    rows = np.repeat(np.arange(n, dtype=np.int32), k)
    cols = ((rows.astype(np.int64) + np.tile(np.arange(1, k + 1), n)) % n).astype(np.int32)
    a.obsp["connectivities"] = sp.csr_matrix((np.ones(rows.size, np.float32), cols, np.arange(0, n * k + 1, k, dtype=np.int32)), shape=(n, n))
    inputs = a.layers["Ms"].nbytes + a.layers["velocity"].nbytes + a.obsp["connectivities"].data.nbytes * 3
    refs = [sys.getrefcount(a.layers["Ms"]), sys.getrefcount(a.layers["velocity"])]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    vk = cr.kernels.VelocityKernel(a).compute_transition_matrix()
    t = vk.transition_matrix
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outputs = t.data.nbytes + t.indices.nbytes + t.indptr.nbytes
    grew = after - before
    assert grew <= 0.10 * (inputs + outputs), f"peak grew by {grew / 2**20:.0f} MB for {(inputs + outputs) / 2**20:.0f} MB of inputs + outputs"
    assert [sys.getrefcount(a.layers["Ms"]), sys.getrefcount(a.layers["velocity"])] == refs
    assert t.shape == (n, n) and np.allclose(t.sum(axis=1), 1.0)


def test_long_calls_report_progress_to_the_bar(pancreas_path, monkeypatch):
    """While a call runs, the running stage and its steps reach ``cellfate._progress`` (a
    tqdm bar when tqdm is installed)."""
    from cellfate import _progress

    seen = []

    def update(bar, stage, done, total):
        seen.append((stage, done, total))
        return None

    monkeypatch.setattr(_progress, "update", update)
    monkeypatch.setattr(_progress, "after", 0.0)
    a = anndata.read_h5ad(pancreas_path)
    g = cr.estimators.GPCCA(cr.kernels.PrecomputedKernel(a, obsp_key="T_combined").compute_transition_matrix())
    g.compute_schur(n_components=20)
    g.compute_macrostates(n_states=10)
    nm = [s for s in seen if s[0].startswith("macrostates: Nelder-Mead")]
    assert nm, seen
    assert all(0 <= d <= t for _, d, t in nm) and nm[-1][1] >= nm[0][1]
    # A real bar, when tqdm is there.
    pytest.importorskip("tqdm")
    monkeypatch.undo()
    bar = _progress.update(None, "stage", 3, 10)
    assert bar.n == 3 and bar.total == 10
    _progress.close(bar)
