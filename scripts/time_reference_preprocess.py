"""Times the reference preprocessing recipe (scVelo 0.3.4 + scanpy, float32 as they default to;
../shared/reference/README.md steps 1-3) stage by stage on one raw .h5ad, for the
side-by-side preprocessing table in BENCHMARKS.md:

    .venv-cellrank/bin/python scripts/time_reference_preprocess.py RAW.h5ad

Prints one line per stage (wall seconds, peak RSS of the process in MB). Compare with
`cellfate preprocess RAW.h5ad -o OUT -v` on the same file, run right after.
"""

import resource
import sys
import time
import warnings

import anndata as ad
import scanpy as sc
import scvelo as scv

warnings.filterwarnings("ignore")
scv.settings.verbosity = 0


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage(name, f, *args, **kw):
    t = time.perf_counter()
    out = f(*args, **kw)
    print(f"  {name:<26} {time.perf_counter() - t:8.2f} s   peak {peak_mb():7.0f} MB", flush=True)
    return out


t0 = time.perf_counter()
a = stage("read", ad.read_h5ad, sys.argv[1])
stage("filter_and_normalize", scv.pp.filter_and_normalize, a, min_shared_counts=20)
stage("log1p", sc.pp.log1p, a)
stage("highly_variable_genes", sc.pp.highly_variable_genes, a, n_top_genes=min(2000, a.n_vars), subset=True)
stage("pca", sc.tl.pca, a, random_state=0)
stage("neighbors", sc.pp.neighbors, a, n_pcs=30, n_neighbors=30, random_state=0)
stage("moments", scv.pp.moments, a, n_pcs=None, n_neighbors=None)
stage("velocity (stochastic)", scv.tl.velocity, a, mode="stochastic")
print(f"  {'total':<26} {time.perf_counter() - t0:8.2f} s   peak {peak_mb():7.0f} MB")
