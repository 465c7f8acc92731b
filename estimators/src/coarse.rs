//! A two-level preconditioner for GMRES: block-Jacobi ILU(0) plus a coarse correction on
//! aggregates of cells.
//!
//! ILU(0) only reaches a few steps of the chain per application, so on a diffusive chain of
//! a million cells GMRES needs as many iterations as information needs to cross the graph
//! (50–70 at 1M on the demo chain; hundreds on metastable graphs, whose slow modes are nearly
//! constant on large sets of cells). The coarse correction removes those slow components in
//! one step: the cells are grouped into connected aggregates (region growing in the solver's
//! order, a fixed sequential pass), `P` is the aggregates' indicator matrix, and the coarse
//! system `A_c = Pᵀ A P` (the chain lumped on the aggregates: a non-singular M-matrix when
//! every cell can reach absorption) is factorised once. One application, for `r`:
//!
//! ```text
//! z = ILU⁻¹ r;   z += P A_c⁻¹ Pᵀ (r − A z)
//! ```
//!
//! (multiplicative: the smoother, then the coarse correction of what it left). Everything is
//! sequential or split in fixed blocks, so the bits do not depend on the thread count.

use std::sync::Arc;

use cellfate_kernels::Csr;
use rayon::prelude::*;

use crate::iterative::{mul_many, mul_many_into, Ilu0, Preconditioner};

/// Solves the coarse system for `k` interleaved right-hand sides (row-major `m × k`), in
/// place.
pub trait CoarseSolve: Sync + Send {
    /// Replaces `c` by `A_c⁻¹ c`.
    fn solve_coarse(&self, c: &mut [f64], k: usize);
}

/// Most aggregates the absorption solves use (larger aggregates beyond that).
pub const MAX_AGGREGATES: usize = 2048;

/// Groups the rows of the square matrix `a` into connected aggregates of about `target`
/// rows: each row not yet taken, in order, seeds an aggregate that grows breadth first along
/// the stored entries of the rows it takes until it has `target` rows; an aggregate that
/// ends below a quarter of `target` (its seed was hemmed in by earlier aggregates) is then
/// merged into the aggregate of its first neighbour outside it. Returns the aggregate of
/// every row (numbered from 0 in the order of their seeds) and the number of aggregates.
pub fn aggregate(a: &Csr, target: usize) -> (Vec<u32>, usize) {
    let n = a.nrows();
    let target = target.max(1);
    const FREE: u32 = u32::MAX;
    let mut agg = vec![FREE; n];
    let mut sizes: Vec<usize> = Vec::new();
    let mut queue: Vec<usize> = Vec::new();
    for seed in 0..n {
        if agg[seed] != FREE {
            continue;
        }
        let id = sizes.len() as u32;
        queue.clear();
        queue.push(seed);
        agg[seed] = id;
        let mut head = 0;
        'grow: while head < queue.len() {
            let i = queue[head];
            head += 1;
            for &j in a.row(i).0 {
                if queue.len() >= target {
                    break 'grow;
                }
                let j = j as usize;
                if agg[j] == FREE {
                    agg[j] = id;
                    queue.push(j);
                }
            }
        }
        sizes.push(queue.len());
    }
    // Small aggregates join a neighbouring one (the first entry, in row order, that leads
    // out of them); one pass, in the order of the seeds, so the result is fixed.
    let small = (target / 4).max(1);
    let mut merged: Vec<u32> = (0..sizes.len() as u32).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    for (i, &g) in agg.iter().enumerate() {
        if sizes[g as usize] < small {
            members[g as usize].push(i);
        }
    }
    for (g, rows) in members.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let outside = rows
            .iter()
            .flat_map(|&i| a.row(i).0.iter())
            .map(|&j| merged[agg[j as usize] as usize])
            .find(|&h| h != merged[g]);
        if let Some(h) = outside {
            merged[g] = h;
        }
    }
    // Follow chains of merges to their end, then renumber densely in seed order.
    let resolve = |mut g: u32| {
        let mut steps = 0;
        while merged[g as usize] != g && steps <= merged.len() {
            g = merged[g as usize];
            steps += 1;
        }
        g
    };
    let roots: Vec<u32> = (0..sizes.len() as u32).map(resolve).collect();
    let mut number = vec![FREE; sizes.len()];
    let mut m = 0u32;
    for &r in &roots {
        if number[r as usize] == FREE {
            number[r as usize] = m;
            m += 1;
        }
    }
    for g in agg.iter_mut() {
        *g = number[roots[*g as usize] as usize];
    }
    (agg, m as usize)
}

