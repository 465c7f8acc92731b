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
    /// The computation was stopped by [`crate::interrupt::request`] (e.g. Ctrl-C).
    #[error("{kernel}: interrupted")]
    Interrupted {
        /// Kernel name.
        kernel: &'static str,
    },
    /// An input the kernel needs is missing or unreadable; the message says what creates it.
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
    /// A forward and a backward kernel in the same sum or product.
    #[error("cannot combine kernels: {forward} is forward and {backward} is backward; flip one of them (`~`)")]
    MixedDirections {
        /// A forward kernel of the combination.
        forward: String,
        /// A backward kernel of the combination.
        backward: String,
    },
    /// A sum or product without any kernel.
    #[error("cannot combine kernels: a {combination} needs at least one kernel")]
    EmptyCombination {
        /// `"sum"` or `"product"`.
        combination: &'static str,
    },
    /// A weight of a sum is negative, NaN or infinite.
    #[error("cannot combine kernels: weight {weight} of {kernel} must be finite and non-negative")]
    InvalidWeight {
        /// The weighted kernel.
        kernel: String,
        /// The weight.
        weight: f64,
    },
    /// Every weight of a sum is zero.
    #[error("cannot combine kernels: the weights of the {n_terms} terms sum to zero")]
    ZeroWeights {
        /// Number of terms.
        n_terms: usize,
    },
    /// Two kernels of a combination were computed on different numbers of cells.
    #[error("cannot combine kernels: {kernel} has {got} cells, the kernels before it {expected}")]
    CellCountMismatch {
        /// The kernel whose matrix differs.
        kernel: String,
        /// Cells of the kernels before it.
        expected: usize,
        /// Cells of this kernel.
        got: usize,
    },
    /// The computed matrix is not a valid transition matrix.
    #[error("{kernel}: the computed matrix is not a valid transition matrix: {source}")]
    Transition {
        /// Kernel name.
        kernel: &'static str,
        /// Why.
        source: TransitionError,
    },
    /// Assembling a kernel's sparse matrix failed.
    #[error("{kernel}: cannot assemble the sparse matrix: {source}")]
    Sparse {
        /// Kernel name.
        kernel: &'static str,
        /// Why.
        source: CsrError,
    },
    /// Optimal transport between two time points failed.
    #[error("{kernel}: optimal transport {from} -> {to}: {source}")]
    OptimalTransport {
        /// Kernel name.
        kernel: &'static str,
        /// Earlier time point.
        from: String,
        /// Later time point.
        to: String,
        /// Why.
        source: OtError,
    },
    /// A kernel expression (`0.8*velocity + 0.2*connectivity`) could not be parsed.
    #[error("kernel expression {}: {problem} at position {position} (expected e.g. \"0.8*velocity + 0.2*connectivity\"; kernels: {})", shown_expression(expr), known.join(", "))]
    Expression {
        /// The expression.
        expr: String,
        /// Byte offset of the problem.
        position: usize,
        /// What is wrong.
        problem: ExprProblem,
        /// The kernel names the parser knows (built-in and registered).
        known: Vec<String>,
    },
    /// A kernel name that is neither built in nor registered.
    #[error("unknown kernel {name:?}: neither built in nor registered with `register_kernel` (known kernels: {})", known.join(", "))]
    UnknownKernel {
        /// The name.
        name: String,
        /// Built-in and registered kernel names.
        known: Vec<String>,
    },
    /// A parameter a kernel does not have.
    #[error("kernel `{kernel}` has no parameter `{name}` (parameters: {})", known.join(", "))]
    UnknownParam {
        /// Kernel kind (`velocity`, ...).
        kernel: String,
        /// The parameter given.
        name: String,
        /// The kernel's parameters.
        known: Vec<String>,
    },
    /// A parameter value of the wrong type or outside the allowed values.
    #[error("invalid value {value} for `{kernel}.{name}`: {reason}")]
    InvalidParamValue {
        /// Kernel kind.
        kernel: String,
        /// Parameter.
        name: String,
        /// The value given (as written).
        value: String,
        /// Why it was rejected (the decoder's message, naming the expected values).
        reason: String,
    },
    /// A parameter addressed to a kernel kind the expression does not contain.
    #[error("`{kernel}.{name}` names no kernel of the expression (its kernels: {})", present.join(", "))]
    ParamTargetsNoKernel {
        /// Kernel kind given.
        kernel: String,
        /// Parameter given.
        name: String,
        /// Kernel kinds present in the expression.
        present: Vec<String>,
    },
    /// A kernel spec (JSON) could not be decoded.
    #[error("invalid kernel spec JSON at line {line}, column {column}: {reason}")]
    SpecJson {
        /// Line of the problem (1-based; 0 when unknown).
        line: usize,
        /// Column of the problem (1-based; 0 when unknown).
        column: usize,
        /// The decoder's message.
        reason: String,
    },
    /// The parameters of a user-defined kernel do not decode into its registered type.
    #[error("kernel `{kernel}`: invalid parameters {params}: {reason}")]
    CustomParams {
        /// The custom kernel's name.
        kernel: String,
        /// The parameters (JSON).
        params: String,
        /// The decoder's message.
        reason: String,
    },
    /// A user-defined kernel could not be registered.
    #[error("cannot register kernel {name:?}: {problem}")]
    Registration {
        /// The name.
        name: String,
        /// Why.
        problem: RegistrationProblem,
    },
    /// Bytes that are not a saved cellfate kernel.
    #[error("not a cellfate kernel file ({reason})")]
    NotAKernelFile {
        /// What is wrong (too short, wrong magic bytes).
        reason: &'static str,
    },
    /// A saved kernel of another format version.
    #[error("kernel file format version {found} is not supported by this cellfate (it reads version {supported}); recompute the kernel")]
    FormatVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A saved kernel whose body cannot be decoded.
    #[error("corrupt kernel file: {part}: {reason}")]
    CorruptKernelFile {
        /// Which part (`header`, `payload`).
        part: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// A kernel could not be encoded for saving.
    #[error("cannot encode the kernel ({part}): {reason}")]
    Encode {
        /// Which part (`header`, `payload`).
        part: &'static str,
        /// The encoder's message.
        reason: String,
    },
}

