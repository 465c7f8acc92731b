//! The velocity kernel under low-rank changes of its velocities (in-silico perturbation).
//!
//! A perturbation of a few genes changes each cell's velocity by
//! `Δv_i = Σ_j a_ij e_j + b_i x_i`: the perturbed genes' own changes, plus a multiple of the
//! cell's expression (the compositional term of normalised data). The similarity of the
//! velocity kernel is an inner product of the (centred, for the correlation) velocity with
//! each neighbour's displacement, divided by both norms, so with a few inner products stored
//! per edge and per cell — `⟨c v_i, c d_ik⟩`, `‖c d_ik‖`, the mean of `d_ik`,
//! `⟨c x_i, c d_ik⟩`; `‖c v_i‖²`, `⟨c v_i, c x_i⟩`, `‖c x_i‖²` — the new similarity costs
//! O(genes changed) per edge instead of O(genes). A screen over many genes then recomputes
//! each perturbed kernel in a fraction of a full pass.
//!
//! Rows where the update would lose digits (the perturbed velocity nearly cancels, relative to
//! the terms that make it up) are recomputed in full, so the result equals a full recompute
//! to rounding (the unit test compares them within 1e-12).

use rayon::prelude::*;

use crate::csr::{Csr, ROW_CHUNK};
use crate::error::KernelError;
use crate::leaf::{read_graph, to_transition};
use crate::source::{CellSource, DenseMatrix};
use crate::transition::{Direction, TransitionMatrix};
use crate::velocity::{
    prepare_vector, row_bounds, similarity, softmax_rows, split_at_offsets, BackwardMode,
    Similarity, VelocityLogits, VelocityParams, NAME,
};

/// A change of every cell's velocity: `Δv_i = Σ_j a_ij e_j + b_i x_i`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LowRankChange {
    /// `(gene, a)`: the gene's column in the velocity layer (all genes, before the gene
    /// subset) and its change per cell (length n). Genes the kernel does not read are
    /// ignored.
    pub genes: Vec<(usize, Vec<f64>)>,
    /// `b` per cell (length n), the multiple of the cell's own expression (the kernel's
    /// `xkey` layer, over the genes it reads) added to its velocity; `None`: 0.
    pub own: Option<Vec<f64>>,
}

