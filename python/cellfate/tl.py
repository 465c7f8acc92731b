"""scVelo's tools (``scvelo.tl``) on an in-memory AnnData, written under scVelo's keys:
``velocity`` (steady-state, stochastic and dynamical models), ``recover_dynamics``,
``velocity_graph``, ``velocity_confidence`` and ``latent_time``. The computation is the
library's (``cellfate::upstream::steps``, ``cellfate_dynamics``), the same the ``cellfate
velocity`` command runs on files: ``velocity`` and ``recover_dynamics`` give the CLI's values
bit for bit, the summaries are tested against scVelo 0.3.4's outputs.

Where cellfate deviates from scVelo: ``recover_dynamics`` fits the model and reads the
velocities off it in one pass, so it also writes ``layers["velocity"]``, ``["velocity_u"]``,
``var["velocity_genes"]`` and ``uns["velocity_params"]`` (what ``velocity(mode="dynamical")``
writes); ``velocity(mode="dynamical")`` then keeps them."""

from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp

from . import _core, _elements
from ._log import logger
from ._source import csr_parts

__all__ = ["dynamics", "velocity", "recover_dynamics", "velocity_graph", "velocity_confidence", "latent_time"]

_MODES = {"deterministic": "deterministic", "steady_state": "deterministic", "stochastic": "stochastic", "dynamical": "dynamical"}


def _hvg(adata, use_highly_variable):
    if use_highly_variable and "highly_variable" in adata.var.columns:
        return [bool(v) for v in adata.var["highly_variable"].fillna(False)]
    return None


def _moments_inputs(adata, need_counts):
    from . import pp

    if "Ms" not in adata.layers or "Mu" not in adata.layers:
        logger.info("layers Ms/Mu not found: computing moments (pp.moments)")
        pp.moments(adata)
    ms, mu = pp._f32(adata.layers["Ms"]), pp._f32(adata.layers["Mu"])
    conn = csr_parts(adata.obsp["connectivities"], "obsp['connectivities']") if "connectivities" in adata.obsp else None
    s = u = None
    if need_counts and conn is not None and "spliced" in adata.layers and "unspliced" in adata.layers:
        s = csr_parts(adata.layers["spliced"], "layers['spliced']")
        u = csr_parts(adata.layers["unspliced"], "layers['unspliced']")
    return ms, mu, s, u, conn


def _rename(slots, vkey):
    if vkey == "velocity":
        return slots
    out = []
    for slot, e in slots:
        group, _, key = slot.partition("/")
        if key.startswith("velocity") and group in ("layers", "var", "uns"):
            key = vkey + key[len("velocity"):]
        elif key == "variance_velocity":
            key = f"variance_{vkey}"
        out.append((f"{group}/{key}", e))
    return out


