//! scVelo's moments and its steady-state (deterministic) and stochastic RNA-velocity models,
//! re-derived from the scVelo paper (Bergen et al. 2020) and its documented defaults
//! (`perc = [5, 95]`, no offsets, `min_r2 = 0.01`, `min_ratio = 0.01`):
//!
//! - smoothing graph `W`: the kNN connectivities binarised, the cell itself added, rows
//!   normalised (a uniform average over the cell and its neighbours); `Ms = W S`, `Mu = W U`,
//!   second order `Mss = W (S∘S)`, `Mus = W (S∘U)`;
//! - deterministic: per gene, `γ = Σ s u / Σ s²` over the "extreme" cells whose score
//!   `s/max s + u/max u` reaches its 95th percentile (numpy's linear interpolation);
//!   `r² = 1 − SS_res/SS_tot` on all cells; velocity genes: `r² > 0.01`, `γ > 0.01`, expressed
//!   in both layers, highly variable (when known);
//! - stochastic (for the velocity genes): with `var_ss = 2 Mss − Ms` and `cov_us = 2 Mus + Mu`,
//!   a generalised least squares on the stacked system `[Mu/σ₁; cov_us/σ₂] = γ [Ms/σ₁;
//!   var_ss/σ₂]` where the first-order rows keep only extreme cells (the joint score or `Ms`
//!   alone at their 95th percentile), σ₁ is the standard deviation of the deterministic
//!   residual and σ₂ that of `cov_us − γ₂ var_ss` (γ₂ the slope through the origin over all
//!   cells); `variance_velocity = (cov_us − 2 Ms Mu) − γ (var_ss − 2 Ms²)`.
//!
//! Sums are accumulated in f64; the cell × gene matrices (moments, velocity, variance) are
//! stored in f32, as scVelo stores them — half the memory, and the γ fit then sees the same
//! rounded moments scVelo's does (agreement ~1e-7 relative, not bitwise).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use cellfate_kernels::Csr;

/// The velocity model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VelocityMode {
    /// Steady-state ratio from extreme quantiles (scVelo `mode="deterministic"`).
    Deterministic,
    /// First and second moments (scVelo's default, `mode="stochastic"`).
    #[default]
    Stochastic,
}

impl std::str::FromStr for VelocityMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deterministic" | "steady_state" | "steady-state" => Ok(Self::Deterministic),
            "stochastic" => Ok(Self::Stochastic),
            other => Err(format!(
                "velocity mode {other:?}: expected stochastic or deterministic"
            )),
        }
    }
}

impl VelocityMode {
    /// scVelo's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deterministic => "deterministic",
            Self::Stochastic => "stochastic",
        }
    }
}

/// The smoothing graph of scVelo's moments: `conn` binarised, the diagonal set, rows
/// normalised.
pub fn smoothing_graph(conn: &Csr) -> Csr {
    let n = conn.nrows();
    let mut t = Vec::with_capacity(conn.nnz() + n);
    for i in 0..n {
        let (c, v) = conn.row(i);
        let nb: Vec<usize> = c
            .iter()
            .zip(v)
            .filter(|&(&j, &x)| x > 0.0 && j as usize != i)
            .map(|(&j, _)| j as usize)
            .collect();
        let k = (nb.len() + 1) as f64;
        t.push((i, i, 1.0 / k));
        t.extend(nb.into_iter().map(|j| (i, j, 1.0 / k)));
    }
    // Valid by construction (indices < n, finite weights).
    Csr::from_triplets(n, n, &t).unwrap_or_else(|_| Csr::identity(n))
}

/// `W · f(M)` as a dense row-major n × |genes| matrix, for the genes in `genes` (column
/// indices of `m`); `f` maps (cell, gene, value of `m`) to the smoothed quantity.
pub fn smooth_dense<F: Fn(usize, usize, f64) -> f64 + Sync>(
    w: &Csr,
    m: &Csr,
    genes: &[usize],
    f: &F,
) -> Vec<f32> {
    let n = w.nrows();
    let mut pos = vec![usize::MAX; m.ncols()];
    for (k, &j) in genes.iter().enumerate() {
        pos[j] = k;
    }
    let g = genes.len();
    let mut out = vec![0.0f32; n * g];
    if g == 0 {
        return out;
    }
    out.par_chunks_mut(g).enumerate().for_each_init(
        || vec![0.0f64; g],
        |acc, (i, row)| {
            acc.iter_mut().for_each(|a| *a = 0.0);
            let (nb, wv) = w.row(i);
            for (&j, &wj) in nb.iter().zip(wv) {
                let j = j as usize;
                let (c, v) = m.row(j);
                for (&gg, &x) in c.iter().zip(v) {
                    let k = pos[gg as usize];
                    if k != usize::MAX {
                        acc[k] += wj * f(j, gg as usize, x);
                    }
                }
            }
            for (o, &a) in row.iter_mut().zip(acc.iter()) {
                *o = a as f32;
            }
        },
    );
    out
}

