"""scVelo's preprocessing (``scvelo.pp``) on an in-memory AnnData: ``filter_and_normalize``,
``neighbors`` (scanpy's PCA + kNN with UMAP connectivities) and ``moments``, written under
scVelo's and scanpy's keys. The computation is the library's (``cellfate::upstream::steps``),
the same arithmetic as ``cellfate preprocess``: run in a row on the same counts they give the
CLI's values bit for bit (``python/tests/test_upstream.py``).

Where cellfate deviates from scVelo: values are kept in float64 (scVelo and scanpy use
float32 for X, the PCA and the distances; ``Ms``/``Mu`` are float32 as scVelo's); the PCA is
the exact one ARPACK converges to; kNN ties go to the lower cell index. Parameters of scVelo's
signatures that are not implemented raise ``NotImplementedError`` naming them when set.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _core, _elements
from ._log import logger
from ._source import csr_parts

__all__ = ["filter_and_normalize", "neighbors", "moments"]


def _unsupported(fn, **given):
    bad = [k for k, v in given.items() if v not in (None, False)]
    if bad:
        raise NotImplementedError(f"{fn}: {', '.join(bad)} not supported (cellfate implements scVelo's defaults for these)")


def _float64(adata):
    """Which of X, spliced and unspliced hold float64 counts: their normalised matrices stay
    float64, the others (float32 or integer counts) become float32, as scVelo and scanpy keep
    them."""

    def f64(m):
        return m is not None and np.dtype(getattr(m, "dtype", np.float32)) == np.float64

    spliced = f64(adata.layers.get("spliced"))
    return (f64(adata.X) if adata.X is not None else spliced, spliced, f64(adata.layers.get("unspliced")))


def _layer_parts(adata, key):
    if key not in adata.layers:
        raise KeyError(
            f"layers[{key!r}] not found: velocity needs spliced and unspliced counts "
            f"(available layers: {', '.join(adata.layers.keys()) or 'none'})"
        )
    return csr_parts(adata.layers[key], f"layers[{key!r}]")


def _write(adata, slots):
    _elements.write(adata, _elements.convert(slots))


def filter_and_normalize(
    data,
    min_counts=None,
    min_counts_u=None,
    min_cells=None,
    min_cells_u=None,
    min_shared_counts=None,
    min_shared_cells=None,
    n_top_genes=None,
    retain_genes=None,
    subset_highly_variable=True,
    flavor="seurat",
    log=None,
    layers_normalize=None,
    copy=False,
    **kwargs,
):
    """scVelo's ``pp.filter_and_normalize``: genes with fewer than ``min_shared_counts``
    counts shared by spliced and unspliced are dropped; X, ``layers["spliced"]`` and
    ``["unspliced"]`` are normalised per cell (each to the median of its sizes over every input
    gene, recorded in ``obs["initial_size*"]``); the ``n_top_genes`` highly variable genes
    (scanpy's ``seurat`` flavour) are selected (and kept alone with
    ``subset_highly_variable``); X is ``log1p``-transformed.

    scVelo 0.3.4 dropped ``n_top_genes`` and ``log`` (its recipe then runs scanpy's ``log1p`` and
    ``highly_variable_genes``): called as in 0.3.4 (no ``n_top_genes``) X is normalised only;
    called as in scVelo 0.2's tutorials (with ``n_top_genes``) X is also ``log1p``-transformed
    and the genes selected. ``log=True``/``False`` decides explicitly."""
    _unsupported(
        "filter_and_normalize",
        min_counts=min_counts,
        min_counts_u=min_counts_u,
        min_cells=min_cells,
        min_cells_u=min_cells_u,
        min_shared_cells=min_shared_cells,
        retain_genes=retain_genes,
        layers_normalize=layers_normalize,
        **kwargs,
    )
    if flavor != "seurat":
        raise NotImplementedError(f"filter_and_normalize: flavor={flavor!r} not supported (only 'seurat')")
    if log is None:
        log = n_top_genes is not None
    adata = data.copy() if copy else data
    s, u = _layer_parts(adata, "spliced"), _layer_parts(adata, "unspliced")
    x = csr_parts(adata.X, "X") if adata.X is not None else None
    slots, kept, subset = _core.filter_and_normalize(
        s, u, x, None if min_shared_counts is None else float(min_shared_counts),
        None if n_top_genes is None else int(n_top_genes), bool(log),
        _float64(adata),
    )
    _write(adata, slots)
    kept, subset = np.asarray(kept, dtype=bool), np.asarray(subset, dtype=bool)
    keep = subset if subset_highly_variable else kept
    if min_shared_counts is not None:
        logger.info("Filtered out %d genes that are detected %s counts (shared).", int((~kept).sum()), min_shared_counts)
    logger.info("Normalized count data: X, spliced, unspliced.")
    if n_top_genes is not None:
        logger.info("Extracted %d highly variable genes.", int(subset.sum()))
    if not keep.all():
        adata._inplace_subset_var(keep)
    if log:
        logger.info("Logarithmized X.")
    return adata if copy else None


def neighbors(
    adata,
    n_neighbors=30,
    n_pcs=None,
    use_rep=None,
    use_highly_variable=True,
    knn=True,
    random_state=0,
    method="umap",
    metric="euclidean",
    metric_kwds=None,
    num_threads=-1,
    copy=False,
):
    """scanpy's ``pp.neighbors`` with scVelo's defaults (30 neighbours, 30 principal
    components, UMAP connectivities): ``obsp["distances"]``, ``obsp["connectivities"]``,
    ``uns["neighbors"]``; the PCA (``obsm["X_pca"]``, of the highly variable genes when
    ``var["highly_variable"]`` exists) is computed when missing. Exact neighbours up to 50,000
    cells, NN-descent above (cellfate's rule)."""
    if method != "umap" or metric != "euclidean" or metric_kwds or not knn:
        raise NotImplementedError("neighbors: only method='umap', metric='euclidean', knn=True are supported")
    adata = adata.copy() if copy else adata
    n_pcs = 30 if n_pcs is None else int(n_pcs)
    pca = None
    if use_rep not in (None, "X_pca", "X"):
        raise NotImplementedError(f"neighbors: use_rep={use_rep!r} not supported (X_pca or X)")
    if use_rep != "X" and "X_pca" in adata.obsm and adata.obsm["X_pca"].shape[1] >= n_pcs:
        pca = np.ascontiguousarray(np.asarray(adata.obsm["X_pca"]))
    hvg = None
    if use_highly_variable and "highly_variable" in adata.var.columns:
        hvg = [bool(v) for v in adata.var["highly_variable"].fillna(False)]
    x = csr_parts(adata.X, "X") if pca is None else None
    slots = _core.neighbors(x, hvg, pca, int(n_neighbors), n_pcs, "auto", int(random_state))
    _write(adata, slots)
    logger.info("computed neighbors (%d neighbours, %d PCs)", n_neighbors, n_pcs)
    return adata if copy else None


def _n_neighbors(adata):
    try:
        return int(adata.uns["neighbors"]["params"]["n_neighbors"])
    except (KeyError, TypeError):
        return None


def moments(
    data,
    n_neighbors=30,
    n_pcs=None,
    mode="connectivities",
    method="umap",
    use_rep=None,
    use_highly_variable=True,
    copy=False,
):
    """scVelo's ``pp.moments``: ``layers["Ms"]`` and ``["Mu"]``, the spliced and unspliced
    counts averaged over each cell and its neighbours in ``obsp["connectivities"]`` (computed
    first, as scVelo does, when missing or with fewer neighbours than ``n_neighbors``). Raw
    counts are normalised per cell first, as scVelo does."""
    if mode != "connectivities":
        raise NotImplementedError(f"moments: mode={mode!r} not supported (only 'connectivities')")
    adata = data.copy() if copy else data
    have = _n_neighbors(adata)
    if "connectivities" not in adata.obsp or (n_neighbors is not None and (have is None or n_neighbors > have)):
        neighbors(adata, n_neighbors=n_neighbors or 30, n_pcs=n_pcs, use_rep=use_rep, use_highly_variable=use_highly_variable, method=method)
    conn = csr_parts(adata.obsp["connectivities"], "obsp['connectivities']")
    slots = _core.moments(
        conn, _layer_parts(adata, "spliced"), _layer_parts(adata, "unspliced"), _float64(adata)
    )
    _write(adata, slots)
    logger.info("computed moments based on connectivities: added 'Ms' and 'Mu' (adata.layers)")
    return adata if copy else None


def _f32(a):
    if sp.issparse(a):
        a = a.toarray()
    return np.ascontiguousarray(np.asarray(a), dtype=np.float32)
