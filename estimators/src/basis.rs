//! An orthonormal basis of long vectors stored in row blocks, and classical Gram–Schmidt
//! with one reorthogonalisation (CGS2) against it: the Krylov–Schur decomposition and GMRES
//! share it.
//!
//! Each block is a small column-major `len × cols` matrix of [`BLOCK`] rows, so every pass
//! over the basis runs over the blocks in parallel and reads each vector's block while the
//! block of the vector being orthogonalised stays in cache. Every sum runs in a fixed order
//! over the fixed blocks (partial sums per block, added in block order), so the results do
//! not depend on the number of threads.

use rayon::prelude::*;

/// Rows per block of the basis.
pub(crate) const BLOCK: usize = 4096;

/// An orthonormal basis of up to `cols` vectors of length `n`, in row blocks.
pub(crate) struct Basis {
    pub(crate) cols: usize,
    pub(crate) data: Vec<f64>,
}

impl Basis {
    pub(crate) fn new(n: usize, cols: usize) -> Self {
        Self {
            cols,
            data: vec![0.0; n * cols],
        }
    }

    /// Blocks of rows: (first row, rows, the block's len × cols column-major data).
    pub(crate) fn blocks_mut(
        &mut self,
    ) -> impl IndexedParallelIterator<Item = (usize, usize, &mut [f64])> {
        let cols = self.cols;
        self.data
            .par_chunks_mut(BLOCK * cols)
            .enumerate()
            .map(move |(b, d)| (b * BLOCK, d.len() / cols, d))
    }

    pub(crate) fn blocks(&self) -> impl IndexedParallelIterator<Item = (usize, usize, &[f64])> {
        let cols = self.cols;
        self.data
            .par_chunks(BLOCK * cols)
            .enumerate()
            .map(move |(b, d)| (b * BLOCK, d.len() / cols, d))
    }

    pub(crate) fn get_column(&self, j: usize, out: &mut [f64]) {
        let cols = self.cols;
        for (b, d) in self.data.chunks(BLOCK * cols).enumerate() {
            let len = d.len() / cols;
            out[b * BLOCK..b * BLOCK + len].copy_from_slice(&d[j * len..(j + 1) * len]);
        }
    }

    /// `V y` over the first `y.len()` columns, block by block (each row summed over the
    /// columns in order).
    pub(crate) fn combine(&self, y: &[f64], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n];
        self.blocks()
            .zip(out.par_chunks_mut(BLOCK))
            .for_each(|((_, len, d), ob)| {
                for (c, &yc) in y.iter().enumerate() {
                    let col = &d[c * len..(c + 1) * len];
                    for (o, &v) in ob.iter_mut().zip(col) {
                        *o += yc * v;
                    }
                }
            });
        out
    }

    pub(crate) fn set_column(&mut self, j: usize, x: &[f64]) {
        let cols = self.cols;
        for (b, d) in self.data.chunks_mut(BLOCK * cols).enumerate() {
            let len = d.len() / cols;
            d[j * len..(j + 1) * len].copy_from_slice(&x[b * BLOCK..b * BLOCK + len]);
        }
    }
}

/// Dot product in four fixed partial sums.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// Sums per-block partial vectors in block order.
fn reduce(parts: Vec<Vec<f64>>, len: usize) -> Vec<f64> {
    let mut out = vec![0.0; len];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// `Vᵀ w` over the first `k` columns.
fn project(v: &Basis, k: usize, w: &[f64]) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = v
        .blocks()
        .map(|(r0, len, d)| {
            let wb = &w[r0..r0 + len];
            (0..k)
                .map(|c| dot(&d[c * len..(c + 1) * len], wb))
                .collect()
        })
        .collect();
    reduce(parts, k)
}

/// `w ← w − V h` over the first `h.len()` columns; returns `Vᵀ w` of the updated `w` when
/// `reproject`, else `[‖w‖²]`.
fn subtract(v: &Basis, h: &[f64], w: &mut [f64], reproject: bool) -> Vec<f64> {
    let k = h.len();
    let cols = v.cols;
    let parts: Vec<Vec<f64>> = v
        .data
        .par_chunks(BLOCK * cols)
        .zip(w.par_chunks_mut(BLOCK))
        .map(|(d, wb)| {
            let len = wb.len();
            for (c, &hc) in h.iter().enumerate() {
                let col = &d[c * len..(c + 1) * len];
                for (x, &y) in wb.iter_mut().zip(col) {
                    *x -= hc * y;
                }
            }
            if reproject {
                (0..k)
                    .map(|c| dot(&d[c * len..(c + 1) * len], wb))
                    .collect()
            } else {
                vec![dot(wb, wb)]
            }
        })
        .collect();
    reduce(parts, if reproject { k } else { 1 })
}

/// Orthogonalises `w` against the first `k` columns (CGS2); returns the coefficients and
/// the remaining norm.
pub(crate) fn orthogonalize(v: &Basis, k: usize, w: &mut [f64]) -> (Vec<f64>, f64) {
    let h1 = project(v, k, w);
    let h2 = subtract(v, &h1, w, true);
    let norm2 = subtract(v, &h2, w, false)[0];
    let h: Vec<f64> = h1.iter().zip(&h2).map(|(a, b)| a + b).collect();
    (h, norm2.max(0.0).sqrt())
}
