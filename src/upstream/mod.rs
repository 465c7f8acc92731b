//! From raw `spliced`/`unspliced` counts to kernel inputs, following the reference recipe
//! (scVelo 0.3.4's `filter_and_normalize(min_shared_counts=20)` + scanpy 1.12's `log1p`,
//! `highly_variable_genes(n_top_genes=2000, subset=True)`, `tl.pca`, `pp.neighbors(n_pcs=30,
//! n_neighbors=30)`, then scVelo's `moments` and `tl.velocity(mode="stochastic")`; see
//! `../shared/reference/README.md`):
//!
//! 1. genes with fewer than `min_shared_counts` counts in cells expressing them in both
//!    layers are excluded from the highly-variable set (scVelo's `filter_genes`);
//! 2. per-cell normalisation of X, spliced and unspliced ([`CellSizes`]): each matrix divided
//!    by its cells' sizes over **every input gene** (scVelo records them as
//!    `obs["initial_size_*"]` before the gene filter and normalises by them) and scaled to
//!    the median size; `log1p(X)`. The sizes and `n_counts` are written to `obs` under
//!    scVelo's names ([`ObsSizes`]);
//! 3. highly variable genes (scanpy's `seurat` flavour: dispersion normalised within 20 mean
//!    bins, among the genes kept by step 1), PCA of the centred log expression of those genes
//!    ([`pca`]: exact covariance eigendecomposition, as ARPACK converges to);
//! 4. exact k-nearest neighbours in PCA space, UMAP fuzzy connectivities (scanpy's default)
//!    and distances;
//! 5. first moments `Ms`, `Mu` over each cell and its neighbours (and, for the stochastic
//!    model, second moments `Mss`, `Mus` of the velocity genes);
//! 6. RNA velocity, scVelo's stochastic model by default or its steady-state model
//!    ([`velocity`]): `layers["velocity"]`, `layers["variance_velocity"]`,
//!    `var["velocity_gamma"/"velocity_r2"/"velocity_genes"]`, `uns["velocity_params"]`.
//!
//! Steps 5 and 6 run block of genes by block of genes ([`velocity::fit_velocity_blocks`]); in
//! [`prepare`] each block's layers are written to the output as they come and X is written
//! before the counts are read again for the moments, so memory holds the normalised counts
//! and one block (1,000,000 cells × 2,000 genes: 20.8 GB peak, BENCHMARKS.md).
//!
//! Where we deliberately differ from scVelo/scanpy:
//! - all genes are kept in the output (the input's shape never changes); scVelo drops the
//!   filtered genes and the recipe subsets to the HVGs. `var["highly_variable"]` and
//!   `var["velocity_genes"]` mark the subsets; since the sizes are taken before the filter,
//!   the kept genes' values are those scVelo computes;
//! - f64 throughout (scanpy/scVelo hold X, the PCA scores and the kNN distances in float32);
//!   `Ms`, `Mu` and the velocity layers are written in float32 as scVelo does;
//! - kNN ties (to the last bit) go to the lower cell index. Near-ties at the k-th neighbour
//!   are decided by rounding: scanpy's float32 PCA scores are ~2e-5 of max from the f64
//!   ones, so a cell whose k-th and (k+1)-th neighbours are within ~1e-5 relative can swap
//!   them, which moves that cell's moments (and γ by up to ~1e-3 on pancreas);
//! - X is normalised whatever its values (scVelo skips a matrix whose first values are not
//!   integers, taking it as already normalised), and the sizes are always recomputed from the
//!   input (scVelo reuses `obs["initial_size_*"]` already present).
//!
//! Measured on raw pancreas (3,696 cells × 2,000 genes) with the defaults, against scVelo
//! 0.3.4's recipe rerun on the same machine (`scripts/scvelo_recipe_stages.py`): normalised
//! layers ≤ 1e-7 of max, the same 1,126 HVGs, kNN sets identical for every cell, `Ms`/`Mu`
//! ≤ 3e-7 of max, γ ≤ 2e-7 relative on the velocity genes; against the stored reference
//! (whose float32 PCA swaps two near-tied neighbours) see `tests/it/upstream_parity.rs`.

pub mod ann;
pub mod dpt;
pub mod labeling;
pub mod pca;
pub mod steps;
pub mod umap;
pub mod velocity;
#[cfg(feature = "h5ad")]
pub mod velocity_summaries;

#[cfg(feature = "h5ad")]
mod file;
#[cfg(feature = "h5ad")]
pub use file::{
    check_counts_in, labeling_layout, moments_velocity_in_file, prepare, prepare_in_place,
    prepare_with, read_counts, read_labeling_counts, umap_if_missing, umap_in_file,
    velocity_in_file, LabelingLayout, UmapReport, FIGURE_EMBEDDINGS,
};

use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use cellfate_kernels::Csr;

use crate::io::{Element, NumVec};

/// Why an upstream step cannot run on the data it was given (in memory; the `.h5ad` steps
/// wrap this in their own error with the file's reading errors).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Data that do not fit the step: shapes, too few cells, no usable gene, ... The message
    /// names the data (the file or the name the caller gave them), the slot and what was
    /// expected.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// Counts that are negative, NaN or infinite.
    #[error(transparent)]
    InvalidCounts(Box<InvalidCounts>),
    /// The computation was interrupted ([`cellfate_kernels::interrupt`]).
    #[error("interrupted")]
    Interrupted,
}

impl From<Box<InvalidCounts>> for UpstreamError {
    fn from(e: Box<InvalidCounts>) -> Self {
        Self::InvalidCounts(e)
    }
}

/// An [`UpstreamError::Invalid`].
fn invalid(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::Invalid {
        message: msg.into(),
    }
}

/// Peak resident set size of this process in MB (`VmHWM` of `/proc/self/status`; `None` where
/// that file does not exist).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Hands the allocator's free memory back to the system between two large stages (glibc's
/// `malloc_trim(0)`; nothing elsewhere). Worker threads allocate from their own arenas, and
/// glibc keeps what they free there: after the dynamical fit (about 1 GB of per-block
/// buffers at 100,000 cells) that memory stayed resident under the velocity summaries that
/// follow, adding to the command's peak. Results are unaffected.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers; it only returns free pages of the allocator's
    // own heaps to the system and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Parameters of the upstream steps (the reference recipe's values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Minimum shared spliced+unspliced counts for a gene to be used.
    pub min_shared_counts: f64,
    /// Number of highly variable genes.
    pub n_top_genes: usize,
    /// Principal components.
    pub n_pcs: usize,
    /// Neighbours.
    pub n_neighbors: usize,
    /// Seed of the randomized SVD.
    pub seed: u64,
    /// Velocity model (scVelo's default: stochastic).
    pub velocity_mode: velocity::VelocityMode,
    /// Neighbour search.
    pub knn: KnnMethod,
    /// The dynamical model's settings (with `velocity_mode = "dynamical"`).
    pub dynamics: velocity::DynamicalSettings,
    /// A UMAP layout of the kNN graph (`obsm["X_umap"]`, scanpy's `tl.umap`); `None`: none
    /// (`preprocess --umap`, or a `[umap]` table in TOML).
    pub umap: Option<umap::UmapParams>,
    /// Metabolic labeling (used when the input has new/total layers; [`labeling`]).
    pub labeling: labeling::LabelingSpec,
    /// Storage type of the normalised `X`, `layers["spliced"]` and `["unspliced"]`, and of
    /// `obsm["X_pca"]` ([`LayerDtype::pca_float64`]); the later steps use the stored values.
    pub dtype: LayerDtype,
}

