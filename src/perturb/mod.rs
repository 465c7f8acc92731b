//! In-silico perturbation: knock a gene out, set it to a level, or raise it, and predict how
//! the fate probabilities change (sclsd's `perturb`, dynamo's `pd.perturbation`), on data a
//! `run` has filled (a transition matrix with its kernel spec, terminal states). The core
//! ([`Prepared`] over a [`PerturbInput`]) reads through any [`CellSource`]: `.h5ad` files
//! (`cellfate perturb`, [`perturb_in_file`], feature `h5ad`) and in-memory AnnData (the Python
//! package's `cellfate.pd.perturbation`) get the same results under the same keys
//! ([`outcome_slots`], [`screen_slots`]).
//!
//! Two predictors ([`PerturbMethod`]):
//! - **kinetic** (the default; needs no vector field): the change applied in each gene's
//!   fitted velocity model ([`cellfate_dynamics::perturb`], with the compositional term of
//!   normalised data), the velocity layer recomputed for the chosen cells, and the run's kernel recomputed with its stored effective parameters
//!   (the same expression, the same softmax scale: only the velocities differ);
//! - **jacobian**: the change mapped into the vector field's basis, Δv = J·Δz
//!   ([`cellfate_vectorfield::perturb`]), and the velocity kernel computed in the basis (cells'
//!   positions `obsm["X_<basis>"]`, velocities `obsm["velocity_<basis>"]` + Δv; the other terms
//!   of the run's expression unchanged). Its unperturbed reference is the same kernel in the
//!   basis, so that the shift comes from Δv alone.
//!
//! Both then solve for the fate probabilities towards the run's terminal states
//! (`obs["term_states_fwd"]`) with the perturbed and the unperturbed transition matrices, and
//! report the shifts (perturbed − unperturbed) per cell, per lineage and cluster with
//! bootstrap intervals, and the cells whose most likely fate changes.
//!
//! What is reused between perturbations (a screen runs many on one [`Prepared`]):
//! - the kinetic route changes each cell's velocity by a few genes plus the compositional
//!   term, `Δv_i = Σ_j a_ij e_j + b_i x_i`, so the velocity kernel is updated from inner
//!   products stored per edge ([`cellfate_kernels::velocity_update`]: O(edges × genes
//!   perturbed) per perturbation instead of a pass over every gene; equal to a full
//!   recompute within 1e-12), and the other kernels of the expression are computed once;
//! - the fate probabilities are solved by GMRES preconditioned by the unperturbed system's
//!   factorisation and started from the unperturbed fates
//!   ([`compute_fate_probabilities_near`]), with the same residual and row-sum checks as a
//!   fresh solve (which is used when that does not converge).
//!
//! Written under the key `K` (default `perturbed`): `obsm["lineages_fwd_K"]` (perturbed fate
//! probabilities, lineage order of `uns["K"]["lineages"]`), `obsm["lineages_fwd_K_shift"]`,
//! `obs["fate_changed_K"]`, `obsm["velocity_<embedding>_K"]` (the perturbed transition
//! matrix projected on the embedding, as scVelo projects velocities), `obsp["K_transition_matrix"]`
//! and `uns["K"]` (JSON: the perturbation, the method and the summary). The jacobian route also
//! writes dynamo's `obsm["j_delta_x_perturbation"]` (Δv in the basis).

use std::collections::BTreeMap;

use cellfate_dynamics::perturb::{
    add_composition, changed_fates, kinetic_velocity, shift_summary, BootstrapOptions, Change,
    GeneKinetics, GroupShift,
};
use cellfate_estimators::absorption::{
    compute_fate_probabilities, compute_fate_probabilities_near, AbsorptionError,
    AbsorptionOptions, FateProbabilities, TransientSystem,
};
use cellfate_kernels::velocity_update::{LowRankChange, VelocityUpdate};
use cellfate_kernels::{
    projection, CellSource, Csr, DenseMatrix, Kernel, KernelError, KernelOutput, KernelSpec,
    SourceError, TransitionMatrix,
};
use cellfate_vectorfield::VectorField;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::io::{Element, SparseArray};

#[cfg(feature = "h5ad")]
mod file;
#[cfg(feature = "h5ad")]
pub use file::{input_from_file, perturb_in_file, screen_genes};

/// An error of a perturbation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PerturbError {
    /// Settings that cannot work (names the field and the flag).
    #[error("perturb: {0}")]
    Settings(String),
    /// The input lacks what the perturbation needs, or a gene cannot be perturbed.
    #[error("{0}")]
    Data(String),
    /// A TOML spec that does not parse.
    #[error("config: {0}")]
    Config(#[from] toml::de::Error),
    /// Recomputing the kernel.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Solving for the fate probabilities.
    #[error(transparent)]
    Absorption(#[from] AbsorptionError),
}

/// How the perturbed velocities are predicted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PerturbMethod {
    /// In each gene's fitted velocity model (the default).
    #[default]
    Kinetic,
    /// Through the vector field's Jacobian in its basis (dynamo's `j_delta_x`).
    Jacobian,
}

impl std::str::FromStr for PerturbMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kinetic" => Ok(Self::Kinetic),
            "jacobian" => Ok(Self::Jacobian),
            other => Err(format!("method {other:?}: expected kinetic or jacobian")),
        }
    }
}

