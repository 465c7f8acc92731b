//! A seeded simulator of branching differentiation with splicing kinetics (and optional
//! metabolic labeling), with ground truth: the built-in default dataset of `cellfate`.
//!
//! # Model
//! Every cell has a latent time `t ∈ [0, 1]` and a fate `f`. Its path runs through
//! `Progenitor` (`t < t_branch`), then `Intermediate_<f>` (`t < t_commit`), then the terminal
//! state `<f>`. Each gene follows one *program*: `root` (transcribed before the branch, then
//! switched off), `<f>_early` (on from the branch on fate `f`), `<f>_late` (on from commitment
//! on fate `f`), or `housekeeping` (always on). Transcription `α(t)` is piecewise constant
//! (`α_g` when on, `0.02 α_g` when off) and the unspliced/spliced abundances follow the
//! switching ODE `du/dτ = α − β u`, `ds/dτ = β u − γ s` (`τ = T t`, `T = 15`), solved exactly
//! segment by segment from the steady state at `t = 0`. Counts are Poisson with a log-normal
//! size factor per cell. The true RNA velocity is `β u − γ s` (in expected-count units).
//!
//! With `labeling`, each cell also gets a labeling time `t_L` (from `labeling_times`, default
//! 1, 2 or 4 units of `τ`), total RNA `u + s`, and new RNA `α(t)/γ_T (1 − e^{−γ_T t_L})`
//! (capped at the total) with the total-RNA turnover `γ_T = βγ/(β+γ)` (so that `α/γ_T` is the
//! steady state of `u + s`), sampled as counts into `layers["new"]`/`layers["total"]`;
//! `obs["labeling_time"]` holds `t_L` and `var["true_gamma_total"]` the true `γ_T`.
//!
//! Randomness: one ChaCha8 stream per cell seeded from `(seed, cell)`, so results do not depend
//! on the number of threads.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::io::{Categorical, DataFrame, DenseArray, Element, NumVec, SparseArray, SparseFormat};

/// Kinetic time span of the whole trajectory (`τ = T · t`).
const T_TOTAL: f64 = 15.0;
/// Latent time of the first branching.
const T_BRANCH: f64 = 0.3;
/// Latent time of commitment to the terminal state.
const T_COMMIT: f64 = 0.65;
/// Fate names (the first `n_fates` are used).
const FATE_NAMES: [&str; 6] = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"];
/// Largest `n_cells × n_genes` for which the dense true-velocity layer is written.
const MAX_DENSE_TRUTH: usize = 200_000_000;

/// Parameters of a simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimParams {
    /// Number of cells (100 ..= 10,000,000).
    pub n_cells: usize,
    /// Number of genes (≥ 10).
    pub n_genes: usize,
    /// Number of terminal fates (2 ..= 6).
    pub n_fates: usize,
    /// Seed of the random streams.
    pub seed: u64,
    /// Also simulate metabolic labeling (`layers["new"]`, `layers["total"]`).
    pub labeling: bool,
    /// Mean library-size factor (scales all counts).
    pub depth: f64,
    /// Labeling durations (in units of τ) assigned uniformly at random to the cells.
    pub labeling_times: Vec<f64>,
}

impl Default for SimParams {
    fn default() -> Self {
        Self {
            n_cells: 2000,
            n_genes: 300,
            n_fates: 3,
            seed: 0,
            labeling: false,
            depth: 1.0,
            labeling_times: vec![1.0, 2.0, 4.0],
        }
    }
}

/// Invalid simulation parameters.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum SimError {
    /// A parameter out of its range.
    #[error("simulation parameter `{name}` = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// Parameter.
        name: &'static str,
        /// Value given.
        value: String,
        /// Allowed range.
        expected: &'static str,
    },
}

impl SimParams {
    /// Checks every parameter.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |name, value: String, expected| {
            Err(SimError::OutOfRange {
                name,
                value,
                expected,
            })
        };
        if !(100..=10_000_000).contains(&self.n_cells) {
            return bad("n_cells", self.n_cells.to_string(), "100 ..= 10000000");
        }
        if self.n_genes < 10 {
            return bad("n_genes", self.n_genes.to_string(), ">= 10");
        }
        if !(2..=6).contains(&self.n_fates) {
            return bad("n_fates", self.n_fates.to_string(), "2 ..= 6");
        }
        if !(self.depth.is_finite() && self.depth > 0.0) {
            return bad("depth", self.depth.to_string(), "a positive number");
        }
        if self.labeling
            && (self.labeling_times.is_empty()
                || self
                    .labeling_times
                    .iter()
                    .any(|t| !(t.is_finite() && *t > 0.0)))
        {
            return bad(
                "labeling_times",
                format!("{:?}", self.labeling_times),
                "positive durations",
            );
        }
        Ok(())
    }
}

