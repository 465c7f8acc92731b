//! scVelo 0.3.4's velocity graph (`tl.velocity_graph`) and its transition matrix
//! (`tl.transition_matrix`), re-derived from their semantics
//! (`../shared/docs/velocity-and-figures-notes.md` §3.1–3.2):
//!
//! - **neighbours** ([`Neighbors::from_distances`], scVelo's `get_indices`): the `k` nearest
//!   neighbours of each cell in `obsp["distances"]`, `k` the smallest number of stored
//!   distances of any row (`k − 1` of scanpy's `n_neighbors`, no self);
//! - **candidates** (`get_iterative_indices`): with `n_recurse_neighbors = 2`,
//!   {i} ∪ N(i) ∪ N(N(i)), sorted and deduplicated;
//! - **cosines**: V row-centred over the genes; for each candidate j, the displacement
//!   X_j − X_i (optionally `sign·√|·|`), row-centred over the genes, and its cosine with V_i
//!   (a Pearson correlation); 0/0 (the cell itself, identical cells) gives 0, and zeros are
//!   not stored;
//! - **outputs**: the positive part as `graph`, the negative part as `graph_neg`, and
//!   `velocity_self_transition` = clip(P98(rowmax) − rowmax, 0, 1).
//!
//! Deviations, on purpose: float64 throughout (scVelo computes X, V and the cosines in
//! float32: expect differences of order 1e-6 in the cosines); when a row of the distances
//! holds more than `k` entries, ties among the `k`-th smallest distances are broken by column
//! index (NumPy's quicksort order is unspecified there). `approx=True` (30 PCs),
//! `random_neighbors_at_max`, `tkey` and `compute_uncertainties` are not implemented.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use cellfate_kernels::Csr;

use crate::dense::{centre_rows, norm, RowMajor, Scalar};
use crate::error::VelocityError;
use crate::stats::percentile;

/// Each cell's `k` nearest neighbours (no self), as scVelo's `get_indices` extracts them from
/// `obsp["distances"]`: row `i` holds the column indices of its `k` kept distances in
/// increasing column order.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbors {
    k: usize,
    indices: Vec<u32>,
}

impl Neighbors {
    /// scVelo's `get_indices(dist, n_neighbors)`: `k` = the smallest number of stored
    /// distances in any row (at most `n_neighbors` when given); rows with more keep their `k`
    /// smallest distances (ties by column index). A stored distance of exactly 0 counts as a
    /// neighbour (scVelo adds 1e-6 before counting); negative distances are not neighbours.
    ///
    /// Errors when a cell has no neighbour with a positive distance (scVelo's check in
    /// `velocity_graph`: "Your neighbor graph seems to be corrupted").
    pub fn from_distances(
        distances: &Csr,
        n_neighbors: Option<usize>,
    ) -> Result<Self, VelocityError> {
        let n = distances.nrows();
        if distances.ncols() != n {
            return Err(VelocityError::Dimension {
                what: "columns of the distances (one per cell)",
                expected: n,
                got: distances.ncols(),
            });
        }
        let mut k = usize::MAX;
        for i in 0..n {
            let (_, d) = distances.row(i);
            if !d.iter().any(|&x| x > 0.0) {
                return Err(VelocityError::NoNeighbors { cell: i });
            }
            k = k.min(d.iter().filter(|&&x| x + 1e-6 > 0.0).count());
        }
        if let Some(m) = n_neighbors {
            k = k.min(m);
        }
        if n == 0 {
            k = 0;
        }
        let mut indices = Vec::with_capacity(n * k);
        let mut row: Vec<(f64, u32)> = Vec::new();
        for i in 0..n {
            let (c, d) = distances.row(i);
            row.clear();
            row.extend(
                d.iter()
                    .zip(c)
                    .filter(|(&x, _)| x + 1e-6 > 0.0)
                    .map(|(&x, &j)| (x + 1e-6, j)),
            );
            if row.len() > k {
                // Stable: equal distances keep increasing column order.
                row.sort_by(|a, b| a.0.total_cmp(&b.0));
                row.truncate(k);
                row.sort_by_key(|&(_, j)| j);
            }
            indices.extend(row.iter().map(|&(_, j)| j));
        }
        Ok(Self { k, indices })
    }

