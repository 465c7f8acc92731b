//! Errors of the GPCCA steps, each with the numbers that made it fail.

use thiserror::Error;

use crate::schur::SchurError;

/// Errors of the GPCCA steps.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum GpccaError {
    /// A parameter out of its range.
    #[error("GPCCA: {parameter} = {got} is invalid: expected {expected}")]
    Parameter {
        /// The parameter.
        parameter: &'static str,
        /// What is allowed.
        expected: String,
        /// What was given.
        got: String,
    },
    /// More macrostates than Schur vectors.
    #[error("GPCCA: {m} macrostates need at least {m} Schur vectors, {computed} were computed")]
    TooFewSchurVectors {
        /// Number of macrostates.
        m: usize,
        /// Schur vectors available.
        computed: usize,
    },
    /// The Schur vectors do not give a valid basis.
    #[error("GPCCA: Schur vectors unusable: {0}")]
    Basis(#[from] BasisError),
    /// The inner simplex algorithm failed.
    #[error("GPCCA: inner simplex algorithm: {0}")]
    Simplex(#[from] SimplexError),
    /// The rotation matrix became infeasible.
    #[error("GPCCA: rotation matrix infeasible: {0}")]
    Infeasible(#[from] Infeasibility),
    /// Memberships are significantly negative.
    #[error("GPCCA: memberships are significantly negative (minimum {min:e}, tolerance {tol:e}); try another number of macrostates")]
    NegativeMemberships {
        /// Minimum membership.
        min: f64,
        /// Tolerance used.
        tol: f64,
    },
    /// `m` would split a complex-conjugate pair.
    #[error("GPCCA: {m} macrostates would split a complex-conjugate pair of eigenvalues; use {} or {}", .m - 1, .m + 1)]
    SplitsPair {
        /// Number of macrostates.
        m: usize,
    },
    /// No clustering with positive crispness.
    #[error("GPCCA: clustering was not successful (no positive crispness for m = {m}: crispness {crispness:.4}, {non_empty} of {m} macrostates non-empty); try other numbers of macrostates")]
    NotCrisp {
        /// Number of macrostates.
        m: usize,
        /// Crispness reached.
        crispness: f64,
        /// Macrostates with at least one non-zero membership.
        non_empty: usize,
    },
    /// The stationary distribution could not be computed.
    #[error("stationary distribution: {0}")]
    Stationary(#[from] StationaryError),
}

/// Why the Schur vectors do not give an η-orthonormal basis with a constant first column.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum BasisError {
    /// Moving `√η` into the first column changed the subspace.
    #[error("the dominant Schur vector is not √η (subspace changed by sin = {sin:e}); is the eigenvalue 1 among the Schur values?")]
    DominantNotSqrtEta {
        /// Sine of the largest principal angle.
        sin: f64,
    },
    /// Gram–Schmidt met a column in the span of the previous ones.
    #[error("Schur vectors are linearly dependent (column {column} is in the span of the previous ones)")]
    LinearlyDependent {
        /// The column.
        column: usize,
    },
    /// The η-orthogonalisation changed the subspace.
    #[error("η-orthogonalisation changed the subspace (sin = {sin:e})")]
    SubspaceChanged {
        /// Sine of the largest principal angle.
        sin: f64,
    },
    /// The first column of `X` is not constantly 1.
    #[error("the first column of X is not constantly 1 (row {row}: {value})")]
    FirstColumnNotOne {
        /// The first row that deviates.
        row: usize,
        /// Its value.
        value: f64,
    },
    /// `Xᵀ diag(η) X` is not the identity.
    #[error("X is not η-orthonormal (deviation {deviation:e})")]
    NotEtaOrthonormal {
        /// `max |Xᵀ diag(η) X − I|`.
        deviation: f64,
    },
}

/// Why the inner simplex algorithm failed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum SimplexError {
    /// More vertices than cells.
    #[error("more macrostates ({m}) than cells ({n})")]
    MoreStatesThanCells {
        /// Number of macrostates.
        m: usize,
        /// Number of cells.
        n: usize,
    },
    /// The first basis vector is not constant.
    #[error("the first Schur vector is not constant (its range is {range:e})")]
    FirstNotConstant {
        /// `max − min` of the first column.
        range: f64,
    },
    /// Further basis vectors are constant.
    #[error("{} Schur vector(s) after the first one are constant (columns {columns:?}): the chain may be reducible", .columns.len())]
    ConstantVectors {
        /// The constant columns.
        columns: Vec<usize>,
    },
    /// Every remaining distance is zero.
    #[error("degenerate simplex (all remaining distances are zero when choosing vertex {vertex})")]
    Degenerate {
        /// The vertex being chosen.
        vertex: usize,
    },
    /// The simplex matrix `X[index, :]` is singular.
    #[error("the simplex matrix is singular (condition number {condition:e})")]
    Singular {
        /// Its condition number.
        condition: f64,
    },
}

/// Why a rotation matrix is infeasible.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Infeasibility {
    /// The completed first row has a zero.
    #[error("first row of the rotation matrix has zeros (column {column})")]
    ZeroFirstRow {
        /// The column.
        column: usize,
    },
    /// The completed first row has a negative entry.
    #[error("first row of the rotation matrix has negative entries (column {column}: {value:e})")]
    NegativeFirstRow {
        /// The column.
        column: usize,
        /// The entry.
        value: f64,
    },
    /// The objective of a completed rotation is not finite.
    #[error("the objective is not finite ({value})")]
    NonFiniteObjective {
        /// The objective.
        value: f64,
    },
    /// The rotation from the inner simplex algorithm is already infeasible.
    #[error("the initial rotation from the inner simplex algorithm is infeasible: {reason}")]
    InitialRotation {
        /// Why.
        reason: Box<Infeasibility>,
    },
    /// Every start of the multi-start optimiser became infeasible.
    #[error("every start of the optimiser ({starts}) became infeasible")]
    AllStarts {
        /// Number of starts.
        starts: usize,
    },
}

