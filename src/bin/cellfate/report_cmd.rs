//! `cellfate plot` and `cellfate report`: figures and a self-contained HTML page from an output.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cellfate::report::{self, Format, PlotOptions};

/// Figure settings shared by `plot`, `report`, `run` and `batch`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FigureFlags {
    /// Embedding for the figures (obsm key or name: umap, X_tsne, ...; default: X_umap, else
    /// the first two principal components).
    #[arg(long)]
    basis: Option<String>,
    /// Random walks to draw (default 100).
    #[arg(long)]
    n_walks: Option<usize>,
    /// Seed of the random walks (default 0).
    #[arg(long = "walk-seed")]
    walk_seed: Option<u64>,
    /// Figures to draw, comma-separated (default: all the file supports except
    /// velocity_grid and velocity_arrows): clusters, macrostates, terminal_states, fates,
    /// aggregated_fates, circular_projection, priming, absorption_times, spectrum, coarse_T,
    /// macrostate_composition, drivers, gene_trends, heatmap, phase_portraits, random_walks,
    /// velocity_stream, velocity_grid, velocity_arrows, vector_field. A kind the file cannot
    /// give is an error.
    #[arg(long, value_delimiter = ',')]
    kind: Option<Vec<report::FigureKind>>,
    /// Genes for gene_trends, heatmap and phase_portraits, comma-separated (default: the top
    /// drivers of each lineage).
    #[arg(long, value_delimiter = ',')]
    genes: Option<Vec<String>>,
    /// obs column of the time in gene trends (default: latent_time, dpt_pseudotime,
    /// velocity_pseudotime, palantir_pseudotime or pseudotime, else a diffusion pseudotime
    /// from the initial state).
    #[arg(long)]
    time_key: Option<String>,
    /// Expression in gene trends: X or a layer (default: Ms when present, else X).
    #[arg(long)]
    data_key: Option<String>,
    /// Width of every figure in pixels at 100 dpi, 200 to 8000 (default: each figure's own).
    #[arg(long, value_parser = clap::value_parser!(u32).range(200..=8000))]
    width: Option<u32>,
    /// Height of every figure in pixels at 100 dpi, 200 to 8000 (default: each figure's own).
    #[arg(long, value_parser = clap::value_parser!(u32).range(200..=8000))]
    height: Option<u32>,
    /// Resolution, 25 to 600: 200 draws every figure at twice the pixels (default 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(25..=600))]
    dpi: Option<u32>,
}

impl FigureFlags {
    /// Sets the fields of `spec` the flags give (flags override a config's `[figures]`).
    pub(crate) fn apply(&self, spec: &mut cellfate::pipeline::FigureSpec) {
        let set = |dst: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
                dst.clone_from(v);
            }
        };
        set(&mut spec.basis, &self.basis);
        set(&mut spec.time_key, &self.time_key);
        set(&mut spec.data_key, &self.data_key);
        if let Some(v) = self.n_walks {
            spec.n_walks = Some(v);
        }
        if let Some(v) = self.walk_seed {
            spec.walk_seed = Some(v);
        }
        if let Some(v) = &self.kind {
            spec.kinds = Some(v.iter().map(|k| k.name().to_string()).collect());
        }
        if let Some(v) = &self.genes {
            spec.genes = Some(v.clone());
        }
        if let Some(v) = self.width {
            spec.width = Some(v);
        }
        if let Some(v) = self.height {
            spec.height = Some(v);
        }
        if let Some(v) = self.dpi {
            spec.dpi = Some(v);
        }
    }

    /// The plot options of the flags alone (`plot`, `report`).
    pub(crate) fn options(&self, cluster_key: Option<String>) -> anyhow::Result<PlotOptions> {
        let mut spec = cellfate::pipeline::FigureSpec::default();
        self.apply(&mut spec);
        Ok(PlotOptions::from_spec(&spec, cluster_key)?)
    }

    /// On `run` and `batch` the figure flags only act when figures are made (`used`, by the
    /// flags named in `needs`); given without them, they would be ignored: an error naming
    /// both.
    pub(crate) fn check_used(&self, used: bool, needs: &str) -> anyhow::Result<()> {
        let given: Vec<&str> = [
            ("--basis", self.basis.is_some()),
            ("--n-walks", self.n_walks.is_some()),
            ("--walk-seed", self.walk_seed.is_some()),
            ("--kind", self.kind.is_some()),
            ("--genes", self.genes.is_some()),
            ("--time-key", self.time_key.is_some()),
            ("--data-key", self.data_key.is_some()),
            ("--width", self.width.is_some()),
            ("--height", self.height.is_some()),
            ("--dpi", self.dpi.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, on)| on.then_some(flag))
        .collect();
        if !used && !given.is_empty() {
            anyhow::bail!(
                "{} only affect(s) the figures, and none are made: add {needs}",
                given.join(", ")
            );
        }
        Ok(())
    }
}

