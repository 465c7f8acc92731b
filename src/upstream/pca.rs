//! Principal component analysis of a sparse matrix with implicit centring: the centred matrix
//! `A − 1μᵀ` is never formed (scanpy's sparse PCA does the same).
//!
//! - **Exact** when `n p² ≤ 5·10¹¹` (125,000 cells at 2,000 genes), or beyond while it costs
//!   less than the randomized solver (`n p² ≤ 500 · l · nnz`, up to 5,000 genes):
//!   the `p × p` covariance is accumulated over blocks of
//!   [`ROW_BLOCK`] rows (each block centred and densified on its own, so memory is one block),
//!   or, for sparse enough rows, from each row's pairs of stored entries (`AᵀA − n μμᵀ`,
//!   whichever costs less), then its symmetric eigendecomposition gives the loadings, as
//!   scanpy's ARPACK solver does to machine precision.
//! - **Randomized** otherwise (Halko, Martinsson & Tropp 2011): a seeded Gaussian sketch with
//!   `2k + 10` columns and 7 power iterations, every product with `A` or `Aᵀ` done on the
//!   sparse entries (`nnz · l` operations) with the centring applied as a rank-one correction.
//!
//! Both are deterministic and independent of the number of threads: row blocks are fixed and
//! partial sums are added in block order. Scores are returned with scanpy's sign convention
//! flipped to "largest |entry| positive" per component.

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use cellfate_kernels::Csr;

/// Rows per block in the covariance and transposed products.
pub const ROW_BLOCK: usize = 4096;
/// Up to this `n p²` the exact solver is always used.
const EXACT_MAX_WORK: f64 = 5e11;
/// Beyond [`EXACT_MAX_WORK`], the exact solver is still used while `n p²` stays within this
/// multiple of `l · nnz` (the randomized solver's 16 sparse products with `l` columns) and
/// `p ≤` [`EXACT_MAX_GENES`]. Measured on 150,000 simulated cells × 2,000 genes (623 stored
/// entries a cell): exact 30 s on one thread, randomized 90 s on two — its sparse products
/// run at ~1 GFlop/s, the covariance's dense ones at ~40.
const EXACT_WORK_PER_SKETCH_ENTRY: f64 = 500.0;
/// Largest number of genes for the exact solver beyond [`EXACT_MAX_WORK`] (its partial
/// covariances take `COV_PARTS · 8 p²` bytes: 800 MB at 5,000 genes).
const EXACT_MAX_GENES: usize = 5000;
/// Fixed ranges of row blocks of the covariance, computed in parallel.
const COV_PARTS: usize = 4;
/// Row blocks from which the covariance is computed in [`COV_PARTS`] parallel ranges (fewer:
/// one sequential sum).
const PARALLEL_MIN_BLOCKS: usize = 16;

/// The first `k` principal-component scores (n × k) of the rows of `a`, centred per column.
pub fn pca(a: &Csr, k: usize, seed: u64) -> DMatrix<f64> {
    pca_with(a, k, seed, None)
}

