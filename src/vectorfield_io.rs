//! The vector-field steps on `.h5ad` files, under dynamo's keys (`cellfate vectorfield`,
//! `cellfate topography`, `cellfate potential`): the numerical work is
//! [`cellfate_vectorfield`]'s; this module reads the slots, builds the inputs and writes the
//! results into a copy of the input.
//!
//! - **Velocity in the basis**: `obsm["velocity_<basis>"]` when the input has it; otherwise the
//!   projection of the transition matrix (`obsp["T_fwd"]`, or the velocity kernel computed
//!   from the layers with CellRank's defaults) onto `obsm["X_<basis>"]`
//!   ([`cellfate_kernels::projection::project`], CellRank's and scVelo's displacement
//!   projection), written as `obsm["velocity_<basis>"]`.
//! - **Field**: SparseVFC on the first `dims` columns (all by default) →
//!   `uns["VecFld_<basis>"]` (`X`, `Y`, `valid_ind`, `X_ctrl`, `ctrl_idx`, `beta`, `C`, `V`,
//!   `P`, `VFCIndex`, `sigma2`, `iteration`, `tecr_traj`, `E_traj`, `method`, `dims`),
//!   `obsm["velocity_<basis>_SparseVFC"]`, `obsm["X_<basis>_SparseVFC"]`,
//!   `obs["control_point_<basis>"]`, `obs["inlier_prob_<basis>"]`,
//!   `obs["obs_vf_angle_<basis>"]` (radians), and the per-cell calculus: `obs["speed_<basis>"]`,
//!   `["divergence_<basis>"]`, `["curl_<basis>"]`, `["acceleration_<basis>"]`,
//!   `["curvature_<basis>"]`, `["jacobian_det_<basis>"]`, `obsm["acceleration_<basis>"]`,
//!   `obsm["curvature_<basis>"]`.
//! - **Topography**: fixed points of the stored field → `uns["VecFld_<basis>"]["Xss"]`,
//!   `["ftype"]`, `["confidence"]`, `["fp_ind"]` (nearest cell), `["Xss_eigenvalues"]`
//!   (k × 2d: real parts, then imaginary), `["xlim"]`, `["ylim"]`.
//! - **Potential**: the Hodge potential of the learned field at the cells (the projected
//!   velocities when no field is stored) on a fresh 30-NN graph in the basis →
//!   `obs["<basis>_ddhodge_potential"]` (dynamo's sign: low for progenitors),
//!   `obs["<basis>_ddhodge_div"]`, `obs["potential"]` (Waddington's sign: high for
//!   progenitors), `obs["potential_pseudotime"]` (the ddhodge potential scaled to [0, 1]),
//!   `obs["curl_fraction_<basis>"]`, and `obs["entropy"]` (the normalised Shannon entropy of
//!   each cell's fate probabilities, when `obsm["lineages_fwd"]` exists).

use std::path::Path;

use cellfate_kernels::{expr, projection, CellSource, DenseMatrix, Kernel, TransitionMatrix};
use cellfate_vectorfield::{
    cell_calculus, fixed_points, hodge_potential, sparse_vfc, PotentialOptions, SparseVfcOptions,
    TopographyOptions, VectorField,
};
use serde::{Deserialize, Serialize};

use crate::io::{Element, H5adEdit, H5adReader};
use crate::pipeline::PipelineError;

/// Settings of [`vectorfield_in_file`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorFieldSpec {
    /// The embedding (`obsm["X_<basis>"]`).
    pub basis: String,
    /// Use its first `dims` columns (all when `None`).
    pub dims: Option<usize>,
    /// SparseVFC's options.
    pub svc: SparseVfcOptions,
}

impl Default for VectorFieldSpec {
    fn default() -> Self {
        Self {
            basis: "pca".into(),
            dims: None,
            svc: SparseVfcOptions::default(),
        }
    }
}

fn err(msg: impl Into<String>) -> PipelineError {
    PipelineError::Preprocessing {
        message: msg.into(),
    }
}

fn vf_err(path: &Path, e: cellfate_vectorfield::VectorFieldError) -> PipelineError {
    err(format!("{}: {e}", path.display()))
}