/// The Galerkin coarse matrix `Pᵀ A P` for the aggregates `agg` (`m` of them), as `(row,
/// column, value)` triplets sorted by row, then column.
pub fn galerkin(a: &Csr, agg: &[u32], m: usize) -> Vec<(usize, usize, f64)> {
    // Rows of each aggregate, then one sparse accumulator pass per aggregate.
    let mut start = vec![0usize; m + 1];
    for &g in agg {
        start[g as usize + 1] += 1;
    }
    for g in 0..m {
        start[g + 1] += start[g];
    }
    let mut fill = start.clone();
    let mut rows = vec![0usize; agg.len()];
    for (i, &g) in agg.iter().enumerate() {
        rows[fill[g as usize]] = i;
        fill[g as usize] += 1;
    }
    let mut acc = vec![0.0; m];
    let mut seen = vec![false; m];
    let mut touched: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    for g in 0..m {
        for &i in &rows[start[g]..start[g + 1]] {
            let (cols, vals) = a.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                let h = agg[j as usize] as usize;
                if !seen[h] {
                    seen[h] = true;
                    touched.push(h);
                }
                acc[h] += v;
            }
        }
        touched.sort_unstable();
        for &h in &touched {
            out.push((g, h, acc[h]));
            acc[h] = 0.0;
            seen[h] = false;
        }
        touched.clear();
    }
    out
}

/// Block-Jacobi ILU(0) followed by an aggregation coarse correction (see the module
/// documentation).
pub struct TwoLevel<C> {
    a: Arc<Csr>,
    /// `A P` (row `i`: the entries of `A`'s row summed per aggregate), so that GMRES's
    /// operator `A M⁻¹ r = A z + (A P) c` needs one product with `A`, not two.
    ap: Csr,
    ilu: Arc<Ilu0>,
    agg: Vec<u32>,
    m: usize,
    coarse: C,
}

impl<C: CoarseSolve> TwoLevel<C> {
    /// The preconditioner of `a` from its ILU(0), its aggregates (`agg`, `m` of them) and
    /// the solver of `Pᵀ A P`.
    pub fn new(a: Arc<Csr>, ilu: Arc<Ilu0>, agg: Vec<u32>, m: usize, coarse: C) -> Self {
        assert_eq!(agg.len(), a.nrows(), "TwoLevel: one aggregate per row");
        let ap = times_prolongation(&a, &agg, m);
        Self {
            a,
            ap,
            ilu,
            agg,
            m,
            coarse,
        }
    }

    /// Stored entries of `A P`.
    pub fn ap_nnz(&self) -> usize {
        self.ap.nnz()
    }

    /// Number of aggregates.
    pub fn n_aggregates(&self) -> usize {
        self.m
    }
}

