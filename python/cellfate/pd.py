"""dynamo's ``pd.fate`` on an in-memory AnnData: paths integrated through the vector field
(adaptive Dormand–Prince) from chosen cells, written to ``uns["fate_<basis>"]`` (``init_cells``,
``init_states``, ``t``, ``prediction`` (k × d × points), ``end_cell``, ``end_cluster``, ``end``)
and ``obs["fate_<basis>_end_cluster"]`` — the same as ``cellfate predict-fate``. A path stops
when it settles at a fixed point or leaves the control points' support (reported in ``end``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import _core, _elements
from ._log import logger

__all__ = ["fate"]


def fate(
    adata,
    init_cells,
    basis: str = "pca",
    direction: str = "forward",
    interpolation_num: int = 250,
    t_end: float | None = None,
    cluster_key: str = "clusters",
    copy: bool = False,
    **kwargs,
):
    """Integrates ``uns["VecFld_<basis>"]`` from ``init_cells`` (obs names, indices or a
    boolean mask) ``direction="forward"`` or ``"backward"``."""
    from .vf import _embedding, _field

    bad = [k for k, v in kwargs.items() if v not in (None, False)]
    if bad:
        raise NotImplementedError(f"fate: {', '.join(bad)} not supported")
    if direction not in ("forward", "backward"):
        raise ValueError(f"fate: direction={direction!r}: expected 'forward' or 'backward'")
    adata = adata.copy() if copy else adata
    ctrl, coef, beta = _field(adata, basis)
    x = _embedding(adata, basis, ctrl.shape[1])
    cells = np.asarray(init_cells)
    if cells.dtype == bool:
        starts = np.flatnonzero(cells)
    elif cells.dtype.kind in "iu":
        starts = cells
    else:
        missing = [c for c in cells if c not in adata.obs_names]
        if missing:
            raise KeyError(f"fate: cells not found: {', '.join(map(str, missing[:5]))}")
        starts = adata.obs_names.get_indexer(cells)
    labels = [None] * adata.n_obs
    if cluster_key in adata.obs.columns:
        labels = [None if pd.isna(v) else str(v) for v in adata.obs[cluster_key]]
    opts = {"backward": direction == "backward", "n_points": int(interpolation_num)}
    if t_end is not None:
        opts["t_end"] = float(t_end)
    slots = _core.fate(ctrl, coef, beta, x, [int(i) for i in starts], [str(n) for n in adata.obs_names], labels, basis, json.dumps(opts))
    _elements.write(adata, _elements.convert(slots))
    logger.info("fate: %d paths integrated %s", len(starts), direction)
    return adata if copy else None
