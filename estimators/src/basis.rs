//! An orthonormal basis of long vectors stored in row blocks, and classical Gram–Schmidt
//! against it, reorthogonalised when the first pass cancelled most of the vector: the
//! Krylov–Schur decomposition and GMRES share it.
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

    /// Column `j`'s part in row block `b` (rows `b · BLOCK ..`).
    pub(crate) fn column_block(&self, j: usize, b: usize) -> &[f64] {
        let cols = self.cols;
        let start = b * BLOCK * cols;
        let end = (start + BLOCK * cols).min(self.data.len());
        let len = (end - start) / cols;
        &self.data[start + j * len..start + (j + 1) * len]
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

/// `Vᵀ w` over the first `k` columns, and `‖w‖²` (the last entry).
fn project(v: &Basis, k: usize, w: &[f64]) -> Vec<f64> {
    let parts: Vec<Vec<f64>> = v
        .blocks()
        .map(|(r0, len, d)| {
            let wb = &w[r0..r0 + len];
            (0..k)
                .map(|c| dot(&d[c * len..(c + 1) * len], wb))
                .chain(std::iter::once(dot(wb, wb)))
                .collect()
        })
        .collect();
    reduce(parts, k + 1)
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

/// Whether one Gram–Schmidt pass kept enough of `w` to be orthogonal to working precision:
/// `‖w − V Vᵀ w‖ ≥ η ‖w‖` with η = 1/√2 (the criterion of Daniel, Gragg, Kaufman and Stewart,
/// 1976, which ARPACK applies with 0.717). The loss of orthogonality after one classical pass
/// is about ε ‖w‖ / ‖w − V Vᵀ w‖, so above η it is a few ε and a second pass changes nothing
/// that matters; below it (cancellation, as when the Krylov space is nearly invariant), the
/// second pass runs.
const DGKS_ETA2: f64 = 0.5;

/// Orthogonalises `w` against the first `k` columns: classical Gram–Schmidt, repeated once
/// when the first pass cancelled most of `w` (see [`DGKS_ETA2`]); returns the coefficients and
/// the remaining norm. Two passes over the basis when one Gram–Schmidt pass is enough (the
/// projection, fused with `‖w‖²`; the update, fused with the new norm), three otherwise (the
/// update fused with the second projection, then the second update).
pub(crate) fn orthogonalize(v: &Basis, k: usize, w: &mut [f64]) -> (Vec<f64>, f64) {
    let (h, norm, _) = orthogonalize_passes(v, k, w);
    (h, norm)
}

/// [`orthogonalize`], also returning the number of passes over the basis.
fn orthogonalize_passes(v: &Basis, k: usize, w: &mut [f64]) -> (Vec<f64>, f64, usize) {
    let mut h1 = project(v, k, w);
    let before = h1.pop().unwrap_or(0.0);
    // ‖w − V h1‖² = ‖w‖² − ‖h1‖² in exact arithmetic (V orthonormal): only to decide which
    // path to take; the norm returned is computed from the updated vector.
    let estimate = before - h1.iter().map(|x| x * x).sum::<f64>();
    if estimate >= DGKS_ETA2 * before {
        let norm2 = subtract(v, &h1, w, false)[0];
        if norm2 >= DGKS_ETA2 * before {
            return (h1, norm2.max(0.0).sqrt(), 2);
        }
        // Rounding put the estimate on the wrong side: one more pass.
        let h2 = project(v, k, w);
        let norm2 = subtract(v, &h2[..k], w, false)[0];
        let h = h1.iter().zip(&h2).map(|(a, b)| a + b).collect();
        return (h, norm2.max(0.0).sqrt(), 4);
    }
    let h2 = subtract(v, &h1, w, true);
    let norm2 = subtract(v, &h2, w, false)[0];
    let h: Vec<f64> = h1.iter().zip(&h2).map(|(a, b)| a + b).collect();
    (h, norm2.max(0.0).sqrt(), 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random vector in [-0.5, 0.5).
    fn noise(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    /// Both paths of [`orthogonalize`] (one pass for a vector mostly outside the span, two
    /// for one nearly inside it) leave a vector orthogonal to the basis to working precision
    /// and return coefficients that rebuild the input: `w = V h + ‖w'‖ w'/‖w'‖`.
    #[test]
    fn orthogonalize_is_accurate_on_both_paths() {
        // Three blocks and a bit, so that the per-block sums are exercised.
        let n = 3 * BLOCK + 123;
        let k = 12;
        let mut v = Basis::new(n, k + 1);
        let mut col = vec![0.0; n];
        for j in 0..k {
            let mut w = noise(n, j as u64 + 1);
            let (_, norm) = orthogonalize(&v, j, &mut w);
            w.iter_mut().for_each(|x| *x /= norm);
            v.set_column(j, &w);
        }
        for (case, inside) in [(0, 0.0), (1, 1e-6)] {
            // w = V c + inside × noise: `inside` 0 means a plain random vector.
            let c: Vec<f64> = (0..k).map(|i| 1.0 + i as f64).collect();
            let mut w = if case == 0 {
                noise(n, 99)
            } else {
                let mut w = v.combine(&c, n);
                for (x, e) in w.iter_mut().zip(noise(n, 98)) {
                    *x += inside * e;
                }
                w
            };
            let orig = w.clone();
            let (h, norm, passes) = orthogonalize_passes(&v, k, &mut w);
            assert_eq!(passes, 2 + case, "case {case}");
            assert!(norm > 0.0);
            let scale = dot(&orig, &orig).sqrt();
            for j in 0..k {
                v.get_column(j, &mut col);
                let off = dot(&col, &w).abs() / norm;
                assert!(off < 1e-14, "case {case}: |v_{j}ᵀ w'| / ‖w'‖ = {off:e}");
            }
            let exact = dot(&w, &w).sqrt();
            assert!((norm - exact).abs() <= 1e-14 * exact, "case {case}");
            let rebuilt = v.combine(&h, n);
            let err = rebuilt
                .iter()
                .zip(&w)
                .zip(&orig)
                .map(|((r, x), o)| (r + x - o).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-13 * scale, "case {case}: rebuild error {err:e}");
            if case == 1 {
                // h = c + inside × Vᵀ noise.
                let e = noise(n, 98);
                for (j, (hi, ci)) in h.iter().zip(&c).enumerate() {
                    v.get_column(j, &mut col);
                    let want = ci + inside * dot(&col, &e);
                    assert!((hi - want).abs() < 1e-13 * scale, "case 1: {hi} vs {want}");
                }
            }
        }
    }
}
