//! Optimisation of the GPCCA rotation matrix.
//!
//! - [`Optimizer::NelderMead`]: the simplex method exactly as pyGPCCA 1.0.4 calls scipy's
//!   `fmin` (initial simplex 5 % / 0.00025, coefficients 1 / 2 / 0.5 / 0.5, absolute
//!   `xtol = ftol = 1e-4` checked before each step, `maxiter = maxfun = 200 (m−1)²`), for parity
//!   with CellRank. One deviation: a point where the feasibility completion fails counts as
//!   `f = +∞` (the simplex moves away) instead of aborting the whole computation.
//! - [`Optimizer::Gradient`] (default): L-BFGS with an analytic (sub)gradient of the objective
//!   through the feasibility completion, from the ISA start and `n_starts − 1` seeded random
//!   rotations of it; the best objective wins (ties: lowest start). The maximum over cells in
//!   the completion is evaluated on an active set of candidate cells, grown round by round from
//!   the maximisers over all cells, so large `m` (50) and large `n` stay practical; the result's
//!   objective is always the exact one over all cells.
//!
//!   The objective is a maximum over cells, so it has kinks, and plain L-BFGS with a
//!   backtracking line search crawls along them. The method follows Lewis & Overton's BFGS for
//!   nonsmooth functions ("Nonsmooth optimization via quasi-Newton methods", Math. Program.
//!   141, 2013): a weak Wolfe line search (it also lengthens steps, where backtracking only
//!   shortens them) and a longer memory (30 pairs). Each start stops when the active set is
//!   verified on all cells or after `budget` iterations over all rounds: on the m = 50 bench the
//!   old method's last 80 % of iterations improved the objective by 0.4 %.

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::{GpccaError, Infeasibility};
use super::rotation::{embed, fill_matrix, objective_of};

/// How the rotation matrix is optimised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Optimizer {
    /// scipy-compatible Nelder–Mead (pyGPCCA / CellRank parity).
    NelderMead,
    /// L-BFGS with an analytic gradient and seeded multi-start.
    Gradient {
        /// Number of starts (the first is the ISA rotation itself).
        n_starts: usize,
        /// Seed of the random start rotations.
        seed: u64,
        /// Maximum L-BFGS iterations per active-set round.
        max_iter: usize,
        /// Scale of the random rotations of the starts.
        perturbation: f64,
        /// Maximum L-BFGS iterations per start, summed over its active-set rounds.
        #[serde(default = "default_budget")]
        budget: usize,
    },
}

impl Default for Optimizer {
    fn default() -> Self {
        Self::Gradient {
            n_starts: 10,
            seed: 0,
            max_iter: 1000,
            perturbation: 0.1,
            budget: default_budget(),
        }
    }
}

/// Default of [`Optimizer::Gradient`]'s `budget`.
fn default_budget() -> usize {
    5000
}

/// What the optimiser did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerReport {
    /// `nelder_mead` or `gradient`.
    pub method: String,
    /// Objective at the optimum.
    pub f_opt: f64,
    /// Objective at the ISA start.
    pub f_start: f64,
    /// Iterations (summed over starts).
    pub iterations: usize,
    /// Objective evaluations (summed over starts).
    pub evaluations: usize,
    /// Index of the winning start (0 = ISA).
    pub best_start: usize,
    /// Better solutions passed over because their discrete assignment was invalid (a state
    /// left with too few cells); see [`crate::gpcca::fit_with`].
    #[serde(default)]
    pub rejected: usize,
}

impl Optimizer {
    /// Optimises the rotation for basis `x` (n × m) from the ISA rotation `a0`; returns the
    /// completed rotation, the objective value and a report.
    pub fn run(
        &self,
        x: &DMatrix<f64>,
        a0: &DMatrix<f64>,
    ) -> Result<(DMatrix<f64>, f64, OptimizerReport), GpccaError> {
        let (mut candidates, report) = self.run_candidates(x, a0)?;
        let best = candidates.swap_remove(0);
        Ok((best.rotation, best.f, report))
    }

