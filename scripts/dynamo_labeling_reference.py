"""dynamo 1.5.3's labeling kinetics (`tl.dynamics`) on cellfate's own smoothed moments, for
the parity test tests/it/labeling_dynamo_parity.rs. Run with the interpreter of `.venv-dynamo`
(scripts/setup.sh makes it under CI=true or with CELLFATE_DYNAMO=1).

IN is a file written by `cellfate preprocess` on labeling data. A new AnnData holds only what
dynamo reads: layers M_n, M_t (and the second moments M_tn, M_nn, M_tt for one-shot) as CSR,
as dynamo's `tl.moments` stores them, obsp moments_con, obs labeling_time, var use_for_pca =
cellfate's `use_for_dynamics`, and uns["pp"] for labeling without splicing. With two or more
`M_*` layers present `tl.dynamics` does not re-smooth (`tools/dynamics.py::dynamics`,
`len(M_layers) < 2`), so both sides start from the same moments. They are cast to float64:
the values are exactly cellfate's float32 moments, and dynamo's arithmetic (which follows the
layers' dtype: float32 means and sums in `fit_linreg`, `fit_stochastic_linreg`) is then done
in double precision, like cellfate's. `--float32` keeps them float32, as dynamo would hold
its own moments.

EXPERIMENT is one-shot, kinetics or degradation:
- one-shot: `dyn.tl.dynamics(adata, tkey=...)` with its defaults (model auto -> stochastic,
  est_method auto -> gmm);
- kinetics: `experiment_type="kin"`, `est_method="twostep"`;
- degradation: `experiment_type="deg"`, defaults (model deterministic, est_method direct).
  dynamo 1.5.3 fails here under numpy >= 1.24 (`Estimation_DeterministicDegNosp.auto_fit`
  builds `np.array([0, 1e2 * x0])` with `x0` an array of one value: "setting an array
  element with a sequence"); the initial-amount guess is made a scalar, its intended value.

OUT.h5ad: var dyn_gamma, dyn_alpha (NaN where dynamo has no scalar alpha: deg), dyn_half_life,
dyn_use_for_dynamics, dyn_gamma_k (one-shot: the slope k), dyn_k_min/dyn_k_max (kin: the
per-time slopes K_j), layers dyn_velocity_N, dyn_velocity_T (dense float64) when dynamo writes
them, and uns strings dyn_* describing the run. Network access is refused (nothing here needs
it).

Usage: python scripts/dynamo_labeling_reference.py IN.h5ad OUT.h5ad EXPERIMENT [--float32]"""

import socket
import sys
import warnings

warnings.filterwarnings("ignore")


def _no_network(*_args, **_kwargs):
    raise RuntimeError("dynamo_labeling_reference.py: network access refused")


socket.socket.connect = _no_network
socket.create_connection = _no_network

import anndata  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import dynamo as dyn  # noqa: E402
from dynamo.estimation.tsc import estimation_kinetic  # noqa: E402

EXPERIMENTS = {"one-shot": "one-shot", "kinetics": "kin", "kin": "kin", "degradation": "deg", "deg": "deg"}


def scalar_init_cond(self, x_data):
    # dynamo's guestimate_init_cond (max over time, clipped at 1e-4) as the scalar that
    # Estimation_DeterministicDegNosp.auto_fit expects.
    return float(np.clip(np.max(x_data), 1e-4, np.inf))


estimation_kinetic.Estimation_DeterministicDegNosp.guestimate_init_cond = scalar_init_cond


