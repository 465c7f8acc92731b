//! Lineage drivers: the Pearson correlation of every gene with every lineage's fate
//! probability (CellRank 2.3 convention: population standard deviations, division by n), with
//! Fisher-z p-values and confidence intervals, Benjamini–Hochberg q-values per lineage, and an
//! optional permutation test that is seeded per permutation (so it does not depend on the
//! number of threads, unlike CellRank's chunked `n_jobs` seeding).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use cellfate_kernels::Csr;

/// Errors of the lineage-driver computation.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum DriversError {
    /// No lineage, or names and fate columns of different lengths.
    #[error("lineage drivers need at least one lineage and one name per lineage (got {lineages} fate columns and {names} names)")]
    NoLineages {
        /// Fate columns given.
        lineages: usize,
        /// Names given.
        names: usize,
    },
    /// Fate probabilities and expression have different numbers of cells.
    #[error("lineage drivers: the fate probabilities have {got} cells, the expression matrix {expected}")]
    CellCount {
        /// Cells of the expression matrix.
        expected: usize,
        /// Cells of a fate column.
        got: usize,
    },
    /// The dense expression values do not fill `n_cells × n_genes`.
    #[error("lineage drivers: a dense expression of {n_cells} x {n_genes} needs {} values, got {got}", .n_cells * .n_genes)]
    DenseShape {
        /// Cells.
        n_cells: usize,
        /// Genes.
        n_genes: usize,
        /// Values given.
        got: usize,
    },
    /// A parameter out of its range.
    #[error("lineage drivers: {parameter} must be {expected}, got {got}")]
    Parameter {
        /// The parameter.
        parameter: &'static str,
        /// Its valid range.
        expected: &'static str,
        /// The value given.
        got: String,
    },
    /// A lineage asked for by name does not exist.
    #[error("lineage drivers: unknown lineage {name:?} (lineages: {})", .known.join(", "))]
    UnknownLineage {
        /// The name asked for.
        name: String,
        /// The lineages there are.
        known: Vec<String>,
    },
    /// One terminal state: every cell's fate probability is 1 up to rounding, so correlations
    /// with it would rank genes by rounding noise.
    #[error("lineage drivers need at least 2 lineages: with the single lineage {lineage:?}, every cell's fate probability is 1 (up to {spread:.1e}), so correlations with it are rounding noise")]
    SingleLineage {
        /// The only lineage.
        lineage: String,
        /// `max |p − 1|` over the cells.
        spread: f64,
    },
}

/// Gene expression for the drivers: dense (cells × genes, row-major) or sparse CSR.
#[derive(Clone, Copy, Debug)]
pub enum Expression<'a> {
    /// Dense row-major values.
    Dense {
        /// Cells.
        n_cells: usize,
        /// Genes.
        n_genes: usize,
        /// Values.
        values: &'a [f64],
    },
    /// Sparse CSR (cells × genes).
    Sparse(&'a Csr),
}

impl Expression<'_> {
    fn n_cells(&self) -> usize {
        match self {
            Self::Dense { n_cells, .. } => *n_cells,
            Self::Sparse(c) => c.nrows(),
        }
    }
    fn n_genes(&self) -> usize {
        match self {
            Self::Dense { n_genes, .. } => *n_genes,
            Self::Sparse(c) => c.ncols(),
        }
    }
}

/// The test used for p-values and confidence intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum DriverTest {
    /// Fisher's z transform (CellRank's default).
    Fisher,
    /// Permutation test with `n_perms` permutations (bootstrap confidence intervals).
    PermTest {
        /// Number of permutations.
        n_perms: usize,
        /// Seed.
        seed: u64,
    },
}

/// The smallest p- and q-value reported: the smallest normal `f64` (`f64::MIN_POSITIVE`,
/// about 2.2e-308). Fisher's z gives p-values that underflow to subnormal numbers (printed as
/// `6.48e-316`, a precision no test has) or to 0 for near-perfect correlations; they are
/// clamped here, meaning "below 1e-300" (see [`format_p_value`]).
pub const P_VALUE_FLOOR: f64 = f64::MIN_POSITIVE;

