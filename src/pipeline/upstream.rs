//! The upstream stage of a run: from raw counts (an `.h5ad`, or velocyto's `.loom`) to what the
//! kernel expression reads, computing only what is missing (everything with `recompute`).
//!
//! What the kernels need is read from the parsed [`KernelSpec`] (its leaves and their
//! parameters), never from the expression's text:
//! - the kNN graph `obsp["connectivities"]` (every kernel but `precomputed`, and `real_time`
//!   only with connectivity self-transitions);
//! - the moments `layers["Ms"]`/`["Mu"]` (a `velocity` kernel with `xkey = "Ms"`, a `cytotrace`
//!   kernel with `layer = "Ms"`) and `layers["velocity"]` (a `velocity` kernel with
//!   `vkey = "velocity"`);
//! - `obs["dpt_pseudotime"]` (a `pseudotime` kernel whose `time_key` is `dpt_pseudotime`).
//!
//! The steps, in order, each only when needed:
//! 1. `loom`: a `.loom` input (recognised by its HDF5 layout) is converted to `.h5ad`;
//! 2. `preprocess`: when the graph is missing (or with `recompute`): normalisation, HVGs, PCA,
//!    kNN, connectivities, moments and velocity ([`crate::upstream::prepare_with`]);
//! 3. otherwise `moments` (moments and velocity on the file's own graph,
//!    [`crate::upstream::moments_velocity_in_file`]) when `Ms`/`Mu` are missing, or `velocity`
//!    ([`crate::upstream::velocity_in_file`]) when only the velocity is;
//! 4. `pseudotime`: diffusion pseudotime from `root_cluster` / `root_cell`
//!    ([`crate::upstream::dpt::pseudotime_in_file`]).
//!
//! Each step reads the previous file and writes an intermediate `.h5ad` next to the output
//! (created exclusively under a hidden temporary name, removed when the run ends, successful or
//! not); the kernel and estimator stages then read the last one, and the output is its copy with
//! the results. Going through files rather than the in-memory [`crate::upstream::preprocess`]
//! keeps memory bounded (the file path writes moments and velocity block of genes by block of
//! genes: 1,000,000 cells fit in 21 GB, where the in-memory path holds three dense cell × gene
//! matrices at once) and leaves the kernel stage unchanged (it reads every input through
//! [`H5adReader`]); the price is one more write of the file, small beside the preprocessing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use cellfate_kernels::real_time::SelfTransitions;
use cellfate_kernels::KernelSpec;

use crate::io::{loom, H5adReader, TempSibling};
use crate::upstream::dpt::{pseudotime_in_file, Root};
use crate::upstream::{self, UpstreamSpec};

use super::{FateMapSpec, PipelineError, StageTime};

/// The kNN graph the upstream steps write.
const GRAPH: &str = "connectivities";
/// The moments layer the upstream steps write.
const MOMENTS: &str = "Ms";
/// The velocity layer the upstream steps write.
const VELOCITY: &str = "velocity";
/// The pseudotime the upstream steps write.
const DPT: &str = "dpt_pseudotime";

/// Settings of the upstream stage (`[upstream]` in a config file; `--recompute`,
/// `--root-cluster`, `--root-cell` on the command line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Run every upstream step the kernel needs even when its outputs are present.
    pub recompute: bool,
    /// Root of the diffusion pseudotime: the extreme cell (first diffusion component) of this
    /// cluster, in the obs column `estimators.cluster_key` (default `clusters`).
    pub root_cluster: Option<String>,
    /// Root of the diffusion pseudotime: a cell index or obs name.
    pub root_cell: Option<String>,
    /// Diffusion components computed (scanpy's default 15).
    pub n_comps: usize,
    /// Diffusion components used for the pseudotime (scanpy's default 10).
    pub n_dcs: usize,
    /// Preprocessing parameters (those of `cellfate preprocess`, including the velocity mode).
    pub preprocess: UpstreamSpec,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            recompute: false,
            root_cluster: None,
            root_cell: None,
            n_comps: 15,
            n_dcs: 10,
            preprocess: UpstreamSpec::default(),
        }
    }
}

