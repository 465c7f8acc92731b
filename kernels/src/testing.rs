//! The kernel contract suite, and a small synthetic dataset to run it on.
//!
//! [`assert_kernel_contract`] checks what every kernel must guarantee: a square, finite,
//! non-negative matrix whose rows sum to 1 within 1e-12; determinism; identical results at 1
//! and several threads; and that the spec (and the effective spec, with estimated parameters)
//! serialises, rebuilds and recomputes to the same matrix.

use crate::csr::Csr;
use crate::kernel::{Kernel, KernelSpec};
use crate::source::{CellSource, DenseMatrix, InMemoryCells};
use crate::transition::TransitionMatrix;

/// A deterministic linear congruential generator (no dependency, stable across versions).
#[derive(Clone, Debug)]
pub struct Lcg(u64);

impl Lcg {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        )
    }

    /// A uniform number in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An approximately standard normal number (sum of 12 uniforms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// A synthetic bifurcating dataset: `n` cells along a trunk that splits into two branches,
/// `n_genes` genes whose expression follows the position, velocities along the direction of
/// travel (plus noise), a symmetric kNN graph (`k` neighbours, Gaussian weights) as
/// `obsp["connectivities"]`, `obs["dpt_pseudotime"]`, `var["velocity_genes"]`, and a
/// precomputed `obsp["T_fwd"]` (the row-normalised graph).
pub fn toy_cells(n: usize, n_genes: usize, k: usize, seed: u64) -> InMemoryCells {
    let mut rng = Lcg::new(seed);
    // Position: time t in [0,1]; branch b in {0,1}; 2-D coordinates.
    let mut pos = Vec::with_capacity(n);
    let mut time = Vec::with_capacity(n);
    for i in 0..n {
        let t = (i as f64 + rng.uniform()) / n as f64;
        let b = if rng.uniform() < 0.5 { 1.0 } else { -1.0 };
        let y = if t > 0.5 { b * (t - 0.5) } else { 0.0 };
        pos.push((t + 0.01 * rng.normal(), y + 0.01 * rng.normal()));
        time.push(t);
    }
    let loadings: Vec<(f64, f64, f64)> = (0..n_genes)
        .map(|_| (rng.normal(), rng.normal(), rng.normal()))
        .collect();
    let mut ms = Vec::with_capacity(n * n_genes);
    let mut vel = Vec::with_capacity(n * n_genes);
    for (i, &(x, y)) in pos.iter().enumerate() {
        let dy = if time[i] > 0.5 { y.signum() } else { 0.0 };
        for &(a, b, c) in &loadings {
            ms.push(a * x + b * y + c * x * x + 0.01 * rng.normal());
            vel.push(a + b * dy + 2.0 * c * x + 0.3 * rng.normal());
        }
    }
    // Symmetric kNN graph with Gaussian weights.
    let mut triplets = Vec::new();
    for i in 0..n {
        let mut d: Vec<(f64, usize)> = (0..n)
            .filter(|&j| j != i)
            .map(|j| {
                let (dx, dy) = (pos[i].0 - pos[j].0, pos[i].1 - pos[j].1);
                (dx * dx + dy * dy, j)
            })
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        let sigma2 = d[k.min(d.len()) - 1].0.max(1e-12);
        for &(dd, j) in d.iter().take(k) {
            let w = (-dd / sigma2).exp();
            triplets.push((i, j, w));
            triplets.push((j, i, w));
        }
    }
    let mut conn = Csr::from_triplets(n, n, &triplets).expect("valid kNN triplets");
    // Mutual neighbours were added twice (symmetric either way): cap the weight at 1.
    conn.data_mut().iter_mut().for_each(|w| *w = w.min(1.0));
    let t_fwd = TransitionMatrix::from_weights(conn.clone(), crate::Direction::Forward)
        .expect("kNN rows are non-empty")
        .into_csr();
    let mut cells = InMemoryCells {
        n_cells: n,
        n_genes,
        ..InMemoryCells::default()
    };
    cells.graphs.insert("connectivities".into(), conn);
    cells.graphs.insert("T_fwd".into(), t_fwd);
    cells.obs.insert("dpt_pseudotime".into(), time);
    cells
        .layers
        .insert("Ms".into(), DenseMatrix::from_f64(n, n_genes, ms));
    cells
        .layers
        .insert("velocity".into(), DenseMatrix::from_f64(n, n_genes, vel));
    cells.var_masks.insert(
        "velocity_genes".into(),
        (0..n_genes).map(|g| g % 5 != 0).collect(),
    );
    cells
}

