//! `RealTimeKernel`: transitions from experimental time points (CellRank 2.3's kernel for
//! moscot / Waddington-OT couplings).
//!
//! Cells are grouped by a categorical time in `obs` (categories in order). For each pair of
//! consecutive time points `(a, b)`, a coupling (cells of `a` × cells of `b`) is read from
//! `uns["{prefix}{a}_{b}"]` when present (moscot's `tmap_10_105` naming: labels without `.0`
//! and dots), otherwise computed with entropic optimal transport (log-domain Sinkhorn, uniform
//! marginals) on an embedding (`obsm["X_pca"]` by default) with the squared Euclidean cost
//! divided by its mean. Each coupling is sparsified (`threshold`), rows summing to 0 become
//! uniform, and the couplings fill the off-diagonal blocks of the transition matrix; the last
//! time point's diagonal block holds its self-transitions (`connectivities`: the
//! density-normalised kNN connectivities among its cells; `diagonal`; or `uniform`). Finally
//! every row is normalised.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csr::Csr;
use crate::error::SourceError;
use crate::error::{KernelError, OtError};
use crate::leaf::{check_graph, read_graph, to_transition, Leaf};
use crate::source::{CellSource, DenseMatrix};
use crate::transition::{Direction, TransitionMatrix};

/// How couplings are sparsified. Reads `"auto"`, `"auto_local"`, `"none"`,
/// `{"percentile": q}`, and, as CellRank's `threshold` argument does, a bare number `q` (a
/// percentile) or `null` (keep everything).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "ThresholdRepr")]
pub enum Threshold {
    /// Keep entries ≥ the smallest row maximum over all couplings (keeps ≥ 1 entry per row).
    #[default]
    Auto,
    /// The same rule per coupling.
    AutoLocal,
    /// Keep entries ≥ the given percentile (0–100) of each coupling's entries.
    Percentile(f64),
    /// Keep everything.
    None,
}

/// The forms [`Threshold`] is read from.
#[derive(Deserialize)]
#[serde(untagged)]
enum ThresholdRepr {
    Number(f64),
    Named(ThresholdNamed),
    Null(()),
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ThresholdNamed {
    Auto,
    AutoLocal,
    Percentile(f64),
    None,
}

impl From<ThresholdRepr> for Threshold {
    fn from(r: ThresholdRepr) -> Self {
        match r {
            ThresholdRepr::Number(q) | ThresholdRepr::Named(ThresholdNamed::Percentile(q)) => {
                Self::Percentile(q)
            }
            ThresholdRepr::Named(ThresholdNamed::Auto) => Self::Auto,
            ThresholdRepr::Named(ThresholdNamed::AutoLocal) => Self::AutoLocal,
            ThresholdRepr::Named(ThresholdNamed::None) | ThresholdRepr::Null(()) => Self::None,
        }
    }
}

/// Self-transitions of the last time point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfTransitions {
    /// `connectivities` when `obsp[conn_key]` exists, else `diagonal`; the effective spec
    /// records which was used. (CellRank's default, `connectivities`, computes neighbours of
    /// the last time point itself; kernels here read graphs and never compute them.)
    #[default]
    Auto,
    /// Density-normalised kNN connectivities among the last time point's cells.
    Connectivities,
    /// Identity.
    Diagonal,
    /// Uniform over the last time point.
    Uniform,
}

/// Parameters of the real-time kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealTimeParams {
    /// Categorical obs column with the time points.
    pub time_key: String,
    /// Prefix of precomputed couplings in `uns`.
    pub couplings_prefix: String,
    /// Embedding for computed couplings.
    pub basis: String,
    /// Entropic regularisation (relative to the mean cost).
    pub epsilon: f64,
    /// Sparsification.
    pub threshold: Threshold,
    /// Self-transitions of the last time point.
    pub self_transitions: SelfTransitions,
    /// `obsp` key of the kNN connectivities.
    pub conn_key: String,
}

impl Default for RealTimeParams {
    fn default() -> Self {
        Self {
            time_key: "day".into(),
            couplings_prefix: "tmap_".into(),
            basis: "X_pca".into(),
            epsilon: 0.05,
            threshold: Threshold::Auto,
            self_transitions: SelfTransitions::Auto,
            conn_key: "connectivities".into(),
        }
    }
}

pub(crate) const NAME: &str = "RealTimeKernel";

/// moscot's key form of a time label: `10.0` → `10`, `10.5` → `105`.
fn key_label(l: &str) -> String {
    l.strip_suffix(".0").unwrap_or(l).replace('.', "")
}

