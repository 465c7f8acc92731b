//! Typed errors of the kernels crate.

use thiserror::Error;

/// A malformed sparse matrix.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CsrError {
    /// `indptr` does not have `nrows + 1` entries.
    #[error("indptr has {got} entries, expected nrows + 1 = {expected}")]
    IndptrLength {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// `indptr[0]` is not zero.
    #[error("indptr[0] is {got}, expected 0")]
    IndptrStart {
        /// The value found.
        got: usize,
    },
    /// `indptr` decreases at `row`.
    #[error("indptr is not monotone: it decreases at row {row}")]
    IndptrNotMonotone {
        /// The first offending row.
        row: usize,
    },
    /// `indptr` points past the stored entries.
    #[error("indptr at row {row} is {got}, but there are only {nnz} stored entries")]
    IndptrEnd {
        /// Row.
        row: usize,
        /// The pointer found.
        got: usize,
        /// Number of stored entries.
        nnz: usize,
    },
    /// `indices` and `data` differ in length.
    #[error("indices has {indices} entries but data has {data}")]
    LengthMismatch {
        /// Length of `indices`.
        indices: usize,
        /// Length of `data`.
        data: usize,
    },
    /// A column index is not below `ncols`.
    #[error("column index {col} in row {row} is out of range (ncols = {ncols})")]
    IndexOutOfRange {
        /// Row.
        row: usize,
        /// Offending column index.
        col: u32,
        /// Number of columns.
        ncols: usize,
    },
    /// A row index is not below `nrows`.
    #[error("row index {row} is out of range (nrows = {nrows})")]
    RowOutOfRange {
        /// Offending row.
        row: usize,
        /// Number of rows.
        nrows: usize,
    },
    /// Column indices within a row are not strictly increasing.
    #[error("column indices in row {row} are unsorted or duplicated (at column {col})")]
    UnsortedIndices {
        /// Row.
        row: usize,
        /// Offending column.
        col: u32,
    },
    /// More columns than a `u32` index can address.
    #[error("{ncols} columns exceed the supported maximum of 2^32 - 1")]
    TooManyColumns {
        /// Number of columns.
        ncols: usize,
    },
    /// A dense buffer of the wrong length.
    #[error("dense buffer has {got} values, expected {expected}")]
    DenseLength {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

/// Why a matrix is not a valid transition matrix.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum TransitionError {
    /// The sparse structure itself is malformed.
    #[error("malformed sparse matrix: {0}")]
    Csr(#[from] CsrError),
    /// Not square.
    #[error("transition matrix must be square, got {nrows} x {ncols}")]
    NotSquare {
        /// Rows.
        nrows: usize,
        /// Columns.
        ncols: usize,
    },
    /// An entry is NaN or infinite.
    #[error("entry ({row}, {col}) is not finite ({value})")]
    NonFinite {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// Value.
        value: f64,
    },
    /// An entry is negative.
    #[error("entry ({row}, {col}) is negative ({value}); transition probabilities must be >= 0")]
    Negative {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// Value.
        value: f64,
    },
    /// A row has no positive entry, so it cannot be normalised.
    #[error("row {row} is all zero: cell {row} has no outgoing transition")]
    ZeroRow {
        /// Row.
        row: usize,
    },
    /// A row does not sum to one.
    #[error("row {row} sums to {sum}, expected 1 within {tol:e}")]
    RowSum {
        /// Row.
        row: usize,
        /// Row sum.
        sum: f64,
        /// Tolerance.
        tol: f64,
    },
    /// A matrix with no cells.
    #[error("transition matrix has no cells")]
    Empty,
}

/// An error computing or combining kernels.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum KernelError {
    /// An input the kernel needs is missing; the message says what creates it.
    #[error("{kernel}: needs {what}: {source}; {hint}")]
    MissingInput {
        /// Kernel name (`VelocityKernel`, ...).
        kernel: &'static str,
        /// What the input is (e.g. "the kNN graph").
        what: String,
        /// The underlying lookup error (names slot and key).
        source: Box<SourceError>,
        /// How to create the input.
        hint: String,
    },
    /// An input exists but is unusable.
    #[error("{kernel}: invalid input {what}: {detail}")]
    InvalidInput {
        /// Kernel name.
        kernel: &'static str,
        /// Which input.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// A parameter is out of range.
    #[error("{kernel}: parameter `{name}` = {value} is invalid: expected {expected}")]
    InvalidParam {
        /// Kernel name.
        kernel: &'static str,
        /// Parameter.
        name: &'static str,
        /// Value given.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// Kernels that cannot be combined.
    #[error("cannot combine kernels: {0}")]
    Combine(String),
    /// The computed matrix is not a valid transition matrix.
    #[error("{kernel}: the computed matrix is not a valid transition matrix: {source}")]
    Transition {
        /// Kernel name.
        kernel: &'static str,
        /// Why.
        source: TransitionError,
    },
    /// A saved kernel could not be loaded.
    #[error("cannot load kernel: {0}")]
    Load(String),
}

/// An input a kernel asked for could not be provided.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SourceError {
    /// The slot/key does not exist.
    #[error("`{slot}[\"{key}\"]` not found{}", hint_available(.available))]
    Missing {
        /// AnnData slot (`obsp`, `obs`, `layers`, `obsm`, `var`).
        slot: String,
        /// Key within the slot.
        key: String,
        /// Keys that do exist in that slot.
        available: Vec<String>,
    },
    /// The slot exists but holds something else.
    #[error("`{slot}[\"{key}\"]`: expected {expected}, found {found}")]
    Invalid {
        /// Slot.
        slot: String,
        /// Key.
        key: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// Any other failure of the underlying storage (file, HDF5), as text.
    #[error("{0}")]
    Storage(String),
}

fn hint_available(a: &[String]) -> String {
    if a.is_empty() {
        String::new()
    } else {
        format!(" (available: {})", a.join(", "))
    }
}