    /// Every solution the optimiser found, best objective first (ties: lowest start):
    /// Nelder–Mead gives one, the gradient method one per feasible start, and never a list
    /// whose best is worse than the ISA start. The report describes the best.
    pub fn run_candidates(
        &self,
        x: &DMatrix<f64>,
        a0: &DMatrix<f64>,
    ) -> Result<(Vec<Candidate>, OptimizerReport), GpccaError> {
        let m = a0.nrows();
        if m < 2 {
            return Err(GpccaError::Parameter {
                parameter: "rotation matrix size",
                expected: "at least 2 x 2".into(),
                got: format!("{m} x {m}"),
            });
        }
        let k = m - 1;
        let alpha0: Vec<f64> = (0..k * k).map(|p| a0[(1 + p / k, 1 + p % k)]).collect();
        let f = |alpha: &[f64]| -> f64 {
            let mut a = embed(alpha, a0);
            match fill_matrix(&mut a, x) {
                Ok(()) => objective_of(&a),
                Err(_) => f64::INFINITY,
            }
        };
        let mut start = embed(&alpha0, a0);
        let f_start = match fill_matrix(&mut start, x) {
            Ok(()) => objective_of(&start),
            Err(GpccaError::Infeasible(reason)) => {
                return Err(Infeasibility::InitialRotation {
                    reason: Box::new(reason),
                }
                .into())
            }
            Err(e) => return Err(e),
        };
        if !f_start.is_finite() {
            return Err(Infeasibility::InitialRotation {
                reason: Box::new(Infeasibility::NonFiniteObjective { value: f_start }),
            }
            .into());
        }
        let (found, report) = match self {
            Self::NelderMead => {
                let (x_opt, f_opt, iterations, evaluations) = nelder_mead(&f, &alpha0);
                (
                    vec![StartSolution {
                        alpha: x_opt,
                        f: f_opt,
                        start: 0,
                        rotation: None,
                    }],
                    OptimizerReport {
                        method: "nelder_mead".into(),
                        f_opt,
                        f_start,
                        iterations,
                        evaluations,
                        best_start: 0,
                        rejected: 0,
                    },
                )
            }
            Self::Gradient {
                n_starts,
                seed,
                max_iter,
                perturbation,
                budget,
            } => gradient_multistart(
                x,
                a0,
                &alpha0,
                MultistartOptions {
                    n_starts: (*n_starts).max(1),
                    seed: *seed,
                    max_iter: *max_iter,
                    perturbation: *perturbation,
                    budget: *budget,
                },
                f_start,
            )?,
        };
        let mut out = Vec::with_capacity(found.len());
        for sol in found {
            let rotation = match sol.rotation {
                Some(a) => a,
                None => {
                    let mut a = embed(&sol.alpha, a0);
                    if fill_matrix(&mut a, x).is_err() {
                        continue;
                    }
                    a
                }
            };
            out.push(Candidate {
                rotation,
                f: sol.f,
                start: sol.start,
            });
        }
        if out.is_empty() {
            // The best solution could not be completed again: report why.
            let mut a = embed(&alpha0, a0);
            fill_matrix(&mut a, x)?;
            out.push(Candidate {
                rotation: a,
                f: f_start,
                start: 0,
            });
        }
        Ok((out, report))
    }
}

/// One solution of the rotation optimisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The completed rotation matrix (m × m).
    pub rotation: DMatrix<f64>,
    /// Its objective value.
    pub f: f64,
    /// The start it came from (0 = ISA).
    pub start: usize,
}

