//! # cellfate-kernels
//!
//! Kernels turn single-cell data into a sparse row-stochastic cell-cell transition matrix,
//! the way CellRank 2's kernels do. This crate holds the vocabulary every other part of
//! cellfate shares — the sparse [`Csr`] storage and the validated [`TransitionMatrix`] — and
//! the kernels themselves. Kernels never touch files: they read inputs through a
//! [`CellSource`] (the `.h5ad` reader implements it, so does [`InMemoryCells`]).
//!
//! ```
//! use cellfate_kernels::{Csr, Direction, TransitionMatrix};
//! // Weights of a 3-cell chain, row-normalised into transition probabilities.
//! let w = Csr::from_triplets(3, 3, &[(0, 1, 2.0), (1, 0, 1.0), (1, 2, 1.0), (2, 2, 5.0)])?;
//! let t = TransitionMatrix::from_weights(w, Direction::Forward)?;
//! assert_eq!(t.row(1).1, &[0.5, 0.5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Kernels are their parameters, and combine like CellRank's:
//!
//! ```
//! use cellfate_kernels::{ConnectivityParams, Kernel, KernelSpec, VelocityParams};
//! let k: KernelSpec = 0.8 * VelocityParams::default() + 0.2 * ConnectivityParams::default();
//! assert_eq!(k.leaves().len(), 2);
//! k.validate()?;
//! # Ok::<(), cellfate_kernels::KernelError>(())
//! ```

mod builtin;
mod combine;
pub mod connectivity;
pub mod csr;
pub mod cytotrace;
pub mod error;
pub mod expr;
pub mod interrupt;
pub mod kernel;
pub mod labeling;
pub mod labeling_kinetics;
mod leaf;
mod ops;
pub mod precomputed;
pub mod progress;
pub mod projection;
pub mod pseudotime;
pub mod random_control;
pub mod real_time;
pub mod save;
pub mod source;
pub mod transition;
pub mod velocity;
pub mod velocity_update;

pub use combine::LeafOutputs;
pub use connectivity::ConnectivityParams;
pub use csr::Csr;
pub use cytotrace::CytoTraceParams;
pub use error::{
    CsrError, ExprProblem, KernelError, OtError, RegistrationProblem, TransitionError,
};
pub use kernel::{
    register_kernel, registered_kernels, CustomKernel, CustomSpec, Kernel, KernelOutput, KernelSpec,
};
pub use labeling::{GammaEstimator, LabelingTimeParams};
pub use precomputed::PrecomputedParams;
pub use pseudotime::{PseudotimeParams, ThresholdScheme};
pub use real_time::RealTimeParams;
pub use source::{
    CellSource, DenseData, DenseMatrix, DenseValues, InMemoryCells, SharedValues, SourceError,
};
pub use transition::{Direction, TransitionMatrix, ROW_SUM_TOL};
pub use velocity::{BackwardMode, Similarity, VelocityModel, VelocityParams};
pub mod testing;

#[cfg(test)]
mod tests;
