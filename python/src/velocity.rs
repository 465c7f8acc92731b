//! scVelo's `tl.velocity_graph`, `tl.velocity_confidence` and `tl.latent_time` on arrays an
//! in-memory AnnData holds: the library's `cellfate_dynamics::summaries`, the same code the
//! CLI runs on files. The arrays are used as they are when every column is kept and they are
//! C-contiguous (float32 or float64, no copy); otherwise the velocity genes' columns are
//! gathered once, in the array's own precision (as the file path reads only those columns).

use std::borrow::Cow;

use cellfate_dynamics::{
    latent_time_from_graph, latent_time_genes, velocity_summaries, LatentTimeOptions, Root,
    RowMajor, Scalar, SummaryInput, VelocityError, VelocitySummaries,
};
use numpy::{IntoPyArray, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert;
use crate::source::csr_from_parts;

/// Columns of a [`Matrix`] in its own precision ([`Matrix::columns`]).
pub(crate) enum Columns<'a> {
    F64(Cow<'a, [f64]>),
    F32(Cow<'a, [f32]>),
}

/// A 2-D float array as stored.
#[derive(FromPyObject)]
pub(crate) enum Matrix<'py> {
    F64(PyReadonlyArray2<'py, f64>),
    F32(PyReadonlyArray2<'py, f32>),
}

impl Matrix<'_> {
    pub(crate) fn shape(&self) -> (usize, usize) {
        let s = match self {
            Self::F64(a) => a.shape(),
            Self::F32(a) => a.shape(),
        };
        (s[0], s[1])
    }

    /// Columns `cols` of every row, row-major in the array's precision: the array's own
    /// buffer when it is C-contiguous and `cols` is every column in order, else a copy.
    pub(crate) fn columns(&self, cols: &[usize]) -> Columns<'_> {
        macro_rules! c {
            ($a:expr, $v:ident) => {{
                let every =
                    cols.len() == $a.shape()[1] && cols.iter().enumerate().all(|(k, &j)| k == j);
                match $a.as_slice() {
                    Ok(s) if every && $a.is_c_contiguous() => Columns::$v(Cow::Borrowed(s)),
                    _ => {
                        let a = $a.as_array();
                        let mut out = Vec::with_capacity(a.nrows() * cols.len());
                        for row in a.rows() {
                            out.extend(cols.iter().map(|&j| row[j]));
                        }
                        Columns::$v(Cow::Owned(out))
                    }
                }
            }};
        }
        match self {
            Self::F64(a) => c!(a, F64),
            Self::F32(a) => c!(a, F32),
        }
    }

    /// Columns `cols` of every row, as row-major `f64`.
    pub(crate) fn gather(&self, cols: &[usize]) -> Vec<f64> {
        macro_rules! g {
            ($a:expr) => {{
                let a = $a.as_array();
                let mut out = Vec::with_capacity(a.nrows() * cols.len());
                for row in a.rows() {
                    out.extend(cols.iter().map(|&j| f64::from(row[j])));
                }
                out
            }};
        }
        match self {
            Self::F64(a) => g!(a),
            Self::F32(a) => g!(a),
        }
    }
}

fn value_error(e: VelocityError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The velocity genes' columns (all genes without a mask).
fn columns(g: usize, mask: Option<&[bool]>) -> PyResult<Vec<usize>> {
    if let Some(m) = mask {
        if m.len() != g {
            return Err(PyValueError::new_err(format!(
                "var['velocity_genes'] has {} values for {g} genes",
                m.len()
            )));
        }
    }
    Ok((0..g).filter(|&j| mask.is_none_or(|m| m[j])).collect())
}

fn summaries(
    py: Python<'_>,
    ms: &Matrix<'_>,
    velocity: &Matrix<'_>,
    mask: Option<&[bool]>,
    distances: &Bound<'_, PyAny>,
    stochastic: bool,
) -> PyResult<(VelocitySummaries, cellfate_kernels::Csr)> {
    let (n, g) = ms.shape();
    if velocity.shape() != (n, g) {
        return Err(PyValueError::new_err(format!(
            "layers Ms ({n}x{g}) and velocity ({}x{}) differ in shape",
            velocity.shape().0,
            velocity.shape().1
        )));
    }
    let keep = columns(g, mask)?;
    let (x, v) = (ms.columns(&keep), velocity.columns(&keep));
    let distances = csr_from_parts(distances, "obsp['distances']")?;
    let k = keep.len();
    fn go<X: Scalar, V: Scalar>(
        x: &[X],
        v: &[V],
        (n, k): (usize, usize),
        distances: &cellfate_kernels::Csr,
        stochastic: bool,
    ) -> Result<VelocitySummaries, VelocityError> {
        velocity_summaries(&SummaryInput {
            ms: RowMajor::new("layers/Ms", x, n, k)?,
            velocity: RowMajor::new("layers/velocity", v, n, k)?,
            distances,
            stochastic,
        })
    }
    let d = &distances;
    let out = crate::run::run(py, || match (&x, &v) {
        (Columns::F64(x), Columns::F64(v)) => go(x, v, (n, k), d, stochastic),
        (Columns::F64(x), Columns::F32(v)) => go(x, v, (n, k), d, stochastic),
        (Columns::F32(x), Columns::F64(v)) => go(x, v, (n, k), d, stochastic),
        (Columns::F32(x), Columns::F32(v)) => go(x, v, (n, k), d, stochastic),
    })?
    .map_err(value_error)?;
    Ok((out, distances))
}

/// The velocity graph and the confidences, as a dict of arrays under scVelo's key names.
#[pyfunction]
#[pyo3(signature = (ms, velocity, distances, velocity_genes=None, stochastic=false))]
pub(crate) fn velocity_graph_and_confidence<'py>(
    py: Python<'py>,
    ms: Matrix<'_>,
    velocity: Matrix<'_>,
    distances: &Bound<'_, PyAny>,
    velocity_genes: Option<Vec<bool>>,
    stochastic: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let (s, _) = summaries(
        py,
        &ms,
        &velocity,
        velocity_genes.as_deref(),
        distances,
        stochastic,
    )?;
    let d = PyDict::new(py);
    d.set_item("velocity_graph", convert::csr_parts(py, &s.graph.graph)?)?;
    d.set_item(
        "velocity_graph_neg",
        convert::csr_parts(py, &s.graph.graph_neg)?,
    )?;
    d.set_item(
        "velocity_self_transition",
        s.graph.self_transition.into_pyarray(py),
    )?;
    d.set_item("velocity_length", s.length.into_pyarray(py))?;
    d.set_item("velocity_confidence", s.confidence.into_pyarray(py))?;
    d.set_item(
        "velocity_confidence_transition",
        s.confidence_transition.into_pyarray(py),
    )?;
    d.set_item("velocity_coherence", s.coherence.into_pyarray(py))?;
    d.set_item("n_genes", s.n_genes)?;
    Ok(d)
}

/// Root/end cells and the gene-shared latent time (scVelo's `terminal_states` and
/// `latent_time`): `root` is a cell index, a score per cell, or `None` for scVelo's rule.
#[pyfunction]
#[pyo3(signature = (ms, velocity, distances, connectivities, fit_t, fit_likelihood, velocity_genes=None, stochastic=false, root_cell=None, root_scores=None, min_likelihood=Some(0.1)))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn latent_time<'py>(
    py: Python<'py>,
    ms: Matrix<'_>,
    velocity: Matrix<'_>,
    distances: &Bound<'_, PyAny>,
    connectivities: &Bound<'_, PyAny>,
    fit_t: Matrix<'_>,
    fit_likelihood: Vec<f64>,
    velocity_genes: Option<Vec<bool>>,
    stochastic: bool,
    root_cell: Option<usize>,
    root_scores: Option<Vec<f64>>,
    min_likelihood: Option<f64>,
) -> PyResult<Bound<'py, PyDict>> {
    let (s, distances) = summaries(
        py,
        &ms,
        &velocity,
        velocity_genes.as_deref(),
        distances,
        stochastic,
    )?;
    let (n, g) = fit_t.shape();
    if fit_likelihood.len() != g || n != ms.shape().0 {
        return Err(PyValueError::new_err(format!(
            "layers['fit_t'] ({n}x{g}) needs one row per cell ({}) and one column per value of var['fit_likelihood'] ({})",
            ms.shape().0,
            fit_likelihood.len()
        )));
    }
    let opts = LatentTimeOptions {
        min_likelihood,
        ..Default::default()
    };
    let fitted = latent_time_genes(&fit_likelihood, &opts);
    let ft = fit_t.columns(&fitted);
    let lik: Vec<f64> = fitted.iter().map(|&j| fit_likelihood[j]).collect();
    let conn = csr_from_parts(connectivities, "obsp['connectivities']")?;
    let root = match (root_cell, root_scores) {
        (Some(i), _) => Root::Cell(i),
        (None, Some(s)) => Root::Scores(s),
        (None, None) => Root::Auto,
    };
    let k = fitted.len();
    fn go<T: Scalar>(
        s: &VelocitySummaries,
        (distances, conn): (&cellfate_kernels::Csr, &cellfate_kernels::Csr),
        (ft, n, k): (&[T], usize, usize),
        lik: &[f64],
        root: &Root,
        opts: &LatentTimeOptions,
    ) -> Result<
        (
            cellfate_dynamics::latent_time::TerminalStates,
            cellfate_dynamics::latent_time::LatentTime,
        ),
        VelocityError,
    > {
        latent_time_from_graph(
            &s.graph,
            distances,
            conn,
            RowMajor::new("layers/fit_t", ft, n, k)?,
            lik,
            root,
            opts,
        )
    }
    let graphs = (&distances, &conn);
    let (ts, lt) = crate::run::run(py, || match &ft {
        Columns::F64(t) => go(&s, graphs, (t, n, k), &lik, &root, &opts),
        Columns::F32(t) => go(&s, graphs, (t, n, k), &lik, &root, &opts),
    })?
    .map_err(value_error)?;
    let d = PyDict::new(py);
    d.set_item("latent_time", lt.latent_time.into_pyarray(py))?;
    d.set_item("root_cells", ts.root_cells.into_pyarray(py))?;
    d.set_item("end_points", ts.end_points.into_pyarray(py))?;
    d.set_item("roots", lt.roots)?;
    d.set_item("roots_detected", lt.roots_detected)?;
    d.set_item("root_converged", ts.root_converged)?;
    d.set_item("end_converged", ts.end_converged)?;
    Ok(d)
}