/// Storage type of the normalised matrices (`X`, `layers["spliced"]`, `["unspliced"]`) and of
/// the PCA scores (`obsm["X_pca"]`), `preprocess --dtype`. Every later step (PCA, neighbours,
/// moments, velocity) uses the values as stored, so a run that reads the file back computes
/// exactly what the one-shot run computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerDtype {
    /// Each matrix in its counts' type: float64 for counts stored as float64, float32 for
    /// float32 or integer counts — what scanpy's and scVelo's normalisation keep; the PCA
    /// scores in float32 (scanpy's `pp.pca(dtype="float32")` default).
    #[default]
    Auto,
    /// float32 (values rounded to float32 after the normalisation in float64).
    Float32,
    /// float64 (the normalisation as computed).
    Float64,
}

impl LayerDtype {
    /// Whether a matrix normalised from counts stored as float64 (`counts_float64`) is kept
    /// in float64.
    pub fn float64(self, counts_float64: bool) -> bool {
        match self {
            Self::Auto => counts_float64,
            Self::Float32 => false,
            Self::Float64 => true,
        }
    }

    /// Whether the PCA scores are kept in float64: only under [`Self::Float64`]. scanpy's
    /// `pp.pca` converts its scores to float32 by default (`dtype="float32"`) whatever X's
    /// type, so the neighbours are searched on float32 scores.
    pub fn pca_float64(self) -> bool {
        self == Self::Float64
    }
}

/// Why a layer dtype name does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dtype {0:?}: expected auto, float32 or float64")]
pub struct LayerDtypeParseError(pub String);

impl std::str::FromStr for LayerDtype {
    type Err = LayerDtypeParseError;
    fn from_str(s: &str) -> Result<Self, LayerDtypeParseError> {
        match s {
            "auto" => Ok(Self::Auto),
            "float32" => Ok(Self::Float32),
            "float64" => Ok(Self::Float64),
            other => Err(LayerDtypeParseError(other.into())),
        }
    }
}

/// A normalised matrix as it will be stored: its values rounded to float32 unless `float64`.
pub(crate) fn as_stored(mut m: Csr, float64: bool) -> Csr {
    if !float64 {
        m.data_mut()
            .iter_mut()
            .for_each(|v| *v = f64::from(*v as f32));
    }
    m
}

/// The element of a matrix whose values may all be float32 numbers (the UMAP connectivities,
/// computed in float32 as umap-learn does): float32 data then, as scanpy stores them, float64
/// otherwise. Lossless either way.
pub(crate) fn lossless_element(m: Csr) -> Element {
    let exact = m
        .data()
        .iter()
        .all(|&v| f64::from(v as f32).to_bits() == v.to_bits());
    stored_element(m, !exact)
}

/// PCA scores as they will be stored: rounded to float32 unless `float64`
/// ([`LayerDtype::pca_float64`]).
pub(crate) fn pca_as_stored(mut m: DMatrix<f64>, float64: bool) -> DMatrix<f64> {
    if !float64 {
        m.iter_mut().for_each(|v| *v = f64::from(*v as f32));
    }
    m
}

/// The element of dense scores (`obsm["X_pca"]`): float32 when every value is a float32
/// number (after [`pca_as_stored`]), else float64 — nothing is lost either way.
pub(crate) fn lossless_dense_element(m: &DMatrix<f64>) -> Element {
    let exact = m
        .iter()
        .all(|&v| f64::from(v as f32).to_bits() == v.to_bits());
    let mut e = Element::from_dmatrix(m);
    if exact {
        if let Element::Dense(a) = &mut e {
            if let crate::io::NumVec::F64(v) = &a.data {
                a.data = crate::io::NumVec::F32(v.iter().map(|&x| x as f32).collect());
            }
        }
    }
    e
}

/// The element of a matrix from [`as_stored`]: float32 data unless `float64` (exact: the
/// values are already float32 numbers).
pub(crate) fn stored_element(m: Csr, float64: bool) -> Element {
    let mut a = crate::io::SparseArray::from(m);
    if !float64 {
        if let crate::io::NumVec::F64(v) = &a.data {
            a.data = crate::io::NumVec::F32(v.iter().map(|&x| x as f32).collect());
        }
    }
    Element::Sparse(a)
}

/// Neighbour search of [`UpstreamSpec`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnnMethod {
    /// Exact up to [`KNN_EXACT_MAX_CELLS`] cells, approximate (NN-descent) above.
    #[default]
    Auto,
    /// Exact (quadratic time; scanpy's choice for small data).
    Exact,
    /// NN-descent with random-projection initialisation ([`ann`]).
    Approximate,
}

/// Why a kNN method name does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("knn {0:?}: expected auto, exact or approximate")]
pub struct KnnMethodParseError(pub String);

impl std::str::FromStr for KnnMethod {
    type Err = KnnMethodParseError;
    fn from_str(s: &str) -> Result<Self, KnnMethodParseError> {
        match s {
            "auto" => Ok(Self::Auto),
            "exact" => Ok(Self::Exact),
            "approximate" | "nndescent" => Ok(Self::Approximate),
            other => Err(KnnMethodParseError(other.into())),
        }
    }
}

/// Largest number of cells searched exactly under [`KnnMethod::Auto`].
pub const KNN_EXACT_MAX_CELLS: usize = 50_000;

impl Default for UpstreamSpec {
    fn default() -> Self {
        Self {
            min_shared_counts: 20.0,
            n_top_genes: 2000,
            n_pcs: 30,
            n_neighbors: 30,
            seed: 0,
            velocity_mode: velocity::VelocityMode::Stochastic,
            knn: KnnMethod::Auto,
            dynamics: velocity::DynamicalSettings::default(),
            umap: None,
            labeling: labeling::LabelingSpec::default(),
            dtype: LayerDtype::Auto,
        }
    }
}

