//! In-silico perturbation on `.h5ad` files (`cellfate perturb`): knock a gene out, set it to a
//! level, or raise it, and predict how the fate probabilities change (sclsd's `perturb`,
//! dynamo's `pd.perturbation`), on a file a `run` has filled (a transition matrix with its
//! kernel spec, terminal states).
//!
//! Two predictors ([`PerturbMethod`]):
//! - **kinetic** (the default; needs no vector field): the change applied in each gene's
//!   fitted velocity model ([`cellfate_dynamics::perturb`]), the velocity layer recomputed for
//!   the chosen cells, and the run's kernel recomputed with its stored effective parameters
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
//! Written under the key `K` (default `perturbed`): `obsm["lineages_fwd_K"]` (perturbed fate
//! probabilities, lineage order of `uns["K"]["lineages"]`), `obsm["lineages_fwd_K_shift"]`,
//! `obs["fate_changed_K"]`, `obsm["velocity_<embedding>_K"]` (the perturbed transition
//! matrix projected on the embedding, as scVelo projects velocities), `obsp["K_transition_matrix"]`
//! and `uns["K"]` (JSON: the perturbation, the method and the summary). The jacobian route also
//! writes dynamo's `obsm["j_delta_x_perturbation"]` (Δv in the basis).

use std::collections::BTreeMap;
use std::path::Path;

