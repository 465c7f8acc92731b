//! The kNN smoothing graph of the dynamical model, prepared once for the fits of many genes.
//!
//! Each fit smooths the cells' state distances over the graph W and updates them through Wᵀ
//! hundreds of times (every candidate of every simplex), so about half of a fit's time goes
//! to gathering neighbours' values. In a file's cell order (often none in particular) those
//! gathers miss the caches; in breadth-first order of the graph a cell's neighbours sit near
//! it in memory. Measured at 200,000 cells × 4 genes, one thread: 42.3 s in the file's
//! order, 23.9 s in breadth-first order (BENCHMARKS.md, "Dynamical fit: cell order").
//! The order needs only the graph (no PCA), so every caller gets it.

use cellfate_kernels::Csr;

/// Fewest cells for which [`FitGraph::new`] reorders them: below, the vectors a fit gathers
/// from fit the caches whatever the order, and small inputs keep their exact summation
/// order (and so scVelo's to rounding).
pub const REORDER_MIN_CELLS: usize = 10_000;

/// W (row-normalised kNN graph with self-loops, scVelo's `get_connectivities`) and Wᵀ in
/// the cell order the fits run in.
#[derive(Clone, Debug)]
pub struct FitGraph {
    /// W with rows and columns in the fit's order.
    w: Csr,
    /// Wᵀ in the fit's order: a change of one cell's distance reaches the smoothed distances
    /// of the cells that have it as a neighbour.
    wt: Csr,
    /// `order[new] = old`; `None` when the fit runs in the input's order.
    order: Option<Vec<usize>>,
    /// W's weight of each row when the fits sum a row's neighbours before weighting them:
    /// every row repeats one value (scVelo's binarised, row-normalised graph) and the cells
    /// are reordered. `None`: Σ w·x in the row's order, as scipy's sparse product sums.
    row_weight: Option<Vec<f64>>,
}

impl FitGraph {
    /// Prepares `w` (square: one row and column per cell) for the fits: reordered
    /// breadth-first from [`REORDER_MIN_CELLS`] cells on, transposed once.
    ///
    /// # Panics
    /// When `w` is not square (a contract of the callers, which build it from a validated
    /// kNN graph).
    pub fn new(w: &Csr) -> Self {
        Self::with_order(w, w.nrows() >= REORDER_MIN_CELLS)
    }

    /// [`FitGraph::new`] with the reordering chosen (`reorder`) at any number of cells.
    ///
    /// # Panics
    /// When `w` is not square.
    pub fn with_order(w: &Csr, reorder: bool) -> Self {
        assert_eq!(w.nrows(), w.ncols(), "the smoothing graph must be square");
        let (w, order) = if reorder {
            let order = breadth_first_order(w);
            (w.submatrix(&order, &order), Some(order))
        } else {
            (w.clone(), None)
        };
        let wt = w.transpose();
        let row_weight = if order.is_some() {
            uniform_row_weights(&w)
        } else {
            None
        };
        Self {
            w,
            wt,
            order,
            row_weight,
        }
    }

    /// Cells.
    pub fn n_cells(&self) -> usize {
        self.w.nrows()
    }

