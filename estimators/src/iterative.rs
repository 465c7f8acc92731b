//! Restarted GMRES with a block-Jacobi ILU(0) preconditioner (right preconditioning), for absorption systems
//! too large for a sparse LU. One right-hand side at a time (faer's block BiCGSTAB was seen to
//! report convergence with a wrong answer on several right-hand sides); the true residual is
//! recomputed by the caller.

use crate::basis::{orthogonalize, Basis};
use cellfate_kernels::Csr;
use rayon::prelude::*;
use thiserror::Error;

/// Why an ILU(0) factorisation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IluError {
    /// A row stores no diagonal entry.
    #[error("ILU(0): row {row} has no stored diagonal entry")]
    MissingDiagonal {
        /// The row.
        row: usize,
    },
    /// A pivot became zero.
    #[error("ILU(0): zero pivot at row {row}")]
    ZeroPivot {
        /// The row.
        row: usize,
    },
}

/// A preconditioner `M⁻¹` applied in place.
pub trait Preconditioner: Sync {
    /// Replaces `x` by `M⁻¹ x`.
    fn apply(&self, x: &mut [f64]);

    /// Replaces each of the `k` interleaved vectors of `x` (row-major `n × k`: entry `i` of
    /// vector `c` at `i k + c`) by `M⁻¹` of it, with the same bits as [`apply`](Self::apply)
    /// on each alone. The default applies them one after the other.
    fn apply_many(&self, x: &mut [f64], k: usize) {
        apply_each(self, x, k);
    }

    /// GMRES's operator `A M⁻¹` on the `k` interleaved vectors of `x` (which may be left
    /// changed), written into `out` (`n × k`, the same layout; GMRES reuses it from one
    /// iteration to the next). The default applies [`apply_many`](Self::apply_many), then
    /// `A`; a preconditioner that already forms `A` times part of `M⁻¹ x` may save work.
    fn apply_operator(&self, a: &Csr, x: &mut [f64], k: usize, out: &mut [f64]) {
        self.apply_many(x, k);
        mul_many_into(a, x, k, out);
    }
}

/// [`Preconditioner::apply`] to each of `k` interleaved vectors in turn (the default
/// [`Preconditioner::apply_many`]).
pub fn apply_each<P: Preconditioner + ?Sized>(p: &P, x: &mut [f64], k: usize) {
    let n = x.len() / k.max(1);
    for c in 0..k {
        let mut col: Vec<f64> = (0..n).map(|i| x[i * k + c]).collect();
        p.apply(&mut col);
        for (i, v) in col.into_iter().enumerate() {
            x[i * k + c] = v;
        }
    }
}

impl Preconditioner for Ilu0 {
    fn apply(&self, x: &mut [f64]) {
        Ilu0::apply(self, x)
    }

    fn apply_many(&self, x: &mut [f64], k: usize) {
        Ilu0::apply_many(self, x, k)
    }
}

/// Rows per diagonal block of [`Ilu0`]: a fixed number (not the thread count), so that the
/// preconditioner, and with it every result, is the same at any thread count.
pub const ILU_BLOCK: usize = 1 << 16;

/// Block-Jacobi ILU(0): incomplete LU with the sparsity pattern of `A` within each diagonal
/// block of [`ILU_BLOCK`] rows (entries coupling two blocks are left out of the
/// preconditioner, not out of the system). The blocks are factorised and applied in
/// parallel; a system of at most one block gets the plain ILU(0). In a bandwidth-reducing
/// order (reverse Cuthill–McKee) few entries leave their block.
#[derive(Clone, Debug)]
pub struct Ilu0 {
    block: usize,
    blocks: Vec<IluBlock>,
}

/// ILU(0) of one diagonal block (unit lower `L`, upper `U` stored together). The factors are
/// computed in `f64` and stored in `f32` (in `f64` if one would not fit): the solves are
/// bound by reading them, and a preconditioner needs no more digits (GMRES's residual is
/// that of the exact operator); the solves accumulate in `f64`, the pivots stay `f64`.
#[derive(Clone, Debug)]
struct IluBlock {
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Factors,
    diag: Vec<usize>,
    pivots: Vec<f64>,
}

/// The stored factor entries.
#[derive(Clone, Debug)]
enum Factors {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Ilu0 {
    /// Factorises `a` (square, sorted rows, with a stored non-zero diagonal) in blocks of
    /// [`ILU_BLOCK`] rows.
    pub fn new(a: &Csr) -> Result<Self, IluError> {
        Self::with_block(a, ILU_BLOCK)
    }

    /// [`new`](Self::new) with blocks of `block` rows (at least 1).
    pub fn with_block(a: &Csr, block: usize) -> Result<Self, IluError> {
        let n = a.nrows();
        let block = block.max(1);
        let starts: Vec<usize> = (0..n).step_by(block).collect();
        let factored: Vec<Result<IluBlock, IluError>> = starts
            .par_iter()
            .map(|&s| {
                let rows: Vec<usize> = (s..(s + block).min(n)).collect();
                let sub = if rows.len() == n {
                    a.clone()
                } else {
                    a.submatrix(&rows, &rows)
                };
                IluBlock::new(sub).map_err(|e| match e {
                    IluError::MissingDiagonal { row } => IluError::MissingDiagonal { row: row + s },
                    IluError::ZeroPivot { row } => IluError::ZeroPivot { row: row + s },
                })
            })
            .collect();
        // The first failure in row order.
        let blocks = factored.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Self { block, blocks })
    }

    /// Solves `M x = b` in place (`M` the block-diagonal `L U`).
    pub fn apply(&self, x: &mut [f64]) {
        self.apply_many(x, 1);
    }

