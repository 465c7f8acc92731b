//! Gene expression trends along pseudotime for one lineage: the numerical core of CellRank's
//! `gene_trends` / `heatmap`.
//!
//! # Model
//!
//! A penalised regression spline (P-spline, Eilers & Marx 1996) of one gene's expression `y`
//! over pseudotime `t`, weighted by the cells' fate probabilities `w` for the lineage:
//!
//! ```text
//! minimise  Σ_i w_i (y_i − B(t_i)·c)²  +  λ ‖D c‖²
//! ```
//!
//! * `B` is the cubic B-spline basis on `n_knots` equally spaced segments of `[t_min, t_max]`
//!   (the range of the cells kept, see below), with the knots continued at the same spacing
//!   beyond both ends, so there are `K = n_knots + 3` basis functions and they sum to 1
//!   everywhere on `[t_min, t_max]`.
//! * `D` is the second-order difference matrix (`(K − 2) × K`, rows `1, −2, 1`); its null
//!   space is the straight lines, so `λ → ∞` gives the weighted least-squares line.
//! * The coefficients solve `A c = Bᵀ W y` with `A = BᵀWB + λDᵀD + εI`, where the tiny ridge
//!   `ε = 10⁻¹⁰ · trace(BᵀWB) / K` keeps `A` positive definite when a basis function has no
//!   cell under it and `λ = 0` (it changes fits by a relative `~10⁻¹⁰`). `A` is `K × K`
//!   (9 × 9 by default) and is solved by a hand-written dense Cholesky factorisation.
//! * `y` is centred at its weighted mean before the fit and the mean is added back (exact,
//!   because the basis sums to 1 and `D` annihilates constants; it keeps the residual sums of
//!   squares below free of cancellation, and the ridge shrinks towards the mean, not 0).
//!
//! Cells with `w ≤ weight_threshold` are dropped; all others are used with their weight.
//!
//! # Choice of λ: generalised cross-validation
//!
//! Unless [`TrendOptions::lambda`] fixes it, λ is the minimiser of
//!
//! ```text
//! GCV(λ) = n_eff · RSS_w(λ) / (n_eff − γ · edf(λ))²,   edf(λ) = trace(A⁻¹ BᵀWB),
//! RSS_w(λ) = Σ_i w_i (y_i − ŷ_i)²,   γ = 1.4
//! ```
//!
//! over the 33 values `λ = s · trace(BᵀWB) / trace(DᵀD)`, `s = 10⁻⁴, 10^−3.75, …, 10⁴`
//! (quarter decades), the first (smallest λ) on ties; λ values with `γ · edf ≥ n_eff` are
//! skipped. `γ = 1.4` is pyGAM's default (`gamma` of its GCV, after Kim & Gu 2004): plain GCV
//! (`γ = 1`) is known to undersmooth now and then, and on pure noise (2000 cells, 100 seeds) it
//! chose a wiggly trend (`edf > 2.5`) in 31 % of the seeds against 14 % with `γ = 1.4`, while
//! the accuracy on smooth signals hardly changes.
//! The trace normalisation makes the grid independent of the number of cells and the scale of
//! the weights. `A` is factorised once per grid value and shared by all genes of
//! [`fit_trends`].
//!
//! `n_eff` is Kish's effective number of cells, `(Σw)² / Σw²`:
//! * with equal weights it is the number of cells, so GCV is the textbook formula;
//! * it does not change when all weights are multiplied by a constant, so neither does the
//!   chosen λ (`n_eff = Σw` would make the choice depend on the units of the weights);
//! * it discounts cells of tiny weight: with fate probabilities, tens of thousands of cells of
//!   other lineages carry weights near 0 and no information about this lineage; counting them
//!   (`n_eff` = number of cells with `w > 0`) would make GCV barely charge for degrees of
//!   freedom and undersmooth.
//!
//! # Confidence band
//!
//! Pointwise `mean(t) ± z · se(t)` with `z = Φ⁻¹((1 + confidence) / 2)` (1.96 for 95 %) and
//! the Bayesian (Wahba / Silverman) posterior standard error, the form pyGAM-like packages
//! report:
//!
//! ```text
//! se(t)² = σ² · b(t)ᵀ A⁻¹ b(t),   σ² = RSS_w / (n_eff − edf)
//! ```
//!
//! at the chosen λ. With equal weights `σ²` is the usual `RSS / (n − edf)`. With unequal
//! weights, read as importance weights of cells that all have the same noise variance `σ_y²`,
//! the exact (sandwich) variance is `σ_y² · bᵀA⁻¹BᵀW²BA⁻¹b`. If the weights do not depend on
//! `t`, `BᵀW²B ≈ (Σw²/Σw) · BᵀWB`, so for small λ that is `σ_y² (Σw²/Σw) · bᵀA⁻¹b`, and
//! `σ² = RSS_w / (n_eff − edf) ≈ σ_y² Σw / n_eff = σ_y² Σw²/Σw` is exactly that factor (with
//! `Σw − edf` in place of `n_eff − edf` the band would be off by the factor `Σw²/Σw`, the scale
//! of the weights). Where the weights change along `t` (fate probabilities rising along the
//! lineage) this holds on average, not pointwise. The band ignores the uncertainty of λ.
//!
//! # Differences from CellRank / pyGAM
//!
//! * CellRank's default model is pyGAM with a Gamma distribution and log link, `n_splines =
//!   n_knots = 6` basis functions, a fixed `lam = 3` on a derivative plus an l2 penalty and no
//!   grid search (unless `grid` is given). We fit a Gaussian (identity link) P-spline with
//!   `n_knots + 3` basis functions and choose λ by GCV on a fixed grid, so trends are not
//!   numerically equal to CellRank's; they are smooth weighted means of the same data.
//! * CellRank raises weights below `weight_threshold = 0.01` to 0.01 (keeping every cell), keeps
//!   one cell per distinct time, and by default ends the test grid where a moving average of
//!   the lineage's weights peaks; we drop cells with `w ≤ weight_threshold` (default 0: only
//!   zero weights), keep every other cell, and span the grid over all kept cells.
//! * CellRank's confidence interval is pyGAM's; ours is the Bayesian band above.
//!
//! # Determinism
//!
//! Every sum runs over the cells in order on one thread; [`fit_trends`] runs genes in parallel
//! with rayon but each gene's arithmetic is sequential and independent of the others, so the
//! results are bit-identical at any number of threads and equal to [`fit_trend`] gene by gene.