/// scipy's `fmin` (Nelder–Mead, non-adaptive) with xtol = ftol = 1e-4 and
/// maxiter = maxfun = 200 N. Returns `(x_opt, f_opt, iterations, evaluations)`.
pub fn nelder_mead(f: &dyn Fn(&[f64]) -> f64, x0: &[f64]) -> (Vec<f64>, f64, usize, usize) {
    let n = x0.len();
    let (rho, chi, psi, sigma) = (1.0, 2.0, 0.5, 0.5);
    let (xtol, ftol) = (1e-4, 1e-4);
    let maxiter = 200 * n.max(1);
    let maxfun = maxiter;
    let mut fcalls = 0usize;
    // Evaluation with scipy's budget rule: past maxfun, the step is aborted.
    let eval = |p: &[f64], fcalls: &mut usize| -> Option<f64> {
        if *fcalls >= maxfun {
            return None;
        }
        *fcalls += 1;
        Some(f(p))
    };
    let mut sim: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
    sim.push(x0.to_vec());
    for p in 0..n {
        let mut y = x0.to_vec();
        y[p] = if y[p] != 0.0 { 1.05 * y[p] } else { 0.00025 };
        sim.push(y);
    }
    let mut fsim = vec![f64::INFINITY; n + 1];
    for j in 0..=n {
        match eval(&sim[j], &mut fcalls) {
            Some(v) => fsim[j] = v,
            None => break,
        }
    }
    let sort = |sim: &mut Vec<Vec<f64>>, fsim: &mut Vec<f64>| {
        let mut idx: Vec<usize> = (0..fsim.len()).collect();
        idx.sort_by(|&a, &b| fsim[a].total_cmp(&fsim[b]).then(a.cmp(&b)));
        *sim = idx.iter().map(|&i| sim[i].clone()).collect();
        *fsim = idx.iter().map(|&i| fsim[i]).collect();
    };
    sort(&mut sim, &mut fsim);
    let mut iterations = 1usize;
    cellfate_kernels::progress::start(
        "macrostates: Nelder-Mead iterations (at most)",
        maxiter as u64,
    );
    while fcalls < maxfun && iterations < maxiter {
        if cellfate_kernels::interrupt::requested() {
            break;
        }
        cellfate_kernels::progress::advance(1);
        let xdev = (1..=n)
            .flat_map(|j| (0..n).map(move |p| (j, p)))
            .map(|(j, p)| (sim[j][p] - sim[0][p]).abs())
            .fold(0.0, f64::max);
        let fdev = (1..=n)
            .map(|j| (fsim[0] - fsim[j]).abs())
            .fold(0.0, f64::max);
        if xdev <= xtol && fdev <= ftol {
            break;
        }
        let mut xbar = vec![0.0; n];
        for v in sim.iter().take(n) {
            for (b, x) in xbar.iter_mut().zip(v) {
                *b += x;
            }
        }
        xbar.iter_mut().for_each(|b| *b /= n as f64);
        let worst = sim[n].clone();
        let comb = |a: f64, b: f64| -> Vec<f64> {
            xbar.iter()
                .zip(&worst)
                .map(|(x, w)| a * x - b * w)
                .collect()
        };
        let aborted = 'step: {
            let xr = comb(1.0 + rho, rho);
            let Some(fxr) = eval(&xr, &mut fcalls) else {
                break 'step true;
            };
            let mut doshrink = false;
            if fxr < fsim[0] {
                let xe = comb(1.0 + rho * chi, rho * chi);
                let Some(fxe) = eval(&xe, &mut fcalls) else {
                    break 'step true;
                };
                if fxe < fxr {
                    sim[n] = xe;
                    fsim[n] = fxe;
                } else {
                    sim[n] = xr;
                    fsim[n] = fxr;
                }
            } else if fxr < fsim[n - 1] {
                sim[n] = xr;
                fsim[n] = fxr;
            } else if fxr < fsim[n] {
                let xc = comb(1.0 + psi * rho, psi * rho);
                let Some(fxc) = eval(&xc, &mut fcalls) else {
                    break 'step true;
                };
                if fxc <= fxr {
                    sim[n] = xc;
                    fsim[n] = fxc;
                } else {
                    doshrink = true;
                }
            } else {
                let xcc: Vec<f64> = xbar
                    .iter()
                    .zip(&worst)
                    .map(|(x, w)| (1.0 - psi) * x + psi * w)
                    .collect();
                let Some(fxcc) = eval(&xcc, &mut fcalls) else {
                    break 'step true;
                };
                if fxcc < fsim[n] {
                    sim[n] = xcc;
                    fsim[n] = fxcc;
                } else {
                    doshrink = true;
                }
            }
            if doshrink {
                for j in 1..=n {
                    let moved: Vec<f64> = sim[0]
                        .iter()
                        .zip(&sim[j])
                        .map(|(a, b)| a + sigma * (b - a))
                        .collect();
                    sim[j] = moved;
                    match eval(&sim[j], &mut fcalls) {
                        Some(v) => fsim[j] = v,
                        None => break 'step true,
                    }
                }
            }
            false
        };
        if !aborted {
            iterations += 1;
        }
        sort(&mut sim, &mut fsim);
        if aborted {
            break;
        }
    }
    let f_opt = fsim.iter().copied().fold(f64::INFINITY, f64::min);
    cellfate_kernels::progress::finish();
    (sim[0].clone(), f_opt, iterations, fcalls)
}

