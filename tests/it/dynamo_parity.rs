//! Parity with dynamo 1.5.3 (issue 21): `scripts/dynamo_vectorfield_reference.py` runs dynamo's
//! `vf.VectorField` (SparseVFC, M = 100), `vf.divergence`, `vf.curl`, `vf.topography` and
//! `ext.ddhodge` on an analytic 2-D field in `.venv-dynamo` (scripts/setup.sh makes it under
//! CI=true or with CELLFATE_DYNAMO=1); cellfate then works from dynamo's control points and
//! parameters:
//! - dynamo's field (X_ctrl, C, β) evaluated by [`VectorField`]: f at the cells within 1e-6 of
//!   dynamo's `V`, the analytic Jacobian within 1e-6 of dynamo's `vf.jacobian`, divergence and
//!   curl within 1e-6 of dynamo's (relative to their largest value);
//! - SparseVFC refitted with dynamo's control points and β, velocities unscaled as dynamo: the
//!   learned velocities within the tolerance measured (dynamo solves the M-step's normal
//!   equations, cellfate the system itself);
//! - ddhodge with dynamo's unit-vector flow on the same 30-NN graph: Spearman ≥ 0.999 with
//!   dynamo's potential;
//! - the same fixed points within 1e-3 and of the same types.

use std::path::PathBuf;

use cellfate::io::{Element, H5adReader};
use cellfate::vectorfield::potential::knn;
use cellfate::vectorfield::{
    cell_calculus, fixed_points, hodge_potential, sparse_vfc, EdgeFlow, PotentialOptions,
    SparseVfcOptions, TopographyOptions, VectorField,
};

use crate::common::{find_python, spearman, tempdir};

