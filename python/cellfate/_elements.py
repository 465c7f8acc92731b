"""AnnData elements from ``cellfate._core`` (tagged tuples) as Python objects, and writing
them into an in-memory AnnData under the slot the library names (``obs/term_states_fwd``,
``obsm/lineages_fwd``, ``uns/coarse_fwd``, ...). Conversion only: the values and keys are the
library's, the same the CLI writes into ``.h5ad`` files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def to_python(e):
    """One tagged element as NumPy / SciPy / pandas / dict / AnnData."""
    tag = e[0]
    if tag == "dense":
        return e[1]
    if tag == "sparse":
        _, fmt, (data, indices, indptr), shape = e
        cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
        return cls((data, indices, indptr), shape=shape)
    if tag == "strings":
        _, values, shape = e
        return np.array(values, dtype=object).reshape(shape)
    if tag == "str":
        return e[1]
    if tag == "scalar":
        return e[1][0].item()
    if tag == "categorical":
        _, codes, cats, ordered = e
        return pd.Categorical.from_codes(codes, categories=list(cats), ordered=ordered)
    if tag == "nullable":
        _, values, mask = e
        return pd.array(np.where(mask, 0, values), dtype=_nullable(values.dtype)).where(~mask)
    if tag == "nullable_str":
        _, values, mask = e
        return pd.array([None if m else v for v, m in zip(values, mask)], dtype="string")
    if tag == "dataframe":
        _, index_name, index, (_, cols) = e
        df = pd.DataFrame(index=pd.Index(index, dtype=object, name=None if index_name == "_index" else index_name))
        for name, col in cols:
            df[name] = to_python(col)
        return df
    if tag == "dict":
        return {k: to_python(v) for k, v in e[1]}
    if tag == "raw":
        return {k: to_python(v) for k, v in e[1]}
    if tag == "anndata":
        import anndata

        parts = {k: to_python(v) for k, v in e[1]}
        return anndata.AnnData(
            X=parts.get("X"),
            obs=parts.get("obs"),
            var=parts.get("var"),
            uns=parts.get("uns") or None,
        )
    raise ValueError(f"unknown element tag {tag!r}")


def _nullable(dtype):
    if dtype == np.bool_:
        return "boolean"
    return {np.dtype(np.int8): "Int8", np.dtype(np.int16): "Int16", np.dtype(np.int32): "Int32"}.get(
        np.dtype(dtype), "Int64"
    )


def convert(slots):
    """``[(slot, tagged)]`` as a dict ``{slot: python object}`` in order."""
    return {slot: to_python(e) for slot, e in slots}


def write(adata, objects):
    """Puts converted elements into ``adata`` (in place)."""
    for slot, value in objects.items():
        group, _, key = slot.partition("/")
        if slot == "X":
            adata.X = value
        elif group == "obs":
            if isinstance(value, pd.Categorical) or not isinstance(value, pd.Series):
                value = pd.Series(value, index=adata.obs_names)
            adata.obs[key] = value
        elif group == "var":
            adata.var[key] = pd.Series(value, index=adata.var_names)
        elif group == "obsm":
            if isinstance(value, pd.DataFrame):
                value.index = adata.obs_names
            adata.obsm[key] = value
        elif group == "varm":
            if isinstance(value, pd.DataFrame):
                value.index = adata.var_names
            adata.varm[key] = value
        elif group == "obsp":
            adata.obsp[key] = value
        elif group == "layers":
            adata.layers[key] = value
        elif group == "uns":
            _set_nested(adata.uns, key, value)
        else:
            raise ValueError(f"cannot write slot {slot!r}")


def _set_nested(d, key, value):
    parts = key.split("/")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