    /// [`apply`](Self::apply) to `k` interleaved vectors (row-major `n × k`) at once: each
    /// block's factors are read once for all of them; the same bits as one at a time.
    pub fn apply_many(&self, x: &mut [f64], k: usize) {
        let k = k.max(1);
        x.par_chunks_mut(self.block * k)
            .zip(self.blocks.par_iter())
            .for_each(|(xb, b)| b.apply_many(xb, k));
    }
}

impl IluBlock {
    fn new(lu: Csr) -> Result<Self, IluError> {
        let n = lu.nrows();
        // The matrix's own arrays, factorised in place (no copies of its pattern).
        let (_, _, indptr, indices, mut data) = lu.into_parts();
        let mut diag = vec![usize::MAX; n];
        for (i, d) in diag.iter_mut().enumerate() {
            let row = &indices[indptr[i]..indptr[i + 1]];
            match row.iter().position(|&c| c as usize == i) {
                Some(p) => *d = indptr[i] + p,
                None => return Err(IluError::MissingDiagonal { row: i }),
            }
        }
        // Where each column of the current row is stored (usize::MAX: not in the row), so
        // that the update of row i by row k looks its entries up instead of merging the two
        // rows: the same operations in the same order as the merge, in a third to a half of
        // its time (1M-cell kNN chain: 3.7 s -> 1.3-2.0 s).
        let mut at = vec![usize::MAX; n];
        for i in 1..n {
            let (s, e) = (indptr[i], indptr[i + 1]);
            for p in s..e {
                at[indices[p] as usize] = p;
            }
            for kp in s..e {
                let k = indices[kp] as usize;
                if k >= i {
                    break;
                }
                let dkk = data[diag[k]];
                if dkk == 0.0 {
                    return Err(IluError::ZeroPivot { row: k });
                }
                data[kp] /= dkk;
                let lik = data[kp];
                // a_ij -= l_ik u_kj for j > k present in both rows.
                for up in diag[k] + 1..indptr[k + 1] {
                    let q = at[indices[up] as usize];
                    if q != usize::MAX {
                        data[q] -= lik * data[up];
                    }
                }
            }
            for p in s..e {
                at[indices[p] as usize] = usize::MAX;
            }
        }
        let pivots = diag.iter().map(|&d| data[d]).collect();
        let fits = data
            .iter()
            .all(|&v| v == 0.0 || (v.abs() <= f64::from(f32::MAX) && v.abs() >= 1e-30));
        let values = if fits {
            Factors::F32(data.into_iter().map(|v| v as f32).collect())
        } else {
            Factors::F64(data)
        };
        Ok(Self {
            indptr,
            indices,
            values,
            diag,
            pivots,
        })
    }

    /// Solves `L U x = b` in place for `k` interleaved right-hand sides (the operations on
    /// each in the order of a single solve).
    fn apply_many(&self, x: &mut [f64], k: usize) {
        match &self.values {
            Factors::F32(v) => self.solve(v, x, k),
            Factors::F64(v) => self.solve(v, x, k),
        }
    }

    fn solve<T: Copy + Into<f64>>(&self, data: &[T], x: &mut [f64], k: usize) {
        match k {
            1 => self.solve_fixed::<T, 1>(data, x),
            2 => self.solve_fixed::<T, 2>(data, x),
            3 => self.solve_fixed::<T, 3>(data, x),
            4 => self.solve_fixed::<T, 4>(data, x),
            5 => self.solve_fixed::<T, 5>(data, x),
            6 => self.solve_fixed::<T, 6>(data, x),
            7 => self.solve_fixed::<T, 7>(data, x),
            8 => self.solve_fixed::<T, 8>(data, x),
            9 => self.solve_fixed::<T, 9>(data, x),
            10 => self.solve_fixed::<T, 10>(data, x),
            11 => self.solve_fixed::<T, 11>(data, x),
            12 => self.solve_fixed::<T, 12>(data, x),
            _ => self.solve_any(data, x, k),
        }
    }

    /// [`solve`](Self::solve) for `K` right-hand sides known at compile time (the inner
    /// loops unrolled; the same operations in the same order).
    fn solve_fixed<T: Copy + Into<f64>, const K: usize>(&self, data: &[T], x: &mut [f64]) {
        let n = x.len() / K;
        let (indptr, indices) = (&self.indptr, &self.indices);
        for i in 0..n {
            let mut s = [0.0; K];
            s.copy_from_slice(&x[i * K..(i + 1) * K]);
            let range = indptr[i]..self.diag[i];
            for (&c, &d) in indices[range.clone()].iter().zip(&data[range]) {
                let (d, j): (f64, usize) = (d.into(), c as usize * K);
                let xj = &x[j..j + K];
                for c in 0..K {
                    s[c] -= d * xj[c];
                }
            }
            x[i * K..(i + 1) * K].copy_from_slice(&s);
        }
        for i in (0..n).rev() {
            let mut s = [0.0; K];
            s.copy_from_slice(&x[i * K..(i + 1) * K]);
            let range = (self.diag[i] + 1)..indptr[i + 1];
            for (&c, &d) in indices[range.clone()].iter().zip(&data[range]) {
                let (d, j): (f64, usize) = (d.into(), c as usize * K);
                let xj = &x[j..j + K];
                for c in 0..K {
                    s[c] -= d * xj[c];
                }
            }
            let dii = self.pivots[i];
            for c in 0..K {
                x[i * K + c] = s[c] / dii;
            }
        }
    }

