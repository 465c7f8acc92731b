//! The estimator types (`Gpcca`, `Cflare`) behind CellRank's `GPCCA` and `CFLARE`. Options
//! arrive as JSON of the library's serde option structs (the same structs TOML configs and the
//! CLI's flags fill), so they are validated once, in one place; stages run with the GIL
//! released and their results leave as the AnnData elements the CLI writes.

use cellfate::adata::{cflare_elements, gpcca_elements, Names};
use cellfate::io::element::Element;
use cellfate_estimators::absorption::{AbsorptionOptions, PrimingMethod};
use cellfate_estimators::cflare::CflareOptions;
use cellfate_estimators::drivers::Expression;
use cellfate_estimators::schur::SchurOptions;
use cellfate_estimators::states::{ClusterReference, TerminalMethod};
use cellfate_estimators::{
    AbsorptionTimesOptions, Cflare, DriverOptions, Estimator, EstimatorError, Gpcca,
    MacrostatesOptions, NStates, StatesInput, TerminalOptions,
};
use numpy::{PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;
use serde::de::DeserializeOwned;

use crate::convert;
use crate::errors::estimator_error;
use crate::kernel::PyKernel;
use crate::slots::AdataSlots;
use crate::source::csr_from_parts;

/// Options from JSON; an unknown or ill-typed field is a `ValueError` naming it.
fn options<T: DeserializeOwned>(json: &str, what: &str) -> PyResult<T> {
    serde_json::from_str(json).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// A cluster reference: labels per cell, categories in order, colours.
type ClusterArgs = (Vec<Option<String>>, Vec<String>, Option<Vec<String>>);

fn reference(c: &Option<ClusterArgs>) -> Option<ClusterReference<'_>> {
    c.as_ref()
        .map(|(labels, categories, colors)| ClusterReference {
            labels,
            categories,
            colors: colors.as_deref(),
        })
}

/// Gene expression for the drivers: SciPy CSR parts, or a C-ordered float64 array.
#[derive(FromPyObject)]
enum ExpressionArg<'py> {
    Dense(PyReadonlyArray2<'py, f64>),
    Sparse(Bound<'py, PyAny>),
}

/// Runs `f` on the estimator with the GIL released and Ctrl-C honoured ([`crate::run`]).
fn detached<E: Send, T: Send>(
    py: Python<'_>,
    e: &mut E,
    f: impl FnOnce(&mut E) -> Result<T, EstimatorError> + Send,
) -> PyResult<T> {
    crate::run::run(py, || f(e))?.map_err(estimator_error)
}

/// What every estimator shares (terminal states by hand, absorption, priming, drivers).
macro_rules! shared_methods {
    ($t:ty) => {
        #[pymethods]
        impl $t {
            /// Notes and warnings gathered by the stages.
            #[getter]
            fn notes(&self) -> Vec<String> {
                self.inner.notes().to_vec()
            }

            /// Terminal states by hand from per-cell labels (`None` = not terminal), in
            /// `states` order (first-seen order when `None`).
            #[pyo3(signature = (labels, states=None, colors=None))]
            fn set_terminal_states_labels(
                &mut self,
                py: Python<'_>,
                labels: Vec<Option<String>>,
                states: Option<Vec<String>>,
                colors: Option<Vec<String>>,
            ) -> PyResult<()> {
                let input = StatesInput::Labels {
                    labels,
                    states,
                    colors,
                };
                detached(py, &mut self.inner, |g| {
                    g.set_terminal_states(input).map(|_| ())
                })
            }

            /// Terminal states by hand from cell indices per state.
            fn set_terminal_states_cells(
                &mut self,
                py: Python<'_>,
                cells: Vec<(String, Vec<usize>)>,
            ) -> PyResult<()> {
                let input = StatesInput::Cells(cells.into_iter().collect());
                detached(py, &mut self.inner, |g| {
                    g.set_terminal_states(input).map(|_| ())
                })
            }

            /// Fate probabilities (`options`: JSON of `AbsorptionOptions`).
            fn compute_fate_probabilities(
                &mut self,
                py: Python<'_>,
                options_json: &str,
            ) -> PyResult<()> {
                let o: AbsorptionOptions = options(options_json, "compute_fate_probabilities")?;
                detached(py, &mut self.inner, |g| {
                    g.compute_fate_probabilities(&o).map(|_| ())
                })
            }

            /// Absorption times (`options`: JSON of `AbsorptionTimesOptions`).
            fn compute_absorption_times(
                &mut self,
                py: Python<'_>,
                options_json: &str,
            ) -> PyResult<()> {
                let o: AbsorptionTimesOptions = options(options_json, "compute_absorption_times")?;
                detached(py, &mut self.inner, |g| {
                    g.compute_absorption_times(&o).map(|_| ())
                })
            }

            /// Lineage priming (`method`: `kl_divergence` or `entropy`; `early`: a mask).
            #[pyo3(signature = (method, early=None))]
            fn compute_lineage_priming(
                &mut self,
                py: Python<'_>,
                method: &str,
                early: Option<Vec<bool>>,
            ) -> PyResult<()> {
                let m: PrimingMethod = options(&format!("{method:?}"), "method")?;
                detached(py, &mut self.inner, |g| {
                    g.compute_lineage_priming(m, early.as_deref()).map(|_| ())
                })
            }

            /// Lineage drivers against `expression` (cells × genes; SciPy CSR parts or a
            /// float64 array) (`options`: JSON of `DriverOptions`).
            fn compute_lineage_drivers(
                &mut self,
                py: Python<'_>,
                expression: ExpressionArg<'_>,
                options_json: &str,
            ) -> PyResult<()> {
                let o: DriverOptions = options(options_json, "compute_lineage_drivers")?;
                match expression {
                    ExpressionArg::Dense(a) => {
                        let (n_cells, n_genes) = (a.shape()[0], a.shape()[1]);
                        let values = a.as_slice()?;
                        let x = Expression::Dense {
                            n_cells,
                            n_genes,
                            values,
                        };
                        detached(py, &mut self.inner, |g| {
                            g.compute_lineage_drivers(&x, &o).map(|_| ())
                        })
                    }
                    ExpressionArg::Sparse(parts) => {
                        let csr = csr_from_parts(&parts, "expression")?;
                        let x = Expression::Sparse(&csr);
                        detached(py, &mut self.inner, |g| {
                            g.compute_lineage_drivers(&x, &o).map(|_| ())
                        })
                    }
                }
            }

            /// Everything computed so far as the `(slot, element)` pairs the CLI writes
            /// (CellRank's keys).
            fn elements<'py>(
                &self,
                py: Python<'py>,
                obs_names: Vec<String>,
                var_names: Vec<String>,
            ) -> PyResult<Bound<'py, PyList>> {
                let names = Names {
                    obs: obs_names,
                    var: var_names,
                };
                let mut v: Vec<(String, Element)> = Vec::new();
                Self::write_elements(&mut v, &names, &self.inner).map_err(estimator_error)?;
                convert::slots(py, v)
            }

            /// Names of the terminal states (empty before they are set).
            #[getter]
            fn terminal_state_names(&self) -> Vec<String> {
                self.inner
                    .terminal_states()
                    .map(|t| t.names.clone())
                    .unwrap_or_default()
            }
        }
    };
}

