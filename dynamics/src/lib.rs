//! Numerical dynamics of cellfate: scVelo's dynamical model of splicing kinetics
//! ([`em`]: `recover_dynamics` per gene by expectation–maximisation), the velocities it
//! implies, and the statistics it needs (a Nelder–Mead simplex that follows SciPy's step by
//! step, NumPy's percentiles, the Gaussian-KDE bimodality test). This crate never touches
//! files; the root package reads and writes `.h5ad`.

pub mod em;
pub mod nelder_mead;
pub mod stats;

pub use em::{dynamical_velocity, fit_gene, AssignmentMode, DynamicsOptions, GeneDynamics};
