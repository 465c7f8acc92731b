//! dynamo's vector field, topography, ddhodge and fate on arrays an in-memory AnnData holds:
//! `cellfate_vectorfield` computes, `cellfate::vectorfield_slots` names the results under
//! dynamo's keys (the same slots `cellfate vectorfield`/`topography`/`potential`/
//! `predict-fate` write into files).

use cellfate::vectorfield::{
    cell_calculus, fixed_points, hodge_potential, predict_fates, EdgeFlow, IntegrateOptions,
    PotentialOptions, SparseVfcOptions, TopographyOptions, VectorField,
};
use cellfate::vectorfield_slots;
use cellfate_kernels::{projection, DenseMatrix, Direction, TransitionMatrix};
use numpy::ndarray::Array2;
use numpy::IntoPyArray;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::convert;
use crate::errors::transition_error;
use crate::source::csr_from_parts;
use crate::velocity::Matrix;

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A matrix as row-major `f64` with its shape.
pub(crate) fn rows(m: &Matrix<'_>) -> (usize, usize, Vec<f64>) {
    let (n, d) = m.shape();
    let all: Vec<usize> = (0..d).collect();
    (n, d, m.gather(&all))
}

/// Options from JSON (`None`: the defaults).
fn options<T: serde::de::DeserializeOwned + Default>(
    json: Option<&str>,
    what: &str,
) -> PyResult<T> {
    match json {
        Some(j) => serde_json::from_str(j).map_err(|e| value_error(format!("{what}: {e}"))),
        None => Ok(T::default()),
    }
}

/// The stored field (`X_ctrl`, `C`, `beta` of `uns["VecFld_<basis>"]`).
fn field(ctrl: &Matrix<'_>, coef: &Matrix<'_>, beta: f64) -> PyResult<VectorField> {
    let (_, d, c) = rows(ctrl);
    let (_, _, k) = rows(coef);
    VectorField::new(d, c, k, beta).map_err(value_error)
}

/// SparseVFC of velocities `y` at positions `x` (n × d) and the per-cell calculus: the slots.
#[pyfunction]
#[pyo3(signature = (x, y, basis, options_json=None))]
pub(crate) fn vector_field<'py>(
    py: Python<'py>,
    x: Matrix<'_>,
    y: Matrix<'_>,
    basis: &str,
    options_json: Option<&str>,
) -> PyResult<Bound<'py, PyList>> {
    let (n, d, xv) = rows(&x);
    let (m, e, yv) = rows(&y);
    if (m, e) != (n, d) {
        return Err(value_error(format!(
            "the embedding ({n}x{d}) and the velocities ({m}x{e}) differ in shape"
        )));
    }
    let opts: SparseVfcOptions = options(options_json, "VectorField options")?;
    let slots = crate::run::run(py, || {
        let fit = cellfate::vectorfield::sparse_vfc(&xv, &yv, d, &opts)?;
        let calc = cell_calculus(&fit.field, &xv);
        Ok::<_, cellfate::vectorfield::VectorFieldError>(vectorfield_slots::field_slots(
            basis, &xv, &yv, &fit, calc, &opts,
        ))
    })?
    .map_err(value_error)?;
    convert::slots(py, slots)
}

/// The displacement projection of a (forward) transition matrix on an embedding (CellRank's,
/// scVelo's `velocity_embedding`): n × w.
#[pyfunction]
pub(crate) fn project<'py>(
    py: Python<'py>,
    transition: &Bound<'_, PyAny>,
    embedding: Matrix<'_>,
) -> PyResult<Bound<'py, PyAny>> {
    let csr = csr_from_parts(transition, "transition matrix")?;
    let t = TransitionMatrix::try_new(csr, Direction::Forward).map_err(transition_error)?;
    let (n, w, e) = rows(&embedding);
    if t.n_cells() != n {
        return Err(value_error(format!(
            "the transition matrix has {} cells, the embedding {n}",
            t.n_cells()
        )));
    }
    let dense = DenseMatrix::from_f64(n, w, e);
    let p = crate::run::run(py, || projection::project(&t, &dense))?;
    let a = Array2::from_shape_vec((n, w), p).map_err(value_error)?;
    Ok(a.into_pyarray(py).into_any())
}

/// Fixed points of the stored field among cells at `x`: the slots.
#[pyfunction]
#[pyo3(signature = (ctrl, coef, beta, x, basis, options_json=None))]
pub(crate) fn topography<'py>(
    py: Python<'py>,
    ctrl: Matrix<'_>,
    coef: Matrix<'_>,
    beta: f64,
    x: Matrix<'_>,
    basis: &str,
    options_json: Option<&str>,
) -> PyResult<Bound<'py, PyList>> {
    let f = field(&ctrl, &coef, beta)?;
    let (_, d, xv) = rows(&x);
    if d != f.dim() {
        return Err(value_error(format!(
            "the embedding has {d} columns, the field {} dimensions",
            f.dim()
        )));
    }
    let opts: TopographyOptions = options(options_json, "topography options")?;
    let fps = crate::run::run(py, || fixed_points(&f, &xv, &opts))?.map_err(value_error)?;
    convert::slots(
        py,
        vectorfield_slots::topography_slots(basis, &f, &fps, &xv, d, opts.pad),
    )
}