/// The first `dims` columns of a row-major n × w matrix.
fn first_columns(v: &[f64], n: usize, w: usize, dims: usize) -> Vec<f64> {
    if dims == w {
        return v.to_vec();
    }
    (0..n)
        .flat_map(|i| v[i * w..i * w + dims].iter().copied())
        .collect()
}

/// The embedding `obsm["X_<basis>"]` (or `obsm[basis]`), its first `dims` columns.
pub(crate) fn embedding(
    r: &H5adReader,
    input: &Path,
    basis: &str,
    dims: Option<usize>,
) -> Result<(usize, usize, Vec<f64>, usize), PipelineError> {
    let key = if r.exists(&format!("obsm/X_{basis}")) {
        format!("obsm/X_{basis}")
    } else if r.exists(&format!("obsm/{basis}")) {
        format!("obsm/{basis}")
    } else {
        return Err(err(format!(
            "{}: obsm[\"X_{basis}\"] is missing (the embedding of --basis {basis}); found obsm keys: {}",
            input.display(),
            r.keys("obsm").unwrap_or_default().join(", ")
        )));
    };
    let (n, w, x) = r.dense(&key)?;
    let d = dims.unwrap_or(w);
    if d == 0 || d > w {
        return Err(err(format!(
            "{}: --dims {d}: {key} has {w} columns",
            input.display()
        )));
    }
    if let Some(k) = x.iter().position(|v| !v.is_finite()) {
        return Err(err(format!(
            "{}: {key} must be finite: cell {} has {} in column {}",
            input.display(),
            k / w,
            x[k],
            k % w
        )));
    }
    let xd = first_columns(&x, n, w, d);
    // A constant column carries no direction: the field would be degenerate along it.
    for k in 0..d {
        let first = xd[k];
        if n > 1 && (0..n).all(|i| xd[i * d + k] == first) {
            return Err(err(format!(
                "{}: {key} column {k} is constant: a vector field needs every dimension to vary (use --dims to take fewer columns)",
                input.display()
            )));
        }
    }
    Ok((n, d, xd, w))
}

/// The cells' velocities in the basis: the first d columns (row-major n × d); when computed
/// here, the whole projection (its width and values, for `obsm["velocity_<basis>"]`); where
/// they came from.
pub(crate) type BasisVelocity = (Vec<f64>, Option<(usize, Vec<f64>)>, String);

/// [`BasisVelocity`] of the cells.
pub(crate) fn basis_velocity(
    r: &H5adReader,
    input: &Path,
    basis: &str,
    n: usize,
    d: usize,
) -> Result<BasisVelocity, PipelineError> {
    basis_velocity_with(r, input, basis, n, d, None)
}

/// [`basis_velocity`], projecting `t` (a run's transition matrix, not yet in the file) when the
/// input has no `obsm["velocity_<basis>"]`.
pub(crate) fn basis_velocity_with(
    r: &H5adReader,
    input: &Path,
    basis: &str,
    n: usize,
    d: usize,
    t: Option<&TransitionMatrix>,
) -> Result<BasisVelocity, PipelineError> {
    let key = format!("obsm/velocity_{basis}");
    if r.exists(&key) {
        let (m, w, v) = r.dense(&key)?;
        if m != n || w < d {
            return Err(err(format!(
                "{}: {key} is {m} × {w}: expected {n} rows and at least {d} columns",
                input.display()
            )));
        }
        return Ok((
            first_columns(&v, n, w, d),
            None,
            format!("obsm[\"velocity_{basis}\"]"),
        ));
    }
    let (t, from) = if let Some(t) = t {
        (t.clone(), "the run's transition matrix".to_string())
    } else if r.exists("obsp/T_fwd") {
        (r.transition_matrix("T_fwd")?, "obsp[\"T_fwd\"]".to_string())
    } else {
        let spec = expr::parse("velocity").map_err(|e| err(e.to_string()))?;
        let out = spec.compute(r).map_err(|e| {
            err(format!(
                "{}: no obsm[\"velocity_{basis}\"] and no obsp[\"T_fwd\"], and the velocity kernel cannot be computed: {e}",
                input.display()
            ))
        })?;
        (out.transition, "the velocity kernel".to_string())
    };
    let emb: DenseMatrix = r
        .obsm(&format!("X_{basis}"))
        .or_else(|_| r.obsm(basis))
        .map_err(|e| err(e.to_string()))?;
    let w = emb.ncols();
    let p = projection::project(&t, &emb);
    Ok((
        first_columns(&p, n, w, d),
        Some((w, p)),
        format!("the projection of {from} on X_{basis}"),
    ))
}

