//! The GPCCA rotation matrix: its free parameters, the feasibility completion and the
//! crispness objective (shared by [`super::fit`] and the optimisers in [`super::optimize`]).

use nalgebra::DMatrix;

use super::error::{GpccaError, Infeasibility};
use super::optimize::completion_maxima;

/// Completes a rotation matrix so that `χ = X A` has rows summing to 1 and non-negative
/// entries, then normalises it (pyGPCCA's `_fill_matrix`). Only `A[1.., 1..]` is read.
pub fn fill_matrix(a: &mut DMatrix<f64>, x: &DMatrix<f64>) -> Result<(), GpccaError> {
    let m = a.nrows();
    for i in 1..m {
        let s: f64 = (1..m).map(|j| a[(i, j)]).sum();
        a[(i, 0)] = -s;
    }
    // a[0, j] = max_l −Σ_{i ≥ 1} X_li A_ij, summed in index order (blocked, same bits).
    let (best, _) = completion_maxima(x, &a.rows(1, m - 1).clone_owned());
    for (j, b) in best.into_iter().enumerate() {
        a[(0, j)] = b;
    }
    let s: f64 = a.row(0).sum();
    *a /= s;
    if let Some(column) = (0..m).find(|&j| a[(0, j)] == 0.0) {
        return Err(Infeasibility::ZeroFirstRow { column }.into());
    }
    if let Some(column) = (0..m).find(|&j| a[(0, j)] < 0.0) {
        return Err(Infeasibility::NegativeFirstRow {
            column,
            value: a[(0, column)],
        }
        .into());
    }
    Ok(())
}

/// The objective `f = m − Σ_j (Σ_i A_ij²) / A_0j` of a completed rotation matrix.
pub fn objective_of(a: &DMatrix<f64>) -> f64 {
    let m = a.nrows();
    let mut tr = 0.0;
    for j in 0..m {
        let col: f64 = (0..m).map(|i| a[(i, j)] * a[(i, j)]).sum();
        tr += col / a[(0, j)];
    }
    m as f64 - tr
}

/// Embeds the free parameters (row-major `(m−1)²`) into `A[1.., 1..]` of a copy of `base`.
pub fn embed(alpha: &[f64], base: &DMatrix<f64>) -> DMatrix<f64> {
    let m = base.nrows();
    let k = m - 1;
    let mut a = base.clone();
    for i in 0..k {
        for j in 0..k {
            a[(i + 1, j + 1)] = alpha[i * k + j];
        }
    }
    a
}
