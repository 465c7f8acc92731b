"""CellRank 2.3.3's kernels (``cellrank.kernels``) on in-memory AnnData.

Each kernel is its parameters (the library's ``KernelSpec``); ``compute_transition_matrix``
hands them to the native core, which reads the AnnData slots it needs and computes the
row-stochastic transition matrix with the GIL released. Kernels combine like CellRank's:
``0.8 * vk + 0.2 * ck`` (weights normalised to sum to 1), ``vk * ck`` (element-wise product,
rows renormalised), ``~vk`` (the same kernel, backward).
"""

from __future__ import annotations

import copy as _copy
import json
from numbers import Real

import scipy.sparse as sp

from . import _core, _elements, _source
from ._log import stage

__all__ = [
    "Kernel",
    "VelocityKernel",
    "ConnectivityKernel",
    "PseudotimeKernel",
    "CytoTRACEKernel",
    "RealTimeKernel",
    "PrecomputedKernel",
    "LabelingTimeKernel",
    "KernelExpression",
    "KernelAdd",
    "KernelMul",
]


class KernelExpression:
    """What kernels and their combinations share: algebra, the transition matrix, writing."""

    _result = None

    # -- algebra (CellRank's operators) --------------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, KernelExpression):
            return NotImplemented
        return KernelAdd(_terms(self) + _terms(other))

    __radd__ = __add__

    def __mul__(self, other):
        if isinstance(other, Real) and not isinstance(other, bool):
            return KernelAdd([(float(other) * w, k) for w, k in _terms(self)], scaled=True)
        if isinstance(other, KernelExpression):
            return KernelMul([self, other])
        return NotImplemented

    def __rmul__(self, other):
        if isinstance(other, Real) and not isinstance(other, bool):
            return self.__mul__(other)
        return NotImplemented

    # -- results ------------------------------------------------------------------------------
    @property
    def transition_matrix(self) -> sp.csr_matrix:
        """The row-stochastic transition matrix (SciPy CSR, float64)."""
        data, indices, indptr, shape = self._computed().csr()
        return sp.csr_matrix((data, indices, indptr), shape=shape)

    @property
    def params(self) -> dict:
        """The effective parameters (every estimated value filled in, e.g. the softmax scale,
        once the kernels are computed)."""
        if self._result is None:
            try:
                self._computed()
            except RuntimeError:  # not computed yet: the parameters as given
                return self._spec()
        return json.loads(self._result.spec)

    @property
    def backward(self) -> bool | None:
        d = {k.backward for _, k in self._leaves() if k.backward is not None}
        return d.pop() if len(d) == 1 else None

    def write_to_adata(self, key: str | None = None, copy: bool = False):
        """Writes ``obsp[key]`` and ``uns[key + "_params"]`` (``key`` defaults to ``T_fwd`` /
        ``T_bwd``) — the same slots the CLI writes."""
        adata = self.adata.copy() if copy else self.adata
        _elements.write(adata, _elements.convert(self._computed().elements(key)))
        return adata if copy else None

    # -- figures ---------------------------------------------------------------------------------
    def plot_random_walks(self, n_sims: int = 100, max_iter=None, seed: int | None = None, *, basis: str | None = None, save=None, **kwargs):
        """``n_sims`` random walks on this kernel's transition matrix from the initial states
        (else random cells), coloured by progress, on the embedding; ``adata`` is not
        modified. (``max_iter`` is the library's: ``n_obs / 4`` clamped to 10–1,000.)"""
        from . import pl

        if max_iter is not None:
            kwargs["max_iter"] = max_iter
        pl._ignored("plot_random_walks", kwargs)
        return pl.figures(pl._on_kernel(self), "random_walks", n_walks=n_sims, seed=seed, basis=basis, save=save)

    def plot_projection(self, basis: str = "umap", stream: bool = True, *, color=None, save=None, **kwargs):
        """This kernel's transition matrix projected on the embedding: streamlines
        (``stream=True``) or grid arrows; ``adata`` is not modified."""
        from . import pl

        pl._ignored("plot_projection", kwargs)
        kind = "velocity_stream" if stream else "velocity_grid"
        return pl.figures(pl._on_kernel(self), kind, basis=basis, cluster_key=color, save=save)

    def _computed(self):
        if self._result is None:
            self._result = self._combine()
        return self._result

    def compute_random_control(self, seed: int = 0, basis: str = "pca", key: str | None = None, write: bool = True) -> dict:
        """dynamo's randomised control (``calc_rnd_vel``): this kernel recomputed with the
        same parameters on velocities permuted across cells with random signs. Scored by the
        flow's coherence on ``obsm["X_<basis>"]`` (each cell's projected velocity against
        its neighbours' mean, neighbours from ``obsp["connectivities"]``): real minus control,
        per cell and overall. With ``write``, ``obsp[key + "_rnd"]`` (``key`` defaults to
        ``T_fwd``/``T_bwd``), ``obs["random_control_score"]`` and ``uns["random_control"]``."""
        import numpy as np

        res = self._computed()
        adata = self.adata
        emb_key = basis if basis in adata.obsm else f"X_{basis}"
        if emb_key not in adata.obsm:
            raise KeyError(f"obsm[{emb_key!r}] not found (basis={basis!r}); available: {', '.join(adata.obsm.keys()) or 'none'}")
        if "connectivities" not in adata.obsp:
            raise KeyError("obsp['connectivities'] not found: the control is scored on the kNN graph (run cellfate.pp.neighbors first)")
        emb = np.ascontiguousarray(np.asarray(adata.obsm[emb_key], dtype=np.float64))
        graph = _source.csr_parts(adata.obsp["connectivities"], "obsp['connectivities']")
        ctrl, per_cell, real, control, score = _core.random_control(res, adata, int(seed), emb, graph)
        out = {"score": score, "coherence": real, "control_coherence": control, "per_cell": np.asarray(per_cell), "seed": int(seed), "basis": emb_key}
        if write:
            key = key or ("T_bwd" if res.backward else "T_fwd")
            data, indices, indptr, shape = ctrl.csr()
            adata.obsp[f"{key}_rnd"] = sp.csr_matrix((data, indices, indptr), shape=shape)
            adata.obs["random_control_score"] = out["per_cell"]
            adata.uns["random_control"] = {k: v for k, v in out.items() if k != "per_cell"} | {"key": f"{key}_rnd"}
        return out

    def __repr__(self):
        return f"{type(self).__name__}[n={self.adata.n_obs if self.adata is not None else '?'}]"


