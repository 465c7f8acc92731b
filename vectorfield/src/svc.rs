//! SparseVFC (Ma et al. 2013, as dynamo 1.5.3's `vf.VectorField` runs it): a vector field
//! learnt from noisy velocities by a robust EM — each cell is an inlier with posterior P_i
//! (Gaussian noise of variance σ²) or an outlier (uniform density 1/a) — with the field
//! restricted to a Gaussian-kernel expansion on M control points and Tikhonov-regularised
//! in the kernel's Hilbert space (λ).
//!
//! Where this deviates from dynamo (documented in `../shared/docs/dynamo-notes.md` §2):
//! - the M-step's linear system `(Uᵀ diag(P) U + λσ²K) C = Uᵀ diag(P) Y` (M × M, symmetric
//!   positive definite) is solved directly by Cholesky; dynamo's default forms its normal
//!   equations, which squares the condition number;
//! - the control points are drawn with a seeded ChaCha generator (weighted sampling without
//!   replacement by exponential keys), so they differ from numpy's draw; dynamo's own control
//!   points can be given ([`SparseVfcOptions::ctrl_idx`]) to reproduce its fit;
//! - `control_point_<basis>` marks the control points' cells (dynamo marks the positions of the
//!   sorted unique rows instead);
//! - no restarts: dynamo's restarts reuse the same seed and so repeat the same fit;
//! - at scale: at most 1,000 control points by default and the EM fitted on at most 50,000
//!   cells drawn at random (the field is evaluated at every cell), where dynamo's M = N/20
//!   makes the kernel matrix quadratic in N.
//!
//! Every reduction over cells runs in a fixed order, so the fit is the same at any thread
//! count.

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{VectorField, VectorFieldError};

/// Cells per chunk of the kernel matrix (the unit of the ordered sums).
const CHUNK: usize = 2048;

/// Options of [`sparse_vfc`], dynamo's names and defaults (`vf.VectorField`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SparseVfcOptions {
    /// Control points (`M`); `None`: max(min(50, N), ⌊0.05 N⌋ + 1) (dynamo's rule), at most
    /// [`SparseVfcOptions::max_ctrl`].
    pub m: Option<usize>,
    /// The most control points the default rule gives (1,000; dynamo's rule grows without
    /// bound: 50,000 control points at 1,000,000 cells, an M × N kernel matrix of 400 GB).
    pub max_ctrl: usize,
    /// The EM fits on at most this many cells, drawn at random (seeded) among those with a
    /// finite velocity (50,000); the field is then evaluated at every cell. dynamo fits on
    /// every cell.
    pub max_fit_cells: usize,
    /// Volume of the outliers' uniform density (`a`, 5).
    pub a: f64,
    /// Kernel parameter β of exp(−β‖x − y‖²); `None`: 1.125 / d̄², d̄ the mean distance of each
    /// control point to its ⌊0.2 M⌋ − 1 nearest others (dynamo's rule).
    pub beta: Option<f64>,
    /// Stop when the energy changes by less than this, relative (`ecr`, 1e-5).
    pub ecr: f64,
    /// Initial inlier fraction (`gamma`, 0.9).
    pub gamma: f64,
    /// Regularisation (`lambda_`, 3).
    pub lambda: f64,
    /// Floor on the posteriors in the M-step (`minP`, 1e-5).
    pub min_p: f64,
    /// EM iterations (`MaxIter`, 30).
    pub max_iter: usize,
    /// A cell is an inlier when its posterior exceeds this (`theta`, 0.75).
    pub theta: f64,
    /// Seed of the control-point draw (`seed`, 0).
    pub seed: u64,
    /// Draw control points with probability proportional to the speed ‖y‖
    /// (`velocity_based_sampling`, true); uniformly otherwise.
    pub velocity_based_sampling: bool,
    /// Use these cells (row indices) as control points instead of drawing them.
    pub ctrl_idx: Option<Vec<usize>>,
    /// Fit the velocities divided by their root-mean-square length (and scale the field
    /// back), so that the outliers' density 1/`a` and the initial σ² mean the same at any
    /// velocity scale (cellfate's default). dynamo fits the velocities as given (its
    /// `normalize=True` is broken), and its EM then takes every cell for an outlier when the
    /// velocities are large against `a` (measured: γ falls to 0.05 and the fit stops on a
    /// field with speeds ~10).
    pub normalize_velocity: bool,
}

