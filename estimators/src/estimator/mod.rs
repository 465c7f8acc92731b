//! Estimator types with CellRank 2.3.3's stages: [`Gpcca`] (Schur decomposition, macrostates,
//! terminal and initial states) and [`Cflare`] (eigenvectors, terminal states), which own a
//! [`TransitionMatrix`] and keep each stage's result for the next one. What every estimator
//! shares — terminal states → fate probabilities → absorption times, lineage priming → lineage
//! drivers — lives once, in the [`Estimator`] trait, over an [`EstimatorCore`]: a new estimator
//! embeds a core, implements two accessors, and gets the absorption stages.
//!
//! ```
//! use cellfate_estimators::{Estimator, Gpcca, NStates, MacrostatesOptions, TerminalOptions};
//! use cellfate_estimators::absorption::AbsorptionOptions;
//! use cellfate_estimators::states::TerminalMethod;
//! # let t = cellfate_kernels::testing::clustered_knn_chain(300, 3, 10, 7);
//! let mut g = Gpcca::new(t);
//! g.compute_schur(&Default::default())?;
//! g.compute_macrostates(NStates::Fixed(3), &MacrostatesOptions { n_cells: 5, ..Default::default() }, None)?;
//! g.predict_terminal_states(&TerminalMethod::TopN { n_states: 2 }, &TerminalOptions { n_cells: 5, ..Default::default() })?;
//! let fates = g.compute_fate_probabilities(&AbsorptionOptions::default())?;
//! assert_eq!(fates.n_lineages(), 2);
//! # Ok::<(), cellfate_estimators::EstimatorError>(())
//! ```
//!
//! Calling a stage before the one it needs is an [`EstimatorError::NotComputed`] that names
//! the stage to call first. Nothing here touches files: the `.h5ad` adapters of the `cellfate`
//! crate restore an estimator from a file and write it back under CellRank's keys.

mod cflare;
mod gpcca;

pub use cflare::Cflare;
pub use gpcca::{
    Gpcca, Macrostates, MacrostatesOptions, NStates, NStatesParseError, TerminalOptions,
};

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use cellfate_kernels::TransitionMatrix;

use crate::absorption::{
    compute_absorption_times, compute_fate_probabilities, lineage_priming, AbsorptionError,
    AbsorptionOptions, AbsorptionTimes, FateProbabilities, PrimingMethod, TransientSystem,
};
use crate::cflare::CflareError;
use crate::drivers::{compute_lineage_drivers, DriverTable, DriverTest, DriversError, Expression};
use crate::gpcca::GpccaError;
use crate::schur::SchurError;
use crate::states::{palette, StatesError};

