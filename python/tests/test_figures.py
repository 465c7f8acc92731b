"""Figures from Python: ``cellfate.pl`` and the estimators' / kernels' ``plot_*`` methods draw
the library's figures from the in-memory AnnData. After CellRank's getting-started calls on
pancreas, every figure drawn in memory is byte for byte the SVG ``cellfate plot`` writes from
the same AnnData saved to a file; the methods give the CLI's figure names, leave the AnnData
unchanged, save PNG/SVG files, and raise CellRank's exceptions for bad arguments."""

from __future__ import annotations

import subprocess

import anndata
import pytest

import cellfate as cr


@pytest.fixture(scope="module")
def fitted(pancreas_path):
    adata = anndata.read_h5ad(pancreas_path)
    for key in ("macrostates_fwd", "term_states_fwd", "cflare_term_states_fwd"):
        del adata.obs[key]  # CellRank's own results in the reference
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
    # As CellRank's pancreas tutorial does: all four endocrine fates (the circular projection
    # needs at least three lineages).
    g.set_terminal_states(["Alpha", "Beta", "Delta", "Epsilon"])
    g.compute_fate_probabilities()
    g.compute_lineage_drivers(layer="Ms", cluster_key="clusters")
    # anndata reads the reference's obs names as nullable strings and refuses to write them
    # back unless allowed (its own setting, unrelated to cellfate's slots).
    anndata.settings.allow_write_nullable_strings = True
    return adata, k, g


def test_figures_in_memory_equal_the_clis(fitted, cli, tmp_path):
    adata, _, _ = fitted
    kinds = ["clusters", "macrostates", "terminal_states", "fates", "aggregated_fates", "circular_projection",
             "spectrum", "coarse_T", "macrostate_composition", "drivers", "gene_trends", "heatmap",
             "random_walks", "velocity_stream"]
    figs = cr.pl.figures(adata, kinds, format="svg", n_walks=20)
    assert {"embedding_clusters", "fate_Alpha", "spectrum", "drivers", "velocity_stream_pca", "gene_trends_Beta"} <= set(figs.names), (figs.names, figs.notes)
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "plots"
    r = subprocess.run([str(cli), "-q", "plot", str(path), "-o", str(out), "--format", "svg", "--kind", ",".join(kinds), "--n-walks", "20"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    files = sorted(p.stem for p in out.glob("*.svg"))
    assert files == sorted(figs.names)
    for f in figs:
        assert f.data == (out / f"{f.name}.svg").read_bytes(), f"{f.name}: the in-memory figure differs from the CLI's"


def test_plot_methods_draw_the_named_figures_without_changing_the_anndata(fitted, tmp_path):
    adata, k, g = fitted
    before = (sorted(adata.obs.columns), sorted(adata.obsm.keys()), sorted(adata.obsp.keys()), sorted(adata.uns.keys()))
    fates = g.plot_fate_probabilities(basis="pca")
    assert fates.names == [f"fate_{n}" for n in g.fate_probabilities.names]
    assert g.plot_macrostates(which="terminal").names == ["embedding_terminal_states"]
    assert g.plot_macrostates().names == ["embedding_macrostates"]
    assert g.plot_spectrum().names == ["spectrum"]
    assert g.plot_coarse_T().names == ["coarse_T"]
    assert g.plot_lineage_drivers(n_genes=5).names == ["drivers"]
    assert g.plot_macrostate_composition("clusters").names == ["macrostate_composition"]
    assert cr.pl.circular_projection(adata, keys="clusters").names == ["circular_projection"]
    assert cr.pl.aggregate_fate_probabilities(adata, cluster_key="clusters").names == ["aggregated_fates"]
    trends = cr.pl.gene_trends(adata, genes=["Pcsk2", "Ghrl"], time_key="dpt_pseudotime" if "dpt_pseudotime" in adata.obs else None)
    assert trends.names == ["gene_trends"]  # the genes asked for: one figure, every lineage
    heat = cr.pl.heatmap(adata, genes=["Pcsk2", "Ghrl", "Gcg"]).names
    assert heat and all(n.startswith("heatmap") for n in heat), heat
    # A kernel's projection and walks come from its own matrix, not from obsp.
    vk = cr.kernels.VelocityKernel(adata).compute_transition_matrix()
    assert vk.plot_projection(basis="pca").names == ["velocity_stream_pca"]
    assert vk.plot_projection(basis="pca", stream=False).names == ["velocity_grid_pca"]
    assert vk.plot_random_walks(n_sims=10, seed=1).names == ["random_walks"]
    assert cr.pl.velocity_embedding_stream(adata, basis="pca").names == ["velocity_stream_pca"]
    assert cr.pl.velocity_embedding(adata, basis="pca").names == ["velocity_arrows_pca"]
    after = (sorted(adata.obs.columns), sorted(adata.obsm.keys()), sorted(adata.obsp.keys()), sorted(adata.uns.keys()))
    assert after == before
    # Inline display and files.
    png = fates[0]._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<img" in fates._repr_html_()
    saved = fates.save(tmp_path)
    assert [p.name for p in saved] == [f"{n}.png" for n in fates.names]
    assert all(p.read_bytes() == f.data for p, f in zip(saved, fates))
    svg = cr.pl.figures(adata, "spectrum", format="svg", width=1000, height=900)
    assert svg[0]._repr_svg_().startswith("<svg") and 'width="1000"' in svg[0]._repr_svg_()
    with pytest.warns(UserWarning, match="legend_loc"):
        cr.pl.circular_projection(adata, keys="clusters", legend_loc="right")


def test_the_report_from_memory(fitted, tmp_path):
    adata, _, _ = fitted
    out = tmp_path / "report.html"
    page = cr.pl.report(adata, out, title="pancreas", kind=["fates", "spectrum"])
    assert out.read_text() == page
    for section in ("<h2>Terminal states</h2>", "fate_Alpha", "spectrum"):
        assert section in page


def test_bad_figure_arguments_raise_cellranks_exceptions(fitted):
    adata, _, g = fitted
    with pytest.raises(ValueError, match="velocity_streams"):
        cr.pl.figures(adata, "velocity_streams")
    with pytest.raises(KeyError, match="X_nothing"):
        cr.pl.figures(adata, "clusters", basis="nothing")
    with pytest.raises(KeyError, match="NotAGene") as e:
        cr.pl.gene_trends(adata, genes=["NotAGene"])
    assert "genes=" in str(e.value) and "--genes" not in str(e.value)  # keywords, not CLI flags
    with pytest.raises(KeyError, match="no_such_column"):
        cr.pl.figures(adata, "clusters", cluster_key="no_such_column")
    with pytest.raises(ValueError, match="dpi"):
        cr.pl.figures(adata, "spectrum", dpi=5)
    with pytest.raises(ValueError, match="which"):
        g.plot_macrostates(which="initial")
    bare = anndata.AnnData(obs=adata.obs[["clusters"]].copy(), obsm={"X_pca": adata.obsm["X_pca"]})
    with pytest.raises(ValueError, match="fates"):
        cr.pl.figures(bare, "fates")
