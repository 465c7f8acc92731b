//! A single-switch simulation in the manner of scVelo's `datasets.simulation`: every gene is
//! induced from (0, 0) at time 0 with rate α, switched off at its own time t_ (α = 0 after),
//! and every cell sits at one time drawn uniformly in [0, `t_max`]. Unspliced and spliced
//! abundances are the exact solution of `du/dt = α − βu`, `ds/dt = βu − γs` plus Gaussian
//! noise with standard deviation `noise_level` × (99th percentile of the gene) / 10, clipped
//! at 0. It is the dynamical model's own generative model, so the parameters and the shared
//! time are identifiable: the ground truth of `tests/it/dynamical.rs`.
//!
//! As scVelo's: switching times cycle through 0.4, 0.7, 1 and 0.1 × `t_max` (1: induced
//! throughout), `t_max` = 30 (scVelo's 300 cells at Poisson intervals of mean 0.1), the noise
//! model. Deviations: α, β, γ vary per gene, log-normally around scVelo's 5, 0.5 and 0.3
//! (σ = 0.25, |γ − β| ≥ 0.05) instead of one value for all genes, so that recovering γ/β is
//! tested across rates; times are uniform rather than the increments of a Poisson process.
//!
//! The output has what `cellfate velocity` needs without preprocessing (normalising counts by
//! cell size would distort the kinetics, since all genes switch together): the noisy values
//! as `layers["spliced"]`/`["unspliced"]` and `X`, a kNN graph on the standardised spliced
//! values (`obsp["distances"]`, `obsp["connectivities"]`, exact neighbours, UMAP weights as in
//! `preprocess`), the first moments `layers["Ms"]`/`["Mu"]` over it (scVelo's `moments`), and
//! the truth in `obs["true_time"]` and `var["true_alpha"|"true_beta"|"true_gamma"|"true_t_"]`.

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Normal};
use serde::{Deserialize, Serialize};

use super::SimError;
use crate::io::{DataFrame, Element};

/// Switching times as fractions of `t_max`, cycled over the genes (scVelo's; 1 is never
/// switched off within the observed times).
const SWITCHES: [f64; 4] = [0.4, 0.7, 1.0, 0.1];

/// Parameters of [`simulate_switch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwitchParams {
    /// Number of cells (100 ..= 50,000: the kNN graph is exact).
    pub n_cells: usize,
    /// Number of genes (≥ 2).
    pub n_genes: usize,
    /// Time span of the cells.
    pub t_max: f64,
    /// Noise level (scVelo's `noise_level`; 0 gives exact values).
    pub noise_level: f64,
    /// Neighbours of the kNN graph (including the cell itself, as `preprocess --n-neighbors`).
    pub n_neighbors: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SwitchParams {
    fn default() -> Self {
        Self {
            n_cells: 1000,
            n_genes: 50,
            t_max: 30.0,
            noise_level: 1.0,
            n_neighbors: 30,
            seed: 0,
        }
    }
}

impl SwitchParams {
    /// Checks every parameter.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |name, value: String, expected| {
            Err(SimError::OutOfRange {
                name,
                value,
                expected,
            })
        };
        if !(100..=50_000).contains(&self.n_cells) {
            return bad("n_cells", self.n_cells.to_string(), "100 ..= 50000");
        }
        if self.n_genes < 2 {
            return bad("n_genes", self.n_genes.to_string(), ">= 2");
        }
        if !(self.t_max.is_finite() && self.t_max > 0.0) {
            return bad("t_max", self.t_max.to_string(), "a positive number");
        }
        if !(self.noise_level.is_finite() && self.noise_level >= 0.0) {
            return bad("noise_level", self.noise_level.to_string(), "a number >= 0");
        }
        if !(2..self.n_cells).contains(&self.n_neighbors) {
            return bad(
                "n_neighbors",
                self.n_neighbors.to_string(),
                "2 ..= n_cells - 1",
            );
        }
        Ok(())
    }
}

/// One gene's true kinetics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwitchGene {
    /// Transcription rate during induction.
    pub alpha: f64,
    /// Splicing rate.
    pub beta: f64,
    /// Degradation rate.
    pub gamma: f64,
    /// Switching time (α = 0 from here on).
    pub t_: f64,
}