/// Errors of the estimator stages.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum EstimatorError {
    /// A stage was stopped by [`cellfate_kernels::interrupt::request`] (e.g. Ctrl-C); it
    /// left nothing behind.
    #[error("{estimator}: {stage}: interrupted")]
    Interrupted {
        /// `GPCCA` or `CFLARE`.
        estimator: &'static str,
        /// The stage.
        stage: &'static str,
    },
    /// A stage was called before the stage it needs.
    #[error("{estimator}: {stage} needs {needs}; call {call_first} first")]
    NotComputed {
        /// `GPCCA` or `CFLARE`.
        estimator: &'static str,
        /// The stage called.
        stage: &'static str,
        /// What it needs.
        needs: &'static str,
        /// The stage to call first.
        call_first: &'static str,
    },
    /// A parameter out of its range or inconsistent with the data.
    #[error("{estimator}: {parameter}: {message}")]
    Parameter {
        /// `GPCCA` or `CFLARE`.
        estimator: &'static str,
        /// The parameter (CellRank's name).
        parameter: &'static str,
        /// What is wrong.
        message: String,
    },
    /// States given by hand do not fit the data.
    #[error("{estimator}: set_terminal_states: {message}")]
    States {
        /// `GPCCA` or `CFLARE`.
        estimator: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Schur decomposition.
    #[error(transparent)]
    Schur(#[from] SchurError),
    /// GPCCA numerics.
    #[error(transparent)]
    Gpcca(#[from] GpccaError),
    /// CFLARE numerics.
    #[error(transparent)]
    Cflare(#[from] CflareError),
    /// Discretisation, naming and state selection.
    #[error(transparent)]
    StateSelection(#[from] StatesError),
    /// Absorption solves.
    #[error(transparent)]
    Absorption(#[from] AbsorptionError),
    /// An absorption failure on a chain with several (nearly) closed sets of cells.
    #[error("{source}. Diagnosis: the transition matrix has {unit} eigenvalues within 1e-6 of 1, i.e. {unit} (nearly) closed sets of cells, for {n_terminal} terminal states; cells of a closed set that its terminal cells do not cover can (numerically) never be absorbed. Take more cells per terminal state (n_cells = 100 or more), as many terminal states as closed sets (TerminalMethod::TopN {{ n_states: {unit} }}), or a kernel with more connectivity (e.g. the kernel expression \"0.7*velocity + 0.3*connectivity\")")]
    ClosedSets {
        /// The solver's error.
        source: AbsorptionError,
        /// Eigenvalues within 1e-6 of 1.
        unit: usize,
        /// Terminal states.
        n_terminal: usize,
    },
    /// Lineage drivers.
    #[error(transparent)]
    Drivers(#[from] DriversError),
}

/// Cell states (macrostates, terminal or initial states): CellRank's categorical
/// (`obs["term_states_fwd"]`), its `_probs`, colours and, for GPCCA, memberships.
#[derive(Clone, Debug, PartialEq)]
pub struct CellStates {
    /// State names (the categories, in order).
    pub names: Vec<String>,
    /// One colour per state.
    pub colors: Vec<String>,
    /// The state of each cell (`None`: not in any state).
    pub assignment: Vec<Option<usize>>,
    /// CellRank's per-cell probability of the assigned state (`obs[..._probs]`).
    pub probs: Vec<f64>,
    /// Memberships (n × states; `obsm[..._memberships]`), when the states come from GPCCA.
    pub memberships: Option<DMatrix<f64>>,
}

impl CellStates {
    /// Number of states.
    pub fn n_states(&self) -> usize {
        self.names.len()
    }

    /// Cells per state.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.names.len()];
        for q in self.assignment.iter().flatten() {
            c[*q] += 1;
        }
        c
    }

    /// The label of every cell.
    pub fn labels(&self) -> Vec<Option<&str>> {
        self.assignment
            .iter()
            .map(|a| a.map(|q| self.names[q].as_str()))
            .collect()
    }

    /// States from per-cell labels (CellRank's `set_terminal_states` with a categorical):
    /// states in the order of `order` (every state must have a cell; labels not in `order`
    /// are left out), colours from `colors` or CellRank's palette, `probs` 1 for labelled
    /// cells and 0 elsewhere.
    pub fn from_labels(
        labels: &[Option<String>],
        order: &[String],
        colors: Option<Vec<String>>,
    ) -> Result<Self, StatesError> {
        if order.is_empty() {
            return Err(StatesError::NoStates {
                what: "state names",
            });
        }
        let mut assignment = Vec::with_capacity(labels.len());
        let mut counts = vec![0usize; order.len()];
        for l in labels {
            let q = l.as_ref().and_then(|s| order.iter().position(|o| o == s));
            if let Some(q) = q {
                counts[q] += 1;
            }
            assignment.push(q);
        }
        if let Some(q) = counts.iter().position(|&c| c == 0) {
            return Err(StatesError::EmptyState {
                name: order[q].clone(),
            });
        }
        let colors = match colors {
            Some(c) if c.len() == order.len() => c,
            _ => palette(order.len())?,
        };
        let probs = assignment
            .iter()
            .map(|a| if a.is_some() { 1.0 } else { 0.0 })
            .collect();
        Ok(Self {
            names: order.to_vec(),
            colors,
            assignment,
            probs,
            memberships: None,
        })
    }
}

/// Terminal states given by hand (CellRank's `set_terminal_states`).
#[derive(Clone, Debug, PartialEq)]
pub enum StatesInput {
    /// Macrostates by name (GPCCA only): their `n_cells` most likely cells.
    Macrostates {
        /// Macrostate names.
        names: Vec<String>,
        /// Cells per state (CellRank: 30).
        n_cells: usize,
    },
    /// A categorical: the label of every cell (`None`: transient).
    Labels {
        /// One label per cell.
        labels: Vec<Option<String>>,
        /// The states to keep, in order (`None`: every label, in order of first appearance).
        states: Option<Vec<String>>,
        /// Their colours (`None`: CellRank's palette).
        colors: Option<Vec<String>>,
    },
    /// `{state: [cells]}` (cell indices).
    Cells(Vec<(String, Vec<usize>)>),
}

/// Options of [`Estimator::compute_absorption_times`] (default: means only, as CellRank).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbsorptionTimesOptions {
    /// Also the variances (`{lineage}_var`); off by default, as CellRank's
    /// `calculate_variance` (one more solve, as long as the means').
    pub calculate_variance: bool,
    /// Also the time to any terminal state (`absorption_mean`).
    pub overall: bool,
}

/// Options of [`Estimator::compute_lineage_drivers`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriverOptions {
    /// Lineages to test (`None`: all).
    pub lineages: Option<Vec<String>>,
    /// Fisher's z (default) or a seeded permutation test.
    pub test: DriverTest,
    /// Confidence level of the intervals.
    pub confidence_level: f64,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            lineages: None,
            test: DriverTest::Fisher,
            confidence_level: 0.95,
        }
    }
}

/// The state every estimator shares: the transition matrix and the absorption stages' results.
#[derive(Debug)]
pub struct EstimatorCore {
    t: TransitionMatrix,
    eigenvalues: Option<Vec<(f64, f64)>>,
    terminal: Option<CellStates>,
    fates: Option<FateProbabilities>,
    system: Option<TransientSystem>,
    absorption_times: Option<AbsorptionTimes>,
    priming: Option<Vec<f64>>,
    drivers: Option<DriverTable>,
    notes: Vec<String>,
}

impl EstimatorCore {
    /// A core owning `t`, with nothing computed.
    pub fn new(t: TransitionMatrix) -> Self {
        Self {
            t,
            eigenvalues: None,
            terminal: None,
            fates: None,
            system: None,
            absorption_times: None,
            priming: None,
            drivers: None,
            notes: Vec::new(),
        }
    }

    /// Records the dominant eigenvalues (used to diagnose absorption failures).
    pub fn set_eigenvalues(&mut self, ev: Vec<(f64, f64)>) {
        self.eigenvalues = Some(ev);
    }

    /// Adds a note for the user.
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// Replaces the terminal states and forgets everything computed from the old ones.
    pub fn replace_terminal(&mut self, states: CellStates) {
        self.terminal = Some(states);
        self.fates = None;
        self.system = None;
        self.absorption_times = None;
        self.priming = None;
        self.drivers = None;
    }

    /// Forgets the terminal states and everything computed from them.
    pub fn clear_terminal(&mut self) {
        self.terminal = None;
        self.fates = None;
        self.system = None;
        self.absorption_times = None;
        self.priming = None;
        self.drivers = None;
    }

    /// Restores fate probabilities computed elsewhere (e.g. read from a file): no transient
    /// system is kept, so absorption times need [`Estimator::compute_fate_probabilities`].
    pub fn restore_fates(&mut self, fates: FateProbabilities) {
        self.fates = Some(fates);
        self.system = None;
    }

    /// Restores absorption times, priming and drivers computed elsewhere.
    pub fn restore_downstream(
        &mut self,
        times: Option<AbsorptionTimes>,
        priming: Option<Vec<f64>>,
        drivers: Option<DriverTable>,
    ) {
        self.absorption_times = times;
        self.priming = priming;
        self.drivers = drivers;
    }
}

fn diagnose(
    e: AbsorptionError,
    eigenvalues: Option<&[(f64, f64)]>,
    n_terminal: usize,
) -> EstimatorError {
    let unit = eigenvalues.map_or(0, |ev| {
        ev.iter()
            .filter(|(re, im)| (re - 1.0).abs() < 1e-6 && im.abs() < 1e-9)
            .count()
    });
    match e {
        AbsorptionError::Residual { .. }
        | AbsorptionError::RowSums { .. }
        | AbsorptionError::NotConverged { .. }
            if unit >= 2 =>
        {
            EstimatorError::ClosedSets {
                source: e,
                unit,
                n_terminal,
            }
        }
        other => other.into(),
    }
}

/// [`EstimatorError::Interrupted`] when a stop was requested while `stage` ran (its partial
/// result is then dropped, never stored).
pub(crate) fn check_interrupt(
    estimator: &'static str,
    stage: &'static str,
) -> Result<(), EstimatorError> {
    if cellfate_kernels::interrupt::requested() {
        Err(EstimatorError::Interrupted { estimator, stage })
    } else {
        Ok(())
    }
}

/// The stages every estimator shares (CellRank's `TermStatesEstimator` + absorption mixins).
pub trait Estimator {
    /// `GPCCA`, `CFLARE`, ... (used in messages).
    fn estimator_name(&self) -> &'static str;
    /// The shared state.
    fn core(&self) -> &EstimatorCore;
    /// The shared state, mutably.
    fn core_mut(&mut self) -> &mut EstimatorCore;

    /// Terminal states from macrostates by name; estimators without macrostates refuse.
    fn states_from_macrostates(
        &self,
        names: &[String],
        n_cells: usize,
    ) -> Result<CellStates, EstimatorError> {
        let _ = (names, n_cells);
        Err(EstimatorError::States {
            estimator: self.estimator_name(),
            message:
                "this estimator has no macrostates; give the terminal states as labels or cells"
                    .into(),
        })
    }

    /// The transition matrix.
    fn transition_matrix(&self) -> &TransitionMatrix {
        &self.core().t
    }

    /// Notes and warnings gathered by the stages.
    fn notes(&self) -> &[String] {
        &self.core().notes
    }

    /// The terminal states.
    fn terminal_states(&self) -> Result<&CellStates, EstimatorError> {
        self.core()
            .terminal
            .as_ref()
            .ok_or(EstimatorError::NotComputed {
                estimator: self.estimator_name(),
                stage: "terminal_states",
                needs: "terminal states",
                call_first: "predict_terminal_states or set_terminal_states",
            })
    }

    /// Sets the terminal states by hand (CellRank's `set_terminal_states`); forgets fate
    /// probabilities and what was computed from them.
    fn set_terminal_states(&mut self, input: StatesInput) -> Result<&CellStates, EstimatorError> {
        let n = self.transition_matrix().n_cells();
        let name = self.estimator_name();
        let bad = |message: String| EstimatorError::States {
            estimator: name,
            message,
        };
        let states = match input {
            StatesInput::Macrostates { names, n_cells } => {
                self.states_from_macrostates(&names, n_cells)?
            }
            StatesInput::Labels {
                labels,
                states,
                colors,
            } => {
                if labels.len() != n {
                    return Err(bad(format!("{} labels for {n} cells", labels.len())));
                }
                let order = match states {
                    Some(s) => s,
                    None => {
                        let mut o: Vec<String> = Vec::new();
                        for l in labels.iter().flatten() {
                            if !o.contains(l) {
                                o.push(l.clone());
                            }
                        }
                        o
                    }
                };
                CellStates::from_labels(&labels, &order, colors).map_err(|e| bad(e.to_string()))?
            }
            StatesInput::Cells(map) => {
                let mut labels: Vec<Option<String>> = vec![None; n];
                let mut order = Vec::new();
                for (state, cells) in &map {
                    if order.contains(state) {
                        return Err(bad(format!("state {state:?} is given twice")));
                    }
                    order.push(state.clone());
                    for &i in cells {
                        if i >= n {
                            return Err(bad(format!(
                                "cell {i} of state {state:?} is out of range ({n} cells)"
                            )));
                        }
                        if let Some(prev) = &labels[i] {
                            return Err(bad(format!(
                                "cell {i} is in two states ({prev:?} and {state:?})"
                            )));
                        }
                        labels[i] = Some(state.clone());
                    }
                }
                CellStates::from_labels(&labels, &order, None).map_err(|e| bad(e.to_string()))?
            }
        };
        self.core_mut().replace_terminal(states);
        self.terminal_states()
    }

    /// Fate probabilities towards the terminal states (CellRank's
    /// `compute_fate_probabilities`; exact sparse solves, residuals checked).
    fn compute_fate_probabilities(
        &mut self,
        opts: &AbsorptionOptions,
    ) -> Result<&FateProbabilities, EstimatorError> {
        let name = self.estimator_name();
        let core = self.core_mut();
        let term = core.terminal.as_ref().ok_or(EstimatorError::NotComputed {
            estimator: name,
            stage: "compute_fate_probabilities",
            needs: "terminal states",
            call_first: "predict_terminal_states or set_terminal_states",
        })?;
        let computed = compute_fate_probabilities(&core.t, &term.assignment, &term.names, opts);
        check_interrupt(name, "compute_fate_probabilities")?;
        let (fates, sys) =
            computed.map_err(|e| diagnose(e, core.eigenvalues.as_deref(), term.names.len()))?;
        if let Some(t_max) = fates.max_absorption_time {
            core.notes.push(format!(
                "fate probabilities: some cells need {t_max:.1e} steps on average to reach a terminal state (a nearly closed set of cells); their rows sum to 1 within {:.1e}, inside the {:.1e} that this conditioning allows (more cells per terminal state, or a kernel with more connectivity, makes the system better conditioned)",
                fates.row_sum_error, fates.row_sum_tol
            ));
        }
        core.fates = Some(fates);
        core.system = Some(sys);
        core.absorption_times = None;
        core.priming = None;
        core.drivers = None;
        self.fate_probabilities()
    }

    /// The fate probabilities.
    fn fate_probabilities(&self) -> Result<&FateProbabilities, EstimatorError> {
        self.core()
            .fates
            .as_ref()
            .ok_or(EstimatorError::NotComputed {
                estimator: self.estimator_name(),
                stage: "fate_probabilities",
                needs: "fate probabilities",
                call_first: "compute_fate_probabilities",
            })
    }

    /// Mean (and variance) of the number of steps to absorption per lineage (CellRank's
    /// `compute_absorption_times`).
    fn compute_absorption_times(
        &mut self,
        opts: &AbsorptionTimesOptions,
    ) -> Result<&AbsorptionTimes, EstimatorError> {
        let name = self.estimator_name();
        let core = self.core_mut();
        let (Some(fates), Some(sys)) = (&core.fates, &core.system) else {
            return Err(EstimatorError::NotComputed {
                estimator: name,
                stage: "compute_absorption_times",
                needs: "the absorption system of the fate probabilities",
                call_first: "compute_fate_probabilities",
            });
        };
        let times = compute_absorption_times(sys, fates, opts.calculate_variance, opts.overall);
        check_interrupt(name, "compute_absorption_times")?;
        let times = times?;
        core.absorption_times = Some(times);
        self.absorption_times()
    }

    /// The absorption times.
    fn absorption_times(&self) -> Result<&AbsorptionTimes, EstimatorError> {
        self.core()
            .absorption_times
            .as_ref()
            .ok_or(EstimatorError::NotComputed {
                estimator: self.estimator_name(),
                stage: "absorption_times",
                needs: "absorption times",
                call_first: "compute_absorption_times",
            })
    }

    /// The lineage priming degree per cell (CellRank's `compute_lineage_priming`); `early`
    /// selects the cells of the reference distribution (all cells when `None`).
    fn compute_lineage_priming(
        &mut self,
        method: PrimingMethod,
        early: Option<&[bool]>,
    ) -> Result<&[f64], EstimatorError> {
        let n = self.transition_matrix().n_cells();
        let name = self.estimator_name();
        if let Some(e) = early {
            if e.len() != n {
                return Err(EstimatorError::Parameter {
                    estimator: name,
                    parameter: "early_cells",
                    message: format!("{} flags for {n} cells", e.len()),
                });
            }
        }
        let p = lineage_priming(self.fate_probabilities()?, method, early)?;
        self.core_mut().priming = Some(p);
        self.lineage_priming()
    }

    /// The lineage priming degree.
    fn lineage_priming(&self) -> Result<&[f64], EstimatorError> {
        self.core()
            .priming
            .as_deref()
            .ok_or(EstimatorError::NotComputed {
                estimator: self.estimator_name(),
                stage: "lineage_priming",
                needs: "the priming degree",
                call_first: "compute_lineage_priming",
            })
    }

    /// Correlations of every gene with every lineage's fate probabilities, with p-values,
    /// q-values and confidence intervals (CellRank's `compute_lineage_drivers`).
    ///
    /// With a single terminal state this is [`DriversError::SingleLineage`] (CellRank would
    /// correlate the genes with a column of ones plus rounding noise); the pipeline skips the
    /// stage with a note instead.
    fn compute_lineage_drivers(
        &mut self,
        expression: &Expression<'_>,
        opts: &DriverOptions,
    ) -> Result<&DriverTable, EstimatorError> {
        let fates = self.fate_probabilities()?;
        if fates.n_lineages() == 1 {
            return Err(DriversError::SingleLineage {
                lineage: fates.names[0].clone(),
                spread: fates
                    .column(0)
                    .iter()
                    .fold(0.0f64, |a, p| a.max((p - 1.0).abs())),
            }
            .into());
        }
        let wanted: Vec<usize> = match &opts.lineages {
            None => (0..fates.n_lineages()).collect(),
            Some(names) => names
                .iter()
                .map(|x| {
                    fates.names.iter().position(|n| n == x).ok_or_else(|| {
                        DriversError::UnknownLineage {
                            name: x.clone(),
                            known: fates.names.clone(),
                        }
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let ys: Vec<Vec<f64>> = wanted.iter().map(|&j| fates.column(j)).collect();
        let names: Vec<String> = wanted.iter().map(|&j| fates.names[j].clone()).collect();
        let table =
            compute_lineage_drivers(expression, &ys, &names, &opts.test, opts.confidence_level)?;
        self.core_mut().drivers = Some(table);
        self.lineage_drivers()
    }

    /// The lineage drivers.
    fn lineage_drivers(&self) -> Result<&DriverTable, EstimatorError> {
        self.core()
            .drivers
            .as_ref()
            .ok_or(EstimatorError::NotComputed {
                estimator: self.estimator_name(),
                stage: "lineage_drivers",
                needs: "the driver table",
                call_first: "compute_lineage_drivers",
            })
    }
}

#[cfg(test)]
mod tests;
