"""CellRank 2.3.3's estimators (``cellrank.estimators``): ``GPCCA`` and ``CFLARE``.

Same names, signatures and defaults as CellRank (so a CellRank notebook gives CellRank's
answer): the macrostates use CellRank's optimiser (Nelder–Mead) and the terminal states its
stability rule (0.96). cellfate's own defaults, which find the true end states more often,
are one keyword away: ``compute_macrostates(..., optimizer="gradient")`` and
``predict_terminal_states(method="sinks")``. Every stage runs in the native core with the GIL
released and writes its results into ``adata`` under CellRank's keys, as CellRank does.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import _core, _elements, _source
from ._log import stage
from ._lineage import Lineage
from .kernels import KernelExpression, Kernel, PrecomputedKernel

__all__ = ["GPCCA", "CFLARE"]

# cellfate's default source ratio of the `sinks` rule (TerminalMethod::sinks()).
_SOURCE_RATIO = 0.05


def _kernel_of(object, obsp_key):
    import anndata

    if isinstance(object, KernelExpression):
        return object
    if isinstance(object, anndata.AnnData):
        key = obsp_key or ("T_fwd" if "T_fwd" in object.obsp else None)
        if key is None:
            raise KeyError(
                f"no transition matrix: give obsp_key (obsp holds: {', '.join(object.obsp.keys()) or 'nothing'})"
            )
        return Kernel.from_adata(object, key)
    if sp.issparse(object) or isinstance(object, np.ndarray):
        return PrecomputedKernel(object).compute_transition_matrix()
    raise TypeError(f"expected a kernel, an AnnData or a matrix, found {type(object).__name__}")


class _Estimator:
    _core_type = None

    def __init__(self, object, obsp_key: str | None = None, **kwargs):
        self.kernel = _kernel_of(object, obsp_key)
        self.adata = self.kernel.adata
        self._native = self._core_type(self.kernel._computed())
        self._objects: dict = {}
        self._suffix = "bwd" if self.kernel.backward else "fwd"

    # -- plumbing -----------------------------------------------------------------------------
    def _sync(self, write: bool = True):
        """Writes everything computed so far into ``adata`` (CellRank's keys)."""
        names = self._native.elements(list(map(str, self.adata.obs_names)), list(map(str, self.adata.var_names)))
        self._objects = _elements.convert(names)
        if write:
            _elements.write(self.adata, self._objects)

    @classmethod
    def from_adata(cls, adata, obsp_key: str):
        """An estimator restored from what CellRank or cellfate stored in ``adata`` (the
        transition matrix ``obsp[obsp_key]``, eigenvalues, macrostates with memberships and
        the coarse-grained chain, terminal and initial states, fate probabilities), as
        CellRank's ``from_adata``; ``adata`` is not modified. The Schur vectors are not
        restored: ``compute_macrostates`` needs ``compute_schur`` again."""
        self = cls.__new__(cls)
        self.kernel = Kernel.from_adata(adata, obsp_key)
        self.adata = adata
        self._suffix = "bwd" if self.kernel.backward else "fwd"
        self._native = cls._core_type.from_adata(adata, obsp_key)
        self._objects = {}
        self._init_extra()
        self._sync(write=False)
        return self

    def _init_extra(self):
        pass

    def _get(self, slot):
        return self._objects.get(slot.replace("{d}", self._suffix))

    @property
    def backward(self) -> bool:
        return self._suffix == "bwd"

    @property
    def transition_matrix(self):
        return self.kernel.transition_matrix

    @property
    def notes(self) -> list[str]:
        """Notes and warnings of the stages (recoveries, deviations, conditioning)."""
        return list(self._native.notes)

    def _states(self, key):
        s = self._get(f"obs/{key}")
        if s is None:
            return None
        return pd.Series(s, index=self.adata.obs_names, name=key.replace("_{d}", "").replace(f"_{self._suffix}", ""))

    # -- terminal states by hand ----------------------------------------------------------------
    @stage
    def set_terminal_states(self, states, cluster_key: str | None = None, allow_overlap: bool = False, n_cells: int = 30, **kwargs):
        """Terminal states by hand: macrostate names (GPCCA), a categorical Series over the
        cells, or a dict ``{state: cells}`` (obs names or integer positions)."""
        if isinstance(states, str):
            states = [states]
        if isinstance(states, pd.Series):
            labels = [None if pd.isna(v) else str(v) for v in states.reindex(self.adata.obs_names)]
            order = [str(c) for c in states.cat.categories] if isinstance(states.dtype, pd.CategoricalDtype) else None
            self._native.set_terminal_states_labels(labels, order, None)
        elif isinstance(states, dict):
            if cluster_key is not None:
                col = self.adata.obs[cluster_key]
                cells = [(str(k), list(np.flatnonzero(col.isin(list(v) if not isinstance(v, str) else [v])))) for k, v in states.items()]
            else:
                pos = {n: i for i, n in enumerate(self.adata.obs_names)}
                cells = [(str(k), [int(pos[c]) if isinstance(c, str) else int(c) for c in v]) for k, v in states.items()]
            self._native.set_terminal_states_cells(cells)
        else:
            self._set_terminal_by_names(list(states), n_cells)
        self._sync()
        return self

    def _set_terminal_by_names(self, names, n_cells):
        raise TypeError("give the terminal states as a categorical Series or a dict of cells")

    # -- absorption -----------------------------------------------------------------------------
    @stage
    def compute_fate_probabilities(self, keys=None, solver: str = "gmres", use_petsc: bool = True, n_jobs=None, backend="loky", show_progress_bar: bool = True, tol: float = 1e-6, preconditioner=None):
        """Fate probabilities towards the terminal states.

        Deviation from CellRank: the solve is exact (sparse LU up to 30,000 transient cells,
        else GMRES + ILU(0), with a coarse correction if it stalls, to 1e-12 with the residual recomputed), whatever ``solver`` and
        ``tol`` say — CellRank's GMRES stops at 1e-6. ``solver="direct"`` forces the LU."""
        if keys is not None:
            raise NotImplementedError("compute_fate_probabilities(keys=...) is not supported yet")
        opts = {"solver": "direct"} if solver == "direct" else {}
        self._native.compute_fate_probabilities(json.dumps(opts))
        self._sync()
        return self

    @stage
    def compute_absorption_times(self, keys=None, calculate_variance: bool = False, solver: str = "gmres", use_petsc: bool = True, n_jobs=None, backend="loky", show_progress_bar: bool = True, tol: float = 1e-6, preconditioner=None):
        """Mean (and variance) of the steps to absorption per lineage."""
        if keys is not None:
            raise NotImplementedError("compute_absorption_times(keys=...) is not supported yet")
        self._native.compute_absorption_times(json.dumps({"calculate_variance": bool(calculate_variance)}))
        self._sync()
        return self

    @stage
    def compute_lineage_priming(self, method: str = "kl_divergence", early_cells=None):
        """Lineage priming degree per cell; returns it as a Series."""
        mask = None
        if early_cells is not None:
            if isinstance(early_cells, dict):
                m = np.zeros(self.adata.n_obs, dtype=bool)
                for key, cats in early_cells.items():
                    m |= self.adata.obs[key].isin(list(cats)).to_numpy()
                mask = m
            else:
                arr = np.asarray(early_cells)
                if arr.dtype == bool:
                    mask = arr
                else:
                    mask = np.asarray(self.adata.obs_names.isin(list(arr)))
            mask = [bool(x) for x in mask]
        self._native.compute_lineage_priming(method, mask)
        self._sync()
        return self.priming_degree

    @stage
    def compute_lineage_drivers(self, lineages=None, method: str = "fisher", cluster_key=None, clusters=None, layer=None, use_raw: bool = False, confidence_level: float = 0.95, n_perms: int = 1000, seed=None, **kwargs):
        """Correlations of every gene with every lineage's fate probabilities (p-, q-values,
        confidence intervals); returns CellRank's DataFrame, sorted by the first lineage's
        correlation."""
        if clusters is not None:
            raise NotImplementedError("compute_lineage_drivers(clusters=...) (a subset of cells) is not supported yet")
        if use_raw:
            raise NotImplementedError("compute_lineage_drivers(use_raw=True) is not supported yet")
        x = self.adata.X if layer is None else self.adata.layers[layer]
        if x is None:
            raise KeyError(f"compute_lineage_drivers: adata.{'X' if layer is None else f'layers[{layer!r}]'} is empty")
        if sp.issparse(x):
            expr = _source.csr_parts(x, "expression")
        else:
            expr = np.ascontiguousarray(np.asarray(x), dtype=np.float64)
        if isinstance(lineages, str):
            lineages = [lineages]
        if method == "fisher":
            test = {"method": "fisher"}
        elif method == "perm_test":
            test = {"method": "perm_test", "n_perms": int(n_perms), "seed": int(seed or 0)}
        else:
            raise ValueError(f"compute_lineage_drivers: method {method!r}: expected 'fisher' or 'perm_test'")
        opts = {"lineages": lineages, "test": test, "confidence_level": confidence_level}
        self._native.compute_lineage_drivers(expr, json.dumps(opts))
        self._sync()
        return self.lineage_drivers

    # -- results --------------------------------------------------------------------------------
    @property
    def terminal_states(self):
        return self._states("term_states_{d}")

    @property
    def terminal_states_probabilities(self):
        p = self._get("obs/term_states_{d}_probs")
        return None if p is None else pd.Series(p, index=self.adata.obs_names)

    @property
    def fate_probabilities(self):
        p = self._get("obsm/lineages_{d}")
        if p is None:
            return None
        return Lineage(p, names=list(self._get("uns/lineages_{d}_names")), colors=list(self._get("uns/lineages_{d}_colors")))

    @property
    def absorption_times(self):
        return self._get("obsm/absorption_times_{d}")

    @property
    def priming_degree(self):
        p = self._get("obs/priming_degree_{d}")
        return None if p is None else pd.Series(p, index=self.adata.obs_names, name="priming_degree")

    @property
    def lineage_drivers(self):
        df = self._get("varm/terminal_lineage_drivers" if self._suffix == "fwd" else "varm/initial_lineage_drivers")
        if df is None:
            return None
        first = next((c for c in df.columns if c.endswith("_corr")), None)
        return df.sort_values(first, ascending=False) if first else df

    # -- figures (the library's, drawn from what this estimator wrote into ``adata``) ---------
    def _plot(self, func, kind, kwargs, **options):
        from . import pl

        if self.backward:
            raise NotImplementedError(f"{func}: the figures show the forward process; this estimator is backward")
        pl._ignored(func, kwargs)
        return pl.figures(self.adata, kind, **options)

    def plot_fate_probabilities(self, basis: str | None = None, *, save=None, **kwargs):
        """One map per lineage of the fate probabilities on the embedding (CellRank's
        ``plot_fate_probabilities`` with ``same_plot=False``); cells drawn from low to high."""
        return self._plot("plot_fate_probabilities", "fates", kwargs, basis=basis, save=save)

    def plot_lineage_drivers(self, lineage: str | None = None, n_genes: int = 8, *, save=None, **kwargs):
        """The top ``n_genes`` driver genes of each lineage as bars of their correlation with
        the fate probability (cellfate's figure; CellRank's draws their expression on the
        embedding, which :func:`cellfate.pl.figures` with ``kind="phase_portraits"`` or
        ``"gene_trends"`` and ``genes=`` shows)."""
        return self._plot("plot_lineage_drivers", "drivers", kwargs, n_drivers=n_genes, save=save)

    def plot_absorption_times(self, basis: str | None = None, *, save=None, **kwargs):
        """The mean absorption time into each lineage on the embedding."""
        return self._plot("plot_absorption_times", "absorption_times", kwargs, basis=basis, save=save)

    def plot_lineage_priming(self, basis: str | None = None, *, save=None, **kwargs):
        """The lineage priming degree on the embedding."""
        return self._plot("plot_lineage_priming", "priming", kwargs, basis=basis, save=save)

    def to_adata(self, keep=None, *, copy: bool = True):
        """The AnnData with every result under CellRank's keys (a copy unless ``copy=False``)."""
        return self.adata.copy() if copy else self.adata

    def __repr__(self):
        return f"{type(self).__name__}[kernel={self.kernel!r}, n={self.adata.n_obs}]"


class GPCCA(_Estimator):
    """CellRank's ``GPCCA``: Schur decomposition, macrostates, terminal and initial states,
    then fate probabilities, absorption times, priming and drivers."""

    _core_type = _core.Gpcca

    def __init__(self, object, obsp_key: str | None = None, **kwargs):
        super().__init__(object, obsp_key, **kwargs)
        self._init_extra()

    def _init_extra(self):
        self._alpha = 1.0

    @stage
    def compute_schur(self, n_components: int = 20, initial_distribution=None, method: str = "krylov", which: str = "LR", alpha: float = 1.0, verbose=None):
        """The sorted real partial Schur decomposition (checked by ‖PQ − QR‖).

        ``method="krylov"`` (CellRank's default, which falls back to the dense ``brandts``
        without PETSc) picks dense LAPACK up to 2,500 cells and ARPACK above;
        ``method="brandts"`` forces the dense path, ``method="arpack"`` the Krylov one."""
        if initial_distribution is not None:
            raise NotImplementedError("compute_schur(initial_distribution=...) is not supported yet")
        m = {"krylov": "auto", "brandts": "dense", "dense": "dense", "auto": "auto", "arpack": "krylov"}.get(method)
        if m is None:
            raise ValueError(f"compute_schur: method {method!r}: expected 'krylov', 'brandts' or 'arpack'")
        if which not in ("LR", "LM"):
            raise ValueError(f"compute_schur: which {which!r}: expected 'LR' or 'LM'")
        self._alpha = float(alpha)
        self._native.compute_schur(json.dumps({"n_components": int(n_components), "which": which, "method": m}))
        self._sync()
        return self

    @stage
    def compute_eigendecomposition(self, k: int = 20, which: str = "LR", alpha: float = 1.0, only_evals: bool = False, ncv=None):
        """The dominant eigenvalues (of the Schur form)."""
        self._alpha = float(alpha)
        self._native.compute_eigendecomposition(int(k))
        self._sync()
        return self

    @stage
    def compute_macrostates(self, n_states=None, n_cells: int | None = 30, cluster_key: str | None = None, optimizer: str = "nelder_mead", seed: int = 0, **kwargs):
        """GPCCA macrostates. ``n_states``: a number, ``[min, max]`` (best by minChi), or
        ``None`` (eigengap, CellRank's default). ``optimizer="gradient"`` selects cellfate's
        multi-start optimiser (crisper memberships) instead of CellRank's Nelder–Mead."""
        if n_states is None:
            n = "eigengap"
        elif isinstance(n_states, (list, tuple)):
            n = f"{int(n_states[0])}..{int(n_states[1])}"
        else:
            n = str(int(n_states))
        if optimizer == "nelder_mead":
            opt = {"method": "nelder_mead"}
        elif optimizer == "gradient":
            opt = {"method": "gradient", "n_starts": 10, "seed": int(seed), "max_iter": 1000, "perturbation": 0.1}
        else:
            raise ValueError(f"compute_macrostates: optimizer {optimizer!r}: expected 'nelder_mead' or 'gradient'")
        opts = {"n_cells": 30 if n_cells is None else int(n_cells), "optimizer": opt, "alpha": self._alpha}
        self._native.compute_macrostates(n, json.dumps(opts), _clusters(self.adata, cluster_key))
        self._sync()
        return self

    @stage
    def predict_terminal_states(self, method: str = "stability", n_cells: int = 30, alpha: float | None = 1, stability_threshold: float = 0.96, n_states: int | None = None, allow_overlap: bool = False):
        """Terminal states among the macrostates: CellRank's rules (``stability``, ``top_n``,
        ``eigengap``, ``eigengap_coarse``) or cellfate's ``sinks`` (stable and not a source of
        the coarse-grained chain)."""
        if method == "stability":
            m = {"method": "stability", "threshold": stability_threshold}
        elif method == "top_n":
            if n_states is None:
                raise ValueError("predict_terminal_states: method='top_n' needs n_states")
            m = {"method": "top_n", "n_states": int(n_states)}
        elif method in ("eigengap", "eigengap_coarse"):
            m = {"method": method, "alpha": 1.0 if alpha is None else float(alpha)}
        elif method == "sinks":
            m = {"method": "sinks", "threshold": stability_threshold, "source_ratio": _SOURCE_RATIO}
        else:
            raise ValueError(
                f"predict_terminal_states: method {method!r}: expected 'stability', 'top_n', 'eigengap', 'eigengap_coarse' or 'sinks'"
            )
        self._native.predict_terminal_states(json.dumps(m), json.dumps({"n_cells": int(n_cells)}))
        self._sync()
        return self

    @stage
    def predict_initial_states(self, n_states: int = 1, n_cells: int = 30, allow_overlap: bool = False):
        """Initial states: the least stationary macrostates."""
        self._native.predict_initial_states(int(n_states), int(n_cells))
        self._sync()
        return self

    def _set_terminal_by_names(self, names, n_cells):
        self._native.set_terminal_states_names([str(n) for n in names], int(n_cells))

    @property
    def macrostates(self):
        return self._states("macrostates_{d}")

    @property
    def macrostates_memberships(self):
        chi = self._get("obsm/macrostates_{d}_memberships")
        if chi is None:
            return None
        return Lineage(chi, names=list(self._get("uns/macrostates_{d}_names")), colors=list(self._get("uns/macrostates_{d}_colors")))

    @property
    def initial_states(self):
        return self._states("init_states_{d}")

    @property
    def schur_vectors(self):
        return self._get("obsm/schur_vectors_{d}")

    @property
    def schur_matrix(self):
        return self._get("uns/schur_matrix_{d}")

    @property
    def eigendecomposition(self):
        return self._get("uns/eigendecomposition_{d}")

    @property
    def coarse_T(self):
        c = self._get("uns/coarse_{d}")
        if c is None:
            return None
        names = list(c.obs_names)
        return pd.DataFrame(np.asarray(c.X), index=names, columns=names)

    @property
    def coarse_initial_distribution(self):
        c = self._get("uns/coarse_{d}")
        return None if c is None else c.obs["coarse_init_dist"]

    @property
    def coarse_stationary_distribution(self):
        c = self._get("uns/coarse_{d}")
        return None if c is None or "coarse_stat_dist" not in c.obs else c.obs["coarse_stat_dist"]

    # -- GPCCA's figures -------------------------------------------------------------------------
    def plot_macrostates(self, which: str = "all", basis: str | None = None, *, save=None, **kwargs):
        """Macrostates (``which="all"``) or terminal states (``"terminal"``) on the
        embedding."""
        kinds = {"all": "macrostates", "terminal": "terminal_states"}
        if which not in kinds:
            raise ValueError(f"plot_macrostates: which={which!r}: expected one of {', '.join(kinds)} (initial states are listed in the report, not drawn)")
        return self._plot("plot_macrostates", kinds[which], kwargs, basis=basis, save=save)

    def plot_spectrum(self, *, save=None, **kwargs):
        """The real Schur spectrum with the eigengap and the number of macrostates marked."""
        return self._plot("plot_spectrum", "spectrum", kwargs, save=save)

    def plot_coarse_T(self, *, save=None, **kwargs):
        """The coarse-grained transition matrix between macrostates."""
        return self._plot("plot_coarse_T", "coarse_T", kwargs, save=save)

    def plot_macrostate_composition(self, key: str, *, save=None, **kwargs):
        """Each macrostate's cells by the categories of ``obs[key]``."""
        return self._plot("plot_macrostate_composition", "macrostate_composition", kwargs, cluster_key=key, save=save)


class CFLARE(_Estimator):
    """CellRank's ``CFLARE``: terminal states by clustering the top left eigenvectors."""

    _core_type = _core.Cflare

    @stage
    def compute_eigendecomposition(self, k: int = 20, which: str = "LR", alpha: float = 1.0, only_evals: bool = False, ncv=None):
        self._k = int(k)
        self._native.compute_eigendecomposition(int(k))
        self._sync()
        return self

    def fit(self, k: int = 20, **kwargs):
        return self.compute_eigendecomposition(k=k, **kwargs)

    @stage
    def predict(self, use: int | None = None, percentile: int | None = 98, method: str = "kmeans", cluster_key: str | None = None, n_clusters_kmeans: int | None = None, n_matches_min: int = 0, n_neighbors_filtering: int = 15, basis=None, n_comps: int = 5, sparse_approx: bool = True, **kwargs):
        """Terminal states by k-means on the top left eigenvectors."""
        if method != "kmeans":
            raise NotImplementedError(f"CFLARE.predict(method={method!r}) is not supported (only 'kmeans')")
        opts = {"k": getattr(self, "_k", 20), "use_k": use, "percentile": None if percentile is None else float(percentile), "n_clusters": n_clusters_kmeans}
        self._native.predict(json.dumps(opts), _clusters(self.adata, cluster_key))
        self._sync()
        return self

    predict_terminal_states = predict


def _clusters(adata, key):
    """``(labels, categories, colors)`` of a categorical ``obs[key]``; a missing or
    non-categorical key is a ``KeyError`` listing the categorical columns."""
    if key is None:
        return None
    cats = [c for c in adata.obs.columns if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
    if key not in adata.obs.columns or key not in cats:
        problem = "does not exist" if key not in adata.obs.columns else "is not categorical"
        raise KeyError(f"cluster_key {key!r}: obs[{key!r}] {problem}; the categorical obs columns are: {', '.join(cats) or 'none'}")
    col = adata.obs[key]
    labels = [None if pd.isna(v) else str(v) for v in col]
    categories = [str(c) for c in col.cat.categories]
    colors = adata.uns.get(f"{key}_colors")
    colors = [str(c) for c in colors] if colors is not None and len(colors) == len(categories) else None
    return labels, categories, colors
