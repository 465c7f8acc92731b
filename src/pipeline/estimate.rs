//! The estimator stages on an `.h5ad` file: Schur → macrostates → terminal (and initial)
//! states → fate probabilities → absorption times, priming → lineage drivers, each writing
//! CellRank's keys into an [`H5adEdit`].

use serde::{Deserialize, Serialize};

use cellfate_estimators::absorption::{AbsorptionOptions, FateProbabilities, PrimingMethod};
use cellfate_estimators::drivers::{DriverTable, DriverTest, DriversError, Expression};
use cellfate_estimators::gpcca::{Eigengap, Optimizer};
use cellfate_estimators::schur::SchurOptions;
use cellfate_estimators::states::TerminalMethod;
use cellfate_estimators::{
    AbsorptionTimesOptions, DriverOptions, Estimator, EstimatorError, Gpcca, MacrostatesOptions,
    TerminalOptions,
};
use cellfate_kernels::TransitionMatrix;

use crate::estimator_io::{read_cluster_key, write_gpcca, Clusters};
use crate::io::{keys, H5adEdit, H5adReader};

use super::PipelineError;

pub use cellfate_estimators::NStates;

/// Options of the estimator stages (CellRank's defaults unless stated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EstimatorSpec {
    /// Schur decomposition.
    pub schur: SchurOptions,
    /// Number of macrostates.
    pub n_states: NStates,
    /// Cells per macrostate / terminal state in the discrete assignment.
    pub n_cells: usize,
    /// obs column used to name states (`None`: `clusters` when present and categorical). A
    /// key that is given must be a categorical obs column: otherwise the run fails before any
    /// computation, listing the categorical columns.
    pub cluster_key: Option<String>,
    /// Rotation optimiser (default: gradient, multi-start; `nelder_mead` for CellRank parity).
    pub optimizer: Optimizer,
    /// Terminal-state rule.
    pub terminal: TerminalMethod,
    /// If the stability rule selects nothing, fall back to the `n` most stable macrostates
    /// (None: fail with CellRank's error, which lists the stabilities).
    pub terminal_fallback_top_n: Option<usize>,
    /// Number of initial states (from the coarse stationary distribution); 0 = skip.
    pub n_initial_states: usize,
    /// Eigengap parameter α.
    pub alpha: f64,
    /// Compute fate probabilities.
    pub fates: bool,
    /// Solver of the absorption systems (fate probabilities, absorption times).
    pub absorption: AbsorptionOptions,
    /// Compute absorption times (means; the variances too with `absorption_variance`).
    pub absorption_times: bool,
    /// Also the variances of the absorption times (CellRank's `calculate_variance`, off by
    /// default as there: a second solve as long as the means').
    pub absorption_variance: bool,
    /// Compute the lineage priming degree.
    pub priming: Option<PrimingMethod>,
    /// Compute lineage drivers (skipped with a note when there is a single terminal state:
    /// every fate probability is then 1 and correlations with it are rounding noise).
    pub drivers: bool,
    /// Expression for the drivers: `X` or a layer name.
    pub drivers_layer: String,
    /// Driver test.
    pub drivers_test: DriverTest,
}

impl Default for EstimatorSpec {
    fn default() -> Self {
        Self {
            schur: SchurOptions::default(),
            n_states: NStates::Auto,
            n_cells: 30,
            cluster_key: None,
            optimizer: Optimizer::default(),
            terminal: TerminalMethod::default(),
            terminal_fallback_top_n: None,
            absorption: AbsorptionOptions::default(),
            n_initial_states: 1,
            alpha: 1.0,
            fates: true,
            absorption_times: true,
            absorption_variance: false,
            priming: Some(PrimingMethod::KlDivergence),
            drivers: true,
            drivers_layer: "X".into(),
            drivers_test: DriverTest::Fisher,
        }
    }
}

