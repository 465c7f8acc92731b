//! scVelo 0.3.4's gene-shared latent time (`tl.latent_time`) and the root and end cells it
//! starts from (`tl.terminal_states`), re-derived from their semantics
//! (`../shared/docs/velocity-and-figures-notes.md` §2):
//!
//! - [`terminal_states`]: the left eigenvectors of the backward (roots) and forward (ends)
//!   transition matrix without self-transitions whose eigenvalue is ≥ 1 − 10⁻³, each |·|
//!   zeroed below its 2nd percentile, clipped at its 98th and divided by its maximum; summed,
//!   smoothed by the directed kNN weights, clipped to [0, P98] and min–max scaled;
//! - [`latent_time`]: genes with a complete `fit_t` and likelihood ≥ 0.1; the first ≤ 4
//!   root cells (score > 1 − 10⁻³, by increasing Σ_genes `fit_t`; all cells in that order when
//!   none qualifies) re-root the gene times **cumulatively** ([`root_time`]); each gives a
//!   shared time ([`compute_shared_time`]); their mean is scaled; optional end cells add
//!   0.2·scale(mean(1 − shared)); finally the coherence smoothing: cells whose time disagrees
//!   with their neighbours' (confidence < 0.75) lose their **columns** of the kNN weights
//!   (not renormalised) and the time is smoothed once more and scaled.
//!
//! Deviations, on purpose: float64 throughout (scVelo's kNN weights are float32); the
//! eigenvectors come from a sorted Schur basis (ARPACK through
//! [`cellfate_estimators::schur::dominant_schur_op`], dense below 300 cells) instead of
//! SciPy's `eigs` with `np.random.seed(0)` starts: for a simple eigenvalue the processed
//! vector is the same (it is scale- and sign-invariant); for a repeated eigenvalue (several
//! closed classes) both pick an arbitrary basis of the eigenspace, and for a complex pair with
//! real part ≥ 1 − eps (not expected at eps = 10⁻³) we take the pair's first Schur vector where
//! scVelo takes the real part of ARPACK's arbitrarily-phased eigenvector. Ties in Σ `fit_t`
//! are ordered by cell index (NumPy's quicksort leaves them unspecified). Each eigen solve has
//! a work budget ([`TerminalStatesOptions::eigen_work`]) where SciPy restarts up to 10·n
//! times: past it, no root (or end) region is reported and latent time takes scVelo's own
//! no-root path. scVelo's
//! `velocity_pseudotime` is not computed here: it only matters with `min_corr_diffusion` or
//! `weight_diffusion`, for which the caller passes it.

use nalgebra::DMatrix;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use cellfate_estimators::graph::closed_sets_csr;
use cellfate_estimators::schur::{dominant_schur_op_with, KrylovOptions, SchurError, Which};
use cellfate_kernels::Csr;

use crate::dense::{RowMajor, Scalar};
use crate::error::VelocityError;
use crate::stats::{linspace, percentile, percentile_sorted};
use crate::velocity_graph::{transition_matrix, TransitionOptions};

/// scVelo's `scale(X)`: X − min, divided by the new max (when non-zero), both over the
/// finite values; non-finite values pass through shifted and scaled.
pub fn scale(x: &[f64]) -> Vec<f64> {
    let finite = x.iter().copied().filter(|v| v.is_finite());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    if min == f64::INFINITY {
        return x.to_vec();
    }
    let shifted: Vec<f64> = x.iter().map(|v| v - min).collect();
    let max = shifted
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if max != 0.0 {
        shifted.iter().map(|v| v / max).collect()
    } else {
        shifted
    }
}

/// Options of [`terminal_states`], scVelo's names and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TerminalStatesOptions {
    /// Eigenvalues ≥ 1 − eps count as 1 (`eps`, 1e-3).
    pub eps: f64,
    /// Self-transitions in the transition matrices (`self_transitions`, false).
    pub self_transitions: bool,
    /// The transition kernel's scale (`scale`, 10).
    pub scale: f64,
    /// Eigenvalues computed (SciPy `eigs(k=10)`).
    pub n_eigenvalues: usize,
    /// Work allowed to each eigen solve, in multiply-adds (non-zeros of the transition
    /// matrix × matrix-vector products; 2·10¹⁰, about 30 s on this project's 2-core test
    /// machine). A solve that has not converged to machine precision within it leaves its
    /// chain without detected cells (see [`TerminalStates::root_converged`]) instead of
    /// restarting for a long time (deviation: SciPy's `eigs` restarts up to 10·n times).
    pub eigen_work: f64,
}

impl Default for TerminalStatesOptions {
    fn default() -> Self {
        Self {
            eps: 1e-3,
            self_transitions: false,
            scale: 10.0,
            n_eigenvalues: 10,
            eigen_work: DEFAULT_EIGEN_WORK,
        }
    }
}

/// scVelo's `obs["root_cells"]` and `obs["end_points"]`, with the spectra they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct TerminalStates {
    /// Root score per cell in [0, 1] (all 0 when no eigenvalue of the backward matrix reaches
    /// 1 − eps).
    pub root_cells: Vec<f64>,
    /// End-point score per cell in [0, 1].
    pub end_points: Vec<f64>,
    /// The computed dominant eigenvalues `(re, im)` of the backward matrix, by decreasing
    /// real part.
    pub root_eigenvalues: Vec<(f64, f64)>,
    /// The same for the forward matrix.
    pub end_eigenvalues: Vec<(f64, f64)>,
    /// Eigenvectors that marked a root region (eigenvalue ≥ 1 − eps, non-zero on enough
    /// cells to survive scVelo's clip at the 98th percentile).
    pub n_root_regions: usize,
    /// The same for the ends.
    pub n_end_regions: usize,
    /// Recurrent classes of the backward and forward chains (eigenvalue 1's multiplicity);
    /// from two on, their stationary distributions are the eigenvectors used.
    pub n_classes: [usize; 2],
    /// False when the backward eigen solve did not converge within
    /// [`TerminalStatesOptions::eigen_work`]: no root region was found (`root_cells` all 0),
    /// so [`latent_time`] starts from the cells with the smallest Σ `fit_t`, scVelo's rule
    /// when it detects no root cell.
    pub root_converged: bool,
    /// The same for the forward solve and `end_points`.
    pub end_converged: bool,
    /// Arnoldi restarts of the backward and forward solves (0 for the dense path).
    pub restarts: [usize; 2],
}