    fn solve_any<T: Copy + Into<f64>>(&self, data: &[T], x: &mut [f64], k: usize) {
        let n = x.len() / k;
        let (indptr, indices) = (&self.indptr, &self.indices);
        let mut s = vec![0.0; k];
        for i in 0..n {
            s.copy_from_slice(&x[i * k..(i + 1) * k]);
            for p in indptr[i]..self.diag[i] {
                let (d, j): (f64, usize) = (data[p].into(), indices[p] as usize * k);
                for (sc, xc) in s.iter_mut().zip(&x[j..j + k]) {
                    *sc -= d * xc;
                }
            }
            x[i * k..(i + 1) * k].copy_from_slice(&s);
        }
        for i in (0..n).rev() {
            s.copy_from_slice(&x[i * k..(i + 1) * k]);
            for p in (self.diag[i] + 1)..indptr[i + 1] {
                let (d, j): (f64, usize) = (data[p].into(), indices[p] as usize * k);
                for (sc, xc) in s.iter_mut().zip(&x[j..j + k]) {
                    *sc -= d * xc;
                }
            }
            let dii = self.pivots[i];
            for (xc, sc) in x[i * k..(i + 1) * k].iter_mut().zip(&s) {
                *xc = sc / dii;
            }
        }
    }
}

/// Outcome of a GMRES solve.
#[derive(Clone, Debug, PartialEq)]
pub struct GmresReport {
    /// Total inner iterations.
    pub iterations: usize,
    /// Final relative residual `‖b − Ax‖ / ‖b‖` (recomputed).
    pub residual: f64,
    /// Whether the stopping rule of [`GmresOptions`] was met.
    pub converged: bool,
    /// Whether the solve was ended early by [`GmresOptions::stall`].
    pub stalled: bool,
}

/// Stopping rule and limits of [`gmres_many_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct GmresOptions {
    /// A right-hand side is solved when `‖b − Ax‖₂ ≤ tol ‖b‖₂`, ...
    pub tol: f64,
    /// ... or, when set, when its normwise backward error is below a target:
    /// `‖b − Ax‖₂ ≤ eta (‖A‖∞ ‖x‖∞ + ‖b‖∞)` (`‖·‖₂ ≥ ‖·‖∞`, so the backward error in the
    /// ∞-norm, `‖b − Ax‖∞ / (‖A‖∞ ‖x‖∞ + ‖b‖∞)`, is then at most `eta`).
    pub backward: Option<BackwardStop>,
    /// Restart length.
    pub restart: usize,
    /// Maximum inner iterations per right-hand side (over all cycles).
    pub max_iter: usize,
    /// A stall probe: after `at` iterations of its first cycle, a right-hand side whose
    /// convergence rate over the last `window` of them projects more than `projected`
    /// iterations in all ends the solve there (reported with
    /// [`stalled`](GmresReport::stalled), not converged), so that the caller can continue
    /// with a better preconditioner instead of finishing a slow cycle.
    pub stall: Option<StallProbe>,
}

/// See [`GmresOptions::backward`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackwardStop {
    /// Target backward error.
    pub eta: f64,
    /// `‖A‖∞`.
    pub a_norm: f64,
}

/// See [`GmresOptions::stall`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallProbe {
    /// Iteration of the first cycle at which the rate is measured.
    pub at: usize,
    /// Iterations over which the rate is measured (at least 1, less than `at`): the last
    /// ones, since GMRES often stagnates at first and then converges fast once its space
    /// holds the chain's slowest modes.
    pub window: usize,
    /// Largest projected number of iterations that is not a stall.
    pub projected: usize,
}

impl GmresOptions {
    /// The relative rule alone, no stall probe.
    pub fn new(tol: f64, restart: usize, max_iter: usize) -> Self {
        Self {
            tol,
            backward: None,
            restart,
            max_iter,
            stall: None,
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Rows per parallel task of [`mul_many`] (fixed: row sums do not depend on it anyway).
const ROW_CHUNK: usize = 1024;

/// `A X` for `k` interleaved vectors (row-major `n × k`): the matrix read once for all of
/// them; each entry summed in the order of [`Csr::mul_vec`].
pub(crate) fn mul_many(a: &Csr, x: &[f64], k: usize) -> Vec<f64> {
    let mut out = vec![0.0; a.nrows() * k];
    mul_many_into(a, x, k, &mut out);
    out
}

/// [`mul_many`] into `out` (`n × k`; every entry overwritten).
pub(crate) fn mul_many_into(a: &Csr, x: &[f64], k: usize, out: &mut [f64]) {
    assert_eq!(
        out.len(),
        a.nrows() * k,
        "mul_many_into: output of the wrong length"
    );
    match k {
        1 => mul_fixed::<1>(a, x, out),
        2 => mul_fixed::<2>(a, x, out),
        3 => mul_fixed::<3>(a, x, out),
        4 => mul_fixed::<4>(a, x, out),
        5 => mul_fixed::<5>(a, x, out),
        6 => mul_fixed::<6>(a, x, out),
        7 => mul_fixed::<7>(a, x, out),
        8 => mul_fixed::<8>(a, x, out),
        9 => mul_fixed::<9>(a, x, out),
        10 => mul_fixed::<10>(a, x, out),
        11 => mul_fixed::<11>(a, x, out),
        12 => mul_fixed::<12>(a, x, out),
        _ => mul_any(a, x, k, out),
    }
}

/// [`mul_many`] for `K` vectors known at compile time (the inner loop unrolled; the same
/// operations in the same order).
fn mul_fixed<const K: usize>(a: &Csr, x: &[f64], out: &mut [f64]) {
    let (indptr, indices, data) = (a.indptr(), a.indices(), a.data());
    out.par_chunks_mut(ROW_CHUNK * K)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (r, y) in rows.chunks_exact_mut(K).enumerate() {
                let i = chunk * ROW_CHUNK + r;
                let range = indptr[i]..indptr[i + 1];
                let mut acc = [0.0; K];
                for (&c, &d) in indices[range.clone()].iter().zip(&data[range]) {
                    let j = c as usize * K;
                    let xj = &x[j..j + K];
                    for c in 0..K {
                        acc[c] += d * xj[c];
                    }
                }
                y.copy_from_slice(&acc);
            }
        });
}

fn mul_any(a: &Csr, x: &[f64], k: usize, out: &mut [f64]) {
    let (indptr, indices, data) = (a.indptr(), a.indices(), a.data());
    out.par_chunks_mut(ROW_CHUNK * k)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (r, y) in rows.chunks_mut(k).enumerate() {
                let i = chunk * ROW_CHUNK + r;
                y.fill(0.0);
                for p in indptr[i]..indptr[i + 1] {
                    let (d, j) = (data[p], indices[p] as usize * k);
                    for (yc, xc) in y.iter_mut().zip(&x[j..j + k]) {
                        *yc += d * xc;
                    }
                }
            }
        });
}

