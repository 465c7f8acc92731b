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

use nalgebra::DMatrix;
use thiserror::Error;

use cellfate_estimators::absorption::{FateProbabilities, ROW_SUM_TOL};
use cellfate_estimators::gpcca::coarse_grain;
use cellfate_estimators::schur::uniform_eta;
use cellfate_estimators::states::{palette, ClusterReference};
use cellfate_estimators::{CellStates, Cflare, Estimator, EstimatorError, Gpcca, Macrostates};
use cellfate_kernels::Direction;

use crate::adata::{self, AxisNames};
use crate::io::{keys, Element, H5adEdit, H5adError, H5adReader, NumVec};

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

/// Cell states stored under `obs[key]` (+ `_probs`, `_colors`, `_memberships` when present).
fn read_states(r: &H5adReader, key: &str) -> Result<Option<CellStates>, EstimatorIoError> {
    let slot = keys::obs(key);
    if !r.exists(&slot) {
        return Ok(None);
    }
    let c = match r.column("obs", key)? {
        Element::Categorical(c) => c,
        other => {
            return Err(slot_error(
                r,
                &slot,
                format!("expected a categorical, found {}", other.encoding()),
            ))
        }
    };
    let names = c.categories.labels();
    let n = c.codes.len();
    let assignment: Vec<Option<usize>> = c
        .codes
        .iter()
        .map(|&k| usize::try_from(k).ok().filter(|&q| q < names.len()))
        .collect();
    let probs = if r.exists(&keys::obs(&keys::probs(key))) {
        r.obs_f64(&keys::probs(key))?
    } else {
        assignment
            .iter()
            .map(|a| if a.is_some() { 1.0 } else { 0.0 })
            .collect()
    };
    let colors = match strings(r, &keys::uns(&keys::colors(key))) {
        Some(c) if c.len() == names.len() => c,
        _ => palette(names.len()).map_err(EstimatorError::from)?,
    };
    let mem_slot = keys::obsm(&keys::memberships(key));
    let memberships = if r.exists(&mem_slot) {
        let (rows, cols, v) = r.dense(&mem_slot)?;
        if rows != n || cols != names.len() {
            return Err(slot_error(
                r,
                &mem_slot,
                format!(
                    "expected {n} x {} memberships (cells x states of obs[{key:?}]), found {rows} x {cols}",
                    names.len()
                ),
            ));
        }
        Some(DMatrix::from_fn(rows, cols, |i, j| v[i * cols + j]))
    } else {
        None
    };
    Ok(Some(CellStates {
        names,
        colors,
        assignment,
        probs,
        memberships,
    }))
}

/// Fate probabilities in `obsm["lineages_fwd"]` with names in `uns`, restored as computed
/// elsewhere: the residual of their solve is unknown (NaN), the row sums are checked here.
fn read_fates(r: &H5adReader, d: Direction) -> Result<Option<FateProbabilities>, EstimatorIoError> {
    let key = keys::lineages(d);
    let slot = keys::obsm(&key);
    if !r.exists(&slot) {
        return Ok(None);
    }
    let (n, l, probs) = r.dense(&slot)?;
    let names = match strings(r, &keys::uns(&keys::names(&key))) {
        Some(v) if v.len() == l => v,
        Some(v) => {
            return Err(slot_error(
                r,
                &keys::uns(&keys::names(&key)),
                format!("{} names for {l} lineages", v.len()),
            ))
        }
        None => (0..l).map(|j| j.to_string()).collect(),
    };
    let row_sum_error = (0..n)
        .map(|i| (probs[i * l..(i + 1) * l].iter().sum::<f64>() - 1.0).abs())
        .fold(0.0f64, f64::max);
    Ok(Some(FateProbabilities {
        names,
        probs,
        residual: f64::NAN,
        row_sum_error,
        row_sum_tol: ROW_SUM_TOL,
        max_absorption_time: None,
        solver: "restored from file",
    }))
}

fn restore_shared(
    r: &H5adReader,
    e: &mut dyn Estimator,
    d: Direction,
) -> Result<(), EstimatorIoError> {
    let n = e.transition_matrix().n_cells();
    if let Some(term) = read_states(r, &keys::terminal_states(d))? {
        if term.assignment.len() != n {
            return Err(slot_error(
                r,
                &keys::obs(&keys::terminal_states(d)),
                format!(
                    "{} cells, the transition matrix has {n}",
                    term.assignment.len()
                ),
            ));
        }
        e.core_mut().replace_terminal(term);
        if let Some(f) = read_fates(r, d)? {
            e.core_mut().restore_fates(f);
        }
    }
    Ok(())
}

