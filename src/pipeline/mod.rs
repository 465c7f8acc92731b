//! The whole fate-mapping run on an `.h5ad` file, driven by one validated spec
//! ([`FateMapSpec`]) shared by the library, TOML config files and the CLI flags.

pub mod estimate;
pub mod upstream;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use cellfate_kernels::{expr, Kernel, KernelSpec};

use crate::io::{Element, H5adEdit, H5adError, H5adReader};

pub use estimate::{EstimatorSpec, EstimatorSummary, NStates};
pub use upstream::{UpstreamSettings, UpstreamStep};

/// Any error of a pipeline run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// Reading or writing the file.
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// Counts that are negative, NaN or infinite.
    #[error(transparent)]
    InvalidCounts(Box<crate::upstream::InvalidCounts>),
    /// Kernel computation.
    #[error(transparent)]
    Kernel(#[from] cellfate_kernels::KernelError),
    /// Schur decomposition.
    #[error(transparent)]
    Schur(#[from] cellfate_estimators::SchurError),
    /// GPCCA.
    #[error(transparent)]
    Gpcca(#[from] cellfate_estimators::gpcca::GpccaError),
    /// States.
    #[error(transparent)]
    States(#[from] cellfate_estimators::states::StatesError),
    /// Absorption.
    #[error(transparent)]
    Absorption(#[from] cellfate_estimators::absorption::AbsorptionError),
    /// An estimator stage.
    #[error(transparent)]
    Estimator(#[from] cellfate_estimators::EstimatorError),
    /// Reading or writing an estimator.
    #[error(transparent)]
    EstimatorIo(#[from] crate::estimator_io::EstimatorIoError),
    /// In-silico perturbation.
    #[error(transparent)]
    Perturb(#[from] crate::perturb::PerturbError),
    /// Diffusion map and pseudotime.
    #[error(transparent)]
    Dpt(#[from] crate::upstream::dpt::DptError),
    /// A `.loom` input.
    #[error(transparent)]
    Loom(#[from] crate::io::loom::LoomError),
    /// The diffusion pseudotime must be computed and no root was given.
    #[error("{input}: the pseudotime kernel reads obs[\"dpt_pseudotime\"] ({reason}); computing the diffusion pseudotime needs a root: upstream.root_cluster = NAME (the extreme cell of a cluster of estimators.cluster_key, default clusters) or upstream.root_cell = CELL (an index or obs name)")]
    MissingRoot {
        /// The input file.
        input: std::path::PathBuf,
        /// Why the pseudotime is computed (missing from the file, or recomputed).
        reason: String,
    },
    /// An upstream step (preprocessing, velocity, pseudotime, .loom conversion) failed.
    #[error("{input}: upstream step `{step}` ({reason}) failed (its intermediate file is a hidden temporary next to the output {output}): {source}")]
    Upstream {
        /// The input file of the run.
        input: std::path::PathBuf,
        /// The run's output (the intermediate files are written next to it).
        output: std::path::PathBuf,
        /// The step ([`UpstreamStep::name`]).
        step: &'static str,
        /// Why the step ran.
        reason: String,
        /// What went wrong.
        #[source]
        source: Box<PipelineError>,
    },
    /// A TOML config that does not parse or has unknown fields.
    #[error("config: {source}")]
    Config {
        /// The parser's error (names the line and the field).
        #[source]
        source: toml::de::Error,
    },
    /// Settings that are inconsistent on their own.
    #[error("{section}: {message}")]
    Settings {
        /// The config section (`upstream`, `upstream.preprocess`).
        section: &'static str,
        /// What is wrong and what is needed.
        message: String,
    },
    /// The root of the diffusion pseudotime does not exist in the input.
    #[error("{input}: {message}")]
    Root {
        /// The input file.
        input: std::path::PathBuf,
        /// What is wrong (the cell or cluster asked for, what the file has).
        message: String,
    },
    /// Preprocessing (normalisation, genes, PCA, neighbours, moments, velocity) cannot run on
    /// this input.
    #[error("{message}")]
    Preprocessing {
        /// What is wrong, naming the slot and what was expected.
        message: String,
    },
}

impl From<Box<crate::upstream::InvalidCounts>> for PipelineError {
    fn from(e: Box<crate::upstream::InvalidCounts>) -> Self {
        Self::InvalidCounts(e)
    }
}

impl From<crate::upstream::UpstreamError> for PipelineError {
    fn from(e: crate::upstream::UpstreamError) -> Self {
        use crate::upstream::UpstreamError as U;
        match e {
            U::Invalid { message } => Self::Preprocessing { message },
            U::InvalidCounts(c) => Self::InvalidCounts(c),
            U::Interrupted => Self::Preprocessing {
                message: "interrupted".into(),
            },
        }
    }
}

/// Everything a run does, with CellRank's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FateMapSpec {
    /// Kernel expression (`0.8*velocity + 0.2*connectivity`, `pseudotime`, ...).
    pub kernel: String,
    /// Kernel parameters by kernel kind: `{ velocity = { similarity = "cosine" } }`.
    pub kernel_params: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    /// Use this existing `obsp` transition matrix instead of computing a kernel.
    pub transition_key: Option<String>,
    /// The estimator stages.
    pub estimators: EstimatorSpec,
    /// The upstream steps run on raw input (preprocessing, velocity, diffusion pseudotime).
    pub upstream: UpstreamSettings,
    /// The figures of `run --plots` / `--report` (TOML `[figures]`; flags override).
    pub figures: FigureSpec,
    /// Vector field, fixed points and potential after the estimators (TOML `[vectorfield]`,
    /// flag `--vectorfield [BASIS]`; off unless a basis is set).
    pub vectorfield: crate::vectorfield_io::VectorFieldRunSpec,
    /// The kernel's randomised control (dynamo's `calc_rnd_vel`: velocities permuted across
    /// cells with random signs, the kernel recomputed, flow coherence compared;
    /// [`crate::kernel_io::random_control`]). `None`: on for kernels with a labeling_time
    /// leaf (the scNT-seq workflow's check), off otherwise.
    pub random_control: Option<bool>,
    /// Seed of the randomised control.
    pub random_control_seed: u64,
    /// How the datasets the run writes are stored: `none` (default, as anndata), `gzip` or
    /// `gzip:LEVEL` (shuffle + gzip; readable by anndata and h5py without plugins). The
    /// global flag `--compression` overrides it; the library applies it with
    /// [`crate::io::set_compression`].
    pub compression: Option<crate::io::Compression>,
    /// Whether `kernel` was chosen (a `kernel` key in TOML, `--kernel`): then it is used as
    /// given, even on labeling data ([`labeling_default_kernel`]).
    #[serde(skip)]
    pub kernel_explicit: bool,
}

impl Default for FateMapSpec {
    fn default() -> Self {
        Self {
            kernel: DEFAULT_KERNEL.into(),
            kernel_params: BTreeMap::new(),
            transition_key: None,
            estimators: EstimatorSpec::default(),
            upstream: UpstreamSettings::default(),
            figures: FigureSpec::default(),
            vectorfield: Default::default(),
            random_control: None,
            random_control_seed: 0,
            compression: None,
            kernel_explicit: false,
        }
    }
}

/// Figure settings (TOML `[figures]` of a run config; the flags of the same names override
/// them): unset fields take the defaults of `cellfate::report::PlotOptions`. Checked when the
/// figures are made (`PlotOptions::from_spec`), names of kinds and ranges included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FigureSpec {
    /// Embedding (`umap`, any obsm key; default `X_umap`, else the first two PCs).
    pub basis: Option<String>,
    /// Random walks to draw (default 100).
    pub n_walks: Option<usize>,
    /// Seed of the random walks (default 0).
    pub walk_seed: Option<u64>,
    /// Figure kinds (`gene_trends`, `heatmap`, ...; default: all the file supports but the
    /// grid and per-cell velocity arrows).
    pub kinds: Option<Vec<String>>,
    /// Genes for gene trends, heatmaps and phase portraits (default: top drivers).
    pub genes: Option<Vec<String>>,
    /// obs column of the time in gene trends.
    pub time_key: Option<String>,
    /// Expression in gene trends: `X` or a layer (default `Ms` when present).
    pub data_key: Option<String>,
    /// Width in pixels at 100 dpi.
    pub width: Option<u32>,
    /// Height in pixels at 100 dpi.
    pub height: Option<u32>,
    /// Resolution (default 100).
    pub dpi: Option<u32>,
}

impl FateMapSpec {
    /// Reads a TOML config file.
    pub fn from_toml(text: &str) -> Result<Self, PipelineError> {
        let mut spec: Self =
            toml::from_str(text).map_err(|source| PipelineError::Config { source })?;
        spec.kernel_explicit = text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("kernel"));
        Ok(spec)
    }

    /// The config as TOML (what `--dry-run` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The kernel expression with its parameters applied, validated.
    pub fn kernel_spec(&self) -> Result<KernelSpec, PipelineError> {
        let mut k = expr::parse(&self.kernel)?;
        for (kind, params) in &self.kernel_params {
            for (name, value) in params {
                k.set_param(kind, name, &value.to_string())?;
            }
        }
        k.validate()?;
        Ok(k)
    }
}

/// The `uns` slot holding a run's wall-clock stage timings and peak memory (JSON text:
/// `{"stages": [{"stage", "seconds"}], "peak_rss_mb"}`): the only part of an output that
/// differs between two runs with the same input and seed, kept apart from the results
/// (`uns["cellfate"]`) so that comparisons can drop it.
pub const TIMINGS_SLOT: &str = "uns/cellfate_timings";

/// Timing of one stage.
#[derive(Clone, Debug, Serialize)]
pub struct StageTime {
    /// Stage name.
    pub stage: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Input file.
    pub input: String,
    /// Output file.
    pub output: String,
    /// Cells.
    pub n_cells: usize,
    /// Kernel used (effective spec, JSON).
    pub kernel: String,
    /// Stage timings.
    pub stages: Vec<StageTime>,
    /// Upstream steps that ran, in order ([`UpstreamStep::name`]: `loom`, `preprocess`,
    /// `moments`, `velocity`, `pseudotime`); empty for a processed input.
    pub upstream_steps: Vec<String>,
    /// Notes of the upstream steps (genes kept, pseudotime root, ...).
    pub upstream_notes: Vec<String>,
    /// Every warning and note of the run, in the order the stages emitted them: the upstream
    /// steps' warnings (loom attributes not converted, cells the pseudotime does not reach),
    /// then the estimators' notes (recoveries such as the macrostates' fewer-cells retry,
    /// stages skipped, genes excluded from the drivers for non-finite values, ...). Always
    /// present in the JSON summary (an empty list when there is nothing to say); also stored
    /// as `uns["cellfate"]["warnings"]`.
    pub warnings: Vec<String>,
    /// Estimator results.
    pub estimators: EstimatorSummary,
    /// The vector-field steps' results (when `[vectorfield]` asked for them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vectorfield: Option<crate::vectorfield_io::VectorFieldRunSummary>,
    /// The kernel's randomised control (when it ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_control: Option<crate::kernel_io::RandomControlSummary>,
    /// Peak resident memory of the process so far (MB; Linux `VmHWM`), when known.
    pub peak_rss_mb: Option<f64>,
}

/// Peak resident set size of this process in MB (`VmHWM` of `/proc/self/status`; `None` where
/// that file does not exist).
pub fn peak_rss_mb() -> Option<f64> {
    crate::upstream::peak_rss_mb()
}

/// The default kernel expression ([`FateMapSpec::kernel`]).
pub const DEFAULT_KERNEL: &str = "0.8*velocity + 0.2*connectivity";
/// The default kernel on metabolic-labeling data.
pub const LABELING_KERNEL: &str = "0.8*labeling_time + 0.2*connectivity";

/// The kernel a run of `spec` on `input` uses by default: [`LABELING_KERNEL`] when the
/// expression is the default one, not chosen ([`FateMapSpec::kernel_explicit`]), and the
/// input holds metabolic labeling — a labeling velocity
/// already (`layers["velocity_T"]`), or new/total layers (or the four labeled/unlabeled
/// layers) with a labeling time (`--labeling-time`, or `obs["labeling_time"]`/`["time"]`)
/// — and labeling is not switched off; `None` to keep the spec's. With the reason, for the
/// run's notes.
pub fn labeling_default_kernel(input: &Path, spec: &FateMapSpec) -> Option<String> {
    use crate::upstream::labeling::{LabelingTime, TIME_COLUMNS};
    if spec.kernel_explicit
        || spec.kernel != DEFAULT_KERNEL
        || spec.transition_key.is_some()
        || crate::io::loom::is_loom(input)
    {
        return None;
    }
    let lab = &spec.upstream.preprocess.labeling;
    if lab.labeling_time.as_ref().is_some_and(LabelingTime::is_off) {
        return None;
    }
    let r = H5adReader::open(input).ok()?;
    if r.exists("layers/velocity_T") && r.exists("layers/M_t") {
        return Some("the input holds a labeling velocity (layers velocity_T, M_t)".into());
    }
    crate::upstream::labeling_layout(&r).ok()??;
    let obs = r.columns("obs").unwrap_or_default();
    let timed = match &lab.labeling_time {
        Some(LabelingTime::Value(_)) => true,
        Some(LabelingTime::Column(c)) => obs.iter().any(|o| o == c),
        None => TIME_COLUMNS.iter().any(|c| obs.iter().any(|o| o == c)),
    };
    timed.then(|| "the input holds metabolic labeling (new/total RNA and a labeling time)".into())
}

/// Runs kernel + estimators on `input`, writing everything to `output` (a copy of the input;
/// written to a temporary file and renamed at the end).
pub fn run(
    input: &Path,
    output: &Path,
    spec: &FateMapSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<RunSummary, PipelineError> {
    // Labeling data get the labeling kernel by default.
    let labeling_note = labeling_default_kernel(input, spec);
    let resolved;
    let spec = match &labeling_note {
        Some(_) => {
            resolved = FateMapSpec {
                kernel: LABELING_KERNEL.into(),
                ..spec.clone()
            };
            &resolved
        }
        None => spec,
    };
    // The output copies an intermediate file when upstream steps run, so the writer's own
    // check (output ≠ the file it copies) no longer protects the input: check here.
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        if a == b {
            return Err(H5adError::WouldOverwriteInput {
                path: output.to_path_buf(),
            }
            .into());
        }
    }
    // Settings that cannot work: fail before any step runs (the number of cells is checked
    // against the Schur vectors and macrostates asked for; a .loom input after conversion).
    spec.estimators.validate()?;
    spec.vectorfield.validate()?;
    if !crate::io::loom::is_loom(input) {
        if let Ok(n) = H5adReader::open(input).and_then(|r| r.n_obs()) {
            spec.estimators.validate_for_cells(n)?;
        }
    }
    // A cluster key given by name must be a categorical obs column: fail before any step runs
    // (a .loom input is checked after its conversion, when the estimators read it).
    if let Some(key) = &spec.estimators.cluster_key {
        if !crate::io::loom::is_loom(input) {
            crate::estimator_io::read_clusters(&H5adReader::open(input)?, key)?;
        }
    }
    // Raw input: the missing upstream steps write an intermediate file, which the kernel reads
    // and the output copies (removed when `prepared` is dropped).
    let prepared = upstream::prepare_input(input, output, spec, progress)?;
    let source = prepared.path();
    let r = H5adReader::open(source)?;
    let mut edit = H5adEdit::new(source);
    let mut stages = prepared.stages.clone();
    let start = Instant::now();
    let mut control = None;
    let mut control_warning = None;
    let (t, kernel_json) = if let Some(key) = &spec.transition_key {
        progress("reading the transition matrix");
        (
            r.transition_matrix(key)?,
            format!("{{\"kernel\":\"precomputed\",\"obsp_key\":\"{key}\"}}"),
        )
    } else {
        progress("kernel");
        let k = spec.kernel_spec()?;
        let out = k.compute(&r)?;
        crate::kernel_io::write_kernel(&mut edit, &out, None);
        let labeling = k
            .leaves()
            .iter()
            .any(|l| matches!(l, KernelSpec::LabelingTime(_)));
        if spec.random_control.unwrap_or(labeling) {
            progress("randomised control");
            let key = crate::io::keys::transition(out.transition.direction());
            let c = crate::kernel_io::random_control(
                &r,
                &out,
                &key,
                spec.random_control_seed,
                &mut edit,
            )?;
            if c.score.is_nan() || c.score < 0.1 {
                control_warning = Some(format!(
                    "randomised control: the flow is hardly more coherent than with permuted velocities (coherence {:.3} real, {:.3} control, score {:.3} on {}): the velocities may be noise",
                    c.real, c.control, c.score, c.basis
                ));
            }
            control = Some(c);
        }
        (out.transition.clone(), out.effective.to_json())
    };
    stages.push(StageTime {
        stage: "kernel".into(),
        seconds: start.elapsed().as_secs_f64(),
    });
    // Each estimator stage is timed from its progress message to the next one.
    let mut marks: Vec<(String, Instant)> = Vec::new();
    let mut timed = |s: &str| {
        marks.push((s.to_string(), Instant::now()));
        progress(s);
    };
    let summary = estimate::run_estimators(&r, &t, &spec.estimators, &mut edit, &mut timed)?;
    let end = Instant::now();
    for (k, (name, at)) in marks.iter().enumerate() {
        let next = marks.get(k + 1).map_or(end, |m| m.1);
        stages.push(StageTime {
            stage: name.clone(),
            seconds: next.duration_since(*at).as_secs_f64(),
        });
    }
    // The vector-field steps, on the run's transition matrix and fate probabilities.
    let fates = match edit.get(&crate::io::keys::obsm(&crate::io::keys::lineages(
        cellfate_kernels::Direction::Forward,
    ))) {
        Some(Element::Dense(a)) if a.shape.len() == 2 => Some((a.shape[1], a.data.to_f64())),
        _ => None,
    };
    let mut vf_marks: Vec<(String, Instant)> = Vec::new();
    let vectorfield = crate::vectorfield_io::run_steps(
        &r,
        source,
        &t,
        &spec.vectorfield,
        fates,
        &mut edit,
        &mut |s: &str| {
            vf_marks.push((s.to_string(), Instant::now()));
            progress(s);
        },
    )?;
    let vf_end = Instant::now();
    for (k, (name, at)) in vf_marks.iter().enumerate() {
        let next = vf_marks.get(k + 1).map_or(vf_end, |m| m.1);
        stages.push(StageTime {
            stage: name.clone(),
            seconds: next.duration_since(*at).as_secs_f64(),
        });
    }
    let mut warnings = prepared.warnings.clone();
    warnings.extend(control_warning);
    if let Some(why) = &labeling_note {
        warnings.insert(
            0,
            format!("kernel: {LABELING_KERNEL} (the default on labeling data: {why}; --kernel sets another)"),
        );
    }
    warnings.extend(summary.notes.iter().cloned());
    if let Some(vf) = &vectorfield {
        warnings.extend(vf.notes.iter().cloned());
    }
    // Only what the input and the settings determine goes into `uns["cellfate"]`: two runs
    // with the same input and seed write the same data there. Wall-clock timings and memory
    // go to their own entry, `uns["cellfate_timings"]` ([`TIMINGS_SLOT`]), which comparisons
    // of outputs leave out.
    let run_info = serde_json::json!({
        "upstream_steps": &prepared.steps,
        "upstream_notes": &prepared.notes,
    });
    let timings = serde_json::json!({
        "stages": &stages,
        "peak_rss_mb": peak_rss_mb(),
    });
    edit.set(TIMINGS_SLOT, Element::Str(timings.to_string()));
    edit.set(
        "uns/cellfate",
        Element::Dict(vec![
            ("run".into(), Element::Str(run_info.to_string())),
            ("warnings".into(), Element::from_strings(warnings.clone())),
            ("config".into(), Element::Str(spec.to_toml())),
            (
                "version".into(),
                Element::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            (
                "summary".into(),
                Element::Str(serde_json::to_string(&summary).unwrap_or_default()),
            ),
            (
                "upstream_steps".into(),
                Element::from_strings(prepared.steps.clone()),
            ),
        ]),
    );
    let write_start = Instant::now();
    progress("writing");
    edit.write_to(output)?;
    stages.push(StageTime {
        stage: "write".into(),
        seconds: write_start.elapsed().as_secs_f64(),
    });
    Ok(RunSummary {
        input: input.display().to_string(),
        output: output.display().to_string(),
        n_cells: t.n_cells(),
        kernel: kernel_json,
        stages,
        upstream_steps: prepared.steps.clone(),
        upstream_notes: prepared.notes.clone(),
        warnings,
        estimators: summary,
        vectorfield,
        random_control: control,
        peak_rss_mb: peak_rss_mb(),
    })
}
