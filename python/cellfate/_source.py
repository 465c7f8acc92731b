"""Reading AnnData slots for the native kernels (``cellfate._core``).

Each function returns a slot as stored — NumPy arrays in their own dtype, SciPy CSR parts —
so the Rust side converts once; a missing key raises ``KeyError`` (the Rust side then asks
:func:`available` for the keys that exist). Nothing here computes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

_FLOATS = (np.float32, np.float64)


def _float_array(a, what):
    a = np.asarray(a)
    if a.dtype not in _FLOATS:
        if a.dtype.kind in "iub":
            a = a.astype(np.float64)
        else:
            raise TypeError(f"{what}: expected numbers, found dtype {a.dtype}")
    return np.ascontiguousarray(a)


def csr_parts(m, what="matrix"):
    """``(data, indices, indptr, nrows, ncols)`` of a sparse (or dense) matrix, without a copy
    when it is CSR already."""
    if not sp.issparse(m):
        m = sp.csr_matrix(np.asarray(m))
    elif m.format != "csr":
        m = m.tocsr()
    data = _float_array(m.data, what)
    return data, m.indices, m.indptr, m.shape[0], m.shape[1]


def available(adata, slot):
    """The keys of an AnnData slot (for messages)."""
    if slot == "layers":
        return ["X", *adata.layers.keys()] if adata.X is not None else list(adata.layers.keys())
    if slot in ("obs", "var"):
        return list(getattr(adata, slot).columns)
    return list(getattr(adata, slot).keys())


def graph(adata, key):
    return csr_parts(adata.obsp[key], f"obsp[{key!r}]")


def obs_f64(adata, key):
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.astype(str).astype(float)
    return np.ascontiguousarray(pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan))


def obs_labels(adata, key):
    col = adata.obs[key]
    return [None if pd.isna(v) else str(v) for v in col]


def obs_categories(adata, key):
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [str(c) for c in col.cat.categories]
    return []


def _dense(m, what):
    if sp.issparse(m):
        m = m.toarray()
    a = _float_array(m, what)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected 2 dimensions, found {a.ndim}")
    return a


def layer(adata, key):
    if key == "X":
        if adata.X is None:
            raise KeyError(key)
        return _dense(adata.X, "X")
    return _dense(adata.layers[key], f"layers[{key!r}]")


def obsm(adata, key):
    m = adata.obsm[key]
    if isinstance(m, pd.DataFrame):
        m = m.to_numpy()
    return _dense(m, f"obsm[{key!r}]")


def var_mask(adata, key):
    if key not in adata.var.columns:
        return None
    col = adata.var[key]
    return [bool(v) for v in col.fillna(False)]


def uns_matrix(adata, key):
    if key not in adata.uns:
        return None
    return _dense(adata.uns[key], f"uns[{key!r}]")
