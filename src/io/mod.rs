//! `.h5ad` (AnnData on HDF5) input and output.
//!
//! - [`H5adReader`]: lazy, slot-by-slot reading of files written by anndata 0.7 to 0.12
//!   (dense/CSR/CSC, any numeric dtype, gzip or not).
//! - [`H5adEdit`]: adds, replaces or removes slots in a copy of an input, written to a
//!   temporary file and renamed into place.
//! - [`H5adStreamWriter`]: a new file written slot by slot, with sparse and dense matrices
//!   appended in row blocks (bounded memory); [`write_new`] writes whole elements with it.
//! - [`keys`]: CellRank's AnnData key names.
//! - [`loom`]: velocyto's `.loom` files, converted to `.h5ad` ([`loom::loom_to_h5ad`]).

pub mod compression;
mod dtype;
pub mod element;
pub mod error;
pub mod fault;
mod h5;
pub mod keys;
pub mod loom;
pub mod read;
pub mod source;
pub mod stream;
pub mod write;

pub use compression::{compression, set_compression, Compression};
pub use element::{
    Categorical, Categories, DataFrame, DenseArray, Element, NumVec, SparseArray, SparseFormat,
};
pub use error::H5adError;
pub use fault::install_fault_reporter;
pub use read::{allow_large_datasets, regular_file_len, H5adReader, SlotInfo, StoredColumns};
pub use stream::{CsrAppender, DenseRowAppender, H5adStreamWriter};
pub use write::{write_new, ColumnWriter, EarlySlots, H5adEdit, TempSibling};
