//! GPCCA (generalised Perron cluster cluster analysis; Reuter et al. 2018, Röblitz & Weber
//! 2013), re-derived from the papers and pyGPCCA 1.0.4's documented behaviour:
//!
//! 1. From the sorted Schur vectors `Q` of `P̄`, an η-orthonormal basis `X` of the invariant
//!    subspace with a constant first column ([`schur_to_x`]).
//! 2. The inner simplex algorithm picks `m` extreme cells; `A₀ = pinv(X[index, :])` ([`isa`]).
//! 3. The rotation `A` is optimised so that the memberships `χ = X A` are as crisp as possible
//!    (objective `f = m − Σ_j (Σ_i A_ij²) / A_0j`, feasibility completed by [`fill_matrix`]):
//!    with Nelder–Mead exactly as pyGPCCA calls scipy's `fmin` (for parity), or with a
//!    gradient-based optimiser with an analytic gradient and seeded multi-start ([`Optimizer`]).
//! 4. Memberships, crispness, minChi, the coarse-grained transition matrix and distributions.
//!
//! Deviations (stated): the tolerance for "significantly negative" memberships scales with the
//! problem (`max(1e4 ε, 1e3 ε · max|X|·max|A|)`) instead of the fixed `−1e4 ε` that makes
//! CellRank fail on harmless rounding (CellRank #781, pyGPCCA #27/#33); conjugate pairs are
//! checked through `|Im λ|` (pyGPCCA PR #62).

mod error;
pub mod optimize;
mod rotation;

use nalgebra::DMatrix;
use rayon::prelude::*;

use cellfate_kernels::TransitionMatrix;

use crate::schur::Schur;

pub use error::{BasisError, GpccaError, Infeasibility, SimplexError, StationaryError};
pub use optimize::{Candidate, Optimizer, OptimizerReport};

pub use rotation::{embed, fill_matrix, objective_of};

const EPS: f64 = f64::EPSILON;
/// Largest `max |Pᵀπ − π|` accepted for the stationary distribution.
const STATIONARY_TOL: f64 = 1e-9;
/// A second eigenvalue this close to 1 leaves the stationary distribution undetermined.
const NEARLY_REDUCIBLE: f64 = 1e-10;

/// `X`: an η-orthonormal basis (n × k, `Xᵀ diag(η) X = I`) of the Schur subspace with a constant
/// first column of ones (pyGPCCA's `_do_schur` + modified Gram–Schmidt).
pub fn schur_to_x(schur: &Schur) -> Result<DMatrix<f64>, GpccaError> {
    let q0 = &schur.q;
    let k = q0.ncols();
    let sqrt_eta: Vec<f64> = schur.eta.iter().map(|e| e.sqrt()).collect();
    // Constant-column detection: the last column equal to its mean within (1e-6, 1e-5).
    let mut max_i = 0;
    for j in 0..k {
        let col = q0.column(j);
        let c = col.mean();
        if col.iter().all(|&v| (v - c).abs() <= 1e-5 + 1e-6 * c.abs()) {
            max_i = j;
        }
    }
    let mut q = q0.clone();
    let c0 = q.column(0).clone_owned();
    q.set_column(max_i, &c0);
    for (l, s) in sqrt_eta.iter().enumerate() {
        q[(l, 0)] = *s;
    }
    // The subspace must not change by moving √η in.
    let sin = subspace_sin(q0, &q);
    if sin > 1e-7 {
        return Err(BasisError::DominantNotSqrtEta { sin }.into());
    }
    // Modified Gram–Schmidt (Euclidean), column by column (column `i` borrowed beside
    // column `j`, not copied).
    for j in 0..k {
        for i in 0..j {
            let r = q.column(i).dot(&q.column(j));
            let (qi, mut qj) = q.columns_range_pair_mut(i, j);
            qj.axpy(-r, &qi, 1.0);
        }
        let nrm = q.column(j).norm();
        if nrm <= 0.0 {
            return Err(BasisError::LinearlyDependent { column: j }.into());
        }
        q.column_mut(j).scale_mut(1.0 / nrm);
    }
    let sin = subspace_sin(q0, &q);
    if sin > 1e-7 {
        return Err(BasisError::SubspaceChanged { sin }.into());
    }
    let mut x = q;
    for mut col in x.column_iter_mut() {
        for (v, s) in col.iter_mut().zip(&sqrt_eta) {
            *v /= s;
        }
    }
    // Checks: first column ≈ 1, Xᵀ D X ≈ I.
    if let Some(row) = x
        .column(0)
        .iter()
        .position(|&v| (v - 1.0).abs() > 1e-8 + 1e-5)
    {
        return Err(BasisError::FirstColumnNotOne {
            row,
            value: x[(row, 0)],
        }
        .into());
    }
    let g = tall_gram(&x, &x, Some(&schur.eta));
    let dev = (g - DMatrix::identity(k, k)).amax();
    if dev > 1e-6 {
        return Err(BasisError::NotEtaOrthonormal { deviation: dev }.into());
    }
    Ok(x)
}