/// Default of [`TerminalStatesOptions::eigen_work`].
pub const DEFAULT_EIGEN_WORK: f64 = 2e10;

/// Matrix-vector products per Arnoldi restart of [`dominant_schur_op_with`] with k = 10
/// eigenvalues (ncv − nev = 30 − 11).
const PRODUCTS_PER_RESTART: f64 = 19.0;

/// scVelo's `terminal_states(adata)` (no `groupby`): `graph`/`graph_neg` are the velocity
/// graph ([`crate::velocity_graph::velocity_graph`]); `distance_weights` are scVelo's
/// `get_connectivities(adata, "distances")`, i.e.
/// [`crate::velocity_graph::knn_weights`] of `obsp["distances"]`. (`verify_roots` acts only
/// with `var["gene_count_corr"]`, which scVelo's pipeline does not write; not implemented.)
pub fn terminal_states(
    graph: &Csr,
    graph_neg: Option<&Csr>,
    distance_weights: &Csr,
    opts: &TerminalStatesOptions,
) -> Result<TerminalStates, VelocityError> {
    let n = graph.nrows();
    if distance_weights.nrows() != n || distance_weights.ncols() != n {
        return Err(VelocityError::Dimension {
            what: "size of the kNN distance weights (cells)",
            expected: n,
            got: distance_weights.nrows().max(distance_weights.ncols()),
        });
    }
    let mut out = [
        (Vec::new(), Vec::new(), 0usize, true, 0usize, 0usize),
        (Vec::new(), Vec::new(), 0, true, 0, 0),
    ];
    for (slot, backward) in [(0usize, true), (1, false)] {
        let t = transition_matrix(
            graph,
            graph_neg,
            &TransitionOptions {
                scale: opts.scale,
                self_transitions: opts.self_transitions,
                use_negative_cosines: false,
                backward,
            },
        )?;
        let which = if backward { "backward" } else { "forward" };
        let classes = recurrent_classes(&t);
        let n_classes = classes.len();
        let spectrum = unit_eigenvectors(
            &t,
            &classes,
            opts.n_eigenvalues,
            opts.eps,
            opts.eigen_work,
            which,
        )?;
        let (eigenvalues, vecs, converged, restarts) = spectrum;
        // Σ over the processed eigenvectors, smoothed: W_d · Σ_k v_k. A vector non-zero on
        // fewer than ~2 % of the cells is 0 after the clip at its 98th percentile and marks no
        // region (deviation: scVelo divides by that 0, which makes every cell's score NaN).
        let mut sum = vec![0.0; n];
        let mut n_regions = 0;
        for v in &vecs {
            let p = process_eigenvector(v);
            if p.iter().any(|x| !x.is_finite()) {
                continue;
            }
            n_regions += 1;
            sum.iter_mut().zip(&p).for_each(|(s, x)| *s += x);
        }
        let smoothed = distance_weights.mul_vec(&sum);
        let ub = percentile(&smoothed, 98.0);
        let clipped: Vec<f64> = smoothed
            .iter()
            .map(|&x| {
                if x.is_nan() || ub.is_nan() {
                    f64::NAN
                } else {
                    x.max(0.0).min(ub)
                }
            })
            .collect();
        out[slot] = (
            scale(&clipped),
            eigenvalues,
            n_regions,
            converged,
            restarts,
            n_classes,
        );
    }
    let [(root_cells, root_eigenvalues, n_root_regions, root_converged, root_restarts, root_classes), (end_points, end_eigenvalues, n_end_regions, end_converged, end_restarts, end_classes)] =
        out;
    Ok(TerminalStates {
        root_cells,
        end_points,
        root_eigenvalues,
        end_eigenvalues,
        n_root_regions,
        n_end_regions,
        root_converged,
        end_converged,
        restarts: [root_restarts, end_restarts],
        n_classes: [root_classes, end_classes],
    })
}

/// scVelo's per-eigenvector processing (`eigs(perc=[2, 98])`): |v|, zero below its 2nd
/// percentile, clip at its 98th, divide by the maximum.
fn process_eigenvector(v: &[f64]) -> Vec<f64> {
    let a: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    let lb = percentile(&a, 2.0);
    let ub = percentile(&a, 98.0);
    let c: Vec<f64> = a
        .iter()
        .map(|&x| if x < lb { 0.0 } else { x.max(0.0).min(ub) })
        .collect();
    let mx = c.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    c.iter().map(|x| x / mx).collect()
}

/// Eigenvalues `(re, im)`, the eigenvectors kept, whether the solve converged, and its
/// Arnoldi restarts.
type Spectrum = (Vec<(f64, f64)>, Vec<Vec<f64>>, bool, usize);

