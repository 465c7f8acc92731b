//! `.h5ad` adapters of the estimator types (CellRank's `from_adata` / `to_adata`): an estimator
//! restores itself from a file that CellRank or cellfate wrote, and writes itself back under
//! CellRank's keys. This is the one place that writes the estimators' slots; the key names
//! come from the registry in [`crate::io::keys`].
//!
//! ```no_run
//! use cellfate::estimator_io::{read_gpcca, write_gpcca};
//! use cellfate::estimators::{Estimator, absorption::AbsorptionOptions};
//! use cellfate::io::{H5adEdit, H5adReader};
//! let r = H5adReader::open("macrostates.h5ad")?;
//! let mut g = read_gpcca(&r, "T_fwd")?;            // T, eigenvalues, macrostates, states
//! g.compute_fate_probabilities(&AbsorptionOptions::default())?;
//! let mut edit = H5adEdit::new("macrostates.h5ad");
//! write_gpcca(&mut edit, &r, &g)?;
//! edit.write_to("fates.h5ad")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use thiserror::Error;

use cellfate_estimators::states::ClusterReference;
use cellfate_estimators::{CellStates, Cflare, Estimator, EstimatorError, Gpcca};
use cellfate_kernels::{Direction, TransitionMatrix};

use crate::adata::{self, AxisNames, SlotSource};
use crate::io::{keys, DataFrame, Element, H5adEdit, H5adError, H5adReader};

/// Errors of the estimator adapters.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EstimatorIoError {
    /// Reading the file.
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// An estimator stage.
    #[error(transparent)]
    Estimator(#[from] EstimatorError),
    /// A cluster column asked for by name (`cluster_key`) that cannot name states.
    #[error("{path}: cluster_key {key:?}: obs[{key:?}] {problem}; the categorical obs columns are: {}", if .categorical.is_empty() { "none".to_string() } else { .categorical.join(", ") })]
    ClusterKey {
        /// The file.
        path: String,
        /// The key given.
        key: String,
        /// Missing, or what the column holds instead.
        problem: String,
        /// The categorical obs columns there are.
        categorical: Vec<String>,
    },
    /// A slot holds something the estimator cannot use.
    #[error("{path}: {slot}: {message}")]
    Slot {
        /// The file.
        path: String,
        /// The slot.
        slot: String,
        /// What is wrong.
        message: String,
    },
}

/// An owned cluster reference (`obs[key]`, its categories and `uns[key_colors]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Clusters {
    /// Label of every cell.
    pub labels: Vec<Option<String>>,
    /// Categories in order.
    pub categories: Vec<String>,
    /// Their colours, when stored.
    pub colors: Option<Vec<String>>,
}

impl Clusters {
    /// The borrowed view the estimators take.
    pub fn reference(&self) -> ClusterReference<'_> {
        ClusterReference {
            labels: &self.labels,
            categories: &self.categories,
            colors: self.colors.as_deref(),
        }
    }
}

/// The obs column CellRank names states after when no `cluster_key` is given.
pub const DEFAULT_CLUSTER_KEY: &str = "clusters";

/// The categorical `obs[key]` with its colours (`uns[key_colors]`). A key that is missing or
/// not categorical is an [`EstimatorIoError::ClusterKey`] listing the categorical obs columns.
pub fn read_clusters(r: &H5adReader, key: &str) -> Result<Clusters, EstimatorIoError> {
    let problem = match r.column("obs", key) {
        Ok(Element::Categorical(c)) => {
            return Ok(Clusters {
                labels: c.to_labels(),
                categories: c.categories.labels(),
                colors: strings(r, &keys::uns(&keys::colors(key))),
            })
        }
        Ok(other) => format!("is not categorical (it holds {})", other.encoding()),
        Err(H5adError::Missing { .. }) => "does not exist".to_string(),
        Err(e) => return Err(e.into()),
    };
    Err(EstimatorIoError::ClusterKey {
        path: r.path().display().to_string(),
        key: key.to_string(),
        problem,
        categorical: categorical_obs_columns(r),
    })
}

