#!/usr/bin/env python3
"""Scores cellfate's fate probabilities against observed clonal fates (LARRY-style data).

Usage: larry_fate_eval.py INPUT.h5ad OUTPUT.h5ad [--time-key time_info]
       [--state-key state_info] [--clone-key X_clone] [--days 2,4]

INPUT is the lineage-traced file (obs time points and states, obsm cell x clone indicator);
OUTPUT is what `cellfate run` wrote from it (obsm["lineages_fwd"], uns["lineages_fwd_names"]).
Prints one JSON line.

Evaluation (the same as tests/it/lineage_tracing.rs):
- Lineages: the columns of obsm["lineages_fwd"]. Each is mapped to a state of obs[state_key]:
  its name, or its name without a `_k` suffix (macrostates sharing a state are `Mono_1`,
  `Mono_2`). The fates F are the distinct mapped states; a cell's prediction p is its fate
  probabilities summed per fate (sums to 1).
- Early cells at day d: the cells at time d whose clone has at least one cell at a later time
  point whose state is in F. The clone's observed fate distribution q is the fraction of those
  later cells in each fate.
- Accuracy: a cell is right when the argmax of p is a majority fate of q (max of q, ties all
  count). Baseline: always predicting the single fate that is a majority fate for the most
  evaluated cells (the best constant prediction, chosen on the evaluated cells themselves).
- Log-loss: mean over cells of -sum_f q_f ln max(p_f, 1e-6). Total variation: mean of
  0.5 * sum_f |p_f - q_f|. Baseline: the constant distribution mean(q) over the evaluated
  cells (the overall fate frequencies, clone-weighted per evaluated cell; the best constant
  under log-loss).
Each early cell counts once (a clone with several early cells counts once per cell).
Also reported: the same figures over the early cells whose own state is `--undiff` (cells
already in a fate at day 4 are easy to predict).
"""

import argparse
import json
import re

import anndata as ad
import numpy as np
import scipy.sparse as sp

EPS = 1e-6


def clone_ids(m):
    """Clone id per cell (argmax of the cell x clone indicator; -1 when the cell has none)."""
    if sp.issparse(m):
        m = sp.csr_matrix(m)
        has = np.diff(m.indptr) > 0
        ids = np.asarray(m.argmax(axis=1)).ravel()
    else:
        m = np.asarray(m)
        has = (m != 0).any(axis=1)
        ids = m.argmax(axis=1)
    return np.where(has, ids, -1)


def lineage_state(name, states):
    if name in states:
        return name
    base = re.sub(r"_\d+$", "", name)
    if base in states:
        return base
    raise SystemExit(f"lineage {name!r} is not a state of the state key ({states})")


def evaluate(times, states, clones, fates, p, day, only_state=None):
    f_index = {f: k for k, f in enumerate(fates)}
    later_fate = np.array([f_index.get(s, -1) for s in states])
    qs, ps = [], []
    clones_used = set()
    for i in np.where(times == day)[0]:
        if clones[i] < 0 or (only_state is not None and states[i] != only_state):
            continue
        later = (clones == clones[i]) & (times > day) & (later_fate >= 0)
        if not later.any():
            continue
        q = np.bincount(later_fate[later], minlength=len(fates)).astype(float)
        qs.append(q / q.sum())
        clones_used.add(int(clones[i]))
        ps.append(p[i])
    n = len(qs)
    if n == 0:
        return {"n_cells": 0}
    q = np.array(qs)
    pr = np.array(ps)
    majority = q >= q.max(axis=1, keepdims=True) - 1e-12
    acc = float(np.mean(majority[np.arange(n), pr.argmax(axis=1)]))
    base_fate = int(np.argmax(majority.sum(axis=0)))
    base_acc = float(np.mean(majority[:, base_fate]))
    base = q.mean(axis=0)

    def logloss(pp):
        return float(np.mean(-(q * np.log(np.maximum(pp, EPS))).sum(axis=1)))

    def tv(pp):
        return float(np.mean(0.5 * np.abs(pp - q).sum(axis=1)))

    return {
        "n_cells": n,
        "n_clones": len(clones_used),
        "accuracy": acc,
        "baseline_accuracy": base_acc,
        "baseline_fate": fates[base_fate],
        "log_loss": logloss(pr),
        "baseline_log_loss": logloss(np.broadcast_to(base, q.shape)),
        "tv": tv(pr),
        "baseline_tv": tv(np.broadcast_to(base, q.shape)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--time-key", default="time_info")
    ap.add_argument("--state-key", default="state_info")
    ap.add_argument("--clone-key", default="X_clone")
    ap.add_argument("--days", default="2,4")
    ap.add_argument("--undiff", default="undiff", help="state of undifferentiated cells")
    a = ap.parse_args()
    # anndata reads both the current and the legacy (`obs/__categories`) layouts.
    adata = ad.read_h5ad(a.input)
    times = np.array([float(t) for t in adata.obs[a.time_key].astype(str)])
    states = adata.obs[a.state_key].astype(str).to_numpy()
    cats = sorted(set(states))
    clones = clone_ids(adata.obsm[a.clone_key])
    res = ad.read_h5ad(a.output)
    lin = np.asarray(res.obsm["lineages_fwd"], dtype=float)
    names = [str(n) for n in res.uns["lineages_fwd_names"]]
    mapped = [lineage_state(n, cats) for n in names]
    fates = list(dict.fromkeys(mapped))
    p = np.zeros((lin.shape[0], len(fates)))
    for k, s in enumerate(mapped):
        p[:, fates.index(s)] += lin[:, k]
    p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    out = {"lineages": names, "fates": fates}
    for d in a.days.split(","):
        out[f"day{d}"] = evaluate(times, states, clones, fates, p, float(d))
        # The same among the early cells still undifferentiated (not already in a fate).
        if a.undiff in cats:
            out[f"day{d}_{a.undiff}"] = evaluate(
                times, states, clones, fates, p, float(d), only_state=a.undiff
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
