//! Numerical dynamics of cellfate: scVelo's dynamical model of splicing kinetics
//! ([`em`]: `recover_dynamics` per gene by expectation–maximisation), the velocities it
//! implies, and the statistics it needs (a Nelder–Mead simplex that follows SciPy's step by
//! step, NumPy's percentiles, the Gaussian-KDE bimodality test); scVelo's velocity graph and
//! transition matrix ([`mod@velocity_graph`]), its velocity confidences ([`confidence`]), its
//! root/end cells and gene-shared latent time ([`mod@latent_time`]), and in-silico perturbation
//! ([`perturb`]: the kinetic route and fate shifts). This crate never touches
//! files; the root package reads and writes `.h5ad`.

pub mod confidence;
pub mod dense;
pub mod em;
pub mod error;
pub mod fit_graph;
pub mod latent_time;
pub mod nelder_mead;
pub mod perturb;
pub mod stats;
pub mod summaries;
pub mod velocity_graph;

pub use confidence::{
    displacement_coherence, velocity_confidence, velocity_confidence_transition, velocity_length,
    velocity_norms,
};
pub use dense::{velocity_gene_columns, RowMajor, Scalar};
pub use em::{
    dynamical_velocity, fit_gene, phase_curve, AssignmentMode, DynamicsOptions, GeneDynamics,
};
pub use error::VelocityError;
pub use fit_graph::FitGraph;
pub use latent_time::{
    compute_shared_time, latent_time, root_time, terminal_states, LatentTime, LatentTimeInput,
    LatentTimeOptions, RootPrior, TerminalStates, TerminalStatesOptions,
};
pub use summaries::{
    latent_time_from_graph, latent_time_genes, velocity_summaries, Root, SummaryInput,
    VelocitySummaries,
};
pub use velocity_graph::{
    knn_weights, transition_matrix, velocity_graph, Neighbors, TransitionOptions, VelocityGraph,
    VelocityGraphOptions,
};
