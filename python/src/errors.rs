//! The library's typed errors as the Python exceptions CellRank raises for the same cause:
//! `KeyError` for a missing AnnData key or unknown state/lineage name, `ValueError` for a
//! parameter or input out of range, `RuntimeError` for a stage called too early or a
//! numerical failure. The message is the library's.

use cellfate_estimators::drivers::DriversError;
use cellfate_estimators::states::StatesError;
use cellfate_estimators::EstimatorError;
use cellfate_kernels::{KernelError, SourceError, TransitionError};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// A kernel error.
pub(crate) fn kernel_error(e: KernelError) -> PyErr {
    let msg = e.to_string();
    match &e {
        KernelError::MissingInput { source, .. }
            if matches!(**source, SourceError::Missing { .. }) =>
        {
            PyKeyError::new_err(msg)
        }
        KernelError::UnknownKernel { .. } | KernelError::UnknownParam { .. } => {
            PyValueError::new_err(msg)
        }
        KernelError::InvalidParam { .. }
        | KernelError::InvalidParamValue { .. }
        | KernelError::InvalidWeight { .. }
        | KernelError::ZeroWeights { .. }
        | KernelError::MixedDirections { .. }
        | KernelError::EmptyCombination { .. }
        | KernelError::CellCountMismatch { .. }
        | KernelError::InvalidInput { .. }
        | KernelError::MissingInput { .. }
        | KernelError::SpecJson { .. }
        | KernelError::Expression { .. } => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// A transition matrix that is not one.
pub(crate) fn transition_error(e: TransitionError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// An estimator error.
pub(crate) fn estimator_error(e: EstimatorError) -> PyErr {
    let msg = e.to_string();
    match &e {
        EstimatorError::NotComputed { .. } => PyRuntimeError::new_err(msg),
        EstimatorError::Parameter { .. } | EstimatorError::States { .. } => {
            PyValueError::new_err(msg)
        }
        EstimatorError::StateSelection(s) => match s {
            StatesError::UnknownState { .. } => PyKeyError::new_err(msg),
            StatesError::NoneStable { .. } => PyRuntimeError::new_err(msg),
            _ => PyValueError::new_err(msg),
        },
        EstimatorError::Drivers(d) => match d {
            DriversError::UnknownLineage { .. } => PyKeyError::new_err(msg),
            _ => PyValueError::new_err(msg),
        },
        _ => PyRuntimeError::new_err(msg),
    }
}