/// Rows per block of [`tall_gram`].
const GRAM_ROWS: usize = 4096;

/// `aᵀ diag(w) b` for tall matrices (`w` = 1 when `None`): one pass over row blocks in
/// parallel, each block's small product summed in block order (the same bits at any thread
/// count). nalgebra's `tr_mul` computes each entry as a dot product over whole columns from
/// memory: for 1,000,000 × 21 Schur vectors, 441 pairs of 8 MB columns (each matrix read 21
/// times) per product.
pub(crate) fn tall_gram(a: &DMatrix<f64>, b: &DMatrix<f64>, w: Option<&[f64]>) -> DMatrix<f64> {
    let (n, ka, kb) = (a.nrows(), a.ncols(), b.ncols());
    assert_eq!(b.nrows(), n, "tall_gram: row counts differ");
    let parts: Vec<DMatrix<f64>> = (0..n.div_ceil(GRAM_ROWS))
        .into_par_iter()
        .map(|blk| {
            let r0 = blk * GRAM_ROWS;
            let len = GRAM_ROWS.min(n - r0);
            let ab = a.rows(r0, len);
            match w {
                None => ab.tr_mul(&b.rows(r0, len)),
                Some(w) => {
                    let mut bw = b.rows(r0, len).clone_owned();
                    for mut col in bw.column_iter_mut() {
                        for (v, wi) in col.iter_mut().zip(&w[r0..r0 + len]) {
                            *v *= wi;
                        }
                    }
                    ab.tr_mul(&bw)
                }
            }
        })
        .collect();
    let mut out = DMatrix::zeros(ka, kb);
    for p in parts {
        out += p;
    }
    out
}

/// Sine of the largest principal angle between the column spaces of two matrices, computed
/// accurately as `‖(I − Q_a Q_aᵀ) Q_b‖₂` (not as `√(1 − cos²)`, which loses half the digits).
pub fn subspace_sin(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let qa = orth(a);
    let qb = orth(b);
    if qa.ncols() == 0 || qb.ncols() == 0 {
        return 1.0;
    }
    let (big, small) = if qa.ncols() >= qb.ncols() {
        (&qa, &qb)
    } else {
        (&qb, &qa)
    };
    let resid = small - big * tall_gram(big, small, None);
    // The largest singular value, from the k × k Gram matrix (its largest eigenvalue is
    // resolved to relative ε).
    tall_gram(&resid, &resid, None)
        .symmetric_eigenvalues()
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(0.0)
        .sqrt()
        .min(1.0)
}