def velocity(
    data,
    vkey: str = "velocity",
    mode: str = "stochastic",
    fit_offset: bool = False,
    fit_offset2: bool = False,
    filter_genes: bool = False,
    groups=None,
    groupby=None,
    groups_for_fit=None,
    constrain_ratio=None,
    use_raw: bool = False,
    use_latent_time=None,
    perc=None,
    min_r2: float = 0.01,
    min_likelihood: float = 0.001,
    r2_adjusted=None,
    use_highly_variable: bool = True,
    diff_kinetics=None,
    copy: bool = False,
    **kwargs,
):
    """scVelo's ``tl.velocity``: per gene the steady-state (``"deterministic"``), stochastic
    (default) or dynamical model on ``layers["Ms"]``/``["Mu"]`` (computed first when missing),
    restricted to ``var["highly_variable"]`` when present. Writes ``layers[vkey]``
    (``["variance_" + vkey]`` for the stochastic model), ``var[vkey + "_gamma"]``,
    ``["_r2"]``, ``["_genes"]``, ``uns[vkey + "_params"]``. ``mode="dynamical"`` needs
    ``recover_dynamics`` first."""
    bad = {
        "fit_offset": fit_offset, "fit_offset2": fit_offset2, "filter_genes": filter_genes, "groups": groups,
        "groupby": groupby, "groups_for_fit": groups_for_fit, "constrain_ratio": constrain_ratio, "use_raw": use_raw,
        "use_latent_time": use_latent_time, "perc": perc, "r2_adjusted": r2_adjusted, "diff_kinetics": diff_kinetics,
        **kwargs,
    }
    bad = [k for k, v in bad.items() if v not in (None, False)]
    if min_r2 != 0.01 or min_likelihood != 0.001:
        bad.append("min_r2/min_likelihood")
    if bad:
        raise NotImplementedError(f"velocity: {', '.join(bad)} not supported (cellfate implements scVelo's defaults for these)")
    if mode not in _MODES:
        raise ValueError(f"velocity: mode={mode!r}: expected one of {', '.join(_MODES)}")
    adata = data.copy() if copy else data
    if _MODES[mode] == "dynamical":
        if "fit_alpha" not in adata.var.columns:
            raise KeyError("var['fit_alpha'] not found: run tl.recover_dynamics first (velocity(mode='dynamical') reads its fit)")
        params = adata.uns.get("velocity_params", {})
        if vkey in adata.layers and params.get("mode") == "dynamical" and "cellfate" in adata.uns.get("recover_dynamics", {}):
            logger.info("velocity: keeping the dynamical velocities recover_dynamics computed with its fit")
            if vkey != "velocity":
                raise NotImplementedError("velocity(mode='dynamical'): vkey other than 'velocity' not supported")
            return adata if copy else None
        raise NotImplementedError(
            "velocity(mode='dynamical') on a fit cellfate did not make (scVelo's?) is not supported yet: "
            "run cellfate.tl.recover_dynamics, which writes the dynamical velocities"
        )
    ms, mu, s, u, conn = _moments_inputs(adata, _MODES[mode] == "stochastic")
    slots = _core.velocity(ms, mu, s, u, conn, _hvg(adata, use_highly_variable), _MODES[mode], None)
    if _MODES[mode] != "stochastic" and f"variance_{vkey}" in adata.layers:
        # A stochastic run's variance would no longer match the velocity.
        del adata.layers[f"variance_{vkey}"]
    _write(adata, _rename(slots, vkey))
    n = int(np.asarray(adata.var[f"{vkey}_genes"]).sum())
    logger.info("velocity (%s): %d velocity genes; added %r (adata.layers)", _MODES[mode], n, vkey)
    return adata if copy else None


def recover_dynamics(
    data,
    var_names="velocity_genes",
    n_top_genes=None,
    max_iter: int = 10,
    assignment_mode: str = "projection",
    t_max=None,
    fit_time=True,
    fit_scaling=True,
    fit_steady_states=True,
    fit_connected_states=None,
    fit_basal_transcription=None,
    use_raw: bool = False,
    load_pars=None,
    return_model=None,
    plot_results: bool = False,
    steady_state_prior=None,
    add_key: str = "fit",
    copy: bool = False,
    n_jobs=None,
    backend: str = "loky",
    show_progress_bar: bool = True,
    **kwargs,
):
    """scVelo's ``tl.recover_dynamics``: the dynamical model per gene (EM over the cells' times
    and states with α, β, γ, the switching time, the scaling and the noise levels), genes in
    parallel on all cores, identical at any thread count. Writes ``var["fit_alpha"]``, ...,
    ``layers["fit_t"]``, ``["fit_tau"]``, ``["fit_tau_"]``, ``varm["loss"]``,
    ``uns["recover_dynamics"]`` — and, read off the same fit, what
    ``velocity(mode="dynamical")`` writes (``layers["velocity"]``, ``["velocity_u"]``,
    ``var["velocity_genes"]``, ``uns["velocity_params"]``). ``var_names``: ``"velocity_genes"``
    (the steady-state fit's velocity genes, scVelo's default) or ``"all"``."""
    bad = {
        "n_top_genes": n_top_genes, "fit_connected_states": fit_connected_states is False,
        "fit_basal_transcription": fit_basal_transcription, "use_raw": use_raw, "load_pars": load_pars,
        "return_model": return_model, "plot_results": plot_results, "steady_state_prior": steady_state_prior,
        "fit_time": fit_time is not True, **kwargs,
    }
    bad = [k for k, v in bad.items() if v not in (None, False)]
    if add_key != "fit":
        bad.append("add_key")
    if bad:
        raise NotImplementedError(f"recover_dynamics: {', '.join(bad)} not supported (cellfate implements scVelo's defaults for these)")
    if var_names not in ("velocity_genes", "all"):
        raise NotImplementedError(f"recover_dynamics: var_names={var_names!r} not supported ('velocity_genes' or 'all')")
    if assignment_mode not in ("projection", "full_projection", "explicit"):
        raise ValueError(f"recover_dynamics: assignment_mode={assignment_mode!r}: expected projection, full_projection or explicit")
    options = {
        "max_iter": int(max_iter),
        "fit_scaling": bool(fit_scaling),
        "fit_steady_states": bool(fit_steady_states),
        "assignment_mode": assignment_mode,
    }
    if t_max is False:
        options["t_max"] = None
    elif t_max is not None:
        options["t_max"] = float(t_max)
    settings = json.dumps({"all_genes": var_names == "all", "options": options})
    adata = data.copy() if copy else data
    ms, mu, s, u, conn = _moments_inputs(adata, False)
    if conn is None:
        raise KeyError("obsp['connectivities'] not found: the dynamical model smooths over the kNN graph (run pp.moments or pp.neighbors first)")
    slots = _core.velocity(ms, mu, None, None, conn, _hvg(adata, True), "dynamical", settings)
    if "variance_velocity" in adata.layers:
        del adata.layers["variance_velocity"]
    _write(adata, slots)
    adata.uns["recover_dynamics"]["cellfate"] = True
    fitted = int(np.isfinite(adata.var["fit_alpha"].to_numpy(dtype=float)).sum())
    logger.info("recover_dynamics: %d genes fitted; added fit_* (adata.var), fit_t, fit_tau, fit_tau_ (adata.layers)", fitted)
    return adata if copy else None