/// One validated spec of a perturbation, shared by the library, TOML (`[perturb]` fields)
/// and the CLI flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerturbSpec {
    /// Genes perturbed together (var names).
    pub genes: Vec<String>,
    /// Set the genes' expression to this level (0: knockout). Exclusive with `fold`; a
    /// knockout when neither is given.
    pub level: Option<f64>,
    /// Multiply the genes' expression (transcription) by this factor.
    pub fold: Option<f64>,
    /// Perturb only the cells of this cluster (of `cluster_key`); all cells when `None`.
    pub cluster: Option<String>,
    /// The obs column of clusters (for `cluster` and the per-cluster summary).
    pub cluster_key: String,
    /// The predictor.
    pub method: PerturbMethod,
    /// The vector field's basis (jacobian route): `uns["VecFld_<basis>"]`, `obsm["X_<basis>"]`.
    pub basis: String,
    /// The embedding the perturbed velocities are projected on (`obsm["X_<embedding>"]`);
    /// `umap` when the file has it, else the basis.
    pub embedding: Option<String>,
    /// The transition matrix of the run (`obsp[...]`, with `uns[..._params]["spec"]`).
    pub transition_key: String,
    /// Key of the outputs (see the module docs).
    pub key: String,
    /// Bootstrap resamples for the intervals.
    pub n_boot: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// A screen instead of one perturbation: `top_drivers:N` (the N genes with the largest
    /// |correlation| in `varm["terminal_lineage_drivers"]`) or `genes:A,B,...`; each gene is
    /// perturbed alone with `level`/`fold` and the genes are ranked by the shift they cause.
    pub screen: Option<String>,
}

impl Default for PerturbSpec {
    fn default() -> Self {
        Self {
            genes: Vec::new(),
            level: None,
            fold: None,
            cluster: None,
            cluster_key: "clusters".into(),
            method: PerturbMethod::Kinetic,
            basis: "pca".into(),
            embedding: None,
            transition_key: "T_fwd".into(),
            key: "perturbed".into(),
            n_boot: 1000,
            seed: 0,
            screen: None,
        }
    }
}

/// A settings error, naming the field and the flag.
fn settings(message: String) -> PerturbError {
    PerturbError::Settings(message)
}

/// An error about the input file.
fn data(input: &str, message: String) -> PerturbError {
    PerturbError::Data(format!("{input}: {message}"))
}

impl PerturbSpec {
    /// Reads `[perturb]`-style TOML (the fields of this struct at the top level).
    pub fn from_toml(text: &str) -> Result<Self, PerturbError> {
        Ok(toml::from_str(text)?)
    }

    /// The change asked for (a knockout when neither level nor fold is given).
    pub fn change(&self) -> Result<Change, PerturbError> {
        let c = match (self.level, self.fold) {
            (Some(_), Some(_)) => {
                return Err(settings(
                    "level (--level) and fold (--fold) exclude each other: give one".into(),
                ))
            }
            (Some(l), None) => Change::Level(l),
            (None, Some(k)) => Change::Fold(k),
            (None, None) => Change::Level(0.0),
        };
        c.validate()
            .map_err(|m| settings(format!("{m} (--level / --fold)")))?;
        Ok(c)
    }

    /// Checks the settings on their own, a request included (genes or a screen).
    pub fn validate(&self) -> Result<(), PerturbError> {
        self.validate_settings()?;
        if self.genes.is_empty() && self.screen.is_none() {
            return Err(settings(
                "no gene to perturb: give genes (--gene G[,G]) or a screen (--screen top_drivers:N | genes:A,B)".into(),
            ));
        }
        if !self.genes.is_empty() && self.screen.is_some() {
            return Err(settings(
                "genes (--gene) and screen (--screen) exclude each other: a screen perturbs each of its genes in turn".into(),
            ));
        }
        Ok(())
    }

    /// Checks the settings other than what is perturbed (what [`Prepared::new`] needs).
    pub fn validate_settings(&self) -> Result<(), PerturbError> {
        self.change()?;
        if let Some(s) = &self.screen {
            parse_screen(s)?;
        }
        if self.key.is_empty() || self.key.contains('/') {
            return Err(settings(format!(
                "key (--key) = {:?}: expected a name without '/'",
                self.key
            )));
        }
        Ok(())
    }
}

/// What a screen perturbs.
#[derive(Clone, Debug, PartialEq)]
pub enum Screen {
    /// The N genes with the largest |correlation| with any lineage.
    TopDrivers(usize),
    /// These genes.
    Genes(Vec<String>),
}

/// Parses `top_drivers:N` or `genes:A,B`.
pub fn parse_screen(s: &str) -> Result<Screen, PerturbError> {
    let bad = || {
        settings(format!(
            "screen (--screen) = {s:?}: expected top_drivers:N (N >= 1) or genes:A,B,..."
        ))
    };
    match s.split_once(':') {
        Some(("top_drivers", n)) => match n.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Screen::TopDrivers(n)),
            _ => Err(bad()),
        },
        Some(("genes", list)) => {
            let genes: Vec<String> = list
                .split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect();
            if genes.is_empty() {
                Err(bad())
            } else {
                Ok(Screen::Genes(genes))
            }
        }
        _ => Err(bad()),
    }
}

/// A cell source that reads through to another one except for some replaced layers (and,
/// for the basis kernel, a different number of "genes").
struct Overlay<'a> {
    inner: &'a (dyn CellSource + 'a),
    layers: BTreeMap<String, DenseMatrix>,
    n_genes: Option<usize>,
}

impl CellSource for Overlay<'_> {
    fn n_cells(&self) -> usize {
        self.inner.n_cells()
    }
    fn n_genes(&self) -> usize {
        self.n_genes.unwrap_or_else(|| self.inner.n_genes())
    }
    fn graph(&self, key: &str) -> Result<Csr, SourceError> {
        self.inner.graph(key)
    }
    fn obs_f64(&self, key: &str) -> Result<Vec<f64>, SourceError> {
        self.inner.obs_f64(key)
    }
    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, SourceError> {
        self.inner.obs_labels(key)
    }
    fn layer(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        match self.layers.get(key) {
            Some(m) => Ok(m.clone()),
            None => self.inner.layer(key),
        }
    }
    fn obsm(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        self.inner.obsm(key)
    }
    fn var_mask(&self, key: &str) -> Result<Option<Vec<bool>>, SourceError> {
        if self.n_genes.is_some() {
            return Ok(None);
        }
        self.inner.var_mask(key)
    }
    fn obs_categories(&self, key: &str) -> Result<Vec<String>, SourceError> {
        self.inner.obs_categories(key)
    }
    fn uns_matrix(&self, key: &str) -> Result<Option<DenseMatrix>, SourceError> {
        self.inner.uns_matrix(key)
    }
}