/// An orthonormal basis of the column space of `a`, as scipy's `orth` gives it (the directions
/// with singular value above `max(n, k)·ε·σ_max`) but from the Gram matrix `aᵀa` (two
/// matrix products and a k × k eigendecomposition instead of an n × k SVD). The Gram matrix resolves singular values only down to about `√ε·σ_max`, so
/// that is the threshold's floor; for bases with a condition number above 100 a second pass
/// re-orthonormalises against the first's rounding (as CholeskyQR2 does). Used for the subspace checks only, where the bases
/// compared are orthonormal or nearly so.
fn orth(a: &DMatrix<f64>) -> DMatrix<f64> {
    let eig = tall_gram(a, a, None).symmetric_eigen();
    let lmax = eig.eigenvalues.iter().copied().fold(0.0f64, f64::max);
    let smax = lmax.sqrt();
    let tol = (a.nrows().max(a.ncols()) as f64 * EPS).max(EPS.sqrt()) * smax;
    let keep: Vec<usize> = (0..eig.eigenvalues.len())
        .filter(|&i| eig.eigenvalues[i].max(0.0).sqrt() > tol)
        .collect();
    if keep.is_empty() {
        return DMatrix::zeros(a.nrows(), 0);
    }
    let w = DMatrix::from_fn(a.ncols(), keep.len(), |i, j| {
        eig.eigenvectors[(i, keep[j])] / eig.eigenvalues[keep[j]].sqrt()
    });
    let q = a * w;
    // One pass leaves an orthogonality error of about ε·cond²: enough below a condition
    // number of 100 (1e-12 against the checks' 1e-7), so only worse bases get the second pass.
    let lmin = keep
        .iter()
        .map(|&i| eig.eigenvalues[i])
        .fold(f64::INFINITY, f64::min);
    if lmin >= 1e-4 * lmax {
        return q;
    }
    let e2 = tall_gram(&q, &q, None).symmetric_eigen();
    let w2 = DMatrix::from_fn(q.ncols(), q.ncols(), |i, j| {
        e2.eigenvectors[(i, j)] / e2.eigenvalues[j].sqrt()
    });
    q * w2
}

/// numpy-style pseudo-inverse (singular values ≤ 1e-15 · s_max treated as zero).
pub fn pinv(a: &DMatrix<f64>) -> DMatrix<f64> {
    let svd = a.clone().svd(true, true);
    let smax = svd.singular_values.iter().copied().fold(0.0, f64::max);
    let cutoff = 1e-15 * smax;
    let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
        return DMatrix::zeros(a.ncols(), a.nrows());
    };
    let mut out = DMatrix::zeros(a.ncols(), a.nrows());
    for (k, &s) in svd.singular_values.iter().enumerate() {
        if s > cutoff {
            out += (vt.row(k).transpose() * u.column(k).transpose()) / s;
        }
    }
    out
}

fn cond(a: &DMatrix<f64>) -> f64 {
    let s = a.singular_values();
    let smax = s.iter().copied().fold(0.0, f64::max);
    let smin = s.iter().copied().fold(f64::INFINITY, f64::min);
    if smin == 0.0 {
        f64::INFINITY
    } else {
        smax / smin
    }
}

/// Inner simplex algorithm on `X[:, :m]`: the indices of `m` extreme cells (vertices).
pub fn isa_indices(x: &DMatrix<f64>) -> Result<Vec<usize>, GpccaError> {
    let (n, m) = (x.nrows(), x.ncols());
    if n < m {
        return Err(SimplexError::MoreStatesThanCells { m, n }.into());
    }
    let range = |j: usize| {
        let c = x.column(j);
        (c.max() - c.min()).abs()
    };
    if ((1.0 + range(0)) - 1.0).abs() > 1e-6 {
        return Err(SimplexError::FirstNotConstant { range: range(0) }.into());
    }
    let columns: Vec<usize> = (1..m).filter(|&j| range(j) <= 1e-6).collect();
    if !columns.is_empty() {
        return Err(SimplexError::ConstantVectors { columns }.into());
    }
    // Row l of the working copy is column l of `o` (contiguous); each row's operations are those
    // of the row-wise loop (sums in index order), so the values are the same.
    let mut o = x.transpose();
    let norm = |v: &[f64]| v.iter().fold(0.0, |s, a| s + a * a).sqrt();
    let mut index = Vec::with_capacity(m);
    // Vertex 0: the row with the largest norm (first maximum).
    let mut best = 0.0;
    let mut i0 = 0;
    for (l, row) in o.as_slice().chunks_exact(m).enumerate() {
        let d = norm(row);
        if d > best {
            best = d;
            i0 = l;
        }
    }
    index.push(i0);
    let r0 = o.column(i0).clone_owned();
    o.as_mut_slice().par_chunks_mut(m).for_each(|row| {
        row.iter_mut().zip(r0.iter()).for_each(|(v, r)| *v -= r);
    });
    let mut scale = 1.0;
    for j in 1..m {
        // The previous vertex's row, divided by the last maximum as the loop's `o /= maxd` did.
        let t: Vec<f64> = o.column(index[j - 1]).iter().map(|v| v / scale).collect();
        let norms: Vec<f64> = o
            .as_mut_slice()
            .par_chunks_mut(m)
            .map(|row| {
                row.iter_mut().for_each(|v| *v /= scale);
                let proj = row.iter().zip(&t).fold(0.0, |s, (a, b)| s + a * b);
                row.iter_mut().zip(&t).for_each(|(v, tv)| *v -= tv * proj);
                norm(row)
            })
            .collect();
        let mut maxd = 0.0;
        let mut ij = 0;
        for (l, &d) in norms.iter().enumerate() {
            if d > maxd {
                maxd = d;
                ij = l;
            }
        }
        if maxd <= 0.0 {
            return Err(SimplexError::Degenerate { vertex: j }.into());
        }
        scale = maxd;
        index.push(ij);
    }
    Ok(index)
}