/// The eigenvalues in `uns["eigendecomposition_fwd"]["D"]` (complex or real).
fn read_eigenvalues(r: &H5adReader, d: Direction) -> Option<(Vec<f64>, Vec<f64>)> {
    let slot = keys::uns(&format!("{}/D", keys::eigendecomposition(d)));
    match r.read(&slot).ok()? {
        Element::Dense(a) => match &a.data {
            NumVec::C128(v) => Some((
                v.iter().map(|c| c.re).collect(),
                v.iter().map(|c| c.im).collect(),
            )),
            other => {
                let re = other.to_f64();
                let im = vec![0.0; re.len()];
                Some((re, im))
            }
        },
        _ => None,
    }
}

/// Restores a GPCCA estimator from a file CellRank or cellfate wrote (CellRank's
/// `GPCCA.from_adata`): the transition matrix `obsp[transition_key]`, the eigenvalues, the
/// macrostates (memberships, names, colours, coarse-grained chain — recomputed from the
/// memberships when the file has none), terminal and initial states, and fate probabilities.
/// The Schur vectors are not restored: `compute_macrostates` needs `compute_schur` again.
pub fn read_gpcca(r: &H5adReader, transition_key: &str) -> Result<Gpcca, EstimatorIoError> {
    let t = r.transition_matrix(transition_key)?;
    let d = t.direction();
    let n = t.n_cells();
    let mut g = Gpcca::new(t);
    if let Some((re, im)) = read_eigenvalues(r, d) {
        let alpha = match r.read(&keys::uns(&format!(
            "{}/params/alpha",
            keys::eigendecomposition(d)
        ))) {
            Ok(Element::Scalar(v)) if !v.is_empty() => v.get_f64(0),
            _ => 1.0,
        };
        g.restore_eigenvalues(re.into_iter().zip(im).collect(), alpha);
    }
    if let Some(mut states) = read_states(r, &keys::macrostates(d))? {
        let chi = states.memberships.clone().ok_or_else(|| {
            slot_error(
                r,
                &keys::obsm(&keys::memberships(&keys::macrostates(d))),
                "macrostates without memberships: recompute them (cellfate macrostates)",
            )
        })?;
        if chi.nrows() != n {
            return Err(slot_error(
                r,
                &keys::obs(&keys::macrostates(d)),
                format!("{} cells, the transition matrix has {n}", chi.nrows()),
            ));
        }
        if let Some(names) = strings(r, &keys::uns(&keys::names(&keys::macrostates(d)))) {
            if names.len() == states.names.len() {
                states.names = names;
            }
        }
        let m = chi.ncols();
        let coarse = keys::coarse(d);
        let (coarse_t, coarse_init, coarse_stat) = match r.dense(&keys::uns(&format!("{coarse}/X")))
        {
            Ok((a, b, v)) if a == m && b == m => {
                let df = r.dataframe(&keys::uns(&format!("{coarse}/obs"))).ok();
                let col =
                    |name: &str| -> Option<Vec<f64>> { df.as_ref()?.column(name)?.to_f64_vec() };
                let init = col("coarse_init_dist").unwrap_or_default();
                (
                    DMatrix::from_fn(m, m, |i, j| v[i * m + j]),
                    init,
                    col("coarse_stat_dist"),
                )
            }
            _ => match r.dense(&keys::uns(&keys::coarse_transition(d))) {
                Ok((a, b, v)) if a == m && b == m => {
                    let (_, ci, cs) =
                        coarse_grain(g.transition_matrix(), &chi, &uniform_eta(n), None);
                    (DMatrix::from_fn(m, m, |i, j| v[i * m + j]), ci, cs)
                }
                _ => coarse_grain(g.transition_matrix(), &chi, &uniform_eta(n), None),
            },
        };
        g.restore_macrostates(Macrostates {
            states,
            coarse_t,
            coarse_init,
            coarse_stat,
            crispness: None,
            report: None,
        });
    }
    if let Some(init) = read_states(r, &keys::initial_states(d))? {
        g.restore_initial_states(init);
    }
    restore_shared(r, &mut g, d)?;
    Ok(g)
}

/// Restores a CFLARE estimator: the transition matrix, terminal states and fate
/// probabilities (the eigendecomposition is recomputed by `compute_eigendecomposition`).
pub fn read_cflare(r: &H5adReader, transition_key: &str) -> Result<Cflare, EstimatorIoError> {
    let t = r.transition_matrix(transition_key)?;
    let d = t.direction();
    let mut c = Cflare::new(t);
    restore_shared(r, &mut c, d)?;
    Ok(c)
}