impl UpstreamSettings {
    /// Checks the settings on their own (the input is checked when the stage runs).
    pub fn validate(&self) -> Result<(), PipelineError> {
        if self.root_cluster.is_some() && self.root_cell.is_some() {
            return Err(PipelineError::Settings {
                section: "upstream",
                message: "give upstream.root_cluster (--root-cluster) or upstream.root_cell (--root-cell), not both"
                    .into(),
            });
        }
        if self.n_comps < 2 || self.n_dcs == 0 || self.n_dcs > self.n_comps {
            return Err(PipelineError::Settings {
                section: "upstream",
                message: format!(
                    "n_comps = {} and n_dcs = {} (need n_comps ≥ 2, 1 ≤ n_dcs ≤ n_comps)",
                    self.n_comps, self.n_dcs
                ),
            });
        }
        let p = &self.preprocess;
        if let Some(u) = &p.umap {
            u.validate().map_err(|e| PipelineError::Settings {
                section: "upstream.preprocess.umap",
                message: e.to_string(),
            })?;
        }
        if p.n_neighbors < 2 || p.n_pcs == 0 || p.n_top_genes == 0 {
            return Err(PipelineError::Settings {
                section: "upstream.preprocess",
                message: format!(
                    "n_neighbors = {}, n_pcs = {}, n_top_genes = {} (need n_neighbors ≥ 2, n_pcs ≥ 1, n_top_genes ≥ 1)",
                    p.n_neighbors, p.n_pcs, p.n_top_genes
                ),
            });
        }
        Ok(())
    }
}

/// One upstream step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamStep {
    /// `.loom` converted to `.h5ad`.
    Loom,
    /// Normalisation, HVGs, PCA, kNN, connectivities, moments, velocity.
    Preprocess,
    /// Moments and velocity on the file's own kNN graph.
    Moments,
    /// Velocity from the file's moments.
    Velocity,
    /// Diffusion map and diffusion pseudotime.
    Pseudotime,
}

impl UpstreamStep {
    /// The step's name (in summaries and `uns["cellfate"]`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Loom => "loom",
            Self::Preprocess => "preprocess",
            Self::Moments => "moments",
            Self::Velocity => "velocity",
            Self::Pseudotime => "pseudotime",
        }
    }
}

/// What the kernel expression reads that the upstream steps can produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Needs {
    graph: bool,
    moments: bool,
    velocity: bool,
    dpt: bool,
}

impl Needs {
    fn of(kernel: &KernelSpec) -> Self {
        let mut n = Self::default();
        for leaf in kernel.leaves() {
            match leaf {
                KernelSpec::Connectivity(p) => n.graph |= p.conn_key == GRAPH,
                KernelSpec::Pseudotime(p) => {
                    n.graph |= p.conn_key == GRAPH;
                    n.dpt |= p.time_key == DPT;
                }
                KernelSpec::Velocity(p) => {
                    n.graph |= p.conn_key == GRAPH;
                    n.moments |= p.xkey == MOMENTS;
                    n.velocity |= p.vkey == VELOCITY;
                }
                KernelSpec::CytoTrace(p) => {
                    n.graph |= p.conn_key == GRAPH;
                    n.moments |= p.layer == MOMENTS;
                }
                KernelSpec::LabelingTime(p) => n.graph |= p.conn_key == GRAPH,
                KernelSpec::RealTime(p) => {
                    n.graph |= p.self_transitions == SelfTransitions::Connectivities
                        && p.conn_key == GRAPH;
                }
                _ => {}
            }
        }
        // The diffusion pseudotime is computed on the graph.
        n.graph |= n.dpt;
        n
    }

    fn any(self) -> bool {
        self.graph || self.moments || self.velocity || self.dpt
    }
}

/// What the input already holds.
#[derive(Clone, Debug, Default)]
struct Present {
    graph: bool,
    moments: bool,
    velocity: bool,
    dpt: bool,
    /// `uns["velocity_params"]["mode"]`.
    velocity_mode: Option<String>,
}