/// Applies `f` to every velocity leaf of `spec`; returns how many there were.
fn edit_velocity_leaves(
    spec: &mut KernelSpec,
    f: &mut dyn FnMut(&mut cellfate_kernels::VelocityParams),
) -> usize {
    match spec {
        KernelSpec::Velocity(p) => {
            f(p);
            1
        }
        KernelSpec::Sum { terms } => terms
            .iter_mut()
            .map(|(_, k)| edit_velocity_leaves(k, f))
            .sum(),
        KernelSpec::Product { factors } => {
            factors.iter_mut().map(|k| edit_velocity_leaves(k, f)).sum()
        }
        _ => 0,
    }
}

/// The edit distance between two names (for suggestions).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(!ca.eq_ignore_ascii_case(cb)))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to three names closest to `name`.
pub fn closest_names<'a>(name: &str, names: &'a [String]) -> Vec<&'a str> {
    let mut scored: Vec<(usize, &str)> = names
        .iter()
        .map(|n| (edit_distance(name, n), n.as_str()))
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|s| s.1).collect()
}

/// What a perturbation reads, gathered by the caller: from an `.h5ad` file
/// ([`input_from_file`]) or from an in-memory AnnData (the Python package).
pub struct PerturbInput<'a> {
    /// Layers, `obs` columns and graphs (the kernel's inputs).
    pub source: &'a (dyn CellSource + 'a),
    /// The input's name in messages (a path, or `adata`).
    pub name: String,
    /// The run's kernel: its transition matrix and effective spec.
    pub kernel: KernelOutput,
    /// `obs["term_states_fwd"]`: labels and categories.
    pub terminal: (Vec<Option<String>>, Vec<String>),
    /// Gene names.
    pub var_names: Vec<String>,
    /// Clusters (labels and categories) of `cluster_key`, when present.
    pub clusters: Option<(Vec<Option<String>>, Vec<String>)>,
    /// Kinetic route: whether the velocities come from the dynamical model
    /// (`uns["velocity_params"]["mode"]`).
    pub dynamical: bool,
    /// Kinetic route: `var["velocity_gamma"]` (steady-state and stochastic models).
    pub velocity_gamma: Option<Vec<f64>>,
    /// Kinetic route: `var["fit_beta"]` and `var["fit_gamma"]` (dynamical model).
    pub fit_rates: Option<(Vec<f64>, Vec<f64>)>,
    /// Jacobian route: the field and the cells' positions and velocities in its basis
    /// (row-major n × d), with the basis name.
    pub field: Option<(VectorField, Vec<f64>, Vec<f64>, String)>,
    /// Whether `X` is log1p-transformed (`uns["log1p"]`): a fold is applied to the counts.
    pub log1p: bool,
}

/// Everything a perturbation needs, read once and with the unperturbed reference computed
/// (a screen reuses it for every gene).
pub struct Prepared<'a> {
    source: &'a (dyn CellSource + 'a),
    input: String,
    /// The kernel spec used (the run's effective spec; in the basis for the jacobian route).
    spec: KernelSpec,
    /// The unperturbed transition matrix (recomputed with `spec`).
    pub base_t: TransitionMatrix,
    /// The unperturbed fate probabilities (row-major n × lineages).
    pub base_fates: Vec<f64>,
    /// The unperturbed system's factorisation and fate probabilities: every perturbation is
    /// solved from them (GMRES preconditioned by the factorisation, started from the
    /// unperturbed fates) instead of factorising its own chain.
    base_system: Option<(TransientSystem, FateProbabilities)>,
    /// Lineage names.
    pub lineages: Vec<String>,
    terminal: Vec<Option<usize>>,
    /// Gene names.
    pub var_names: Vec<String>,
    /// Cells perturbed.
    pub cells: Vec<usize>,
    /// Summary groups: all cells (or the chosen cluster), then each cluster.
    groups: Vec<(String, Vec<usize>)>,
    method: PerturbMethod,
    change: Change,
    /// Kinetic route: the velocity layer key, the layer, `Mu`, the genes' kinetics and the
    /// genes the kernel reads.
    velocity: Option<KineticState>,
    /// Kinetic route: the normalised expression (the kernel's `Ms`) and each cell's total,
    /// for the compositional term.
    expression: Option<(DenseMatrix, Vec<f64>)>,
    /// Jacobian route: the field, positions and velocities in the basis, d, and `X`.
    field: Option<JacobianState>,
    log1p: bool,
    opts: AbsorptionOptions,
    boot: BootstrapOptions,
}

/// The jacobian route's inputs: the field, the cells' positions and velocities in its basis
/// (row-major n × d), d, and `X`.
struct JacobianState {
    field: VectorField,
    x: Vec<f64>,
    v: Vec<f64>,
    d: usize,
    expr: DenseMatrix,
}

/// The kinetic route's inputs.
struct KineticState {
    vkey: String,
    velocity: DenseMatrix,
    mu: DenseMatrix,
    kinetics: Vec<GeneKinetics>,
    used: Vec<bool>,
    /// The kernel expression prepared for perturbations: `None` when a velocity kernel of
    /// the expression cannot be updated (the backward kernel in `transpose` mode); then each
    /// perturbation recomputes the expression in full.
    fast: Option<FastKernel>,
}

