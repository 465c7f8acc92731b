//! [`TransitionMatrix`]: the validated, row-stochastic sparse matrix every kernel returns and
//! every estimator reads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csr::{Csr, ROW_CHUNK};
use crate::error::TransitionError;

/// Tolerance on row sums of a transition matrix (CellRank uses `rtol = 1e-12` as well).
pub const ROW_SUM_TOL: f64 = 1e-12;

/// Direction of the process a transition matrix describes (CellRank's `backward` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Forward in time (`T_fwd`).
    #[default]
    Forward,
    /// Backward in time (`T_bwd`).
    Backward,
}

impl Direction {
    /// CellRank's key suffix: `"fwd"` or `"bwd"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Forward => "fwd",
            Self::Backward => "bwd",
        }
    }

    /// `Backward` when `backward` is true (CellRank's `backward` flag), else `Forward`.
    pub fn from_backward(backward: bool) -> Self {
        if backward {
            Self::Backward
        } else {
            Self::Forward
        }
    }

    /// The other direction.
    pub fn flip(self) -> Self {
        match self {
            Self::Forward => Self::Backward,
            Self::Backward => Self::Forward,
        }
    }

    /// True for [`Direction::Backward`].
    pub fn is_backward(self) -> bool {
        self == Self::Backward
    }
}

/// A square, finite, non-negative sparse matrix whose every row sums to 1 within
/// [`ROW_SUM_TOL`]. Construct it with [`TransitionMatrix::try_new`] (validate only) or
/// [`TransitionMatrix::from_weights`] (row-normalise non-negative weights, then validate).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawTransition", into = "RawTransition")]
pub struct TransitionMatrix {
    csr: Csr,
    direction: Direction,
}

#[derive(Serialize, Deserialize)]
struct RawTransition {
    csr: Csr,
    direction: Direction,
}

impl TryFrom<RawTransition> for TransitionMatrix {
    type Error = TransitionError;
    fn try_from(raw: RawTransition) -> Result<Self, Self::Error> {
        // Re-validate the sparse structure too: serialised data may have been tampered with.
        let (nr, nc, indptr, indices, data) = raw.csr.into_parts();
        let csr = Csr::try_new(nr, nc, indptr, indices, data)?;
        Self::try_new(csr, raw.direction)
    }
}

impl From<TransitionMatrix> for RawTransition {
    fn from(t: TransitionMatrix) -> Self {
        Self {
            csr: t.csr,
            direction: t.direction,
        }
    }
}

impl TransitionMatrix {
    /// Validates `csr` as a transition matrix without changing it. The error names the first
    /// offending row or entry.
    pub fn try_new(csr: Csr, direction: Direction) -> Result<Self, TransitionError> {
        check_entries(&csr)?;
        for (row, sum) in csr.row_sums().into_iter().enumerate() {
            if sum == 0.0 {
                return Err(TransitionError::ZeroRow { row });
            }
            if (sum - 1.0).abs() > ROW_SUM_TOL {
                return Err(TransitionError::RowSum {
                    row,
                    sum,
                    tol: ROW_SUM_TOL,
                });
            }
        }
        Ok(Self { csr, direction })
    }

    /// Row-normalises a matrix of non-negative weights (explicit zeros are dropped) and
    /// validates the result. Rows that already sum to 1 within [`ROW_SUM_TOL`] are left
    /// untouched, as in CellRank.
    pub fn from_weights(mut csr: Csr, direction: Direction) -> Result<Self, TransitionError> {
        check_entries(&csr)?;
        csr.eliminate_zeros();
        let sums = csr.row_sums();
        if let Some(row) = sums.iter().position(|&s| s == 0.0) {
            return Err(TransitionError::ZeroRow { row });
        }
        let indptr = csr.indptr().to_vec();
        let data = csr.data_mut();
        // Split the data into per-row slices so the loop parallelises without shared state.
        let mut rows: Vec<&mut [f64]> = Vec::with_capacity(sums.len());
        let mut rest = data;
        for r in 0..sums.len() {
            let len = indptr[r + 1] - indptr[r];
            let (head, tail) = rest.split_at_mut(len);
            rows.push(head);
            rest = tail;
        }
        rows.into_par_iter()
            .with_min_len(ROW_CHUNK)
            .zip(sums.par_iter())
            .for_each(|(row, &s)| {
                if (s - 1.0).abs() > ROW_SUM_TOL {
                    row.iter_mut().for_each(|v| *v /= s);
                }
            });
        Self::try_new(csr, direction)
    }

    /// Number of cells (rows = columns).
    pub fn n_cells(&self) -> usize {
        self.csr.nrows()
    }

    /// Number of stored transitions.
    pub fn nnz(&self) -> usize {
        self.csr.nnz()
    }

    /// The direction of the process.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The same matrix labelled with another direction.
    pub fn with_direction(mut self, direction: Direction) -> Self {
        self.direction = direction;
        self
    }