impl Present {
    fn of(r: &H5adReader) -> Self {
        let obs = r.columns("obs").unwrap_or_default();
        Self {
            graph: r.exists(&format!("obsp/{GRAPH}")),
            moments: r.exists("layers/Ms") && r.exists("layers/Mu"),
            velocity: r.exists(&format!("layers/{VELOCITY}")),
            dpt: obs.iter().any(|c| c == DPT),
            velocity_mode: match r.read("uns/velocity_params/mode") {
                Ok(crate::io::Element::Str(m)) => Some(m),
                _ => None,
            },
        }
    }
}

/// The steps to run on an input, each with the reason it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamPlan {
    /// Steps in order, with why each runs.
    pub steps: Vec<(UpstreamStep, String)>,
    /// Root of the diffusion pseudotime (when that step runs).
    pub root: Option<Root>,
}

/// Decides which upstream steps a run of `spec` on `input` needs (reads only metadata).
/// `Ok` with no steps for a processed input; an error when the diffusion pseudotime is needed
/// and no root is given.
pub fn plan(input: &Path, spec: &FateMapSpec) -> Result<UpstreamPlan, PipelineError> {
    let settings = &spec.upstream;
    settings.validate()?;
    let is_loom = loom::is_loom(input);
    let mut steps = Vec::new();
    if is_loom {
        steps.push((UpstreamStep::Loom, "the input is a .loom file".to_string()));
    }
    let needs = match &spec.transition_key {
        Some(_) => Needs::default(),
        None => Needs::of(&spec.kernel_spec()?),
    };
    if !needs.any() {
        return Ok(UpstreamPlan { steps, root: None });
    }
    let mut have = if is_loom {
        Present::default()
    } else {
        Present::of(&H5adReader::open(input)?)
    };
    let recompute = settings.recompute;
    if recompute || !have.graph {
        let why = if recompute {
            "recompute".to_string()
        } else {
            format!("obsp[\"{GRAPH}\"] is missing")
        };
        steps.push((UpstreamStep::Preprocess, why));
        have.graph = true;
        have.moments = true;
        have.velocity = true;
    } else if (needs.moments || needs.velocity) && !have.moments {
        steps.push((
            UpstreamStep::Moments,
            "layers[\"Ms\"]/[\"Mu\"] are missing".to_string(),
        ));
    } else if needs.velocity && !have.velocity {
        steps.push((
            UpstreamStep::Velocity,
            format!("layers[\"{VELOCITY}\"] is missing"),
        ));
    } else if needs.velocity
        && settings.preprocess.velocity_mode == crate::upstream::velocity::VelocityMode::Dynamical
        && have.velocity_mode.as_deref() != Some("dynamical")
    {
        steps.push((
            UpstreamStep::Velocity,
            format!(
                "the dynamical model is asked for; the input's velocity is {}",
                have.velocity_mode
                    .as_deref()
                    .unwrap_or("of an unknown mode")
            ),
        ));
    }
    let mut root = None;
    if needs.dpt && (recompute || !have.dpt) {
        let why = if recompute {
            "recompute".to_string()
        } else {
            format!("obs[\"{DPT}\"] is missing")
        };
        root = Some(root_of(spec).ok_or_else(|| {
            PipelineError::MissingRoot {
                input: input.to_path_buf(),
                reason: if recompute {
                    "recomputed: upstream.recompute (--recompute)"
                } else {
                    "missing from the file"
                }
                .into(),
            }
        })?);
        steps.push((UpstreamStep::Pseudotime, why));
    }
    Ok(UpstreamPlan { steps, root })
}

/// The pseudotime root of the settings, if one is given.
fn root_of(spec: &FateMapSpec) -> Option<Root> {
    let u = &spec.upstream;
    if let Some(name) = &u.root_cluster {
        return Some(Root::Cluster {
            key: spec
                .estimators
                .cluster_key
                .clone()
                .unwrap_or_else(|| "clusters".into()),
            name: name.clone(),
        });
    }
    u.root_cell.as_ref().map(|c| {
        c.parse::<usize>()
            .map_or_else(|_| Root::Name(c.clone()), Root::Index)
    })
}