/// The run's kernel expression prepared for perturbations of its velocities: each velocity
/// kernel that reads the perturbed layer as a [`VelocityUpdate`] (a perturbation costs
/// O(edges × genes perturbed) instead of a full pass over every gene), the other kernels
/// computed once.
struct FastKernel {
    updates: Vec<VelocityUpdate>,
    cached: Vec<(KernelSpec, KernelOutput)>,
}

/// The leaves of a kernel expression, in order.
fn leaves(spec: &KernelSpec) -> Vec<&KernelSpec> {
    match spec {
        KernelSpec::Sum { terms } => terms.iter().flat_map(|(_, k)| leaves(k)).collect(),
        KernelSpec::Product { factors } => factors.iter().flat_map(leaves).collect(),
        leaf => vec![leaf],
    }
}

impl FastKernel {
    /// Prepares `spec` (effective parameters) on `src` for perturbations of layer `vkey`.
    fn new(
        spec: &KernelSpec,
        src: &dyn CellSource,
        vkey: &str,
    ) -> Result<Option<Self>, PerturbError> {
        let mut updates = Vec::new();
        let mut cached: Vec<(KernelSpec, KernelOutput)> = Vec::new();
        for leaf in leaves(spec) {
            match leaf {
                KernelSpec::Velocity(p) if p.vkey == vkey => match p.prepare_update(src)? {
                    Some(u) => updates.push(u),
                    None => return Ok(None),
                },
                other => {
                    if !cached.iter().any(|(k, _)| k == other) {
                        cached.push((other.clone(), other.compute(src)?));
                    }
                }
            }
        }
        Ok(Some(Self { updates, cached }))
    }

    /// The expression with the velocities changed by `change`.
    fn transition(
        &self,
        spec: &KernelSpec,
        src: &dyn CellSource,
        change: &LowRankChange,
    ) -> Result<TransitionMatrix, PerturbError> {
        let out = spec.compute_with(src, &|leaf| {
            if let KernelSpec::Velocity(p) = leaf {
                if let Some(u) = self.updates.iter().find(|u| u.params() == p) {
                    return Some(u.transition(change).map(|transition| KernelOutput {
                        transition,
                        effective: leaf.clone(),
                    }));
                }
            }
            self.cached
                .iter()
                .find(|(k, _)| k == leaf)
                .map(|(_, out)| Ok(out.clone()))
        })?;
        Ok(out.transition)
    }
}

/// The result of one perturbation.
#[derive(Clone, Debug, Serialize)]
pub struct PerturbOutcome {
    /// Genes perturbed.
    pub genes: Vec<String>,
    /// What was done (`knockout`, `level L`, `fold k`).
    pub change: String,
    /// Predictor.
    pub method: PerturbMethod,
    /// Lineage names.
    pub lineages: Vec<String>,
    /// Cells perturbed.
    pub n_cells_perturbed: usize,
    /// Shifts in the perturbed cells (or all cells) first, then per cluster.
    pub groups: Vec<GroupShift>,
    /// Perturbed fate probabilities (row-major n × lineages).
    #[serde(skip)]
    pub fates: Vec<f64>,
    /// How the perturbed fate probabilities were solved: from the unperturbed factorisation
    /// (GMRES), or with a factorisation of their own when that did not converge.
    pub solver: &'static str,
    /// The perturbed transition matrix.
    #[serde(skip)]
    pub transition: Option<TransitionMatrix>,
    /// Jacobian route: Δv in the basis (row-major n × d).
    #[serde(skip)]
    pub delta_v: Option<Vec<f64>>,
}

