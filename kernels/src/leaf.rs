//! What every built-in kernel file implements: the crate-private [`Leaf`] trait (a kernel's
//! parameters computing a matrix and their own effective version), and the helpers kernels
//! share (reading the kNN graph, row-normalising into a [`TransitionMatrix`]).
//!
//! The public `Kernel` trait is implemented for each built-in parameter type in `kernel.rs`,
//! next to `KernelSpec`, which names them all. Kernel files import this module, never `kernel.rs`, so the file-level
//! import graph has no cycle.

use crate::csr::Csr;
use crate::error::KernelError;
use crate::source::CellSource;
use crate::transition::{Direction, TransitionMatrix};

/// A built-in kernel, as its own file implements it.
pub(crate) trait Leaf: Clone {
    /// CellRank's class name (`VelocityKernel`, ...).
    const NAME: &'static str;
    /// `Some(direction)` for directed kernels, `None` for undirected ones.
    fn leaf_direction(&self) -> Option<Direction>;
    /// Checks the parameters.
    fn leaf_validate(&self) -> Result<(), KernelError>;
    /// Computes the transition matrix (parameters already validated) and returns it with the
    /// effective parameters (estimated quantities filled in).
    fn leaf_compute(&self, cells: &dyn CellSource)
        -> Result<(TransitionMatrix, Self), KernelError>;
}

/// Reads and checks the kNN graph a kernel needs.
pub(crate) fn read_graph(
    kernel: &'static str,
    cells: &dyn CellSource,
    key: &str,
) -> Result<Csr, KernelError> {
    let g = cells.graph(key).map_err(|source| KernelError::MissingInput {
        kernel,
        what: "the kNN graph".into(),
        source: Box::new(source),
        hint: "compute neighbours with `cellfate preprocess` (or scanpy's `pp.neighbors`), or set `conn_key`".into(),
    })?;
    check_graph(kernel, cells, key, g)
}

/// Checks that a graph read from `obsp[key]` is `n_cells × n_cells` with finite,
/// non-negative weights (a NaN weight would otherwise surface as a NaN transition matrix
/// entry that names no slot).
pub(crate) fn check_graph(
    kernel: &'static str,
    cells: &dyn CellSource,
    key: &str,
    g: Csr,
) -> Result<Csr, KernelError> {
    if g.nrows() != cells.n_cells() || g.ncols() != cells.n_cells() {
        return Err(KernelError::InvalidInput {
            kernel,
            what: format!("obsp[\"{key}\"]"),
            detail: format!(
                "shape {} x {}, expected {n} x {n}",
                g.nrows(),
                g.ncols(),
                n = cells.n_cells()
            ),
        });
    }
    let bad = |v: f64| !(v.is_finite() && v >= 0.0);
    if let Some(k) = g.data().iter().position(|&v| bad(v)) {
        let row = g.indptr().partition_point(|&p| p <= k) - 1;
        return Err(KernelError::InvalidInput {
            kernel,
            what: format!("obsp[\"{key}\"]"),
            detail: format!(
                "{} stored weights are negative, NaN or infinite (the first {} at cell {row}, neighbour {}); the kNN graph must hold finite, non-negative weights: recompute it (`cellfate run --recompute`, or `cellfate preprocess`)",
                g.data().iter().filter(|&&v| bad(v)).count(),
                g.data()[k],
                g.indices()[k]
            ),
        });
    }
    Ok(g)
}

/// Row-normalises (when needed) and validates, naming the kernel on failure.
pub(crate) fn to_transition(
    kernel: &'static str,
    m: Csr,
    direction: Direction,
) -> Result<TransitionMatrix, KernelError> {
    TransitionMatrix::from_weights(m, direction)
        .map_err(|source| KernelError::Transition { kernel, source })
}