/// The rows `1..m` of the unnormalised rotation Ã for the free parameters `α = A[1..,1..]`
/// (row-major, k × k): column 0 completes each row's sum to 0 ((m − 1) × m).
fn free_rows(alpha: &[f64], k: usize) -> DMatrix<f64> {
    let mut at = DMatrix::zeros(k, k + 1);
    for i in 0..k {
        let mut s = 0.0;
        for j in 0..k {
            let v = alpha[i * k + j];
            at[(i, j + 1)] = v;
            s += v;
        }
        at[(i, 0)] = -s;
    }
    at
}

/// `X[rows, 1..m]`: the basis on the candidate rows without its constant column
/// (|rows| × (m − 1), column-major), gathered once per active set.
fn gather(x: &DMatrix<f64>, rows: &[usize]) -> DMatrix<f64> {
    DMatrix::from_fn(rows.len(), x.ncols() - 1, |r, i| x[(rows[r], i + 1)])
}

/// `P = X F` for the rows of `x` (rows × k, column-major) and `f` (k × m, row-major), into
/// `out` (rows × m, column-major). Each entry is summed as a plain loop per row and column
/// would: `((0 + X_r0 F_0j) + X_r1 F_1j) + …`, in index order with a separate multiply and add
/// (no fused multiply-add). The order fixes the rounding, and with it which local optimum the
/// multi-start reaches; it is the same at any block size and with any instruction set, so the
/// AVX2 path (chosen at run time) gives the same bits as the baseline SSE2 one.
fn products(x: &[f64], rows: usize, k: usize, f: &[f64], m: usize, out: &mut [f64]) {
    assert_eq!(x.len(), rows * k, "products: x is not rows × k");
    assert_eq!(f.len(), k * m, "products: f is not k × m");
    assert_eq!(out.len(), rows * m, "products: out is not rows × m");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked on the line above), the only requirement of
        // `products_avx2`; the slices' sizes are checked above.
        #[allow(unsafe_code)]
        unsafe {
            products_avx2(x, rows, k, f, m, out)
        };
        return;
    }
    products_blocked::<4, 4>(x, rows, k, f, m, out);
}

/// [`products_blocked`] compiled for AVX2 (4 doubles per register, 16 registers: blocks of 8
/// rows × 4 columns). No `fma` feature: the compiler never fuses, so rounding is unchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn products_avx2(x: &[f64], rows: usize, k: usize, f: &[f64], m: usize, out: &mut [f64]) {
    products_blocked::<8, 4>(x, rows, k, f, m, out);
}

/// The body of [`products`]: blocks of `R` rows × `J` columns keep `R·J` sums in registers,
/// so each value of `x` and `f` is loaded once per block instead of once per product.
#[inline(always)]
fn products_blocked<const R: usize, const J: usize>(
    x: &[f64],
    rows: usize,
    k: usize,
    f: &[f64],
    m: usize,
    out: &mut [f64],
) {
    let full_rows = rows - rows % R;
    let full_cols = m - m % J;
    for j0 in (0..full_cols).step_by(J) {
        for r0 in (0..full_rows).step_by(R) {
            let mut acc = [[0.0f64; R]; J];
            for i in 0..k {
                let xv: &[f64; R] = x[i * rows + r0..i * rows + r0 + R]
                    .try_into()
                    .expect("block of rows");
                let fv: &[f64; J] = f[i * m + j0..i * m + j0 + J]
                    .try_into()
                    .expect("block of columns");
                for (a, &fj) in acc.iter_mut().zip(fv) {
                    for (v, &xr) in a.iter_mut().zip(xv) {
                        *v += xr * fj;
                    }
                }
            }
            for (jj, a) in acc.iter().enumerate() {
                out[(j0 + jj) * rows + r0..(j0 + jj) * rows + r0 + R].copy_from_slice(a);
            }
        }
        // Rows past the last full block.
        for r in full_rows..rows {
            for jj in 0..J {
                let mut v = 0.0;
                for i in 0..k {
                    v += x[i * rows + r] * f[i * m + j0 + jj];
                }
                out[(j0 + jj) * rows + r] = v;
            }
        }
    }
    // Columns past the last full block: one column at a time, rows in the inner loop.
    for j in full_cols..m {
        let col = &mut out[j * rows..(j + 1) * rows];
        col.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..k {
            let fi = f[i * m + j];
            for (v, xi) in col.iter_mut().zip(&x[i * rows..(i + 1) * rows]) {
                *v += xi * fi;
            }
        }
    }
}

