//! `cellfate`: the command-line tool. Thin: it parses arguments, calls the library, prints.
//!
//! Exit codes: 0 success; 1 partial failure (a batch where some samples failed); 2 error
//! (bad input, bad arguments), with a one-paragraph message and no backtrace.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod batch_cmd;
mod field_cmd;
mod hints;
mod kernel_cmd;
mod perturb_cmd;
mod progress;
mod report_cmd;
mod run_cmd;
mod stages_cmd;
mod values;

/// Cell fate mapping for single-cell RNA-seq (.h5ad): kernels, macrostates, fate
/// probabilities and driver genes, compatible with CellRank 2.
#[derive(Debug, Parser)]
#[command(name = "cellfate", version, about, long_about = None)]
struct Cli {
    /// Number of worker threads (default: all cores; at most 4 x the cores, more is capped
    /// with a warning). Results do not depend on it.
    #[arg(long, global = true, value_parser = values::positive)]
    threads: Option<usize>,
    /// Read datasets that declare far more data than their file holds (over 1 GiB and 1000 x
    /// the file size; refused by default as corrupt or crafted). Same as CELLFATE_ALLOW_LARGE=1.
    #[arg(long, global = true)]
    allow_large: bool,
    /// How new datasets are stored: none (default, as anndata), gzip or gzip:LEVEL (1-9;
    /// shuffle + gzip, read by anndata and h5py without plugins). Slots copied unchanged
    /// from the input keep their encoding. Overrides a run config's `compression`.
    #[arg(long, global = true, value_parser = values::compression)]
    compression: Option<cellfate::io::Compression>,
    /// No progress output (results and errors are still printed); not with -v.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More output: the duration of every stage.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what an .h5ad file holds: n_obs, n_vars and every slot with its shape and dtype.
    Inspect {
        /// The .h5ad file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole fate mapping on an .h5ad file (or --demo): kernel, Schur, macrostates,
    /// terminal states, fate probabilities, absorption times, drivers.
    Run(run_cmd::RunArgs),
    /// Figures (PNG/SVG) from a fate-mapping output: embeddings by clusters, macrostates,
    /// terminal states and fate probabilities; Schur spectrum; coarse T; drivers; random walks;
    /// the transition-matrix projection.
    Plot(report_cmd::PlotArgs),
    /// A self-contained HTML report (figures, terminal states, drivers, warnings, timings,
    /// parameters) from a fate-mapping output.
    Report(report_cmd::ReportArgs),
    /// Fate mapping over many files (in parallel within a memory budget): one output per sample
    /// and summary.json / summary.csv. Exits 1 when some samples failed.
    Batch(batch_cmd::BatchArgs),
    /// One summary.json / summary.csv (batch's columns) over outputs of `run` computed
    /// elsewhere, e.g. per sample by a workflow engine (workflow/Snakefile). Exits 1 when some
    /// file is not a complete output.
    Summary(batch_cmd::SummaryArgs),
    /// Schur decomposition, macrostates (GPCCA) and terminal/initial states on obsp["T_fwd"]
    /// (or a --kernel expression).
    Macrostates(stages_cmd::MacrostatesArgs),
    /// Re-select terminal states from existing macrostates.
    TerminalStates(stages_cmd::TerminalArgs),
    /// Fate probabilities (and absorption times, priming) from T_fwd and term_states_fwd.
    Fates(stages_cmd::FatesArgs),
    /// Lineage driver genes from the fate probabilities.
    Drivers(stages_cmd::DriversArgs),
    /// Terminal states with CFLARE (left/right eigenvectors, filtering, k-means).
    Cflare(stages_cmd::CflareArgs),
    /// Compute a transition matrix from a kernel expression and write obsp["T_fwd"] and
    /// uns["T_fwd_params"] (CellRank's layout) into a copy of the input.
    Kernel(kernel_cmd::KernelArgs),
    /// A velocity vector field in an embedding (dynamo's vf.VectorField, SparseVFC): uns
    /// VecFld_<basis>, the learned velocities, and per-cell speed, divergence, curl,
    /// acceleration and curvature.
    Vectorfield(field_cmd::VectorFieldArgs),
    /// Fixed points of the vector field (dynamo's vf.topography): positions, types (stable,
    /// saddle, unstable) from the analytic Jacobian, checked for convergence.
    Topography(field_cmd::TopographyArgs),
    /// Potential landscape by Hodge decomposition on the kNN graph (dynamo's ddhodge), the
    /// Waddington potential and the developmental entropy.
    Potential(field_cmd::PotentialArgs),
    /// Fate prediction by integrating the vector field from cells (dynamo's pd.fate): the
    /// paths, their end clusters, and the agreement with the Markov fate probabilities.
    PredictFate(field_cmd::PredictFateArgs),
    /// In-silico perturbation: knock genes out, set them to a level or raise them, and predict
    /// the change of fate probabilities (kinetic route in the velocity model, or the vector
    /// field's Jacobian); --screen ranks many genes by the shift they cause.
    Perturb(perturb_cmd::PerturbArgs),
    /// From raw spliced/unspliced counts to kernel inputs: normalisation, highly variable
    /// genes, PCA, kNN + connectivities, moments (Ms, Mu) and RNA velocity.
    Preprocess {
        /// Input .h5ad with raw counts in layers spliced and unspliced (never modified).
        input: PathBuf,
        /// Output .h5ad.
        #[arg(short, long)]
        output: PathBuf,
        /// Number of neighbours.
        #[arg(long, default_value_t = 30, value_parser = values::at_least_two)]
        n_neighbors: usize,
        /// Number of principal components.
        #[arg(long, default_value_t = 30, value_parser = values::positive)]
        n_pcs: usize,
        /// Number of highly variable genes.
        #[arg(long, default_value_t = 2000, value_parser = values::positive)]
        n_top_genes: usize,
        /// Minimum shared spliced/unspliced counts per gene.
        #[arg(long, default_value_t = 20.0, value_parser = values::non_negative_f64)]
        min_shared_counts: f64,
        /// Velocity model: stochastic (scVelo's default), deterministic or dynamical.
        #[arg(long, default_value = "stochastic")]
        velocity_mode: cellfate::upstream::velocity::VelocityMode,
        #[command(flatten)]
        dynamics: DynamicsFlags,
        #[command(flatten)]
        latent: LatentFlags,
        #[command(flatten)]
        labeling: LabelingFlags,
        /// Neighbour search: auto (exact up to 50,000 cells), exact, approximate (NN-descent).
        #[arg(long, default_value = "auto")]
        knn: cellfate::upstream::KnnMethod,
        /// Storage type of the normalised X, spliced and unspliced, and of the PCA scores: auto
        /// (each layer in its counts' type, float32 for float32 or integer counts, and the
        /// scores in float32, as scanpy and scVelo keep them), float32 or float64 (all of
        /// them). The later steps use the stored values.
        #[arg(long, default_value = "auto")]
        dtype: cellfate::upstream::LayerDtype,
        /// Also lay out the kNN graph with UMAP (obsm X_umap; scanpy's tl.umap defaults, the
        /// options of `cellfate umap`).
        #[arg(long)]
        umap: bool,
    },
    /// Diffusion map and diffusion pseudotime (scanpy's diffmap + dpt): obsm X_diffmap,
    /// uns diffmap_evals and iroot, obs dpt_pseudotime.
    Pseudotime {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Root: the extreme cell (first diffusion component) of this cluster.
        #[arg(long, conflicts_with = "root_cell")]
        root_cluster: Option<String>,
        /// obs column of the clusters of --root-cluster (default: clusters).
        #[arg(long, requires = "root_cluster")]
        cluster_key: Option<String>,
        /// Root: a cell index or obs name (default: uns iroot, else the smallest first
        /// diffusion component).
        #[arg(long)]
        root_cell: Option<String>,
        /// Diffusion components computed.
        #[arg(long, default_value_t = 15, value_parser = values::at_least_two)]
        n_comps: usize,
        /// Diffusion components used for the pseudotime (default 10, at most --n-comps).
        #[arg(long, value_parser = values::positive)]
        n_dcs: Option<usize>,
    },
    /// UMAP layout of the kNN graph (scanpy's tl.umap, its defaults): obsm X_umap and
    /// uns umap; the graph (obsp connectivities) is read, never modified.
    Umap {
        /// Input .h5ad with obsp["connectivities"] (uns["neighbors"]["connectivities_key"]).
        input: PathBuf,
        /// Output .h5ad.
        #[arg(short, long)]
        output: PathBuf,
        /// Effective minimum distance between embedded points (scanpy: 0.5).
        #[arg(long, default_value_t = 0.5, value_parser = values::non_negative_f64)]
        min_dist: f64,
        /// Scale of the embedded points.
        #[arg(long, default_value_t = 1.0, value_parser = values::positive_f64)]
        spread: f64,
        /// Epochs (scanpy's maxiter; default 500 up to 10,000 cells, 200 above).
        #[arg(long, value_parser = values::positive)]
        n_epochs: Option<usize>,
        /// Seed (scanpy's random_state).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// RNA velocity on a processed file (scVelo's tl.velocity): reads Ms/Mu (and, for the
    /// stochastic model, the normalised spliced/unspliced layers and obsp connectivities).
    Velocity {
        input: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// stochastic (default), deterministic or dynamical (scVelo's recover_dynamics +
        /// velocity(mode="dynamical"): var fit_*, layers fit_t/fit_tau/fit_tau_/velocity_u).
        #[arg(long, default_value = "stochastic")]
        mode: cellfate::upstream::velocity::VelocityMode,
        #[command(flatten)]
        dynamics: DynamicsFlags,
        #[command(flatten)]
        latent: LatentFlags,
    },
    /// Simulate a branching differentiation with splicing kinetics and ground truth (raw
    /// counts, true time, true fate, true velocity) into an .h5ad file; `--model switch`
    /// simulates scVelo's single switch instead (ready for `cellfate velocity`).
    Simulate {
        /// Output .h5ad file.
        #[arg(short, long)]
        output: PathBuf,
        /// `branching` (raw counts of a differentiation with fates) or `switch` (every gene
        /// induced at time 0 and switched off at its own time, as scVelo's
        /// datasets.simulation, with a kNN graph and moments, to run `velocity` on directly).
        #[arg(long, default_value = "branching", value_parser = ["branching", "switch"])]
        model: String,
        /// Noise level of `--model switch` (scVelo's noise_level: Gaussian noise with
        /// standard deviation noise x the gene's 99th percentile / 10).
        #[arg(long, value_parser = values::non_negative_f64)]
        noise: Option<f64>,
        /// Number of cells.
        #[arg(long, default_value_t = 2000, value_parser = values::positive)]
        cells: usize,
        /// Number of genes.
        #[arg(long, default_value_t = 300, value_parser = values::positive)]
        genes: usize,
        /// Number of terminal fates (1..=6; 1 is a linear trajectory).
        #[arg(long, default_value_t = 3, value_parser = values::positive)]
        fates: usize,
        /// Also simulate metabolic labeling (layers new/total, obs labeling_time; the truth
        /// in var true_gamma_total, true_half_life_total and layers true_velocity_T).
        #[arg(long)]
        labeling: bool,
        /// The labeling experiment (implies --labeling): one-shot (one labeling time, 2),
        /// kinetics (times 1, 2, 4) or degradation (a chase after labeling to saturation,
        /// chase times 0.5, 1, 2, 4).
        #[arg(long, value_parser = ["one-shot", "kinetics", "degradation", "kin", "deg"])]
        experiment: Option<String>,
        /// Labeling (or chase) durations, comma-separated, assigned at random to the cells
        /// (implies --labeling; default by --experiment).
        #[arg(long, value_delimiter = ',', value_parser = values::positive_f64)]
        labeling_times: Vec<f64>,
        /// Sequencing depth: mean library-size factor that scales every count (at 2,000 genes,
        /// 1 gives ~64 % non-zero spliced entries per cell, 0.1 ~31 %, as in pancreas).
        #[arg(long, default_value_t = 1.0, value_parser = values::positive_f64)]
        depth: f64,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Let a regulatory circuit decide the fates (a toggle switch between the fates'
        /// driver genes, var["driver"]) instead of drawing them independently of
        /// expression: the unperturbed truth for `--knockout`.
        #[arg(long)]
        circuit: bool,
        /// Knock out these genes (gene_<j>, comma-separated): no transcription from
        /// --knockout-time on; implies --circuit. Same seed without --knockout (with
        /// --circuit) gives the unperturbed truth, cell for cell.
        #[arg(long, value_delimiter = ',')]
        knockout: Vec<String>,
        /// Latent time (0..=1) from which the knocked-out genes are off; the fates are
        /// decided at the branch (0.3).
        #[arg(long, value_parser = values::non_negative_f64)]
        knockout_time: Option<f64>,
    },
}

/// Files and directories a command will write: checked before any computation (special files
/// and links refused, directories must exist and accept new files; see `cellfate::output`).
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) dirs: Vec<PathBuf>,
}

impl Outputs {
    pub(crate) fn files(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            dirs: Vec::new(),
        }
    }

