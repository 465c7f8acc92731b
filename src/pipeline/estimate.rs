//! The estimator stages on an `.h5ad` file: Schur → macrostates → terminal (and initial)
//! states → fate probabilities → absorption times, priming → lineage drivers, each writing
//! CellRank's keys into an [`H5adEdit`].

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use cellfate_estimators::absorption::{
    compute_absorption_times, compute_fate_probabilities, lineage_priming, AbsorptionOptions,
    FateProbabilities, PrimingMethod,
};
use cellfate_estimators::drivers::{compute_lineage_drivers, DriverTable, DriverTest, Expression};
use cellfate_estimators::gpcca::{
    self, eigengap, min_chi, schur_to_x, stationary_distribution, GpccaFit, Optimizer,
};
use cellfate_estimators::schur::{compute_schur, Schur, SchurOptions};
use cellfate_estimators::states::{
    fuzzy_to_discrete_with, name_states, select_initial, select_terminal, states_from_memberships,
    ClusterReference, TerminalMethod,
};
use cellfate_kernels::{CellSource, Direction, TransitionMatrix};

use crate::io::{keys, Categorical, DataFrame, Element, H5adEdit, H5adReader, NumVec};

use super::PipelineError;

/// How many macrostates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NStates {
    /// `eigengap + 1` of the Schur eigenvalues (CellRank's default when `n_states=None`).
    #[default]
    Eigengap,
    /// A fixed number.
    Fixed(usize),
    /// The best by minChi in `[min, max]` (CellRank moves a lower bound of 1 or 2 to 3).
    Range(usize, usize),
}

impl std::str::FromStr for NStates {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "eigengap" || s == "auto" {
            return Ok(Self::Eigengap);
        }
        if let Some((a, b)) = s.split_once("..") {
            let lo = a
                .trim()
                .parse()
                .map_err(|_| format!("bad range {s:?}: expected MIN..MAX"))?;
            let hi = b
                .trim_start_matches('=')
                .trim()
                .parse()
                .map_err(|_| format!("bad range {s:?}: expected MIN..MAX"))?;
            return Ok(Self::Range(lo, hi));
        }
        s.parse()
            .map(Self::Fixed)
            .map_err(|_| format!("bad n_states {s:?}: expected a number, MIN..MAX or eigengap"))
    }
}

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
    /// obs column used to name states (`None`: `clusters` when present).
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
    /// Compute absorption times (mean and variance).
    pub absorption_times: bool,
    /// Compute the lineage priming degree.
    pub priming: Option<PrimingMethod>,
    /// Compute lineage drivers.
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
            n_states: NStates::Eigengap,
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
            priming: Some(PrimingMethod::KlDivergence),
            drivers: true,
            drivers_layer: "X".into(),
            drivers_test: DriverTest::Fisher,
        }
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
    /// Eigengap index.
    pub eigengap: usize,
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
    /// Notes and warnings.
    pub notes: Vec<String>,
}

fn labels_element(assign: &[Option<usize>], names: &[String]) -> Element {
    Element::Categorical(Categorical {
        codes: assign.iter().map(|a| a.map_or(-1, |q| q as i32)).collect(),
        categories: crate::io::Categories::Str(names.to_vec()),
        ordered: false,
    })
}

fn scalar_f64(v: f64) -> Element {
    Element::Scalar(NumVec::F64(vec![v]))
}

fn scalar_i64(v: i64) -> Element {
    Element::Scalar(NumVec::I64(vec![v]))
}

/// An owned cluster reference: labels, categories, colours.
type OwnedReference = (Vec<Option<String>>, Vec<String>, Option<Vec<String>>);

/// Top driver genes per lineage: `(lineage, [(gene, corr)])`.
pub type TopDrivers = Vec<(String, Vec<(String, f64)>)>;

/// The cluster reference for naming, when the column exists.
fn cluster_reference(r: &H5adReader, key: Option<&str>) -> Option<OwnedReference> {
    let key = key.unwrap_or("clusters");
    let Ok(Element::Categorical(c)) = r.column("obs", key) else {
        return None;
    };
    let labels = c.to_labels();
    let cats = c.categories.labels();
    let colors = match r.read(&format!("uns/{key}_colors")) {
        Ok(Element::Strings { values, .. }) => Some(values),
        _ => None,
    };
    Some((labels, cats, colors))
}

