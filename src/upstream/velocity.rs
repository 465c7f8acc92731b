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

use std::ops::Range;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use cellfate_kernels::Csr;

use super::UpstreamError;

/// The velocity model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VelocityMode {
    /// Steady-state ratio from extreme quantiles (scVelo `mode="deterministic"`).
    Deterministic,
    /// First and second moments (scVelo's default, `mode="stochastic"`).
    #[default]
    Stochastic,
    /// The full splicing kinetics fitted by EM (scVelo's `recover_dynamics` +
    /// `velocity(mode="dynamical")`; [`cellfate_dynamics::em`]).
    Dynamical,
}

/// Why a velocity mode name does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("velocity mode {0:?}: expected stochastic, deterministic or dynamical")]
pub struct VelocityModeParseError(pub String);

impl std::str::FromStr for VelocityMode {
    type Err = VelocityModeParseError;
    fn from_str(s: &str) -> Result<Self, VelocityModeParseError> {
        match s {
            "deterministic" | "steady_state" | "steady-state" => Ok(Self::Deterministic),
            "stochastic" => Ok(Self::Stochastic),
            "dynamical" => Ok(Self::Dynamical),
            other => Err(VelocityModeParseError(other.into())),
        }
    }
}

impl VelocityMode {
    /// scVelo's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deterministic => "deterministic",
            Self::Stochastic => "stochastic",
            Self::Dynamical => "dynamical",
        }
    }
}

/// The smoothing graph of scVelo's moments: `conn` binarised, the diagonal set, rows
/// normalised (scVelo's `get_connectivities`, the same graph the dynamical model smooths
/// with: [`cellfate_dynamics::knn_weights`]).
pub fn smoothing_graph(conn: &Csr) -> Csr {
    cellfate_dynamics::knn_weights(conn)
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
    let all: Vec<usize> = (0..idx.len()).collect();
    if idx.len() == s.ncols() && idx.iter().enumerate().all(|(c, &j)| c == j) {
        return (
            smooth_dense(w, s, &all, &|_, _, x| x * x),
            smooth_dense(w, &s.hadamard(u), &all, &|_, _, x| x),
        );
    }
    // A subset of genes: smoothing walks every neighbour's row, so restrict the rows to the
    // subset's columns first (one pass over the entries) instead of skipping the others in
    // each of the n × k row visits.
    let (s_b, u_b) = if idx.windows(2).all(|w| w[0] < w[1]) {
        rayon::join(|| s.select_columns(idx), || u.select_columns(idx))
    } else {
        let rows: Vec<usize> = (0..s.nrows()).collect();
        (s.submatrix(&rows, idx), u.submatrix(&rows, idx))
    };
    (
        smooth_dense(w, &s_b, &all, &|_, _, x| x * x),
        smooth_dense(w, &s_b.hadamard(&u_b), &all, &|_, _, x| x),
    )
}

/// numpy's default percentile (linear interpolation) of `v` (reordered in place). The two
/// order statistics are found by selection (linear time; the fits take three percentiles of
/// every gene over every cell), with the values a full sort would give.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (_, at_lo, above) = v.select_nth_unstable_by(lo, f64::total_cmp);
    let at_lo = *at_lo;
    let at_hi = if hi > lo {
        above
            .iter()
            .copied()
            .min_by(f64::total_cmp)
            .unwrap_or(at_lo)
    } else {
        at_lo
    };
    at_lo + (at_hi - at_lo) * (pos - lo as f64)
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
    /// The dynamical model's fit per gene (`None` for genes not fitted or not recoverable;
    /// per-cell vectors emptied: they went to the block's layers). Empty for other models.
    pub dynamical: Vec<Option<cellfate_dynamics::GeneDynamics>>,
    /// Velocity, row-major n × g.
    pub velocity: Vec<f32>,
    /// Stochastic mode: `variance_velocity` (zero for genes that are not velocity genes).
    pub variance_velocity: Option<Vec<f32>>,
    /// Dynamical mode: `[fit_t, fit_tau, fit_tau_, velocity_u]`, row-major n × g (NaN for
    /// genes not fitted).
    pub dynamical_layers: Option<[Vec<f32>; 4]>,
}

/// Genes per parallel task of a block's fit (each task gathers its genes' columns from the
/// block's row-major matrices: one contiguous run per row).
const GENE_BLOCK: usize = 32;

/// Bytes of one block's cell × gene float32 matrices (Ms, Mu, velocity, variance, Mss, Mus:
/// 24 bytes a cell and gene), at most (unless one task's genes need more).
const BLOCK_BYTES: usize = 3 << 30;

