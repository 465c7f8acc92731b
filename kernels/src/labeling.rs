//! `LabelingTimeKernel`: RNA velocity from metabolic labeling (new/total RNA and a labeling
//! time per cell), as in dynamo's scNT-seq analysis, then the velocity-kernel machinery.
//!
//! 1. Smooth `new` and `total` over each cell and its kNN neighbours with the same labeling
//!    time (`M_N`, `M_T`; binarised connectivities plus self, row-normalised).
//! 2. Degradation rate γ per gene (dynamo's one-rate model of total RNA):
//!    - one labeling time `t` (*one-shot*): `k` = slope of `M_N` on `M_T` through the origin over
//!      the extreme cells (joint normalised expression ≥ its 95th percentile), clipped to
//!      `≤ 1 − 10⁻³`, and `γ = −ln(1 − k)/t`;
//!    - several times (*kinetics*, two-step): `K_j` per time point as above, then `γ` = slope of
//!      `−ln(1 − K_j)` on `t_j` through the origin.
//! 3. `velocity_T = (γ/k_i) M_N − γ M_T` with `k_i = 1 − e^{−γ t_i}`.
//! 4. The velocity kernel on displacements of `M_T` with `velocity_T`.

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

/// Slope through the origin of `y` on `x` over cells whose joint normalised expression is at
/// or above the `perc`-th percentile (among `cells`).
fn extreme_slope(x: &[f64], y: &[f64], cells: &[usize], perc: f64) -> f64 {
    let xmax = cells.iter().map(|&i| x[i]).fold(0.0, f64::max).max(1e-3);
    let ymax = cells.iter().map(|&i| y[i]).fold(0.0, f64::max).max(1e-3);
    let score: Vec<f64> = cells.iter().map(|&i| x[i] / xmax + y[i] / ymax).collect();
    let mut sorted = score.clone();
    sorted.sort_by(f64::total_cmp);
    let pos = perc / 100.0 * (sorted.len().saturating_sub(1)) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let q = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (k, &i) in cells.iter().enumerate() {
        if score[k] >= q {
            sxy += x[i] * y[i];
            sxx += x[i] * x[i];
        }
    }
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

impl LabelingTimeParams {
    /// Estimates γ and computes `velocity_T` (dynamo's formulas, see the module docs).
    pub fn labeling_velocity(
        &self,
        cells: &dyn CellSource,
    ) -> Result<LabelingVelocity, KernelError> {
        let hint = "metabolic labeling needs layers with new and total RNA counts and a labeling time per cell (e.g. `cellfate simulate --labeling`)";
        let missing = |what: &str| {
            let what = what.to_string();
            move |source| KernelError::MissingInput {
                kernel: NAME,
                what,
                source: Box::new(source),
                hint: hint.into(),
            }
        };
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let new = cells.layer(&self.new_key).map_err(missing("new RNA"))?;
        let total = cells.layer(&self.total_key).map_err(missing("total RNA"))?;
        let times = cells
            .obs_f64(&self.time_key)
            .map_err(missing("labeling times"))?;
        let (n, g) = (total.nrows(), total.ncols());
        if (new.nrows(), new.ncols()) != (n, g) || times.len() != n {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: "new/total/labeling time".into(),
                detail: "shapes differ".into(),
            });
        }
        if let Some(i) = times.iter().position(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("obs[\"{}\"]", self.time_key),
                detail: format!("cell {i} has labeling time {} (must be positive)", times[i]),
            });
        }
        let mn = smooth(&conn, &new, &times);
        let mt = smooth(&conn, &total, &times);
        let mut distinct: Vec<f64> = times.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let two_step = match self.estimator {
            GammaEstimator::Auto => distinct.len() > 1,
            GammaEstimator::OneShot => {
                if distinct.len() > 1 {
                    return Err(KernelError::InvalidParam {
                        kernel: NAME,
                        name: "estimator",
                        value: "one_shot".into(),
                        expected: format!(
                            "two_step (the data has {} labeling times)",
                            distinct.len()
                        ),
                    });
                }
                false
            }
            GammaEstimator::TwoStep => {
                if distinct.len() < 2 {
                    return Err(KernelError::InvalidParam {
                        kernel: NAME,
                        name: "estimator",
                        value: "two_step".into(),
                        expected: "one_shot (the data has a single labeling time)".into(),
                    });
                }
                true
            }
        };
        let groups: Vec<Vec<usize>> = distinct
            .iter()
            .map(|t| (0..n).filter(|&i| times[i] == *t).collect())
            .collect();
        let gamma: Vec<f64> = (0..g)
            .map(|j| {
                let x: Vec<f64> = (0..n).map(|i| mt[i * g + j]).collect();
                let y: Vec<f64> = (0..n).map(|i| mn[i * g + j]).collect();
                let k_of = |cells: &[usize]| {
                    extreme_slope(&x, &y, cells, self.perc).clamp(0.0, 1.0 - 1e-3)
                };
                if two_step {
                    let (mut sty, mut stt) = (0.0, 0.0);
                    for (t, cells) in distinct.iter().zip(&groups) {
                        let k = k_of(cells);
                        let yv = -(1.0 - k).ln();
                        sty += t * yv;
                        stt += t * t;
                    }
                    sty / stt
                } else {
                    let k = k_of(&groups[0]);
                    -(1.0 - k).ln() / distinct[0]
                }
            })
            .collect();
        let mut vel = vec![0.0; n * g];
        for i in 0..n {
            for j in 0..g {
                let gm = gamma[j];
                let k = 1.0 - (-gm * times[i]).exp();
                vel[i * g + j] = if k > 0.0 {
                    gm / k * mn[i * g + j] - gm * mt[i * g + j]
                } else {
                    0.0
                };
            }
        }
        Ok(LabelingVelocity {
            gamma,
            velocity: DenseMatrix::from_f64(n, g, vel),
            m_total: DenseMatrix::from_f64(n, g, mt),
            estimator: if two_step { "two_step" } else { "one_shot" },
        })
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
        let lv = self.labeling_velocity(cells)?;
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let (transition, v) =
            self.velocity_params()
                .compute_from(&conn, &lv.m_total, &lv.velocity)?;
        let mut effective = self.clone();
        effective.softmax_scale = v.softmax_scale;
        Ok((transition, effective))
    }
}
