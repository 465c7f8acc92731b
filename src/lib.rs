//! # cellfate
//!
//! Cell fate mapping for single-cell RNA-seq data, the way CellRank 2 does it, in Rust: fast
//! enough for millions of cells on a laptop, with no PETSc/SLEPc to install.
//!
//! This crate is the facade: it re-exports the [`kernels`] (transition matrices) and
//! [`estimators`] (macrostates, fate probabilities) crates and adds `.h5ad` input/output
//! ([`io`]) and the `cellfate` command-line tool.
//!
//! ```
//! use cellfate::kernels::{Csr, Direction, TransitionMatrix};
//! let w = Csr::from_triplets(2, 2, &[(0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0)])?;
//! let t = TransitionMatrix::from_weights(w, Direction::Forward)?;
//! assert_eq!(t.n_cells(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use cellfate_estimators as estimators;
pub use cellfate_kernels as kernels;

pub mod estimator_io;
pub mod inspect;
pub mod io;
pub mod kernel_io;
pub mod pipeline;
pub mod report;
pub mod sim;
pub mod upstream;