use cellfate_dynamics::perturb::{
    add_composition, changed_fates, kinetic_velocity, shift_summary, BootstrapOptions, Change,
    GeneKinetics, GroupShift,
};
use cellfate_estimators::absorption::{compute_fate_probabilities, AbsorptionOptions};
use cellfate_kernels::{
    projection, CellSource, Csr, DenseMatrix, Kernel, KernelSpec, SourceError, TransitionMatrix,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::io::{Element, H5adEdit, H5adReader, SparseArray};
use crate::pipeline::PipelineError;

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
fn settings(message: String) -> PipelineError {
    PipelineError::Settings {
        section: "perturb",
        message,
    }
}

/// An error about the input file.
fn data(input: &Path, message: String) -> PipelineError {
    PipelineError::Preprocessing {
        message: format!("{}: {message}", input.display()),
    }
}

impl PerturbSpec {
    /// Reads `[perturb]`-style TOML (the fields of this struct at the top level).
    pub fn from_toml(text: &str) -> Result<Self, PipelineError> {
        toml::from_str(text).map_err(|source| PipelineError::Config { source })
    }

    /// The change asked for (a knockout when neither level nor fold is given).
    pub fn change(&self) -> Result<Change, PipelineError> {
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
    pub fn validate(&self) -> Result<(), PipelineError> {
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
    pub fn validate_settings(&self) -> Result<(), PipelineError> {
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
pub fn parse_screen(s: &str) -> Result<Screen, PipelineError> {
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
    inner: &'a dyn CellSource,
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

/// Everything a perturbation needs from the file, read once (a screen reuses it).
pub struct Prepared<'a> {
    r: &'a H5adReader,
    input: std::path::PathBuf,
    /// The kernel spec used (the run's effective spec; in the basis for the jacobian route).
    spec: KernelSpec,
    /// The unperturbed transition matrix (recomputed with `spec`).
    pub base_t: TransitionMatrix,
    /// The unperturbed fate probabilities (row-major n × lineages).
    pub base_fates: Vec<f64>,
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
    /// Kinetic route: the velocity layer key, the whole layer, and the genes' kinetics.
    velocity: Option<(String, DenseMatrix, Vec<GeneKinetics>, Vec<bool>)>,
    /// Kinetic route: the normalised expression (the kernel's `Ms`) and each cell's total,
    /// for the compositional term; `None` when the layer does not match the velocities.
    expression: Option<(DenseMatrix, Vec<f64>)>,
    /// Jacobian route: the field, positions and velocities in the basis (n × d).
    field: Option<(cellfate_vectorfield::VectorField, Vec<f64>, Vec<f64>, usize)>,
    opts: AbsorptionOptions,
    boot: BootstrapOptions,
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
    /// The perturbed transition matrix.
    #[serde(skip)]
    pub transition: Option<TransitionMatrix>,
    /// Jacobian route: Δv in the basis (row-major n × d).
    #[serde(skip)]
    pub delta_v: Option<Vec<f64>>,
}

impl<'a> Prepared<'a> {
    /// Reads what the perturbations of `spec` need from `r` and computes the unperturbed
    /// reference.
    pub fn new(r: &'a H5adReader, input: &Path, spec: &PerturbSpec) -> Result<Self, PipelineError> {
        spec.validate_settings()?;
        let change = spec.change()?;
        let n = r.n_obs()?;
        let tkey = &spec.transition_key;
        if !r.exists(&format!("obsp/{tkey}")) {
            return Err(data(
                input,
                format!("obsp[\"{tkey}\"] is missing: perturb reads a file `cellfate run` wrote (a transition matrix and terminal states); run it first"),
            ));
        }
        let stored =
            crate::kernel_io::read_kernel(r, tkey).map_err(|e| data(input, e.to_string()))?;
        let mut kspec = stored.effective.clone();
        let mut found = None;
        edit_velocity_leaves(&mut kspec, &mut |p| {
            if found.is_none() {
                found = Some(p.clone());
            }
        });
        let Some(vparams) = found else {
            return Err(data(
                input,
                format!("the kernel of obsp[\"{tkey}\"] ({}) has no velocity term: a perturbation changes velocities, so it cannot change this transition matrix", stored.effective.to_json()),
            ));
        };
        // Terminal states of the run.
        let terms = crate::estimator_io::read_clusters(r, "term_states_fwd").map_err(|_| {
            data(
                input,
                "obs[\"term_states_fwd\"] is missing or not categorical: perturb predicts fates towards the run's terminal states; run `cellfate run` (or terminal-states) first".into(),
            )
        })?;
        let lineages = terms.categories.clone();
        let terminal: Vec<Option<usize>> = terms
            .labels
            .iter()
            .map(|l| {
                l.as_ref()
                    .and_then(|s| lineages.iter().position(|c| c == s))
            })
            .collect();
        if lineages.len() < 2 {
            return Err(data(
                input,
                format!("the run has {} terminal state(s): fate probabilities shift only between two or more", lineages.len()),
            ));
        }
        let var_names = r.var_names()?;
        // Cells and summary groups.
        let clusters = crate::estimator_io::read_clusters(r, &spec.cluster_key).ok();
        let cells: Vec<usize> = match &spec.cluster {
            None => (0..n).collect(),
            Some(c) => {
                let cl = clusters.as_ref().ok_or_else(|| {
                    data(input, format!("--cluster {c}: obs[\"{}\"] (--cluster-key) is missing or not categorical", spec.cluster_key))
                })?;
                if !cl.categories.contains(c) {
                    return Err(data(
                        input,
                        format!(
                            "--cluster {c}: obs[\"{}\"] has no category {c:?}; it has {}",
                            spec.cluster_key,
                            cl.categories.join(", ")
                        ),
                    ));
                }
                (0..n)
                    .filter(|&i| cl.labels[i].as_deref() == Some(c.as_str()))
                    .collect()
            }
        };
        let mut groups = vec![(
            spec.cluster.clone().unwrap_or_else(|| "all".into()),
            cells.clone(),
        )];
        if let Some(cl) = &clusters {
            for c in &cl.categories {
                let members: Vec<usize> = (0..n)
                    .filter(|&i| cl.labels[i].as_deref() == Some(c.as_str()))
                    .collect();
                if !members.is_empty() {
                    groups.push((c.clone(), members));
                }
            }
        }
        let mut prepared = Self {
            r,
            input: input.to_path_buf(),
            spec: kspec,
            base_t: stored.transition.clone(),
            base_fates: Vec::new(),
            lineages,
            terminal,
            var_names,
            cells,
            groups,
            method: spec.method,
            change,
            velocity: None,
            expression: None,
            field: None,
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
                let layer = r.layer(&vkey).map_err(|e| {
                    data(
                        input,
                        format!("the kinetic route recomputes layers[\"{vkey}\"]: {e}"),
                    )
                })?;
                let g = layer.ncols();
                let dynamical = matches!(r.read("uns/velocity_params/mode"), Ok(Element::Str(m)) if m == "dynamical");
                let col = |k: &str| -> Option<Vec<f64>> {
                    r.column("var", k).ok().and_then(|e| e.to_f64_vec())
                };
                let kinetics: Vec<GeneKinetics> = if dynamical {
                    let (b, gm) = (col("fit_beta"), col("fit_gamma"));
                    match (b, gm) {
                        (Some(b), Some(gm)) => b
                            .iter()
                            .zip(&gm)
                            .map(|(&beta, &gamma)| GeneKinetics { beta, gamma })
                            .collect(),
                        _ => return Err(data(input, "the dynamical model's var[\"fit_beta\"] and var[\"fit_gamma\"] are missing: the kinetic route needs the fitted rates".into())),
                    }
                } else {
                    let gm = col("velocity_gamma").ok_or_else(|| {
                        data(input, "var[\"velocity_gamma\"] is missing: the kinetic route needs the fitted velocity model (`cellfate velocity`); --method jacobian goes through a vector field instead".into())
                    })?;
                    gm.iter()
                        .map(|&gamma| GeneKinetics { beta: 1.0, gamma })
                        .collect()
                };
                if kinetics.len() != g {
                    return Err(data(
                        input,
                        format!(
                            "layers[\"{vkey}\"] has {g} genes but the velocity model has {}",
                            kinetics.len()
                        ),
                    ));
                }
                let subset = vparams
                    .gene_subset
                    .clone()
                    .unwrap_or_else(|| format!("{vkey}_genes"));
                let used = r
                    .var_mask(&subset)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| vec![true; g]);
                if let Ok(xs) = r.layer(&vparams.xkey) {
                    if xs.nrows() == n && xs.ncols() == g {
                        // scVelo normalises every cell to the median of the raw totals over
                        // all genes (`obs["initial_size_spliced"]`), before genes are
                        // filtered; without that column, the row sums of what is kept.
                        let median = r.obs_f64("initial_size_spliced").ok().and_then(|mut t| {
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
                    }
                }
                prepared.velocity = Some((vkey, layer, kinetics, used));
                // The unperturbed reference: the run's effective kernel on the same source.
                let out = prepared.spec.compute(r)?;
                prepared.base_t = out.transition;
            }
            PerturbMethod::Jacobian => {
                let basis = spec.basis.as_str();
                let field = crate::vectorfield_io::read_vector_field(r, input, basis)?;
                let d = field.dim();
                let (_, _, x, _) = crate::vectorfield_io::embedding(r, input, basis, Some(d))?;
                let (v, _, _) = crate::vectorfield_io::basis_velocity(r, input, basis, n, d)?;
                // The velocity kernel in the basis, its softmax scale estimated unperturbed.
                edit_velocity_leaves(&mut prepared.spec, &mut |p| {
                    p.xkey = BASIS_X.into();
                    p.vkey = BASIS_V.into();
                    p.gene_subset = None;
                    p.softmax_scale = None;
                });
                let overlay = basis_overlay(r, &x, &v, n, d);
                let out = prepared.spec.compute(&overlay)?;
                prepared.spec = out.effective;
                prepared.base_t = out.transition;
                prepared.field = Some((field, x, v, d));
            }
        }
        prepared.base_fates = prepared.fates(&prepared.base_t)?;
        Ok(prepared)
    }

    fn fates(&self, t: &TransitionMatrix) -> Result<Vec<f64>, PipelineError> {
        let (f, _) = compute_fate_probabilities(t, &self.terminal, &self.lineages, &self.opts)?;
        Ok(f.probs)
    }

    /// Index of a gene by name; an error suggesting the closest names.
    pub fn gene_index(&self, name: &str) -> Result<usize, PipelineError> {
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
    pub fn perturb(&self, genes: &[String]) -> Result<PerturbOutcome, PipelineError> {
        let idx: Vec<usize> = genes
            .iter()
            .map(|g| self.gene_index(g))
            .collect::<Result<_, _>>()?;
        let n = self.base_t.n_cells();
        let (t, delta_v) = match self.method {
            PerturbMethod::Kinetic => (self.kinetic_transition(genes, &idx)?, None),
            PerturbMethod::Jacobian => {
                let (t, dv) = self.jacobian_transition(genes, &idx)?;
                (t, Some(dv))
            }
        };
        let fates = self.fates(&t)?;
        let l = self.lineages.len();
        let groups = shift_summary(&self.base_fates, &fates, l, &self.groups, &self.boot);
        debug_assert_eq!(fates.len(), n * l);
        Ok(PerturbOutcome {
            genes: genes.to_vec(),
            change: self.change.describe(),
            method: self.method,
            lineages: self.lineages.clone(),
            n_cells_perturbed: self.cells.len(),
            groups,
            fates,
            transition: Some(t),
            delta_v,
        })
    }

    /// Expression of gene `j` in the perturbed cells must not be all zero (`slot`).
    fn check_expressed(&self, name: &str, slot: &str, j: usize) -> Result<Vec<f64>, PipelineError> {
        let (_, _, col) = self.r.dense_select(slot, &[j])?;
        if self.cells.iter().all(|&i| col[i] == 0.0) {
            return Err(data(
                &self.input,
                format!("--gene {name}: {slot} is 0 in every perturbed cell ({}): there is no expression to change", self.groups[0].0),
            ));
        }
        Ok(col)
    }

    fn kinetic_transition(
        &self,
        names: &[String],
        idx: &[usize],
    ) -> Result<TransitionMatrix, PipelineError> {
        let (vkey, layer, kinetics, used) = self.velocity.as_ref().expect("kinetic route");
        let (n, g) = (layer.nrows(), layer.ncols());
        let mut v = layer.to_f64();
        for (name, &j) in names.iter().zip(idx) {
            if !used[j] {
                return Err(data(
                    &self.input,
                    format!("--gene {name} is not among the velocity genes (var[\"{vkey}_genes\"]): the kinetic route changes velocities the kernel reads, and the kernel does not read this gene; --method jacobian (through a vector field) can still perturb it"),
                ));
            }
            if !kinetics[j].is_valid() {
                return Err(data(
                    &self.input,
                    format!(
                        "--gene {name}: its velocity model has no valid rates (beta {}, gamma {})",
                        kinetics[j].beta, kinetics[j].gamma
                    ),
                ));
            }
            let mu_slot = if self.r.exists("layers/Mu") {
                "layers/Mu"
            } else {
                "layers/unspliced"
            };
            let ms_slot = if self.r.exists("layers/Ms") {
                "layers/Ms"
            } else {
                "layers/spliced"
            };
            self.check_expressed(name, ms_slot, j)?;
            let (_, _, mu) = self.r.dense_select(mu_slot, &[j])?;
            let mut x = Vec::new();
            for &i in &self.cells {
                let q = i * g + j;
                if v[q].is_finite() {
                    let new = kinetic_velocity(v[q], mu[i], kinetics[j], self.change);
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
            inner: self.r,
            layers: BTreeMap::from([(vkey.clone(), DenseMatrix::from_f64(n, g, v))]),
            n_genes: None,
        };
        Ok(self.spec.compute(&overlay)?.transition)
    }

    fn jacobian_transition(
        &self,
        names: &[String],
        idx: &[usize],
    ) -> Result<(TransitionMatrix, Vec<f64>), PipelineError> {
        let (field, x, v, d) = self.field.as_ref().expect("jacobian route");
        let n = x.len() / d;
        let log1p = self.r.exists("uns/log1p");
        let mut dz = vec![0.0; n * d];
        for (name, &j) in names.iter().zip(idx) {
            let col = self.check_expressed(name, "X", j)?;
            let w = cellfate_vectorfield::perturb::loadings(&col, x, *d);
            for &i in &self.cells {
                let xi = col[i];
                let target = match self.change {
                    Change::Level(l) => l,
                    Change::Fold(k) if log1p => (k * xi.exp_m1()).ln_1p(),
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
        let overlay = basis_overlay(self.r, x, &vp, n, *d);
        Ok((self.spec.compute(&overlay)?.transition, dv))
    }
}

/// Layer keys of the basis kernel's positions and velocities.
const BASIS_X: &str = "__perturb_basis_x";
const BASIS_V: &str = "__perturb_basis_v";

fn basis_overlay<'a>(r: &'a H5adReader, x: &[f64], v: &[f64], n: usize, d: usize) -> Overlay<'a> {
    Overlay {
        inner: r,
        layers: BTreeMap::from([
            (BASIS_X.to_string(), DenseMatrix::from_f64(n, d, x.to_vec())),
            (BASIS_V.to_string(), DenseMatrix::from_f64(n, d, v.to_vec())),
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

/// The genes of a screen: `top_drivers:N` from `varm["terminal_lineage_drivers"]` (largest
/// |correlation| over the lineages, ties by name), or the listed genes.
pub fn screen_genes(
    r: &H5adReader,
    input: &Path,
    screen: &Screen,
) -> Result<Vec<String>, PipelineError> {
    match screen {
        Screen::Genes(g) => Ok(g.clone()),
        Screen::TopDrivers(k) => {
            let slot = "varm/terminal_lineage_drivers";
            let Ok(Element::DataFrame(df)) = r.read(slot) else {
                return Err(data(input, "varm[\"terminal_lineage_drivers\"] is missing: --screen top_drivers:N ranks the run's driver genes (`cellfate run` computes them); use --screen genes:A,B otherwise".into()));
            };
            let names = r.var_names()?;
            let mut best = vec![f64::NEG_INFINITY; names.len()];
            for (col, e) in &df.columns {
                if !col.ends_with("_corr") {
                    continue;
                }
                if let Some(v) = e.to_f64_vec() {
                    for (b, x) in best.iter_mut().zip(v) {
                        if x.is_finite() {
                            *b = b.max(x.abs());
                        }
                    }
                }
            }
            let mut order: Vec<usize> = (0..names.len()).filter(|&j| best[j].is_finite()).collect();
            order.sort_by(|&a, &b| best[b].total_cmp(&best[a]).then(names[a].cmp(&names[b])));
            Ok(order
                .into_iter()
                .take(*k)
                .map(|j| names[j].clone())
                .collect())
        }
    }
}

/// Runs the screen: each gene perturbed alone (in parallel; each result independent of the
/// others and of the threads), ranked by magnitude (ties by gene name). Genes the predictor
/// cannot perturb are reported in the second list with the reason.
pub fn run_screen(p: &Prepared<'_>, genes: &[String]) -> (Vec<ScreenRow>, Vec<(String, String)>) {
    let results: Vec<(String, Result<PerturbOutcome, PipelineError>)> = genes
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

/// Perturbs (or screens) on `input` and writes the results into a copy at `output` (see the
/// module docs for the keys).
pub fn perturb_in_file(
    input: &Path,
    output: &Path,
    spec: &PerturbSpec,
) -> Result<PerturbReport, PipelineError> {
    spec.validate()?;
    let r = H5adReader::open(input)?;
    let p = Prepared::new(&r, input, spec)?;
    let l = p.lineages.len();
    let n = p.base_t.n_cells();
    let key = &spec.key;
    let mut edit = H5adEdit::new(input);
    let mut report = PerturbReport {
        outcome: None,
        screen: Vec::new(),
        skipped: Vec::new(),
        lineages: p.lineages.clone(),
    };
    if let Some(s) = &spec.screen {
        let genes = screen_genes(&r, input, &parse_screen(s)?)?;
        let (rows, skipped) = run_screen(&p, &genes);
        if rows.is_empty() {
            return Err(data(
                input,
                format!(
                    "--screen {s}: no gene could be perturbed ({})",
                    skipped
                        .iter()
                        .map(|(g, e)| format!("{g}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
        report.screen = rows;
        report.skipped = skipped;
        let json = serde_json::json!({
            "screen": s,
            "change": p.change.describe(),
            "method": spec.method,
            "lineages": p.lineages,
            "ranking": report.screen,
            "skipped": report.skipped,
        });
        edit.set(&format!("uns/{key}_screen"), Element::Str(json.to_string()));
    } else {
        let o = p.perturb(&spec.genes)?;
        let shift: Vec<f64> = o
            .fates
            .iter()
            .zip(&p.base_fates)
            .map(|(a, b)| a - b)
            .collect();
        let changed = changed_fates(&p.base_fates, &o.fates, l);
        edit.set(
            &format!("obsm/lineages_fwd_{key}"),
            Element::from_f64_matrix(n, l, o.fates.clone()),
        );
        edit.set(
            &format!("obsm/lineages_fwd_{key}_shift"),
            Element::from_f64_matrix(n, l, shift),
        );
        edit.set(
            &format!("obs/fate_changed_{key}"),
            Element::from_bools(changed),
        );
        if let Some(t) = &o.transition {
            edit.set(
                &format!("obsp/{key}_transition_matrix"),
                Element::Sparse(SparseArray::from_csr(t.as_csr())),
            );
            let emb_name = spec.embedding.clone().unwrap_or_else(|| {
                if r.exists("obsm/X_umap") {
                    "umap".into()
                } else {
                    spec.basis.clone()
                }
            });
            if let Ok(e) = r.obsm(&format!("X_{emb_name}")) {
                let proj = projection::project(t, &e);
                edit.set(
                    &format!("obsm/velocity_{emb_name}_{key}"),
                    Element::from_f64_matrix(n, e.ncols(), proj),
                );
            }
        }
        if let Some(dv) = &o.delta_v {
            let d = dv.len() / n.max(1);
            edit.set(
                "obsm/j_delta_x_perturbation",
                Element::from_f64_matrix(n, d, dv.clone()),
            );
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
        edit.set(&format!("uns/{key}"), Element::Str(json.to_string()));
        report.outcome = Some(o);
    }
    edit.write_to(output)?;
    Ok(report)
}