/// The Hodge potential of velocities `v` at positions `x` on their `n_neighbors`-NN graph
/// (and the entropy of `fates` when given): the slots.
#[pyfunction]
#[pyo3(signature = (x, v, basis, n_neighbors=30, flow="displacement", fates=None))]
pub(crate) fn ddhodge<'py>(
    py: Python<'py>,
    x: Matrix<'_>,
    v: Matrix<'_>,
    basis: &str,
    n_neighbors: usize,
    flow: &str,
    fates: Option<Matrix<'_>>,
) -> PyResult<Bound<'py, PyList>> {
    let (n, d, xv) = rows(&x);
    let (m, e, vv) = rows(&v);
    if (m, e) != (n, d) {
        return Err(value_error(format!(
            "the embedding ({n}x{d}) and the velocities ({m}x{e}) differ in shape"
        )));
    }
    if n <= n_neighbors {
        return Err(value_error(format!(
            "{n} cells are too few for n = {n_neighbors} neighbours"
        )));
    }
    let flow = match flow {
        "displacement" => EdgeFlow::Displacement,
        "unit" => EdgeFlow::Unit,
        other => {
            return Err(value_error(format!(
                "flow={other:?}: expected 'displacement' or 'unit'"
            )))
        }
    };
    let entropy = match fates {
        Some(f) => {
            let (r, k, fp) = rows(&f);
            if r != n || k < 2 {
                return Err(value_error(format!(
                    "fate probabilities ({r}x{k}) need one row per cell ({n}) and at least 2 lineages"
                )));
            }
            Some(vectorfield_slots::fate_entropy(&fp, k))
        }
        None => None,
    };
    let opts = PotentialOptions {
        flow,
        ..Default::default()
    };
    let p = crate::run::run(py, || {
        let xm = nalgebra::DMatrix::from_row_slice(n, d, &xv);
        let nn = if n <= cellfate::upstream::KNN_EXACT_MAX_CELLS {
            cellfate::upstream::knn_exact(&xm, n_neighbors)
        } else {
            cellfate::upstream::ann::knn_descent(&xm, n_neighbors, 0, 30)
        };
        let graph: Vec<Vec<usize>> = nn
            .into_iter()
            .map(|r| r.into_iter().map(|(j, _)| j).collect())
            .collect();
        hodge_potential(&xv, &vv, d, &graph, &opts)
    })?
    .map_err(value_error)?;
    convert::slots(py, vectorfield_slots::potential_slots(basis, p, entropy))
}

/// The Hodge potential of the net flow of a transition matrix (SciPy CSR parts), and the
/// entropy of `fates` when given: the slots (keys `T_fwd_ddhodge_*`).
#[pyfunction]
#[pyo3(signature = (transition, fates=None))]
pub(crate) fn ddhodge_transitions<'py>(
    py: Python<'py>,
    transition: &Bound<'_, PyAny>,
    fates: Option<Matrix<'_>>,
) -> PyResult<Bound<'py, PyList>> {
    let t = csr_from_parts(transition, "transition matrix")?;
    let n = t.nrows();
    let entropy = match fates {
        Some(f) => {
            let (r, k, fp) = rows(&f);
            if r != n || k < 2 {
                return Err(value_error(format!(
                    "fate probabilities ({r}x{k}) need one row per cell ({n}) and at least 2 lineages"
                )));
            }
            Some(vectorfield_slots::fate_entropy(&fp, k))
        }
        None => None,
    };
    let edges: Vec<Vec<(usize, f64)>> = (0..n)
        .map(|i| {
            let (c, v) = t.row(i);
            c.iter()
                .map(|&j| j as usize)
                .zip(v.iter().copied())
                .collect()
        })
        .collect();
    let p = crate::run::run(py, || {
        cellfate::vectorfield::hodge_potential_of_transitions(&edges, &PotentialOptions::default())
    })?
    .map_err(value_error)?;
    convert::slots(py, vectorfield_slots::potential_slots("T_fwd", p, entropy))
}

/// Paths integrated from the cells `starts` through the stored field: the slots.
#[pyfunction]
#[pyo3(signature = (ctrl, coef, beta, x, starts, names, labels, basis, options_json=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn fate<'py>(
    py: Python<'py>,
    ctrl: Matrix<'_>,
    coef: Matrix<'_>,
    beta: f64,
    x: Matrix<'_>,
    starts: Vec<usize>,
    names: Vec<String>,
    labels: Vec<Option<String>>,
    basis: &str,
    options_json: Option<&str>,
) -> PyResult<Bound<'py, PyList>> {
    let f = field(&ctrl, &coef, beta)?;
    let (n, d, xv) = rows(&x);
    if d != f.dim() || names.len() != n || labels.len() != n {
        return Err(value_error(format!(
            "the embedding ({n}x{d}), the field ({} dimensions), the names ({}) and the labels ({}) do not fit",
            f.dim(),
            names.len(),
            labels.len()
        )));
    }
    let opts: IntegrateOptions = options(options_json, "fate options")?;
    let (paths, t_end) =
        crate::run::run(py, || predict_fates(&f, &xv, &starts, &opts))?.map_err(value_error)?;
    convert::slots(
        py,
        vectorfield_slots::fate_slots(
            basis, &names, &labels, &xv, d, &starts, &paths, t_end, &opts,
        ),
    )
}