    pub(crate) fn dirs(dirs: Vec<PathBuf>) -> Self {
        Self {
            files: Vec::new(),
            dirs,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        for f in &self.files {
            cellfate::output::check_output(f)?;
        }
        for d in &self.dirs {
            cellfate::output::check_output_dir(d)?;
        }
        Ok(())
    }
}

impl Command {
    fn outputs(&self) -> Outputs {
        match self {
            Self::Inspect { .. } => Outputs::default(),
            Self::Run(a) => a.outputs(),
            Self::Plot(a) => a.outputs(),
            Self::Report(a) => a.outputs(),
            Self::Batch(a) => a.outputs(),
            Self::Summary(a) => a.outputs(),
            Self::Macrostates(a) => a.outputs(),
            Self::TerminalStates(a) => a.outputs(),
            Self::Fates(a) => a.outputs(),
            Self::Drivers(a) => a.outputs(),
            Self::Cflare(a) => a.outputs(),
            Self::Kernel(a) => a.outputs(),
            Self::Vectorfield(a) => a.outputs(),
            Self::Topography(a) => a.outputs(),
            Self::Potential(a) => a.outputs(),
            Self::PredictFate(a) => a.outputs(),
            Self::Perturb(a) => a.outputs(),
            Self::Preprocess { output, .. }
            | Self::Pseudotime { output, .. }
            | Self::Umap { output, .. }
            | Self::Velocity { output, .. }
            | Self::Simulate { output, .. } => Outputs::files(vec![output.clone()]),
        }
    }
}

/// The most threads a pool gets: this many times the available cores.
const THREADS_PER_CORE: usize = 4;

/// `n` threads asked for by `flag`, capped at [`THREADS_PER_CORE`] x the available cores
/// (with a warning on stderr): thousands of threads exhaust the process's resources and do
/// not make anything faster.
pub(crate) fn cap_threads(flag: &str, n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cap = THREADS_PER_CORE * cores;
    if n > cap {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "warning: {flag} {n} is more than {THREADS_PER_CORE} x the {cores} available cores; using {cap}"
            );
        }
        cap
    } else {
        n
    }
}

