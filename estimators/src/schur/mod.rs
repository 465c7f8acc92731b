//! Sorted real partial Schur decomposition of the η-weighted transition matrix
//! `P̄ = diag(√η) P diag(1/√η)`: `P̄ Q = Q R` with `Q` (n × m) orthonormal and `R` (m × m)
//! quasi-upper-triangular, the m dominant eigenvalues (largest real part by default, or largest
//! magnitude) in the leading positions, sorted.
//!
//! Two paths, chosen by size and reported in [`Schur::method`]:
//! - **dense** (LAPACK `dgees` + `dtrsen`), for small matrices (`n ≤ dense_max_cells`);
//! - **krylov** (Krylov–Schur, matrix-free on the sparse matrix, the basis operations in
//!   parallel: `krylov.rs`), followed by a dense sort of the small projected matrix `QᵀP̄Q`.
//!   Up to [`SchurOptions::arpack_max_cells`] (50,000) ARPACK's implicitly restarted
//!   Arnoldi serves instead, as it did for every earlier result: on small chains both are
//!   fast, and the macrostates of the gradient optimiser can move with the last bits of
//!   the basis. On the real 1,000,000-cell demo chain ARPACK took 610 s (see BENCHMARKS.md).
//!   ARPACK also serves [`dominant_schur_op_with`], whose callers (latent time) budget its
//!   restarts.
//!
//! A large matrix is never densified silently: `method = Dense` above the limit is an error.
//! Complex-conjugate pairs are never split (both members are checked through `|Im λ|`); when m
//! would split one, m + 1 vectors are returned and [`Schur::note`] says so. Every result is
//! checked: `‖P̄Q − QR‖_F / ‖R‖_F ≤ 1e-8` and `max |QᵀQ − I| ≤ 1e-10`.

mod error;
mod ffi;
mod krylov;

use std::ffi::CStr;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use cellfate_kernels::TransitionMatrix;

pub use error::SchurError;

/// Which eigenvalues are dominant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Which {
    /// Largest real part (CellRank's default, `"LR"`).
    #[default]
    #[serde(rename = "LR")]
    LargestReal,
    /// Largest magnitude (pyGPCCA's default, `"LM"`).
    #[serde(rename = "LM")]
    LargestMagnitude,
}

impl Which {
    fn key(self, re: f64, im: f64) -> f64 {
        match self {
            Self::LargestReal => re,
            Self::LargestMagnitude => re.hypot(im),
        }
    }
    fn arpack(self) -> &'static CStr {
        match self {
            Self::LargestReal => c"LR",
            Self::LargestMagnitude => c"LM",
        }
    }
}

/// How the decomposition is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchurMethod {
    /// Dense for `n ≤ dense_max_cells`, Krylov otherwise.
    #[default]
    Auto,
    /// Dense LAPACK (`dgees` + `dtrsen`).
    Dense,
    /// Sparse, matrix-free Krylov–Schur.
    Krylov,
}

/// Options of [`compute_schur`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchurOptions {
    /// Number of Schur vectors (≥ 2; CellRank's `n_components`).
    pub n_components: usize,
    /// Which eigenvalues are dominant.
    pub which: Which,
    /// Dense or Krylov.
    pub method: SchurMethod,
    /// Largest number of cells for the dense path (automatic choice and explicit `Dense`).
    pub dense_max_cells: usize,
    /// Krylov path: ARPACK's implicitly restarted Arnoldi up to this many cells (fast
    /// enough there, and the method every earlier result and CellRank comparison used),
    /// Krylov–Schur above it (about 3.6 times faster on a real 1,000,000-cell chain).
    pub arpack_max_cells: usize,
    /// Krylov subspace size (`ncv`); default `max(2 (m + 1) + 1, 40)` with ARPACK and
    /// `max(5 (m + 1), 40)` with Krylov–Schur, at most n.
    pub ncv: Option<usize>,
    /// Maximum number of Krylov–Schur restarts.
    pub max_iter: usize,
    /// Convergence tolerance of the wanted block, `‖P̄Q − QR‖ ≤ tol · max(1, |λ₁|)` in the
    /// Krylov recurrence (0 = the default, 1e-12). The result is checked afterwards against
    /// [`RESIDUAL_TOL`] in any case.
    pub tol: f64,
}