/// Counts (`X`, `layers["spliced"]`, `layers["unspliced"]`) that are not finite,
/// non-negative numbers: normalisation would turn them into NaN or −inf (`log1p` of a value
/// below −1), and every later step (genes, PCA, neighbours, velocity, drivers) into garbage.
/// Names the file, the slot, the first bad entry (cell and gene, by obs/var name and by
/// index) with its value, and how many stored values are bad.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file}: {slot} must hold counts (finite, non-negative numbers), but {bad} of its {stored} stored values are not: the first is {value} at cell {cell:?} (row {row}), gene {gene:?} (column {col})")]
pub struct InvalidCounts {
    /// The file (or the name the caller gave the data).
    pub file: String,
    /// The slot: `X`, `layers["spliced"]` or `layers["unspliced"]`.
    pub slot: String,
    /// How many stored values are negative, NaN or infinite.
    pub bad: usize,
    /// How many values the matrix stores (its non-zeros when sparse).
    pub stored: usize,
    /// The first bad value (in row-major order).
    pub value: f64,
    /// Its row (cell index).
    pub row: usize,
    /// Its cell (obs name; the index when the names are not known).
    pub cell: String,
    /// Its column (gene index).
    pub col: usize,
    /// Its gene (var name; the index when the names are not known).
    pub gene: String,
}

/// Checks that the stored values of `m` (slot `slot` of `file`) are finite and non-negative;
/// the error names the first bad entry's cell and gene by index (`check_counts_in` names them
/// by a file's obs and var names).
pub fn check_counts(m: &Csr, file: &str, slot: &str) -> Result<(), Box<InvalidCounts>> {
    let is_bad = |v: f64| !(v.is_finite() && v >= 0.0);
    let bad = m.data().iter().filter(|&&v| is_bad(v)).count();
    if bad == 0 {
        return Ok(());
    }
    let (row, col, value) = (0..m.nrows())
        .find_map(|i| {
            let (cols, vals) = m.row(i);
            cols.iter()
                .zip(vals)
                .find(|(_, &v)| is_bad(v))
                .map(|(&j, &v)| (i, j as usize, v))
        })
        .unwrap_or((0, 0, f64::NAN));
    Err(Box::new(InvalidCounts {
        file: file.to_string(),
        slot: slot.to_string(),
        bad,
        stored: m.data().len(),
        value,
        row,
        cell: row.to_string(),
        col,
        gene: col.to_string(),
    }))
}

/// The slot names of the count matrices in messages.
const SPLICED: &str = "layers[\"spliced\"]";
const UNSPLICED: &str = "layers[\"unspliced\"]";

/// scVelo's per-cell size factors (`pp.normalize_per_cell` as `pp.filter_and_normalize`
/// calls it, `use_initial_size=True`), read rule for rule from scVelo 0.3.4:
///
/// - the size of a cell is the sum of its counts over **every gene of the input**, taken
///   before the gene filter: `filter_genes` records `obs["initial_size_spliced"]`,
///   `["initial_size_unspliced"]` and `["initial_size"]` (X) first, and `normalize_per_cell`
///   divides by those recorded sizes, not by the sums over the genes it kept. Each matrix
///   (X, spliced, unspliced) has its own sizes and its own target;
/// - the target is the median of those sizes (`np.median`: the mean of the two middle values
///   for an even number of cells), replaced by 1 when it is 0 (`counts_after += counts_after
///   == 0`);
/// - a cell with size 0 is divided by 1 (`counts += counts == 0`), so it stays at zero.
///
/// scVelo does this in float32 (`counts / counts_after`, then a row scale by its inverse);
/// we scale by `target / size` in f64 (|Δ| ≤ 1e-7 of max on pancreas).
#[derive(Clone, Debug, PartialEq)]
pub struct CellSizes {
    /// Counts per cell over every gene of the matrix (scVelo's `initial_size_*`).
    pub sizes: Vec<f64>,
    /// The normalisation target: the median size, 1 when that is 0.
    pub target: f64,
}

impl CellSizes {
    /// The sizes and target of the rows of `m`.
    pub fn of(m: &Csr) -> Self {
        let sizes = m.row_sums();
        let med = median(&mut sizes.clone());
        Self {
            sizes,
            target: if med == 0.0 { 1.0 } else { med },
        }
    }

    /// Scales each row `i` of `m` by `target / sizes[i]` (rows of size 0 untouched), in place.
    ///
    /// # Panics
    /// If `m` has fewer rows than there are sizes (a caller's contract: the sizes are those of
    /// `m` or of a matrix with the same cells).
    pub fn scale(&self, mut m: Csr) -> Csr {
        let indptr = m.indptr().to_vec();
        let data = m.data_mut();
        for (i, &size) in self.sizes.iter().enumerate() {
            if size != 0.0 {
                let f = self.target / size;
                for v in &mut data[indptr[i]..indptr[i + 1]] {
                    *v *= f;
                }
            }
        }
        m
    }
}

