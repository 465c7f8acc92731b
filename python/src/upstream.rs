//! scVelo's and scanpy's upstream steps (`pp.filter_and_normalize`, `pp.neighbors`,
//! `pp.moments`, `tl.velocity`, `tl.recover_dynamics`) on an in-memory AnnData's arrays: the
//! library's `cellfate::upstream::steps`, the same arithmetic as `cellfate preprocess` and
//! `cellfate velocity`. Results come back as `(slot, element)` lists for
//! `cellfate._elements`.

use cellfate::upstream::steps::{self, FilterNormalizeSpec, VelocityInput};
use cellfate::upstream::velocity::{DynamicalSettings, VelocityMode};
use cellfate::upstream::{
    CountsFloat64, KnnMethod, LayerDtype, RawCounts, UpstreamError, UpstreamSpec,
};
use nalgebra::DMatrix;
use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::convert;
use crate::source::csr_from_parts;
use crate::velocity::Matrix;

/// The library's error as `ValueError` (`KeyboardInterrupt` when interrupted).
fn upstream_error(e: UpstreamError) -> PyErr {
    match e {
        UpstreamError::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// Which count matrices (X, spliced, unspliced) the AnnData holds as float64: their
/// normalised matrices stay float64, the others are float32, as scVelo keeps them.
fn counts_float64((x, spliced, unspliced): (bool, bool, bool)) -> CountsFloat64 {
    CountsFloat64 {
        x,
        spliced,
        unspliced,
    }
}

/// An optional CSR given as SciPy parts.
fn csr_opt(
    parts: Option<&Bound<'_, PyAny>>,
    what: &str,
) -> PyResult<Option<cellfate::kernels::Csr>> {
    parts.map(|p| csr_from_parts(p, what)).transpose()
}

/// scVelo's `pp.filter_and_normalize`: the slots and the genes scVelo keeps.
#[pyfunction]
#[pyo3(signature = (spliced, unspliced, x=None, min_shared_counts=None, n_top_genes=None, log=true, float64=(false, false, false)))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn filter_and_normalize<'py>(
    py: Python<'py>,
    spliced: &Bound<'_, PyAny>,
    unspliced: &Bound<'_, PyAny>,
    x: Option<&Bound<'_, PyAny>>,
    min_shared_counts: Option<f64>,
    n_top_genes: Option<usize>,
    log: bool,
    float64: (bool, bool, bool),
) -> PyResult<(Bound<'py, PyList>, Vec<bool>, Vec<bool>)> {
    let raw = RawCounts {
        spliced: csr_from_parts(spliced, "layers['spliced']")?,
        unspliced: csr_from_parts(unspliced, "layers['unspliced']")?,
        x: csr_opt(x, "X")?,
        float64: counts_float64(float64),
    };
    let spec = FilterNormalizeSpec {
        min_shared_counts,
        n_top_genes,
        log,
        dtype: LayerDtype::Auto,
    };
    let out = crate::run::run(py, || steps::filter_and_normalize(raw, &spec, "adata"))?
        .map_err(upstream_error)?;
    let (filter, subset) = (out.gene_filter.clone(), out.gene_subset().to_vec());
    Ok((convert::slots(py, out.into_slots())?, filter, subset))
}

/// scanpy's `pp.pca` + `pp.neighbors`, as `cellfate preprocess` runs them.
#[pyfunction]
#[pyo3(signature = (x=None, highly_variable=None, pca=None, n_neighbors=30, n_pcs=30, knn="auto", seed=0))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn neighbors<'py>(
    py: Python<'py>,
    x: Option<&Bound<'_, PyAny>>,
    highly_variable: Option<Vec<bool>>,
    pca: Option<Matrix<'_>>,
    n_neighbors: usize,
    n_pcs: usize,
    knn: &str,
    seed: u64,
) -> PyResult<Bound<'py, PyList>> {
    let x = csr_opt(x, "X")?;
    let pca = pca.map(|m| {
        let (n, k) = m.shape();
        let all: Vec<usize> = (0..k).collect();
        DMatrix::from_row_slice(n, k, &m.gather(&all))
    });
    let spec = UpstreamSpec {
        n_neighbors,
        n_pcs,
        seed,
        knn: knn
            .parse::<KnnMethod>()
            .map_err(|e| PyValueError::new_err(e.to_string()))?,
        ..Default::default()
    };
    let out = crate::run::run(py, || {
        steps::neighbors(x.as_ref(), highly_variable.as_deref(), pca.as_ref(), &spec)
    })?
    .map_err(upstream_error)?;
    convert::slots(py, out.into_slots())
}

/// scVelo's `pp.moments`; raw counts (every value an integer) are normalised per cell first,
/// as scVelo does, and returned among the slots.
#[pyfunction]
#[pyo3(signature = (connectivities, spliced, unspliced, float64=(false, false, false)))]
pub(crate) fn moments<'py>(
    py: Python<'py>,
    connectivities: &Bound<'_, PyAny>,
    spliced: &Bound<'_, PyAny>,
    unspliced: &Bound<'_, PyAny>,
    float64: (bool, bool, bool),
) -> PyResult<Bound<'py, PyList>> {
    let conn = csr_from_parts(connectivities, "obsp['connectivities']")?;
    let s = csr_from_parts(spliced, "layers['spliced']")?;
    let u = csr_from_parts(unspliced, "layers['unspliced']")?;
    let f64s = counts_float64(float64);
    let out = crate::run::run(py, || steps::moments_of_counts(&conn, s, u, f64s))?
        .map_err(upstream_error)?;
    convert::slots(py, out)
}

