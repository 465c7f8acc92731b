"""dynamo's vector field (``dynamo.vf``) on an in-memory AnnData: ``VectorField`` (SparseVFC in
an embedding, with per-cell speed, divergence, curl, acceleration and curvature) and
``topography`` (fixed points), written under dynamo's keys (``uns["VecFld_<basis>"]``,
``obs["divergence_<basis>"]``, ...). The computation is the library's (``cellfate_vectorfield``),
the same as ``cellfate vectorfield`` / ``cellfate topography`` on files.

Where cellfate deviates from dynamo: the velocities are fitted scaled to unit RMS
(``normalize_velocity=True``; dynamo's EM takes every cell for an outlier at large speeds), the
M-step is solved directly (dynamo squares the condition number), at most 1,000 control points
and 50,000 fitted cells by default, the fixed points are checked for convergence and typed by
the analytic Jacobian, ``control_point_<basis>`` marks the control points' own cells, and the
curl in more than 2 dimensions is the rotation's norm (dynamo's 3-D value is √3 too large).
"""

from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp

from . import _core, _elements
from ._log import logger
from ._source import csr_parts

__all__ = ["VectorField", "topography", "cell_velocities"]


def _write(adata, slots):
    _elements.write(adata, _elements.convert(slots))


def _embedding(adata, basis, dims=None):
    key = f"X_{basis}" if f"X_{basis}" in adata.obsm else basis
    if key not in adata.obsm:
        raise KeyError(f"obsm['X_{basis}'] not found (the embedding of basis={basis!r}); available: {', '.join(adata.obsm.keys())}")
    x = np.asarray(adata.obsm[key], dtype=np.float64)
    if dims is not None:
        if isinstance(dims, int):
            if not 0 < dims <= x.shape[1]:
                raise ValueError(f"dims={dims}: obsm[{key!r}] has {x.shape[1]} columns")
            x = x[:, :dims]
        else:
            x = x[:, list(dims)]
    return np.ascontiguousarray(x)


def cell_velocities(adata, basis: str = "pca", transition_key: str = "T_fwd", copy: bool = False):
    """The cells' velocities in an embedding, ``obsm["velocity_<basis>"]``: the displacement
    projection of the transition matrix ``obsp[transition_key]`` (CellRank's and scVelo's
    projection; compute and ``write_to_adata()`` a kernel first) on ``obsm["X_<basis>"]``."""
    adata = adata.copy() if copy else adata
    if transition_key not in adata.obsp:
        raise KeyError(
            f"obsp[{transition_key!r}] not found: compute a kernel first, e.g. "
            "cellfate.kernels.VelocityKernel(adata).compute_transition_matrix().write_to_adata()"
        )
    x = _embedding(adata, basis)
    adata.obsm[f"velocity_{basis}"] = _core.project(csr_parts(adata.obsp[transition_key], f"obsp[{transition_key!r}]"), x)
    return adata if copy else None


def VectorField(
    adata,
    basis: str = "pca",
    dims=None,
    M: int | None = None,
    method: str = "SparseVFC",
    lambda_: float = 3.0,
    beta: float | None = None,
    MaxIter: int = 30,
    seed: int = 0,
    normalize_velocity: bool = True,
    copy: bool = False,
    **kwargs,
):
    """dynamo's ``vf.VectorField`` (SparseVFC) on ``obsm["X_<basis>"]`` and
    ``obsm["velocity_<basis>"]`` (projected from ``obsp["T_fwd"]`` when missing, see
    :func:`cell_velocities`): ``uns["VecFld_<basis>"]``, ``obsm["velocity_<basis>_SparseVFC"]``,
    ``obs["control_point_<basis>"]``, ``obs["inlier_prob_<basis>"]``,
    ``obs["obs_vf_angle_<basis>"]`` and ``obs["speed_<basis>"]``, ``["divergence_<basis>"]``,
    ``["curl_<basis>"]``, ``["acceleration_<basis>"]``, ``["curvature_<basis>"]``."""
    if method != "SparseVFC":
        raise NotImplementedError(f"VectorField: method={method!r} not supported (SparseVFC)")
    bad = [k for k, v in kwargs.items() if v not in (None, False)]
    if bad:
        raise NotImplementedError(f"VectorField: {', '.join(bad)} not supported")
    adata = adata.copy() if copy else adata
    if f"velocity_{basis}" not in adata.obsm:
        logger.info("obsm['velocity_%s'] not found: projecting obsp['T_fwd'] on the embedding", basis)
        cell_velocities(adata, basis)
    x = _embedding(adata, basis, dims)
    y = np.asarray(adata.obsm[f"velocity_{basis}"], dtype=np.float64)[:, : x.shape[1]] if dims is None or isinstance(dims, int) else np.asarray(adata.obsm[f"velocity_{basis}"], dtype=np.float64)[:, list(dims)]
    opts = {"lambda": float(lambda_), "max_iter": int(MaxIter), "seed": int(seed), "normalize_velocity": bool(normalize_velocity)}
    if M is not None:
        opts["m"] = int(M)
    if beta is not None:
        opts["beta"] = float(beta)
    slots = _core.vector_field(np.ascontiguousarray(x), np.ascontiguousarray(y), basis, json.dumps(opts))
    _write(adata, slots)
    vf = adata.uns[f"VecFld_{basis}"]
    logger.info("SparseVFC on %s: %d control points, %d EM iterations", basis, vf["X_ctrl"].shape[0], int(vf["iteration"]) + 1)
    return adata if copy else None


def _field(adata, basis):
    key = f"VecFld_{basis}"
    if key not in adata.uns:
        raise KeyError(f"uns[{key!r}] not found: run cellfate.vf.VectorField(adata, basis={basis!r}) first")
    vf = adata.uns[key]
    ctrl = np.ascontiguousarray(np.asarray(vf["X_ctrl"], dtype=np.float64))
    coef = np.ascontiguousarray(np.asarray(vf["C"], dtype=np.float64))
    return ctrl, coef, float(np.asarray(vf["beta"]).ravel()[0])


def topography(adata, basis: str = "pca", n: int = 25, n_cell_starts: int = 25, seed: int = 0, copy: bool = False, **kwargs):
    """dynamo's ``vf.topography``: fixed points of the field in ``uns["VecFld_<basis>"]``
    (``Xss``, ``ftype``: −1 stable, 0 saddle, 1 unstable; ``confidence``, ``fp_ind``,
    ``xlim``/``ylim``), each checked for convergence and typed by the analytic Jacobian."""
    bad = [k for k, v in kwargs.items() if v not in (None, False)]
    if bad:
        raise NotImplementedError(f"topography: {', '.join(bad)} not supported")
    adata = adata.copy() if copy else adata
    ctrl, coef, beta = _field(adata, basis)
    x = _embedding(adata, basis, ctrl.shape[1])
    opts = {"n_starts": int(n), "n_cell_starts": int(n_cell_starts), "seed": int(seed)}
    _write(adata, _core.topography(ctrl, coef, beta, x, basis, json.dumps(opts)))
    logger.info("topography on %s: %d fixed points", basis, len(adata.uns[f"VecFld_{basis}"]["ftype"]))
    return adata if copy else None