/// Reads a text input (config, parameter or cells file) after checking that it is a regular
/// file: a FIFO would block forever, a directory or device is never meant.
pub(crate) fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    cellfate::io::regular_file_len(path)?;
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// [`read_text`] for binary inputs.
pub(crate) fn read_bytes(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    cellfate::io::regular_file_len(path)?;
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `--compression`, when given (it overrides a config's `compression`).
static COMPRESSION_FLAG: std::sync::OnceLock<cellfate::io::Compression> =
    std::sync::OnceLock::new();

/// Applies a run config's `compression` unless `--compression` was given.
pub(crate) fn config_compression(c: Option<cellfate::io::Compression>) {
    if let (Some(c), None) = (c, COMPRESSION_FLAG.get()) {
        cellfate::io::set_compression(c);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    progress::set_level(cli.quiet, cli.verbose);
    if cli.allow_large {
        cellfate::io::allow_large_datasets(true);
    }
    if let Some(c) = cli.compression {
        cellfate::io::set_compression(c);
        let _ = COMPRESSION_FLAG.set(c);
    }
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cap_threads("--threads", n))
            .build_global()
            .context("configuring the thread pool")?;
    }
    // Special files, links and unwritable directories are refused before any work.
    cli.command.outputs().check()?;
    let command = match cli.command {
        Command::Batch(args) => return batch_exit(batch_cmd::run(args)?),
        Command::Summary(args) => return batch_exit(batch_cmd::summarize(args)?),
        other => other,
    };
    run_command(command).map(|()| ExitCode::SUCCESS)
}

/// Prints the per-sample report of `batch` or `summary`, then fails on a summary that could
/// not be written; exit code 1 when some sample failed.
fn batch_exit(outcome: batch_cmd::BatchOutcome) -> anyhow::Result<ExitCode> {
    write_stdout(&outcome.report)?;
    if let Some(e) = outcome.summary_error {
        return Err(e);
    }
    Ok(if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Batch(_) | Command::Summary(_) => Ok(()),
        Command::Inspect { file, json } => {
            let report = cellfate::inspect::inspect(&file)?;
            let text = if json {
                cellfate::names::escape_json_for_terminal(&serde_json::to_string_pretty(&report)?)
                    .into_owned()
                    + "\n"
            } else {
                report.to_text()
            };
            write_stdout(&text)
        }
        Command::Run(args) => {
            let msg = run_cmd::run(args)?;
            write_stdout(&msg)
        }
        Command::Plot(a) => write_stdout(&report_cmd::plot(a)?),
        Command::Report(a) => write_stdout(&report_cmd::report(a)?),
        Command::Macrostates(a) => write_stdout(&stages_cmd::macrostates(a)?),
        Command::TerminalStates(a) => write_stdout(&stages_cmd::terminal_states(a)?),
        Command::Fates(a) => write_stdout(&stages_cmd::fates(a)?),
        Command::Drivers(a) => write_stdout(&stages_cmd::drivers(a)?),
        Command::Cflare(a) => write_stdout(&stages_cmd::cflare(a)?),
        Command::Vectorfield(args) => write_stdout(&field_cmd::vectorfield(args)?),
        Command::Topography(args) => write_stdout(&field_cmd::topography(args)?),
        Command::Potential(args) => write_stdout(&field_cmd::potential(args)?),
        Command::PredictFate(args) => write_stdout(&field_cmd::predict_fate(args)?),
        Command::Perturb(args) => write_stdout(&perturb_cmd::perturb(args)?),
        Command::Kernel(args) => {
            let msg = kernel_cmd::run(args)?;
            write_stdout(&msg)
        }
        Command::Preprocess {
            input,
            output,
            n_neighbors,
            n_pcs,
            n_top_genes,
            min_shared_counts,
            velocity_mode,
            knn,
            dtype,
            dynamics,
            latent,
            labeling,
            umap,
        } => {
            let mut spec = cellfate::upstream::UpstreamSpec {
                n_neighbors,
                n_pcs,
                n_top_genes,
                min_shared_counts,
                velocity_mode,
                knn,
                dtype,
                umap: umap.then(Default::default),
                ..Default::default()
            };
            dynamics.apply(&mut spec.dynamics);
            labeling.apply(&mut spec.labeling)?;
            // The library's errors name the file and the slot already.
            let verbose = progress::level() >= 2;
            let mut bar = progress::Progress::new();
            bar.stage("preprocessing (normalise, HVGs, PCA, kNN, moments, velocity)");
            let report = cellfate::upstream::prepare_with(&input, &output, &spec, &mut |t| {
                if verbose {
                    bar.note(&progress::timing_line(t.stage, t.seconds, t.peak_rss_mb));
                }
            })?;
            drop(bar);
            if verbose {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!(
                        "{} cells x {} genes: {} highly variable, {} velocity genes",
                        report.n_cells,
                        report.n_genes,
                        report.n_highly_variable,
                        report.n_velocity_genes
                    );
                }
            }
            let mut msg = if report.labeling.is_some()
                && report.n_velocity_genes > 0
                && !has_spliced(&output)
            {
                format!(
                    "wrote {} (X log-normalised; obsp connectivities, distances)\n",
                    output.display()
                )
            } else {
                format!(
                    "wrote {} (X log-normalised; layers Ms, Mu, velocity; obsp connectivities, distances; var velocity_genes)\n",
                    output.display()
                )
            };
            if let Some(l) = &report.labeling {
                msg.push_str(l);
                msg.push('\n');
            }
            if velocity_mode == cellfate::upstream::velocity::VelocityMode::Dynamical {
                msg.push_str(&latent.summaries(&output)?);
            }
            write_stdout(&msg)
        }
        Command::Pseudotime {
            input,
            output,
            root_cluster,
            cluster_key,
            root_cell,
            n_comps,
            n_dcs,
        } => {
            use cellfate::upstream::dpt::{pseudotime_in_file, Root};
            let root = match (root_cluster, root_cell) {
                (Some(name), _) => Root::Cluster {
                    key: cluster_key.unwrap_or_else(|| "clusters".into()),
                    name,
                },
                (None, Some(c)) => c.parse::<usize>().map_or(Root::Name(c), Root::Index),
                (None, None) => Root::Auto,
            };
            // An explicit --n-dcs above --n-comps would be cut silently; the default follows.
            let n_dcs = match n_dcs {
                Some(d) if d > n_comps => anyhow::bail!(
                    "--n-dcs {d} is more than the --n-comps {n_comps} diffusion components computed"
                ),
                Some(d) => d,
                None => n_comps.min(10),
            };
            let res = pseudotime_in_file(&input, &output, &root, n_comps, n_dcs)?;
            let mut msg = format!(
                "diffusion pseudotime from cell {} -> {}\n",
                res.root,
                output.display()
            );
            if res.unreachable > 0 {
                msg.push_str(&format!(
                    "warning: {} cells are not connected to the root in the kNN graph (pseudotime inf)\n",
                    res.unreachable
                ));
            }
            write_stdout(&msg)
        }
        Command::Umap {
            input,
            output,
            min_dist,
            spread,
            n_epochs,
            seed,
        } => {
            let params = cellfate::upstream::umap::UmapParams {
                min_dist,
                spread,
                n_epochs,
                random_state: seed,
                ..Default::default()
            };
            let rep = cellfate::upstream::umap_in_file(&input, Some(&output), &params)?;
            write_stdout(&format!(
                "UMAP of obsp[\"{}\"] ({} cells, {} epochs, {} connected component(s), a = {:.6}, b = {:.6}) -> {}\n",
                rep.graph,
                rep.n_cells,
                rep.n_epochs,
                rep.n_components,
                rep.a,
                rep.b,
                output.display()
            ))
        }
        Command::Velocity {
            input,
            output,
            mode,
            dynamics,
            latent,
        } => {
            let mut settings = cellfate::upstream::velocity::DynamicalSettings::default();
            dynamics.apply(&mut settings);
            let fit = cellfate::upstream::velocity_in_file(&input, &output, mode, &settings)?;
            let k = fit.velocity_genes.iter().filter(|&&b| b).count();
            let mut msg = format!(
                "{} velocity: {k} velocity genes of {} -> {}\n",
                mode.as_str(),
                fit.gamma.len(),
                output.display()
            );
            if mode == cellfate::upstream::velocity::VelocityMode::Dynamical {
                let fitted = fit.dynamical.iter().flatten().count();
                msg.push_str(&format!(
                    "dynamical model: {fitted} genes fitted in {:.2} s\n",
                    fit.seconds[2]
                ));
                if !fit.dynamical_skipped.is_empty() {
                    let names = cellfate::io::H5adReader::open(&output)?.var_names()?;
                    let shown: Vec<&str> = fit
                        .dynamical_skipped
                        .iter()
                        .take(10)
                        .filter_map(|&j| names.get(j).map(String::as_str))
                        .collect();
                    msg.push_str(&format!(
                        "dynamical model: {} genes not recoverable (at most 2 cells with unspliced and spliced above 0; parameters NaN): {}{}\n",
                        fit.dynamical_skipped.len(),
                        shown.join(", "),
                        if fit.dynamical_skipped.len() > 10 { ", ..." } else { "" }
                    ));
                }
                msg.push_str(&latent.summaries(&output)?);
            }
            write_stdout(&msg)
        }
        Command::Simulate {
            output,
            model,
            noise,
            cells,
            genes,
            fates,
            labeling,
            experiment,
            labeling_times,
            depth,
            seed,
            circuit,
            knockout,
            knockout_time,
        } if model == "switch" => {
            let labeling = labeling || experiment.is_some() || !labeling_times.is_empty();
            if circuit || !knockout.is_empty() || knockout_time.is_some() {
                anyhow::bail!(
                    "--circuit, --knockout and --knockout-time apply to --model branching only"
                );
            }
            if labeling || fates != 3 || depth != 1.0 {
                anyhow::bail!(
                    "--model switch simulates one trajectory of continuous values: --fates, --labeling and --depth apply to --model branching only"
                );
            }
            let params = cellfate::sim::SwitchParams {
                n_cells: cells,
                n_genes: genes,
                seed,
                noise_level: noise.unwrap_or(1.0),
                ..Default::default()
            };
            let sim = cellfate::sim::simulate_switch(&params)?;
            cellfate::io::write_new(&output, &sim.to_elements())
                .with_context(|| format!("writing {}", output.display()))?;
            write_stdout(&format!(
                "simulated {cells} cells x {genes} genes, one switch per gene -> {}\n",
                output.display()
            ))
        }
        Command::Simulate {
            output,
            noise,
            cells,
            genes,
            fates,
            labeling,
            experiment,
            labeling_times,
            depth,
            seed,
            circuit,
            knockout,
            knockout_time,
            ..
        } => {
            use cellfate::sim::ExperimentType;
            let labeling = labeling || experiment.is_some() || !labeling_times.is_empty();
            let experiment = match experiment.as_deref() {
                Some(e) => ExperimentType::parse(e).with_context(|| {
                    format!("--experiment {e}: expected {}", ExperimentType::EXPECTED)
                })?,
                None if labeling_times.len() == 1 => ExperimentType::OneShot,
                None => ExperimentType::Kinetics,
            };
            let labeling_times = if labeling_times.is_empty() {
                match experiment {
                    ExperimentType::OneShot => vec![2.0],
                    ExperimentType::Kinetics | ExperimentType::Mixture => vec![1.0, 2.0, 4.0],
                    ExperimentType::Degradation => vec![0.5, 1.0, 2.0, 4.0],
                }
            } else {
                labeling_times
            };
            if noise.is_some() {
                anyhow::bail!("--noise applies to --model switch only");
            }
            if knockout_time.is_some() && knockout.is_empty() {
                anyhow::bail!("--knockout-time needs --knockout GENE[,GENE]");
            }
            let params = cellfate::sim::SimParams {
                n_cells: cells,
                n_genes: genes,
                n_fates: fates,
                seed,
                labeling,
                labeling_times,
                experiment,
                depth,
                circuit,
                knockout,
                knockout_time: knockout_time.unwrap_or(0.0),
            };
            params.validate()?;
            // Streamed to disk block by block: memory stays bounded at millions of cells.
            let sim = cellfate::sim::simulate_to_file(&params, &output)
                .with_context(|| format!("writing {}", output.display()))?;
            write_stdout(&format!(
                "simulated {cells} cells x {genes} genes, fates {} -> {}\n",
                sim.fate_names().join(", "),
                output.display()
            ))
        }
    }
}

