//! Approximate k-nearest neighbours for large data sets: random-projection-tree initialisation and
//! NN-descent (Dong, Moses & Li 2011) in its "neighbours of neighbours" form. Every iteration
//! is a pure function of the previous graph (each cell's new list is computed from the old
//! lists only), so the result is deterministic for a seed and independent of the number of
//! threads. Recall against the exact search is measured in the tests (≥ 0.95 required).

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Lanes of the distance loop: rows are padded with zeros to a multiple of this.
const LANES: usize = 8;

/// Row-major float32 copy of the points (rows padded to a multiple of [`LANES`]), so that a
/// distance reads two contiguous rows with vector loads. The search ranks by these squared
/// float32 distances (half the memory traffic of float64); the distances returned are
/// recomputed in float64 from `x`.
struct Points {
    data: Vec<f32>,
    dim: usize,
}

impl Points {
    fn new(x: &DMatrix<f64>) -> Self {
        let dim = x.ncols().div_ceil(LANES).max(1) * LANES;
        let mut data = vec![0.0f32; x.nrows() * dim];
        for (c, col) in x.column_iter().enumerate() {
            for (i, &v) in col.iter().enumerate() {
                data[i * dim + c] = v as f32;
            }
        }
        Self { data, dim }
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Squared distance, summed lane by lane in a fixed order. (Stopping early once a
    /// partial sum exceeds the k-th neighbour was measured slower: the branch costs more than
    /// the half of the loop it saves.)
    fn dist2(&self, i: usize, j: usize) -> f32 {
        let mut acc = [0.0f32; LANES];
        for (a, b) in self
            .row(i)
            .chunks_exact(LANES)
            .zip(self.row(j).chunks_exact(LANES))
        {
            for l in 0..LANES {
                let d = a[l] - b[l];
                acc[l] += d * d;
            }
        }
        acc.iter().sum()
    }
}

/// Per-thread marks for removing duplicate candidates without sorting them: `mark[j] ==
/// epoch` when `j` was seen for the current cell. The marks only filter; the result does not
/// depend on which thread holds them.
struct Seen {
    mark: Vec<u32>,
    epoch: u32,
}

impl Seen {
    /// Starts a new cell (of `n` cells).
    fn next(&mut self, n: usize) {
        if self.mark.len() != n || self.epoch == u32::MAX {
            self.mark.clear();
            self.mark.resize(n, 0);
            self.epoch = 0;
        }
        self.epoch += 1;
    }

    /// True the first time `j` is seen for this cell.
    fn first(&mut self, j: u32) -> bool {
        let m = &mut self.mark[j as usize];
        if *m == self.epoch {
            false
        } else {
            *m = self.epoch;
            true
        }
    }
}

thread_local! {
    static SEEN: std::cell::RefCell<Seen> = const {
        std::cell::RefCell::new(Seen { mark: Vec::new(), epoch: 0 })
    };
}

/// Euclidean distance between rows `i` and `j` of `x`, in float64 (also the exact search's).
pub(crate) fn dist_f64(x: &DMatrix<f64>, i: usize, j: usize) -> f64 {
    x.row(i)
        .iter()
        .zip(x.row(j).iter())
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt()
}

/// A neighbour during the search: (cell, squared float32 distance).
type Nb = (u32, f32);

/// A cell's neighbours, nearest first.
type Row = Vec<Nb>;

/// Random-projection trees of the initialisation (at 200,000 simulated cells: 6 trees 50 s,
/// 12 trees 41 s, 20 trees 43 s, recall 0.980 / 0.982 / 0.984).
const RP_TREES: usize = 12;
/// Smallest leaf of the random-projection trees (at least k + 1 points).
pub(crate) const RP_LEAF_MIN: usize = 32;

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
        let normal: Vec<f32> = ra.iter().zip(rb).map(|(x, y)| x - y).collect();
        let offset: f32 = normal
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
                .sum::<f32>()
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

fn cmp(a: &Nb, b: &Nb) -> std::cmp::Ordering {
    a.1.total_cmp(&b.1).then(a.0.cmp(&b.0))
}

/// Approximate kNN (excluding self) of the rows of `x`: (indices, distances) per cell, sorted
/// by distance (then index). `n_iter` bounds the NN-descent iterations; iteration stops
/// earlier when fewer than 0.1 % of the entries change.
///
/// The search runs on the cells reordered so that cells near each other in `x` are near each
/// other in memory — the leaf order of one seeded random-projection tree, a space partition
/// walked depth first — and the result is mapped back. Every step of NN-descent gathers
/// neighbours' coordinates and lists; in the input's order (a file's cells are often in no
/// useful order) those gathers miss the caches. Measured at 200,000 simulated cells × 30
/// PCs: 32.0 s in a random order against 16.4 s with the cells sorted by fate and time
/// (BENCHMARKS.md, "Cell order").
pub fn knn_descent(x: &DMatrix<f64>, k: usize, seed: u64, n_iter: usize) -> Vec<Vec<(usize, f64)>> {
    let n = x.nrows();
    let order = locality_order(x, (k + 1).max(RP_LEAF_MIN), seed);
    let xp = DMatrix::from_fn(n, x.ncols(), |i, c| x[(order[i], c)]);
    let found = knn_descent_in_order(&xp, k, seed, n_iter);
    drop(xp);
    let mut out = vec![Vec::new(); n];
    for (p, row) in found.into_iter().enumerate() {
        let mut row: Vec<(usize, f64)> = row.into_iter().map(|(j, d)| (order[j], d)).collect();
        row.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out[order[p]] = row;
    }
    out
}

/// An order of the rows of `x` (`order[new] = old`) in which rows near each other in `x` are
/// near each other: the depth-first leaf order of one seeded random-projection tree with
/// leaves of at most `leaf` rows (a space partition; deterministic for a seed).
pub fn locality_order(x: &DMatrix<f64>, leaf: usize, seed: u64) -> Vec<usize> {
    let pts = Points::new(x);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10ca_11e5);
    rp_leaves(&pts, x.nrows(), leaf.max(2), &mut rng)
        .into_iter()
        .flatten()
        .collect()
}

/// [`knn_descent`] on the rows of `x` in the order given.
fn knn_descent_in_order(
    x: &DMatrix<f64>,
    k: usize,
    seed: u64,
    n_iter: usize,
) -> Vec<Vec<(usize, f64)>> {
    let n = x.nrows();
    let k = k.min(n.saturating_sub(1));
    if k == 0 {
        return vec![Vec::new(); n];
    }
    assert!(n <= u32::MAX as usize, "knn_descent: more than 2^32 cells");
    let pts = Points::new(x);
    // The k nearest of cell `i`'s current list `known` and the candidates `c`: known
    // distances are kept, each new candidate is measured once (duplicates and `i` skipped).
    let best = |i: usize, c: &[u32], known: &[Nb]| -> Row {
        SEEN.with_borrow_mut(|seen| {
            seen.next(n);
            seen.first(i as u32);
            let mut d: Row = Vec::with_capacity(known.len() + c.len() / 2);
            for &p in known {
                if seen.first(p.0) {
                    d.push(p);
                }
            }
            for &j in c {
                if seen.first(j) {
                    d.push((j, pts.dist2(i, j as usize)));
                }
            }
            if d.len() > k {
                d.select_nth_unstable_by(k - 1, cmp);
                d.truncate(k);
            }
            d.sort_by(cmp);
            // `d` was sized for every candidate (hundreds): without this, each kept list
            // holds that capacity (two generations of lists alive during an iteration).
            d.shrink_to_fit();
            d
        })
    };
    // Initialisation: the leaves of random-projection trees (each node split by the
    // hyperplane halfway between two of its points, as in pynndescent), each cell keeping
    // the k nearest of its leaf mates. Leaves are local in every direction, so the first graph is already good and NN-descent needs
    // few rounds (windows along 1-D random projections were weak at 1M cells: 936 s).
    let leaf = (k + 1).max(RP_LEAF_MIN);
    // The trees are independent (each has its own seeded generator), so they are grown in
    // parallel; each cell then keeps the k nearest of the union of its leaves (the same as
    // merging tree after tree: the k smallest under a total order).
    let forest: Vec<(Vec<Vec<usize>>, Vec<u32>)> = (0..RP_TREES)
        .into_par_iter()
        .map(|tree| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5eed_0000 + tree as u64));
            let leaves = rp_leaves(&pts, n, leaf, &mut rng);
            // Each cell is in exactly one leaf of a tree.
            let mut owner = vec![0u32; n];
            for (l, members) in leaves.iter().enumerate() {
                for &i in members {
                    owner[i] = l as u32;
                }
            }
            (leaves, owner)
        })
        .collect();
    let mut g: Vec<Row> = (0..n)
        .into_par_iter()
        .map(|i| {
            let c: Vec<u32> = forest
                .iter()
                .flat_map(|(leaves, owner)| leaves[owner[i] as usize].iter().map(|&l| l as u32))
                .collect();
            best(i, &c, &[])
        })
        .collect();
    drop(forest);
    // `fresh[i][p]`: entry p of cell i's list entered at the last iteration. Local joins
    // only pair two neighbours of a cell when at least one of the two links is fresh (the
    // other pairs were evaluated before), as in the original NN-descent.
    let mut fresh: Vec<Vec<bool>> = g.iter().map(|r| vec![true; r.len()]).collect();
    for _ in 0..n_iter {
        // Reverse lists, capped at k (the nearest), with the freshness of the link. (Capping
        // them lower, or using only forward lists in the second hop, loses recall: 0.98 ->
        // 0.93-0.96 at 200,000 cells.)
        let mut rev: Vec<Vec<(u32, f32, bool)>> = vec![Vec::new(); n];
        for (i, row) in g.iter().enumerate() {
            for (&(j, dj), &f) in row.iter().zip(&fresh[i]) {
                rev[j as usize].push((i as u32, dj, f));
            }
        }
        let cap = k;
        rev.par_iter_mut().for_each(|r| {
            let by = |a: &(u32, f32, bool), b: &(u32, f32, bool)| cmp(&(a.0, a.1), &(b.0, b.1));
            if r.len() > cap {
                r.select_nth_unstable_by(cap - 1, by);
                r.truncate(cap);
            }
            r.shrink_to_fit();
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
                let mut c: Vec<u32> = Vec::with_capacity(4 * k * k);
                for (j, fij) in links(i) {
                    c.push(j);
                    c.extend(
                        links(j as usize)
                            .filter(|&(_, fjl)| fij || fjl)
                            .map(|(l, _)| l),
                    );
                }
                let row = best(i, &c, &g[i]);
                let new: Vec<bool> = row
                    .iter()
                    .map(|p| !g[i].iter().any(|q| q.0 == p.0))
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
    // Distances in float64, and the order they give (float32 ties and rounding aside, the
    // same neighbours).
    g.into_par_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut out: Vec<(usize, f64)> = row
                .into_iter()
                .map(|(j, _)| (j as usize, dist_f64(x, i, j as usize)))
                .collect();
            out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            out
        })
        .collect()
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
        let mut hit = 0;
        for i in (0..n).step_by(10) {
            let mut d: Vec<(usize, f64)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, dist_f64(&x, i, j)))
                .collect();
            d.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            hit += d[..k]
                .iter()
                .filter(|p| approx[i].iter().any(|q| q.0 == p.0))
                .count();
        }
        let recall = hit as f64 / (n / 10 * k) as f64;
        assert!(recall >= 0.95, "recall {recall}");
        // Distances are the float64 Euclidean distances, nearest first.
        for (i, row) in approx.iter().enumerate() {
            assert_eq!(row.len(), k);
            for w in row.windows(2) {
                assert!(w[0].1 <= w[1].1);
            }
            for &(j, d) in row {
                assert_ne!(i, j);
                assert_eq!(d, dist_f64(&x, i, j));
            }
        }
        // Deterministic.
        assert_eq!(approx, knn_descent(&x, k, 0, 20));
    }
}
