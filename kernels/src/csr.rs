//! A thin compressed-sparse-row matrix of `f64`, the storage behind every transition matrix.
//!
//! We keep our own small CSR (rather than `sprs::CsMat`) because the hot loops (mat-vec,
//! row normalisation, softmax over rows, sparse × dense) are hand-written with rayon and
//! measured faster than sprs' single-threaded versions on this kind of machine
//! (`../shared/docs/rust-stack.md` §5). Conversion to other crates happens at their boundary.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::CsrError;

/// Rows per rayon task in the parallel loops. Fixed so that results do not depend on the
/// number of threads (every row is computed independently; no cross-row reduction).
pub(crate) const ROW_CHUNK: usize = 1024;

/// Stored entries from which [`Csr::transpose`] runs in parallel.
const PARALLEL_TRANSPOSE_NNZ: usize = 1 << 20;

/// A compressed-sparse-row matrix with `f64` values and `u32` column indices.
///
/// Invariants (checked by [`Csr::try_new`]): `indptr.len() == nrows + 1`, `indptr[0] == 0`,
/// `indptr` non-decreasing, `indptr[nrows] == indices.len() == data.len()`, every column index
/// `< ncols`, and column indices strictly increasing within each row (sorted, no duplicates).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Csr {
    nrows: usize,
    ncols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    data: Vec<f64>,
}

impl Csr {
    /// Builds a CSR matrix from its raw parts, validating every invariant.
    pub fn try_new(
        nrows: usize,
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        data: Vec<f64>,
    ) -> Result<Self, CsrError> {
        if ncols > u32::MAX as usize {
            return Err(CsrError::TooManyColumns { ncols });
        }
        if indptr.len() != nrows + 1 {
            return Err(CsrError::IndptrLength {
                expected: nrows + 1,
                got: indptr.len(),
            });
        }
        if indptr[0] != 0 {
            return Err(CsrError::IndptrStart { got: indptr[0] });
        }
        if indices.len() != data.len() {
            return Err(CsrError::LengthMismatch {
                indices: indices.len(),
                data: data.len(),
            });
        }
        for row in 0..nrows {
            let (start, end) = (indptr[row], indptr[row + 1]);
            if end < start {
                return Err(CsrError::IndptrNotMonotone { row });
            }
            if end > indices.len() {
                return Err(CsrError::IndptrEnd {
                    row,
                    got: end,
                    nnz: indices.len(),
                });
            }
            let mut prev: Option<u32> = None;
            for &col in &indices[start..end] {
                if col as usize >= ncols {
                    return Err(CsrError::IndexOutOfRange { row, col, ncols });
                }
                if let Some(p) = prev {
                    if col <= p {
                        return Err(CsrError::UnsortedIndices { row, col });
                    }
                }
                prev = Some(col);
            }
        }
        if indptr[nrows] != indices.len() {
            return Err(CsrError::IndptrEnd {
                row: nrows.saturating_sub(1),
                got: indptr[nrows],
                nnz: indices.len(),
            });
        }
        Ok(Self {
            nrows,
            ncols,
            indptr,
            indices,
            data,
        })
    }