/// Genes per block of [`fit_velocity_blocks`] for `n` cells: up to 16 parallel tasks of 32
/// genes within 3 GiB of float32 matrices (at least one task): 512 genes up to ~260,000
/// cells, 128 at a million. Every gene is fitted alone, so the size changes the memory (and
/// the number of passes over the kNN graph), never the result.
pub fn block_genes(n: usize) -> usize {
    GENE_BLOCK * (BLOCK_BYTES / (24 * n.max(1) * GENE_BLOCK)).clamp(1, 16)
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

/// Where the moments of a block of genes come from: smoothed from the normalised counts
/// ([`SmoothedCounts`], `cellfate preprocess`) or read from stored layers ([`StoredMoments`],
/// `cellfate velocity`).
pub trait MomentSource {
    /// What a block's first and second moments share (its columns of the counts, say).
    type Block;
    /// Why a block cannot be read (a file's reading error; in memory, [`UpstreamError`]).
    type Error;
    /// Prepares the genes `genes` (a range of gene indices).
    fn block(&self, genes: Range<usize>) -> Result<Self::Block, Self::Error>;
    /// `(Ms, Mu)` of the block, row-major n × |block|.
    fn first(&self, block: &Self::Block) -> Result<Pair, Self::Error>;
    /// Whether [`MomentSource::second`] is available (needed by the stochastic model).
    fn has_second(&self) -> bool;
    /// `(Mss, Mus)` of the block's columns `cols` (positions within the block, increasing),
    /// row-major n × |cols|; `None` when unavailable.
    fn second(&self, block: &Self::Block, cols: &[usize]) -> Result<Option<Pair>, Self::Error>;
    /// The kNN smoothing graph (scVelo's `get_connectivities`) the dynamical model smooths
    /// its state distances and times with; `None` when unavailable.
    fn graph(&self) -> Option<&Csr> {
        None
    }
}

/// Settings of the dynamical model (scVelo's `recover_dynamics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicalSettings {
    /// Fit every gene (scVelo's `var_names="all"`) instead of the velocity genes of the
    /// steady-state fit (`var_names="velocity_genes"`, scVelo's default).
    pub all_genes: bool,
    /// The model's options.
    pub options: cellfate_dynamics::DynamicsOptions,
}

/// The dynamical model's per-cell layers of one block (row-major n × |block|, NaN for genes
/// not fitted): `fit_t`, `fit_tau`, `fit_tau_`, `velocity_u`.
#[derive(Debug)]
pub struct DynamicalLayers<'a> {
    /// `layers["fit_t"]`.
    pub fit_t: &'a [f32],
    /// `layers["fit_tau"]`.
    pub fit_tau: &'a [f32],
    /// `layers["fit_tau_"]`.
    pub fit_tau_: &'a [f32],
    /// `layers["velocity_u"]`.
    pub velocity_u: &'a [f32],
}

/// Two row-major float32 matrices of one shape (`(Ms, Mu)`, `(Mss, Mus)`).
pub type Pair = (Vec<f32>, Vec<f32>);

/// Columns `r` of the row-major n × g matrix `m`, row-major n × |r|.
pub fn column_slab(m: &[f32], n: usize, g: usize, r: &Range<usize>) -> Vec<f32> {
    let mut out = vec![0.0f32; n * r.len()];
    if !r.is_empty() {
        out.par_chunks_mut(r.len())
            .enumerate()
            .for_each(|(i, row)| {
                row.copy_from_slice(&m[i * g + r.start..i * g + r.end]);
            });
    }
    out
}

/// Fewest cells for which [`Locality::new`] reorders them: below, the counts a smoothing
/// gathers fit the caches whatever the order (and small inputs keep their exact summation
/// order).
pub const LOCALITY_MIN_CELLS: usize = 50_000;

/// The cells in an order where kNN neighbours are near each other in memory, for the
/// smoothing of [`SmoothedCounts`]: it gathers every neighbour's row of the counts, and in a
/// file's order (often none in particular) those gathers miss the caches. Measured at 200,000
/// cells: the moments take half the time on cells sorted along the trajectory (BENCHMARKS.md,
/// "Cell order"). Results are mapped back to the input's order.
#[derive(Clone, Debug)]
pub struct Locality {
    /// `order[new] = old`.
    order: Vec<usize>,
    /// `inverse[old] = new`.
    inverse: Vec<usize>,
    /// The smoothing graph with rows and columns in the new order.
    w: Csr,
}

impl Locality {
    /// The order of [`super::ann::locality_order`] on the PCA scores `pca` (cells × PCs),
    /// with smoothing graph `w` permuted to it; `None` below [`LOCALITY_MIN_CELLS`] cells or
    /// when the shapes disagree.
    pub fn new(pca: &nalgebra::DMatrix<f64>, w: &Csr, seed: u64) -> Option<Self> {
        let n = w.nrows();
        if n < LOCALITY_MIN_CELLS || pca.nrows() != n || w.ncols() != n {
            return None;
        }
        Some(Self::build(pca, w, seed))
    }

    /// [`Locality::new`] at any number of cells (`pca` and `w` of `w.nrows()` rows).
    fn build(pca: &nalgebra::DMatrix<f64>, w: &Csr, seed: u64) -> Self {
        let n = w.nrows();
        let order = super::ann::locality_order(pca, super::ann::RP_LEAF_MIN, seed);
        let mut inverse = vec![0usize; n];
        for (new, &old) in order.iter().enumerate() {
            inverse[old] = new;
        }
        let w = w.submatrix(&order, &order);
        Self { order, inverse, w }
    }

    /// Rows of the row-major `m` (new order, `width` columns) back in the input's order.
    fn restore(&self, m: &[f32], width: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m.len()];
        if width > 0 {
            out.par_chunks_mut(width)
                .enumerate()
                .for_each(|(old, row)| {
                    let new = self.inverse[old];
                    row.copy_from_slice(&m[new * width..(new + 1) * width]);
                });
        }
        out
    }
}

/// Moments smoothed over the kNN graph from normalised counts: `W S`, `W U`, `W (S∘S)`,
/// `W (S∘U)` ([`smoothing_graph`] for `w`).
#[derive(Clone, Copy, Debug)]
pub struct SmoothedCounts<'a> {
    /// Smoothing graph.
    pub w: &'a Csr,
    /// Normalised spliced counts.
    pub s: &'a Csr,
    /// Normalised unspliced counts.
    pub u: &'a Csr,
    /// Smooth in this cell order (the same moments, computed faster on many cells).
    pub local: Option<&'a Locality>,
}