impl Default for SparseVfcOptions {
    fn default() -> Self {
        Self {
            m: None,
            max_ctrl: 1000,
            max_fit_cells: 50_000,
            a: 5.0,
            beta: None,
            ecr: 1e-5,
            gamma: 0.9,
            lambda: 3.0,
            min_p: 1e-5,
            max_iter: 30,
            theta: 0.75,
            seed: 0,
            velocity_based_sampling: true,
            ctrl_idx: None,
            normalize_velocity: true,
        }
    }
}

/// A fitted field and what the EM recorded, under dynamo's names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseVfc {
    /// The field.
    pub field: VectorField,
    /// Rows used (finite position and velocity): `valid_ind`.
    pub valid: Vec<bool>,
    /// The control points' rows: `ctrl_idx` (indices of cells, unlike dynamo's).
    pub ctrl_idx: Vec<usize>,
    /// f at every row (row-major n × d; NaN rows where the position is not finite): `V`.
    pub v: Vec<f64>,
    /// Posterior of being an inlier, per row (NaN for rows not used): `P`.
    pub p: Vec<f64>,
    /// Final noise variance (in the velocities' units): `sigma2`.
    pub sigma2: f64,
    /// Final inlier fraction γ.
    pub gamma: f64,
    /// EM iterations run.
    pub iterations: usize,
    /// Energy per iteration: `E_traj`.
    pub energy: Vec<f64>,
    /// Relative energy change per iteration: `tecr_traj`.
    pub tecr: Vec<f64>,
}

impl SparseVfc {
    /// `VFCIndex`: the inliers (posterior above `theta`).
    pub fn inliers(&self, theta: f64) -> Vec<bool> {
        self.p.iter().map(|&p| p > theta).collect()
    }
}

/// The default number of control points for N cells (dynamo's rule).
pub fn default_m(n: usize) -> usize {
    n.min(50).max(n / 20 + 1)
}

/// Checks that `x` (positions) and `y` (velocities) are n × d row-major with d ≥ 1; returns n.
fn shape(x: &[f64], y: &[f64], d: usize) -> Result<usize, VectorFieldError> {
    if d == 0 || x.len() % d != 0 || x.len() != y.len() {
        return Err(VectorFieldError::Invalid(format!(
            "positions ({} values) and velocities ({} values) must both be n × {d}",
            x.len(),
            y.len()
        )));
    }
    Ok(x.len() / d)
}

/// Weighted sampling of `k` distinct indices without replacement (probability ∝ `w`, the
/// Efraimidis–Spirakis keys u^(1/w)); indices with zero weight come last, uniformly.
fn weighted_sample(w: &[f64], k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut keys: Vec<(f64, usize)> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            // log(u)/w: larger is more likely; zero weight → −∞ with a uniform tie-break.
            let key = if wi > 0.0 && wi.is_finite() {
                u.ln() / wi
            } else {
                f64::NEG_INFINITY
            };
            (key, i)
        })
        .collect();
    // Zero-weight indices are ordered by a second uniform draw.
    let tail: Vec<f64> = (0..w.len()).map(|_| rng.random::<f64>()).collect();
    keys.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| tail[b.1].total_cmp(&tail[a.1]))
            .then(a.1.cmp(&b.1))
    });
    keys.into_iter().take(k).map(|(_, i)| i).collect()
}

/// Squared distance of two points.
fn d2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// dynamo's bandwidth rule on the control points (row-major M × d).
fn default_beta(ctrl: &[f64], d: usize) -> f64 {
    let m = ctrl.len() / d;
    let k = ((m as f64 * 0.2).floor() as usize).max(2) - 1;
    let k = k.min(m.saturating_sub(1)).max(1);
    let rows: Vec<&[f64]> = ctrl.chunks_exact(d).collect();
    let (sum, count) = rows
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut ds: Vec<f64> = rows
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, b)| d2(a, b).sqrt())
                .collect();
            ds.sort_by(f64::total_cmp);
            ds.truncate(k);
            (ds.iter().sum::<f64>(), ds.len())
        })
        .fold((0.0, 0usize), |(s, c), (a, b)| (s + a, c + b));
    let mean = if count > 0 { sum / count as f64 } else { 0.0 };
    if mean > 0.0 {
        1.125 / (mean * mean)
    } else {
        1.0
    }
}

