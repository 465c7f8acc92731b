//! [`CellSource`]: what kernels may read. The `.h5ad` reader implements it, and so does
//! [`InMemoryCells`] for tests and library users; kernels never open files.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::csr::Csr;
pub use crate::error::SourceError;

/// A dense row-major matrix (cells × features) that keeps its stored precision: float32
/// layers stay float32 in memory (half the footprint) and are widened to `f64` row by row
/// when used, which gives exactly the values a float64 copy would.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseMatrix {
    nrows: usize,
    ncols: usize,
    data: DenseData,
}

/// Row-major values held elsewhere and read in place (e.g. a NumPy array that Python owns):
/// no copy is made of them.
pub type SharedValues<T> = Arc<dyn AsRef<[T]> + Send + Sync>;

/// Storage of a [`DenseMatrix`].
#[derive(Clone)]
pub enum DenseData {
    /// Single precision.
    F32(Vec<f32>),
    /// Double precision.
    F64(Vec<f64>),
    /// Single precision, held elsewhere.
    SharedF32(SharedValues<f32>),
    /// Double precision, held elsewhere.
    SharedF64(SharedValues<f64>),
}

/// The values of a [`DenseMatrix`], borrowed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DenseValues<'a> {
    /// Single precision.
    F32(&'a [f32]),
    /// Double precision.
    F64(&'a [f64]),
}

impl DenseData {
    /// The values, wherever they are held.
    pub fn values(&self) -> DenseValues<'_> {
        match self {
            Self::F32(v) => DenseValues::F32(v),
            Self::F64(v) => DenseValues::F64(v),
            Self::SharedF32(v) => DenseValues::F32((**v).as_ref()),
            Self::SharedF64(v) => DenseValues::F64((**v).as_ref()),
        }
    }
}

impl std::fmt::Debug for DenseData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, n) = match self.values() {
            DenseValues::F32(v) => ("f32", v.len()),
            DenseValues::F64(v) => ("f64", v.len()),
        };
        let held = matches!(self, Self::SharedF32(_) | Self::SharedF64(_));
        write!(
            f,
            "DenseData({kind} x {n}{})",
            if held { ", shared" } else { "" }
        )
    }
}

/// Equal values (however they are held).
impl PartialEq for DenseData {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl DenseMatrix {
    /// The first NaN or infinite entry in row-major order, as `(row, col, value)`, with the
    /// number of such entries; `None` when every entry is finite.
    pub fn non_finite(&self) -> Option<((usize, usize, f64), usize)> {
        let w = self.ncols.max(1);
        let (first, count) = match self.data.values() {
            DenseValues::F32(v) => (
                v.iter()
                    .position(|x| !x.is_finite())
                    .map(|k| (k, f64::from(v[k]))),
                v.iter().filter(|x| !x.is_finite()).count(),
            ),
            DenseValues::F64(v) => (
                v.iter().position(|x| !x.is_finite()).map(|k| (k, v[k])),
                v.iter().filter(|x| !x.is_finite()).count(),
            ),
        };
        first.map(|(k, x)| ((k / w, k % w, x), count))
    }

