"""dynamo 1.5.3's vector field, divergence, curl, topography and ddhodge on an analytic 2-D
field, for the parity test (tests/it/dynamo_parity.rs). Run with the interpreter of
`.venv-dynamo` (scripts/setup.sh makes it under CI=true or with CELLFATE_DYNAMO=1).

The field: f = −∇V + 0.5 R∇V with the double well V = (x² − 1)² + y², 2,000 cells uniform on
[−1.6, 1.6] × [−1, 1], velocities with 5 % Gaussian noise (seed 0). Writes OUT.h5ad with
obsm X_umap, velocity_umap, obs divergence_umap, curl_umap, umap_ddhodge_potential, and
uns VecFld_umap (X_ctrl, C, beta, V, sigma2, Xss, ftype).

Usage: python scripts/dynamo_vectorfield_reference.py OUT.h5ad"""

import sys
import warnings

warnings.filterwarnings("ignore")
import anndata
import numpy as np
import dynamo as dyn

out = sys.argv[1]
rng = np.random.default_rng(0)
n = 2000
x = np.column_stack([rng.uniform(-1.6, 1.6, n), rng.uniform(-1.0, 1.0, n)])
gx, gy = 4 * x[:, 0] * (x[:, 0] ** 2 - 1), 2 * x[:, 1]
v = np.column_stack([-gx - 0.5 * gy, -gy + 0.5 * gx]) + 0.15 * rng.standard_normal((n, 2))
a = anndata.AnnData(X=np.zeros((n, 2), dtype=np.float32))
a.obsm["X_umap"] = x
a.obsm["velocity_umap"] = v
dyn.vf.VectorField(a, basis="umap", M=100, MaxIter=30)
dyn.vf.divergence(a, basis="umap")
dyn.vf.curl(a, basis="umap")
dyn.vf.jacobian(a, basis="umap")
dyn.vf.topography(a, basis="umap")
dyn.ext.ddhodge(a, basis="umap")
vf = a.uns["VecFld_umap"]
b = anndata.AnnData(X=np.zeros((n, 2), dtype=np.float32))
b.obsm["X_umap"] = x
b.obsm["velocity_umap"] = v
for key in ("divergence_umap", "curl_umap", "umap_ddhodge_potential"):
    b.obs[key] = np.asarray(a.obs[key], dtype=np.float64)
keep = {}
for key in ("X_ctrl", "C", "V", "Xss", "ftype"):
    keep[key] = np.asarray(vf[key], dtype=np.float64)
for key in ("beta", "sigma2"):
    keep[key] = float(np.asarray(vf[key]).ravel()[0])
b.uns["VecFld_umap"] = keep
jac = a.uns["jacobian_umap"]
b.uns["jacobian_umap"] = {
    "jacobian": np.asarray(jac["jacobian"], dtype=np.float64),  # d × d × cells
    "cell_idx": np.asarray(jac["cell_idx"], dtype=np.int64),
}
b.write_h5ad(out)
print("ok", keep["X_ctrl"].shape, keep["Xss"].shape, keep["ftype"])