    /// Builds a CSR matrix from parts whose rows may be unsorted or contain duplicate column
    /// indices: each row is sorted and duplicates are summed. Other invariants are validated.
    pub fn from_unsorted(
        nrows: usize,
        ncols: usize,
        indptr: Vec<usize>,
        indices: Vec<u32>,
        data: Vec<f64>,
    ) -> Result<Self, CsrError> {
        if indptr.len() != nrows + 1 {
            return Err(CsrError::IndptrLength {
                expected: nrows + 1,
                got: indptr.len(),
            });
        }
        if indices.len() != data.len() {
            return Err(CsrError::LengthMismatch {
                indices: indices.len(),
                data: data.len(),
            });
        }
        if let Some(&start) = indptr.first().filter(|&&p| p != 0) {
            return Err(CsrError::IndptrStart { got: start });
        }
        // Canonical already (the usual case for files written by scanpy or by us): take the
        // arrays as they are, no copy.
        let canonical = indptr.first() == Some(&0)
            && indptr.last() == Some(&indices.len())
            && indptr.windows(2).all(|w| w[0] <= w[1])
            && indptr.windows(2).all(|w| {
                let row = &indices[w[0]..w[1]];
                row.windows(2).all(|p| p[0] < p[1])
                    && row.last().is_none_or(|&c| (c as usize) < ncols)
            });
        if canonical {
            return Self::try_new(nrows, ncols, indptr, indices, data);
        }
        let mut new_indptr = Vec::with_capacity(nrows + 1);
        let mut new_indices = Vec::with_capacity(indices.len());
        let mut new_data = Vec::with_capacity(data.len());
        new_indptr.push(0);
        let mut row_buf: Vec<(u32, f64)> = Vec::new();
        for row in 0..nrows {
            let (start, end) = (indptr[row], indptr[row + 1]);
            if end < start || end > indices.len() {
                return Err(CsrError::IndptrNotMonotone { row });
            }
            row_buf.clear();
            row_buf.extend(
                indices[start..end]
                    .iter()
                    .copied()
                    .zip(data[start..end].iter().copied()),
            );
            row_buf.sort_by_key(|&(c, _)| c);
            let mut last: Option<u32> = None;
            for &(c, v) in &row_buf {
                if c as usize >= ncols {
                    return Err(CsrError::IndexOutOfRange { row, col: c, ncols });
                }
                if last == Some(c) {
                    if let Some(d) = new_data.last_mut() {
                        *d += v;
                    }
                } else {
                    new_indices.push(c);
                    new_data.push(v);
                    last = Some(c);
                }
            }
            new_indptr.push(new_indices.len());
        }
        Self::try_new(nrows, ncols, new_indptr, new_indices, new_data)
    }

    /// Builds a CSR matrix from `(row, col, value)` triplets; duplicates are summed.
    pub fn from_triplets(
        nrows: usize,
        ncols: usize,
        triplets: &[(usize, usize, f64)],
    ) -> Result<Self, CsrError> {
        let mut counts = vec![0usize; nrows + 1];
        for &(r, c, _) in triplets {
            if r >= nrows {
                return Err(CsrError::RowOutOfRange { row: r, nrows });
            }
            if c >= ncols {
                return Err(CsrError::IndexOutOfRange {
                    row: r,
                    col: u32::try_from(c).unwrap_or(u32::MAX),
                    ncols,
                });
            }
            counts[r + 1] += 1;
        }
        for i in 0..nrows {
            counts[i + 1] += counts[i];
        }
        let mut next = counts.clone();
        let mut indices = vec![0u32; triplets.len()];
        let mut data = vec![0.0; triplets.len()];
        for &(r, c, v) in triplets {
            let p = next[r];
            indices[p] = c as u32;
            data[p] = v;
            next[r] += 1;
        }
        Self::from_unsorted(nrows, ncols, counts, indices, data)
    }

    /// A dense row-major matrix (`nrows × ncols`) as CSR, dropping exact zeros.
    pub fn from_dense(nrows: usize, ncols: usize, values: &[f64]) -> Result<Self, CsrError> {
        if values.len() != nrows * ncols {
            return Err(CsrError::DenseLength {
                expected: nrows * ncols,
                got: values.len(),
            });
        }
        let mut indptr = Vec::with_capacity(nrows + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        for r in 0..nrows {
            for c in 0..ncols {
                let v = values[r * ncols + c];
                if v != 0.0 {
                    indices.push(c as u32);
                    data.push(v);
                }
            }
            indptr.push(indices.len());
        }
        Self::try_new(nrows, ncols, indptr, indices, data)
    }

    /// The `n × n` identity matrix.
    pub fn identity(n: usize) -> Self {
        Self {
            nrows: n,
            ncols: n,
            indptr: (0..=n).collect(),
            indices: (0..n as u32).collect(),
            data: vec![1.0; n],
        }
    }

    /// Number of rows.
    #[inline]
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns.
    #[inline]
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// Number of stored entries.
    #[inline]
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Row pointer array (`nrows + 1` entries).
    #[inline]
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// Column indices of all stored entries.
    #[inline]
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Values of all stored entries.
    #[inline]
    pub fn data(&self) -> &[f64] {
        &self.data
    }

    /// Mutable values (the sparsity pattern stays fixed).
    pub fn data_mut(&mut self) -> &mut [f64] {
        &mut self.data
    }

    /// Column indices and values of row `i`. Panics if `i >= nrows` (a contract violation).
    #[inline]
    pub fn row(&self, i: usize) -> (&[u32], &[f64]) {
        let (s, e) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[s..e], &self.data[s..e])
    }

