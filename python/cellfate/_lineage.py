"""``Lineage``: a cells × lineages NumPy array that knows its column names and colours, as
CellRank's ``Lineage`` (``g.fate_probabilities["Alpha"]``, ``.names``, ``.colors``)."""

from __future__ import annotations

import numpy as np


class Lineage(np.ndarray):
    """A 2-D float array whose columns are named lineages (or macrostates)."""

    def __new__(cls, values, *, names, colors=None):
        obj = np.asarray(values, dtype=np.float64).view(cls)
        if obj.ndim != 2 or obj.shape[1] != len(names):
            raise ValueError(f"Lineage: {len(names)} names for an array of shape {obj.shape}")
        obj.names = list(names)
        obj.colors = list(colors) if colors is not None else None
        return obj

    def __array_finalize__(self, obj):
        self.names = getattr(obj, "names", None)
        self.colors = getattr(obj, "colors", None)

    def __getitem__(self, key):
        if isinstance(key, str) or (isinstance(key, (list, tuple)) and key and all(isinstance(k, str) for k in key)):
            keys = [key] if isinstance(key, str) else list(key)
            unknown = [k for k in keys if k not in self.names]
            if unknown:
                raise KeyError(f"lineage(s) {unknown} not found; the lineages are: {', '.join(self.names)}")
            idx = [self.names.index(k) for k in keys]
            out = np.asarray(self)[:, idx]
            colors = [self.colors[i] for i in idx] if self.colors else None
            return Lineage(out, names=keys, colors=colors)
        out = super().__getitem__(key)
        if isinstance(out, Lineage) and (out.ndim != 2 or out.shape[1] != len(self.names or [])):
            return np.asarray(out)
        return out

    @property
    def X(self) -> np.ndarray:
        """The values as a plain array."""
        return np.asarray(self)

    def __repr__(self):
        return f"Lineage(shape={self.shape}, names={self.names})"