/// Copies the vectors `cols` (each of length `n`) into one interleaved row-major `n × k`.
fn interleave(cols: &[&[f64]], n: usize) -> Vec<f64> {
    let k = cols.len();
    let mut out = vec![0.0; n * k];
    out.par_chunks_mut(ROW_CHUNK * k)
        .enumerate()
        .for_each(|(chunk, rows)| {
            for (r, y) in rows.chunks_mut(k).enumerate() {
                let i = chunk * ROW_CHUNK + r;
                for (yc, col) in y.iter_mut().zip(cols) {
                    *yc = col[i];
                }
            }
        });
    out
}

/// Copies the interleaved row-major `n × k` `x` into its `k = outs.len()` columns, in
/// parallel chunks of rows.
fn deinterleave(x: &[f64], outs: Vec<&mut [f64]>) {
    let k = outs.len();
    if k == 0 {
        return;
    }
    let n = x.len() / k;
    let mut chunks: Vec<Vec<&mut [f64]>> = (0..n.div_ceil(ROW_CHUNK))
        .map(|_| Vec::with_capacity(k))
        .collect();
    for out in outs {
        for (c, part) in out.chunks_mut(ROW_CHUNK).enumerate() {
            chunks[c].push(part);
        }
    }
    chunks
        .into_par_iter()
        .zip(x.par_chunks(ROW_CHUNK * k))
        .for_each(|(mut parts, xb)| {
            for (q, part) in parts.iter_mut().enumerate() {
                for (r, v) in part.iter_mut().enumerate() {
                    *v = xb[r * k + q];
                }
            }
        });
}

/// Writes the current basis vector `v_j` of each of `cols` (zeros for one without a basis)
/// into the interleaved row-major `n × k` `z`, in parallel blocks of rows.
fn interleave_current(cols: &[&mut Column<'_>], z: &mut [f64]) {
    let k = cols.len();
    let views: Vec<Option<(&Basis, usize)>> = cols
        .iter()
        .map(|c| c.v.as_ref().map(|v| (v, c.used)))
        .collect();
    z.par_chunks_mut(crate::basis::BLOCK * k)
        .enumerate()
        .for_each(|(b, zb)| {
            for (q, view) in views.iter().enumerate() {
                match view {
                    Some((v, j)) => {
                        for (r, &val) in v.column_block(*j, b).iter().enumerate() {
                            zb[r * k + q] = val;
                        }
                    }
                    None => {
                        for r in 0..zb.len() / k {
                            zb[r * k + q] = 0.0;
                        }
                    }
                }
            }
        });
}

/// One right-hand side's restarted GMRES, advanced one inner iteration at a time by
/// [`gmres_many`].
struct Column<'b> {
    b: &'b [f64],
    bnorm: f64,
    /// `‖b‖∞`.
    bmax: f64,
    /// The residual norm that counts as solved at the current iterate (see
    /// [`GmresOptions`]).
    target: f64,
    /// The in-cycle residual estimate at iteration `at − window` of the stall probe.
    probe_start: f64,
    stalled: bool,
    x: Vec<f64>,
    r: Vec<f64>,
    /// The current `A M⁻¹ v_j` (reused from one iteration to the next).
    w: Vec<f64>,
    rnorm: f64,
    iterations: usize,
    done: bool,
    /// Whether a cycle is under way.
    cycling: bool,
    /// The cycle's Arnoldi basis (`restart + 1` vectors in row blocks, allocated once and
    /// reused by every cycle).
    v: Option<Basis>,
    h: Vec<Vec<f64>>,
    cs: Vec<f64>,
    sn: Vec<f64>,
    g: Vec<f64>,
    k: usize,
    used: usize,
}

