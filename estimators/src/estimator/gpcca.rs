//! The GPCCA estimator (CellRank's `GPCCA`): Schur decomposition → macrostates → terminal and
//! initial states, then the shared absorption stages of [`Estimator`].

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use cellfate_kernels::TransitionMatrix;

use super::{check_interrupt, CellStates, Estimator, EstimatorCore, EstimatorError};
use crate::gpcca::{
    self, eigengap, min_chi, schur_to_x, stationary_distribution_with, Optimizer, OptimizerReport,
};
use crate::schur::{compute_schur, Schur, SchurOptions};
use crate::states::{
    fuzzy_to_discrete_cached, name_states, select_initial, select_initial_by_flow, select_terminal,
    select_terminal_sinks, state_probabilities, ClusterReference, TerminalMethod, TieBreaks,
};

const NAME: &str = "GPCCA";

/// Largest number of states [`NStates::Auto`] considers by minChi.
const AUTO_MINCHI_MAX: usize = 5;

/// How many macrostates (CellRank's `n_states`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NStates {
    /// cellfate's default: `eigengap + 1` of the Schur eigenvalues when that is at least 3,
    /// else the best by minChi in `3..=5`. **Deviation from CellRank** (whose default is
    /// [`NStates::Eigengap`]): with two macrostates a start and an end cannot be told apart
    /// from two ends (each is the other's only neighbour), so terminal states need at least
    /// three; CellRank itself moves minChi ranges starting at 1 or 2 to 3.
    #[default]
    Auto,
    /// `eigengap + 1` of the Schur eigenvalues (CellRank's default when `n_states=None`).
    Eigengap,
    /// A fixed number.
    Fixed(usize),
    /// The best by minChi in `[min, max]` (CellRank moves a lower bound of 1 or 2 to 3).
    Range(usize, usize),
}

impl NStates {
    /// Schur vectors needed to choose among these numbers of states (one more than the
    /// largest, to tell whether it splits a complex-conjugate pair).
    pub fn schur_vectors_needed(&self) -> usize {
        match *self {
            NStates::Fixed(m) => m + 1,
            NStates::Range(_, hi) => hi + 1,
            NStates::Eigengap => 2,
            NStates::Auto => AUTO_MINCHI_MAX + 1,
        }
    }
}

/// Why an `n_states` text does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("n_states {text:?}: expected a number, MIN..MAX, auto or eigengap")]
pub struct NStatesParseError {
    /// The text given.
    pub text: String,
}

impl std::str::FromStr for NStates {
    type Err = NStatesParseError;
    fn from_str(s: &str) -> Result<Self, NStatesParseError> {
        let t = s.trim();
        let err = || NStatesParseError { text: s.into() };
        if t == "eigengap" {
            return Ok(Self::Eigengap);
        }
        if t == "auto" {
            return Ok(Self::Auto);
        }
        if let Some((a, b)) = t.split_once("..") {
            let lo = a.trim().parse().map_err(|_| err())?;
            let hi = b
                .trim_start_matches('=')
                .trim()
                .parse()
                .map_err(|_| err())?;
            return Ok(Self::Range(lo, hi));
        }
        t.parse().map(Self::Fixed).map_err(|_| err())
    }
}

/// Options of [`Gpcca::compute_macrostates`] (CellRank's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MacrostatesOptions {
    /// Cells per macrostate in the discrete assignment.
    pub n_cells: usize,
    /// Rotation optimiser (default: gradient, multi-start; `nelder_mead` for CellRank parity).
    pub optimizer: Optimizer,
    /// Eigengap parameter α (for `NStates::Eigengap`).
    pub alpha: f64,
}

impl Default for MacrostatesOptions {
    fn default() -> Self {
        Self {
            n_cells: 30,
            optimizer: Optimizer::default(),
            alpha: 1.0,
        }
    }
}

