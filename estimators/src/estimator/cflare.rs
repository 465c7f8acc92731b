//! The CFLARE estimator (CellRank's `CFLARE`): dominant left and right eigenvectors
//! (`compute_eigendecomposition`, alias `fit`) → terminal states (`predict`), then the shared
//! absorption stages of [`Estimator`].

use cellfate_kernels::TransitionMatrix;

use super::{check_interrupt, CellStates, Estimator, EstimatorCore, EstimatorError};
use crate::cflare::{cflare_eigen, cflare_predict, CflareEigen, CflareOptions, CflareResult};
use crate::gpcca::eigengap;
use crate::states::{name_states, ClusterReference};

const NAME: &str = "CFLARE";

/// CellRank's CFLARE estimator: owns a transition matrix and keeps each stage's result.
#[derive(Debug)]
pub struct Cflare {
    core: EstimatorCore,
    eigen: Option<CflareEigen>,
    result: Option<CflareResult>,
}

impl Estimator for Cflare {
    fn estimator_name(&self) -> &'static str {
        NAME
    }
    fn core(&self) -> &EstimatorCore {
        &self.core
    }
    fn core_mut(&mut self) -> &mut EstimatorCore {
        &mut self.core
    }
}

impl Cflare {
    /// An estimator on `t` with nothing computed.
    pub fn new(t: TransitionMatrix) -> Self {
        Self {
            core: EstimatorCore::new(t),
            eigen: None,
            result: None,
        }
    }

    /// The `k` dominant eigenvalues with left and right eigenvectors (CellRank's
    /// `compute_eigendecomposition(k)`). Forgets terminal states and what came from them.
    pub fn compute_eigendecomposition(&mut self, k: usize) -> Result<&CflareEigen, EstimatorError> {
        let e = cflare_eigen(&self.core.t, k);
        check_interrupt(NAME, "compute_eigendecomposition")?;
        let e = e?;
        self.core.set_eigenvalues(e.eigenvalues.clone());
        self.eigen = Some(e);
        self.result = None;
        self.core.clear_terminal();
        self.eigendecomposition()
    }

    /// CellRank 2's `CFLARE.fit(k)`: the same as [`Cflare::compute_eigendecomposition`].
    pub fn fit(&mut self, k: usize) -> Result<&CflareEigen, EstimatorError> {
        self.compute_eigendecomposition(k)
    }

    /// The eigendecomposition.
    pub fn eigendecomposition(&self) -> Result<&CflareEigen, EstimatorError> {
        self.eigen.as_ref().ok_or(EstimatorError::NotComputed {
            estimator: NAME,
            stage: "eigendecomposition",
            needs: "the eigendecomposition",
            call_first: "compute_eigendecomposition (or fit)",
        })
    }

    /// The eigengap index of the eigenvalues' real parts for `alpha`.
    pub fn eigengap(&self, alpha: f64) -> Result<usize, EstimatorError> {
        let re: Vec<f64> = self
            .eigendecomposition()?
            .eigenvalues
            .iter()
            .map(|e| e.0)
            .collect();
        Ok(eigengap(&re, alpha))
    }

    /// Terminal states (CellRank's `CFLARE.predict`): cells filtered by the left eigenvectors,
    /// clustered on the right ones (seeded k-means), named after the majority cluster of
    /// `clusters` (or `0..k`). Forgets fate probabilities and what came from them.
    pub fn predict(
        &mut self,
        opts: &CflareOptions,
        clusters: Option<ClusterReference<'_>>,
    ) -> Result<&CellStates, EstimatorError> {
        let eig = self.eigen.as_ref().ok_or(EstimatorError::NotComputed {
            estimator: NAME,
            stage: "predict",
            needs: "the eigendecomposition",
            call_first: "compute_eigendecomposition (or fit)",
        })?;
        let res = cflare_predict(eig, opts)?;
        let (names, colors) = name_states(&res.assignment, res.n_clusters, clusters)?;
        let states = CellStates {
            names,
            colors,
            assignment: res.assignment.clone(),
            probs: res.probs.clone(),
            memberships: None,
        };
        self.result = Some(res);
        self.core.replace_terminal(states);
        self.terminal_states()
    }

    /// What the last [`Cflare::predict`] found (eigengap, eigenvectors used, clusters).
    pub fn result(&self) -> Result<&CflareResult, EstimatorError> {
        self.result.as_ref().ok_or(EstimatorError::NotComputed {
            estimator: NAME,
            stage: "result",
            needs: "terminal states",
            call_first: "predict",
        })
    }
}
