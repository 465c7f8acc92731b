//! Parity of the estimators with CellRank 2.3.3 on `../shared/reference` (same transition
//! matrix): Schur eigenvalues within 1e-8, the same terminal states, memberships matched up to
//! permutation.

use cellfate::estimators::{compute_schur, SchurMethod, SchurOptions};
use cellfate::io::{Element, H5adReader};

use crate::common::require_shared;

fn reference(name: &str) -> Option<H5adReader> {
    let dir = require_shared(&format!("reference/{name}"))?;
    Some(H5adReader::open(dir.join("reference.h5ad")).expect("reference opens"))
}

fn f64s(r: &H5adReader, slot: &str) -> Vec<f64> {
    match r.read(slot).expect(slot) {
        Element::Dense(d) => d.data.to_f64(),
        other => panic!("{slot}: {other:?}"),
    }
}

/// Eigenvalues of the 21-vector Schur decomposition of CellRank's `T_combined` on pancreas.
///
/// The first 15 eigenvalues (up to the spectral gap after 0.739) are well conditioned and
/// agree with CellRank within 1e-8 (in fact ~1e-10). The last three complex pairs are nearly
/// defective (|Im| ~ 0.008–0.05 inside a cluster): their computed values move by ~1e-7 with
/// rounding alone — our dense LAPACK path differs from CellRank's dense result by 1.1e-7 just
/// as our Krylov path does, while our two paths agree within 1e-8. So the tolerance there is
/// 2e-7, and the two paths are compared with each other within 2e-8.
#[test]
fn pancreas_schur_eigenvalues_match_cellrank() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let t = r.transition_matrix("T_combined").expect("T_combined");
    let re = f64s(&r, "uns/schur_eigenvalues_real");
    let im = f64s(&r, "uns/schur_eigenvalues_imag");
    let opts = |method| SchurOptions {
        n_components: 20,
        method,
        dense_max_cells: 5000,
        ..Default::default()
    };
    let k = compute_schur(&t, None, &opts(SchurMethod::Krylov)).expect("krylov");
    let d = compute_schur(&t, None, &opts(SchurMethod::Dense)).expect("dense");
    for s in [&k, &d] {
        assert_eq!(
            s.m(),
            re.len(),
            "CellRank used {} vectors (20 would split a pair)",
            re.len()
        );
        assert!(s
            .note
            .as_deref()
            .unwrap_or("")
            .contains("complex-conjugate"));
        for (i, a) in s.eigenvalues.iter().enumerate() {
            let diff = (a.0 - re[i]).abs().max((a.1.abs() - im[i].abs()).abs());
            let tol = if i < 15 { 1e-8 } else { 2e-7 };
            assert!(
                diff <= tol,
                "{}: eigenvalue {i} differs by {diff:e} > {tol:e}",
                s.method
            );
        }
    }
    for (i, (a, b)) in k.eigenvalues.iter().zip(&d.eigenvalues).enumerate() {
        let diff = (a.0 - b.0).abs().max((a.1 - b.1).abs());
        assert!(diff <= 2e-8, "dense vs krylov eigenvalue {i}: {diff:e}");
    }
}
