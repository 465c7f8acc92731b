//! CFLARE (Clustering and Filtering Left And Right Eigenvectors; CellRank 1, still shipped in
//! CellRank 2): terminal states from the dominant left and right eigenvectors.
//!
//! 1. The `k` eigenvalues with largest real part of `T`, with right eigenvectors `V_r` (of `T`)
//!    and left eigenvectors `V_l` (of `Tᵀ`), computed from sorted partial Schur forms.
//! 2. `use` = the first `eigengap + 1` eigenvectors (or a given number).
//! 3. Filter: keep cells with `|Re V_l[i, j]|` ≥ the `percentile`-th percentile of its column
//!    for at least one used column `j`.
//! 4. Cluster the kept rows of `Re V_r[:, use]` with k-means (`len(use)` clusters; k-means++
//!    seeding with an explicit seed — CellRank's k-means is unseeded, its Leiden option is
//!    not implemented here).
//! 5. Terminal-state probability: `|Re V_l[:, use]|` min–max scaled per column, divided by
//!    `Re λ_j`, summed over columns and divided by its maximum.

use faer::Mat;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use cellfate_kernels::TransitionMatrix;

use crate::gpcca::eigengap;
use crate::schur::{dominant_schur_op, SchurError, Which};

/// Errors of CFLARE.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CflareError {
    /// The sorted Schur form the eigenvectors come from failed.
    #[error("CFLARE: {which} eigenvectors: {source}")]
    Schur {
        /// `right` (of `T`) or `left` (of `Tᵀ`).
        which: &'static str,
        /// The decomposition's error.
        source: SchurError,
    },
    /// The eigendecomposition of the small projected matrix did not converge.
    #[error("CFLARE: {which} eigenvectors: the eigendecomposition of the projected {size} x {size} matrix did not converge")]
    EigenNotConverged {
        /// `right` or `left`.
        which: &'static str,
        /// Size of the projected matrix.
        size: usize,
    },
    /// A parameter out of its range.
    #[error("CFLARE: {parameter} = {got} is invalid: expected {expected}")]
    Parameter {
        /// The parameter.
        parameter: &'static str,
        /// What is allowed.
        expected: String,
        /// What was given.
        got: String,
    },
    /// The percentile filter kept fewer cells than clusters.
    #[error("CFLARE: filtering left only {kept} cell(s) for {n_clusters} clusters{}; lower the percentile or the number of clusters", .percentile.map(|p| format!(" (percentile {p})")).unwrap_or_default())]
    TooFewCells {
        /// Cells kept by the filter (all cells without a filter).
        kept: usize,
        /// Clusters requested.
        n_clusters: usize,
        /// The percentile used (`None`: no filter).
        percentile: Option<f64>,
    },
}

/// Options of CFLARE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CflareOptions {
    /// Number of eigenvectors computed.
    pub k: usize,
    /// Number of eigenvectors used (`None`: eigengap + 1).
    pub use_k: Option<usize>,
    /// Percentile filter on the left eigenvectors (`None`: no filter).
    pub percentile: Option<f64>,
    /// Number of k-means clusters (`None`: `use_k`, plus one without the filter).
    pub n_clusters: Option<usize>,
    /// Eigengap parameter.
    pub alpha: f64,
    /// Seed of the k-means++ initialisation.
    pub seed: u64,
}

impl Default for CflareOptions {
    fn default() -> Self {
        Self {
            k: 20,
            use_k: None,
            percentile: Some(98.0),
            n_clusters: None,
            alpha: 1.0,
            seed: 0,
        }
    }
}

/// CFLARE's result.
#[derive(Clone, Debug, PartialEq)]
pub struct CflareResult {
    /// Cluster (terminal state) of each cell, `None` for cells filtered out.
    pub assignment: Vec<Option<usize>>,
    /// Number of clusters.
    pub n_clusters: usize,
    /// Terminal-state probability per cell in `[0, 1]`.
    pub probs: Vec<f64>,
    /// Eigenvalues `(re, im)`, sorted by decreasing real part.
    pub eigenvalues: Vec<(f64, f64)>,
    /// Eigengap index.
    pub eigengap: usize,
    /// Number of eigenvectors used.
    pub use_k: usize,
}