impl EstimatorSpec {
    /// Checks the settings on their own (no data needed): at least 2 Schur vectors and 2
    /// macrostates, a `MIN..MAX` range with `MIN ≤ MAX`, at least one cell per state, a
    /// stability threshold in (0, 1], a `top_n` (or fallback) of at least one state, a finite
    /// α and solver tolerance. The error names the setting, the value and what is allowed.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |message: String| {
            Err(PipelineError::Settings {
                section: "estimators",
                message,
            })
        };
        if self.schur.n_components < 2 {
            return bad(format!(
                "schur.n_components (--n-components) = {}: expected at least 2 Schur vectors",
                self.schur.n_components
            ));
        }
        match self.n_states {
            NStates::Fixed(m) if m < 2 => {
                return bad(format!(
                    "n_states (--n-states) = {m}: GPCCA needs at least 2 macrostates"
                ))
            }
            NStates::Range(lo, hi) if lo > hi || hi < 2 => {
                return bad(format!(
                    "n_states (--n-states) = {lo}..{hi}: expected MIN..MAX with MIN <= MAX and MAX >= 2"
                ))
            }
            _ => {}
        }
        if self.n_cells == 0 {
            return bad("n_cells (--n-cells) = 0: expected at least 1 cell per state".into());
        }
        match &self.terminal {
            TerminalMethod::Sinks { threshold, .. } | TerminalMethod::Stability { threshold }
                if !(threshold.is_finite() && *threshold > 0.0 && *threshold <= 1.0) =>
            {
                return bad(format!(
                    "terminal threshold (--stability-threshold) = {threshold}: expected a number in (0, 1]"
                ))
            }
            TerminalMethod::Sinks { source_ratio, .. }
                if !(source_ratio.is_finite() && *source_ratio >= 0.0) =>
            {
                return bad(format!(
                    "terminal source_ratio = {source_ratio}: expected a finite non-negative number"
                ))
            }
            TerminalMethod::TopN { n_states: 0 } => {
                return bad(
                    "terminal top_n n_states (--n-terminal) = 0: expected at least 1 terminal state"
                        .into(),
                )
            }
            TerminalMethod::Eigengap { alpha } | TerminalMethod::EigengapCoarse { alpha }
                if !alpha.is_finite() =>
            {
                return bad(format!("terminal alpha = {alpha}: expected a finite number"))
            }
            _ => {}
        }
        if self.terminal_fallback_top_n == Some(0) {
            return bad(
                "terminal_fallback_top_n (--n-terminal) = 0: expected at least 1 terminal state"
                    .into(),
            );
        }
        if !self.alpha.is_finite() {
            return bad(format!("alpha = {}: expected a finite number", self.alpha));
        }
        if !(self.schur.tol.is_finite() && self.schur.tol >= 0.0) {
            return bad(format!(
                "schur.tol = {}: expected a finite non-negative number (0 = machine precision)",
                self.schur.tol
            ));
        }
        if let Err(e) = self.absorption.validate() {
            return bad(e.to_string());
        }
        if self.absorption_variance && !(self.absorption_times && self.fates) {
            return bad(
                "absorption_variance (--absorption-variance) = true: the variances need the absorption times (absorption_times = true, fates = true)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The number of Schur vectors a run computes: `schur.n_components`, raised to what
    /// `n_states` needs (one more than the largest number of states, as CellRank does).
    pub fn schur_vectors(&self) -> usize {
        self.schur
            .n_components
            .max(self.n_states.schur_vectors_needed())
    }

    /// Checks the settings against data of `n_cells` cells, before any computation: the
    /// Schur decomposition needs fewer vectors than `n_cells - 1` (ARPACK's Krylov subspace
    /// holds the vectors plus two), and so at most `n_cells - 3` macrostates; a fixed number
    /// (or range) of macrostates must leave each its `n_cells` cells per state
    /// (`n_states × n_cells ≤ n_obs`). The error says which setting asks for how many and
    /// what the data allow.
    pub fn validate_for_cells(&self, n_cells: usize) -> Result<(), PipelineError> {
        self.validate()?;
        let m = self.schur_vectors();
        if m + 1 >= n_cells {
            let asked = match self.n_states {
                NStates::Fixed(k) if k + 1 > self.schur.n_components => {
                    format!("n_states (--n-states) = {k} needs {m} Schur vectors")
                }
                NStates::Range(_, hi) if hi + 1 > self.schur.n_components => {
                    format!("n_states (--n-states) up to {hi} needs {m} Schur vectors")
                }
                _ => format!("schur.n_components (--n-components) = {m}"),
            };
            return Err(PipelineError::Settings {
                section: "estimators",
                message: format!(
                    "{asked}, but the data have {n_cells} cells: the Schur decomposition needs fewer than n_cells - 1 = {} vectors (at most {} macrostates); lower n_components / n_states",
                    n_cells.saturating_sub(1),
                    n_cells.saturating_sub(3)
                ),
            });
        }
        // Each macrostate is assigned its `n_cells` most likely cells, disjointly (CellRank's
        // rule: at most n_obs / n_states cells per state): a number of states that cannot get
        // them is refused here, before the Schur decomposition and the rotation optimiser.
        let largest = match self.n_states {
            NStates::Fixed(k) => Some((k, format!("n_states (--n-states) = {k}"))),
            NStates::Range(_, hi) => Some((hi, format!("n_states (--n-states) up to {hi}"))),
            NStates::Auto | NStates::Eigengap => None,
        };
        if let Some((k, asked)) = largest {
            if k.saturating_mul(self.n_cells) > n_cells {
                return Err(PipelineError::Settings {
                    section: "estimators",
                    message: format!(
                        "{asked} with n_cells (--n-cells) = {} cells per state needs {} cells, but the data have {n_cells}: each macrostate is assigned its n_cells most likely cells, no cell to two states; {}",
                        self.n_cells,
                        k.saturating_mul(self.n_cells),
                        match n_cells / self.n_cells.max(1) {
                            0 | 1 => format!("lower n_cells to at most {}", n_cells / k.max(1)),
                            fit => format!(
                                "lower n_states to at most {fit} or n_cells to at most {}",
                                n_cells / k.max(1)
                            ),
                        }
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What the stages found (for summaries and reports).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EstimatorSummary {
    /// Schur path used (`dense` / `krylov`) and its residual.
    pub schur_method: String,
    /// Schur invariance residual.
    pub schur_residual: f64,
    /// Schur eigenvalues `(re, im)`.
    pub eigenvalues: Vec<(f64, f64)>,
    /// The eigengap of the Schur eigenvalues (`None` without them): CellRank's 0-based
    /// `index` (as in `uns["eigendecomposition_fwd"]["eigengap"]`), the 1-based eigenvalue it
    /// follows and the number of states it suggests; printed as its `Display`.
    pub eigengap: Option<Eigengap>,
    /// Number of macrostates.
    pub n_macrostates: usize,
    /// Macrostate names.
    pub macrostates: Vec<String>,
    /// Coarse self-transition probabilities.
    pub stability: Vec<f64>,
    /// Crispness.
    pub crispness: f64,
    /// Terminal states.
    pub terminal_states: Vec<String>,
    /// Initial states.
    pub initial_states: Vec<String>,
    /// Cells per most likely fate (share of all cells).
    pub fate_shares: Vec<(String, f64)>,
    /// Fate-probability residual.
    pub fate_residual: f64,
    /// Top 10 driver genes per lineage.
    pub top_drivers: TopDrivers,
    /// Notes and warnings of the estimator stages. Not serialised: a run's summary lists them
    /// (after the upstream steps' warnings) as [`super::RunSummary::warnings`], once.
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// Top driver genes per lineage: `(lineage, [(gene, corr)])`.
pub type TopDrivers = Vec<(String, Vec<(String, f64)>)>;

/// Runs every estimator stage on transition matrix `t` of file `r`, adding the results to
/// `edit` (through [`crate::estimator_io::write_gpcca`]). Returns the summary and the fitted
/// estimator.
pub fn run_estimators(
    r: &H5adReader,
    t: &TransitionMatrix,
    spec: &EstimatorSpec,
    edit: &mut H5adEdit,
    progress: &mut dyn FnMut(&str),
) -> Result<EstimatorSummary, PipelineError> {
    let g = fit_gpcca(r, t.clone(), spec, progress)?;
    write_gpcca(edit, r, &g)?;
    summarize(r, &g)
}

/// Every stage of `spec` on a new [`Gpcca`] (cluster names from `r`): Schur → macrostates →
/// terminal (and initial) states → fates → absorption times, priming → drivers.
pub fn fit_gpcca(
    r: &H5adReader,
    t: TransitionMatrix,
    spec: &EstimatorSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<Gpcca, PipelineError> {
    let n = t.n_cells();
    spec.validate_for_cells(n)?;
    let mut g = Gpcca::new(t);
    // Schur: enough vectors for the requested number of states.
    let mut schur_opts = spec.schur.clone();
    schur_opts.n_components = spec.schur_vectors();
    progress("Schur decomposition");
    g.compute_schur(&schur_opts)?;
    progress("macrostates (GPCCA)");
    let clusters = read_cluster_key(r, spec.cluster_key.as_deref())?;
    let m = g
        .compute_macrostates(
            spec.n_states.clone(),
            &MacrostatesOptions {
                n_cells: spec.n_cells,
                optimizer: spec.optimizer.clone(),
                alpha: spec.alpha,
            },
            clusters.as_ref().map(Clusters::reference),
        )?
        .n_states();
    if spec.n_states == NStates::Eigengap {
        let gap = Eigengap::from_index(g.eigengap()?.0);
        if gap.suggested_states < 2 {
            g.core_mut().note(format!(
                "{gap}, but GPCCA needs at least 2 macrostates: {m} computed"
            ));
        }
    }
    // A fallback of more states than there are macrostates could never be honoured: an
    // error now, whether or not the fallback is needed.
    if let Some(k) = spec.terminal_fallback_top_n.filter(|&k| k > m) {
        return Err(cellfate_estimators::states::StatesError::TopNTooMany {
            n_states: k,
            macrostates: m,
        }
        .into());
    }
    progress("terminal states");
    g.predict_terminal_states(
        &spec.terminal,
        &TerminalOptions {
            n_cells: spec.n_cells,
            fallback_top_n: spec.terminal_fallback_top_n,
        },
    )?;
    let m = g.macrostates()?.n_states();
    if spec.n_initial_states > 0 {
        let init = g
            .predict_initial_states(spec.n_initial_states.min(m), spec.n_cells)?
            .names
            .clone();
        let term = &g.terminal_states()?.names;
        if init.iter().any(|q| term.contains(q)) {
            g.core_mut().note(format!(
                "initial state(s) {init:?} are also terminal; not written"
            ));
            g.clear_initial_states();
        }
    }
    if spec.fates {
        progress("fate probabilities");
        g.compute_fate_probabilities(&spec.absorption)?;
        if spec.absorption_times {
            progress("absorption times");
            g.compute_absorption_times(&AbsorptionTimesOptions {
                calculate_variance: spec.absorption_variance,
                overall: false,
            })?;
        }
        if let Some(method) = spec.priming {
            g.compute_lineage_priming(method, None)?;
        }
        if spec.drivers {
            progress("lineage drivers");
            let x = r.csr(&keys::layer(&spec.drivers_layer))?;
            let note = match g.compute_lineage_drivers(
                &Expression::Sparse(&x),
                &DriverOptions {
                    test: spec.drivers_test.clone(),
                    ..Default::default()
                },
            ) {
                Ok(table) if table.non_finite_genes.is_empty() => None,
                Ok(table) => Some(non_finite_drivers_warning(
                    table,
                    &r.var_names()?,
                    &keys::layer(&spec.drivers_layer),
                )),
                // One terminal state: nothing to correlate with; the run goes on without drivers.
                Err(e @ EstimatorError::Drivers(DriversError::SingleLineage { .. })) => {
                    Some(format!("lineage drivers skipped: {e}"))
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(note) = note {
                g.core_mut().note(note);
            }
        }
    }
    Ok(g)
}

/// The warning for the genes the lineage drivers excluded because their expression (`slot`,
/// e.g. `X`) holds NaN or infinite values: how many, and the first few names (`genes` are the
/// var names). Empty-table callers should not call it (see
/// [`DriverTable::non_finite_genes`]).
pub fn non_finite_drivers_warning(table: &DriverTable, genes: &[String], slot: &str) -> String {
    const SHOWN: usize = 5;
    let bad = &table.non_finite_genes;
    let mut names: Vec<String> = bad
        .iter()
        .take(SHOWN)
        .map(|&g| {
            genes
                .get(g)
                .map_or_else(|| format!("gene {g}"), |name| format!("{name:?}"))
        })
        .collect();
    if bad.len() > SHOWN {
        names.push(format!("... ({} more)", bad.len() - SHOWN));
    }
    format!(
        "lineage drivers: {} of {} genes excluded because {slot} holds NaN or infinite values for them (their correlations are NaN and they are not ranked): {}",
        bad.len(),
        table.n_genes,
        names.join(", ")
    )
}

/// What an estimator found, for summaries and reports (whatever stages it has).
pub fn summarize(r: &H5adReader, g: &Gpcca) -> Result<EstimatorSummary, PipelineError> {
    let mut summary = EstimatorSummary {
        notes: g.notes().to_vec(),
        ..Default::default()
    };
    if let Ok(schur) = g.schur() {
        summary.schur_method = schur.method.to_string();
        summary.schur_residual = schur.residual;
    }
    if let Ok(ev) = g.eigenvalues() {
        summary.eigenvalues = ev.to_vec();
        summary.eigengap = Some(Eigengap::from_index(g.eigengap()?.0));
    }
    if let Ok(ms) = g.macrostates() {
        summary.n_macrostates = ms.n_states();
        summary.macrostates = ms.states.names.clone();
        summary.stability = ms.stability();
        summary.crispness = ms.crispness.unwrap_or(f64::NAN);
    }
    if let Ok(term) = g.terminal_states() {
        summary.terminal_states = term.names.clone();
    }
    if let Ok(init) = g.initial_states() {
        summary.initial_states = init.names.clone();
    }
    if let Ok(fates) = g.fate_probabilities() {
        summary.fate_residual = fates.residual;
        summary.fate_shares = fate_shares(fates);
    }
    if let Ok(table) = g.lineage_drivers() {
        summary.top_drivers = top_drivers(r, table, 10)?;
    }
    Ok(summary)
}

fn fate_shares(f: &FateProbabilities) -> Vec<(String, f64)> {
    let l = f.n_lineages();
    let n = f.probs.len() / l;
    let mut counts = vec![0usize; l];
    for i in 0..n {
        let best = (0..l).fold(0, |b, j| if f.get(i, j) > f.get(i, b) { j } else { b });
        counts[best] += 1;
    }
    f.names
        .iter()
        .cloned()
        .zip(counts.iter().map(|&c| c as f64 / n as f64))
        .collect()
}

fn top_drivers(r: &H5adReader, table: &DriverTable, k: usize) -> Result<TopDrivers, PipelineError> {
    let genes = r.var_names()?;
    let l = table.lineages.len();
    Ok(table
        .lineages
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let top = table
                .ranking(j)
                .into_iter()
                .take(k)
                .map(|g| (genes[g].clone(), table.corr[g * l + j]))
                .collect();
            (name.clone(), top)
        })
        .collect())
}