    /// A matrix from row-major `f64` values. Panics when the length is not `nrows * ncols`.
    pub fn from_f64(nrows: usize, ncols: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), nrows * ncols, "DenseMatrix: wrong data length");
        Self {
            nrows,
            ncols,
            data: DenseData::F64(data),
        }
    }

    /// A matrix from row-major `f32` values. Panics when the length is not `nrows * ncols`.
    pub fn from_f32(nrows: usize, ncols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), nrows * ncols, "DenseMatrix: wrong data length");
        Self {
            nrows,
            ncols,
            data: DenseData::F32(data),
        }
    }

    /// A matrix over row-major `f32` values held elsewhere (read in place, never copied).
    /// Panics when the length is not `nrows * ncols`.
    pub fn from_shared_f32(nrows: usize, ncols: usize, data: SharedValues<f32>) -> Self {
        assert_eq!(
            (*data).as_ref().len(),
            nrows * ncols,
            "DenseMatrix: wrong data length"
        );
        Self {
            nrows,
            ncols,
            data: DenseData::SharedF32(data),
        }
    }

    /// A matrix over row-major `f64` values held elsewhere (read in place, never copied).
    /// Panics when the length is not `nrows * ncols`.
    pub fn from_shared_f64(nrows: usize, ncols: usize, data: SharedValues<f64>) -> Self {
        assert_eq!(
            (*data).as_ref().len(),
            nrows * ncols,
            "DenseMatrix: wrong data length"
        );
        Self {
            nrows,
            ncols,
            data: DenseData::SharedF64(data),
        }
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// The storage.
    pub fn data(&self) -> &DenseData {
        &self.data
    }

    /// Writes row `i` as `f64` into `out` (resized to `ncols`).
    pub fn row_into(&self, i: usize, out: &mut Vec<f64>) {
        let (s, e) = (i * self.ncols, (i + 1) * self.ncols);
        out.clear();
        match self.data.values() {
            DenseValues::F32(v) => out.extend(v[s..e].iter().map(|&x| f64::from(x))),
            DenseValues::F64(v) => out.extend_from_slice(&v[s..e]),
        }
    }

    /// Value `(i, j)` as `f64`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        match self.data.values() {
            DenseValues::F32(v) => f64::from(v[i * self.ncols + j]),
            DenseValues::F64(v) => v[i * self.ncols + j],
        }
    }

    /// The columns for which `keep[j]` is true. Panics when `keep.len() != ncols`.
    pub fn select_columns(&self, keep: &[bool]) -> Self {
        assert_eq!(keep.len(), self.ncols, "select_columns: mask length");
        if keep.iter().all(|&k| k) {
            // Every column: the same values (shared ones stay shared, not copied).
            return self.clone();
        }
        let cols: Vec<usize> = (0..self.ncols).filter(|&j| keep[j]).collect();
        macro_rules! sel {
            ($v:expr) => {{
                let mut out = Vec::with_capacity(self.nrows * cols.len());
                for i in 0..self.nrows {
                    let row = &$v[i * self.ncols..(i + 1) * self.ncols];
                    out.extend(cols.iter().map(|&j| row[j]));
                }
                out
            }};
        }
        let data = match self.data.values() {
            DenseValues::F32(v) => DenseData::F32(sel!(v)),
            DenseValues::F64(v) => DenseData::F64(sel!(v)),
        };
        Self {
            nrows: self.nrows,
            ncols: cols.len(),
            data,
        }
    }

    /// All values as `f64`, row-major.
    pub fn to_f64(&self) -> Vec<f64> {
        match self.data.values() {
            DenseValues::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            DenseValues::F64(v) => v.to_vec(),
        }
    }

    /// Sum of each column (in row order: deterministic).
    pub fn col_sums(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.ncols];
        let mut row = Vec::new();
        for i in 0..self.nrows {
            self.row_into(i, &mut row);
            for (o, x) in out.iter_mut().zip(&row) {
                *o += x;
            }
        }
        out
    }
}