impl Column<'_> {
    /// The residual norm that counts as solved at the current iterate.
    fn target(&self, opts: &GmresOptions) -> f64 {
        let relative = opts.tol * self.bnorm;
        match opts.backward {
            Some(bw) => {
                let xmax = self.x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                relative.max(bw.eta * (bw.a_norm * xmax + self.bmax))
            }
            None => relative,
        }
    }

    /// Starts a cycle from the current residual, or marks the column done.
    fn start_cycle(&mut self, opts: &GmresOptions) {
        let (restart, max_iter) = (opts.restart, opts.max_iter);
        self.target = self.target(opts);
        if self.rnorm <= self.target
            || self.stalled
            || self.iterations >= max_iter
            || cellfate_kernels::interrupt::requested()
        {
            self.done = true;
            return;
        }
        let k = restart.min(max_iter - self.iterations).max(1);
        self.k = k;
        self.used = 0;
        self.cycling = true;
        let n = self.x.len();
        if self.v.as_ref().is_none_or(|v| v.cols < k + 1) {
            self.v = Some(Basis::new(n, k + 1));
        }
        let inv = 1.0 / self.rnorm;
        self.r.iter_mut().for_each(|x| *x *= inv);
        if let Some(v) = self.v.as_mut() {
            v.set_column(0, &self.r);
        }
        self.h = vec![vec![0.0; k]; k + 1];
        self.cs = vec![0.0; k];
        self.sn = vec![0.0; k];
        self.g = vec![0.0; k + 1];
        self.g[0] = self.rnorm;
    }

    /// The inner iteration `j = used` given `w = A M⁻¹ v_j` in `self.w`; returns whether
    /// the cycle ends.
    fn step(&mut self, stall: Option<StallProbe>) -> bool {
        let mut w = std::mem::take(&mut self.w);
        let ended = self.step_with(&mut w, stall);
        self.w = w;
        ended
    }

    /// [`step`](Self::step) with `w` (orthogonalised against the basis by CGS2).
    fn step_with(&mut self, w: &mut [f64], stall: Option<StallProbe>) -> bool {
        let j = self.used;
        let Some(v) = self.v.as_mut() else {
            return true;
        };
        let (coef, wn) = orthogonalize(v, j + 1, w);
        let h = &mut self.h;
        for (i, c) in coef.into_iter().enumerate() {
            h[i][j] = c;
        }
        h[j + 1][j] = wn;
        for i in 0..j {
            let t = self.cs[i] * h[i][j] + self.sn[i] * h[i + 1][j];
            h[i + 1][j] = -self.sn[i] * h[i][j] + self.cs[i] * h[i + 1][j];
            h[i][j] = t;
        }
        let d = h[j][j].hypot(h[j + 1][j]);
        self.cs[j] = if d > 0.0 { h[j][j] / d } else { 1.0 };
        self.sn[j] = if d > 0.0 { h[j + 1][j] / d } else { 0.0 };
        h[j][j] = d;
        h[j + 1][j] = 0.0;
        self.g[j + 1] = -self.sn[j] * self.g[j];
        self.g[j] *= self.cs[j];
        self.used = j + 1;
        self.iterations += 1;
        let estimate = self.g[j + 1].abs();
        if let Some(p) = stall.filter(|p| p.window >= 1 && p.window < p.at) {
            // Only in the first cycle: `iterations` counts from this call's start.
            if self.iterations == p.at - p.window && self.used == self.iterations {
                self.probe_start = estimate;
            } else if self.iterations == p.at && self.used == self.iterations {
                let rate = (estimate / self.probe_start).powf(1.0 / p.window as f64);
                let projected = if rate < 1.0 && estimate > 0.0 {
                    p.at as f64 + (0.1 * self.target / estimate).ln().min(0.0) / rate.ln()
                } else {
                    f64::INFINITY
                };
                if projected > p.projected as f64 && estimate > 0.1 * self.target {
                    self.stalled = true;
                    return true;
                }
            }
        }
        // The cycle ends at the target; the true residual then decides (in right-
        // preconditioned GMRES the estimate is the residual of the exact operator, up to
        // rounding), and a column that misses it starts another cycle.
        if estimate <= self.target || wn == 0.0 || self.used == self.k {
            return true;
        }
        let inv = 1.0 / wn;
        w.iter_mut().for_each(|x| *x *= inv);
        v.set_column(j + 1, w);
        false
    }

    /// `V y` for the cycle's least-squares solution `y` (the update before `M⁻¹`); ends the
    /// cycle.
    fn update(&mut self) -> Vec<f64> {
        let used = self.used;
        let mut y = vec![0.0; used];
        for i in (0..used).rev() {
            let mut s = self.g[i];
            for (hil, yl) in self.h[i][i + 1..used].iter().zip(&y[i + 1..used]) {
                s -= hil * yl;
            }
            y[i] = if self.h[i][i] != 0.0 {
                s / self.h[i][i]
            } else {
                0.0
            };
        }
        self.cycling = false;
        let n = self.x.len();
        match &self.v {
            Some(v) => v.combine(&y, n),
            None => vec![0.0; n],
        }
    }
}

/// Right-preconditioned restarted GMRES(`restart`) for `A x = b`, starting from 0.
pub fn gmres<M: Preconditioner + ?Sized>(
    a: &Csr,
    m: &M,
    b: &[f64],
    tol: f64,
    restart: usize,
    max_iter: usize,
) -> (Vec<f64>, GmresReport) {
    gmres_many(a, m, &[b], tol, restart, max_iter)
        .pop()
        .expect("one right-hand side")
}

/// [`gmres`] for several right-hand sides at once; see [`gmres_many_with`].
pub fn gmres_many<M: Preconditioner + ?Sized>(
    a: &Csr,
    m: &M,
    bs: &[&[f64]],
    tol: f64,
    restart: usize,
    max_iter: usize,
) -> Vec<(Vec<f64>, GmresReport)> {
    gmres_many_with(a, m, bs, None, &GmresOptions::new(tol, restart, max_iter))
}