    /// The underlying sparse matrix.
    pub fn as_csr(&self) -> &Csr {
        &self.csr
    }

    /// Consumes `self`, returning the sparse matrix.
    pub fn into_csr(self) -> Csr {
        self.csr
    }

    /// Column indices (targets) and probabilities of row `i`.
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        self.csr.row(i)
    }

    /// `P x` (e.g. propagating a function of the target cell).
    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        self.csr.mul_vec(x)
    }

    /// `Pᵀ x` (e.g. pushing a distribution one step forward: `μ ← Pᵀ μ`).
    pub fn mul_vec_transposed(&self, x: &[f64]) -> Vec<f64> {
        self.csr.mul_vec_transposed(x)
    }

    /// The sub-matrix on the given rows and columns. Not a transition matrix in general
    /// (rows of the block need not sum to 1), so it is returned as a plain [`Csr`].
    pub fn submatrix(&self, rows: &[usize], cols: &[usize]) -> Csr {
        self.csr.submatrix(rows, cols)
    }

    /// Largest deviation of a row sum from 1.
    pub fn max_row_sum_error(&self) -> f64 {
        self.csr
            .row_sums()
            .iter()
            .fold(0.0f64, |m, s| m.max((s - 1.0).abs()))
    }
}

fn check_entries(csr: &Csr) -> Result<(), TransitionError> {
    if csr.nrows() != csr.ncols() {
        return Err(TransitionError::NotSquare {
            nrows: csr.nrows(),
            ncols: csr.ncols(),
        });
    }
    if csr.nrows() == 0 {
        return Err(TransitionError::Empty);
    }
    for row in 0..csr.nrows() {
        let (cols, vals) = csr.row(row);
        for (&c, &v) in cols.iter().zip(vals) {
            if !v.is_finite() {
                return Err(TransitionError::NonFinite {
                    row,
                    col: c as usize,
                    value: v,
                });
            }
            if v < 0.0 {
                return Err(TransitionError::Negative {
                    row,
                    col: c as usize,
                    value: v,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Csr {
        Csr::from_triplets(3, 3, &[(0, 1, 1.0), (1, 0, 0.5), (1, 2, 0.5), (2, 2, 1.0)]).unwrap()
    }

    #[test]
    fn accepts_stochastic_and_rejects_bad_entries() {
        let t = TransitionMatrix::try_new(chain(), Direction::Forward).unwrap();
        assert_eq!(t.n_cells(), 3);
        assert_eq!(t.mul_vec(&[1.0, 2.0, 3.0]), vec![2.0, 2.0, 3.0]);
        assert_eq!(t.mul_vec_transposed(&[1.0, 0.0, 0.0]), vec![0.0, 1.0, 0.0]);

        let neg = Csr::from_triplets(2, 2, &[(0, 0, 1.5), (0, 1, -0.5), (1, 1, 1.0)]).unwrap();
        assert!(matches!(
            TransitionMatrix::try_new(neg, Direction::Forward),
            Err(TransitionError::Negative { row: 0, col: 1, .. })
        ));
        let nan = Csr::from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, f64::NAN)]).unwrap();
        assert!(matches!(
            TransitionMatrix::try_new(nan, Direction::Forward),
            Err(TransitionError::NonFinite { row: 1, col: 1, .. })
        ));
        let zero = Csr::from_triplets(2, 2, &[(0, 0, 1.0)]).unwrap();
        assert!(matches!(
            TransitionMatrix::from_weights(zero, Direction::Forward),
            Err(TransitionError::ZeroRow { row: 1 })
        ));
        let off = Csr::from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, 0.9)]).unwrap();
        assert!(matches!(
            TransitionMatrix::try_new(off, Direction::Forward),
            Err(TransitionError::RowSum { row: 1, .. })
        ));
        let rect = Csr::from_triplets(2, 3, &[(0, 0, 1.0), (1, 1, 1.0)]).unwrap();
        assert!(matches!(
            TransitionMatrix::try_new(rect, Direction::Forward),
            Err(TransitionError::NotSquare { .. })
        ));
    }

    #[test]
    fn from_weights_normalises_and_serde_revalidates() {
        let w = Csr::from_triplets(2, 2, &[(0, 0, 2.0), (0, 1, 6.0), (1, 0, 0.0), (1, 1, 3.0)])
            .unwrap();
        let t = TransitionMatrix::from_weights(w, Direction::Backward).unwrap();
        assert_eq!(t.as_csr().to_dense(), vec![0.25, 0.75, 0.0, 1.0]);
        assert_eq!(t.nnz(), 3);
        let json = serde_json::to_string(&t).unwrap();
        let back: TransitionMatrix = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        let tampered = json.replace("0.75", "0.5");
        assert!(serde_json::from_str::<TransitionMatrix>(&tampered).is_err());
    }
}