impl<'a> Prepared<'a> {
    /// Checks what the perturbations of `spec` need in `input` and computes the unperturbed
    /// reference (the run's kernel recomputed, the fate probabilities towards its terminal
    /// states).
    pub fn from_input(input: PerturbInput<'a>, spec: &PerturbSpec) -> Result<Self, PerturbError> {
        spec.validate_settings()?;
        let change = spec.change()?;
        let name = input.name.clone();
        let src = input.source;
        let n = src.n_cells();
        let mut kspec = input.kernel.effective.clone();
        let mut found = None;
        edit_velocity_leaves(&mut kspec, &mut |p| {
            if found.is_none() {
                found = Some(p.clone());
            }
        });
        let Some(vparams) = found else {
            return Err(data(
                &name,
                format!("the kernel of obsp[\"{}\"] ({}) has no velocity term: a perturbation changes velocities, so it cannot change this transition matrix", spec.transition_key, input.kernel.effective.to_json()),
            ));
        };
        let (labels, lineages) = input.terminal;
        if lineages.len() < 2 {
            return Err(data(
                &name,
                format!("the run has {} terminal state(s): fate probabilities shift only between two or more", lineages.len()),
            ));
        }
        let terminal: Vec<Option<usize>> = labels
            .iter()
            .map(|l| {
                l.as_ref()
                    .and_then(|s| lineages.iter().position(|c| c == s))
            })
            .collect();
        if terminal.len() != n {
            return Err(data(
                &name,
                format!(
                    "obs[\"term_states_fwd\"] has {} cells, the data {n}",
                    terminal.len()
                ),
            ));
        }
        // Cells and summary groups.
        let clusters = input.clusters;
        let members = |cl: &(Vec<Option<String>>, Vec<String>), c: &str| -> Vec<usize> {
            (0..n)
                .filter(|&i| cl.0.get(i).and_then(|l| l.as_deref()) == Some(c))
                .collect()
        };
        let cells: Vec<usize> = match &spec.cluster {
            None => (0..n).collect(),
            Some(c) => {
                let cl = clusters.as_ref().ok_or_else(|| {
                    data(&name, format!("--cluster {c}: obs[\"{}\"] (--cluster-key) is missing or not categorical", spec.cluster_key))
                })?;
                if !cl.1.contains(c) {
                    return Err(data(
                        &name,
                        format!(
                            "--cluster {c}: obs[\"{}\"] has no category {c:?}; it has {}",
                            spec.cluster_key,
                            cl.1.join(", ")
                        ),
                    ));
                }
                members(cl, c)
            }
        };
        let mut groups = vec![(
            spec.cluster.clone().unwrap_or_else(|| "all".into()),
            cells.clone(),
        )];
        if let Some(cl) = &clusters {
            for c in &cl.1 {
                let m = members(cl, c);
                if !m.is_empty() {
                    groups.push((c.clone(), m));
                }
            }
        }
        let mut prepared = Self {
            source: src,
            input: name.clone(),
            spec: kspec,
            base_t: input.kernel.transition.clone(),
            base_fates: Vec::new(),
            base_system: None,
            lineages,
            terminal,
            var_names: input.var_names,
            cells,
            groups,
            method: spec.method,
            change,
            velocity: None,
            expression: None,
            field: None,
            log1p: input.log1p,
            opts: AbsorptionOptions::default(),
            boot: BootstrapOptions {
                n_boot: spec.n_boot,
                seed: spec.seed,
                ..Default::default()
            },
        };
        match spec.method {
            PerturbMethod::Kinetic => {
                let vkey = vparams.vkey.clone();
                let layer = src.layer(&vkey).map_err(|e| {
                    data(
                        &name,
                        format!("the kinetic route recomputes layers[\"{vkey}\"]: {e}"),
                    )
                })?;
                let g = layer.ncols();
                let kinetics: Vec<GeneKinetics> = if input.dynamical {
                    let (b, gm) = input.fit_rates.ok_or_else(|| {
                        data(&name, "the dynamical model's var[\"fit_beta\"] and var[\"fit_gamma\"] are missing: the kinetic route needs the fitted rates".into())
                    })?;
                    b.iter()
                        .zip(&gm)
                        .map(|(&beta, &gamma)| GeneKinetics { beta, gamma })
                        .collect()
                } else {
                    let gm = input.velocity_gamma.ok_or_else(|| {
                        data(&name, "var[\"velocity_gamma\"] is missing: the kinetic route needs the fitted velocity model (`cellfate velocity`); --method jacobian goes through a vector field instead".into())
                    })?;
                    gm.iter()
                        .map(|&gamma| GeneKinetics { beta: 1.0, gamma })
                        .collect()
                };
                if kinetics.len() != g {
                    return Err(data(
                        &name,
                        format!(
                            "layers[\"{vkey}\"] has {g} genes but the velocity model has {}",
                            kinetics.len()
                        ),
                    ));
                }
                let mu = src
                    .layer("Mu")
                    .or_else(|_| src.layer("unspliced"))
                    .map_err(|e| {
                        data(
                            &name,
                            format!(
                                "the kinetic route reads the unspliced moments layers[\"Mu\"]: {e}"
                            ),
                        )
                    })?;
                if mu.nrows() != n || mu.ncols() != g {
                    return Err(data(
                        &name,
                        format!(
                            "layers[\"Mu\"] is {} x {}, the velocities {n} x {g}",
                            mu.nrows(),
                            mu.ncols()
                        ),
                    ));
                }
                let subset = vparams
                    .gene_subset
                    .clone()
                    .unwrap_or_else(|| format!("{vkey}_genes"));
                let used = src
                    .var_mask(&subset)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| vec![true; g]);
                if used.len() != g || prepared.var_names.len() != g {
                    return Err(data(
                        &name,
                        format!(
                            "layers[\"{vkey}\"] has {g} genes, var_names {} and var[\"{subset}\"] {}",
                            prepared.var_names.len(),
                            used.len()
                        ),
                    ));
                }
                let xs = src.layer(&vparams.xkey).map_err(|e| {
                    data(
                        &name,
                        format!(
                            "layers[\"{}\"] (the kernel's expression): {e}",
                            vparams.xkey
                        ),
                    )
                })?;
                if xs.nrows() != n || xs.ncols() != g {
                    return Err(data(
                        &name,
                        format!(
                            "layers[\"{}\"] is {} x {}, the velocities {n} x {g}",
                            vparams.xkey,
                            xs.nrows(),
                            xs.ncols()
                        ),
                    ));
                }
                // scVelo normalises every cell to the median of the raw totals over all genes
                // (`obs["initial_size_spliced"]`), before genes are filtered; without that
                // column, the row sums of what is kept.
                let median = src.obs_f64("initial_size_spliced").ok().and_then(|mut t| {
                    t.retain(|x| x.is_finite() && *x > 0.0);
                    (!t.is_empty()).then(|| cellfate_dynamics::stats::percentile(&t, 50.0))
                });
                let mut row = Vec::new();
                let totals = (0..n)
                    .map(|i| match median {
                        Some(m) => m,
                        None => {
                            xs.row_into(i, &mut row);
                            row.iter().filter(|x| x.is_finite()).sum::<f64>()
                        }
                    })
                    .collect();
                prepared.expression = Some((xs, totals));
                // The unperturbed reference: the run's effective kernel on the same source,
                // computed the way the perturbations will be (so that no change shifts
                // nothing).
                let fast = FastKernel::new(&prepared.spec, src, &vkey)?;
                prepared.base_t = match &fast {
                    Some(f) => f.transition(&prepared.spec, src, &LowRankChange::default())?,
                    None => prepared.spec.compute(src)?.transition,
                };
                prepared.velocity = Some(KineticState {
                    vkey,
                    velocity: layer,
                    mu,
                    kinetics,
                    used,
                    fast,
                });
            }
            PerturbMethod::Jacobian => {
                let (field, x, v, basis) = input.field.ok_or_else(|| {
                    data(&name, format!("uns[\"VecFld_{0}\"] is missing: the jacobian route needs a vector field (`cellfate vectorfield --basis {0}` first)", spec.basis))
                })?;
                let d = field.dim();
                if x.len() != n * d || v.len() != n * d {
                    return Err(data(&name, format!("the positions and velocities in {basis} must be {n} x {d} (the field's dimension)")));
                }
                let expr = src.layer("X").map_err(|e| data(&name, format!("X: {e}")))?;
                if expr.nrows() != n || expr.ncols() != prepared.var_names.len() {
                    return Err(data(
                        &name,
                        format!(
                            "X is {} x {}: expected {n} cells x {} genes (var_names)",
                            expr.nrows(),
                            expr.ncols(),
                            prepared.var_names.len()
                        ),
                    ));
                }
                // The velocity kernel in the basis, its softmax scale estimated unperturbed.
                edit_velocity_leaves(&mut prepared.spec, &mut |p| {
                    p.xkey = BASIS_X.into();
                    p.vkey = BASIS_V.into();
                    p.gene_subset = None;
                    p.softmax_scale = None;
                });
                let overlay = basis_overlay(src, &x, &v, n, d);
                let out = prepared.spec.compute(&overlay)?;
                prepared.spec = out.effective;
                prepared.base_t = out.transition;
                prepared.field = Some(JacobianState {
                    field,
                    x,
                    v,
                    d,
                    expr,
                });
            }
        }
        let (f, sys) = compute_fate_probabilities(
            &prepared.base_t,
            &prepared.terminal,
            &prepared.lineages,
            &prepared.opts,
        )?;
        prepared.base_fates = f.probs.clone();
        prepared.base_system = Some((sys, f));
        Ok(prepared)
    }

    /// Fate probabilities of a perturbed chain, solved from the unperturbed factorisation
    /// (a fresh one when that does not converge), and the solver used.
    fn fates(&self, t: &TransitionMatrix) -> Result<(Vec<f64>, &'static str), PerturbError> {
        let (f, _) = match &self.base_system {
            Some((sys, f0)) => compute_fate_probabilities_near(
                t,
                &self.terminal,
                &self.lineages,
                &self.opts,
                sys,
                f0,
            )?,
            None => compute_fate_probabilities(t, &self.terminal, &self.lineages, &self.opts)?,
        };
        Ok((f.probs, f.solver))
    }

    /// Index of a gene by name; an error suggesting the closest names.
    pub fn gene_index(&self, name: &str) -> Result<usize, PerturbError> {
        self.var_names
            .iter()
            .position(|g| g == name)
            .ok_or_else(|| {
                data(
                    &self.input,
                    format!(
                        "--gene {name}: no such gene in var_names; closest: {}",
                        closest_names(name, &self.var_names).join(", ")
                    ),
                )
            })
    }

    /// Perturbs `genes` together and predicts the shift.
    pub fn perturb(&self, genes: &[String]) -> Result<PerturbOutcome, PerturbError> {
        let idx: Vec<usize> = genes
            .iter()
            .map(|g| self.gene_index(g))
            .collect::<Result<_, _>>()?;
        let (t, delta_v) = match self.method {
            PerturbMethod::Kinetic => (self.kinetic_transition(genes, &idx)?, None),
            PerturbMethod::Jacobian => {
                let (t, dv) = self.jacobian_transition(genes, &idx)?;
                (t, Some(dv))
            }
        };
        let (fates, solver) = self.fates(&t)?;
        let l = self.lineages.len();
        let groups = shift_summary(&self.base_fates, &fates, l, &self.groups, &self.boot);
        Ok(PerturbOutcome {
            genes: genes.to_vec(),
            change: self.change.describe(),
            method: self.method,
            lineages: self.lineages.clone(),
            n_cells_perturbed: self.cells.len(),
            groups,
            fates,
            solver,
            transition: Some(t),
            delta_v,
        })
    }

    /// Gene `j` of `m` must not be 0 in every perturbed cell (`slot` names it).
    fn check_expressed(
        &self,
        name: &str,
        slot: &str,
        m: &DenseMatrix,
        j: usize,
    ) -> Result<(), PerturbError> {
        if self.cells.iter().all(|&i| m.get(i, j) == 0.0) {
            return Err(data(
                &self.input,
                format!("--gene {name}: {slot} is 0 in every perturbed cell ({}): there is no expression to change", self.groups[0].0),
            ));
        }
        Ok(())
    }

    /// The kinetic route can perturb gene `j` (`name`): a velocity gene with valid rates and
    /// some expression in the perturbed cells.
    fn check_kinetic(&self, name: &str, j: usize) -> Result<(), PerturbError> {
        let k = self.velocity.as_ref().expect("kinetic route");
        if !k.used[j] {
            return Err(data(
                &self.input,
                format!("--gene {name} is not among the velocity genes (var[\"{}_genes\"]): the kinetic route changes velocities the kernel reads, and the kernel does not read this gene; --method jacobian (through a vector field) can still perturb it", k.vkey),
            ));
        }
        if !k.kinetics[j].is_valid() {
            return Err(data(
                &self.input,
                format!(
                    "--gene {name}: its velocity model has no valid rates (beta {}, gamma {})",
                    k.kinetics[j].beta, k.kinetics[j].gamma
                ),
            ));
        }
        if let Some((xs, _)) = &self.expression {
            self.check_expressed(name, "layers[\"Ms\"]", xs, j)?;
        }
        Ok(())
    }

    fn kinetic_transition(
        &self,
        names: &[String],
        idx: &[usize],
    ) -> Result<TransitionMatrix, PerturbError> {
        let k = self.velocity.as_ref().expect("kinetic route");
        let (n, g) = (k.velocity.nrows(), k.velocity.ncols());
        for (name, &j) in names.iter().zip(idx) {
            self.check_kinetic(name, j)?;
        }
        if let Some(fast) = &k.fast {
            // The change as `Σ_j a_ij e_j + b_i x_i`: each gene's own change δ_ij, whose
            // compositional term `−δ_ij x_ic / N_i` touches every other gene c ≠ j (so gene j
            // gets `δ_ij (1 + x_ij / N_i)` and every gene `−δ_ij x_ic / N_i`).
            let mut change = LowRankChange {
                genes: Vec::with_capacity(idx.len()),
                own: None,
            };
            let mut own = vec![0.0; n];
            for &j in idx {
                let mut a = vec![0.0; n];
                for &i in &self.cells {
                    let vij = k.velocity.get(i, j);
                    if !vij.is_finite() {
                        continue;
                    }
                    let delta =
                        kinetic_velocity(vij, k.mu.get(i, j), k.kinetics[j], self.change) - vij;
                    a[i] = delta;
                    if let Some((xs, totals)) = &self.expression {
                        let (x, t) = (xs.get(i, j), totals[i]);
                        if t.is_finite() && t > 0.0 && delta.is_finite() && x.is_finite() {
                            a[i] += delta * x / t;
                            own[i] -= delta / t;
                        }
                    }
                }
                change.genes.push((j, a));
            }
            if self.expression.is_some() {
                change.own = Some(own);
            }
            return fast.transition(&self.spec, self.source, &change);
        }
        let mut v = k.velocity.to_f64();
        for &j in idx {
            let mut x = Vec::new();
            for &i in &self.cells {
                let q = i * g + j;
                if v[q].is_finite() {
                    let new = kinetic_velocity(v[q], k.mu.get(i, j), k.kinetics[j], self.change);
                    let delta = new - v[q];
                    v[q] = new;
                    if let Some((xs, totals)) = &self.expression {
                        xs.row_into(i, &mut x);
                        add_composition(&mut v[i * g..(i + 1) * g], &x, totals[i], j, delta);
                    }
                }
            }
        }
        let overlay = Overlay {
            inner: self.source,
            // Shared: the kernel's reads clone the layer, which then costs nothing.
            layers: BTreeMap::from([(
                k.vkey.clone(),
                DenseMatrix::from_shared_f64(n, g, std::sync::Arc::new(v)),
            )]),
            n_genes: None,
        };
        Ok(self.spec.compute(&overlay)?.transition)
    }

    fn jacobian_transition(
        &self,
        names: &[String],
        idx: &[usize],
    ) -> Result<(TransitionMatrix, Vec<f64>), PerturbError> {
        let JacobianState {
            field,
            x,
            v,
            d,
            expr,
        } = self.field.as_ref().expect("jacobian route");
        let n = x.len() / d;
        let mut dz = vec![0.0; n * d];
        for (name, &j) in names.iter().zip(idx) {
            self.check_expressed(name, "X", expr, j)?;
            let col: Vec<f64> = (0..n).map(|i| expr.get(i, j)).collect();
            let w = cellfate_vectorfield::perturb::loadings(&col, x, *d);
            for &i in &self.cells {
                let xi = col[i];
                let target = match self.change {
                    Change::Level(l) => l,
                    Change::Fold(k) if self.log1p => (k * xi.exp_m1()).ln_1p(),
                    Change::Fold(k) => k * xi,
                };
                let dx = target - xi;
                for k in 0..*d {
                    dz[i * d + k] += dx * w[k];
                }
            }
        }
        let dv = cellfate_vectorfield::perturb::jacobian_response(field, x, &dz);
        let vp: Vec<f64> = v.iter().zip(&dv).map(|(a, b)| a + b).collect();
        let overlay = basis_overlay(self.source, x, &vp, n, *d);
        Ok((self.spec.compute(&overlay)?.transition, dv))
    }
}

