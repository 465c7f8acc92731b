//! # cellfate-vectorfield
//!
//! Continuous velocity vector fields, as dynamo 1.5.3 reconstructs and analyses them, in a
//! numerical crate that never touches files:
//! - [`sparse_vfc`]: SparseVFC reconstruction of a field from cells' positions and velocities
//!   in a low-dimensional basis (robust EM, Gaussian-kernel expansion on control points);
//! - [`VectorField`]: f(x) and its analytic Jacobian anywhere, serialisable (serde, bincode);
//! - [`calculus`]: per-cell speed, divergence, curl, acceleration and curvature from the
//!   analytic Jacobian;
//! - [`topography`]: fixed points by multi-start Newton on the analytic Jacobian, each checked
//!   for convergence and classified by the Jacobian's eigenvalues (dynamo's `ftype`), with the
//!   nullclines of 2-D fields: [`Topography`];
//! - [`potential`]: the Hodge potential of a flow on a cell graph (dynamo's ddhodge, solved
//!   sparsely) and the Waddington potential: [`Potential`];
//! - [`mod@integrate`]: fate prediction by integrating the field (adaptive Dormand–Prince):
//!   [`FatePaths`];
//! - [`perturb`]: the Jacobian route of in-silico perturbation (Δv = J·Δz).
//!
//! Everything is seeded and reduces over cells in a fixed order: the same results at any
//! thread count.

pub mod calculus;
mod field;
pub mod integrate;
pub mod perturb;
pub mod potential;
pub mod svc;
pub mod topography;

pub use calculus::{cell_calculus, CellCalculus};
pub use field::VectorField;
pub use integrate::{integrate, predict_fates, FatePath, FatePaths, IntegrateOptions, PathEnd};
pub use potential::{
    hodge_potential, hodge_potential_of_transitions, EdgeFlow, Potential, PotentialOptions,
};
pub use svc::{sparse_vfc, SparseVfc, SparseVfcOptions};
pub use topography::{
    fixed_points, nullclines, FixedPoint, FixedPointKind, Polyline, Topography, TopographyOptions,
    NULLCLINE_GRID,
};

/// Errors of the vector-field computations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorFieldError {
    /// Input that does not fit: shapes, non-finite positions, options out of range. The
    /// message names what and what was expected.
    #[error("{0}")]
    Invalid(String),
    /// Too few distinct cells for the control points.
    #[error("{cells} distinct cells with a finite velocity: SparseVFC needs at least {needed}")]
    TooFewCells {
        /// Distinct cells available.
        cells: usize,
        /// Needed.
        needed: usize,
    },
    /// A linear solve failed.
    #[error("{0}")]
    Numerical(String),
}
