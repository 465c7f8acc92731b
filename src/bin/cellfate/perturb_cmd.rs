//! `cellfate perturb`: parse, validate, call `cellfate::perturb`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use cellfate::perturb::{self, PerturbMethod, PerturbSpec};

use crate::values;

/// `cellfate perturb`.
#[derive(Debug, clap::Args)]
pub(crate) struct PerturbArgs {
    /// Input .h5ad that `cellfate run` wrote (obsp["T_fwd"] with its kernel spec, terminal
    /// states; the velocity model for --method kinetic, a vector field for --method
    /// jacobian). Never modified.
    input: PathBuf,
    /// Output .h5ad.
    #[arg(short, long)]
    output: PathBuf,
    /// Genes perturbed together (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    gene: Vec<String>,
    /// Set the genes' expression to this level (0: knockout, the default).
    #[arg(long, value_parser = values::non_negative_f64)]
    level: Option<f64>,
    /// Multiply the genes' expression by this factor (overexpression above 1).
    #[arg(long, value_parser = values::positive_f64)]
    fold: Option<f64>,
    /// Perturb only the cells of this cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// obs column of the clusters [default: clusters].
    #[arg(long)]
    cluster_key: Option<String>,
    /// Predictor: kinetic (in each gene's velocity model; the default) or jacobian (through the
    /// vector field's Jacobian in --basis).
    #[arg(long, value_parser = ["kinetic", "jacobian"])]
    method: Option<String>,
    /// Basis of the vector field (--method jacobian) [default: pca].
    #[arg(long)]
    basis: Option<String>,
    /// Embedding the perturbed velocities are projected on [default: umap if present, else
    /// the basis].
    #[arg(long)]
    embedding: Option<String>,
    /// Screen: top_drivers:N (the run's N strongest driver genes) or genes:A,B,...; each gene
    /// perturbed alone, ranked by the fate shift it causes.
    #[arg(long)]
    screen: Option<String>,
    /// Key of the outputs (obsm["lineages_fwd_<key>"], uns["<key>"], ...) [default: perturbed].
    #[arg(long)]
    key: Option<String>,
    /// Bootstrap resamples of the confidence intervals [default: 1000].
    #[arg(long, value_parser = values::non_negative)]
    n_boot: Option<usize>,
    /// Seed of the bootstrap [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Settings from a TOML file (the fields of the library's PerturbSpec); flags given on
    /// the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also write the table (per cluster and lineage, or the screen's ranking) as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Also write a figure of the fate shift on the embedding (PNG or SVG by extension).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl PerturbArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        let mut files = vec![self.output.clone()];
        files.extend(self.csv.clone());
        files.extend(self.plot.clone());
        crate::Outputs::files(files)
    }

    /// The spec: the TOML file's (or the defaults), with the flags given applied on top.
    fn spec(&self) -> anyhow::Result<PerturbSpec> {
        let mut s = match &self.config {
            Some(p) => PerturbSpec::from_toml(&crate::read_text(p)?)
                .with_context(|| format!("--config {}", p.display()))?,
            None => PerturbSpec::default(),
        };
        if !self.gene.is_empty() {
            s.genes = self.gene.clone();
        }
        if self.level.is_some() || self.fold.is_some() {
            s.level = self.level;
            s.fold = self.fold;
        }
        if self.level.is_some() && self.fold.is_some() {
            anyhow::bail!("--level and --fold exclude each other: give one");
        }
        if let Some(c) = &self.cluster {
            s.cluster = Some(c.clone());
        }
        if let Some(k) = &self.cluster_key {
            s.cluster_key = k.clone();
        }
        if let Some(m) = &self.method {
            s.method = m.parse::<PerturbMethod>().map_err(anyhow::Error::msg)?;
        }
        if let Some(b) = &self.basis {
            s.basis = b.clone();
        }
        if let Some(e) = &self.embedding {
            s.embedding = Some(e.clone());
        }
        if let Some(x) = &self.screen {
            s.screen = Some(x.clone());
        }
        if let Some(k) = &self.key {
            s.key = k.clone();
        }
        if let Some(n) = self.n_boot {
            s.n_boot = n;
        }
        if let Some(seed) = self.seed {
            s.seed = seed;
        }
        if !self.gene.is_empty() && self.screen.is_some() {
            anyhow::bail!("--gene and --screen exclude each other: a screen perturbs each of its genes in turn");
        }
        s.validate()?;
        Ok(s)
    }
}

pub(crate) fn perturb(a: PerturbArgs) -> anyhow::Result<String> {
    let spec = a.spec()?;
    let report = perturb::perturb_in_file(&a.input, &a.output, &spec)
        .with_context(|| format!("perturbation of {}", a.input.display()))?;
    if let Some(csv) = &a.csv {
        cellfate::output::write_atomic(csv, report.to_csv().as_bytes())
            .with_context(|| format!("writing {}", csv.display()))?;
    }
    if let Some(plot) = &a.plot {
        cellfate::report::plot_perturbation(&a.output, &spec.key, plot)
            .with_context(|| format!("drawing {}", plot.display()))?;
    }
    if a.json {
        return Ok(serde_json::to_string_pretty(&report)? + "\n");
    }
    let mut msg = String::new();
    if let Some(o) = &report.outcome {
        let _ = writeln!(
            msg,
            "{} of {} ({} route) in {} cells -> {}",
            o.change,
            o.genes.join(", "),
            match o.method {
                PerturbMethod::Kinetic => "kinetic",
                PerturbMethod::Jacobian => "jacobian",
            },
            o.n_cells_perturbed,
            a.output.display()
        );
        for g in &o.groups {
            let _ = writeln!(
                msg,
                "  {:<20} {:>6} cells, {:>5} change their most likely fate, shift {:.4}",
                g.group, g.n_cells, g.n_changed, g.magnitude
            );
            for (j, l) in o.lineages.iter().enumerate() {
                let _ = writeln!(
                    msg,
                    "      {:<18} {:+.5}  [{:+.5}, {:+.5}]",
                    l, g.mean[j], g.ci_low[j], g.ci_high[j]
                );
            }
        }
    } else {
        let _ = writeln!(
            msg,
            "screen of {} genes ({} skipped) -> {}",
            report.screen.len(),
            report.skipped.len(),
            a.output.display()
        );
        let _ = writeln!(
            msg,
            "  {:>4}  {:<20} {:>9} {:>8}  {}",
            "rank",
            "gene",
            "shift",
            "changed",
            report
                .lineages
                .iter()
                .map(|l| format!("{l:>10}"))
                .collect::<String>()
        );
        for r in &report.screen {
            let _ = writeln!(
                msg,
                "  {:>4}  {:<20} {:>9.5} {:>8}  {}",
                r.rank,
                r.gene,
                r.magnitude,
                r.n_changed,
                r.mean_shift
                    .iter()
                    .map(|x| format!("{x:>+10.5}"))
                    .collect::<String>()
            );
        }
        for (g, why) in &report.skipped {
            let _ = writeln!(msg, "  skipped {g}: {why}");
        }
    }
    Ok(msg)
}