/// The clusters that name states: `obs[key]` when a key is given (an error when it is
/// missing or not categorical), else `obs["clusters"]` when it exists and is categorical
/// (`None` otherwise, silently: CellRank's default).
pub fn read_cluster_key(
    r: &H5adReader,
    key: Option<&str>,
) -> Result<Option<Clusters>, EstimatorIoError> {
    match key {
        Some(k) => read_clusters(r, k).map(Some),
        None => match read_clusters(r, DEFAULT_CLUSTER_KEY) {
            Ok(c) => Ok(Some(c)),
            Err(EstimatorIoError::ClusterKey { .. }) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// The categorical columns of `obs`, in order.
pub fn categorical_obs_columns(r: &H5adReader) -> Vec<String> {
    r.columns("obs")
        .unwrap_or_default()
        .into_iter()
        .filter(|c| matches!(r.column("obs", c), Ok(Element::Categorical(_))))
        .collect()
}

fn strings(r: &H5adReader, slot: &str) -> Option<Vec<String>> {
    match r.read(slot).ok()? {
        Element::Strings { values, .. } => Some(values),
        _ => None,
    }
}

impl AxisNames for H5adReader {
    type Error = EstimatorIoError;
    fn obs_names(&self) -> Result<Vec<String>, EstimatorIoError> {
        Ok(H5adReader::obs_names(self)?)
    }
    fn var_names(&self) -> Result<Vec<String>, EstimatorIoError> {
        Ok(H5adReader::var_names(self)?)
    }
}

/// Writes terminal states set without an estimator (e.g. by hand on a file with no
/// transition matrix) under the keys [`write_estimator`] uses.
pub fn write_terminal_states(edit: &mut H5adEdit, d: Direction, s: &CellStates) {
    adata::terminal_state_elements(edit, d, s);
}

/// Writes what every estimator shares: terminal states, fate probabilities, absorption times,
/// priming and drivers (whatever has been computed; [`adata::estimator_elements`]).
pub fn write_estimator(
    edit: &mut H5adEdit,
    r: &H5adReader,
    e: &dyn Estimator,
) -> Result<(), EstimatorIoError> {
    adata::estimator_elements(edit, r, e)
}

/// Writes a GPCCA estimator under CellRank's keys (CellRank's `GPCCA.to_adata`): the Schur
/// basis, matrix and eigenvalues, macrostates with memberships and the coarse-grained chain,
/// terminal and initial states, and the shared stages ([`adata::gpcca_elements`]).
pub fn write_gpcca(edit: &mut H5adEdit, r: &H5adReader, g: &Gpcca) -> Result<(), EstimatorIoError> {
    adata::gpcca_elements(edit, r, g)
}

/// Writes a CFLARE estimator (terminal states and the shared stages).
pub fn write_cflare(
    edit: &mut H5adEdit,
    r: &H5adReader,
    c: &Cflare,
) -> Result<(), EstimatorIoError> {
    adata::cflare_elements(edit, r, c)
}

fn slot_error(r: &H5adReader, slot: &str, message: impl Into<String>) -> EstimatorIoError {
    EstimatorIoError::Slot {
        path: r.path().display().to_string(),
        slot: slot.into(),
        message: message.into(),
    }
}

impl SlotSource for H5adReader {
    type Error = EstimatorIoError;
    fn exists(&self, slot: &str) -> bool {
        H5adReader::exists(self, slot)
    }
    fn read(&self, slot: &str) -> Result<Element, EstimatorIoError> {
        Ok(H5adReader::read(self, slot)?)
    }
    fn slot_error(&self, slot: &str, message: impl Into<String>) -> EstimatorIoError {
        slot_error(self, slot, message)
    }
    fn transition_matrix(&self, key: &str) -> Result<TransitionMatrix, EstimatorIoError> {
        Ok(H5adReader::transition_matrix(self, key)?)
    }
    fn column(&self, df: &str, name: &str) -> Result<Element, EstimatorIoError> {
        Ok(H5adReader::column(self, df, name)?)
    }
    fn dense(&self, slot: &str) -> Result<(usize, usize, Vec<f64>), EstimatorIoError> {
        Ok(H5adReader::dense(self, slot)?)
    }
    fn obs_f64(&self, name: &str) -> Result<Vec<f64>, EstimatorIoError> {
        Ok(H5adReader::obs_f64(self, name)?)
    }
    fn dataframe(&self, slot: &str) -> Result<DataFrame, EstimatorIoError> {
        Ok(H5adReader::dataframe(self, slot)?)
    }
}

/// Restores a GPCCA estimator from a file CellRank or cellfate wrote (CellRank's
/// `GPCCA.from_adata`): the transition matrix `obsp[transition_key]`, the eigenvalues, the
/// macrostates (memberships, names, colours, coarse-grained chain — recomputed from the
/// memberships when the file has none), terminal and initial states, and fate probabilities.
/// The Schur vectors are not restored: `compute_macrostates` needs `compute_schur` again.
/// (The slots read are [`adata::read_gpcca`]'s.)
pub fn read_gpcca(r: &H5adReader, transition_key: &str) -> Result<Gpcca, EstimatorIoError> {
    adata::read_gpcca(r, transition_key)
}

/// Restores a CFLARE estimator: the transition matrix, terminal states and fate
/// probabilities (the eigendecomposition is recomputed by `compute_eigendecomposition`).
pub fn read_cflare(r: &H5adReader, transition_key: &str) -> Result<Cflare, EstimatorIoError> {
    adata::read_cflare(r, transition_key)
}