fn f64_matrix(n: usize, d: usize, v: Vec<f64>) -> Element {
    Element::from_f64_matrix(n, d, v)
}

/// What [`vectorfield_in_file`] did.
#[derive(Clone, Debug, Serialize)]
pub struct VectorFieldReport {
    /// Cells and dimensions.
    pub n_cells: usize,
    /// Dimensions of the field.
    pub dims: usize,
    /// Control points.
    pub n_ctrl: usize,
    /// Kernel parameter.
    pub beta: f64,
    /// EM iterations.
    pub iterations: usize,
    /// Cells taken as inliers (posterior > θ).
    pub inliers: usize,
    /// Mean cosine between the observed and the learned velocities.
    pub mean_cosine: f64,
    /// Where the velocities came from.
    pub velocity_source: String,
}

/// SparseVFC and the per-cell calculus: reads `input`, writes `output` (see the module docs).
pub fn vectorfield_in_file(
    input: &Path,
    output: &Path,
    spec: &VectorFieldSpec,
) -> Result<VectorFieldReport, PipelineError> {
    let r = H5adReader::open(input)?;
    let basis = spec.basis.as_str();
    let (n, d, x, _) = embedding(&r, input, basis, spec.dims)?;
    let (y, computed, source) = basis_velocity(&r, input, basis, n, d)?;
    let fit = sparse_vfc(&x, &y, d, &spec.svc).map_err(|e| vf_err(input, e))?;
    let calc = cell_calculus(&fit.field, &x);
    let mut edit = H5adEdit::new(input);
    if let Some((w, p)) = computed {
        edit.set(&format!("obsm/velocity_{basis}"), f64_matrix(n, w, p));
    }
    let inliers = fit.p.iter().filter(|&&q| q > spec.svc.theta).count();
    for (slot, e) in crate::vectorfield_slots::field_slots(basis, &x, &y, &fit, calc, &spec.svc) {
        edit.set(&slot, e);
    }
    edit.write_to(output)?;
    Ok(VectorFieldReport {
        n_cells: n,
        dims: d,
        n_ctrl: fit.field.n_ctrl(),
        beta: fit.field.beta(),
        iterations: fit.iterations,
        inliers,
        mean_cosine: cellfate_vectorfield::svc::mean_cosine(&y, &fit.v, d),
        velocity_source: source,
    })
}

/// A numeric element as `f64` values (any numeric dtype).
fn numbers(e: &Element) -> Option<Vec<f64>> {
    match e {
        Element::Dense(a) => Some(a.data.to_f64()),
        Element::Scalar(v) => Some(v.to_f64()),
        _ => None,
    }
}

/// The field stored in `uns["VecFld_<basis>"]` (dynamo's or cellfate's): `X_ctrl`, `C`, `beta`.
pub fn read_vector_field(
    r: &H5adReader,
    input: &Path,
    basis: &str,
) -> Result<VectorField, PipelineError> {
    let group = format!("uns/VecFld_{basis}");
    if !r.exists(&group) {
        return Err(err(format!(
            "{}: uns[\"VecFld_{basis}\"] is missing: run `cellfate vectorfield --basis {basis}` first",
            input.display()
        )));
    }
    let get = |k: &str| -> Result<(Vec<usize>, Vec<f64>), PipelineError> {
        let slot = format!("{group}/{k}");
        if !r.exists(&slot) {
            return Err(err(format!(
                "{}: uns[\"VecFld_{basis}\"][\"{k}\"] is missing",
                input.display()
            )));
        }
        let e = r.read(&slot)?;
        let shape = match &e {
            Element::Dense(a) => a.shape.clone(),
            _ => vec![1],
        };
        let v = numbers(&e).ok_or_else(|| {
            err(format!(
                "{}: uns[\"VecFld_{basis}\"][\"{k}\"]: expected numbers",
                input.display()
            ))
        })?;
        Ok((shape, v))
    };
    let (cs, ctrl) = get("X_ctrl")?;
    let (_, coef) = get("C")?;
    let (_, beta) = get("beta")?;
    let d = if cs.len() == 2 { cs[1] } else { 1 };
    VectorField::new(d, ctrl, coef, beta.first().copied().unwrap_or(f64::NAN))
        .map_err(|e| vf_err(input, e))
}