/// Entropic OT (log-domain Sinkhorn, uniform marginals) between the rows of `x` and `y`.
/// Returns the dense coupling (row-major |x| × |y|). `epsilon` is relative to the mean cost.
pub fn sinkhorn(x: &[Vec<f64>], y: &[Vec<f64>], epsilon: f64) -> Result<Vec<f64>, OtError> {
    let (na, nb) = (x.len(), y.len());
    if na == 0 || nb == 0 {
        return Err(OtError::Empty { rows: na, cols: nb });
    }
    let dim = x[0].len();
    if let Some(b) = x.iter().chain(y).find(|p| p.len() != dim) {
        return Err(OtError::DimensionMismatch {
            rows_dim: dim,
            cols_dim: b.len(),
        });
    }
    let cost: Vec<f64> = x
        .par_iter()
        .flat_map_iter(|a| {
            y.iter()
                .map(move |b| a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f64>())
        })
        .collect();
    if let Some(k) = cost.iter().position(|c| !c.is_finite()) {
        return Err(OtError::NonFiniteCost {
            row: k / nb,
            col: k % nb,
        });
    }
    let mean = cost.iter().sum::<f64>() / cost.len() as f64;
    let scale = if mean > 0.0 { mean } else { 1.0 };
    let c: Vec<f64> = cost.iter().map(|v| v / scale).collect();
    let (la, lb) = (-(na as f64).ln(), -(nb as f64).ln());
    let mut f = vec![0.0; na];
    let mut g = vec![0.0; nb];
    let lse = |vals: &mut dyn Iterator<Item = f64>| -> f64 {
        let v: Vec<f64> = vals.collect();
        let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    // ε-scaling: solve with a large ε first and halve it, warm-starting the potentials, so
    // that small ε converges in few iterations.
    let mut schedule = vec![epsilon];
    while schedule[schedule.len() - 1] < 1.0 {
        let next = schedule[schedule.len() - 1] * 2.0;
        schedule.push(next);
    }
    schedule.reverse();
    let last = schedule.len() - 1;
    const MAX_ITER: usize = 10_000;
    let mut final_err = f64::INFINITY;
    for (stage, &eps) in schedule.iter().enumerate() {
        let tol = if stage == last { 1e-6 } else { 1e-3 };
        let mut converged = false;
        for iter in 0..MAX_ITER {
            for i in 0..na {
                f[i] = eps * la - eps * lse(&mut (0..nb).map(|j| (g[j] - c[i * nb + j]) / eps));
            }
            for j in 0..nb {
                g[j] = eps * lb - eps * lse(&mut (0..na).map(|i| (f[i] - c[i * nb + j]) / eps));
            }
            if iter % 5 == 4 {
                // Row marginals (columns are exact after the g update), relative to 1/na.
                let err = (0..na)
                    .map(|i| {
                        let s: f64 = (0..nb)
                            .map(|j| ((f[i] + g[j] - c[i * nb + j]) / eps).exp())
                            .sum();
                        (s * na as f64 - 1.0).abs()
                    })
                    .fold(0.0f64, f64::max);
                final_err = err;
                if err <= tol {
                    converged = true;
                    break;
                }
            }
        }
        if stage == last && converged {
            return Ok((0..na * nb)
                .map(|k| ((f[k / nb] + g[k % nb] - c[k]) / eps).exp())
                .collect());
        }
    }
    Err(OtError::NotConverged {
        epsilon,
        iterations: MAX_ITER,
        error: final_err,
        tol: 1e-6,
    })
}

impl RealTimeParams {
    /// Each cell's time point and the time points in order: the categories of a categorical
    /// (or string) column in their stored order, or the distinct values of a numeric column in
    /// increasing order, labelled as pandas prints floats (`10.0`, `10.5`), so that moscot's
    /// coupling keys (`tmap_10_105`) are found. (CellRank asks for a categorical column.)
    fn time_points(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(Vec<Option<String>>, Vec<String>), KernelError> {
        let missing = |source| KernelError::MissingInput {
            kernel: NAME,
            what: "experimental time points".into(),
            source: Box::new(source),
            hint: "set `time_key` to a categorical or numeric obs column of time points".into(),
        };
        match cells.obs_labels(&self.time_key) {
            Ok(labels) => {
                let times = cells.obs_categories(&self.time_key).unwrap_or_default();
                Ok((labels, times))
            }
            Err(not_labels) => {
                let values = cells
                    .obs_f64(&self.time_key)
                    .map_err(|_| missing(not_labels))?;
                let label = |v: f64| v.is_finite().then(|| format!("{v:?}"));
                let mut distinct: Vec<f64> =
                    values.iter().copied().filter(|v| v.is_finite()).collect();
                distinct.sort_by(f64::total_cmp);
                distinct.dedup();
                Ok((
                    values.into_iter().map(label).collect(),
                    distinct.into_iter().filter_map(label).collect(),
                ))
            }
        }
    }

    fn threshold_value(&self, couplings: &[(Vec<f64>, usize, usize)]) -> Vec<f64> {
        let row_max_min = |p: &[f64], na: usize, nb: usize| {
            (0..na)
                .map(|i| p[i * nb..(i + 1) * nb].iter().copied().fold(0.0, f64::max))
                .fold(f64::INFINITY, f64::min)
        };
        match self.threshold {
            Threshold::None => vec![0.0; couplings.len()],
            Threshold::Auto => {
                let t = couplings
                    .iter()
                    .map(|(p, a, b)| row_max_min(p, *a, *b))
                    .fold(f64::INFINITY, f64::min);
                vec![t; couplings.len()]
            }
            Threshold::AutoLocal => couplings
                .iter()
                .map(|(p, a, b)| row_max_min(p, *a, *b))
                .collect(),
            Threshold::Percentile(q) => couplings
                .iter()
                .map(|(p, _, _)| {
                    let mut s = p.clone();
                    s.sort_by(f64::total_cmp);
                    let pos = q / 100.0 * (s.len() - 1) as f64;
                    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
                })
                .collect(),
        }
    }
}

impl Leaf for RealTimeParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        Some(Direction::Forward)
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(KernelError::InvalidParam {
                kernel: NAME,
                name: "epsilon",
                value: self.epsilon.to_string(),
                expected: "a positive number".into(),
            });
        }
        if let Threshold::Percentile(q) = self.threshold {
            if !(0.0..=100.0).contains(&q) {
                return Err(KernelError::InvalidParam {
                    kernel: NAME,
                    name: "threshold",
                    value: q.to_string(),
                    expected: "a percentile in [0, 100]".into(),
                });
            }
        }
        Ok(())
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let n = cells.n_cells();
        let (labels, mut times) = self.time_points(cells)?;
        if times.is_empty() {
            for l in labels.iter().flatten() {
                if !times.contains(l) {
                    times.push(l.clone());
                }
            }
        }
        if times.len() < 2 {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("obs[\"{}\"]", self.time_key),
                detail: format!("needs at least 2 time points, found {}", times.len()),
            });
        }
        if let Some(i) = labels.iter().position(Option::is_none) {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("obs[\"{}\"]", self.time_key),
                detail: format!("cell {i} has no time point"),
            });
        }
        let groups: Vec<Vec<usize>> = times
            .iter()
            .map(|t| {
                (0..n)
                    .filter(|&i| labels[i].as_deref() == Some(t.as_str()))
                    .collect()
            })
            .collect();
        // Couplings between consecutive time points.
        let mut emb: Option<DenseMatrix> = None;
        let mut couplings = Vec::new();
        for k in 0..times.len() - 1 {
            let (a, b) = (&groups[k], &groups[k + 1]);
            let key = format!(
                "{}{}_{}",
                self.couplings_prefix,
                key_label(&times[k]),
                key_label(&times[k + 1])
            );
            let pre = cells
                .uns_matrix(&key)
                .map_err(|source| KernelError::MissingInput {
                    kernel: NAME,
                    what: format!("the coupling {} -> {}", times[k], times[k + 1]),
                    source: Box::new(source),
                    hint: "precomputed couplings are optional: remove the entry to compute the coupling by optimal transport".into(),
                })?;
            let p = match pre {
                Some(m) => {
                    if (m.nrows(), m.ncols()) != (a.len(), b.len()) {
                        return Err(KernelError::InvalidInput {
                            kernel: NAME,
                            what: format!("uns[\"{key}\"]"),
                            detail: format!(
                                "shape {} x {}, expected {} x {} (cells of {} x cells of {})",
                                m.nrows(),
                                m.ncols(),
                                a.len(),
                                b.len(),
                                times[k],
                                times[k + 1]
                            ),
                        });
                    }
                    m.to_f64()
                }
                None => {
                    let e: &DenseMatrix = match emb {
                        Some(ref e) => e,
                        None => {
                            let e = cells.obsm(&self.basis).map_err(|source| {
                                KernelError::MissingInput {
                                    kernel: NAME,
                                    what: "an embedding for optimal transport".into(),
                                    source: Box::new(source),
                                    hint: "compute a PCA (`cellfate preprocess`) or provide couplings in uns".into(),
                                }
                            })?;
                            if let Some(((row, col, value), count)) = e.non_finite() {
                                return Err(KernelError::InvalidInput {
                                    kernel: NAME,
                                    what: format!("obsm[\"{}\"]", self.basis),
                                    detail: format!(
                                        "{count} NaN or infinite values (the first {value} at cell {row}, component {col}); the embedding must be finite"
                                    ),
                                });
                            }
                            emb.insert(e)
                        }
                    };
                    let rows = |ix: &[usize]| -> Vec<Vec<f64>> {
                        ix.iter()
                            .map(|&i| {
                                let mut r = Vec::new();
                                e.row_into(i, &mut r);
                                r
                            })
                            .collect()
                    };
                    sinkhorn(&rows(a), &rows(b), self.epsilon).map_err(|source| {
                        KernelError::OptimalTransport {
                            kernel: NAME,
                            from: times[k].clone(),
                            to: times[k + 1].clone(),
                            source,
                        }
                    })?
                }
            };
            couplings.push((p, a.len(), b.len()));
        }
        let thr = self.threshold_value(&couplings);
        let mut trip: Vec<(usize, usize, f64)> = Vec::new();
        for (k, (p, na, nb)) in couplings.iter().enumerate() {
            let (a, b) = (&groups[k], &groups[k + 1]);
            for i in 0..*na {
                let row = &p[i * nb..(i + 1) * nb];
                let kept: Vec<(usize, f64)> = row
                    .iter()
                    .copied()
                    .enumerate()
                    .filter(|(_, v)| *v >= thr[k] && *v > 0.0)
                    .collect();
                let s: f64 = kept.iter().map(|x| x.1).sum();
                if s > 0.0 {
                    for (j, v) in kept {
                        trip.push((a[i], b[j], v / s));
                    }
                } else {
                    for &bj in b {
                        trip.push((a[i], bj, 1.0 / *nb as f64));
                    }
                }
            }
        }
        // Self-transitions of the last time point.
        let last = &groups[times.len() - 1];
        // `auto` resolves to what it used; the effective spec records that.
        let (self_transitions, conn) = match self.self_transitions {
            SelfTransitions::Auto => match cells.graph(&self.conn_key) {
                Err(SourceError::Missing { .. }) => (SelfTransitions::Diagonal, None),
                Ok(g) => (
                    SelfTransitions::Connectivities,
                    Some(check_graph(NAME, cells, &self.conn_key, g)?),
                ),
                // Any other failure: read again for the error naming the fix.
                Err(_) => (
                    SelfTransitions::Connectivities,
                    Some(read_graph(NAME, cells, &self.conn_key)?),
                ),
            },
            SelfTransitions::Connectivities => (
                SelfTransitions::Connectivities,
                Some(read_graph(NAME, cells, &self.conn_key)?),
            ),
            other => (other, None),
        };
        match conn {
            None if self_transitions == SelfTransitions::Uniform => {
                for &i in last {
                    trip.extend(last.iter().map(|&j| (i, j, 1.0 / last.len() as f64)));
                }
            }
            None => trip.extend(last.iter().map(|&i| (i, i, 1.0))),
            Some(conn) => {
                let sub: Csr = conn.submatrix(last, last);
                let q = sub.col_sums();
                for (li, &i) in last.iter().enumerate() {
                    let (cols, vals) = sub.row(li);
                    let w: Vec<(usize, f64)> = cols
                        .iter()
                        .zip(vals)
                        .map(|(&lj, &v)| (lj as usize, v / q[li] / q[lj as usize]))
                        .filter(|x| x.1.is_finite() && x.1 > 0.0)
                        .collect();
                    if w.is_empty() {
                        trip.push((i, i, 1.0));
                    } else {
                        trip.extend(w.into_iter().map(|(lj, v)| (i, last[lj], v)));
                    }
                }
            }
        }
        let m = Csr::from_triplets(n, n, &trip).map_err(|source| KernelError::Sparse {
            kernel: NAME,
            source,
        })?;
        let transition = to_transition(NAME, m, Direction::Forward)?;
        let effective = Self {
            self_transitions,
            ..self.clone()
        };
        Ok((transition, effective))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinkhorn_marginals_are_uniform() {
        let x: Vec<Vec<f64>> = (0..7)
            .map(|i| vec![i as f64, (i * i) as f64 * 0.1])
            .collect();
        let y: Vec<Vec<f64>> = (0..5).map(|i| vec![i as f64 * 1.3, 1.0]).collect();
        let p = sinkhorn(&x, &y, 0.1).unwrap();
        for i in 0..7 {
            let s: f64 = p[i * 5..(i + 1) * 5].iter().sum();
            assert!((s - 1.0 / 7.0).abs() < 1e-7);
        }
        for j in 0..5 {
            let s: f64 = (0..7).map(|i| p[i * 5 + j]).sum();
            assert!((s - 0.2).abs() < 1e-8);
        }
        // Typed errors, not panics, on bad inputs.
        assert_eq!(
            sinkhorn(&[], &y, 0.1),
            Err(OtError::Empty { rows: 0, cols: 5 })
        );
        assert_eq!(
            sinkhorn(&x, &[vec![1.0]], 0.1),
            Err(OtError::DimensionMismatch {
                rows_dim: 2,
                cols_dim: 1
            })
        );
        let nan = vec![vec![f64::NAN, 0.0]];
        assert_eq!(
            sinkhorn(&x, &nan, 0.1),
            Err(OtError::NonFiniteCost { row: 0, col: 0 })
        );
    }
}