/// One gene's kinetics and program.
#[derive(Clone, Debug, PartialEq)]
pub struct Gene {
    /// Transcription rate when on.
    pub alpha: f64,
    /// Splicing rate.
    pub beta: f64,
    /// Degradation rate.
    pub gamma: f64,
    /// Program name (`root`, `housekeeping`, `<fate>_early`, `<fate>_late`).
    pub program: String,
    /// Fate the program belongs to (`None` for root and housekeeping).
    pub fate: Option<usize>,
    /// Window of latent time `[on, off)` during which the gene is transcribed on its fate.
    pub window: (f64, f64),
}

impl Gene {
    /// Turnover rate of total RNA (unspliced + spliced) used by the labeling model:
    /// `γ_T = βγ / (β + γ)`.
    pub fn gamma_total(&self) -> f64 {
        self.beta * self.gamma / (self.beta + self.gamma)
    }

    /// Whether the gene is transcribed at latent time `t` on fate `fate`.
    fn is_on(&self, t: f64, fate: usize) -> bool {
        let on_path = self.fate.is_none_or(|f| f == fate);
        on_path && t >= self.window.0 && t < self.window.1
    }

    fn alpha_at(&self, t: f64, fate: usize) -> f64 {
        if self.is_on(t, fate) {
            self.alpha
        } else {
            0.02 * self.alpha
        }
    }

    /// Exact (u, s) at latent time `t` on fate `fate`, starting from the steady state at 0.
    pub fn state(&self, t: f64, fate: usize) -> (f64, f64) {
        let (b, g) = (self.beta, self.gamma);
        let a0 = self.alpha_at(0.0, fate);
        let (mut u, mut s) = (a0 / b, a0 / g);
        let mut cuts = vec![0.0, self.window.0, self.window.1, t];
        cuts.retain(|&c| (0.0..=t).contains(&c));
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        for w in cuts.windows(2) {
            let a = self.alpha_at(w[0], fate);
            let tau = (w[1] - w[0]) * T_TOTAL;
            let (eb, eg) = ((-b * tau).exp(), (-g * tau).exp());
            let u1 = a / b + (u - a / b) * eb;
            let s1 = a / g + (s - a / g) * eg + (a - b * u) / (g - b) * (eg - eb);
            u = u1;
            s = s1;
        }
        (u.max(0.0), s.max(0.0))
    }
}

/// A simulated dataset with its ground truth.
#[derive(Clone, Debug)]
pub struct SimData {
    /// The parameters used.
    pub params: SimParams,
    /// Genes.
    pub genes: Vec<Gene>,
    /// Latent time per cell.
    pub time: Vec<f64>,
    /// Fate index per cell.
    pub fate: Vec<usize>,
    /// State label per cell (`Progenitor`, `Intermediate_<f>`, `<f>`).
    pub state: Vec<String>,
    /// Size factor per cell.
    pub size_factor: Vec<f64>,
    /// Spliced counts (cells × genes).
    pub spliced: SparseArray,
    /// Unspliced counts.
    pub unspliced: SparseArray,
    /// True velocity `β u − γ s` (row-major, cells × genes), when small enough to keep.
    pub velocity: Option<Vec<f32>>,
    /// Labeling: (labeling time per cell, new counts, total counts).
    pub labeling: Option<(Vec<f64>, SparseArray, SparseArray)>,
}

