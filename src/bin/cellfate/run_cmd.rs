//! `cellfate run` and the estimator stage commands (`macrostates`, `fates`, `drivers`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use cellfate::estimators::gpcca::Optimizer;
use cellfate::estimators::states::TerminalMethod;
use cellfate::pipeline::{self, FateMapSpec, NStates};

/// Settings shared by `run` and `macrostates`, as flags (each overrides the config file).
#[derive(Debug, clap::Args)]
pub(crate) struct EstimatorFlags {
    /// Number of macrostates: N (at least 2), MIN..MAX (minChi), auto or eigengap.
    #[arg(long, value_parser = crate::values::n_states)]
    n_states: Option<NStates>,
    /// obs column naming the states (default: clusters, when present).
    #[arg(long)]
    cluster_key: Option<String>,
    /// Number of Schur vectors (at least 2, fewer than the cells minus 1; raised to
    /// --n-states + 1 when that is more; an explicit value below --n-states is an error).
    #[arg(long, value_parser = crate::values::at_least_two)]
    n_components: Option<usize>,
    /// Terminal-state rule: sinks (default: stable macrostates that are not sources of the
    /// coarse chain), stability (CellRank's), top_n, eigengap, eigengap_coarse.
    #[arg(long)]
    terminal_method: Option<String>,
    /// Number of terminal states for top_n (and fallback when stability selects none); at
    /// most the number of macrostates.
    #[arg(long, value_parser = crate::values::positive, conflicts_with = "terminal_states")]
    n_terminal: Option<usize>,
    /// Stability threshold of the sinks and stability rules, in (0, 1] (default 0.96).
    #[arg(long, value_parser = crate::values::threshold, conflicts_with = "terminal_states")]
    stability_threshold: Option<f64>,
    /// Rotation optimiser: gradient (default) or nelder-mead (CellRank parity).
    #[arg(long)]
    optimizer: Option<String>,
    /// Cells per state in the discrete assignment (at least 1).
    #[arg(long, value_parser = crate::values::positive)]
    n_cells: Option<usize>,
    /// Seed of every random choice of the estimators (the gradient optimiser's random starts,
    /// the drivers' permutation test); results do not depend on the thread count.
    #[arg(long)]
    seed: Option<u64>,
    /// Fate-probability solver: auto (sparse LU up to 30,000 transient cells, GMRES + ILU(0)
    /// above, with a coarse correction if it stalls), direct, gmres.
    #[arg(long)]
    solver: Option<String>,
    /// Terminal states by hand: these macrostate names (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "terminal_method")]
    terminal_states: Vec<String>,
    /// Also the variances of the absorption times (CellRank's calculate_variance, off by
    /// default as there: a second solve as long as the means').
    #[arg(long)]
    absorption_variance: bool,
}

impl EstimatorFlags {
    /// Whether `--solver` was given (`macrostates` computes no fate probabilities).
    pub(crate) fn solver_given(&self) -> bool {
        self.solver.is_some()
    }

    /// Whether `--absorption-variance` was given (`macrostates` computes no absorption
    /// times).
    pub(crate) fn variance_given(&self) -> bool {
        self.absorption_variance
    }

