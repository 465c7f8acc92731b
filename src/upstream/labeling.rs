//! Metabolic labeling upstream of the kernels (dynamo 1.5.3's labeling recipe and
//! `tl.dynamics`, `../shared/docs/dynamo-notes.md` §8–9): from raw `new`/`total` counts (or the
//! four labeled/unlabeled × spliced/unspliced layers, summed) and a labeling time per cell to
//! the smoothed moments, the kinetic parameters of each experiment type
//! ([`cellfate_kernels::labeling_kinetics`]) and the velocities of new and total RNA.
//!
//! Steps ([`labeling_stage`]), on the kNN graph of the rest of the preprocessing:
//! 1. checks: new ≤ total in every entry, enough counts to estimate anything
//!    ([`LabelingSpec::min_counts_per_cell`]), labeling times positive and finite;
//! 2. normalisation: new and total divided by the **total** layer's size factor
//!    (`total_Size_Factor` = counts per cell / their median), so that the new-to-total ratio
//!    the kinetics read is the measured one. dynamo 1.5.3 divides each layer by its own
//!    factor (`X_new = new / new_Size_Factor`), which multiplies every cell's new fraction by
//!    a cell-specific factor and biases γ; we deviate here. Layers `X_new`, `X_total`;
//! 3. smoothing: each cell averaged with its kNN neighbours **of the same labeling time**
//!    (binarised connectivities plus the cell, rows normalised; `obsp["moments_con"]`), as
//!    dynamo smooths within time groups (dynamo rebuilds a 30-NN graph within each group; we
//!    keep the shared graph's within-group edges, so that one graph serves every stage).
//!    Layers `M_n`, `M_t` and the second moments `M_tn`, `M_nn`, `M_tt` (float32, as dynamo),
//!    and with splicing layers dynamo's `M_s`, `M_u` (each layer normalised by its own size
//!    factor, as dynamo, then smoothed the same way; scVelo's `Ms`/`Mu` over the whole graph
//!    are written by the splicing path beside them);
//! 4. kinetics on the genes used for the PCA (`var["use_for_dynamics"]`): α, γ, half-life
//!    per gene in `var["alpha"/"gamma"/"half_life"]` and dynamo's `varm["vel_params"]` +
//!    `uns["vel_params_names"]`; the cell-wise α (`layers["cell_wise_alpha"]`); velocities
//!    `layers["velocity_N"]`, `layers["velocity_T"]` (none for a degradation experiment, as
//!    dynamo); `uns["dynamics"]` and `uns["pp"]` record the experiment type and settings;
//!    `obs["ntr"]`, `var["ntr"]` the new-to-total ratios.

use serde::{Deserialize, Serialize};

use cellfate_kernels::labeling_kinetics::{
    self, check_times, fit_kinetics, ExperimentType, ExtremeCells, KineticFit, KineticsOptions,
    LabelingMoments, OneShotMethod,
};
use cellfate_kernels::Csr;

use super::{invalid, CellSizes, UpstreamError};
use crate::io::{Element, NumVec};

/// Where each cell's labeling time comes from (`--labeling-time`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelingTime {
    /// The same duration for every cell.
    Value(f64),
    /// An `obs` column (or `"off"`: ignore the labeling layers).
    Column(String),
}

impl std::str::FromStr for LabelingTime {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().parse::<f64>() {
            Ok(v) => Self::Value(v),
            Err(_) => Self::Column(s.trim().to_string()),
        })
    }
}

impl LabelingTime {
    /// Whether labeling is switched off (`"off"`/`"none"`).
    pub fn is_off(&self) -> bool {
        matches!(self, Self::Column(c) if c == "off" || c == "none")
    }
}

/// The obs columns searched for a labeling time when none is given (dynamo's `tkey`
/// fallback is `time`).
pub const TIME_COLUMNS: [&str; 2] = ["labeling_time", "time"];

/// Settings of the labeling stage (`[upstream.preprocess.labeling]` in TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelingSpec {
    /// Labeling time per cell; `None`: `obs["labeling_time"]`, then `obs["time"]`.
    pub labeling_time: Option<LabelingTime>,
    /// The experiment; `None`: inferred from the times and the new-to-total ratios.
    pub experiment_type: Option<ExperimentType>,
    /// One-shot slope estimator.
    pub one_shot_method: OneShotMethod,
    /// Extreme cells of the one-shot regressions: the top `perc_right` percent.
    pub perc_right: f64,
    /// How the one-shot extreme cells are ranked (`total`, or dynamo's `joint`).
    pub extreme: ExtremeCells,
    /// Fewer total counts per cell on average than this is refused as too few to estimate
    /// kinetics from.
    pub min_counts_per_cell: f64,
}