/// GMRES for several right-hand sides at once, each with the bits of its own solve: the
/// sparse products and preconditioner solves of all unfinished ones in one pass over the
/// matrix and factors (they are bound by reading those), the rest per right-hand side in
/// parallel. Each starts from its vector of `x0` when given (else from 0); the tolerances
/// stay relative to `b`, so a solve continued from an earlier one's iterate stops where a
/// solve from zero would. Memory: `restart + 2` vectors per right-hand side.
pub fn gmres_many_with<M: Preconditioner + ?Sized>(
    a: &Csr,
    m: &M,
    bs: &[&[f64]],
    x0: Option<Vec<Vec<f64>>>,
    opts: &GmresOptions,
) -> Vec<(Vec<f64>, GmresReport)> {
    let n = a.nrows();
    let mut x0 = x0.map(Vec::into_iter);
    let mut cols: Vec<Column<'_>> = bs
        .iter()
        .map(|&b| {
            assert_eq!(b.len(), n, "gmres: right-hand side of the wrong length");
            let x = match x0.as_mut() {
                Some(it) => it
                    .next()
                    .expect("gmres: one starting vector per right-hand side"),
                None => vec![0.0; n],
            };
            assert_eq!(x.len(), n, "gmres: starting vector of the wrong length");
            let bnorm = norm(b);
            Column {
                b,
                bnorm: bnorm.max(f64::MIN_POSITIVE),
                bmax: b.iter().fold(0.0f64, |m, v| m.max(v.abs())),
                target: 0.0,
                probe_start: 0.0,
                stalled: false,
                x,
                r: b.to_vec(),
                w: Vec::new(),
                rnorm: bnorm,
                iterations: 0,
                done: false,
                cycling: false,
                v: None,
                h: Vec::new(),
                cs: Vec::new(),
                sn: Vec::new(),
                g: Vec::new(),
                k: 0,
                used: 0,
            }
        })
        .collect();
    if x0.is_some() {
        residuals(a, &mut cols.iter_mut().collect::<Vec<_>>());
    }
    // The interleaved z = v_j and w = A M⁻¹ z of the active right-hand sides, reused by
    // every iteration (fresh vectors of this size cost page faults each time).
    let (mut z, mut w) = (Vec::new(), Vec::new());
    loop {
        cols.iter_mut()
            .filter(|c| !c.done && !c.cycling)
            .for_each(|c| c.start_cycle(opts));
        let mut active: Vec<&mut Column<'_>> = cols.iter_mut().filter(|c| !c.done).collect();
        if active.is_empty() {
            break;
        }
        let k = active.len();
        // z_j = M⁻¹ v_j, then w = A z_j, for all of them at once.
        z.resize(n * k, 0.0);
        w.resize(n * k, 0.0);
        interleave_current(&active, &mut z);
        m.apply_operator(a, &mut z, k, &mut w);
        deinterleave(
            &w,
            active
                .iter_mut()
                .map(|c| {
                    c.w.resize(n, 0.0);
                    c.w.as_mut_slice()
                })
                .collect(),
        );
        // One right-hand side at a time: each orthogonalisation runs over the basis's row
        // blocks in parallel.
        let ended: Vec<bool> = active.iter_mut().map(|c| c.step(opts.stall)).collect();
        // Cycles that ended: x += M⁻¹ V y, then the true residual b − A x.
        let mut finished: Vec<&mut Column<'_>> = active
            .into_iter()
            .zip(ended)
            .filter_map(|(c, e)| e.then_some(c))
            .collect();
        if finished.is_empty() {
            continue;
        }
        let kf = finished.len();
        let us: Vec<Vec<f64>> = finished.iter_mut().map(|c| c.update()).collect();
        let mut u = {
            let refs: Vec<&[f64]> = us.iter().map(Vec::as_slice).collect();
            interleave(&refs, n)
        };
        drop(us);
        m.apply_many(&mut u, kf);
        finished.par_iter_mut().enumerate().for_each(|(q, c)| {
            for (i, xi) in c.x.iter_mut().enumerate() {
                *xi += u[i * kf + q];
            }
        });
        residuals(a, &mut finished);
    }
    cols.into_iter()
        .map(|mut c| {
            let target = c.target(opts);
            c.target = target;
            (
                c.x,
                GmresReport {
                    iterations: c.iterations,
                    residual: c.rnorm / c.bnorm,
                    converged: c.rnorm <= c.target,
                    stalled: c.stalled,
                },
            )
        })
        .collect()
}