/// scVelo's per-cell normalisation of one matrix ([`CellSizes`]): every cell scaled to the
/// median library size over all genes of `m` (cells with no counts are left at zero).
pub fn normalize_per_cell(m: &Csr) -> Csr {
    CellSizes::of(m).scale(m.clone())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// scanpy's `seurat` highly-variable genes on log1p data: returns a mask of the genes whose
/// normalised dispersion is at least the `n_top`-th highest. Follows scanpy 1.12 rule for rule:
/// dispersion `var/mean` of `expm1(x)` (zero → NaN, then log), means `log1p(mean)` cut into 20
/// equal-width right-closed bins (`pd.cut`: the lowest edge lowered by 0.1 % of the range),
/// z-scores within a bin (a bin with one finite dispersion gives 1), ties at the cut-off kept.
fn highly_variable(logx: &Csr, candidates: &[bool], n_top: usize) -> Vec<bool> {
    const N_BINS: usize = 20;
    let (n, g) = (logx.nrows() as f64, logx.ncols());
    let mut s = vec![0.0; g];
    let mut s2 = vec![0.0; g];
    for i in 0..logx.nrows() {
        let (c, v) = logx.row(i);
        for (&j, &x) in c.iter().zip(v) {
            let e = x.exp_m1();
            s[j as usize] += e;
            s2[j as usize] += e * e;
        }
    }
    let genes: Vec<usize> = (0..g).filter(|&j| candidates[j]).collect();
    let mut mean = vec![0.0; g];
    let mut disp = vec![f64::NAN; g];
    for &j in &genes {
        let m = s[j] / n;
        let var = (s2[j] / n - m * m) * n / (n - 1.0);
        let m = if m == 0.0 { 1e-12 } else { m };
        let d = var / m;
        disp[j] = if d == 0.0 { f64::NAN } else { d.ln() };
        mean[j] = m.ln_1p();
    }
    let (lo, hi) = genes
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &j| {
            (a.min(mean[j]), b.max(mean[j]))
        });
    // Edges as numpy's linspace; the bin of x is the first (e_b, e_{b+1}] holding it.
    let step = (hi - lo) / N_BINS as f64;
    let mut edges: Vec<f64> = (0..=N_BINS).map(|b| lo + b as f64 * step).collect();
    edges[N_BINS] = hi;
    edges[0] -= (hi - lo) * 1e-3;
    let bin = |x: f64| {
        if step > 0.0 {
            edges[1..].partition_point(|&e| e < x).min(N_BINS - 1)
        } else {
            0
        }
    };
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); N_BINS];
    for &j in &genes {
        if disp[j].is_finite() {
            members[bin(mean[j])].push(j);
        }
    }
    let mut norm = vec![f64::NAN; g];
    for m in members.iter().filter(|m| !m.is_empty()) {
        let c = m.len() as f64;
        let mu = m.iter().map(|&j| disp[j]).sum::<f64>() / c;
        let (avg, dev) = if m.len() > 1 {
            let sd = (m.iter().map(|&j| (disp[j] - mu).powi(2)).sum::<f64>() / (c - 1.0)).sqrt();
            (mu, sd)
        } else {
            (0.0, mu)
        };
        for &j in m {
            norm[j] = (disp[j] - avg) / dev;
        }
    }
    let mut finite: Vec<f64> = genes
        .iter()
        .map(|&j| norm[j])
        .filter(|x| !x.is_nan())
        .collect();
    let mut mask = vec![false; g];
    if finite.is_empty() || n_top == 0 {
        return mask;
    }
    finite.sort_by(|a, b| b.total_cmp(a));
    let cut = finite[n_top.min(finite.len()) - 1];
    for &j in &genes {
        mask[j] = !norm[j].is_nan() && norm[j] >= cut;
    }
    mask
}

/// The first `k` principal-component scores (row-major n × k) of a dense row-major n × g
/// matrix, centred here (used for a 2-D embedding when a file has none).
#[cfg(feature = "plots")]
pub(crate) fn pca_scores(x: &[f64], n: usize, g: usize, k: usize, seed: u64) -> Vec<f64> {
    let Ok(a) = Csr::from_dense(n, g, x) else {
        return vec![0.0; n * k.min(g)];
    };
    let s = pca::pca(&a, k, seed);
    let k = s.ncols();
    (0..n)
        .flat_map(|i| (0..k).map(move |j| (i, j)))
        .map(|(i, j)| s[(i, j)])
        .collect()
}

/// Exact kNN (excluding self) in the rows of `x`: (indices, distances) per cell, sorted by
/// distance (ties by index). Blocks of query rows are compared with all rows through one
/// matrix product (`‖a‖² + ‖b‖² − 2 a·b`), the candidates' distances are then recomputed
/// directly; memory is one block of distances (≤ 2²⁴ values) plus the result.
pub fn knn_exact(x: &DMatrix<f64>, k: usize) -> Vec<Vec<(usize, f64)>> {
    let n = x.nrows();
    let kk = k.min(n.saturating_sub(1));
    if kk == 0 {
        return vec![Vec::new(); n];
    }
    let norms: Vec<f64> = (0..n).map(|i| x.row(i).norm_squared()).collect();
    let xt = x.transpose();
    let block = (16_777_216 / n.max(1)).clamp(1, 4096);
    let exact = |i: usize, j: usize| -> f64 { ann::dist_f64(x, i, j) };
    let mut out: Vec<Vec<(usize, f64)>> = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        let q = x.rows(start, end - start);
        // (end - start) × n squared distances, up to rounding.
        let g = q * &xt;
        let rows: Vec<Vec<(usize, f64)>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let r = i - start;
                // A margin of candidates beyond k absorbs rounding of the expansion.
                let m = (kk + 8).min(n - 1);
                let mut d: Vec<(usize, f64)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| (j, (norms[i] + norms[j] - 2.0 * g[(r, j)]).max(0.0)))
                    .collect();
                d.select_nth_unstable_by(m - 1, |a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                d.truncate(m);
                let mut c: Vec<(usize, f64)> =
                    d.into_iter().map(|(j, _)| (j, exact(i, j))).collect();
                c.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                c.truncate(kk);
                c.shrink_to_fit();
                c
            })
            .collect();
        out.extend(rows);
        start = end;
    }
    out
}

/// Rounds to the nearest `f32`: UMAP keeps distances, ρ, σ and the membership strengths in
/// single precision, so doing the same reproduces scanpy's connectivities to float32 precision.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

/// The kNN distances (one row per cell, the neighbours in `nn` without the cell itself) and
/// their UMAP connectivities (see [`knn_exact`]; `n_neighbors` counts the cell itself, as
/// scanpy's `n_neighbors`).
pub fn neighbor_graphs(
    nn: &[Vec<(usize, f64)>],
    n_neighbors: usize,
) -> Result<(Csr, Csr), cellfate_kernels::CsrError> {
    let n = nn.len();
    let conn = umap_connectivities(nn, n_neighbors);
    let mut dtrip = Vec::with_capacity(n * n_neighbors);
    for (i, row) in nn.iter().enumerate() {
        for &(j, d) in row {
            dtrip.push((i, j, d));
        }
    }
    Ok((Csr::from_triplets(n, n, &dtrip)?, conn))
}