fn dynamo_python() -> Option<PathBuf> {
    find_python(
        [PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-dynamo/bin/python")],
        "dynamo",
        "dynamo venv missing; scripts/setup.sh creates .venv-dynamo under CI=true",
        "no .venv-dynamo (run CELLFATE_DYNAMO=1 bash scripts/setup.sh)",
    )
}

fn numbers(r: &H5adReader, slot: &str) -> (Vec<usize>, Vec<f64>) {
    match r.read(slot).unwrap_or_else(|e| panic!("{slot}: {e}")) {
        Element::Dense(a) => (a.shape.clone(), a.data.to_f64()),
        Element::Scalar(v) => (vec![1], v.to_f64()),
        other => panic!("{slot}: {other:?}"),
    }
}

fn rel_max(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn vector_field_calculus_potential_and_fixed_points_match_dynamo() {
    let Some(py) = dynamo_python() else {
        return;
    };
    let d = tempdir();
    let out = d.path().join("dynamo.h5ad");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/dynamo_vectorfield_reference.py");
    let res = std::process::Command::new(&py)
        .arg(&script)
        .arg(&out)
        .current_dir(d.path())
        .output()
        .expect("dynamo");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let r = H5adReader::open(&out).expect("dynamo's output");
    let (_, x) = numbers(&r, "obsm/X_umap");
    let (_, y) = numbers(&r, "obsm/velocity_umap");
    let (cs, ctrl) = numbers(&r, "uns/VecFld_umap/X_ctrl");
    let (_, coef) = numbers(&r, "uns/VecFld_umap/C");
    let (_, beta) = numbers(&r, "uns/VecFld_umap/beta");
    let (_, v_dyn) = numbers(&r, "uns/VecFld_umap/V");
    let n = x.len() / 2;
    assert_eq!(cs, vec![100, 2]);
    // 1. dynamo's field, our evaluation and calculus.
    let field = VectorField::new(2, ctrl.clone(), coef, beta[0]).expect("dynamo's field");
    let v = field.eval_rows(&x);
    let ev = rel_max(&v, &v_dyn);
    let calc = cell_calculus(&field, &x);
    let div = rel_max(
        &calc.divergence,
        &r.obs_f64("divergence_umap").expect("div"),
    );
    let curl = rel_max(&calc.curl, &r.obs_f64("curl_umap").expect("curl"));
    // The Jacobians at the cells: dynamo's `vf.jacobian` (d × d × cells, J[k][l] = ∂f_k/∂x_l)
    // against the analytic Jacobian of the same field.
    let (jshape, jdyn) = numbers(&r, "uns/jacobian_umap/jacobian");
    let (_, idx) = numbers(&r, "uns/jacobian_umap/cell_idx");
    assert_eq!(jshape, vec![2, 2, idx.len()]);
    let m = idx.len();
    let mut ours_j = Vec::with_capacity(4 * m);
    let mut theirs_j = Vec::with_capacity(4 * m);
    for (q, &c) in idx.iter().enumerate() {
        let c = c as usize;
        let j = field.jacobian(&x[2 * c..2 * c + 2]);
        for k in 0..2 {
            for l in 0..2 {
                ours_j.push(j[k * 2 + l]);
                theirs_j.push(jdyn[(k * 2 + l) * m + q]);
            }
        }
    }
    let jac = rel_max(&ours_j, &theirs_j);
    eprintln!(
        "dynamo's field: f {ev:.1e}, Jacobian {jac:.1e} ({m} cells), divergence {div:.1e}, curl {curl:.1e} (relative)"
    );
    assert!(
        ev <= 1e-6 && jac <= 1e-6 && div <= 1e-6 && curl <= 1e-6,
        "{ev} {jac} {div} {curl}"
    );
    // 2. SparseVFC with dynamo's control points and β.
    let ctrl_idx: Vec<usize> = ctrl
        .chunks_exact(2)
        .map(|c| {
            (0..n)
                .find(|&i| x[2 * i] == c[0] && x[2 * i + 1] == c[1])
                .expect("a control point is a cell")
        })
        .collect();
    let ours = sparse_vfc(
        &x,
        &y,
        2,
        &SparseVfcOptions {
            ctrl_idx: Some(ctrl_idx),
            beta: Some(beta[0]),
            normalize_velocity: false,
            ..Default::default()
        },
    )
    .expect("refit");
    // Both EMs stop at 30 iterations unconverged (dynamo's relative energy change jumps to 3.0
    // at its 23rd), and dynamo's normal equations square a condition number of ~1e8: the two
    // fits are compared with the true field, which they both estimate.
    let truth: Vec<f64> = x
        .chunks_exact(2)
        .flat_map(|c| {
            let (gx, gy) = (4.0 * c[0] * (c[0] * c[0] - 1.0), 2.0 * c[1]);
            [-gx - 0.5 * gy, -gy + 0.5 * gx]
        })
        .collect();
    let rms = |v: &[f64]| {
        let e: f64 = v.iter().zip(&truth).map(|(a, b)| (a - b).powi(2)).sum();
        let t: f64 = truth.iter().map(|b| b * b).sum();
        (e / t).sqrt()
    };
    let (e_ours, e_dyn) = (rms(&ours.v), rms(&v_dyn));
    let median_gap = {
        let mut g: Vec<f64> = ours
            .v
            .chunks_exact(2)
            .zip(v_dyn.chunks_exact(2))
            .map(|(a, b)| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt())
            .collect();
        g.sort_by(f64::total_cmp);
        g[g.len() / 2]
    };
    eprintln!(
        "SparseVFC refitted on dynamo's control points and beta ({} iterations, sigma2 {:.4}): relative RMS error against the true field {e_ours:.4} (dynamo's: {e_dyn:.4}); median |f - f_dynamo| {median_gap:.2e}, largest relative {:.1e}",
        ours.iterations,
        ours.sigma2,
        rel_max(&ours.v, &v_dyn)
    );
    assert!(e_ours <= e_dyn * 1.05, "{e_ours} vs dynamo's {e_dyn}");
    // 3. ddhodge with dynamo's flow on the 30-NN graph.
    let p = hodge_potential(
        &x,
        &v_dyn,
        2,
        &knn(&x, 2, 30),
        &PotentialOptions {
            flow: EdgeFlow::Unit,
            ..Default::default()
        },
    )
    .expect("potential");
    let dyn_p = r.obs_f64("umap_ddhodge_potential").expect("ddhodge");
    let s = spearman(&p.ddhodge_potential, &dyn_p);
    eprintln!("ddhodge potential: Spearman {s:.6} with dynamo's");
    assert!(s >= 0.999, "{s}");
    // 4. Fixed points.
    let (xs, xss) = numbers(&r, "uns/VecFld_umap/Xss");
    let (_, ftype) = numbers(&r, "uns/VecFld_umap/ftype");
    let fps = fixed_points(&field, &x, &TopographyOptions::default()).expect("fixed points");
    eprintln!(
        "dynamo: {xss:?} {ftype:?}; cellfate: {:?}",
        fps.iter().map(|p| (&p.x, p.kind)).collect::<Vec<_>>()
    );
    assert_eq!(fps.len(), xs[0], "{fps:?}");
    for (k, t) in ftype.iter().enumerate() {
        let (a, b) = (xss[2 * k], xss[2 * k + 1]);
        let ours = fps
            .iter()
            .find(|p| ((p.x[0] - a).powi(2) + (p.x[1] - b).powi(2)).sqrt() <= 1e-3)
            .unwrap_or_else(|| panic!("dynamo's fixed point ({a}, {b}) not found"));
        assert_eq!(ours.kind.ftype() as f64, *t);
    }
}
