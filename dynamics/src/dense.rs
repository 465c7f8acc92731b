//! A borrowed dense row-major matrix (cells × genes), the shape of `layers["Ms"]` and
//! `layers["velocity"]` as the root crate reads them, and the gene selections scVelo applies
//! to them.

use crate::error::VelocityError;

/// The element type of a dense layer as stored: `f64`, or `f32` for the float32 layers
/// scVelo and cellfate write (`Ms`, `velocity`, `fit_t`), read without widening so that a
/// 100,000 × 2,000 layer takes 0.8 GB instead of 1.6 GB. Every computation converts to `f64`
/// on use; the conversion from `f32` is exact, so the results are the same to the bit as on
/// a widened copy.
pub trait Scalar: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The value in double precision.
    fn to_f64(self) -> f64;
}

impl Scalar for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

impl Scalar for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// A borrowed dense row-major matrix: `values[i * ncols + j]` is row `i`, column `j`, in
/// the element type it is stored in ([`Scalar`]: `f64` by default, or `f32`).
#[derive(Clone, Copy, Debug)]
pub struct RowMajor<'a, T: Scalar = f64> {
    values: &'a [T],
    nrows: usize,
    ncols: usize,
}

impl<'a, T: Scalar> RowMajor<'a, T> {
    /// Wraps `values` as an `nrows × ncols` matrix; `what` names it in the error when the
    /// length is not `nrows · ncols`.
    pub fn new(
        what: &'static str,
        values: &'a [T],
        nrows: usize,
        ncols: usize,
    ) -> Result<Self, VelocityError> {
        if nrows.checked_mul(ncols) != Some(values.len()) {
            return Err(VelocityError::DenseShape {
                what,
                len: values.len(),
                rows: nrows,
                cols: ncols,
            });
        }
        Ok(Self {
            values,
            nrows,
            ncols,
        })
    }

    /// Number of rows (cells).
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns (genes).
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.values[i * self.ncols..(i + 1) * self.ncols]
    }

    /// The columns `cols`, in that order, as a new row-major `nrows × cols.len()` matrix in
    /// double precision.
    pub fn gather_columns(&self, cols: &[usize]) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.nrows * cols.len());
        for i in 0..self.nrows {
            let r = self.row(i);
            out.extend(cols.iter().map(|&j| r[j].to_f64()));
        }
        out
    }

    /// The columns `cols` as a row-major `nrows × cols.len()` matrix: the matrix itself when
    /// `cols` is every column in order (no copy: at 100,000 cells × 2,000 genes a copy is
    /// 1.6 GB), else a gathered copy in the stored element type.
    pub fn select_columns(&self, cols: &[usize]) -> std::borrow::Cow<'a, [T]> {
        if cols.len() == self.ncols && cols.iter().enumerate().all(|(k, &j)| k == j) {
            std::borrow::Cow::Borrowed(self.values)
        } else {
            let mut out = Vec::with_capacity(self.nrows * cols.len());
            for i in 0..self.nrows {
                let r = self.row(i);
                out.extend(cols.iter().map(|&j| r[j]));
            }
            std::borrow::Cow::Owned(out)
        }
    }

    /// [`Self::column_sum_is_nan`] for every column, in one pass over the rows.
    pub fn column_sums_are_nan(&self) -> Vec<bool> {
        let mut s = vec![0.0; self.ncols];
        for i in 0..self.nrows {
            s.iter_mut()
                .zip(self.row(i))
                .for_each(|(a, b)| *a += b.to_f64());
        }
        s.iter().map(|x| x.is_nan()).collect()
    }

    /// Whether the column sum is NaN (NumPy's `np.isnan(np.sum(V, axis=0))`: a NaN, or both
    /// +∞ and −∞, in the column).
    pub fn column_sum_is_nan(&self, j: usize) -> bool {
        let mut s = 0.0;
        for i in 0..self.nrows {
            s += self.values[i * self.ncols + j].to_f64();
        }
        s.is_nan()
    }
}

/// The genes scVelo computes a velocity graph or confidence on: those of `mask` (all genes
/// when `None`; scVelo's `var["velocity_genes"]`, and for the confidence also
/// `spearmans_score > 0.1` when that column exists, which the caller folds into the mask)
/// whose velocity column sum is not NaN. Returns their column indices, increasing.
pub fn velocity_gene_columns<T: Scalar>(
    velocity: RowMajor<'_, T>,
    mask: Option<&[bool]>,
) -> Result<Vec<usize>, VelocityError> {
    if let Some(m) = mask {
        if m.len() != velocity.ncols() {
            return Err(VelocityError::Dimension {
                what: "gene mask length (genes of the velocity layer)",
                expected: velocity.ncols(),
                got: m.len(),
            });
        }
    }
    let nan = velocity.column_sums_are_nan();
    Ok((0..velocity.ncols())
        .filter(|&j| mask.is_none_or(|m| m[j]) && !nan[j])
        .collect())
}

/// Subtracts each row's mean from the row (`V -= V.mean(1)[:, None]`), in place, on an
/// `nrows × ncols` row-major buffer.
pub(crate) fn centre_rows(values: &mut [f64], ncols: usize) {
    if ncols == 0 {
        return;
    }
    for row in values.chunks_mut(ncols) {
        let m = row.iter().sum::<f64>() / ncols as f64;
        row.iter_mut().for_each(|x| *x -= m);
    }
}

/// Euclidean norm.
pub(crate) fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Dot product.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
