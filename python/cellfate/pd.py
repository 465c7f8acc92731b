"""dynamo's ``pd`` (prediction) on an in-memory AnnData: ``fate`` (paths through the vector
field) and in-silico perturbation (``perturbation``, ``perturbation_screen``).

``fate``: dynamo's ``pd.fate``: paths integrated through the vector field
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

__all__ = ["fate", "perturbation", "perturbation_screen"]


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


def _categorical(adata, key):
    col = adata.obs[key]
    if not isinstance(col.dtype, pd.CategoricalDtype):
        return None
    labels = [None if pd.isna(v) else str(v) for v in col]
    return labels, [str(c) for c in col.cat.categories]


def _inputs(adata, spec):
    """What the library reads besides the layers: the run's kernel, terminal states, genes,
    clusters, velocity model and, for the jacobian route, the vector field."""
    from .kernels import Kernel
    from .vf import _embedding, _field

    tkey = spec["transition_key"]
    if tkey not in adata.obsp:
        raise KeyError(f"obsp[{tkey!r}] not found: perturbation reads a fate-mapped AnnData (a kernel written with write_to_adata() and terminal states); run the estimator first")
    kernel = Kernel.from_adata(adata, tkey)._result
    if "term_states_fwd" not in adata.obs or _categorical(adata, "term_states_fwd") is None:
        raise KeyError("obs['term_states_fwd'] not found or not categorical: perturbation predicts fates towards the terminal states; compute them first (GPCCA.predict_terminal_states or set_terminal_states)")
    terminal = _categorical(adata, "term_states_fwd")
    ck = spec["cluster_key"]
    clusters = _categorical(adata, ck) if ck in adata.obs else None
    params = adata.uns.get("velocity_params", {})
    dynamical = isinstance(params, dict) and str(params.get("mode", "")) == "dynamical"
    var = adata.var
    gamma = np.asarray(var["velocity_gamma"], dtype=np.float64).tolist() if "velocity_gamma" in var else None
    rates = None
    if "fit_beta" in var and "fit_gamma" in var:
        rates = (np.asarray(var["fit_beta"], dtype=np.float64).tolist(), np.asarray(var["fit_gamma"], dtype=np.float64).tolist())
    field = None
    basis = spec["basis"]
    if spec["method"] == "jacobian":
        ctrl, coef, beta = _field(adata, basis)
        d = ctrl.shape[1]
        x = _embedding(adata, basis, d)
        vkey = f"velocity_{basis}"
        if vkey not in adata.obsm:
            raise KeyError(f"obsm[{vkey!r}] not found: the jacobian route needs the cells' velocities in {basis} (cellfate.vf.cell_velocities)")
        v = np.ascontiguousarray(np.asarray(adata.obsm[vkey], dtype=np.float64)[:, :d])
        field = (ctrl, coef, beta, x, v, basis)
    name = spec.get("embedding") or ("umap" if "X_umap" in adata.obsm else basis)
    emb = None
    if f"X_{name}" in adata.obsm:
        emb = (name, np.ascontiguousarray(np.asarray(adata.obsm[f"X_{name}"], dtype=np.float64)))
    return kernel, terminal, [str(g) for g in adata.var_names], clusters, dynamical, gamma, rates, field, "log1p" in adata.uns, emb


def _spec(genes, level, fold, cluster, cluster_key, method, basis, embedding, key, n_boot, seed, transition_key, screen=None):
    if method not in ("kinetic", "jacobian"):
        raise ValueError(f"method={method!r}: expected 'kinetic' or 'jacobian'")
    return {
        "genes": genes, "level": None if level is None else float(level), "fold": None if fold is None else float(fold),
        "cluster": cluster, "cluster_key": cluster_key, "method": method, "basis": basis, "embedding": embedding,
        "transition_key": transition_key, "key": key, "n_boot": int(n_boot), "seed": int(seed), "screen": screen,
    }


def perturbation(
    adata,
    genes,
    level: float | None = None,
    fold: float | None = None,
    cluster: str | None = None,
    cluster_key: str = "clusters",
    method: str = "kinetic",
    basis: str = "pca",
    embedding: str | None = None,
    key: str = "perturbed",
    n_boot: int = 1000,
    seed: int = 0,
    transition_key: str = "T_fwd",
    copy: bool = False,
):
    """Knocks ``genes`` out (``level=0``, the default), sets them to ``level`` or multiplies
    them by ``fold``, in all cells or those of ``cluster``, and predicts the change of fate
    probabilities — the same computation and keys as ``cellfate perturb``:
    ``obsm["lineages_fwd_<key>"]``, ``obsm["lineages_fwd_<key>_shift"]``,
    ``obs["fate_changed_<key>"]``, ``obsp["<key>_transition_matrix"]``,
    ``obsm["velocity_<embedding>_<key>"]``, ``uns[key]``. ``method="kinetic"`` changes each
    gene's velocity in its fitted model; ``"jacobian"`` goes through the vector field's
    Jacobian (dynamo's ``j_delta_x``; ``cellfate.vf.VectorField`` first). Returns the shifts per
    group (all perturbed cells, then each cluster) and lineage with bootstrap intervals."""
    adata = adata.copy() if copy else adata
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        raise ValueError("perturbation: no gene given")
    spec = _spec(genes, level, fold, cluster, cluster_key, method, basis, embedding, key, n_boot, seed, transition_key)
    report, slots = _core.perturb(adata, json.dumps(spec), *_inputs(adata, spec), None)
    _elements.write(adata, _elements.convert(slots))
    out = json.loads(report)["outcome"]
    rows = []
    for g in out["groups"]:
        for j, lineage in enumerate(out["lineages"]):
            rows.append({"group": g["group"], "n_cells": g["n_cells"], "lineage": lineage, "mean_shift": g["mean"][j], "ci_low": g["ci_low"][j], "ci_high": g["ci_high"][j], "n_changed": g["n_changed"]})
    logger.info("perturbation: %s of %s in %d cells", out["change"], ", ".join(genes), out["n_cells_perturbed"])
    table = pd.DataFrame(rows)
    return (adata, table) if copy else table


def perturbation_screen(
    adata,
    genes=None,
    n_top: int = 50,
    level: float | None = None,
    fold: float | None = None,
    cluster: str | None = None,
    cluster_key: str = "clusters",
    method: str = "kinetic",
    basis: str = "pca",
    key: str = "perturbed",
    seed: int = 0,
    transition_key: str = "T_fwd",
):
    """Perturbs each gene alone (``genes``, or the ``n_top`` strongest drivers of
    ``varm["terminal_lineage_drivers"]``) and ranks them by the size of the fate shift they
    cause (as ``cellfate perturb --screen``); writes ``uns["<key>_screen"]`` and returns the
    ranking (``rank``, ``gene``, ``magnitude``, ``n_changed``, ``shift_<lineage>``)."""
    if genes is None:
        if "terminal_lineage_drivers" not in adata.varm:
            raise KeyError("varm['terminal_lineage_drivers'] not found: compute the drivers first (GPCCA.compute_eigendecomposition ... compute_lineage_drivers) or pass genes")
        drv = adata.varm["terminal_lineage_drivers"]
        cols = [c for c in drv.columns if str(c).endswith("_corr")]
        score = np.nanmax(np.abs(np.asarray(drv[cols], dtype=np.float64)), axis=1)
        names = np.asarray(adata.var_names).astype(str)
        ok = np.isfinite(score)
        order = sorted(np.flatnonzero(ok), key=lambda j: (-score[j], names[j]))
        genes = [names[j] for j in order[: int(n_top)]]
    genes = [str(g) for g in genes]
    spec = _spec([], level, fold, cluster, cluster_key, method, basis, None, key, 0, seed, transition_key, "genes:" + ",".join(genes))
    report, slots = _core.perturb(adata, json.dumps(spec), *_inputs(adata, spec), genes)
    _elements.write(adata, _elements.convert(slots))
    rep = json.loads(report)
    rows = [{"rank": r["rank"], "gene": r["gene"], "magnitude": r["magnitude"], "n_changed": r["n_changed"], **{f"shift_{l}": x for l, x in zip(rep["lineages"], r["mean_shift"])}} for r in rep["screen"]]
    for g, why in rep["skipped"]:
        logger.warning("perturbation_screen: skipped %s: %s", g, why)
    return pd.DataFrame(rows)