/// Fits a vector field to velocities `y` at positions `x` (both row-major n × d) by
/// SparseVFC. Rows whose velocity is not finite are left out of the fit (`valid`); a
/// position that is not finite is an error naming the row.
pub fn sparse_vfc(
    x: &[f64],
    y: &[f64],
    d: usize,
    opts: &SparseVfcOptions,
) -> Result<SparseVfc, VectorFieldError> {
    let n = shape(x, y, d)?;
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        return Err(VectorFieldError::Invalid(format!(
            "positions must be finite: cell {} has {} in dimension {}",
            k / d,
            x[k],
            k % d
        )));
    }
    for (name, v, ok) in [
        ("a", opts.a, opts.a > 0.0),
        ("gamma", opts.gamma, opts.gamma > 0.0 && opts.gamma < 1.0),
        ("lambda", opts.lambda, opts.lambda > 0.0),
        ("theta", opts.theta, (0.0..=1.0).contains(&opts.theta)),
        ("min_p", opts.min_p, opts.min_p >= 0.0),
        ("ecr", opts.ecr, opts.ecr >= 0.0),
    ] {
        if !(v.is_finite() && ok) {
            return Err(VectorFieldError::Invalid(format!(
                "SparseVFC option {name} = {v} is out of range"
            )));
        }
    }
    let valid: Vec<bool> = y
        .chunks_exact(d)
        .map(|r| r.iter().all(|v| v.is_finite()))
        .collect();
    let rows: Vec<usize> = (0..n).filter(|&i| valid[i]).collect();
    let nv = rows.len();
    // Distinct positions among the valid rows (the first row of each).
    let mut order = rows.clone();
    order.sort_by(|&a, &b| {
        x[a * d..(a + 1) * d]
            .iter()
            .zip(&x[b * d..(b + 1) * d])
            .map(|(p, q)| p.total_cmp(q))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order.dedup_by(|b, a| x[*a * d..(*a + 1) * d] == x[*b * d..(*b + 1) * d]);
    let ctrl_idx = match &opts.ctrl_idx {
        Some(idx) => {
            if idx.is_empty() {
                return Err(VectorFieldError::Invalid(
                    "ctrl_idx: no control point given".into(),
                ));
            }
            if let Some(&bad) = idx.iter().find(|&&i| i >= n || !valid[i]) {
                return Err(VectorFieldError::Invalid(format!(
                    "ctrl_idx: row {bad} is not a cell with a finite velocity (of {n} cells)"
                )));
            }
            idx.clone()
        }
        None => {
            let m = opts
                .m
                .unwrap_or_else(|| default_m(n).min(opts.max_ctrl.max(2)))
                .min(order.len());
            if m < 2 {
                return Err(VectorFieldError::TooFewCells {
                    cells: order.len(),
                    needed: 2,
                });
            }
            let w: Vec<f64> = order
                .iter()
                .map(|&i| {
                    if opts.velocity_based_sampling {
                        d2(&y[i * d..(i + 1) * d], &vec![0.0; d]).sqrt()
                    } else {
                        1.0
                    }
                })
                .collect();
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
            let mut picked: Vec<usize> = weighted_sample(&w, m, &mut rng)
                .into_iter()
                .map(|k| order[k])
                .collect();
            picked.sort_unstable();
            picked
        }
    };
    let m = ctrl_idx.len();
    let ctrl: Vec<f64> = ctrl_idx
        .iter()
        .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
        .collect();
    let beta = match opts.beta {
        Some(b) if b.is_finite() && b > 0.0 => b,
        Some(b) => {
            return Err(VectorFieldError::Invalid(format!(
                "beta = {b}: expected a positive kernel parameter"
            )))
        }
        None => default_beta(&ctrl, d),
    };
    let kern = |a: &[f64], b: &[f64]| (-beta * d2(a, b)).exp();
    // The cells the EM fits on: every valid cell, or a seeded uniform draw of them.
    let fit_rows: Vec<usize> = if nv > opts.max_fit_cells.max(m) {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x05ee_df17);
        let mut pick = weighted_sample(&vec![1.0; nv], opts.max_fit_cells.max(m), &mut rng);
        pick.sort_unstable();
        pick.into_iter().map(|k| rows[k]).collect()
    } else {
        rows.clone()
    };
    let nf = fit_rows.len();
    // U (cells × M) in fixed chunks of cells: every product below is summed chunk by chunk
    // in chunk order (each chunk's product sequential), so the same at any thread count.
    let xrow = |i: usize| &x[i * d..(i + 1) * d];
    let crow = |a: usize| &ctrl[a * d..(a + 1) * d];
    let u: Vec<faer::Mat<f64>> = fit_rows
        .par_chunks(CHUNK)
        .map(|rs| faer::Mat::from_fn(rs.len(), m, |r, a| kern(xrow(rs[r]), crow(a))))
        .collect();
    let kmat = DMatrix::from_fn(m, m, |a, b| kern(crow(a), crow(b)));
    let mut yv: Vec<f64> = fit_rows
        .iter()
        .flat_map(|&i| y[i * d..(i + 1) * d].iter().copied())
        .collect();
    let scale = if opts.normalize_velocity {
        let ms = yv.iter().map(|t| t * t).sum::<f64>() / nf.max(1) as f64;
        if ms > 0.0 {
            ms.sqrt()
        } else {
            1.0
        }
    } else {
        1.0
    };
    if scale != 1.0 {
        yv.iter_mut().for_each(|t| *t /= scale);
    }
    let mut v = vec![0.0; nf * d];
    let mut coef = DMatrix::<f64>::zeros(m, d);
    let mut sigma2 = yv.iter().map(|t| t * t).sum::<f64>() / (nf * d).max(1) as f64;
    if sigma2 < 1e-8 {
        sigma2 = 1e-7;
    }
    let mut gamma = opts.gamma;
    let (mut e_old, mut tecr) = (1.0f64, 1.0f64);
    let mut p = vec![0.0; nf];
    let (mut energy, mut tecrs) = (Vec::new(), Vec::new());
    let mut it = 0;
    let df = d as f64;
    let outlier_density = |sigma2: f64, gamma: f64| {
        (2.0 * std::f64::consts::PI * sigma2).powf(df / 2.0) * (1.0 - gamma) / (gamma * opts.a)
    };
    while it < opts.max_iter && tecr > opts.ecr && sigma2 > 1e-8 {
        // E-step.
        let r: Vec<f64> = (0..nf)
            .map(|i| d2(&yv[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]))
            .collect();
        let mut t: Vec<f64> = r.iter().map(|ri| (-ri / (2.0 * sigma2)).exp()).collect();
        let tiny = t
            .iter()
            .copied()
            .filter(|&x| x > 0.0)
            .fold(f64::INFINITY, f64::min);
        let tiny = if tiny.is_finite() {
            tiny
        } else {
            f64::MIN_POSITIVE
        };
        t.iter_mut().filter(|x| **x == 0.0).for_each(|x| *x = tiny);
        let outlier = outlier_density(sigma2, gamma);
        for (pi, ti) in p.iter_mut().zip(&t) {
            *pi = ti / (ti + outlier);
        }
        let sp: f64 = p.iter().sum();
        let ckc = (coef.transpose() * &kmat * &coef).trace();
        let e = p.iter().zip(&r).map(|(pi, ri)| pi * ri).sum::<f64>() / (2.0 * sigma2)
            + df / 2.0 * sp * sigma2.ln()
            + opts.lambda / 2.0 * ckc;
        tecr = ((e - e_old) / e).abs();
        e_old = e;
        energy.push(e);
        tecrs.push(tecr);
        // M-step: (Uᵀ diag(P) U + λσ²K) C = Uᵀ diag(P) Y.
        p.iter_mut().for_each(|x| *x = x.max(opts.min_p));
        let parts: Vec<(faer::Mat<f64>, faer::Mat<f64>)> = u
            .par_iter()
            .enumerate()
            .map(|(c, uc)| {
                let off = c * CHUNK;
                let rows_c = uc.nrows();
                let w = faer::Mat::from_fn(rows_c, m, |r, a| uc[(r, a)] * p[off + r].sqrt());
                let mut g = faer::Mat::<f64>::zeros(m, m);
                faer::linalg::matmul::matmul(
                    g.as_mut(),
                    faer::Accum::Replace,
                    w.transpose(),
                    w.as_ref(),
                    1.0,
                    faer::Par::Seq,
                );
                let yc = faer::Mat::from_fn(rows_c, d, |r, k| yv[(off + r) * d + k] * p[off + r]);
                let mut b = faer::Mat::<f64>::zeros(m, d);
                faer::linalg::matmul::matmul(
                    b.as_mut(),
                    faer::Accum::Replace,
                    uc.transpose(),
                    yc.as_ref(),
                    1.0,
                    faer::Par::Seq,
                );
                (g, b)
            })
            .collect();
        let ls = opts.lambda * sigma2;
        let mut a = DMatrix::<f64>::from_fn(m, m, |i, j| ls * kmat[(i, j)]);
        let mut b = DMatrix::<f64>::zeros(m, d);
        for (g, bc) in &parts {
            for j in 0..m {
                for i in 0..m {
                    a[(i, j)] += g[(i, j)];
                }
                for k in 0..d {
                    b[(j, k)] += bc[(j, k)];
                }
            }
        }
        // Symmetric up to rounding: use the lower triangle.
        for j in 0..m {
            for i in 0..j {
                a[(i, j)] = a[(j, i)];
            }
        }
        coef = solve_spd(a, b)?;
        // V = U C.
        let cf = faer::Mat::from_fn(m, d, |i, k| coef[(i, k)]);
        let vs: Vec<faer::Mat<f64>> = u
            .par_iter()
            .map(|uc| {
                let mut vc = faer::Mat::<f64>::zeros(uc.nrows(), d);
                faer::linalg::matmul::matmul(
                    vc.as_mut(),
                    faer::Accum::Replace,
                    uc.as_ref(),
                    cf.as_ref(),
                    1.0,
                    faer::Par::Seq,
                );
                vc
            })
            .collect();
        for (c, vc) in vs.iter().enumerate() {
            for r in 0..vc.nrows() {
                for k in 0..d {
                    v[(c * CHUNK + r) * d + k] = vc[(r, k)];
                }
            }
        }
        let sp: f64 = p.iter().sum();
        let num: f64 = (0..nf)
            .map(|i| p[i] * d2(&yv[i * d..(i + 1) * d], &v[i * d..(i + 1) * d]))
            .sum();
        sigma2 = num / (df * sp);
        let inl = p.iter().filter(|&&x| x > opts.theta).count() as f64 / nf as f64;
        gamma = inl.clamp(0.05, 0.95);
        it += 1;
    }
    let coef_rows: Vec<f64> = (0..m)
        .flat_map(|ia| (0..d).map(move |k| (ia, k)))
        .map(|(ia, k)| coef[(ia, k)] * scale)
        .collect();
    let field = VectorField::new(d, ctrl, coef_rows, beta)?;
    let v_all = field.eval_rows(x);
    let mut p_all = vec![f64::NAN; n];
    if nf < nv {
        // Cells left out of the fit: their posterior under the final noise model.
        let outlier = outlier_density(sigma2, gamma);
        for &i in &rows {
            let r: f64 = (0..d)
                .map(|k| ((y[i * d + k] - v_all[i * d + k]) / scale).powi(2))
                .sum();
            let t = (-r / (2.0 * sigma2)).exp();
            p_all[i] = t / (t + outlier);
        }
    }
    for (k, &i) in fit_rows.iter().enumerate() {
        p_all[i] = p[k];
    }
    Ok(SparseVfc {
        field,
        valid,
        ctrl_idx,
        v: v_all,
        p: p_all,
        sigma2: sigma2 * scale * scale,
        gamma,
        iterations: it,
        energy,
        tecr: tecrs,
    })
}