/// ISA indices and the initial rotation `A₀ = pinv(X[index, :])`.
pub fn isa(x: &DMatrix<f64>) -> Result<(Vec<usize>, DMatrix<f64>), GpccaError> {
    let index = isa_indices(x)?;
    let m = x.ncols();
    let s = DMatrix::from_fn(m, m, |i, j| x[(index[i], j)]);
    let c = cond(&s);
    if c >= 1.0 / EPS {
        return Err(SimplexError::Singular { condition: c }.into());
    }
    Ok((index, pinv(&s)))
}

/// minChi(m): `min (X[:, :m] · pinv(X[index, :m]))` after the ISA, for `m` in `ms`. Values
/// closer to 0 are better.
pub fn min_chi(
    x: &DMatrix<f64>,
    ms: std::ops::RangeInclusive<usize>,
) -> Result<Vec<f64>, GpccaError> {
    let mut out = Vec::new();
    for m in ms {
        if m < 2 || m > x.ncols() {
            return Err(GpccaError::Parameter {
                parameter: "m (minChi)",
                expected: format!("2..={} (the number of Schur vectors)", x.ncols()),
                got: m.to_string(),
            });
        }
        let xm = x.columns(0, m).clone_owned();
        let (_, a0) = isa(&xm)?;
        out.push((xm * a0).min());
    }
    Ok(out)
}

/// Memberships from a completed rotation: `χ = X A`, tiny negatives clipped and rows
/// renormalised; significantly negative entries are an error.
pub fn memberships(x: &DMatrix<f64>, a: &DMatrix<f64>) -> Result<DMatrix<f64>, GpccaError> {
    let mut chi = x * a;
    let min = chi.min();
    if min < 0.0 {
        // Scale-aware tolerance (deviation from pyGPCCA's fixed −1e4·ε, see module docs).
        let tol = (1e4 * EPS).max(1e3 * EPS * x.amax() * a.amax() * x.ncols() as f64);
        if min < -tol {
            return Err(GpccaError::NegativeMemberships { min, tol });
        }
        chi.iter_mut().for_each(|v| {
            if *v < 0.0 {
                *v = 0.0;
            }
        });
        for l in 0..chi.nrows() {
            let s: f64 = chi.row(l).sum();
            let row = chi.row(l) * (1.0 / s);
            chi.set_row(l, &row);
        }
    }
    Ok(chi)
}

/// Coarse-grained quantities for memberships `χ` (n × m), weights η and the chain `P`:
/// `P_c = pinv(χᵀ D χ) (χᵀ D P χ)`, `η_c = χᵀ η`, and `π_c = χᵀ π` when `π` is given.
pub fn coarse_grain(
    t: &TransitionMatrix,
    chi: &DMatrix<f64>,
    eta: &[f64],
    pi: Option<&[f64]>,
) -> (DMatrix<f64>, Vec<f64>, Option<Vec<f64>>) {
    let (n, m) = (chi.nrows(), chi.ncols());
    let mut g = DMatrix::zeros(m, m);
    let mut pchi = DMatrix::zeros(n, m);
    for j in 0..m {
        let col: Vec<f64> = chi.column(j).iter().copied().collect();
        pchi.column_mut(j).copy_from_slice(&t.mul_vec(&col));
    }
    let mut h = DMatrix::zeros(m, m);
    for a in 0..m {
        for b in 0..m {
            let mut sg = 0.0;
            let mut sh = 0.0;
            for l in 0..n {
                sg += eta[l] * chi[(l, a)] * chi[(l, b)];
                sh += eta[l] * chi[(l, a)] * pchi[(l, b)];
            }
            g[(a, b)] = sg;
            h[(a, b)] = sh;
        }
    }
    let pc = pinv(&g) * h;
    let eta_c: Vec<f64> = (0..m)
        .map(|j| (0..n).map(|l| chi[(l, j)] * eta[l]).sum())
        .collect();
    let pi_c = pi.map(|p| {
        (0..m)
            .map(|j| (0..n).map(|l| chi[(l, j)] * p[l]).sum())
            .collect()
    });
    (pc, eta_c, pi_c)
}