/// scanpy's `tl.umap` on the kNN graph: `obsm/X_umap` and `uns/umap`, the layout of
/// `cellfate umap` (the graph is not modified).
#[pyfunction]
#[pyo3(signature = (connectivities, min_dist=0.5, spread=1.0, maxiter=None, alpha=1.0, gamma=1.0, negative_sample_rate=5, random_state=0))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn umap<'py>(
    py: Python<'py>,
    connectivities: &Bound<'_, PyAny>,
    min_dist: f64,
    spread: f64,
    maxiter: Option<usize>,
    alpha: f64,
    gamma: f64,
    negative_sample_rate: usize,
    random_state: u64,
) -> PyResult<Bound<'py, PyList>> {
    use cellfate::upstream::umap::{umap, umap_slots, UmapParams};
    let g = csr_from_parts(connectivities, "obsp['connectivities']")?;
    let params = UmapParams {
        min_dist,
        spread,
        n_epochs: maxiter,
        alpha,
        gamma,
        negative_sample_rate,
        random_state,
    };
    let out = crate::run::run(py, || umap(&g, &params))?
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    convert::slots(py, umap_slots(&out, &params))
}

/// First moments as float32 slices (the caller hands C-contiguous float32 arrays).
fn f32_slice<'a>(a: &'a PyReadonlyArray2<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what}: expected a C-contiguous array")))
}

/// scVelo's `tl.velocity(mode=...)` (with `mode="dynamical"`, `recover_dynamics` too);
/// `dynamics` is the JSON of `DynamicalSettings`.
#[pyfunction]
#[pyo3(signature = (ms, mu, spliced=None, unspliced=None, connectivities=None, highly_variable=None, mode="stochastic", dynamics=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn velocity<'py>(
    py: Python<'py>,
    ms: PyReadonlyArray2<'_, f32>,
    mu: PyReadonlyArray2<'_, f32>,
    spliced: Option<&Bound<'_, PyAny>>,
    unspliced: Option<&Bound<'_, PyAny>>,
    connectivities: Option<&Bound<'_, PyAny>>,
    highly_variable: Option<Vec<bool>>,
    mode: &str,
    dynamics: Option<&str>,
) -> PyResult<Bound<'py, PyList>> {
    let mode: VelocityMode =
        mode.parse()
            .map_err(|e: cellfate::upstream::velocity::VelocityModeParseError| {
                PyValueError::new_err(e.to_string())
            })?;
    let settings: DynamicalSettings = match dynamics {
        Some(j) => serde_json::from_str(j)
            .map_err(|e| PyValueError::new_err(format!("recover_dynamics options: {e}")))?,
        None => DynamicalSettings::default(),
    };
    let (n, g) = (ms.shape()[0], ms.shape()[1]);
    if mu.shape() != [n, g] {
        return Err(PyValueError::new_err(format!(
            "layers['Ms'] ({n}x{g}) and layers['Mu'] ({}x{}) differ in shape",
            mu.shape()[0],
            mu.shape()[1]
        )));
    }
    let s = csr_opt(spliced, "layers['spliced']")?;
    let u = csr_opt(unspliced, "layers['unspliced']")?;
    let conn = csr_opt(connectivities, "obsp['connectivities']")?;
    let input = VelocityInput {
        ms: f32_slice(&ms, "layers['Ms']")?,
        mu: f32_slice(&mu, "layers['Mu']")?,
        n,
        g,
        counts: s.as_ref().zip(u.as_ref()),
        connectivities: conn.as_ref(),
        highly_variable: highly_variable.as_deref(),
    };
    let fit = crate::run::run(py, || steps::velocity(&input, mode, &settings))?
        .map_err(upstream_error)?;
    convert::slots(py, fit.into_slots())
}

/// dynamo's `tl.dynamics` for metabolic labeling (`cellfate::upstream::labeling`): raw
/// `new`/`total` counts, the labeling time per cell (`tkey` names where it came from), the
/// kNN graph (connectivities, and distances for the velocity confidence), the genes to fit,
/// and the settings as JSON (`LabelingSpec`'s fields). Returns the slots.
#[pyfunction]
#[pyo3(signature = (new, total, times, tkey, connectivities, distances, genes, settings, has_splicing=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn labeling_dynamics<'py>(
    py: Python<'py>,
    new: &Bound<'_, PyAny>,
    total: &Bound<'_, PyAny>,
    times: Vec<f64>,
    tkey: String,
    connectivities: &Bound<'_, PyAny>,
    distances: Option<&Bound<'_, PyAny>>,
    genes: Vec<bool>,
    settings: &str,
    has_splicing: bool,
) -> PyResult<Bound<'py, PyList>> {
    use cellfate::upstream::labeling::{
        check_labeling_counts, labeling_stage, LabelingInput, LabelingSpec,
    };
    let spec: LabelingSpec = serde_json::from_str(settings)
        .map_err(|e| PyValueError::new_err(format!("labeling settings: {e}")))?;
    let new = csr_from_parts(new, "layers['new']")?;
    let total = csr_from_parts(total, "layers['total']")?;
    let conn = csr_from_parts(connectivities, "obsp['connectivities']")?;
    let dist = csr_opt(distances, "obsp['distances']")?;
    if genes.len() != total.ncols() {
        return Err(PyValueError::new_err(format!(
            "genes: {} flags for {} genes",
            genes.len(),
            total.ncols()
        )));
    }
    let names = |i: usize, j: usize| (i.to_string(), j.to_string());
    let out = crate::run::run(py, || {
        check_labeling_counts(&new, &total, &spec, "adata", &names)?;
        let input = LabelingInput {
            new: &new,
            total: &total,
            connectivities: &conn,
            distances: dist.as_ref(),
            genes: &genes,
            has_splicing,
            splicing: None,
        };
        labeling_stage(&input, times, tkey, &spec, "adata")
    })?
    .map_err(upstream_error)?;
    convert::slots(py, out.into_slots())
}