/// Prints to stdout. Names from the data are escaped where they are formatted; as the last line
/// of defence, every control character other than line feeds and tabs is escaped here, so that
/// nothing read from a file reaches the terminal raw.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let text = cellfate::names::escape_terminal_text(text);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`cellfate inspect f | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One paragraph: the error and its causes, skipping causes already quoted in the message
/// (our library errors embed their cause's text).
fn render_error(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

impl Command {
    /// The subcommand's name, as typed.
    fn name(&self) -> &'static str {
        match self {
            Command::Inspect { .. } => "inspect",
            Command::Run(_) => "run",
            Command::Plot(_) => "plot",
            Command::Report(_) => "report",
            Command::Batch(_) => "batch",
            Command::Summary(_) => "summary",
            Command::Macrostates(_) => "macrostates",
            Command::TerminalStates(_) => "terminal-states",
            Command::Fates(_) => "fates",
            Command::Drivers(_) => "drivers",
            Command::Cflare(_) => "cflare",
            Command::Kernel(_) => "kernel",
            Command::Preprocess { .. } => "preprocess",
            Command::Pseudotime { .. } => "pseudotime",
            Command::Umap { .. } => "umap",
            Command::Vectorfield(_) => "vectorfield",
            Command::Topography(_) => "topography",
            Command::Potential(_) => "potential",
            Command::PredictFate(_) => "predict-fate",
            Command::Perturb(_) => "perturb",
            Command::Velocity { .. } => "velocity",
            Command::Simulate { .. } => "simulate",
        }
    }
}

