//! `VelocityKernel`: transition probabilities from how well each cell's RNA velocity points
//! at its kNN neighbours (CellRank 2.3, deterministic model).
//!
//! For cell `i` with velocity `v_i` and expression `x_i` (`layers["Ms"]`), and each neighbour
//! `j ∈ N(i)` (the stored entries of row `i` of `obsp["connectivities"]`), with the
//! displacement `d_ij = x_j − x_i`:
//! - `correlation`: Pearson correlation of `d_ij` and `v_i` over genes;
//! - `cosine`: `⟨d_ij, v_i⟩ / (‖d_ij‖ ‖v_i‖)`;
//! - `dot_product`: `⟨d_ij, v_i⟩`.
//!
//! These similarities are the *logits*; `T_ij = softmax_j(s · logit_ij)` over `N(i)`, where a
//! neighbour with a zero norm gets probability 0 and a cell with zero velocity a uniform row.
//! `s = softmax_scale`, or, when not given, `1 / median |logit|` over all non-zero logits.
//! Backward, `transpose` scores how well neighbour `j`'s velocity points at `i`
//! (`sim(v_j, x_i − x_j)`); `negate` uses `−v_i`.
//!
//! Deviation from CellRank: a cell all of whose neighbours have zero norm gets a uniform row
//! (CellRank produces NaN and fails). Rows are computed independently in parallel, so the result
//! does not depend on the number of threads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::csr::{Csr, ROW_CHUNK};
use crate::error::KernelError;
use crate::leaf::{read_graph, to_transition, Leaf};
use crate::source::{CellSource, DenseMatrix};
use crate::transition::{Direction, TransitionMatrix};

/// Similarity of velocity and displacement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// Pearson correlation (CellRank's default).
    Correlation,
    /// Cosine similarity.
    Cosine,
    /// Plain dot product.
    DotProduct,
}

/// How the backward process is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackwardMode {
    /// Score how well neighbour `j`'s velocity points at `i` (default).
    Transpose,
    /// Use the negated velocity of `i`.
    Negate,
}

/// The velocity model. Only the deterministic model is implemented; CellRank deprecated the
/// stochastic and Monte-Carlo models (removal in 3.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VelocityModel {
    /// Use each cell's velocity as it is.
    Deterministic,
}

/// Parameters of the velocity kernel (CellRank names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VelocityParams {
    /// Backward process.
    pub backward: bool,
    /// `layers` key of the expression used for displacements.
    pub xkey: String,
    /// `layers` key of the velocities.
    pub vkey: String,
    /// `obsp` key of the kNN graph whose pattern defines the neighbours.
    pub conn_key: String,
    /// `var` key of a boolean gene mask; default `"{vkey}_genes"` when that column exists.
    pub gene_subset: Option<String>,
    /// Velocity model.
    pub model: VelocityModel,
    /// Similarity scheme.
    pub similarity: Similarity,
    /// Backward mode (used when `backward`).
    pub backward_mode: BackwardMode,
    /// Softmax scale; estimated as `1 / median |logit|` when `None`.
    pub softmax_scale: Option<f64>,
}

impl Default for VelocityParams {
    fn default() -> Self {
        Self {
            backward: false,
            xkey: "Ms".into(),
            vkey: "velocity".into(),
            conn_key: "connectivities".into(),
            gene_subset: None,
            model: VelocityModel::Deterministic,
            similarity: Similarity::Correlation,
            backward_mode: BackwardMode::Transpose,
            softmax_scale: None,
        }
    }
}

pub(crate) const NAME: &str = "VelocityKernel";

/// Per-edge logits and masks of a velocity kernel, aligned with the kNN pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct VelocityLogits {
    /// kNN pattern (values unused).
    pub pattern: Csr,
    /// Unscaled similarity per stored edge.
    pub logits: Vec<f64>,
    /// Edges with a zero norm (probability 0).
    pub masked: Vec<bool>,
    /// Rows given uniform probabilities (zero velocity, or every neighbour masked).
    pub uniform: Vec<bool>,
}

