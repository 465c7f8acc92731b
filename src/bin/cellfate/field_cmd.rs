//! `cellfate vectorfield`, `cellfate topography`, `cellfate potential`: parse, validate, call
//! `cellfate::vectorfield_io`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use cellfate::vectorfield::{EdgeFlow, PotentialOptions, SparseVfcOptions, TopographyOptions};
use cellfate::vectorfield_io::{self, VectorFieldSpec};

use crate::values;

/// `cellfate vectorfield`.
#[derive(Debug, clap::Args)]
pub(crate) struct VectorFieldArgs {
    /// Input .h5ad with obsm["X_<basis>"] and either obsm["velocity_<basis>"], obsp["T_fwd"]
    /// or the layers of the velocity kernel (never modified).
    input: PathBuf,
    /// Output .h5ad.
    #[arg(short, long)]
    output: PathBuf,
    /// Embedding: obsm["X_<basis>"].
    #[arg(long, default_value = "pca")]
    basis: String,
    /// Use the first N columns of the embedding (default: all).
    #[arg(long, value_parser = values::positive)]
    dims: Option<usize>,
    /// Control points (default: max(min(50, n), n/20 + 1), dynamo's rule).
    #[arg(long, value_parser = values::at_least_two)]
    n_ctrl: Option<usize>,
    /// EM iterations (dynamo's MaxIter in vf.VectorField: 30).
    #[arg(long, default_value_t = 30, value_parser = values::positive)]
    max_iter: usize,
    /// Regularisation λ.
    #[arg(long, default_value_t = 3.0, value_parser = values::positive_f64)]
    lambda: f64,
    /// Kernel parameter β (default: dynamo's bandwidth rule on the control points).
    #[arg(long, value_parser = values::positive_f64)]
    beta: Option<f64>,
    /// Fit the velocities as given (dynamo's behaviour) instead of scaled to unit RMS.
    #[arg(long)]
    no_normalize: bool,
    /// Seed of the control points.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `cellfate topography`.
#[derive(Debug, clap::Args)]
pub(crate) struct TopographyArgs {
    /// Input .h5ad with uns["VecFld_<basis>"] (from `cellfate vectorfield` or dynamo).
    input: PathBuf,
    /// Output .h5ad.
    #[arg(short, long)]
    output: PathBuf,
    /// Embedding: obsm["X_<basis>"].
    #[arg(long, default_value = "pca")]
    basis: String,
    /// Latin-hypercube starts in the padded box (up to 3 dimensions).
    #[arg(long, default_value_t = 25)]
    n_starts: usize,
    /// Starts at random cells.
    #[arg(long, default_value_t = 25)]
    n_cell_starts: usize,
    /// Seed of the starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `cellfate potential`.
#[derive(Debug, clap::Args)]
pub(crate) struct PotentialArgs {
    /// Input .h5ad with uns["VecFld_<basis>"], or obsm["velocity_<basis>"] / obsp["T_fwd"].
    input: PathBuf,
    /// Output .h5ad.
    #[arg(short, long)]
    output: PathBuf,
    /// Embedding: obsm["X_<basis>"].
    #[arg(long, default_value = "pca")]
    basis: String,
    /// Neighbours of each cell in the graph (dynamo's ddhodge: 30).
    #[arg(long, default_value_t = 30, value_parser = values::positive)]
    n_neighbors: usize,
    /// Edge flow: displacement (the line integral of the velocities, default), unit (dynamo's
    /// ddhodge), or transition (the net flow T_ij − T_ji of obsp["T_fwd"] on its own graph, no
    /// embedding; keys obs["T_fwd_ddhodge_potential"], ...).
    #[arg(long, default_value = "displacement", value_parser = ["displacement", "unit", "transition"])]
    flow: String,
}

/// `cellfate predict-fate`.
#[derive(Debug, clap::Args)]
pub(crate) struct PredictFateArgs {
    /// Input .h5ad with uns["VecFld_<basis>"] (from `cellfate vectorfield`).
    input: PathBuf,
    /// Output .h5ad.
    #[arg(short, long)]
    output: PathBuf,
    /// Embedding: obsm["X_<basis>"].
    #[arg(long, default_value = "pca")]
    basis: String,
    /// Start from the cells of this cluster (repeatable).
    #[arg(
        long,
        required_unless_present = "all_cells",
        conflicts_with = "all_cells"
    )]
    from_cluster: Vec<String>,
    /// Start from every cell.
    #[arg(long)]
    all_cells: bool,
    /// obs column of the clusters.
    #[arg(long, default_value = "clusters")]
    cluster_key: String,
    /// End time (default: 10 x the data's diameter / the cells' median speed).
    #[arg(long, value_parser = values::positive_f64)]
    time: Option<f64>,
    /// Integrate backward (where the cells came from).
    #[arg(long)]
    backward: bool,
    /// Points sampled along each path.
    #[arg(long, default_value_t = 250, value_parser = values::at_least_two)]
    n_points: usize,
    /// Also write an animated GIF of the paths over the first two dimensions of the embedding.
    #[arg(long)]
    animate: Option<PathBuf>,
}

impl PredictFateArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        let mut files = vec![self.output.clone()];
        files.extend(self.animate.clone());
        crate::Outputs::files(files)
    }
}

impl VectorFieldArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::files(vec![self.output.clone()])
    }
}