/// Whether `path` holds splicing layers (what `preprocess` wrote for them).
fn has_spliced(path: &std::path::Path) -> bool {
    cellfate::io::H5adReader::open(path).is_ok_and(|r| r.exists("layers/Ms"))
}

/// Metabolic labeling settings (`preprocess`, `run`, `batch`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct LabelingFlags {
    /// Labeling time of metabolic-labeling data (layers new/total, or the four labeled/
    /// unlabeled x spliced/unspliced layers): a number for all cells, an obs column, or
    /// `off` to ignore the labeling layers (default: obs labeling_time, then obs time).
    #[arg(long, value_name = "TIME|COLUMN|off")]
    labeling_time: Option<cellfate::upstream::labeling::LabelingTime>,
    /// The labeling experiment: one-shot, kinetics (kin), degradation (deg) or mixture
    /// (mix_std_stm: labeling at steady state, each cell's time its stimulation time within
    /// it) (default: one labeling time is one-shot; several: kinetics when the new-to-total
    /// ratio rises with time, degradation when it falls, as dynamo decides).
    #[arg(long, value_name = "TYPE")]
    experiment_type: Option<String>,
    /// One-shot slope: combined (least squares, default), stochastic (dynamo's default:
    /// first and second moments) or sci_fate.
    #[arg(long, value_parser = ["combined", "stochastic", "sci_fate"])]
    one_shot_method: Option<String>,
    /// One-shot extreme cells: total (the most total RNA, default) or joint (dynamo's
    /// total/max + new/max score).
    #[arg(long, value_parser = ["total", "joint"])]
    extreme: Option<String>,
}