/// [`pca`] with the solver forced (`Some(true)`: exact, `Some(false)`: randomized).
fn pca_with(a: &Csr, k: usize, seed: u64, force_exact: Option<bool>) -> DMatrix<f64> {
    let (n, p) = (a.nrows(), a.ncols());
    let k = k.min(p).min(n);
    if n == 0 || k == 0 {
        return DMatrix::zeros(n, k);
    }
    let mu: Vec<f64> = a.col_sums().iter().map(|s| s / n as f64).collect();
    let l = (2 * k + 10).min(p).min(n);
    let work = (n as f64) * (p as f64) * (p as f64);
    let exact = force_exact.unwrap_or(
        work <= EXACT_MAX_WORK
            || (p <= EXACT_MAX_GENES
                && work <= EXACT_WORK_PER_SKETCH_ENTRY * (l as f64) * (a.nnz() as f64)),
    );
    if exact {
        let cov = if sparse_covariance_pays(a) {
            covariance_sparse(a, &mu)
        } else {
            covariance(a, &mu)
        };
        let v = top_eigenvectors(&cov, k);
        return fix_signs(mul(a, &mu, &v));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega = DMatrix::from_fn(p, l, |_, _| StandardNormal.sample(&mut rng));
    let mut y = mul(a, &mu, &omega);
    for _ in 0..7 {
        y = thin_q(&y);
        let z = thin_q(&mul_t(a, &mu, &y));
        y = mul(a, &mu, &z);
    }
    let q = thin_q(&y);
    let b = mul_t(a, &mu, &q).transpose();
    let svd = b.svd(true, false);
    let u = q * svd.u.unwrap_or_else(|| DMatrix::zeros(l, l));
    // Order by singular value (nalgebra does not sort).
    let mut idx: Vec<usize> = (0..svd.singular_values.len()).collect();
    idx.sort_by(|&x, &y| svd.singular_values[y].total_cmp(&svd.singular_values[x]));
    fix_signs(DMatrix::from_fn(n, k, |i, j| {
        let c = idx[j];
        u[(i, c)] * svd.singular_values[c]
    }))
}

/// `(A − 1μᵀ)ᵀ (A − 1μᵀ)`, block by block of rows (faer's sequential product: fast, and
/// the same bits for any thread count). From [`PARALLEL_MIN_BLOCKS`] blocks on, the blocks
/// are split into [`COV_PARTS`] fixed ranges whose sums are computed in parallel and added
/// in range order (the split does not depend on the thread count either).
fn covariance(a: &Csr, mu: &[f64]) -> faer::Mat<f64> {
    let p = a.ncols();
    sum_over_row_parts(a.nrows(), p, |rows| {
        let mut cov = faer::Mat::<f64>::zeros(p, p);
        for start in rows.clone().step_by(ROW_BLOCK) {
            let end = (start + ROW_BLOCK).min(rows.end);
            let mut block = faer::Mat::<f64>::from_fn(end - start, p, |_, j| -mu[j]);
            for i in start..end {
                let (c, v) = a.row(i);
                for (&j, &x) in c.iter().zip(v) {
                    block[(i - start, j as usize)] += x;
                }
            }
            faer::linalg::matmul::matmul(
                cov.as_mut(),
                faer::Accum::Add,
                block.transpose(),
                block.as_ref(),
                1.0,
                faer::Par::Seq,
            );
        }
        cov
    })
}

/// `Σ part(rows)` over fixed ranges of whole [`ROW_BLOCK`]s of the `n` rows: [`COV_PARTS`]
/// ranges from [`PARALLEL_MIN_BLOCKS`] blocks on (else one), computed in parallel and added
/// in range order, so the sum does not depend on the thread count.
fn sum_over_row_parts(
    n: usize,
    p: usize,
    part: impl Fn(std::ops::Range<usize>) -> faer::Mat<f64> + Sync,
) -> faer::Mat<f64> {
    let blocks = n.div_ceil(ROW_BLOCK);
    let parts = if blocks >= PARALLEL_MIN_BLOCKS {
        COV_PARTS
    } else {
        1
    };
    let per = blocks.div_ceil(parts) * ROW_BLOCK;
    let sums: Vec<faer::Mat<f64>> = (0..parts)
        .into_par_iter()
        .map(|k| part((k * per).min(n)..((k + 1) * per).min(n)))
        .collect();
    let mut sums = sums.into_iter();
    let mut total = sums.next().unwrap_or_else(|| faer::Mat::zeros(p, p));
    for s in sums {
        total += s;
    }
    total
}

/// Whether [`covariance_sparse`] costs less than [`covariance`]: its `Σᵢ nnzᵢ² / 2`
/// scattered multiply-adds against the dense products' `n p²` (which run about
/// [`DENSE_SPEEDUP`] times faster per operation).
fn sparse_covariance_pays(a: &Csr) -> bool {
    let (n, p) = (a.nrows() as f64, a.ncols() as f64);
    let pairs: f64 = (0..a.nrows())
        .map(|i| {
            let z = a.row(i).0.len() as f64;
            z * (z + 1.0) / 2.0
        })
        .sum();
    pairs * DENSE_SPEEDUP < n * p * p
}

/// How many times faster per multiply-add the dense covariance's blocked products run than
/// the sparse covariance's scattered updates. Measured on pancreas's 3,696 cells × 1,126
/// highly variable genes (602 stored entries a cell, 53 % dense): dense 4.7·10⁹ in 0.224 s
/// (21 G/s), sparse 6.7·10⁸ pairs in 0.390 s (1.7 G/s): 12×.
const DENSE_SPEEDUP: f64 = 12.0;

/// [`covariance`] from the stored entries only: `AᵀA − n μμᵀ`, where `AᵀA` sums, for every
/// row, the products of each pair of its entries (each unordered pair once, into one
/// triangle of a column-major matrix: contiguous updates of the column of its first
/// entry). `Σᵢ nnzᵢ²/2` operations instead of `n p²`: at a few hundred stored entries per cell
/// and thousands of genes, a tenth or less. Summed by [`sum_over_row_parts`], as [`covariance`] (the same bits
/// at any thread count).
fn covariance_sparse(a: &Csr, mu: &[f64]) -> faer::Mat<f64> {
    let (n, p) = (a.nrows(), a.ncols());
    let mut cov = sum_over_row_parts(n, p, |rows| {
        let mut cov = faer::Mat::<f64>::zeros(p, p);
        for i in rows {
            let (c, v) = a.row(i);
            for (q, (&j1, &x1)) in c.iter().zip(v).enumerate() {
                let col = cov
                    .col_mut(j1 as usize)
                    .try_as_col_major_mut()
                    .expect("a column of a column-major matrix is contiguous")
                    .as_slice_mut();
                for (&j2, &x2) in c[q..].iter().zip(&v[q..]) {
                    col[j2 as usize] += x1 * x2;
                }
            }
        }
        cov
    });
    // Both triangles hold parts of each off-diagonal sum (rows need not be sorted); the
    // centring as a rank-one correction.
    let nf = n as f64;
    for j in 0..p {
        cov[(j, j)] -= nf * mu[j] * mu[j];
        for i in j + 1..p {
            let s = cov[(i, j)] + cov[(j, i)] - nf * mu[i] * mu[j];
            cov[(i, j)] = s;
            cov[(j, i)] = s;
        }
    }
    cov
}

/// Eigenvectors of the `k` largest eigenvalues of a symmetric matrix (p × k, by decreasing
/// eigenvalue): faer's divide-and-conquer solver on one thread (the result must not depend
/// on the thread count), nalgebra's if faer reports no convergence.
fn top_eigenvectors(cov: &faer::Mat<f64>, k: usize) -> DMatrix<f64> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
    let p = cov.nrows();
    let par = faer::Par::Seq;
    let mut u = faer::Mat::<f64>::zeros(p, p);
    let mut s = faer::diag::Diag::<f64>::zeros(p);
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        p,
        ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    let solved = self_adjoint_evd(
        cov.as_ref(),
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    );
    if solved.is_ok() {
        // Eigenvalues come in nondecreasing order.
        return DMatrix::from_fn(p, k, |i, j| u[(i, p - 1 - j)]);
    }
    let eig = DMatrix::from_fn(p, p, |i, j| cov[(i, j)]).symmetric_eigen();
    let mut idx: Vec<usize> = (0..p).collect();
    idx.sort_by(|&x, &y| {
        eig.eigenvalues[y]
            .total_cmp(&eig.eigenvalues[x])
            .then(x.cmp(&y))
    });
    DMatrix::from_fn(p, k, |i, j| eig.eigenvectors[(i, idx[j])])
}