impl Default for SchurOptions {
    fn default() -> Self {
        Self {
            n_components: 20,
            which: Which::LargestReal,
            method: SchurMethod::Auto,
            dense_max_cells: 2500,
            arpack_max_cells: ARPACK_MAX_CELLS,
            ncv: None,
            max_iter: 5000,
            tol: 0.0,
        }
    }
}

/// Default of [`SchurOptions::arpack_max_cells`] (and the same switch for the stationary
/// distribution).
pub const ARPACK_MAX_CELLS: usize = 50_000;

/// Maximum relative invariance residual `‖P̄Q − QR‖_F / ‖R‖_F`.
pub const RESIDUAL_TOL: f64 = 1e-8;
/// Maximum deviation of `QᵀQ` from the identity.
pub const ORTHOGONALITY_TOL: f64 = 1e-10;
/// An eigenvalue with `|Im λ|` above this is complex.
const IMAG_TOL: f64 = 1e-12;

/// A sorted partial real Schur decomposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Schur {
    /// Orthonormal Schur vectors (n × m).
    pub q: DMatrix<f64>,
    /// Quasi-upper-triangular Schur matrix (m × m).
    pub r: DMatrix<f64>,
    /// Eigenvalues `(re, im)` in the order of `R`'s diagonal blocks (dominant first).
    pub eigenvalues: Vec<(f64, f64)>,
    /// The weights η (length n).
    pub eta: Vec<f64>,
    /// `"dense"` or `"krylov"`.
    pub method: &'static str,
    /// Number of vectors requested.
    pub n_requested: usize,
    /// `‖P̄Q − QR‖_F / ‖R‖_F`.
    pub residual: f64,
    /// `max |QᵀQ − I|`.
    pub orthogonality: f64,
    /// Krylov: matrix-vector products used.
    pub matvecs: usize,
    /// Krylov: restarts of the Krylov–Schur iteration (0 for the dense path).
    pub restarts: usize,
    /// A remark for the user (e.g. a conjugate pair kept together).
    pub note: Option<String>,
}

impl Schur {
    /// Number of Schur vectors.
    pub fn m(&self) -> usize {
        self.q.ncols()
    }

    /// Whether the first `m` eigenvalues would split a complex-conjugate pair (checked with
    /// `|Im|`, so a negative-imaginary first member is caught too).
    pub fn splits_pair(&self, m: usize) -> bool {
        splits_pair(&self.eigenvalues, m)
    }
}

fn splits_pair(ev: &[(f64, f64)], m: usize) -> bool {
    if m == 0 || m >= ev.len() {
        return false;
    }
    let (a, b) = (ev[m - 1], ev[m]);
    a.1.abs() > IMAG_TOL
        && (a.0 - b.0).abs() <= 1e-10 * a.0.abs().max(1.0)
        && (a.1 + b.1).abs() <= 1e-10 * a.1.abs().max(1.0)
}