impl LabelingFlags {
    pub(crate) fn apply(
        &self,
        spec: &mut cellfate::upstream::labeling::LabelingSpec,
    ) -> anyhow::Result<()> {
        use cellfate::kernels::labeling_kinetics::ExperimentType;
        if let Some(t) = &self.labeling_time {
            if let cellfate::upstream::labeling::LabelingTime::Value(v) = t {
                if !(v.is_finite() && *v > 0.0) {
                    anyhow::bail!(
                        "--labeling-time {v}: expected a positive labeling duration, an obs column, or off"
                    );
                }
            }
            spec.labeling_time = Some(t.clone());
        }
        if let Some(m) = &self.one_shot_method {
            spec.one_shot_method = serde_json::from_value(serde_json::Value::String(m.clone()))
                .with_context(|| format!("--one-shot-method {m}"))?;
        }
        if let Some(e) = &self.extreme {
            spec.extreme = serde_json::from_value(serde_json::Value::String(e.clone()))
                .with_context(|| format!("--extreme {e}"))?;
        }
        if let Some(e) = &self.experiment_type {
            spec.experiment_type = Some(ExperimentType::parse(e).with_context(|| {
                format!(
                    "--experiment-type {e}: expected {}",
                    ExperimentType::EXPECTED
                )
            })?);
        }
        Ok(())
    }
}