/// Checks that `root` names a cell of `file` (before the expensive steps run).
fn check_root(file: &Path, input: &Path, root: &Root) -> Result<(), PipelineError> {
    use cellfate_kernels::CellSource;
    let r = H5adReader::open(file)?;
    let bad = |message: String| PipelineError::Root {
        input: input.to_path_buf(),
        message,
    };
    match root {
        Root::Index(i) => {
            let n = r.n_obs()?;
            if *i >= n {
                return Err(bad(format!(
                    "root cell {i} is out of range (the file has {n} cells)"
                )));
            }
        }
        Root::Name(s) => {
            if !r.obs_names()?.iter().any(|x| x == s) {
                return Err(bad(format!(
                    "no cell named {s:?} (upstream.root_cell, --root-cell)"
                )));
            }
        }
        Root::Cluster { key, name } => {
            let labels = r
                .obs_labels(key)
                .map_err(|e| bad(format!("root cluster {name:?}: {e}")))?;
            if !labels.iter().any(|l| l.as_deref() == Some(name.as_str())) {
                let mut cats: Vec<String> = labels.into_iter().flatten().collect();
                cats.sort();
                cats.dedup();
                return Err(bad(format!(
                    "no cell of cluster {name:?} in obs[{key:?}] (upstream.root_cluster, --root-cluster; clusters: {})",
                    cats.join(", ")
                )));
            }
        }
        Root::Auto => {}
    }
    Ok(())
}

/// The input the kernel stage reads: the original input or the last intermediate file.
#[derive(Debug)]
pub struct PreparedInput {
    path: PathBuf,
    /// Keeps the intermediate file alive (removed when this is dropped).
    _temp: Option<TempSibling>,
    /// Names of the steps that ran ([`UpstreamStep::name`]).
    pub steps: Vec<String>,
    /// Notes: what the steps did (genes kept, root cell chosen, ...).
    pub notes: Vec<String>,
    /// Warnings: what the steps could not do or had to leave out (loom attributes not
    /// converted, cells not reached by the pseudotime, ...); the run summary lists them under
    /// `warnings`.
    pub warnings: Vec<String>,
    /// Timing of each step (`upstream: NAME`).
    pub stages: Vec<StageTime>,
}