/// The uniform weights `η = 1/n`.
pub fn uniform_eta(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// `y = P̄ x` with `P̄ = diag(√η) P diag(1/√η)`.
fn weighted_matvec(t: &TransitionMatrix, sqrt_eta: &[f64], x: &[f64]) -> Vec<f64> {
    let scaled: Vec<f64> = x.iter().zip(sqrt_eta).map(|(a, s)| a / s).collect();
    t.mul_vec(&scaled)
        .into_iter()
        .zip(sqrt_eta)
        .map(|(a, s)| a * s)
        .collect()
}

/// Eigenvalues of the diagonal blocks of a quasi-triangular matrix, in order.
fn block_eigenvalues(r: &DMatrix<f64>) -> Vec<(f64, f64)> {
    let m = r.nrows();
    let mut out = Vec::with_capacity(m);
    let mut i = 0;
    while i < m {
        if i + 1 < m && r[(i + 1, i)] != 0.0 {
            let (a, b, c, d) = (r[(i, i)], r[(i, i + 1)], r[(i + 1, i)], r[(i + 1, i + 1)]);
            let tr = 0.5 * (a + d);
            let disc = 0.25 * (a - d) * (a - d) + b * c;
            if disc < 0.0 {
                let im = (-disc).sqrt();
                out.push((tr, im));
                out.push((tr, -im));
            } else {
                let s = disc.sqrt();
                out.push((tr + s, 0.0));
                out.push((tr - s, 0.0));
            }
            i += 2;
        } else {
            out.push((r[(i, i)], 0.0));
            i += 1;
        }
    }
    out
}

/// Sorts a real Schur form (column-major `t`, `z`, with eigenvalues `wr`, `wi`) so that its
/// `m` dominant eigenvalues come first in descending order of `which`. Returns the number of
/// leading eigenvalues actually sorted (`m`, or `m + 1` to keep a pair).
fn sort_schur(
    n: usize,
    t: &mut [f64],
    z: &mut [f64],
    wr: &mut [f64],
    wi: &mut [f64],
    m: usize,
    which: Which,
) -> Result<usize, SchurError> {
    // Rank eigenvalues (pairs share a key); stable in the current order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        which
            .key(wr[b], wi[b])
            .total_cmp(&which.key(wr[a], wi[a]))
            .then(wi[b].total_cmp(&wi[a]))
    });
    let mut chosen: Vec<usize> = Vec::new();
    let mut k = 0;
    while chosen.len() < m && k < n {
        let i = order[k];
        k += 1;
        if chosen.contains(&i) {
            continue;
        }
        chosen.push(i);
        if wi[i].abs() > 0.0 {
            // Its conjugate partner is adjacent in T (same 2x2 block).
            let partner = if i + 1 < n && (wr[i + 1] - wr[i]).abs() == 0.0 && wi[i + 1] == -wi[i] {
                i + 1
            } else {
                i.saturating_sub(1)
            };
            if !chosen.contains(&partner) {
                chosen.push(partner);
            }
        }
    }
    // Move the chosen eigenvalues to the front one (block) at a time, in rank order: dtrsen
    // keeps the relative order of selected blocks, so each step appends the next one.
    let target = chosen.len();
    let mut selected_keys: Vec<(f64, f64)> = Vec::with_capacity(target);
    for &i in &chosen {
        selected_keys.push((wr[i], wi[i]));
    }
    let mut placed = 0;
    while placed < target {
        let (re, im) = selected_keys[placed];
        let step = if im != 0.0 { 2 } else { 1 };
        let mut select = vec![false; n];
        for s in select.iter_mut().take(placed) {
            *s = true;
        }
        // Find the current position of this eigenvalue at or after `placed`.
        let pos =
            locate_eigenvalue(wr, wi, placed, re, im).ok_or(SchurError::SortLost { re, im })?;
        select[pos] = true;
        if step == 2 && pos + 1 < n {
            select[pos + 1] = true;
        }
        ffi::dtrsen(n, t, z, &select, wr, wi)?;
        placed += step;
    }
    Ok(target)
}

/// Relative distance within which an eigenvalue that reordering moved is still recognised
/// (dtrsen's swaps change the eigenvalues of a non-normal matrix by ‖T‖·ε times their
/// condition numbers, far more than rounding; distinct eigenvalues that close are numerically
/// one).
const EIGENVALUE_DRIFT: f64 = 1e-6;