impl MomentSource for SmoothedCounts<'_> {
    /// The block's columns of `s` and `u` (`None`: the block is every gene).
    type Block = Option<(Csr, Csr)>;
    type Error = UpstreamError;

    fn block(&self, genes: Range<usize>) -> Result<Self::Block, UpstreamError> {
        let cols: Vec<usize> = genes.collect();
        if let Some(l) = self.local {
            // The block's columns with the rows in the locality order (one copy, as below).
            return Ok(Some(rayon::join(
                || self.s.submatrix(&l.order, &cols),
                || self.u.submatrix(&l.order, &cols),
            )));
        }
        if cols.len() == self.s.ncols() {
            return Ok(None);
        }
        // Smoothing visits every neighbour's row, so restrict the rows to the block's columns
        // first (one pass over the entries) instead of skipping the others in each visit.
        Ok(Some(rayon::join(
            || self.s.select_columns(&cols),
            || self.u.select_columns(&cols),
        )))
    }

    fn first(&self, block: &Self::Block) -> Result<Pair, UpstreamError> {
        let (s, u) = block.as_ref().map_or((self.s, self.u), |(s, u)| (s, u));
        let all: Vec<usize> = (0..s.ncols()).collect();
        match self.local {
            Some(l) => Ok((
                l.restore(&smooth_dense(&l.w, s, &all, &|_, _, x| x), all.len()),
                l.restore(&smooth_dense(&l.w, u, &all, &|_, _, x| x), all.len()),
            )),
            None => Ok((
                smooth_dense(self.w, s, &all, &|_, _, x| x),
                smooth_dense(self.w, u, &all, &|_, _, x| x),
            )),
        }
    }

    fn has_second(&self) -> bool {
        true
    }

    fn second(&self, block: &Self::Block, cols: &[usize]) -> Result<Option<Pair>, UpstreamError> {
        let (s, u) = block.as_ref().map_or((self.s, self.u), |(s, u)| (s, u));
        Ok(Some(match self.local {
            Some(l) => {
                let (a, b) = second_moments(&l.w, s, u, cols);
                (l.restore(&a, cols.len()), l.restore(&b, cols.len()))
            }
            None => second_moments(self.w, s, u, cols),
        }))
    }

    fn graph(&self) -> Option<&Csr> {
        Some(self.w)
    }
}

/// Moments read from row-major n × g float32 layers (`layers["Ms"]`, `layers["Mu"]`), with
/// second moments from a closure taking gene indices.
pub struct StoredMoments<'a> {
    /// `Ms`.
    pub ms: &'a [f32],
    /// `Mu`.
    pub mu: &'a [f32],
    /// Cells.
    pub n: usize,
    /// Genes.
    pub g: usize,
    /// Second moments of a list of genes (stochastic model).
    pub second: Option<&'a SecondMoments<'a>>,
    /// The smoothing graph (dynamical model).
    pub graph: Option<&'a Csr>,
}

impl MomentSource for StoredMoments<'_> {
    type Block = Range<usize>;
    type Error = UpstreamError;

    fn block(&self, genes: Range<usize>) -> Result<Range<usize>, UpstreamError> {
        Ok(genes)
    }

    fn first(&self, r: &Range<usize>) -> Result<Pair, UpstreamError> {
        Ok((
            column_slab(self.ms, self.n, self.g, r),
            column_slab(self.mu, self.n, self.g, r),
        ))
    }

    fn has_second(&self) -> bool {
        self.second.is_some()
    }

    fn second(&self, r: &Range<usize>, cols: &[usize]) -> Result<Option<Pair>, UpstreamError> {
        let idx: Vec<usize> = cols.iter().map(|&c| r.start + c).collect();
        Ok(self.second.map(|f| f(&idx)))
    }

    fn graph(&self) -> Option<&Csr> {
        self.graph
    }
}

/// One block of genes' cell × gene layers, handed to the sink of [`fit_velocity_blocks`]
/// (each row-major n × |genes|).
#[derive(Debug)]
pub struct BlockLayers<'a> {
    /// The genes (a range of gene indices).
    pub genes: Range<usize>,
    /// `Ms`.
    pub ms: &'a [f32],
    /// `Mu`.
    pub mu: &'a [f32],
    /// `velocity`.
    pub velocity: &'a [f32],
    /// `variance_velocity` (stochastic model).
    pub variance: Option<&'a [f32]>,
    /// The dynamical model's layers.
    pub dynamical: Option<DynamicalLayers<'a>>,
}

/// Per-gene results of [`fit_velocity_blocks`] and where its time went.
#[derive(Clone, Debug)]
pub struct GeneFit {
    /// Model actually fitted (deterministic when no second moments were available).
    pub mode: VelocityMode,
    /// Per-gene degradation/splicing ratio γ.
    pub gamma: Vec<f64>,
    /// The deterministic (quantile-regression) ratio.
    pub qreg_ratio: Vec<f64>,
    /// Coefficient of determination of the deterministic fit.
    pub r2: Vec<f64>,
    /// Velocity genes.
    pub velocity_genes: Vec<bool>,
    /// The dynamical model's fit per gene (`None` for genes not fitted or not recoverable;
    /// per-cell vectors emptied: they went to the block's layers). Empty for other models.
    pub dynamical: Vec<Option<cellfate_dynamics::GeneDynamics>>,
    /// Genes the dynamical model was asked to fit but could not (at most 2 cells with both
    /// unspliced and spliced moments above 0: scVelo's "not recoverable"); their parameters
    /// and layers are NaN.
    pub dynamical_skipped: Vec<usize>,
    /// Seconds in first moments (incl. selecting each block's columns), second moments, the
    /// fits, and the sink.
    pub seconds: [f64; 4],
}

