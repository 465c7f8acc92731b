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
        Self { w, wt, order }
    }

    /// Cells.
    pub fn n_cells(&self) -> usize {
        self.w.nrows()
    }

    /// W in the fit's order.
    pub(crate) fn w(&self) -> &Csr {
        &self.w
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
        // The reordered W is the same operator: (P W Pᵀ)(P x) = P (W x).
        let wx = w.mul_vec(&x);
        let pwx = g.w().mul_vec(&g.gather(&x));
        assert_eq!(g.scatter(pwx), wx);
    }
}
