//! `PseudotimeKernel`: biases the kNN graph towards increasing pseudotime (CellRank 2.3).
//!
//! - `hard` (Palantir-like): per cell, keep the `k = min(30, ⌊|N(i)| · frac_to_keep⌋)`
//!   strongest neighbours unconditionally, and of the others only those with `t_j ≥ t_i`.
//! - `soft` (VIA-like): neighbours in the past (`t_j < t_i`) are down-weighted by
//!   `2 / (1 + exp(b (t_i − t_j)))^(1/ν)`.
//!
//! The biased connectivities are row-normalised (no density normalisation). Backward uses
//! `max(t) − t`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csr::{Csr, ROW_CHUNK};
use crate::error::{KernelError, TransitionError};
use crate::leaf::{read_graph, to_transition, Leaf};
use crate::source::CellSource;
use crate::transition::{Direction, TransitionMatrix};

/// How past edges are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdScheme {
    /// Remove past edges except the strongest `frac_to_keep` of the neighbourhood.
    Hard,
    /// Down-weight past edges with a generalised logistic function.
    Soft,
}

/// Parameters of the pseudotime kernel (CellRank names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudotimeParams {
    /// `obs` key of the pseudotime.
    pub time_key: String,
    /// Backward process (`max(t) − t`).
    pub backward: bool,
    /// `obsp` key of the kNN connectivities.
    pub conn_key: String,
    /// `hard` or `soft`.
    pub threshold_scheme: ThresholdScheme,
    /// Hard scheme: fraction of the strongest neighbours always kept, in `[0, 1]`.
    pub frac_to_keep: f64,
    /// Soft scheme: steepness `b > 0`.
    pub b: f64,
    /// Soft scheme: shape `ν > 0`.
    pub nu: f64,
}

impl Default for PseudotimeParams {
    fn default() -> Self {
        Self {
            time_key: "dpt_pseudotime".into(),
            backward: false,
            conn_key: "connectivities".into(),
            threshold_scheme: ThresholdScheme::Hard,
            frac_to_keep: 0.3,
            b: 10.0,
            nu: 0.5,
        }
    }
}

pub(crate) const NAME: &str = "PseudotimeKernel";

impl PseudotimeParams {
    /// Biases `conn` with pseudotime `t` (already reversed for backward). Used by the
    /// CytoTRACE kernel too.
    pub(crate) fn bias(&self, conn: &Csr, t: &[f64]) -> Csr {
        let rows: Vec<(Vec<u32>, Vec<f64>)> = (0..conn.nrows())
            .into_par_iter()
            .with_min_len(ROW_CHUNK)
            .map(|i| {
                let (cols, vals) = conn.row(i);
                let mut out = vec![0.0; vals.len()];
                match self.threshold_scheme {
                    ThresholdScheme::Hard => {
                        let k = ((vals.len() as f64 * self.frac_to_keep).floor() as usize).min(30);
                        let mut order: Vec<usize> = (0..vals.len()).collect();
                        // Strongest first; ties keep the higher column first, as numpy's
                        // flipped argsort does for equal keys in a stable sort.
                        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]).then(b.cmp(&a)));
                        for (rank, &p) in order.iter().enumerate() {
                            if rank < k || t[i] <= t[cols[p] as usize] {
                                out[p] = vals[p];
                            }
                        }
                    }
                    ThresholdScheme::Soft => {
                        for (p, (&c, &v)) in cols.iter().zip(vals).enumerate() {
                            let dt = t[i] - t[c as usize];
                            out[p] = if dt > 0.0 {
                                v * (2.0 / (1.0 + (self.b * dt).exp()).powf(1.0 / self.nu))
                            } else {
                                v
                            };
                        }
                    }
                }
                let (c2, v2): (Vec<u32>, Vec<f64>) = cols
                    .iter()
                    .zip(out)
                    .filter(|(_, v)| *v != 0.0)
                    .map(|(&c, v)| (c, v))
                    .unzip();
                (c2, v2)
            })
            .collect();
        Csr::from_rows(conn.nrows(), conn.ncols(), rows)
    }
}

impl Leaf for PseudotimeParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        let bad = |name, value: f64, expected: &str| {
            Err(KernelError::InvalidParam {
                kernel: NAME,
                name,
                value: value.to_string(),
                expected: expected.into(),
            })
        };
        if !(0.0..=1.0).contains(&self.frac_to_keep) {
            return bad("frac_to_keep", self.frac_to_keep, "a number in [0, 1]");
        }
        if !(self.b.is_finite() && self.b > 0.0) {
            return bad("b", self.b, "a positive number");
        }
        if !(self.nu.is_finite() && self.nu > 0.0) {
            return bad("nu", self.nu, "a positive number");
        }
        Ok(())
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let mut t = cells
            .obs_f64(&self.time_key)
            .map_err(|source| KernelError::MissingInput {
                kernel: NAME,
                what: "a pseudotime".into(),
                source: Box::new(source),
                hint: "set `time_key` to an obs column holding a pseudotime (e.g. scanpy's `tl.dpt` or `latent_time`)".into(),
            })?;
        if t.len() != conn.nrows() {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("obs[\"{}\"]", self.time_key),
                detail: format!("{} values for {} cells", t.len(), conn.nrows()),
            });
        }
        if let Some(i) = t.iter().position(|x| !x.is_finite()) {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("obs[\"{}\"]", self.time_key),
                detail: format!("cell {i} has a non-finite pseudotime ({})", t[i]),
            });
        }
        if self.backward {
            let max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            t.iter_mut().for_each(|x| *x = max - *x);
        }
        let biased = self.bias(&conn, &t);
        let transition = to_transition(NAME, biased, Direction::from_backward(self.backward))
            .map_err(|e| match e {
                KernelError::Transition { source: TransitionError::ZeroRow { row }, .. } => {
                    KernelError::InvalidInput {
                        kernel: NAME,
                        what: "the biased kNN graph".into(),
                        detail: format!("cell {row} keeps no neighbour; increase `frac_to_keep` or use `threshold_scheme = soft`"),
                    }
                }
                other => other,
            })?;
        Ok((transition, self.clone()))
    }
}