/// `A P` for the aggregates `agg` (`m` of them): row `i` holds, for every aggregate that
/// `A`'s row `i` reaches, the sum of those entries (in column order), in increasing
/// aggregate order. Built in parallel row blocks.
pub fn times_prolongation(a: &Csr, agg: &[u32], m: usize) -> Csr {
    let n = a.nrows();
    let parts: Vec<(Vec<usize>, Vec<u32>, Vec<f64>)> = (0..n)
        .collect::<Vec<_>>()
        .par_chunks(PROLONG_ROWS)
        .map(|rows| {
            let mut lens = Vec::with_capacity(rows.len());
            let mut idx = Vec::new();
            let mut val = Vec::new();
            let mut pairs: Vec<(u32, f64)> = Vec::new();
            for &i in rows {
                pairs.clear();
                let (cols, vals) = a.row(i);
                // Each entry added to its aggregate's sum, in column order (a row reaches a
                // few aggregates: a linear search among them), then the sums in increasing
                // aggregate order.
                for (&j, &v) in cols.iter().zip(vals) {
                    let g = agg[j as usize];
                    match pairs.iter_mut().find(|p| p.0 == g) {
                        Some(p) => p.1 += v,
                        None => pairs.push((g, v)),
                    }
                }
                pairs.sort_unstable_by_key(|p| p.0);
                idx.extend(pairs.iter().map(|p| p.0));
                val.extend(pairs.iter().map(|p| p.1));
                lens.push(pairs.len());
            }
            (lens, idx, val)
        })
        .collect();
    let nnz = parts.iter().map(|p| p.1.len()).sum();
    let mut indptr = Vec::with_capacity(n + 1);
    indptr.push(0usize);
    let (mut indices, mut data) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
    for (lens, idx, val) in parts {
        for l in lens {
            indptr.push(indptr[indptr.len() - 1] + l);
        }
        indices.extend_from_slice(&idx);
        data.extend_from_slice(&val);
    }
    Csr::try_new(n, m, indptr, indices, data).expect("A P is a valid CSR by construction")
}

/// Rows per parallel task of the prolongation.
const PROLONG_ROWS: usize = 4096;

impl<C: CoarseSolve> TwoLevel<C> {
    /// `Pᵀ r` (`m × k` interleaved), summed in row order (sequential: a few milliseconds at
    /// 1M cells).
    fn restrict(&self, r: &[f64], k: usize) -> Vec<f64> {
        let mut c = vec![0.0; self.m * k];
        for (i, &g) in self.agg.iter().enumerate() {
            let (ci, ri) = (
                &mut c[g as usize * k..(g as usize + 1) * k],
                &r[i * k..(i + 1) * k],
            );
            for q in 0..k {
                ci[q] += ri[q];
            }
        }
        c
    }

    /// The coarse correction's coefficients `c = A_c⁻¹ Pᵀ (r − A z)` (`m × k` interleaved)
    /// from `pr = Pᵀ r` (taken before `r` was overwritten by `z`, so that no copy of `r` is
    /// kept) and `A z`.
    fn coarse_coefficients(&self, pr: Vec<f64>, az: &[f64], k: usize) -> Vec<f64> {
        let mut c = pr;
        for (i, &g) in self.agg.iter().enumerate() {
            let (ci, ai) = (
                &mut c[g as usize * k..(g as usize + 1) * k],
                &az[i * k..(i + 1) * k],
            );
            for q in 0..k {
                ci[q] -= ai[q];
            }
        }
        self.coarse.solve_coarse(&mut c, k);
        c
    }
}

impl<C: CoarseSolve> Preconditioner for TwoLevel<C> {
    fn apply(&self, x: &mut [f64]) {
        self.apply_many(x, 1);
    }

    fn apply_operator(&self, a: &Csr, x: &mut [f64], k: usize, w: &mut [f64]) {
        if !std::ptr::eq(a, &*self.a) {
            // Another system's operator (a nearby chain): M⁻¹, then its A.
            self.apply_many(x, k);
            mul_many_into(a, x, k, w);
            return;
        }
        let k = k.max(1);
        let pr = self.restrict(x, k);
        self.ilu.apply_many(x, k);
        mul_many_into(a, x, k, w);
        let c = self.coarse_coefficients(pr, w, k);
        // w = A z + (A P) c.
        let ap = &self.ap;
        let (indptr, indices, data) = (ap.indptr(), ap.indices(), ap.data());
        w.par_chunks_mut(PROLONG_ROWS * k)
            .enumerate()
            .for_each(|(b, wb)| {
                for (r, wi) in wb.chunks_exact_mut(k).enumerate() {
                    let i = b * PROLONG_ROWS + r;
                    for p in indptr[i]..indptr[i + 1] {
                        let (d, g) = (data[p], indices[p] as usize * k);
                        for q in 0..k {
                            wi[q] += d * c[g + q];
                        }
                    }
                }
            });
    }

