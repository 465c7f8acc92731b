//! # cellfate-kernels
//!
//! Kernels turn single-cell data into a sparse row-stochastic cell-cell transition matrix,
//! the way CellRank 2's kernels do. This crate holds the vocabulary every other part of
//! cellfate shares: the sparse [`Csr`] storage and the validated [`TransitionMatrix`].
//! Kernels never touch files: they read inputs through a `CellSource`.
//!
//! ```
//! use cellfate_kernels::{Csr, Direction, TransitionMatrix};
//! // Weights of a 3-cell chain, row-normalised into transition probabilities.
//! let w = Csr::from_triplets(3, 3, &[(0, 1, 2.0), (1, 0, 1.0), (1, 2, 1.0), (2, 2, 5.0)])?;
//! let t = TransitionMatrix::from_weights(w, Direction::Forward)?;
//! assert_eq!(t.row(1).1, &[0.5, 0.5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod csr;
pub mod error;
pub mod transition;

pub use csr::Csr;
pub use error::{CsrError, TransitionError};
pub use transition::{Direction, TransitionMatrix, ROW_SUM_TOL};