/// The position, at or after `from`, of the eigenvalue `re + i·im` in the Schur form's
/// current eigenvalues `wr`, `wi`, among the positions of its kind (real, or the first of a
/// conjugate pair: LAPACK puts the positive imaginary part first): the first equal to it up
/// to rounding (1e-14 relative) when there is one, else the nearest within
/// [`EIGENVALUE_DRIFT`]; `None` when it is nowhere near.
fn locate_eigenvalue(wr: &[f64], wi: &[f64], from: usize, re: f64, im: f64) -> Option<usize> {
    let n = wr.len().min(wi.len());
    // A real eigenvalue is only ever a 1 × 1 block, a pair only the start of a 2 × 2 block:
    // a real 1 and a pair 1 ± 1e-15i (a numerically repeated eigenvalue of a reducible chain)
    // are equal up to rounding, and taking one for the other moves a block of the wrong size.
    let same_kind = |j: usize| if im == 0.0 { wi[j] == 0.0 } else { wi[j] > 0.0 };
    let exact = (from..n).find(|&j| {
        same_kind(j)
            && (wr[j] - re).abs() <= 1e-14 * re.abs().max(1.0)
            && (wi[j].abs() - im.abs()).abs() <= 1e-14 * im.abs().max(1.0)
    });
    if exact.is_some() {
        return exact;
    }
    let dist = |j: usize| (wr[j] - re).hypot(wi[j].abs() - im.abs());
    let tol = EIGENVALUE_DRIFT * re.hypot(im).max(1.0);
    (from..n)
        .filter(|&j| same_kind(j) && dist(j) <= tol)
        .min_by(|&a, &b| dist(a).total_cmp(&dist(b)).then(a.cmp(&b)))
}

/// Computes the sorted partial real Schur decomposition of `t` weighted by `eta` (uniform
/// when `None`).
pub fn compute_schur(
    t: &TransitionMatrix,
    eta: Option<&[f64]>,
    opts: &SchurOptions,
) -> Result<Schur, SchurError> {
    let n = t.n_cells();
    let m_req = opts.n_components.max(2);
    if m_req >= n {
        return Err(SchurError::Parameter {
            parameter: "n_components",
            expected: format!("fewer than the number of cells ({n})"),
            got: m_req.to_string(),
        });
    }
    let eta: Vec<f64> = match eta {
        Some(e) => {
            if e.len() != n {
                return Err(SchurError::Parameter {
                    parameter: "eta",
                    expected: format!("one positive finite weight per cell ({n})"),
                    got: format!("{} weights", e.len()),
                });
            }
            if let Some(i) = e.iter().position(|&x| !(x.is_finite() && x > 0.0)) {
                return Err(SchurError::Parameter {
                    parameter: "eta",
                    expected: "one positive finite weight per cell".into(),
                    got: format!("{} at cell {i}", e[i]),
                });
            }
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        }
        None => uniform_eta(n),
    };
    let sqrt_eta: Vec<f64> = eta.iter().map(|x| x.sqrt()).collect();
    let dense = match opts.method {
        SchurMethod::Auto => n <= opts.dense_max_cells,
        SchurMethod::Dense => {
            if n > opts.dense_max_cells {
                return Err(SchurError::TooLargeForDense {
                    n,
                    gb: (n * n * 16) as f64 / 1e9,
                    limit: opts.dense_max_cells,
                });
            }
            true
        }
        SchurMethod::Krylov => false,
    };
    let (q, r, matvecs, restarts, method) = if dense {
        let (q, r) = dense_schur(t, &sqrt_eta, m_req, opts.which)?;
        (q, r, 0, 0, "dense")
    } else {
        let (q, r, mv, rs) = krylov_schur(t, &sqrt_eta, m_req, opts)?;
        (q, r, mv, rs, "krylov")
    };
    let eigenvalues = block_eigenvalues(&r);
    let m = q.ncols();
    let note = (m > m_req).then(|| {
        format!("using {m} Schur vectors instead of {m_req}: {m_req} would split a complex-conjugate pair")
    });
    // Checks.
    let mut pq = DMatrix::zeros(n, m);
    for j in 0..m {
        let col: Vec<f64> = q.column(j).iter().copied().collect();
        let y = weighted_matvec(t, &sqrt_eta, &col);
        pq.column_mut(j).copy_from_slice(&y);
    }
    let residual = (&pq - &q * &r).norm() / r.norm().max(f64::MIN_POSITIVE);
    let qtq = q.transpose() * &q;
    let orthogonality = (qtq - DMatrix::identity(m, m)).amax();
    let hint = if dense {
        "The matrix may be too ill-conditioned; check the kernel"
    } else {
        "Increase ncv or the iteration limit, or use method = dense for small data"
    };
    if residual.is_nan() || residual > RESIDUAL_TOL {
        return Err(SchurError::CheckFailed {
            method,
            what: "the invariance residual |PQ - QR| / |R|",
            value: residual,
            tol: RESIDUAL_TOL,
            hint,
        });
    }
    if orthogonality.is_nan() || orthogonality > ORTHOGONALITY_TOL {
        return Err(SchurError::CheckFailed {
            method,
            what: "the orthogonality error max|Q'Q - I|",
            value: orthogonality,
            tol: ORTHOGONALITY_TOL,
            hint,
        });
    }
    Ok(Schur {
        q,
        r,
        eigenvalues,
        eta,
        method,
        n_requested: m_req,
        residual,
        orthogonality,
        matvecs,
        restarts,
        note,
    })
}