impl PreparedInput {
    /// The file to read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Runs the upstream steps `spec` needs on `input` (see the module documentation), writing
/// intermediate files next to `output`.
pub fn prepare_input(
    input: &Path,
    output: &Path,
    spec: &FateMapSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<PreparedInput, PipelineError> {
    let plan = plan(input, spec)?;
    let mut current = PreparedInput {
        path: input.to_path_buf(),
        _temp: None,
        steps: Vec::new(),
        notes: Vec::new(),
        warnings: Vec::new(),
        stages: Vec::new(),
    };
    let settings = &spec.upstream;
    let mode = settings.preprocess.velocity_mode;
    let mut root_checked = false;
    for (step, why) in &plan.steps {
        if let (Some(root), false, false) = (&plan.root, root_checked, *step == UpstreamStep::Loom)
        {
            // Fail on a misspelt root before the expensive steps (after a .loom is converted:
            // its cells and clusters are then readable).
            check_root(&current.path, input, root)?;
            root_checked = true;
        }
        progress(&match step {
            UpstreamStep::Loom => "reading the .loom file".to_string(),
            UpstreamStep::Preprocess => {
                "preprocessing (normalise, HVGs, PCA, kNN, moments, velocity)".to_string()
            }
            UpstreamStep::Moments => "moments and velocity".to_string(),
            UpstreamStep::Velocity => "velocity".to_string(),
            UpstreamStep::Pseudotime => "diffusion pseudotime".to_string(),
        });
        let start = Instant::now();
        let next = TempSibling::create(output)?;
        let from = current.path.as_path();
        let to = next.path();
        let wrap = |source: PipelineError| PipelineError::Upstream {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            step: step.name(),
            reason: why.clone(),
            source: Box::new(source),
        };
        match step {
            UpstreamStep::Loom => {
                let s = loom::loom_to_h5ad(from, to).map_err(|e| wrap(e.into()))?;
                if !s.skipped.is_empty() {
                    current.warnings.push(format!(
                        "loom attributes not converted (unsupported types): {}",
                        s.skipped.join(", ")
                    ));
                }
            }
            UpstreamStep::Preprocess => {
                let report = upstream::prepare_with(from, to, &settings.preprocess, &mut |_| {})
                    .map_err(wrap)?;
                current.notes.push(format!(
                    "preprocessed ({}): {} highly variable genes, {} velocity genes",
                    why, report.n_highly_variable, report.n_velocity_genes
                ));
                current.notes.extend(report.labeling);
            }
            UpstreamStep::Moments => {
                upstream::moments_velocity_in_file(
                    from,
                    to,
                    mode,
                    &settings.preprocess.dynamics,
                    settings.preprocess.dtype,
                )
                .map_err(wrap)?;
            }
            UpstreamStep::Velocity => {
                upstream::velocity_in_file(from, to, mode, &settings.preprocess.dynamics)
                    .map_err(wrap)?;
            }
            UpstreamStep::Pseudotime => {
                let root = plan.root.as_ref().unwrap_or(&Root::Auto);
                let res = pseudotime_in_file(from, to, root, settings.n_comps, settings.n_dcs)
                    .map_err(|e| wrap(e.into()))?;
                let name = H5adReader::open(to)
                    .and_then(|r| r.obs_names())
                    .ok()
                    .and_then(|n| n.get(res.root).cloned())
                    .unwrap_or_default();
                current.notes.push(format!(
                    "diffusion pseudotime from root cell {} ({name})",
                    res.root
                ));
                if res.unreachable > 0 {
                    current.warnings.push(format!(
                        "diffusion pseudotime: {} cells are not connected to the root in the kNN graph (pseudotime inf)",
                        res.unreachable
                    ));
                }
            }
        }
        // The dynamical model's velocity graph, confidences and latent time (scVelo's
        // velocity_graph + velocity_confidence + latent_time after recover_dynamics).
        let velocity_step = matches!(
            step,
            UpstreamStep::Preprocess | UpstreamStep::Moments | UpstreamStep::Velocity
        );
        if velocity_step && mode == upstream::velocity::VelocityMode::Dynamical {
            let s = upstream::velocity_summaries::velocity_summaries_in_file(
                to,
                &upstream::velocity_summaries::LatentRoot::Auto,
            )
            .map_err(wrap)?;
            current.notes.push(format!(
                "dynamical model: velocity confidence median {:.3}; latent time written",
                s.median_confidence
            ));
            current.notes.extend(s.notes);
        }
        current.path = to.to_path_buf();
        // The previous intermediate file (if any) is removed here.
        current._temp = Some(next);
        current.steps.push(step.name().to_string());
        current.stages.push(StageTime {
            stage: format!("upstream: {}", step.name()),
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(expr: &str) -> Needs {
        Needs::of(&cellfate_kernels::expr::parse(expr).expect("parses"))
    }

    #[test]
    fn needs_come_from_the_parsed_kernel() {
        let n = needs("0.8*velocity + 0.2*connectivity");
        assert!(n.graph && n.moments && n.velocity && !n.dpt);
        let n = needs("pseudotime");
        assert!(n.graph && n.dpt && !n.velocity && !n.moments);
        let n = needs("connectivity");
        assert!(n.graph && !n.dpt && !n.velocity);
        assert!(!needs("precomputed").any());
    }

    #[test]
    fn a_pseudotime_on_another_key_needs_no_dpt() {
        let mut k = cellfate_kernels::expr::parse("pseudotime").expect("parses");
        k.set_param("pseudotime", "time_key", "\"latent_time\"")
            .expect("param");
        let n = Needs::of(&k);
        assert!(n.graph && !n.dpt);
    }

    #[test]
    fn settings_reject_two_roots() {
        let s = UpstreamSettings {
            root_cluster: Some("A".into()),
            root_cell: Some("0".into()),
            ..Default::default()
        };
        assert!(s.validate().is_err());
        assert!(UpstreamSettings::default().validate().is_ok());
    }
}
