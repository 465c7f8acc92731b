"""Reading stored results out of an in-memory AnnData for the estimators' ``from_adata``:
one slot at a time (``obs/term_states_fwd``, ``uns/coarse_fwd/X``, ...) as a tagged tuple the
native core turns into the library's element (the reverse of ``_elements``). Conversion only:
which slots are read, and what they must hold, is the library's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._source import csr_parts

_MISSING = object()


def _lookup(adata, slot):
    if slot == "X":
        return _MISSING if adata.X is None else adata.X
    group, _, rest = slot.partition("/")
    if group in ("obs", "var"):
        df = getattr(adata, group)
        return df[rest] if rest in df.columns else _MISSING
    if group in ("obsm", "varm", "obsp", "layers"):
        m = getattr(adata, group)
        return m[rest] if rest in m else _MISSING
    if group == "uns":
        cur = adata.uns
        for part in rest.split("/"):
            if isinstance(cur, dict):
                if part not in cur:
                    return _MISSING
                cur = cur[part]
            elif hasattr(cur, "obs") and hasattr(cur, "X"):  # a nested AnnData
                if part == "X":
                    cur = cur.X
                elif part in ("obs", "var"):
                    cur = getattr(cur, part)
                else:
                    return _MISSING
            else:
                return _MISSING
        return cur
    return _MISSING


def exists(adata, slot):
    return _lookup(adata, slot) is not _MISSING


def _tag(v):
    if isinstance(v, pd.DataFrame):
        return ("dataframe", [str(i) for i in v.index], [(str(c), _tag(v[c])) for c in v.columns])
    if isinstance(v, pd.Series):
        if isinstance(v.dtype, pd.CategoricalDtype):
            return ("categorical", np.asarray(v.cat.codes, dtype=np.int32), [str(c) for c in v.cat.categories], bool(v.cat.ordered))
        if v.dtype == object or pd.api.types.is_string_dtype(v.dtype):
            return ("strings", [str(x) for x in v])
        return ("dense", np.ascontiguousarray(v.to_numpy()))
    if isinstance(v, pd.Categorical):
        return ("categorical", np.asarray(v.codes, dtype=np.int32), [str(c) for c in v.categories], bool(v.ordered))
    if isinstance(v, dict):
        return ("dict", [(str(k), _tag(x)) for k, x in v.items()])
    if isinstance(v, str):
        return ("str", v)
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        return ("scalar", float(v))
    if sp.issparse(v):
        v = v.toarray()
    a = np.asarray(v)
    if a.dtype.kind in "OUS":
        return ("strings", [str(x) for x in a.ravel()])
    if a.dtype.kind == "c":
        a = a.astype(np.complex128)
    elif a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float64)
    elif a.dtype.kind in "iu":
        a = a.astype(np.int64)
    return ("dense", np.ascontiguousarray(a))


def read(adata, slot):
    v = _lookup(adata, slot)
    if v is _MISSING:
        raise KeyError(slot)
    return _tag(v)


def csr(adata, key):
    return csr_parts(adata.obsp[key], f"obsp[{key!r}]")


def keys(adata, group):
    """The members of a group (``obsm``, ``layers``, ``uns/...``), for the figures."""
    if group in ("obs", "var"):
        return [str(c) for c in getattr(adata, group).columns]
    if group in ("obsm", "varm", "obsp", "layers"):
        return sorted(str(k) for k in getattr(adata, group).keys())
    v = _lookup(adata, group) if group.startswith("uns/") else (adata.uns if group == "uns" else _MISSING)
    if isinstance(v, dict):
        return sorted(str(k) for k in v)
    return []


def var_names(adata):
    return [str(v) for v in adata.var_names]


def gene_columns(adata, slot, cols):
    """Columns ``cols`` of ``X`` or ``layers/<key>`` as a dense float64 cells × len(cols)
    array (only those columns are densified)."""
    m = adata.X if slot == "X" else _lookup(adata, slot)
    if m is _MISSING or m is None:
        raise KeyError(slot)
    cols = np.asarray(cols, dtype=np.int64)
    sub = m[:, cols]
    if sp.issparse(sub):
        sub = sub.toarray()
    return np.ascontiguousarray(np.asarray(sub, dtype=np.float64))


def two_columns(adata, slot):
    """The first two columns of an ``obsm`` embedding as float64, or ``None``."""
    v = _lookup(adata, slot)
    if v is _MISSING:
        raise KeyError(slot)
    if isinstance(v, pd.DataFrame):
        v = v.to_numpy()
    if sp.issparse(v):
        v = v[:, :2].toarray()
    a = np.asarray(v)
    if a.ndim != 2 or a.shape[1] < 2 or a.dtype.kind not in "fiu":
        return None
    return np.ascontiguousarray(a[:, :2], dtype=np.float64)
