//! [`AdataSlots`]: an in-memory AnnData as a [`SlotSource`] for the estimators'
//! `from_adata`. `cellfate._slots.read` hands over one slot as a tagged tuple (the reverse of
//! [`crate::convert`]); this file turns it into the library's [`Element`].

use cellfate::adata::SlotSource;
use cellfate::io::element::{Categorical, Categories, DataFrame, DenseArray, Element, NumVec};
use cellfate_estimators::EstimatorError;
use cellfate_kernels::{Direction, TransitionMatrix};
use numpy::{Complex64, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyModule;

use crate::errors::estimator_error;
use crate::source::csr_from_parts;

/// A numeric array as stored.
#[derive(FromPyObject)]
enum AnyArray<'py> {
    F64(PyReadonlyArrayDyn<'py, f64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    Bool(PyReadonlyArrayDyn<'py, bool>),
    C128(PyReadonlyArrayDyn<'py, Complex64>),
}

fn dense(a: AnyArray<'_>) -> Element {
    macro_rules! d {
        ($a:expr, $v:ident) => {{
            let shape = $a.shape().to_vec();
            let data = $a.as_array().iter().cloned().collect();
            Element::Dense(DenseArray {
                shape,
                data: NumVec::$v(data),
            })
        }};
    }
    match a {
        AnyArray::F64(a) => d!(a, F64),
        AnyArray::F32(a) => d!(a, F32),
        AnyArray::I64(a) => d!(a, I64),
        AnyArray::I32(a) => d!(a, I32),
        AnyArray::Bool(a) => d!(a, Bool),
        AnyArray::C128(a) => d!(a, C128),
    }
}

/// A tagged tuple from `cellfate._slots` as an [`Element`].
pub(crate) fn element(t: &Bound<'_, PyAny>) -> PyResult<Element> {
    let tag: String = t.get_item(0)?.extract()?;
    Ok(match tag.as_str() {
        "dense" => dense(t.get_item(1)?.extract()?),
        "strings" => {
            let values: Vec<String> = t.get_item(1)?.extract()?;
            Element::Strings {
                shape: vec![values.len()],
                values,
            }
        }
        "str" => Element::Str(t.get_item(1)?.extract()?),
        "scalar" => Element::Scalar(NumVec::F64(vec![t.get_item(1)?.extract()?])),
        "categorical" => {
            let codes: Vec<i32> = t.get_item(1)?.extract()?;
            let categories: Vec<String> = t.get_item(2)?.extract()?;
            Element::Categorical(Categorical {
                codes,
                categories: Categories::Str(categories),
                ordered: t.get_item(3)?.extract()?,
            })
        }
        "dataframe" => {
            let mut df = DataFrame::with_index(t.get_item(1)?.extract()?);
            let cols: Vec<(String, Bound<'_, PyAny>)> = t.get_item(2)?.extract()?;
            for (name, col) in cols {
                df.set_column(&name, element(&col)?);
            }
            Element::DataFrame(df)
        }
        "dict" => {
            let members: Vec<(String, Bound<'_, PyAny>)> = t.get_item(1)?.extract()?;
            Element::Dict(
                members
                    .into_iter()
                    .map(|(k, v)| element(&v).map(|e| (k, e)))
                    .collect::<PyResult<_>>()?,
            )
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "cellfate._slots: unknown tag {other:?}"
            )))
        }
    })
}

/// Why reading a slot of an in-memory AnnData failed.
#[derive(Debug)]
pub(crate) enum SlotsError {
    /// A Python exception (missing key, wrong type).
    Py(PyErr),
    /// The estimator refused what was read.
    Estimator(EstimatorError),
}

impl From<EstimatorError> for SlotsError {
    fn from(e: EstimatorError) -> Self {
        Self::Estimator(e)
    }
}

impl From<SlotsError> for PyErr {
    fn from(e: SlotsError) -> Self {
        match e {
            SlotsError::Py(e) => e,
            SlotsError::Estimator(e) => estimator_error(e),
        }
    }
}

/// An AnnData held by Python, read slot by slot (with the GIL held: `from_adata` is quick).
pub(crate) struct AdataSlots<'py> {
    pub(crate) adata: Bound<'py, PyAny>,
    pub(crate) helpers: Bound<'py, PyModule>,
}

impl<'py> AdataSlots<'py> {
    pub(crate) fn new(adata: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(Self {
            adata: adata.clone(),
            helpers: adata.py().import("cellfate._slots")?,
        })
    }
}

impl SlotSource for AdataSlots<'_> {
    type Error = SlotsError;

    fn exists(&self, slot: &str) -> bool {
        self.helpers
            .call_method1("exists", (&self.adata, slot))
            .and_then(|v| v.extract())
            .unwrap_or(false)
    }

    fn read(&self, slot: &str) -> Result<Element, SlotsError> {
        self.helpers
            .call_method1("read", (&self.adata, slot))
            .and_then(|t| element(&t))
            .map_err(SlotsError::Py)
    }

    fn slot_error(&self, slot: &str, message: impl Into<String>) -> SlotsError {
        SlotsError::Py(PyValueError::new_err(format!("{slot}: {}", message.into())))
    }

    fn transition_matrix(&self, key: &str) -> Result<TransitionMatrix, SlotsError> {
        let slot = format!("obsp/{key}");
        let parts = self
            .helpers
            .call_method1("csr", (&self.adata, key))
            .map_err(|e| {
                if e.is_instance_of::<PyKeyError>(self.adata.py()) {
                    SlotsError::Py(PyKeyError::new_err(format!("{slot}: not found")))
                } else {
                    SlotsError::Py(e)
                }
            })?;
        let csr = csr_from_parts(&parts, &slot).map_err(SlotsError::Py)?;
        let direction = if key.ends_with("bwd") {
            Direction::Backward
        } else {
            Direction::Forward
        };
        TransitionMatrix::try_new(csr, direction).map_err(|e| {
            self.slot_error(
                &slot,
                format!("expected a row-stochastic transition matrix: {e}"),
            )
        })
    }
}
