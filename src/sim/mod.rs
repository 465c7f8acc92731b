//! A seeded simulator of branching differentiation with splicing kinetics (and optional
//! metabolic labeling), with ground truth: the built-in default dataset of `cellfate`.
//!
//! # Model
//! Every cell has a latent time `t ∈ [0, 1]` and a fate `f`. Its path runs through
//! `Progenitor` (`t < t_branch`), then `Intermediate_<f>` (`t < t_commit`), then the terminal
//! state `<f>`. Each gene follows one *program*: `root` (switched on at `t = −0.2`, before
//! the observed trajectory, still induced through the progenitor phase, switched off at the
//! branch), `<f>_early` (on from the branch
//! on fate `f`), `<f>_late` (on from commitment on fate `f`), or `housekeeping` (always on).
//! Transcription `α(t)` is piecewise constant (`α_g` when on, `0.02 α_g` when off) and the
//! unspliced/spliced abundances follow the switching ODE `du/dτ = α − β u`,
//! `ds/dτ = β u − γ s` (`τ = T t`, `T = 15`), solved exactly segment by segment from the
//! steady state of each gene's rate before it first switches (on for housekeeping genes
//! only). The root genes' induction gives the progenitors a direction of travel: were every
//! gene at steady state before the branch, their velocities would be noise pointing back
//! into the cloud, and the kernel would make the progenitors a nearly closed set of cells
//! (expected absorption times of 1e8 steps, all progenitors given to one fate); switched on
//! early enough, the root genes' upper extremes are still near steady state, which the
//! steady-state estimate of γ needs. Counts are Poisson with a log-normal
//! size factor per cell. The true RNA velocity is `β u − γ s` (in expected-count units).
//!
//! With `labeling`, each cell also gets a labeling time `t_L` (from `labeling_times`, default
//! 1, 2 or 4 units of `τ`), total RNA `u + s` and new RNA with the total-RNA turnover
//! `γ_T = βγ/(β+γ)` (so that `α/γ_T` is the steady state of `u + s`), sampled as counts into
//! `layers["new"]`/`layers["total"]`;
//! `obs["labeling_time"]` holds `t_L` and `var["true_gamma_total"]` the true `γ_T`
//! (`var["true_gamma"]`, also `var["true_gamma_splicing"]`, is the splicing model's `γ`, `var["true_half_life_total"]` is
//! `ln 2/γ_T`), `layers["true_velocity_T"]` the true velocity of total RNA `α − γ s`, the
//! derivative of `u + s` (while `layers["true_velocity"]` is the spliced one, `β u − γ s`).
//! New RNA is the RNA made during the pulse under the one-rate model,
//! `∫ α(s) e^{−γ_T (t−s)} ds` over its last `t_L` (exact when a switch falls within the
//! pulse), capped at the total. `var["true_reaches_steady_state"]` marks the genes whose
//! `u + s` comes within 5 % of `α/γ_T`: steady-state estimates (one-shot labeling) assume it. The experiment
//! ([`SimParams::experiment`], `uns["simulation"]["experiment_type"]`) is a pulse of one
//! duration (`one-shot`), pulses of several (`kin`, the default), or a chase after labeling
//! to saturation (`deg`: new RNA `total · e^{−γ_T t_L}`).
//!
//! With `circuit` (or any `knockout`), the fate is not drawn independently of expression: a
//! regulatory circuit between the fates' branch programs decides it at the branch
//! ([`circuit_fate_probabilities`]), and `knockout` switches genes' transcription off from
//! `knockout_time` on; the same seed with and without a knockout gives the same cells (times,
//! size factors, draws), so the difference of their fates is the knockout's true effect:
//! the ground truth of `cellfate perturb` (`var["driver"]`, `var["knockout"]`,
//! `uns["simulation"]["fate_probabilities"]`).
//!
//! Randomness: one ChaCha8 stream per cell seeded from `(seed, cell)`, so results do not depend
//! on the number of threads nor on the block size.
//!
//! [`simulate`] returns the whole dataset in memory ([`SimData::to_elements`] turns it into
//! AnnData elements); [`simulate_to_file`] writes the same `.h5ad` file block by block in
//! bounded memory (millions of cells).

#[cfg(feature = "h5ad")]
pub mod switch;
#[cfg(feature = "h5ad")]
pub use switch::{simulate_switch, SwitchData, SwitchGene, SwitchParams};

use std::ops::Range;
#[cfg(feature = "h5ad")]
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use cellfate_kernels::labeling_kinetics::ExperimentType;
use thiserror::Error;

use crate::io::{
    Categorical, Categories, DataFrame, DenseArray, Element, NumVec, SparseArray, SparseFormat,
};
#[cfg(feature = "h5ad")]
use crate::io::{H5adError, H5adStreamWriter};