    fn apply(&self, spec: &mut FateMapSpec) -> anyhow::Result<()> {
        // Both counts given: a number of states the Schur vectors cannot hold is a conflict
        // (alone, --n-states raises the default number of Schur vectors, as CellRank does).
        if let (Some(n), Some(k)) = (&self.n_states, self.n_components) {
            let most = match n {
                NStates::Fixed(m) | NStates::Range(_, m) => Some(*m),
                _ => None,
            };
            if let Some(m) = most.filter(|&m| m > k) {
                bail!("--n-states asks for {m} macrostates but --n-components {k} computes only {k} Schur vectors: give --n-components of at least {} (or leave it out)", m + 1);
            }
        }
        let e = &mut spec.estimators;
        if let Some(n) = &self.n_states {
            e.n_states = n.clone();
        }
        if let Some(k) = &self.cluster_key {
            e.cluster_key = Some(k.clone());
        }
        if let Some(n) = self.n_components {
            e.schur.n_components = n;
        }
        if let Some(n) = self.n_cells {
            e.n_cells = n;
        }
        if let Some(o) = &self.optimizer {
            e.optimizer = match o.as_str() {
                "gradient" => Optimizer::default(),
                "nelder-mead" | "nelder_mead" | "nm" => Optimizer::NelderMead,
                other => bail!("--optimizer {other:?}: expected gradient or nelder-mead"),
            };
        }
        if let Some(sv) = &self.solver {
            e.absorption.solver = sv.parse()?;
        }
        if self.absorption_variance {
            e.absorption_variance = true;
        }
        if let Some(seed) = self.seed {
            let mut used = false;
            if let Optimizer::Gradient { seed: s, .. } = &mut e.optimizer {
                *s = seed;
                used = true;
            }
            if let cellfate::estimators::drivers::DriverTest::PermTest { seed: s, .. } =
                &mut e.drivers_test
            {
                *s = seed;
                used = true;
            }
            // Nelder-Mead is deterministic and Fisher's test draws nothing: the seed would be
            // ignored.
            if !used {
                bail!("--seed has no effect with --optimizer nelder-mead (deterministic) and Fisher's driver test (no permutations; a config's estimators.drivers_test may ask for a permutation test)");
            }
        }
        if let Some(n) = self.n_terminal {
            e.terminal_fallback_top_n = Some(n);
        }
        if let Some(m) = &self.terminal_method {
            let alpha = e.alpha;
            e.terminal = match m.as_str() {
                "sinks" => TerminalMethod::Sinks {
                    threshold: self.stability_threshold.unwrap_or(0.96),
                    source_ratio: cellfate::estimators::states::SOURCE_RATIO,
                },
                "stability" => TerminalMethod::Stability {
                    threshold: self.stability_threshold.unwrap_or(0.96),
                },
                other @ ("top_n" | "top-n" | "eigengap" | "eigengap_coarse" | "eigengap-coarse")
                    if self.stability_threshold.is_some() =>
                {
                    bail!("--stability-threshold applies to --terminal-method sinks or stability, not --terminal-method {other}")
                }
                "top_n" | "top-n" => TerminalMethod::TopN {
                    n_states: self.n_terminal.context("--terminal-method top_n needs --n-terminal")?,
                },
                "eigengap" => TerminalMethod::Eigengap { alpha },
                "eigengap_coarse" | "eigengap-coarse" => TerminalMethod::EigengapCoarse { alpha },
                other => bail!("--terminal-method {other:?}: expected sinks, stability, top_n, eigengap or eigengap_coarse"),
            };
        } else if !self.terminal_states.is_empty() {
            e.terminal = TerminalMethod::Names {
                states: self.terminal_states.clone(),
            };
        } else if let Some(th) = self.stability_threshold {
            match &mut e.terminal {
                TerminalMethod::Sinks { threshold, .. }
                | TerminalMethod::Stability { threshold } => *threshold = th,
                _ => bail!("--stability-threshold applies to --terminal-method sinks or stability"),
            }
        }
        Ok(())
    }
}

/// Upstream settings as flags (`run` and `batch`; each overrides the config file).
#[derive(Debug, clap::Args)]
pub(crate) struct UpstreamFlags {
    /// Root of the diffusion pseudotime, computed when a pseudotime kernel needs
    /// obs["dpt_pseudotime"]: the extreme cell of this cluster (of --cluster-key, default
    /// clusters).
    #[arg(long, conflicts_with = "root_cell")]
    root_cluster: Option<String>,
    /// Root of the diffusion pseudotime: a cell index or obs name.
    #[arg(long)]
    root_cell: Option<String>,
    /// Run every upstream step the kernel needs (preprocessing, velocity, diffusion
    /// pseudotime) even when the input already holds its outputs.
    #[arg(long)]
    recompute: bool,
    /// Velocity model of the upstream steps: stochastic (default), deterministic or
    /// dynamical (scVelo's recover_dynamics; recomputes the velocity of an input whose
    /// velocity is of another mode).
    #[arg(long)]
    velocity_mode: Option<cellfate::upstream::velocity::VelocityMode>,
    /// Storage type of the normalised X, spliced and unspliced and of the PCA scores the
    /// upstream steps write: auto (default: each layer in its counts' type, float32 for
    /// float32 or integer counts; the scores in float32), float32 or float64 (all of them).
    /// The later stages use the stored values.
    #[arg(long)]
    dtype: Option<cellfate::upstream::LayerDtype>,
    #[command(flatten)]
    dynamics: crate::DynamicsFlags,
    #[command(flatten)]
    labeling: crate::LabelingFlags,
    /// The kernel's randomised control (velocities permuted across cells with random signs,
    /// the kernel recomputed, flow coherence compared: obsp T_fwd_rnd, obs
    /// random_control_score, uns random_control): true or false (default: on for kernels
    /// with labeling_time).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    random_control: Option<bool>,
}

