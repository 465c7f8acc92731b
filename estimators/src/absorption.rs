//! Absorption: fate probabilities, absorption times and lineage priming (CellRank 2.3
//! semantics, exact solves).
//!
//! With the absorbing set `A` = cells labelled with a terminal state and the transient set `T`
//! = the rest, `Q = P[T, T]` and `S = P[T, A]` summed per terminal state, the fate
//! probabilities solve `(I − Q) B = S`. cellfate factorises `I − Q` once with a sparse LU
//! (faer) and reuses it for every right-hand side, then *checks* the residual `‖(I−Q)B − S‖`
//! and the row sums (within 1e-10), instead of CellRank's GMRES at `tol = 1e-6` with row sums
//! checked only to 1e-3. Transient cells that cannot reach any terminal state make `I − Q`
//! singular; that is detected up front and reported.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::sparse::linalg::lu::{factorize_symbolic_lu, LuRef, NumericLu, SymbolicLu};
use faer::sparse::linalg::LuError;
use faer::sparse::{CreationError, FaerError, SparseColMat, Triplet};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

use faer::{Conj, Mat, Par};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use cellfate_kernels::{CsrError, TransitionMatrix};

use crate::iterative::IluError;

/// Errors of the absorption computations.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum AbsorptionError {
    /// No terminal states were given.
    #[error("no terminal states: compute or set terminal states first (cellfate terminal-states)")]
    NoTerminalStates,
    /// A terminal state has no cells.
    #[error("terminal state `{name}` (lineage {lineage}) has no cells")]
    EmptyState {
        /// The state.
        name: String,
        /// Its index among the terminal states.
        lineage: usize,
    },
    /// The terminal labels do not match the cells.
    #[error("{labels} terminal labels for {cells} cells")]
    LabelCount {
        /// Labels given.
        labels: usize,
        /// Cells of the transition matrix.
        cells: usize,
    },
    /// A terminal label names no state.
    #[error("terminal label {label} (cell {cell}) out of range 0..{n_states}")]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// The first cell with it.
        cell: usize,
        /// Number of terminal states.
        n_states: usize,
    },
    /// Every cell is absorbing.
    #[error("every cell belongs to a terminal state: there is nothing to compute")]
    NoTransient,
    /// Some transient cells cannot reach any terminal state.
    #[error("{count} of {transient} transient cells cannot reach any terminal state (e.g. cell {example}), so their fate is undefined; add a connectivity kernel to the transition matrix (e.g. the kernel expression \"0.8*velocity + 0.2*connectivity\") or add terminal states")]
    Unreachable {
        /// Unreachable cells.
        count: usize,
        /// Transient cells.
        transient: usize,
        /// One of them.
        example: usize,
    },
    /// Building or factorising `I − Q` failed.
    #[error("{solver}: factorisation of I - Q ({size} x {size}) failed: {reason}")]
    Factorisation {
        /// `sparse LU (faer)` or `GMRES + ILU(0)`.
        solver: &'static str,
        /// Transient cells (the size of `I − Q`).
        size: usize,
        /// Why.
        reason: FactorisationFailure,
    },
    /// The solution does not satisfy the system.
    #[error(
        "the solve did not reach the required accuracy: backward error {residual:e} > {tol:e}"
    )]
    Residual {
        /// Normwise backward error.
        residual: f64,
        /// Tolerance.
        tol: f64,
    },
    /// The fate probabilities of a cell do not sum to 1 (the solve is not accurate enough for
    /// the conditioning of `I − Q`, or a probability came out negative).
    #[error("fate probabilities are inaccurate: a row sum deviates from 1 by {error:e} (or an entry is negative by that much) > {tol:e}; I - Q is ill-conditioned or nearly singular (some cells need {max_absorption_time:.1e} steps on average to reach a terminal state: cells that can hardly reach any terminal state)")]
    RowSums {
        /// Largest deviation.
        error: f64,
        /// Tolerance (scaled to the conditioning, at most [`MAX_ROW_SUM_TOL`]).
        tol: f64,
        /// Largest expected number of steps to absorption, `‖(I − Q)⁻¹‖_∞`.
        max_absorption_time: f64,
    },
    /// The iterative solver did not converge.
    #[error("GMRES + ILU(0) did not converge: relative residual {residual:e} after {iterations} iterations; use solver = direct (sparse LU) if memory allows, or raise max_iter")]
    NotConverged {
        /// Final relative residual.
        residual: f64,
        /// Iterations used.
        iterations: usize,
    },
    /// An option of the absorption solves is out of range.
    #[error("absorption.{name} = {value}: expected {expected}")]
    InvalidOption {
        /// The option (its TOML key under `[estimators.absorption]`).
        name: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// Lineage priming: no cell is selected as early.
    #[error("lineage priming: no early cells selected (of {cells} cells)")]
    NoEarlyCells {
        /// Cells.
        cells: usize,
    },
    /// Lineage priming: the early-cell mask does not match the cells.
    #[error("lineage priming: the early-cell mask has {got} entries for {expected} cells")]
    EarlyMaskLength {
        /// Cells.
        expected: usize,
        /// Entries of the mask.
        got: usize,
    },
}

/// Why building or factorising `I − Q` failed.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum FactorisationFailure {
    /// An entry outside the matrix while assembling it.
    #[error("entry ({row}, {col}) is out of bounds")]
    OutOfBounds {
        /// Row.
        row: usize,
        /// Column.
        col: usize,
    },
    /// faer ran out of memory or of index range.
    #[error("faer: {0}")]
    Faer(FaerError),
    /// No pivot could be found: `I − Q` is structurally singular.
    #[error("the matrix is structurally singular (no pivot at step {step})")]
    StructurallySingular {
        /// The elimination step.
        step: usize,
    },
    /// Assembling the CSR matrix for GMRES failed.
    #[error("assembling the sparse matrix: {0}")]
    Csr(#[from] CsrError),
    /// The ILU(0) preconditioner failed.
    #[error("{0}")]
    Ilu(#[from] IluError),
    /// A nearby solve was asked for a system whose terminal cells or lineages differ from
    /// the factorised one's.
    #[error("the terminal cells differ from those of the factorised system")]
    NotNearby,
}

impl From<CreationError> for FactorisationFailure {
    fn from(e: CreationError) -> Self {
        match e {
            CreationError::Generic(f) => Self::Faer(f),
            CreationError::OutOfBounds { row, col } => Self::OutOfBounds { row, col },
        }
    }
}

impl From<LuError> for FactorisationFailure {
    fn from(e: LuError) -> Self {
        match e {
            LuError::SymbolicSingular { index } => Self::StructurallySingular { step: index },
            LuError::Generic(f) => Self::Faer(f),
        }
    }
}

/// Name of the direct solver (in results and errors).
const LU: &str = "sparse LU (faer)";
/// faer's parallelism for the sparse LU (factorisation and solves): sequential, always. faer's
/// convenience calls (`sp_lu`, `solve`) take the global setting, by default all threads of the
/// rayon pool, and its supernodal kernels split the work by that count, so the rounding (and
/// absorption-time variances, by ~1e-14 relative) changed with `--threads`. Results must be
/// the same bits for any thread count.
const LU_PAR: Par = Par::Seq;
/// Name of the iterative solver (in results and errors).
const GMRES: &str = "GMRES + ILU(0)";
/// Name of the solver of a nearby system (in results and errors).
pub const NEAR: &str = "GMRES preconditioned by the unperturbed factorisation";

/// Transient rows per parallel task of the assembly of `I − Q`.
const ASSEMBLY_ROWS: usize = 4096;

/// Which lineages each transient cell of the chain `p` can reach along its positive entries
/// through transient cells: the strongly connected components of the transient cells
/// ([`crate::graph`]), then each component's set of lineages from its edges, the components
/// in the order Tarjan completes them (every component one leads to comes earlier). Two
/// passes over the stored entries for any number of lineages, and no transposed copy of the
/// chain (a search per lineage along reversed edges needed both).
fn lineage_reach(p: &cellfate_kernels::Csr, terminal: &[Option<usize>], l: usize) -> Reach {
    let words = l.div_ceil(64).max(1);
    let (component, m) =
        crate::graph::strongly_connected_components_within(p, |c| terminal[c].is_none());
    // The cells of each component (counting sort by component).
    let mut start = vec![0usize; m + 1];
    for &c in component.iter().filter(|&&c| c < m) {
        start[c + 1] += 1;
    }
    for c in 0..m {
        start[c + 1] += start[c];
    }
    let mut fill = start.clone();
    let mut members = vec![0u32; start[m]];
    for (i, &c) in component.iter().enumerate().filter(|&(_, &c)| c < m) {
        members[fill[c]] = i as u32;
        fill[c] += 1;
    }
    drop(fill);
    let mut masks = vec![0u64; m * words];
    for c in 0..m {
        let (done, rest) = masks.split_at_mut(c * words);
        let mask = &mut rest[..words];
        for &x in &members[start[c]..start[c + 1]] {
            let (cols, vals) = p.row(x as usize);
            for (&to, &v) in cols.iter().zip(vals) {
                let to = to as usize;
                if v <= 0.0 {
                    continue;
                }
                match terminal[to] {
                    Some(j) => mask[j / 64] |= 1 << (j % 64),
                    // Earlier components are complete (Tarjan numbers a component after
                    // every component it leads to).
                    None if component[to] < c => {
                        let h = component[to] * words;
                        for (b, &o) in mask.iter_mut().zip(&done[h..h + words]) {
                            *b |= o;
                        }
                    }
                    None => {}
                }
            }
        }
    }
    Reach {
        component,
        masks,
        words,
    }
}

/// What [`lineage_reach`] finds: each transient cell's component and each component's
/// lineages (`words` 64-bit words of bits).
struct Reach {
    component: Vec<usize>,
    masks: Vec<u64>,
    words: usize,
}

impl Reach {
    /// The lineage bits of transient cell `i`.
    fn of(&self, i: usize) -> &[u64] {
        let c = self.component[i];
        &self.masks[c * self.words..(c + 1) * self.words]
    }
}

/// `I − Q` as faer triplets (the sparse LU's input).
fn csr_to_triplets(a: &cellfate_kernels::Csr) -> Vec<Triplet<usize, usize, f64>> {
    let mut trip = Vec::with_capacity(a.nnz());
    for p in 0..a.nrows() {
        let (cols, vals) = a.row(p);
        for (&c, &v) in cols.iter().zip(vals) {
            trip.push(Triplet::new(p, c as usize, v));
        }
    }
    trip
}

/// Maximum normwise backward error `‖(I−Q)X − B‖ / (‖I−Q‖ ‖X‖ + ‖B‖)` (∞-norms, max over
/// entries for `X` and `B`) accepted. For fate probabilities `‖X‖ ≤ 1` and this is close to
/// the relative residual; for absorption times and their variances, whose solutions grow
/// with the conditioning, the plain relative residual would grow with it too.
pub const RESIDUAL_TOL: f64 = 1e-10;
/// Maximum deviation of a row sum of the fate probabilities from 1 (or of a negative entry
/// from 0) accepted without looking at the conditioning.
pub const ROW_SUM_TOL: f64 = 1e-10;
/// Above [`ROW_SUM_TOL`], a deviation is accepted when the conditioning explains it (at most
/// `ROW_SUM_SAFETY × ε × t_max`, with `t_max = ‖(I − Q)⁻¹‖_∞` the largest expected number of
/// steps to absorption), and never above this.
pub const MAX_ROW_SUM_TOL: f64 = 1e-6;
/// Safety factor on the forward-error bound `t_max × ‖I − Q‖_∞ × ε` (‖I − Q‖_∞ ≤ 2).
pub const ROW_SUM_SAFETY: f64 = 100.0;

/// The row-sum tolerance for a system whose largest expected absorption time is `t_max`.
pub fn conditioned_row_sum_tol(t_max: f64) -> f64 {
    (ROW_SUM_SAFETY * f64::EPSILON * t_max).clamp(ROW_SUM_TOL, MAX_ROW_SUM_TOL)
}

/// Which linear solver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Sparse LU up to `direct_max_cells` transient cells, GMRES + ILU(0) above.
    #[default]
    Auto,
    /// Sparse LU (faer).
    Direct,
    /// Restarted GMRES with an ILU(0) preconditioner.
    Gmres,
}