impl SwitchGene {
    /// Exact (u, s) at time `t` (from (0, 0) at t = 0).
    pub fn state(&self, t: f64) -> (f64, f64) {
        let (a, b, g) = (self.alpha, self.beta, self.gamma);
        // From (u0, s0) for a time d with rate a.
        let step = |u0: f64, s0: f64, a: f64, d: f64| {
            let (eb, eg) = ((-b * d).exp(), (-g * d).exp());
            let u = a / b + (u0 - a / b) * eb;
            let s = a / g + (s0 - a / g) * eg + (a - b * u0) / (g - b) * (eg - eb);
            (u, s)
        };
        if t <= self.t_ {
            step(0.0, 0.0, a, t)
        } else {
            let (u0, s0) = step(0.0, 0.0, a, self.t_);
            step(u0, s0, 0.0, t - self.t_)
        }
    }
}

/// A single-switch simulation with its truth.
#[derive(Clone, Debug)]
pub struct SwitchData {
    /// The parameters used.
    pub params: SwitchParams,
    /// True kinetics per gene.
    pub genes: Vec<SwitchGene>,
    /// True time per cell.
    pub time: Vec<f64>,
    /// Noisy unspliced values, row-major cells × genes.
    pub unspliced: Vec<f64>,
    /// Noisy spliced values, row-major cells × genes.
    pub spliced: Vec<f64>,
    /// kNN distances (exact neighbours on the standardised spliced values).
    pub distances: cellfate_kernels::Csr,
    /// UMAP connectivities of that graph.
    pub connectivities: cellfate_kernels::Csr,
    /// First moments of unspliced (row-major).
    pub mu: Vec<f64>,
    /// First moments of spliced (row-major).
    pub ms: Vec<f64>,
}

/// Simulates a single-switch dataset (see the module documentation).
pub fn simulate_switch(p: &SwitchParams) -> Result<SwitchData, SimError> {
    p.validate()?;
    let (n, g) = (p.n_cells, p.n_genes);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5717_c4ed);
    let spread = LogNormal::new(0.0, 0.25).map_err(|_| SimError::OutOfRange {
        name: "seed",
        value: p.seed.to_string(),
        expected: "a valid seed",
    })?;
    let genes: Vec<SwitchGene> = (0..g)
        .map(|j| {
            let alpha = 5.0 * spread.sample(&mut rng);
            let beta = 0.5 * spread.sample(&mut rng);
            let mut gamma: f64 = 0.3 * spread.sample(&mut rng);
            if (gamma - beta).abs() < 0.05 {
                gamma = if gamma < beta {
                    beta - 0.05
                } else {
                    beta + 0.05
                };
            }
            let t_ = SWITCHES[j % SWITCHES.len()] * p.t_max;
            SwitchGene {
                alpha,
                beta,
                gamma,
                t_,
            }
        })
        .collect();
    let time: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..p.t_max)).collect();
    let mut u = vec![0.0; n * g];
    let mut s = vec![0.0; n * g];
    for (i, &t) in time.iter().enumerate() {
        for (j, gene) in genes.iter().enumerate() {
            let (a, b) = gene.state(t);
            u[i * g + j] = a;
            s[i * g + j] = b;
        }
    }
    if p.noise_level > 0.0 {
        for x in [&mut u, &mut s] {
            for j in 0..g {
                let mut col: Vec<f64> = (0..n).map(|i| x[i * g + j]).collect();
                col.sort_by(f64::total_cmp);
                let p99 = col[((n - 1) as f64 * 0.99).round() as usize];
                let sd = p.noise_level * p99 / 10.0;
                if let Ok(d) = Normal::new(0.0, sd) {
                    for i in 0..n {
                        let v = &mut x[i * g + j];
                        *v = (*v + d.sample(&mut rng)).max(0.0);
                    }
                }
            }
        }
    }
    // Neighbours on the standardised spliced values.
    let mut z = DMatrix::<f64>::zeros(n, g);
    for j in 0..g {
        let col: Vec<f64> = (0..n).map(|i| s[i * g + j]).collect();
        let m = col.iter().sum::<f64>() / n as f64;
        let sd = (col.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64).sqrt();
        let sd = if sd > 0.0 { sd } else { 1.0 };
        for i in 0..n {
            z[(i, j)] = (col[i] - m) / sd;
        }
    }
    let nn = crate::upstream::knn_exact(&z, p.n_neighbors - 1);
    let (distances, connectivities) = crate::upstream::neighbor_graphs(&nn, p.n_neighbors)
        .map_err(|_| SimError::OutOfRange {
            name: "n_neighbors",
            value: p.n_neighbors.to_string(),
            expected: "a graph of finite distances",
        })?;
    let w = crate::upstream::velocity::smoothing_graph(&connectivities);
    let smooth = |x: &[f64]| -> Vec<f64> {
        let mut out = vec![0.0; n * g];
        for i in 0..n {
            let (idx, val) = w.row(i);
            for (&k, &wk) in idx.iter().zip(val) {
                let k = k as usize;
                for j in 0..g {
                    out[i * g + j] += wk * x[k * g + j];
                }
            }
        }
        out
    };
    let (mu, ms) = (smooth(&u), smooth(&s));
    Ok(SwitchData {
        params: p.clone(),
        genes,
        time,
        unspliced: u,
        spliced: s,
        distances,
        connectivities,
        mu,
        ms,
    })
}

