//! # cellfate-estimators
//!
//! Estimators that read a [`cellfate_kernels::TransitionMatrix`]: the sorted real partial
//! Schur decomposition (dense LAPACK or sparse ARPACK, always checked), GPCCA macrostates and
//! terminal states, CFLARE, and absorption (fate probabilities, absorption times, drivers).

pub mod absorption;
mod basis;
pub mod cflare;
pub mod coarse;
pub mod drivers;
pub mod estimator;
pub mod gpcca;
pub mod graph;
pub mod iterative;
pub mod schur;
pub mod states;
pub mod trends;

pub use estimator::{
    AbsorptionTimesOptions, CellStates, Cflare, DriverOptions, Estimator, EstimatorCore,
    EstimatorError, Gpcca, Macrostates, MacrostatesOptions, NStates, StatesInput, TerminalOptions,
};
pub use schur::{compute_schur, Schur, SchurError, SchurMethod, SchurOptions, Which};