/// Objective and gradient with respect to the free parameters `α = A[1..,1..]` (row-major),
/// evaluating the maximum over cells on the candidate rows `xr` ([`gather`]). Returns `None`
/// when infeasible. The products `X Ã` (O(|rows| m²), what the optimiser spends its time on
/// at large m) run in register blocks ([`products`]).
fn value_and_gradient(alpha: &[f64], xr: &DMatrix<f64>, grad: &mut [f64]) -> Option<f64> {
    let (nr, k) = xr.shape();
    let m = k + 1;
    let free = free_rows(alpha, k);
    // First row: d_j = max_l −Σ_i X_li Ã_ij over the candidate rows; remember the argmax.
    let mut arg = vec![0usize; m];
    let mut d = vec![0.0; m];
    let mut all = vec![0.0; nr * m];
    // The transpose's column-major storage is `free` row-major, the layout `products` reads.
    products(
        xr.as_slice(),
        nr,
        k,
        free.transpose().as_slice(),
        m,
        &mut all,
    );
    for j in 0..m {
        let p = &all[j * nr..(j + 1) * nr];
        let mut best = f64::NEG_INFINITY;
        for (r, v) in p.iter().enumerate() {
            if -v > best {
                best = -v;
                arg[j] = r;
            }
        }
        d[j] = best;
    }
    if d.iter().any(|&v| v.is_nan() || v <= 0.0) {
        return None;
    }
    let s: f64 = d.iter().sum();
    let c: Vec<f64> = (0..m)
        .map(|j| free.column(j).iter().fold(d[j] * d[j], |a, v| a + v * v))
        .collect();
    let g: f64 = (0..m).map(|j| c[j] / d[j]).sum();
    let f = m as f64 - g / s;
    // ∂f/∂Ã_ij for i ≥ 1 (Ã_0j depends on them through d_j); row i − 1 of `gt`.
    let mut gt = DMatrix::zeros(k, m);
    for j in 0..m {
        let l = arg[j];
        for i in 0..k {
            let dd = -xr[(l, i)]; // ∂d_j/∂Ã_ij = ∂s/∂Ã_ij
            let dc = 2.0 * free[(i, j)] + 2.0 * d[j] * dd;
            let dg = dc / d[j] - c[j] / (d[j] * d[j]) * dd;
            gt[(i, j)] = -dg / s + g / (s * s) * dd;
        }
    }
    for i in 0..k {
        for j in 0..k {
            grad[i * k + j] = gt[(i, j + 1)] - gt[(i, 0)];
        }
    }
    Some(f)
}

/// Cells per block of [`completion_maxima`] (bounds its copy of the basis to 4096 × m values).
const MAXIMISER_BLOCK: usize = 4096;

/// Over all cells: for each column `j` of `free` (the rows `1..m` of a rotation, k × m), the
/// completion's value `max_l −Σ_i X_l,i+1 free_ij` and the first cell (in cell order) that
/// attains it. Each sum runs in index order from 0 with a separate multiply and add, as a plain
/// loop would ([`products`]), so the values are those of such a loop to the bit.
pub(super) fn completion_maxima(x: &DMatrix<f64>, free: &DMatrix<f64>) -> (Vec<f64>, Vec<usize>) {
    let (k, m) = free.shape();
    let mut best = vec![f64::NEG_INFINITY; m];
    let mut arg = vec![0usize; m];
    let n = x.nrows();
    let fr = free.transpose(); // row-major `free`
    let mut all = vec![0.0; MAXIMISER_BLOCK.min(n) * m];
    let mut start = 0;
    while start < n {
        let len = MAXIMISER_BLOCK.min(n - start);
        let block = x.view((start, 1), (len, k)).clone_owned();
        products(
            block.as_slice(),
            len,
            k,
            fr.as_slice(),
            m,
            &mut all[..len * m],
        );
        for j in 0..m {
            let p = &all[j * len..(j + 1) * len];
            for (r, v) in p.iter().enumerate() {
                if -v > best[j] {
                    best[j] = -v;
                    arg[j] = start + r;
                }
            }
        }
        start += len;
    }
    (best, arg)
}

/// Cells that attain the completion's maxima for rotation `alpha` (over all cells; the first
/// in cell order on ties).
fn maximisers(alpha: &[f64], x: &DMatrix<f64>) -> Vec<usize> {
    let k = (alpha.len() as f64).sqrt().round() as usize;
    completion_maxima(x, &free_rows(alpha, k)).1
}