/// Options of [`Gpcca::predict_terminal_states`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TerminalOptions {
    /// Cells per terminal state.
    pub n_cells: usize,
    /// If the rule selects nothing, fall back to the `n` most stable macrostates (`None`:
    /// fail with CellRank's error, which lists the stabilities).
    pub fallback_top_n: Option<usize>,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        Self {
            n_cells: 30,
            fallback_top_n: None,
        }
    }
}

/// GPCCA macrostates: cell states with memberships, and the coarse-grained chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Macrostates {
    /// The states (memberships χ, n × m).
    pub states: CellStates,
    /// Coarse-grained transition matrix (m × m).
    pub coarse_t: DMatrix<f64>,
    /// Coarse initial distribution `χᵀ η`.
    pub coarse_init: Vec<f64>,
    /// Coarse stationary distribution `χᵀ π` (None when `π` could not be computed).
    pub coarse_stat: Option<Vec<f64>>,
    /// Crispness (None when restored from a file that does not record it).
    pub crispness: Option<f64>,
    /// How the rotation was optimised (None when restored from a file).
    pub report: Option<OptimizerReport>,
}

impl Macrostates {
    /// Number of macrostates.
    pub fn n_states(&self) -> usize {
        self.states.n_states()
    }

    /// Coarse self-transition probabilities (the stability of each macrostate).
    pub fn stability(&self) -> Vec<f64> {
        (0..self.coarse_t.nrows())
            .map(|q| self.coarse_t[(q, q)])
            .collect()
    }
}

/// CellRank's GPCCA estimator: owns a transition matrix and keeps each stage's result.
#[derive(Debug)]
pub struct Gpcca {
    core: EstimatorCore,
    schur_options: Option<SchurOptions>,
    schur: Option<Schur>,
    eigenvalues: Option<Vec<(f64, f64)>>,
    alpha: f64,
    macrostates: Option<Macrostates>,
    initial: Option<CellStates>,
    /// Why the last `compute_macrostates` found no stationary distribution, in a few words
    /// ("the chain is nearly reducible, |1 − λ2| = 2.0e-15"), for the notes that follow.
    no_stationary: Option<String>,
    /// The tie-breaks of the discretisations of this chain's memberships, shared by the
    /// macrostates, terminal and initial states.
    tie_breaks: TieBreaks,
}

impl Estimator for Gpcca {
    fn estimator_name(&self) -> &'static str {
        NAME
    }
    fn core(&self) -> &EstimatorCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut EstimatorCore {
        &mut self.core
    }

    fn states_from_macrostates(
        &self,
        names: &[String],
        n_cells: usize,
    ) -> Result<CellStates, EstimatorError> {
        self.terminal_from_macrostates(
            &TerminalMethod::Names {
                states: names.to_vec(),
            },
            n_cells,
        )
        .map(|(states, _)| states)
    }
}

/// The largest number of cells per state below `n_cells` at which the discrete assignment of
/// `chi` is valid, and that assignment; the error at `n_cells` when there is none.
fn fewer_cells(
    chi: &DMatrix<f64>,
    n_cells: usize,
    t: &TransitionMatrix,
    cache: &TieBreaks,
) -> Result<(usize, Vec<Option<usize>>), EstimatorError> {
    let first = match fuzzy_to_discrete_cached(chi, n_cells, Some(t), Some(cache)) {
        Ok(a) => return Ok((n_cells, a)),
        Err(e) => e,
    };
    for n in (1..n_cells).rev() {
        if let Ok(a) = fuzzy_to_discrete_cached(chi, n, Some(t), Some(cache)) {
            return Ok((n, a));
        }
    }
    Err(first.into())
}

fn not_computed(
    stage: &'static str,
    needs: &'static str,
    call_first: &'static str,
) -> EstimatorError {
    EstimatorError::NotComputed {
        estimator: NAME,
        stage,
        needs,
        call_first,
    }
}