/// The true residuals `b − A x` of `cols` and their norms.
fn residuals(a: &Csr, cols: &mut [&mut Column<'_>]) {
    let n = a.nrows();
    let k = cols.len();
    if k == 0 {
        return;
    }
    let ax = {
        let xs: Vec<&[f64]> = cols.iter().map(|c| c.x.as_slice()).collect();
        mul_many(a, &interleave(&xs, n), k)
    };
    cols.par_iter_mut().enumerate().for_each(|(q, c)| {
        for (i, (ri, bi)) in c.r.iter_mut().zip(c.b).enumerate() {
            *ri = bi - ax[i * k + q];
        }
        c.rnorm = norm(&c.r);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The products and ILU solves of `k` interleaved vectors (unrolled for 1–12, a loop
    /// above) give each vector the bits of its own single product or solve.
    #[test]
    fn many_right_hand_sides_equal_one_at_a_time_to_the_bit() {
        let n = 500;
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 2.0 + (i % 7) as f64 * 0.1));
            for d in [1usize, 3, 17, 60] {
                trip.push((i, (i + d) % n, -0.1 - (i % 5) as f64 * 0.03));
                trip.push((i, (i + n - d) % n, -0.05 - (d % 3) as f64 * 0.02));
            }
        }
        let a = Csr::from_triplets(n, n, &trip).unwrap();
        let ilu = Ilu0::new(&a).unwrap();
        for k in 1..=14 {
            let cols: Vec<Vec<f64>> = (0..k)
                .map(|c| {
                    (0..n)
                        .map(|i| ((i * 31 + c * 7) % 23) as f64 - 11.0)
                        .collect()
                })
                .collect();
            let mut x = vec![0.0; n * k];
            for (c, col) in cols.iter().enumerate() {
                for (i, v) in col.iter().enumerate() {
                    x[i * k + c] = *v;
                }
            }
            let ax = mul_many(&a, &x, k);
            let mut mx = x.clone();
            ilu.apply_many(&mut mx, k);
            for (c, col) in cols.iter().enumerate() {
                let one = a.mul_vec(col);
                let mut m1 = col.clone();
                ilu.apply(&mut m1);
                for i in 0..n {
                    assert_eq!(ax[i * k + c].to_bits(), one[i].to_bits(), "A x, k = {k}");
                    assert_eq!(mx[i * k + c].to_bits(), m1[i].to_bits(), "ILU, k = {k}");
                }
            }
        }
    }

    #[test]
    fn ilu_gmres_solves_a_nonsymmetric_system() {
        // I − Q of a 1-D drifting chain (diagonally dominant, non-symmetric).
        let n = 400;
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 1.0));
            if i + 1 < n {
                trip.push((i, i + 1, -0.6));
            }
            if i > 0 {
                trip.push((i, i - 1, -0.39));
            }
        }
        let a = Csr::from_triplets(n, n, &trip).unwrap();
        let b: Vec<f64> = (0..n).map(|i| if i == n - 1 { 0.6 } else { 0.0 }).collect();
        let ilu = Ilu0::new(&a).unwrap();
        let (x, rep) = gmres(&a, &ilu, &b, 1e-12, 50, 5000);
        assert!(rep.converged, "{rep:?}");
        let r: f64 = a
            .mul_vec(&x)
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(r < 1e-11, "{r}");
        // ILU(0) of a tridiagonal matrix is its exact LU: one iteration suffices.
        assert!(rep.iterations <= 2, "{rep:?}");
    }

    /// A non-symmetric, diagonally dominant test system with a solution of size ~`scale`.
    fn drifting_system(n: usize, scale: f64) -> (Csr, Vec<f64>) {
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 1.0));
            for (d, w) in [(1usize, -0.3), (5, -0.25), (n - 3, -0.2), (n - 40, -0.15)] {
                trip.push((i, (i + d) % n, w));
            }
        }
        let a = Csr::from_triplets(n, n, &trip).unwrap();
        let b = (0..n)
            .map(|i| scale * (1e-3 + ((i * 13) % 7) as f64 * 1e-3))
            .collect();
        (a, b)
    }

    fn max_abs_of(v: &[f64]) -> f64 {
        v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
    }

    /// GMRES continued from an earlier iterate stops at the residual of a solve from zero
    /// (the tolerance stays relative to b), in fewer iterations.
    /// A column stops at the first iteration whose residual meets the tolerance (no margin
    /// below it): one iteration fewer does not converge, and the solution meets the
    /// tolerance in its true residual, recomputed here.
    #[test]
    fn gmres_stops_at_the_first_iteration_that_meets_the_tolerance() {
        let (a, b) = drifting_system(3000, 1.0);
        let ilu = Ilu0::with_block(&a, 500).unwrap();
        for tol in [1e-6, 1e-10, 1e-12] {
            let (x, rep) = gmres(&a, &ilu, &b, tol, 200, 2000);
            assert!(rep.converged, "{tol}: {rep:?}");
            let ax = a.mul_vec(&x);
            let r = ax
                .iter()
                .zip(&b)
                .map(|(p, q)| (q - p) * (q - p))
                .sum::<f64>();
            assert!(r.sqrt() <= tol * norm(&b), "{tol}: {rep:?}");
            let (_, short) = gmres(&a, &ilu, &b, tol, 200, rep.iterations - 1);
            assert!(!short.converged, "{tol}: {short:?} {rep:?}");
        }
    }

    #[test]
    fn gmres_from_a_starting_vector_stops_where_a_solve_from_zero_would() {
        let (a, b) = drifting_system(3000, 1.0);
        let ilu = Ilu0::with_block(&a, 500).unwrap();
        let (x_zero, zero) = gmres(&a, &ilu, &b, 1e-12, 30, 2000);
        assert!(zero.converged, "{zero:?}");
        let (x_rough, rough) = gmres(&a, &ilu, &b, 1e-4, 30, 2000);
        assert!(rough.converged && rough.residual > 1e-12, "{rough:?}");
        let (x, rep) = gmres_many_with(
            &a,
            &ilu,
            &[&b],
            Some(vec![x_rough]),
            &GmresOptions::new(1e-12, 30, 2000),
        )
        .pop()
        .unwrap();
        assert!(rep.converged && rep.residual <= 1e-12, "{rep:?}");
        assert!(rep.iterations < zero.iterations, "{rep:?} {zero:?}");
        let d = x
            .iter()
            .zip(&x_zero)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(d <= 1e-9 * max_abs_of(&x_zero), "{d}");
        // From the solution itself: no iteration.
        let (_, none) = gmres_many_with(
            &a,
            &ilu,
            &[&b],
            Some(vec![x_zero]),
            &GmresOptions::new(1e-10, 30, 2000),
        )
        .pop()
        .unwrap();
        assert_eq!(none.iterations, 0, "{none:?}");
        assert!(none.converged);
    }

    /// The backward-error stop ends the solve once ‖b − Ax‖∞ / (‖A‖∞ ‖x‖∞ + ‖b‖∞) ≤ eta
    /// (checked here from scratch), earlier than a relative tolerance far below it.
    #[test]
    fn the_backward_error_stop_bounds_the_backward_error() {
        let (a, b) = drifting_system(3000, 1e-3);
        let ilu = Ilu0::with_block(&a, 500).unwrap();
        let a_norm = (0..a.nrows())
            .map(|i| {
                let (_, vals) = a.row(i);
                vals.iter().map(|v| v.abs()).sum::<f64>()
            })
            .fold(0.0, f64::max);
        let eta = 1e-9;
        let opts = GmresOptions {
            backward: Some(BackwardStop { eta, a_norm }),
            ..GmresOptions::new(1e-16, 30, 2000)
        };
        let (x, rep) = gmres_many_with(&a, &ilu, &[&b], None, &opts).pop().unwrap();
        assert!(rep.converged, "{rep:?}");
        let r: Vec<f64> = a.mul_vec(&x).iter().zip(&b).map(|(p, q)| q - p).collect();
        let backward = max_abs_of(&r) / (a_norm * max_abs_of(&x) + max_abs_of(&b));
        assert!(backward <= eta, "{backward:e}");
        // A relative tolerance of 1e-16 alone is not reached: the stop was the backward one.
        let (_, strict) = gmres(&a, &ilu, &b, 1e-16, 30, 2000);
        assert!(!strict.converged, "{strict:?}");
        assert!(rep.iterations < strict.iterations, "{rep:?} {strict:?}");
    }

    /// ILU(0)'s factors are, bit for bit, those of the textbook elimination restricted to
    /// the pattern, run on a dense copy in the same order (row by row; within a row, the
    /// multipliers left to right, each updating the row's entries right of it that the
    /// pivot row also has, left to right).
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn ilu0_equals_the_pattern_restricted_elimination() {
        let n = 300;
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 4.0 + (i % 5) as f64 * 0.1));
            for d in [1usize, 3, 17, 41] {
                if i + d < n && (i + d) % 4 != 0 {
                    trip.push((i, i + d, -0.3 - 0.01 * (i % 11) as f64));
                }
                if i >= d && (i * d) % 3 != 1 {
                    trip.push((i, i - d, -0.45 + 0.003 * (i % 7) as f64));
                }
            }
        }
        let a = Csr::from_triplets(n, n, &trip).unwrap();
        let mut dense = vec![vec![0.0f64; n]; n];
        let mut inside = vec![vec![false; n]; n];
        for &(i, j, v) in &trip {
            dense[i][j] += v;
            inside[i][j] = true;
        }
        for i in 1..n {
            for k in 0..i {
                if !inside[i][k] {
                    continue;
                }
                dense[i][k] /= dense[k][k];
                let lik = dense[i][k];
                for j in k + 1..n {
                    if inside[i][j] && inside[k][j] {
                        dense[i][j] -= lik * dense[k][j];
                    }
                }
            }
        }
        let ilu = Ilu0::with_block(&a, n).unwrap();
        let block = &ilu.blocks[0];
        let Factors::F32(values) = &block.values else {
            panic!("the factors fit f32");
        };
        for i in 0..n {
            assert_eq!(block.pivots[i], dense[i][i], "pivot {i}");
            for p in block.indptr[i]..block.indptr[i + 1] {
                let j = block.indices[p] as usize;
                assert_eq!(values[p], dense[i][j] as f32, "({i}, {j})");
            }
        }
    }

    #[test]
    fn block_ilu_is_the_ilu_of_each_diagonal_block() {
        // A random-ish non-symmetric sparse system, diagonally dominant, 1,000 rows.
        let n = 1000;
        let mut trip = Vec::new();
        for i in 0..n {
            trip.push((i, i, 3.0));
            for d in [1usize, 7, 130] {
                if i + d < n {
                    trip.push((i, i + d, -0.4 - 0.001 * (i % 13) as f64));
                }
                if i >= d {
                    trip.push((i, i - d, -0.5 + 0.002 * (i % 7) as f64));
                }
            }
        }
        let a = Csr::from_triplets(n, n, &trip).unwrap();
        let block = 256;
        let ilu = Ilu0::with_block(&a, block).unwrap();
        assert_eq!(ilu.blocks.len(), 4);
        let b: Vec<f64> = (0..n).map(|i| ((i * 37) % 11) as f64 - 5.0).collect();
        let mut x = b.clone();
        ilu.apply(&mut x);
        // Each block alone: the same bits.
        for s in (0..n).step_by(block) {
            let range = s..(s + block).min(n);
            let rows: Vec<usize> = range.clone().collect();
            let one = Ilu0::with_block(&a.submatrix(&rows, &rows), n).unwrap();
            assert_eq!(one.blocks.len(), 1);
            let mut xb = b[range.clone()].to_vec();
            one.apply(&mut xb);
            assert_eq!(&x[range], &xb[..]);
        }
        // The whole system still solves to 1e-12 with the block preconditioner, and a
        // missing diagonal is reported at its row in the whole system.
        let (x, rep) = gmres(&a, &ilu, &b, 1e-12, 50, 5000);
        assert!(rep.converged, "{rep:?}");
        let r = a
            .mul_vec(&x)
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(r < 1e-10, "{r}");
        // Several right-hand sides at once: each with the bits of its own solve, also when
        // their cycles end at different iterations (restart 7; one zero right-hand side).
        let bs: Vec<Vec<f64>> = vec![
            b.clone(),
            (0..n).map(|i| (i as f64 * 0.01).sin()).collect(),
            vec![0.0; n],
            (0..n)
                .map(|i| if i % 97 == 0 { 1.0 } else { 0.0 })
                .collect(),
        ];
        let refs: Vec<&[f64]> = bs.iter().map(Vec::as_slice).collect();
        let many = gmres_many(&a, &ilu, &refs, 1e-12, 7, 5000);
        for (bj, (xj, rj)) in bs.iter().zip(&many) {
            let (x1, r1) = gmres(&a, &ilu, bj, 1e-12, 7, 5000);
            assert!(rj.converged, "{rj:?}");
            assert_eq!(rj, &r1);
            assert_eq!(xj, &x1);
        }
        assert_eq!(many[2].1.iterations, 0);
        assert!(many[2].0.iter().all(|&v| v == 0.0));
        assert_ne!(many[0].1.iterations, many[1].1.iterations);
        let holed: Vec<_> = trip
            .iter()
            .copied()
            .filter(|&(i, j, _)| !(i == 700 && j == 700))
            .collect();
        let err = Ilu0::with_block(&Csr::from_triplets(n, n, &holed).unwrap(), block).unwrap_err();
        assert_eq!(err, IluError::MissingDiagonal { row: 700 });
    }
}