/// UMAP fuzzy simplicial set (scanpy's connectivities, `local_connectivity = 1`): per cell,
/// ρ is the distance to the nearest neighbour and σ solves `Σ_j exp(−(d_j − ρ)/σ) = log₂ k` by
/// bisection (64 steps, tolerance 1e-5, floor 1e-3 × mean distance); memberships
/// `exp(−(d − ρ)/σ)` are symmetrised as `W + Wᵀ − W∘Wᵀ`. Rows of `nn` exclude the cell itself.
fn umap_connectivities(nn: &[Vec<(usize, f64)>], k: usize) -> Csr {
    const MIN_K_DIST_SCALE: f64 = 1e-3;
    let n = nn.len();
    let target = (k as f64).log2();
    let mean_all = {
        let (s, c) = nn.iter().fold((0.0, 0usize), |(s, c), r| {
            (
                s + r.iter().map(|e| f32r(e.1)).sum::<f64>(),
                c + r.len() + 1,
            )
        });
        s / c.max(1) as f64
    };
    let mut trip = Vec::with_capacity(n * k);
    for (i, row) in nn.iter().enumerate() {
        let rho = f32r(row.iter().map(|e| e.1).find(|&d| d > 0.0).unwrap_or(0.0));
        // d − ρ as UMAP computes it (single precision, clipped at 0).
        let excess: Vec<f64> = row.iter().map(|e| f32r(f32r(e.1) - rho).max(0.0)).collect();
        let (mut lo, mut hi, mut sigma) = (0.0, f64::INFINITY, 1.0);
        for _ in 0..64 {
            let s: f64 = excess.iter().map(|&d| (-(d / sigma)).exp()).sum();
            if (s - target).abs() < 1e-5 {
                break;
            }
            if s > target {
                hi = sigma;
                sigma = 0.5 * (lo + hi);
            } else {
                lo = sigma;
                sigma = if hi.is_infinite() {
                    sigma * 2.0
                } else {
                    0.5 * (lo + hi)
                };
            }
        }
        let mean_i = if rho > 0.0 {
            row.iter().map(|e| f32r(e.1)).sum::<f64>() / (row.len() + 1) as f64
        } else {
            mean_all
        };
        let sigma = f32r(sigma.max(MIN_K_DIST_SCALE * mean_i));
        for (&(j, _), &d) in row.iter().zip(&excess) {
            let w = if d <= 0.0 || sigma == 0.0 {
                1.0
            } else {
                f32r((-f32r(d / sigma)).exp())
            };
            trip.push((i, j, w));
        }
    }
    let w = Csr::from_triplets(n, n, &trip).unwrap_or_else(|_| Csr::identity(n));
    let wt = w.transpose();
    let sum = w.add_scaled(1.0, &wt, 1.0);
    let prod = w.hadamard(&wt);
    let mut c = sum.add_scaled(1.0, &prod, -1.0);
    c.data_mut().iter_mut().for_each(|v| *v = f32r(*v));
    c.eliminate_zeros();
    c
}

/// The per-gene velocity slots (`var` columns, `uns["velocity_params"]`) of a fit.
fn velocity_slots(fit: &velocity::GeneFit) -> Vec<(String, Element)> {
    if fit.mode == velocity::VelocityMode::Dynamical {
        return dynamical_slots(fit);
    }
    vec![
        // float32, as scVelo stores them (its fits run on float32 moments); r² stays float64
        // as in scVelo's files. The consumers (perturbation, figures, the Python package)
        // read the stored values.
        ("var/velocity_gamma".into(), float32_column(&fit.gamma)),
        (
            "var/velocity_qreg_ratio".into(),
            float32_column(&fit.qreg_ratio),
        ),
        ("var/velocity_r2".into(), Element::from_f64(fit.r2.clone())),
        (
            "var/velocity_genes".into(),
            Element::from_bools(fit.velocity_genes.clone()),
        ),
        (
            "uns/velocity_params".into(),
            Element::Dict(vec![
                ("mode".into(), Element::Str(fit.mode.as_str().into())),
                (
                    "fit_offset".into(),
                    Element::Scalar(NumVec::Bool(vec![false])),
                ),
                (
                    "perc".into(),
                    Element::Dense(crate::io::DenseArray {
                        shape: vec![2],
                        data: NumVec::I64(vec![5, 95]),
                    }),
                ),
            ]),
        ),
    ]
}

/// `uns["velocity_params"]` for `mode`.
fn velocity_params(mode: velocity::VelocityMode) -> Element {
    Element::Dict(vec![
        ("mode".into(), Element::Str(mode.as_str().into())),
        (
            "fit_offset".into(),
            Element::Scalar(NumVec::Bool(vec![false])),
        ),
        (
            "perc".into(),
            Element::Dense(crate::io::DenseArray {
                shape: vec![2],
                data: NumVec::I64(vec![5, 95]),
            }),
        ),
    ])
}

/// The dynamical model's slots under scVelo's keys: `var["fit_*"]` (NaN for genes not
/// fitted), `var["fit_r2"]` (the steady-state r²), `var["velocity_genes"]`, `varm["loss"]`
/// (accepted losses, NaN-padded), `uns["recover_dynamics"]`, `uns["velocity_params"]`.
fn dynamical_slots(fit: &velocity::GeneFit) -> Vec<(String, Element)> {
    type Get = fn(&cellfate_dynamics::GeneDynamics) -> f64;
    let cols: [(&str, Get); 15] = [
        ("alpha", |d| d.alpha),
        ("beta", |d| d.beta),
        ("gamma", |d| d.gamma),
        ("t_", |d| d.t_),
        ("scaling", |d| d.scaling),
        ("std_u", |d| d.std_u),
        ("std_s", |d| d.std_s),
        ("likelihood", |d| d.likelihood),
        ("u0", |d| d.u0),
        ("s0", |d| d.s0),
        ("pval_steady", |d| d.pval_steady),
        ("steady_u", |d| d.steady_u),
        ("steady_s", |d| d.steady_s),
        ("variance", |d| d.variance),
        ("alignment_scaling", |d| d.alignment_scaling),
    ];
    let mut out: Vec<(String, Element)> = cols
        .iter()
        .map(|(name, get)| {
            let v = fit
                .dynamical
                .iter()
                .map(|d| d.as_ref().map_or(f64::NAN, get))
                .collect();
            (format!("var/fit_{name}"), Element::from_f64(v))
        })
        .collect();
    out.push(("var/fit_r2".into(), Element::from_f64(fit.r2.clone())));
    out.push((
        "var/velocity_genes".into(),
        Element::from_bools(fit.velocity_genes.clone()),
    ));
    let width = fit
        .dynamical
        .iter()
        .flatten()
        .map(|d| d.loss.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let mut loss = vec![f64::NAN; fit.dynamical.len() * width];
    for (j, d) in fit.dynamical.iter().enumerate() {
        if let Some(d) = d {
            loss[j * width..j * width + d.loss.len()].copy_from_slice(&d.loss);
        }
    }
    out.push((
        "varm/loss".into(),
        Element::from_f64_matrix(fit.dynamical.len(), width, loss),
    ));
    out.push((
        "uns/recover_dynamics".into(),
        Element::Dict(vec![
            (
                "fit_connected_states".into(),
                Element::Scalar(NumVec::Bool(vec![true])),
            ),
            (
                "fit_basal_transcription".into(),
                Element::Scalar(NumVec::Bool(vec![false])),
            ),
            ("use_raw".into(), Element::Scalar(NumVec::Bool(vec![false]))),
        ]),
    ));
    out.push((
        "uns/velocity_params".into(),
        velocity_params(velocity::VelocityMode::Dynamical),
    ));
    out
}

/// Raw counts of one dataset, cells × genes.
#[derive(Clone, Debug)]
pub struct RawCounts {
    /// Spliced counts.
    pub spliced: Csr,
    /// Unspliced counts (same shape).
    pub unspliced: Csr,
    /// The counts behind `X`; the spliced counts when `None`.
    pub x: Option<Csr>,
    /// Which of the three are stored as float64 ([`LayerDtype::Auto`]; all false: float32 or
    /// integer counts).
    pub float64: CountsFloat64,
}

/// Which count matrices of [`RawCounts`] are stored as float64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountsFloat64 {
    /// `X`'s counts (the spliced counts' type when X is the spliced counts).
    pub x: bool,
    /// `layers["spliced"]`.
    pub spliced: bool,
    /// `layers["unspliced"]`.
    pub unspliced: bool,
}