/// Layer keys of the basis kernel's positions and velocities.
const BASIS_X: &str = "__perturb_basis_x";
const BASIS_V: &str = "__perturb_basis_v";

fn basis_overlay<'a>(
    src: &'a (dyn CellSource + 'a),
    x: &[f64],
    v: &[f64],
    n: usize,
    d: usize,
) -> Overlay<'a> {
    Overlay {
        inner: src,
        layers: BTreeMap::from([
            (
                BASIS_X.to_string(),
                DenseMatrix::from_shared_f64(n, d, std::sync::Arc::new(x.to_vec())),
            ),
            (
                BASIS_V.to_string(),
                DenseMatrix::from_shared_f64(n, d, std::sync::Arc::new(v.to_vec())),
            ),
        ]),
        n_genes: Some(d),
    }
}

/// One gene of a screen.
#[derive(Clone, Debug, Serialize)]
pub struct ScreenRow {
    /// Rank (1: largest shift).
    pub rank: usize,
    /// Gene.
    pub gene: String,
    /// Size of the shift in the perturbed cells (total-variation distance of the mean fate
    /// distributions).
    pub magnitude: f64,
    /// Mean shift per lineage in the perturbed cells.
    pub mean_shift: Vec<f64>,
    /// Cells whose most likely fate changed.
    pub n_changed: usize,
}

