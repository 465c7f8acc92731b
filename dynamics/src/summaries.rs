//! What scVelo computes from the velocities once they exist, in one place for every caller
//! (the `.h5ad` pipeline, the Python package): the velocity graph (`tl.velocity_graph`), the
//! velocity confidences (`tl.velocity_confidence`: length, confidence, transition confidence;
//! plus RNAVelocity's displacement coherence), and, for the dynamical model, root/end cells and
//! the gene-shared latent time (`tl.latent_time`).

use cellfate_kernels::Csr;

use crate::confidence::{
    displacement_coherence, velocity_confidence, velocity_confidence_transition, velocity_length,
};
use crate::dense::{velocity_gene_columns, RowMajor};
use crate::error::VelocityError;
use crate::latent_time::{
    latent_time, terminal_states, LatentTime, LatentTimeInput, LatentTimeOptions, RootPrior,
    TerminalStates,
};
use crate::velocity_graph::{
    knn_weights, transition_matrix, velocity_graph, Neighbors, VelocityGraph, VelocityGraphOptions,
};

/// The velocity genes' columns of `Ms` and `velocity`, and the kNN distances.
#[derive(Clone, Copy, Debug)]
pub struct SummaryInput<'a> {
    /// `layers["Ms"]` (cells × velocity genes).
    pub ms: RowMajor<'a>,
    /// `layers["velocity"]` (same shape).
    pub velocity: RowMajor<'a>,
    /// `obsp["distances"]`.
    pub distances: &'a Csr,
    /// The velocities are the stochastic model's (scVelo's velocity graph then takes signed
    /// square roots).
    pub stochastic: bool,
}

/// The velocity graph and the per-cell confidences.
#[derive(Clone, Debug)]
pub struct VelocitySummaries {
    /// `uns["velocity_graph"]`, `uns["velocity_graph_neg"]`, `obs["velocity_self_transition"]`.
    pub graph: VelocityGraph,
    /// `obs["velocity_length"]`.
    pub length: Vec<f64>,
    /// `obs["velocity_confidence"]`.
    pub confidence: Vec<f64>,
    /// `obs["velocity_confidence_transition"]`.
    pub confidence_transition: Vec<f64>,
    /// `obs["velocity_coherence"]` (RNAVelocity's per-cell score).
    pub coherence: Vec<f64>,
    /// Genes used (finite velocity in every cell).
    pub n_genes: usize,
}

/// The velocity graph and the confidences (scVelo's `velocity_graph` then
/// `velocity_confidence`, with its defaults).
pub fn velocity_summaries(input: &SummaryInput<'_>) -> Result<VelocitySummaries, VelocityError> {
    let (x, v) = (input.ms, input.velocity);
    let nb = Neighbors::from_distances(input.distances, None)?;
    let genes = velocity_gene_columns(v, None)?;
    if genes.is_empty() {
        return Err(VelocityError::NoGenes {
            what: "the velocity graph (no velocity gene has a finite velocity in every cell)",
        });
    }
    let opts = VelocityGraphOptions {
        sqrt_transform: input.stochastic,
        ..Default::default()
    };
    let graph = velocity_graph(x, v, &genes, &nb, &opts)?;
    let length = velocity_length(v, &genes)?;
    let confidence = velocity_confidence(v, &genes, &nb)?;
    let t = transition_matrix(&graph.graph, Some(&graph.graph_neg), &Default::default())?;
    let confidence_transition = velocity_confidence_transition(x, v, &genes, &t)?;
    let coherence = displacement_coherence(x, v, &genes, &nb)?;
    Ok(VelocitySummaries {
        graph,
        length,
        confidence,
        confidence_transition,
        coherence,
        n_genes: genes.len(),
    })
}

/// The genes latent time uses: those whose likelihood reaches the options' minimum.
pub fn latent_time_genes(likelihood: &[f64], opts: &LatentTimeOptions) -> Vec<usize> {
    (0..likelihood.len())
        .filter(|&j| opts.min_likelihood.is_none_or(|m| likelihood[j] >= m))
        .collect()
}

/// Where latent time starts, before the velocity graph is known.
#[derive(Clone, Debug, PartialEq)]
pub enum Root {
    /// scVelo's rule: the root cells of the backward velocity chain.
    Auto,
    /// One cell.
    Cell(usize),
    /// A root score per cell (e.g. 1 on the cells of a root cluster).
    Scores(Vec<f64>),
}

/// Root/end cells and latent time (scVelo's `terminal_states` then `latent_time`) from the
/// velocity graph: `fit_t` and `likelihood` restricted to [`latent_time_genes`].
pub fn latent_time_from_graph(
    graph: &VelocityGraph,
    distances: &Csr,
    connectivities: &Csr,
    fit_t: RowMajor<'_>,
    likelihood: &[f64],
    root: &Root,
    opts: &LatentTimeOptions,
) -> Result<(TerminalStates, LatentTime), VelocityError> {
    let wd = knn_weights(distances);
    let ts = terminal_states(
        &graph.graph,
        Some(&graph.graph_neg),
        &wd,
        &Default::default(),
    )?;
    let prior = match root {
        Root::Auto => RootPrior::Scores(&ts.root_cells),
        Root::Cell(i) => RootPrior::Cell(*i),
        Root::Scores(s) => RootPrior::Scores(s),
    };
    let w = knn_weights(connectivities);
    let lt = latent_time(
        &LatentTimeInput {
            fit_t,
            likelihood,
            connectivities: &w,
            roots: prior,
            ends: None,
            velocity_pseudotime: None,
        },
        opts,
    )?;
    Ok((ts, lt))
}