/// Why a solver name does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("solver {0:?}: expected auto, direct or gmres")]
pub struct SolverParseError(pub String);

impl std::str::FromStr for Solver {
    type Err = SolverParseError;
    fn from_str(s: &str) -> Result<Self, SolverParseError> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "direct" | "lu" => Ok(Self::Direct),
            "gmres" => Ok(Self::Gmres),
            other => Err(SolverParseError(other.into())),
        }
    }
}

/// Options of the absorption solves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbsorptionOptions {
    /// Solver choice.
    pub solver: Solver,
    /// Largest number of transient cells for the sparse direct solver under `Auto`.
    pub direct_max_cells: usize,
    /// GMRES: relative residual tolerance (the fate probabilities' solves also stop once
    /// a column's normwise backward error is below [`BACKWARD_STOP`]).
    pub tol: f64,
    /// GMRES: restart length.
    pub restart: usize,
    /// GMRES: maximum inner iterations per right-hand side.
    pub max_iter: usize,
    /// GMRES: cells per aggregate of the coarse correction added to ILU(0) when ILU(0)
    /// alone would need more than [`STALL_ITERATIONS`] iterations, as projected at
    /// [`STALL_PROBE`] or from its first restart cycle (0: never; more cells per
    /// aggregate when there would be more than
    /// [`MAX_AGGREGATES`](crate::coarse::MAX_AGGREGATES) aggregates). The cells are grouped
    /// into connected aggregates of about this size and the chain lumped on them is solved
    /// exactly inside every preconditioner application, so the slow, nearly
    /// piecewise-constant error of metastable chains is removed in one step.
    pub aggregate_size: usize,
}

impl Default for AbsorptionOptions {
    fn default() -> Self {
        Self {
            solver: Solver::Auto,
            // Measured on kNN-like graphs (examples/scale.rs): at 10k transient cells the LU
            // takes 0.9 s / 120 MB against GMRES's 4.9 s, at 100k 249 s / 7.2 GB against
            // 65 s / 1 GB (fill-in grows fast on kNN graphs).
            direct_max_cells: 30_000,
            tol: 1e-12,
            // 64, not 50: on the real 1M demo chain the absorption times' solve reaches
            // its tolerance at 51-55 iterations, and a restart at 50 cost a second cycle
            // (5 pairs back to back: 14.9 against 17.1 s on average).
            restart: 64,
            max_iter: 20_000,
            // Measured (examples/scale.rs): on the synthetic metastable graphs at 100,000
            // cells, 3 lineages 46.9 -> 2.6 s and 10 lineages 162.7 -> 6.0 s (850 -> 27
            // iterations) with the coarse correction from the start; on the real 1M demo
            // chain it cut the iterations from 60-74 to 39-41 but cost more time than it
            // saved (its aggregates border hundreds of others), hence only after a stall.
            aggregate_size: 256,
        }
    }
}

/// Largest GMRES restart length accepted (memory: `restart + 2` vectors per right-hand
/// side).
pub const MAX_RESTART: usize = 1000;
/// Smallest non-zero aggregate size accepted (smaller aggregates make the coarse system
/// nearly as large as the whole one).
pub const MIN_AGGREGATE_SIZE: usize = 8;

impl AbsorptionOptions {
    /// Checks the settings: a tolerance in (0, 1), a restart length in 1..=[`MAX_RESTART`],
    /// at least one iteration, an aggregate size of 0 or at least [`MIN_AGGREGATE_SIZE`]. The
    /// error names the setting, its value and what is allowed.
    pub fn validate(&self) -> Result<(), AbsorptionError> {
        let bad = |name: &'static str, value: String, expected: &'static str| {
            Err(AbsorptionError::InvalidOption {
                name,
                value,
                expected,
            })
        };
        if !(self.tol.is_finite() && self.tol > 0.0 && self.tol < 1.0) {
            return bad("tol", self.tol.to_string(), "a number in (0, 1)");
        }
        if !(1..=MAX_RESTART).contains(&self.restart) {
            return bad(
                "restart",
                self.restart.to_string(),
                "an integer in 1..=1000",
            );
        }
        if self.max_iter == 0 {
            return bad("max_iter", "0".into(), "at least 1");
        }
        if self.aggregate_size != 0 && self.aggregate_size < MIN_AGGREGATE_SIZE {
            return bad(
                "aggregate_size",
                self.aggregate_size.to_string(),
                "0 (no coarse correction) or at least 8",
            );
        }
        Ok(())
    }
}

/// A sparse LU factorisation of `I − Q` (shared with the systems it preconditions).
struct LuFactor {
    matrix: SparseColMat<usize, f64>,
    symbolic: SymbolicLu<usize>,
    numeric: NumericLu<usize, f64>,
}

impl LuFactor {
    /// Factorises the `n × n` matrix given by `trip` (sequentially: the same bits at any
    /// thread count).
    fn new(n: usize, trip: &[Triplet<usize, usize, f64>]) -> Result<Self, FactorisationFailure> {
        let matrix = SparseColMat::<usize, f64>::try_new_from_triplets(n, n, trip)?;
        let symbolic = factorize_symbolic_lu(matrix.symbolic(), Default::default())
            .map_err(FactorisationFailure::Faer)?;
        let mut numeric = NumericLu::new();
        let mut mem = MemBuffer::try_new(
            symbolic.factorize_numeric_lu_scratch::<f64>(LU_PAR, Default::default()),
        )
        .map_err(|_| FactorisationFailure::Faer(FaerError::OutOfMemory))?;
        symbolic.factorize_numeric_lu(
            &mut numeric,
            matrix.as_ref(),
            LU_PAR,
            MemStack::new(&mut mem),
            Default::default(),
        )?;
        Ok(Self {
            matrix,
            symbolic,
            numeric,
        })
    }

    /// Solves `(I − Q) X = B` in place.
    fn solve_in_place(&self, x: faer::MatMut<'_, f64>) -> Result<(), AbsorptionError> {
        let mut mem = MemBuffer::try_new(
            self.symbolic
                .solve_in_place_scratch::<f64>(x.ncols(), LU_PAR),
        )
        .map_err(|_| AbsorptionError::Factorisation {
            solver: LU,
            size: self.matrix.nrows(),
            reason: FactorisationFailure::Faer(FaerError::OutOfMemory),
        })?;
        LuRef::new_unchecked(&self.symbolic, &self.numeric).solve_in_place_with_conj(
            Conj::No,
            x,
            LU_PAR,
            MemStack::new(&mut mem),
        );
        Ok(())
    }
}