impl Gpcca {
    /// An estimator on `t` with nothing computed.
    pub fn new(t: TransitionMatrix) -> Self {
        Self {
            core: EstimatorCore::new(t),
            schur_options: None,
            schur: None,
            eigenvalues: None,
            alpha: 1.0,
            macrostates: None,
            initial: None,
            no_stationary: None,
            tie_breaks: TieBreaks::new(),
        }
    }

    /// The sorted real partial Schur decomposition (CellRank's `compute_schur`; checked by
    /// `‖P̄Q − QR‖`). Forgets macrostates and everything after them.
    pub fn compute_schur(&mut self, opts: &SchurOptions) -> Result<&Schur, EstimatorError> {
        let s = compute_schur(&self.core.t, None, opts);
        check_interrupt(NAME, "compute_schur")?;
        let s = s?;
        if let Some(note) = &s.note {
            self.core.note(note.clone());
        }
        self.core.set_eigenvalues(s.eigenvalues.clone());
        self.eigenvalues = Some(s.eigenvalues.clone());
        self.schur_options = Some(opts.clone());
        self.schur = Some(s);
        self.macrostates = None;
        self.initial = None;
        Ok(self.schur.as_ref().expect("just set"))
    }

    /// The Schur decomposition.
    pub fn schur(&self) -> Result<&Schur, EstimatorError> {
        self.schur
            .as_ref()
            .ok_or_else(|| not_computed("schur", "the Schur decomposition", "compute_schur"))
    }

    /// The options of the last Schur decomposition.
    pub fn schur_options(&self) -> Option<&SchurOptions> {
        self.schur_options.as_ref()
    }

    /// The dominant eigenvalues `(re, im)` (CellRank's `compute_eigendecomposition`; here the
    /// eigenvalues of the Schur form, computed with it if needed with `k` vectors).
    pub fn compute_eigendecomposition(
        &mut self,
        k: usize,
    ) -> Result<&[(f64, f64)], EstimatorError> {
        if self.schur.as_ref().is_none_or(|s| s.m() < k) {
            let opts = SchurOptions {
                n_components: k,
                ..self.schur_options.clone().unwrap_or_default()
            };
            self.compute_schur(&opts)?;
        }
        self.eigenvalues()
    }

    /// The dominant eigenvalues `(re, im)`, dominant first.
    pub fn eigenvalues(&self) -> Result<&[(f64, f64)], EstimatorError> {
        self.eigenvalues.as_deref().ok_or_else(|| {
            not_computed(
                "eigenvalues",
                "eigenvalues",
                "compute_schur or compute_eigendecomposition",
            )
        })
    }

    /// The eigengap index of the real parts of the eigenvalues (with the α of the last
    /// [`Gpcca::compute_macrostates`], 1 before) and that α.
    pub fn eigengap(&self) -> Result<(usize, f64), EstimatorError> {
        let re: Vec<f64> = self.eigenvalues()?.iter().map(|e| e.0).collect();
        Ok((eigengap(&re, self.alpha), self.alpha))
    }

    /// Restores eigenvalues read from a file (for the eigengap rules and failure diagnoses).
    pub fn restore_eigenvalues(&mut self, ev: Vec<(f64, f64)>, alpha: f64) {
        self.core.set_eigenvalues(ev.clone());
        self.eigenvalues = Some(ev);
        self.alpha = alpha;
    }