fn dense_schur(
    t: &TransitionMatrix,
    sqrt_eta: &[f64],
    m: usize,
    which: Which,
) -> Result<(DMatrix<f64>, DMatrix<f64>), SchurError> {
    let n = t.n_cells();
    // Column-major dense P̄.
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        let (cols, vals) = t.row(i);
        for (&j, &v) in cols.iter().zip(vals) {
            let j = j as usize;
            a[i + j * n] = sqrt_eta[i] * v / sqrt_eta[j];
        }
    }
    let (mut z, mut wr, mut wi) = ffi::dgees(n, &mut a)?;
    let m2 = sort_schur(n, &mut a, &mut z, &mut wr, &mut wi, m, which)?;
    let q = DMatrix::from_fn(n, m2, |i, j| z[i + j * n]);
    let r = DMatrix::from_fn(m2, m2, |i, j| if i > j + 1 { 0.0 } else { a[i + j * n] });
    Ok((q, r))
}

fn krylov_schur(
    t: &TransitionMatrix,
    sqrt_eta: &[f64],
    m: usize,
    opts: &SchurOptions,
) -> Result<(DMatrix<f64>, DMatrix<f64>, usize, usize), SchurError> {
    let n = t.n_cells();
    // One more than requested so that a pair straddling the cut can be kept whole.
    let nev = (m + 1).min(n - 2);
    // Krylov–Schur's products cost more than its orthogonalisation at scale: a larger
    // subspace needs fewer of them (1,000,000 cells, 21 vectors: 393 products and 86 s with
    // 4 nev against 843 and 130 s with 2 nev + 1). Since the second Gram–Schmidt pass runs
    // only when needed, 5 nev is cheaper still: on the real 1M demo chain 332 products and
    // 33.8 s against 518 and 46.1 s with 4 nev, back to back (6 nev: 363 products, 41.3 s);
    // at 100,000 cells 250 against 294 products.
    let default_ncv = if n <= opts.arpack_max_cells {
        (2 * nev + 1).max(40)
    } else {
        (5 * nev).max(40)
    };
    let ncv = opts.ncv.unwrap_or(default_ncv).min(n).max(nev + 2);
    if ncv > n {
        return Err(SchurError::TooFewCellsForKrylov { n, m, ncv });
    }
    if n <= opts.arpack_max_cells {
        return arpack_krylov(t, sqrt_eta, m, nev, ncv, opts);
    }
    // The iteration runs on the chain in bandwidth order (`P' = Π P Πᵀ`, the same
    // spectrum; its Schur vectors are those of P with permuted rows): the products then
    // gather from nearby cells.
    let order = crate::graph::bandwidth_order(t.as_csr());
    let pt = t.as_csr().submatrix(&order, &order);
    let s: Vec<f64> = order.iter().map(|&i| sqrt_eta[i]).collect();
    let uniform = s.iter().all(|&x| x == s[0]);
    let op = |x: &[f64]| -> Vec<f64> {
        if uniform {
            // P̄ = P: no scaling.
            pt.mul_vec(x)
        } else {
            let scaled: Vec<f64> = x.iter().zip(&s).map(|(a, w)| a / w).collect();
            let mut y = pt.mul_vec(&scaled);
            y.iter_mut().zip(&s).for_each(|(a, w)| *a *= w);
            y
        }
    };
    // Deterministic start vector: √η (the dominant left-right structure) plus a fixed
    // perturbation so that it is not exactly an eigenvector.
    let resid: Vec<f64> = (0..n)
        .map(|i| s[i] * (1.0 + 0.1 * ((i as f64 * 0.618_033_988_749_895).fract() - 0.5)))
        .collect();
    let mut wrapped = |x: &[f64], y: &mut [f64]| y.copy_from_slice(&op(x));
    let res = krylov::krylov_schur(
        n,
        nev,
        ncv,
        opts.which,
        opts.tol,
        opts.max_iter,
        &resid,
        &mut wrapped,
    )?;
    let k = res.k;
    let q0 = DMatrix::from_column_slice(n, k, &res.q);
    // Project, then sort the small Schur form densely.
    let mut pq = DMatrix::zeros(n, k);
    for j in 0..k {
        let col: Vec<f64> = q0.column(j).iter().copied().collect();
        pq.column_mut(j).copy_from_slice(&op(&col));
    }
    let h = q0.transpose() * &pq;
    let mut a: Vec<f64> = h.as_slice().to_vec(); // nalgebra is column-major
    let (mut z, mut wr, mut wi) = ffi::dgees(k, &mut a)?;
    let m2 = sort_schur(k, &mut a, &mut z, &mut wr, &mut wi, m, opts.which)?;
    if m2 > k {
        return Err(SchurError::PairNotConverged {
            requested: m,
            converged: k,
        });
    }
    let zk = DMatrix::from_fn(k, m2, |i, j| z[i + j * k]);
    let qp = q0 * zk;
    // Back to the cells' order.
    let mut q = DMatrix::zeros(n, m2);
    for (new, &old) in order.iter().enumerate() {
        for j in 0..m2 {
            q[(old, j)] = qp[(new, j)];
        }
    }
    let r = DMatrix::from_fn(m2, m2, |i, j| if i > j + 1 { 0.0 } else { a[i + j * k] });
    Ok((q, r, res.matvecs + k, res.restarts))
}