    /// W · (K interleaved columns over the cells, the fit's order), interleaved.
    ///
    /// In the reordered layout (from [`REORDER_MIN_CELLS`] cells on) each row's neighbours
    /// are summed first, in four interleaved partial sums, and the sum is multiplied by the
    /// row's one weight: the additions do not wait on one another and W's values are not
    /// read. Measured on a 100,000-cell graph of 50 neighbours per row, one thread: 4.2–5.0
    /// ms per product against 7.3–7.9 ms for Σ w·x in the row's order. The two differ by
    /// rounding only (for the non-negative vectors the fits smooth, a relative 1e-15 for 50
    /// neighbours); below that size the fits keep
    /// scipy's summation, and so scVelo's sums to the bit.
    #[allow(clippy::needless_range_loop)] // K columns indexed together
    pub(crate) fn smooth_packed<const K: usize>(&self, packed: &[[f64; K]]) -> Vec<[f64; K]> {
        let w = &self.w;
        match &self.row_weight {
            Some(rw) => (0..w.nrows())
                .map(|i| {
                    let idx = w.row(i).0;
                    let mut acc = [[0.0; K]; 4];
                    let mut chunks = idx.chunks_exact(4);
                    for c in &mut chunks {
                        for (a, &j) in acc.iter_mut().zip(c) {
                            let v = &packed[j as usize];
                            for k in 0..K {
                                a[k] += v[k];
                            }
                        }
                    }
                    for (a, &j) in acc.iter_mut().zip(chunks.remainder()) {
                        let v = &packed[j as usize];
                        for k in 0..K {
                            a[k] += v[k];
                        }
                    }
                    std::array::from_fn(|k| {
                        ((acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k])) * rw[i]
                    })
                })
                .collect(),
            None => (0..w.nrows())
                .map(|i| {
                    let (idx, val) = w.row(i);
                    let mut acc = [0.0; K];
                    for (&j, &x) in idx.iter().zip(val) {
                        let v = &packed[j as usize];
                        for k in 0..K {
                            acc[k] += x * v[k];
                        }
                    }
                    acc
                })
                .collect(),
        }
    }

    /// W · (columns of `cols`), each a vector over all cells in the fit's order. The
    /// columns are interleaved first so that each neighbour costs one bounds check and one
    /// cache line ([`FitGraph::smooth_packed`]).
    #[allow(clippy::needless_range_loop)] // K columns indexed together
    pub(crate) fn smooth<const K: usize>(&self, cols: [&[f64]; K]) -> [Vec<f64>; K] {
        let n = self.w.nrows();
        let packed: Vec<[f64; K]> = (0..n)
            .map(|i| std::array::from_fn(|k| cols[k][i]))
            .collect();
        let smoothed = self.smooth_packed(&packed);
        let mut out: [Vec<f64>; K] = std::array::from_fn(|_| vec![0.0; n]);
        for (i, v) in smoothed.iter().enumerate() {
            for k in 0..K {
                out[k][i] = v[k];
            }
        }
        out
    }

    /// Wᵀ in the fit's order.
    pub(crate) fn wt(&self) -> &Csr {
        &self.wt
    }

    /// `x` (one value per cell, input order) in the fit's order.
    pub(crate) fn gather<'a>(&self, x: &'a [f64]) -> std::borrow::Cow<'a, [f64]> {
        match &self.order {
            Some(o) => o.iter().map(|&i| x[i]).collect::<Vec<f64>>().into(),
            None => x.into(),
        }
    }

    /// `x` (one value per cell, the fit's order) back in the input's order.
    pub(crate) fn scatter(&self, x: Vec<f64>) -> Vec<f64> {
        match &self.order {
            Some(o) => {
                let mut out = vec![0.0; x.len()];
                for (&old, v) in o.iter().zip(x) {
                    out[old] = v;
                }
                out
            }
            None => x,
        }
    }
}

/// Each row's one weight when every row of `w` repeats one value (bit for bit); `None`
/// otherwise. An empty row gets 0.
fn uniform_row_weights(w: &Csr) -> Option<Vec<f64>> {
    (0..w.nrows())
        .map(|i| {
            let v = w.row(i).1;
            let first = v.first().copied().unwrap_or(0.0);
            v.iter()
                .all(|x| x.to_bits() == first.to_bits())
                .then_some(first)
        })
        .collect()
}