/// Second moments `(Mss, Mus) = (W (S∘S), W (S∘U))` of the genes `idx` (row-major
/// n × |idx|) from the smoothing graph and the normalised spliced/unspliced counts.
pub fn second_moments(w: &Csr, s: &Csr, u: &Csr, idx: &[usize]) -> (Vec<f32>, Vec<f32>) {
    second_moments_with(w, s, &s.hadamard(u), idx)
}

/// [`second_moments`] with `S∘U` computed once by the caller (`su = s.hadamard(u)`), for
/// repeated calls on blocks of genes.
pub fn second_moments_with(w: &Csr, s: &Csr, su: &Csr, idx: &[usize]) -> (Vec<f32>, Vec<f32>) {
    if idx.len() == s.ncols() {
        return (
            smooth_dense(w, s, idx, &|_, _, x| x * x),
            smooth_dense(w, su, idx, &|_, _, x| x),
        );
    }
    // A block of genes: smoothing walks every neighbour's row, so restrict the rows to the
    // block's columns first (one pass over the entries) instead of skipping the others in
    // each of the n × k row visits.
    let cols: Vec<usize> = (0..idx.len()).collect();
    let (s_b, su_b) = if idx.windows(2).all(|w| w[0] < w[1]) {
        (s.select_columns(idx), su.select_columns(idx))
    } else {
        let rows: Vec<usize> = (0..s.nrows()).collect();
        (s.submatrix(&rows, idx), su.submatrix(&rows, idx))
    };
    (
        smooth_dense(w, &s_b, &cols, &|_, _, x| x * x),
        smooth_dense(w, &su_b, &cols, &|_, _, x| x),
    )
}

/// numpy's default percentile (linear interpolation) of `v` (sorted in place).
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Computes `(Mss, Mus)` (row-major n × |genes|) for a list of genes.
pub type SecondMoments<'a> = dyn Fn(&[usize]) -> (Vec<f32>, Vec<f32>) + 'a;

/// A fitted velocity model.
#[derive(Clone, Debug)]
pub struct VelocityFit {
    /// Model.
    pub mode: VelocityMode,
    /// Per-gene degradation/splicing ratio γ.
    pub gamma: Vec<f64>,
    /// The deterministic (quantile-regression) ratio.
    pub qreg_ratio: Vec<f64>,
    /// Coefficient of determination of the deterministic fit.
    pub r2: Vec<f64>,
    /// Velocity genes.
    pub velocity_genes: Vec<bool>,
    /// Velocity, row-major n × g.
    pub velocity: Vec<f32>,
    /// Stochastic mode: `variance_velocity` (zero for genes that are not velocity genes).
    pub variance_velocity: Option<Vec<f32>>,
}

/// Genes per block when columns are gathered from row-major matrices (each row contributes
/// one contiguous run; a block of columns is then contiguous per gene).
const GENE_BLOCK: usize = 32;

/// Bytes of one round's second moments and variances (float32, 12 bytes a cell and gene),
/// at most (unless one block needs more).
const ROUND_BYTES: usize = 2 << 30;

/// Genes per round of the stochastic fit for `n` cells: up to 16 blocks of [`GENE_BLOCK`]
/// genes within [`ROUND_BYTES`] (at least one block). Every gene is fitted alone, so the sizes change the memory, never the result.
/// Measured with `cellfate velocity` at 1M cells × 300 genes (one run each): one round of all
/// 297 genes 169 s / 17.6 GB; rounds of 160 genes 192 s / 16.0 GB (this); of 64 genes 233 s /
/// 13.9 GB; of 88 genes in blocks of 8 genes 284 s / 14.2 GB (smaller blocks cost time and
/// saved nothing).
fn round_genes(n: usize) -> usize {
    GENE_BLOCK * (ROUND_BYTES / (12 * n.max(1) * GENE_BLOCK)).clamp(1, 16)
}

/// Columns `cols` of the row-major n × w matrix `m`, gene-major in f64 (`out[c][i]`).
fn gather(m: &[f32], n: usize, w: usize, cols: &[usize]) -> Vec<Vec<f64>> {
    let mut out = vec![vec![0.0; n]; cols.len()];
    for i in 0..n {
        let row = &m[i * w..(i + 1) * w];
        for (c, &j) in cols.iter().enumerate() {
            out[c][i] = f64::from(row[j]);
        }
    }
    out
}