/// A p- or q-value as text: `< 1e-300` below 1e-300 (where Fisher's z has no precision left),
/// otherwise three significant digits (`3.14e-12`); NaN as `nan`.
pub fn format_p_value(p: f64) -> String {
    if p.is_nan() {
        "nan".into()
    } else if p < 1e-300 {
        "< 1e-300".into()
    } else {
        format!("{p:.2e}")
    }
}

/// Per gene and lineage: correlation, p-value, q-value and confidence interval.
///
/// p- and q-values are never below [`P_VALUE_FLOOR`] (the smallest normal double); the
/// permutation test's p-values are at least `1 / n_perms`, the smallest it can resolve
/// (CellRank reports 0 when no permutation reaches the observed correlation).
#[derive(Clone, Debug, PartialEq)]
pub struct DriverTable {
    /// Lineage names.
    pub lineages: Vec<String>,
    /// Number of genes.
    pub n_genes: usize,
    /// `corr[g * L + l]`.
    pub corr: Vec<f64>,
    /// p-values.
    pub pval: Vec<f64>,
    /// Benjamini–Hochberg q-values (per lineage).
    pub qval: Vec<f64>,
    /// Lower confidence bound.
    pub ci_low: Vec<f64>,
    /// Upper confidence bound.
    pub ci_high: Vec<f64>,
    /// Genes excluded because their expression holds a NaN or infinite value (increasing
    /// indices): their correlations, p-, q-values and bounds are NaN, so they rank last.
    /// Callers report them (the pipeline adds a warning naming the first genes).
    pub non_finite_genes: Vec<usize>,
}

impl DriverTable {
    /// Column names in CellRank's layout (`{lin}_corr`, `_pval`, `_qval`, `_ci_low`,
    /// `_ci_high` per lineage) and the matching values (one `Vec` per column, gene order).
    pub fn columns(&self) -> Vec<(String, Vec<f64>)> {
        let l = self.lineages.len();
        let mut out = Vec::new();
        for (j, name) in self.lineages.iter().enumerate() {
            for (suffix, v) in [
                ("corr", &self.corr),
                ("pval", &self.pval),
                ("qval", &self.qval),
                ("ci_low", &self.ci_low),
                ("ci_high", &self.ci_high),
            ] {
                out.push((
                    format!("{name}_{suffix}"),
                    (0..self.n_genes).map(|g| v[g * l + j]).collect(),
                ));
            }
        }
        out
    }

    /// Gene indices sorted by decreasing correlation with lineage `j` (NaN last).
    pub fn ranking(&self, j: usize) -> Vec<usize> {
        let l = self.lineages.len();
        let mut idx: Vec<usize> = (0..self.n_genes).collect();
        idx.sort_by(|&a, &b| {
            let (x, y) = (self.corr[a * l + j], self.corr[b * l + j]);
            match (x.is_nan(), y.is_nan()) {
                (true, true) => a.cmp(&b),
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => y.total_cmp(&x).then(a.cmp(&b)),
            }
        });
        idx
    }
}

/// Standard normal CDF.
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Standard normal quantile (Acklam's rational approximation refined by two Newton steps).
pub fn norm_ppf(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let a = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    let b = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    let c = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    let d = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let plow = 0.02425;
    let mut x = if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
            / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    };
    for _ in 0..2 {
        let e = norm_cdf(x) - p;
        let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
        x -= u / (1.0 + x * u / 2.0);
    }
    x
}

/// Benjamini–Hochberg q-values over the non-NaN p-values (NaN stays NaN).
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]).then(a.cmp(&b)));
    let k = idx.len();
    let mut q = vec![f64::NAN; p.len()];
    let mut running = f64::INFINITY;
    for (rank, &i) in idx.iter().enumerate().rev() {
        let v = (p[i] * k as f64 / (rank + 1) as f64).min(1.0);
        running = running.min(v);
        q[i] = running;
    }
    q
}