    fn apply_many(&self, x: &mut [f64], k: usize) {
        let k = k.max(1);
        let pr = self.restrict(x, k);
        self.ilu.apply_many(x, k);
        let az = mul_many(&self.a, x, k);
        let c = self.coarse_coefficients(pr, &az, k);
        drop(az);
        x.par_chunks_mut(PROLONG_ROWS * k)
            .zip(self.agg.par_chunks(PROLONG_ROWS))
            .for_each(|(xb, gb)| {
                for (xi, &g) in xb.chunks_exact_mut(k).zip(gb) {
                    let cg = &c[g as usize * k..(g as usize + 1) * k];
                    for q in 0..k {
                        xi[q] += cg[q];
                    }
                }
            });
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::iterative::{gmres, Ilu0};
    use cellfate_kernels::testing::clustered_knn_chain;

    /// `I − Q` of a synthetic metastable kNN chain (25 clusters) with the cells of the last
    /// cluster absorbing: strongly metastable, so ILU(0) alone needs hundreds of iterations.
    fn metastable_system(n: usize) -> (Csr, Vec<f64>) {
        let t = clustered_knn_chain(n, 25, 15, 3);
        let nt = n - n / 25;
        let mut trip = Vec::new();
        let mut b = vec![0.0; nt];
        for i in 0..nt {
            let (cols, vals) = t.row(i);
            let mut out = 0.0;
            for (&c, &v) in cols.iter().zip(vals) {
                let c = c as usize;
                if c != i {
                    out += v;
                }
                if c >= nt {
                    b[i] += v;
                } else if c != i {
                    trip.push((i, c, -v));
                }
            }
            trip.push((i, i, out));
        }
        (Csr::from_triplets(nt, nt, &trip).unwrap(), b)
    }

    /// A dense `Pᵀ A P` LU for the tests (Gaussian elimination with partial pivoting).
    struct Dense(Vec<Vec<f64>>);

    impl CoarseSolve for Dense {
        fn solve_coarse(&self, c: &mut [f64], k: usize) {
            let m = self.0.len();
            for q in 0..k {
                let mut a = self.0.clone();
                let mut b: Vec<f64> = (0..m).map(|i| c[i * k + q]).collect();
                for col in 0..m {
                    let p = (col..m)
                        .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
                        .unwrap();
                    a.swap(col, p);
                    b.swap(col, p);
                    for r in col + 1..m {
                        let f = a[r][col] / a[col][col];
                        for j in col..m {
                            a[r][j] -= f * a[col][j];
                        }
                        b[r] -= f * b[col];
                    }
                }
                for i in (0..m).rev() {
                    let s: f64 = (i + 1..m).map(|j| a[i][j] * b[j]).sum();
                    b[i] = (b[i] - s) / a[i][i];
                }
                for (i, v) in b.into_iter().enumerate() {
                    c[i * k + q] = v;
                }
            }
        }
    }

    fn dense_galerkin(a: &Csr, agg: &[u32], m: usize) -> Vec<Vec<f64>> {
        let mut d = vec![vec![0.0; m]; m];
        for (i, c, v) in galerkin(a, agg, m) {
            d[i][c] += v;
        }
        d
    }

    #[test]
    fn aggregates_cover_every_cell_and_are_connected() {
        let (a, _) = metastable_system(2000);
        let n = a.nrows();
        let target = 40;
        let (agg, m) = aggregate(&a, target);
        assert_eq!(agg.len(), n);
        assert!(agg.iter().all(|&g| (g as usize) < m));
        let mut sizes = vec![0usize; m];
        for &g in &agg {
            sizes[g as usize] += 1;
        }
        assert!(sizes.iter().all(|&s| s > 0), "aggregate numbers are dense");
        // About n / target aggregates (small remnants merged away).
        assert!(
            m <= 2 * n / target && m >= n / (2 * target),
            "{m} aggregates"
        );
        // Each aggregate is connected through the stored entries (in either direction).
        for g in 0..m as u32 {
            let members: Vec<usize> = (0..n).filter(|&i| agg[i] == g).collect();
            let mut seen = vec![false; n];
            let mut stack = vec![members[0]];
            seen[members[0]] = true;
            let mut reached = 1;
            while let Some(i) = stack.pop() {
                let out = a.row(i).0.iter().map(|&j| j as usize);
                let inn = members
                    .iter()
                    .copied()
                    .filter(|&j| a.row(j).0.contains(&(i as u32)));
                for j in out.chain(inn).collect::<Vec<_>>() {
                    if agg[j] == g && !seen[j] {
                        seen[j] = true;
                        reached += 1;
                        stack.push(j);
                    }
                }
            }
            assert_eq!(reached, members.len(), "aggregate {g} is not connected");
        }
        // The same input, the same aggregates.
        assert_eq!(aggregate(&a, target), (agg, m));
    }

    #[test]
    fn galerkin_and_a_p_are_the_products_with_the_indicator() {
        let (a, _) = metastable_system(600);
        let n = a.nrows();
        let (agg, m) = aggregate(&a, 30);
        let p = |i: usize, g: usize| if agg[i] as usize == g { 1.0 } else { 0.0 };
        let ad: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut r = vec![0.0; n];
                let (c, v) = a.row(i);
                for (&j, &x) in c.iter().zip(v) {
                    r[j as usize] = x;
                }
                r
            })
            .collect();
        let ap = times_prolongation(&a, &agg, m);
        let coarse = dense_galerkin(&a, &agg, m);
        for i in 0..n {
            let row: Vec<f64> = (0..m)
                .map(|g| (0..n).map(|j| ad[i][j] * p(j, g)).sum())
                .collect();
            let (c, v) = ap.row(i);
            let mut got = vec![0.0; m];
            for (&g, &x) in c.iter().zip(v) {
                got[g as usize] = x;
            }
            for g in 0..m {
                assert!((row[g] - got[g]).abs() < 1e-14, "A P [{i}, {g}]");
            }
        }
        for g in 0..m {
            for h in 0..m {
                let want: f64 = (0..n)
                    .filter(|&i| agg[i] as usize == g)
                    .map(|i| (0..n).map(|j| ad[i][j] * p(j, h)).sum::<f64>())
                    .sum();
                assert!((want - coarse[g][h]).abs() < 1e-13, "A_c [{g}, {h}]");
            }
        }
    }

    /// ILU(0) with the coarse correction on aggregates of 64 (the coarse system solved
    /// densely), and the number of aggregates.
    fn two_level_of(a: &Arc<Csr>, ilu: &Arc<Ilu0>) -> (TwoLevel<Dense>, usize) {
        let (agg, m) = aggregate(a, 64);
        let coarse = Dense(dense_galerkin(a, &agg, m));
        (
            TwoLevel::new(Arc::clone(a), Arc::clone(ilu), agg, m, coarse),
            m,
        )
    }

    /// `max |x − y|`.
    fn max_diff(x: &[f64], y: &[f64]) -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn the_coarse_correction_cuts_the_iterations_on_a_metastable_chain() {
        let (a, b) = metastable_system(5000);
        let a = Arc::new(a);
        let ilu = Arc::new(Ilu0::new(&a).unwrap());
        let (two, m) = two_level_of(&a, &ilu);
        assert_eq!(two.n_aggregates(), m);
        // The operator GMRES uses, A M⁻¹ x by the shortcut A z + (A P) c, agrees with
        // M⁻¹ then A.
        let x: Vec<f64> = (0..a.nrows())
            .map(|i| ((i * 7919) % 13) as f64 - 6.0)
            .collect();
        let mut x1 = x.clone();
        let mut fast = vec![0.0; a.nrows()];
        two.apply_operator(&a, &mut x1, 1, &mut fast);
        let mut x2 = x.clone();
        two.apply_many(&mut x2, 1);
        let slow = a.mul_vec(&x2);
        let scale = slow.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        for (f, s) in fast.iter().zip(&slow) {
            assert!((f - s).abs() <= 1e-12 * scale, "{f} vs {s}");
        }
        let (x_one, one) = gmres(&a, &*ilu, &b, 1e-12, 50, 20_000);
        let (x_two, rep) = gmres(&a, &two, &b, 1e-12, 50, 20_000);
        assert!(one.converged && rep.converged, "{one:?} {rep:?}");
        // Measured: 27 iterations against 314 (aggregates of 64, 4,800 transient cells).
        assert!(
            rep.iterations * 3 < one.iterations,
            "{} vs {}",
            rep.iterations,
            one.iterations
        );
        let r = a
            .mul_vec(&x_two)
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(r < 1e-10, "{r}");
        let d = max_diff(&x_one, &x_two);
        assert!(d < 1e-9, "{d}");
    }

    /// The stall probe ends ILU(0)'s first cycle on a metastable chain at its iteration, and
    /// GMRES continued from that iterate with the coarse correction solves the system to the
    /// residual of a solve from zero; a fast system is not stopped.
    #[test]
    fn the_stall_probe_hands_a_slow_solve_to_the_coarse_correction() {
        use crate::iterative::{gmres_many_with, GmresOptions, StallProbe};
        let (a, b) = metastable_system(5000);
        let a = Arc::new(a);
        let ilu = Arc::new(Ilu0::new(&a).unwrap());
        let probe = GmresOptions {
            stall: Some(StallProbe {
                at: 30,
                window: 5,
                projected: 100,
            }),
            ..GmresOptions::new(1e-12, 50, 50)
        };
        let mut first = gmres_many_with(&a, &*ilu, &[&b], None, &probe);
        let (x1, rep1) = first.pop().unwrap();
        assert!(rep1.stalled && !rep1.converged, "{rep1:?}");
        assert_eq!(rep1.iterations, 30);
        // The iterate of the 30 iterations is kept: its residual is below b's.
        assert!(rep1.residual < 0.1, "{rep1:?}");
        let (two, _) = two_level_of(&a, &ilu);
        let (x2, rep2) = gmres_many_with(
            &a,
            &two,
            &[&b],
            Some(vec![x1]),
            &GmresOptions::new(1e-12, 50, 1000),
        )
        .pop()
        .unwrap();
        assert!(rep2.converged && !rep2.stalled, "{rep2:?}");
        assert!(rep2.residual <= 1e-12, "{rep2:?}");
        let (x_lu, _) = gmres(&a, &two, &b, 1e-14, 50, 1000);
        let d = max_diff(&x2, &x_lu);
        assert!(d < 1e-9, "{d}");
        // A well-conditioned system under the same probe converges, not stalled.
        let n = 400;
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 3.0));
            for d in [1usize, 7, 50] {
                trip.push((i, (i + d) % n, -0.9));
            }
        }
        let easy = Csr::from_triplets(n, n, &trip).unwrap();
        let rhs: Vec<f64> = (0..n).map(|i| (i % 5) as f64).collect();
        let easy_ilu = Ilu0::new(&easy).unwrap();
        let (_, rep) = gmres_many_with(&easy, &easy_ilu, &[&rhs], None, &probe)
            .pop()
            .unwrap();
        assert!(rep.converged && !rep.stalled, "{rep:?}");
    }
}