impl crate::coarse::CoarseSolve for LuFactor {
    fn solve_coarse(&self, c: &mut [f64], k: usize) {
        let m = c.len() / k.max(1);
        let mut x = Mat::<f64>::from_fn(m, k, |i, q| c[i * k + q]);
        // Out of memory for the scratch: no coarse correction (GMRES then converges more
        // slowly or reports that it did not).
        if self.solve_in_place(x.as_mut()).is_ok() {
            for i in 0..m {
                for q in 0..k {
                    c[i * k + q] = x[(i, q)];
                }
            }
        } else {
            c.iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// Inner iterations per right-hand side beyond which GMRES with ILU(0) alone is judged too
/// slow, as projected from the rate of its first cycle, and continues with the coarse
/// correction (the real 1M-cell demo chain needs 60–74; strongly metastable chains hundreds).
pub const STALL_ITERATIONS: usize = 100;

/// Iteration of GMRES's first cycle at which its rate (over the last [`STALL_WINDOW`]
/// iterations) is projected against [`STALL_ITERATIONS`]: a stalled right-hand side switches
/// to the coarse correction there instead of finishing the cycle with ILU(0) alone. Measured
/// at 1M cells: the real demo chain stagnates near 0.5 for 20 iterations, then gains about
/// two digits every 5 (converged in 50), while the synthetic metastable graphs lose a
/// factor ~1.3 every 5 all along; an earlier probe would misjudge the first.
pub const STALL_PROBE: usize = 30;

/// See [`STALL_PROBE`].
pub const STALL_WINDOW: usize = 5;

/// Target normwise backward error at which the fate probabilities' GMRES may stop (see
/// `TransientSystem::solve_fates`): a tenth of [`RESIDUAL_TOL`].
pub const BACKWARD_STOP: f64 = 1e-11;

/// ILU(0) with the aggregation coarse correction for `a` (see `crate::coarse`); `None` if the
/// coarse system cannot be factorised.
fn two_level(
    a: &Arc<cellfate_kernels::Csr>,
    ilu: &Arc<crate::iterative::Ilu0>,
    size: usize,
) -> Option<Pre> {
    let nt = a.nrows();
    // At most MAX_AGGREGATES aggregates: the coarse LU's cost grows faster than the number
    // of aggregates (at 1M cells, 3,794 aggregates of 256 took 1.6 s, 1,890 of 512 0.1 s,
    // for about the same iterations).
    let size = size.max(nt.div_ceil(crate::coarse::MAX_AGGREGATES));
    let (agg, m) = crate::coarse::aggregate(a, size);
    let trip: Vec<Triplet<usize, usize, f64>> = crate::coarse::galerkin(a, &agg, m)
        .into_iter()
        .map(|(i, j, v)| Triplet::new(i, j, v))
        .collect();
    let lu = LuFactor::new(m, &trip).ok()?;
    let two = crate::coarse::TwoLevel::new(Arc::clone(a), Arc::clone(ilu), agg, m, lu);
    Some(Pre::TwoLevel(Arc::new(two)))
}

/// GMRES's preconditioner: the system's own ILU(0) (with a coarse correction), or the factorisation of a nearby system
/// (an unperturbed chain, for its perturbations).
#[derive(Clone)]
enum Pre {
    Ilu(Arc<crate::iterative::Ilu0>),
    TwoLevel(Arc<crate::coarse::TwoLevel<LuFactor>>),
    Lu(Arc<LuFactor>),
}

impl crate::iterative::Preconditioner for Pre {
    fn apply_many(&self, x: &mut [f64], k: usize) {
        match self {
            Self::Ilu(ilu) => ilu.apply_many(x, k),
            Self::TwoLevel(p) => p.apply_many(x, k),
            Self::Lu(_) => crate::iterative::apply_each(self, x, k),
        }
    }

    fn apply(&self, x: &mut [f64]) {
        match self {
            Self::Ilu(ilu) => ilu.apply(x),
            Self::TwoLevel(p) => p.apply(x),
            Self::Lu(lu) => {
                let mut m = Mat::<f64>::from_fn(x.len(), 1, |i, _| x[i]);
                // Out of memory for the scratch: leave `x` as it is (no preconditioning);
                // GMRES then converges more slowly or reports that it did not.
                if lu.solve_in_place(m.as_mut()).is_ok() {
                    x.iter_mut().enumerate().for_each(|(i, v)| *v = m[(i, 0)]);
                }
            }
        }
    }
}

enum Backend {
    Lu(Arc<LuFactor>),
    Gmres {
        /// `I − Q` in the solver's order (`order[new] = old`, or the transient order).
        a: Arc<cellfate_kernels::Csr>,
        pre: Pre,
        order: Option<Arc<Vec<usize>>>,
        tol: f64,
        restart: usize,
        max_iter: usize,
        /// Cells per aggregate of the coarse correction (0: none).
        aggregate_size: usize,
        /// ILU(0) with the coarse correction, built when ILU(0) alone stalls (`None`: its
        /// construction failed, ILU(0) alone continues).
        coarse: Arc<OnceLock<Option<Pre>>>,
    },
}

/// `x` in the solver's order: `out[new] = x[order[new]]`.
fn to_solver_order(order: Option<&[usize]>, x: Vec<f64>) -> Vec<f64> {
    match order {
        Some(order) => order.iter().map(|&old| x[old]).collect(),
        None => x,
    }
}

/// The inverse of [`to_solver_order`].
fn from_solver_order(order: Option<&[usize]>, x: Vec<f64>) -> Vec<f64> {
    match order {
        Some(order) => {
            let mut out = vec![0.0; x.len()];
            for (&old, v) in order.iter().zip(x) {
                out[old] = v;
            }
            out
        }
        None => x,
    }
}

/// What [`TransientSystem::assemble`] builds: the index maps, `I − Q` (CSR, sorted rows), `S`
/// and `‖I − Q‖_∞`.
struct Assembled {
    transient: Vec<usize>,
    position: Vec<usize>,
    reaches: Vec<Vec<bool>>,
    a: cellfate_kernels::Csr,
    s: Mat<f64>,
    a_norm: f64,
}

/// The factorised transient system `I − Q` with its index maps.
pub struct TransientSystem {
    /// Transient cells (increasing).
    pub transient: Vec<usize>,
    /// Position of each cell in `transient`, `usize::MAX` for absorbing cells.
    pub position: Vec<usize>,
    /// Lineage of each absorbing cell.
    pub lineage: Vec<Option<usize>>,
    /// Number of lineages.
    pub n_lineages: usize,
    /// Per lineage, whether each transient cell (by position) can reach it.
    reaches: Vec<Vec<bool>>,
    backend: Backend,
    /// Which solver was chosen (`sparse LU (faer)` or `GMRES + ILU(0)`; see
    /// [`coarse_correction_used`](Self::coarse_correction_used)).
    pub solver: &'static str,
    /// `S`: transient × lineage one-step absorption probabilities (column-major).
    pub s: Mat<f64>,
    /// `‖I − Q‖_∞` (at most 2).
    a_norm: f64,
}

impl std::fmt::Debug for TransientSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransientSystem")
            .field("transient", &self.transient.len())
            .field("n_lineages", &self.n_lineages)
            .finish()
    }
}

impl TransientSystem {
    /// Builds and factorises `I − Q` for terminal states `terminal` (lineage index per cell).
    pub fn new(
        t: &TransitionMatrix,
        terminal: &[Option<usize>],
        names: &[String],
        opts: &AbsorptionOptions,
    ) -> Result<Self, AbsorptionError> {
        opts.validate()?;
        let Assembled {
            transient,
            position,
            reaches,
            a,
            s,
            a_norm,
        } = Self::assemble(t, terminal, names)?;
        let nt = transient.len();
        let l = names.len();
        let direct = match opts.solver {
            Solver::Direct => true,
            Solver::Gmres => false,
            Solver::Auto => nt <= opts.direct_max_cells,
        };
        let failed = |solver: &'static str| {
            move |reason: FactorisationFailure| AbsorptionError::Factorisation {
                solver,
                size: nt,
                reason,
            }
        };
        let (backend, solver) = if direct {
            let trip = csr_to_triplets(&a);
            drop(a);
            (
                Backend::Lu(Arc::new(LuFactor::new(nt, &trip).map_err(failed(LU))?)),
                LU,
            )
        } else {
            let gmres_failed = failed(GMRES);
            // Reverse Cuthill–McKee order: the products and ILU's triangular solves then
            // gather from a narrow window of memory instead of all of it (on kNN chains whose
            // cells are not in graph order, as after most pipelines).
            let order = crate::graph::bandwidth_order(&a);
            let a = a.submatrix(&order, &order);
            let ilu = crate::iterative::Ilu0::new(&a).map_err(|e| {
                gmres_failed(
                    match e {
                        IluError::MissingDiagonal { row } => {
                            IluError::MissingDiagonal { row: order[row] }
                        }
                        IluError::ZeroPivot { row } => IluError::ZeroPivot { row: order[row] },
                    }
                    .into(),
                )
            })?;
            let a = Arc::new(a);
            let ilu = Arc::new(ilu);
            let (pre, solver) = (Pre::Ilu(ilu), GMRES);
            (
                Backend::Gmres {
                    a,
                    pre,
                    order: Some(Arc::new(order)),
                    tol: opts.tol,
                    restart: opts.restart,
                    max_iter: opts.max_iter,
                    aggregate_size: opts.aggregate_size,
                    coarse: Arc::new(OnceLock::new()),
                },
                solver,
            )
        };
        Ok(Self {
            transient,
            position,
            lineage: terminal.to_vec(),
            n_lineages: l,
            reaches,
            backend,
            solver,
            s,
            a_norm,
        })
    }

    /// The system of a chain close to `base`'s (a perturbation of it, with the same terminal
    /// cells), solved by GMRES preconditioned by `base`'s factorisation instead of a
    /// factorisation of its own: when the chains differ little, a few iterations converge.
    /// At most `max_iter` inner iterations per right-hand side (then the solve reports that
    /// it did not converge). An error when the terminal cells differ from `base`'s.
    pub fn near(
        t: &TransitionMatrix,
        terminal: &[Option<usize>],
        names: &[String],
        opts: &AbsorptionOptions,
        base: &TransientSystem,
        max_iter: usize,
    ) -> Result<Self, AbsorptionError> {
        opts.validate()?;
        let Assembled {
            transient,
            position,
            reaches,
            a,
            s,
            a_norm,
        } = Self::assemble(t, terminal, names)?;
        let nt = transient.len();
        if transient != base.transient || names.len() != base.n_lineages {
            return Err(AbsorptionError::Factorisation {
                solver: NEAR,
                size: nt,
                reason: FactorisationFailure::NotNearby,
            });
        }

        let (pre, order) = match &base.backend {
            Backend::Lu(lu) => (Pre::Lu(Arc::clone(lu)), None),
            Backend::Gmres { pre, order, .. } => (pre.clone(), order.clone()),
        };
        // In the order of the base's preconditioner.
        let a = Arc::new(match &order {
            Some(order) => a.submatrix(order, order),
            None => a,
        });
        Ok(Self {
            transient,
            position,
            lineage: terminal.to_vec(),
            n_lineages: names.len(),
            reaches,
            backend: Backend::Gmres {
                a,
                pre,
                order,
                tol: opts.tol,
                restart: opts.restart,
                max_iter,
                // The base's preconditioner as it is (a nearby system converges in a few
                // iterations).
                aggregate_size: 0,
                coarse: Arc::new(OnceLock::new()),
            },
            solver: NEAR,
            s,
            a_norm,
        })
    }

    /// Checks the terminal labels and reachability and builds `I − Q` and `S`.
    fn assemble(
        t: &TransitionMatrix,
        terminal: &[Option<usize>],
        names: &[String],
    ) -> Result<Assembled, AbsorptionError> {
        let n = t.n_cells();
        if terminal.len() != n {
            return Err(AbsorptionError::LabelCount {
                labels: terminal.len(),
                cells: n,
            });
        }
        let l = names.len();
        if l == 0 || terminal.iter().all(Option::is_none) {
            return Err(AbsorptionError::NoTerminalStates);
        }
        for (j, name) in names.iter().enumerate() {
            if !terminal.contains(&Some(j)) {
                return Err(AbsorptionError::EmptyState {
                    name: name.clone(),
                    lineage: j,
                });
            }
        }
        if let Some((cell, &label)) = terminal
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.as_ref().filter(|&&j| j >= l).map(|j| (i, j)))
        {
            return Err(AbsorptionError::LabelOutOfRange {
                label,
                cell,
                n_states: l,
            });
        }
        let transient: Vec<usize> = (0..n).filter(|&i| terminal[i].is_none()).collect();
        if transient.is_empty() {
            return Err(AbsorptionError::NoTransient);
        }

