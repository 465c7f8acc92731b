//! What scVelo computes from the velocities once they exist, in one place for every caller
//! (the `.h5ad` pipeline, the Python package): the velocity graph (`tl.velocity_graph`), the
//! velocity confidences (`tl.velocity_confidence`: length, confidence, transition confidence;
//! plus RNAVelocity's displacement coherence), and, for the dynamical model, root/end cells and
//! the gene-shared latent time (`tl.latent_time`).

use cellfate_kernels::Csr;

use crate::confidence::{
    displacement_coherence, velocity_confidence, velocity_confidence_transition, velocity_length,
};
use crate::dense::{velocity_gene_columns, RowMajor, Scalar};
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
pub struct SummaryInput<'a, X: Scalar = f64, V: Scalar = f64> {
    /// `layers["Ms"]` (cells × velocity genes), as stored (`f32` or `f64`).
    pub ms: RowMajor<'a, X>,
    /// `layers["velocity"]` (same shape), as stored.
    pub velocity: RowMajor<'a, V>,
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
pub fn velocity_summaries<X: Scalar, V: Scalar>(
    input: &SummaryInput<'_, X, V>,
) -> Result<VelocitySummaries, VelocityError> {
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
pub fn latent_time_from_graph<T: Scalar>(
    graph: &VelocityGraph,
    distances: &Csr,
    connectivities: &Csr,
    fit_t: RowMajor<'_, T>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Cells on a noisy curve through 5 genes, velocities along it, fit_t rising with the
    /// position: float32 data, as the layers are stored.
    fn data(n: usize, g: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Csr) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut x = Vec::new();
        let mut v = Vec::new();
        let mut t = Vec::new();
        for i in 0..n {
            let s = i as f64 / n as f64;
            for j in 0..g {
                let phase = j as f64 * 0.7;
                x.push(((s * 3.0 + phase).sin() + 0.05 * rng.random::<f64>()) as f32);
                v.push(((s * 3.0 + phase).cos() + 0.1 * rng.random::<f64>()) as f32);
                t.push((s * (1.0 + j as f64) + 0.02 * rng.random::<f64>()) as f32);
            }
        }
        let mut trip = Vec::new();
        for i in 0..n {
            let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            others.sort_by_key(|&j| (i as i64 - j as i64).abs());
            for &j in &others[..6] {
                trip.push((i, j, (i as f64 - j as f64).abs() / n as f64));
            }
        }
        (x, v, t, Csr::from_triplets(n, n, &trip).expect("distances"))
    }

    fn widen(a: &[f32]) -> Vec<f64> {
        a.iter().map(|&x| f64::from(x)).collect()
    }

    /// Float32 layers read as stored give the same summaries and latent time, to the bit,
    /// as the same layers widened to float64 (what the `.h5ad` reader returned before).
    #[test]
    fn float32_layers_give_the_results_of_their_widened_copies() {
        let (n, g) = (80, 5);
        let (x, v, t, d) = data(n, g);
        let (x64, v64, t64) = (widen(&x), widen(&v), widen(&t));
        let narrow = velocity_summaries(&SummaryInput {
            ms: RowMajor::new("Ms", &x, n, g).expect("x"),
            velocity: RowMajor::new("velocity", &v, n, g).expect("v"),
            distances: &d,
            stochastic: false,
        })
        .expect("f32");
        let wide = velocity_summaries(&SummaryInput {
            ms: RowMajor::new("Ms", &x64, n, g).expect("x"),
            velocity: RowMajor::new("velocity", &v64, n, g).expect("v"),
            distances: &d,
            stochastic: false,
        })
        .expect("f64");
        let bits = |a: &[f64]| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(narrow.n_genes, g);
        assert_eq!(bits(&narrow.length), bits(&wide.length));
        assert_eq!(bits(&narrow.confidence), bits(&wide.confidence));
        assert_eq!(
            bits(&narrow.confidence_transition),
            bits(&wide.confidence_transition)
        );
        assert_eq!(bits(&narrow.coherence), bits(&wide.coherence));
        assert_eq!(narrow.graph.graph, wide.graph.graph);
        assert_eq!(narrow.graph.graph_neg, wide.graph.graph_neg);
        assert!(narrow.graph.graph.nnz() > 0);
        let lik = vec![1.0; g];
        let opts = LatentTimeOptions::default();
        let root = Root::Cell(0);
        let lt32 = latent_time_from_graph(
            &narrow.graph,
            &d,
            &d,
            RowMajor::new("fit_t", &t, n, g).expect("t"),
            &lik,
            &root,
            &opts,
        )
        .expect("f32");
        let lt64 = latent_time_from_graph(
            &wide.graph,
            &d,
            &d,
            RowMajor::new("fit_t", &t64, n, g).expect("t"),
            &lik,
            &root,
            &opts,
        )
        .expect("f64");
        assert_eq!(bits(&lt32.1.latent_time), bits(&lt64.1.latent_time));
        assert_eq!(lt32.1.roots, vec![0]);
        assert!(lt32.1.latent_time.iter().all(|x| x.is_finite()));
    }
}