/// Runs every estimator stage on transition matrix `t` of file `r`, adding the results to
/// `edit`.
pub fn run_estimators(
    r: &H5adReader,
    t: &TransitionMatrix,
    spec: &EstimatorSpec,
    edit: &mut H5adEdit,
    progress: &mut dyn FnMut(&str),
) -> Result<EstimatorSummary, PipelineError> {
    let d = t.direction();
    let mut summary = EstimatorSummary::default();
    // Schur: enough vectors for the requested number of states.
    let mut schur_opts = spec.schur.clone();
    let needed = match spec.n_states {
        NStates::Fixed(m) => m + 1,
        NStates::Range(_, hi) => hi + 1,
        NStates::Eigengap => 2,
    };
    schur_opts.n_components = schur_opts
        .n_components
        .max(needed)
        .min(t.n_cells().saturating_sub(1));
    progress("Schur decomposition");
    let schur: Schur = compute_schur(t, None, &schur_opts)?;
    if let Some(note) = &schur.note {
        summary.notes.push(note.clone());
    }
    let re: Vec<f64> = schur.eigenvalues.iter().map(|e| e.0).collect();
    let gap = eigengap(&re, spec.alpha);
    summary.schur_method = schur.method.to_string();
    summary.schur_residual = schur.residual;
    summary.eigenvalues = schur.eigenvalues.clone();
    summary.eigengap = gap;
    let x = schur_to_x(&schur)?;
    edit.set(
        &format!("obsm/{}", keys::schur_vectors(d)),
        Element::from_dmatrix(&x),
    );
    edit.set(
        &format!("uns/{}", keys::schur_matrix(d)),
        Element::from_dmatrix(&schur.r),
    );
    edit.set(
        &format!("uns/{}", keys::eigendecomposition(d)),
        Element::Dict(vec![
            (
                "D".into(),
                Element::Dense(crate::io::DenseArray {
                    shape: vec![schur.eigenvalues.len()],
                    data: NumVec::C128(
                        schur
                            .eigenvalues
                            .iter()
                            .map(|&(a, b)| num_complex::Complex64::new(a, b))
                            .collect(),
                    ),
                }),
            ),
            ("eigengap".into(), scalar_i64(gap as i64)),
            (
                "params".into(),
                Element::Dict(vec![
                    (
                        "which".into(),
                        Element::Str(
                            if spec.schur.which == cellfate_estimators::Which::LargestReal {
                                "LR"
                            } else {
                                "LM"
                            }
                            .into(),
                        ),
                    ),
                    ("k".into(), scalar_i64(schur.m() as i64)),
                    ("alpha".into(), scalar_f64(spec.alpha)),
                ]),
            ),
        ]),
    );
    // Number of macrostates.
    let mut m = match spec.n_states {
        NStates::Fixed(m) => m,
        NStates::Eigengap => (gap + 1).max(2),
        NStates::Range(lo, hi) => {
            let lo = if lo <= 2 { 3 } else { lo };
            let hi = hi.max(lo + 1).min(schur.m());
            let mc = min_chi(&x, lo..=hi)?;
            let best = (0..mc.len()).fold(0, |b, i| if mc[i] > mc[b] { i } else { b });
            summary.notes.push(format!(
                "minChi over {lo}..={hi}: {mc:?}; chose {}",
                lo + best
            ));
            lo + best
        }
    };
    if schur.splits_pair(m) {
        summary.notes.push(format!(
            "{m} macrostates would split a complex-conjugate pair; using {}",
            m + 1
        ));
        m += 1;
    }
    if m > schur.m() {
        return Err(PipelineError::Invalid(format!(
            "{m} macrostates need {m} Schur vectors; raise schur.n_components"
        )));
    }
    progress("stationary distribution");
    let pi = match stationary_distribution(t) {
        Ok(p) => Some(p),
        Err(e) => {
            summary
                .notes
                .push(format!("no coarse stationary distribution: {e}"));
            None
        }
    };
    progress("macrostates (GPCCA)");
    let fit: GpccaFit = gpcca::fit(t, &schur, m, &spec.optimizer, pi.as_deref())?;
    let assign = fuzzy_to_discrete_with(&fit.chi, spec.n_cells, Some(t))?;
    let reference = cluster_reference(r, spec.cluster_key.as_deref());
    let cref = reference.as_ref().map(|(l, c, col)| ClusterReference {
        labels: l,
        categories: c,
        colors: col.as_deref(),
    });
    let (names, colors) = name_states(&assign, m, cref)?;
    let ms_key = keys::macrostates(d);
    edit.set(&format!("obs/{ms_key}"), labels_element(&assign, &names));
    edit.set(
        &format!("uns/{}", keys::colors(&ms_key)),
        Element::from_strings(colors.clone()),
    );
    edit.set(
        &format!("obsm/{}", keys::memberships(&ms_key)),
        Element::from_dmatrix(&fit.chi),
    );
    edit.set(
        &format!("uns/{}", keys::names(&ms_key)),
        Element::from_strings(names.clone()),
    );
    let mut coarse_obs = DataFrame::with_index(names.clone());
    coarse_obs.set_column(
        "coarse_init_dist",
        Element::from_f64(fit.coarse_init.clone()),
    );
    if let Some(s) = &fit.coarse_stat {
        coarse_obs.set_column("coarse_stat_dist", Element::from_f64(s.clone()));
    }
    let empty = || Element::Dict(Vec::new());
    edit.set(
        &format!("uns/{}", keys::coarse(d)),
        Element::AnnData(vec![
            ("X".into(), Element::from_dmatrix(&fit.coarse_t)),
            ("obs".into(), Element::DataFrame(coarse_obs)),
            (
                "var".into(),
                Element::DataFrame(DataFrame::with_index(names.clone())),
            ),
            ("layers".into(), empty()),
            ("obsm".into(), empty()),
            ("obsp".into(), empty()),
            ("uns".into(), empty()),
            ("varm".into(), empty()),
            ("varp".into(), empty()),
        ]),
    );
    let stability: Vec<f64> = (0..m).map(|q| fit.coarse_t[(q, q)]).collect();
    summary.n_macrostates = m;
    summary.macrostates = names.clone();
    summary.stability = stability.clone();
    summary.crispness = fit.crispness;
    // Terminal states.
    progress("terminal states");
    let term = match select_terminal(&names, &stability, &spec.terminal, &re) {
        Ok(t) => t,
        Err(e) => match spec.terminal_fallback_top_n {
            Some(k) => {
                summary.notes.push(format!(
                    "{e}; falling back to the {k} most stable macrostates"
                ));
                select_terminal(
                    &names,
                    &stability,
                    &TerminalMethod::TopN { n_states: k },
                    &re,
                )?
            }
            None => return Err(e.into()),
        },
    };
    let term_names: Vec<String> = term.iter().map(|&q| names[q].clone()).collect();
    let term_colors: Vec<String> = term.iter().map(|&q| colors[q].clone()).collect();
    let (term_assign, term_probs) =
        states_from_memberships(&fit.chi, &term, spec.n_cells, Some(t))?;
    let ts_key = keys::terminal_states(d);
    edit.set(
        &format!("obs/{ts_key}"),
        labels_element(&term_assign, &term_names),
    );
    edit.set(
        &format!("obs/{}", keys::probs(&ts_key)),
        Element::from_f64(term_probs),
    );
    edit.set(
        &format!("uns/{}", keys::colors(&ts_key)),
        Element::from_strings(term_colors.clone()),
    );
    let term_chi = DMatrix::from_fn(fit.chi.nrows(), term.len(), |i, j| fit.chi[(i, term[j])]);
    edit.set(
        &format!("obsm/{}", keys::memberships(&ts_key)),
        Element::from_dmatrix(&term_chi),
    );
    summary.terminal_states = term_names.clone();
    // Initial states.
    if spec.n_initial_states > 0 {
        if let Some(stat) = &fit.coarse_stat {
            let init = select_initial(stat, spec.n_initial_states.min(m))?;
            let init_names: Vec<String> = init.iter().map(|&q| names[q].clone()).collect();
            if init.iter().any(|q| term.contains(q)) {
                summary.notes.push(format!(
                    "initial state(s) {init_names:?} are also terminal; not written"
                ));
            } else {
                let (ia, ip) = states_from_memberships(&fit.chi, &init, spec.n_cells, Some(t))?;
                let is_key = keys::initial_states(d);
                edit.set(&format!("obs/{is_key}"), labels_element(&ia, &init_names));
                edit.set(
                    &format!("obs/{}", keys::probs(&is_key)),
                    Element::from_f64(ip),
                );
                edit.set(
                    &format!("uns/{}", keys::colors(&is_key)),
                    Element::from_strings(init.iter().map(|&q| colors[q].clone()).collect()),
                );
                summary.initial_states = init_names;
            }
        }
    }
    // Fates.
    if spec.fates {
        progress("fate probabilities");
        let (fates, sys) =
            compute_fate_probabilities(t, &term_assign, &term_names, &spec.absorption)
                .map_err(|e| fates_error(e, &summary.eigenvalues, term_names.len()))?;
        summary.fate_residual = fates.residual;
        if let Some(t_max) = fates.max_absorption_time {
            summary.notes.push(format!(
                "fate probabilities: some cells need {t_max:.1e} steps on average to reach a terminal state (a nearly closed set of cells); their rows sum to 1 within {:.1e}, inside the {:.1e} that this conditioning allows (more cells per terminal state, or a kernel with more connectivity, makes the system better conditioned)",
                fates.row_sum_error, fates.row_sum_tol
            ));
        }
        write_fates(edit, r, d, &fates, &term_colors)?;
        summary.fate_shares = fate_shares(&fates);
        if spec.absorption_times {
            progress("absorption times");
            let times = compute_absorption_times(&sys, &fates, true, false)?;
            let obs_names = r.obs_names()?;
            let mut df = DataFrame::with_index(obs_names);
            let c = times.columns.len();
            for (k, name) in times.columns.iter().enumerate() {
                df.set_column(
                    name,
                    Element::from_f64(
                        (0..fates.probs.len() / fates.n_lineages())
                            .map(|i| times.values[i * c + k])
                            .collect(),
                    ),
                );
            }
            edit.set(
                &format!("obsm/{}", keys::absorption_times(d)),
                Element::DataFrame(df),
            );
        }
        if let Some(method) = spec.priming {
            let p = lineage_priming(&fates, method, None)?;
            edit.set(
                &format!("obs/{}", keys::priming_degree(d)),
                Element::from_f64(p),
            );
        }
        if spec.drivers {
            progress("lineage drivers");
            let table = drivers_for(r, &fates, &spec.drivers_layer, &spec.drivers_test)?;
            write_drivers(edit, r, d, &table)?;
            summary.top_drivers = top_drivers(r, &table, 10)?;
        }
    }
    Ok(summary)
}