        let mut position = vec![usize::MAX; n];
        for (p, &i) in transient.iter().enumerate() {
            position[i] = p;
        }
        // Reachability, per lineage: a transient cell that cannot reach lineage `j` has fate
        // probability exactly 0 towards it (set so after the solve, whatever the solver's
        // rounding: the conditional absorption times rely on it).
        let found = lineage_reach(t.as_csr(), terminal, l);
        let reach: Vec<bool> = (0..n)
            .map(|i| terminal[i].is_none() && found.of(i).iter().any(|&w| w != 0))
            .collect();
        let reaches: Vec<Vec<bool>> = (0..l)
            .map(|j| {
                transient
                    .iter()
                    .map(|&i| (found.of(i)[j / 64] >> (j % 64)) & 1 == 1)
                    .collect()
            })
            .collect();
        drop(found);
        let unreachable: Vec<usize> = transient.iter().copied().filter(|&i| !reach[i]).collect();
        if let Some(&example) = unreachable.first() {
            return Err(AbsorptionError::Unreachable {
                count: unreachable.len(),
                transient: transient.len(),
                example,
            });
        }
        let nt = transient.len();
        // Rows of I − Q in blocks of transient rows, in parallel: the transient columns of a
        // row stay in increasing order (positions grow with the cell index), the diagonal
        // is put in its place, so the matrix is built sorted without triplets.
        struct Part {
            indices: Vec<u32>,
            data: Vec<f64>,
            lens: Vec<usize>,
            absorbed: Vec<(usize, usize, f64)>,
            a_norm: f64,
        }
        let parts: Vec<Part> = transient
            .par_chunks(ASSEMBLY_ROWS)
            .enumerate()
            .map(|(chunk, rows)| {
                let mut part = Part {
                    indices: Vec::new(),
                    data: Vec::new(),
                    lens: Vec::with_capacity(rows.len()),
                    absorbed: Vec::new(),
                    a_norm: 0.0,
                };
                for (r, &i) in rows.iter().enumerate() {
                    let p = chunk * ASSEMBLY_ROWS + r;
                    let (cols, vals) = t.row(i);
                    // The diagonal 1 − P_ii is computed as the mass leaving the cell,
                    // Σ_{c≠i} P_ic (the GTH trick): no cancellation when P_ii is close to 1,
                    // and (I − Q)·1 = S·1 holds to rounding in the stored system, so the row
                    // sums of the solution are not polluted by P's own row-sum rounding times
                    // the absorption time.
                    let mut diag = 0.0;
                    let mut off = 0.0;
                    let start = part.indices.len();
                    let mut diag_at = None;
                    for (&c, &v) in cols.iter().zip(vals) {
                        let c = c as usize;
                        if c != i {
                            diag += v;
                        }
                        if c > i && diag_at.is_none() {
                            diag_at = Some(part.indices.len());
                            part.indices.push(p as u32);
                            part.data.push(0.0);
                        }
                        match terminal[c] {
                            Some(j) => part.absorbed.push((p, j, v)),
                            None if c == i => {
                                diag_at = Some(part.indices.len());
                                part.indices.push(p as u32);
                                part.data.push(0.0);
                            }
                            None => {
                                off += v.abs();
                                part.indices.push(position[c] as u32);
                                part.data.push(-v);
                            }
                        }
                    }
                    let at = match diag_at {
                        Some(at) => at,
                        None => {
                            part.indices.push(p as u32);
                            part.data.push(0.0);
                            part.indices.len() - 1
                        }
                    };
                    part.data[at] = diag;
                    part.a_norm = part.a_norm.max(diag.abs() + off);
                    part.lens.push(part.indices.len() - start);
                }
                part
            })
            .collect();
        let nnz: usize = parts.iter().map(|p| p.indices.len()).sum();
        let mut indptr = Vec::with_capacity(nt + 1);
        indptr.push(0usize);
        let mut indices = Vec::with_capacity(nnz);
        let mut data = Vec::with_capacity(nnz);
        let mut s = Mat::<f64>::zeros(nt, l);
        let mut a_norm: f64 = 0.0;
        for part in parts {
            for len in part.lens {
                indptr.push(indptr.last().copied().unwrap_or(0) + len);
            }
            indices.extend_from_slice(&part.indices);
            data.extend_from_slice(&part.data);
            for (p, j, v) in part.absorbed {
                s[(p, j)] += v;
            }
            a_norm = a_norm.max(part.a_norm);
        }
        let a = cellfate_kernels::Csr::try_new(nt, nt, indptr, indices, data).map_err(|e| {
            AbsorptionError::Factorisation {
                solver: "assembly of I − Q",
                size: nt,
                reason: e.into(),
            }
        })?;
        Ok(Assembled {
            transient,
            position,
            reaches,
            a,
            s,
            a_norm,
        })
    }

    /// `(I − Q) X`.
    fn apply(&self, x: &Mat<f64>) -> Mat<f64> {
        match &self.backend {
            Backend::Lu(lu) => &lu.matrix * x,
            Backend::Gmres { a, order, .. } => {
                let order = order.as_deref().map(Vec::as_slice);
                let mut out = Mat::<f64>::zeros(x.nrows(), x.ncols());
                for j in 0..x.ncols() {
                    let col = (0..x.nrows()).map(|i| x[(i, j)]).collect();
                    let col = to_solver_order(order, col);
                    let ax = from_solver_order(order, a.mul_vec(&col));
                    for (i, v) in ax.into_iter().enumerate() {
                        out[(i, j)] = v;
                    }
                }
                out
            }
        }
    }

    /// Normwise backward error of `X` for `(I − Q) X = B` given the residual `R`.
    fn backward_error(&self, r: &Mat<f64>, x: &Mat<f64>, b: &Mat<f64>) -> f64 {
        max_abs(r) / (self.a_norm * max_abs(x) + max_abs(b)).max(f64::MIN_POSITIVE)
    }

    /// Whether GMRES has needed (and built) the coarse correction so far.
    pub fn coarse_correction_used(&self) -> bool {
        match &self.backend {
            Backend::Gmres { coarse, .. } => matches!(coarse.get(), Some(Some(_))),
            Backend::Lu(_) => false,
        }
    }

    /// Solves `(I − Q) X = B` and checks the normwise backward error (≤ [`RESIDUAL_TOL`]).
    pub fn solve(&self, b: &Mat<f64>) -> Result<Mat<f64>, AbsorptionError> {
        self.solve_from(b, None)
    }

    /// [`solve`](Self::solve) from a starting guess `x0` (a nearby system's solution);
    /// GMRES continues from it, to the same residual as from zero (the LU ignores it).
    pub fn solve_from(
        &self,
        b: &Mat<f64>,
        x0: Option<&Mat<f64>>,
    ) -> Result<Mat<f64>, AbsorptionError> {
        self.solve_checked(b, x0, false)
    }

    /// [`solve_from`](Self::solve_from) for fate probabilities, whose entries lie in
    /// `[0, 1]`: GMRES may also stop once a column's normwise backward error is below
    /// [`BACKWARD_STOP`] (a tenth of the check's [`RESIDUAL_TOL`]), which its relative
    /// tolerance on `‖S‖₂` (small: `S` is non-zero only next to terminal cells) overshoots by
    /// orders of magnitude. Not for absorption times: a conditional mean divides by a fate
    /// probability that may be tiny, so it needs each entry's relative accuracy, which a
    /// normwise criterion does not give.
    fn solve_fates(
        &self,
        b: &Mat<f64>,
        x0: Option<&Mat<f64>>,
    ) -> Result<Mat<f64>, AbsorptionError> {
        self.solve_checked(b, x0, true)
    }

    fn solve_checked(
        &self,
        b: &Mat<f64>,
        x0: Option<&Mat<f64>>,
        backward: bool,
    ) -> Result<Mat<f64>, AbsorptionError> {
        let mut x = self.solve_unchecked(b, x0, None, backward)?;
        let mut r = self.apply(&x) - b;
        // Iterative refinement (up to 3 steps) when an ill-conditioned system misses the
        // check: the correction is solved from the residual with the same factorisation (or
        // GMRES to 1e-6).
        for _ in 0..3 {
            let eta = self.backward_error(&r, &x, b);
            if eta.is_nan() || eta <= RESIDUAL_TOL {
                break;
            }
            let neg = Mat::<f64>::zeros(r.nrows(), r.ncols()) - &r;
            match self.solve_unchecked(&neg, None, Some(1e-6), false) {
                Ok(d) => x += d,
                Err(_) => break,
            }
            r = self.apply(&x) - b;
        }
        let residual = self.backward_error(&r, &x, b);
        if residual.is_nan() || residual > RESIDUAL_TOL {
            return Err(AbsorptionError::Residual {
                residual,
                tol: RESIDUAL_TOL,
            });
        }
        Ok(x)
    }

    /// Solves `(I − Q) X = B` without the residual check (GMRES convergence to `tol`, or the
    /// configured tolerance, is still required), GMRES from `x0` when given and, with
    /// `backward`, with the backward-error stop of [`solve_fates`](Self::solve_fates).
    fn solve_unchecked(
        &self,
        b: &Mat<f64>,
        x0: Option<&Mat<f64>>,
        tol_override: Option<f64>,
        backward: bool,
    ) -> Result<Mat<f64>, AbsorptionError> {
        let x = match &self.backend {
            Backend::Lu(lu) => {
                let mut x = b.to_owned();
                lu.solve_in_place(x.as_mut())?;
                x
            }
            Backend::Gmres {
                a,
                pre,
                order,
                tol,
                restart,
                max_iter,
                aggregate_size,
                coarse,
            } => {
                use crate::iterative::{gmres_many_with, BackwardStop, GmresOptions, StallProbe};
                let order = order.as_deref().map(Vec::as_slice);
                let columns = |m: &Mat<f64>| -> Vec<Vec<f64>> {
                    (0..m.ncols())
                        .map(|j| {
                            let col = (0..m.nrows()).map(|i| m[(i, j)]).collect();
                            to_solver_order(order, col)
                        })
                        .collect()
                };
                // All right-hand sides at once (each with the bits of its own solve); the
                // first failure in column order is reported.
                let cols = columns(b);
                let refs: Vec<&[f64]> = cols.iter().map(Vec::as_slice).collect();
                let tol = tol_override.unwrap_or(*tol);
                let backward = backward.then_some(BackwardStop {
                    eta: BACKWARD_STOP,
                    a_norm: self.a_norm,
                });
                // ILU(0) alone for one cycle, ended early where the stall probe projects
                // more than STALL_ITERATIONS iterations; the right-hand sides it has not
                // solved then continue from their iterate, with the coarse correction when
                // the probe fired or that cycle's rate projects more than STALL_ITERATIONS
                // (the same as GMRES's own restart otherwise).
                let first = if *aggregate_size > 0 {
                    (*max_iter).min((*restart).min(STALL_ITERATIONS))
                } else {
                    *max_iter
                };
                let opts = GmresOptions {
                    tol,
                    backward,
                    restart: *restart,
                    max_iter: first,
                    stall: (*aggregate_size > 0).then_some(StallProbe {
                        at: STALL_PROBE,
                        window: STALL_WINDOW,
                        projected: STALL_ITERATIONS,
                    }),
                };
                let mut solved = gmres_many_with(a, pre, &refs, x0.map(columns), &opts);
                let stalled: Vec<usize> = (0..solved.len())
                    .filter(|&q| !solved[q].1.converged)
                    .collect();
                if !stalled.is_empty() && first < *max_iter {
                    let slow = stalled.iter().any(|&q| {
                        let rep = &solved[q].1;
                        // Iterations to reach tol at the first cycle's rate.
                        let projected = rep.iterations as f64 * tol.ln() / rep.residual.ln();
                        rep.stalled || !(rep.residual < 1.0 && projected <= STALL_ITERATIONS as f64)
                    });
                    let two = if slow {
                        coarse
                            .get_or_init(|| match pre {
                                Pre::Ilu(ilu) => two_level(a, ilu, *aggregate_size),
                                _ => None,
                            })
                            .as_ref()
                            .unwrap_or(pre)
                    } else {
                        pre
                    };
                    let xs: Vec<Vec<f64>> = stalled
                        .iter()
                        .map(|&q| std::mem::take(&mut solved[q].0))
                        .collect();
                    let brefs: Vec<&[f64]> = stalled.iter().map(|&q| refs[q]).collect();
                    let opts = GmresOptions {
                        max_iter: *max_iter - first,
                        stall: None,
                        ..opts
                    };
                    let more = gmres_many_with(a, two, &brefs, Some(xs), &opts);
                    for (&q, (x, rep)) in stalled.iter().zip(more) {
                        let iterations = solved[q].1.iterations + rep.iterations;
                        solved[q] = (x, crate::iterative::GmresReport { iterations, ..rep });
                    }
                }
                drop(cols);
                let solved = solved
                    .into_iter()
                    .map(|(xs, rep)| (from_solver_order(order, xs), rep));
                let mut x = Mat::<f64>::zeros(b.nrows(), b.ncols());
                for (j, (xs, rep)) in solved.into_iter().enumerate() {
                    if !rep.converged {
                        return Err(AbsorptionError::NotConverged {
                            residual: rep.residual,
                            iterations: rep.iterations,
                        });
                    }
                    for (i, v) in xs.into_iter().enumerate() {
                        x[(i, j)] = v;
                    }
                }
                x
            }
        };
        Ok(x)
    }
}