impl UpstreamFlags {
    pub(crate) fn apply(&self, spec: &mut FateMapSpec) -> anyhow::Result<()> {
        let u = &mut spec.upstream;
        if let Some(c) = &self.root_cluster {
            u.root_cluster = Some(c.clone());
            u.root_cell = None;
        }
        if let Some(c) = &self.root_cell {
            u.root_cell = Some(c.clone());
            u.root_cluster = None;
        }
        if self.recompute {
            u.recompute = true;
        }
        if let Some(m) = self.velocity_mode {
            u.preprocess.velocity_mode = m;
        }
        if let Some(d) = self.dtype {
            u.preprocess.dtype = d;
        }
        self.dynamics.apply(&mut u.preprocess.dynamics);
        self.labeling.apply(&mut u.preprocess.labeling)?;
        u.validate()?;
        if self.random_control.is_some() {
            spec.random_control = self.random_control;
        }
        Ok(())
    }
}

/// The vector-field steps as flags (`run` and `batch`; each overrides the config file's
/// `[vectorfield]`).
#[derive(Debug, clap::Args)]
pub(crate) struct VectorFieldFlags {
    /// After the estimators, reconstruct the vector field in this basis (an obsm embedding;
    /// `--vectorfield` alone: pca) and find its fixed points and potential, as the
    /// vectorfield, topography and potential commands do (TOML [vectorfield]).
    #[arg(long, num_args = 0..=1, default_missing_value = "pca", value_name = "BASIS")]
    vectorfield: Option<String>,
    /// Use the first N columns of the vector field's basis (default: all).
    #[arg(long, requires = "vectorfield", value_parser = crate::values::positive)]
    vf_dims: Option<usize>,
}

impl VectorFieldFlags {
    pub(crate) fn apply(&self, spec: &mut FateMapSpec) -> anyhow::Result<()> {
        if let Some(b) = &self.vectorfield {
            spec.vectorfield.basis = Some(b.clone());
        }
        if let Some(d) = self.vf_dims {
            spec.vectorfield.dims = Some(d);
        }
        spec.vectorfield.validate()?;
        Ok(())
    }
}

impl RunArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        if self.dry_run {
            return crate::Outputs::default();
        }
        let mut o = crate::Outputs::files(vec![self.output.clone()]);
        o.files.extend(self.report.clone());
        o.dirs.extend(self.plots.clone());
        o
    }
}

/// Arguments of `cellfate run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Input .h5ad (omit with --demo).
    #[arg(conflicts_with = "demo")]
    input: Option<PathBuf>,
    /// Output .h5ad (a copy of the input with every result added).
    #[arg(short, long)]
    output: PathBuf,
    /// TOML config file (any FateMapSpec field; flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel expression.
    #[arg(long)]
    kernel: Option<String>,
    /// Kernel parameter KERNEL.NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "KERNEL.NAME=VALUE")]
    params: Vec<String>,
    /// Use an existing obsp transition matrix instead of computing a kernel (no kernel, no
    /// upstream steps: --kernel, --param, --root-cluster, --root-cell, --recompute conflict).
    #[arg(long, conflicts_with_all = ["kernel", "params", "root_cluster", "root_cell", "recompute"])]
    transition_key: Option<String>,
    #[command(flatten)]
    estimators: EstimatorFlags,
    #[command(flatten)]
    upstream: UpstreamFlags,
    #[command(flatten)]
    vectorfield: VectorFieldFlags,
    /// Run on the built-in simulated dataset (writes the simulation next to the output).
    #[arg(long)]
    demo: bool,
    /// Cells of the demo simulation (default 3000).
    #[arg(long, requires = "demo", value_parser = crate::values::positive)]
    demo_cells: Option<usize>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    dry_run: bool,
    /// Print the run summary as JSON.
    #[arg(long, conflicts_with = "dry_run")]
    json: bool,
    /// Write a self-contained HTML report of the run here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the figures (PNG and SVG) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    #[command(flatten)]
    figures: crate::report_cmd::FigureFlags,
}