/// Genes (increasing indices) with at least one NaN or infinite value in `expr`.
pub fn non_finite_genes(expr: &Expression<'_>) -> Vec<usize> {
    let g = expr.n_genes();
    let mut bad = vec![false; g];
    match expr {
        Expression::Dense {
            n_genes, values, ..
        } => {
            if *n_genes > 0 {
                for row in values.chunks(*n_genes) {
                    for (gg, x) in row.iter().enumerate() {
                        if !x.is_finite() {
                            bad[gg] = true;
                        }
                    }
                }
            }
        }
        Expression::Sparse(c) => {
            for (&gg, x) in c.indices().iter().zip(c.data()) {
                if !x.is_finite() {
                    bad[gg as usize] = true;
                }
            }
        }
    }
    (0..g).filter(|&gg| bad[gg]).collect()
}

/// Cells per block of [`gene_stats`]: the blocks are summed in parallel, then added in block
/// order (the same bits at any thread count; one block, the plain sequential sums, up to this
/// many cells).
const STATS_ROWS: usize = 16_384;

/// Per-gene sums needed for correlations: (Σx, Σx², and Σ x·y_l for each lineage).
fn gene_stats(expr: &Expression<'_>, ys: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let g = expr.n_genes();
    let l = ys.len();
    let n = expr.n_cells();
    // One block's sums, laid out as [Σx | Σx² | Σxy_0 | … | Σxy_{l−1}], g each.
    let block = |rows: std::ops::Range<usize>| -> Vec<f64> {
        let mut acc = vec![0.0; g * (2 + l)];
        let (sx, rest) = acc.split_at_mut(g);
        let (sxx, sxy) = rest.split_at_mut(g);
        let mut add = |i: usize, gg: usize, x: f64| {
            sx[gg] += x;
            sxx[gg] += x * x;
            for (j, y) in ys.iter().enumerate() {
                sxy[j * g + gg] += x * y[i];
            }
        };
        match expr {
            Expression::Dense {
                n_genes, values, ..
            } => {
                for i in rows {
                    let row = &values[i * n_genes..(i + 1) * n_genes];
                    for (gg, &x) in row.iter().enumerate() {
                        add(i, gg, x);
                    }
                }
            }
            Expression::Sparse(c) => {
                for i in rows {
                    let (cols, vals) = c.row(i);
                    for (&gg, &x) in cols.iter().zip(vals) {
                        add(i, gg as usize, x);
                    }
                }
            }
        }
        acc
    };
    let parts: Vec<Vec<f64>> = (0..n.div_ceil(STATS_ROWS))
        .into_par_iter()
        .map(|b| block(b * STATS_ROWS..n.min((b + 1) * STATS_ROWS)))
        .collect();
    let mut total = vec![0.0; g * (2 + l)];
    for part in parts {
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    let sxy = (0..l)
        .map(|j| total[(2 + j) * g..(3 + j) * g].to_vec())
        .collect();
    (total[..g].to_vec(), total[g..2 * g].to_vec(), sxy)
}

/// Correlations of every gene with every lineage column `ys` (CellRank 2.3: divide by n,
/// population standard deviations; |r| > 1 or undefined → NaN). Row-major genes × lineages.
pub fn correlations(expr: &Expression<'_>, ys: &[Vec<f64>]) -> Vec<f64> {
    let n = expr.n_cells() as f64;
    let (sx, sxx, sxy) = gene_stats(expr, ys);
    let g = expr.n_genes();
    let l = ys.len();
    let mut out = vec![f64::NAN; g * l];
    for (j, y) in ys.iter().enumerate() {
        let ymean = y.iter().sum::<f64>() / n;
        let ysd = (y.iter().map(|v| (v - ymean) * (v - ymean)).sum::<f64>() / n).sqrt();
        for gg in 0..g {
            let xmean = sx[gg] / n;
            let xsd = (sxx[gg] / n - xmean * xmean).sqrt();
            let r = (sxy[j][gg] - n * xmean * ymean) / (n * xsd * ysd);
            out[gg * l + j] = if r.is_finite() && (-1.0..=1.0).contains(&r) {
                r
            } else {
                f64::NAN
            };
        }
    }
    out
}

/// Computes the driver table for expression `expr` and fate-probability columns `ys`.
pub fn compute_lineage_drivers(
    expr: &Expression<'_>,
    ys: &[Vec<f64>],
    names: &[String],
    test: &DriverTest,
    confidence_level: f64,
) -> Result<DriverTable, DriversError> {
    if ys.is_empty() || ys.len() != names.len() {
        return Err(DriversError::NoLineages {
            lineages: ys.len(),
            names: names.len(),
        });
    }
    if let Some(y) = ys.iter().find(|y| y.len() != expr.n_cells()) {
        return Err(DriversError::CellCount {
            expected: expr.n_cells(),
            got: y.len(),
        });
    }
    if let Expression::Dense {
        n_cells,
        n_genes,
        values,
    } = expr
    {
        if values.len() != n_cells * n_genes {
            return Err(DriversError::DenseShape {
                n_cells: *n_cells,
                n_genes: *n_genes,
                got: values.len(),
            });
        }
    }
    if !(0.0..=1.0).contains(&confidence_level) {
        return Err(DriversError::Parameter {
            parameter: "confidence_level",
            expected: "in [0, 1]",
            got: confidence_level.to_string(),
        });
    }
    let g = expr.n_genes();
    let l = ys.len();
    let n = expr.n_cells() as f64;
    let non_finite = non_finite_genes(expr);
    let mut corr = correlations(expr, ys);
    // A gene with a NaN or infinite value has no meaningful correlation: excluded (NaN, ranked
    // last) rather than ranked on garbage; reported through `non_finite_genes`.
    for &gg in &non_finite {
        corr[gg * l..(gg + 1) * l].fill(f64::NAN);
    }
    let (pval, ci_low, ci_high) = match test {
        DriverTest::Fisher => {
            let zc = norm_ppf(confidence_level + (1.0 - confidence_level) / 2.0);
            let mut p = vec![f64::NAN; g * l];
            let mut lo = vec![f64::NAN; g * l];
            let mut hi = vec![f64::NAN; g * l];
            if n > 3.0 {
                let se = 1.0 / (n - 3.0).sqrt();
                for k in 0..g * l {
                    let r = corr[k];
                    if r.is_nan() {
                        continue;
                    }
                    let z = r.atanh();
                    p[k] = (2.0 * norm_cdf(-(z / se).abs())).max(P_VALUE_FLOOR);
                    lo[k] = (z - zc * se).tanh();
                    hi[k] = (z + zc * se).tanh();
                }
            }
            (p, lo, hi)
        }
        DriverTest::PermTest { n_perms, seed } => {
            if *n_perms == 0 {
                return Err(DriversError::Parameter {
                    parameter: "n_perms",
                    expected: "positive",
                    got: "0".into(),
                });
            }
            let nc = expr.n_cells();
            // Each permutation has its own seeded stream: thread-count independent.
            let results: Vec<(Vec<f64>, Vec<f64>)> = (0..*n_perms)
                .into_par_iter()
                .map(|k| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
                    let mut perm: Vec<usize> = (0..nc).collect();
                    perm.shuffle(&mut rng);
                    let yp: Vec<Vec<f64>> = ys
                        .iter()
                        .map(|y| perm.iter().map(|&i| y[i]).collect())
                        .collect();
                    let rp = correlations(expr, &yp);
                    // Bootstrap resample for the confidence interval.
                    let boot: Vec<usize> = (0..nc)
                        .map(|_| rand::Rng::random_range(&mut rng, 0..nc))
                        .collect();
                    let rb = correlations_subset(expr, ys, &boot);
                    (rp, rb)
                })
                .collect();
            let mut p = vec![f64::NAN; g * l];
            let mut lo = vec![f64::NAN; g * l];
            let mut hi = vec![f64::NAN; g * l];
            let (ql, qh) = (
                (1.0 - confidence_level) / 2.0,
                confidence_level + (1.0 - confidence_level) / 2.0,
            );
            for k in 0..g * l {
                let r = corr[k];
                if r.is_nan() {
                    continue;
                }
                let count = results
                    .iter()
                    .filter(|(rp, _)| rp[k].abs() >= r.abs())
                    .count();
                p[k] = count.max(1) as f64 / *n_perms as f64;
                let mut b: Vec<f64> = results
                    .iter()
                    .map(|(_, rb)| rb[k])
                    .filter(|v| !v.is_nan())
                    .collect();
                b.sort_by(f64::total_cmp);
                lo[k] = quantile(&b, ql);
                hi[k] = quantile(&b, qh);
            }
            (p, lo, hi)
        }
    };
    let mut qval = vec![f64::NAN; g * l];
    for j in 0..l {
        let pj: Vec<f64> = (0..g).map(|gg| pval[gg * l + j]).collect();
        for (gg, q) in benjamini_hochberg(&pj).into_iter().enumerate() {
            qval[gg * l + j] = q;
        }
    }
    Ok(DriverTable {
        lineages: names.to_vec(),
        n_genes: g,
        corr,
        pval,
        qval,
        ci_low,
        ci_high,
        non_finite_genes: non_finite,
    })
}