use rayon::prelude::*;
use thiserror::Error;

use crate::drivers::norm_ppf;

/// Number of λ values of the GCV grid (quarter decades from `10⁻⁴` to `10⁴`).
const GCV_GRID_LEN: usize = 33;
/// `log10` of the smallest and largest trace-normalised λ of the GCV grid.
const GCV_LOG10_RANGE: (f64, f64) = (-4.0, 4.0);
/// Weight of the degrees of freedom in GCV (pyGAM's default `gamma = 1.4`, after Kim & Gu
/// 2004; 1 is the textbook criterion).
const GCV_GAMMA: f64 = 1.4;
/// Relative ridge added to the diagonal of the normal equations.
const RIDGE: f64 = 1e-10;

/// Options of a trend fit (CellRank's `gene_trends` defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct TrendOptions {
    /// Number of equally spaced segments of `[t_min, t_max]`; the cubic B-spline basis has
    /// `n_knots + 3` functions. Default 6, CellRank's `n_knots` (which is pyGAM's number of
    /// basis functions there). At least 1.
    pub n_knots: usize,
    /// Number of equally spaced grid points on `[t_min, t_max]` the trend is reported at.
    /// Default 200 (CellRank's `n_test_points`). At least 2.
    pub n_test_points: usize,
    /// Cells with weight `≤ weight_threshold` are left out of the fit (and of `t_min`,
    /// `t_max`). Default 0.0: only cells of zero (or negative) weight are dropped. Finite and
    /// `≥ 0`.
    pub weight_threshold: f64,
    /// Level of the pointwise confidence band, in `(0, 1)`. Default 0.95.
    pub confidence: f64,
    /// The smoothing parameter λ of the objective (in the units of the weights given), or
    /// `None` (default) to choose it by generalised cross-validation. Finite and `≥ 0`.
    pub lambda: Option<f64>,
}

impl Default for TrendOptions {
    fn default() -> Self {
        Self {
            n_knots: 6,
            n_test_points: 200,
            weight_threshold: 0.0,
            confidence: 0.95,
            lambda: None,
        }
    }
}

/// A fitted trend on a grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Trend {
    /// Grid times: `n_test_points` equally spaced from `t_min` to `t_max` of the kept cells.
    pub t: Vec<f64>,
    /// Fitted mean expression at each grid time.
    pub mean: Vec<f64>,
    /// Lower end of the pointwise confidence band at each grid time.
    pub lower: Vec<f64>,
    /// Upper end of the pointwise confidence band at each grid time.
    pub upper: Vec<f64>,
    /// The smoothing parameter λ used (chosen by GCV, or the one given).
    pub lambda: f64,
    /// Effective degrees of freedom of the fit, `trace(A⁻¹ BᵀWB)`: between 2 (a straight line)
    /// and `n_knots + 3`.
    pub edf: f64,
    /// Number of cells used (weight above the threshold).
    pub n_cells: usize,
}

impl Trend {
    /// Grid time of the maximum of `mean` (first on ties; NaN means are skipped). NaN if the
    /// trend is empty or every mean is NaN.
    pub fn peak_time(&self) -> f64 {
        let mut best: Option<(f64, f64)> = None;
        for (&t, &m) in self.t.iter().zip(&self.mean) {
            if m.is_nan() {
                continue;
            }
            match best {
                Some((_, b)) if m <= b => {}
                _ => best = Some((t, m)),
            }
        }
        best.map_or(f64::NAN, |(t, _)| t)
    }
}

/// Errors of a trend fit.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum TrendError {
    /// An input does not have one entry per cell (per cell and gene for the values of
    /// [`fit_trends`]); the number of cells is the length of `time`.
    #[error("trend fit: {input} has {got} entries, expected {expected}")]
    LengthMismatch {
        /// `"values"` or `"weights"`.
        input: &'static str,
        /// Entries expected.
        expected: usize,
        /// Entries given.
        got: usize,
    },
    /// A NaN or infinite time, value or weight (every cell is checked, also dropped ones).
    #[error("trend fit: {input} of cell {cell}{} is {value}", .gene.map(|g| format!(", gene {g},")).unwrap_or_default())]
    NonFinite {
        /// `"time"`, `"values"` or `"weights"`.
        input: &'static str,
        /// The cell (index into `time`).
        cell: usize,
        /// The gene (column of `values` in [`fit_trends`]); `None` for times, weights and the
        /// values of [`fit_trend`].
        gene: Option<usize>,
        /// The offending value.
        value: f64,
    },
    /// Fewer cells with weight above the threshold than the spline needs (`n_knots + 4`, one
    /// more than basis functions).
    #[error("trend fit: {got} cells have weight above the threshold {weight_threshold}, need at least {need} (n_knots + 4)")]
    TooFewCells {
        /// Cells with weight above the threshold.
        got: usize,
        /// Cells needed.
        need: usize,
        /// The threshold.
        weight_threshold: f64,
    },
    /// All kept cells have the same time.
    #[error("trend fit: all cells with weight above the threshold have time {time}, so there is no trend to fit")]
    NoTimeSpread {
        /// The common time.
        time: f64,
    },
    /// An option out of its range.
    #[error("trend fit: option {field} must be {expected}, got {got}")]
    InvalidOption {
        /// The field of [`TrendOptions`].
        field: &'static str,
        /// Its valid range.
        expected: &'static str,
        /// The value given.
        got: String,
    },
    /// The weights are so concentrated that Kish's effective number of cells `(Σw)² / Σw²` does
    /// not exceed 1.4 times (GCV's weight) the degrees of freedom of even the smoothest fit
    /// considered, so neither GCV nor the noise variance is defined.
    #[error("trend fit: the weights are concentrated on too few cells: the effective number of cells (Σw)²/Σw² = {n_eff:.3} is not above 1.4 x the degrees of freedom {edf:.3} of the smoothest fit")]
    WeightsTooConcentrated {
        /// Kish's effective number of cells.
        n_eff: f64,
        /// The smallest effective degrees of freedom considered.
        edf: f64,
    },
    /// The penalised normal equations are not numerically positive definite (weights or
    /// times so extreme that their sums overflow or underflow).
    #[error("trend fit: the penalised normal equations are not positive definite at lambda = {lambda} (extreme weights or times)")]
    NotPositiveDefinite {
        /// The λ at which the factorisation failed.
        lambda: f64,
    },
}