impl Default for LabelingSpec {
    fn default() -> Self {
        Self {
            labeling_time: None,
            experiment_type: None,
            one_shot_method: OneShotMethod::Combined,
            perc_right: 5.0,
            extreme: ExtremeCells::Total,
            min_counts_per_cell: 5.0,
        }
    }
}

/// The results of [`labeling_stage`].
#[derive(Clone, Debug)]
pub struct LabelingResult {
    /// The labeling time of each cell.
    pub times: Vec<f64>,
    /// Normalised new and total (`X_new`, `X_total`).
    pub x_new: Csr,
    /// See `x_new`.
    pub x_total: Csr,
    /// `total_Size_Factor`.
    pub size_factor: Vec<f64>,
    /// The smoothing graph (`obsp["moments_con"]`).
    pub moments_con: Csr,
    /// `M_n`, `M_t`, `M_tn`, `M_nn`, `M_tt` (cells × genes).
    pub moments: [Vec<f32>; 5],
    /// dynamo's `M_s`, `M_u` (with splicing layers).
    pub splicing_moments: Option<(Vec<f32>, Vec<f32>)>,
    /// Genes fitted.
    pub genes: Vec<bool>,
    /// The kinetics.
    pub fit: KineticFit,
    /// New-to-total ratio per cell and per gene (raw counts).
    pub ntr_obs: Vec<f64>,
    /// See `ntr_obs`.
    pub ntr_var: Vec<f64>,
    /// Whether the data also have splicing layers.
    pub has_splicing: bool,
    /// Where the times came from (`obs` column name, or `None` for one value).
    pub tkey: String,
    /// scVelo's velocity confidence of `velocity_T` (`obs["velocity_T_confidence"]`), when
    /// there is a velocity and a distance graph.
    pub confidence: Option<Vec<f64>>,
}

/// The first stored entry where `new > total`, as (cell, gene, new, total).
pub fn new_exceeds_total(new: &Csr, total: &Csr) -> Option<(usize, usize, f64, f64)> {
    for i in 0..new.nrows() {
        let (c, v) = new.row(i);
        for (&j, &x) in c.iter().zip(v) {
            let t = total.get(i, j as usize);
            if x > t {
                return Some((i, j as usize, x, t));
            }
        }
    }
    None
}

/// Checks the labeling counts of `source`: shapes, new ≤ total, enough counts.
pub fn check_labeling_counts(
    new: &Csr,
    total: &Csr,
    spec: &LabelingSpec,
    source: &str,
    names: &dyn Fn(usize, usize) -> (String, String),
) -> Result<(), UpstreamError> {
    let (n, g) = (total.nrows(), total.ncols());
    if (new.nrows(), new.ncols()) != (n, g) {
        return Err(invalid(format!(
            "{source}: layers new ({}×{}) and total ({n}×{g}) differ in shape",
            new.nrows(),
            new.ncols()
        )));
    }
    if let Some((i, j, x, t)) = new_exceeds_total(new, total) {
        let (cell, gene) = names(i, j);
        return Err(invalid(format!(
            "{source}: layers new exceeds total at cell {cell:?} (row {i}), gene {gene:?} (column {j}): new {x} > total {t}; new (labeled) RNA is part of total RNA — are the layers swapped or from different runs?"
        )));
    }
    let sum: f64 = total.data().iter().sum();
    let per_cell = sum / n.max(1) as f64;
    if per_cell.is_nan() || per_cell < spec.min_counts_per_cell {
        return Err(invalid(format!(
            "{source}: too few counts to estimate labeling kinetics: {sum} total counts over {n} cells ({per_cell:.2} per cell; at least {} per cell on average are needed, upstream.preprocess.labeling.min_counts_per_cell) — numbers from these would be noise",
            spec.min_counts_per_cell
        )));
    }
    Ok(())
}