/// The stationary distribution π of `t` (`Pᵀπ = π`, `π ≥ 0`, `Σπ = 1`), from the dominant
/// Schur vector of `Pᵀ`. When the second eigenvalue is within 1e-10 of 1, this is an error
/// (instead of CellRank's silent `None`) that tells a reducible chain (several closed sets of
/// cells in the transition graph: [`StationaryError::Reducible`] counts them) from a nearly
/// reducible one (one closed set, a tiny eigenvalue gap: [`StationaryError::NearlyReducible`]
/// gives `|1 − λ2|`).
pub fn stationary_distribution(t: &TransitionMatrix) -> Result<Vec<f64>, GpccaError> {
    stationary_distribution_with(t, None)
}

/// [`stationary_distribution`], given the dominant eigenvalues of `t` when they are known
/// already (from its Schur decomposition: the weighting η does not change them), sorted by
/// decreasing real part: when the second is within 1e-10 of 1 the chain is (nearly)
/// reducible, and the error comes without an eigenvector computation of its own (at
/// 1,000,000 cells, minutes for a degenerate eigenvalue 1).
pub fn stationary_distribution_with(
    t: &TransitionMatrix,
    spectrum: Option<&[(f64, f64)]>,
) -> Result<Vec<f64>, GpccaError> {
    let n = t.n_cells();
    if n == 1 {
        return Ok(vec![1.0]);
    }
    let reducible = |ev: &[(f64, f64)]| -> Option<GpccaError> {
        if ev.len() >= 2 && (ev[1].0 - 1.0).abs() <= NEARLY_REDUCIBLE && ev[1].1.abs() <= 1e-10 {
            let gap = (1.0 - ev[1].0).abs();
            let sets = crate::graph::closed_sets(t);
            Some(
                if sets.len() >= 2 {
                    StationaryError::Reducible {
                        closed_sets: sets.len(),
                        largest: sets.iter().map(Vec::len).max().unwrap_or(0),
                        gap,
                    }
                } else {
                    StationaryError::NearlyReducible { gap }
                }
                .into(),
            )
        } else {
            None
        }
    };
    if let Some(e) = spectrum.and_then(reducible) {
        return Err(e);
    }
    let (q, ev) = if n <= crate::schur::ARPACK_MAX_CELLS {
        let op = |x: &[f64]| t.mul_vec_transposed(x);
        crate::schur::dominant_schur_op(n, 2, crate::schur::Which::LargestReal, &op)
    } else {
        // Pᵀ once as its own CSR, so that every product runs over rows in parallel.
        let pt = t.as_csr().transpose();
        let op = |x: &[f64]| pt.mul_vec(x);
        crate::schur::dominant_schur_krylov(n, 2, crate::schur::Which::LargestReal, &op)
    }
    .map_err(StationaryError::from)?;
    if let Some(e) = reducible(&ev) {
        return Err(e);
    }
    let v: Vec<f64> = q.column(0).iter().copied().collect();
    let tol = 1e4 * EPS * v.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    let (pos, neg) = (
        v.iter().filter(|&&x| x > tol).count(),
        v.iter().filter(|&&x| x < -tol).count(),
    );
    if pos > 0 && neg > 0 {
        return Err(StationaryError::MixedSigns {
            positive: pos,
            negative: neg,
            tol,
        }
        .into());
    }
    let s: f64 = v.iter().map(|x| x.abs()).sum();
    let pi: Vec<f64> = v.iter().map(|x| x.abs() / s).collect();
    let check = t.mul_vec_transposed(&pi);
    let err = check
        .iter()
        .zip(&pi)
        .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    if err > STATIONARY_TOL {
        return Err(StationaryError::NotStationary {
            error: err,
            tol: STATIONARY_TOL,
        }
        .into());
    }
    Ok(pi)
}