/// Memory of the L-BFGS recursion (pairs kept).
const MEMORY: usize = 30;

/// L-BFGS on the active candidate set `rows` with a weak Wolfe line search (see the module
/// documentation). Returns (α, f, iterations, evaluations).
fn lbfgs(
    x: &DMatrix<f64>,
    rows: &[usize],
    start: &[f64],
    max_iter: usize,
) -> (Vec<f64>, f64, usize, usize) {
    let n = start.len();
    let xr = gather(x, rows);
    let mut xk = start.to_vec();
    let mut g = vec![0.0; n];
    let mut evals = 1;
    let Some(mut fk) = value_and_gradient(&xk, &xr, &mut g) else {
        return (xk, f64::INFINITY, 0, evals);
    };
    // (s, y, s·y, y·y) of the last `MEMORY` steps; the two products are kept from when the
    // pair was stored (the same values the loop would recompute every iteration).
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64, f64)> =
        std::collections::VecDeque::with_capacity(MEMORY + 1);
    let mut iters = 0;
    let mut gnew = vec![0.0; n];
    while iters < max_iter {
        if cellfate_kernels::interrupt::requested() {
            break;
        }
        let gmax = g.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        if gmax < 1e-12 {
            break;
        }
        // Two-loop recursion.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, sy, _) in hist.iter().rev() {
            let rho = 1.0 / sy;
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push((a, rho));
        }
        let gamma = match hist.back() {
            Some((_, _, sy, yy)) => sy / yy,
            _ => 1e-2 / gmax.max(1e-300),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, _, _), (a, rho)) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        let dir = if slope >= 0.0 {
            // Not a descent direction (non-smooth kink): restart with steepest descent.
            hist.clear();
            slope = -dot(&g, &g);
            g.iter().map(|v| -v * 1e-2 / gmax).collect::<Vec<_>>()
        } else {
            dir
        };
        let Some((xn, fnew)) = wolfe_step(&xr, &xk, fk, &dir, slope, &mut gnew, &mut evals) else {
            break;
        };
        let s: Vec<f64> = xn.iter().zip(&xk).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gnew.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-16 {
            let yy = dot(&y, &y);
            hist.push_back((s, y, sy, yy));
            if hist.len() > MEMORY {
                hist.pop_front();
            }
        }
        let df = fk - fnew;
        xk = xn;
        g.copy_from_slice(&gnew);
        fk = fnew;
        iters += 1;
        if df.abs() <= 1e-14 * fk.abs().max(1.0) {
            break;
        }
    }
    (xk, fk, iters, evals)
}

/// Weak Wolfe line search from `xk` (value `fk`) along `dir` (directional derivative `slope`
/// < 0), by bisection of a bracket and doubling while no upper bound is known (Lewis &
/// Overton, §4.2): a step is accepted when it decreases the value enough (Armijo, c₁ = 10⁻⁴)
/// and the slope there has risen to at least c₂ = 0.9 of the initial one. Infeasible trial
/// points count as too long. When the bracket collapses first, the longest step with enough
/// decrease is taken, if any. Returns the new point and value; its gradient is in `gnew`.
fn wolfe_step(
    xr: &DMatrix<f64>,
    xk: &[f64],
    fk: f64,
    dir: &[f64],
    slope: f64,
    gnew: &mut [f64],
    evals: &mut usize,
) -> Option<(Vec<f64>, f64)> {
    let (mut lo, mut hi, mut step) = (0.0f64, f64::INFINITY, 1.0f64);
    // The longest step so far with enough decrease: point, value, gradient.
    let mut best: Option<(Vec<f64>, f64, Vec<f64>)> = None;
    for _ in 0..60 {
        let trial: Vec<f64> = xk.iter().zip(dir).map(|(a, d)| a + step * d).collect();
        *evals += 1;
        match value_and_gradient(&trial, xr, gnew) {
            Some(ft) if ft <= fk + 1e-4 * step * slope => {
                let curved = dot(gnew, dir) >= 0.9 * slope;
                best = Some((trial, ft, gnew.to_vec()));
                if curved {
                    break;
                }
                lo = step;
            }
            _ => hi = step,
        }
        step = if hi.is_finite() {
            0.5 * (lo + hi)
        } else {
            2.0 * lo
        };
        if hi.is_finite() && hi - lo <= 1e-16 * hi {
            break;
        }
    }
    best.map(|(point, value, grad)| {
        gnew.copy_from_slice(&grad);
        (point, value)
    })
}