/// What is wrong in a kernel expression (see [`KernelError::Expression`]).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum ExprProblem {
    /// Text after a complete expression.
    #[error("unexpected input")]
    UnexpectedInput,
    /// `(` without `)`.
    #[error("missing ')'")]
    MissingParen,
    /// A term of numbers only (`0.5`).
    #[error("a term needs a kernel, not only a number")]
    NumberOnly,
    /// A malformed number.
    #[error("bad number {text:?}")]
    BadNumber {
        /// The text.
        text: String,
    },
    /// `~` (or `!`) before a number.
    #[error("`~` applies to a kernel, not a number")]
    FlipNumber,
    /// Anything else where a factor should start (also the end of the input).
    #[error("expected a number, a kernel name, '(' or '~'")]
    ExpectedFactor,
    /// A name that is neither built in nor registered.
    #[error("unknown kernel {name:?}")]
    UnknownKernel {
        /// The name.
        name: String,
    },
    /// Parentheses and `~` flips nested deeper than the parser allows.
    #[error("nested deeper than {limit} levels of parentheses and `~`")]
    TooDeep {
        /// The deepest nesting allowed ([`crate::expr::MAX_DEPTH`]).
        limit: usize,
    },
}

/// Why a user-defined kernel cannot be registered (see [`KernelError::Registration`]).
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum RegistrationProblem {
    /// Not a lowercase identifier.
    #[error("a kernel name is a lowercase identifier (a-z, 0-9 and _, starting with a letter)")]
    InvalidName,
    /// The name (or an alias) of a built-in kernel, or a reserved word.
    #[error("the name is taken by a built-in kernel or reserved (taken: {})", taken.join(", "))]
    Builtin {
        /// Built-in names, aliases and reserved words.
        taken: Vec<String>,
    },
    /// Another type is registered under this name.
    #[error("another type ({other}) is registered under this name")]
    Taken {
        /// The type registered first.
        other: &'static str,
    },
}

/// Why entropic optimal transport (Sinkhorn) failed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum OtError {
    /// One side has no cells.
    #[error("a time point has no cells ({rows} x {cols} cost matrix)")]
    Empty {
        /// Cells of the earlier time point.
        rows: usize,
        /// Cells of the later time point.
        cols: usize,
    },
    /// Points of different dimensions.
    #[error("points of dimension {rows_dim} and {cols_dim}")]
    DimensionMismatch {
        /// Dimension of the earlier time point's points.
        rows_dim: usize,
        /// Dimension of the later time point's points.
        cols_dim: usize,
    },
    /// The cost matrix has a non-finite entry (a non-finite coordinate in the embedding).
    #[error(
        "the cost between cell {row} and cell {col} is not finite (non-finite embedding values?)"
    )]
    NonFiniteCost {
        /// Cell of the earlier time point.
        row: usize,
        /// Cell of the later time point.
        col: usize,
    },
    /// No convergence within the iteration budget.
    #[error("Sinkhorn did not converge in {iterations} iterations (epsilon = {epsilon}, marginal error {error:e} > {tol:e}); increase epsilon")]
    NotConverged {
        /// The requested ε.
        epsilon: f64,
        /// Iterations at the final ε.
        iterations: usize,
        /// Largest relative row-marginal error reached.
        error: f64,
        /// Tolerance.
        tol: f64,
    },
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
    /// Any other failure of the underlying storage (file, HDF5) reading the slot.
    #[error("`{slot}[\"{key}\"]`: {detail}")]
    Storage {
        /// Slot.
        slot: String,
        /// Key.
        key: String,
        /// The storage layer's message.
        detail: String,
    },
}

fn hint_available(a: &[String]) -> String {
    if a.is_empty() {
        String::new()
    } else {
        format!(" (available: {})", a.join(", "))
    }
}

/// An expression quoted in a message: in full up to 120 characters, else its first 60 and
/// its length (a 10,000-character expression would bury the message).
fn shown_expression(expr: &str) -> String {
    let n = expr.chars().count();
    if n <= 120 {
        format!("{expr:?}")
    } else {
        let head: String = expr.chars().take(60).collect();
        format!("{head:?}... ({n} characters)")
    }
}