fn max_abs(m: &Mat<f64>) -> f64 {
    let mut out: f64 = 0.0;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            out = out.max(m[(i, j)].abs());
        }
    }
    out
}

/// Fate probabilities (n × L, row-major) and what was checked.
#[derive(Clone, Debug, PartialEq)]
pub struct FateProbabilities {
    /// Lineage names.
    pub names: Vec<String>,
    /// Row-major n × L probabilities; rows sum to 1, terminal cells one-hot.
    pub probs: Vec<f64>,
    /// Normwise backward error of the solve, `‖(I−Q)B − S‖ / (‖I−Q‖ ‖B‖ + ‖S‖)`.
    pub residual: f64,
    /// Largest |row sum − 1| (or negative entry) before any clipping.
    pub row_sum_error: f64,
    /// The tolerance it was checked against: [`ROW_SUM_TOL`], or more when the conditioning
    /// explains a larger deviation (see [`conditioned_row_sum_tol`]).
    pub row_sum_tol: f64,
    /// `‖(I − Q)⁻¹‖_∞`, the largest expected number of steps to absorption, when it was
    /// needed to judge the row sums (they missed [`ROW_SUM_TOL`]).
    pub max_absorption_time: Option<f64>,
    /// Solver used.
    pub solver: &'static str,
}

impl FateProbabilities {
    /// Number of lineages.
    pub fn n_lineages(&self) -> usize {
        self.names.len()
    }

    /// Probability of cell `i` for lineage `j`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.probs[i * self.names.len() + j]
    }

    /// Column `j`.
    pub fn column(&self, j: usize) -> Vec<f64> {
        let l = self.names.len();
        (0..self.probs.len() / l)
            .map(|i| self.probs[i * l + j])
            .collect()
    }
}

/// Computes fate probabilities towards each terminal state.
pub fn compute_fate_probabilities(
    t: &TransitionMatrix,
    terminal: &[Option<usize>],
    names: &[String],
    opts: &AbsorptionOptions,
) -> Result<(FateProbabilities, TransientSystem), AbsorptionError> {
    let sys = TransientSystem::new(t, terminal, names, opts)?;
    fates_of_system(sys, t, terminal, names, None)
}

/// Inner iterations per lineage allowed to a nearby solve before it falls back to a
/// factorisation of its own.
pub const NEAR_MAX_ITER: usize = 300;

/// [`compute_fate_probabilities`] for a chain close to one already solved — a perturbation of
/// it with the same terminal states (in-silico perturbations, screens): GMRES preconditioned
/// by `base`'s factorisation, started from `start` (`base`'s fate probabilities), instead of a
/// new factorisation. The result passes the same residual and row-sum checks. When the
/// nearby solve does not converge within [`NEAR_MAX_ITER`] iterations per lineage (the chains
/// differ too much) or the terminal cells differ, the chain is factorised as usual; `solver`
/// of the result says which ([`NEAR`] for the nearby solve).
pub fn compute_fate_probabilities_near(
    t: &TransitionMatrix,
    terminal: &[Option<usize>],
    names: &[String],
    opts: &AbsorptionOptions,
    base: &TransientSystem,
    start: &FateProbabilities,
) -> Result<(FateProbabilities, TransientSystem), AbsorptionError> {
    let l = names.len();
    let near = if start.probs.len() == t.n_cells() * l && start.names == names {
        TransientSystem::near(t, terminal, names, opts, base, NEAR_MAX_ITER).and_then(|sys| {
            let x0 = Mat::<f64>::from_fn(sys.transient.len(), l, |p, j| {
                start.probs[sys.transient[p] * l + j]
            });
            fates_of_system(sys, t, terminal, names, Some(&x0))
        })
    } else {
        Err(AbsorptionError::NoTerminalStates)
    };
    match near {
        Ok(out) => Ok(out),
        Err(_) => compute_fate_probabilities(t, terminal, names, opts),
    }
}

/// The lineage whose fate probabilities an iterative solve derives from the others' instead
/// of solving for them (see [`solve_derived`]): the one with the largest one-step absorption
/// mass (its column of `B` is the largest, so `1 − Σ` loses the fewest digits to
/// cancellation), first by index on ties. `None` for the direct solver (one factorisation
/// solves all columns at about the cost of one) and for a single lineage.
fn derived_lineage(sys: &TransientSystem) -> Option<usize> {
    if !matches!(sys.backend, Backend::Gmres { .. }) || sys.n_lineages < 2 {
        return None;
    }
    let mass = |j: usize| (0..sys.s.nrows()).map(|p| sys.s[(p, j)]).sum::<f64>();
    (0..sys.n_lineages)
        .map(|j| (j, mass(j)))
        .fold(None, |best: Option<(usize, f64)>, (j, m)| match best {
            Some((_, bm)) if bm >= m => best,
            _ => Some((j, m)),
        })
        .map(|(j, _)| j)
}

/// The fate probabilities from `L − 1` iterative solves: `I − Q` is nonsingular (checked when
/// the system was built), so absorption is certain from every transient cell, every row of
/// `B` sums to 1, and column `d` is `1 − Σ` of the others (`(I − Q) 1 = S 1` for a
/// row-stochastic chain, so its residual is minus the sum of theirs, plus the chain's row-sum
/// error). Its backward error is computed like the solved columns'; where it misses
/// [`RESIDUAL_TOL`] (a chain whose rows sum to 1 only within the validation's tolerance, or a
/// rarely reached lineage), column `d` is solved too, from the derived values (then the flag
/// returned is `true`).
fn solve_derived(sys: &TransientSystem, d: usize) -> Result<(Mat<f64>, bool), AbsorptionError> {
    let l = sys.n_lineages;
    let nt = sys.s.nrows();
    let others: Vec<usize> = (0..l).filter(|&j| j != d).collect();
    let s_others = Mat::<f64>::from_fn(nt, l - 1, |p, k| sys.s[(p, others[k])]);
    let x = sys.solve_fates(&s_others, None)?;
    let mut b = Mat::<f64>::zeros(nt, l);
    for p in 0..nt {
        let mut sum = 0.0;
        for (k, &j) in others.iter().enumerate() {
            b[(p, j)] = x[(p, k)];
            sum += x[(p, k)];
        }
        b[(p, d)] = 1.0 - sum;
    }
    let bd = Mat::<f64>::from_fn(nt, 1, |p, _| b[(p, d)]);
    let sd = Mat::<f64>::from_fn(nt, 1, |p, _| sys.s[(p, d)]);
    let r = sys.apply(&bd) - &sd;
    let eta = sys.backward_error(&r, &bd, &sd);
    let solved = eta.is_nan() || eta > RESIDUAL_TOL;
    if solved {
        let xd = sys.solve_fates(&sd, Some(&bd))?;
        for p in 0..nt {
            b[(p, d)] = xd[(p, 0)];
        }
    }
    Ok((b, solved))
}

/// Solves `sys` for the fate probabilities (from `x0` when given) and checks them.
fn fates_of_system(
    sys: TransientSystem,
    t: &TransitionMatrix,
    terminal: &[Option<usize>],
    names: &[String],
    x0: Option<&Mat<f64>>,
) -> Result<(FateProbabilities, TransientSystem), AbsorptionError> {
    let mut b = match (x0, derived_lineage(&sys)) {
        (None, Some(d)) => solve_derived(&sys, d)?.0,
        _ => sys.solve_fates(&sys.s, x0)?,
    };
    // Rows of B must sum to 1. An iterative solve whose residual passes can still miss that
    // by cond(I − Q) × residual on strongly metastable chains: refine (solve for the
    // correction from the current residual) up to three times.
    if matches!(sys.backend, Backend::Gmres { .. }) {
        for _ in 0..3 {
            let worst = (0..b.nrows())
                .map(|p| ((0..b.ncols()).map(|j| b[(p, j)]).sum::<f64>() - 1.0).abs())
                .fold(0.0f64, f64::max);
            if worst <= 0.1 * ROW_SUM_TOL {
                break;
            }
            let r = &sys.s - sys.apply(&b);
            if max_abs(&r) == 0.0 {
                break;
            }
            // The correction only needs a few digits: each step shrinks the error by the
            // inner tolerance.
            match sys.solve_unchecked(&r, None, Some(1e-6), false) {
                Ok(d) => b += d,
                Err(_) => break,
            }
        }
    }
    // Exact zeros where a lineage cannot be reached (an iterative solve leaves rounding
    // there, of the size of the residual).
    for (j, rj) in sys.reaches.iter().enumerate() {
        for (p, &ok) in rj.iter().enumerate() {
            if !ok {
                b[(p, j)] = 0.0;
            }
        }
    }
    let r = sys.apply(&b) - &sys.s;
    let residual = sys.backward_error(&r, &b, &sys.s);
    let n = t.n_cells();
    let l = names.len();
    let mut probs = vec![0.0; n * l];
    // Largest |row sum − 1| and largest negative entry (before clipping).
    let mut row_sum_error: f64 = 0.0;
    let mut negative: f64 = 0.0;
    for i in 0..n {
        match terminal[i] {
            Some(j) => probs[i * l + j] = 1.0,
            None => {
                let p = sys.position[i];
                let mut sum = 0.0;
                for j in 0..l {
                    let v = b[(p, j)];
                    negative = negative.max(-v);
                    let v = v.max(0.0);
                    probs[i * l + j] = v;
                    sum += v;
                }
                row_sum_error = row_sum_error.max((sum - 1.0).abs());
            }
        }
    }
    let worst = row_sum_error.max(negative);
    let mut row_sum_tol = ROW_SUM_TOL;
    let mut max_absorption_time = None;
    if worst.is_nan() || worst > ROW_SUM_TOL {
        // Is the deviation explained by the conditioning? N = (I − Q)⁻¹ is nonnegative, so
        // ‖N‖_∞ is the largest expected number of steps to absorption, t_max = max(N·1), and a
        // backward-stable solve leaves row sums off by about t_max × ‖I − Q‖_∞ × ε.
        let ones = Mat::<f64>::from_fn(sys.transient.len(), 1, |_, _| 1.0);
        let t_max = sys
            .solve_unchecked(&ones, None, None, false)
            .map(|tv| max_abs(&tv))?;
        max_absorption_time = Some(t_max);
        row_sum_tol = conditioned_row_sum_tol(t_max);
        if worst.is_nan() || worst > row_sum_tol {
            return Err(AbsorptionError::RowSums {
                error: worst,
                tol: row_sum_tol,
                max_absorption_time: t_max,
            });
        }
    }
    Ok((
        FateProbabilities {
            names: names.to_vec(),
            probs,
            residual,
            row_sum_error: worst,
            row_sum_tol,
            max_absorption_time,
            solver: sys.solver,
        },
        sys,
    ))
}

/// Mean (and optionally variance) of the number of steps to absorption, overall and per
/// lineage conditioned on absorption in it: columns `"{name}_mean"`, `"{name}_var"`.
#[derive(Clone, Debug, PartialEq)]
pub struct AbsorptionTimes {
    /// Column names.
    pub columns: Vec<String>,
    /// Row-major n × columns values. Terminal cells of the lineage: 0; of other lineages:
    /// `+inf` (means) / NaN (variances), as in CellRank.
    pub values: Vec<f64>,
}