pub(crate) fn build_spec(
    config: Option<&PathBuf>,
    kernel: Option<&String>,
    params: &[String],
    tkey: Option<&String>,
    flags: &EstimatorFlags,
) -> anyhow::Result<FateMapSpec> {
    let mut spec = match config {
        Some(p) => {
            let text = crate::read_text(p)?;
            FateMapSpec::from_toml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => FateMapSpec::default(),
    };
    if let Some(k) = kernel {
        spec.kernel = k.clone();
        spec.kernel_explicit = true;
    }
    for p in params {
        let (lhs, value) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?}: expected KERNEL.NAME=VALUE"))?;
        let (kind, name) = lhs
            .split_once('.')
            .with_context(|| format!("--param {p:?}: expected KERNEL.NAME=VALUE"))?;
        let v: serde_json::Value =
            serde_json::from_str(value).unwrap_or(serde_json::Value::String(value.to_string()));
        spec.kernel_params
            .entry(kind.trim().to_string())
            .or_default()
            .insert(name.trim().to_string(), v);
    }
    if let Some(k) = tkey {
        spec.transition_key = Some(k.clone());
    }
    flags.apply(&mut spec)?;
    spec.estimators.validate()?;
    if spec.transition_key.is_none() {
        spec.kernel_spec()?;
    }
    crate::config_compression(spec.compression);
    Ok(spec)
}

/// Checks the estimator settings against the number of cells of `input` (read from its
/// metadata; skipped when that cannot be read, e.g. a `.loom` file: the run checks again).
pub(crate) fn check_cells(input: &std::path::Path, spec: &FateMapSpec) -> anyhow::Result<()> {
    if cellfate::io::loom::is_loom(input) {
        return Ok(());
    }
    if let Ok(n) = cellfate::io::H5adReader::open(input).and_then(|r| r.n_obs()) {
        spec.estimators
            .validate_for_cells(n)
            .with_context(|| format!("{}: {n} cells", input.display()))?;
    }
    Ok(())
}

pub(crate) fn summary_text(s: &pipeline::RunSummary) -> String {
    use crate::progress::names as term_names;
    use cellfate::names::escape_for_terminal as esc;
    use std::fmt::Write;
    let e = &s.estimators;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} -> {} ({} cells)",
        esc(&s.input),
        esc(&s.output),
        s.n_cells
    );
    if !s.upstream_steps.is_empty() {
        let _ = writeln!(out, "upstream steps: {}", term_names(&s.upstream_steps));
        for note in &s.upstream_notes {
            let _ = writeln!(out, "  {}", esc(note));
        }
    }
    let _ = write!(
        out,
        "Schur: {} (residual {:.1e})",
        e.schur_method, e.schur_residual
    );
    match &e.eigengap {
        Some(gap) => {
            let _ = writeln!(out, ", {gap}");
        }
        None => out.push('\n'),
    }
    let _ = writeln!(
        out,
        "macrostates ({}, crispness {:.3}):",
        e.n_macrostates, e.crispness
    );
    for (n, st) in e.macrostates.iter().zip(&e.stability) {
        let _ = writeln!(out, "  {:<24} stability {st:.4}", esc(n));
    }
    let _ = writeln!(out, "terminal states: {}", term_names(&e.terminal_states));
    if !e.initial_states.is_empty() {
        let _ = writeln!(out, "initial states: {}", term_names(&e.initial_states));
    }
    for (n, share) in &e.fate_shares {
        let _ = writeln!(
            out,
            "  most likely fate {:<20} {:.1}% of cells",
            esc(n),
            100.0 * share
        );
    }
    for (lin, genes) in &e.top_drivers {
        let g: Vec<String> = genes
            .iter()
            .take(5)
            .map(|(g, r)| format!("{} ({r:.2})", esc(g)))
            .collect();
        let _ = writeln!(out, "  drivers {}: {}", esc(lin), g.join(", "));
    }
    if let Some(c) = &s.random_control {
        let _ = writeln!(
            out,
            "randomised control (seed {}): flow coherence on {} {:.3} real vs {:.3} with permuted velocities (score {:.3}) -> obsp {}",
            c.seed,
            esc(&c.basis),
            c.real,
            c.control,
            c.score,
            esc(&c.key)
        );
    }
    if let Some(vf) = &s.vectorfield {
        let f = &vf.field;
        let _ = writeln!(
            out,
            "vector field ({}, {} dimensions): {} control points, mean cosine with the velocities {:.3}",
            esc(&vf.basis),
            f.dims,
            f.n_ctrl,
            f.mean_cosine
        );
        if let Some(fps) = &vf.fixed_points {
            let count = |k: cellfate::vectorfield::FixedPointKind| {
                fps.iter().filter(|p| p.kind == k).count()
            };
            use cellfate::vectorfield::FixedPointKind as K;
            let _ = writeln!(
                out,
                "  fixed points: {} stable, {} saddle, {} unstable",
                count(K::Stable),
                count(K::Saddle),
                count(K::Unstable)
            );
        }
        if let Some(p) = &vf.potential {
            let _ = writeln!(
                out,
                "  potential: {} CG iterations, {} graph component(s){}",
                p.iterations,
                p.components,
                if p.entropy {
                    ", entropy from the fates"
                } else {
                    ""
                }
            );
        }
    }
    if !s.warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for w in &s.warnings {
            let _ = writeln!(out, "  {}", esc(w));
        }
    }
    for st in &s.stages {
        let _ = writeln!(out, "  {:<26} {:>8.2} s", st.stage, st.seconds);
    }
    if let Some(mb) = s.peak_rss_mb {
        let _ = writeln!(out, "  peak memory {mb:.0} MB");
    }
    out
}