/// The Krylov path by ARPACK (up to [`SchurOptions::arpack_max_cells`]).
fn arpack_krylov(
    t: &TransitionMatrix,
    sqrt_eta: &[f64],
    m: usize,
    nev: usize,
    ncv: usize,
    opts: &SchurOptions,
) -> Result<(DMatrix<f64>, DMatrix<f64>, usize, usize), SchurError> {
    let n = t.n_cells();
    // Deterministic start vector: √η (the dominant left-right structure) plus a fixed
    // perturbation so that it is not exactly an eigenvector.
    let resid: Vec<f64> = (0..n)
        .map(|i| sqrt_eta[i] * (1.0 + 0.1 * ((i as f64 * 0.618_033_988_749_895).fract() - 0.5)))
        .collect();
    let mut op = |x: &[f64], y: &mut [f64]| {
        let out = weighted_matvec(t, sqrt_eta, x);
        y.copy_from_slice(&out);
    };
    let res = ffi::arpack_schur(
        n,
        nev,
        ncv,
        opts.which.arpack(),
        opts.tol,
        opts.max_iter,
        resid,
        &mut op,
    )?;
    let k = res.nconv;
    if k < m {
        return Err(SchurError::NotConverged {
            converged: k,
            requested: m,
            iterations: res.iterations,
            matvecs: res.matvecs,
        });
    }
    let q0 = DMatrix::from_column_slice(n, k, &res.q);
    // Project, then sort the small Schur form densely.
    let mut pq = DMatrix::zeros(n, k);
    for j in 0..k {
        let col: Vec<f64> = q0.column(j).iter().copied().collect();
        pq.column_mut(j)
            .copy_from_slice(&weighted_matvec(t, sqrt_eta, &col));
    }
    let h = q0.transpose() * &pq;
    let mut a: Vec<f64> = h.as_slice().to_vec(); // nalgebra is column-major
    let (mut z, mut wr, mut wi) = ffi::dgees(k, &mut a)?;
    let m2 = sort_schur(k, &mut a, &mut z, &mut wr, &mut wi, m, opts.which)?;
    if m2 > k {
        return Err(SchurError::PairNotConverged {
            requested: m,
            converged: k,
        });
    }
    let zk = DMatrix::from_fn(k, m2, |i, j| z[i + j * k]);
    let q = q0 * zk;
    let r = DMatrix::from_fn(m2, m2, |i, j| if i > j + 1 { 0.0 } else { a[i + j * k] });
    Ok((q, r, res.matvecs + k, res.iterations))
}