/// Eigenvalues `(re, im)` and the real parts of the eigenvectors (n × k).
type EigenPairs = (Vec<(f64, f64)>, DMatrix<f64>);

/// Eigenpairs (sorted by decreasing real part) from a sorted partial Schur form of `op`.
fn eigenvectors(
    n: usize,
    k: usize,
    op: &dyn Fn(&[f64]) -> Vec<f64>,
    which: &'static str,
) -> Result<EigenPairs, CflareError> {
    let (q, _) = dominant_schur_op(n, k, Which::LargestReal, op)
        .map_err(|source| CflareError::Schur { which, source })?;
    let m = q.ncols();
    let mut pq = DMatrix::zeros(n, m);
    for j in 0..m {
        let col: Vec<f64> = q.column(j).iter().copied().collect();
        pq.column_mut(j).copy_from_slice(&op(&col));
    }
    let r = q.transpose() * pq;
    let rm = Mat::<f64>::from_fn(m, m, |i, j| r[(i, j)]);
    let (s, re_col, u_real) =
        real_evd(&rm).ok_or(CflareError::EigenNotConverged { which, size: m })?;
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| s[b].0.total_cmp(&s[a].0).then(s[b].1.total_cmp(&s[a].1)));
    let vals: Vec<(f64, f64)> = order.iter().map(|&i| s[i]).collect();
    // Real parts of Q·U, each column normalised to unit norm (phase as computed).
    let ure = DMatrix::from_fn(m, m, |i, j| u_real[(i, re_col[order[j]])]);
    let mut v = q * ure;
    for j in 0..m {
        let nrm = v.column(j).norm();
        if nrm > 0.0 {
            v.column_mut(j).scale_mut(1.0 / nrm);
        }
    }
    Ok((vals, v))
}