/// The orthonormal factor `Q` (n × min(n, l)) of the QR decomposition of `y`: faer's blocked
/// Householder QR on one thread (nalgebra's unblocked QR took minutes on a 1,000,000 × 70
/// sketch; one thread keeps the result independent of the thread count).
fn thin_q(y: &DMatrix<f64>) -> DMatrix<f64> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::householder;
    use faer::linalg::qr::no_pivoting::factor;
    let (n, l) = (y.nrows(), y.ncols());
    let size = n.min(l);
    if size == 0 {
        return DMatrix::zeros(n, size);
    }
    let par = faer::Par::Seq;
    let mut a = faer::Mat::<f64>::from_fn(n, l, |i, j| y[(i, j)]);
    let bs = factor::recommended_block_size::<f64>(n, l);
    let mut coeff = faer::Mat::<f64>::zeros(bs, size);
    let mut buf = MemBuffer::new(factor::qr_in_place_scratch::<f64>(
        n,
        l,
        bs,
        par,
        Default::default(),
    ));
    factor::qr_in_place(
        a.as_mut(),
        coeff.as_mut(),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    );
    // The Householder basis: the strictly lower part of the factored matrix, unit diagonal.
    for j in 0..size {
        for i in 0..j {
            a[(i, j)] = 0.0;
        }
        a[(j, j)] = 1.0;
    }
    let basis = a.as_ref().subcols(0, size);
    let mut q = faer::Mat::<f64>::identity(n, size);
    let mut buf = MemBuffer::new(
        householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
            n, bs, size,
        ),
    );
    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        basis,
        coeff.as_ref(),
        faer::Conj::No,
        q.as_mut(),
        par,
        MemStack::new(&mut buf),
    );
    DMatrix::from_fn(n, size, |i, j| q[(i, j)])
}