def _terms(k):
    """``(weight, kernel)`` terms of a sum (a single kernel has weight 1)."""
    if isinstance(k, KernelAdd):
        return list(k.terms)
    return [(1.0, k)]


class Kernel(KernelExpression):
    """A single kernel on an AnnData (CellRank's ``Kernel``)."""

    _kind: str = ""
    _name: str = ""

    def __init__(self, adata, backward: bool = False, **init):
        self.adata = adata
        self._init = {"backward": bool(backward), **init} if "backward" in self._fields() else dict(init)
        self._compute_params: dict = {}
        self._result = None

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return ("backward",)

    @property
    def backward(self):
        return self._init.get("backward")

    def _spec(self) -> dict:
        spec = {"kernel": self._kind}
        spec.update({k: v for k, v in self._init.items() if v is not None})
        spec.update({k: v for k, v in self._compute_params.items() if v is not None})
        return spec

    def _leaves(self):
        return [(1.0, self)]

    @stage
    def compute_transition_matrix(self, **kwargs):
        """Computes the transition matrix with the given parameters (CellRank's names)."""
        self._compute_params = self._map_params(kwargs)
        self._result = _core.compute_kernel(json.dumps(self._spec()), self.adata)
        return self

    def _map_params(self, kwargs) -> dict:
        return kwargs

    def _combine(self):
        raise RuntimeError(
            f"{self._name}: compute the transition matrix first as `.compute_transition_matrix()`"
        )

    def __invert__(self):
        """The same kernel running the other way (to be computed again)."""
        if "backward" not in self._init:
            return _copy.copy(self)
        k = _copy.copy(self)
        k._init = {**self._init, "backward": not self._init["backward"]}
        k._result = None
        return k

    def copy(self, *, deep: bool = False):
        return _copy.deepcopy(self) if deep else _copy.copy(self)

    @classmethod
    def from_adata(cls, adata, key: str, copy: bool = False):
        """A kernel from ``obsp[key]`` and ``uns[key + "_params"]`` as :meth:`write_to_adata`
        (or CellRank) wrote them; a matrix without cellfate's spec becomes a
        :class:`PrecomputedKernel` on that key."""
        if copy:
            adata = adata.copy()
        params = adata.uns.get(f"{key}_params", {})
        spec = params.get("spec") if isinstance(params, dict) else None
        backward = key.endswith("bwd")
        if spec is None:
            spec = json.dumps({"kernel": "precomputed", "obsp_key": key, "backward": backward})
        else:
            backward = bool(json.loads(spec).get("backward", backward))
        result = _core.kernel_from_csr(
            _source.csr_parts(adata.obsp[key], f"obsp[{key!r}]"), spec, backward
        )
        k = _from_spec(adata, json.loads(result.spec))
        k._result = result
        return k