/// CellRank's `GPCCA` over a computed kernel.
#[pyclass(module = "cellfate._core", name = "Gpcca")]
pub(crate) struct PyGpcca {
    inner: Gpcca,
}

shared_methods!(PyGpcca);

impl PyGpcca {
    /// The library's writer of this estimator's elements.
    fn write_elements(
        v: &mut Vec<(String, Element)>,
        names: &Names,
        g: &Gpcca,
    ) -> Result<(), EstimatorError> {
        gpcca_elements(v, names, g)
    }
}

#[pymethods]
impl PyGpcca {
    #[new]
    fn new(kernel: PyRef<'_, PyKernel>) -> Self {
        Self {
            inner: Gpcca::new(kernel.out.transition.clone()),
        }
    }

    /// Restores an estimator from the slots of an in-memory AnnData (CellRank's
    /// `GPCCA.from_adata`; the library's `read_gpcca`).
    #[staticmethod]
    fn from_adata(adata: &Bound<'_, PyAny>, obsp_key: &str) -> PyResult<Self> {
        let slots = AdataSlots::new(adata)?;
        Ok(Self {
            inner: cellfate::adata::read_gpcca(&slots, obsp_key)?,
        })
    }

    /// The sorted real Schur decomposition (`options`: JSON of `SchurOptions`).
    fn compute_schur(&mut self, py: Python<'_>, options_json: &str) -> PyResult<()> {
        let o: SchurOptions = options(options_json, "compute_schur")?;
        detached(py, &mut self.inner, |g| g.compute_schur(&o).map(|_| ()))
    }

    /// Eigenvalues `(re, im)` of the Schur form, computed with `k` vectors if needed.
    fn compute_eigendecomposition(
        &mut self,
        py: Python<'_>,
        k: usize,
    ) -> PyResult<Vec<(f64, f64)>> {
        detached(py, &mut self.inner, |g| {
            g.compute_eigendecomposition(k).map(<[_]>::to_vec)
        })
    }

