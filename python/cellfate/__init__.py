"""cellfate: cell fate mapping for single-cell RNA-seq, with CellRank 2's API on a Rust core.

``import cellfate as cr`` in place of ``import cellrank as cr`` runs CellRank's getting-started
calls (kernels, ``GPCCA``, macrostates, terminal states, fate probabilities, drivers) on the
same in-memory AnnData and writes the results under CellRank's keys. The computation is the
``cellfate`` Rust library's, the same code as the ``cellfate`` command-line tool.
"""

from __future__ import annotations

from . import _core, estimators, ext, kernels, pd, pl, pp, tl, vf
from ._lineage import Lineage

__version__ = _core.__version__

__all__ = ["kernels", "estimators", "pp", "tl", "pl", "vf", "ext", "pd", "Lineage", "__version__"]