/// One timed stage of [`preprocess`].
#[derive(Clone, Debug, Serialize)]
pub struct StageTiming {
    /// Stage name.
    pub stage: &'static str,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak resident memory of the process so far (MB), where the OS reports it.
    pub peak_rss_mb: Option<f64>,
}

/// Called with each stage as it finishes (progress reporting).
pub type StageHook<'a> = dyn FnMut(&StageTiming) + 'a;

/// Records stage durations and reports each to a hook.
struct Clock<'h, 'a> {
    at: std::time::Instant,
    stages: Vec<StageTiming>,
    hook: &'h mut StageHook<'a>,
}

impl<'h, 'a> Clock<'h, 'a> {
    fn new(hook: &'h mut StageHook<'a>) -> Self {
        Self {
            at: std::time::Instant::now(),
            stages: Vec::new(),
            hook,
        }
    }

    fn lap(&mut self, stage: &'static str) {
        let t = StageTiming {
            stage,
            seconds: self.at.elapsed().as_secs_f64(),
            peak_rss_mb: peak_rss_mb(),
        };
        (self.hook)(&t);
        self.stages.push(t);
        self.at = std::time::Instant::now();
    }

    /// Reports the parts of the stage just lapped (seconds measured inside it).
    fn parts(&mut self, fit: &velocity::GeneFit) {
        let names = [
            "  first moments",
            "  second moments",
            "  velocity fits",
            "  writing layers",
        ];
        for (stage, &seconds) in names.into_iter().zip(&fit.seconds) {
            let t = StageTiming {
                stage,
                seconds,
                peak_rss_mb: None,
            };
            (self.hook)(&t);
            self.stages.push(t);
        }
    }
}

/// Everything [`preprocess`] computes (cells × genes unless said otherwise).
#[derive(Clone, Debug)]
pub struct Preprocessed {
    /// `log1p` of the normalised X.
    pub x: Csr,
    /// Normalised spliced counts.
    pub spliced: Csr,
    /// Normalised unspliced counts.
    pub unspliced: Csr,
    /// Per-cell sizes as scVelo records them in `obs`.
    pub sizes: ObsSizes,
    /// Highly variable genes.
    pub highly_variable: Vec<bool>,
    /// PCA scores (cells × components).
    pub pca: DMatrix<f64>,
    /// kNN distances (cells × cells).
    pub distances: Csr,
    /// UMAP connectivities (cells × cells).
    pub connectivities: Csr,
    /// First moments of spliced counts, row-major f32.
    pub ms: Vec<f32>,
    /// First moments of unspliced counts, row-major f32.
    pub mu: Vec<f32>,
    /// RNA velocity.
    pub velocity: velocity::VelocityFit,
    /// Stage timings.
    pub timings: Vec<StageTiming>,
}

/// What [`prepare`] did: stage timings (including reading and writing the file).
#[derive(Clone, Debug, Serialize)]
pub struct PrepareReport {
    /// Cells.
    pub n_cells: usize,
    /// Genes.
    pub n_genes: usize,
    /// Highly variable genes.
    pub n_highly_variable: usize,
    /// Velocity genes.
    pub n_velocity_genes: usize,
    /// Stage timings.
    pub timings: Vec<StageTiming>,
    /// The labeling stage, in one line (experiment, estimator, genes fitted, median γ), when
    /// it ran.
    pub labeling: Option<String>,
}

/// Checks the shapes of the counts; returns the genes with at least `min_shared_counts`
/// counts shared by spliced and unspliced (every gene when `None`: scVelo filters nothing by
/// default).
fn shared_genes(
    s: &Csr,
    u: &Csr,
    min_shared_counts: Option<f64>,
    source: &str,
) -> Result<Vec<bool>, UpstreamError> {
    let (n, g) = (s.nrows(), s.ncols());
    if (u.nrows(), u.ncols()) != (n, g) {
        return Err(invalid(format!(
            "{source}: layers spliced ({n}×{g}) and unspliced ({}×{}) differ in shape",
            u.nrows(),
            u.ncols()
        )));
    }
    let Some(min_shared_counts) = min_shared_counts else {
        return Ok(vec![true; g]);
    };
    let mut shared = vec![0.0; g];
    for i in 0..n {
        let (cs, vs) = s.row(i);
        for (&j, &v) in cs.iter().zip(vs) {
            let y = u.get(i, j as usize);
            if v > 0.0 && y > 0.0 {
                shared[j as usize] += v + y;
            }
        }
    }
    let usable: Vec<bool> = shared.iter().map(|&c| c >= min_shared_counts).collect();
    if !usable.iter().any(|&b| b) {
        return Err(invalid(format!(
            "{source}: no gene has min_shared_counts = {min_shared_counts} counts shared by layers spliced and unspliced (lower min_shared_counts: `cellfate preprocess --min-shared-counts X`, or upstream.preprocess.min_shared_counts in a `cellfate run` config)"
        )));
    }
    Ok(usable)
}

/// Checks that there are more cells than neighbours.
fn check_cells(n: usize, n_neighbors: usize, source: &str) -> Result<(), UpstreamError> {
    if n <= n_neighbors {
        return Err(invalid(format!(
            "{source}: {n} cells are too few for n_neighbors = {n_neighbors} (the kNN graph needs more cells than neighbours; lower n_neighbors: `cellfate preprocess --n-neighbors N`, or upstream.preprocess.n_neighbors in a `cellfate run` config)"
        )));
    }
    Ok(())
}

/// Checks X's shape against the counts' (`n × g`).
fn check_x_shape(x: &Csr, n: usize, g: usize, source: &str) -> Result<(), UpstreamError> {
    if (x.nrows(), x.ncols()) != (n, g) {
        return Err(invalid(format!(
            "{source}: X ({}×{}) and layers spliced ({n}×{g}) differ in shape",
            x.nrows(),
            x.ncols()
        )));
    }
    Ok(())
}