/// The steady-state fit of one gene: "extreme" cells (joint score at its 95th percentile), γ
/// through the origin on them, and r² on all cells.
fn steady_state(s: &[f64], u: &[f64]) -> (Vec<bool>, f64, f64) {
    let n = s.len();
    let max = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(1e-3)
    };
    let (smax, umax) = (max(s), max(u));
    let z: Vec<f64> = (0..n).map(|i| s[i] / smax + u[i] / umax).collect();
    let q = percentile(&mut z.clone(), 95.0);
    let extreme: Vec<bool> = z.iter().map(|&x| x >= q).collect();
    let (mut su, mut ss) = (0.0, 0.0);
    for i in (0..n).filter(|&i| extreme[i]) {
        su += s[i] * u[i];
        ss += s[i] * s[i];
    }
    let gm = su / ss;
    let gamma = if gm.is_finite() { gm } else { 0.0 };
    let umean = u.iter().sum::<f64>() / n as f64;
    let ssres: f64 = (0..n).map(|i| (u[i] - gamma * s[i]).powi(2)).sum();
    let sstot: f64 = u.iter().map(|x| (x - umean).powi(2)).sum();
    let r2 = 1.0 - ssres / sstot;
    (extreme, gamma, if r2.is_finite() { r2 } else { 0.0 })
}

/// Genes of a block and, per gene, γ and the variance of the velocity.
type FittedBlock = (Vec<usize>, Vec<(f64, Vec<f32>)>);

/// scVelo's stochastic fit of one gene from its first moments `s`, `u`, second moments
/// `mss`, `mus` and deterministic γ `qreg`: returns γ and the variance of the velocity.
fn stochastic_gene(s: &[f64], u: &[f64], mss: &[f64], mus: &[f64], qreg: f64) -> (f64, Vec<f32>) {
    let n = s.len();
    let var_ss: Vec<f64> = (0..n).map(|i| 2.0 * mss[i] - s[i]).collect();
    let cov_us: Vec<f64> = (0..n).map(|i| 2.0 * mus[i] + u[i]).collect();
    let g2 = {
        let (a, b) = (0..n).fold((0.0, 0.0), |(a, b), i| {
            (a + var_ss[i] * cov_us[i], b + var_ss[i] * var_ss[i])
        });
        let v = a / b;
        if v.is_finite() {
            v
        } else {
            0.0
        }
    };
    let std = |v: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = v.collect();
        let m = v.iter().sum::<f64>() / n as f64;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64).sqrt()
    };
    let s1 = std(&mut (0..n).map(|i| u[i] - qreg * s[i]));
    let s2 = std(&mut (0..n).map(|i| cov_us[i] - g2 * var_ss[i]));
    // First-order rows: extreme cells, or Ms alone at its 95th percentile.
    let (extreme, _, _) = steady_state(s, u);
    let qs = percentile(&mut s.to_vec(), 95.0);
    let (mut xy, mut xx) = (0.0, 0.0);
    for i in 0..n {
        if extreme[i] || s[i] >= qs {
            let (x, y) = (s[i] / s1, u[i] / s1);
            xy += x * y;
            xx += x * x;
        }
        let (x, y) = (var_ss[i] / s2, cov_us[i] / s2);
        xy += x * y;
        xx += x * x;
    }
    let gm = xy / xx;
    let gm = if gm.is_finite() { gm } else { 0.0 };
    let var = (0..n)
        .map(|i| ((cov_us[i] - 2.0 * s[i] * u[i]) - gm * (var_ss[i] - 2.0 * s[i] * s[i])) as f32)
        .collect();
    (gm, var)
}