/// Writes fate probabilities: `obsm["lineages_fwd"]` with names and colours in `uns`.
pub fn write_fates(
    edit: &mut H5adEdit,
    r: &H5adReader,
    d: cellfate_kernels::Direction,
    fates: &FateProbabilities,
    colors: &[String],
) -> Result<(), PipelineError> {
    let n = r.n_obs()?;
    let key = keys::lineages(d);
    edit.set(
        &format!("obsm/{key}"),
        Element::from_f64_matrix(n, fates.n_lineages(), fates.probs.clone()),
    );
    edit.set(
        &format!("uns/{}", keys::names(&key)),
        Element::from_strings(fates.names.clone()),
    );
    edit.set(
        &format!("uns/{}", keys::colors(&key)),
        Element::from_strings(colors.to_vec()),
    );
    Ok(())
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

/// Computes the driver table on `X` or a layer.
pub fn drivers_for(
    r: &H5adReader,
    fates: &FateProbabilities,
    layer: &str,
    test: &DriverTest,
) -> Result<DriverTable, PipelineError> {
    let slot = if layer == "X" {
        "X".to_string()
    } else {
        format!("layers/{layer}")
    };
    let x = r.csr(&slot)?;
    let ys: Vec<Vec<f64>> = (0..fates.n_lineages()).map(|j| fates.column(j)).collect();
    compute_lineage_drivers(&Expression::Sparse(&x), &ys, &fates.names, test, 0.95)
        .map_err(|e| PipelineError::Invalid(e.to_string()))
}

/// Writes `varm["terminal_lineage_drivers"]` (a dataframe indexed by gene names).
pub fn write_drivers(
    edit: &mut H5adEdit,
    r: &H5adReader,
    d: cellfate_kernels::Direction,
    table: &DriverTable,
) -> Result<(), PipelineError> {
    let mut df = DataFrame::with_index(r.var_names()?);
    for (name, values) in table.columns() {
        df.set_column(&name, Element::from_f64(values));
    }
    edit.set(
        &format!("varm/{}", keys::lineage_drivers(d)),
        Element::DataFrame(df),
    );
    Ok(())
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

/// Reads terminal states from `obs["term_states_fwd"]`: per-cell lineage index and names.
pub fn read_terminal_states(
    r: &H5adReader,
    key: &str,
) -> Result<(Vec<Option<usize>>, Vec<String>), PipelineError> {
    let labels = r.obs_labels(key).map_err(|e| {
        PipelineError::Invalid(format!(
            "{}: {e}; compute terminal states first (cellfate terminal-states)",
            r.path().display()
        ))
    })?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Element::Categorical(c)) = r.column("obs", key) {
        names = c.categories.labels();
    }
    let assign = labels
        .iter()
        .map(|l| l.as_ref().and_then(|s| names.iter().position(|n| n == s)))
        .collect();
    Ok((assign, names))
}

/// Terminal states set by hand from per-cell labels (CellRank's `set_terminal_states` with a
/// categorical column or `{state: [cells]}`): `labels[i]` is the state of cell `i` or `None`.
/// States are ordered as in `order` (every label must be in it); colours default to CellRank's
/// palette. Writes `obs["term_states_fwd"]` (or `_bwd`), its `_probs` (1 for labelled cells,
/// 0 elsewhere) and `uns[..._colors]`. Returns the number of cells per state.
pub fn set_terminal_states_from_labels(
    edit: &mut H5adEdit,
    d: Direction,
    labels: &[Option<String>],
    order: &[String],
    colors: Option<Vec<String>>,
) -> Result<Vec<usize>, PipelineError> {
    if order.is_empty() {
        return Err(PipelineError::Invalid(
            "terminal states by hand: no states given".into(),
        ));
    }
    let mut counts = vec![0usize; order.len()];
    let mut assign = Vec::with_capacity(labels.len());
    for l in labels {
        match l {
            None => assign.push(None),
            Some(s) => match order.iter().position(|o| o == s) {
                Some(q) => {
                    counts[q] += 1;
                    assign.push(Some(q));
                }
                None => assign.push(None),
            },
        }
    }
    if let Some(q) = counts.iter().position(|&c| c == 0) {
        return Err(PipelineError::Invalid(format!(
            "terminal state {:?} has no cells",
            order[q]
        )));
    }
    let colors = match colors {
        Some(c) if c.len() == order.len() => c,
        _ => cellfate_estimators::states::palette(order.len())?,
    };
    let ts_key = keys::terminal_states(d);
    edit.set(&format!("obs/{ts_key}"), labels_element(&assign, order));
    edit.set(
        &format!("obs/{}", keys::probs(&ts_key)),
        Element::from_f64(
            assign
                .iter()
                .map(|a| if a.is_some() { 1.0 } else { 0.0 })
                .collect(),
        ),
    );
    edit.set(
        &format!("uns/{}", keys::colors(&ts_key)),
        Element::from_strings(colors),
    );
    Ok(counts)
}

/// An absorption failure, with a diagnosis when the chain has several (nearly) closed sets of
/// cells (eigenvalue 1 of multiplicity ≥ 2): terminal states that do not cover a whole closed
/// set leave cells that can (numerically) never be absorbed, and `I − Q` is (nearly) singular.
pub fn fates_error(
    e: cellfate_estimators::absorption::AbsorptionError,
    eigenvalues: &[(f64, f64)],
    n_terminal: usize,
) -> PipelineError {
    use cellfate_estimators::absorption::AbsorptionError as A;
    let unit = eigenvalues
        .iter()
        .filter(|(re, im)| (re - 1.0).abs() < 1e-6 && im.abs() < 1e-9)
        .count();
    match e {
        A::Residual { .. } | A::RowSums { .. } | A::NotConverged { .. } if unit >= 2 => {
            PipelineError::Invalid(format!(
                "{e}. Diagnosis: the transition matrix has {unit} eigenvalues within 1e-6 of 1, i.e. {unit} (nearly) closed sets of cells, for {n_terminal} terminal states; cells of a closed set that its terminal cells do not cover can (numerically) never be absorbed. Take more cells per terminal state (--n-cells 100 or more), as many terminal states as closed sets (--terminal-method top_n --n-terminal {unit}), or a kernel with more connectivity (e.g. 0.7*velocity + 0.3*connectivity)"
            ))
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellfate_estimators::absorption::AbsorptionError;

    #[test]
    fn fate_failures_are_diagnosed_from_the_spectrum() {
        let e = AbsorptionError::RowSums {
            error: 1e-2,
            tol: 1e-10,
            max_absorption_time: 1e9,
        };
        let eig = [(1.0, 0.0), (1.0 - 1e-9, 0.0), (0.99, 0.0), (0.5, 0.1)];
        let msg = fates_error(e.clone(), &eig, 2).to_string();
        assert!(msg.contains("2 eigenvalues within 1e-6 of 1"), "{msg}");
        assert!(msg.contains("--n-cells"), "{msg}");
        // An irreducible chain (one unit eigenvalue): the error passes through unchanged.
        let msg = fates_error(e, &eig[1..], 2).to_string();
        assert!(!msg.contains("Diagnosis"), "{msg}");
    }
}