/// Arguments of `cellfate plot`.
#[derive(Debug, clap::Args)]
pub(crate) struct PlotArgs {
    /// An .h5ad with fate-mapping results (CellRank's keys).
    input: PathBuf,
    /// Directory for the figures (created).
    #[arg(long, short = 'o')]
    out_dir: PathBuf,
    /// Formats, comma-separated: svg, png.
    #[arg(long, value_delimiter = ',', default_value = "png,svg")]
    format: Vec<Format>,
    /// obs column with cluster labels (default: clusters).
    #[arg(long)]
    cluster_key: Option<String>,
    #[command(flatten)]
    figures: FigureFlags,
}

impl PlotArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::dirs(vec![self.out_dir.clone()])
    }
}

impl ReportArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::files(vec![self.output.clone()])
    }
}

/// Writes every figure of `input` into `dir`; returns the paths and notes.
pub(crate) fn write_plots(
    input: &Path,
    dir: &Path,
    formats: &[Format],
    opts: &PlotOptions,
) -> anyhow::Result<(Vec<PathBuf>, Vec<String>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let r = cellfate::io::H5adReader::open(input)?;
    let (figs, notes) = report::figures(&r, opts)?;
    let mut paths = Vec::new();
    for f in &figs {
        for &fmt in formats {
            paths.push(f.write_with(dir, fmt, &opts.render)?);
        }
    }
    Ok((paths, notes))
}

pub(crate) fn plot(a: PlotArgs) -> anyhow::Result<String> {
    let opts = a.figures.options(a.cluster_key.clone())?;
    let (paths, notes) = write_plots(&a.input, &a.out_dir, &a.format, &opts)
        .with_context(|| format!("plotting {}", a.input.display()))?;
    let mut out = format!("{} figures -> {}\n", paths.len(), a.out_dir.display());
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    Ok(out)
}

/// Arguments of `cellfate report`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// An .h5ad with fate-mapping results.
    input: PathBuf,
    /// The HTML file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Page title (default: the input's name).
    #[arg(long)]
    title: Option<String>,
    /// obs column with cluster labels (default: clusters).
    #[arg(long)]
    cluster_key: Option<String>,
    #[command(flatten)]
    figures: FigureFlags,
}

pub(crate) fn title_of(input: &Path) -> String {
    format!(
        "cellfate report: {}",
        input
            .file_stem()
            .map_or_else(|| "run".into(), |s| s.to_string_lossy())
    )
}

pub(crate) fn report(a: ReportArgs) -> anyhow::Result<String> {
    let title = a.title.clone().unwrap_or_else(|| title_of(&a.input));
    let opts = a.figures.options(a.cluster_key.clone())?;
    report::html::write_report(&a.input, &a.output, &title, &opts)
        .with_context(|| format!("report of {}", a.input.display()))?;
    Ok(format!("report -> {}\n", a.output.display()))
}