fn make_genes(p: &SimParams) -> Vec<Gene> {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5eed_9e9e);
    let n_prog = 2 + 2 * p.n_fates; // root, housekeeping, early/late per fate
    (0..p.n_genes)
        .map(|g| {
            let prog = g % n_prog;
            let alpha = rng.random_range(2.0..30.0);
            let beta = rng.random_range(0.5..1.5);
            let mut gamma: f64 = rng.random_range(0.15..1.0);
            if (gamma - beta).abs() < 0.05 {
                gamma += 0.1;
            }
            let (program, fate, window) = match prog {
                0 => ("root".to_string(), None, (0.0, T_BRANCH)),
                1 => ("housekeeping".to_string(), None, (0.0, f64::INFINITY)),
                k => {
                    let f = (k - 2) / 2;
                    if (k - 2) % 2 == 0 {
                        (
                            format!("{}_early", FATE_NAMES[f]),
                            Some(f),
                            (T_BRANCH, f64::INFINITY),
                        )
                    } else {
                        (
                            format!("{}_late", FATE_NAMES[f]),
                            Some(f),
                            (T_COMMIT, f64::INFINITY),
                        )
                    }
                }
            };
            Gene {
                alpha,
                beta,
                gamma,
                program,
                fate,
                window,
            }
        })
        .collect()
}

/// Sparse (gene, count) entries of one cell.
type SparseRow = Vec<(u32, f32)>;

struct CellRow {
    time: f64,
    fate: usize,
    sf: f64,
    s: SparseRow,
    u: SparseRow,
    v: Option<Vec<f32>>,
    lab: Option<(f64, SparseRow, SparseRow)>,
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    Poisson::new(mean).map_or(0.0, |d| d.sample(rng))
}

/// Runs the simulation.
pub fn simulate(params: &SimParams) -> Result<SimData, SimError> {
    params.validate()?;
    let genes = make_genes(params);
    let keep_velocity = params.n_cells.saturating_mul(params.n_genes) <= MAX_DENSE_TRUTH;
    let size = LogNormal::new(0.0, 0.3).map_err(|_| SimError::OutOfRange {
        name: "depth",
        value: params.depth.to_string(),
        expected: "a positive number",
    })?;
    let rows: Vec<CellRow> = (0..params.n_cells)
        .into_par_iter()
        .with_min_len(256)
        .map(|c| {
            let mut rng = ChaCha8Rng::seed_from_u64(
                params.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c as u64),
            );
            let time: f64 = rng.random_range(0.0..1.0);
            let fate = rng.random_range(0..params.n_fates);
            let sf = params.depth * size.sample(&mut rng);
            let t_lab = if params.labeling {
                Some(params.labeling_times[rng.random_range(0..params.labeling_times.len())])
            } else {
                None
            };
            let mut s_row = Vec::new();
            let mut u_row = Vec::new();
            let mut v_row = keep_velocity.then(|| Vec::with_capacity(genes.len()));
            let mut new_row = Vec::new();
            let mut tot_row = Vec::new();
            for (g, gene) in genes.iter().enumerate() {
                let (u, s) = gene.state(time, fate);
                let cu = poisson(&mut rng, sf * u);
                let cs = poisson(&mut rng, sf * s);
                if cu > 0.0 {
                    u_row.push((g as u32, cu as f32));
                }
                if cs > 0.0 {
                    s_row.push((g as u32, cs as f32));
                }
                if let Some(v) = v_row.as_mut() {
                    v.push((gene.beta * u - gene.gamma * s) as f32);
                }
                if let Some(tl) = t_lab {
                    // Total RNA turns over at γ_T = βγ/(β+γ), so that its steady state α/γ_T
                    // equals u + s (dynamo's one-rate model of total RNA).
                    let total = u + s;
                    let gt = gene.gamma_total();
                    let new =
                        (gene.alpha_at(time, fate) / gt * (1.0 - (-gt * tl).exp())).min(total);
                    let cn = poisson(&mut rng, sf * new);
                    let co = poisson(&mut rng, sf * (total - new));
                    if cn > 0.0 {
                        new_row.push((g as u32, cn as f32));
                    }
                    if cn + co > 0.0 {
                        tot_row.push((g as u32, (cn + co) as f32));
                    }
                }
            }
            CellRow {
                time,
                fate,
                sf,
                s: s_row,
                u: u_row,
                v: v_row,
                lab: t_lab.map(|tl| (tl, new_row, tot_row)),
            }
        })
        .collect();

    let n_genes = params.n_genes;
    let assemble = |pick: &dyn Fn(&CellRow) -> &[(u32, f32)]| -> SparseArray {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let mut indices = Vec::new();
        let mut data = Vec::new();
        indptr.push(0);
        for r in &rows {
            for &(g, x) in pick(r) {
                indices.push(g);
                data.push(x);
            }
            indptr.push(indices.len());
        }
        SparseArray {
            format: SparseFormat::Csr,
            shape: [rows.len(), n_genes],
            indptr,
            indices,
            data: NumVec::F32(data),
        }
    };
    let spliced = assemble(&|r| &r.s);
    let unspliced = assemble(&|r| &r.u);
    let labeling = params.labeling.then(|| {
        let times = rows
            .iter()
            .map(|r| r.lab.as_ref().map_or(0.0, |l| l.0))
            .collect();
        let empty: &[(u32, f32)] = &[];
        let new = assemble(&|r| r.lab.as_ref().map_or(empty, |l| &l.1));
        let total = assemble(&|r| r.lab.as_ref().map_or(empty, |l| &l.2));
        (times, new, total)
    });
    let velocity = keep_velocity.then(|| {
        rows.iter()
            .flat_map(|r| r.v.iter().flatten().copied())
            .collect()
    });
    let state = rows
        .iter()
        .map(|r| {
            if r.time < T_BRANCH {
                "Progenitor".to_string()
            } else if r.time < T_COMMIT {
                format!("Intermediate_{}", FATE_NAMES[r.fate])
            } else {
                FATE_NAMES[r.fate].to_string()
            }
        })
        .collect();
    Ok(SimData {
        params: params.clone(),
        genes,
        time: rows.iter().map(|r| r.time).collect(),
        fate: rows.iter().map(|r| r.fate).collect(),
        state,
        size_factor: rows.iter().map(|r| r.sf).collect(),
        spliced,
        unspliced,
        velocity,
        labeling,
    })
}

