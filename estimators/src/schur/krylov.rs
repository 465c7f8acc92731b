//! Krylov–Schur (Stewart, SIAM J. Matrix Anal. Appl. 23, 2001): the dominant invariant
//! subspace of a large sparse operator from an Arnoldi basis restarted through the Schur form
//! of its projection.
//!
//! Why not ARPACK's implicitly restarted Arnoldi here: on the real 1,000,000-cell chain of
//! the demo, ARPACK spent most of its 331 s outside the matrix products, in single-threaded
//! BLAS-2 passes over the basis (the implicit shifts apply one column of Q at a time, so the
//! n × ncv basis is read about nev times per restart), and it converges each Ritz value to
//! machine precision. Here
//! - the basis is stored in blocks of `basis::BLOCK` rows (shared with GMRES) (each block a small column-major
//!   matrix), so that every pass over it runs over the blocks in parallel, and the restart
//!   `V ← V Z` is a matrix product per block, in place (the basis is read once);
//! - the Gram–Schmidt step is classical, with a second pass only when the first cancelled
//!   most of the vector (the DGKS criterion ARPACK uses: on the 1M demo chain 391 of 496
//!   vectors needed one pass), the update of the first pass fused with the projections of
//!   the second;
//! - a restart keeps more vectors than wanted (halfway to the subspace size, Stewart's
//!   thick restart), which speeds up convergence on clustered spectra;
//! - convergence is tested on the whole wanted block: `‖bₖ‖ ≤ tol · max(1, |λ₁|)`, where
//!   `A V Zₖ = V Zₖ Sₖ + v bₖᵀ`, so `‖A Q − Q R‖_F = ‖bₖ‖` for the returned `Q`, `R`.
//!
//! Every sum runs in a fixed order over fixed blocks, so the result does not depend on the
//! number of threads.

use nalgebra::{DMatrix, DMatrixView, DMatrixViewMut};
use rayon::prelude::*;

use super::error::SchurError;
use super::{ffi, sort_schur, Which};
use crate::basis::{dot, orthogonalize, Basis};

/// Default block tolerance when the options ask for 0.
pub(crate) const DEFAULT_TOL: f64 = 1e-12;

/// The converged Schur vectors: `q` (n × k, column-major) and the work done.
pub(crate) struct KrylovResult {
    pub q: Vec<f64>,
    pub k: usize,
    pub restarts: usize,
    pub matvecs: usize,
}

/// A deterministic pseudo-random vector (splitmix64) for a breakdown of the recurrence.
fn fresh_vector(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect()
}

/// `V[:, 0..l] ← V[:, 0..p] Z[:, 0..l]` block by block, in place, then column `p` moved to
/// column `l` (when `move_last`).
fn rotate(v: &mut Basis, p: usize, z: &DMatrix<f64>, l: usize, move_last: bool) {
    let zl = z.columns(0, l);
    v.blocks_mut().for_each(|(_, len, d)| {
        let vb = DMatrixView::from_slice(&d[..len * p], len, p);
        let prod = vb * zl;
        let mut out = DMatrixViewMut::from_slice(&mut d[..len * l], len, l);
        out.copy_from(&prod);
        if move_last {
            d.copy_within(p * len..(p + 1) * len, l * len);
        }
    });
}