    /// Macrostates: `n_states` as text (`8`, `3..6`, `eigengap`, `auto`), `options` JSON of
    /// `MacrostatesOptions`, clusters naming the states.
    #[pyo3(signature = (n_states, options_json, clusters=None))]
    fn compute_macrostates(
        &mut self,
        py: Python<'_>,
        n_states: &str,
        options_json: &str,
        clusters: Option<ClusterArgs>,
    ) -> PyResult<()> {
        let n: NStates =
            n_states
                .parse()
                .map_err(|e: cellfate_estimators::estimator::NStatesParseError| {
                    PyValueError::new_err(e.to_string())
                })?;
        let o: MacrostatesOptions = options(options_json, "compute_macrostates")?;
        let c = reference(&clusters);
        detached(py, &mut self.inner, |g| {
            g.compute_macrostates(n, &o, c).map(|_| ())
        })
    }

    /// Terminal states among the macrostates (`method`: JSON of `TerminalMethod`; `options`:
    /// JSON of `TerminalOptions`).
    fn predict_terminal_states(
        &mut self,
        py: Python<'_>,
        method_json: &str,
        options_json: &str,
    ) -> PyResult<()> {
        let m: TerminalMethod = options(method_json, "predict_terminal_states")?;
        let o: TerminalOptions = options(options_json, "predict_terminal_states")?;
        detached(py, &mut self.inner, |g| {
            g.predict_terminal_states(&m, &o).map(|_| ())
        })
    }

    /// Terminal states by macrostate names, `n_cells` most likely cells each.
    fn set_terminal_states_names(
        &mut self,
        py: Python<'_>,
        names: Vec<String>,
        n_cells: usize,
    ) -> PyResult<()> {
        let input = StatesInput::Macrostates { names, n_cells };
        detached(py, &mut self.inner, |g| {
            g.set_terminal_states(input).map(|_| ())
        })
    }

    /// Initial states: the `n_states` least stationary macrostates.
    fn predict_initial_states(
        &mut self,
        py: Python<'_>,
        n_states: usize,
        n_cells: usize,
    ) -> PyResult<()> {
        detached(py, &mut self.inner, |g| {
            g.predict_initial_states(n_states, n_cells).map(|_| ())
        })
    }

    /// Names of the macrostates (empty before they are computed).
    #[getter]
    fn macrostate_names(&self) -> Vec<String> {
        self.inner
            .macrostates()
            .map(|m| m.states.names.clone())
            .unwrap_or_default()
    }
}

/// CellRank's `CFLARE` over a computed kernel.
#[pyclass(module = "cellfate._core", name = "Cflare")]
pub(crate) struct PyCflare {
    inner: Cflare,
}

shared_methods!(PyCflare);

impl PyCflare {
    /// The library's writer of this estimator's elements.
    fn write_elements(
        v: &mut Vec<(String, Element)>,
        names: &Names,
        c: &Cflare,
    ) -> Result<(), EstimatorError> {
        cflare_elements(v, names, c)
    }
}

#[pymethods]
impl PyCflare {
    #[new]
    fn new(kernel: PyRef<'_, PyKernel>) -> Self {
        Self {
            inner: Cflare::new(kernel.out.transition.clone()),
        }
    }

    /// Restores an estimator from the slots of an in-memory AnnData (CellRank's
    /// `CFLARE.from_adata`; the library's `read_cflare`).
    #[staticmethod]
    fn from_adata(adata: &Bound<'_, PyAny>, obsp_key: &str) -> PyResult<Self> {
        let slots = AdataSlots::new(adata)?;
        Ok(Self {
            inner: cellfate::adata::read_cflare(&slots, obsp_key)?,
        })
    }

    /// The top `k` eigenvalues `(re, im)` (left eigenvectors kept for `predict`).
    fn compute_eigendecomposition(
        &mut self,
        py: Python<'_>,
        k: usize,
    ) -> PyResult<Vec<(f64, f64)>> {
        detached(py, &mut self.inner, |c| {
            c.compute_eigendecomposition(k)
                .map(|e| e.eigenvalues.clone())
        })
    }

    /// Terminal states by clustering the left eigenvectors (`options`: JSON of
    /// `CflareOptions`).
    #[pyo3(signature = (options_json, clusters=None))]
    fn predict(
        &mut self,
        py: Python<'_>,
        options_json: &str,
        clusters: Option<ClusterArgs>,
    ) -> PyResult<()> {
        let o: CflareOptions = options(options_json, "predict")?;
        let c = reference(&clusters);
        detached(py, &mut self.inner, |e| e.predict(&o, c).map(|_| ()))
    }
}