/// The cells breadth-first over the graph's pattern (Cuthill–McKee without the reversal:
/// locality, not bandwidth, is the aim): each component from a cell of least degree,
/// neighbours visited by increasing degree (ties by index), components by their start's
/// degree and index. Deterministic.
fn breadth_first_order(w: &Csr) -> Vec<usize> {
    let n = w.nrows();
    let degree: Vec<usize> = (0..n).map(|i| w.row(i).0.len()).collect();
    let mut starts: Vec<usize> = (0..n).collect();
    starts.sort_by_key(|&i| (degree[i], i));
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut next = Vec::new();
    for s in starts {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let mut head = order.len();
        order.push(s);
        while head < order.len() {
            let i = order[head];
            head += 1;
            next.clear();
            next.extend(w.row(i).0.iter().map(|&j| j as usize).filter(|&j| !seen[j]));
            next.sort_unstable_by_key(|&j| (degree[j], j));
            for &j in &next {
                if !seen[j] {
                    seen[j] = true;
                    order.push(j);
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path 0 – 1 – … – n−1 stored in a scrambled labelling, and a second component.
    fn scrambled_path(n: usize) -> (Csr, Vec<usize>) {
        // label[position on the path] = cell index
        let label: Vec<usize> = (0..n).map(|p| (p * 7 + 3) % n).collect();
        let mut trip = Vec::new();
        for p in 0..n {
            trip.push((label[p], label[p], 1.0));
            if p + 1 < n {
                trip.push((label[p], label[p + 1], 1.0));
                trip.push((label[p + 1], label[p], 1.0));
            }
        }
        (Csr::from_triplets(n, n, &trip).expect("graph"), label)
    }

    #[test]
    fn breadth_first_order_walks_a_scrambled_path_in_path_order() {
        let n = 50; // 7 is coprime to 50: the labelling is a permutation
        let (w, label) = scrambled_path(n);
        let order = breadth_first_order(&w);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        // Starts at an end (least degree) and follows the path.
        let forward: Vec<usize> = label.clone();
        let backward: Vec<usize> = label.iter().rev().copied().collect();
        assert!(order == forward || order == backward, "{order:?}");
    }

    #[test]
    fn every_component_is_ordered() {
        // Two disjoint triangles and an isolated cell.
        let mut trip = vec![(6, 6, 1.0)];
        for b in [0, 3] {
            for i in 0..3 {
                for j in 0..3 {
                    trip.push((b + i, b + j, 1.0));
                }
            }
        }
        let w = Csr::from_triplets(7, 7, &trip).expect("graph");
        let order = breadth_first_order(&w);
        assert_eq!(order[0], 6, "the isolated cell has the least degree");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn gather_and_scatter_are_inverse() {
        let (w, _) = scrambled_path(50);
        let g = FitGraph::with_order(&w, true);
        let x: Vec<f64> = (0..50).map(|i| i as f64 * 1.5).collect();
        let y = g.gather(&x).into_owned();
        assert_ne!(y, x);
        assert_eq!(g.scatter(y), x);
        // The reordered W is the same operator: (P W Pᵀ)(P x) = P (W x) (sums of multiples
        // of 0.5: exact in any order).
        let wx = w.mul_vec(&x);
        let [pwx] = g.smooth([&g.gather(&x)]);
        assert_eq!(g.scatter(pwx), wx);
    }

    /// A row-normalised graph with irregular degrees and values of all magnitudes.
    fn normalised_graph(n: usize) -> Csr {
        let mut trip = Vec::new();
        for i in 0..n {
            let nb: Vec<usize> = (0..n)
                .filter(|&j| j == i || (i * 31 + j * 17) % 11 < 3)
                .collect();
            let w = 1.0 / nb.len() as f64;
            trip.extend(nb.into_iter().map(|j| (i, j, w)));
        }
        Csr::from_triplets(n, n, &trip).expect("graph")
    }

    #[test]
    fn uniform_rows_are_summed_then_weighted_to_rounding() {
        let n = 200;
        let w = normalised_graph(n);
        let x: Vec<f64> = (0..n)
            .map(|i| ((i * 37) % 101) as f64 * 1e3_f64.powi(i as i32 % 3 - 1))
            .collect();
        let y: Vec<f64> = x.iter().map(|v| -v.sqrt()).collect();
        let fast = FitGraph::with_order(&w, true);
        let plain = FitGraph::with_order(&w, false);
        assert!(fast.row_weight.is_some(), "every row repeats one value");
        assert!(
            plain.row_weight.is_none(),
            "the input's order keeps scipy's sums"
        );
        let [a, b] = fast.smooth([&fast.gather(&x), &fast.gather(&y)]);
        let (a, b) = (fast.scatter(a), fast.scatter(b));
        // The plain path is scipy's product to the bit.
        let [c, d] = plain.smooth([&x, &y]);
        assert_eq!(c, w.mul_vec(&x));
        assert_eq!(d, w.mul_vec(&y));
        for (p, q) in a.iter().zip(&c).chain(b.iter().zip(&d)) {
            assert!((p - q).abs() <= 1e-14 * q.abs().max(1e-300), "{p} vs {q}");
        }
        // A graph whose rows do not repeat one value keeps Σ w·x.
        let mut trip = vec![(0, 0, 0.25), (0, 1, 0.75)];
        trip.extend((1..n).map(|i| (i, i, 1.0)));
        let skew = Csr::from_triplets(n, n, &trip).expect("graph");
        assert!(FitGraph::with_order(&skew, true).row_weight.is_none());
    }
}