def _write(adata, slots):
    _elements.write(adata, _elements.convert(slots))


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
            raise KeyError(f"{group}[{key!r}] not found: fit the dynamical model first (tl.recover_dynamics)")
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
    for what, key, ok in (("root cells", "root_cells", out["root_converged"]), ("end points", "end_points", out["end_converged"])):
        if not ok:
            logger.warning(
                "latent_time: the %s velocity chain's eigenvalues near 1 are too clustered to resolve within the "
                "eigen solve's budget; no %s detected (obs[%r] is 0)", "backward" if key == "root_cells" else "forward", what, key,
            )
    if not out["roots_detected"]:
        logger.warning(
            "latent_time: no root cells detected; starting from the cells with the smallest sum of fit_t "
            "(scVelo's rule). Consider passing root_key."
        )
    adata.obs["root_cells"] = out["root_cells"]
    adata.obs["end_points"] = out["end_points"]
    adata.obs["latent_time"] = out["latent_time"]
    return adata if copy else None


def umap(
    adata,
    min_dist: float = 0.5,
    spread: float = 1.0,
    n_components: int = 2,
    maxiter: int | None = None,
    alpha: float = 1.0,
    gamma: float = 1.0,
    negative_sample_rate: int = 5,
    init_pos: str = "spectral",
    random_state: int = 0,
    a: float | None = None,
    b: float | None = None,
    method: str = "umap",
    neighbors_key: str | None = None,
    copy: bool = False,
    **kwargs,
):
    """scanpy's ``tl.umap`` with its defaults: the UMAP layout of the kNN graph
    (``obsp["connectivities"]``, or the key in ``uns[neighbors_key]``) into
    ``obsm["X_umap"]`` and ``uns["umap"]["params"]`` (``a``, ``b``), the same layout as
    ``cellfate umap``. Seeded by ``random_state`` and independent of the number of threads;
    the graph is not modified. Only 2-D layouts from the spectral initialisation."""
    unsupported = [
        name
        for name, bad in (
            ("n_components", n_components != 2),
            ("init_pos", init_pos != "spectral"),
            ("a", a is not None),
            ("b", b is not None),
            ("method", method != "umap"),
        )
        if bad
    ] + [k for k, v in kwargs.items() if v is not None]
    if unsupported:
        raise NotImplementedError(f"umap: {', '.join(unsupported)} not supported yet (2-D, spectral initialisation, a and b from min_dist and spread)")
    if not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"umap: random_state={random_state!r}: expected an integer >= 0")
    adata = adata.copy() if copy else adata
    nkey = neighbors_key or "neighbors"
    if neighbors_key is not None and nkey not in adata.uns:
        raise KeyError(f"uns[{nkey!r}] not found: run pp.neighbors with key_added={nkey!r} first")
    key = adata.uns.get(nkey, {}).get("connectivities_key", "connectivities")
    if key not in adata.obsp:
        raise KeyError(f"obsp[{key!r}] not found: compute the kNN graph first (scanpy's pp.neighbors, cellfate.pp.neighbors or cellfate preprocess)")
    slots = _core.umap(
        csr_parts(adata.obsp[key], f"obsp[{key!r}]"),
        float(min_dist),
        float(spread),
        maxiter,
        float(alpha),
        float(gamma),
        int(negative_sample_rate),
        int(random_state),
    )
    _write(adata, slots)
    logger.info("umap: added 'X_umap' (adata.obsm), 'umap' (adata.uns)")
    return adata if copy else None



