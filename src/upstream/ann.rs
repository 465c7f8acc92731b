//! Approximate k-nearest neighbours for large data sets: random-projection-tree initialisation and
//! NN-descent (Dong, Moses & Li 2011) in its "neighbours of neighbours" form. Every iteration
//! is a pure function of the previous graph (each cell's new list is computed from the old
//! lists only), so the result is deterministic for a seed and independent of the number of
//! threads. Recall against the exact search is measured in the tests (≥ 0.95 required).

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Row-major copy of the points, so that a distance reads two contiguous rows.
struct Points {
    data: Vec<f64>,
    dim: usize,
}

impl Points {
    fn new(x: &DMatrix<f64>) -> Self {
        let dim = x.ncols();
        let mut data = vec![0.0; x.nrows() * dim];
        for (c, col) in x.column_iter().enumerate() {
            for (i, &v) in col.iter().enumerate() {
                data[i * dim + c] = v;
            }
        }
        Self { data, dim }
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    fn dist(&self, i: usize, j: usize) -> f64 {
        let mut s = 0.0;
        for (a, b) in self.row(i).iter().zip(self.row(j)) {
            let d = a - b;
            s += d * d;
        }
        s.sqrt()
    }
}

/// A cell's neighbours: (index, distance), nearest first.
type Row = Vec<(usize, f64)>;

/// Random-projection trees of the initialisation.
const RP_TREES: usize = 6;
/// Smallest leaf of the random-projection trees (at least k + 1 points).
const RP_LEAF_MIN: usize = 32;

/// The leaves of one random-projection tree over the points `0..n`: a node larger than
/// `leaf` is split by the hyperplane halfway between two of its points drawn from `rng`
/// (points on the plane alternate sides); a split that leaves a side empty (duplicate
/// points) halves the node by position instead. Deterministic for a given `rng` state.
fn rp_leaves(pts: &Points, n: usize, leaf: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    use rand::Rng;
    let mut out = Vec::new();
    let mut stack: Vec<Vec<usize>> = vec![(0..n).collect()];
    while let Some(node) = stack.pop() {
        if node.len() <= leaf {
            out.push(node);
            continue;
        }
        let pa = rng.random_range(0..node.len());
        let mut pb = rng.random_range(0..node.len() - 1);
        if pb >= pa {
            pb += 1;
        }
        let (ra, rb) = (pts.row(node[pa]), pts.row(node[pb]));
        let normal: Vec<f64> = ra.iter().zip(rb).map(|(x, y)| x - y).collect();
        let offset: f64 = normal
            .iter()
            .zip(ra.iter().zip(rb))
            .map(|(w, (x, y))| w * (x + y) / 2.0)
            .sum();
        let (mut left, mut right) = (Vec::new(), Vec::new());
        let mut flip = false;
        for &i in &node {
            let side = pts
                .row(i)
                .iter()
                .zip(&normal)
                .map(|(x, w)| x * w)
                .sum::<f64>()
                - offset;
            if side > 0.0 || (side == 0.0 && flip) {
                left.push(i);
            } else {
                right.push(i);
            }
            if side == 0.0 {
                flip = !flip;
            }
        }
        if left.is_empty() || right.is_empty() {
            let mut node = node;
            right = node.split_off(node.len() / 2);
            left = node;
        }
        stack.push(right);
        stack.push(left);
    }
    out
}

fn cmp(a: &(usize, f64), b: &(usize, f64)) -> std::cmp::Ordering {
    a.1.total_cmp(&b.1).then(a.0.cmp(&b.0))
}

/// Approximate kNN (excluding self) of the rows of `x`: (indices, distances) per cell, sorted
/// by distance. `n_iter` bounds the NN-descent iterations; iteration stops earlier when fewer
/// than 0.1 % of the entries change.
pub fn knn_descent(x: &DMatrix<f64>, k: usize, seed: u64, n_iter: usize) -> Vec<Vec<(usize, f64)>> {
    let n = x.nrows();
    let k = k.min(n.saturating_sub(1));
    if k == 0 {
        return vec![Vec::new(); n];
    }
    let pts = Points::new(x);
    // The k nearest among candidates `c`; distances already known (`known`, sorted by
    // index) are reused, not recomputed (same values either way).
    let best = |i: usize, c: &mut Vec<usize>, known: &[(usize, f64)]| -> Vec<(usize, f64)> {
        c.sort_unstable();
        c.dedup();
        let mut d: Vec<(usize, f64)> = c
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| match known.binary_search_by(|p| p.0.cmp(&j)) {
                Ok(p) => (j, known[p].1),
                Err(_) => (j, pts.dist(i, j)),
            })
            .collect();
        if d.len() > k {
            d.select_nth_unstable_by(k - 1, cmp);
            d.truncate(k);
        }
        d.sort_by(cmp);
        // `d` was sized for every candidate (hundreds): without this, each kept list holds
        // that capacity (1.6 GB per generation of lists at 100,000 cells, two generations
        // alive during an iteration).
        d.shrink_to_fit();
        d
    };
    // Initialisation: the leaves of random-projection trees (each node split by the
    // hyperplane halfway between two of its points, as in pynndescent), one tree after the
    // other, each cell keeping the k nearest of its current list and its leaf mates. Leaves
    // are local in every direction, so the first graph is already good and NN-descent needs
    // few rounds (windows along 1-D random projections were weak at 1M cells: 936 s).
    let leaf = (k + 1).max(RP_LEAF_MIN);
    let mut g: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    for tree in 0..RP_TREES {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5eed_0000 + tree as u64));
        let leaves = rp_leaves(&pts, n, leaf, &mut rng);
        // Each cell is in exactly one leaf of a tree.
        let mut owner = vec![0usize; n];
        for (l, members) in leaves.iter().enumerate() {
            for &i in members {
                owner[i] = l;
            }
        }
        g = std::mem::take(&mut g)
            .into_par_iter()
            .enumerate()
            .map(|(i, mut known)| {
                let mut c: Vec<usize> = known.iter().map(|p| p.0).collect();
                c.extend_from_slice(&leaves[owner[i]]);
                known.sort_unstable_by_key(|p| p.0);
                best(i, &mut c, &known)
            })
            .collect();
    }
    // `fresh[i][p]`: entry p of cell i's list entered at the last iteration. Local joins
    // only pair two neighbours of a cell when at least one of the two links is fresh (the
    // other pairs were evaluated before), as in the original NN-descent.
    let mut fresh: Vec<Vec<bool>> = g.iter().map(|r| vec![true; r.len()]).collect();
    for _ in 0..n_iter {
        // Reverse lists (capped at k, the nearest first), with the freshness of the link.
        let mut rev: Vec<Vec<(usize, f64, bool)>> = vec![Vec::new(); n];
        for (i, row) in g.iter().enumerate() {
            for (&(j, dj), &f) in row.iter().zip(&fresh[i]) {
                rev[j].push((i, dj, f));
            }
        }
        rev.par_iter_mut().for_each(|r| {
            let by = |a: &(usize, f64, bool), b: &(usize, f64, bool)| cmp(&(a.0, a.1), &(b.0, b.1));
            if r.len() > k {
                r.select_nth_unstable_by(k - 1, by);
                r.truncate(k);
            }
        });
        let links = |j: usize| {
            g[j].iter()
                .zip(&fresh[j])
                .map(|(p, &f)| (p.0, f))
                .chain(rev[j].iter().map(|r| (r.0, r.2)))
        };
        let next: Vec<(Row, Vec<bool>)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut c: Vec<usize> = Vec::with_capacity(4 * k * k);
                for (j, fij) in links(i) {
                    c.push(j);
                    c.extend(links(j).filter(|&(_, fjl)| fij || fjl).map(|(l, _)| l));
                }
                let mut known = g[i].clone();
                known.sort_unstable_by_key(|p| p.0);
                let row = best(i, &mut c, &known);
                let new: Vec<bool> = row
                    .iter()
                    .map(|p| known.binary_search_by(|q| q.0.cmp(&p.0)).is_err())
                    .collect();
                (row, new)
            })
            .collect();
        let changed: usize = next
            .iter()
            .map(|p| p.1.iter().filter(|&&b| b).count())
            .sum();
        (g, fresh) = next.into_iter().unzip();
        if (changed as f64) < 0.001 * (n * k) as f64 {
            break;
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn recall_against_exact_search() {
        // 3,000 points in 10 dimensions around 6 centres.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 3000;
        let x = DMatrix::from_fn(n, 10, |i, c| {
            let centre = ((i % 6) * 7 + c) as f64 % 5.0;
            let z: f64 = StandardNormal.sample(&mut rng);
            centre + 0.5 * z
        });
        let k = 15;
        let approx = knn_descent(&x, k, 0, 20);
        let pts = Points::new(&x);
        let mut hit = 0;
        for i in (0..n).step_by(10) {
            let mut d: Vec<(usize, f64)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, pts.dist(i, j)))
                .collect();
            d.sort_by(cmp);
            hit += d[..k]
                .iter()
                .filter(|p| approx[i].iter().any(|q| q.0 == p.0))
                .count();
        }
        let recall = hit as f64 / (n / 10 * k) as f64;
        assert!(recall >= 0.95, "recall {recall}");
        // Deterministic.
        assert_eq!(approx, knn_descent(&x, k, 0, 20));
    }
}