fn correlations_subset(expr: &Expression<'_>, ys: &[Vec<f64>], rows: &[usize]) -> Vec<f64> {
    // Materialise the resampled rows (dense: copy; sparse: gather into CSR).
    match expr {
        Expression::Dense {
            n_genes, values, ..
        } => {
            let mut v = Vec::with_capacity(rows.len() * n_genes);
            for &i in rows {
                v.extend_from_slice(&values[i * n_genes..(i + 1) * n_genes]);
            }
            let yb: Vec<Vec<f64>> = ys
                .iter()
                .map(|y| rows.iter().map(|&i| y[i]).collect())
                .collect();
            correlations(
                &Expression::Dense {
                    n_cells: rows.len(),
                    n_genes: *n_genes,
                    values: &v,
                },
                &yb,
            )
        }
        Expression::Sparse(c) => {
            let sub = c.submatrix(rows, &(0..c.ncols()).collect::<Vec<_>>());
            let yb: Vec<Vec<f64>> = ys
                .iter()
                .map(|y| rows.iter().map(|&i| y[i]).collect())
                .collect();
            correlations(&Expression::Sparse(&sub), &yb)
        }
    }
}

/// numpy's linear-interpolation quantile of sorted data.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_functions() {
        assert!((norm_ppf(0.975) - 1.959963984540054).abs() < 1e-12);
        assert!((norm_cdf(1.959963984540054) - 0.975).abs() < 1e-14);
        assert!((norm_ppf(1e-10) + 6.361340902404056).abs() < 1e-9);
    }

    #[test]
    fn bh_matches_definition() {
        let q = benjamini_hochberg(&[0.01, 0.04, f64::NAN, 0.03, 0.5]);
        // sorted p: .01 .03 .04 .5 (K=4): q = .04, .053.., .053.., .5
        assert!((q[0] - 0.04).abs() < 1e-15);
        assert!((q[3] - 0.0533333333333333).abs() < 1e-12);
        assert!((q[1] - 0.0533333333333333).abs() < 1e-12);
        assert!(q[2].is_nan());
        assert!((q[4] - 0.5).abs() < 1e-15);
    }

    #[test]
    fn correlation_convention_and_sparse_dense_agree() {
        let n = 50;
        let vals: Vec<f64> = (0..n * 3)
            .map(|k| ((k * 37 % 11) as f64).sin().max(0.0))
            .collect();
        let y: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
        let dense = Expression::Dense {
            n_cells: n,
            n_genes: 3,
            values: &vals,
        };
        let csr = Csr::from_dense(n, 3, &vals).unwrap();
        let a = correlations(&dense, std::slice::from_ref(&y));
        let b = correlations(&Expression::Sparse(&csr), std::slice::from_ref(&y));
        for (x, z) in a.iter().zip(&b) {
            assert!((x - z).abs() < 1e-12);
        }
        // Pearson r computed directly.
        let x: Vec<f64> = (0..n).map(|i| vals[i * 3]).collect();
        let (mx, my) = (
            x.iter().sum::<f64>() / n as f64,
            y.iter().sum::<f64>() / n as f64,
        );
        let cov: f64 = x.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let r = cov
            / (x.iter().map(|a| (a - mx).powi(2)).sum::<f64>().sqrt()
                * y.iter().map(|b| (b - my).powi(2)).sum::<f64>().sqrt());
        assert!((a[0] - r).abs() < 1e-12);
    }

    /// Above one block of cells (`STATS_ROWS`), the sums run over blocks in parallel: the
    /// correlations equal the two-pass definition to rounding, and the bits do not depend on
    /// the number of threads; dense and sparse agree.
    #[test]
    fn blocked_correlations_are_exact_and_thread_independent() {
        let n = 2 * STATS_ROWS + 1234;
        let n_genes = 7;
        let ys: Vec<Vec<f64>> = (0..2)
            .map(|j| (0..n).map(|i| ((i * (3 + j)) % 97) as f64 / 97.0).collect())
            .collect();
        let vals: Vec<f64> = (0..n * n_genes)
            .map(|k| {
                let (i, g) = (k / n_genes, k % n_genes);
                if (i + g) % 3 == 0 {
                    0.0
                } else {
                    ((i * 31 + g * 7) % 53) as f64 / 10.0 + ys[g % 2][i] * g as f64
                }
            })
            .collect();
        let dense = Expression::Dense {
            n_cells: n,
            n_genes,
            values: &vals,
        };
        let mut trip = Vec::new();
        for i in 0..n {
            for g in 0..n_genes {
                if vals[i * n_genes + g] != 0.0 {
                    trip.push((i, g, vals[i * n_genes + g]));
                }
            }
        }
        let csr = Csr::from_triplets(n, n_genes, &trip).unwrap();
        let sparse = Expression::Sparse(&csr);
        let got = correlations(&dense, &ys);
        for g in 0..n_genes {
            for (j, y) in ys.iter().enumerate() {
                let x: Vec<f64> = (0..n).map(|i| vals[i * n_genes + g]).collect();
                let (mx, my) = (
                    x.iter().sum::<f64>() / n as f64,
                    y.iter().sum::<f64>() / n as f64,
                );
                let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
                let r = cov
                    / (x.iter().map(|a| (a - mx).powi(2)).sum::<f64>().sqrt()
                        * y.iter().map(|b| (b - my).powi(2)).sum::<f64>().sqrt());
                assert!((got[g * 2 + j] - r).abs() < 1e-12, "gene {g}, lineage {j}");
            }
        }
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| correlations(&dense, &ys));
        assert_eq!(one, got);
        let sparse_r = correlations(&sparse, &ys);
        for (a, b) in sparse_r.iter().zip(&got) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    /// Fisher's z p-values underflow: to 0 for a (numerically) perfect correlation, to
    /// subnormal numbers (`6.48e-316`) just before. Both are clamped to the smallest normal
    /// double, and q-values follow.
    #[test]
    fn p_and_q_values_never_go_below_the_smallest_normal_double() {
        let n = 1000;
        let y: Vec<f64> = (0..n).map(|i| (i as f64 / n as f64).powi(2)).collect();
        let w: Vec<f64> = (0..n).map(|i| ((i * 7919 % 1009) as f64).sin()).collect();
        // Gene 0 is y plus a little noise (r ≈ 1); genes 1.. add more and more noise, so r
        // sweeps through the range where 2 Φ(−|z|/se) is subnormal (|z|/se ≈ 37.5..38.5,
        // r ≈ 0.83).
        let n_genes = 400;
        let mut vals = vec![0.0; n * n_genes];
        for g in 0..n_genes {
            let c = 1e-4 + g as f64 * 0.002;
            for i in 0..n {
                vals[i * n_genes + g] = y[i] + c * w[i];
            }
        }
        let e = Expression::Dense {
            n_cells: n,
            n_genes,
            values: &vals,
        };
        let names = ["L".to_string()];
        let t = compute_lineage_drivers(
            &e,
            std::slice::from_ref(&y),
            &names,
            &DriverTest::Fisher,
            0.95,
        )
        .unwrap();
        // The unclamped values: some underflow to 0 and some are subnormal.
        let se = 1.0 / (n as f64 - 3.0).sqrt();
        let raw: Vec<f64> = t
            .corr
            .iter()
            .map(|r| 2.0 * norm_cdf(-(r.atanh() / se).abs()))
            .collect();
        assert!(raw.contains(&0.0), "no p-value underflows to 0");
        assert!(
            raw.iter().any(|&p| p > 0.0 && !p.is_normal()),
            "no subnormal p-value: the test does not test anything"
        );
        for (k, (&p, &q)) in t.pval.iter().zip(&t.qval).enumerate() {
            assert!(p.is_normal() && p >= P_VALUE_FLOOR, "gene {k}: p = {p:e}");
            assert!(q.is_normal() && q >= P_VALUE_FLOOR, "gene {k}: q = {q:e}");
        }
        assert_eq!(t.pval[0], P_VALUE_FLOOR);
        assert_eq!(format_p_value(t.qval[0]), "< 1e-300");
        assert_eq!(format_p_value(6.48e-316), "< 1e-300");
        assert_eq!(format_p_value(0.0), "< 1e-300");
        assert_eq!(format_p_value(3.14159e-12), "3.14e-12");
        assert_eq!(format_p_value(f64::NAN), "nan");
    }

    /// A permutation test never reports p = 0: at least 1 / n_perms.
    #[test]
    fn permutation_p_values_are_at_least_one_over_n_perms() {
        let n = 60;
        let y: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let e = Expression::Dense {
            n_cells: n,
            n_genes: 1,
            values: &y,
        };
        let t = compute_lineage_drivers(
            &e,
            std::slice::from_ref(&y),
            &["L".into()],
            &DriverTest::PermTest {
                n_perms: 50,
                seed: 1,
            },
            0.95,
        )
        .unwrap();
        assert_eq!(t.pval[0], 1.0 / 50.0);
        assert!(t.qval[0] >= t.pval[0]);
    }

    #[test]
    fn permutation_test_is_seeded_and_thread_independent() {
        let n = 40;
        let vals: Vec<f64> = (0..n * 2)
            .map(|k| {
                (k % 7) as f64
                    + if k % 2 == 0 {
                        (k / 2) as f64 * 0.1
                    } else {
                        0.0
                    }
            })
            .collect();
        let y: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let e = Expression::Dense {
            n_cells: n,
            n_genes: 2,
            values: &vals,
        };
        let test = DriverTest::PermTest {
            n_perms: 200,
            seed: 3,
        };
        let a = compute_lineage_drivers(&e, std::slice::from_ref(&y), &["L".into()], &test, 0.95)
            .unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| {
            compute_lineage_drivers(&e, std::slice::from_ref(&y), &["L".into()], &test, 0.95)
                .unwrap()
        });
        assert_eq!(a, b);
        assert!(
            a.pval[0] < 0.01,
            "strongly correlated gene: p = {}",
            a.pval[0]
        );
    }
}