/// Kinetic time span of the whole trajectory (`τ = T · t`).
const T_TOTAL: f64 = 15.0;
/// Latent time (before the trajectory starts) at which the root genes were switched on.
const T_ROOT_ON: f64 = -0.2;
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
    /// Number of terminal fates (1 ..= 6; 1 is a linear trajectory).
    pub n_fates: usize,
    /// Seed of the random streams.
    pub seed: u64,
    /// Also simulate metabolic labeling (`layers["new"]`, `layers["total"]`).
    pub labeling: bool,
    /// Mean library-size factor (scales all counts).
    pub depth: f64,
    /// Labeling durations (in units of τ; chase durations for a degradation experiment)
    /// assigned uniformly at random to the cells. A one-shot experiment takes one.
    pub labeling_times: Vec<f64>,
    /// The labeling experiment: a pulse of one duration for all cells (`one-shot`), pulses
    /// of several durations (`kin`), or a chase after labeling to saturation (`deg`: the
    /// new RNA left after the chase is `total · e^{−γ_T t}`).
    pub experiment: ExperimentType,
    /// Let a regulatory circuit decide the fates: a toggle switch between the fates' driver
    /// genes (`var["driver"]`: the `<fate>_early` genes, the branch programs) at the branch,
    /// instead of a fate drawn independently of expression (see
    /// [`circuit_fate_probabilities`]). Without knockouts every fate is equally likely either
    /// way.
    pub circuit: bool,
    /// Genes (`gene_<j>`) whose transcription is switched off (α = 0, basal included) from
    /// [`Self::knockout_time`] on; implies the circuit. The unperturbed truth is the same
    /// parameters with `circuit = true` and no knockout: every cell keeps its time, size
    /// factor and random draws, so the two files differ only through the knockout.
    pub knockout: Vec<String>,
    /// Latent time from which the knocked-out genes are off (0: the whole observed
    /// trajectory; the circuit only sees knockouts that start before the branch at 0.3).
    pub knockout_time: f64,
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
            experiment: ExperimentType::Kinetics,
            circuit: false,
            knockout: Vec::new(),
            knockout_time: 0.0,
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
    /// A knocked-out gene that the simulation does not have.
    #[error(
        "simulation parameter `knockout`: no gene {name:?} (genes are gene_0 ..= gene_{last})"
    )]
    UnknownGene {
        /// The name given.
        name: String,
        /// Index of the last gene.
        last: usize,
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
        if !(1..=6).contains(&self.n_fates) {
            return bad("n_fates", self.n_fates.to_string(), "1 ..= 6");
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
        if self.labeling {
            let distinct =
                cellfate_kernels::labeling_kinetics::distinct_times(&self.labeling_times);
            match self.experiment {
                ExperimentType::OneShot if distinct.len() != 1 => {
                    return bad(
                        "labeling_times",
                        format!("{:?}", self.labeling_times),
                        "one duration for a one-shot experiment",
                    )
                }
                ExperimentType::Kinetics | ExperimentType::Degradation if distinct.len() < 2 => {
                    return bad(
                        "labeling_times",
                        format!("{:?}", self.labeling_times),
                        "several durations for a kinetics or degradation experiment",
                    )
                }
                _ => {}
            }
        }
        if !(self.knockout_time.is_finite() && (0.0..=1.0).contains(&self.knockout_time)) {
            return bad(
                "knockout_time",
                self.knockout_time.to_string(),
                "a latent time in [0, 1]",
            );
        }
        self.knockout_genes().map(|_| ())
    }

    /// Indices of the knocked-out genes.
    pub fn knockout_genes(&self) -> Result<Vec<usize>, SimError> {
        self.knockout
            .iter()
            .map(|name| {
                name.strip_prefix("gene_")
                    .and_then(|j| j.parse::<usize>().ok())
                    .filter(|&j| j < self.n_genes && name == &format!("gene_{j}"))
                    .ok_or_else(|| SimError::UnknownGene {
                        name: name.clone(),
                        last: self.n_genes.saturating_sub(1),
                    })
            })
            .collect()
    }

    /// Whether the fates come from the regulatory circuit.
    pub fn uses_circuit(&self) -> bool {
        self.circuit || !self.knockout.is_empty()
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
    /// Window of latent time `[on, off)` during which the gene is transcribed on its fate
    /// (`on = −∞`: transcribed before the trajectory starts).
    pub window: (f64, f64),
    /// Latent time from which the gene is knocked out (no transcription at all; `+∞`: never).
    pub off_from: f64,
    /// Whether the gene is one of its fate's drivers in the regulatory circuit.
    pub driver: bool,
}

impl Gene {
    /// Turnover rate of total RNA (unspliced + spliced) used by the labeling model:
    /// `γ_T = βγ / (β + γ)`.
    pub fn gamma_total(&self) -> f64 {
        self.beta * self.gamma / (self.beta + self.gamma)
    }

    /// Whether the gene is transcribed at latent time `t` on fate `fate`.
    fn is_on(&self, t: f64, fate: usize) -> bool {
        // (Also evaluated at negative t, before the trajectory starts, for the root genes.)
        let on_path = self.fate.is_none_or(|f| f == fate);
        on_path && t >= self.window.0 && t < self.window.1
    }

    fn alpha_at(&self, t: f64, fate: usize) -> f64 {
        if t >= self.off_from {
            0.0
        } else {
            self.alpha_unperturbed(t, fate)
        }
    }

    /// Transcription rate without the knockout.
    fn alpha_unperturbed(&self, t: f64, fate: usize) -> f64 {
        if self.is_on(t, fate) {
            self.alpha
        } else {
            0.02 * self.alpha
        }
    }

    /// Whether the gene's total RNA (`u + s`) comes within 5 % of its induced steady state
    /// `α/γ_T` somewhere on the trajectory (`t` in `[0, 1)`, on its own fate): the genes for
    /// which steady-state estimates (one-shot labeling, the steady-state velocity model) can
    /// be right (`var["true_reaches_steady_state"]`).
    pub fn reaches_steady_state(&self) -> bool {
        let fate = self.fate.unwrap_or(0);
        let ss = self.alpha / self.gamma_total();
        (0..200).any(|k| {
            let (u, s) = self.state(k as f64 / 200.0, fate);
            u + s >= 0.95 * ss
        })
    }

    /// New (labeled) RNA at latent time `t` after a pulse of `t_lab` (in units of τ) under the
    /// one-rate model of total RNA (synthesis `α(t)`, turnover `γ_T`):
    /// `∫_{t−t_lab}^{t} α(s) e^{−γ_T (t−s)} ds`, exact for the piecewise-constant `α` (a
    /// switch within the pulse included).
    pub fn new_rna(&self, t: f64, fate: usize, t_lab: f64) -> f64 {
        let gt = self.gamma_total();
        let from = t - t_lab / T_TOTAL;
        let mut cuts = vec![from, self.window.0, self.window.1, self.off_from, t];
        cuts.retain(|&c| (from..=t).contains(&c));
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        cuts.windows(2)
            .map(|w| {
                let a = self.alpha_at(w[0], fate);
                let (d1, d0) = ((t - w[1]) * T_TOTAL, (t - w[0]) * T_TOTAL);
                a / gt * ((-gt * d1).exp() - (-gt * d0).exp())
            })
            .sum()
    }

    /// Exact (u, s) at latent time `t ≥ 0` on fate `fate`. A gene switched on before the
    /// trajectory starts (`window.0 < 0`) starts at `window.0` from its basal steady state,
    /// one on forever (`window.0 = −∞`) at its induced steady state, any other gene at its
    /// basal steady state at `t = 0`.
    pub fn state(&self, t: f64, fate: usize) -> (f64, f64) {
        let (b, g) = (self.beta, self.gamma);
        let start = if self.window.0.is_finite() {
            self.window.0.min(0.0)
        } else {
            0.0
        };
        // The starting state is the one before any knockout: a gene knocked out at `off_from`
        // decays from where it was.
        let a0 = if self.window.0 == f64::NEG_INFINITY {
            self.alpha_unperturbed(0.0, fate)
        } else {
            0.02 * self.alpha
        };
        let (mut u, mut s) = (a0 / b, a0 / g);
        let mut cuts = vec![start, self.window.0, self.window.1, self.off_from, t];
        cuts.retain(|&c| (start..=t).contains(&c));
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
    /// True velocity of total RNA `α − γ s` (cells × genes), with labeling, when small
    /// enough to keep.
    pub velocity_total: Option<Vec<f32>>,
    /// Labeling: (labeling time per cell, new counts, total counts).
    pub labeling: Option<(Vec<f64>, SparseArray, SparseArray)>,
}

fn make_genes(p: &SimParams) -> Vec<Gene> {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5eed_9e9e);
    let n_prog = 2 + 2 * p.n_fates; // root, housekeeping, early/late per fate
    let mut genes = (0..p.n_genes)
        .map(|g| {
            let prog = g % n_prog;
            let alpha = rng.random_range(2.0..30.0);
            let beta = rng.random_range(0.5..1.5);
            let mut gamma: f64 = rng.random_range(0.15..1.0);
            if (gamma - beta).abs() < 0.05 {
                gamma += 0.1;
            }
            let (program, fate, window) = match prog {
                0 => ("root".to_string(), None, (T_ROOT_ON, T_BRANCH)),
                1 => (
                    "housekeeping".to_string(),
                    None,
                    (f64::NEG_INFINITY, f64::INFINITY),
                ),
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
                // The early genes of each fate (its branch program) drive it.
                driver: p.uses_circuit() && fate.is_some() && prog >= 2 && (prog - 2) % 2 == 0,
                program,
                fate,
                window,
                off_from: f64::INFINITY,
            }
        })
        .collect::<Vec<_>>();
    if let Ok(knocked) = p.knockout_genes() {
        for j in knocked {
            genes[j].off_from = p.knockout_time;
        }
    }
    genes
}

/// The circuit's fate probabilities: at the branch, the drivers of each fate (its branch
/// program) that are still transcribed (not knocked out before the branch) repress the other
/// fates' drivers (a toggle switch, generalised to `n_fates` sides); fate `f` wins with
/// probability ∝ `(D_f / D_f⁰)²`, where `D_f` is the summed transcription rate α of its
/// active drivers and `D_f⁰` that of all of them (the square: cooperative repression). So a
/// knockout takes probability from its own fate in proportion to its share of the program's
/// transcription, and a gene outside the programs (root, housekeeping, late genes) changes
/// no fate. Without knockouts every fate has probability `1 / n_fates`.
pub fn circuit_fate_probabilities(genes: &[Gene], n_fates: usize) -> Vec<f64> {
    let mut drive = vec![0.0; n_fates];
    let mut full = vec![0.0; n_fates];
    for g in genes.iter().filter(|g| g.driver) {
        if let Some(f) = g.fate.filter(|&f| f < n_fates) {
            full[f] += g.alpha;
            if g.off_from > T_BRANCH {
                drive[f] += g.alpha;
            }
        }
    }
    let w: Vec<f64> = drive
        .iter()
        .zip(&full)
        .map(|(&d, &f)| if f > 0.0 { (d / f).powi(2) } else { 1.0 })
        .collect();
    let total: f64 = w.iter().sum();
    if total > 0.0 {
        w.iter().map(|x| x / total).collect()
    } else {
        vec![1.0 / n_fates as f64; n_fates]
    }
}

/// Sparse (gene, count) entries of one cell.
type SparseRow = Vec<(u32, f32)>;

/// One simulated cell: its latent variables and its counts.
struct CellRow {
    time: f64,
    fate: usize,
    sf: f64,
    s: SparseRow,
    u: SparseRow,
    v: Option<Vec<f32>>,
    /// True velocity of total RNA (`α − γ s`), with labeling.
    vt: Option<Vec<f32>>,
    lab: Option<(f64, SparseRow, SparseRow)>,
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    Poisson::new(mean).map_or(0.0, |d| d.sample(rng))
}

/// Picks one count layer of a cell.
type LayerPick = fn(&CellRow) -> &[(u32, f32)];

/// The count layers (`layers/<name>`) and how to read them from a cell; the last two only
/// with labeling.
const COUNT_LAYERS: [(&str, LayerPick); 4] = [
    ("spliced", |r| &r.s),
    ("unspliced", |r| &r.u),
    ("new", |r| r.lab.as_ref().map_or(&[], |l| &l.1)),
    ("total", |r| r.lab.as_ref().map_or(&[], |l| &l.2)),
];

/// The count layers a simulation with these parameters has.
fn count_layers(p: &SimParams) -> &'static [(&'static str, LayerPick)] {
    if p.labeling {
        &COUNT_LAYERS
    } else {
        &COUNT_LAYERS[..2]
    }
}