/// Fits one gene's trend: `time[i]`, `values[i]`, `weights[i]` per cell.
///
/// # Errors
///
/// Invalid options, inputs of different lengths, a non-finite input, fewer than
/// `n_knots + 4` cells above the weight threshold, kept cells all at one time, or weights
/// concentrated on too few cells (see [`TrendError`]).
pub fn fit_trend(
    time: &[f64],
    values: &[f64],
    weights: &[f64],
    opts: &TrendOptions,
) -> Result<Trend, TrendError> {
    let design = prepare(time, values, 1, weights, opts, false)?;
    Ok(design.fit_gene(values, 1, 0))
}

/// Fits many genes sharing time and weights (the basis and the factorisation per λ are
/// reused; genes fitted in parallel with rayon, results identical at any thread count):
/// `values` is row-major cells × genes (`n_genes` columns). Returns one [`Trend`] per gene, in
/// column order, each equal bit for bit to [`fit_trend`] on that column.
///
/// # Errors
///
/// As [`fit_trend`]; `values` must have `time.len() · n_genes` entries.
pub fn fit_trends(
    time: &[f64],
    values: &[f64],
    n_genes: usize,
    weights: &[f64],
    opts: &TrendOptions,
) -> Result<Vec<Trend>, TrendError> {
    let design = prepare(time, values, n_genes, weights, opts, true)?;
    Ok((0..n_genes)
        .into_par_iter()
        .map(|g| design.fit_gene(values, n_genes, g))
        .collect())
}

/// `z` of a two-sided pointwise band of level `confidence`: `Φ⁻¹((1 + confidence) / 2)`,
/// computed from the upper tail `(1 − confidence) / 2` to keep precision near 1.
fn band_z(confidence: f64) -> f64 {
    -norm_ppf(0.5 * (1.0 - confidence))
}

fn check_options(opts: &TrendOptions) -> Result<(), TrendError> {
    let bad = |field, expected, got: String| {
        Err(TrendError::InvalidOption {
            field,
            expected,
            got,
        })
    };
    if opts.n_knots < 1 {
        return bad("n_knots", "at least 1", opts.n_knots.to_string());
    }
    if opts.n_test_points < 2 {
        return bad(
            "n_test_points",
            "at least 2",
            opts.n_test_points.to_string(),
        );
    }
    if !(opts.weight_threshold.is_finite() && opts.weight_threshold >= 0.0) {
        return bad(
            "weight_threshold",
            "finite and >= 0",
            opts.weight_threshold.to_string(),
        );
    }
    if !(opts.confidence > 0.0 && opts.confidence < 1.0) {
        return bad("confidence", "in (0, 1)", opts.confidence.to_string());
    }
    if let Some(l) = opts.lambda {
        if !(l.is_finite() && l >= 0.0) {
            return bad("lambda", "finite and >= 0", l.to_string());
        }
    }
    Ok(())
}

/// Validates the inputs and builds the shared [`Design`].
fn prepare(
    time: &[f64],
    values: &[f64],
    n_genes: usize,
    weights: &[f64],
    opts: &TrendOptions,
    name_genes: bool,
) -> Result<Design, TrendError> {
    check_options(opts)?;
    let n = time.len();
    if weights.len() != n {
        return Err(TrendError::LengthMismatch {
            input: "weights",
            expected: n,
            got: weights.len(),
        });
    }
    let expected = n.saturating_mul(n_genes);
    if values.len() != expected {
        return Err(TrendError::LengthMismatch {
            input: "values",
            expected,
            got: values.len(),
        });
    }
    let non_finite = |input, cell, gene, value: f64| TrendError::NonFinite {
        input,
        cell,
        gene,
        value,
    };
    if let Some((i, &v)) = time.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(non_finite("time", i, None, v));
    }
    if let Some((i, &v)) = weights.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(non_finite("weights", i, None, v));
    }
    if let Some((j, &v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let (cell, gene) = (j / n_genes.max(1), j % n_genes.max(1));
        return Err(non_finite("values", cell, name_genes.then_some(gene), v));
    }
    Design::new(time, weights, opts)
}

/// One kept cell: its index, weight, and its 4 nonzero basis values starting at `span`.
struct Cell {
    index: usize,
    w: f64,
    span: usize,
    b: [f64; 4],
}

/// One λ of the search: the Cholesky factor of `A` and the effective degrees of freedom.
struct Candidate {
    lambda: f64,
    chol: Vec<f64>,
    edf: f64,
}

/// Everything shared by the genes of one (time, weights, options): the kept cells with their
/// basis values, `BᵀWB`, the grid, and the factorisations per λ.
struct Design {
    k: usize,
    cells: Vec<Cell>,
    gram: Vec<f64>,
    sum_w: f64,
    n_eff: f64,
    grid: Vec<(f64, usize, [f64; 4])>,
    candidates: Vec<Candidate>,
    z: f64,
}

/// Maps times to spline coordinates `x ∈ [0, n_knots]` without overflowing for huge spans
/// (halving is exact, so for ordinary times this is `(t − t_min) / (t_max − t_min) · n_knots`
/// up to the same rounding).
struct Axis {
    half_min: f64,
    half_span: f64,
    n_knots: usize,
}