impl VelocityParams {
    /// Reads the expression and velocity matrices (gene subset and NaN genes removed).
    pub(crate) fn read_inputs(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(DenseMatrix, DenseMatrix), KernelError> {
        self.read_inputs_indexed(cells).map(|(x, v, _, _)| (x, v))
    }

    /// [`read_inputs`](Self::read_inputs), also returning the input column of each kept gene
    /// and the number of input columns.
    pub(crate) fn read_inputs_indexed(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(DenseMatrix, DenseMatrix, Vec<usize>, usize), KernelError> {
        let hint_layer = "compute moments and velocities with `cellfate preprocess` (or scvelo's `pp.moments` + `tl.velocity`)";
        let x = cells
            .layer(&self.xkey)
            .map_err(|source| KernelError::MissingInput {
                kernel: NAME,
                what: "the smoothed expression".into(),
                source: Box::new(source),
                hint: hint_layer.into(),
            })?;
        let v = cells
            .layer(&self.vkey)
            .map_err(|source| KernelError::MissingInput {
                kernel: NAME,
                what: "RNA velocities".into(),
                source: Box::new(source),
                hint: hint_layer.into(),
            })?;
        let n_input = x.ncols();
        let (x, v, columns) = self.prepare_indexed(x, v, cells)?;
        Ok((x, v, columns, n_input))
    }

    /// Applies the gene subset and drops genes with a NaN velocity; also returns the input
    /// column of each kept gene.
    pub(crate) fn prepare_indexed(
        &self,
        x: DenseMatrix,
        v: DenseMatrix,
        cells: &dyn CellSource,
    ) -> Result<(DenseMatrix, DenseMatrix, Vec<usize>), KernelError> {
        if (x.nrows(), x.ncols()) != (v.nrows(), v.ncols()) {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"] and layers[\"{}\"]", self.xkey, self.vkey),
                detail: format!(
                    "shapes differ: {} x {} vs {} x {}",
                    x.nrows(),
                    x.ncols(),
                    v.nrows(),
                    v.ncols()
                ),
            });
        }
        let subset_key = self
            .gene_subset
            .clone()
            .unwrap_or_else(|| format!("{}_genes", self.vkey));
        let mask = cells
            .var_mask(&subset_key)
            .map_err(|source| KernelError::MissingInput {
                kernel: NAME,
                what: "the gene subset".into(),
                source: Box::new(source),
                hint: "set `gene_subset` to a boolean var column".into(),
            })?;
        let mut columns: Vec<usize> = (0..x.ncols()).collect();
        let (x, v) = match mask {
            Some(m) if m.len() == x.ncols() => {
                columns.retain(|&c| m[c]);
                (x.select_columns(&m), v.select_columns(&m))
            }
            Some(m) => {
                return Err(KernelError::InvalidInput {
                    kernel: NAME,
                    what: format!("var[\"{subset_key}\"]"),
                    detail: format!("{} values for {} genes", m.len(), x.ncols()),
                })
            }
            None if self.gene_subset.is_some() => {
                return Err(KernelError::InvalidInput {
                    kernel: NAME,
                    what: format!("var[\"{subset_key}\"]"),
                    detail: "gene subset column not found".into(),
                })
            }
            None => (x, v),
        };
        let finite: Vec<bool> = v.col_sums().iter().map(|s| !s.is_nan()).collect();
        let (x, v) = if finite.iter().all(|&f| f) {
            (x, v)
        } else {
            columns = columns
                .iter()
                .zip(&finite)
                .filter(|(_, &f)| f)
                .map(|(&c, _)| c)
                .collect();
            (x.select_columns(&finite), v.select_columns(&finite))
        };
        if x.ncols() == 0 {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"]", self.vkey),
                detail: "no gene left with a finite velocity (after the gene subset)".into(),
            });
        }
        // Genes with a NaN velocity are left out above (scVelo leaves NaN for genes it did not
        // fit). Any other non-finite value, in the expression or an infinite velocity, would
        // make whole rows of the transition matrix NaN: an error naming the layer.
        for (key, m) in [(&self.xkey, &x), (&self.vkey, &v)] {
            if let Some(((row, col, value), count)) = m.non_finite() {
                return Err(KernelError::InvalidInput {
                    kernel: NAME,
                    what: format!("layers[\"{key}\"]"),
                    detail: format!(
                        "{count} NaN or infinite values among the genes used (the first {value} at cell {row}, used gene {col}); the layer must be finite: recompute it (`cellfate run --recompute`, or `cellfate preprocess` on the raw counts)"
                    ),
                });
            }
        }
        Ok((x, v, columns))
    }

    /// The unscaled logits of every kNN edge.
    pub fn logits(&self, conn: &Csr, x: &DenseMatrix, v: &DenseMatrix) -> VelocityLogits {
        let transpose = self.backward && self.backward_mode == BackwardMode::Transpose;
        let negate = self.backward && self.backward_mode == BackwardMode::Negate;
        let sim = self.similarity;
        let g = x.ncols();
        // Written in place, chunk of rows by chunk of rows (no per-row vectors to gather).
        let n = conn.nrows();
        let mut logits = vec![0.0; conn.nnz()];
        let mut masked = vec![false; conn.nnz()];
        let mut uniform = vec![false; n];
        let bounds = row_bounds(n, ROW_CHUNK / 8);
        let edge_offsets: Vec<usize> = bounds.iter().map(|&r| conn.indptr()[r]).collect();
        let parts = split_at_offsets(&mut logits, &edge_offsets)
            .into_iter()
            .zip(split_at_offsets(&mut masked, &edge_offsets))
            .zip(split_at_offsets(&mut uniform, &bounds))
            .zip(bounds.windows(2).map(|w| w[0]..w[1]))
            .collect::<Vec<_>>();
        crate::progress::start("velocity kernel: cells", n as u64);
        parts.into_par_iter().for_each_init(
            || {
                (
                    Vec::with_capacity(g),
                    Vec::with_capacity(g),
                    Vec::with_capacity(g),
                    Vec::with_capacity(g),
                )
            },
            |(xi, xj, vi, d), (((lg_chunk, mk_chunk), un_chunk), rows)| {
                let base = conn.indptr()[rows.start];
                for i in rows.clone() {
                    if crate::interrupt::requested() {
                        // Stopping: the stage discards these rows (Kernel::compute).
                        return;
                    }
                    let (cols, _) = conn.row(i);
                    let start = conn.indptr()[i] - base;
                    let n = cols.len();
                    let logits = &mut lg_chunk[start..start + n];
                    let masked = &mut mk_chunk[start..start + n];
                    x.row_into(i, xi);
                    if !transpose {
                        v.row_into(i, vi);
                        if vi.iter().all(|&a| a == 0.0) {
                            un_chunk[i - rows.start] = true;
                            continue;
                        }
                        if negate {
                            vi.iter_mut().for_each(|a| *a = -*a);
                        }
                        prepare_vector(vi, sim);
                    }
                    for (p, &c) in cols.iter().enumerate() {
                        x.row_into(c as usize, xj);
                        d.clear();
                        if transpose {
                            // sim(v_j, x_i − x_j)
                            d.extend(xi.iter().zip(xj.iter()).map(|(a, b)| a - b));
                            v.row_into(c as usize, vi);
                            prepare_vector(vi, sim);
                        } else {
                            d.extend(xj.iter().zip(xi.iter()).map(|(a, b)| a - b));
                        }
                        let (l, m) = similarity(vi, d, sim);
                        logits[p] = l;
                        masked[p] = m;
                    }
                    un_chunk[i - rows.start] = n > 0 && masked.iter().all(|&m| m);
                }
                crate::progress::advance(rows.len() as u64);
            },
        );
        crate::progress::finish();
        VelocityLogits {
            pattern: conn.clone(),
            logits,
            masked,
            uniform,
        }
    }
}