/// Resolves the labeling time of each cell: a value for all, or an obs column read by
/// `column` (`None` when absent). `what` names the setting in errors.
pub fn resolve_times(
    spec: &LabelingSpec,
    n: usize,
    column: &dyn Fn(&str) -> Option<Vec<f64>>,
    source: &str,
) -> Result<Option<(Vec<f64>, String)>, UpstreamError> {
    let hint = "--labeling-time takes a number for all cells or an obs column (upstream.preprocess.labeling.labeling_time in TOML)";
    let (times, key) = match &spec.labeling_time {
        Some(t) if t.is_off() => return Ok(None),
        Some(LabelingTime::Value(v)) => (vec![*v; n], "labeling_time".to_string()),
        Some(LabelingTime::Column(c)) => match column(c) {
            Some(t) => (t, c.clone()),
            None => {
                return Err(invalid(format!(
                    "{source}: --labeling-time {c}: no numeric obs column {c:?} ({hint})"
                )))
            }
        },
        None => match TIME_COLUMNS
            .iter()
            .find_map(|c| column(c).map(|t| (t, c.to_string())))
        {
            Some(found) => found,
            None => return Err(invalid(format!(
                "{source}: the layers hold metabolic labeling (new/total RNA) but no labeling time was given and obs has neither \"labeling_time\" nor \"time\": give it with --labeling-time ({hint}), or --labeling-time off to ignore the labeling layers"
            ))),
        },
    };
    if times.len() != n {
        return Err(invalid(format!(
            "{source}: obs[{key:?}] has {} values for {n} cells",
            times.len()
        )));
    }
    check_times(&times, &format!("{source}: labeling time (obs[{key:?}])"))
        .map_err(|e| invalid(format!("{e} ({hint})")))?;
    Ok(Some((times, key)))
}

/// The smoothing graph: `conn`'s edges between cells of the same labeling time, binarised,
/// the cell added, rows normalised.
pub fn same_time_graph(conn: &Csr, times: &[f64]) -> Csr {
    let mut t = Vec::with_capacity(conn.nnz());
    for i in 0..conn.nrows() {
        let (c, v) = conn.row(i);
        for (&j, &x) in c.iter().zip(v) {
            if x > 0.0 && times[j as usize] == times[i] {
                t.push((i, j as usize, 1.0));
            }
        }
    }
    let same = Csr::from_triplets(conn.nrows(), conn.ncols(), &t)
        .unwrap_or_else(|_| Csr::identity(conn.nrows()));
    cellfate_dynamics::knn_weights(&same)
}

/// What [`labeling_stage`] works on.
#[derive(Clone, Copy, Debug)]
pub struct LabelingInput<'a> {
    /// Raw new (labeled) counts.
    pub new: &'a Csr,
    /// Raw total counts.
    pub total: &'a Csr,
    /// The kNN connectivities.
    pub connectivities: &'a Csr,
    /// The kNN distances (for the velocity confidence), if any.
    pub distances: Option<&'a Csr>,
    /// The genes to fit.
    pub genes: &'a [bool],
    /// Whether the data also have splicing layers (recorded in `uns`).
    pub has_splicing: bool,
    /// Raw spliced and unspliced counts, for dynamo's `M_s`/`M_u` (the same-time smoothing of
    /// each layer normalised by its own size factor), when the data have them.
    pub splicing: Option<(&'a Csr, &'a Csr)>,
}

