"""Figures from an in-memory AnnData: the same figures, names and report as ``cellfate plot``
and ``cellfate report`` (drawn by the Rust library, no matplotlib needed), shown inline in
Jupyter and saved as PNG or SVG.

- :func:`figures` draws any of the library's figure kinds (``clusters``, ``macrostates``,
  ``terminal_states``, ``fates``, ``aggregated_fates``, ``circular_projection``, ``priming``,
  ``absorption_times``, ``spectrum``, ``coarse_T``, ``macrostate_composition``, ``drivers``,
  ``gene_trends``, ``heatmap``, ``phase_portraits``, ``random_walks``, ``velocity_stream``,
  ``velocity_grid``, ``velocity_arrows``, ``vector_field``); :func:`report` writes the HTML
  report.
- CellRank's and scVelo's plotting names call it with the matching kind:
  :func:`circular_projection`, :func:`aggregate_fate_probabilities`, :func:`gene_trends`,
  :func:`heatmap`, :func:`velocity_embedding_stream`, :func:`velocity_embedding_grid`,
  :func:`velocity_embedding`; the estimators' ``plot_*`` methods and the kernels'
  ``plot_random_walks`` / ``plot_projection`` likewise.

Each returns a :class:`Figures` list (displayed inline by Jupyter); ``save=`` writes the
files as well. Arguments of CellRank's and scVelo's functions that change only their
matplotlib styling are accepted and ignored, with a warning naming them.
"""

from __future__ import annotations

import base64
import html
import os
import warnings
from pathlib import Path

from . import _core

__all__ = [
    "Figure",
    "Figures",
    "figures",
    "report",
    "circular_projection",
    "aggregate_fate_probabilities",
    "gene_trends",
    "heatmap",
    "velocity_embedding_stream",
    "velocity_embedding_grid",
    "velocity_embedding",
]


class Figure:
    """One drawn figure: ``name`` (its file name without extension, as ``cellfate plot``
    writes it), ``title``, ``format`` (``png``/``svg``) and the encoded ``data``."""

    def __init__(self, name: str, title: str, data: bytes, format: str):
        self.name, self.title, self.data, self.format = name, title, data, format

    def _repr_png_(self):
        return self.data if self.format == "png" else None

    def _repr_svg_(self):
        return self.data.decode() if self.format == "svg" else None

    def save(self, path) -> Path:
        """Writes the figure to ``path`` (a file, or a directory: ``<dir>/<name>.<format>``)
        through an exclusive temporary file renamed into place."""
        p = Path(path)
        if p.is_dir():
            p = p / f"{self.name}.{self.format}"
        elif p.suffix.lower().lstrip(".") not in ("", self.format):
            raise ValueError(f"save={str(path)!r}: this figure is {self.format}; draw it with format={p.suffix.lstrip('.')!r} or save it as .{self.format}")
        elif not p.suffix:
            p = p.with_suffix(f".{self.format}")
        _core.write_file(os.fspath(p), self.data)
        return p

    def __repr__(self):
        return f"Figure({self.name!r}, {self.format}, {len(self.data)} bytes)"


class Figures(list):
    """Figures in the library's order; ``figs["fate_Alpha"]`` picks one by name. ``notes``
    says what was skipped and why."""

    def __init__(self, items=(), notes=()):
        super().__init__(items)
        self.notes = list(notes)

    def __getitem__(self, key):
        if isinstance(key, str):
            for f in self:
                if f.name == key:
                    return f
            raise KeyError(f"no figure {key!r}; figures: {', '.join(f.name for f in self)}")
        return super().__getitem__(key)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self]

    def save(self, path) -> list[Path]:
        """Writes every figure: into the directory ``path``, or, for a file name, as
        ``<stem>_<name>.<format>`` beside it (one figure: ``path`` itself)."""
        p = Path(path)
        if p.is_dir():
            return [f.save(p) for f in self]
        if len(self) == 1:
            return [self[0].save(p)]
        stem = p.with_suffix("")
        return [f.save(stem.parent / f"{stem.name}_{f.name}.{f.format}") for f in self]

    def _repr_html_(self):
        parts = []
        for f in self:
            if f.format == "svg":
                img = f.data.decode()
            else:
                img = f'<img src="data:image/png;base64,{base64.b64encode(f.data).decode()}" style="max-width:100%">'
            parts.append(f"<figure style=\"margin:0 0 1em 0\">{img}<figcaption>{html.escape(f.title)}</figcaption></figure>")
        for n in self.notes:
            parts.append(f"<p style=\"color:#8a4b00\">{html.escape(n)}</p>")
        return "\n".join(parts)

    def __repr__(self):
        return f"Figures({self.names})"


def _as_list(x):
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    return [str(v) for v in x]


def figures(
    adata,
    kind=None,
    *,
    basis: str | None = None,
    cluster_key: str | None = None,
    genes=None,
    time_key: str | None = None,
    data_key: str | None = None,
    n_walks: int | None = None,
    seed: int | None = None,
    n_drivers: int | None = None,
    width: int | None = None,
    height: int | None = None,
    dpi: int | None = None,
    format: str = "png",
    save=None,
) -> Figures:
    """The library's figures of ``adata`` (what ``cellfate plot`` draws from a file).

    ``kind``: a kind or a list of kinds (``None``: every default kind the data supports; a
    kind named here that the data cannot give raises ``ValueError``). ``basis``: an ``obsm``
    embedding (``umap`` → ``X_umap``; default the first of ``X_umap``, ``X_tsne``,
    ``X_draw_graph_fa``, ``X_pca``). ``genes``, ``time_key``, ``data_key``: gene trends,
    heatmaps and phase portraits. ``width``/``height`` (pixels at 100 dpi) and ``dpi`` as the
    CLI's flags. ``save``: a directory or file name to write the figures to."""
    figs, notes = _core.figures(
        adata,
        kinds=_as_list(kind),
        basis=basis,
        cluster_key=cluster_key,
        genes=_as_list(genes),
        time_key=time_key,
        data_key=data_key,
        n_walks=n_walks,
        seed=seed,
        n_drivers=n_drivers,
        width=width,
        height=height,
        dpi=dpi,
        format=format,
    )
    out = Figures((Figure(n, t, bytes(d), format.lower()) for n, t, d in figs), notes)
    if save is not None:
        out.save(save)
    return out