/// Latent time and the velocity summaries after the dynamical model (`velocity`,
/// `preprocess`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LatentFlags {
    /// Latent time starts at this cell (index or obs name) instead of scVelo's root cells.
    #[arg(long, conflicts_with = "latent_root_cluster")]
    latent_root_cell: Option<String>,
    /// Latent time starts at the cells of this cluster (obs column --latent-cluster-key).
    #[arg(long)]
    latent_root_cluster: Option<String>,
    /// obs column of --latent-root-cluster.
    #[arg(long, default_value = "clusters", requires = "latent_root_cluster")]
    latent_cluster_key: String,
    /// Also write the kinetic parameters (var fit_*) as CSV, one row per gene.
    #[arg(long)]
    kinetics_csv: Option<PathBuf>,
    /// Also write latent time (and the velocity confidences) as CSV, one row per cell.
    #[arg(long)]
    latent_time_csv: Option<PathBuf>,
}

impl LatentFlags {
    fn root(&self) -> cellfate::upstream::velocity_summaries::LatentRoot {
        use cellfate::upstream::velocity_summaries::LatentRoot;
        match (&self.latent_root_cell, &self.latent_root_cluster) {
            (Some(c), _) => LatentRoot::Cell(c.clone()),
            (None, Some(name)) => LatentRoot::Cluster {
                key: self.latent_cluster_key.clone(),
                name: name.clone(),
            },
            _ => LatentRoot::Auto,
        }
    }