    /// Value at `(i, j)`, zero when not stored.
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (cols, vals) = self.row(i);
        match cols.binary_search(&(j as u32)) {
            Ok(p) => vals[p],
            Err(_) => 0.0,
        }
    }

    /// Decomposes into `(nrows, ncols, indptr, indices, data)`.
    pub fn into_parts(self) -> (usize, usize, Vec<usize>, Vec<u32>, Vec<f64>) {
        (self.nrows, self.ncols, self.indptr, self.indices, self.data)
    }

    /// Sum of each row.
    pub fn row_sums(&self) -> Vec<f64> {
        (0..self.nrows)
            .into_par_iter()
            .with_min_len(ROW_CHUNK)
            .map(|i| self.row(i).1.iter().sum())
            .collect()
    }

    /// Sum of each column (accumulated row by row in a fixed order: thread-count independent).
    pub fn col_sums(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.ncols];
        for (c, v) in self.indices.iter().zip(&self.data) {
            out[*c as usize] += v;
        }
        out
    }

    /// `y = A x`. Panics when `x.len() != ncols` (a contract violation).
    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.ncols, "mul_vec: x has the wrong length");
        (0..self.nrows)
            .into_par_iter()
            .with_min_len(ROW_CHUNK)
            .map(|i| {
                let (cols, vals) = self.row(i);
                cols.iter()
                    .zip(vals)
                    .map(|(&c, &v)| v * x[c as usize])
                    .sum()
            })
            .collect()
    }

    /// `y = Aᵀ x`, accumulated row by row in a fixed order (thread-count independent).
    /// Panics when `x.len() != nrows`.
    pub fn mul_vec_transposed(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(
            x.len(),
            self.nrows,
            "mul_vec_transposed: x has the wrong length"
        );
        let mut out = vec![0.0; self.ncols];
        for (i, &xi) in x.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            let (cols, vals) = self.row(i);
            for (&c, &v) in cols.iter().zip(vals) {
                out[c as usize] += v * xi;
            }
        }
        out
    }

    /// The transpose, as CSR (each row's entries in increasing column order). Large matrices
    /// are transposed in parallel over row blocks; the result is the same at any thread
    /// count (it only moves entries).
    pub fn transpose(&self) -> Self {
        let tasks = rayon::current_num_threads().min(8);
        if tasks < 2 || self.nnz() < PARALLEL_TRANSPOSE_NNZ {
            return self.transpose_sequential();
        }
        self.transpose_parallel(tasks)
    }

    /// [`transpose`](Self::transpose) over `tasks` blocks of rows: each block counts its
    /// entries per column, the counts give every block its own run of positions in each row
    /// of the transpose (blocks in row order), and each block writes its entries there.
    #[allow(unsafe_code)]
    fn transpose_parallel(&self, tasks: usize) -> Self {
        let (n, m) = (self.nrows, self.ncols);
        let per = n.div_ceil(tasks).max(1);
        let blocks: Vec<(usize, usize)> =
            (0..n).step_by(per).map(|s| (s, (s + per).min(n))).collect();
        let counts: Vec<Vec<usize>> = blocks
            .par_iter()
            .map(|&(s, e)| {
                let mut c = vec![0usize; m];
                for &j in &self.indices[self.indptr[s]..self.indptr[e]] {
                    c[j as usize] += 1;
                }
                c
            })
            .collect();
        // Row starts of the transpose, then each block's first position in each row.
        let mut indptr = vec![0usize; m + 1];
        for c in 0..m {
            indptr[c + 1] = indptr[c] + counts.iter().map(|b| b[c]).sum::<usize>();
        }
        let mut starts = counts;
        let mut run = indptr[..m].to_vec();
        for b in starts.iter_mut() {
            for (c, slot) in b.iter_mut().enumerate() {
                let k = *slot;
                *slot = run[c];
                run[c] += k;
            }
        }
        drop(run);
        let nnz = self.nnz();
        let mut indices = vec![0u32; nnz];
        let mut data = vec![0.0f64; nnz];
        struct Out(*mut u32, *mut f64);
        // SAFETY: the pointers are only used to write the disjoint positions handed out below.
        unsafe impl Sync for Out {}
        let out = Out(indices.as_mut_ptr(), data.as_mut_ptr());
        blocks
            .par_iter()
            .zip(starts.par_iter_mut())
            .for_each(|(&(s, e), next)| {
                let out = &out;
                for r in s..e {
                    let (cols, vals) = self.row(r);
                    for (&c, &v) in cols.iter().zip(vals) {
                        let p = next[c as usize];
                        next[c as usize] += 1;
                        // SAFETY: p < nnz, and every position belongs to exactly one
                        // (block, column) run, written once by its block's task.
                        unsafe {
                            *out.0.add(p) = r as u32;
                            *out.1.add(p) = v;
                        }
                    }
                }
            });
        Self {
            nrows: m,
            ncols: n,
            indptr,
            indices,
            data,
        }
    }

    fn transpose_sequential(&self) -> Self {
        let mut counts = vec![0usize; self.ncols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for i in 0..self.ncols {
            counts[i + 1] += counts[i];
        }
        let mut next = counts.clone();
        let mut indices = vec![0u32; self.nnz()];
        let mut data = vec![0.0; self.nnz()];
        for r in 0..self.nrows {
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                let p = next[c as usize];
                indices[p] = r as u32;
                data[p] = v;
                next[c as usize] += 1;
            }
        }
        Self {
            nrows: self.ncols,
            ncols: self.nrows,
            indptr: counts,
            indices,
            data,
        }
    }

    /// All rows, restricted to the columns `cols` (strictly increasing; column `cols[k]`
    /// becomes column `k`), built in parallel over fixed row blocks (same result for any
    /// number of threads). Panics if `cols` is not strictly increasing or out of range (a
    /// contract violation).
    pub fn select_columns(&self, cols: &[usize]) -> Self {
        assert!(
            cols.windows(2).all(|w| w[0] < w[1]) && cols.last().is_none_or(|&c| c < self.ncols),
            "select_columns: columns must be strictly increasing and < {}",
            self.ncols
        );
        let mut map = vec![u32::MAX; self.ncols];
        for (new, &old) in cols.iter().enumerate() {
            map[old] = new as u32;
        }
        let parts: Vec<(Vec<usize>, Vec<u32>, Vec<f64>)> = (0..self.nrows)
            .collect::<Vec<_>>()
            .par_chunks(ROW_CHUNK)
            .map(|rows| {
                let (mut lens, mut idx, mut val) =
                    (Vec::with_capacity(rows.len()), Vec::new(), Vec::new());
                for &r in rows {
                    let (cs, vs) = self.row(r);
                    let before = idx.len();
                    for (&c, &v) in cs.iter().zip(vs) {
                        let m = map[c as usize];
                        if m != u32::MAX {
                            idx.push(m);
                            val.push(v);
                        }
                    }
                    lens.push(idx.len() - before);
                }
                (lens, idx, val)
            })
            .collect();
        let nnz: usize = parts.iter().map(|p| p.1.len()).sum();
        let mut indptr = Vec::with_capacity(self.nrows + 1);
        let (mut indices, mut data) = (Vec::with_capacity(nnz), Vec::with_capacity(nnz));
        indptr.push(0);
        for (lens, idx, val) in parts {
            for l in lens {
                indptr.push(indptr.last().copied().unwrap_or(0) + l);
            }
            indices.extend_from_slice(&idx);
            data.extend_from_slice(&val);
        }
        Self {
            nrows: self.nrows,
            ncols: cols.len(),
            indptr,
            indices,
            data,
        }
    }

    /// The sub-matrix with the given rows and columns (in the given orders), built in
    /// parallel over blocks of rows (the result does not depend on the thread count).
    /// Panics if an index is out of range (a contract violation).
    pub fn submatrix(&self, rows: &[usize], cols: &[usize]) -> Self {
        const ROWS: usize = 4096;
        let mut map = vec![u32::MAX; self.ncols];
        for (new, &old) in cols.iter().enumerate() {
            assert!(old < self.ncols, "submatrix: column {old} out of range");
            map[old] = new as u32;
        }
        for &r in rows {
            assert!(r < self.nrows, "submatrix: row {r} out of range");
        }
        // Row lengths first, then each chunk of rows written straight into its part of the
        // output (no per-chunk buffers concatenated afterwards: at 1M rows that copy, and the
        // clearing of the buffers' fresh pages, cost as much as the gather itself).
        // Every column kept exactly once (a permutation): each row keeps all its entries.
        let full = cols.len() == self.ncols && map.iter().all(|&m| m != u32::MAX);
        let lens: Vec<usize> = rows
            .par_iter()
            .with_min_len(ROWS)
            .map(|&r| {
                let (cs, _) = self.row(r);
                if full {
                    cs.len()
                } else {
                    cs.iter().filter(|&&c| map[c as usize] != u32::MAX).count()
                }
            })
            .collect();
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        indptr.push(0usize);
        for len in &lens {
            indptr.push(indptr.last().copied().unwrap_or(0) + len);
        }
        let nnz = indptr.last().copied().unwrap_or(0);
        let mut indices = vec![0u32; nnz];
        let mut data = vec![0.0f64; nnz];
        let mut pieces = Vec::with_capacity(rows.len().div_ceil(ROWS));
        {
            let (mut idx_rest, mut val_rest) = (indices.as_mut_slice(), data.as_mut_slice());
            for (c, chunk) in rows.chunks(ROWS).enumerate() {
                let len = indptr[c * ROWS + chunk.len()] - indptr[c * ROWS];
                let (idx, idx_tail) = idx_rest.split_at_mut(len);
                let (val, val_tail) = val_rest.split_at_mut(len);
                idx_rest = idx_tail;
                val_rest = val_tail;
                pieces.push((chunk, idx, val));
            }
        }
        pieces.into_par_iter().for_each(|(chunk, idx, val)| {
            let mut buf: Vec<(u32, f64)> = Vec::new();
            let mut at = 0;
            for &r in chunk {
                buf.clear();
                let (cs, vs) = self.row(r);
                for (&c, &v) in cs.iter().zip(vs) {
                    let m = map[c as usize];
                    if m != u32::MAX {
                        buf.push((m, v));
                    }
                }
                buf.sort_unstable_by_key(|&(c, _)| c);
                for (k, &(c, v)) in buf.iter().enumerate() {
                    idx[at + k] = c;
                    val[at + k] = v;
                }
                at += buf.len();
            }
        });
        Self {
            nrows: rows.len(),
            ncols: cols.len(),
            indptr,
            indices,
            data,
        }
    }

    /// `α A + β B` for two matrices of equal shape (pattern union).
    /// Panics on a shape mismatch (a contract violation).
    pub fn add_scaled(&self, alpha: f64, other: &Csr, beta: f64) -> Self {
        assert_eq!(
            (self.nrows, self.ncols),
            (other.nrows, other.ncols),
            "add_scaled: shape mismatch"
        );
        let rows: Vec<(Vec<u32>, Vec<f64>)> = (0..self.nrows)
            .into_par_iter()
            .with_min_len(ROW_CHUNK)
            .map(|i| {
                let (ca, va) = self.row(i);
                let (cb, vb) = other.row(i);
                let mut ci = Vec::with_capacity(ca.len() + cb.len());
                let mut vi = Vec::with_capacity(ca.len() + cb.len());
                let (mut p, mut q) = (0, 0);
                while p < ca.len() || q < cb.len() {
                    let take_a = q >= cb.len() || (p < ca.len() && ca[p] < cb[q]);
                    let take_b = p >= ca.len() || (q < cb.len() && cb[q] < ca[p]);
                    if take_a {
                        ci.push(ca[p]);
                        vi.push(alpha * va[p]);
                        p += 1;
                    } else if take_b {
                        ci.push(cb[q]);
                        vi.push(beta * vb[q]);
                        q += 1;
                    } else {
                        ci.push(ca[p]);
                        vi.push(alpha * va[p] + beta * vb[q]);
                        p += 1;
                        q += 1;
                    }
                }
                (ci, vi)
            })
            .collect();
        Self::from_rows(self.nrows, self.ncols, rows)
    }

    /// Element-wise (Hadamard) product (pattern intersection).
    /// Panics on a shape mismatch (a contract violation).
    pub fn hadamard(&self, other: &Csr) -> Self {
        assert_eq!(
            (self.nrows, self.ncols),
            (other.nrows, other.ncols),
            "hadamard: shape mismatch"
        );
        let rows: Vec<(Vec<u32>, Vec<f64>)> = (0..self.nrows)
            .into_par_iter()
            .with_min_len(ROW_CHUNK)
            .map(|i| {
                let (ca, va) = self.row(i);
                let (cb, vb) = other.row(i);
                let mut ci = Vec::new();
                let mut vi = Vec::new();
                let (mut p, mut q) = (0, 0);
                while p < ca.len() && q < cb.len() {
                    match ca[p].cmp(&cb[q]) {
                        std::cmp::Ordering::Less => p += 1,
                        std::cmp::Ordering::Greater => q += 1,
                        std::cmp::Ordering::Equal => {
                            ci.push(ca[p]);
                            vi.push(va[p] * vb[q]);
                            p += 1;
                            q += 1;
                        }
                    }
                }
                (ci, vi)
            })
            .collect();
        Self::from_rows(self.nrows, self.ncols, rows)
    }

    /// The same sparsity pattern with other values (one per stored entry, in order). Panics
    /// when `data.len() != nnz` (a contract of the caller).
    pub(crate) fn with_data(&self, data: Vec<f64>) -> Self {
        assert_eq!(
            data.len(),
            self.nnz(),
            "with_data: one value per stored entry"
        );
        Self {
            nrows: self.nrows,
            ncols: self.ncols,
            indptr: self.indptr.clone(),
            indices: self.indices.clone(),
            data,
        }
    }

    /// Assembles a matrix from per-row (sorted) column/value vectors.
    pub(crate) fn from_rows(nrows: usize, ncols: usize, rows: Vec<(Vec<u32>, Vec<f64>)>) -> Self {
        let nnz = rows.iter().map(|r| r.0.len()).sum();
        let mut indptr = Vec::with_capacity(nrows + 1);
        let mut indices = Vec::with_capacity(nnz);
        let mut data = Vec::with_capacity(nnz);
        indptr.push(0);
        for (c, v) in rows {
            indices.extend_from_slice(&c);
            data.extend_from_slice(&v);
            indptr.push(indices.len());
        }
        Self {
            nrows,
            ncols,
            indptr,
            indices,
            data,
        }
    }

    /// Removes stored entries equal to zero.
    pub fn eliminate_zeros(&mut self) {
        let mut w = 0;
        let mut new_indptr = Vec::with_capacity(self.nrows + 1);
        new_indptr.push(0);
        for r in 0..self.nrows {
            for p in self.indptr[r]..self.indptr[r + 1] {
                if self.data[p] != 0.0 {
                    self.indices[w] = self.indices[p];
                    self.data[w] = self.data[p];
                    w += 1;
                }
            }
            new_indptr.push(w);
        }
        self.indices.truncate(w);
        self.data.truncate(w);
        self.indptr = new_indptr;
    }

    /// Dense row-major copy (for small matrices and tests).
    pub fn to_dense(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.nrows * self.ncols];
        for r in 0..self.nrows {
            let (cs, vs) = self.row(r);
            for (&c, &v) in cs.iter().zip(vs) {
                out[r * self.ncols + c as usize] = v;
            }
        }
        out
    }

    /// Largest absolute difference to another matrix of the same shape (pattern union).
    pub fn max_abs_diff(&self, other: &Csr) -> f64 {
        let d = self.add_scaled(1.0, other, -1.0);
        d.data.iter().fold(0.0f64, |m, v| m.max(v.abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel transpose equals the sequential one, for any number of blocks
    /// (including more blocks than rows and empty rows and columns).
    #[test]
    fn parallel_transpose_equals_the_sequential_one() {
        let (n, m) = (257, 311);
        let mut trip = Vec::new();
        for i in 0..n {
            if i % 11 == 0 {
                continue;
            }
            for k in 0..(i % 9) {
                let j = (i * 37 + k * 101) % m;
                if j % 13 != 0 {
                    trip.push((i, j, (i * m + j) as f64 * 0.5 - 3.0));
                }
            }
        }
        let a = Csr::from_triplets(n, m, &trip).unwrap();
        let want = a.transpose_sequential();
        for tasks in [2, 3, 8, 300] {
            let got = a.transpose_parallel(tasks);
            assert_eq!(got, want, "{tasks} blocks");
        }
        assert_eq!(want.transpose_sequential(), a);
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(matches!(
            Csr::try_new(2, 2, vec![0, 2, 1], vec![0, 1], vec![1.0, 1.0]),
            Err(CsrError::IndptrNotMonotone { row: 1 })
        ));
        assert!(matches!(
            Csr::try_new(1, 2, vec![0, 1], vec![5], vec![1.0]),
            Err(CsrError::IndexOutOfRange { row: 0, col: 5, .. })
        ));
        assert!(matches!(
            Csr::try_new(1, 3, vec![0, 2], vec![2, 1], vec![1.0, 1.0]),
            Err(CsrError::UnsortedIndices { row: 0, col: 1 })
        ));
        assert!(Csr::try_new(2, 2, vec![0, 1], vec![0], vec![1.0]).is_err());
    }

    #[test]
    fn triplets_transpose_matvec() {
        let a = Csr::from_triplets(2, 3, &[(0, 2, 1.0), (0, 0, 2.0), (1, 1, 3.0), (0, 2, 1.0)])
            .unwrap();
        assert_eq!(a.to_dense(), vec![2.0, 0.0, 2.0, 0.0, 3.0, 0.0]);
        assert_eq!(a.mul_vec(&[1.0, 1.0, 1.0]), vec![4.0, 3.0]);
        assert_eq!(a.mul_vec_transposed(&[1.0, 2.0]), vec![2.0, 6.0, 2.0]);
        assert_eq!(a.transpose().to_dense(), vec![2.0, 0.0, 0.0, 3.0, 2.0, 0.0]);
        let s = a.submatrix(&[1, 0], &[2, 1]);
        assert_eq!(s.to_dense(), vec![0.0, 3.0, 2.0, 0.0]);
        let sum = a.add_scaled(1.0, &a, 1.0);
        assert_eq!(sum.to_dense(), vec![4.0, 0.0, 4.0, 0.0, 6.0, 0.0]);
        assert_eq!(a.hadamard(&a).get(0, 0), 4.0);
        assert_eq!(a.max_abs_diff(&sum), 3.0);
    }

    #[test]
    fn from_unsorted_sorts_sums_and_validates() {
        // Canonical parts are taken as they are.
        let a = Csr::from_unsorted(2, 3, vec![0, 2, 3], vec![0, 2, 1], vec![1.0, 2.0, 3.0]);
        assert_eq!(a.unwrap().to_dense(), vec![1.0, 0.0, 2.0, 0.0, 3.0, 0.0]);
        // Unsorted rows are sorted, duplicates summed.
        let b = Csr::from_unsorted(
            2,
            3,
            vec![0, 3, 4],
            vec![2, 0, 2, 1],
            vec![1.0, 2.0, 4.0, 3.0],
        )
        .unwrap();
        assert_eq!(b.to_dense(), vec![2.0, 0.0, 5.0, 0.0, 3.0, 0.0]);
        assert_eq!(b.indices(), &[0, 2, 1]);
        // Broken parts are errors, not panics.
        assert!(Csr::from_unsorted(2, 3, vec![0, 2, 1], vec![0, 1], vec![1.0, 1.0]).is_err());
        assert!(Csr::from_unsorted(1, 3, vec![0, 5], vec![0, 1], vec![1.0, 1.0]).is_err());
        assert!(Csr::from_unsorted(1, 3, vec![0, 2], vec![0, 7], vec![1.0, 1.0]).is_err());
        assert!(Csr::from_unsorted(1, 3, vec![1, 2], vec![0, 1], vec![1.0, 1.0]).is_err());
    }

    #[test]
    fn select_columns_equals_submatrix() {
        // 3,000 rows (several row chunks), a pseudo-random pattern.
        let (n, g) = (3000usize, 40usize);
        let trip: Vec<(usize, usize, f64)> = (0..n)
            .flat_map(|i| (0..g).map(move |j| (i, j)))
            .filter(|&(i, j)| (i * 7 + j * 13) % 5 < 2)
            .map(|(i, j)| (i, j, (i * g + j) as f64))
            .collect();
        let a = Csr::from_triplets(n, g, &trip).unwrap();
        let rows: Vec<usize> = (0..n).collect();
        for cols in [
            vec![],
            vec![3],
            vec![0, 1, 2, 39],
            (0..g).step_by(3).collect(),
        ] {
            assert_eq!(
                a.select_columns(&cols),
                a.submatrix(&rows, &cols),
                "{cols:?}"
            );
        }
    }

    /// `submatrix` against the entries looked up one by one: a permutation of rows and
    /// columns over several row chunks (every entry kept), a subset of rows in another order,
    /// and columns with a repeat (the last position wins, as the column map says).
    #[test]
    fn submatrix_equals_the_entries_looked_up() {
        let n = 9000usize;
        let trip: Vec<(usize, usize, f64)> = (0..n)
            .flat_map(|i| [(i, i), (i, (i * 31 + 7) % n), (i, (i * 17 + 3000) % n)])
            .map(|(i, j)| (i, j, (i * 3 + j) as f64 + 0.5))
            .collect();
        let a = Csr::from_triplets(n, n, &trip).unwrap();
        let dense_at = |i: usize, j: usize| -> f64 {
            let (cs, vs) = a.row(i);
            cs.iter()
                .position(|&c| c as usize == j)
                .map_or(0.0, |p| vs[p])
        };
        let perm: Vec<usize> = (0..n).map(|i| (i * 4001) % n).collect();
        let subset: Vec<usize> = (0..n).rev().step_by(7).collect();
        let mut repeat: Vec<usize> = (0..n).step_by(2).collect();
        repeat.push(0);
        for (rows, cols) in [(&perm, &perm), (&subset, &perm), (&perm, &repeat)] {
            let sub = a.submatrix(rows, cols);
            assert_eq!((sub.nrows(), sub.ncols()), (rows.len(), cols.len()));
            let mut last = vec![usize::MAX; n];
            for (new, &old) in cols.iter().enumerate() {
                last[old] = new;
            }
            for (r, &old_r) in rows.iter().enumerate() {
                let (cs, vs) = sub.row(r);
                assert!(cs.windows(2).all(|w| w[0] < w[1]), "row {r} unsorted");
                let (ocs, _) = a.row(old_r);
                let kept = ocs
                    .iter()
                    .filter(|&&c| last[c as usize] != usize::MAX)
                    .count();
                assert_eq!(cs.len(), kept, "row {r}");
                for (&c, &v) in cs.iter().zip(vs) {
                    assert_eq!(last[cols[c as usize]], c as usize);
                    assert_eq!(v, dense_at(old_r, cols[c as usize]), "({r}, {c})");
                }
            }
        }
    }
}