impl Axis {
    /// The first basis function (span) and the 4 nonzero cubic B-spline values at `t`.
    fn basis(&self, t: f64) -> (usize, [f64; 4]) {
        let nk = self.n_knots as f64;
        let x = ((0.5 * t - self.half_min) / self.half_span * nk).clamp(0.0, nk);
        // `x` is finite and in [0, n_knots], so the conversion is exact.
        let span = (x.floor() as usize).min(self.n_knots - 1);
        let u = x - span as f64;
        let v = 1.0 - u;
        let u2 = u * u;
        let u3 = u2 * u;
        (
            span,
            [
                v * v * v / 6.0,
                (3.0 * u3 - 6.0 * u2 + 4.0) / 6.0,
                (-3.0 * u3 + 3.0 * u2 + 3.0 * u + 1.0) / 6.0,
                u3 / 6.0,
            ],
        )
    }
}

impl Design {
    fn new(time: &[f64], weights: &[f64], opts: &TrendOptions) -> Result<Self, TrendError> {
        let kept: Vec<usize> = (0..time.len())
            .filter(|&i| weights[i] > opts.weight_threshold)
            .collect();
        let need = opts.n_knots.saturating_add(4);
        if kept.len() < need {
            return Err(TrendError::TooFewCells {
                got: kept.len(),
                need,
                weight_threshold: opts.weight_threshold,
            });
        }
        let (mut t_min, mut t_max) = (f64::INFINITY, f64::NEG_INFINITY);
        for &i in &kept {
            t_min = t_min.min(time[i]);
            t_max = t_max.max(time[i]);
        }
        if t_max <= t_min {
            return Err(TrendError::NoTimeSpread { time: t_min });
        }
        let axis = Axis {
            half_min: 0.5 * t_min,
            half_span: 0.5 * t_max - 0.5 * t_min,
            n_knots: opts.n_knots,
        };
        if axis.half_span <= 0.0 {
            // Finite, and 0 only for times a few subnormals apart (the halves round together).
            return Err(TrendError::NoTimeSpread { time: t_min });
        }
        // At most the number of kept cells minus 1 (checked above), so no overflow.
        let k = opts.n_knots + 3;

        let mut gram = vec![0.0; k * k];
        let mut sum_w = 0.0;
        let mut cells = Vec::with_capacity(kept.len());
        for &i in &kept {
            let w = weights[i];
            let (span, b) = axis.basis(time[i]);
            for (a, &ba) in b.iter().enumerate() {
                let row = &mut gram[(span + a) * k + span..(span + a) * k + span + 4];
                for (g, &bb) in row.iter_mut().zip(&b) {
                    *g += w * ba * bb;
                }
            }
            sum_w += w;
            cells.push(Cell {
                index: i,
                w,
                span,
                b,
            });
        }
        // Kish's (Σw)² / Σw², on weights scaled to a maximum of 1 (no underflow of w²).
        let w_max = cells.iter().fold(0.0, |m: f64, c| m.max(c.w));
        let (s1, s2) = cells.iter().fold((0.0, 0.0), |(s1, s2), c| {
            let v = c.w / w_max;
            (s1 + v, s2 + v * v)
        });
        let n_eff = s1 * s1 / s2;

        let m = opts.n_test_points;
        let grid = (0..m)
            .map(|j| {
                let t = if j + 1 == m {
                    t_max
                } else {
                    2.0 * (axis.half_min + (j as f64 / (m - 1) as f64) * axis.half_span)
                };
                let (span, b) = axis.basis(t);
                (t, span, b)
            })
            .collect();

        // DᵀD of the second-order differences.
        let mut penalty = vec![0.0; k * k];
        for r in 0..k - 2 {
            let d = [1.0, -2.0, 1.0];
            for (a, &da) in d.iter().enumerate() {
                for (b, &db) in d.iter().enumerate() {
                    penalty[(r + a) * k + r + b] += da * db;
                }
            }
        }
        let trace = |m: &[f64]| (0..k).map(|i| m[i * k + i]).sum::<f64>();
        let gram_trace = trace(&gram);
        let scale = gram_trace / trace(&penalty);
        let ridge = RIDGE * gram_trace / k as f64;
        let lambdas: Vec<f64> = match opts.lambda {
            Some(l) => vec![l],
            None => {
                let (lo, hi) = GCV_LOG10_RANGE;
                (0..GCV_GRID_LEN)
                    .map(|i| {
                        let e = lo + (hi - lo) * i as f64 / (GCV_GRID_LEN - 1) as f64;
                        libm::pow(10.0, e) * scale
                    })
                    .collect()
            }
        };

        let mut candidates = Vec::with_capacity(lambdas.len());
        let mut min_edf = f64::INFINITY;
        for lambda in lambdas {
            let a: Vec<f64> = (0..k * k)
                .map(|ij| {
                    let diag = if ij / k == ij % k { ridge } else { 0.0 };
                    gram[ij] + lambda * penalty[ij] + diag
                })
                .collect();
            let chol = cholesky(&a, k).ok_or(TrendError::NotPositiveDefinite { lambda })?;
            // edf = trace(A⁻¹ G) = Σ_j (A⁻¹ g_j)_j over the columns g_j of G (symmetric).
            let mut edf = 0.0;
            for j in 0..k {
                let x = chol_solve(&chol, &gram[j * k..(j + 1) * k], k);
                edf += x[j];
            }
            min_edf = min_edf.min(edf);
            if GCV_GAMMA * edf < n_eff {
                candidates.push(Candidate { lambda, chol, edf });
            }
        }
        if candidates.is_empty() {
            return Err(TrendError::WeightsTooConcentrated {
                n_eff,
                edf: min_edf,
            });
        }
        Ok(Self {
            k,
            cells,
            gram,
            sum_w,
            n_eff,
            grid,
            candidates,
            z: band_z(opts.confidence),
        })
    }