/// Cells are generated (in parallel) and consumed block by block; a block holds about this
/// many cell × gene entries, within [`MIN_BLOCK_CELLS`] ..= [`MAX_BLOCK_CELLS`] cells.
const BLOCK_ENTRIES: usize = 1 << 22;
/// Fewest cells in a block.
const MIN_BLOCK_CELLS: usize = 256;
/// Most cells in a block.
const MAX_BLOCK_CELLS: usize = 16_384;

/// Cells per block for `n_genes` genes (the results do not depend on it).
fn block_cells(n_genes: usize) -> usize {
    (BLOCK_ENTRIES / n_genes.max(1)).clamp(MIN_BLOCK_CELLS, MAX_BLOCK_CELLS)
}

/// Everything needed to simulate any cell: cell `c` depends only on the parameters and `c`.
struct Generator<'a> {
    params: &'a SimParams,
    genes: Vec<Gene>,
    size: LogNormal<f64>,
    keep_velocity: bool,
    /// Log fate probabilities of the regulatory circuit, when it decides the fates.
    fate_logp: Option<Vec<f64>>,
}

impl<'a> Generator<'a> {
    fn new(params: &'a SimParams) -> Result<Self, SimError> {
        params.validate()?;
        let size = LogNormal::new(0.0, 0.3).map_err(|_| SimError::OutOfRange {
            name: "depth",
            value: params.depth.to_string(),
            expected: "a positive number",
        })?;
        let genes = make_genes(params);
        let fate_logp = params.uses_circuit().then(|| {
            circuit_fate_probabilities(&genes, params.n_fates)
                .iter()
                .map(|p| p.ln())
                .collect()
        });
        Ok(Self {
            params,
            genes,
            fate_logp,
            size,
            keep_velocity: params.n_cells.saturating_mul(params.n_genes) <= MAX_DENSE_TRUTH,
        })
    }