/// Crispness `(m − f_opt) / m`.
pub fn crispness(m: usize, f_opt: f64) -> f64 {
    (m as f64 - f_opt) / m as f64
}

/// CellRank's eigengap on the real parts sorted descending: the first index `i` maximising
/// `(μ_i − μ_{i+1}) − α (1 − μ_i)`. The suggested number of states is `eigengap + 1`.
pub fn eigengap(real_parts: &[f64], alpha: f64) -> usize {
    let mut mu = real_parts.to_vec();
    mu.sort_by(|a, b| b.total_cmp(a));
    let mut best = f64::NEG_INFINITY;
    let mut arg = 0;
    for i in 0..mu.len().saturating_sub(1) {
        let j = (mu[i] - mu[i + 1]) - alpha * (1.0 - mu[i]);
        if j > best {
            best = j;
            arg = i;
        }
    }
    arg
}

/// The eigengap said one way everywhere. CellRank stores the 0-based index `i` maximising the
/// gap (`uns["eigendecomposition_fwd"]["eigengap"]`, kept as is for compatibility): the gap
/// lies between the eigenvalues λ_{i+1} and λ_{i+2} (1-based, sorted by decreasing real part),
/// and it suggests `i + 1` states. Everything printed or drawn says it that way
/// (`eigengap after λ3 (between λ3 and λ4, 1-based) → 3 states suggested`), never as the bare
/// index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Eigengap {
    /// CellRank's 0-based index (what `uns[...]["eigengap"]` holds).
    pub index: usize,
    /// The gap lies after this eigenvalue (1-based: `index + 1`).
    pub after_eigenvalue: usize,
    /// Number of states (GPCCA; for CFLARE, eigenvectors) it suggests (`index + 1`).
    pub suggested_states: usize,
}

impl Eigengap {
    /// From CellRank's 0-based index.
    pub fn from_index(index: usize) -> Self {
        Self {
            index,
            after_eigenvalue: index + 1,
            suggested_states: index + 1,
        }
    }

    /// Where the gap lies: `after λ3 (between λ3 and λ4, 1-based)`.
    pub fn position(&self) -> String {
        format!(
            "after λ{} (between λ{} and λ{}, 1-based)",
            self.after_eigenvalue,
            self.after_eigenvalue,
            self.after_eigenvalue + 1
        )
    }
}

impl std::fmt::Display for Eigengap {
    /// `eigengap after λ3 (between λ3 and λ4, 1-based) → 3 states suggested`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "eigengap {} → {} state{} suggested",
            self.position(),
            self.suggested_states,
            if self.suggested_states == 1 { "" } else { "s" }
        )
    }
}

/// The result of fitting GPCCA with `m` macrostates.
#[derive(Clone, Debug, PartialEq)]
pub struct GpccaFit {
    /// Number of macrostates.
    pub m: usize,
    /// Memberships χ (n × m), rows summing to 1.
    pub chi: DMatrix<f64>,
    /// The optimal rotation matrix (m × m).
    pub rotation: DMatrix<f64>,
    /// Crispness in `(0, 1]`.
    pub crispness: f64,
    /// Indices of the ISA vertices.
    pub simplex_indices: Vec<usize>,
    /// Coarse-grained transition matrix (m × m).
    pub coarse_t: DMatrix<f64>,
    /// Coarse initial distribution `χᵀ η`.
    pub coarse_init: Vec<f64>,
    /// Coarse stationary distribution `χᵀ π` (None when `π` could not be computed).
    pub coarse_stat: Option<Vec<f64>>,
    /// How the rotation was optimised.
    pub report: OptimizerReport,
}

/// Fits GPCCA with `m` macrostates from a Schur decomposition (with at least `m` vectors) of
/// `t`; `pi` is the stationary distribution when available. The optimiser's best solution.
pub fn fit(
    t: &TransitionMatrix,
    schur: &Schur,
    m: usize,
    optimizer: &Optimizer,
    pi: Option<&[f64]>,
) -> Result<GpccaFit, GpccaError> {
    fit_with(t, schur, m, optimizer, pi, &mut |_| true).map(|(fit, _)| fit)
}