/// `(A − 1μᵀ) X` for a dense `p × l` matrix `X` (rows in parallel).
fn mul(a: &Csr, mu: &[f64], x: &DMatrix<f64>) -> DMatrix<f64> {
    let (n, l) = (a.nrows(), x.ncols());
    let xt = x.transpose(); // column j of xt = row j of x, contiguous
    let shift: Vec<f64> = (0..l)
        .map(|c| -x.column(c).iter().zip(mu).map(|(a, b)| a * b).sum::<f64>())
        .collect();
    let mut out = vec![0.0; n * l];
    out.par_chunks_mut(l).enumerate().for_each(|(i, row)| {
        row.copy_from_slice(&shift);
        let (c, v) = a.row(i);
        for (&j, &w) in c.iter().zip(v) {
            for (r, &xv) in row.iter_mut().zip(xt.column(j as usize).iter()) {
                *r += w * xv;
            }
        }
    });
    DMatrix::from_row_slice(n, l, &out)
}

/// `(A − 1μᵀ)ᵀ Y` for a dense `n × l` matrix `Y`: partial sums over fixed row blocks, added
/// in block order (the result does not depend on the thread count).
fn mul_t(a: &Csr, mu: &[f64], y: &DMatrix<f64>) -> DMatrix<f64> {
    let (n, p, l) = (a.nrows(), a.ncols(), y.ncols());
    let yt = y.transpose();
    let blocks: Vec<Vec<f64>> = (0..n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|b| {
            let mut acc = vec![0.0; p * l];
            for i in b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(n) {
                let (c, v) = a.row(i);
                let yi = yt.column(i);
                for (&j, &w) in c.iter().zip(v) {
                    let dst = &mut acc[j as usize * l..(j as usize + 1) * l];
                    for (d, &yv) in dst.iter_mut().zip(yi.iter()) {
                        *d += w * yv;
                    }
                }
            }
            acc
        })
        .collect();
    let mut z = vec![0.0; p * l];
    for acc in &blocks {
        for (d, s) in z.iter_mut().zip(acc) {
            *d += s;
        }
    }
    let colsum: Vec<f64> = (0..l).map(|c| y.column(c).sum()).collect();
    for j in 0..p {
        for c in 0..l {
            z[j * l + c] -= mu[j] * colsum[c];
        }
    }
    DMatrix::from_row_slice(p, l, &z)
}