    /// GPCCA macrostates (CellRank's `compute_macrostates`): memberships, their discrete
    /// assignment (`n_cells` most likely cells each), names after the majority cluster of
    /// `clusters` (or `0..m`), colours, and the coarse-grained chain. With too few Schur
    /// vectors the decomposition is recomputed with enough (as CellRank does). A number of
    /// states that would split a complex-conjugate pair is raised by one (with a note).
    /// Forgets terminal and initial states and everything after them.
    pub fn compute_macrostates(
        &mut self,
        n_states: NStates,
        opts: &MacrostatesOptions,
        clusters: Option<ClusterReference<'_>>,
    ) -> Result<&Macrostates, EstimatorError> {
        if self.schur.is_none() {
            return Err(not_computed(
                "compute_macrostates",
                "the Schur decomposition",
                "compute_schur",
            ));
        }
        let n = self.core.t.n_cells();
        let needed = n_states.schur_vectors_needed().min(n.saturating_sub(1));
        if self.schur.as_ref().is_some_and(|s| s.m() < needed) {
            let mut o = self.schur_options.clone().unwrap_or_default();
            o.n_components = needed;
            self.compute_schur(&o)?;
        }
        self.alpha = opts.alpha;
        let schur = self.schur.as_ref().expect("checked above");
        let mut notes = Vec::new();
        let re: Vec<f64> = schur.eigenvalues.iter().map(|e| e.0).collect();
        let gap = eigengap(&re, opts.alpha);
        let x = schur_to_x(schur)?;
        let mut m = match n_states {
            NStates::Fixed(m) => m,
            NStates::Eigengap => (gap + 1).max(2),
            NStates::Auto if gap + 1 >= 3 => gap + 1,
            NStates::Auto => {
                let hi = AUTO_MINCHI_MAX.min(schur.m());
                if hi < 3 {
                    (gap + 1).max(2)
                } else {
                    let mc = min_chi(&x, 3..=hi)?;
                    let best = (0..mc.len()).fold(0, |b, i| if mc[i] > mc[b] { i } else { b });
                    notes.push(format!(
                        "n_states auto: {} (too few to tell a start from two ends); minChi over 3..={hi}: {mc:.3?}; chose {}",
                        crate::gpcca::Eigengap::from_index(gap),
                        3 + best
                    ));
                    3 + best
                }
            }
            NStates::Range(lo, hi) => {
                let lo = if lo <= 2 { 3 } else { lo };
                let hi = hi.max(lo + 1).min(schur.m());
                let mc = min_chi(&x, lo..=hi)?;
                let best = (0..mc.len()).fold(0, |b, i| if mc[i] > mc[b] { i } else { b });
                notes.push(format!(
                    "minChi over {lo}..={hi}: {mc:?}; chose {}",
                    lo + best
                ));
                lo + best
            }
        };
        if schur.splits_pair(m) {
            notes.push(format!(
                "{m} macrostates would split a complex-conjugate pair; using {}",
                m + 1
            ));
            m += 1;
        }
        let available = schur.m();
        for note in notes {
            self.core.note(note);
        }
        if m > available {
            return Err(EstimatorError::Parameter {
                estimator: NAME,
                parameter: "n_states",
                message: format!(
                    "{m} macrostates need {m} Schur vectors, {available} were computed; raise n_components of compute_schur"
                ),
            });
        }
        let pi = match stationary_distribution_with(&self.core.t, Some(&schur.eigenvalues)) {
            Ok(p) => {
                self.no_stationary = None;
                Some(p)
            }
            Err(e) => {
                self.core
                    .note(format!("no coarse stationary distribution: {e}"));
                self.no_stationary = Some(match &e {
                    gpcca::GpccaError::Stationary(s) => s.summary(),
                    other => other.to_string(),
                });
                None
            }
        };
        let t = &self.core.t;
        let tie_breaks = &self.tie_breaks;
        let schur = self.schur.as_ref().expect("checked above");
        // Among the optimiser's solutions (best objective first), the best whose discrete
        // assignment gives every state enough cells (CellRank fails when its one solution
        // does not).
        // The accepted solution's assignment is kept: it is not computed twice.
        let mut kept = None;
        let fitted = gpcca::fit_with_x(
            t,
            schur,
            &x,
            m,
            &opts.optimizer,
            pi.as_deref(),
            &mut |chi| {
                kept = fuzzy_to_discrete_cached(chi, opts.n_cells, Some(t), Some(tie_breaks)).ok();
                kept.is_some()
            },
        );
        check_interrupt(NAME, "compute_macrostates")?;
        let (fit, accepted) = fitted?;
        let mut notes = Vec::new();
        if fit.report.rejected > 0 {
            notes.push(format!(
                "macrostates: {} better solution(s) of the rotation optimiser left a state with too few of its {} most likely cells; kept start {} (crispness {:.3})",
                fit.report.rejected, opts.n_cells, fit.report.best_start, fit.crispness
            ));
        }
        let assignment = if let (true, Some(a)) = (accepted, kept) {
            a
        } else {
            // Every solution leaves a state (nearly) empty at n_cells: the largest number of
            // cells per state at which each state keeps its share (documented recovery).
            let (n_ok, assignment) = fewer_cells(&fit.chi, opts.n_cells, t, tie_breaks)?;
            notes.push(format!(
                "macrostates: every solution of the rotation optimiser leaves a state with too few of its {} most likely cells; assigned {n_ok} cells per macrostate instead",
                opts.n_cells
            ));
            assignment
        };
        for note in notes {
            self.core.note(note);
        }
        let (names, colors) = name_states(&assignment, m, clusters)?;
        let probs = state_probabilities(&fit.chi);
        self.macrostates = Some(Macrostates {
            states: CellStates {
                names,
                colors,
                assignment,
                probs,
                memberships: Some(fit.chi),
            },
            coarse_t: fit.coarse_t,
            coarse_init: fit.coarse_init,
            coarse_stat: fit.coarse_stat,
            crispness: Some(fit.crispness),
            report: Some(fit.report),
        });
        self.initial = None;
        self.core.clear_terminal();
        self.macrostates()
    }