impl SwitchData {
    /// The AnnData elements (see the module documentation).
    pub fn to_elements(&self) -> Vec<(String, Element)> {
        let (n, g) = (self.time.len(), self.genes.len());
        let dense = |v: &[f64]| Element::from_f64_matrix(n, g, v.to_vec());
        let mut obs = DataFrame::with_index((0..n).map(|i| format!("cell_{i}")).collect());
        obs.columns
            .push(("true_time".into(), Element::from_f64(self.time.clone())));
        let mut var = DataFrame::with_index((0..g).map(|j| format!("gene_{j}")).collect());
        let col = |f: fn(&SwitchGene) -> f64| Element::from_f64(self.genes.iter().map(f).collect());
        var.columns.extend([
            ("true_alpha".to_string(), col(|x| x.alpha)),
            ("true_beta".to_string(), col(|x| x.beta)),
            ("true_gamma".to_string(), col(|x| x.gamma)),
            ("true_t_".to_string(), col(|x| x.t_)),
        ]);
        vec![
            ("X".into(), dense(&self.spliced)),
            ("obs".into(), Element::DataFrame(obs)),
            ("var".into(), Element::DataFrame(var)),
            (
                "layers".into(),
                Element::Dict(vec![
                    ("spliced".into(), dense(&self.spliced)),
                    ("unspliced".into(), dense(&self.unspliced)),
                    ("Ms".into(), dense(&self.ms)),
                    ("Mu".into(), dense(&self.mu)),
                ]),
            ),
            (
                "obsp".into(),
                Element::Dict(vec![
                    (
                        "distances".into(),
                        Element::Sparse(self.distances.clone().into()),
                    ),
                    (
                        "connectivities".into(),
                        Element::Sparse(self.connectivities.clone().into()),
                    ),
                ]),
            ),
            (
                "uns".into(),
                Element::Dict(vec![(
                    "simulation".into(),
                    Element::Dict(vec![
                        ("model".into(), Element::Str("switch".into())),
                        (
                            "seed".into(),
                            Element::Scalar(crate::io::NumVec::U64(vec![self.params.seed])),
                        ),
                        (
                            "noise_level".into(),
                            Element::Scalar(crate::io::NumVec::F64(vec![self.params.noise_level])),
                        ),
                        (
                            "t_max".into(),
                            Element::Scalar(crate::io::NumVec::F64(vec![self.params.t_max])),
                        ),
                    ]),
                )]),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_continuous_at_the_switch_and_decays_after() {
        let gene = SwitchGene {
            alpha: 5.0,
            beta: 0.5,
            gamma: 0.3,
            t_: 5.0,
        };
        let (a, b) = (gene.state(5.0 - 1e-9), gene.state(5.0 + 1e-9));
        assert!((a.0 - b.0).abs() < 1e-7 && (a.1 - b.1).abs() < 1e-7);
        // Induction: u rises towards α/β; repression: u decays.
        assert!(gene.state(1.0).0 < gene.state(4.0).0);
        assert!(gene.state(10.0).0 < gene.state(6.0).0);
        // du/dt = α − βu at t = 0 (u = 0).
        let h = 1e-6;
        assert!((gene.state(h).0 / h - 5.0).abs() < 1e-4);
    }

    #[test]
    fn moments_average_the_neighbours() {
        let d = simulate_switch(&SwitchParams {
            n_cells: 200,
            n_genes: 5,
            ..Default::default()
        })
        .unwrap();
        let w = crate::upstream::velocity::smoothing_graph(&d.connectivities);
        let (idx, val) = w.row(7);
        let want: f64 = idx
            .iter()
            .zip(val)
            .map(|(&k, &x)| x * d.spliced[k as usize * 5 + 2])
            .sum();
        assert!((d.ms[7 * 5 + 2] - want).abs() < 1e-12);
        assert!(d.spliced.iter().all(|&x| x >= 0.0));
    }
}