/// The dominant eigenvalues of `Tᵀ` (largest real part, `k` of them, sorted descending) and
/// the left eigenvectors of `T` whose eigenvalue's real part is ≥ 1 − eps.
///
/// With two or more recurrent classes ([`recurrent_classes`]) eigenvalue 1 is repeated and
/// any basis of its eigenspace is as valid as another: ARPACK returns one that depends on its
/// start vector and on rounding (so on the BLAS build and its threads), and scVelo's score —
/// a sum over the basis of |vector| after per-vector clipping — changes with it. Deviation:
/// this takes the one canonical basis, each class's stationary distribution (non-negative,
/// deterministic), and no further eigenvectors (the eigenvalues in [1 − eps, 1) are not
/// computed then: they are what makes ARPACK stall behind a repeated 1).
///
/// Otherwise to machine precision (scVelo's `eigs`, `tol=0`), within `work` multiply-adds (at least
/// 10 restarts). Many nearly closed sets — noisy velocities at 10⁵ cells, or small closed
/// classes scattered along a trajectory — give eigenvalues so clustered at 1 that ARPACK
/// restarts for many minutes (0 of 11 converged after 200 restarts at 200,000 cells); and
/// where they are that clustered, the eigenvectors it would return are an arbitrary basis of
/// that cluster, not start regions. Past the budget this returns no eigenvector and
/// `converged = false` (not an error).
fn unit_eigenvectors(
    t: &Csr,
    classes: &[Vec<usize>],
    k: usize,
    eps: f64,
    work: f64,
    which: &'static str,
) -> Result<Spectrum, VelocityError> {
    let n = t.nrows();
    if n < 2 {
        return Ok((Vec::new(), Vec::new(), true, 0));
    }
    let tt = t.transpose();
    let op = |x: &[f64]| tt.mul_vec(x);
    let eig_err = |e: SchurError| VelocityError::Eigen {
        which,
        message: e.to_string(),
    };
    let budget = |nnz: usize, n: usize| KrylovOptions {
        tol: 0.0,
        max_restarts: ((work / ((nnz.max(n) as f64) * PRODUCTS_PER_RESTART)).floor() as usize)
            .clamp(10, 5000),
    };
    if classes.len() >= 2 {
        let mut vecs = Vec::with_capacity(classes.len());
        let mut converged = true;
        let mut restarts = 0;
        for class in classes {
            let sub = t.submatrix(class, class).transpose();
            let sub_op = |x: &[f64]| sub.mul_vec(x);
            let b = budget(sub.nnz(), class.len());
            match dominant_schur_op_with(class.len(), 1, Which::LargestReal, &sub_op, &b) {
                Ok(((q, _), r)) => {
                    restarts += r;
                    let mut v = vec![0.0; n];
                    for (k, &i) in class.iter().enumerate() {
                        v[i] = q[(k, 0)];
                    }
                    vecs.push(v);
                }
                Err(SchurError::NotConverged { iterations, .. }) => {
                    restarts += iterations;
                    converged = false;
                }
                Err(e) => return Err(eig_err(e)),
            }
        }
        return Ok((vec![(1.0, 0.0); classes.len()], vecs, converged, restarts));
    }
    let budget = budget(tt.nnz(), n);
    let ((q, eigenvalues), restarts) =
        match dominant_schur_op_with(n, k.min(n), Which::LargestReal, &op, &budget) {
            Ok(r) => r,
            Err(SchurError::NotConverged { iterations, .. }) => {
                return Ok((Vec::new(), Vec::new(), false, iterations));
            }
            Err(e) => return Err(eig_err(e)),
        };
    let m = q.ncols().min(eigenvalues.len());
    // R = Qᵀ Tᵀ Q, quasi-upper-triangular in the order of `eigenvalues`.
    let mut pq = DMatrix::<f64>::zeros(n, m);
    for j in 0..m {
        let col: Vec<f64> = q.column(j).iter().copied().collect();
        pq.column_mut(j).copy_from_slice(&op(&col));
    }
    let q = q.columns(0, m).into_owned();
    let r = q.transpose() * pq;
    // Block structure: a complex pair occupies two consecutive positions.
    let mut block_start = vec![true; m];
    let mut p = 0;
    while p < m {
        if eigenvalues[p].1 != 0.0 && p + 1 < m {
            block_start[p + 1] = false;
            p += 2;
        } else {
            p += 1;
        }
    }
    let mut vecs = Vec::new();
    for p in 0..m {
        let (re, im) = eigenvalues[p];
        if re < 1.0 - eps || re.is_nan() {
            continue;
        }
        if im != 0.0 {
            // A complex pair: one real vector of its invariant subspace, once per pair.
            if block_start[p] {
                vecs.push(q.column(p).iter().copied().collect());
            }
            continue;
        }
        let y = schur_eigenvector(&r, &block_start, p, re);
        let v = q.columns(0, p + 1) * nalgebra::DVector::from_vec(y);
        vecs.push(v.iter().copied().collect());
    }
    let mut sorted = eigenvalues;
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    Ok((sorted, vecs, true, restarts))
}

/// The recurrent classes of the chain `t`: its closed sets (strongly connected components no
/// positive entry leaves) except lone cells with a zero row (scVelo's transition matrix keeps
/// a zero row for a cell without neighbours in the graph's direction: the chain dies there,
/// it does not stay). Each carries one eigenvector of eigenvalue 1 of `Tᵀ`.
pub fn recurrent_classes(t: &Csr) -> Vec<Vec<usize>> {
    closed_sets_csr(t)
        .into_iter()
        .filter(|c| {
            c.len() > 1 || {
                let (_, vals) = t.row(c[0]);
                vals.iter().any(|&v| v > 0.0)
            }
        })
        .collect()
}

/// The eigenvector (first `p + 1` coordinates) of the quasi-upper-triangular `r` for the real
/// eigenvalue `lambda` at position `p`, by back substitution with y[p] = 1. A (near-)zero
/// pivot — a repeated eigenvalue — sets its coordinate to 0 (the vector then lies in the
/// span of the Schur vectors from its own position on).
fn schur_eigenvector(r: &DMatrix<f64>, block_start: &[bool], p: usize, lambda: f64) -> Vec<f64> {
    let tiny = 1e-10 * lambda.abs().max(1.0);
    let mut y = vec![0.0; p + 1];
    y[p] = 1.0;
    let rhs = |i: usize, y: &[f64]| -> f64 { -(i + 1..=p).map(|j| r[(i, j)] * y[j]).sum::<f64>() };
    let mut i = p;
    while i > 0 {
        let top = i - 1;
        if !block_start[top] && top >= 1 {
            // 2 × 2 block (top − 1, top).
            let (a0, a1) = (top - 1, top);
            let (b0, b1) = (rhs(a0, &y), rhs(a1, &y));
            let (m00, m01, m10, m11) = (
                r[(a0, a0)] - lambda,
                r[(a0, a1)],
                r[(a1, a0)],
                r[(a1, a1)] - lambda,
            );
            let det = m00 * m11 - m01 * m10;
            if det.abs() > tiny * tiny {
                y[a0] = (b0 * m11 - m01 * b1) / det;
                y[a1] = (m00 * b1 - m10 * b0) / det;
            }
            i = a0;
        } else {
            let piv = r[(top, top)] - lambda;
            y[top] = if piv.abs() > tiny {
                rhs(top, &y) / piv
            } else {
                0.0
            };
            i = top;
        }
    }
    y
}