/// The `nev` dominant Schur vectors of `op` (by `which`) with a Krylov subspace of `ncv`
/// vectors, from `start`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn krylov_schur(
    n: usize,
    nev: usize,
    ncv: usize,
    which: Which,
    tol: f64,
    max_restarts: usize,
    start: &[f64],
    op: &mut dyn FnMut(&[f64], &mut [f64]),
) -> Result<KrylovResult, SchurError> {
    if !(nev >= 1 && nev + 2 <= ncv && ncv <= n) {
        return Err(SchurError::ArpackDimensions { n, nev, ncv });
    }
    let tol = if tol > 0.0 { tol } else { DEFAULT_TOL };
    let p = ncv;
    let mut v = Basis::new(n, p + 1);
    // H: (p + 1) × p, column-major.
    let mut h = DMatrix::<f64>::zeros(p + 1, p);
    let mut w = start.to_vec();
    let norm = dot(&w, &w).sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        w = fresh_vector(n, 0);
    }
    let norm = dot(&w, &w).sqrt();
    w.iter_mut().for_each(|x| *x /= norm);
    v.set_column(0, &w);
    let mut x = vec![0.0; n];
    let mut l = 0; // columns of the current Krylov–Schur decomposition
    let mut matvecs = 0usize;
    let mut restarts = 0usize;
    cellfate_kernels::progress::start("Schur: Krylov matrix-vector products", 0);
    let result = loop {
        // Expand to p columns.
        for j in l..p {
            v.get_column(j, &mut x);
            op(&x, &mut w);
            matvecs += 1;
            cellfate_kernels::progress::advance(1);
            if cellfate_kernels::interrupt::requested() {
                cellfate_kernels::progress::finish();
                return Err(SchurError::Interrupted);
            }
            let (coef, mut beta) = orthogonalize(&v, j + 1, &mut w);
            let scale = coef.iter().map(|c| c * c).sum::<f64>().sqrt() + beta;
            for (i, c) in coef.iter().enumerate() {
                h[(i, j)] += c;
            }
            if beta <= 1e-10 * scale {
                // An invariant subspace: continue with a vector orthogonal to the basis.
                w = fresh_vector(n, (j + 1 + restarts * p) as u64);
                let (_, b1) = orthogonalize(&v, j + 1, &mut w);
                let (_, b2) = orthogonalize(&v, j + 1, &mut w);
                let _ = b1;
                w.iter_mut().for_each(|x| *x /= b2);
                beta = 0.0;
            } else {
                w.iter_mut().for_each(|x| *x /= beta);
            }
            h[(j + 1, j)] = beta;
            v.set_column(j + 1, &w);
        }
        // Schur form of the projection, the wanted eigenvalues first.
        let mut a: Vec<f64> = h.rows(0, p).iter().copied().collect();
        let (mut z, mut wr, mut wi) = ffi::dgees(p, &mut a)?;
        let keep_target = (nev + (p - nev) / 2).clamp(nev, p - 2);
        let keep = sort_schur(p, &mut a, &mut z, &mut wr, &mut wi, keep_target, which)?;
        let k = {
            // nev, or nev + 1 when nev would split a pair in the sorted form.
            let mut k = nev;
            if k < p && a[k + (k - 1) * p] != 0.0 {
                k += 1;
            }
            k
        };
        let zm = DMatrix::from_column_slice(p, p, &z);
        let b: Vec<f64> = (0..p)
            .map(|j| (0..p).map(|i| h[(p, i)] * zm[(i, j)]).sum())
            .collect();
        let resid = b[..k].iter().map(|x| x * x).sum::<f64>().sqrt();
        let lambda = wr[0].hypot(wi[0]).max(1.0);
        restarts += 1;
        if resid <= tol * lambda {
            // Q = V Zₖ.
            rotate(&mut v, p, &zm, k, false);
            let mut q = vec![0.0; n * k];
            for j in 0..k {
                v.get_column(j, &mut x);
                q[j * n..(j + 1) * n].copy_from_slice(&x);
            }
            break KrylovResult {
                q,
                k,
                restarts,
                matvecs,
            };
        }
        if restarts > max_restarts {
            cellfate_kernels::progress::finish();
            return Err(SchurError::NotConverged {
                converged: b[..k]
                    .iter()
                    .take_while(|x| x.abs() <= tol * lambda)
                    .count(),
                requested: nev,
                iterations: restarts,
                matvecs,
            });
        }
        // Thick restart: keep the first `l` Schur vectors (a pair is never split).
        l = keep;
        rotate(&mut v, p, &zm, l, true);
        let mut hn = DMatrix::<f64>::zeros(p + 1, p);
        for j in 0..l {
            for i in 0..=(j + 1).min(l - 1) {
                hn[(i, j)] = a[i + j * p];
            }
            hn[(l, j)] = b[j];
        }
        h = hn;
    };
    cellfate_kernels::progress::finish();
    Ok(result)
}