    /// Builds the neighbour table from explicit rows of equal length `k` (no validation of
    /// self-loops; indices must be below the number of rows).
    pub fn from_rows(k: usize, indices: Vec<u32>) -> Result<Self, VelocityError> {
        if k == 0 || indices.len() % k != 0 {
            return Err(VelocityError::Dimension {
                what: "neighbour indices (a multiple of k > 0)",
                expected: k,
                got: indices.len(),
            });
        }
        let n = indices.len() / k;
        if let Some(&bad) = indices.iter().find(|&&j| j as usize >= n) {
            return Err(VelocityError::CellIndex {
                index: bad as usize,
                n_cells: n,
            });
        }
        Ok(Self { k, indices })
    }

    /// Neighbours per cell.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of cells.
    pub fn n_cells(&self) -> usize {
        self.indices.len().checked_div(self.k).unwrap_or(0)
    }

    /// The neighbours of cell `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }

    /// scVelo's `get_iterative_indices(indices, i, n_recurse_neighbors)`: {i} and the
    /// neighbours of the set, `n_recurse` times, sorted and deduplicated.
    pub fn iterative(&self, i: usize, n_recurse: usize) -> Vec<u32> {
        let mut set = vec![i as u32];
        for _ in 0..n_recurse {
            let mut next = set.clone();
            for &j in &set {
                next.extend_from_slice(self.row(j as usize));
            }
            set = next;
        }
        set.sort_unstable();
        set.dedup();
        set
    }
}

/// Options of [`velocity_graph`], scVelo's names and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VelocityGraphOptions {
    /// Apply `x ↦ sign(x)·√|x|` to V and to every displacement (`sqrt_transform`; scVelo's
    /// `None` means true iff `uns["velocity_params"]["mode"] == "stochastic"`, which the
    /// caller decides).
    pub sqrt_transform: bool,
    /// Recursions of the neighbour search (`n_recurse_neighbors`, 2).
    pub n_recurse_neighbors: usize,
}

impl Default for VelocityGraphOptions {
    fn default() -> Self {
        Self {
            sqrt_transform: false,
            n_recurse_neighbors: 2,
        }
    }
}

/// scVelo's `uns["velocity_graph"]`, `uns["velocity_graph_neg"]` and
/// `obs["velocity_self_transition"]`.
#[derive(Clone, Debug, PartialEq)]
pub struct VelocityGraph {
    /// Positive cosines, clipped to (0, 1] (n × n).
    pub graph: Csr,
    /// Negative cosines, clipped to [−1, 0) (n × n).
    pub graph_neg: Csr,
    /// clip(P98(rowmax) − rowmax, 0, 1) of `graph`.
    pub self_transition: Vec<f64>,
}

fn signed_sqrt(x: f64) -> f64 {
    x.abs().sqrt().copysign(x)
}