/// What [`topography_in_file`] found.
#[derive(Clone, Debug, Serialize)]
pub struct TopographyReport {
    /// Fixed points (position, dynamo's ftype, confidence, nearest cell).
    pub fixed_points: Vec<cellfate_vectorfield::FixedPoint>,
}

/// Fixed points of the stored field (see the module docs).
pub fn topography_in_file(
    input: &Path,
    output: &Path,
    basis: &str,
    opts: &TopographyOptions,
) -> Result<TopographyReport, PipelineError> {
    let r = H5adReader::open(input)?;
    let field = read_vector_field(&r, input, basis)?;
    let d = field.dim();
    let (n, _, x, _) = embedding(&r, input, basis, Some(d))?;
    let fps = fixed_points(&field, &x, opts).map_err(|e| vf_err(input, e))?;
    let mut edit = H5adEdit::new(input);
    for (slot, e) in
        crate::vectorfield_slots::topography_slots(basis, &field, &fps, &x, d, opts.pad)
    {
        edit.set(&slot, e);
    }
    let _ = n;
    edit.write_to(output)?;
    Ok(TopographyReport { fixed_points: fps })
}

/// The Hodge potential of the net flow of `obsp["T_fwd"]` (no embedding): the same slots as
/// [`potential_in_file`] with `T_fwd` in place of the basis.
fn transition_potential(
    r: &H5adReader,
    input: &Path,
    output: &Path,
    opts: &PotentialOptions,
) -> Result<PotentialReport, PipelineError> {
    if !r.exists("obsp/T_fwd") {
        return Err(err(format!(
            "{}: obsp[\"T_fwd\"] is missing (the transition matrix whose flow --flow transition decomposes); run `cellfate kernel` first",
            input.display()
        )));
    }
    let t = r.transition_matrix("T_fwd")?;
    let n = t.n_cells();
    let rows: Vec<Vec<(usize, f64)>> = (0..n)
        .map(|i| {
            let (c, v) = t.row(i);
            c.iter()
                .map(|&j| j as usize)
                .zip(v.iter().copied())
                .collect()
        })
        .collect();
    let p = cellfate_vectorfield::hodge_potential_of_transitions(&rows, opts)
        .map_err(|e| vf_err(input, e))?;
    let components = p.component.iter().max().map_or(0, |m| m + 1);
    let iterations = p.iterations;
    let entropy_of = if r.exists("obsm/lineages_fwd") {
        let (m, k, fp) = r.dense("obsm/lineages_fwd")?;
        (m == n && k >= 2).then(|| crate::vectorfield_slots::fate_entropy(&fp, k))
    } else {
        None
    };
    let entropy = entropy_of.is_some();
    let mut edit = H5adEdit::new(input);
    for (slot, e) in crate::vectorfield_slots::potential_slots("T_fwd", p, entropy_of) {
        edit.set(&slot, e);
    }
    edit.write_to(output)?;
    Ok(PotentialReport {
        n_cells: n,
        flow_source: "the net flow of obsp[\"T_fwd\"]".into(),
        iterations,
        components,
        entropy,
    })
}

/// What [`potential_in_file`] computed.
#[derive(Clone, Debug, Serialize)]
pub struct PotentialReport {
    /// Cells.
    pub n_cells: usize,
    /// Where the flow came from.
    pub flow_source: String,
    /// Conjugate-gradient iterations.
    pub iterations: usize,
    /// Connected components of the graph.
    pub components: usize,
    /// Whether `obs["entropy"]` was written.
    pub entropy: bool,
}

