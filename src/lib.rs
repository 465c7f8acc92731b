//! # cellfate
//!
//! Cell fate mapping for single-cell RNA-seq data, the way CellRank 2 does it, in Rust: fast
//! enough for millions of cells on a laptop, with no PETSc/SLEPc to install.
//!
//! This crate is the facade: it re-exports the [`kernels`] (transition matrices) and
//! [`estimators`] (macrostates, fate probabilities) crates and adds `.h5ad` input/output
//! ([`io`]) and the `cellfate` command-line tool.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `h5ad` | yes | `.h5ad` reading and writing (the HDF5 system library, `libhdf5-dev`) and everything that works on files: `io`'s reader and writers, `pipeline`, `upstream`'s file steps, `kernel_io`, `inspect`, `sim::simulate_to_file` |
//! | `plots` | yes | figures and the HTML report (`report`, with `plotters`): from `.h5ad` files with `h5ad`, from any `report::FigureSource` (data in memory) without it |
//! | `cli` | yes | the `cellfate` command-line tool; implies `h5ad` and `plots` |
//!
//! With `default-features = false` the crate is the in-memory library: [`kernels`],
//! [`estimators`], the simulator's in-memory generator ([`sim::simulate`]) and AnnData's element
//! model with CellRank's key names ([`io::element`], [`io::keys`]); it needs neither HDF5 nor
//! plotters. The numerical crates `cellfate-kernels` and `cellfate-estimators` never depend on
//! either (CI checks it).
//!
//! ```
//! use cellfate::kernels::{Csr, Direction, TransitionMatrix};
//! let w = Csr::from_triplets(2, 2, &[(0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0)])?;
//! let t = TransitionMatrix::from_weights(w, Direction::Forward)?;
//! assert_eq!(t.n_cells(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Without `h5ad`, the documentation's links to the file-based items (e.g. from `sim` to
// `simulate_to_file`) have no target; they stay plain text rather than failing the docs.
#![cfg_attr(not(feature = "h5ad"), allow(rustdoc::broken_intra_doc_links))]

pub use cellfate_dynamics as dynamics;
pub use cellfate_vectorfield as vectorfield;

pub mod adata;
pub mod blas;
pub use cellfate_estimators as estimators;
pub use cellfate_kernels as kernels;

#[cfg(feature = "h5ad")]
pub mod estimator_io;
#[cfg(feature = "h5ad")]
pub mod inspect;
#[cfg(feature = "h5ad")]
pub mod io;
#[cfg(feature = "h5ad")]
pub mod kernel_io;
pub mod names;
pub mod output;
pub mod perturb;
#[cfg(feature = "h5ad")]
pub mod pipeline;
#[cfg(feature = "plots")]
pub mod report;
pub mod sim;
pub mod upstream;
#[cfg(feature = "h5ad")]
pub mod vectorfield_io;
pub mod vectorfield_slots;

/// AnnData's in-memory element model and CellRank's key names; the `.h5ad` reader and writers
/// need feature `h5ad`.
///
/// Without `h5ad` this module is assembled here from the two files of `src/io/` that do not
/// touch HDF5, so that `src/io/mod.rs` (and any reader added beside it) needs no `cfg`.
#[cfg(not(feature = "h5ad"))]
pub mod io {
    pub mod element;
    pub mod keys;

    pub use element::{
        Categorical, Categories, DataFrame, DenseArray, Element, NumVec, SparseArray, SparseFormat,
    };
}
