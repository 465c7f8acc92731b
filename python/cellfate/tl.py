"""scVelo's tools (``scvelo.tl``) that work from velocities already computed:
``velocity_graph``, ``velocity_confidence`` and ``latent_time``, on an in-memory AnnData,
written under scVelo's keys. The computation is the library's (``cellfate_dynamics``), the same
the ``cellfate velocity`` command runs on files; tested against scVelo 0.3.4's outputs.

Not yet here: ``recover_dynamics`` and ``velocity`` themselves (use ``cellfate velocity
--mode dynamical`` on a file for now)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _core
from ._log import logger
from ._source import csr_parts

__all__ = ["velocity_graph", "velocity_confidence", "latent_time"]


def _inputs(adata, vkey, xkey):
    for group, key in (("layers", xkey), ("layers", vkey)):
        if key not in getattr(adata, group):
            raise KeyError(f"{group}[{key!r}] not found: compute velocities first (available: {', '.join(getattr(adata, group).keys())})")
    if "distances" not in adata.obsp:
        raise KeyError("obsp['distances'] not found: compute the kNN graph first (scanpy's pp.neighbors or cellfate preprocess)")
    ms, v = adata.layers[xkey], adata.layers[vkey]
    ms = ms.toarray() if sp.issparse(ms) else np.asarray(ms)
    v = v.toarray() if sp.issparse(v) else np.asarray(v)
    genes = f"{vkey}_genes"
    mask = [bool(x) for x in adata.var[genes].fillna(False)] if genes in adata.var.columns else None
    mode = adata.uns.get(f"{vkey}_params", {}).get("mode")
    return ms, v, csr_parts(adata.obsp["distances"], "obsp['distances']"), mask, mode == "stochastic"


def _graph(parts):
    data, indices, indptr, shape = parts
    return sp.csr_matrix((data, indices, indptr), shape=shape)


def _summaries(adata, vkey, xkey):
    ms, v, dist, mask, stochastic = _inputs(adata, vkey, xkey)
    return _core.velocity_graph_and_confidence(ms, v, dist, mask, stochastic)


def velocity_graph(data, vkey: str = "velocity", xkey: str = "Ms", copy: bool = False, **kwargs):
    """Cosine correlations of each cell's velocity with its displacements to its neighbours
    (scVelo's ``tl.velocity_graph`` with its defaults): ``uns[vkey + "_graph"]``,
    ``uns[vkey + "_graph_neg"]``, ``obs[vkey + "_self_transition"]``."""
    unsupported = {k: v for k, v in kwargs.items() if v is not None and k not in ("n_jobs", "backend", "show_progress_bar")}
    if unsupported:
        raise NotImplementedError(f"velocity_graph: {', '.join(unsupported)} not supported yet (scVelo's defaults only)")
    adata = data.copy() if copy else data
    s = _summaries(adata, vkey, xkey)
    adata.uns[f"{vkey}_graph"] = _graph(s["velocity_graph"])
    adata.uns[f"{vkey}_graph_neg"] = _graph(s["velocity_graph_neg"])
    adata.obs[f"{vkey}_self_transition"] = s["velocity_self_transition"]
    logger.info("velocity_graph: %d velocity genes", s["n_genes"])
    return adata if copy else None


def velocity_confidence(data, vkey: str = "velocity", xkey: str = "Ms", copy: bool = False):
    """scVelo's ``tl.velocity_confidence``: ``obs[vkey + "_length"]`` (not rounded: scVelo
    rounds to 2 decimals; the CLI writes the same unrounded values), ``obs[vkey + "_confidence"]``, ``obs[vkey + "_confidence_transition"]``, and
    RNAVelocity's per-cell score ``obs[vkey + "_coherence"]``."""
    adata = data.copy() if copy else data
    s = _summaries(adata, vkey, xkey)
    adata.obs[f"{vkey}_length"] = s["velocity_length"]
    adata.obs[f"{vkey}_confidence"] = s["velocity_confidence"]
    adata.obs[f"{vkey}_confidence_transition"] = s["velocity_confidence_transition"]
    adata.obs[f"{vkey}_coherence"] = s["velocity_coherence"]
    return adata if copy else None


def latent_time(data, vkey: str = "velocity", min_likelihood: float | None = 0.1, root_key=None, xkey: str = "Ms", copy: bool = False, **kwargs):
    """scVelo's gene-shared latent time from the dynamical model's ``layers["fit_t"]`` and
    ``var["fit_likelihood"]``: ``obs["latent_time"]``, with ``obs["root_cells"]`` and
    ``obs["end_points"]``. ``root_key``: a cell (index or obs name), or an obs column of root
    scores; by default scVelo's rule."""
    unsupported = {k: v for k, v in kwargs.items() if v is not None}
    if unsupported:
        raise NotImplementedError(f"latent_time: {', '.join(unsupported)} not supported yet (scVelo's defaults only)")
    adata = data.copy() if copy else data
    for group, key in (("layers", "fit_t"), ("var", "fit_likelihood")):
        present = key in (adata.layers if group == "layers" else adata.var.columns)
        if not present:
            raise KeyError(f"{group}[{key!r}] not found: fit the dynamical model first (cellfate velocity --mode dynamical)")
    if "connectivities" not in adata.obsp:
        raise KeyError("obsp['connectivities'] not found: compute the kNN graph first")
    ms, v, dist, mask, stochastic = _inputs(adata, vkey, xkey)
    fit_t = adata.layers["fit_t"]
    fit_t = fit_t.toarray() if sp.issparse(fit_t) else np.asarray(fit_t)
    lik = np.nan_to_num(adata.var["fit_likelihood"].to_numpy(dtype=np.float64), nan=-np.inf).tolist()
    root_cell = root_scores = None
    if root_key is not None:
        if isinstance(root_key, (int, np.integer)):
            root_cell = int(root_key)
        elif root_key in adata.obs_names:
            root_cell = int(adata.obs_names.get_loc(root_key))
        elif root_key in adata.obs.columns:
            root_scores = adata.obs[root_key].to_numpy(dtype=np.float64).tolist()
        else:
            raise KeyError(f"latent_time: root_key {root_key!r} is neither a cell nor an obs column")
    out = _core.latent_time(
        ms, v, dist, csr_parts(adata.obsp["connectivities"], "obsp['connectivities']"), fit_t, lik,
        mask, stochastic, root_cell, root_scores, min_likelihood,
    )
    adata.obs["root_cells"] = out["root_cells"]
    adata.obs["end_points"] = out["end_points"]
    adata.obs["latent_time"] = out["latent_time"]
    return adata if copy else None
