//! Typed errors of the velocity-graph, confidence and latent-time functions.

use thiserror::Error;

/// Invalid input to [`mod@crate::velocity_graph`], [`crate::confidence`] or
/// [`mod@crate::latent_time`], or a failed eigensolve.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum VelocityError {
    /// A dense matrix whose length is not rows × columns.
    #[error("{what}: {len} values are not {rows} × {cols}")]
    DenseShape {
        /// Which matrix.
        what: &'static str,
        /// Number of values given.
        len: usize,
        /// Expected rows.
        rows: usize,
        /// Expected columns.
        cols: usize,
    },
    /// Two inputs disagree on a dimension.
    #[error("{what}: expected {expected}, got {got}")]
    Dimension {
        /// What was compared.
        what: &'static str,
        /// Expected size.
        expected: usize,
        /// Actual size.
        got: usize,
    },
    /// A cell without any neighbour in the kNN distances (scVelo: "Your neighbor graph seems
    /// to be corrupted").
    #[error("the neighbour graph is corrupted: cell {cell} has no neighbour with a positive distance (recompute the neighbours)")]
    NoNeighbors {
        /// The first such cell.
        cell: usize,
    },
    /// No gene is left after the selection (velocity genes without NaN, likelihood cut).
    #[error("no gene left for {what} after the gene selection")]
    NoGenes {
        /// The computation.
        what: &'static str,
    },
    /// A cell index out of range (an explicit root cell).
    #[error("cell index {index} is out of range for {n_cells} cells")]
    CellIndex {
        /// The index given.
        index: usize,
        /// Number of cells.
        n_cells: usize,
    },
    /// An option outside its domain, or an option that needs an input that was not given.
    #[error("option {option}: {message}")]
    Option {
        /// The option.
        option: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The eigensolver failed.
    #[error("eigendecomposition of the {which} transition matrix failed: {message}")]
    Eigen {
        /// `"backward"` or `"forward"`.
        which: &'static str,
        /// The solver's message.
        message: String,
    },
}
