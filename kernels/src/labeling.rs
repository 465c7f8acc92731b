//! `LabelingTimeKernel`: RNA velocity from metabolic labeling (new/total RNA and a labeling
//! time per cell), as in dynamo's scNT-seq analysis, then the velocity-kernel machinery.
//!
//! - When the data already hold the labeling velocity (`layers["velocity_T"]` and the
//!   smoothed total RNA `layers["M_t"]`, as `cellfate preprocess` writes them for labeling
//!   data), the kernel uses them, on the genes of `var["use_for_dynamics"]` when present.
//! - Otherwise it estimates them from the raw layers: `new` and `total` smoothed over each
//!   cell and its kNN neighbours with the same labeling time (`M_n`, `M_t`), the kinetics of
//!   [`crate::labeling_kinetics`] (one-shot for one labeling time, two-step kinetics for
//!   several), and `velocity_T = αᵢ − γ M_T`.
//!
//! The velocity kernel then runs on displacements of `M_t` with `velocity_T`.

use serde::{Deserialize, Serialize};

use crate::csr::Csr;
use crate::error::KernelError;
use crate::leaf::{read_graph, Leaf};
use crate::source::{CellSource, DenseMatrix};
use crate::transition::{Direction, TransitionMatrix};
use crate::velocity::{BackwardMode, Similarity, VelocityParams};

/// Which γ estimator to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GammaEstimator {
    /// One-shot for a single labeling time, two-step kinetics otherwise.
    #[default]
    Auto,
    /// One-shot (requires a single labeling time).
    OneShot,
    /// Two-step kinetics (requires at least two labeling times).
    TwoStep,
}

/// Parameters of the labeling-time kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelingTimeParams {
    /// Backward process.
    pub backward: bool,
    /// Layer of new (labelled) RNA counts.
    pub new_key: String,
    /// Layer of total RNA counts.
    pub total_key: String,
    /// obs column with each cell's labeling duration.
    pub time_key: String,
    /// One labeling duration for every cell (instead of `time_key`).
    pub time_value: Option<f64>,
    /// Layer of a precomputed labeling velocity (used with `xkey` when both exist).
    pub vkey: String,
    /// Layer of the smoothed total RNA matching `vkey`.
    pub xkey: String,
    /// var mask of the genes whose precomputed velocity is meaningful.
    pub gene_subset: Option<String>,
    /// `obsp` key of the kNN connectivities.
    pub conn_key: String,
    /// γ estimator.
    pub estimator: GammaEstimator,
    /// Upper percentile defining the extreme cells of the γ regressions.
    pub perc: f64,
    /// Similarity of the velocity kernel.
    pub similarity: Similarity,
    /// Backward mode of the velocity kernel.
    pub backward_mode: BackwardMode,
    /// Softmax scale (estimated when `None`).
    pub softmax_scale: Option<f64>,
}

impl Default for LabelingTimeParams {
    fn default() -> Self {
        Self {
            backward: false,
            new_key: "new".into(),
            total_key: "total".into(),
            time_key: "labeling_time".into(),
            time_value: None,
            vkey: "velocity_T".into(),
            xkey: "M_t".into(),
            gene_subset: Some("use_for_dynamics".into()),
            conn_key: "connectivities".into(),
            estimator: GammaEstimator::Auto,
            perc: 95.0,
            similarity: Similarity::Correlation,
            backward_mode: BackwardMode::Transpose,
            softmax_scale: None,
        }
    }
}

pub(crate) const NAME: &str = "LabelingTimeKernel";

/// Labeling velocities and what they were computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelingVelocity {
    /// Degradation rate per gene.
    pub gamma: Vec<f64>,
    /// `velocity_T` (cells × genes).
    pub velocity: DenseMatrix,
    /// Smoothed total RNA `M_T` (cells × genes).
    pub m_total: DenseMatrix,
    /// `"one_shot"` or `"two_step"`.
    pub estimator: &'static str,
}