/// The Hodge potential, the Waddington potential and the developmental entropy (see the module
/// docs). `n_neighbors` counts the other cells of each cell's graph row (dynamo: 30). With
/// `basis = "T_fwd"` the flow is the net flow of the transition matrix on its own graph
/// (`F_ij = T_ij − T_ji`, no embedding), written as `obs["T_fwd_ddhodge_potential"]`, ...
pub fn potential_in_file(
    input: &Path,
    output: &Path,
    basis: &str,
    n_neighbors: usize,
    opts: &PotentialOptions,
) -> Result<PotentialReport, PipelineError> {
    let r = H5adReader::open(input)?;
    if basis == "T_fwd" {
        return transition_potential(&r, input, output, opts);
    }
    let (x, v, d, source) = if r.exists(&format!("uns/VecFld_{basis}")) {
        let field = read_vector_field(&r, input, basis)?;
        let d = field.dim();
        let (_, _, x, _) = embedding(&r, input, basis, Some(d))?;
        let v = field.eval_rows(&x);
        (x, v, d, format!("the vector field uns[\"VecFld_{basis}\"]"))
    } else {
        let (n, d, x, _) = embedding(&r, input, basis, None)?;
        let (v, _, source) = basis_velocity(&r, input, basis, n, d)?;
        (x, v, d, source)
    };
    let n = x.len() / d;
    if n <= n_neighbors {
        return Err(err(format!(
            "{}: {n} cells are too few for --n-neighbors {n_neighbors}",
            input.display()
        )));
    }
    let xm = nalgebra::DMatrix::from_row_slice(n, d, &x);
    let nn = if n <= crate::upstream::KNN_EXACT_MAX_CELLS {
        crate::upstream::knn_exact(&xm, n_neighbors)
    } else {
        crate::upstream::ann::knn_descent(&xm, n_neighbors, 0, 30)
    };
    let graph: Vec<Vec<usize>> = nn
        .into_iter()
        .map(|row| row.into_iter().map(|(j, _)| j).collect())
        .collect();
    let p = hodge_potential(&x, &v, d, &graph, opts).map_err(|e| vf_err(input, e))?;
    let components = p.component.iter().max().map_or(0, |m| m + 1);
    let (iterations, entropy_of) = (
        p.iterations,
        if r.exists("obsm/lineages_fwd") {
            let (m, k, fp) = r.dense("obsm/lineages_fwd")?;
            (m == n && k >= 2).then(|| crate::vectorfield_slots::fate_entropy(&fp, k))
        } else {
            None
        },
    );
    let entropy = entropy_of.is_some();
    let mut edit = H5adEdit::new(input);
    for (slot, e) in crate::vectorfield_slots::potential_slots(basis, p, entropy_of) {
        edit.set(&slot, e);
    }
    edit.write_to(output)?;
    Ok(PotentialReport {
        n_cells: n,
        flow_source: source,
        iterations,
        components,
        entropy,
    })
}

/// Which cells [`predict_fate_in_file`] starts from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FateStarts {
    /// The cells of these clusters (of `cluster_key`).
    Clusters(Vec<String>),
    /// Every cell.
    All,
}

/// Settings of [`predict_fate_in_file`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictFateSpec {
    /// The embedding of the stored field.
    pub basis: String,
    /// Start cells.
    pub starts: FateStarts,
    /// obs column of the clusters (starts and end labels).
    pub cluster_key: String,
    /// The integration.
    pub integrate: cellfate_vectorfield::IntegrateOptions,
}

/// What [`predict_fate_in_file`] found.
#[derive(Clone, Debug, Serialize)]
pub struct PredictFateReport {
    /// Paths integrated.
    pub n_paths: usize,
    /// The end time used.
    pub t_end: f64,
    /// Paths per end cluster, in order of the cluster categories.
    pub end_clusters: Vec<(String, usize)>,
    /// Paths that left the data's box.
    pub left_domain: usize,
    /// Paths that settled at a fixed point.
    pub settled: usize,
    /// With fate probabilities (`obsm["lineages_fwd"]`): the share of starts whose end cell's
    /// most likely fate equals the start cell's.
    pub markov_agreement: Option<f64>,
    /// The end cell of each path (for the caller's checks).
    pub end_cells: Vec<usize>,
    /// The start cells.
    pub start_cells: Vec<usize>,
}