/// Schur vectors (n × m) and their eigenvalues `(re, im)`.
pub type SchurVectors = (DMatrix<f64>, Vec<(f64, f64)>);

/// ARPACK's stopping rule in [`dominant_schur_op_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KrylovOptions {
    /// Relative residual a Ritz pair must reach, ‖A·x − λ·x‖ ≤ tol·|λ| (ARPACK's `tol`; 0
    /// means machine precision).
    pub tol: f64,
    /// Implicit restarts before giving up with [`SchurError::NotConverged`].
    pub max_restarts: usize,
}

impl Default for KrylovOptions {
    fn default() -> Self {
        Self {
            tol: 0.0,
            max_restarts: 5000,
        }
    }
}

/// The `m` dominant Schur vectors and eigenvalues of a general linear operator `op` on `R^n`
/// (dense LAPACK for `n ≤ 300`, ARPACK otherwise), sorted by `which`. No conjugate-pair
/// extension: `m` may be exceeded by one to keep a pair.
pub fn dominant_schur_op(
    n: usize,
    m: usize,
    which: Which,
    op: &dyn Fn(&[f64]) -> Vec<f64>,
) -> Result<SchurVectors, SchurError> {
    dominant_schur_op_with(n, m, which, op, &KrylovOptions::default()).map(|(v, _)| v)
}

/// [`dominant_schur_op`] with ARPACK's tolerance and restart budget given (the dense path
/// ignores them); also returns the number of Arnoldi restarts (0 for the dense path). ARPACK
/// uses a Krylov space of `max(2 (m + 1) + 1, 30)` vectors, so each restart costs that minus
/// `m + 1` products.
pub fn dominant_schur_op_with(
    n: usize,
    m: usize,
    which: Which,
    op: &dyn Fn(&[f64]) -> Vec<f64>,
    opts: &KrylovOptions,
) -> Result<(SchurVectors, usize), SchurError> {
    if n <= 300 || m + 3 > n {
        return Ok((dense_dominant(n, m, which, op)?, 0));
    }
    let nev = m + 1;
    let ncv = (2 * nev + 1).max(30).min(n);
    let mut wrapped = |x: &[f64], y: &mut [f64]| y.copy_from_slice(&op(x));
    let res = ffi::arpack_schur(
        n,
        nev,
        ncv,
        which.arpack(),
        opts.tol,
        opts.max_restarts,
        start_vector(n),
        &mut wrapped,
    )?;
    if res.nconv < m {
        return Err(SchurError::NotConverged {
            converged: res.nconv,
            requested: m,
            iterations: res.iterations,
            matvecs: res.matvecs,
        });
    }
    Ok((
        sorted_projection(n, res.nconv, &res.q, m, which, op)?,
        res.iterations,
    ))
}