/// What kernels may read about cells. Implemented by the `.h5ad` reader and by
/// [`InMemoryCells`].
pub trait CellSource: Sync {
    /// Number of cells.
    fn n_cells(&self) -> usize;
    /// Number of genes.
    fn n_genes(&self) -> usize;
    /// A cell × cell graph from `obsp[key]` (e.g. `connectivities`), `n_cells × n_cells`.
    fn graph(&self, key: &str) -> Result<Csr, SourceError>;
    /// A numeric per-cell vector from `obs[key]`.
    fn obs_f64(&self, key: &str) -> Result<Vec<f64>, SourceError>;
    /// Per-cell labels from a categorical (or string) `obs[key]` (`None` = missing).
    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, SourceError>;
    /// A cells × genes matrix from `layers[key]` (`key == "X"` reads `X`).
    fn layer(&self, key: &str) -> Result<DenseMatrix, SourceError>;
    /// A cells × d matrix from `obsm[key]`.
    fn obsm(&self, key: &str) -> Result<DenseMatrix, SourceError>;
    /// A per-gene boolean mask from `var[key]`; `Ok(None)` when the column does not exist.
    fn var_mask(&self, key: &str) -> Result<Option<Vec<bool>>, SourceError>;
    /// The categories (in order) of a categorical `obs[key]`; empty when not categorical.
    fn obs_categories(&self, key: &str) -> Result<Vec<String>, SourceError> {
        let _ = key;
        Ok(Vec::new())
    }
    /// A 2-D matrix stored in `uns[key]` (e.g. transport maps); `Ok(None)` when absent.
    fn uns_matrix(&self, key: &str) -> Result<Option<DenseMatrix>, SourceError> {
        let _ = key;
        Ok(None)
    }
}

/// An in-memory [`CellSource`] for tests, examples and library users who hold their data in
/// Rust already.
#[derive(Clone, Debug, Default)]
pub struct InMemoryCells {
    /// Number of cells.
    pub n_cells: usize,
    /// Number of genes.
    pub n_genes: usize,
    /// `obsp` graphs.
    pub graphs: BTreeMap<String, Csr>,
    /// Numeric `obs` columns.
    pub obs: BTreeMap<String, Vec<f64>>,
    /// Label `obs` columns.
    pub labels: BTreeMap<String, Vec<Option<String>>>,
    /// `layers` (and `X`).
    pub layers: BTreeMap<String, DenseMatrix>,
    /// `obsm` matrices.
    pub obsm: BTreeMap<String, DenseMatrix>,
    /// Boolean `var` columns.
    pub var_masks: BTreeMap<String, Vec<bool>>,
    /// Category order of label columns (when not given, first-seen order is used).
    pub categories: BTreeMap<String, Vec<String>>,
    /// Matrices in `uns`.
    pub uns: BTreeMap<String, DenseMatrix>,
}

fn missing<T>(slot: &str, key: &str, map: &BTreeMap<String, T>) -> SourceError {
    SourceError::Missing {
        slot: slot.into(),
        key: key.into(),
        available: map.keys().cloned().collect(),
    }
}

impl CellSource for InMemoryCells {
    fn n_cells(&self) -> usize {
        self.n_cells
    }
    fn n_genes(&self) -> usize {
        self.n_genes
    }
    fn graph(&self, key: &str) -> Result<Csr, SourceError> {
        self.graphs
            .get(key)
            .cloned()
            .ok_or_else(|| missing("obsp", key, &self.graphs))
    }
    fn obs_f64(&self, key: &str) -> Result<Vec<f64>, SourceError> {
        self.obs
            .get(key)
            .cloned()
            .ok_or_else(|| missing("obs", key, &self.obs))
    }
    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, SourceError> {
        self.labels
            .get(key)
            .cloned()
            .ok_or_else(|| missing("obs", key, &self.labels))
    }
    fn layer(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        self.layers
            .get(key)
            .cloned()
            .ok_or_else(|| missing("layers", key, &self.layers))
    }
    fn obsm(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        self.obsm
            .get(key)
            .cloned()
            .ok_or_else(|| missing("obsm", key, &self.obsm))
    }
    fn var_mask(&self, key: &str) -> Result<Option<Vec<bool>>, SourceError> {
        Ok(self.var_masks.get(key).cloned())
    }
    fn obs_categories(&self, key: &str) -> Result<Vec<String>, SourceError> {
        Ok(self.categories.get(key).cloned().unwrap_or_default())
    }
    fn uns_matrix(&self, key: &str) -> Result<Option<DenseMatrix>, SourceError> {
        Ok(self.uns.get(key).cloned())
    }
}