/// scVelo's `velocity_graph(adata)` on the genes `genes` (column indices, e.g. from
/// [`crate::dense::velocity_gene_columns`]): `x` is `layers["Ms"]`, `velocity` is
/// `layers["velocity"]` (both cells × all genes), `neighbors` from
/// [`Neighbors::from_distances`]. Parallel over cells; the result does not depend on the
/// number of threads.
pub fn velocity_graph<X: Scalar, V: Scalar>(
    x: RowMajor<'_, X>,
    velocity: RowMajor<'_, V>,
    genes: &[usize],
    neighbors: &Neighbors,
    opts: &VelocityGraphOptions,
) -> Result<VelocityGraph, VelocityError> {
    let n = x.nrows();
    check_same_shape(x, velocity)?;
    if neighbors.n_cells() != n {
        return Err(VelocityError::Dimension {
            what: "cells of the neighbour table",
            expected: n,
            got: neighbors.n_cells(),
        });
    }
    if genes.is_empty() {
        return Err(VelocityError::NoGenes {
            what: "the velocity graph",
        });
    }
    if let Some(&bad) = genes.iter().find(|&&j| j >= x.ncols()) {
        return Err(VelocityError::Dimension {
            what: "gene column index (below the number of genes)",
            expected: x.ncols(),
            got: bad,
        });
    }
    let g = genes.len();
    // The expression of every cell is read as a neighbour: borrowed when the genes are all
    // columns; the velocity only for the cell itself, so it is transformed and centred one
    // row at a time (no n × g copies).
    let xs = x.select_columns(genes);
    let rows: Vec<Vec<(u32, f64)>> = (0..n)
        .into_par_iter()
        .map_init(
            || (vec![0.0; g], vec![0.0; g]),
            |(d, vi), i| {
                let vrow = velocity.row(i);
                for (o, &j) in vi.iter_mut().zip(genes) {
                    *o = vrow[j].to_f64();
                }
                if opts.sqrt_transform {
                    vi.iter_mut().for_each(|v| *v = signed_sqrt(*v));
                }
                centre_rows(vi, g);
                let vi = &vi[..];
                if vi.iter().all(|&v| v == 0.0) {
                    return Vec::new();
                }
                let vnorm = norm(vi);
                let xi = &xs[i * g..(i + 1) * g];
                let cand = neighbors.iterative(i, opts.n_recurse_neighbors);
                let mut out = Vec::with_capacity(cand.len());
                for &j in &cand {
                    let xj = &xs[j as usize * g..(j as usize + 1) * g];
                    for ((dk, a), b) in d.iter_mut().zip(xj).zip(xi) {
                        *dk = a.to_f64() - b.to_f64();
                    }
                    if opts.sqrt_transform {
                        d.iter_mut().for_each(|v| *v = signed_sqrt(*v));
                    }
                    let m = d.iter().sum::<f64>() / g as f64;
                    let (mut num, mut ss) = (0.0, 0.0);
                    for (dk, v) in d.iter().zip(vi) {
                        let c = dk - m;
                        num += c * v;
                        ss += c * c;
                    }
                    let c = num / (ss.sqrt() * vnorm);
                    if c.is_nan() || c == 0.0 {
                        continue;
                    }
                    out.push((j, c));
                }
                out
            },
        )
        .collect();

    let split = |positive: bool| -> Csr {
        let mut indptr = Vec::with_capacity(n + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        for row in &rows {
            for &(j, c) in row {
                if positive && c > 0.0 {
                    indices.push(j);
                    data.push(c.min(1.0));
                } else if !positive && c < 0.0 {
                    indices.push(j);
                    data.push(c.max(-1.0));
                }
            }
            indptr.push(indices.len());
        }
        // Rows are sorted (candidates are) and indices are below n.
        Csr::try_new(n, n, indptr, indices, data).unwrap_or_else(|_| unreachable_csr(n))
    };
    let graph = split(true);
    let graph_neg = split(false);
    let self_transition = self_transition(&graph);
    Ok(VelocityGraph {
        graph,
        graph_neg,
        self_transition,
    })
}

/// An empty n × n matrix (the fallback of constructions that are valid by construction).
fn unreachable_csr(n: usize) -> Csr {
    Csr::from_triplets(n, n, &[]).unwrap_or_else(|_| Csr::identity(n))
}

pub(crate) fn check_same_shape<A: Scalar, B: Scalar>(
    a: RowMajor<'_, A>,
    b: RowMajor<'_, B>,
) -> Result<(), VelocityError> {
    if a.nrows() != b.nrows() {
        return Err(VelocityError::Dimension {
            what: "cells of the velocity layer (cells of Ms)",
            expected: a.nrows(),
            got: b.nrows(),
        });
    }
    if a.ncols() != b.ncols() {
        return Err(VelocityError::Dimension {
            what: "genes of the velocity layer (genes of Ms)",
            expected: a.ncols(),
            got: b.ncols(),
        });
    }
    Ok(())
}

/// SciPy's `graph.max(1)` of a sparse matrix: the largest stored value of each row, compared
/// with the implicit zeros when the row is not full (0 for an empty row).
pub fn row_max(m: &Csr) -> Vec<f64> {
    (0..m.nrows())
        .map(|i| {
            let (c, v) = m.row(i);
            let mx = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if c.len() < m.ncols() {
                mx.max(0.0)
            } else {
                mx
            }
        })
        .collect()
}

/// scVelo's self-transition probability of each cell: clip(P98(c) − c, 0, 1) where c is the
/// row maximum of the positive velocity graph.
pub fn self_transition(graph: &Csr) -> Vec<f64> {
    let conf = row_max(graph);
    let ub = percentile(&conf, 98.0);
    conf.iter().map(|c| (ub - c).clamp(0.0, 1.0)).collect()
}

/// Options of [`transition_matrix`], scVelo's names and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransitionOptions {
    /// The kernel's scale λ in exp(λ·cos) (`scale`, 10).
    pub scale: f64,
    /// Set the diagonal to the self-transition probabilities first (`self_transitions`,
    /// true; `terminal_states` uses false).
    pub self_transitions: bool,
    /// Negative cosines get −(e^{λ|c|} − 1) instead of e^{λc} (`use_negative_cosines`,
    /// false).
    pub use_negative_cosines: bool,
    /// Transpose before normalising (`backward`, false).
    pub backward: bool,
}