/// The per-cell columns scVelo's `filter_and_normalize` writes to `obs`, under its names.
#[derive(Clone, Debug, PartialEq)]
pub struct ObsSizes {
    /// `obs["initial_size_unspliced"]`: unspliced counts per cell over every input gene.
    pub initial_size_unspliced: Vec<f64>,
    /// `obs["initial_size_spliced"]`: spliced counts per cell over every input gene.
    pub initial_size_spliced: Vec<f64>,
    /// `obs["initial_size"]`: counts of X per cell over every input gene.
    pub initial_size: Vec<f64>,
    /// `obs["n_counts"]`: the normalised X (before `log1p`) summed over the genes that pass
    /// the shared-counts filter — scVelo's `get_size` after `filter_genes` has dropped the
    /// others (we keep them, so this is not the row sum of our X).
    pub n_counts: Vec<f64>,
}

impl ObsSizes {
    /// The `obs` slots, in the order scVelo adds them, as float32 (scVelo's type).
    fn slots(&self) -> Vec<(String, Element)> {
        [
            ("initial_size_unspliced", &self.initial_size_unspliced),
            ("initial_size_spliced", &self.initial_size_spliced),
            ("initial_size", &self.initial_size),
            ("n_counts", &self.n_counts),
        ]
        .into_iter()
        .map(|(k, v)| (format!("obs/{k}"), float32_column(v)))
        .collect()
    }
}

/// A 1-d float32 column (values rounded to float32): what scVelo stores for its per-cell
/// sizes and its steady-state γ and quantile-regression ratio.
fn float32_column(v: &[f64]) -> Element {
    Element::Dense(crate::io::DenseArray {
        shape: vec![v.len()],
        data: NumVec::F32(v.iter().map(|&x| x as f32).collect()),
    })
}

/// `log1p` of `x` normalised per cell ([`CellSizes`]), in place, with X's sizes and
/// `n_counts` over the `usable` genes ([`ObsSizes::n_counts`]); `what` names X's counts in
/// the error when every cell has zero counts.
fn log_normalise(
    x: Csr,
    usable: &[bool],
    source: &str,
    what: &str,
) -> Result<(Csr, CellSizes, Vec<f64>), UpstreamError> {
    normalise_x(x, usable, source, what, true)
}

/// [`log_normalise`], with `log1p` only when `log`.
fn normalise_x(
    x: Csr,
    usable: &[bool],
    source: &str,
    what: &str,
    log: bool,
) -> Result<(Csr, CellSizes, Vec<f64>), UpstreamError> {
    let sizes = CellSizes::of(&x);
    if sizes.sizes.iter().all(|&c| c == 0.0) {
        return Err(invalid(format!(
            "{source}: every cell has zero counts in {what}"
        )));
    }
    let mut logx = sizes.scale(x);
    let n_counts = (0..logx.nrows())
        .map(|i| {
            let (c, v) = logx.row(i);
            c.iter()
                .zip(v)
                .filter(|(&j, _)| usable[j as usize])
                .map(|(_, &x)| x)
                .sum()
        })
        .collect();
    if log {
        logx.data_mut().iter_mut().for_each(|v| *v = v.ln_1p());
    }
    Ok((logx, sizes, n_counts))
}

/// Highly variable genes, PCA, neighbours and connectivities of the log-normalised X.
pub(crate) struct Embedding {
    hvg: Vec<bool>,
    pca: DMatrix<f64>,
    distances: Csr,
    connectivities: Csr,
}

fn embed(
    logx: &Csr,
    usable: &[bool],
    spec: &UpstreamSpec,
    clock: &mut Clock<'_, '_>,
) -> Result<Embedding, UpstreamError> {
    let hvg = highly_variable(logx, usable, spec.n_top_genes);
    clock.lap("highly variable genes");
    let (pca, distances, connectivities) = pca_and_neighbors(logx, &hvg, spec, clock)?;
    Ok(Embedding {
        hvg,
        pca,
        distances,
        connectivities,
    })
}

/// PCA of the columns `genes` of `logx`, then neighbours and connectivities
/// ([`neighbors_of`]).
fn pca_and_neighbors(
    logx: &Csr,
    genes: &[bool],
    spec: &UpstreamSpec,
    clock: &mut Clock<'_, '_>,
) -> Result<(DMatrix<f64>, Csr, Csr), UpstreamError> {
    let (n, g) = (logx.nrows(), logx.ncols());
    check_cells(n, spec.n_neighbors, "X")?;
    let cols: Vec<usize> = (0..g).filter(|&j| genes[j]).collect();
    if cols.is_empty() {
        return Err(invalid("X: no gene selected for the PCA"));
    }
    let scores = if cols.len() == g {
        // Every gene is used: no copy of X.
        pca::pca(logx, spec.n_pcs, spec.seed)
    } else {
        let all_rows: Vec<usize> = (0..n).collect();
        pca::pca(&logx.submatrix(&all_rows, &cols), spec.n_pcs, spec.seed)
    };
    // The neighbours are searched on the scores as stored (float32 by default, as scanpy's).
    let scores = pca_as_stored(scores, spec.dtype.pca_float64());
    clock.lap("pca");
    let (distances, connectivities) = neighbors_of(&scores, spec, clock)?;
    Ok((scores, distances, connectivities))
}

/// kNN distances and UMAP connectivities of the rows of `scores` (exact or NN-descent by
/// [`UpstreamSpec::knn`]; `spec.n_neighbors` counts the cell itself, as scanpy's).
fn neighbors_of(
    scores: &DMatrix<f64>,
    spec: &UpstreamSpec,
    clock: &mut Clock<'_, '_>,
) -> Result<(Csr, Csr), UpstreamError> {
    let n = scores.nrows();
    let exact = match spec.knn {
        KnnMethod::Exact => true,
        KnnMethod::Approximate => false,
        KnnMethod::Auto => n <= KNN_EXACT_MAX_CELLS,
    };
    let nn = if exact {
        knn_exact(scores, spec.n_neighbors - 1)
    } else {
        ann::knn_descent(scores, spec.n_neighbors - 1, spec.seed, 30)
    };
    clock.lap(if exact {
        "neighbours (exact)"
    } else {
        "neighbours (NN-descent)"
    });
    let graphs = neighbor_graphs(&nn, spec.n_neighbors).map_err(|e| invalid(e.to_string()))?;
    drop(nn);
    clock.lap("connectivities");
    Ok(graphs)
}

/// The error when no velocity gene was found.
fn no_velocity_genes(source: &str) -> UpstreamError {
    invalid(format!(
        "{source}: no velocity gene found (r² > 0.01 and γ > 0.01 among highly variable genes)"
    ))
}