/// Eigenvalues and vectors of the real matrix `a`, as faer's `Eigen::new_from_real` gives
/// them but with faer's parallelism fixed to sequential: `Eigen` takes the global setting (all
/// threads of the pool), and results must not depend on the thread count. Returns the
/// eigenvalues `(re, im)` (a complex pair as consecutive entries), for each the column of the
/// real eigenvector matrix holding its eigenvector's real part (a pair's vectors are
/// `U[:, j] ± i U[:, j+1]`: both real parts are column `j`), and that matrix. `None` when
/// the QR iteration does not converge.
#[allow(clippy::type_complexity)]
fn real_evd(a: &Mat<f64>) -> Option<(Vec<(f64, f64)>, Vec<usize>, Mat<f64>)> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd::{evd_real, evd_scratch, ComputeEigenvectors};
    let n = a.nrows();
    let par = faer::Par::Seq;
    let mut u = Mat::<f64>::zeros(n, n);
    let mut s_re = faer::diag::Diag::<f64>::zeros(n);
    let mut s_im = faer::diag::Diag::<f64>::zeros(n);
    let mut mem = MemBuffer::try_new(evd_scratch::<f64>(
        n,
        ComputeEigenvectors::No,
        ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ))
    .ok()?;
    evd_real(
        a.as_ref(),
        s_re.as_mut(),
        s_im.as_mut(),
        None,
        Some(u.as_mut()),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .ok()?;
    let (mut vals, mut re_col) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut j = 0;
    while j < n {
        if s_im[j] == 0.0 || j + 1 == n {
            vals.push((s_re[j], s_im[j]));
            re_col.push(j);
            j += 1;
        } else {
            vals.push((s_re[j], s_im[j]));
            vals.push((s_re[j], -s_im[j]));
            re_col.extend([j, j]);
            j += 2;
        }
    }
    Some((vals, re_col, u))
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Seeded k-means (k-means++ initialisation, Lloyd iterations). Returns labels.
pub fn kmeans(points: &[Vec<f64>], k: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    if n == 0 || k == 0 {
        return vec![0; n];
    }
    let k = k.min(n);
    let d2 = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centers: Vec<Vec<f64>> = vec![points[rng.random_range(0..n)].clone()];
    while centers.len() < k {
        let dist: Vec<f64> = points
            .iter()
            .map(|p| {
                centers
                    .iter()
                    .map(|c| d2(p, c))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let total: f64 = dist.iter().sum();
        if total <= 0.0 {
            centers.push(points[rng.random_range(0..n)].clone());
            continue;
        }
        let mut u = rng.random::<f64>() * total;
        let mut pick = n - 1;
        for (i, d) in dist.iter().enumerate() {
            if u < *d {
                pick = i;
                break;
            }
            u -= d;
        }
        centers.push(points[pick].clone());
    }
    let mut labels = vec![0usize; n];
    for _ in 0..300 {
        let mut changed = false;
        for (i, p) in points.iter().enumerate() {
            let best = (0..k).fold(0, |b, c| {
                if d2(p, &centers[c]) < d2(p, &centers[b]) {
                    c
                } else {
                    b
                }
            });
            if best != labels[i] {
                labels[i] = best;
                changed = true;
            }
        }
        let dim = points[0].len();
        let mut sums = vec![vec![0.0; dim]; k];
        let mut counts = vec![0usize; k];
        for (p, &l) in points.iter().zip(&labels) {
            counts[l] += 1;
            for (s, x) in sums[l].iter_mut().zip(p) {
                *s += x;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                centers[c] = sums[c].iter().map(|s| s / counts[c] as f64).collect();
            }
        }
        if !changed {
            break;
        }
    }
    labels
}

/// The dominant eigenvectors CFLARE clusters and filters (CellRank's
/// `compute_eigendecomposition`): eigenvalues of `T` sorted by decreasing real part, the real
/// parts of the right eigenvectors (of `T`) and of the left eigenvectors (of `Tᵀ`), n × k each.
#[derive(Clone, Debug, PartialEq)]
pub struct CflareEigen {
    /// Eigenvalues `(re, im)`, sorted by decreasing real part.
    pub eigenvalues: Vec<(f64, f64)>,
    /// Right eigenvectors (real parts, unit norm), n × k.
    pub right: DMatrix<f64>,
    /// Left eigenvectors (real parts, unit norm), n × k.
    pub left: DMatrix<f64>,
}

/// The `k` dominant left and right eigenvectors of `t` (`k` clamped to `[2, n − 1]`).
pub fn cflare_eigen(t: &TransitionMatrix, k: usize) -> Result<CflareEigen, CflareError> {
    let n = t.n_cells();
    let k = k.clamp(2, n.saturating_sub(1).max(2));
    let (vals_r, vr) = eigenvectors(n, k, &|x: &[f64]| t.mul_vec(x), "right")?;
    let (_, vl) = eigenvectors(n, k, &|x: &[f64]| t.mul_vec_transposed(x), "left")?;
    Ok(CflareEigen {
        eigenvalues: vals_r,
        right: vr,
        left: vl,
    })
}

/// Runs CFLARE on `t` ([`cflare_eigen`] with `opts.k`, then [`cflare_predict`]).
pub fn cflare(t: &TransitionMatrix, opts: &CflareOptions) -> Result<CflareResult, CflareError> {
    cflare_predict(&cflare_eigen(t, opts.k)?, opts)
}

/// CFLARE's terminal states from precomputed eigenvectors (`opts.k` is not used here).
pub fn cflare_predict(
    eig: &CflareEigen,
    opts: &CflareOptions,
) -> Result<CflareResult, CflareError> {
    let (vr, vl) = (&eig.right, &eig.left);
    let n = vr.nrows();
    let vals_r = eig.eigenvalues.clone();
    let re: Vec<f64> = vals_r.iter().map(|v| v.0).collect();
    let gap = eigengap(&re, opts.alpha);
    let use_k = opts
        .use_k
        .unwrap_or(gap + 1)
        .clamp(1, vr.ncols().min(vl.ncols()));
    let kept: Vec<usize> = match opts.percentile {
        Some(p) => {
            if !(0.0..=100.0).contains(&p) {
                return Err(CflareError::Parameter {
                    parameter: "percentile",
                    expected: "a value in [0, 100]".into(),
                    got: p.to_string(),
                });
            }
            let thr: Vec<f64> = (0..use_k)
                .map(|j| {
                    let mut col: Vec<f64> = vl.column(j).iter().map(|x| x.abs()).collect();
                    percentile(&mut col, p)
                })
                .collect();
            (0..n)
                .filter(|&i| (0..use_k).any(|j| vl[(i, j)].abs() >= thr[j]))
                .collect()
        }
        None => (0..n).collect(),
    };
    let n_clusters = opts
        .n_clusters
        .unwrap_or(use_k + usize::from(opts.percentile.is_none()));
    if kept.len() < n_clusters {
        return Err(CflareError::TooFewCells {
            kept: kept.len(),
            n_clusters,
            percentile: opts.percentile,
        });
    }
    let points: Vec<Vec<f64>> = kept
        .iter()
        .map(|&i| (0..use_k).map(|j| vr[(i, j)]).collect())
        .collect();
    let labels = kmeans(&points, n_clusters, opts.seed);
    let mut assignment = vec![None; n];
    for (&i, &l) in kept.iter().zip(&labels) {
        assignment[i] = Some(l);
    }
    // Terminal-state probabilities.
    let mut c = vec![0.0; n];
    for (j, &lambda) in re.iter().enumerate().take(use_k) {
        let col: Vec<f64> = vl.column(j).iter().map(|x| x.abs()).collect();
        let (lo, hi) = col
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        for i in 0..n {
            c[i] += (col[i] - lo) / span / lambda;
        }
    }
    let cmax = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let probs = c
        .iter()
        .map(|x| if cmax > 0.0 { x / cmax } else { 0.0 })
        .collect();
    Ok(CflareResult {
        assignment,
        n_clusters,
        probs,
        eigenvalues: vals_r,
        eigengap: gap,
        use_k,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellfate_kernels::{Csr, Direction};

    /// Four groups: 0 feeds 1 and 2 (nearly absorbing), 3 is transient towards 0.
    fn branching_chain() -> TransitionMatrix {
        let size = 40;
        let mut rng = cellfate_kernels::testing::Lcg::new(9);
        let mut trip = Vec::new();
        for g in 0..4 {
            for i in 0..size {
                let row = g * size + i;
                for j in 0..size {
                    if rng.uniform() < 0.3 || j == (i + 1) % size {
                        trip.push((row, g * size + j, 0.5 + rng.uniform()));
                    }
                }
                let out: &[(usize, f64)] = match g {
                    0 => &[(1, 1.0), (2, 1.0)],
                    3 => &[(0, 2.0)],
                    _ => &[(0, 0.002)],
                };
                for &(to, w) in out {
                    trip.push((row, to * size + i, w * size as f64 * 0.05));
                }
            }
        }
        TransitionMatrix::from_weights(
            Csr::from_triplets(4 * size, 4 * size, &trip).unwrap(),
            Direction::Forward,
        )
        .unwrap()
    }

    #[test]
    fn finds_the_two_absorbing_groups() {
        let t = branching_chain();
        let r = cflare(
            &t,
            &CflareOptions {
                k: 6,
                use_k: Some(2),
                percentile: Some(90.0),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.n_clusters, 2);
        // Each cluster lies inside group 1 or group 2 (the nearly absorbing ones).
        let mut groups = std::collections::BTreeSet::new();
        for (i, a) in r.assignment.iter().enumerate() {
            if let Some(c) = a {
                let g = i / 40;
                assert!(g == 1 || g == 2, "cell {i} (group {g}) in cluster {c}");
                groups.insert((g, *c));
            }
        }
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert!((r.eigenvalues[0].0 - 1.0).abs() < 1e-10);
        // Deterministic.
        assert_eq!(
            r,
            cflare(
                &t,
                &CflareOptions {
                    k: 6,
                    use_k: Some(2),
                    percentile: Some(90.0),
                    ..Default::default()
                }
            )
            .unwrap()
        );
    }
}