impl Default for TransitionOptions {
    fn default() -> Self {
        Self {
            scale: 10.0,
            self_transitions: true,
            use_negative_cosines: false,
            backward: false,
        }
    }
}

/// scVelo's `transition_matrix(adata, scale, self_transitions, use_negative_cosines,
/// backward)` (no `basis`, `perc`, `threshold`, `weight_indirect_neighbors` or
/// `n_neighbors`):
///
/// 1. with `self_transitions`, the diagonal of `graph` is set to [`self_transition`];
/// 2. weights e^{λc} − 1 on the positive graph; with `graph_neg`, plus e^{λc} − 1 on the
///    negative cosines, the sparse sum dropping exact zeros (a zero self-transition), then
///    **+1 on every stored entry** — so e^{λc} on every edge; or, with
///    `use_negative_cosines`, minus (e^{λ|c|} − 1) on the negative cosines and no +1;
///    without `graph_neg`, e^{λc} − 1 on the positive graph only;
/// 3. transposed if `backward`; each row divided by the sum of its absolute values (an
///    all-zero row stays zero).
pub fn transition_matrix(
    graph: &Csr,
    graph_neg: Option<&Csr>,
    opts: &TransitionOptions,
) -> Result<Csr, VelocityError> {
    let n = graph.nrows();
    if graph.ncols() != n {
        return Err(VelocityError::Dimension {
            what: "columns of the velocity graph (one per cell)",
            expected: n,
            got: graph.ncols(),
        });
    }
    if let Some(gn) = graph_neg {
        if gn.nrows() != n || gn.ncols() != n {
            return Err(VelocityError::Dimension {
                what: "size of the negative velocity graph",
                expected: n,
                got: gn.nrows().max(gn.ncols()),
            });
        }
    }
    let diag = opts.self_transitions.then(|| self_transition(graph));
    let s = opts.scale;
    let mut indptr = Vec::with_capacity(n + 1);
    let mut indices: Vec<u32> = Vec::with_capacity(graph.nnz() + n);
    let mut data: Vec<f64> = Vec::with_capacity(graph.nnz() + n);
    indptr.push(0);
    let mut pos: Vec<(u32, f64)> = Vec::new();
    for i in 0..n {
        // Positive part of the row, with the diagonal replaced (setdiag) when asked.
        pos.clear();
        let (c, v) = graph.row(i);
        pos.extend(c.iter().copied().zip(v.iter().copied()));
        if let Some(d) = &diag {
            match pos.binary_search_by_key(&(i as u32), |&(j, _)| j) {
                Ok(p) => pos[p].1 = d[i],
                Err(p) => pos.insert(p, (i as u32, d[i])),
            }
        }
        let (nc, nv): (&[u32], &[f64]) = match graph_neg {
            Some(gn) => gn.row(i),
            None => (&[], &[]),
        };
        // Merge the two sorted rows.
        let (mut a, mut b) = (0, 0);
        while a < pos.len() || b < nc.len() {
            let ja = pos.get(a).map_or(u32::MAX, |p| p.0);
            let jb = nc.get(b).copied().unwrap_or(u32::MAX);
            let j = ja.min(jb);
            let p = if ja == j {
                a += 1;
                Some(pos[a - 1].1)
            } else {
                None
            };
            let q = if jb == j {
                b += 1;
                Some(nv[b - 1])
            } else {
                None
            };
            let w = match graph_neg {
                None => p.map_or(0.0, |p| (s * p).exp_m1()),
                Some(_) if opts.use_negative_cosines => {
                    p.map_or(0.0, |p| (s * p).exp_m1()) - q.map_or(0.0, |q| (-s * q).exp_m1())
                }
                Some(_) => {
                    let w =
                        p.map_or(0.0, |p| (s * p).exp_m1()) + q.map_or(0.0, |q| (s * q).exp_m1());
                    if w == 0.0 {
                        0.0
                    } else {
                        w + 1.0
                    }
                }
            };
            if w != 0.0 {
                indices.push(j);
                data.push(w);
            }
        }
        indptr.push(indices.len());
    }
    let t = Csr::try_new(n, n, indptr, indices, data).map_err(|e| VelocityError::Option {
        option: "velocity graph",
        message: e.to_string(),
    })?;
    let mut t = if opts.backward { t.transpose() } else { t };
    normalize_abs_rows(&mut t);
    Ok(t)
}