/// The labeling stage (module docs) on `input`, with the labeling `times` (from `tkey`).
pub fn labeling_stage(
    input: &LabelingInput<'_>,
    times: Vec<f64>,
    tkey: String,
    spec: &LabelingSpec,
    source: &str,
) -> Result<LabelingResult, UpstreamError> {
    let LabelingInput {
        new,
        total,
        connectivities: conn,
        distances,
        genes,
        has_splicing,
        splicing,
    } = *input;
    let (n, g) = (total.nrows(), total.ncols());
    let sizes = CellSizes::of(total);
    let x_total = sizes.scale(total.clone());
    let x_new = sizes.scale(new.clone());
    let w = same_time_graph(conn, &times);
    let all: Vec<usize> = (0..g).collect();
    let id = |_: usize, _: usize, x: f64| x;
    let sq = |_: usize, _: usize, x: f64| x * x;
    let m_n = super::velocity::smooth_dense(&w, &x_new, &all, &id);
    let m_t = super::velocity::smooth_dense(&w, &x_total, &all, &id);
    let tn_prod = x_total.hadamard(&x_new);
    let m_tn = super::velocity::smooth_dense(&w, &tn_prod, &all, &id);
    drop(tn_prod);
    let m_nn = super::velocity::smooth_dense(&w, &x_new, &all, &sq);
    let m_tt = super::velocity::smooth_dense(&w, &x_total, &all, &sq);
    let splicing_moments = splicing.map(|(sp, un)| {
        let smooth = |m: &Csr| {
            let x = CellSizes::of(m).scale(m.clone());
            super::velocity::smooth_dense(&w, &x, &all, &id)
        };
        (smooth(sp), smooth(un))
    });
    let f64v = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let (mn, mt, mtn, mtt) = (f64v(&m_n), f64v(&m_t), f64v(&m_tn), f64v(&m_tt));
    let fit_genes: Vec<usize> = (0..g).filter(|&j| genes[j]).collect();
    if fit_genes.is_empty() {
        return Err(invalid(format!(
            "{source}: no gene to fit labeling kinetics on (no highly variable gene with counts)"
        )));
    }
    let opts = KineticsOptions {
        experiment_type: spec.experiment_type,
        one_shot_method: spec.one_shot_method,
        perc_right: spec.perc_right,
        extreme: spec.extreme,
    };
    let moments = LabelingMoments {
        n_cells: n,
        n_genes: g,
        new: &mn,
        total: &mt,
        times: &times,
        second: Some((&mtn, &mtt)),
    };
    // NTR of the raw counts decides the experiment when it is not given (dynamo's rule).
    let (rn, rt) = (new.row_sums(), total.row_sums());
    let ntr_obs: Vec<f64> = rn
        .iter()
        .zip(&rt)
        .map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 })
        .collect();
    let opts = match opts.experiment_type {
        Some(_) => opts,
        None => KineticsOptions {
            experiment_type: Some(labeling_kinetics::infer_experiment_type(&times, &ntr_obs)),
            ..opts
        },
    };
    let fit =
        fit_kinetics(&moments, &fit_genes, &opts).map_err(|e| invalid(format!("{source}: {e}")))?;
    // scVelo's velocity confidence on velocity_T (the fitted genes).
    let confidence = match (&fit.velocity_t, distances) {
        (Some(v), Some(d)) => {
            let fitted: Vec<usize> = (0..g).filter(|&j| fit.fitted[j]).collect();
            let nb = cellfate_dynamics::Neighbors::from_distances(d, None)
                .map_err(|e| invalid(format!("{source}: obsp[\"distances\"]: {e}")))?;
            let rm = cellfate_dynamics::RowMajor::new("velocity_T", v, n, g)
                .map_err(|e| invalid(format!("{source}: {e}")))?;
            Some(
                cellfate_dynamics::velocity_confidence(rm, &fitted, &nb)
                    .map_err(|e| invalid(format!("{source}: velocity_T confidence: {e}")))?,
            )
        }
        _ => None,
    };
    let (cn, ct) = (new.col_sums(), total.col_sums());
    let ntr_var = cn
        .iter()
        .zip(&ct)
        .map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 })
        .collect();
    Ok(LabelingResult {
        times,
        x_new,
        x_total,
        size_factor: sizes.sizes,
        moments_con: w,
        moments: [m_n, m_t, m_tn, m_nn, m_tt],
        splicing_moments,
        genes: fit.fitted.clone(),
        fit,
        ntr_obs,
        ntr_var,
        has_splicing,
        tkey,
        confidence,
    })
}

fn dense_f32(n: usize, g: usize, v: Vec<f32>) -> Element {
    Element::Dense(crate::io::DenseArray {
        shape: vec![n, g],
        data: NumVec::F32(v),
    })
}

impl LabelingResult {
    /// One line for the console: experiment, estimator, genes fitted, median γ and half-life.
    pub fn describe(&self) -> String {
        let mut g: Vec<f64> = self
            .fit
            .gamma
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        g.sort_by(f64::total_cmp);
        let med = g.get(g.len() / 2).copied().unwrap_or(f64::NAN);
        format!(
            "labeling: {} experiment ({} estimate), {} genes fitted, median γ {med:.4} (half-life {:.3}); layers M_n, M_t{}; var alpha, gamma, half_life",
            self.fit.experiment_type,
            self.fit.method,
            g.len(),
            std::f64::consts::LN_2 / med,
            if self.fit.velocity_t.is_some() { ", velocity_N, velocity_T" } else { "" }
        )
    }