    /// Velocity graph, confidences and latent time into `output`, the CSV tables; returns
    /// the lines to print.
    fn summaries(&self, output: &std::path::Path) -> anyhow::Result<String> {
        let s = cellfate::upstream::velocity_summaries::velocity_summaries_in_file(
            output,
            &self.root(),
        )?;
        let mut msg = format!(
            "velocity confidence: median {:.3} over {} genes\n",
            s.median_confidence, s.n_genes
        );
        if let Some((roots, detected)) = &s.latent_roots {
            msg.push_str(&format!(
                "latent time: from {} root cell(s){}\n",
                roots.len(),
                if *detected {
                    ""
                } else {
                    " (none stood out: the earliest by fit_t, as scVelo)"
                }
            ));
        }
        for note in &s.notes {
            msg.push_str(&format!("note: {note}\n"));
        }
        let r = cellfate::io::H5adReader::open(output)?;
        if let Some(path) = &self.kinetics_csv {
            let genes = r.var_names()?;
            let keys = [
                "fit_alpha",
                "fit_beta",
                "fit_gamma",
                "fit_t_",
                "fit_scaling",
                "fit_std_u",
                "fit_std_s",
                "fit_likelihood",
                "fit_variance",
                "fit_r2",
            ];
            let cols: Vec<Vec<f64>> = keys
                .iter()
                .map(|k| {
                    r.column("var", k)
                        .ok()
                        .and_then(|c| c.to_f64_vec())
                        .unwrap_or_else(|| vec![f64::NAN; genes.len()])
                })
                .collect();
            let vg = r
                .column("var", "velocity_genes")
                .ok()
                .and_then(|c| c.to_f64_vec());
            let mut out = format!("gene,{},velocity_genes\n", keys.join(","));
            for (j, gname) in genes.iter().enumerate() {
                out.push_str(&cellfate::names::csv_field(gname));
                for c in &cols {
                    out.push_str(&format!(",{}", c[j]));
                }
                let v = vg.as_ref().is_some_and(|v| v[j] != 0.0);
                out.push_str(&format!(",{v}\n"));
            }
            cellfate::output::write_atomic(path, out.as_bytes())?;
            msg.push_str(&format!("kinetic parameters -> {}\n", path.display()));
        }
        if let Some(path) = &self.latent_time_csv {
            let cells = r.obs_names()?;
            let keys = [
                "latent_time",
                "velocity_confidence",
                "velocity_length",
                "velocity_confidence_transition",
                "velocity_coherence",
            ];
            let cols: Vec<Vec<f64>> = keys
                .iter()
                .map(|k| r.obs_f64(k).unwrap_or_else(|_| vec![f64::NAN; cells.len()]))
                .collect();
            let mut out = format!("cell,{}\n", keys.join(","));
            for (i, c) in cells.iter().enumerate() {
                out.push_str(&cellfate::names::csv_field(c));
                for col in &cols {
                    out.push_str(&format!(",{}", col[i]));
                }
                out.push('\n');
            }
            cellfate::output::write_atomic(path, out.as_bytes())?;
            msg.push_str(&format!("latent time -> {}\n", path.display()));
        }
        Ok(msg)
    }
}

/// The dynamical model's settings as flags (`velocity`, `preprocess`, `run`, `batch`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DynamicsFlags {
    /// Genes the dynamical model fits: velocity_genes (scVelo's default: the steady-state
    /// fit's velocity genes) or all.
    #[arg(long, value_parser = ["velocity_genes", "all"])]
    var_names: Option<String>,
    /// EM iterations of the dynamical model (scVelo's max_iter, default 10).
    #[arg(long, value_parser = values::positive)]
    max_iter: Option<usize>,
}

impl DynamicsFlags {
    pub(crate) fn apply(&self, s: &mut cellfate::upstream::velocity::DynamicalSettings) {
        if let Some(v) = &self.var_names {
            s.all_genes = v == "all";
        }
        if let Some(m) = self.max_iter {
            s.options.max_iter = m;
        }
    }
}

fn main() -> ExitCode {
    // A fault inside libhdf5 on a corrupt file: a message naming the file, exit 2.
    cellfate::io::install_fault_reporter();
    // rayon does the parallel work: OpenBLAS's spinning threads would compete with it.
    cellfate::blas::single_threaded_blas();
    let cli = Cli::parse();
    let command = cli.command.name();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                // One paragraph: any control character (a line feed included) in a name the
                // message quotes is escaped.
                let esc = cellfate::names::escape_for_terminal;
                eprintln!("error: {}", esc(&render_error(&e)));
                for h in hints::for_anyhow(command, &e) {
                    eprintln!("hint: {}", esc(&h));
                }
            }
            ExitCode::from(2)
        }
    }
}