    /// The macrostates.
    pub fn macrostates(&self) -> Result<&Macrostates, EstimatorError> {
        self.macrostates
            .as_ref()
            .ok_or_else(|| not_computed("macrostates", "macrostates", "compute_macrostates"))
    }

    /// Restores macrostates read from a file; forgets terminal and initial states.
    pub fn restore_macrostates(&mut self, m: Macrostates) {
        self.macrostates = Some(m);
        self.no_stationary = None;
        self.initial = None;
        self.core.clear_terminal();
    }

    /// The terminal states `method` selects, their `n_cells` most likely cells each (fewer
    /// when a state would be left with too few, with a note), and notes on the choice.
    fn terminal_from_macrostates(
        &self,
        method: &TerminalMethod,
        n_cells: usize,
    ) -> Result<(CellStates, Vec<String>), EstimatorError> {
        let ms = self.macrostates.as_ref().ok_or_else(|| {
            not_computed(
                "predict_terminal_states",
                "macrostates",
                "compute_macrostates",
            )
        })?;
        let mut notes = Vec::new();
        let sel = if let TerminalMethod::Sinks {
            threshold,
            source_ratio,
        } = method
        {
            let (mut sel, fallback, scores) =
                select_terminal_sinks(&ms.coarse_t, &ms.coarse_init, *threshold, *source_ratio);
            let names = &ms.states.names;
            // The initial state is never terminal (issue 17): the macrostate
            // `predict_initial_states` would name (least coarse stationary mass) is dropped
            // from the selection when it is *drained* — its share of the stationary
            // distribution relative to its share of the cells is below a tenth of every
            // other selected state's — and another terminal state remains. A start of
            // differentiation can pass the flow test when its cells drift back and forth
            // between start macrostates (pancreas at 8 states: Ductal_4, stationary mass
            // 1e-8 against its 12 % of the cells, was reported terminal and initial at once);
            // three end states with none drained (LARRY: 0.97–1.07 each) all stay.
            // Without a stationary distribution the initial state is the strongest source of
            // the coarse chain, which the flow test already left out.
            if names.len() > 1 {
                let (init, drained, why) = match ms.coarse_stat.as_ref() {
                    Some(stat) => {
                        let q = select_initial(stat, 1)?[0];
                        let ratio = |r: usize| stat[r] / ms.coarse_init[r].max(f64::MIN_POSITIVE);
                        let others = sel
                            .iter()
                            .filter(|&&r| r != q)
                            .map(|&r| ratio(r))
                            .fold(f64::INFINITY, f64::min);
                        let drained = others.is_finite() && ratio(q) < 0.1 * others;
                        (
                            q,
                            drained,
                            format!(
                                "the least coarse stationary mass, {:.2e} for {:.1} % of the cells",
                                stat[q],
                                100.0 * ms.coarse_init[q]
                            ),
                        )
                    }
                    None => {
                        let q = select_initial_by_flow(&ms.coarse_t, &ms.coarse_init, 1)?[0];
                        (
                            q,
                            scores[q].source,
                            "the strongest source of the reducible coarse chain".to_string(),
                        )
                    }
                };
                // A stable "source" at the far end of the graph from a drained initial state
                // is an end state whose tip leaks into another branch (dyngen's bifurcation:
                // the sEndD tip flows into sEndC at 0.56 % per step and receives no net
                // flow): kept when its cells lie in the far half of the graph, in hops from
                // the initial state's cells, between the initial state and the farthest
                // macrostate (the kernel's direction: pseudotime increases towards it).
                if drained && !fallback {
                    let depth = macrostate_depths(self.core.t.as_csr(), &ms.states, init);
                    let d0 = depth[init];
                    let dmax = depth
                        .iter()
                        .copied()
                        .filter(|d| d.is_finite())
                        .fold(d0, f64::max);
                    for (q, sc) in scores.iter().enumerate() {
                        if q != init
                            && sc.stable
                            && sc.source
                            && dmax > d0
                            && depth[q].is_finite()
                            && depth[q] >= d0 + 0.5 * (dmax - d0)
                        {
                            sel.push(q);
                            notes.push(format!(
                                "terminal states: {} is stable ({:.4}) and a source of the coarse chain, but it lies at the far end of the graph from the initial state {} ({} hops against {} for the farthest macrostate): terminal",
                                names[q], sc.stability, names[init], depth[q], dmax
                            ));
                        }
                    }
                    sel.sort_unstable();
                }
                if drained && sel.len() > 1 {
                    if let Some(k) = sel.iter().position(|&q| q == init) {
                        sel.remove(k);
                        notes.push(format!(
                            "terminal states: {} is stable ({:.4}) and not a source, but it is the initial state ({why}): not terminal",
                            names[init], scores[init].stability
                        ));
                    }
                }
            }
            for (q, sc) in scores.iter().enumerate() {
                if sc.stable && sc.source && !sel.contains(&q) {
                    notes.push(format!(
                        "terminal states: {} is stable ({:.4}) but a source of the coarse chain (net inflow {:.2e} vs net outflow {:.2e} per step): not terminal",
                        names[q], sc.stability, sc.net_inflow, sc.net_outflow
                    ));
                }
            }
            if fallback {
                let listing = names
                    .iter()
                    .zip(&scores)
                    .map(|(n, sc)| format!("{n}: {:.4}", sc.stability))
                    .collect::<Vec<_>>()
                    .join(", ");
                notes.push(format!(
                    "terminal states: no macrostate is both stable (self-transition >= {threshold}) and not a source ({listing}); took the most stable non-source, {}",
                    sel.iter().map(|&q| names[q].as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            sel
        } else {
            let re: Vec<f64> = self
                .eigenvalues
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|e| e.0)
                .collect();
            select_terminal(&ms.states.names, &ms.stability(), method, &re)?
        };
        let (states, note) = self.states_of(ms, &sel, n_cells, "terminal")?;
        notes.extend(note);
        Ok((states, notes))
    }

    /// The selected macrostates as cell states: `n_cells` most likely cells each, or the
    /// largest number below that leaves no state with too few cells (with a note).
    fn states_of(
        &self,
        ms: &Macrostates,
        sel: &[usize],
        n_cells: usize,
        what: &str,
    ) -> Result<(CellStates, Option<String>), EstimatorError> {
        let chi = ms
            .states
            .memberships
            .as_ref()
            .ok_or(EstimatorError::States {
                estimator: NAME,
                message: "the macrostates have no memberships".into(),
            })?;
        let t = &self.core.t;
        let sub = DMatrix::from_fn(chi.nrows(), sel.len(), |i, j| chi[(i, sel[j])]);
        let (used, assignment) = fewer_cells(&sub, n_cells, t, &self.tie_breaks)?;
        let probs = state_probabilities(&sub);
        let note = (used < n_cells).then(|| {
            format!(
                "{what} states: with {n_cells} cells per state one would be left with too few of its most likely cells; assigned {used} cells per state"
            )
        });
        Ok((
            CellStates {
                names: sel.iter().map(|&q| ms.states.names[q].clone()).collect(),
                colors: sel
                    .iter()
                    .map(|&q| ms.states.colors.get(q).cloned().unwrap_or_default())
                    .collect(),
                assignment,
                probs,
                memberships: Some(sub),
            },
            note,
        ))
    }

    /// Terminal states among the macrostates (CellRank's `predict_terminal_states`: every
    /// method of [`TerminalMethod`]; the default, [`TerminalMethod::Sinks`], is cellfate's),
    /// their `n_cells` most likely cells each. Forgets fate probabilities and what was
    /// computed from them.
    pub fn predict_terminal_states(
        &mut self,
        method: &TerminalMethod,
        opts: &TerminalOptions,
    ) -> Result<&CellStates, EstimatorError> {
        let (states, notes) = match self.terminal_from_macrostates(method, opts.n_cells) {
            Ok(s) => s,
            Err(EstimatorError::StateSelection(e)) if opts.fallback_top_n.is_some() => {
                let k = opts.fallback_top_n.unwrap_or(1);
                self.core.note(format!(
                    "{e}; falling back to the {k} most stable macrostates"
                ));
                self.terminal_from_macrostates(&TerminalMethod::TopN { n_states: k }, opts.n_cells)?
            }
            Err(e) => return Err(e),
        };
        for note in notes {
            self.core.note(note);
        }
        self.core.replace_terminal(states);
        self.terminal_states()
    }

    /// Initial states (CellRank's `predict_initial_states`): the `n_states` macrostates with
    /// the smallest coarse stationary probability, their `n_cells` most likely cells each.
    /// When the chain has no stationary distribution (reducible or nearly reducible; CellRank
    /// fails there), the strongest sources of the coarse chain ([`select_initial_by_flow`]), with a note.
    pub fn predict_initial_states(
        &mut self,
        n_states: usize,
        n_cells: usize,
    ) -> Result<&CellStates, EstimatorError> {
        let ms = self.macrostates.as_ref().ok_or_else(|| {
            not_computed(
                "predict_initial_states",
                "macrostates",
                "compute_macrostates",
            )
        })?;
        let mut notes = Vec::new();
        let sel = match ms.coarse_stat.as_ref() {
            Some(stat) => select_initial(stat, n_states)?,
            None => {
                // No stationary distribution (the chain is reducible or nearly reducible):
                // the purest sources of the coarse chain (see `select_initial_by_flow`).
                let sel = select_initial_by_flow(&ms.coarse_t, &ms.coarse_init, n_states)?;
                let why = self
                    .no_stationary
                    .as_deref()
                    .unwrap_or("the macrostates were restored without one");
                notes.push(format!(
                    "initial states: no coarse stationary distribution ({why}); took the strongest source(s) of the coarse chain: {}",
                    sel.iter().map(|&q| ms.states.names[q].as_str()).collect::<Vec<_>>().join(", ")
                ));
                sel
            }
        };
        let (states, note) = self.states_of(ms, &sel, n_cells, "initial")?;
        notes.extend(note);
        for note in notes {
            self.core.note(note);
        }
        self.initial = Some(states);
        self.initial_states()
    }

    /// The initial states.
    pub fn initial_states(&self) -> Result<&CellStates, EstimatorError> {
        self.initial.as_ref().ok_or_else(|| {
            not_computed("initial_states", "initial states", "predict_initial_states")
        })
    }

    /// Forgets the initial states (e.g. when they coincide with terminal states).
    pub fn clear_initial_states(&mut self) {
        self.initial = None;
    }

    /// Restores initial states read from a file.
    pub fn restore_initial_states(&mut self, s: CellStates) {
        self.initial = Some(s);
    }
}

/// Median hop distance of each macrostate's assigned cells from the cells assigned to
/// macrostate `from`, in the graph of `t`'s nonzero entries taken both ways (a multi-source
/// breadth-first search; `f64::INFINITY` for a state none of whose cells can be reached).
fn macrostate_depths(t: &cellfate_kernels::Csr, states: &CellStates, from: usize) -> Vec<f64> {
    let n = t.nrows();
    let tt = t.transpose();
    let mut hops = vec![u32::MAX; n];
    let mut queue = std::collections::VecDeque::new();
    for (i, a) in states.assignment.iter().enumerate() {
        if *a == Some(from) {
            hops[i] = 0;
            queue.push_back(i);
        }
    }
    while let Some(i) = queue.pop_front() {
        let next = hops[i] + 1;
        for m in [t, &tt] {
            let (cols, vals) = m.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                let j = j as usize;
                if v > 0.0 && hops[j] == u32::MAX {
                    hops[j] = next;
                    queue.push_back(j);
                }
            }
        }
    }
    (0..states.n_states())
        .map(|q| {
            let mut d: Vec<f64> = states
                .assignment
                .iter()
                .zip(&hops)
                .filter(|(a, _)| **a == Some(q))
                .map(|(_, &h)| {
                    if h == u32::MAX {
                        f64::INFINITY
                    } else {
                        f64::from(h)
                    }
                })
                .collect();
            if d.is_empty() {
                return f64::INFINITY;
            }
            d.sort_by(f64::total_cmp);
            d[d.len() / 2]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forward-only path 0 → 1 → … → 9 (edges one way: the search takes them both ways),
    /// states {0, 1}, {4, 5}, {8, 9}: median (upper) hops 0, 4 and 8 from the first state; a cell
    /// no edge reaches makes its state infinitely far.
    #[test]
    fn macrostate_depths_count_hops_both_ways_from_the_initial_state() {
        let mut edges: Vec<(usize, usize, f64)> = (0..9).map(|i| (i, i + 1, 1.0)).collect();
        edges.push((9, 9, 1.0));
        let t = cellfate_kernels::Csr::from_triplets(11, 11, &edges).expect("csr");
        let a = |v: &[Option<usize>]| CellStates {
            names: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            colors: vec![String::new(); 4],
            assignment: v.to_vec(),
            probs: vec![1.0; v.len()],
            memberships: None,
        };
        let mut assignment = vec![None; 11];
        for (i, q) in [(0, 0), (1, 0), (4, 1), (5, 1), (8, 2), (9, 2), (10, 3)] {
            assignment[i] = Some(q);
        }
        let d = macrostate_depths(&t, &a(&assignment), 0);
        assert_eq!(&d[..3], &[0.0, 4.0, 8.0]);
        assert!(d[3].is_infinite());
        // From the far end, the same distances reversed.
        let d = macrostate_depths(&t, &a(&assignment), 2);
        assert_eq!(&d[..3], &[8.0, 4.0, 0.0]);
    }
}