/// The velocity kernel prepared for [`LowRankChange`]s (see the module docs).
#[derive(Debug)]
pub struct VelocityUpdate {
    params: VelocityParams,
    scale: f64,
    pattern: Csr,
    x: DenseMatrix,
    v: DenseMatrix,
    /// Input column → kept column.
    kept: Vec<Option<usize>>,
    /// -1 for the backward kernel with `negate`, else 1.
    sign: f64,
    centre: bool,
    // Per cell.
    vv: Vec<f64>,
    vx: Vec<f64>,
    xx: Vec<f64>,
    vmean: Vec<f64>,
    xmean: Vec<f64>,
    zero_v: Vec<bool>,
    // Per edge.
    num: Vec<f64>,
    dnorm: Vec<f64>,
    dmean: Vec<f64>,
    xd: Vec<f64>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl VelocityParams {
    /// Prepares the kernel for low-rank changes of its velocities. `None` for the backward
    /// kernel in `transpose` mode (each edge reads the neighbour's velocity; recompute it in
    /// full) or when the softmax scale is not fixed (take the effective parameters of a
    /// computed kernel).
    pub fn prepare_update(
        &self,
        cells: &dyn CellSource,
    ) -> Result<Option<VelocityUpdate>, KernelError> {
        let transpose = self.backward && self.backward_mode == BackwardMode::Transpose;
        let Some(scale) = self.softmax_scale else {
            return Ok(None);
        };
        if transpose {
            return Ok(None);
        }
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let (x, v, columns, n_input) = self.read_inputs_indexed(cells)?;
        if x.nrows() != conn.nrows() {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"]", self.xkey),
                detail: format!("{} rows for {} cells", x.nrows(), conn.nrows()),
            });
        }
        let mut kept = vec![None; n_input];
        for (k, &c) in columns.iter().enumerate() {
            kept[c] = Some(k);
        }
        let sign = if self.backward && self.backward_mode == BackwardMode::Negate {
            -1.0
        } else {
            1.0
        };
        let centre = self.similarity == Similarity::Correlation;
        let n = conn.nrows();
        let g = x.ncols();
        let nnz = conn.nnz();
        let mut u = VelocityUpdate {
            params: self.clone(),
            scale,
            pattern: conn,
            x,
            v,
            kept,
            sign,
            centre,
            vv: vec![0.0; n],
            vx: vec![0.0; n],
            xx: vec![0.0; n],
            vmean: vec![0.0; n],
            xmean: vec![0.0; n],
            zero_v: vec![false; n],
            num: vec![0.0; nnz],
            dnorm: vec![0.0; nnz],
            dmean: vec![0.0; nnz],
            xd: vec![0.0; nnz],
        };
        // Per cell, then per edge, in fixed chunks of rows (the same values at any thread
        // count: every value is computed from its own row).
        let cell_stats: Vec<(f64, f64, f64, f64, f64, bool)> = (0..n)
            .into_par_iter()
            .map_init(
                || (Vec::with_capacity(g), Vec::with_capacity(g)),
                |(xi, vi), i| {
                    u.x.row_into(i, xi);
                    u.v.row_into(i, vi);
                    let zero = vi.iter().all(|&a| a == 0.0);
                    vi.iter_mut().for_each(|a| *a *= sign);
                    let (vm, xm) = if centre {
                        (
                            vi.iter().sum::<f64>() / g as f64,
                            xi.iter().sum::<f64>() / g as f64,
                        )
                    } else {
                        (0.0, 0.0)
                    };
                    vi.iter_mut().for_each(|a| *a -= vm);
                    xi.iter_mut().for_each(|a| *a -= xm);
                    (dot(vi, vi), dot(vi, xi), dot(xi, xi), vm, xm, zero)
                },
            )
            .collect();
        for (i, (vv, vx, xx, vm, xm, zero)) in cell_stats.into_iter().enumerate() {
            u.vv[i] = vv;
            u.vx[i] = vx;
            u.xx[i] = xx;
            u.vmean[i] = vm;
            u.xmean[i] = xm;
            u.zero_v[i] = zero;
        }
        let bounds = row_bounds(n, ROW_CHUNK / 8);
        let offsets: Vec<usize> = bounds.iter().map(|&r| u.pattern.indptr()[r]).collect();
        let (pattern, x, v, vmean, xmean) = (&u.pattern, &u.x, &u.v, &u.vmean, &u.xmean);
        let parts: Vec<_> = split_at_offsets(&mut u.num, &offsets)
            .into_iter()
            .zip(split_at_offsets(&mut u.dnorm, &offsets))
            .zip(split_at_offsets(&mut u.dmean, &offsets))
            .zip(split_at_offsets(&mut u.xd, &offsets))
            .zip(bounds.windows(2).map(|w| w[0]..w[1]))
            .collect();
        parts.into_par_iter().for_each_init(
            || {
                (
                    Vec::with_capacity(g),
                    Vec::with_capacity(g),
                    Vec::with_capacity(g),
                    Vec::with_capacity(g),
                )
            },
            |(xi, xk, vi, d), ((((num, dnorm), dmean), xd), rows)| {
                let base = pattern.indptr()[rows.start];
                for i in rows {
                    x.row_into(i, xi);
                    v.row_into(i, vi);
                    vi.iter_mut().for_each(|a| *a = sign * *a - vmean[i]);
                    xi.iter_mut().for_each(|a| *a -= xmean[i]);
                    let (cols, _) = pattern.row(i);
                    let start = pattern.indptr()[i] - base;
                    for (p, &c) in cols.iter().enumerate() {
                        x.row_into(c as usize, xk);
                        d.clear();
                        // d = x_k − x_i (xi is centred: add its mean back).
                        d.extend(xk.iter().zip(xi.iter()).map(|(a, b)| a - (b + xmean[i])));
                        let m = if centre {
                            d.iter().sum::<f64>() / g as f64
                        } else {
                            0.0
                        };
                        d.iter_mut().for_each(|a| *a -= m);
                        num[start + p] = dot(vi, d);
                        dnorm[start + p] = dot(d, d).sqrt();
                        dmean[start + p] = m;
                        xd[start + p] = dot(xi, d);
                    }
                }
            },
        );
        Ok(Some(u))
    }
}