    /// Cell `c`, from its own random stream seeded by `(seed, c)`.
    fn cell(&self, c: usize) -> CellRow {
        let params = self.params;
        let genes = &self.genes;
        let mut rng =
            ChaCha8Rng::seed_from_u64(params.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (c as u64));
        let time: f64 = rng.random_range(0.0..1.0);
        let fate = match &self.fate_logp {
            // Gumbel-max: the fate with the largest log p + Gumbel noise (one draw per fate
            // and cell, the same with and without knockouts). A knockout lowers only its own
            // fate's score, so exactly the cells it takes from that fate change: the coupling
            // that makes the difference of two simulations the knockout's effect.
            Some(logp) => {
                let mut best = (0, f64::NEG_INFINITY);
                for (f, lp) in logp.iter().enumerate() {
                    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                    let score = lp - (-u.ln()).ln();
                    if score > best.1 {
                        best = (f, score);
                    }
                }
                best.0
            }
            None => rng.random_range(0..params.n_fates),
        };
        let sf = params.depth * self.size.sample(&mut rng);
        let t_lab = if params.labeling {
            Some(params.labeling_times[rng.random_range(0..params.labeling_times.len())])
        } else {
            None
        };
        let mut s_row = Vec::new();
        let mut u_row = Vec::new();
        let mut v_row = self.keep_velocity.then(|| Vec::with_capacity(genes.len()));
        let mut vt_row =
            (self.keep_velocity && t_lab.is_some()).then(|| Vec::with_capacity(genes.len()));
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
                // Total RNA is u + s; new RNA is made at α(t) and turns over at
                // γ_T = βγ/(β+γ) (dynamo's one-rate model of total RNA, whose steady state
                // α/γ_T is that of u + s), capped at the total.
                let total = u + s;
                let gt = gene.gamma_total();
                let alpha = gene.alpha_at(time, fate);
                let new = match params.experiment {
                    ExperimentType::Degradation => total * (-gt * tl).exp(),
                    _ => gene.new_rna(time, fate, tl).min(total),
                };
                if let Some(vt) = vt_row.as_mut() {
                    // d(u + s)/dt = α − γ s.
                    vt.push((alpha - gene.gamma * s) as f32);
                }
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
            vt: vt_row,
            lab: t_lab.map(|tl| (tl, new_row, tot_row)),
        }
    }

    /// The cells of `cells`, simulated in parallel.
    fn block(&self, cells: Range<usize>) -> Vec<CellRow> {
        cells
            .into_par_iter()
            .with_min_len(256)
            .map(|c| self.cell(c))
            .collect()
    }

    /// Simulates all cells in blocks of `block` cells and hands the blocks to `sink` in cell
    /// order. The next block is simulated (in the current rayon pool) while `sink` consumes
    /// the current one on the calling thread, so `sink` may hold non-thread-safe state such
    /// as HDF5 writers.
    fn for_each_block<E>(
        &self,
        block: usize,
        mut sink: impl FnMut(&[CellRow]) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = self.params.n_cells;
        let block = block.max(1);
        let mut starts = (0..n).step_by(block);
        let range = |start: usize| start..(start + block).min(n);
        let Some(first) = starts.next() else {
            return Ok(());
        };
        let mut current = self.block(range(first));
        for start in starts {
            let cells = range(start);
            let mut next = Vec::new();
            rayon::in_place_scope(|scope| {
                scope.spawn(|_| next = self.block(cells));
                sink(&current)
            })?;
            current = next;
        }
        sink(&current)
    }
}

/// A CSR matrix (or a block of its rows) being assembled from cells.
#[derive(Debug)]
struct CsrRows {
    indptr: Vec<usize>,
    indices: Vec<u32>,
    data: Vec<f32>,
}