/// scVelo's `root_time(t, root)` on an `n × g` row-major matrix of gene times: per gene,
/// cells at or after the root's time get t − t_root; earlier cells get t + max(t − t_root
/// over the later cells), i.e. they wrap to after the latest. Panics when `root` is not a row
/// of `t` (a contract violation; [`latent_time`] checks its root).
pub fn root_time(t: &[f64], n_genes: usize, root: usize) -> Vec<f64> {
    let mut out = t.to_vec();
    root_time_in_place(&mut out, n_genes, root);
    out
}

/// [`root_time`] overwriting `t` (parallel over cells; maxima are exact, so the result does
/// not depend on the number of threads).
fn root_time_in_place(t: &mut [f64], n_genes: usize, root: usize) {
    let g = n_genes.max(1);
    let tr: Vec<f64> = t[root * g..(root + 1) * g].to_vec();
    // Per gene: the largest t − t_root among the cells at or after the root (≥ 0: the root).
    let origin = t
        .par_chunks(g)
        .fold(
            || vec![0.0f64; g],
            |mut o, row| {
                for ((o, &x), &r) in o.iter_mut().zip(row).zip(&tr) {
                    if x >= r && x - r > *o {
                        *o = x - r;
                    }
                }
                o
            },
        )
        .reduce(
            || vec![0.0f64; g],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x = x.max(*y));
                a
            },
        );
    t.par_chunks_mut(g).for_each(|row| {
        for ((x, &r), &o) in row.iter_mut().zip(&tr).zip(&origin) {
            *x = if *x >= r { *x - r } else { *x + o };
        }
    });
}

/// scVelo's `compute_shared_time(t)` on an `n × g` row-major matrix of gene times (no NaN):
/// **subtracts the global minimum from `t` in place** (as scVelo does to its caller's
/// array); takes each cell's 15/20/25/30/35th percentiles over the genes; divides each
/// profile by its maximum over the cells; keeps the two profiles whose sorted values are
/// closest (squared error) to linspace(0, 1, n); returns their sum divided by its maximum.
pub fn compute_shared_time(t: &mut [f64], n_genes: usize) -> Vec<f64> {
    let g = n_genes.max(1);
    let n = t.len() / g;
    let min = t.par_iter().copied().reduce(|| f64::INFINITY, f64::min);
    t.par_iter_mut().for_each(|x| *x -= min);
    const PERC: [f64; 5] = [15.0, 20.0, 25.0, 30.0, 35.0];
    // Per cell (in parallel; each row independent): the five percentiles over the genes.
    let per_cell: Vec<[f64; 5]> = t
        .par_chunks(g)
        .map_init(
            || vec![0.0; g],
            |row, r| {
                // Only the order statistics up to the 35th percentile's upper neighbour are
                // needed: partition there, sort the prefix (the same values as a full sort).
                row.copy_from_slice(r);
                let top = ((PERC[4] / 100.0 * (g - 1) as f64).floor() as usize + 1).min(g - 1);
                row.select_nth_unstable_by(top, |a, b| a.total_cmp(b));
                row[..=top].sort_by(|a, b| a.total_cmp(b));
                PERC.map(|q| percentile_sorted(row, q))
            },
        )
        .collect();
    let mut tx: Vec<Vec<f64>> = (0..PERC.len())
        .map(|k| per_cell.iter().map(|p| p[k]).collect())
        .collect();
    for prof in tx.iter_mut() {
        let mut mx = prof.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if mx == 0.0 {
            mx = 1.0;
        }
        prof.iter_mut().for_each(|x| *x /= mx);
    }
    let lin = linspace(0.0, 1.0, n);
    let mse: Vec<f64> = tx
        .iter()
        .map(|prof| {
            let mut s = prof.clone();
            s.sort_by(|a, b| a.total_cmp(b));
            s.iter().zip(&lin).map(|(a, b)| (a - b) * (a - b)).sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..PERC.len()).collect();
    order.sort_by(|&a, &b| mse[a].total_cmp(&mse[b]));
    let shared: Vec<f64> = (0..n).map(|i| tx[order[0]][i] + tx[order[1]][i]).collect();
    let mx = shared.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    shared.iter().map(|x| x / mx).collect()
}

/// Where latent time starts (and optionally ends).
#[derive(Clone, Copy, Debug)]
pub enum RootPrior<'a> {
    /// One explicit root cell (scVelo's `root_key` in `uns`: the shared time from that cell,
    /// not re-scaled before the smoothing).
    Cell(usize),
    /// A root score per cell (scVelo's `obs["root_cells"]`, e.g.
    /// [`TerminalStates::root_cells`], or 1 on the cells of a root cluster): cells above
    /// 1 − 10⁻³ are roots, the first four by increasing Σ `fit_t` are used; when none
    /// qualifies, the four cells with the smallest Σ `fit_t` (scVelo's fallback).
    Scores(&'a [f64]),
}

/// Options of [`latent_time`], scVelo's names and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatentTimeOptions {
    /// Genes need `fit_likelihood` ≥ this (`min_likelihood`, 0.1; `None`: no cut).
    pub min_likelihood: Option<f64>,
    /// Coherence threshold of the smoothing (`min_confidence`, 0.75).
    pub min_confidence: f64,
    /// Keep only genes whose time correlates (Pearson) with the velocity pseudotime at least
    /// this much (`min_corr_diffusion`, none; needs the pseudotime).
    pub min_corr_diffusion: Option<f64>,
    /// Blend with the velocity pseudotime instead of the coherence smoothing
    /// (`weight_diffusion`, none; needs the pseudotime).
    pub weight_diffusion: Option<f64>,
    /// Multiply the result by this (`t_max`, none).
    pub t_max: Option<f64>,
}

impl Default for LatentTimeOptions {
    fn default() -> Self {
        Self {
            min_likelihood: Some(0.1),
            min_confidence: 0.75,
            min_corr_diffusion: None,
            weight_diffusion: None,
            t_max: None,
        }
    }
}