impl VelocityUpdate {
    /// The (effective) parameters of the kernel this updates.
    pub fn params(&self) -> &VelocityParams {
        &self.params
    }

    /// The transition matrix of the kernel with the velocities changed by `change`.
    ///
    /// # Panics
    /// If a gene index is outside the velocity layer or a per-cell vector is not n long.
    pub fn transition(&self, change: &LowRankChange) -> Result<TransitionMatrix, KernelError> {
        let n = self.pattern.nrows();
        let g = self.x.ncols();
        let genes: Vec<(usize, &[f64])> = change
            .genes
            .iter()
            .filter_map(|(j, a)| {
                assert!(
                    *j < self.kept.len() && a.len() == n,
                    "LowRankChange: gene index or length"
                );
                self.kept[*j].map(|k| (k, a.as_slice()))
            })
            .collect();
        let own = change.own.as_deref();
        if let Some(b) = own {
            assert_eq!(b.len(), n, "LowRankChange: own length");
        }
        let sim = self.params.similarity;
        let normalise = sim != Similarity::DotProduct;
        let kappa = if self.centre { 1.0 / g as f64 } else { 0.0 };
        let s = self.sign;
        let mut logits = vec![0.0; self.pattern.nnz()];
        let mut masked = vec![false; self.pattern.nnz()];
        let mut uniform = vec![false; n];
        let bounds = row_bounds(n, ROW_CHUNK / 8);
        let offsets: Vec<usize> = bounds.iter().map(|&r| self.pattern.indptr()[r]).collect();
        let parts: Vec<_> = split_at_offsets(&mut logits, &offsets)
            .into_iter()
            .zip(split_at_offsets(&mut masked, &offsets))
            .zip(split_at_offsets(&mut uniform, &bounds))
            .zip(bounds.windows(2).map(|w| w[0]..w[1]))
            .collect();
        parts.into_par_iter().for_each_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(a, vi, xj, d), (((lg, mk), un), rows)| {
                let base = self.pattern.indptr()[rows.start];
                for i in rows.clone() {
                    // This cell's change (signed like the velocities).
                    a.clear();
                    a.extend(genes.iter().map(|(k, av)| (*k, s * av[i])));
                    a.retain(|(_, v): &(usize, f64)| *v != 0.0);
                    let b = s * own.map_or(0.0, |o| o[i]);
                    let (cols, _) = self.pattern.row(i);
                    let start = self.pattern.indptr()[i] - base;
                    let len = cols.len();
                    let lg = &mut lg[start..start + len];
                    let mk = &mut mk[start..start + len];
                    let unchanged = a.is_empty() && (b == 0.0 || self.xx[i] == 0.0);
                    if unchanged && self.zero_v[i] {
                        un[i - rows.start] = true;
                        continue;
                    }
                    // ‖c v'‖² = ‖c v‖² + 2⟨c v, c Δ⟩ + ‖c Δ‖².
                    let xrow = |k: usize| self.x.get(i, k);
                    let cv = |k: usize| s * self.v.get(i, k) - self.vmean[i];
                    let cx = |k: usize| xrow(k) - self.xmean[i];
                    let mut cross = b * self.vx[i];
                    let mut dd = b * b * self.xx[i];
                    let sum_a: f64 = a.iter().map(|(_, v)| v).sum();
                    for &(k, ak) in a.iter() {
                        cross += ak * cv(k);
                        dd += ak * ak + 2.0 * b * ak * cx(k);
                    }
                    dd -= kappa * sum_a * sum_a;
                    let norm2 = self.vv[i] + 2.0 * cross + dd;
                    let scale = self.vv[i] + dd.abs() + 2.0 * cross.abs();
                    let exact = normalise && (norm2 <= 1e-10 * scale || !norm2.is_finite());
                    if exact {
                        // Recompute this row in full: v' = v + Δ over the kept genes.
                        self.v.row_into(i, vi);
                        self.x.row_into(i, xj);
                        for (vk, xk) in vi.iter_mut().zip(xj.iter()) {
                            *vk += own.map_or(0.0, |o| o[i]) * xk;
                        }
                        for (k, av) in &genes {
                            vi[*k] += av[i];
                        }
                        if vi.iter().all(|&q| q == 0.0) {
                            un[i - rows.start] = true;
                            continue;
                        }
                        vi.iter_mut().for_each(|q| *q *= s);
                        prepare_vector(vi, sim);
                        for (p, &c) in cols.iter().enumerate() {
                            self.x.row_into(c as usize, d);
                            for (dk, xk) in d.iter_mut().zip(xj.iter()) {
                                *dk -= xk;
                            }
                            let (l, m) = similarity(vi, d, sim);
                            lg[p] = l;
                            mk[p] = m;
                        }
                        un[i - rows.start] = len > 0 && mk.iter().all(|&m| m);
                        continue;
                    }
                    let vnorm = norm2.max(0.0).sqrt();
                    for (p, &c) in cols.iter().enumerate() {
                        let e = self.pattern.indptr()[i] + p;
                        let mut num = self.num[e] + b * self.xd[e];
                        for &(k, ak) in a.iter() {
                            let cd = self.x.get(c as usize, k) - xrow(k) - self.dmean[e];
                            num += ak * cd;
                        }
                        if normalise {
                            let denom = vnorm * self.dnorm[e];
                            if denom == 0.0 {
                                lg[p] = num;
                                mk[p] = true;
                            } else {
                                lg[p] = num / denom;
                                mk[p] = false;
                            }
                        } else {
                            lg[p] = num;
                            mk[p] = false;
                        }
                    }
                    un[i - rows.start] = len > 0 && mk.iter().all(|&m| m);
                }
            },
        );
        let l = VelocityLogits {
            pattern: self.pattern.clone(),
            logits,
            masked,
            uniform,
        };
        let probs = softmax_rows(&l, self.scale);
        to_transition(NAME, probs, Direction::from_backward(self.params.backward))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Kernel;
    use crate::source::InMemoryCells;