impl CsrRows {
    fn new() -> Self {
        Self {
            indptr: vec![0],
            indices: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Empties it (keeping the allocations).
    #[cfg(feature = "h5ad")]
    fn clear(&mut self) {
        self.indptr.clear();
        self.indptr.push(0);
        self.indices.clear();
        self.data.clear();
    }

    /// Appends one layer of `rows`.
    fn extend(&mut self, rows: &[CellRow], pick: LayerPick) {
        for r in rows {
            for &(g, x) in pick(r) {
                self.indices.push(g);
                self.data.push(x);
            }
            self.indptr.push(self.indices.len());
        }
    }

    fn into_sparse(self, n_genes: usize) -> SparseArray {
        SparseArray {
            format: SparseFormat::Csr,
            shape: [self.indptr.len().saturating_sub(1), n_genes],
            indptr: self.indptr,
            indices: self.indices,
            data: NumVec::F32(self.data),
        }
    }
}

/// The per-cell ground truth kept in memory (a few numbers per cell).
#[derive(Debug, Default)]
struct CellObs {
    time: Vec<f64>,
    fate: Vec<usize>,
    size_factor: Vec<f64>,
    labeling_time: Vec<f64>,
}

impl CellObs {
    fn extend(&mut self, rows: &[CellRow]) {
        for r in rows {
            self.time.push(r.time);
            self.fate.push(r.fate);
            self.size_factor.push(r.sf);
            if let Some((tl, _, _)) = &r.lab {
                self.labeling_time.push(*tl);
            }
        }
    }
}

/// Runs the simulation in memory (see [`simulate_to_file`] to write a large simulation
/// without holding its counts).
pub fn simulate(params: &SimParams) -> Result<SimData, SimError> {
    let gen = Generator::new(params)?;
    let layers = count_layers(params);
    let mut obs = CellObs::default();
    // spliced, unspliced, new, total (the last two stay empty without labeling).
    let mut counts: [CsrRows; 4] = std::array::from_fn(|_| CsrRows::new());
    let mut velocity = gen.keep_velocity.then(Vec::new);
    let mut velocity_total = (gen.keep_velocity && params.labeling).then(Vec::new);
    gen.for_each_block(block_cells(params.n_genes), |rows| {
        obs.extend(rows);
        for (acc, (_, pick)) in counts.iter_mut().zip(layers) {
            acc.extend(rows, *pick);
        }
        if let Some(v) = velocity.as_mut() {
            v.extend(rows.iter().flat_map(|r| r.v.iter().flatten().copied()));
        }
        if let Some(v) = velocity_total.as_mut() {
            v.extend(rows.iter().flat_map(|r| r.vt.iter().flatten().copied()));
        }
        Ok::<(), SimError>(())
    })?;
    let n_genes = params.n_genes;
    let [spliced, unspliced, new, total] = counts.map(|c| c.into_sparse(n_genes));
    let labeling = params.labeling.then_some((obs.labeling_time, new, total));
    let names = state_names(params.n_fates);
    let state = obs
        .time
        .iter()
        .zip(&obs.fate)
        .map(|(&t, &f)| names[state_index(t, f, params.n_fates)].clone())
        .collect();
    Ok(SimData {
        params: params.clone(),
        genes: gen.genes,
        time: obs.time,
        fate: obs.fate,
        state,
        size_factor: obs.size_factor,
        spliced,
        unspliced,
        velocity,
        velocity_total,
        labeling,
    })
}

/// An error of [`simulate_to_file`].
#[cfg(feature = "h5ad")]
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SimFileError {
    /// Invalid parameters.
    #[error(transparent)]
    Params(#[from] SimError),
    /// Writing the output failed.
    #[error(transparent)]
    Write(#[from] H5adError),
}

/// What [`simulate_to_file`] wrote; the counts themselves stay on disk.
#[cfg(feature = "h5ad")]
#[derive(Clone, Debug)]
pub struct SimSummary {
    /// The parameters used.
    pub params: SimParams,
    /// Genes (their true kinetics are also in `var`).
    pub genes: Vec<Gene>,
    /// Stored (non-zero) values per count layer, in the order `spliced`, `unspliced`
    /// (then `new`, `total` with labeling).
    pub nnz: Vec<(String, usize)>,
    /// Whether the dense `layers/true_velocity` was written (only for
    /// `n_cells × n_genes ≤ 200,000,000`).
    pub true_velocity: bool,
}

#[cfg(feature = "h5ad")]
impl SimSummary {
    /// Names of the fates used.
    pub fn fate_names(&self) -> Vec<String> {
        fate_names(self.params.n_fates)
    }
}

/// Runs the simulation straight into an `.h5ad` file, with the same content as
/// `write_new(path, &simulate(params)?.to_elements())` but in bounded memory: cells are
/// simulated in blocks (in parallel within a block) and each block's counts are appended to
/// the CSR layers on disk, so only a few numbers per cell are held (for the `obs` columns).
/// `X` is an HDF5 hard link to `layers/spliced` (one copy on disk; anndata and
/// [`H5adReader`](crate::io::H5adReader) read it as an ordinary `X`). As with every output of
/// this crate, the file is written to a temporary file beside `path` and renamed at the end.
#[cfg(feature = "h5ad")]
pub fn simulate_to_file(params: &SimParams, path: &Path) -> Result<SimSummary, SimFileError> {
    simulate_to_file_in_blocks(params, path, block_cells(params.n_genes))
}

/// [`simulate_to_file`] with `block` cells per block (the file does not depend on it).
#[cfg(feature = "h5ad")]
fn simulate_to_file_in_blocks(
    params: &SimParams,
    path: &Path,
    block: usize,
) -> Result<SimSummary, SimFileError> {
    let gen = Generator::new(params)?;
    let (n_cells, n_genes) = (params.n_cells, params.n_genes);
    let w = H5adStreamWriter::create(path)?;
    let layers = count_layers(params);
    let mut appenders = layers
        .iter()
        .map(|(name, _)| w.csr_appender::<f32>(&format!("layers/{name}"), n_genes))
        .collect::<Result<Vec<_>, _>>()?;
    let mut velocity = if gen.keep_velocity {
        Some(w.dense_row_appender::<f32>("layers/true_velocity", n_cells, n_genes)?)
    } else {
        None
    };
    let mut velocity_total = if gen.keep_velocity && params.labeling {
        Some(w.dense_row_appender::<f32>("layers/true_velocity_T", n_cells, n_genes)?)
    } else {
        None
    };
    let mut obs = CellObs::default();
    let mut buf = CsrRows::new();
    let mut vbuf: Vec<f32> = Vec::new();
    gen.for_each_block(block, |rows| {
        obs.extend(rows);
        for (app, (_, pick)) in appenders.iter_mut().zip(layers) {
            buf.clear();
            buf.extend(rows, *pick);
            app.append(&buf.indptr, &buf.indices, &buf.data)?;
        }
        if let Some(v) = velocity.as_mut() {
            vbuf.clear();
            vbuf.extend(rows.iter().flat_map(|r| r.v.iter().flatten().copied()));
            v.append(&vbuf)?;
        }
        if let Some(v) = velocity_total.as_mut() {
            vbuf.clear();
            vbuf.extend(rows.iter().flat_map(|r| r.vt.iter().flatten().copied()));
            v.append(&vbuf)?;
        }
        Ok::<(), H5adError>(())
    })?;
    drop((buf, vbuf));
    let mut nnz = Vec::with_capacity(layers.len());
    for (app, (name, _)) in appenders.into_iter().zip(layers) {
        nnz.push(((*name).to_string(), app.finish()?));
    }
    let true_velocity = velocity.is_some();
    if let Some(v) = velocity {
        v.finish()?;
    }
    if let Some(v) = velocity_total {
        v.finish()?;
    }
    w.hard_link("layers/spliced", "X")?;
    let labeling_time = params.labeling.then_some(obs.labeling_time.as_slice());
    let state = Categorical {
        codes: obs
            .time
            .iter()
            .zip(&obs.fate)
            .map(|(&t, &f)| state_index(t, f, params.n_fates) as i32)
            .collect(),
        categories: Categories::Str(state_names(params.n_fates)),
        ordered: false,
    };
    let obs_df = obs_frame(
        params.n_fates,
        &obs.time,
        &obs.fate,
        &obs.size_factor,
        labeling_time,
        state,
    );
    drop(obs);
    w.write_element("obs", &Element::DataFrame(obs_df))?;
    w.write_element("var", &Element::DataFrame(var_frame(&gen.genes)))?;
    w.write_element("uns", &Element::Dict(uns_members(params)))?;
    w.finish()?;
    Ok(SimSummary {
        params: params.clone(),
        genes: gen.genes,
        nnz,
        true_velocity,
    })
}

/// Names of the first `n_fates` fates.
fn fate_names(n_fates: usize) -> Vec<String> {
    FATE_NAMES[..n_fates]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

/// The state categories: `Progenitor`, `Intermediate_<f>` per fate, then the fates.
fn state_names(n_fates: usize) -> Vec<String> {
    let fates = fate_names(n_fates);
    let mut states: Vec<String> = vec!["Progenitor".into()];
    states.extend(fates.iter().map(|f| format!("Intermediate_{f}")));
    states.extend(fates);
    states
}

/// Index in [`state_names`] of a cell at latent time `t` on fate `fate`.
fn state_index(t: f64, fate: usize, n_fates: usize) -> usize {
    if t < T_BRANCH {
        0
    } else if t < T_COMMIT {
        1 + fate
    } else {
        1 + n_fates + fate
    }
}

/// `obs`: `true_time`, `true_fate`, `true_state`, `clusters` (= `true_state`),
/// `size_factor` and, with labeling, `labeling_time`; cells named `cell_<i>`.
fn obs_frame(
    n_fates: usize,
    time: &[f64],
    fate: &[usize],
    size_factor: &[f64],
    labeling_time: Option<&[f64]>,
    state: Categorical,
) -> DataFrame {
    let fates = fate_names(n_fates);
    let fate_cat = Categorical {
        codes: fate.iter().map(|&f| f as i32).collect(),
        categories: Categories::Str(fates),
        ordered: false,
    };
    let mut columns = vec![
        ("true_time".to_string(), Element::from_f64(time.to_vec())),
        ("true_fate".to_string(), Element::Categorical(fate_cat)),
        (
            "true_state".to_string(),
            Element::Categorical(state.clone()),
        ),
        ("clusters".to_string(), Element::Categorical(state)),
        (
            "size_factor".to_string(),
            Element::from_f64(size_factor.to_vec()),
        ),
    ];
    if let Some(t) = labeling_time {
        columns.push(("labeling_time".into(), Element::from_f64(t.to_vec())));
    }
    DataFrame {
        index_name: "_index".into(),
        index: (0..time.len()).map(|i| format!("cell_{i}")).collect(),
        columns,
    }
}

/// `var`: the true kinetics (`true_alpha`, `true_beta`, `true_gamma`, `true_gamma_total`)
/// and `program`; genes named `gene_<j>`.
fn var_frame(genes: &[Gene]) -> DataFrame {
    let programs: Vec<Option<String>> = genes.iter().map(|g| Some(g.program.clone())).collect();
    let col = |f: fn(&Gene) -> f64| Element::from_f64(genes.iter().map(f).collect());
    let mut frame = DataFrame {
        index_name: "_index".into(),
        index: (0..genes.len()).map(|i| format!("gene_{i}")).collect(),
        columns: vec![
            ("true_alpha".into(), col(|g| g.alpha)),
            ("true_beta".into(), col(|g| g.beta)),
            ("true_gamma".into(), col(|g| g.gamma)),
            ("true_gamma_splicing".into(), col(|g| g.gamma)),
            ("true_gamma_total".into(), col(Gene::gamma_total)),
            (
                "true_half_life_total".into(),
                col(|g| std::f64::consts::LN_2 / g.gamma_total()),
            ),
            (
                "true_reaches_steady_state".into(),
                Element::from_bools(genes.iter().map(Gene::reaches_steady_state).collect()),
            ),
            (
                "program".into(),
                Element::Categorical(Categorical::from_labels(&programs, None)),
            ),
        ],
    };
    if genes.iter().any(|g| g.driver) {
        frame.columns.push((
            "driver".into(),
            Element::from_bools(genes.iter().map(|g| g.driver).collect()),
        ));
    }
    if genes.iter().any(|g| g.off_from.is_finite()) {
        frame.columns.push((
            "knockout".into(),
            Element::from_bools(genes.iter().map(|g| g.off_from.is_finite()).collect()),
        ));
    }
    frame
}

/// `uns`: the parameters under `simulation`, with the fate names and the root state.
fn uns_members(p: &SimParams) -> Vec<(String, Element)> {
    let mut circuit = Vec::new();
    if p.uses_circuit() {
        circuit = vec![
            ("circuit".into(), Element::Scalar(NumVec::Bool(vec![true]))),
            (
                "knockout_time".into(),
                Element::Scalar(NumVec::F64(vec![p.knockout_time])),
            ),
            (
                "fate_probabilities".into(),
                Element::from_f64(circuit_fate_probabilities(&make_genes(p), p.n_fates)),
            ),
        ];
        if !p.knockout.is_empty() {
            circuit.push(("knockout".into(), Element::from_strings(p.knockout.clone())));
        }
    }
    vec![(
        "simulation".to_string(),
        Element::Dict(
            vec![
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
                (
                    "experiment_type".into(),
                    Element::Str(if p.labeling {
                        p.experiment.dynamo_name().into()
                    } else {
                        "conventional".into()
                    }),
                ),
                ("fates".into(), Element::from_strings(fate_names(p.n_fates))),
                ("root_state".into(), Element::Str("Progenitor".into())),
            ]
            .into_iter()
            .chain(circuit)
            .collect(),
        ),
    )]
}

impl SimData {
    /// Names of the fates used.
    pub fn fate_names(&self) -> Vec<String> {
        fate_names(self.params.n_fates)
    }

    /// The AnnData elements of this simulation: raw counts in `X` (spliced), `layers`
    /// (`spliced`, `unspliced`, `true_velocity`, and `new`/`total` with labeling), `obs`
    /// (`true_time`, `true_fate`, `true_state`, `clusters`, `size_factor`,
    /// `labeling_time`), `var` (`true_alpha`, `true_beta`, `true_gamma`, `program`) and
    /// `uns["simulation"]`.
    pub fn to_elements(&self) -> Vec<(String, Element)> {
        let n = self.time.len();
        let state = Categorical::from_labels(
            &self.state.iter().cloned().map(Some).collect::<Vec<_>>(),
            Some(state_names(self.params.n_fates)),
        );
        let obs = obs_frame(
            self.params.n_fates,
            &self.time,
            &self.fate,
            &self.size_factor,
            self.labeling.as_ref().map(|(t, _, _)| t.as_slice()),
            state,
        );
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
        if let Some(v) = &self.velocity_total {
            layers.push((
                "true_velocity_T".into(),
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
        vec![
            ("X".into(), Element::Sparse(self.spliced.clone())),
            ("obs".into(), Element::DataFrame(obs)),
            ("var".into(), Element::DataFrame(var_frame(&self.genes))),
            ("layers".into(), Element::Dict(layers)),
            ("uns".into(), Element::Dict(uns_members(&self.params))),
        ]
    }
}

#[cfg(test)]
#[cfg(feature = "h5ad")]
mod tests {
    use super::*;

    #[test]
    fn root_genes_give_progenitors_a_direction() {
        let genes = make_genes(&SimParams::default());
        let root = genes.iter().find(|g| g.program == "root").unwrap();
        let hk = genes.iter().find(|g| g.program == "housekeeping").unwrap();
        // Root: switched on at t = −0.2, so at t = 0 between its basal and induced steady
        // states, still induced (positive velocity, rising s) through the progenitor phase,
        // repressed after the branch.
        let (u0, s0) = root.state(0.0, 0);
        assert!(u0 > 0.02 * root.alpha / root.beta && u0 < root.alpha / root.beta);
        assert!(s0 > 0.02 * root.alpha / root.gamma && s0 < root.alpha / root.gamma);
        let v = |g: &Gene, t: f64| {
            let (u, s) = g.state(t, 0);
            g.beta * u - g.gamma * s
        };
        let mut last = s0;
        for k in 1..=5 {
            let t = 0.06 * k as f64 - 1e-9;
            let (_, s) = root.state(t, 0);
            assert!(s > last && v(root, t) > 0.0, "t = {t}");
            last = s;
        }
        assert!(v(root, 0.5) < 0.0);
        // Housekeeping genes stay at their steady state.
        let (u, s) = hk.state(0.7, 1);
        assert!((u - hk.alpha / hk.beta).abs() < 1e-9 && (s - hk.alpha / hk.gamma).abs() < 1e-9);
    }

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
            off_from: 0.7,
            driver: false,
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
        // Off the fate path the gene stays at its basal steady state until its knockout.
        let (u1, s1) = g.state(0.6, 1);
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
    /// Dtype, `encoding-*` and `shape` attributes of every dataset/group under `slot`.
    fn layout(path: &std::path::Path, slot: &str) -> Vec<String> {
        let f = hdf5::File::open(path).unwrap();
        let mut out = Vec::new();
        let g = f.group(slot).unwrap();
        let attrs = |loc: &hdf5::Location| {
            ["encoding-type", "encoding-version"].map(|a| crate::io::read::read_str_attr(loc, a))
        };
        out.push(format!("{slot}: {:?}", attrs(&g)));
        if let Ok(a) = g.attr("shape") {
            out.push(format!("{slot} shape {:?}", a.read_raw::<i64>().unwrap()));
        }
        let mut names = g.member_names().unwrap();
        names.sort();
        for m in names {
            if let Ok(ds) = g.dataset(&m) {
                let dt = ds.dtype().unwrap().to_descriptor().unwrap();
                out.push(format!(
                    "{slot}/{m}: {dt:?} {:?} {:?}",
                    ds.shape(),
                    attrs(&ds)
                ));
            } else {
                out.extend(layout(path, &format!("{slot}/{m}")));
            }
        }
        out
    }

    #[test]
    fn streamed_file_equals_the_in_memory_one() {
        let d = tempfile::tempdir().unwrap();
        for labeling in [false, true] {
            let p = SimParams {
                n_cells: 3000,
                n_genes: 40,
                seed: 7,
                labeling,
                ..SimParams::default()
            };
            let (mem, streamed) = (d.path().join("mem.h5ad"), d.path().join("streamed.h5ad"));
            let sim = simulate(&p).unwrap();
            crate::io::write_new(&mem, &sim.to_elements()).unwrap();
            // 700 cells per block: 5 blocks, the last one partial.
            let summary = simulate_to_file_in_blocks(&p, &streamed, 700).unwrap();
            assert_eq!(summary.genes, sim.genes);
            assert_eq!(
                summary.nnz[0],
                ("spliced".into(), sim.spliced.indices.len())
            );
            assert!(summary.true_velocity);
            let (a, b) = (
                crate::io::H5adReader::open(&mem).unwrap(),
                crate::io::H5adReader::open(&streamed).unwrap(),
            );
            assert_eq!(a.keys("").unwrap(), b.keys("").unwrap());
            let mut layers = a.keys("layers").unwrap();
            assert_eq!(layers, b.keys("layers").unwrap());
            assert_eq!(layers.len(), if labeling { 6 } else { 3 });
            layers.retain(|l| l != "true_velocity");
            let mut slots = vec!["X".to_string(), "layers/true_velocity".into()];
            slots.extend(layers.iter().map(|l| format!("layers/{l}")));
            for slot in slots
                .iter()
                .map(String::as_str)
                .chain(["obs", "var", "uns"])
            {
                assert_eq!(a.read(slot).unwrap(), b.read(slot).unwrap(), "{slot}");
            }
            // Same dtypes and attributes (the storage layout aside).
            for slot in ["X", "obs", "var", "uns", "layers"] {
                assert_eq!(layout(&mem, slot), layout(&streamed, slot), "{slot}");
            }
            // Neither the block size nor the number of threads changes the file.
            let one = d.path().join("one-thread.h5ad");
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            pool.install(|| simulate_to_file_in_blocks(&p, &one, 1024))
                .unwrap();
            let c = crate::io::H5adReader::open(&one).unwrap();
            for slot in ["X", "layers/unspliced", "obs"] {
                assert_eq!(b.read(slot).unwrap(), c.read(slot).unwrap(), "{slot}");
            }
        }
    }

    #[test]
    fn knockouts_change_exactly_the_fates_the_circuit_gives_them() {
        let base = SimParams {
            n_cells: 2000,
            n_genes: 40,
            circuit: true,
            ..SimParams::default()
        };
        let a = simulate(&base).unwrap();
        // Drivers: the early genes of each fate (programs 2, 4, 6 of 8).
        let drivers: Vec<usize> = (0..40).filter(|&g| a.genes[g].driver).collect();
        assert_eq!(
            drivers,
            vec![2, 4, 6, 10, 12, 14, 18, 20, 22, 26, 28, 30, 34, 36, 38]
        );
        // gene_2 drives Alpha: its knockout takes probability from Alpha only.
        let ko = simulate(&SimParams {
            knockout: vec!["gene_2".into()],
            ..base.clone()
        })
        .unwrap();
        let p = circuit_fate_probabilities(&ko.genes, 3);
        assert!(p[0] < 1.0 / 3.0 && (p[1] - p[2]).abs() < 1e-15, "{p:?}");
        // Same cells: times and size factors equal, fates changed only away from Alpha.
        assert_eq!(a.time, ko.time);
        assert_eq!(a.size_factor, ko.size_factor);
        let moved = (0..2000).filter(|&i| a.fate[i] != ko.fate[i]).count();
        assert!(moved > 0);
        assert!((0..2000).all(|i| a.fate[i] == ko.fate[i] || a.fate[i] == 0));
        let frac = |d: &SimData, f| d.fate.iter().filter(|&&x| x == f).count() as f64 / 2000.0;
        // The fraction of Alpha cells moves by the change of its probability (± sampling).
        assert!((frac(&a, 0) - frac(&ko, 0) - (1.0 / 3.0 - p[0])).abs() < 0.03);
        // The knocked-out gene decays: it is off at the end of every path.
        let g2 = &ko.genes[2];
        assert!(g2.state(1.0, 0).1 < 0.01 * a.genes[2].state(1.0, 0).1);
        // A housekeeping gene's knockout changes no fate.
        let hk = simulate(&SimParams {
            knockout: vec!["gene_1".into()],
            ..base.clone()
        })
        .unwrap();
        assert_eq!(hk.fate, a.fate);
        assert!(matches!(
            SimParams {
                knockout: vec!["gene_40".into()],
                ..base
            }
            .validate(),
            Err(SimError::UnknownGene { .. })
        ));
    }
}