/// Fits the velocity model block of genes by block of genes ([`block_genes`]): each block's
/// first moments, deterministic fit, second moments of its velocity genes and stochastic fit
/// are computed, its layers handed to `sink` and dropped, so memory holds one block of
/// cell × gene matrices at a time whatever the number of genes. `hvg` restricts the velocity
/// genes to highly variable genes. With fewer than two velocity genes, scVelo's fallback (r²
/// above its 80th percentile) is applied in a second pass, which hands every block to `sink`
/// again.
///
/// The dynamical model (`mode` [`VelocityMode::Dynamical`]) fits each gene of a block in
/// parallel after the steady-state fit (whose r² is scVelo's `fit_r2` and whose velocity genes
/// are the genes fitted unless `dynamics.all_genes`); its velocity genes are then scVelo's:
/// likelihood above 1e-3, r² above 0.01 and a scaling between min(P10, 0.03) and max(P90, 3).
pub fn fit_velocity_blocks<M: MomentSource, E: From<M::Error>>(
    src: &M,
    n: usize,
    g: usize,
    hvg: Option<&[bool]>,
    mode: VelocityMode,
    dynamics: &DynamicalSettings,
    sink: &mut dyn FnMut(BlockLayers<'_>) -> Result<(), E>,
) -> Result<GeneFit, E> {
    let stochastic = mode == VelocityMode::Stochastic && src.has_second();
    let dynamical = (mode == VelocityMode::Dynamical).then_some(dynamics);
    let mut fit = GeneFit {
        mode: if stochastic {
            VelocityMode::Stochastic
        } else if dynamical.is_some() {
            VelocityMode::Dynamical
        } else {
            VelocityMode::Deterministic
        },
        gamma: vec![0.0; g],
        qreg_ratio: vec![0.0; g],
        r2: vec![0.0; g],
        velocity_genes: vec![false; g],
        dynamical: Vec::new(),
        dynamical_skipped: Vec::new(),
        seconds: [0.0; 4],
    };
    if dynamical.is_some() {
        fit.dynamical = vec![None; g];
    }
    let pass = Pass {
        hvg,
        stochastic,
        dynamical,
        fit_graph: dynamical
            .and(src.graph())
            .map(cellfate_dynamics::FitGraph::new),
    };
    blocks_pass(src, n, g, &pass, None, &mut fit, sink)?;
    if fit.velocity_genes.iter().filter(|&&b| b).count() < 2 {
        // scVelo's fallback for weak splicing signal: r² above its 80th percentile.
        let cut = percentile(&mut fit.r2.clone(), 80.0);
        let vgenes: Vec<bool> = fit.r2.iter().map(|&x| x > cut).collect();
        let set = if vgenes.iter().any(|&b| b) {
            vgenes.clone()
        } else {
            vec![true; g]
        };
        blocks_pass(src, n, g, &pass, Some(&set), &mut fit, sink)?;
        fit.velocity_genes = vgenes;
    }
    if dynamical.is_some() {
        dynamical_velocity_genes(&mut fit);
    }
    Ok(fit)
}

/// scVelo's velocity genes of the dynamical model (`tl.velocity(mode="dynamical")`).
fn dynamical_velocity_genes(fit: &mut GeneFit) {
    let mut scalings: Vec<f64> = fit
        .dynamical
        .iter()
        .flatten()
        .map(|d| d.scaling)
        .filter(|x| !x.is_nan())
        .collect();
    let lb = percentile(&mut scalings.clone(), 10.0);
    let ub = percentile(&mut scalings, 90.0);
    let (lo, hi) = (lb.min(0.03), ub.max(3.0));
    fit.velocity_genes = fit
        .dynamical
        .iter()
        .zip(&fit.r2)
        .map(|(d, &r2)| {
            d.as_ref().is_some_and(|d| {
                d.likelihood > 1e-3 && r2 > 0.01 && d.scaling > lo && d.scaling < hi
            })
        })
        .collect();
}

/// What one pass of [`fit_velocity_blocks`] fits.
struct Pass<'a> {
    hvg: Option<&'a [bool]>,
    stochastic: bool,
    dynamical: Option<&'a DynamicalSettings>,
    /// The dynamical model's smoothing graph, prepared once for every block.
    fit_graph: Option<cellfate_dynamics::FitGraph>,
}