    /// A small bifurcation: 60 cells, 12 genes (velocity genes: all but 0, 5, 10), 6
    /// neighbours.
    fn source() -> InMemoryCells {
        crate::testing::toy_cells(60, 12, 6, 7)
    }

    fn full(p: &VelocityParams, src: &InMemoryCells, change: &LowRankChange) -> TransitionMatrix {
        // The same change written into the velocity layer, then a full recompute.
        let v = src.layer(&p.vkey).unwrap();
        let x = src.layer(&p.xkey).unwrap();
        let (n, g) = (v.nrows(), v.ncols());
        let mut data = v.to_f64();
        for i in 0..n {
            let b = change.own.as_ref().map_or(0.0, |o| o[i]);
            for c in 0..g {
                data[i * g + c] += b * x.get(i, c);
            }
            for (j, a) in &change.genes {
                data[i * g + j] += a[i];
            }
        }
        let mut changed = src.clone();
        changed
            .layers
            .insert(p.vkey.clone(), DenseMatrix::from_f64(n, g, data));
        p.compute(&changed).unwrap().transition
    }

    fn max_diff(a: &TransitionMatrix, b: &TransitionMatrix) -> f64 {
        let (a, b) = (a.as_csr(), b.as_csr());
        assert_eq!(a.indices(), b.indices());
        a.data()
            .iter()
            .zip(b.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn low_rank_changes_equal_a_full_recompute() {
        let src = source();
        let n = 60;
        for (similarity, backward) in [
            (Similarity::Correlation, false),
            (Similarity::Cosine, false),
            (Similarity::DotProduct, false),
            (Similarity::Correlation, true),
        ] {
            let p = VelocityParams {
                similarity,
                backward,
                backward_mode: BackwardMode::Negate,
                ..Default::default()
            };
            // Effective parameters (the softmax scale estimated once).
            let eff = match p.compute(&src).unwrap().effective {
                crate::KernelSpec::Velocity(e) => e,
                _ => unreachable!(),
            };
            let u = eff.prepare_update(&src).unwrap().expect("update");
            // A knockout-like change of two genes plus a compositional term, and a change
            // that cancels one cell's velocity exactly (the row recomputed in full).
            let v = src.layer(&eff.vkey).unwrap();
            let a3: Vec<f64> = (0..n).map(|i| -2.0 * v.get(i, 3).abs() - 0.5).collect();
            let a7: Vec<f64> = (0..n).map(|i| 0.3 * i as f64 / n as f64).collect();
            let own: Vec<f64> = (0..n).map(|i| 0.01 * (i % 5) as f64).collect();
            let change = LowRankChange {
                genes: vec![(3, a3), (7, a7)],
                own: Some(own),
            };
            let d = max_diff(&u.transition(&change).unwrap(), &full(&eff, &src, &change));
            assert!(d < 1e-12, "{similarity:?} backward {backward}: {d}");
            // No change: the kernel itself.
            let d0 = max_diff(
                &u.transition(&LowRankChange::default()).unwrap(),
                &eff.compute(&src).unwrap().transition,
            );
            assert!(d0 < 1e-12, "{d0}");
            // Cell 0's velocity cancelled in every gene: its row falls back to uniform, as
            // the full recompute does.
            let genes: Vec<(usize, Vec<f64>)> = (0..12)
                .map(|j| {
                    let mut a = vec![0.0; n];
                    a[0] = -v.get(0, j);
                    (j, a)
                })
                .collect();
            let cancel = LowRankChange { genes, own: None };
            let d1 = max_diff(&u.transition(&cancel).unwrap(), &full(&eff, &src, &cancel));
            assert!(d1 < 1e-12, "{d1}");
        }
    }

    #[test]
    fn an_expression_recomputed_with_a_supplied_velocity_leaf() {
        let src = source();
        let spec = crate::expr::parse("0.8*velocity + 0.2*connectivity").unwrap();
        let out = spec.compute(&src).unwrap();
        let eff = out.effective.clone();
        let vparams = match &eff {
            crate::KernelSpec::Sum { terms } => match &terms[0].1 {
                crate::KernelSpec::Velocity(p) => p.clone(),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        let u = vparams.prepare_update(&src).unwrap().unwrap();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let v = src.layer("velocity").unwrap();
        let a: Vec<f64> = (0..60).map(|i| -v.get(i, 4)).collect();
        let change = LowRankChange {
            genes: vec![(4, a)],
            own: None,
        };
        let with = eff
            .compute_with(&src, &|leaf| {
                asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match leaf {
                    crate::KernelSpec::Velocity(p) if p == u.params() => {
                        Some(u.transition(&change).map(|transition| crate::KernelOutput {
                            transition,
                            effective: leaf.clone(),
                        }))
                    }
                    _ => None,
                }
            })
            .unwrap();
        assert_eq!(asked.into_inner(), 2);
        // The same as the full expression on the changed layer.
        let mut changed = src.clone();
        let mut data = v.to_f64();
        for i in 0..60 {
            data[i * 12 + 4] = 0.0;
        }
        changed
            .layers
            .insert("velocity".into(), DenseMatrix::from_f64(60, 12, data));
        let expect = eff.compute(&changed).unwrap();
        let d = max_diff(&with.transition, &expect.transition);
        assert!(d < 1e-12, "{d}");
        assert_eq!(with.effective, eff);
    }
}