/// Row-normalised (binarised kNN + self) smoothing of a dense matrix, averaging only over
/// neighbours with the same labeling time (as dynamo smooths per labeling-time group: new RNA
/// of cells labelled for different durations must not be mixed).
pub(crate) fn smooth(conn: &Csr, m: &DenseMatrix, times: &[f64]) -> Vec<f64> {
    let (n, g) = (m.nrows(), m.ncols());
    let mut out = vec![0.0; n * g];
    let mut row = Vec::new();
    for i in 0..n {
        let (cols, _) = conn.row(i);
        let same: Vec<usize> = cols
            .iter()
            .map(|&j| j as usize)
            .filter(|&j| times[j] == times[i])
            .collect();
        let w = 1.0 / (same.len() + 1) as f64;
        let acc = &mut out[i * g..(i + 1) * g];
        m.row_into(i, &mut row);
        acc.iter_mut().zip(&row).for_each(|(a, x)| *a += w * x);
        for &j in &same {
            m.row_into(j, &mut row);
            acc.iter_mut().zip(&row).for_each(|(a, x)| *a += w * x);
        }
    }
    out
}

impl LabelingTimeParams {
    /// Estimates γ and computes `velocity_T` from the raw layers (see the module docs).
    pub fn labeling_velocity(
        &self,
        cells: &dyn CellSource,
    ) -> Result<LabelingVelocity, KernelError> {
        use crate::labeling_kinetics::{self as lk, ExperimentType, KineticsOptions};
        let hint = "metabolic labeling needs layers with new and total RNA counts and a labeling time per cell (e.g. `cellfate simulate --labeling`); the time is the obs column `time_key`, or `time_value` for one duration for all cells";
        let missing = |what: &str| {
            let what = what.to_string();
            move |source| KernelError::MissingInput {
                kernel: NAME,
                what,
                source: Box::new(source),
                hint: hint.into(),
            }
        };
        // The labeling time first: it is what labeling data most often lack.
        let times = match self.time_value {
            Some(t) => vec![t; cells.n_cells()],
            None => cells
                .obs_f64(&self.time_key)
                .map_err(missing("labeling times"))?,
        };
        let new = cells.layer(&self.new_key).map_err(missing("new RNA"))?;
        let total = cells.layer(&self.total_key).map_err(missing("total RNA"))?;
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let (n, g) = (total.nrows(), total.ncols());
        if (new.nrows(), new.ncols()) != (n, g) || times.len() != n {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: "new/total/labeling time".into(),
                detail: "shapes differ".into(),
            });
        }
        let time_slot = match self.time_value {
            Some(_) => "time_value".to_string(),
            None => format!("obs[\"{}\"]", self.time_key),
        };
        lk::check_times(&times, &time_slot).map_err(|e| KernelError::InvalidInput {
            kernel: NAME,
            what: time_slot.clone(),
            detail: e.to_string(),
        })?;
        let mn = smooth(&conn, &new, &times);
        let mt = smooth(&conn, &total, &times);
        let distinct = lk::distinct_times(&times);
        let experiment = match self.estimator {
            GammaEstimator::Auto if distinct.len() > 1 => ExperimentType::Kinetics,
            GammaEstimator::Auto => ExperimentType::OneShot,
            GammaEstimator::OneShot => ExperimentType::OneShot,
            GammaEstimator::TwoStep => ExperimentType::Kinetics,
        };
        let opts = KineticsOptions {
            experiment_type: Some(experiment),
            one_shot_method: lk::OneShotMethod::Combined,
            perc_right: 100.0 - self.perc,
            ..Default::default()
        };
        let moments = lk::LabelingMoments {
            n_cells: n,
            n_genes: g,
            new: &mn,
            total: &mt,
            times: &times,
            second: None,
        };
        let genes: Vec<usize> = (0..g).collect();
        let fit = lk::fit_kinetics(&moments, &genes, &opts).map_err(|e| {
            let (name, value) = match self.estimator {
                GammaEstimator::OneShot => ("estimator", "one_shot"),
                GammaEstimator::TwoStep => ("estimator", "two_step"),
                GammaEstimator::Auto => ("estimator", "auto"),
            };
            KernelError::InvalidParam {
                kernel: NAME,
                name,
                value: value.into(),
                expected: e.to_string(),
            }
        })?;
        let velocity = fit.velocity_t.unwrap_or_else(|| vec![0.0; n * g]);
        let gamma = fit
            .gamma
            .iter()
            .map(|x| if x.is_finite() { *x } else { 0.0 })
            .collect();
        Ok(LabelingVelocity {
            gamma,
            velocity: DenseMatrix::from_f64(n, g, velocity),
            m_total: DenseMatrix::from_f64(n, g, mt),
            estimator: if experiment == ExperimentType::Kinetics {
                "two_step"
            } else {
                "one_shot"
            },
        })
    }

    /// The precomputed labeling velocity and smoothed total RNA (`vkey`, `xkey`, restricted
    /// to `gene_subset`) when the data hold both; `None` otherwise.
    fn precomputed(
        &self,
        cells: &dyn CellSource,
    ) -> Result<Option<(DenseMatrix, DenseMatrix)>, KernelError> {
        let (Ok(v), Ok(x)) = (cells.layer(&self.vkey), cells.layer(&self.xkey)) else {
            return Ok(None);
        };
        if (v.nrows(), v.ncols()) != (x.nrows(), x.ncols()) {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"] and layers[\"{}\"]", self.vkey, self.xkey),
                detail: format!(
                    "shapes differ ({}x{} and {}x{})",
                    v.nrows(),
                    v.ncols(),
                    x.nrows(),
                    x.ncols()
                ),
            });
        }
        let mask = match &self.gene_subset {
            Some(k) => cells.var_mask(k).map_err(|e| KernelError::MissingInput {
                kernel: NAME,
                what: format!("var[\"{k}\"]"),
                source: Box::new(e),
                hint: "a boolean gene mask".into(),
            })?,
            None => None,
        };
        Ok(Some(match mask {
            Some(m) if m.len() == v.ncols() => {
                if !m.iter().any(|&b| b) {
                    return Err(KernelError::InvalidInput {
                        kernel: NAME,
                        what: format!("var[\"{}\"]", self.gene_subset.as_deref().unwrap_or("")),
                        detail: "no gene is selected".into(),
                    });
                }
                (v.select_columns(&m), x.select_columns(&m))
            }
            _ => (v, x),
        }))
    }

    fn velocity_params(&self) -> VelocityParams {
        VelocityParams {
            backward: self.backward,
            conn_key: self.conn_key.clone(),
            similarity: self.similarity,
            backward_mode: self.backward_mode,
            softmax_scale: self.softmax_scale,
            ..VelocityParams::default()
        }
    }
}

impl Leaf for LabelingTimeParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        if let Some(t) = self.time_value {
            if !(t.is_finite() && t > 0.0) {
                return Err(KernelError::InvalidParam {
                    kernel: NAME,
                    name: "time_value",
                    value: t.to_string(),
                    expected: "a positive labeling duration".into(),
                });
            }
        }
        if !(self.perc > 0.0 && self.perc < 100.0) {
            return Err(KernelError::InvalidParam {
                kernel: NAME,
                name: "perc",
                value: self.perc.to_string(),
                expected: "a percentile in (0, 100)".into(),
            });
        }
        self.velocity_params().leaf_validate()
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let (x, vel) = match self.precomputed(cells)? {
            Some(p) => (p.1, p.0),
            None => {
                let lv = self.labeling_velocity(cells)?;
                (lv.m_total, lv.velocity)
            }
        };
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let (transition, v) = self.velocity_params().compute_from(&conn, &x, &vel)?;
        let mut effective = self.clone();
        effective.softmax_scale = v.softmax_scale;
        Ok((transition, effective))
    }
}
