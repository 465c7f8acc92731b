//! Why a Schur decomposition failed (shared by the decomposition and its LAPACK/ARPACK FFI).

use thiserror::Error;

/// Why a Schur decomposition failed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SchurError {
    /// Stopped by `cellfate_kernels::interrupt::request` (e.g. Ctrl-C).
    #[error("Schur decomposition: interrupted")]
    Interrupted,
    /// An option out of its range or inconsistent with the data.
    #[error("Schur decomposition: {parameter} = {got} is invalid: expected {expected}")]
    Parameter {
        /// The option (`n_components`, `eta`, ...).
        parameter: &'static str,
        /// What is allowed.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Too few cells for the requested vectors with the Krylov method.
    #[error("Schur decomposition (krylov): too few cells ({n}) for {m} Schur vectors with the Krylov method (it needs a subspace of {ncv} vectors); use method = dense")]
    TooFewCellsForKrylov {
        /// Cells.
        n: usize,
        /// Schur vectors requested.
        m: usize,
        /// Krylov subspace size needed.
        ncv: usize,
    },
    /// The dense path was requested for a matrix too large to densify.
    #[error("Schur decomposition: the dense method needs an n x n dense matrix ({n} cells, {gb:.1} GB); it is limited to {limit} cells. Use method = krylov (sparse) or raise dense_max_cells")]
    TooLargeForDense {
        /// Cells.
        n: usize,
        /// Memory of the dense matrix in GB.
        gb: f64,
        /// The limit.
        limit: usize,
    },
    /// A dimension does not fit LAPACK's or ARPACK's 32-bit integers.
    #[error("Schur decomposition: dimension {dimension} exceeds the 32-bit integers of LAPACK and ARPACK")]
    DimensionOverflow {
        /// The dimension.
        dimension: usize,
    },
    /// A LAPACK routine failed.
    #[error("Schur decomposition: LAPACK {routine} failed (info = {info}): {}", lapack_meaning(routine, *info))]
    Lapack {
        /// The routine (`dgees`, `dtrsen`; `dgees (workspace query)`).
        routine: &'static str,
        /// LAPACK's `info`.
        info: i32,
    },
    /// Reordering the Schur form lost an eigenvalue (it changed beyond rounding).
    #[error("Schur decomposition: lost track of the eigenvalue {re} {im:+}i while sorting the Schur form")]
    SortLost {
        /// Real part.
        re: f64,
        /// Imaginary part.
        im: f64,
    },
    /// ARPACK's dimensions are inconsistent.
    #[error("Schur decomposition (krylov): ARPACK needs 1 <= nev ({nev}) and nev + 2 <= ncv ({ncv}) <= n ({n})")]
    ArpackDimensions {
        /// Problem size.
        n: usize,
        /// Ritz values requested.
        nev: usize,
        /// Krylov subspace size.
        ncv: usize,
    },
    /// The Arnoldi iteration did not converge.
    #[error("Schur decomposition (krylov): the Krylov iteration did not converge: {converged} of {requested} Schur vectors converged after {iterations} restarts ({matvecs} matrix-vector products); increase the iteration limit (max_iter) or ncv")]
    NotConverged {
        /// Converged vectors.
        converged: usize,
        /// Vectors requested.
        requested: usize,
        /// Arnoldi restarts used.
        iterations: usize,
        /// Matrix-vector products used.
        matvecs: usize,
    },
    /// An ARPACK routine failed.
    #[error("Schur decomposition (krylov): ARPACK {routine} failed (info = {info}) after {iterations} restarts; {converged} of {requested} Ritz values had converged")]
    Arpack {
        /// `dnaupd` or `dneupd`.
        routine: &'static str,
        /// ARPACK's `info`.
        info: i32,
        /// Arnoldi restarts used.
        iterations: usize,
        /// Converged Ritz values.
        converged: usize,
        /// Ritz values requested.
        requested: usize,
    },
    /// The requested number would split a complex pair whose second member did not converge.
    #[error("Schur decomposition (krylov): {requested} Schur vectors would split a complex-conjugate pair and only {converged} converged; request one Schur vector fewer, or raise max_iter or ncv")]
    PairNotConverged {
        /// Vectors requested.
        requested: usize,
        /// Converged vectors.
        converged: usize,
    },
    /// The result failed its checks.
    #[error("Schur decomposition ({method}): {what} = {value:e} exceeds {tol:e}; the subspace is not invariant to the required accuracy. {hint}")]
    CheckFailed {
        /// Path used.
        method: &'static str,
        /// Which check.
        what: &'static str,
        /// Value.
        value: f64,
        /// Tolerance.
        tol: f64,
        /// What to try.
        hint: &'static str,
    },
}

/// What a LAPACK `info` means for the routines used here.
fn lapack_meaning(routine: &str, info: i32) -> String {
    if info < 0 {
        return format!("argument {} had an illegal value", -info);
    }
    match routine {
        "dgees" => "the QR algorithm did not converge".into(),
        "dtrsen" => "reordering failed because eigenvalues are too close".into(),
        _ => "the routine reported a failure".into(),
    }
}