/// `a · b` in eight interleaved partial sums (element `i` goes to sum `i mod 8`), added
/// pairwise at the end, then the tail. A single chain of additions is bound by the adder's
/// latency; eight independent ones vectorise. The order is fixed, so the result does not depend
/// on the machine or the thread count.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let pairs = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let mut sum = (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]);
    for (x, y) in ta.iter().zip(tb) {
        sum += x * y;
    }
    sum
}

/// One start's result: the optimum (free parameters, objective, completed rotation) if
/// feasible, iterations and evaluations used.
type StartOutcome = (Option<(Vec<f64>, f64, DMatrix<f64>)>, usize, usize);

/// A start's solution.
struct StartSolution {
    /// The free parameters.
    alpha: Vec<f64>,
    /// The objective.
    f: f64,
    /// The start's index (0 = ISA).
    start: usize,
    /// The completed rotation when it is already known (saves a pass over all cells).
    rotation: Option<DMatrix<f64>>,
}

/// The settings of [`Optimizer::Gradient`], as [`gradient_multistart`] reads them.
struct MultistartOptions {
    n_starts: usize,
    seed: u64,
    max_iter: usize,
    perturbation: f64,
    budget: usize,
}

fn gradient_multistart(
    x: &DMatrix<f64>,
    a0: &DMatrix<f64>,
    alpha0: &[f64],
    opts: MultistartOptions,
    f_start: f64,
) -> Result<(Vec<StartSolution>, OptimizerReport), GpccaError> {
    let MultistartOptions {
        n_starts,
        seed,
        max_iter,
        perturbation,
        budget,
    } = opts;
    let m = a0.nrows();
    let k = m - 1;
    // Starts run in parallel; each is deterministic and the winner is chosen by (objective,
    // start index), so the result does not depend on the number of threads.
    cellfate_kernels::progress::start("macrostates: optimiser starts", n_starts as u64);
    let outcomes: Vec<StartOutcome> = (0..n_starts)
        .into_par_iter()
        .map(|start| {
            let (mut iterations, mut evaluations) = (0, 0);
            let init: Vec<f64> = if start == 0 {
                alpha0.to_vec()
            } else {
                // A random rotation close to the identity applied to the free block.
                let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(start as u64));
                let mut skew = DMatrix::zeros(k, k);
                for i in 0..k {
                    for j in (i + 1)..k {
                        let v: f64 = rng.random_range(-1.0..1.0) * perturbation;
                        skew[(i, j)] = v;
                        skew[(j, i)] = -v;
                    }
                }
                let rot = (DMatrix::identity(k, k) + skew).qr().q();
                let b0 = DMatrix::from_fn(k, k, |i, j| alpha0[i * k + j]);
                let b = b0 * rot;
                (0..k * k).map(|p| b[(p / k, p % k)]).collect()
            };
            // Active set: the maximisers at the start, grown until verified on all cells.
            let mut rows = maximisers(&init, x);
            rows.sort_unstable();
            rows.dedup();
            let mut current = init;
            let mut fval = f64::INFINITY;
            for _round in 0..50 {
                if iterations >= budget {
                    break;
                }
                let (xa, fa, it, ev) = lbfgs(x, &rows, &current, max_iter.min(budget - iterations));
                iterations += it;
                evaluations += ev;
                current = xa;
                fval = fa;
                if !fval.is_finite() || iterations >= budget {
                    break;
                }
                let new: Vec<usize> = maximisers(&current, x)
                    .into_iter()
                    .filter(|l| rows.binary_search(l).is_err())
                    .collect();
                if new.is_empty() {
                    break;
                }
                rows.extend(new);
                rows.sort_unstable();
                rows.dedup();
            }
            if !fval.is_finite() {
                return (None, iterations, evaluations);
            }
            // The exact objective on all cells (equal to the active set's when it was verified).
            let mut a = embed(&current, a0);
            if fill_matrix(&mut a, x).is_err() {
                return (None, iterations, evaluations);
            }
            let f = objective_of(&a);
            (Some((current, f, a)), iterations, evaluations)
        })
        .inspect(|_| cellfate_kernels::progress::advance(1))
        .collect();
    cellfate_kernels::progress::finish();
    let iterations = outcomes.iter().map(|o| o.1).sum();
    let evaluations = outcomes.iter().map(|o| o.2).sum();
    let mut found: Vec<StartSolution> = outcomes
        .into_iter()
        .enumerate()
        .filter_map(|(start, (res, _, _))| {
            res.map(|(alpha, f, a)| StartSolution {
                alpha,
                f,
                start,
                rotation: Some(a),
            })
        })
        .collect();
    if found.is_empty() {
        return Err(Infeasibility::AllStarts { starts: n_starts }.into());
    }
    // Best objective first; ties by start index (independent of the thread count).
    found.sort_by(|a, b| a.f.total_cmp(&b.f).then(a.start.cmp(&b.start)));
    // Never worse than the ISA start: a best worse than it is replaced by the ISA rotation.
    if found[0].f > f_start {
        found.insert(
            0,
            StartSolution {
                alpha: alpha0.to_vec(),
                f: f_start,
                start: 0,
                rotation: None,
            },
        );
    }
    let (f_opt, best_start) = (found[0].f, found[0].start);
    Ok((
        found,
        OptimizerReport {
            method: "gradient".into(),
            f_opt,
            f_start,
            iterations,
            evaluations,
            best_start,
            rejected: 0,
        },
    ))
}