/// `uns["neighbors"]` as scanpy writes it.
fn neighbors_params(spec: &UpstreamSpec) -> Element {
    Element::Dict(vec![
        (
            "connectivities_key".into(),
            Element::Str("connectivities".into()),
        ),
        ("distances_key".into(), Element::Str("distances".into())),
        (
            "params".into(),
            Element::Dict(vec![
                (
                    "n_neighbors".into(),
                    Element::Scalar(NumVec::I64(vec![spec.n_neighbors as i64])),
                ),
                ("method".into(), Element::Str("umap".into())),
                (
                    "n_pcs".into(),
                    Element::Scalar(NumVec::I64(vec![spec.n_pcs as i64])),
                ),
            ]),
        ),
    ])
}

/// The upstream steps on raw counts in memory (see the module documentation); `source`
/// names the data in error messages (a file path, say).
pub fn preprocess(
    raw: RawCounts,
    spec: &UpstreamSpec,
    source: &str,
) -> Result<Preprocessed, UpstreamError> {
    preprocess_with(raw, spec, source, &mut |_| {})
}

/// [`preprocess`], calling `hook` as each stage finishes.
pub fn preprocess_with(
    raw: RawCounts,
    spec: &UpstreamSpec,
    source: &str,
    hook: &mut StageHook<'_>,
) -> Result<Preprocessed, UpstreamError> {
    let mut clock = Clock::new(hook);
    let RawCounts {
        spliced: s,
        unspliced: u,
        x,
        float64: f64s,
    } = raw;
    check_counts(&s, source, SPLICED)?;
    check_counts(&u, source, UNSPLICED)?;
    check_cells(s.nrows(), spec.n_neighbors, source)?;
    let usable = shared_genes(&s, &u, Some(spec.min_shared_counts), source)?;
    let (n, g) = (s.nrows(), s.ncols());
    if let Some(x) = &x {
        check_x_shape(x, n, g, source)?;
        check_counts(x, source, "X")?;
    }
    let (what, x) = match x {
        Some(x) => ("X", x),
        None => ("layers[\"spliced\"]", s.clone()),
    };
    let (logx, size_x, n_counts) = log_normalise(x, &usable, source, what)?;
    let x_f64 = if what == "X" { f64s.x } else { f64s.spliced };
    let logx = as_stored(logx, spec.dtype.float64(x_f64));
    let (size_s, size_u) = (CellSizes::of(&s), CellSizes::of(&u));
    let sn = as_stored(size_s.scale(s), spec.dtype.float64(f64s.spliced));
    let un = as_stored(size_u.scale(u), spec.dtype.float64(f64s.unspliced));
    let sizes = ObsSizes {
        initial_size_unspliced: size_u.sizes,
        initial_size_spliced: size_s.sizes,
        initial_size: size_x.sizes,
        n_counts,
    };
    clock.lap("normalise");
    let emb = embed(&logx, &usable, spec, &mut clock)?;
    let w = velocity::smoothing_graph(&emb.connectivities);
    let local = velocity::Locality::new(&emb.pca, &w, spec.seed);
    let src = velocity::SmoothedCounts {
        w: &w,
        s: &sn,
        u: &un,
        local: local.as_ref(),
    };
    let mut layers = velocity::WholeLayers::new(n, g, true);
    let fit = velocity::fit_velocity_blocks(
        &src,
        n,
        g,
        Some(&emb.hvg),
        spec.velocity_mode,
        &spec.dynamics,
        &mut |b| {
            layers.put(&b);
            Ok::<(), UpstreamError>(())
        },
    )?;
    if !fit.velocity_genes.iter().any(|&b| b) {
        return Err(no_velocity_genes(source));
    }
    clock.lap("moments + velocity");
    clock.parts(&fit);
    let ms = std::mem::take(&mut layers.ms);
    let mu = std::mem::take(&mut layers.mu);
    Ok(Preprocessed {
        x: logx,
        spliced: sn,
        unspliced: un,
        sizes,
        highly_variable: emb.hvg,
        pca: emb.pca,
        distances: emb.distances,
        connectivities: emb.connectivities,
        ms,
        mu,
        velocity: layers.into_fit(fit),
        timings: clock.stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scVelo's `normalize_per_cell` rules: sizes over every gene, the median target (mean of
    /// the two middle sizes for an even count), zero-size cells left at zero.
    #[test]
    fn cell_sizes_follow_scvelo() {
        // Sizes 3, 0, 5, 10: median 4 (np.median of an even count).
        let m = Csr::from_dense(4, 3, &[1., 2., 0., 0., 0., 0., 5., 0., 0., 4., 4., 2.])
            .expect("matrix");
        let c = CellSizes::of(&m);
        assert_eq!(c.sizes, vec![3.0, 0.0, 5.0, 10.0]);
        assert_eq!(c.target, 4.0);
        let n = c.scale(m);
        for (got, want) in n.row_sums().into_iter().zip([4.0, 0.0, 4.0, 4.0]) {
            assert!((got - want).abs() < 1e-14, "{got} vs {want}");
        }
        assert_eq!(n.row(0).1, &[4.0 / 3.0, 8.0 / 3.0]);
    }

    /// A median of 0 becomes 1 (`counts_after += counts_after == 0`), and a median of 0.5 stays
    /// 0.5 (an earlier rule floored the unspliced target at 1 and left the spliced one at 0).
    #[test]
    fn cell_sizes_zero_and_half_medians() {
        let m = Csr::from_dense(3, 2, &[0., 0., 0., 0., 1., 1.]).expect("matrix");
        let c = CellSizes::of(&m);
        assert_eq!(c.target, 1.0);
        assert_eq!(c.scale(m).row_sums(), vec![0.0, 0.0, 1.0]);
        let m = Csr::from_dense(4, 1, &[0., 0., 1., 3.]).expect("matrix");
        let c = CellSizes::of(&m);
        assert_eq!(c.target, 0.5);
        assert_eq!(c.scale(m).row_sums(), vec![0.0, 0.0, 0.5, 0.5]);
    }

    /// `n_counts` sums the normalised X over the genes kept by the filter only; the sizes
    /// (and so the scaling) use every gene.
    #[test]
    fn n_counts_over_kept_genes() {
        let x = Csr::from_dense(2, 3, &[2., 2., 4., 1., 0., 1.]).expect("matrix");
        let (logx, sizes, n_counts) =
            log_normalise(x, &[true, true, false], "test", "X").expect("normalised");
        assert_eq!(sizes.sizes, vec![8.0, 2.0]);
        assert_eq!(sizes.target, 5.0);
        assert_eq!(n_counts, vec![2.5, 2.5]);
        assert!((logx.row(1).1[0] - 2.5f64.ln_1p()).abs() < 1e-15);
    }
}