/// Why the stationary distribution could not be computed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum StationaryError {
    /// The dominant Schur vectors of `Pᵀ` could not be computed.
    #[error("{0}")]
    Schur(#[from] SchurError),
    /// The chain is reducible: its transition graph has several closed sets of cells
    /// (strongly connected components that no transition leaves), one stationary distribution
    /// each.
    #[error("the chain is reducible: its transition graph has {closed_sets} closed sets of cells (groups of cells that the chain never leaves; the largest has {largest} cells), so the stationary distribution is not unique (|1 - λ2| = {gap:.1e})")]
    Reducible {
        /// Closed sets: strongly connected components of the transition graph with no edge out.
        closed_sets: usize,
        /// Cells of the largest closed set.
        largest: usize,
        /// `|1 − λ2|` of the second eigenvalue.
        gap: f64,
    },
    /// The chain is irreducible (one closed set) but numerically indistinguishable from a
    /// reducible one: its second eigenvalue is within 1e-10 of 1.
    #[error("the chain is nearly reducible: its transition graph is one closed set of cells, but |1 - λ2| = {gap:.1e} (the second eigenvalue is numerically 1: groups of cells that the chain leaves with a probability of that order), so the stationary distribution is numerically undetermined")]
    NearlyReducible {
        /// `|1 − λ2|` of the second eigenvalue.
        gap: f64,
    },
    /// The dominant left eigenvector changes sign.
    #[error("the dominant left eigenvector has entries of both signs ({positive} positive, {negative} negative beyond {tol:e}; is the chain irreducible?)")]
    MixedSigns {
        /// Entries above the tolerance.
        positive: usize,
        /// Entries below minus the tolerance.
        negative: usize,
        /// The tolerance.
        tol: f64,
    },
    /// `Pᵀπ = π` holds only approximately.
    #[error("P'π = π holds only to {error:e} (tolerance {tol:e})")]
    NotStationary {
        /// `max |Pᵀπ − π|`.
        error: f64,
        /// The tolerance.
        tol: f64,
    },
}

impl StationaryError {
    /// The reason in a few words, for notes that refer back to the full message:
    /// "the chain is reducible, 3 closed sets", "the chain is nearly reducible, |1 − λ2| =
    /// 2.0e-15", or what else went wrong.
    pub fn summary(&self) -> String {
        match self {
            Self::Reducible { closed_sets, .. } => {
                format!("the chain is reducible, {closed_sets} closed sets")
            }
            Self::NearlyReducible { gap } => {
                format!("the chain is nearly reducible, |1 - λ2| = {gap:.1e}")
            }
            Self::Schur(_) => "the dominant Schur vectors of Pᵀ were not found".to_owned(),
            Self::MixedSigns { .. } => {
                "the dominant left eigenvector has entries of both signs".to_owned()
            }
            Self::NotStationary { .. } => "the computed distribution is not stationary".to_owned(),
        }
    }
}