    /// Fits gene `g` of the row-major `values` (`n_genes` columns). Infallible: everything that
    /// can fail was checked when the design was built.
    fn fit_gene(&self, values: &[f64], n_genes: usize, g: usize) -> Trend {
        let k = self.k;
        let y = |c: &Cell| values[c.index * n_genes + g];
        let y_mean = self.cells.iter().map(|c| c.w * y(c)).sum::<f64>() / self.sum_w;

        // Bᵀ W (y − ȳ) and (y − ȳ)ᵀ W (y − ȳ).
        let mut rhs = vec![0.0; k];
        let mut yy = 0.0;
        for c in &self.cells {
            let yc = y(c) - y_mean;
            let wy = c.w * yc;
            yy += wy * yc;
            for (r, &b) in rhs[c.span..c.span + 4].iter_mut().zip(&c.b) {
                *r += wy * b;
            }
        }

        // GCV over the candidates (RSS from the normal equations, exact up to rounding).
        let mut best: Option<(f64, &Candidate, Vec<f64>)> = None;
        for cand in &self.candidates {
            let coef = chol_solve(&cand.chol, &rhs, k);
            let cross = dot(&coef, &rhs);
            let fitted = quad_form(&self.gram, &coef, k);
            let rss = (yy - 2.0 * cross + fitted).max(0.0);
            let dof = self.n_eff - GCV_GAMMA * cand.edf;
            let gcv = self.n_eff * rss / (dof * dof);
            let gcv = if gcv.is_nan() { f64::INFINITY } else { gcv };
            match &best {
                Some((b, _, _)) if gcv >= *b => {}
                _ => best = Some((gcv, cand, coef)),
            }
        }
        let Some((_, cand, coef)) = best else {
            // `Design::new` guarantees at least one candidate.
            return Trend {
                t: Vec::new(),
                mean: Vec::new(),
                lower: Vec::new(),
                upper: Vec::new(),
                lambda: f64::NAN,
                edf: f64::NAN,
                n_cells: self.cells.len(),
            };
        };

        // Residual sum of squares at the chosen λ, summed directly.
        let rss: f64 = self
            .cells
            .iter()
            .map(|c| {
                let fit: f64 =
                    c.b.iter()
                        .zip(&coef[c.span..c.span + 4])
                        .map(|(b, x)| b * x)
                        .sum();
                let r = y(c) - y_mean - fit;
                c.w * r * r
            })
            .sum();
        let sigma2 = rss / (self.n_eff - cand.edf);

        let m = self.grid.len();
        let (mut t, mut mean, mut lower, mut upper) = (
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
            Vec::with_capacity(m),
        );
        let mut bfull = vec![0.0; k];
        for &(tj, span, b) in &self.grid {
            let fit: f64 = b
                .iter()
                .zip(&coef[span..span + 4])
                .map(|(b, x)| b * x)
                .sum();
            let mu = y_mean + fit;
            bfull.iter_mut().for_each(|v| *v = 0.0);
            bfull[span..span + 4].copy_from_slice(&b);
            let v = forward(&cand.chol, &bfull, k);
            let se = (sigma2 * dot(&v, &v)).max(0.0).sqrt();
            t.push(tj);
            mean.push(mu);
            lower.push(mu - self.z * se);
            upper.push(mu + self.z * se);
        }
        Trend {
            t,
            mean,
            lower,
            upper,
            lambda: cand.lambda,
            edf: cand.edf,
            n_cells: self.cells.len(),
        }
    }
}

/// Lower Cholesky factor `L` (row-major `k × k`, `A = L Lᵀ`) of the symmetric `a`, or `None`
/// if a pivot is not positive and finite.
fn cholesky(a: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; k * k];
    for j in 0..k {
        let d = a[j * k + j] - dot(&l[j * k..j * k + j], &l[j * k..j * k + j]);
        if !(d > 0.0 && d.is_finite()) {
            return None;
        }
        let pivot = d.sqrt();
        l[j * k + j] = pivot;
        for i in j + 1..k {
            let s = a[i * k + j] - dot(&l[i * k..i * k + j], &l[j * k..j * k + j]);
            l[i * k + j] = s / pivot;
        }
    }
    Some(l)
}

/// Solves `L z = b` for the lower-triangular row-major `l`.
fn forward(l: &[f64], b: &[f64], k: usize) -> Vec<f64> {
    let mut z = vec![0.0; k];
    for i in 0..k {
        let row = &l[i * k..i * k + i];
        let s = b[i] - row.iter().zip(&z[..i]).map(|(x, y)| x * y).sum::<f64>();
        z[i] = s / l[i * k + i];
    }
    z
}