/// One pass of [`fit_velocity_blocks`]; `forced` is the set of genes given the stochastic fit
/// (the local velocity-gene rule when `None`).
fn blocks_pass<M: MomentSource, E: From<M::Error>>(
    src: &M,
    n: usize,
    g: usize,
    pass: &Pass<'_>,
    forced: Option<&[bool]>,
    fit: &mut GeneFit,
    sink: &mut dyn FnMut(BlockLayers<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let (hvg, stochastic) = (pass.hvg, pass.stochastic);
    let adjusted = pass.dynamical.is_some();
    let size = block_genes(n);
    let mut start = 0;
    while start < g {
        let range = start..(start + size).min(g);
        let (j0, k) = (range.start, range.len());
        let clock = std::time::Instant::now();
        let block = src.block(range.clone())?;
        let (ms, mu) = src.first(&block)?;
        fit.seconds[0] += clock.elapsed().as_secs_f64();
        // Deterministic fit, gene by gene (in parallel; each gene is independent).
        let clock = std::time::Instant::now();
        let positions: Vec<usize> = (0..k).collect();
        let det: Vec<(f64, f64, bool)> = positions
            .par_chunks(GENE_BLOCK)
            .flat_map_iter(|p| {
                let (s, u) = (gather(&ms, n, k, p), gather(&mu, n, k, p));
                s.into_iter()
                    .zip(u)
                    .map(|(s, u)| {
                        let (_, gamma, r2) = steady_state(&s, &u);
                        // The dynamical model's velocity genes use scVelo's adjusted r²
                        // (`Velocity(r2_adjusted=True)`): the fit through the origin on all
                        // cells.
                        let r2 = if adjusted { r2_adjusted(&s, &u) } else { r2 };
                        let expressed = s.iter().any(|&x| x > 0.0) && u.iter().any(|&x| x > 0.0);
                        (gamma, r2, expressed)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for (c, &(q, r2, expressed)) in det.iter().enumerate() {
            let j = j0 + c;
            fit.qreg_ratio[j] = q;
            fit.r2[j] = r2;
            fit.gamma[j] = q;
            fit.velocity_genes[j] = r2 > 0.01 && q > 0.01 && expressed && hvg.is_none_or(|h| h[j]);
        }
        fit.seconds[2] += clock.elapsed().as_secs_f64();
        let mut variance = None;
        if stochastic {
            let chosen: Vec<usize> = (0..k)
                .filter(|&c| forced.map_or(fit.velocity_genes[j0 + c], |f| f[j0 + c]))
                .collect();
            let mut var = vec![0.0f32; n * k];
            if !chosen.is_empty() {
                let clock = std::time::Instant::now();
                let second = src.second(&block, &chosen)?;
                fit.seconds[1] += clock.elapsed().as_secs_f64();
                if let Some((mss, mus)) = second {
                    let clock = std::time::Instant::now();
                    let kk = chosen.len();
                    let positions: Vec<usize> = (0..kk).collect();
                    let qreg = &fit.qreg_ratio;
                    let fitted: Vec<(f64, Vec<f32>)> = positions
                        .par_chunks(GENE_BLOCK)
                        .flat_map_iter(|p| {
                            let cols: Vec<usize> = p.iter().map(|&q| chosen[q]).collect();
                            let (s, u) = (gather(&ms, n, k, &cols), gather(&mu, n, k, &cols));
                            let (ss, us) = (gather(&mss, n, kk, p), gather(&mus, n, kk, p));
                            (0..cols.len())
                                .map(|b| {
                                    stochastic_gene(
                                        &s[b],
                                        &u[b],
                                        &ss[b],
                                        &us[b],
                                        qreg[j0 + cols[b]],
                                    )
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    drop((mss, mus));
                    for (&c, (gm, col)) in chosen.iter().zip(&fitted) {
                        fit.gamma[j0 + c] = *gm;
                        for (i, &x) in col.iter().enumerate() {
                            var[i * k + c] = x;
                        }
                    }
                    fit.seconds[2] += clock.elapsed().as_secs_f64();
                }
            }
            variance = Some(var);
        }
        let gamma = &fit.gamma[range.clone()];
        let mut dyn_layers = None;
        let velocity: Vec<f32> = if let Some(d) = pass.dynamical {
            let clock = std::time::Instant::now();
            let chosen: Vec<usize> = (0..k)
                .filter(|&c| {
                    d.all_genes || forced.map_or(fit.velocity_genes[j0 + c], |f| f[j0 + c])
                })
                .collect();
            let layers =
                dynamical_block(pass.fit_graph.as_ref(), &ms, &mu, n, k, &chosen, d, fit, j0);
            fit.seconds[2] += clock.elapsed().as_secs_f64();
            dyn_layers = Some(layers.1);
            layers.0
        } else {
            (0..n * k)
                .into_par_iter()
                .with_min_len(4096)
                .map(|q| (f64::from(mu[q]) - gamma[q % k] * f64::from(ms[q])) as f32)
                .collect()
        };
        let clock = std::time::Instant::now();
        sink(BlockLayers {
            genes: range.clone(),
            ms: &ms,
            mu: &mu,
            velocity: &velocity,
            variance: variance.as_deref(),
            dynamical: dyn_layers
                .as_ref()
                .map(|l: &[Vec<f32>; 4]| DynamicalLayers {
                    fit_t: &l[0],
                    fit_tau: &l[1],
                    fit_tau_: &l[2],
                    velocity_u: &l[3],
                }),
        })?;
        fit.seconds[3] += clock.elapsed().as_secs_f64();
        start = range.end;
    }
    Ok(())
}

/// The dynamical model on columns `chosen` of one block (row-major n × k moments): each gene
/// fitted in parallel (each alone: the result does not depend on the threads), its parameters
/// stored in `fit.dynamical`, its layers returned: the velocity and `[fit_t, fit_tau,
/// fit_tau_, velocity_u]`, NaN in the columns of genes not fitted.
#[allow(clippy::too_many_arguments)]
fn dynamical_block(
    w: Option<&cellfate_dynamics::FitGraph>,
    ms: &[f32],
    mu: &[f32],
    n: usize,
    k: usize,
    chosen: &[usize],
    d: &DynamicalSettings,
    fit: &mut GeneFit,
    j0: usize,
) -> (Vec<f32>, [Vec<f32>; 4]) {
    /// A gene's fit (its per-cell vectors emptied) with its per-cell layers as they are
    /// stored, in float32: velocity, fit_t, fit_tau, fit_tau_, velocity_u. Narrowed as soon
    /// as the gene is fitted: a block of 512 genes at 100,000 cells held 2 GB of them in f64.
    type Fitted = (cellfate_dynamics::GeneDynamics, [Vec<f32>; 5]);
    let narrow = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let fitted: Vec<Option<Fitted>> = chosen
        .par_iter()
        .map(|&c| {
            let u: Vec<f64> = (0..n).map(|i| f64::from(mu[i * k + c])).collect();
            let s: Vec<f64> = (0..n).map(|i| f64::from(ms[i * k + c])).collect();
            let mut g = cellfate_dynamics::fit_gene(&u, &s, w, &d.options)?;
            let (vs, vu) = cellfate_dynamics::dynamical_velocity(&u, &s, &g, w);
            let cols = [
                narrow(&vs),
                narrow(&g.t),
                narrow(&g.tau),
                narrow(&g.tau_),
                narrow(&vu),
            ];
            g.t = Vec::new();
            g.tau = Vec::new();
            g.tau_ = Vec::new();
            Some((g, cols))
        })
        .collect();
    let mut velocity = vec![f32::NAN; n * k];
    let mut layers: [Vec<f32>; 4] = std::array::from_fn(|_| vec![f32::NAN; n * k]);
    // Each gene's columns are freed once copied.
    for (&c, r) in chosen.iter().zip(fitted) {
        let Some((g, [vs, t, tau, tau_, vu])) = r else {
            fit.dynamical_skipped.push(j0 + c);
            continue;
        };
        for i in 0..n {
            let q = i * k + c;
            velocity[q] = vs[i];
            layers[0][q] = t[i];
            layers[1][q] = tau[i];
            layers[2][q] = tau_[i];
            layers[3][q] = vu[i];
        }
        fit.dynamical[j0 + c] = Some(g);
    }
    (velocity, layers)
}

/// Copies a row-major n × |cols| block into columns `cols` of the row-major n × g matrix `out`.
pub fn scatter_columns(out: &mut [f32], g: usize, cols: &Range<usize>, block: &[f32]) {
    let k = cols.len();
    if k == 0 || g == 0 {
        return;
    }
    out.par_chunks_mut(g)
        .zip(block.par_chunks(k))
        .for_each(|(row, b)| row[cols.clone()].copy_from_slice(b));
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

/// scVelo's adjusted r² of one gene: 1 − Σ(u − γs)² / Σ(u − ū)² with γ = Σsu / Σs² over all
/// cells (least squares through the origin, no quantiles); 0 where undefined.
fn r2_adjusted(s: &[f64], u: &[f64]) -> f64 {
    let (su, ss) = s
        .iter()
        .zip(u)
        .fold((0.0, 0.0), |(a, b), (&s, &u)| (a + s * u, b + s * s));
    let gamma = su / ss;
    let gamma = if gamma.is_finite() { gamma } else { 0.0 };
    let umean = u.iter().sum::<f64>() / u.len().max(1) as f64;
    let ssres: f64 = s
        .iter()
        .zip(u)
        .map(|(&s, &u)| (u - gamma * s).powi(2))
        .sum();
    let sstot: f64 = u.iter().map(|x| (x - umean).powi(2)).sum();
    let r2 = 1.0 - ssres / sstot;
    if r2.is_finite() {
        r2
    } else {
        0.0
    }
}

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

/// Fits the velocity model on the moments `ms`, `mu` (row-major n × g) in memory. `hvg`
/// restricts the velocity genes to highly variable genes; `second` computes `(Mss, Mus)`
/// (row-major n × |genes|) for a list of genes and is needed in stochastic mode. The blocks
/// of [`fit_velocity_blocks`] are gathered into whole layers. In dynamical mode this fits
/// without a kNN graph (scVelo's `fit_connected_states=False`); the file functions
/// ([`crate::upstream::velocity_in_file`]) smooth over the file's graph as scVelo does.
pub fn fit_velocity(
    ms: &[f32],
    mu: &[f32],
    n: usize,
    g: usize,
    hvg: Option<&[bool]>,
    mode: VelocityMode,
    second: Option<&SecondMoments<'_>>,
) -> VelocityFit {
    let src = StoredMoments {
        ms,
        mu,
        n,
        g,
        second,
        graph: None,
    };
    let mut whole = WholeLayers::new(n, g, false);
    let settings = DynamicalSettings::default();
    let fit = fit_velocity_blocks(&src, n, g, hvg, mode, &settings, &mut |b| {
        whole.put(&b);
        Ok::<(), UpstreamError>(())
    })
    .unwrap_or_else(|e| unreachable!("moments in memory and a sink that cannot fail: {e}"));
    whole.into_fit(fit)
}

/// The layers of [`fit_velocity_blocks`] gathered into whole row-major n × g matrices (the
/// in-memory sink).
#[derive(Clone, Debug)]
pub struct WholeLayers {
    g: usize,
    /// `Ms` (empty unless gathered).
    pub ms: Vec<f32>,
    /// `Mu` (empty unless gathered).
    pub mu: Vec<f32>,
    /// `velocity`.
    pub velocity: Vec<f32>,
    /// `variance_velocity`, once a block brings it.
    pub variance: Option<Vec<f32>>,
    /// The dynamical model's `[fit_t, fit_tau, fit_tau_, velocity_u]`, once a block brings them.
    pub dynamical: Option<[Vec<f32>; 4]>,
}

impl WholeLayers {
    /// Zeroed n × g layers; `moments`: gather `Ms` and `Mu` too.
    pub fn new(n: usize, g: usize, moments: bool) -> Self {
        let m = if moments { n * g } else { 0 };
        Self {
            g,
            ms: vec![0.0; m],
            mu: vec![0.0; m],
            velocity: vec![0.0; n * g],
            variance: None,
            dynamical: None,
        }
    }

    /// Copies a block's columns in.
    pub fn put(&mut self, b: &BlockLayers<'_>) {
        let (g, n) = (self.g, self.velocity.len() / self.g.max(1));
        if !self.ms.is_empty() {
            scatter_columns(&mut self.ms, g, &b.genes, b.ms);
            scatter_columns(&mut self.mu, g, &b.genes, b.mu);
        }
        scatter_columns(&mut self.velocity, g, &b.genes, b.velocity);
        if let Some(d) = &b.dynamical {
            let all = self
                .dynamical
                .get_or_insert_with(|| std::array::from_fn(|_| vec![f32::NAN; n * g]));
            for (a, l) in all
                .iter_mut()
                .zip([d.fit_t, d.fit_tau, d.fit_tau_, d.velocity_u])
            {
                scatter_columns(a, g, &b.genes, l);
            }
        }
        if let Some(v) = b.variance {
            let all = self.variance.get_or_insert_with(|| vec![0.0; n * g]);
            scatter_columns(all, g, &b.genes, v);
        }
    }

    /// The fit with its velocity layers.
    pub fn into_fit(self, fit: GeneFit) -> VelocityFit {
        VelocityFit {
            mode: fit.mode,
            gamma: fit.gamma,
            qreg_ratio: fit.qreg_ratio,
            r2: fit.r2,
            velocity_genes: fit.velocity_genes,
            dynamical: fit.dynamical,
            velocity: self.velocity,
            variance_velocity: self.variance,
            dynamical_layers: self.dynamical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moments smoothed in the locality order equal those in the input's order (up to the
    /// float32 rounding of sums taken in another order), block by block and for a subset of
    /// a block's columns.
    #[test]
    fn moments_in_the_locality_order_are_the_same() {
        use rand::{Rng, SeedableRng};
        let (n, g, k) = (3000, 7, 10);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let pts: Vec<[f64; 2]> = (0..n)
            .map(|_| [rng.random::<f64>(), rng.random::<f64>()])
            .collect();
        let pca = nalgebra::DMatrix::from_fn(n, 2, |i, c| pts[i][c]);
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 1.0));
            for _ in 0..k {
                // A neighbour near in index and space is not needed: any graph will do.
                trip.push((i, rng.random_range(0..n), rng.random::<f64>()));
            }
        }
        let w = smoothing_graph(&Csr::from_triplets(n, n, &trip).expect("graph"));
        let counts = |rng: &mut rand_chacha::ChaCha8Rng| {
            let t: Vec<(usize, usize, f64)> = (0..n * g / 2)
                .map(|_| {
                    (
                        rng.random_range(0..n),
                        rng.random_range(0..g),
                        f64::from(rng.random_range(1..20u32)),
                    )
                })
                .collect();
            Csr::from_triplets(n, g, &t).expect("counts")
        };
        let (s, u) = (counts(&mut rng), counts(&mut rng));
        let local = Locality::build(&pca, &w, 0);
        assert_ne!(local.order, (0..n).collect::<Vec<_>>());
        let plain = SmoothedCounts {
            w: &w,
            s: &s,
            u: &u,
            local: None,
        };
        let ordered = SmoothedCounts {
            local: Some(&local),
            ..plain
        };
        let close = |a: &[f32], b: &[f32]| {
            let m = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 * m)
        };
        for genes in [0..g, 2..5] {
            let (bp, bo) = (
                plain.block(genes.clone()).unwrap(),
                ordered.block(genes.clone()).unwrap(),
            );
            let (a, b) = (plain.first(&bp).unwrap(), ordered.first(&bo).unwrap());
            assert!(
                close(&a.0, &b.0) && close(&a.1, &b.1),
                "first moments {genes:?}"
            );
            let cols = [0, 2];
            let (a, b) = (
                plain.second(&bp, &cols).unwrap().unwrap(),
                ordered.second(&bo, &cols).unwrap().unwrap(),
            );
            assert!(
                close(&a.0, &b.0) && close(&a.1, &b.1),
                "second moments {genes:?}"
            );
        }
    }

    #[test]
    fn blocks_fit_in_their_budget() {
        assert_eq!(block_genes(3_696), 512);
        assert_eq!(block_genes(100_000), 512);
        assert_eq!(block_genes(1_000_000), 128);
        assert_eq!(block_genes(100_000_000), 32);
        for n in [1, 10, 1_000, 250_000, 1_000_000, 10_000_000] {
            let size = block_genes(n);
            assert!(size >= GENE_BLOCK && size % GENE_BLOCK == 0);
            assert!(size * 24 * n <= BLOCK_BYTES || size == GENE_BLOCK);
        }
    }

    /// A random kNN-like smoothing graph and sparse counts (deterministic).
    fn random_counts(n: usize, g: usize, seed: u64) -> (Csr, Csr, Csr) {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut t = Vec::new();
        for i in 0..n {
            for _ in 0..5 {
                let j = (next() * n as f64) as usize % n;
                t.push((i, j, 1.0));
                t.push((j, i, 1.0));
            }
        }
        let conn = Csr::from_triplets(n, n, &t).expect("graph");
        let mut counts = |density: f64| {
            let mut t = Vec::new();
            for i in 0..n {
                for j in 0..g {
                    if next() < density {
                        t.push((i, j, (next() * 5.0).floor() + 1.0));
                    }
                }
            }
            Csr::from_triplets(n, g, &t).expect("counts")
        };
        let s = counts(0.5);
        let u = counts(0.3);
        (smoothing_graph(&conn), s, u)
    }

    #[test]
    fn blocks_give_the_whole_matrix_fit_bit_for_bit() {
        // 1,100 genes: three blocks of at most 512 at this size.
        let (n, g) = (40, 1_100);
        let (w, s, u) = random_counts(n, g, 7);
        let all: Vec<usize> = (0..g).collect();
        let ms = smooth_dense(&w, &s, &all, &|_, _, x| x);
        let mu = smooth_dense(&w, &u, &all, &|_, _, x| x);
        let second = |idx: &[usize]| second_moments(&w, &s, &u, idx);
        let hvg: Vec<bool> = (0..g).map(|j| j % 3 != 0).collect();
        let whole = fit_velocity(
            &ms,
            &mu,
            n,
            g,
            Some(&hvg),
            VelocityMode::Stochastic,
            Some(&second),
        );
        assert!(whole.velocity_genes.iter().filter(|&&b| b).count() >= 2);
        let src = SmoothedCounts {
            w: &w,
            s: &s,
            u: &u,
            local: None,
        };
        let mut layers = WholeLayers::new(n, g, true);
        let mut sizes = Vec::new();
        let fit = fit_velocity_blocks(
            &src,
            n,
            g,
            Some(&hvg),
            VelocityMode::Stochastic,
            &DynamicalSettings::default(),
            &mut |b| {
                sizes.push(b.genes.len());
                layers.put(&b);
                Ok::<(), UpstreamError>(())
            },
        )
        .expect("fit");
        assert_eq!(sizes, vec![512, 512, 76]);
        assert_eq!(fit.gamma, whole.gamma);
        assert_eq!(fit.r2, whole.r2);
        assert_eq!(fit.velocity_genes, whole.velocity_genes);
        assert_eq!(layers.ms, ms);
        assert_eq!(layers.mu, mu);
        assert_eq!(layers.velocity, whole.velocity);
        assert!(layers.variance.is_some());
        assert_eq!(layers.variance, whole.variance_velocity);
        // A sink error stops the fit and is returned.
        let full = || UpstreamError::Invalid {
            message: "out.h5ad: layers/Ms: no space left (a full disk)".into(),
        };
        let e = fit_velocity_blocks(
            &src,
            n,
            g,
            None,
            VelocityMode::Stochastic,
            &DynamicalSettings::default(),
            &mut |_| Err(full()),
        );
        assert_eq!(e.err().map(|e| e.to_string()), Some(full().to_string()));
    }

    #[test]
    fn too_few_velocity_genes_refit_with_the_r2_fallback() {
        // No highly variable gene: scVelo's fallback picks r² above its 80th percentile, and
        // the second pass hands every block to the sink again with those genes fitted.
        let (n, g) = (40, 600);
        let (w, s, u) = random_counts(n, g, 3);
        let src = SmoothedCounts {
            w: &w,
            s: &s,
            u: &u,
            local: None,
        };
        let hvg = vec![false; g];
        let mut calls = 0;
        let mut var = vec![0.0f32; n * g];
        let fit = fit_velocity_blocks(
            &src,
            n,
            g,
            Some(&hvg),
            VelocityMode::Stochastic,
            &DynamicalSettings::default(),
            &mut |b| {
                calls += 1;
                scatter_columns(&mut var, g, &b.genes, b.variance.expect("stochastic"));
                Ok::<(), UpstreamError>(())
            },
        )
        .expect("fit");
        assert_eq!(calls, 4, "two blocks, twice");
        let cut = percentile(&mut fit.r2.clone(), 80.0);
        let want: Vec<bool> = fit.r2.iter().map(|&x| x > cut).collect();
        assert_eq!(fit.velocity_genes, want);
        assert!(want.iter().any(|&b| b));
        for j in 0..g {
            let fitted = (0..n).any(|i| var[i * g + j] != 0.0);
            assert!(
                !fitted || want[j],
                "gene {j} fitted but not a velocity gene"
            );
            if !want[j] {
                assert_eq!(fit.gamma[j], fit.qreg_ratio[j]);
            }
        }
    }

    #[test]
    fn percentile_matches_numpy() {
        // numpy.percentile([1, 2, 3, 4], 95) = 3.85; ([5], 95) = 5
        assert!((percentile(&mut [4.0, 1.0, 3.0, 2.0], 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&mut [5.0], 95.0), 5.0);
        // Selection gives what sorting gives, bit for bit (ties, zeros, any length).
        let mut x = 12345u64;
        for len in [2usize, 3, 20, 101, 1000, 4097] {
            let v: Vec<f64> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x % 3 == 0 {
                        0.0
                    } else {
                        (x % 1000) as f64 / 7.0
                    }
                })
                .collect();
            for q in [0.0, 5.0, 80.0, 95.0, 99.9, 100.0] {
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let pos = q / 100.0 * (len - 1) as f64;
                let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                let want = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64);
                assert_eq!(percentile(&mut v.clone(), q).to_bits(), want.to_bits());
            }
        }
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