/// Checks the kernel contract; panics with a message naming the kernel and the violation.
pub fn assert_kernel_contract(kernel: &dyn Kernel, cells: &dyn CellSource) {
    let name = kernel.name();
    let out = kernel
        .compute(cells)
        .unwrap_or_else(|e| panic!("{name}: compute failed: {e}"));
    let t = out.transition.as_csr();
    assert_eq!(t.nrows(), cells.n_cells(), "{name}: rows");
    assert_eq!(t.ncols(), cells.n_cells(), "{name}: columns");
    for (i, s) in t.row_sums().iter().enumerate() {
        assert!((s - 1.0).abs() <= 1e-12, "{name}: row {i} sums to {s}");
    }
    assert!(
        t.data().iter().all(|v| v.is_finite() && *v >= 0.0),
        "{name}: negative or non-finite entry"
    );
    // Deterministic.
    let again = kernel.compute(cells).expect("second compute");
    assert_eq!(
        again.transition, out.transition,
        "{name}: not deterministic"
    );
    // Identical at 1 and several threads.
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        let other = pool
            .install(|| kernel.compute(cells))
            .expect("compute in pool");
        assert_eq!(
            other.transition, out.transition,
            "{name}: differs with {threads} thread(s)"
        );
    }
    // spec -> JSON -> rebuild -> same matrix; and the effective spec reproduces it.
    for (what, spec) in [
        ("spec", kernel.spec()),
        ("effective spec", out.effective.clone()),
    ] {
        let json = spec.to_json();
        let rebuilt = KernelSpec::from_json(&json)
            .unwrap_or_else(|e| panic!("{name}: {what} does not rebuild: {e}\n{json}"));
        assert_eq!(
            rebuilt, spec,
            "{name}: {what} changed in the JSON round trip"
        );
        let m = rebuilt.compute(cells).expect("rebuilt compute");
        assert_eq!(
            m.transition, out.transition,
            "{name}: {what} recomputes a different matrix"
        );
    }
}

/// A large synthetic dataset for benchmarks (O(n·k) to build): cells ordered along a line,
/// each connected to its `k` nearest cells by index (a kNN-like band graph with Gaussian
/// weights), float32 `Ms` and `velocity` layers (`n_genes` genes) that drift along the line.
pub fn chain_cells(n: usize, n_genes: usize, k: usize, seed: u64) -> InMemoryCells {
    let mut rng = Lcg::new(seed);
    let half = (k / 2).max(1);
    let mut indptr = Vec::with_capacity(n + 1);
    let mut indices = Vec::with_capacity(n * 2 * half);
    let mut data = Vec::with_capacity(n * 2 * half);
    indptr.push(0);
    for i in 0..n {
        let lo = i.saturating_sub(half);
        let hi = (i + half).min(n - 1);
        for j in lo..=hi {
            if j != i {
                let d = (i as f64 - j as f64) / half as f64;
                indices.push(j as u32);
                data.push((-d * d).exp());
            }
        }
        indptr.push(indices.len());
    }
    let conn = Csr::try_new(n, n, indptr, indices, data).expect("band graph");
    let loadings: Vec<f64> = (0..n_genes).map(|_| rng.normal()).collect();
    let mut ms = Vec::with_capacity(n * n_genes);
    let mut vel = Vec::with_capacity(n * n_genes);
    for i in 0..n {
        let t = i as f64 / n as f64;
        for &a in &loadings {
            ms.push((a * t + 0.01 * rng.normal()) as f32);
            vel.push((a + 0.5 * rng.normal()) as f32);
        }
    }
    let mut cells = InMemoryCells {
        n_cells: n,
        n_genes,
        ..InMemoryCells::default()
    };
    cells.graphs.insert("connectivities".into(), conn);
    cells
        .layers
        .insert("Ms".into(), DenseMatrix::from_f32(n, n_genes, ms));
    cells
        .layers
        .insert("velocity".into(), DenseMatrix::from_f32(n, n_genes, vel));
    cells
}