/// Solves the symmetric positive-definite system `a c = b` (Cholesky; LU when rounding has
/// made `a` indefinite).
fn solve_spd(a: DMatrix<f64>, b: DMatrix<f64>) -> Result<DMatrix<f64>, VectorFieldError> {
    if let Some(ch) = a.clone().cholesky() {
        return Ok(ch.solve(&b));
    }
    a.lu().solve(&b).ok_or_else(|| {
        VectorFieldError::Numerical(
            "SparseVFC: the M-step's system is singular (duplicate control points?)".into(),
        )
    })
}

/// The mean cosine between `y` and `v` over rows where both are non-zero and finite (dynamo's
/// restart criterion; reported by the CLI).
pub fn mean_cosine(y: &[f64], v: &[f64], d: usize) -> f64 {
    let cos: Vec<f64> = y
        .chunks_exact(d)
        .zip(v.chunks_exact(d))
        .filter_map(|(a, b)| {
            let (na, nb) = (d2(a, &vec![0.0; d]).sqrt(), d2(b, &vec![0.0; d]).sqrt());
            let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let c = dot / (na * nb);
            c.is_finite().then_some(c)
        })
        .collect();
    if cos.is_empty() {
        f64::NAN
    } else {
        cos.iter().sum::<f64>() / cos.len() as f64
    }
}