/// Divides each row by the sum of its absolute values (scVelo's `normalize` on a sparse
/// matrix); an all-zero row stays zero.
fn normalize_abs_rows(t: &mut Csr) {
    let sums: Vec<f64> = (0..t.nrows())
        .map(|i| t.row(i).1.iter().map(|x| x.abs()).sum())
        .collect();
    let indptr = t.indptr().to_vec();
    let data = t.data_mut();
    for (i, s) in sums.iter().enumerate() {
        if *s > 0.0 {
            data[indptr[i]..indptr[i + 1]]
                .iter_mut()
                .for_each(|x| *x /= s);
        }
    }
}

/// scVelo's `get_connectivities(adata, mode)` for a kNN graph (`obsp["connectivities"]`
/// or `obsp["distances"]`): entries > 0 set to 1, the diagonal set to 1, each row divided by
/// its sum. (scVelo returns float32; this is float64.)
pub fn knn_weights(graph: &Csr) -> Csr {
    let n = graph.nrows();
    let mut t = Vec::with_capacity(graph.nnz() + n);
    for i in 0..n {
        let (c, v) = graph.row(i);
        let nb: Vec<usize> = c
            .iter()
            .zip(v)
            .filter(|&(&j, &x)| x > 0.0 && j as usize != i)
            .map(|(&j, _)| j as usize)
            .collect();
        let w = 1.0 / (nb.len() + 1) as f64;
        if i < graph.ncols() {
            t.push((i, i, w));
        }
        t.extend(nb.into_iter().map(|j| (i, j, w)));
    }
    Csr::from_triplets(n, graph.ncols(), &t).unwrap_or_else(|_| unreachable_csr(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_distances(n: usize) -> Csr {
        // Cells on a line; each cell's two nearest others.
        let mut t = Vec::new();
        for i in 0..n {
            let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            others.sort_by_key(|&j| (i as i64 - j as i64).abs());
            for &j in &others[..2] {
                t.push((i, j, (i as f64 - j as f64).abs()));
            }
        }
        Csr::from_triplets(n, n, &t).expect("csr")
    }

    #[test]
    fn neighbours_keep_the_k_smallest_and_recurse() {
        let mut t = vec![(0, 1, 1.0), (0, 2, 2.0), (0, 3, 0.5)];
        t.extend([(1, 0, 1.0), (1, 2, 1.0), (2, 1, 1.0), (2, 3, 1.0)]);
        t.extend([(3, 2, 1.0), (3, 0, 0.5)]);
        let d = Csr::from_triplets(4, 4, &t).expect("csr");
        let nb = Neighbors::from_distances(&d, None).expect("nb");
        assert_eq!(nb.k(), 2);
        assert_eq!(nb.row(0), &[1, 3]);
        assert_eq!(nb.iterative(1, 1), vec![0, 1, 2]);
        assert_eq!(nb.iterative(1, 2), vec![0, 1, 2, 3]);
        let empty = Csr::from_triplets(2, 2, &[(0, 1, 1.0)]).expect("csr");
        assert_eq!(
            Neighbors::from_distances(&empty, None),
            Err(VelocityError::NoNeighbors { cell: 1 })
        );
    }

    #[test]
    fn graph_is_the_centred_cosine_split_by_sign() {
        // 6 cells on a line in gene 0; velocity +1 in gene 0 for all.
        let n = 6;
        let g = 3;
        let x: Vec<f64> = (0..n)
            .flat_map(|i| [i as f64, 0.5 * (i % 2) as f64, 1.0])
            .collect();
        let v: Vec<f64> = (0..n).flat_map(|_| [1.0, 0.0, 0.0]).collect();
        let d = line_distances(n);
        let nb = Neighbors::from_distances(&d, None).expect("nb");
        let xs = RowMajor::new("x", &x, n, g).expect("x");
        let vs = RowMajor::new("v", &v, n, g).expect("v");
        let vg = velocity_graph(xs, vs, &[0, 1, 2], &nb, &VelocityGraphOptions::default())
            .expect("graph");
        // Reference value by hand for cell 2 → 3: d = (1, 0.5, 0), centred.
        let dd = [1.0, 0.5, 0.0];
        let m = (dd[0] + dd[1] + dd[2]) / 3.0;
        let dc: Vec<f64> = dd.iter().map(|x| x - m).collect();
        let vc = [2.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0];
        let want = dc.iter().zip(vc).map(|(a, b)| a * b).sum::<f64>() / (norm(&dc) * norm(&vc));
        assert!((vg.graph.get(2, 3) - want).abs() < 1e-14);
        assert!(vg.graph_neg.get(2, 1) < 0.0);
        assert_eq!(vg.graph.get(2, 2), 0.0);
        assert!(vg.graph.row(2).0.iter().all(|&j| j != 2));
        // Transition matrix: rows sum to one; forward mass goes right.
        let t = transition_matrix(
            &vg.graph,
            Some(&vg.graph_neg),
            &TransitionOptions::default(),
        )
        .expect("T");
        for s in t.row_sums() {
            assert!((s - 1.0).abs() < 1e-12);
        }
        assert!(t.get(2, 3) > t.get(2, 1));
        let back = transition_matrix(
            &vg.graph,
            Some(&vg.graph_neg),
            &TransitionOptions {
                backward: true,
                self_transitions: false,
                ..Default::default()
            },
        )
        .expect("T");
        assert!(back.get(3, 2) > back.get(1, 2));
    }

    #[test]
    fn transition_weights_follow_scvelo() {
        // One row: positive 0.5 to cell 1, negative −0.2 to cell 2, self-transition 0.
        let g = Csr::from_triplets(3, 3, &[(0, 1, 0.5), (1, 0, 0.5), (2, 0, 0.5)]).expect("g");
        let gn = Csr::from_triplets(3, 3, &[(0, 2, -0.2)]).expect("gn");
        let t = transition_matrix(
            &g,
            Some(&gn),
            &TransitionOptions {
                self_transitions: false,
                ..Default::default()
            },
        )
        .expect("T");
        let (a, b) = (5.0f64.exp(), (-2.0f64).exp());
        assert!((t.get(0, 1) - a / (a + b)).abs() < 1e-15);
        assert!((t.get(0, 2) - b / (a + b)).abs() < 1e-15);
        let t = transition_matrix(
            &g,
            Some(&gn),
            &TransitionOptions {
                self_transitions: false,
                use_negative_cosines: true,
                ..Default::default()
            },
        )
        .expect("T");
        let (a, b) = (5.0f64.exp_m1(), 2.0f64.exp_m1());
        assert!((t.get(0, 2) + b / (a + b)).abs() < 1e-15);
        // All row maxima equal: self-transitions are 0 and vanish from the sparse sum.
        let t = transition_matrix(&g, Some(&gn), &TransitionOptions::default()).expect("T");
        assert_eq!(t.get(0, 0), 0.0);
        assert_eq!(t.row(0).0, &[1, 2]);
    }

    #[test]
    fn graph_does_not_depend_on_the_thread_count() {
        // 300 cells, 7 genes, pseudo-random values; kNN by index distance on a ring.
        let (n, g) = (300usize, 7usize);
        let val = |i: usize| ((i as f64 * 0.618_033_988_749_895).fract() - 0.5) * 3.0;
        let x: Vec<f64> = (0..n * g).map(val).collect();
        let v: Vec<f64> = (0..n * g).map(|i| val(i + 7919)).collect();
        let mut t = Vec::new();
        for i in 0..n {
            for s in 1..=4 {
                t.push((i, (i + s) % n, s as f64));
                t.push((i, (i + n - s) % n, s as f64 + 0.5));
            }
        }
        let d = Csr::from_triplets(n, n, &t).expect("d");
        let nb = Neighbors::from_distances(&d, None).expect("nb");
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let xs = RowMajor::new("x", &x, n, g).expect("x");
                let vs = RowMajor::new("v", &v, n, g).expect("v");
                let genes: Vec<usize> = (0..g).collect();
                velocity_graph(xs, vs, &genes, &nb, &VelocityGraphOptions::default())
                    .expect("graph")
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn knn_weights_are_row_normalised_with_self() {
        let d = line_distances(4);
        let w = knn_weights(&d);
        for i in 0..4 {
            assert!((w.get(i, i) - 1.0 / 3.0).abs() < 1e-15);
        }
    }
}