/// Sign convention of the principal components: the entry of largest magnitude of each
/// score column is positive.
fn fix_signs(mut s: DMatrix<f64>) -> DMatrix<f64> {
    for j in 0..s.ncols() {
        let big = s
            .column(j)
            .iter()
            .fold(0.0f64, |m, &v| if v.abs() > m.abs() { v } else { m });
        if big < 0.0 {
            s.column_mut(j).neg_mut();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse random matrix with a planted low-rank structure.
    fn sample(n: usize, p: usize, seed: u64) -> (Vec<f64>, Csr) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let f = DMatrix::<f64>::from_fn(n, 4, |_, _| StandardNormal.sample(&mut rng));
        let g = DMatrix::<f64>::from_fn(4, p, |i, _| {
            let z: f64 = StandardNormal.sample(&mut rng);
            z * (4 - i) as f64
        });
        let m = f * g;
        let dense: Vec<f64> = (0..n * p)
            .map(|t| {
                let (i, j) = (t / p, t % p);
                let x = m[(i, j)];
                if x > 0.5 {
                    x
                } else {
                    0.0
                }
            })
            .collect();
        let csr = Csr::from_dense(n, p, &dense).expect("csr");
        (dense, csr)
    }

    /// Reference: SVD of the explicitly centred dense matrix.
    fn dense_scores(x: &[f64], n: usize, p: usize, k: usize) -> DMatrix<f64> {
        let mut a = DMatrix::from_row_slice(n, p, x);
        for j in 0..p {
            let m = a.column(j).mean();
            a.column_mut(j).add_scalar_mut(-m);
        }
        let svd = a.svd(true, false);
        let u = svd.u.expect("u");
        let mut idx: Vec<usize> = (0..svd.singular_values.len()).collect();
        idx.sort_by(|&x, &y| svd.singular_values[y].total_cmp(&svd.singular_values[x]));
        fix_signs(DMatrix::from_fn(n, k, |i, j| {
            u[(i, idx[j])] * svd.singular_values[idx[j]]
        }))
    }

    #[test]
    fn exact_path_equals_the_dense_svd() {
        let (n, p) = (5000, 60); // two row blocks
        let (x, a) = sample(n, p, 1);
        let got = pca(&a, 5, 0);
        let want = dense_scores(&x, n, p, 5);
        let d = (&got - &want).abs().max() / want.abs().max();
        assert!(d < 1e-9, "{d:e}");
    }

    /// The covariance from the stored entries (`AᵀA − n μμᵀ`) equals the one from centred
    /// dense blocks to rounding, with one row block and with parallel parts (70,000 rows), at
    /// any thread count; a matrix this sparse takes it.
    #[test]
    fn sparse_covariance_equals_the_dense_blocks() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (n, p) in [(3000, 40), (70_000, 30)] {
            let dense: Vec<f64> = (0..n * p)
                .map(|_| {
                    let u: f64 = rand::Rng::random(&mut rng);
                    if u < 0.1 {
                        (1.0 + 20.0 * u).ln()
                    } else {
                        0.0
                    }
                })
                .collect();
            let a = Csr::from_dense(n, p, &dense).expect("csr");
            assert!(sparse_covariance_pays(&a));
            let mu: Vec<f64> = a.col_sums().iter().map(|s| s / n as f64).collect();
            let want = covariance(&a, &mu);
            let run = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool")
                    .install(|| covariance_sparse(&a, &mu))
            };
            let got = run(1);
            assert!(got == run(3), "{n} rows: thread count changed the sums");
            let scale = (0..p).map(|j| want[(j, j)]).fold(0.0f64, f64::max);
            for j in 0..p {
                for i in 0..p {
                    let d = (got[(i, j)] - want[(i, j)]).abs() / scale;
                    assert!(d < 1e-12, "{n} rows, ({i}, {j}): {d:e}");
                    assert_eq!(got[(i, j)], got[(j, i)]);
                }
            }
        }
    }

    #[test]
    fn randomized_path_equals_the_dense_svd() {
        let (n, p) = (3000, 50);
        let (x, a) = sample(n, p, 2);
        let got = pca_with(&a, 4, 0, Some(false));
        let want = dense_scores(&x, n, p, 4);
        let d = (&got - &want).abs().max() / want.abs().max();
        assert!(d < 1e-6, "{d:e}");
        // The products with implicit centring equal the dense ones.
        let mu: Vec<f64> = a.col_sums().iter().map(|s| s / n as f64).collect();
        let mut c = DMatrix::from_row_slice(n, p, &x);
        for (j, m) in mu.iter().enumerate() {
            c.column_mut(j).add_scalar_mut(-m);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let xm = DMatrix::<f64>::from_fn(p, 7, |_, _| StandardNormal.sample(&mut rng));
        let ym = DMatrix::<f64>::from_fn(n, 7, |_, _| StandardNormal.sample(&mut rng));
        assert!((mul(&a, &mu, &xm) - &c * &xm).abs().max() < 1e-9);
        assert!((mul_t(&a, &mu, &ym) - c.transpose() * &ym).abs().max() < 1e-9);
    }

    #[test]
    fn thread_count_does_not_change_the_scores() {
        // 70,000 rows: 18 row blocks, so the exact covariance is summed in parallel parts.
        let (x, a) = sample(70_000, 12, 4);
        for force in [Some(true), Some(false)] {
            let run = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool")
                    .install(|| pca_with(&a, 4, 0, force))
            };
            let one = run(1);
            assert_eq!(one, run(3), "{force:?}");
            let want = dense_scores(&x, 70_000, 12, 4);
            let d = (&one - &want).abs().max() / want.abs().max();
            assert!(d < 1e-6, "{force:?}: {d:e}");
        }
    }
}