impl SimData {
    /// Names of the fates used.
    pub fn fate_names(&self) -> Vec<String> {
        FATE_NAMES[..self.params.n_fates]
            .iter()
            .map(|s| (*s).to_string())
            .collect()
    }

    /// The AnnData elements of this simulation: raw counts in `X` (spliced), `layers`
    /// (`spliced`, `unspliced`, `true_velocity`, and `new`/`total` with labeling), `obs`
    /// (`true_time`, `true_fate`, `true_state`, `clusters`, `size_factor`,
    /// `labeling_time`), `var` (`true_alpha`, `true_beta`, `true_gamma`, `program`) and
    /// `uns["simulation"]`.
    pub fn to_elements(&self) -> Vec<(String, Element)> {
        let n = self.time.len();
        let fates = self.fate_names();
        let mut states: Vec<String> = vec!["Progenitor".into()];
        states.extend(fates.iter().map(|f| format!("Intermediate_{f}")));
        states.extend(fates.iter().cloned());
        let state_cat = Categorical::from_labels(
            &self.state.iter().cloned().map(Some).collect::<Vec<_>>(),
            Some(states),
        );
        let fate_cat = Categorical::from_labels(
            &self
                .fate
                .iter()
                .map(|&f| Some(fates[f].clone()))
                .collect::<Vec<_>>(),
            Some(fates.clone()),
        );
        let mut obs_cols = vec![
            (
                "true_time".to_string(),
                Element::from_f64(self.time.clone()),
            ),
            ("true_fate".to_string(), Element::Categorical(fate_cat)),
            (
                "true_state".to_string(),
                Element::Categorical(state_cat.clone()),
            ),
            ("clusters".to_string(), Element::Categorical(state_cat)),
            (
                "size_factor".to_string(),
                Element::from_f64(self.size_factor.clone()),
            ),
        ];
        if let Some((t, _, _)) = &self.labeling {
            obs_cols.push(("labeling_time".into(), Element::from_f64(t.clone())));
        }
        let obs = DataFrame {
            index_name: "_index".into(),
            index: (0..n).map(|i| format!("cell_{i}")).collect(),
            columns: obs_cols,
        };
        let programs: Vec<Option<String>> =
            self.genes.iter().map(|g| Some(g.program.clone())).collect();
        let var = DataFrame {
            index_name: "_index".into(),
            index: (0..self.genes.len()).map(|i| format!("gene_{i}")).collect(),
            columns: vec![
                (
                    "true_alpha".into(),
                    Element::from_f64(self.genes.iter().map(|g| g.alpha).collect()),
                ),
                (
                    "true_beta".into(),
                    Element::from_f64(self.genes.iter().map(|g| g.beta).collect()),
                ),
                (
                    "true_gamma".into(),
                    Element::from_f64(self.genes.iter().map(|g| g.gamma).collect()),
                ),
                (
                    "true_gamma_total".into(),
                    Element::from_f64(self.genes.iter().map(Gene::gamma_total).collect()),
                ),
                (
                    "program".into(),
                    Element::Categorical(Categorical::from_labels(&programs, None)),
                ),
            ],
        };
        let mut layers = vec![
            ("spliced".to_string(), Element::Sparse(self.spliced.clone())),
            (
                "unspliced".to_string(),
                Element::Sparse(self.unspliced.clone()),
            ),
        ];
        if let Some(v) = &self.velocity {
            layers.push((
                "true_velocity".into(),
                Element::Dense(DenseArray {
                    shape: vec![n, self.genes.len()],
                    data: NumVec::F32(v.clone()),
                }),
            ));
        }
        if let Some((_, new, total)) = &self.labeling {
            layers.push(("new".into(), Element::Sparse(new.clone())));
            layers.push(("total".into(), Element::Sparse(total.clone())));
        }
        let p = &self.params;
        let uns = vec![(
            "simulation".to_string(),
            Element::Dict(vec![
                (
                    "n_cells".into(),
                    Element::Scalar(NumVec::I64(vec![p.n_cells as i64])),
                ),
                (
                    "n_genes".into(),
                    Element::Scalar(NumVec::I64(vec![p.n_genes as i64])),
                ),
                (
                    "n_fates".into(),
                    Element::Scalar(NumVec::I64(vec![p.n_fates as i64])),
                ),
                ("seed".into(), Element::Scalar(NumVec::U64(vec![p.seed]))),
                (
                    "labeling".into(),
                    Element::Scalar(NumVec::Bool(vec![p.labeling])),
                ),
                ("depth".into(), Element::Scalar(NumVec::F64(vec![p.depth]))),
                ("fates".into(), Element::from_strings(fates)),
                ("root_state".into(), Element::Str("Progenitor".into())),
            ]),
        )];
        vec![
            ("X".into(), Element::Sparse(self.spliced.clone())),
            ("obs".into(), Element::DataFrame(obs)),
            ("var".into(), Element::DataFrame(var)),
            ("layers".into(), Element::Dict(layers)),
            ("uns".into(), Element::Dict(uns)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinetics_match_the_ode() {
        // Integrate the ODE numerically with small steps and compare with the exact solution.
        let g = Gene {
            alpha: 10.0,
            beta: 1.0,
            gamma: 0.3,
            program: "x".into(),
            fate: Some(0),
            window: (0.3, f64::INFINITY),
        };
        let (mut u, mut s) = (0.2, 0.2 / 0.3);
        let dt = 1e-5;
        let mut t = 0.0;
        while t < 0.8 {
            let a = g.alpha_at(t, 0);
            let du = a - g.beta * u;
            let ds = g.beta * u - g.gamma * s;
            u += du * dt * T_TOTAL;
            s += ds * dt * T_TOTAL;
            t += dt;
        }
        let (ue, se) = g.state(0.8, 0);
        assert!((u - ue).abs() / ue < 1e-3, "{u} vs {ue}");
        assert!((s - se).abs() / se < 1e-3, "{s} vs {se}");
        // Off the fate path the gene stays at its basal steady state.
        let (u1, s1) = g.state(0.8, 1);
        assert!((u1 - 0.2).abs() < 1e-12 && (s1 - 0.2 / 0.3).abs() < 1e-9);
    }

    #[test]
    fn seeded_and_thread_independent() {
        let p = SimParams {
            n_cells: 300,
            n_genes: 40,
            ..SimParams::default()
        };
        let a = simulate(&p).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| simulate(&p).unwrap());
        assert_eq!(a.spliced, b.spliced);
        assert_eq!(a.time, b.time);
        let c = simulate(&SimParams {
            seed: 1,
            ..p.clone()
        })
        .unwrap();
        assert_ne!(a.spliced, c.spliced);
        assert!(SimParams { n_fates: 9, ..p }.validate().is_err());
    }
}