/// Test hook: the objective and its analytic gradient on the given candidate rows.
#[cfg(test)]
pub(crate) fn test_value_and_gradient(
    alpha: &[f64],
    x: &DMatrix<f64>,
    rows: &[usize],
    g: &mut [f64],
) -> f64 {
    value_and_gradient(alpha, &gather(x, rows), g).unwrap_or(f64::INFINITY)
}

#[cfg(test)]
mod product_tests {
    use super::products;
    use nalgebra::DMatrix;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The completion's maxima over blocks of cells equal those of a plain loop over all cells,
    /// to the bit, with the first maximiser on ties (rows past one block, repeated rows).
    #[test]
    fn completion_maxima_equal_the_plain_loop_to_the_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut next = move || rng.random::<f64>() - 0.5;
        let (n, m) = (super::MAXIMISER_BLOCK + 7, 6);
        let mut x = DMatrix::from_fn(n, m, |_, i| if i == 0 { 1.0 } else { next() });
        // A repeated row across the block edge (a tie wherever it is a maximiser).
        let row = x.row(3).clone_owned();
        x.set_row(super::MAXIMISER_BLOCK + 2, &row);
        let free = DMatrix::from_fn(m - 1, m, |_, _| next());
        let (best, arg) = super::completion_maxima(&x, &free);
        for j in 0..m {
            let (mut b, mut a) = (f64::NEG_INFINITY, 0);
            for l in 0..n {
                let mut v = 0.0;
                for i in 1..m {
                    v += x[(l, i)] * free[(i - 1, j)];
                }
                if -v > b {
                    b = -v;
                    a = l;
                }
            }
            assert_eq!(best[j].to_bits(), b.to_bits(), "column {j}: maximum");
            assert_eq!(arg[j], a, "column {j}: maximiser");
        }
    }

    /// The blocked products equal, to the bit, a plain loop per entry in index order: every
    /// size around the block edges, values of mixed sign and scale.
    #[test]
    fn blocked_products_equal_the_plain_loop_to_the_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut next = move || (rng.random::<f64>() - 0.5) * 10f64.powi(rng.random_range(-3..4));
        for rows in [0usize, 1, 3, 4, 5, 8, 9, 17, 33] {
            for k in [1usize, 2, 5, 8] {
                for m in [1usize, 3, 4, 6, 9] {
                    let x: Vec<f64> = (0..rows * k).map(|_| next()).collect();
                    let f: Vec<f64> = (0..k * m).map(|_| next()).collect();
                    let mut out = vec![f64::NAN; rows * m];
                    products(&x, rows, k, &f, m, &mut out);
                    let mut base = vec![f64::NAN; rows * m];
                    super::products_blocked::<4, 4>(&x, rows, k, &f, m, &mut base);
                    assert!(
                        out.iter()
                            .zip(&base)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "rows {rows}, k {k}, m {m}: the run-time path differs from the baseline"
                    );
                    for r in 0..rows {
                        for j in 0..m {
                            let mut v = 0.0;
                            for i in 0..k {
                                v += x[i * rows + r] * f[i * m + j];
                            }
                            assert_eq!(
                                out[j * rows + r].to_bits(),
                                v.to_bits(),
                                "rows {rows}, k {k}, m {m}: entry ({r}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }
}