/// Computes absorption times. With one lineage (or `overall`), the time to absorption
/// anywhere; with several, one conditional mean (and variance) per lineage.
pub fn compute_absorption_times(
    sys: &TransientSystem,
    fates: &FateProbabilities,
    variance: bool,
    overall: bool,
) -> Result<AbsorptionTimes, AbsorptionError> {
    let n = sys.position.len();
    let nt = sys.transient.len();
    let l = sys.n_lineages;
    let ones = Mat::<f64>::from_fn(nt, 1, |_, _| 1.0);
    let mut columns = Vec::new();
    let mut cols_vals: Vec<Vec<f64>> = Vec::new();
    if overall || l == 1 {
        let tvec = sys.solve(&ones)?;
        let name = if l == 1 {
            fates.names[0].clone()
        } else {
            "absorption".into()
        };
        columns.push(format!("{name}_mean"));
        let mut mean = vec![0.0; n];
        for (p, &i) in sys.transient.iter().enumerate() {
            mean[i] = tvec[(p, 0)];
        }
        cols_vals.push(mean);
        if variance {
            let nt_t = sys.solve(&tvec)?;
            let mut var = vec![0.0; n];
            for (p, &i) in sys.transient.iter().enumerate() {
                let t = tvec[(p, 0)];
                var[i] = (2.0 * nt_t[(p, 0)] - t - t * t).max(0.0);
            }
            columns.push(format!("{name}_var"));
            cols_vals.push(var);
        }
    }
    if l > 1 {
        // Conditioned chain for lineage j: Q_j = D_j⁻¹ Q D_j with D_j = diag(B_j);
        // m_j = D_j⁻¹ N B_j and Var_j = 2 D_j⁻¹ N D_j m_j − m_j − m_j².
        let b = Mat::<f64>::from_fn(nt, l, |p, j| fates.get(sys.transient[p], j));
        let nb = sys.solve(&b)?;
        // D_j m_j (zero where B_j is): the variances' right-hand sides, solved together.
        let dm = Mat::<f64>::from_fn(nt, l, |p, j| if b[(p, j)] > 0.0 { nb[(p, j)] } else { 0.0 });
        let ndm = if variance {
            Some(sys.solve(&dm)?)
        } else {
            None
        };
        for j in 0..l {
            let mut mean: Vec<f64> = sys
                .lineage
                .iter()
                .map(|lin| match lin {
                    Some(k) if *k == j => 0.0,
                    Some(_) => f64::INFINITY,
                    None => 0.0,
                })
                .collect();
            for (p, &i) in sys.transient.iter().enumerate() {
                let bj = b[(p, j)];
                mean[i] = if bj > 0.0 {
                    nb[(p, j)] / bj
                } else {
                    f64::INFINITY
                };
            }
            columns.push(format!("{}_mean", fates.names[j]));
            if let Some(ndm) = &ndm {
                let mut var: Vec<f64> = sys
                    .lineage
                    .iter()
                    .map(|lin| match lin {
                        Some(k) if *k == j => 0.0,
                        Some(_) => f64::NAN,
                        None => 0.0,
                    })
                    .collect();
                for (p, &i) in sys.transient.iter().enumerate() {
                    let bj = b[(p, j)];
                    let m = mean[i];
                    var[i] = if bj > 0.0 {
                        (2.0 * ndm[(p, j)] / bj - m - m * m).max(0.0)
                    } else {
                        f64::NAN
                    };
                }
                cols_vals.push(mean);
                columns.push(format!("{}_var", fates.names[j]));
                cols_vals.push(var);
            } else {
                cols_vals.push(mean);
            }
        }
    }
    let c = columns.len();
    let mut values = vec![0.0; n * c];
    for (k, col) in cols_vals.iter().enumerate() {
        for i in 0..n {
            values[i * c + k] = col[i];
        }
    }
    Ok(AbsorptionTimes { columns, values })
}

/// How lineage priming is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrimingMethod {
    /// KL divergence of each cell's fate distribution from the mean over early cells.
    KlDivergence,
    /// `max H − H_i` (Shannon entropy of the fate distribution).
    Entropy,
}