/// Solves `L Lᵀ x = b`.
fn chol_solve(l: &[f64], b: &[f64], k: usize) -> Vec<f64> {
    let mut x = forward(l, b, k);
    for i in (0..k).rev() {
        let s = x[i] - (i + 1..k).map(|j| l[j * k + i] * x[j]).sum::<f64>();
        x[i] = s / l[i * k + i];
    }
    x
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `xᵀ M x` for the row-major `k × k` matrix `m`.
fn quad_form(m: &[f64], x: &[f64], k: usize) -> f64 {
    m.chunks_exact(k)
        .zip(x)
        .map(|(row, &xi)| xi * dot(row, x))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::f64::consts::PI;

    /// Standard normal draw (Box–Muller).
    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    fn uniform_times(n: usize, seed: u64) -> (ChaCha8Rng, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let t = (0..n).map(|_| rng.random::<f64>()).collect();
        (rng, t)
    }

    fn max_abs_err(trend: &Trend, f: impl Fn(f64) -> f64) -> f64 {
        trend
            .t
            .iter()
            .zip(&trend.mean)
            .map(|(&t, &m)| (m - f(t)).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn trends_recover_sine() {
        let (mut rng, t) = uniform_times(2000, 7);
        let y: Vec<f64> = t
            .iter()
            .map(|&t| (2.0 * PI * t).sin() + 0.1 * normal(&mut rng))
            .collect();
        let w = vec![1.0; t.len()];
        let trend = fit_trend(&t, &y, &w, &TrendOptions::default()).unwrap();
        assert_eq!(trend.t.len(), 200);
        assert_eq!(trend.n_cells, 2000);
        let err = max_abs_err(&trend, |t| (2.0 * PI * t).sin());
        let covered = trend
            .t
            .iter()
            .zip(trend.lower.iter().zip(&trend.upper))
            .filter(|(&t, (&lo, &hi))| lo <= (2.0 * PI * t).sin() && (2.0 * PI * t).sin() <= hi)
            .count() as f64
            / trend.t.len() as f64;
        println!(
            "sine: max err {err:.4}, coverage {covered:.3}, lambda {:.3e}, edf {:.3}",
            trend.lambda, trend.edf
        );
        assert!(err < 0.05, "max error {err}");
        assert!(covered >= 0.9, "coverage {covered}");
        assert!(trend.lower.iter().zip(&trend.upper).all(|(l, u)| l < u));
        assert!(trend.edf > 5.0 && trend.edf <= 9.0, "edf {}", trend.edf);

        // The band is pointwise: the fraction of the grid it covers varies a lot between data
        // sets (its errors are correlated along t), but on average it is the nominal 95 %.
        let coverages: Vec<f64> = (100..120)
            .map(|seed| {
                let (mut rng, t) = uniform_times(2000, seed);
                let y: Vec<f64> = t
                    .iter()
                    .map(|&t| (2.0 * PI * t).sin() + 0.1 * normal(&mut rng))
                    .collect();
                let tr = fit_trend(&t, &y, &w, &TrendOptions::default()).unwrap();
                let inside =
                    tr.t.iter()
                        .zip(tr.lower.iter().zip(&tr.upper))
                        .filter(|(&t, (&lo, &hi))| {
                            lo <= (2.0 * PI * t).sin() && (2.0 * PI * t).sin() <= hi
                        })
                        .count();
                inside as f64 / tr.t.len() as f64
            })
            .collect();
        let average = coverages.iter().sum::<f64>() / coverages.len() as f64;
        println!("sine: average coverage over 20 seeds {average:.3}");
        assert!(
            (0.9..=0.99).contains(&average),
            "average coverage {average}"
        );
    }

    #[test]
    fn trends_weights_select_population() {
        let (mut rng, t) = uniform_times(4000, 11);
        let a = |t: f64| (2.0 * PI * t).sin();
        let b = |t: f64| 1.0 + 2.0 * t;
        let in_a: Vec<bool> = (0..t.len()).map(|i| i % 2 == 0).collect();
        let y: Vec<f64> = t
            .iter()
            .zip(&in_a)
            .map(|(&t, &ia)| if ia { a(t) } else { b(t) } + 0.1 * normal(&mut rng))
            .collect();
        let w_a: Vec<f64> = in_a.iter().map(|&ia| if ia { 1.0 } else { 1e-3 }).collect();
        let w_b: Vec<f64> = in_a.iter().map(|&ia| if ia { 1e-3 } else { 1.0 }).collect();
        let opts = TrendOptions::default();
        let fa = fit_trend(&t, &y, &w_a, &opts).unwrap();
        let fb = fit_trend(&t, &y, &w_b, &opts).unwrap();
        let unweighted = fit_trend(&t, &y, &vec![1.0; t.len()], &opts).unwrap();
        let (ea, eb) = (max_abs_err(&fa, a), max_abs_err(&fb, b));
        println!("weights: err to A {ea:.4}, err to B {eb:.4}");
        assert!(ea < 0.06, "weighted towards A: {ea}");
        assert!(eb < 0.06, "weighted towards B: {eb}");
        assert!(max_abs_err(&fa, b) > 1.0 && max_abs_err(&fb, a) > 1.0);
        // Without weights the fit is the average of the two populations, far from both.
        assert!(max_abs_err(&unweighted, a) > 0.5 && max_abs_err(&unweighted, b) > 0.5);
        // A threshold drops the low-weight population entirely.
        let hard = TrendOptions {
            weight_threshold: 0.01,
            ..TrendOptions::default()
        };
        let fh = fit_trend(&t, &y, &w_a, &hard).unwrap();
        assert_eq!(fh.n_cells, 2000);
        assert!(max_abs_err(&fh, a) < 0.05);
    }

    #[test]
    fn trends_constant_signal_is_flat() {
        let (mut rng, t) = uniform_times(2000, 3);
        let y: Vec<f64> = t.iter().map(|_| 3.0 + 0.1 * normal(&mut rng)).collect();
        let w: Vec<f64> = (0..t.len())
            .map(|i| 0.2 + 0.8 * ((i % 5) as f64 / 4.0))
            .collect();
        let opts = TrendOptions::default();
        let trend = fit_trend(&t, &y, &w, &opts).unwrap();
        let design = Design::new(&t, &w, &opts).unwrap();
        let largest = design.candidates.last().unwrap().lambda;
        let smallest = design.candidates[0].lambda;
        let (lo, hi) = trend
            .mean
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &m| {
                (a.min(m), b.max(m))
            });
        println!(
            "constant: edf {:.4}, lambda {:.3e} (grid {smallest:.3e}..{largest:.3e}), range {:.4}",
            trend.edf,
            trend.lambda,
            hi - lo
        );
        assert!(trend.edf < 2.5, "edf {}", trend.edf);
        assert!(trend.lambda >= largest * 1e-2, "lambda {}", trend.lambda);
        assert!(hi - lo < 0.03, "range {}", hi - lo);
        assert!((trend.mean[100] - 3.0).abs() < 0.01);

        // GCV now and then prefers a wiggly fit of pure noise; it must stay the exception.
        let flat = (200..220)
            .filter(|&seed| {
                let (mut rng, t) = uniform_times(2000, seed);
                let y: Vec<f64> = t.iter().map(|_| 3.0 + 0.1 * normal(&mut rng)).collect();
                fit_trend(&t, &y, &w, &opts).unwrap().edf < 2.5
            })
            .count();
        println!("constant: {flat}/20 seeds with edf < 2.5");
        assert!(flat >= 14, "{flat}/20 flat");
    }

    #[test]
    fn trends_many_genes_match_single_and_threads() -> Result<(), Box<dyn std::error::Error>> {
        let (mut rng, t) = uniform_times(1500, 5);
        let n_genes = 7;
        let values: Vec<f64> = t
            .iter()
            .flat_map(|&t| (0..n_genes).map(move |g| (t * (g + 1) as f64).sin() * g as f64))
            .zip(std::iter::repeat_with(|| 0.2 * normal(&mut rng)))
            .map(|(v, e)| v + e)
            .collect();
        let w: Vec<f64> = t.iter().map(|&t| (1.0 - t).powi(2)).collect();
        let opts = TrendOptions::default();
        let run = |k: usize| -> Result<Vec<Trend>, Box<dyn std::error::Error>> {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(k).build()?;
            Ok(pool.install(|| fit_trends(&t, &values, n_genes, &w, &opts))?)
        };
        let one = run(1)?;
        let two = run(2)?;
        assert_eq!(one, two);
        assert_eq!(one.len(), n_genes);
        for (g, trend) in one.iter().enumerate() {
            let column: Vec<f64> = values.iter().skip(g).step_by(n_genes).copied().collect();
            let single = fit_trend(&t, &column, &w, &opts)?;
            assert_eq!(&single, trend, "gene {g}");
            assert!(single
                .mean
                .iter()
                .zip(&trend.mean)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        // Genes differ in their chosen smoothness (gene 0 is pure noise around 0).
        assert!(one[0].edf < one[n_genes - 1].edf);
        assert!(fit_trends(&t, &[], 0, &w, &opts)?.is_empty());
        Ok(())
    }

    #[test]
    fn trends_peak_time_of_bump() {
        let (mut rng, t) = uniform_times(3000, 21);
        let bump = |t: f64| (-(t - 0.3) * (t - 0.3) / (2.0 * 0.1 * 0.1)).exp();
        let y: Vec<f64> = t
            .iter()
            .map(|&t| bump(t) + 0.1 * normal(&mut rng))
            .collect();
        let trend = fit_trend(&t, &y, &vec![1.0; t.len()], &TrendOptions::default()).unwrap();
        let peak = trend.peak_time();
        println!(
            "bump: peak {peak:.4}, max err {:.4}",
            max_abs_err(&trend, bump)
        );
        assert!((peak - 0.3).abs() < 0.02, "peak at {peak}");
        // First maximum on ties.
        let flat = Trend {
            t: vec![0.0, 1.0, 2.0],
            mean: vec![1.0, 2.0, 2.0],
            lower: vec![0.0; 3],
            upper: vec![0.0; 3],
            lambda: 0.0,
            edf: 2.0,
            n_cells: 0,
        };
        assert_eq!(flat.peak_time(), 1.0);
        let empty = Trend {
            t: vec![],
            mean: vec![],
            ..flat
        };
        assert!(empty.peak_time().is_nan());
    }

    #[test]
    fn trends_errors() {
        let t: Vec<f64> = (0..20).map(|i| i as f64 / 19.0).collect();
        let y: Vec<f64> = t.iter().map(|t| t * t).collect();
        let w = vec![1.0; 20];
        let o = TrendOptions::default();
        assert!(fit_trend(&t, &y, &w, &o).is_ok());

        assert_eq!(
            fit_trend(&t, &y[..19], &w, &o),
            Err(TrendError::LengthMismatch {
                input: "values",
                expected: 20,
                got: 19
            })
        );
        assert_eq!(
            fit_trend(&t, &y, &w[..3], &o),
            Err(TrendError::LengthMismatch {
                input: "weights",
                expected: 20,
                got: 3
            })
        );
        assert_eq!(
            fit_trends(&t, &y, 2, &w, &o),
            Err(TrendError::LengthMismatch {
                input: "values",
                expected: 40,
                got: 20
            })
        );

        let mut bad = t.clone();
        bad[4] = f64::NAN;
        assert!(matches!(
            fit_trend(&bad, &y, &w, &o),
            Err(TrendError::NonFinite {
                input: "time",
                cell: 4,
                gene: None,
                ..
            })
        ));
        let mut bad = y.clone();
        bad[7] = f64::INFINITY;
        assert!(matches!(
            fit_trend(&t, &bad, &w, &o),
            Err(TrendError::NonFinite {
                input: "values",
                cell: 7,
                gene: None,
                ..
            })
        ));
        let two: Vec<f64> = y
            .iter()
            .flat_map(|&v| [v, if v > 0.5 { f64::NAN } else { v }])
            .collect();
        let err = fit_trends(&t, &two, 2, &w, &o).unwrap_err();
        assert!(
            matches!(
                err,
                TrendError::NonFinite {
                    input: "values",
                    cell: 14,
                    gene: Some(1),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("cell 14, gene 1"), "{err}");
        let mut bad = w.clone();
        bad[0] = f64::NAN;
        assert!(matches!(
            fit_trend(&t, &y, &bad, &o),
            Err(TrendError::NonFinite {
                input: "weights",
                cell: 0,
                gene: None,
                ..
            })
        ));

        // n_knots + 4 = 10 cells needed; 9 with positive weight.
        let few: Vec<f64> = (0..20).map(|i| if i < 9 { 0.5 } else { 0.0 }).collect();
        assert_eq!(
            fit_trend(&t, &y, &few, &o),
            Err(TrendError::TooFewCells {
                got: 9,
                need: 10,
                weight_threshold: 0.0
            })
        );
        let few = (0..20)
            .map(|i| if i < 10 { 0.5 } else { 0.0 })
            .collect::<Vec<_>>();
        assert_eq!(fit_trend(&t, &y, &few, &o).map(|tr| tr.n_cells), Ok(10));

        let tiny: Vec<f64> = (0..20).map(|i| if i < 10 { 0.0 } else { 5e-324 }).collect();
        assert_eq!(
            fit_trend(&tiny, &y, &w, &o),
            Err(TrendError::NoTimeSpread { time: 0.0 })
        );
        let huge = TrendOptions {
            n_knots: usize::MAX,
            ..o.clone()
        };
        assert_eq!(
            fit_trend(&t, &y, &w, &huge),
            Err(TrendError::TooFewCells {
                got: 20,
                need: usize::MAX,
                weight_threshold: 0.0
            })
        );
        let same = vec![2.5; 20];
        assert_eq!(
            fit_trend(&same, &y, &w, &o),
            Err(TrendError::NoTimeSpread { time: 2.5 })
        );

        let concentrated: Vec<f64> = (0..20).map(|i| if i == 3 { 1.0 } else { 1e-6 }).collect();
        assert!(matches!(
            fit_trend(&t, &y, &concentrated, &o),
            Err(TrendError::WeightsTooConcentrated { .. })
        ));

        let invalid = |opts: TrendOptions, field: &str| {
            let err = fit_trend(&t, &y, &w, &opts).unwrap_err();
            assert!(
                matches!(&err, TrendError::InvalidOption { field: f, .. } if *f == field),
                "{err:?}"
            );
        };
        invalid(
            TrendOptions {
                n_knots: 0,
                ..o.clone()
            },
            "n_knots",
        );
        invalid(
            TrendOptions {
                n_test_points: 1,
                ..o.clone()
            },
            "n_test_points",
        );
        invalid(
            TrendOptions {
                weight_threshold: f64::NAN,
                ..o.clone()
            },
            "weight_threshold",
        );
        invalid(
            TrendOptions {
                weight_threshold: -0.1,
                ..o.clone()
            },
            "weight_threshold",
        );
        invalid(
            TrendOptions {
                confidence: 1.0,
                ..o.clone()
            },
            "confidence",
        );
        invalid(
            TrendOptions {
                confidence: 0.0,
                ..o.clone()
            },
            "confidence",
        );
        invalid(
            TrendOptions {
                confidence: f64::NAN,
                ..o.clone()
            },
            "confidence",
        );
        invalid(
            TrendOptions {
                lambda: Some(-1.0),
                ..o.clone()
            },
            "lambda",
        );
        invalid(
            TrendOptions {
                lambda: Some(f64::INFINITY),
                ..o.clone()
            },
            "lambda",
        );
    }

    #[test]
    fn trends_fixed_lambda_and_limits() {
        let (mut rng, t) = uniform_times(500, 9);
        let y: Vec<f64> = t.iter().map(|&t| t * t + 0.05 * normal(&mut rng)).collect();
        let w = vec![1.0; t.len()];
        // A huge λ gives the least-squares line (edf → 2), λ = 0 the unpenalised spline (edf → K).
        let line = fit_trend(
            &t,
            &y,
            &w,
            &TrendOptions {
                lambda: Some(1e12),
                ..Default::default()
            },
        )
        .unwrap();
        assert!((line.edf - 2.0).abs() < 1e-3, "edf {}", line.edf);
        let d1 = line.mean[1] - line.mean[0];
        assert!(line
            .mean
            .windows(2)
            .all(|p| ((p[1] - p[0]) - d1).abs() < 1e-6));
        let free = fit_trend(
            &t,
            &y,
            &w,
            &TrendOptions {
                lambda: Some(0.0),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(free.lambda, 0.0);
        assert!((free.edf - 9.0).abs() < 1e-6, "edf {}", free.edf);
        // Scaling the weights scales the GCV-chosen λ and leaves the fit unchanged.
        let base = fit_trend(&t, &y, &w, &TrendOptions::default()).unwrap();
        let scaled = fit_trend(&t, &y, &vec![0.25; t.len()], &TrendOptions::default()).unwrap();
        assert!((scaled.lambda / base.lambda - 0.25).abs() < 1e-12);
        assert!(base
            .mean
            .iter()
            .zip(&scaled.mean)
            .all(|(a, b)| (a - b).abs() < 1e-9));
        assert!(base
            .upper
            .iter()
            .zip(&scaled.upper)
            .all(|(a, b)| (a - b).abs() < 1e-9));
        // Also for weights whose squares underflow.
        let tiny = fit_trend(&t, &y, &vec![1e-200; t.len()], &TrendOptions::default()).unwrap();
        assert!((tiny.edf - base.edf).abs() < 1e-9);
        assert!(base
            .mean
            .iter()
            .zip(&tiny.mean)
            .all(|(a, b)| (a - b).abs() < 1e-9));
        assert!(base
            .upper
            .iter()
            .zip(&tiny.upper)
            .all(|(a, b)| (a - b).abs() < 1e-9));
        // The band at 99 % is wider than at 95 %, by the ratio of the z values.
        let wide = fit_trend(
            &t,
            &y,
            &w,
            &TrendOptions {
                confidence: 0.99,
                ..Default::default()
            },
        )
        .unwrap();
        let ratio = (wide.upper[50] - wide.mean[50]) / (base.upper[50] - base.mean[50]);
        assert!((ratio - 2.5758293035489004 / 1.959963984540054).abs() < 1e-9);
        // The grid spans the kept cells exactly.
        let t_min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let t_max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!((base.t[0], base.t[199]), (t_min, t_max));
    }

    #[test]
    fn trends_inverse_normal() {
        assert!((band_z(0.95) - 1.959963984540054).abs() < 1e-8);
        assert!((norm_ppf(0.975) - 1.959963984540054).abs() < 1e-8);
        assert!((band_z(0.99) - 2.5758293035489004).abs() < 1e-8);
        assert!((band_z(0.5) - 0.6744897501960817).abs() < 1e-8);
        // Deep tail: upper tail probability 2⁻⁴¹ (exact in binary).
        assert!((band_z(1.0 - libm::ldexp(1.0, -40)) - 7.143552034352188).abs() < 1e-8);
    }
}