def dynamo_input(src, experiment, dtype):
    genes = np.asarray(src.var["use_for_dynamics"], dtype=bool)
    obs = pd.DataFrame({"labeling_time": np.asarray(src.obs["labeling_time"], dtype=np.float64)}, index=src.obs_names)
    var = pd.DataFrame({"use_for_pca": genes}, index=src.var_names)
    a = anndata.AnnData(X=sp.csr_matrix(np.asarray(src.layers["M_t"], dtype=np.float32)), obs=obs, var=var)
    keys = ["M_n", "M_t"] + (["M_tn", "M_nn", "M_tt"] if experiment == "one-shot" else [])
    for k in keys:
        a.layers[k] = sp.csr_matrix(np.asarray(src.layers[k], dtype=np.float32).astype(dtype))
    a.obsp["moments_con"] = sp.csr_matrix(src.obsp["moments_con"])
    a.uns["pp"] = {
        "tkey": "labeling_time",
        "experiment_type": experiment,
        "has_splicing": False,
        "has_labeling": True,
        "splicing_labeling": False,
        "has_protein": False,
        "X_norm_method": None,
        "layers_norm_method": None,
    }
    return a


def run(src, experiment, dtype):
    a = dynamo_input(src, experiment, dtype)
    kwargs = {"est_method": "twostep"} if experiment == "kin" else {}
    dyn.tl.dynamics(a, tkey="labeling_time", **kwargs)
    return a


def dense(m):
    return np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float64)


def results(a, prefix, out):
    p = dyn.tl.get_vel_params(a)
    n_genes = a.n_vars
    col = lambda name: p[name].to_numpy(dtype=np.float64) if name in p.columns else np.full(n_genes, np.nan)
    out.var[prefix + "gamma"] = col("gamma")
    out.var[prefix + "alpha"] = col("alpha")
    out.var[prefix + "half_life"] = col("half_life")
    if "gamma_k" in p.columns and a.uns["dynamics"]["experiment_type"] == "one-shot":
        out.var[prefix + "gamma_k"] = col("gamma_k")
    for layer in ("velocity_N", "velocity_T"):
        if layer in a.layers:
            out.layers[prefix + layer] = dense(a.layers[layer])


def main():
    args = [x for x in sys.argv[1:] if not x.startswith("--")]
    float32 = "--float32" in sys.argv[1:]
    if len(args) != 3 or args[2] not in EXPERIMENTS:
        sys.exit(__doc__.rsplit("\n\n", 1)[-1])
    inp, outp, experiment = args[0], args[1], EXPERIMENTS[args[2]]
    dtype = np.float32 if float32 else np.float64
    src = anndata.read_h5ad(inp)
    out = anndata.AnnData(
        X=np.zeros((src.n_obs, src.n_vars), dtype=np.float32),
        obs=pd.DataFrame(index=src.obs_names),
        var=pd.DataFrame(index=src.var_names),
    )
    a = run(src, experiment, dtype)
    results(a, "dyn_", out)
    out.var["dyn_use_for_dynamics"] = np.asarray(a.var["use_for_dynamics"], dtype=bool)
    d = a.uns["dynamics"]
    if experiment == "kin":
        # The per-time slopes K_j of the two-step estimate (uns["dynamics"]["X_data"], fitted
        # genes in order).
        fitted = np.where(out.var["dyn_use_for_dynamics"].to_numpy())[0]
        kmin, kmax = np.full(src.n_vars, np.nan), np.full(src.n_vars, np.nan)
        for j, kj in zip(fitted, d["X_data"]):
            kmin[j], kmax[j] = np.min(kj), np.max(kj)
        out.var["dyn_k_min"], out.var["dyn_k_max"] = kmin, kmax
    runs = "stock"
    out.uns["dyn_dynamo_version"] = str(dyn.__version__)
    out.uns["dyn_experiment_type"] = str(d["experiment_type"])
    out.uns["dyn_model"] = str(d["model"])
    out.uns["dyn_est_method"] = str(d["est_method"])
    out.uns["dyn_moments_dtype"] = np.dtype(dtype).name
    out.uns["dyn_runs"] = runs
    out.write_h5ad(outp)
    print(
        "ok",
        experiment,
        d["model"],
        d["est_method"],
        int(out.var["dyn_use_for_dynamics"].sum()),
        "genes;",
        "layers:",
        ", ".join(out.layers.keys()) or "none",
    )


if __name__ == "__main__":
    main()