/// Lineage priming degree in `[0, 1]` per cell (CellRank's definitions; NaN rows → 1 before
/// scaling for `kl_divergence`). `early` selects the cells that define the reference
/// distribution (all cells when `None`).
pub fn lineage_priming(
    fates: &FateProbabilities,
    method: PrimingMethod,
    early: Option<&[bool]>,
) -> Result<Vec<f64>, AbsorptionError> {
    let l = fates.n_lineages();
    let n = fates.probs.len() / l;
    if let Some(e) = early.filter(|e| e.len() != n) {
        return Err(AbsorptionError::EarlyMaskLength {
            expected: n,
            got: e.len(),
        });
    }
    let raw: Vec<f64> = match method {
        PrimingMethod::KlDivergence => {
            let sel: Vec<usize> = (0..n).filter(|&i| early.is_none_or(|e| e[i])).collect();
            if sel.is_empty() {
                return Err(AbsorptionError::NoEarlyCells { cells: n });
            }
            let pbar: Vec<f64> = (0..l)
                .map(|j| sel.iter().map(|&i| fates.get(i, j)).sum::<f64>() / sel.len() as f64)
                .collect();
            (0..n)
                .map(|i| {
                    let k: f64 = (0..l)
                        .map(|j| {
                            let p = fates.get(i, j);
                            p * (p / pbar[j]).log2()
                        })
                        .sum();
                    if k.is_nan() {
                        1.0
                    } else if k == f64::INFINITY {
                        f64::MAX
                    } else if k == f64::NEG_INFINITY {
                        f64::MIN
                    } else {
                        k
                    }
                })
                .collect()
        }
        PrimingMethod::Entropy => {
            let h: Vec<f64> = (0..n)
                .map(|i| {
                    let s: f64 = (0..l).map(|j| fates.get(i, j)).sum();
                    -(0..l)
                        .map(|j| fates.get(i, j) / s)
                        .filter(|&p| p > 0.0)
                        .map(|p| p * p.ln())
                        .sum::<f64>()
                })
                .collect();
            let hmax = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            h.iter().map(|x| hmax - x).collect()
        }
    };
    let (lo, hi) = raw
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    Ok(raw.iter().map(|x| (x - lo) / (hi - lo)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellfate_kernels::{Csr, Direction};

    /// The strongly connected components' lineage sets equal a search per lineage along the
    /// forward edges, on a sparse random graph with several components, cells that reach
    /// nothing, zero entries (not edges) and 70 lineages (two words of bits).
    #[test]
    fn lineage_reach_equals_a_search_per_lineage() {
        let n = 3000;
        let l = 70;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |m: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m as u64) as usize
        };
        let terminal: Vec<Option<usize>> = (0..n)
            .map(|i| (i % 23 == 0).then(|| (i / 23) % l))
            .collect();
        let mut trip = Vec::new();
        for i in 0..n {
            // Mostly local edges (chains of components), a few long ones; some zeros.
            for _ in 0..3 {
                let j = if next(10) == 0 {
                    next(n)
                } else {
                    (i + next(40)) % n
                };
                let v = if next(7) == 0 { 0.0 } else { 1.0 };
                trip.push((i, j, v));
            }
        }
        let p = Csr::from_triplets(n, n, &trip).unwrap();
        let found = lineage_reach(&p, &terminal, l);
        for j in 0..l {
            // Cells that reach lineage j: fixpoint of "has a positive edge to a terminal
            // cell of j or to a transient cell that reaches j".
            let mut r = vec![false; n];
            loop {
                let mut changed = false;
                for i in 0..n {
                    if terminal[i].is_some() || r[i] {
                        continue;
                    }
                    let (cols, vals) = p.row(i);
                    if cols.iter().zip(vals).any(|(&c, &v)| {
                        let c = c as usize;
                        v > 0.0
                            && c != i
                            && (terminal[c] == Some(j) || (terminal[c].is_none() && r[c]))
                    }) {
                        r[i] = true;
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
            for i in (0..n).filter(|&i| terminal[i].is_none()) {
                let bit = (found.of(i)[j / 64] >> (j % 64)) & 1 == 1;
                assert_eq!(bit, r[i], "cell {i}, lineage {j}");
            }
        }
        let none = (0..n)
            .filter(|&i| terminal[i].is_none() && found.of(i).iter().all(|&w| w == 0))
            .count();
        let some = (0..n).filter(|&i| terminal[i].is_none()).count() - none;
        assert!(some > 0, "some cells reach a lineage");
    }

    /// Gambler's ruin on 0..=N with p up, q = 1 − p down; 0 and N absorbing.
    fn ruin(nn: usize, p: f64) -> TransitionMatrix {
        lazy_ruin(nn, p, 1.0)
    }

    /// [`ruin`] where an interior state moves only with probability δ (self-loop 1 − δ).
    fn lazy_ruin(nn: usize, p: f64, delta: f64) -> TransitionMatrix {
        let mut trip = vec![(0, 0, 1.0), (nn, nn, 1.0)];
        for i in 1..nn {
            if delta < 1.0 {
                trip.push((i, i, 1.0 - delta));
            }
            trip.push((i, i + 1, delta * p));
            trip.push((i, i - 1, delta * (1.0 - p)));
        }
        TransitionMatrix::try_new(
            Csr::from_triplets(nn + 1, nn + 1, &trip).unwrap(),
            Direction::Forward,
        )
        .unwrap()
    }

    /// Terminal labels (0 = "ruin", N = "win") and names of the gambler's ruin.
    fn ruin_states(nn: usize) -> (Vec<Option<usize>>, Vec<String>) {
        let mut term = vec![None; nn + 1];
        term[0] = Some(0);
        term[nn] = Some(1);
        (term, vec!["ruin".to_string(), "win".to_string()])
    }

    /// P(win from i) = (1 − r^i)/(1 − r^N), r = q/p.
    fn ruin_win(i: usize, nn: usize, p: f64) -> f64 {
        let r = (1.0 - p) / p;
        (1.0 - r.powi(i as i32)) / (1.0 - r.powi(nn as i32))
    }

    /// Expected duration from i: i/(q−p) − N/(q−p) · (1 − r^i)/(1 − r^N).
    fn ruin_duration(i: usize, nn: usize, p: f64) -> f64 {
        let q = 1.0 - p;
        i as f64 / (q - p) - nn as f64 / (q - p) * ruin_win(i, nn, p)
    }

    #[test]
    fn gamblers_ruin_probabilities_and_times() {
        let (nn, p) = (10usize, 0.4);
        let t = ruin(nn, p);
        let (term, names) = ruin_states(nn);
        let (f, sys) =
            compute_fate_probabilities(&t, &term, &names, &AbsorptionOptions::default()).unwrap();
        for i in 0..=nn {
            assert!((f.get(i, 1) - ruin_win(i, nn, p)).abs() < 1e-12, "cell {i}");
            assert!((f.get(i, 0) + f.get(i, 1) - 1.0).abs() < 1e-12);
        }
        let times = compute_absorption_times(&sys, &f, true, true).unwrap();
        let c = times.columns.len();
        assert_eq!(times.columns[0], "absorption_mean");
        for i in 1..nn {
            let d = ruin_duration(i, nn, p);
            assert!(
                (times.values[i * c] - d).abs() < 1e-10,
                "cell {i}: {} vs {d}",
                times.values[i * c]
            );
            assert!(times.values[i * c + 1] >= 0.0);
        }
        // Symmetric walk: conditional on winning from 1, the mean time is (N² − 1)/3.
        let t2 = ruin(nn, 0.5);
        let (f2, s2) =
            compute_fate_probabilities(&t2, &term, &names, &AbsorptionOptions::default()).unwrap();
        let times2 = compute_absorption_times(&s2, &f2, false, false).unwrap();
        let win_col = times2.columns.iter().position(|c| c == "win_mean").unwrap();
        let cc = times2.columns.len();
        let expect = ((nn * nn) as f64 - 1.0) / 3.0;
        assert!(
            (times2.values[cc + win_col] - expect).abs() < 1e-9,
            "{}",
            times2.values[cc + win_col]
        );
        // Variance of the unconditional symmetric duration from 1: known closed form
        // Var = i(N−i)(i² + (N−i)² − 2)/3.
        let tv = compute_absorption_times(&s2, &f2, true, true).unwrap();
        let (i, nf) = (1.0, nn as f64);
        let var = i * (nf - i) * (i * i + (nf - i) * (nf - i) - 2.0) / 3.0;
        assert!(
            (tv.values[tv.columns.len() + 1] - var).abs() < 1e-8,
            "{} vs {var}",
            tv.values[tv.columns.len() + 1]
        );
    }

    #[test]
    fn lazy_chains_keep_full_accuracy() {
        // The gambler's ruin with a self-loop of 1 − δ in every interior state has the same
        // fate probabilities and 1/δ times the absorption times. With δ = 1e-9, 1 − P_ii in
        // floating point loses 9 digits; the diagonal taken as the mass leaving the cell does
        // not, and the solve keeps 1e-12.
        let (nn, p, delta) = (10usize, 0.4, 1e-9);
        let t = lazy_ruin(nn, p, delta);
        let (term, names) = ruin_states(nn);
        let (f, sys) =
            compute_fate_probabilities(&t, &term, &names, &AbsorptionOptions::default()).unwrap();
        for i in 0..=nn {
            assert!((f.get(i, 1) - ruin_win(i, nn, p)).abs() < 1e-12, "cell {i}");
        }
        assert!(f.row_sum_error <= ROW_SUM_TOL && f.max_absorption_time.is_none());
        let times = compute_absorption_times(&sys, &f, false, true).unwrap();
        for i in 1..nn {
            let d = ruin_duration(i, nn, p);
            let got = times.values[i * times.columns.len()];
            assert!(
                (got * delta - d).abs() < 1e-9 * d,
                "cell {i}: {got} vs {d}/δ"
            );
        }
    }

    /// Two transient cells that swap with probability 1 − ε; cell 0 leaves with ε/2 to each of
    /// two absorbing cells. Fates ½, ½; expected absorption time ≈ 2/ε from cell 1.
    fn trap(eps: f64) -> (TransitionMatrix, Vec<Option<usize>>) {
        let trip = vec![
            (0, 1, 1.0 - eps),
            (0, 2, eps / 2.0),
            (0, 3, eps / 2.0),
            (1, 0, 1.0),
            (2, 2, 1.0),
            (3, 3, 1.0),
        ];
        let t =
            TransitionMatrix::try_new(Csr::from_triplets(4, 4, &trip).unwrap(), Direction::Forward)
                .unwrap();
        (t, vec![None, None, Some(0), Some(1)])
    }

    #[test]
    fn row_sums_are_judged_against_the_conditioning() {
        let names = vec!["a".to_string(), "b".to_string()];
        let opts = AbsorptionOptions::default();
        // ε = 1e-8: eliminating the pair computes 1 − fl(1 − ε), which carries a relative
        // error of 5e-9 (an error of the data's representation, not of the solver): above
        // the plain 1e-10, well inside what 2e8 expected steps allow.
        let (t, term) = trap(1e-8);
        let (f, _) = compute_fate_probabilities(&t, &term, &names, &opts).unwrap();
        assert!(f.row_sum_error > ROW_SUM_TOL, "{}", f.row_sum_error);
        let t_max = f.max_absorption_time.expect("conditioning estimated");
        assert!((t_max * 1e-8 / 2.0 - 1.0).abs() < 1e-3, "{t_max}");
        assert_eq!(f.row_sum_tol, conditioned_row_sum_tol(t_max));
        assert!(f.row_sum_tol <= MAX_ROW_SUM_TOL);
        for i in 0..2 {
            for j in 0..2 {
                assert!((f.get(i, j) - 0.5).abs() < 1e-7, "{}", f.get(i, j));
            }
        }
        // ε = 1e-13: the rows are off by 3e-4, which no conditioning excuses.
        let (t, term) = trap(1e-13);
        let e = compute_fate_probabilities(&t, &term, &names, &opts).unwrap_err();
        match e {
            AbsorptionError::RowSums {
                error,
                tol,
                max_absorption_time,
            } => {
                assert!(error > 1e-5 && tol == MAX_ROW_SUM_TOL, "{error} {tol}");
                assert!(max_absorption_time > 1e13, "{max_absorption_time}");
            }
            other => panic!("{other}"),
        }
        // The tolerance itself: 1e-10 up to t_max ≈ 4.5e3, then 100 ε t_max, at most 1e-6.
        assert_eq!(conditioned_row_sum_tol(10.0), ROW_SUM_TOL);
        assert!((conditioned_row_sum_tol(1e7) - 100.0 * f64::EPSILON * 1e7).abs() < 1e-20);
        assert_eq!(conditioned_row_sum_tol(1e20), MAX_ROW_SUM_TOL);
    }

    /// Four metastable blocks of 60 cells; 15 cells of two blocks are the terminal states
    /// `a` and `b`.
    fn metastable_two_states() -> (TransitionMatrix, Vec<Option<usize>>, Vec<String>) {
        let t = crate::schur::tests::metastable_chain(4, 60, 0.01, false, 3);
        let mut term = vec![None; t.n_cells()];
        for i in 0..15 {
            term[180 + i] = Some(0);
            term[60 + i] = Some(1);
        }
        (t, term, vec!["a".to_string(), "b".to_string()])
    }

    #[test]
    fn gmres_agrees_with_the_direct_solver() {
        let (t, term, names) = metastable_two_states();
        let direct = AbsorptionOptions {
            solver: Solver::Direct,
            ..Default::default()
        };
        let (fd, sd) = compute_fate_probabilities(&t, &term, &names, &direct).unwrap();
        let td = compute_absorption_times(&sd, &fd, true, false).unwrap();
        let iterative = AbsorptionOptions {
            solver: Solver::Gmres,
            ..Default::default()
        };
        let (fi, si) = compute_fate_probabilities(&t, &term, &names, &iterative).unwrap();
        assert_eq!(
            (fd.solver, fi.solver),
            ("sparse LU (faer)", "GMRES + ILU(0)")
        );
        let diff = fd
            .probs
            .iter()
            .zip(&fi.probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-9, "{diff}");
        let ti = compute_absorption_times(&si, &fi, true, false).unwrap();
        for (a, b) in td.values.iter().zip(&ti.values) {
            assert!(
                a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{a} vs {b}"
            );
        }
        // A starved iteration budget is a typed error that suggests the direct solver.
        let starved = AbsorptionOptions {
            solver: Solver::Gmres,
            max_iter: 1,
            restart: 1,
            ..Default::default()
        };
        let e = compute_fate_probabilities(&t, &term, &names, &starved).unwrap_err();
        assert!(
            matches!(e, AbsorptionError::NotConverged { .. }) && e.to_string().contains("direct"),
            "{e}"
        );
    }

    #[test]
    fn a_stalled_gmres_continues_with_the_coarse_correction() {
        // A synthetic metastable kNN chain (25 clusters, 6,000 cells), 3 terminal clusters:
        // ILU(0) alone needs hundreds of iterations per right-hand side.
        let t = cellfate_kernels::testing::clustered_knn_chain(6000, 25, 15, 3);
        let mut term = vec![None; 6000];
        for (j, g) in [0usize, 12, 24].into_iter().enumerate() {
            term[g * 240..g * 240 + 40].fill(Some(j));
        }
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let direct = AbsorptionOptions {
            solver: Solver::Direct,
            ..Default::default()
        };
        let (fd, _) = compute_fate_probabilities(&t, &term, &names, &direct).unwrap();
        let mut used = Vec::new();
        for aggregate_size in [256, 0] {
            let opts = AbsorptionOptions {
                solver: Solver::Gmres,
                aggregate_size,
                ..Default::default()
            };
            let (fi, sys) = compute_fate_probabilities(&t, &term, &names, &opts).unwrap();
            used.push(sys.coarse_correction_used());
            let diff = fd
                .probs
                .iter()
                .zip(&fi.probs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-9, "aggregate_size {aggregate_size}: {diff}");
        }
        assert_eq!(used, [true, false]);
        // The same chain with a budget of one cycle: ILU(0) alone, reported as not converged
        // (the coarse correction needs iterations left to run).
        let starved = AbsorptionOptions {
            solver: Solver::Gmres,
            max_iter: 50,
            ..Default::default()
        };
        let e = compute_fate_probabilities(&t, &term, &names, &starved).unwrap_err();
        assert!(matches!(e, AbsorptionError::NotConverged { .. }), "{e}");
    }

    /// GMRES solves L − 1 lineages and derives the largest from the row sums; the result
    /// equals the sparse LU's, and where the derived column misses the residual check it is
    /// solved as well.
    #[test]
    fn gmres_derives_one_lineage_from_the_row_sums() {
        let t = cellfate_kernels::testing::clustered_knn_chain(3000, 10, 15, 3);
        let mut term = vec![None; 3000];
        // Lineage 1 gets the most absorbing cells: it is the derived one.
        term[0..30].fill(Some(0));
        term[1500..1590].fill(Some(1));
        term[2900..2950].fill(Some(2));
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let direct = AbsorptionOptions {
            solver: Solver::Direct,
            ..Default::default()
        };
        let (fd, sd) = compute_fate_probabilities(&t, &term, &names, &direct).unwrap();
        assert_eq!(derived_lineage(&sd), None);
        for tol in [1e-12, 1e-6] {
            let opts = AbsorptionOptions {
                solver: Solver::Gmres,
                tol,
                ..Default::default()
            };
            let (fi, sys) = compute_fate_probabilities(&t, &term, &names, &opts).unwrap();
            let d = derived_lineage(&sys).unwrap();
            let mass = |j: usize| (0..sys.s.nrows()).map(|p| sys.s[(p, j)]).sum::<f64>();
            assert!((0..3).all(|j| mass(d) >= mass(j)), "derived {d}");
            let diff = fd
                .probs
                .iter()
                .zip(&fi.probs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-8, "tol {tol}: {diff}");
            assert!(fi.row_sum_error <= ROW_SUM_TOL, "{}", fi.row_sum_error);
            assert!(fi.residual <= RESIDUAL_TOL, "{}", fi.residual);
            let (b, solved) = solve_derived(&sys, d).unwrap();
            let bd = Mat::<f64>::from_fn(b.nrows(), 1, |p, _| b[(p, d)]);
            let sdd = Mat::<f64>::from_fn(b.nrows(), 1, |p, _| sys.s[(p, d)]);
            let eta = sys.backward_error(&(sys.apply(&bd) - &sdd), &bd, &sdd);
            assert!(eta <= RESIDUAL_TOL, "tol {tol}: derived column {eta}");
            assert!(!solved, "tol {tol}");
        }
        // A lineage reached with probability about 1e-9 (cell 20's weak edge to cell 2):
        // `1 − Σ` of the others' (near 1) is rounding there, its residual misses the check,
        // and the column is solved from it.
        let mut e = vec![(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0)];
        for i in 3..40 {
            let left = if i == 3 { 0 } else { i - 1 };
            let right = if i == 39 { 1 } else { i + 1 };
            let weak = if i == 20 { 1e-9 } else { 0.0 };
            e.push((i, left, 0.5 - weak));
            e.push((i, right, 0.5));
            if weak > 0.0 {
                e.push((i, 2, weak));
            }
        }
        let t =
            TransitionMatrix::try_new(Csr::from_triplets(40, 40, &e).unwrap(), Direction::Forward)
                .unwrap();
        let term: Vec<Option<usize>> = (0..40).map(|i| (i < 3).then_some(i)).collect();
        let (fd, _) = compute_fate_probabilities(&t, &term, &names, &direct).unwrap();
        let opts = AbsorptionOptions {
            solver: Solver::Gmres,
            ..Default::default()
        };
        let sys = TransientSystem::new(&t, &term, &names, &opts).unwrap();
        for (d, needs_solve) in [(0, false), (2, true)] {
            let (b, solved) = solve_derived(&sys, d).unwrap();
            assert_eq!(solved, needs_solve, "lineage {d}");
            for (p, &i) in sys.transient.iter().enumerate() {
                for j in 0..3 {
                    let (x, y) = (b[(p, j)], fd.get(i, j));
                    assert!(
                        (x - y).abs() <= 1e-12 * y.abs().max(1e-6),
                        "{d} {i} {j}: {x} {y}"
                    );
                }
            }
        }
    }

    /// `t` with every row mixed towards its right neighbour by `eps` (a small perturbation
    /// that keeps the pattern of the metastable chain's rows).
    fn nudged(t: &TransitionMatrix, eps: f64) -> TransitionMatrix {
        let n = t.n_cells();
        let mut trip = Vec::new();
        for i in 0..n {
            let (cols, vals) = t.row(i);
            for (k, (&c, &v)) in cols.iter().zip(vals).enumerate() {
                // Shift weight between a row's entries, keeping the row sum 1.
                let w = v * (1.0 - eps) + eps * if k == 0 { 1.0 } else { 0.0 };
                trip.push((i, c as usize, w));
            }
        }
        TransitionMatrix::try_new(Csr::from_triplets(n, n, &trip).unwrap(), Direction::Forward)
            .unwrap()
    }

    #[test]
    fn nearby_chains_are_solved_from_the_base_factorisation() {
        let (t, term, names) = metastable_two_states();
        for solver in [Solver::Direct, Solver::Gmres] {
            let opts = AbsorptionOptions {
                solver,
                ..Default::default()
            };
            let (f0, base) = compute_fate_probabilities(&t, &term, &names, &opts).unwrap();
            let tp = nudged(&t, 1e-3);
            let (fresh, _) = compute_fate_probabilities(&tp, &term, &names, &opts).unwrap();
            let (near, _) =
                compute_fate_probabilities_near(&tp, &term, &names, &opts, &base, &f0).unwrap();
            assert_eq!(near.solver, NEAR, "{solver:?}");
            assert!(near.residual <= RESIDUAL_TOL);
            let diff = fresh
                .probs
                .iter()
                .zip(&near.probs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-9, "{solver:?}: {diff}");
            // The perturbation moved the answer (the test is not vacuous).
            let moved = fresh
                .probs
                .iter()
                .zip(&f0.probs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(moved > 1e-6, "{moved}");
            // The unperturbed chain itself: the start is already the solution.
            let (same, _) =
                compute_fate_probabilities_near(&t, &term, &names, &opts, &base, &f0).unwrap();
            let d0 = same
                .probs
                .iter()
                .zip(&f0.probs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d0 < 1e-12, "{d0}");
        }
        // Other terminal cells: the chain is factorised as usual.
        let opts = AbsorptionOptions::default();
        let (f0, base) = compute_fate_probabilities(&t, &term, &names, &opts).unwrap();
        let mut other = term.clone();
        other[181] = None;
        let (f, _) =
            compute_fate_probabilities_near(&t, &other, &names, &opts, &base, &f0).unwrap();
        assert_eq!(f.solver, LU);
    }

    /// The assembled `I − Q` (built sorted, in parallel blocks) is the matrix of its
    /// definition: off-diagonal transient entries `−P_ic` in transient positions (explicit
    /// zeros kept), the diagonal the mass leaving the cell (any stored `P_ii` ignored, placed
    /// in column order whether or not `P_ii` is stored), `S` the mass into each lineage, and
    /// `‖I − Q‖_∞`; across more rows than one assembly block.
    #[test]
    fn the_assembled_system_is_i_minus_q() {
        let n = 2 * ASSEMBLY_ROWS + 37;
        let mut trip = Vec::new();
        for i in 0..n {
            let mut row: Vec<(usize, f64)> = Vec::new();
            for d in [1usize, 5, 900] {
                row.push(((i + d) % n, 0.1 + 0.01 * ((i * d) % 7) as f64));
                row.push(((i + n - d) % n, 0.05 + 0.02 * ((i + d) % 5) as f64));
            }
            if i % 3 == 0 {
                row.push((i, 0.2));
            }
            if i % 11 == 0 {
                row.push(((i + 2) % n, 0.0));
            }
            row.sort_by_key(|&(c, _)| c);
            row.dedup_by_key(|e| e.0);
            let total: f64 = row.iter().map(|e| e.1).sum();
            trip.extend(row.into_iter().map(|(c, v)| (i, c, v / total)));
        }
        let t =
            TransitionMatrix::try_new(Csr::from_triplets(n, n, &trip).unwrap(), Direction::Forward)
                .unwrap();
        let mut terminal = vec![None; n];
        for i in 0..20 {
            terminal[100 + i] = Some(0);
            terminal[n - 1 - 3 * i] = Some(1);
        }
        let names = vec!["a".to_string(), "b".to_string()];
        let got = TransientSystem::assemble(&t, &terminal, &names).unwrap();
        let nt = got.transient.len();
        assert_eq!(nt, n - 40);
        let mut want = Vec::new();
        let mut s = vec![[0.0; 2]; nt];
        let mut a_norm: f64 = 0.0;
        for (p, &i) in got.transient.iter().enumerate() {
            let (cols, vals) = t.row(i);
            let mut diag = 0.0;
            let mut off = 0.0;
            for (&c, &v) in cols.iter().zip(vals) {
                let c = c as usize;
                if c != i {
                    diag += v;
                }
                match terminal[c] {
                    Some(j) => s[p][j] += v,
                    None if c == i => {}
                    None => {
                        off += v.abs();
                        want.push((p, got.position[c], -v));
                    }
                }
            }
            want.push((p, p, diag));
            a_norm = a_norm.max(diag.abs() + off);
        }
        let want = Csr::from_triplets(nt, nt, &want).unwrap();
        assert_eq!(got.a.indptr(), want.indptr());
        assert_eq!(got.a.indices(), want.indices());
        assert_eq!(got.a.data(), want.data());
        for (p, sp) in s.iter().enumerate() {
            for (j, v) in sp.iter().enumerate() {
                assert_eq!(got.s[(p, j)], *v);
            }
        }
        assert_eq!(got.a_norm, a_norm);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let t = ruin(5, 0.5);
        let names = vec!["a".to_string(), "b".to_string()];
        let none = vec![None; 6];
        assert!(matches!(
            compute_fate_probabilities(&t, &none, &names, &Default::default()),
            Err(AbsorptionError::NoTerminalStates)
        ));
        let mut one = vec![None; 6];
        one[0] = Some(0);
        assert!(
            matches!(compute_fate_probabilities(&t, &one, &names, &Default::default()), Err(AbsorptionError::EmptyState { ref name, lineage: 1 }) if name == "b")
        );
        // A closed pair of cells that never reaches the terminal state.
        let trip = vec![
            (0, 0, 1.0),
            (1, 0, 0.5),
            (1, 2, 0.5),
            (2, 3, 1.0),
            (3, 2, 1.0),
        ];
        let t2 =
            TransitionMatrix::try_new(Csr::from_triplets(4, 4, &trip).unwrap(), Direction::Forward)
                .unwrap();
        let e = compute_fate_probabilities(
            &t2,
            &[Some(0), None, None, None],
            &names[..1],
            &Default::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, AbsorptionError::Unreachable { count: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("connectivity"));
        // Options out of range: a typed error naming the key, before any work (a huge
        // restart would otherwise abort on allocating its basis).
        let mut two = vec![None; 6];
        two[0] = Some(0);
        two[5] = Some(1);
        for (opts, key) in [
            (
                AbsorptionOptions {
                    restart: usize::MAX,
                    ..Default::default()
                },
                "absorption.restart",
            ),
            (
                AbsorptionOptions {
                    restart: 0,
                    ..Default::default()
                },
                "absorption.restart",
            ),
            (
                AbsorptionOptions {
                    tol: f64::NAN,
                    ..Default::default()
                },
                "absorption.tol",
            ),
            (
                AbsorptionOptions {
                    max_iter: 0,
                    ..Default::default()
                },
                "absorption.max_iter",
            ),
            (
                AbsorptionOptions {
                    aggregate_size: 3,
                    ..Default::default()
                },
                "absorption.aggregate_size",
            ),
        ] {
            let e = compute_fate_probabilities(&t, &two, &names, &opts).unwrap_err();
            assert!(matches!(e, AbsorptionError::InvalidOption { .. }), "{e}");
            assert!(e.to_string().starts_with(key), "{e}");
        }
        let ok = AbsorptionOptions {
            aggregate_size: 0,
            ..Default::default()
        };
        assert!(compute_fate_probabilities(&t, &two, &names, &ok).is_ok());
    }

    #[test]
    fn priming_is_scaled() {
        let f = FateProbabilities {
            names: vec!["a".into(), "b".into()],
            probs: vec![0.5, 0.5, 0.9, 0.1, 1.0, 0.0, 0.2, 0.8],
            residual: 0.0,
            row_sum_error: 0.0,
            row_sum_tol: ROW_SUM_TOL,
            max_absorption_time: None,
            solver: "test",
        };
        let kl = lineage_priming(&f, PrimingMethod::KlDivergence, None).unwrap();
        assert!(kl.iter().all(|x| (0.0..=1.0).contains(x)));
        assert_eq!(kl[2], 1.0); // a zero probability makes the row NaN -> 1 -> the maximum
        let en = lineage_priming(&f, PrimingMethod::Entropy, None).unwrap();
        assert_eq!(en[0], 0.0);
        assert_eq!(en[2], 1.0);
    }
}