/// Fate prediction by integrating the stored field from cells: writes
/// `uns["fate_<basis>"]` (`init_cells` (obs names), `init_states` (k × d), `t` (the common
/// time grid), `prediction` (k × d × points, NaN after a path stopped), `end_cell`,
/// `end_cluster`, `end` (how each path ended)) and `obs["fate_<basis>_end_cluster"]` (the end
/// cluster of the paths started at each cell; empty for other cells).
pub fn predict_fate_in_file(
    input: &Path,
    output: &Path,
    spec: &PredictFateSpec,
) -> Result<PredictFateReport, PipelineError> {
    use cellfate_vectorfield::{predict_fates, PathEnd};
    let r = H5adReader::open(input)?;
    let basis = spec.basis.as_str();
    let field = read_vector_field(&r, input, basis)?;
    let d = field.dim();
    let (n, _, x, _) = embedding(&r, input, basis, Some(d))?;
    let labels: Vec<Option<String>> = if r.exists(&format!("obs/{}", spec.cluster_key)) {
        r.obs_labels(&spec.cluster_key).map_err(|e| {
            err(format!(
                "{}: obs[\"{}\"]: {e}",
                input.display(),
                spec.cluster_key
            ))
        })?
    } else if matches!(spec.starts, FateStarts::Clusters(_)) {
        return Err(err(format!(
            "{}: obs[\"{}\"] is missing (the clusters of --from-cluster; set --cluster-key)",
            input.display(),
            spec.cluster_key
        )));
    } else {
        vec![None; n]
    };
    let starts: Vec<usize> = match &spec.starts {
        FateStarts::All => (0..n).collect(),
        FateStarts::Clusters(names) => {
            for name in names {
                if !labels.iter().any(|l| l.as_deref() == Some(name)) {
                    let mut cats: Vec<&str> = labels.iter().flatten().map(String::as_str).collect();
                    cats.sort_unstable();
                    cats.dedup();
                    return Err(err(format!(
                        "{}: no cell of cluster {name:?} in obs[\"{}\"] (clusters: {})",
                        input.display(),
                        spec.cluster_key,
                        cats.join(", ")
                    )));
                }
            }
            (0..n)
                .filter(|&i| labels[i].as_ref().is_some_and(|l| names.contains(l)))
                .collect()
        }
    };
    let (paths, t_end) =
        predict_fates(&field, &x, &starts, &spec.integrate).map_err(|e| vf_err(input, e))?;
    let k = paths.len();
    let names = r.obs_names()?;
    let end_label = |c: usize| labels[c].clone().unwrap_or_default();
    let markov = if r.exists("obsm/lineages_fwd") {
        let (m, w, fp) = r.dense("obsm/lineages_fwd")?;
        if m == n && w > 0 {
            let arg = |i: usize| {
                (0..w)
                    .max_by(|&a, &b| fp[i * w + a].total_cmp(&fp[i * w + b]))
                    .unwrap_or(0)
            };
            let agree = starts
                .iter()
                .zip(&paths)
                .filter(|(&s, p)| arg(s) == arg(p.end_cell))
                .count();
            Some(agree as f64 / k.max(1) as f64)
        } else {
            None
        }
    } else {
        None
    };
    let mut edit = H5adEdit::new(input);
    for (slot, e) in crate::vectorfield_slots::fate_slots(
        basis,
        &names,
        &labels,
        &x,
        d,
        &starts,
        &paths,
        t_end,
        &spec.integrate,
    ) {
        edit.set(&slot, e);
    }
    edit.write_to(output)?;
    let mut end_clusters: Vec<(String, usize)> = Vec::new();
    for p in &paths {
        let l = end_label(p.end_cell);
        match end_clusters.iter_mut().find(|(name, _)| *name == l) {
            Some(e) => e.1 += 1,
            None => end_clusters.push((l, 1)),
        }
    }
    end_clusters.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(PredictFateReport {
        n_paths: k,
        t_end,
        end_clusters,
        left_domain: paths
            .iter()
            .filter(|p| p.end == PathEnd::LeftDomain)
            .count(),
        settled: paths.iter().filter(|p| p.end == PathEnd::Settled).count(),
        markov_agreement: markov,
        end_cells: paths.iter().map(|p| p.end_cell).collect(),
        start_cells: starts,
    })
}

