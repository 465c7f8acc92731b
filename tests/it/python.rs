//! Interoperability with Python anndata: a file written by cellfate is read back by
//! `anndata.read_h5ad`, and a file written by anndata is read by cellfate.
//!
//! The interpreter is `$CELLFATE_PYTHON`, else `.venv/bin/python` in the repository (which
//! `.ci/run` creates with anndata). Without anndata the test is skipped locally with a message
//! and fails under `CI=true`.

use std::path::PathBuf;
use std::process::Command;

use cellfate::io::{Categorical, DataFrame, Element, H5adEdit, H5adReader, NumVec, SparseArray};
use cellfate::kernels::Csr;

use crate::common::{succeed, tempdir};

pub(crate) fn python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("CELLFATE_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")])
        .collect();
    crate::common::find_python(
        candidates,
        "anndata",
        "Python with anndata not found; .ci/run must create .venv with anndata",
        "no Python with anndata (set CELLFATE_PYTHON or run scripts/setup.sh)",
    )
}

fn run_py(py: &PathBuf, script: &str) -> String {
    let out = Command::new(py)
        .args(["-c", script])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn anndata_reads_what_cellfate_writes() {
    let Some(py) = python() else {
        return;
    };
    let d = tempdir();
    let base = d.path().join("base.h5ad");
    let n = 5;
    let x = Csr::from_triplets(n, 3, &[(0, 0, 1.0), (2, 1, 2.0), (4, 2, 3.5)]).expect("x");
    let obs = DataFrame {
        index_name: "_index".into(),
        index: (0..n).map(|i| format!("cell_{i}")).collect(),
        columns: vec![(
            "clusters".into(),
            Element::Categorical(Categorical::from_labels(
                &[
                    Some("Ductal".into()),
                    Some("Alpha".into()),
                    None,
                    Some("Épsilon ✓".into()),
                    Some("Alpha".into()),
                ],
                None,
            )),
        )],
    };
    cellfate::io::write_new(
        &base,
        &[
            ("X".into(), Element::Sparse(SparseArray::from_csr(&x))),
            ("obs".into(), Element::DataFrame(obs)),
            (
                "var".into(),
                Element::DataFrame(DataFrame::with_index(vec![
                    "a".into(),
                    "b".into(),
                    "c".into(),
                ])),
            ),
        ],
    )
    .expect("write");
    let t = Csr::from_triplets(
        n,
        n,
        &[
            (0, 1, 0.5),
            (0, 2, 0.5),
            (1, 0, 1.0),
            (2, 2, 1.0),
            (3, 4, 1.0),
            (4, 3, 1.0),
        ],
    )
    .expect("t");
    let out = d.path().join("out.h5ad");
    let mut edit = H5adEdit::new(&base);
    edit.set("obsp/T_fwd", Element::Sparse(SparseArray::from_csr(&t)))
        .set(
            "obsm/lineages_fwd",
            Element::from_f64_matrix(n, 2, vec![0.25; 2 * n]),
        )
        .set(
            "uns/lineages_fwd_names",
            Element::from_strings(vec!["Alpha".into(), "Beta".into()]),
        )
        .set(
            "uns/T_fwd_params",
            Element::Dict(vec![
                (
                    "params".into(),
                    Element::Dict(vec![(
                        "softmax_scale".into(),
                        Element::Scalar(NumVec::F64(vec![4.0])),
                    )]),
                ),
                (
                    "init".into(),
                    Element::Dict(vec![(
                        "backward".into(),
                        Element::Scalar(NumVec::Bool(vec![false])),
                    )]),
                ),
            ]),
        )
        .set(
            "obs/score",
            Element::from_f64(vec![0.1, 0.2, f64::NAN, 0.4, 0.5]),
        );
    edit.write_to(&out).expect("edit");
    let script = format!(
        r#"
import anndata, numpy as np, scipy.sparse as sp
a = anndata.read_h5ad({path:?})
assert a.shape == (5, 3), a.shape
assert sp.issparse(a.X) and a.X[4, 2] == 3.5
assert list(a.obs_names) == [f"cell_{{i}}" for i in range(5)]
c = a.obs["clusters"]
assert str(c.dtype) == "category", c.dtype
assert list(c.cat.categories) == ["Ductal", "Alpha", "Épsilon ✓"], list(c.cat.categories)
assert c.isna().tolist() == [False, False, True, False, False]
T = a.obsp["T_fwd"]
assert sp.issparse(T) and np.allclose(np.asarray(T.sum(1)).ravel(), 1.0)
assert a.obsm["lineages_fwd"].shape == (5, 2)
assert list(a.uns["lineages_fwd_names"]) == ["Alpha", "Beta"]
assert a.uns["T_fwd_params"]["params"]["softmax_scale"] == 4.0
assert np.isnan(a.obs["score"].iloc[2]) and a.obs["score"].iloc[4] == 0.5
a.write_h5ad({back:?})
print("ok")
"#,
        path = out.display().to_string(),
        back = d.path().join("python.h5ad").display().to_string(),
    );
    assert_eq!(run_py(&py, &script).trim(), "ok");
    // And cellfate reads what anndata re-wrote.
    let r = H5adReader::open(d.path().join("python.h5ad")).expect("open python output");
    assert_eq!(r.transition_matrix("T_fwd").expect("T").n_cells(), 5);
    let Element::Categorical(c) = r.column("obs", "clusters").expect("clusters") else {
        panic!("categorical")
    };
    assert_eq!(c.to_labels()[3].as_deref(), Some("Épsilon ✓"));
}

/// CellRank 2.3.3 itself reads a `cellfate run` output back: `GPCCA.from_adata` restores the
/// macrostates, terminal states, fate probabilities, coarse T, drivers and eigendecomposition,
/// and `PrecomputedKernel` reads `obsp["T_fwd"]`. Uses `.venv-cellrank` (created by
/// scripts/setup.sh in CI or with CELLFATE_CELLRANK=1); skipped locally without it.
#[test]
fn cellrank_reads_what_cellfate_writes() {
    let Some(py) = crate::common::cellrank_python() else {
        return;
    };
    let d = tempdir();
    let out = d.path().join("demo.h5ad");
    succeed(
        crate::common::cellfate()
            .args(["run", "--demo", "--demo-cells", "800", "-q", "-o"])
            .arg(&out),
    );
    let script = format!(
        r#"
import warnings; warnings.filterwarnings("ignore")
import anndata, cellrank as cr, numpy as np
a = anndata.read_h5ad({path:?})
g = cr.estimators.GPCCA.from_adata(a, obsp_key="T_fwd")
assert g.macrostates is not None and len(g.macrostates.cat.categories) >= 3
assert sorted(g.terminal_states.cat.categories) == ["Alpha", "Beta", "Gamma"], g.terminal_states.cat.categories
fp = g.fate_probabilities
assert fp is not None and fp.shape == (a.n_obs, 3) and np.allclose(np.asarray(fp).sum(1), 1.0)
assert g.coarse_T is not None and g.lineage_drivers is not None
assert "D" in g.eigendecomposition and np.iscomplexobj(g.eigendecomposition["D"])
pk = cr.kernels.PrecomputedKernel(a, obsp_key="T_fwd")
assert pk.transition_matrix.shape == (a.n_obs, a.n_obs)
print("ok")
"#,
        path = out.display().to_string()
    );
    let res = Command::new(&py)
        .args(["-c", &script])
        .output()
        .expect("python runs");
    assert!(
        res.status.success() && String::from_utf8_lossy(&res.stdout).trim().ends_with("ok"),
        "{}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}
