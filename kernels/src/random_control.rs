//! Randomised control (dynamo's `calc_rnd_vel`): recompute any velocity-based kernel with each
//! gene's velocity permuted across cells and multiplied by random signs. A kernel whose
//! structure survives this is driven by the graph, not by the velocities.
//!
//! [`RandomizedVelocity`] wraps a [`CellSource`] and returns the randomised velocity layer in
//! place of the real one, so the same kernel expression can be computed on it unchanged.
//! Gene `g` uses its own ChaCha8 stream seeded from `(seed, g)`: the result is reproducible and
//! independent of the number of threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::csr::Csr;
use crate::source::{CellSource, DenseMatrix, SourceError};

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

/// A [`CellSource`] whose velocity layer (`vkey`) is randomised with [`permute_with_signs`].
pub struct RandomizedVelocity<'a> {
    inner: &'a dyn CellSource,
    vkey: String,
    seed: u64,
}

impl<'a> RandomizedVelocity<'a> {
    /// Wraps `inner`, randomising `layers[vkey]` with `seed`.
    pub fn new(inner: &'a dyn CellSource, vkey: &str, seed: u64) -> Self {
        Self {
            inner,
            vkey: vkey.to_string(),
            seed,
        }
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
        let m = self.inner.layer(key)?;
        Ok(if key == self.vkey {
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
}