/// [`dominant_schur_op`] by Krylov–Schur (the method of [`compute_schur`]: the basis in row
/// blocks processed in parallel, thick restarts, the wanted block converged to
/// `‖A Q − Q R‖ ≤ 1e-12 max(1, |λ₁|)`) for `n > 300`, dense LAPACK below. Results do not
/// depend on the number of threads.
pub fn dominant_schur_krylov(
    n: usize,
    m: usize,
    which: Which,
    op: &(dyn Fn(&[f64]) -> Vec<f64> + Sync),
) -> Result<SchurVectors, SchurError> {
    if n <= 300 || m + 3 > n {
        return dense_dominant(n, m, which, op);
    }
    let nev = m + 1;
    let ncv = (2 * nev + 1).max(30).min(n);
    let mut wrapped = |x: &[f64], y: &mut [f64]| y.copy_from_slice(&op(x));
    let res = krylov::krylov_schur(
        n,
        nev,
        ncv,
        which,
        0.0,
        KrylovOptions::default().max_restarts,
        &start_vector(n),
        &mut wrapped,
    )?;
    sorted_projection(n, res.k, &res.q, m, which, op)
}

/// The fixed start vector of the Krylov iterations: ones plus a small deterministic
/// perturbation, so that it is not exactly an eigenvector.
fn start_vector(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 1.0 + 0.1 * ((i as f64 * 0.618_033_988_749_895).fract() - 0.5))
        .collect()
}

/// All of `op` as a dense matrix, its Schur form sorted by `which`.
fn dense_dominant(
    n: usize,
    m: usize,
    which: Which,
    op: &dyn Fn(&[f64]) -> Vec<f64>,
) -> Result<SchurVectors, SchurError> {
    let mut a = vec![0.0; n * n];
    let mut e = vec![0.0; n];
    for j in 0..n {
        e.iter_mut().for_each(|v| *v = 0.0);
        e[j] = 1.0;
        let col = op(&e);
        a[j * n..(j + 1) * n].copy_from_slice(&col);
    }
    let (mut z, mut wr, mut wi) = ffi::dgees(n, &mut a)?;
    let m2 = sort_schur(n, &mut a, &mut z, &mut wr, &mut wi, m.min(n), which)?;
    let q = DMatrix::from_fn(n, m2, |i, j| z[i + j * n]);
    let r = DMatrix::from_fn(m2, m2, |i, j| if i > j + 1 { 0.0 } else { a[i + j * n] });
    Ok((q, block_eigenvalues(&r)))
}

/// The `k` Krylov Schur vectors `q` (n × k, column-major) rotated to the sorted Schur form of
/// their projection `QᵀAQ`, the first `m` (or `m + 1` to keep a pair) kept.
fn sorted_projection(
    n: usize,
    k: usize,
    q: &[f64],
    m: usize,
    which: Which,
    op: &dyn Fn(&[f64]) -> Vec<f64>,
) -> Result<SchurVectors, SchurError> {
    let q0 = DMatrix::from_column_slice(n, k, q);
    let mut pq = DMatrix::zeros(n, k);
    for j in 0..k {
        let col: Vec<f64> = q0.column(j).iter().copied().collect();
        pq.column_mut(j).copy_from_slice(&op(&col));
    }
    let h = q0.transpose() * &pq;
    let mut a: Vec<f64> = h.as_slice().to_vec();
    let (mut z, mut wr, mut wi) = ffi::dgees(k, &mut a)?;
    let m2 = sort_schur(k, &mut a, &mut z, &mut wr, &mut wi, m, which)?;
    let zk = DMatrix::from_fn(k, m2.min(k), |i, j| z[i + j * k]);
    let r = DMatrix::from_fn(m2.min(k), m2.min(k), |i, j| {
        if i > j + 1 {
            0.0
        } else {
            a[i + j * k]
        }
    });
    Ok((q0 * zk, block_eigenvalues(&r)))
}

#[cfg(test)]
pub(crate) mod tests;