def _from_spec(adata, spec: dict):
    kind = spec.get("kernel")
    if kind in ("sum", "product"):
        k = PrecomputedKernel.__new__(PrecomputedKernel)
        k.adata, k._init, k._compute_params, k._result = adata, {}, {}, None
        return k
    cls = {c._kind: c for c in _KERNELS}.get(kind, PrecomputedKernel)
    k = cls.__new__(cls)
    k.adata = adata
    rest = {k2: v for k2, v in spec.items() if k2 != "kernel"}
    k._init, k._compute_params, k._result = rest, {}, None
    return k


class KernelAdd(KernelExpression):
    """A weighted sum of kernels: ``Σ (w_k / Σw) T_k``."""

    def __init__(self, terms, scaled: bool = False):
        self.terms = list(terms)
        self.adata = self.terms[0][1].adata if self.terms else None
        self._result = None

    def _leaves(self):
        return list(self.terms)

    def _spec(self):
        return {"kernel": "sum", "terms": [[w, k._spec()] for w, k in self.terms]}

    @stage
    def compute_transition_matrix(self, **kwargs):
        """Computes the kernels not computed yet (with default parameters), then the sum."""
        for _, k in self.terms:
            if k._result is None:
                k.compute_transition_matrix(**kwargs)
        self._result = None
        self._computed()
        return self

    def _combine(self):
        return _core.kernel_sum([(w, k._computed()) for w, k in self.terms])

    def __repr__(self):
        return " + ".join(f"{w:g} * {k!r}" for w, k in self.terms)


class KernelMul(KernelExpression):
    """The element-wise product of kernels, rows renormalised."""

    def __init__(self, factors):
        self.factors = list(factors)
        self.adata = self.factors[0].adata
        self._result = None

    def _leaves(self):
        return [lf for f in self.factors for lf in f._leaves()]

    def _spec(self):
        return {"kernel": "product", "factors": [f._spec() for f in self.factors]}

    @stage
    def compute_transition_matrix(self, **kwargs):
        for f in self.factors:
            if f._result is None:
                f.compute_transition_matrix(**kwargs)
        self._result = None
        self._computed()
        return self

    def _combine(self):
        return _core.kernel_product([f._computed() for f in self.factors])

    def __repr__(self):
        return " * ".join(repr(f) for f in self.factors)


class VelocityKernel(Kernel):
    """CellRank's ``VelocityKernel``: transitions from the correlation of each cell's velocity
    with its displacements to its neighbours, through a softmax."""

    _kind, _name = "velocity", "VelocityKernel"

    def __init__(
        self,
        adata,
        backward: bool = False,
        attr: str = "layers",
        xkey: str = "Ms",
        vkey: str = "velocity",
        gene_subset=None,
        conn_key: str = "connectivities",
    ):
        if attr != "layers":
            raise ValueError(f"VelocityKernel: attr={attr!r} is not supported (only 'layers')")
        if gene_subset is not None and not isinstance(gene_subset, str):
            raise ValueError("VelocityKernel: gene_subset must name a boolean var column")
        super().__init__(
            adata, backward=backward, xkey=xkey, vkey=vkey, gene_subset=gene_subset, conn_key=conn_key
        )

    @stage
    def compute_transition_matrix(
        self,
        model: str = "deterministic",
        backward_mode: str = "transpose",
        similarity: str = "correlation",
        softmax_scale: float | None = None,
        **kwargs,
    ):
        _ignore(kwargs, ("n_jobs", "backend", "show_progress_bar", "n_samples", "seed"))
        return super().compute_transition_matrix(
            model=model, backward_mode=backward_mode, similarity=similarity, softmax_scale=softmax_scale
        )


class ConnectivityKernel(Kernel):
    """CellRank's ``ConnectivityKernel``: the (density-normalised) kNN graph."""

    _kind, _name = "connectivity", "ConnectivityKernel"

    def __init__(self, adata, conn_key: str = "connectivities", check_connectivity: bool = False):
        super().__init__(adata, conn_key=conn_key)

    @classmethod
    def _fields(cls):
        return ()

    @stage
    def compute_transition_matrix(self, density_normalize: bool = True):
        return super().compute_transition_matrix(density_normalize=density_normalize)


class PseudotimeKernel(Kernel):
    """CellRank's ``PseudotimeKernel``: the kNN graph thresholded towards later pseudotime."""

    _kind, _name = "pseudotime", "PseudotimeKernel"

    def __init__(self, adata, time_key: str = "dpt_pseudotime", backward: bool = False, conn_key: str = "connectivities"):
        super().__init__(adata, backward=backward, time_key=time_key, conn_key=conn_key)

    @stage
    def compute_transition_matrix(
        self,
        threshold_scheme: str = "hard",
        frac_to_keep: float = 0.3,
        b: float = 10.0,
        nu: float = 0.5,
        check_irreducibility: bool = False,
        **kwargs,
    ):
        if not isinstance(threshold_scheme, str):
            raise ValueError("PseudotimeKernel: a callable threshold_scheme is not supported")
        _ignore(kwargs, ("n_jobs", "backend", "show_progress_bar"))
        return super().compute_transition_matrix(
            threshold_scheme=threshold_scheme, frac_to_keep=frac_to_keep, b=b, nu=nu
        )


