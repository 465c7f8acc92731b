"""Fate accuracy of a cellfate output on a simulation: exactly the true end states?, share of
committed cells (true_state != Progenitor) and of all cells whose most likely fate is the true one.
Usage: python scripts/sim_fate_eval.py OUT.h5ad (needs anndata)."""
import sys, h5py, numpy as np, warnings
warnings.filterwarnings('ignore')
import anndata as ad
a = ad.read_h5ad(sys.argv[1])
names = [str(x) for x in a.uns['lineages_fwd_names']]
L = np.asarray(a.obsm['lineages_fwd'])
fates = [str(x) for x in a.uns['simulation']['fates']] if 'simulation' in a.uns else None
ts = a.obs['true_state'].astype(str).values
tf = a.obs['true_fate'].astype(str).values
committed = ts != 'Progenitor'
pred = np.array(names)[L.argmax(1)]
acc = (pred[committed] == tf[committed]).mean()
acc_all = (pred == tf).mean()
exact = sorted(names) == sorted(fates)
print(f"terminal {names} true {fates} exact={exact} committed_acc={acc:.4f} all_acc={acc_all:.4f}")