pub(crate) fn run(a: RunArgs) -> anyhow::Result<String> {
    let mut spec = build_spec(
        a.config.as_ref(),
        a.kernel.as_ref(),
        &a.params,
        a.transition_key.as_ref(),
        &a.estimators,
    )?;
    a.upstream.apply(&mut spec)?;
    a.vectorfield.apply(&mut spec)?;
    a.figures.apply(&mut spec.figures);
    // Checked before anything runs: a misspelt kind fails now, not after the pipeline.
    let opts = cellfate::report::PlotOptions::from_spec(
        &spec.figures,
        spec.estimators.cluster_key.clone(),
    )
    .context("figures")?;
    a.figures.check_used(
        a.plots.is_some() || a.report.is_some(),
        "--plots DIR or --report FILE",
    )?;
    // The demo runs with exactly the defaults a user gets (plus the simulated dataset).
    let demo = if a.demo {
        let dir = a
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let sim_path = dir.join(format!(
            "{}.simulation.h5ad",
            a.output
                .file_stem()
                .map_or("demo".into(), |s| s.to_string_lossy())
        ));
        let params = cellfate::sim::SimParams {
            n_cells: a.demo_cells.unwrap_or(3000),
            ..Default::default()
        };
        params.validate().context("--demo-cells")?;
        Some((sim_path, params))
    } else {
        None
    };
    if a.dry_run {
        let mut out = String::new();
        if let Some((sim_path, p)) = &demo {
            out.push_str(&format!(
                "# demo: simulate {} cells x {} genes, {} fates, seed {} (raw counts) -> {}\n# then run on it with these settings (the upstream steps preprocess the raw counts):\n",
                p.n_cells,
                p.n_genes,
                p.n_fates,
                p.seed,
                sim_path.display()
            ));
        }
        out.push_str(&spec.to_toml());
        return Ok(out);
    }
    let mut bar = crate::progress::Progress::new();
    let input = if let Some((sim_path, params)) = demo {
        bar.stage("simulating the demo dataset");
        cellfate::sim::simulate_to_file(&params, &sim_path)?;
        sim_path
    } else {
        a.input
            .clone()
            .context("an input .h5ad file is required (or --demo)")?
    };
    // Before any upstream step or kernel: the Schur vectors and macrostates asked for must
    // fit the data.
    check_cells(&input, &spec)?;
    let mut progress = |s: &str| bar.stage(s);
    let summary = pipeline::run(&input, &a.output, &spec, &mut progress)
        .with_context(|| format!("fate mapping {}", input.display()))?;
    let mut extra = String::new();
    if (a.plots.is_some() || a.report.is_some()) && spec.figures.basis.is_none() {
        progress("umap");
        if let Some(u) = cellfate::upstream::umap_if_missing(&a.output)? {
            extra.push_str(&format!(
                "UMAP of the kNN graph for the figures ({} epochs) -> obsm[\"X_umap\"]\n",
                u.n_epochs
            ));
        }
    }
    if let Some(dir) = &a.plots {
        progress("figures");
        let (paths, _) = crate::report_cmd::write_plots(
            &a.output,
            dir,
            &[cellfate::report::Format::Png, cellfate::report::Format::Svg],
            &opts,
        )?;
        extra.push_str(&format!("{} figures -> {}\n", paths.len(), dir.display()));
    }
    if let Some(path) = &a.report {
        progress("report");
        let title = crate::report_cmd::title_of(&a.output);
        cellfate::report::html::write_report(&a.output, path, &title, &opts)
            .with_context(|| format!("report of {}", a.output.display()))?;
        extra.push_str(&format!("report -> {}\n", path.display()));
    }
    Ok(if a.json {
        cellfate::names::escape_json_for_terminal(&serde_json::to_string_pretty(&summary)?)
            .into_owned()
            + "\n"
    } else {
        summary_text(&summary) + &extra
    })
}
