//! Kernels: computing a kernel spec on an in-memory AnnData, combining computed kernels, and
//! the transition matrix that crosses into the estimators.

use cellfate::adata::kernel_elements;
use cellfate::io::element::Element;
use cellfate_kernels::{Direction, Kernel, KernelOutput, KernelSpec, TransitionMatrix};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::convert;
use crate::errors::{kernel_error, transition_error};
use crate::source::{csr_from_parts, AdataSource};

/// A computed kernel: the validated row-stochastic transition matrix and the effective spec
/// (every estimated parameter filled in).
#[pyclass(module = "cellfate._core", name = "KernelResult", frozen)]
pub(crate) struct PyKernel {
    pub(crate) out: KernelOutput,
}

#[pymethods]
impl PyKernel {
    /// Number of cells.
    #[getter]
    fn n_cells(&self) -> usize {
        self.out.transition.n_cells()
    }

    /// Whether the kernel runs backward in time.
    #[getter]
    fn backward(&self) -> bool {
        self.out.transition.direction().is_backward()
    }

    /// The effective spec as JSON.
    #[getter]
    fn spec(&self) -> String {
        self.out.effective.to_json()
    }

    /// CellRank's class name of the kernel (`VelocityKernel`, `KernelAdd`, ...).
    #[getter]
    fn name(&self) -> &'static str {
        self.out.effective.name()
    }

    /// The matrix as SciPy CSR parts `(data, indices, indptr, (n, n))` (one copy: the
    /// arrays are Python's from here on).
    fn csr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::csr_parts(py, self.out.transition.as_csr())
    }

    /// The slots CellRank's `write_to_adata` fills: `obsp[key]` and `uns[key + "_params"]`
    /// (`key` defaults to `T_fwd`/`T_bwd`), as `(slot, element)` pairs.
    #[pyo3(signature = (key=None))]
    fn elements<'py>(&self, py: Python<'py>, key: Option<&str>) -> PyResult<Bound<'py, PyList>> {
        let mut v: Vec<(String, Element)> = Vec::new();
        kernel_elements(&mut v, &self.out, key);
        convert::slots(py, v)
    }
}

/// Computes the kernel `spec` (JSON, as `KernelSpec::to_json` writes it) on `adata`, with
/// the GIL released while it computes (the AnnData's slots are read as the kernel asks).
#[pyfunction]
pub(crate) fn compute_kernel(
    py: Python<'_>,
    spec: &str,
    adata: &Bound<'_, PyAny>,
) -> PyResult<PyKernel> {
    let spec = KernelSpec::from_json(spec).map_err(kernel_error)?;
    let source = AdataSource::new(adata)?;
    let out = crate::run::run(py, || spec.compute(&source))?.map_err(kernel_error)?;
    Ok(PyKernel { out })
}

/// CellRank's `w1 * k1 + w2 * k2 + ...` of computed kernels.
#[pyfunction]
pub(crate) fn kernel_sum(
    py: Python<'_>,
    terms: Vec<(f64, PyRef<'_, PyKernel>)>,
) -> PyResult<PyKernel> {
    let terms: Vec<(f64, KernelOutput)> = terms.iter().map(|(w, k)| (*w, k.out.clone())).collect();
    let out = crate::run::run(py, || KernelOutput::sum(terms))?.map_err(kernel_error)?;
    Ok(PyKernel { out })
}

/// CellRank's `k1 * k2 * ...` of computed kernels.
#[pyfunction]
pub(crate) fn kernel_product(
    py: Python<'_>,
    factors: Vec<PyRef<'_, PyKernel>>,
) -> PyResult<PyKernel> {
    let factors: Vec<KernelOutput> = factors.iter().map(|k| k.out.clone()).collect();
    let out = crate::run::run(py, || KernelOutput::product(factors))?.map_err(kernel_error)?;
    Ok(PyKernel { out })
}

/// A kernel from a transition matrix given as SciPy CSR parts and its spec (CellRank's
/// `from_adata`, or a `PrecomputedKernel` on a matrix in memory): the rows are checked to be
/// stochastic, not renormalised.
#[pyfunction]
pub(crate) fn kernel_from_csr(
    parts: &Bound<'_, PyAny>,
    spec: &str,
    backward: bool,
) -> PyResult<PyKernel> {
    let effective = KernelSpec::from_json(spec).map_err(kernel_error)?;
    let csr = csr_from_parts(parts, "transition matrix")?;
    let transition = TransitionMatrix::try_new(csr, Direction::from_backward(backward))
        .map_err(transition_error)?;
    Ok(PyKernel {
        out: KernelOutput {
            transition,
            effective,
        },
    })
}

/// The randomised control of a computed kernel (dynamo's `calc_rnd_vel`): the kernel's
/// effective spec recomputed on `adata` with every velocity it reads permuted across cells
/// with random signs (`seed`), and its score on `embedding` (cells × d, row-major) with the
/// neighbour graph `graph` (SciPy CSR parts). Returns the control kernel, the per-cell score,
/// and the mean coherences (real, control) and their difference.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub(crate) fn random_control(
    py: Python<'_>,
    kernel: PyRef<'_, PyKernel>,
    adata: &Bound<'_, PyAny>,
    seed: u64,
    embedding: crate::velocity::Matrix<'_>,
    graph: &Bound<'_, PyAny>,
) -> PyResult<(PyKernel, Vec<f64>, f64, f64, f64)> {
    use cellfate_kernels::random_control::{control_score, randomized_control};
    let source = AdataSource::new(adata)?;
    let graph = csr_from_parts(graph, "obsp['connectivities']")?;
    let (n, d) = embedding.shape();
    let all: Vec<usize> = (0..d).collect();
    let emb = cellfate_kernels::DenseMatrix::from_f64(n, d, embedding.gather(&all));
    let effective = kernel.out.effective.clone();
    let real = kernel.out.transition.clone();
    let (ctrl, s) = crate::run::run(py, || {
        let ctrl = randomized_control(&effective, &source, seed)?;
        let s = control_score(&real, &ctrl.transition, &emb, &graph);
        Ok::<_, cellfate_kernels::KernelError>((ctrl, s))
    })?
    .map_err(kernel_error)?;
    Ok((
        PyKernel { out: ctrl },
        s.per_cell,
        s.real,
        s.control,
        s.score,
    ))
}