def report(adata, path=None, *, title: str = "cellfate report", **kwargs) -> str:
    """The HTML report of ``adata`` (the page ``cellfate report`` writes: figures, terminal
    and initial states, fates per cluster, kernel parameters, velocity), returned as a
    string and written to ``path`` when given. ``kwargs`` as :func:`figures` (no ``format``
    or ``save``)."""
    kw = dict(kwargs)
    if "kind" in kw:
        kw["kinds"] = _as_list(kw.pop("kind"))
    if "genes" in kw:
        kw["genes"] = _as_list(kw["genes"])
    return _core.html_report(adata, None if path is None else os.fspath(path), title, **kw)


def _ignored(func, kwargs):
    if kwargs:
        warnings.warn(
            f"cellfate.pl.{func}: ignored (matplotlib styling of the reference tool): {', '.join(sorted(kwargs))}",
            stacklevel=3,
        )


class _WithTransition:
    """``adata`` seen with ``obsp["T_fwd"]`` replaced by a kernel's matrix, without touching
    ``adata`` (the figures read the slots through ``cellfate._slots``)."""

    def __init__(self, adata, transition):
        self._adata = adata
        self.obsp = {**dict(adata.obsp.items()), "T_fwd": transition}

    def __getattr__(self, name):
        return getattr(self._adata, name)


def _on_kernel(kernel):
    return _WithTransition(kernel.adata, kernel.transition_matrix)


# -- CellRank's names ----------------------------------------------------------------------------
def circular_projection(adata, keys=None, *, basis=None, save=None, **kwargs) -> Figures:
    """CellRank's ``cr.pl.circular_projection``: cells placed by their fate probabilities
    around a circle, coloured by ``keys`` (an ``obs`` column; default ``clusters``)."""
    if isinstance(keys, (list, tuple)):
        keys = keys[0] if keys else None
    _ignored("circular_projection", kwargs)
    return figures(adata, "circular_projection", cluster_key=keys, basis=basis, save=save)


def aggregate_fate_probabilities(adata, mode: str = "bar", cluster_key: str | None = "clusters", *, save=None, **kwargs) -> Figures:
    """CellRank's ``cr.pl.aggregate_fate_probabilities``: mean fate probabilities per
    cluster (drawn as grouped bars whatever ``mode``)."""
    _ignored("aggregate_fate_probabilities", kwargs)
    return figures(adata, "aggregated_fates", cluster_key=cluster_key, save=save)


def gene_trends(adata, model=None, genes=None, time_key: str | None = None, *, data_key: str | None = None, save=None, **kwargs) -> Figures:
    """CellRank's ``cr.pl.gene_trends``: expression along ``time_key`` per lineage, weighted
    by the fate probabilities (the library's penalised splines with 95 % bands; ``model`` is
    accepted for CellRank's signature and not used). ``data_key`` defaults to ``Ms`` when
    present, else ``X``."""
    _ignored("gene_trends", kwargs)
    return figures(adata, "gene_trends", genes=genes, time_key=time_key, data_key=data_key, save=save)


def heatmap(adata, model=None, genes=None, time_key: str | None = None, *, data_key: str | None = None, save=None, **kwargs) -> Figures:
    """CellRank's ``cr.pl.heatmap``: the genes' smoothed trends per lineage, scaled to 0–1
    and ordered by peak time (default genes: the top drivers)."""
    _ignored("heatmap", kwargs)
    return figures(adata, "heatmap", genes=genes, time_key=time_key, data_key=data_key, save=save)


# -- scVelo's names ------------------------------------------------------------------------------
def velocity_embedding_stream(adata, basis: str | None = None, *, color=None, save=None, **kwargs) -> Figures:
    """scVelo's ``scv.pl.velocity_embedding_stream``: streamlines of the transition matrix
    ``obsp["T_fwd"]`` projected on the embedding (write a kernel with ``write_to_adata``
    first, or use a kernel's ``plot_projection``); cells coloured by ``color`` (an ``obs``
    column)."""
    _ignored("velocity_embedding_stream", kwargs)
    return figures(adata, "velocity_stream", basis=basis, cluster_key=color, save=save)


def velocity_embedding_grid(adata, basis: str | None = None, *, color=None, save=None, **kwargs) -> Figures:
    """scVelo's ``scv.pl.velocity_embedding_grid``: the projected velocities averaged on a
    grid, as arrows."""
    _ignored("velocity_embedding_grid", kwargs)
    return figures(adata, "velocity_grid", basis=basis, cluster_key=color, save=save)


def velocity_embedding(adata, basis: str | None = None, *, color=None, save=None, **kwargs) -> Figures:
    """scVelo's ``scv.pl.velocity_embedding``: one arrow per cell (at most 2,000 cells)."""
    _ignored("velocity_embedding", kwargs)
    return figures(adata, "velocity_arrows", basis=basis, cluster_key=color, save=save)
