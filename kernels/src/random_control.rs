//! Randomised control (dynamo's `calc_rnd_vel`): recompute any velocity-based kernel with each
//! gene's velocity permuted across cells and multiplied by random signs. A kernel whose
//! structure survives this is driven by the graph, not by the velocities.
//!
//! [`RandomizedVelocity`] wraps a [`CellSource`] and returns the randomised velocity layer in
//! place of the real one, so the same kernel expression can be computed on it unchanged.
//! Gene `g` uses its own ChaCha8 stream seeded from `(seed, g)`: the result is reproducible and
//! independent of the number of threads.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::csr::Csr;
use crate::error::KernelError;
use crate::kernel::{Kernel, KernelOutput, KernelSpec};
use crate::source::{CellSource, DenseMatrix, SourceError};
use crate::transition::TransitionMatrix;

/// Permutes each column of `v` across rows and flips the sign of each entry at random.
pub fn permute_with_signs(v: &DenseMatrix, seed: u64) -> DenseMatrix {
    let (n, g) = (v.nrows(), v.ncols());
    let mut out = vec![0.0; n * g];
    for j in 0..g {
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let k = rng.random_range(0..=i);
            perm.swap(i, k);
        }
        for (i, &src) in perm.iter().enumerate() {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            out[i * g + j] = sign * v.get(src, j);
        }
    }
    DenseMatrix::from_f64(n, g, out)
}

/// A [`CellSource`] whose velocity layers (`vkeys`) are randomised with
/// [`permute_with_signs`], and which can hold extra layers (a velocity computed in memory).
pub struct RandomizedVelocity<'a> {
    inner: &'a dyn CellSource,
    vkeys: Vec<String>,
    seed: u64,
    extra: BTreeMap<String, DenseMatrix>,
}

impl<'a> RandomizedVelocity<'a> {
    /// Wraps `inner`, randomising `layers[vkey]` with `seed`.
    pub fn new(inner: &'a dyn CellSource, vkey: &str, seed: u64) -> Self {
        Self::with_keys(inner, &[vkey.to_string()], seed)
    }

    /// Wraps `inner`, randomising each of `layers[vkeys]` with `seed`.
    pub fn with_keys(inner: &'a dyn CellSource, vkeys: &[String], seed: u64) -> Self {
        Self {
            inner,
            vkeys: vkeys.to_vec(),
            seed,
            extra: BTreeMap::new(),
        }
    }
}