impl TopographyArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::files(vec![self.output.clone()])
    }
}

impl PotentialArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::files(vec![self.output.clone()])
    }
}

pub(crate) fn vectorfield(a: VectorFieldArgs) -> anyhow::Result<String> {
    let spec = VectorFieldSpec {
        basis: a.basis.clone(),
        dims: a.dims,
        svc: SparseVfcOptions {
            m: a.n_ctrl,
            max_iter: a.max_iter,
            lambda: a.lambda,
            beta: a.beta,
            seed: a.seed,
            normalize_velocity: !a.no_normalize,
            ..Default::default()
        },
    };
    let r = vectorfield_io::vectorfield_in_file(&a.input, &a.output, &spec)
        .with_context(|| format!("vector field of {}", a.input.display()))?;
    Ok(format!(
        "SparseVFC on {} ({} cells x {} dimensions; velocities: {}): {} control points, beta {:.4}, {} EM iterations, {} inliers, mean cosine with the observed velocities {:.4} -> {}\n",
        a.basis,
        r.n_cells,
        r.dims,
        r.velocity_source,
        r.n_ctrl,
        r.beta,
        r.iterations,
        r.inliers,
        r.mean_cosine,
        a.output.display()
    ))
}

pub(crate) fn topography(a: TopographyArgs) -> anyhow::Result<String> {
    let opts = TopographyOptions {
        n_starts: a.n_starts,
        n_cell_starts: a.n_cell_starts,
        seed: a.seed,
        ..Default::default()
    };
    let r = vectorfield_io::topography_in_file(&a.input, &a.output, &a.basis, &opts)
        .with_context(|| format!("topography of {}", a.input.display()))?;
    let mut msg = format!(
        "{} fixed points of the {} field -> {}\n",
        r.fixed_points.len(),
        a.basis,
        a.output.display()
    );
    for p in &r.fixed_points {
        let coords: Vec<String> = p.x.iter().take(3).map(|c| format!("{c:.4}")).collect();
        let _ = writeln!(
            msg,
            "  {:?} at ({}{}), |f| {:.1e}, nearest cell {}, confidence {:.3}",
            p.kind,
            coords.join(", "),
            if p.x.len() > 3 { ", ..." } else { "" },
            p.residual,
            p.nearest_cell,
            p.confidence
        );
    }
    Ok(msg)
}

pub(crate) fn potential(a: PotentialArgs) -> anyhow::Result<String> {
    let opts = PotentialOptions {
        flow: if a.flow == "unit" {
            EdgeFlow::Unit
        } else {
            EdgeFlow::Displacement
        },
        ..Default::default()
    };
    let basis = if a.flow == "transition" {
        "T_fwd"
    } else {
        a.basis.as_str()
    };
    let r = vectorfield_io::potential_in_file(&a.input, &a.output, basis, a.n_neighbors, &opts)
        .with_context(|| format!("potential of {}", a.input.display()))?;
    Ok(format!(
        "Hodge potential of {} on the {} ({} cells, {} components, {} CG iterations){} -> {}\n",
        r.flow_source,
        if a.flow == "transition" {
            "transition matrix's graph".to_string()
        } else {
            format!("{}-NN graph in {}", a.n_neighbors, a.basis)
        },
        r.n_cells,
        r.components,
        r.iterations,
        if r.entropy {
            "; entropy of the fate probabilities"
        } else {
            ""
        },
        a.output.display()
    ))
}

pub(crate) fn predict_fate(a: PredictFateArgs) -> anyhow::Result<String> {
    use cellfate::vectorfield::IntegrateOptions;
    use cellfate::vectorfield_io::{FateStarts, PredictFateSpec};
    let spec = PredictFateSpec {
        basis: a.basis.clone(),
        starts: if a.all_cells {
            FateStarts::All
        } else {
            FateStarts::Clusters(a.from_cluster.clone())
        },
        cluster_key: a.cluster_key.clone(),
        integrate: IntegrateOptions {
            t_end: a.time,
            backward: a.backward,
            n_points: a.n_points,
            ..Default::default()
        },
    };
    let r = vectorfield_io::predict_fate_in_file(&a.input, &a.output, &spec)
        .with_context(|| format!("fate prediction on {}", a.input.display()))?;
    let mut msg = format!(
        "{} paths integrated {} to t = {:.4} ({} settled at a fixed point, {} left the data's range) -> {}\n",
        r.n_paths,
        if a.backward { "backward" } else { "forward" },
        r.t_end,
        r.settled,
        r.left_domain,
        a.output.display()
    );
    for (name, count) in &r.end_clusters {
        let _ = writeln!(
            msg,
            "  end in {:<20} {count} paths ({:.1} %)",
            if name.is_empty() {
                "(no cluster)"
            } else {
                name
            },
            100.0 * *count as f64 / r.n_paths.max(1) as f64
        );
    }
    if let Some(m) = r.markov_agreement {
        let _ = writeln!(
            msg,
            "  agreement with the Markov chain's most likely fate (obsm[\"lineages_fwd\"]): {:.1} %",
            100.0 * m
        );
    }
    if let Some(gif) = &a.animate {
        cellfate::report::animate_fates(&a.output, &a.basis, gif)
            .with_context(|| format!("animating the paths into {}", gif.display()))?;
        let _ = writeln!(msg, "  animation -> {}", gif.display());
    }
    Ok(msg)
}