/// Runs the screen: each gene perturbed alone (in parallel; each result independent of the
/// others and of the threads), ranked by magnitude (ties by gene name). Genes the predictor
/// cannot perturb are reported in the second list with the reason.
pub fn run_screen(p: &Prepared<'_>, genes: &[String]) -> (Vec<ScreenRow>, Vec<(String, String)>) {
    let results: Vec<(String, Result<PerturbOutcome, PerturbError>)> = genes
        .par_iter()
        .map(|g| (g.clone(), p.perturb(std::slice::from_ref(g))))
        .collect();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (g, r) in results {
        match r {
            Ok(o) => {
                let s = &o.groups[0];
                rows.push(ScreenRow {
                    rank: 0,
                    gene: g,
                    magnitude: s.magnitude,
                    mean_shift: s.mean.clone(),
                    n_changed: s.n_changed,
                });
            }
            Err(e) => skipped.push((g, e.to_string())),
        }
    }
    rows.sort_by(|a, b| {
        b.magnitude
            .total_cmp(&a.magnitude)
            .then(a.gene.cmp(&b.gene))
    });
    for (k, r) in rows.iter_mut().enumerate() {
        r.rank = k + 1;
    }
    (rows, skipped)
}

/// What `perturb_in_file` did.
#[derive(Clone, Debug, Serialize)]
pub struct PerturbReport {
    /// The single perturbation (not for a screen).
    pub outcome: Option<PerturbOutcome>,
    /// The screen's ranking.
    pub screen: Vec<ScreenRow>,
    /// Screen genes skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Lineage names.
    pub lineages: Vec<String>,
}