/// The vector-field steps of a run (`run` and `batch`; TOML `[vectorfield]`, flag
/// `--vectorfield [BASIS]`): SparseVFC in `basis` on the velocities projected from the run's
/// transition matrix (or `obsm["velocity_<basis>"]` when the input has it), then the fixed
/// points and the Hodge potential with the developmental entropy of the run's fate
/// probabilities: the slots of `cellfate vectorfield`, `topography` and `potential`, written
/// with the run's output in one pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorFieldRunSpec {
    /// The embedding (`obsm["X_<basis>"]`); `None`: no vector-field steps.
    pub basis: Option<String>,
    /// Use its first `dims` columns (all when `None`).
    pub dims: Option<usize>,
    /// Find the fixed points (default `true`).
    pub topography: bool,
    /// Compute the Hodge potential and the entropy (default `true`).
    pub potential: bool,
    /// Neighbours of the potential's kNN graph in the basis (dynamo: 30).
    pub n_neighbors: usize,
    /// SparseVFC's options (dynamo's names).
    pub svc: SparseVfcOptions,
    /// The fixed-point search.
    pub fixed_points: TopographyOptions,
    /// The Hodge decomposition.
    pub hodge: PotentialOptions,
}

impl Default for VectorFieldRunSpec {
    fn default() -> Self {
        Self {
            basis: None,
            dims: None,
            topography: true,
            potential: true,
            n_neighbors: 30,
            svc: SparseVfcOptions::default(),
            fixed_points: TopographyOptions::default(),
            hodge: PotentialOptions::default(),
        }
    }
}

impl VectorFieldRunSpec {
    /// Settings that cannot work, caught before a run starts.
    pub fn validate(&self) -> Result<(), PipelineError> {
        if let Some(b) = &self.basis {
            if b.trim().is_empty() {
                return Err(err("[vectorfield] basis: expected an obsm embedding name (pca, umap, ...), found an empty string"));
            }
        }
        if self.dims == Some(0) {
            return Err(err("[vectorfield] dims: expected at least 1"));
        }
        if self.n_neighbors == 0 {
            return Err(err("[vectorfield] n_neighbors: expected at least 1"));
        }
        Ok(())
    }
}

/// What the vector-field steps of a run computed.
#[derive(Clone, Debug, Serialize)]
pub struct VectorFieldRunSummary {
    /// The basis.
    pub basis: String,
    /// The fit.
    pub field: VectorFieldReport,
    /// Fixed points (when asked for).
    pub fixed_points: Option<Vec<cellfate_vectorfield::FixedPoint>>,
    /// The potential (when asked for).
    pub potential: Option<PotentialReport>,
    /// Notes for the run's warnings (e.g. no fixed point found).
    pub notes: Vec<String>,
}