/// Centres (correlation) the vector in place; the norm is taken in `similarity`.
pub(crate) fn prepare_vector(v: &mut [f64], sim: Similarity) {
    if sim == Similarity::Correlation {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter_mut().for_each(|a| *a -= mean);
    }
}

/// Similarity of a prepared velocity `v` and a raw displacement `d` (modified in place).
/// Returns `(logit, masked)`.
pub(crate) fn similarity(v: &[f64], d: &mut [f64], sim: Similarity) -> (f64, bool) {
    match sim {
        Similarity::DotProduct => (dot(v, d), false),
        Similarity::Cosine | Similarity::Correlation => {
            if sim == Similarity::Correlation {
                let mean = d.iter().sum::<f64>() / d.len() as f64;
                d.iter_mut().for_each(|a| *a -= mean);
            }
            let denom = dot(v, v).sqrt() * dot(d, d).sqrt();
            if denom == 0.0 {
                (dot(v, d), true)
            } else {
                (dot(v, d) / denom, false)
            }
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `1 / median |logit|` over the non-zero logits (numpy's median: mean of the two middle
/// values for an even count).
pub fn estimate_softmax_scale(logits: &[f64]) -> Option<f64> {
    let mut a: Vec<f64> = logits
        .iter()
        .filter(|&&x| x != 0.0)
        .map(|x| x.abs())
        .collect();
    if a.is_empty() {
        return None;
    }
    a.sort_by(f64::total_cmp);
    let n = a.len();
    let med = if n % 2 == 1 {
        a[n / 2]
    } else {
        0.5 * (a[n / 2 - 1] + a[n / 2])
    };
    (med > 0.0 && med.is_finite()).then(|| 1.0 / med)
}

/// Masked softmax per row of the logits with scale `s`.
pub fn softmax_rows(l: &VelocityLogits, s: f64) -> Csr {
    let conn = &l.pattern;
    let n = conn.nrows();
    // The pattern of the kNN graph with new values, written in place chunk by chunk.
    let mut data = vec![0.0; conn.nnz()];
    let bounds = row_bounds(n, ROW_CHUNK);
    let edge_offsets: Vec<usize> = bounds.iter().map(|&r| conn.indptr()[r]).collect();
    let parts: Vec<_> = split_at_offsets(&mut data, &edge_offsets)
        .into_iter()
        .zip(bounds.windows(2).map(|w| w[0]..w[1]))
        .collect();
    parts.into_par_iter().for_each(|(chunk, rows)| {
        let base = conn.indptr()[rows.start];
        for i in rows {
            let start = conn.indptr()[i];
            let len = conn.indptr()[i + 1] - start;
            let out = &mut chunk[start - base..start - base + len];
            if l.uniform[i] {
                out.iter_mut().for_each(|x| *x = 1.0 / len as f64);
                continue;
            }
            let lg = &l.logits[start..start + len];
            let mk = &l.masked[start..start + len];
            let max = lg.iter().map(|x| x * s).fold(f64::NEG_INFINITY, f64::max);
            for ((o, x), &m) in out.iter_mut().zip(lg).zip(mk) {
                *o = if m { 0.0 } else { (x * s - max).exp() };
            }
            let sum: f64 = out.iter().sum();
            out.iter_mut().for_each(|x| *x /= sum);
        }
    });
    conn.with_data(data)
}

/// Row boundaries `0, c, 2c, ..., n` of chunks of `chunk` rows.
pub(crate) fn row_bounds(n: usize, chunk: usize) -> Vec<usize> {
    let mut b: Vec<usize> = (0..n).step_by(chunk.max(1)).collect();
    b.push(n);
    if n == 0 {
        b = vec![0, 0];
    }
    b
}

/// `buf` split at `offsets` (increasing, first `0`, last `buf.len()`): one slice per window.
pub(crate) fn split_at_offsets<'a, T>(mut buf: &'a mut [T], offsets: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (head, tail) = buf.split_at_mut(w[1] - w[0]);
        out.push(head);
        buf = tail;
    }
    out
}

impl Leaf for VelocityParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        if let Some(s) = self.softmax_scale {
            if !(s.is_finite() && s > 0.0) {
                return Err(KernelError::InvalidParam {
                    kernel: NAME,
                    name: "softmax_scale",
                    value: s.to_string(),
                    expected: "a positive number, or none to estimate it".into(),
                });
            }
        }
        Ok(())
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let (x, v) = self.read_inputs(cells)?;
        if x.nrows() != conn.nrows() {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"]", self.xkey),
                detail: format!("{} rows for {} cells", x.nrows(), conn.nrows()),
            });
        }
        self.compute_from(&conn, &x, &v)
    }
}

impl VelocityParams {
    /// Computes the kernel from explicit inputs (used by the labeling kernel): the matrix and
    /// the effective parameters (softmax scale filled in).
    pub(crate) fn compute_from(
        &self,
        conn: &Csr,
        x: &DenseMatrix,
        v: &DenseMatrix,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let l = self.logits(conn, x, v);
        let scale = match self.softmax_scale {
            Some(s) => s,
            None => estimate_softmax_scale(&l.logits).ok_or_else(|| KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"]", self.vkey),
                detail: "every similarity is zero, so the softmax scale cannot be estimated (are all velocities zero?)".into(),
            })?,
        };
        let probs = softmax_rows(&l, scale);
        let transition = to_transition(NAME, probs, Direction::from_backward(self.backward))?;
        let mut effective = self.clone();
        effective.softmax_scale = Some(scale);
        Ok((transition, effective))
    }
}