impl PerturbReport {
    /// The table as CSV: per group and lineage (one perturbation) or per gene (a screen).
    pub fn to_csv(&self) -> String {
        let q = crate::names::csv_field;
        let mut s = String::new();
        if let Some(o) = &self.outcome {
            s.push_str("group,n_cells,lineage,mean_shift,ci_low,ci_high,n_changed\n");
            for g in &o.groups {
                for (j, l) in o.lineages.iter().enumerate() {
                    s.push_str(&format!(
                        "{},{},{},{},{},{},{}\n",
                        q(&g.group),
                        g.n_cells,
                        q(l),
                        g.mean[j],
                        g.ci_low[j],
                        g.ci_high[j],
                        g.n_changed
                    ));
                }
            }
        } else {
            s.push_str("rank,gene,magnitude,n_changed");
            for l in &self.lineages {
                s.push_str(&format!(",{}", q(&format!("shift_{l}"))));
            }
            s.push('\n');
            for r in &self.screen {
                s.push_str(&format!(
                    "{},{},{},{}",
                    r.rank,
                    q(&r.gene),
                    r.magnitude,
                    r.n_changed
                ));
                for x in &r.mean_shift {
                    s.push_str(&format!(",{x}"));
                }
                s.push('\n');
            }
        }
        s
    }
}

/// The AnnData elements of one perturbation under `spec.key` (`K`), the same for a file and
/// an in-memory AnnData: `obsm["lineages_fwd_K"]`, `obsm["lineages_fwd_K_shift"]`,
/// `obs["fate_changed_K"]`, `obsp["K_transition_matrix"]`, `uns["K"]` (JSON), with an
/// embedding `(name, X_<name>)` also `obsm["velocity_<name>_K"]` (the perturbed chain
/// projected on it), and for the jacobian route dynamo's `obsm["j_delta_x_perturbation"]`.
pub fn outcome_slots(
    p: &Prepared<'_>,
    spec: &PerturbSpec,
    o: &PerturbOutcome,
    embedding: Option<&(String, DenseMatrix)>,
) -> Vec<(String, Element)> {
    let key = &spec.key;
    let l = p.lineages.len();
    let n = p.base_t.n_cells();
    let shift: Vec<f64> = o
        .fates
        .iter()
        .zip(&p.base_fates)
        .map(|(a, b)| a - b)
        .collect();
    let changed = changed_fates(&p.base_fates, &o.fates, l);
    let mut out = vec![
        (
            format!("obsm/lineages_fwd_{key}"),
            Element::from_f64_matrix(n, l, o.fates.clone()),
        ),
        (
            format!("obsm/lineages_fwd_{key}_shift"),
            Element::from_f64_matrix(n, l, shift),
        ),
        (
            format!("obs/fate_changed_{key}"),
            Element::from_bools(changed),
        ),
    ];
    if let Some(t) = &o.transition {
        out.push((
            format!("obsp/{key}_transition_matrix"),
            Element::Sparse(SparseArray::from_csr(t.as_csr())),
        ));
        if let Some((name, e)) = embedding.filter(|(_, e)| e.nrows() == n) {
            let proj = projection::project(t, e);
            out.push((
                format!("obsm/velocity_{name}_{key}"),
                Element::from_f64_matrix(n, e.ncols(), proj),
            ));
        }
    }
    if let Some(dv) = &o.delta_v {
        let d = dv.len() / n.max(1);
        out.push((
            "obsm/j_delta_x_perturbation".into(),
            Element::from_f64_matrix(n, d, dv.clone()),
        ));
    }
    let json = serde_json::json!({
        "genes": o.genes,
        "change": o.change,
        "method": spec.method,
        "cluster": spec.cluster,
        "lineages": o.lineages,
        "n_cells_perturbed": o.n_cells_perturbed,
        "summary": o.groups,
    });
    out.push((format!("uns/{key}"), Element::Str(json.to_string())));
    out
}

/// The AnnData element of a screen: `uns["<key>_screen"]` (JSON: the screen, the change, the
/// method, the lineages, the ranking and the genes skipped with the reason).
pub fn screen_slots(
    p: &Prepared<'_>,
    spec: &PerturbSpec,
    report: &PerturbReport,
) -> Vec<(String, Element)> {
    let json = serde_json::json!({
        "screen": spec.screen,
        "change": p.change.describe(),
        "method": spec.method,
        "lineages": p.lineages,
        "ranking": report.screen,
        "skipped": report.skipped,
    });
    vec![(
        format!("uns/{}_screen", spec.key),
        Element::Str(json.to_string()),
    )]
}