/// A kNN-like band chain for benchmarks: 30 neighbours by index (15 each side, Gaussian
/// weights), cut into `groups` metastable groups (edges across group boundaries weakened
/// 100-fold), with a forward drift (weights × 1.3 ahead). Its dominant eigenvalues are
/// separated from the bulk like those of a real velocity + connectivity kernel (a uniform
/// advective chain has a continuum spectrum no Krylov method resolves quickly).
pub fn metastable_band_chain(n: usize, groups: usize) -> crate::TransitionMatrix {
    let half = 15usize;
    let groups = groups.max(1);
    let mut trip = Vec::with_capacity(n * 2 * half);
    for i in 0..n {
        for j in i.saturating_sub(half)..=(i + half).min(n.saturating_sub(1)) {
            if j == i {
                continue;
            }
            let d = (i as f64 - j as f64) / half as f64;
            let mut w = (-d * d).exp() * if j > i { 1.3 } else { 1.0 };
            if i * groups / n != j * groups / n {
                w *= 0.01;
            }
            trip.push((i, j, w));
        }
    }
    let w = crate::Csr::from_triplets(n, n, &trip).expect("band graph indices are in range");
    crate::TransitionMatrix::from_weights(w, crate::Direction::Forward)
        .expect("every row of the band graph has neighbours")
}

/// A clustered random kNN-like graph for scale benchmarks: `groups` clusters of consecutive
/// cells; each cell has `k` distinct random neighbours, each inside its own cluster with
/// probability 0.99 and in the next cluster otherwise (which keeps the chain irreducible);
/// weights uniform in [0.5, 1), then symmetrised (a reversible chain with a real spectrum,
/// like a connectivity kernel). Within-cluster mixing is fast (as in a
/// kNN graph of high-dimensional data), so the `groups` dominant eigenvalues are well
/// separated from the bulk at any size — unlike a 1-D band chain, whose mixing time grows
/// with the square of the cluster size. Deterministic in `seed`.
pub fn clustered_knn_chain(
    n: usize,
    groups: usize,
    k: usize,
    seed: u64,
) -> crate::TransitionMatrix {
    let groups = groups.clamp(1, n.max(1));
    let bounds = |g: usize| (g * n / groups, (g + 1) * n / groups);
    let mut rng = Lcg::new(seed);
    let mut trip = Vec::with_capacity(n * k);
    let mut seen: Vec<usize> = Vec::with_capacity(k);
    for i in 0..n {
        let g = (i * groups / n).min(groups - 1);
        seen.clear();
        let mut tries = 0;
        while seen.len() < k && tries < 20 * k {
            tries += 1;
            let target = if g + 1 < groups && rng.uniform() < 0.01 {
                g + 1
            } else {
                g
            };
            let (lo, hi) = bounds(target);
            if hi <= lo {
                continue;
            }
            let j = lo + ((rng.uniform() * (hi - lo) as f64) as usize).min(hi - lo - 1);
            if j == i || seen.contains(&j) {
                continue;
            }
            seen.push(j);
            trip.push((i, j, 0.5 + 0.5 * rng.uniform()));
        }
        if seen.is_empty() {
            trip.push((i, i, 1.0));
        }
    }
    let w = crate::Csr::from_triplets(n, n, &trip).expect("indices are in range");
    // Symmetric weights: a reversible chain with a real spectrum (as a connectivity kernel).
    let w = w.add_scaled(0.5, &w.transpose(), 0.5);
    crate::TransitionMatrix::from_weights(w, crate::Direction::Forward)
        .expect("every row has a neighbour")
}