/// Runs the steps of `spec` on the run's input `r` and transition matrix `t`, with the run's
/// fate probabilities (row-major n × k) for the entropy; the slots go into `edit`. `stage`
/// names each step as it starts.
pub(crate) fn run_steps(
    r: &H5adReader,
    input: &Path,
    t: &TransitionMatrix,
    spec: &VectorFieldRunSpec,
    fates: Option<(usize, Vec<f64>)>,
    edit: &mut H5adEdit,
    stage: &mut dyn FnMut(&str),
) -> Result<Option<VectorFieldRunSummary>, PipelineError> {
    let Some(basis) = spec.basis.as_deref() else {
        return Ok(None);
    };
    stage("vector field");
    let (n, d, x, _) = embedding(r, input, basis, spec.dims)?;
    let (y, computed, source) = basis_velocity_with(r, input, basis, n, d, Some(t))?;
    let fit = sparse_vfc(&x, &y, d, &spec.svc).map_err(|e| vf_err(input, e))?;
    let calc = cell_calculus(&fit.field, &x);
    if let Some((w, p)) = computed {
        edit.set(&format!("obsm/velocity_{basis}"), f64_matrix(n, w, p));
    }
    let field_report = VectorFieldReport {
        n_cells: n,
        dims: d,
        n_ctrl: fit.field.n_ctrl(),
        beta: fit.field.beta(),
        iterations: fit.iterations,
        inliers: fit.p.iter().filter(|&&q| q > spec.svc.theta).count(),
        mean_cosine: cellfate_vectorfield::svc::mean_cosine(&y, &fit.v, d),
        velocity_source: source.clone(),
    };
    let mut slots = crate::vectorfield_slots::field_slots(basis, &x, &y, &fit, calc, &spec.svc);
    let mut notes = Vec::new();
    let fixed = if spec.topography {
        stage("topography");
        let fps = fixed_points(&fit.field, &x, &spec.fixed_points).map_err(|e| vf_err(input, e))?;
        // The fixed points are members of `uns["VecFld_<basis>"]`, which this edit sets as a
        // whole: put them into that dictionary.
        let group = format!("uns/VecFld_{basis}");
        let members = crate::vectorfield_slots::topography_slots(
            basis,
            &fit.field,
            &fps,
            &x,
            d,
            spec.fixed_points.pad,
        );
        if let Some((_, Element::Dict(dict))) = slots.iter_mut().find(|(s, _)| *s == group) {
            for (slot, e) in members {
                if let Some(name) = slot.strip_prefix(&format!("{group}/")) {
                    dict.retain(|(k, _)| k != name);
                    dict.push((name.to_string(), e));
                }
            }
        }
        if fps.is_empty() {
            notes.push(format!(
                "vector field: no fixed point converged from {} starts in {d} dimensions (in many dimensions a learned field rarely vanishes near the cells; [vectorfield] dims = 2 searches the first two)",
                spec.fixed_points.n_starts + spec.fixed_points.n_cell_starts
            ));
        }
        Some(fps)
    } else {
        None
    };
    for (slot, e) in slots {
        edit.set(&slot, e);
    }
    let potential = if spec.potential {
        stage("potential");
        if n <= spec.n_neighbors {
            return Err(err(format!(
                "{}: {n} cells are too few for [vectorfield] n_neighbors = {}",
                input.display(),
                spec.n_neighbors
            )));
        }
        let v = fit.field.eval_rows(&x);
        let xm = nalgebra::DMatrix::from_row_slice(n, d, &x);
        let nn = if n <= crate::upstream::KNN_EXACT_MAX_CELLS {
            crate::upstream::knn_exact(&xm, spec.n_neighbors)
        } else {
            crate::upstream::ann::knn_descent(&xm, spec.n_neighbors, 0, 30)
        };
        let graph: Vec<Vec<usize>> = nn
            .into_iter()
            .map(|row| row.into_iter().map(|(j, _)| j).collect())
            .collect();
        let p = hodge_potential(&x, &v, d, &graph, &spec.hodge).map_err(|e| vf_err(input, e))?;
        let components = p.component.iter().max().map_or(0, |m| m + 1);
        let iterations = p.iterations;
        let entropy_of = fates
            .filter(|(k, fp)| *k >= 2 && fp.len() == n * k)
            .map(|(k, fp)| crate::vectorfield_slots::fate_entropy(&fp, k));
        let entropy = entropy_of.is_some();
        for (slot, e) in crate::vectorfield_slots::potential_slots(basis, p, entropy_of) {
            edit.set(&slot, e);
        }
        Some(PotentialReport {
            n_cells: n,
            flow_source: format!("the vector field uns[\"VecFld_{basis}\"]"),
            iterations,
            components,
            entropy,
        })
    } else {
        None
    };
    Ok(Some(VectorFieldRunSummary {
        basis: basis.to_string(),
        field: field_report,
        fixed_points: fixed,
        potential,
        notes,
    }))
}
