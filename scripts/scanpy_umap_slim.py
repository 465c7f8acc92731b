# umap-learn (scanpy's tl.umap) on the kNN graph of a cellfate file, read slim: only what
# tl.umap needs (obs names, X_pca, connectivities, distances, uns neighbors). Prints the
# seconds of tl.umap itself.
import sys, time, h5py, numpy as np, anndata as ad, scanpy as sc
from anndata.io import read_elem
with h5py.File(sys.argv[1], "r") as f:
    obs = read_elem(f["obs"])[[]]
    a = ad.AnnData(obs=obs)
    a.obsm["X_pca"] = read_elem(f["obsm/X_pca"])
    a.obsp["connectivities"] = read_elem(f["obsp/connectivities"])
    a.obsp["distances"] = read_elem(f["obsp/distances"])
    a.uns["neighbors"] = read_elem(f["uns/neighbors"])
t = time.time()
sc.tl.umap(a, random_state=0)
print(f"sc.tl.umap {time.time() - t:.1f} s on {a.n_obs} cells")