/// Memberships of a solution and the solution.
type Chosen = (DMatrix<f64>, Candidate);

/// [`fit`], keeping the best solution whose memberships `accept` takes (e.g. whose discrete
/// assignment leaves no state without cells). The optimiser's solutions are tried best
/// objective first (the gradient method has one per start); the second value is `false` when
/// `accept` took none of them, and the fit is then the best crisp solution.
/// `report.rejected` counts the better solutions passed over.
pub fn fit_with(
    t: &TransitionMatrix,
    schur: &Schur,
    m: usize,
    optimizer: &Optimizer,
    pi: Option<&[f64]>,
    accept: &mut dyn FnMut(&DMatrix<f64>) -> bool,
) -> Result<(GpccaFit, bool), GpccaError> {
    check_m(schur, m)?;
    let x_all = schur_to_x(schur)?;
    fit_with_x(t, schur, &x_all, m, optimizer, pi, accept)
}

/// Whether `m` macrostates can be fitted from `schur`.
fn check_m(schur: &Schur, m: usize) -> Result<(), GpccaError> {
    if m < 2 {
        return Err(GpccaError::Parameter {
            parameter: "m (number of macrostates)",
            expected: "at least 2 (use the stationary distribution for 1)".into(),
            got: m.to_string(),
        });
    }
    if m > schur.m() {
        return Err(GpccaError::TooFewSchurVectors {
            m,
            computed: schur.m(),
        });
    }
    if schur.splits_pair(m) {
        return Err(GpccaError::SplitsPair { m });
    }
    Ok(())
}

/// [`fit_with`] from `x_all = schur_to_x(schur)`, when the caller has it already (it is an
/// n × k pass over the Schur vectors with its checks: seconds at 1,000,000 cells).
pub fn fit_with_x(
    t: &TransitionMatrix,
    schur: &Schur,
    x_all: &DMatrix<f64>,
    m: usize,
    optimizer: &Optimizer,
    pi: Option<&[f64]>,
    accept: &mut dyn FnMut(&DMatrix<f64>) -> bool,
) -> Result<(GpccaFit, bool), GpccaError> {
    assert_eq!(
        (x_all.nrows(), x_all.ncols()),
        (t.n_cells(), schur.m()),
        "fit_with_x: x_all must be schur_to_x(schur)"
    );
    check_m(schur, m)?;
    let x = x_all.columns(0, m).clone_owned();
    let (simplex_indices, a0) = isa(&x)?;
    let (candidates, mut report) = optimizer.run_candidates(&x, &a0)?;
    // The chosen solution and whether `accept` took it.
    let mut chosen: Option<(Chosen, bool)> = None;
    let mut first_error: Option<GpccaError> = None;
    let mut rejected = 0;
    for c in candidates {
        let chi = match memberships(&x, &c.rotation) {
            Ok(chi) => chi,
            Err(e) => {
                first_error.get_or_insert(e);
                continue;
            }
        };
        let crisp = crispness(m, c.f);
        let nmeta = (0..m).filter(|&j| chi.column(j).sum() != 0.0).count();
        if crisp <= 0.0 || nmeta < m {
            first_error.get_or_insert(GpccaError::NotCrisp {
                m,
                crispness: crisp,
                non_empty: nmeta,
            });
            continue;
        }
        if accept(&chi) {
            chosen = Some(((chi, c), true));
            break;
        }
        rejected += 1;
        if chosen.is_none() {
            chosen = Some(((chi, c), false));
        }
    }
    let Some(((chi, c), accepted)) = chosen else {
        return Err(first_error.unwrap_or(GpccaError::NotCrisp {
            m,
            crispness: 0.0,
            non_empty: 0,
        }));
    };
    let (rotation, f_opt) = (c.rotation, c.f);
    report.f_opt = f_opt;
    report.best_start = c.start;
    report.rejected = if accepted { rejected } else { 0 };
    let (coarse_t, coarse_init, coarse_stat) = coarse_grain(t, &chi, &schur.eta, pi);
    Ok((
        GpccaFit {
            m,
            chi,
            rotation,
            crispness: crispness(m, f_opt),
            simplex_indices,
            coarse_t,
            coarse_init,
            coarse_stat,
            report,
        },
        accepted,
    ))
}

#[cfg(test)]
mod tests;
