//! In-silico perturbation on an in-memory AnnData (`cellfate.pd.perturbation`,
//! `cellfate.pd.perturbation_screen`): the Python side gathers the run's kernel, terminal
//! states, genes, clusters and velocity model (or vector field); `cellfate::perturb` computes
//! and names the results (the same slots `cellfate perturb` writes into files).

use cellfate::perturb::{
    outcome_slots, run_screen, screen_slots, PerturbError, PerturbInput, PerturbReport,
    PerturbSpec, Prepared,
};
use cellfate::vectorfield::VectorField;
use cellfate_kernels::DenseMatrix;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::convert;
use crate::kernel::PyKernel;
use crate::source::AdataSource;
use crate::vectorfield::rows;
use crate::velocity::Matrix;

fn perturb_error(e: PerturbError) -> PyErr {
    let msg = e.to_string();
    if msg.contains("no such gene") {
        PyKeyError::new_err(msg)
    } else {
        PyValueError::new_err(msg)
    }
}

/// The vector field `(X_ctrl, C, beta)` with the cells' positions and velocities in its basis.
type FieldArgs<'py> = (
    Matrix<'py>,
    Matrix<'py>,
    f64,
    Matrix<'py>,
    Matrix<'py>,
    String,
);

/// One perturbation (`spec.genes`) or a screen (`screen_genes`, each perturbed alone): the
/// report as JSON and the slots to write.
#[pyfunction]
#[pyo3(signature = (adata, spec_json, kernel, terminal, var_names, clusters, dynamical, velocity_gamma, fit_rates, field, log1p, embedding, screen_genes))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn perturb<'py>(
    py: Python<'py>,
    adata: &Bound<'py, PyAny>,
    spec_json: &str,
    kernel: PyRef<'_, PyKernel>,
    terminal: (Vec<Option<String>>, Vec<String>),
    var_names: Vec<String>,
    clusters: Option<(Vec<Option<String>>, Vec<String>)>,
    dynamical: bool,
    velocity_gamma: Option<Vec<f64>>,
    fit_rates: Option<(Vec<f64>, Vec<f64>)>,
    field: Option<FieldArgs<'_>>,
    log1p: bool,
    embedding: Option<(String, Matrix<'_>)>,
    screen_genes: Option<Vec<String>>,
) -> PyResult<(String, Bound<'py, PyList>)> {
    let spec: PerturbSpec = serde_json::from_str(spec_json)
        .map_err(|e| PyValueError::new_err(format!("perturbation settings: {e}")))?;
    let field = match field {
        None => None,
        Some((ctrl, coef, beta, x, v, basis)) => {
            let (_, d, c) = rows(&ctrl);
            let (_, _, k) = rows(&coef);
            let f = VectorField::new(d, c, k, beta)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let (_, dx, xv) = rows(&x);
            let (_, dv, vv) = rows(&v);
            if dx != d || dv != d {
                return Err(PyValueError::new_err(format!(
                    "the field has {d} dimensions, the positions {dx} and the velocities {dv}"
                )));
            }
            Some((f, xv, vv, basis))
        }
    };
    let embedding = embedding.map(|(name, m)| {
        let (n, d, v) = rows(&m);
        (name, DenseMatrix::from_f64(n, d, v))
    });
    let source = AdataSource::new(adata)?;
    let input = PerturbInput {
        source: &source,
        name: "adata".into(),
        kernel: kernel.out.clone(),
        terminal,
        var_names,
        clusters,
        dynamical,
        velocity_gamma,
        fit_rates,
        field,
        log1p,
    };
    let result = crate::run::run(py, || -> Result<_, PerturbError> {
        let p = Prepared::from_input(input, &spec)?;
        let mut report = PerturbReport {
            outcome: None,
            screen: Vec::new(),
            skipped: Vec::new(),
            lineages: p.lineages.clone(),
        };
        let slots = match &screen_genes {
            Some(genes) => {
                let (rows, skipped) = run_screen(&p, genes);
                report.screen = rows;
                report.skipped = skipped;
                screen_slots(&p, &spec, &report)
            }
            None => {
                let o = p.perturb(&spec.genes)?;
                let slots = outcome_slots(&p, &spec, &o, embedding.as_ref());
                report.outcome = Some(o);
                slots
            }
        };
        Ok((serde_json::to_string(&report).unwrap_or_default(), slots))
    })?
    .map_err(perturb_error)?;
    Ok((result.0, convert::slots(py, result.1)?))
}