    /// The AnnData slots, under dynamo's names (module docs).
    pub fn into_slots(self) -> Vec<(String, Element)> {
        let (n, g) = (self.x_total.nrows(), self.x_total.ncols());
        let fit = self.fit;
        let mut out: Vec<(String, Element)> = Vec::new();
        let [m_n, m_t, m_tn, m_nn, m_tt] = self.moments;
        for (k, v) in [
            ("M_n", m_n),
            ("M_t", m_t),
            ("M_tn", m_tn),
            ("M_nn", m_nn),
            ("M_tt", m_tt),
        ] {
            out.push((format!("layers/{k}"), dense_f32(n, g, v)));
        }
        if let Some((ms, mu)) = self.splicing_moments {
            out.push(("layers/M_s".into(), dense_f32(n, g, ms)));
            out.push(("layers/M_u".into(), dense_f32(n, g, mu)));
        }
        out.push(("layers/X_new".into(), Element::Sparse(self.x_new.into())));
        out.push((
            "layers/X_total".into(),
            Element::Sparse(self.x_total.into()),
        ));
        out.push((
            "obsp/moments_con".into(),
            Element::Sparse(self.moments_con.into()),
        ));
        let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        if let Some(a) = fit.cell_alpha.clone() {
            out.push(("layers/cell_wise_alpha".into(), dense_f32(n, g, to32(a))));
        }
        if let Some(v) = fit.velocity_n.clone() {
            out.push(("layers/velocity_N".into(), dense_f32(n, g, to32(v))));
        }
        if let Some(v) = fit.velocity_t.clone() {
            out.push(("layers/velocity_T".into(), dense_f32(n, g, to32(v))));
        }
        out.push(("var/alpha".into(), Element::from_f64(fit.alpha.clone())));
        out.push(("var/gamma".into(), Element::from_f64(fit.gamma.clone())));
        out.push((
            "var/half_life".into(),
            Element::from_f64(fit.half_life.clone()),
        ));
        out.push((
            "var/use_for_dynamics".into(),
            Element::from_bools(self.genes),
        ));
        out.push(("var/ntr".into(), Element::from_f64(self.ntr_var)));
        out.push(("obs/ntr".into(), Element::from_f64(self.ntr_obs)));
        if let Some(c) = self.confidence {
            out.push(("obs/velocity_T_confidence".into(), Element::from_f64(c)));
        }
        out.push((
            "obs/total_Size_Factor".into(),
            Element::from_f64(self.size_factor),
        ));
        if self.tkey == "labeling_time" {
            out.push((
                "obs/labeling_time".into(),
                Element::from_f64(self.times.clone()),
            ));
        }
        let names = KineticFit::PARAM_NAMES.len();
        out.push((
            "varm/vel_params".into(),
            Element::from_f64_matrix(g, names, fit.params()),
        ));
        out.push((
            "uns/vel_params_names".into(),
            Element::from_strings(
                KineticFit::PARAM_NAMES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
        ));
        let s = |v: &str| Element::Str(v.to_string());
        let b = |v: bool| Element::Scalar(NumVec::Bool(vec![v]));
        let exp = fit.experiment_type.dynamo_name();
        let model = match fit.experiment_type {
            ExperimentType::OneShot if fit.method == "stochastic" => "stochastic",
            ExperimentType::OneShot => "deterministic",
            ExperimentType::Kinetics => "deterministic",
            ExperimentType::Degradation | ExperimentType::Mixture => "deterministic",
        };
        out.push((
            "uns/dynamics".into(),
            Element::Dict(vec![
                ("experiment_type".into(), s(exp)),
                ("model".into(), s(model)),
                ("est_method".into(), s(fit.method)),
                ("t".into(), Element::from_f64(self.times)),
                (
                    "asspt_mRNA".into(),
                    s(if fit.experiment_type == ExperimentType::OneShot {
                        "ss"
                    } else {
                        "kinetic"
                    }),
                ),
                ("has_splicing".into(), b(self.has_splicing)),
                ("has_labeling".into(), b(true)),
                ("splicing_labeling".into(), b(false)),
                ("has_protein".into(), b(false)),
                ("use_smoothed".into(), b(true)),
                ("NTR_vel".into(), b(true)),
                ("normalized".into(), b(true)),
            ]),
        ));
        out.push((
            "uns/pp".into(),
            Element::Dict(vec![
                ("tkey".into(), s(&self.tkey)),
                ("experiment_type".into(), s(exp)),
                ("has_splicing".into(), b(self.has_splicing)),
                ("has_labeling".into(), b(true)),
                ("splicing_labeling".into(), b(false)),
                ("has_protein".into(), b(false)),
            ]),
        ));
        out
    }
}