/// The velocity layers a kernel spec reads (velocity kernels' `vkey`; labeling kernels'
/// `vkey`, which they compute when `cells` lacks it: then `extra` receives it and the
/// matching smoothed total RNA).
fn velocity_layers(
    spec: &KernelSpec,
    cells: &dyn CellSource,
    extra: &mut BTreeMap<String, DenseMatrix>,
) -> Result<Vec<String>, KernelError> {
    let mut keys = Vec::new();
    for leaf in spec.leaves() {
        match leaf {
            KernelSpec::Velocity(p) => keys.push(p.vkey.clone()),
            KernelSpec::LabelingTime(p) => {
                if cells.layer(&p.vkey).is_err() || cells.layer(&p.xkey).is_err() {
                    let lv = p.labeling_velocity(cells)?;
                    extra.insert(p.vkey.clone(), lv.velocity);
                    extra.insert(p.xkey.clone(), lv.m_total);
                }
                keys.push(p.vkey.clone());
            }
            _ => {}
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The randomised control of a kernel: `spec` (the effective spec of the real kernel, so that
/// nothing is re-estimated, the softmax scale included) recomputed with every velocity it
/// reads permuted across cells with random signs ([`permute_with_signs`], `seed`). An error
/// when the expression reads no velocity (velocity or labeling-time kernel).
pub fn randomized_control(
    spec: &KernelSpec,
    cells: &dyn CellSource,
    seed: u64,
) -> Result<KernelOutput, KernelError> {
    let mut extra = BTreeMap::new();
    let keys = velocity_layers(spec, cells, &mut extra)?;
    if keys.is_empty() {
        return Err(KernelError::InvalidInput {
            kernel: "random control",
            what: "kernel expression".into(),
            detail: "the randomised control permutes velocities: the expression needs a velocity or labeling_time kernel".into(),
        });
    }
    let mut rnd = RandomizedVelocity::with_keys(cells, &keys, seed);
    rnd.extra = extra;
    spec.compute(&rnd)
}

/// Per-cell coherence of a kernel's flow on an embedding: the cosine between the cell's
/// projected velocity (the transition-weighted displacement `Σⱼ Tᵢⱼ (eⱼ − eᵢ)`) and the mean
/// projected velocity of its neighbours in `graph` (itself excluded). Near 1 where the flow
/// is locally consistent, near 0 where directions are random; NaN for a cell with no
/// displacement or no neighbour.
pub fn flow_coherence(t: &TransitionMatrix, embedding: &DenseMatrix, graph: &Csr) -> Vec<f64> {
    let p = crate::projection::project(t, embedding);
    let d = embedding.ncols();
    let n = t.n_cells();
    (0..n)
        .map(|i| {
            let pi = &p[i * d..(i + 1) * d];
            let mut mean = vec![0.0; d];
            let mut k = 0usize;
            let (cols, vals) = graph.row(i);
            for (&j, &w) in cols.iter().zip(vals) {
                let j = j as usize;
                if j == i || w <= 0.0 {
                    continue;
                }
                mean.iter_mut()
                    .zip(&p[j * d..(j + 1) * d])
                    .for_each(|(m, x)| *m += x);
                k += 1;
            }
            let (dot, na, nb) = pi
                .iter()
                .zip(&mean)
                .fold((0.0, 0.0, 0.0), |(a, b, c), (x, y)| {
                    (a + x * y, b + x * x, c + y * y)
                });
            if k == 0 || na == 0.0 || nb == 0.0 {
                f64::NAN
            } else {
                dot / (na.sqrt() * nb.sqrt())
            }
        })
        .collect()
}

/// How much more coherent a kernel's flow is than its randomised control ([`flow_coherence`]
/// of both on the same embedding and graph).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlScore {
    /// Per cell: coherence of the real flow minus that of the control.
    pub per_cell: Vec<f64>,
    /// Mean coherence of the real flow (NaN cells left out).
    pub real: f64,
    /// Mean coherence of the control.
    pub control: f64,
    /// `real − control`: clearly positive for a directed flow, near 0 when the velocities
    /// are noise.
    pub score: f64,
}

/// [`ControlScore`] of a real kernel and its randomised control.
pub fn control_score(
    real: &TransitionMatrix,
    control: &TransitionMatrix,
    embedding: &DenseMatrix,
    graph: &Csr,
) -> ControlScore {
    let a = flow_coherence(real, embedding, graph);
    let b = flow_coherence(control, embedding, graph);
    let mean = |v: &[f64]| {
        let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if f.is_empty() {
            f64::NAN
        } else {
            f.iter().sum::<f64>() / f.len() as f64
        }
    };
    let (ra, rb) = (mean(&a), mean(&b));
    ControlScore {
        per_cell: a.iter().zip(&b).map(|(x, y)| x - y).collect(),
        real: ra,
        control: rb,
        score: ra - rb,
    }
}

impl CellSource for RandomizedVelocity<'_> {
    fn n_cells(&self) -> usize {
        self.inner.n_cells()
    }
    fn n_genes(&self) -> usize {
        self.inner.n_genes()
    }
    fn graph(&self, key: &str) -> Result<Csr, SourceError> {
        self.inner.graph(key)
    }
    fn obs_f64(&self, key: &str) -> Result<Vec<f64>, SourceError> {
        self.inner.obs_f64(key)
    }
    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, SourceError> {
        self.inner.obs_labels(key)
    }
    fn layer(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        let m = match self.extra.get(key) {
            Some(m) => m.clone(),
            None => self.inner.layer(key)?,
        };
        Ok(if self.vkeys.iter().any(|k| k == key) {
            permute_with_signs(&m, self.seed)
        } else {
            m
        })
    }
    fn obsm(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        self.inner.obsm(key)
    }
    fn var_mask(&self, key: &str) -> Result<Option<Vec<bool>>, SourceError> {
        self.inner.var_mask(key)
    }
    fn obs_categories(&self, key: &str) -> Result<Vec<String>, SourceError> {
        self.inner.obs_categories(key)
    }
    fn uns_matrix(&self, key: &str) -> Result<Option<DenseMatrix>, SourceError> {
        self.inner.uns_matrix(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::toy_cells;
    use crate::{Kernel, VelocityParams};

    #[test]
    fn permutation_preserves_each_genes_magnitudes_and_is_seeded() {
        let c = toy_cells(100, 10, 8, 2);
        let v = &c.layers["velocity"];
        let r = permute_with_signs(v, 5);
        for j in 0..v.ncols() {
            let mut a: Vec<f64> = (0..v.nrows()).map(|i| v.get(i, j).abs()).collect();
            let mut b: Vec<f64> = (0..r.nrows()).map(|i| r.get(i, j).abs()).collect();
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            assert_eq!(a, b);
        }
        assert_eq!(r, permute_with_signs(v, 5));
        assert_ne!(r, permute_with_signs(v, 6));
    }

    #[test]
    fn randomised_kernel_loses_direction() {
        let c = toy_cells(300, 30, 10, 3);
        let k = VelocityParams::default();
        let real = k.compute(&c).unwrap().transition;
        let rnd = k
            .compute(&RandomizedVelocity::new(&c, "velocity", 1))
            .unwrap()
            .transition;
        // Mean pseudotime change per step: positive for the real velocities, ~0 for random.
        let t = &c.obs["dpt_pseudotime"];
        let drift = |tm: &crate::TransitionMatrix| {
            let next = tm.mul_vec(t);
            next.iter().zip(t).map(|(a, b)| a - b).sum::<f64>() / t.len() as f64
        };
        let (dr, dn) = (drift(&real), drift(&rnd));
        assert!(dr > 0.0 && dr > 3.0 * dn.abs(), "real {dr}, random {dn}");
    }

    #[test]
    fn control_score_separates_real_flow_from_noise() {
        let c = toy_cells(300, 30, 10, 3);
        let spec = crate::expr::parse("velocity").unwrap();
        let real = spec.compute(&c).unwrap();
        let ctrl = randomized_control(&real.effective, &c, 1).unwrap();
        let emb = &c.layers["Ms"];
        let graph = &c.graphs["connectivities"];
        let s = control_score(&real.transition, &ctrl.transition, emb, graph);
        assert!(s.real > 0.5 && s.score > 0.3, "{s:?}");
        let directed = s.score;
        // Velocities that are noise: the real flow is no more coherent than its control.
        let mut noisy = c.clone();
        let v = noisy.layers["velocity"].clone();
        noisy
            .layers
            .insert("velocity".into(), permute_with_signs(&v, 99));
        let real = spec.compute(&noisy).unwrap();
        let ctrl = randomized_control(&real.effective, &noisy, 1).unwrap();
        let s = control_score(&real.transition, &ctrl.transition, emb, graph);
        eprintln!("score: directed {directed:.3}, noise {:.3}", s.score);
        assert!(s.score.abs() < 0.25 * directed, "{s:?}");
        // No velocity in the expression: a clear error.
        let e = randomized_control(&crate::expr::parse("connectivity").unwrap(), &c, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("velocity or labeling_time"), "{e}");
    }
}