def _labeling_layers(adata):
    """Raw new and total counts: layers new/total, or the four labeled/unlabeled x
    spliced/unspliced layers (dynamo's uu/ul/su/sl, dynast's un_X/ul_X/sn_X/sl_X) summed."""
    L = adata.layers
    if "new" in L and "total" in L:
        return L["new"], L["total"]
    four = None
    if all(k in L for k in ("uu", "ul", "su", "sl")):
        four = ("uu", "ul", "su", "sl")
    else:
        for k in L.keys():
            if k.startswith("ul_"):
                c = k[3:]
                if all(f"{p}_{c}" in L for p in ("un", "sn", "sl")):
                    four = (f"un_{c}", k, f"sn_{c}", f"sl_{c}")
                    break
    if four is None:
        raise KeyError(
            "metabolic labeling needs layers new and total, or the four labeled/unlabeled x spliced/unspliced layers "
            f"(uu, ul, su, sl); available layers: {', '.join(L.keys()) or 'none'}"
        )
    uu, ul, su, sl = (sp.csr_matrix(L[k]) for k in four)
    new = ul + sl
    return new, new + uu + su


def dynamics(
    adata,
    tkey: str | None = None,
    experiment_type: str | None = None,
    one_shot_method: str = "combined",
    extreme: str = "total",
    perc_right: float = 5.0,
    labeling_time: float | None = None,
    min_counts_per_cell: float = 5.0,
    copy: bool = False,
):
    """dynamo's ``tl.dynamics`` for metabolic labeling, as ``cellfate preprocess`` runs it
    (``cellfate::upstream::labeling``): raw new/total counts (or the four labeled/unlabeled
    layers, summed), the labeling time from ``obs[tkey]`` (default ``labeling_time``, then
    ``time``) or one ``labeling_time`` for all cells, the kNN graph of ``cellfate.pp.neighbors``
    (``obsp["connectivities"]``, ``obsp["distances"]``) and the genes of
    ``var["highly_variable"]`` (all genes without it). Writes ``layers["M_n"|"M_t"|...]``,
    ``layers["velocity_N"|"velocity_T"]``, ``var["alpha"|"gamma"|"half_life"]``,
    ``varm["vel_params"]``, ``uns["dynamics"]`` and ``uns["pp"]`` (see the README's
    Metabolic labeling). ``experiment_type``: ``one-shot``, ``kin`` or ``deg`` (default
    inferred as dynamo does)."""
    adata = adata.copy() if copy else adata
    new, total = _labeling_layers(adata)
    n = adata.n_obs
    if labeling_time is not None:
        times, key = [float(labeling_time)] * n, "labeling_time"
    else:
        cands = [tkey] if tkey else ["labeling_time", "time"]
        key = next((c for c in cands if c in adata.obs), None)
        if key is None:
            raise KeyError(
                f"labeling time: obs has none of {cands} (give tkey=<obs column> or labeling_time=<number>)"
            )
        times = np.asarray(adata.obs[key], dtype=np.float64).tolist()
    if "connectivities" not in adata.obsp:
        raise KeyError("obsp['connectivities'] not found: run cellfate.pp.neighbors first")
    dist = csr_parts(adata.obsp["distances"], "obsp['distances']") if "distances" in adata.obsp else None
    genes = (
        np.asarray(adata.var["highly_variable"], dtype=bool).tolist()
        if "highly_variable" in adata.var
        else [True] * adata.n_vars
    )
    settings = {
        "experiment_type": experiment_type,
        "one_shot_method": one_shot_method,
        "perc_right": float(perc_right),
        "extreme": extreme,
        "min_counts_per_cell": float(min_counts_per_cell),
    }
    has_splicing = "spliced" in adata.layers and "unspliced" in adata.layers
    slots = _core.labeling_dynamics(
        csr_parts(new, "layers['new']"),
        csr_parts(total, "layers['total']"),
        times,
        key,
        csr_parts(adata.obsp["connectivities"], "obsp['connectivities']"),
        dist,
        genes,
        json.dumps(settings),
        has_splicing,
    )
    logger.info("dynamics: %s kinetics -> layers velocity_N, velocity_T; var alpha, gamma, half_life", experiment_type or "inferred")
    _write(adata, slots)
    return adata if copy else None