/// Inputs of [`latent_time`].
#[derive(Clone, Copy, Debug)]
pub struct LatentTimeInput<'a, T: Scalar = f64> {
    /// `layers["fit_t"]`, cells × genes (NaN for unfitted genes), as stored (`f32` or `f64`).
    pub fit_t: RowMajor<'a, T>,
    /// `var["fit_likelihood"]`, one per gene.
    pub likelihood: &'a [f64],
    /// scVelo's `get_connectivities(adata)`: [`crate::velocity_graph::knn_weights`] of
    /// `obsp["connectivities"]` (binarised, self loops, row-normalised).
    pub connectivities: &'a Csr,
    /// The root cell(s).
    pub roots: RootPrior<'a>,
    /// An end-point score per cell (scVelo's `end_key`), or none (scVelo's default).
    pub ends: Option<&'a [f64]>,
    /// `obs["velocity_pseudotime"]`, needed only by `min_corr_diffusion` and
    /// `weight_diffusion`.
    pub velocity_pseudotime: Option<&'a [f64]>,
}

/// The result of [`latent_time`].
#[derive(Clone, Debug, PartialEq)]
pub struct LatentTime {
    /// `obs["latent_time"]`.
    pub latent_time: Vec<f64>,
    /// The root cells used, in order (at most 4).
    pub roots: Vec<usize>,
    /// False when the root score had no cell above 1 − 10⁻³ and the cells with the smallest
    /// Σ `fit_t` were used instead (scVelo warns "No root cells detected").
    pub roots_detected: bool,
    /// The end cells used (empty without an end score).
    pub ends: Vec<usize>,
    /// Genes used.
    pub n_genes: usize,
    /// Cells whose columns were removed from the smoothing (confidence < `min_confidence`).
    pub n_low_confidence: usize,
}