class CytoTRACEKernel(Kernel):
    """CellRank's ``CytoTRACEKernel``: a pseudotime kernel on the CytoTRACE score."""

    _kind, _name = "cytotrace", "CytoTRACEKernel"

    def __init__(self, adata, backward: bool = False, conn_key: str = "connectivities"):
        super().__init__(adata, backward=backward, conn_key=conn_key)

    @stage
    def compute_cytotrace(self, layer: str = "Ms", aggregation: str = "mean", use_raw: bool = False, n_genes: int = 200):
        """Sets the score's inputs (computed with the transition matrix)."""
        if aggregation != "mean" or use_raw:
            raise ValueError("CytoTRACEKernel: only aggregation='mean' and use_raw=False are supported")
        self._init.update(layer=layer, n_genes=n_genes)
        return self

    @stage
    def compute_transition_matrix(self, threshold_scheme: str = "hard", frac_to_keep: float = 0.3, **kwargs):
        _ignore(kwargs, ("n_jobs", "backend", "show_progress_bar"))
        return super().compute_transition_matrix(threshold_scheme=threshold_scheme, frac_to_keep=frac_to_keep)


class RealTimeKernel(Kernel):
    """CellRank's ``RealTimeKernel``: optimal-transport couplings between time points."""

    _kind, _name = "real_time", "RealTimeKernel"

    def __init__(self, adata, time_key: str, basis: str = "X_pca", epsilon: float | None = None, conn_key: str = "connectivities"):
        init = {"time_key": time_key, "basis": basis, "conn_key": conn_key}
        if epsilon is not None:
            init["epsilon"] = epsilon
        super().__init__(adata, **init)

    @classmethod
    def _fields(cls):
        return ()

    @stage
    def compute_transition_matrix(self, threshold="auto", self_transitions="connectivities", **kwargs):
        _ignore(kwargs, ("conn_weight", "conn_kwargs", "show_progress_bar"))
        return super().compute_transition_matrix(threshold=threshold, self_transitions=self_transitions)


class LabelingTimeKernel(Kernel):
    """The metabolic-labeling kernel: velocities from new/total RNA and the labeling time."""

    _kind, _name = "labeling_time", "LabelingTimeKernel"

    def __init__(self, adata, backward: bool = False, new_key: str = "new", total_key: str = "total", time_key: str = "time", conn_key: str = "connectivities", time_value: float | None = None):
        # With cellfate.tl.dynamics run first, layers velocity_T and M_t are used as they are.
        super().__init__(adata, backward=backward, new_key=new_key, total_key=total_key, time_key=time_key, conn_key=conn_key, time_value=time_value)

    @stage
    def compute_transition_matrix(self, **kwargs):
        return super().compute_transition_matrix(**kwargs)


class PrecomputedKernel(Kernel):
    """CellRank's ``PrecomputedKernel``: a transition matrix given as it is (a SciPy/NumPy
    matrix, or an ``obsp`` key of ``adata``)."""

    _kind, _name = "precomputed", "PrecomputedKernel"

    def __init__(self, object=None, adata=None, obsp_key: str | None = None, backward: bool = False):
        import anndata

        matrix = None
        if isinstance(object, anndata.AnnData):
            adata, object = object, None
        if isinstance(object, str):
            obsp_key, object = object, None
        if object is not None:
            matrix = object
        if adata is None:
            if matrix is None:
                raise ValueError("PrecomputedKernel: give a matrix, or an AnnData with obsp_key")
            adata = _empty_adata(matrix.shape[0])
        super().__init__(adata, backward=backward, obsp_key=obsp_key)
        self._matrix = matrix
        if matrix is None and obsp_key is None:
            raise ValueError("PrecomputedKernel: give a matrix or obsp_key")

    @stage
    def compute_transition_matrix(self, **kwargs):
        if self._matrix is None:
            return super().compute_transition_matrix()
        spec = json.dumps(self._spec())
        self._result = _core.kernel_from_csr(
            _source.csr_parts(self._matrix, "transition matrix"), spec, bool(self._init.get("backward"))
        )
        return self


def _empty_adata(n):
    import anndata
    import numpy as np

    return anndata.AnnData(X=None, obs={"_i": np.arange(n)})


def _ignore(kwargs, accepted):
    """CellRank's execution-only keywords are accepted and ignored; anything else is an error."""
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")


_KERNELS = (
    VelocityKernel,
    ConnectivityKernel,
    PseudotimeKernel,
    CytoTRACEKernel,
    RealTimeKernel,
    PrecomputedKernel,
    LabelingTimeKernel,
)