/// Fits the velocity model on the moments `ms`, `mu` (row-major n × g). `hvg` restricts the
/// velocity genes to highly variable genes; `second` computes `(Mss, Mus)` (row-major
/// n × |genes|) for a list of genes and is needed in stochastic mode.
pub fn fit_velocity(
    ms: &[f32],
    mu: &[f32],
    n: usize,
    g: usize,
    hvg: Option<&[bool]>,
    mode: VelocityMode,
    second: Option<&SecondMoments<'_>>,
) -> VelocityFit {
    // Deterministic fit, gene by gene (in parallel; each gene is independent).
    let blocks: Vec<Vec<usize>> = (0..g)
        .collect::<Vec<_>>()
        .chunks(GENE_BLOCK)
        .map(<[usize]>::to_vec)
        .collect();
    let per_gene: Vec<(f64, f64)> = blocks
        .par_iter()
        .flat_map_iter(|b| {
            let (s, u) = (gather(ms, n, g, b), gather(mu, n, g, b));
            s.into_iter()
                .zip(u)
                .map(|(s, u)| {
                    let (_, gamma, r2) = steady_state(&s, &u);
                    (gamma, r2)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let qreg: Vec<f64> = per_gene.iter().map(|p| p.0).collect();
    let r2: Vec<f64> = per_gene.iter().map(|p| p.1).collect();
    let expressed = |m: &[f32], j: usize| (0..n).any(|i| m[i * g + j] > 0.0);
    let mut vgenes: Vec<bool> = (0..g)
        .map(|j| {
            r2[j] > 0.01
                && qreg[j] > 0.01
                && expressed(ms, j)
                && expressed(mu, j)
                && hvg.is_none_or(|h| h[j])
        })
        .collect();
    if vgenes.iter().filter(|&&b| b).count() < 2 {
        // scVelo's fallback for weak splicing signal: r² above its 80th percentile.
        let cut = percentile(&mut r2.clone(), 80.0);
        vgenes = r2.iter().map(|&x| x > cut).collect();
    }
    let mut gamma = qreg.clone();
    let mut variance = None;
    if let (VelocityMode::Stochastic, Some(second)) = (mode, second) {
        let idx: Vec<usize> = if vgenes.iter().any(|&b| b) {
            (0..g).filter(|&j| vgenes[j]).collect()
        } else {
            (0..g).collect()
        };
        // Rounds of blocks: the second moments of a round's genes are computed, its
        // blocks fitted in parallel, then their variances written into the cell × gene
        // layer, so only one round's columns are held at a time.
        let mut var_all = vec![0.0f32; n * g];
        for round in idx.chunks(round_genes(n)) {
            let k = round.len();
            let (mss, mus) = second(round);
            let positions: Vec<usize> = (0..k).collect();
            let fitted: Vec<FittedBlock> = positions
                .par_chunks(GENE_BLOCK)
                .map(|pos| {
                    let genes: Vec<usize> = pos.iter().map(|&c| round[c]).collect();
                    let (s, u) = (gather(ms, n, g, &genes), gather(mu, n, g, &genes));
                    let (ss, us) = (gather(&mss, n, k, pos), gather(&mus, n, k, pos));
                    let fits = (0..genes.len())
                        .map(|b| stochastic_gene(&s[b], &u[b], &ss[b], &us[b], qreg[genes[b]]))
                        .collect();
                    (genes, fits)
                })
                .collect();
            for (genes, fits) in &fitted {
                for (&j, (gm, _)) in genes.iter().zip(fits) {
                    gamma[j] = *gm;
                }
                for i in 0..n {
                    let row = &mut var_all[i * g..(i + 1) * g];
                    for (&j, (_, var)) in genes.iter().zip(fits) {
                        row[j] = var[i];
                    }
                }
            }
        }
        variance = Some(var_all);
    }
    let velocity: Vec<f32> = (0..n * g)
        .into_par_iter()
        .with_min_len(4096)
        .map(|k| (f64::from(mu[k]) - gamma[k % g] * f64::from(ms[k])) as f32)
        .collect();
    VelocityFit {
        mode,
        gamma,
        qreg_ratio: qreg,
        r2,
        velocity_genes: vgenes,
        velocity,
        variance_velocity: variance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_rounds_fit_in_their_budget() {
        assert_eq!(round_genes(3_696), 512);
        assert_eq!(round_genes(100_000), 512);
        assert_eq!(round_genes(1_000_000), 160);
        assert_eq!(round_genes(100_000_000), 32);
        for n in [1, 10, 1_000, 250_000, 1_000_000, 10_000_000] {
            let round = round_genes(n);
            assert!(round >= GENE_BLOCK && round % GENE_BLOCK == 0);
            assert!(round * 12 * n <= ROUND_BYTES || round == GENE_BLOCK);
        }
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85; ([5], 95) = 5
        assert!((percentile(&mut [4.0, 1.0, 3.0, 2.0], 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&mut [5.0], 95.0), 5.0);
    }

    #[test]
    fn steady_state_recovers_a_known_ratio() {
        // u = 0.5 s on the top cells, u = 0.5 s + 1 below index 30: γ = 0.5 from the extreme
        // (top 5 %) cells alone; velocity 0 there and positive (induction) below.
        let n = 40;
        let ms: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let mu: Vec<f32> = (0..n)
            .map(|i| 0.5 * i as f32 + if i < 30 { 1.0 } else { 0.0 })
            .collect();
        let fit = fit_velocity(&ms, &mu, n, 1, None, VelocityMode::Deterministic, None);
        assert!((fit.gamma[0] - 0.5).abs() < 1e-12, "{}", fit.gamma[0]);
        assert!(fit.velocity[39].abs() < 1e-6);
        assert!(fit.velocity[10] > 0.0);
    }

    #[test]
    fn smoothing_graph_rows_are_uniform_averages() {
        let c = Csr::from_triplets(3, 3, &[(0, 1, 0.3), (1, 0, 0.3), (1, 2, 0.9), (2, 1, 0.9)])
            .expect("csr");
        let w = smoothing_graph(&c);
        assert_eq!(w.get(1, 1), 1.0 / 3.0);
        assert_eq!(w.get(0, 1), 0.5);
        assert!(w.row_sums().iter().all(|s| (s - 1.0).abs() < 1e-15));
    }
}