/// Cells whose score exceeds 1 − 10⁻³ in the order `order` (NaN counts as 0), or all of
/// `order` when none does; with the flag "some qualified".
fn prior_cells(order: &[usize], scores: &[f64]) -> (Vec<usize>, bool) {
    let sel: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| {
            let s = scores[i];
            !s.is_nan() && s > 1.0 - 1e-3
        })
        .collect();
    if sel.is_empty() {
        (order.to_vec(), false)
    } else {
        (sel, true)
    }
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// scVelo's `latent_time(adata)` (see the module documentation for the steps).
pub fn latent_time<T: Scalar>(
    input: &LatentTimeInput<'_, T>,
    opts: &LatentTimeOptions,
) -> Result<LatentTime, VelocityError> {
    let ft = input.fit_t;
    let (n, g_all) = (ft.nrows(), ft.ncols());
    if input.likelihood.len() != g_all {
        return Err(VelocityError::Dimension {
            what: "fit_likelihood (one per gene of fit_t)",
            expected: g_all,
            got: input.likelihood.len(),
        });
    }
    let w = input.connectivities;
    if w.nrows() != n || w.ncols() != n {
        return Err(VelocityError::Dimension {
            what: "size of the connectivities (cells)",
            expected: n,
            got: w.nrows().max(w.ncols()),
        });
    }
    for (what, v) in [
        (
            "root scores (one per cell)",
            match input.roots {
                RootPrior::Scores(s) => Some(s),
                RootPrior::Cell(_) => None,
            },
        ),
        ("end scores (one per cell)", input.ends),
        (
            "velocity pseudotime (one per cell)",
            input.velocity_pseudotime,
        ),
    ] {
        if let Some(v) = v {
            if v.len() != n {
                return Err(VelocityError::Dimension {
                    what,
                    expected: n,
                    got: v.len(),
                });
            }
        }
    }
    if let RootPrior::Cell(c) = input.roots {
        if c >= n {
            return Err(VelocityError::CellIndex {
                index: c,
                n_cells: n,
            });
        }
    }
    let needs_vpt = opts.min_corr_diffusion.is_some() || opts.weight_diffusion.is_some();
    if needs_vpt && input.velocity_pseudotime.is_none() {
        return Err(VelocityError::Option {
            option: if opts.min_corr_diffusion.is_some() {
                "min_corr_diffusion"
            } else {
                "weight_diffusion"
            },
            message: "needs the velocity pseudotime, which was not given".into(),
        });
    }

    // Genes: complete fit_t, likelihood ≥ min_likelihood.
    let col_nan = ft.column_sums_are_nan();
    let mut genes: Vec<usize> = (0..g_all)
        .filter(|&j| !col_nan[j])
        .filter(|&j| opts.min_likelihood.is_none_or(|m| input.likelihood[j] >= m))
        .collect();
    // Each cell's sum over the genes, in gene order (no copy of the matrix: at 100,000 cells
    // × 2,000 genes a gathered copy is 1.6 GB).
    let t_sum: Vec<f64> = (0..n)
        .map(|i| {
            let row = ft.row(i);
            genes.iter().map(|&j| row[j].to_f64()).sum()
        })
        .collect();
    let mut by_sum: Vec<usize> = (0..n).collect();
    by_sum.sort_by(|&a, &b| t_sum[a].total_cmp(&t_sum[b]));
    if let (Some(min_corr), Some(vpt)) = (opts.min_corr_diffusion, input.velocity_pseudotime) {
        genes.retain(|&j| {
            let col: Vec<f64> = (0..n).map(|i| ft.row(i)[j].to_f64()).collect();
            pearson(&col, vpt) >= min_corr
        });
    }
    if genes.is_empty() {
        return Err(VelocityError::NoGenes {
            what: "the latent time",
        });
    }
    let g = genes.len();
    let mut t = ft.gather_columns(&genes);

    let (roots, roots_detected, mut lt) = match input.roots {
        RootPrior::Cell(c) => {
            root_time_in_place(&mut t, g, c);
            let lt = compute_shared_time(&mut t, g);
            (vec![c], true, lt)
        }
        RootPrior::Scores(s) => {
            let (mut roots, detected) = prior_cells(&by_sum, s);
            roots.truncate(4);
            let mut acc = vec![0.0; n];
            for &r in &roots {
                root_time_in_place(&mut t, g, r);
                let shared = compute_shared_time(&mut t, g);
                acc.iter_mut().zip(&shared).for_each(|(a, b)| *a += b);
            }
            let k = roots.len() as f64;
            acc.iter_mut().for_each(|a| *a /= k);
            (roots, detected, scale(&acc))
        }
    };
    let mut ends = Vec::new();
    if let Some(e) = input.ends {
        let rev: Vec<usize> = by_sum.iter().rev().copied().collect();
        let (mut fates, _) = prior_cells(&rev, e);
        fates.truncate(4);
        let mut acc = vec![0.0; n];
        for &f in &fates {
            root_time_in_place(&mut t, g, f);
            let shared = compute_shared_time(&mut t, g);
            acc.iter_mut().zip(&shared).for_each(|(a, b)| *a += 1.0 - b);
        }
        let k = fates.len() as f64;
        acc.iter_mut().for_each(|a| *a /= k);
        let end_part = scale(&acc);
        let mixed: Vec<f64> = lt.iter().zip(&end_part).map(|(a, b)| a + 0.2 * b).collect();
        lt = scale(&mixed);
        ends = fates;
    }

    // Coherence with the neighbours.
    let tc = w.mul_vec(&lt);
    let z =
        lt.iter().zip(&tc).map(|(a, b)| a * b).sum::<f64>() / tc.iter().map(|b| b * b).sum::<f64>();
    let mx = lt.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let low: Vec<bool> = lt
        .iter()
        .zip(&tc)
        .map(|(l, c)| {
            let conf = (1.0 - (l / mx - c * z / mx).abs()).powi(2);
            conf < opts.min_confidence
        })
        .collect();
    let n_low_confidence = low.iter().filter(|&&b| b).count();
    let smoothed = match (opts.weight_diffusion, input.velocity_pseudotime) {
        (Some(wd), Some(vpt)) => lt
            .iter()
            .zip(vpt)
            .zip(&low)
            .map(|((l, v), &lo)| if lo { *v } else { (1.0 - wd) * l + wd * v })
            .collect(),
        _ => {
            let masked: Vec<f64> = lt
                .iter()
                .zip(&low)
                .map(|(l, &lo)| if lo { 0.0 } else { *l })
                .collect();
            w.mul_vec(&masked)
        }
    };
    let mut latent_time = scale(&smoothed);
    if let Some(tm) = opts.t_max {
        latent_time.iter_mut().for_each(|x| *x *= tm);
    }
    Ok(LatentTime {
        latent_time,
        roots,
        roots_detected,
        ends,
        n_genes: g,
        n_low_confidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_time_wraps_earlier_cells_after_the_latest() {
        // One gene, times 0, 1, 2, 3; root at cell 2 (t = 2): after = 0, 1; origin = 1;
        // before: 0 + 1, 1 + 1.
        let t = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(root_time(&t, 1, 2), vec![1.0, 2.0, 0.0, 1.0]);
    }

    #[test]
    fn shared_time_of_one_uniform_gene_is_linear() {
        let n = 11;
        let mut t: Vec<f64> = (0..n).map(|i| 5.0 + i as f64).collect();
        let s = compute_shared_time(&mut t, 1);
        assert_eq!(t[0], 0.0, "global minimum subtracted in place");
        for (i, x) in s.iter().enumerate() {
            assert!((x - i as f64 / 10.0).abs() < 1e-12);
        }
    }

    #[test]
    fn shared_time_percentiles_equal_full_sort_percentiles() {
        // 40 cells × 23 genes of scrambled times: the partial sort gives NumPy's percentiles.
        let (n, g) = (40usize, 23usize);
        let t: Vec<f64> = (0..n * g)
            .map(|i| (i as f64 * 0.754_877_666).fract() * 20.0)
            .collect();
        let mut a = t.clone();
        let got = compute_shared_time(&mut a, g);
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let mut tx: Vec<Vec<f64>> = [15.0, 20.0, 25.0, 30.0, 35.0]
            .iter()
            .map(|&q| {
                (0..n)
                    .map(|i| {
                        let r: Vec<f64> = t[i * g..(i + 1) * g].iter().map(|x| x - min).collect();
                        percentile(&r, q)
                    })
                    .collect()
            })
            .collect();
        for p in tx.iter_mut() {
            let mx = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            p.iter_mut().for_each(|x| *x /= mx);
        }
        let lin = linspace(0.0, 1.0, n);
        let mut mse: Vec<(f64, usize)> = tx
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let mut s = p.clone();
                s.sort_by(|a, b| a.total_cmp(b));
                (s.iter().zip(&lin).map(|(a, b)| (a - b) * (a - b)).sum(), k)
            })
            .collect();
        mse.sort_by(|a, b| a.0.total_cmp(&b.0));
        let sum: Vec<f64> = (0..n).map(|i| tx[mse[0].1][i] + tx[mse[1].1][i]).collect();
        let mx = sum.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for (x, y) in got.iter().zip(&sum) {
            assert!((x - y / mx).abs() < 1e-15);
        }
    }

    #[test]
    fn scale_ignores_non_finite() {
        assert_eq!(scale(&[1.0, f64::NAN, 3.0])[2], 1.0);
        assert!(scale(&[1.0, f64::NAN, 3.0])[1].is_nan());
        assert_eq!(scale(&[2.0, 2.0]), vec![0.0, 0.0]);
    }

    /// 150 cliques of 8 cells, each leaking to the next with a probability of about 10⁻⁶
    /// (varying slightly; the last is closed): over a hundred eigenvalues within 10⁻⁵ of 1,
    /// finely spaced, like the backward velocity chain of 200,000 noisy cells.
    fn clustered_chain() -> Csr {
        let (groups, size) = (150usize, 8usize);
        let n = groups * size;
        let mut trip = Vec::new();
        for g in 0..groups {
            let leak = if g + 1 == groups {
                0.0
            } else {
                1e-6 * (1.0 + 0.37 * ((g * 7919) % 101) as f64 / 101.0)
            };
            for a in 0..size {
                let i = g * size + a;
                for b in 0..size {
                    if a != b {
                        trip.push((i, g * size + b, (1.0 - leak) / (size - 1) as f64));
                    }
                }
                if leak > 0.0 {
                    trip.push((i, (g + 1) * size + a, leak));
                }
            }
        }
        Csr::from_triplets(n, n, &trip).expect("chain")
    }

    /// 400 cells: `classes` closed cliques of `size` cells at the start, every other cell
    /// moving to its predecessor and to a cell of the cliques (so all mass ends in them).
    fn chain_with_classes(classes: usize, size: usize) -> Csr {
        let n = 400;
        let m = classes * size;
        let mut trip = Vec::new();
        for i in 0..n {
            if i < m {
                let start = i / size * size;
                for j in start..start + size {
                    if j != i {
                        trip.push((i, j, 1.0 / (size - 1) as f64));
                    }
                }
            } else {
                trip.push((i, i - 1, 0.5));
                trip.push((i, (i * 7) % m, 0.5));
            }
        }
        Csr::from_triplets(n, n, &trip).expect("chain")
    }

    #[test]
    fn several_closed_classes_give_their_stationary_distributions() {
        // Two closed classes of 40 cells (10 % each): eigenvalue 1 twice. The eigenvectors
        // are the classes' stationary distributions (uniform on a clique), whatever ARPACK
        // would have picked in their span, and both classes are root regions.
        let t = chain_with_classes(2, 40);
        let classes = recurrent_classes(&t);
        assert_eq!(
            classes,
            vec![(0..40).collect::<Vec<_>>(), (40..80).collect()]
        );
        let (eigenvalues, vecs, converged, _) =
            unit_eigenvectors(&t, &classes, 10, 1e-3, DEFAULT_EIGEN_WORK, "test").expect("ok");
        assert!(converged);
        assert_eq!(eigenvalues, vec![(1.0, 0.0); 2]);
        assert_eq!(vecs.len(), 2);
        for (v, class) in vecs.iter().zip(&classes) {
            let on: Vec<f64> = class.iter().map(|&i| v[i].abs()).collect();
            let mx = on.iter().copied().fold(0.0, f64::max);
            assert!(on.iter().all(|x| (x - mx).abs() <= 1e-12 * mx), "{on:?}");
            let off = (0..400).filter(|i| !class.contains(i)).map(|i| v[i].abs());
            assert!(off.fold(0.0, f64::max) == 0.0);
        }
        // Through terminal_states (the graph is the chain itself; no negative cosines).
        let wd = crate::velocity_graph::knn_weights(&t);
        let ts = terminal_states(&t.transpose(), None, &wd, &Default::default()).expect("ts");
        assert_eq!(ts.n_classes[0], 2);
        assert_eq!(ts.n_root_regions, 2);
        assert!(ts.root_converged);
        let top: Vec<usize> = (0..400)
            .filter(|&i| ts.root_cells[i] > 1.0 - 1e-3)
            .collect();
        assert!(!top.is_empty() && top.iter().all(|&i| i < 80), "{top:?}");
    }

    #[test]
    fn tiny_closed_classes_mark_no_region() {
        // Three closed pairs among 400 cells (scattered traps, as in the backward velocity
        // chain of a noisy simulation): each pair's distribution is 0 after the clip at the
        // 98th percentile, so no region — not NaN everywhere, as scVelo's division by 0 gives.
        let t = chain_with_classes(3, 2);
        let wd = crate::velocity_graph::knn_weights(&t);
        let ts = terminal_states(&t.transpose(), None, &wd, &Default::default()).expect("ts");
        assert_eq!(ts.n_classes[0], 3);
        assert_eq!(ts.n_root_regions, 0);
        assert!(
            ts.root_cells.iter().all(|&x| x == 0.0),
            "{:?}",
            &ts.root_cells[..8]
        );
    }

    #[test]
    fn an_eigen_solve_past_its_budget_reports_no_region_instead_of_restarting_on() {
        let t = clustered_chain();
        // 10 restarts' worth of work: the exact solve cannot separate the cluster in that.
        let work = (t.nnz() as f64) * PRODUCTS_PER_RESTART * 10.0;
        let (eigenvalues, vecs, converged, restarts) =
            unit_eigenvectors(&t, &recurrent_classes(&t), 10, 1e-3, work, "test")
                .expect("no error");
        assert!(!converged);
        // ARPACK counts the restart that found the budget spent.
        assert!((10..=11).contains(&restarts), "{restarts}");
        assert!(eigenvalues.is_empty() && vecs.is_empty());
        // The same through terminal_states: both chains flagged, no cell scored, and latent
        // time falls back to the smallest Σ fit_t (scVelo's rule when no root is detected).
        let n = t.nrows();
        let graph = Csr::from_triplets(
            n,
            n,
            &(0..n)
                .flat_map(|i| {
                    let (cols, vals) = t.row(i);
                    cols.iter()
                        .zip(vals)
                        .map(move |(&j, &v)| (i, j as usize, v))
                        .collect::<Vec<_>>()
                })
                .filter(|&(i, j, _)| i != j)
                .collect::<Vec<_>>(),
        )
        .expect("graph");
        let wd = crate::velocity_graph::knn_weights(&graph);
        let ts = terminal_states(
            &graph,
            None,
            &wd,
            &TerminalStatesOptions {
                eigen_work: work,
                ..Default::default()
            },
        )
        .expect("ts");
        assert!(!ts.root_converged && !ts.end_converged);
        assert_eq!(ts.n_root_regions, 0);
        assert!(ts.root_cells.iter().all(|&x| x == 0.0));
        assert!(ts.end_points.iter().all(|&x| x == 0.0));
        let g = 3;
        let fit_t: Vec<f64> = (0..n * g)
            .map(|k| ((k / g) as f64 + 7.0) % n as f64)
            .collect();
        let lt = latent_time(
            &LatentTimeInput {
                fit_t: RowMajor::new("fit_t", &fit_t, n, g).expect("fit_t"),
                likelihood: &[1.0; 3],
                connectivities: &wd,
                roots: RootPrior::Scores(&ts.root_cells),
                ends: None,
                velocity_pseudotime: None,
            },
            &LatentTimeOptions::default(),
        )
        .expect("latent time");
        assert!(!lt.roots_detected);
        assert_eq!(lt.roots[0], n - 7, "{:?}", lt.roots);
    }

    #[test]
    fn schur_back_substitution_gives_eigenvectors() {
        // Upper triangular with eigenvalues 1, 0.5, 0.2.
        let r = DMatrix::from_row_slice(3, 3, &[1.0, 0.3, 0.1, 0.0, 0.5, 0.4, 0.0, 0.0, 0.2]);
        let bs = [true, true, true];
        for p in 0..3 {
            let lam = r[(p, p)];
            let mut y = schur_eigenvector(&r, &bs, p, lam);
            y.resize(3, 0.0);
            let yv = nalgebra::DVector::from_vec(y.clone());
            let ry = &r * &yv;
            for i in 0..3 {
                assert!((ry[i] - lam * y[i]).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn terminal_states_find_the_start_and_end_of_a_chain() {
        // A directed chain 0 → 1 → … → 19 as a velocity graph on a line kNN.
        let n: usize = 20;
        let mut gp = Vec::new();
        let mut gn = Vec::new();
        let mut d = Vec::new();
        for i in 0..n {
            for j in [i.wrapping_sub(1), i + 1] {
                if j < n {
                    d.push((i, j, 1.0));
                    if j > i {
                        gp.push((i, j, 0.9));
                    } else {
                        gn.push((i, j, -0.9));
                    }
                }
            }
        }
        let graph = Csr::from_triplets(n, n, &gp).expect("g");
        let graph_neg = Csr::from_triplets(n, n, &gn).expect("gn");
        let wd = crate::velocity_graph::knn_weights(&Csr::from_triplets(n, n, &d).expect("d"));
        let ts = terminal_states(
            &graph,
            Some(&graph_neg),
            &wd,
            &TerminalStatesOptions::default(),
        )
        .expect("ts");
        assert_eq!(ts.n_root_regions, 1);
        assert_eq!(ts.n_end_regions, 1);
        assert_eq!(ts.root_cells[0], 1.0);
        assert_eq!(ts.end_points[n - 1], 1.0);
        assert!(ts.root_cells[n - 1] < 1e-6 && ts.end_points[0] < 1e-6);
    }

    #[test]
    fn latent_time_orders_cells_along_gene_times() {
        // 30 cells, 4 genes with times increasing along the cells; a chain kNN.
        let n: usize = 30;
        let g = 4;
        let t: Vec<f64> = (0..n)
            .flat_map(|i| (0..g).map(move |j| i as f64 * (1.0 + 0.1 * j as f64)))
            .collect();
        let mut conn = Vec::new();
        for i in 0..n {
            for j in [i.wrapping_sub(1), i + 1] {
                if j < n {
                    conn.push((i, j, 1.0));
                }
            }
        }
        let w = crate::velocity_graph::knn_weights(&Csr::from_triplets(n, n, &conn).expect("c"));
        let lik = vec![0.5; g];
        let zeros = vec![0.0; n];
        let mut first = vec![0.0; n];
        first[0] = 1.0;
        let input = LatentTimeInput {
            fit_t: RowMajor::new("fit_t", &t, n, g).expect("t"),
            likelihood: &lik,
            connectivities: &w,
            roots: RootPrior::Scores(&first),
            ends: None,
            velocity_pseudotime: None,
        };
        let lt = latent_time(&input, &LatentTimeOptions::default()).expect("lt");
        assert!(lt.roots_detected);
        assert_eq!(lt.roots, vec![0]);
        assert!(
            lt.latent_time.windows(2).all(|w| w[1] >= w[0]),
            "{:?}",
            lt.latent_time
        );
        // No root above 1 − 1e-3: the four smallest Σ fit_t, re-rooted cumulatively.
        let fallback = latent_time(
            &LatentTimeInput {
                roots: RootPrior::Scores(&zeros),
                ..input
            },
            &LatentTimeOptions::default(),
        )
        .expect("lt");
        assert!(!fallback.roots_detected);
        assert_eq!(fallback.roots, vec![0, 1, 2, 3]);
        // An end score: the cells with the largest Σ fit_t above 1 − 1e-3, blended in.
        let mut last = vec![0.0; n];
        last[n - 1] = 1.0;
        let with_end = latent_time(
            &LatentTimeInput {
                ends: Some(&last),
                ..input
            },
            &LatentTimeOptions::default(),
        )
        .expect("lt");
        assert_eq!(with_end.ends, vec![n - 1]);
        assert!(with_end.latent_time.iter().all(|x| (0.0..=1.0).contains(x)));
        // Options that need the velocity pseudotime are refused without it.
        let refused = latent_time(
            &input,
            &LatentTimeOptions {
                weight_diffusion: Some(0.2),
                ..Default::default()
            },
        );
        assert!(matches!(refused, Err(VelocityError::Option { .. })));
        let one = latent_time(
            &LatentTimeInput {
                roots: RootPrior::Cell(0),
                ..input
            },
            &LatentTimeOptions::default(),
        )
        .expect("lt");
        assert_eq!(one.roots, vec![0]);
        assert_eq!(one.latent_time[0], 0.0);
        assert_eq!(one.latent_time[n - 1], 1.0);
        // No complete gene (a NaN in every column): an error naming the latent time, not a
        // panic (the per-cell sums once came out empty and the sort indexed past them).
        let mut holes = t.clone();
        for j in 0..g {
            holes[j * g + j] = f64::NAN;
        }
        let none = latent_time(
            &LatentTimeInput {
                fit_t: RowMajor::new("fit_t", &holes, n, g).expect("t"),
                ..input
            },
            &LatentTimeOptions::default(),
        );
        assert!(
            matches!(
                none,
                Err(VelocityError::NoGenes {
                    what: "the latent time"
                })
            ),
            "{none:?}"
        );
        // Likewise when every gene's likelihood is below the minimum.
        let low = vec![0.0; g];
        let unlikely = latent_time(
            &LatentTimeInput {
                likelihood: &low,
                ..input
            },
            &LatentTimeOptions::default(),
        );
        assert!(
            matches!(unlikely, Err(VelocityError::NoGenes { .. })),
            "{unlikely:?}"
        );
    }
}
