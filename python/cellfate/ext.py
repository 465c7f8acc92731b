"""dynamo's ``ext.ddhodge`` on an in-memory AnnData: the potential landscape by Hodge
decomposition of the flow on a kNN graph in the embedding (the library's sparse solve; the same
as ``cellfate potential``). Writes ``obs["<basis>_ddhodge_potential"]`` (dynamo's sign: low for
progenitors), ``obs["<basis>_ddhodge_div"]``, ``obs["potential"]`` (Waddington's sign, sclsd's
key: high for progenitors), ``obs["potential_pseudotime"]``, ``obs["curl_fraction_<basis>"]`` and,
with fate probabilities (``obsm["lineages_fwd"]``), the developmental entropy ``obs["entropy"]``.

Deviations from dynamo: the edge flow is the line integral of the field along the edge by
default (``flow="unit"`` is dynamo's), the Laplacian is solved sparsely (no downsampling at
5,000 cells)."""

from __future__ import annotations

import numpy as np

from . import _core, _elements
from ._log import logger

__all__ = ["ddhodge"]


def ddhodge(adata, basis: str = "pca", n: int = 30, flow: str = "displacement", copy: bool = False, **kwargs):
    """The Hodge potential of the learned field (``uns["VecFld_<basis>"]``) at the cells — of
    ``obsm["velocity_<basis>"]`` when no field is stored — on their ``n``-NN graph. With
    ``flow="transition"``: of the net flow of ``obsp["T_fwd"]`` on its own graph (no embedding;
    keys ``obs["T_fwd_ddhodge_potential"]``, ...)."""
    from ._source import csr_parts
    from .vf import _embedding, _field

    if flow == "transition":
        adata = adata.copy() if copy else adata
        if "T_fwd" not in adata.obsp:
            raise KeyError("obsp['T_fwd'] not found: compute and write_to_adata() a kernel first")
        fates = None
        if "lineages_fwd" in adata.obsm:
            fates = np.ascontiguousarray(np.asarray(adata.obsm["lineages_fwd"], dtype=np.float64))
        _elements.write(adata, _elements.convert(_core.ddhodge_transitions(csr_parts(adata.obsp["T_fwd"], "obsp['T_fwd']"), fates)))
        return adata if copy else None

    bad = [k for k, v in kwargs.items() if v not in (None, False)]
    if bad:
        raise NotImplementedError(f"ddhodge: {', '.join(bad)} not supported")
    adata = adata.copy() if copy else adata
    if f"VecFld_{basis}" in adata.uns:
        vf = adata.uns[f"VecFld_{basis}"]
        x = _embedding(adata, basis, np.asarray(vf["X_ctrl"]).shape[1])
        v = np.ascontiguousarray(np.asarray(vf["V"], dtype=np.float64))
        source = f"uns['VecFld_{basis}']"
    elif f"velocity_{basis}" in adata.obsm:
        x = _embedding(adata, basis)
        v = np.ascontiguousarray(np.asarray(adata.obsm[f"velocity_{basis}"], dtype=np.float64))
        source = f"obsm['velocity_{basis}']"
    else:
        raise KeyError(f"neither uns['VecFld_{basis}'] nor obsm['velocity_{basis}']: run cellfate.vf.VectorField first")
    fates = None
    if "lineages_fwd" in adata.obsm:
        fates = np.ascontiguousarray(np.asarray(adata.obsm["lineages_fwd"], dtype=np.float64))
    _elements.write(adata, _elements.convert(_core.ddhodge(x, v, basis, int(n), flow, fates)))
    logger.info("ddhodge on %s from %s", basis, source)
    return adata if copy else None
