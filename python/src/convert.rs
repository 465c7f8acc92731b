//! AnnData elements ([`Element`]) as tagged Python tuples that `cellfate._elements` turns into
//! NumPy arrays, SciPy matrices, pandas objects and nested AnnData. The numeric buffers move
//! into NumPy without a copy (`into_pyarray`).

use cellfate::io::element::{Categories, Element, NumVec, SparseFormat};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// A flat vector as a 1-D NumPy array (moved, not copied).
fn numvec<'py>(py: Python<'py>, v: NumVec) -> Bound<'py, PyAny> {
    match v {
        NumVec::Bool(v) => v.into_pyarray(py).into_any(),
        NumVec::I8(v) => v.into_pyarray(py).into_any(),
        NumVec::I16(v) => v.into_pyarray(py).into_any(),
        NumVec::I32(v) => v.into_pyarray(py).into_any(),
        NumVec::I64(v) => v.into_pyarray(py).into_any(),
        NumVec::U8(v) => v.into_pyarray(py).into_any(),
        NumVec::U16(v) => v.into_pyarray(py).into_any(),
        NumVec::U32(v) => v.into_pyarray(py).into_any(),
        NumVec::U64(v) => v.into_pyarray(py).into_any(),
        NumVec::F32(v) => v.into_pyarray(py).into_any(),
        NumVec::F64(v) => v.into_pyarray(py).into_any(),
        NumVec::C128(v) => v.into_pyarray(py).into_any(),
    }
}

/// A flat vector reshaped to `shape` (row-major; a view of the moved buffer).
fn shaped<'py>(py: Python<'py>, v: NumVec, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    macro_rules! nd {
        ($v:expr) => {{
            let a = ArrayD::from_shape_vec(IxDyn(shape), $v)
                .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
            a.into_pyarray(py).into_any()
        }};
    }
    if shape.len() <= 1 {
        return Ok(numvec(py, v));
    }
    Ok(match v {
        NumVec::Bool(v) => nd!(v),
        NumVec::I8(v) => nd!(v),
        NumVec::I16(v) => nd!(v),
        NumVec::I32(v) => nd!(v),
        NumVec::I64(v) => nd!(v),
        NumVec::U8(v) => nd!(v),
        NumVec::U16(v) => nd!(v),
        NumVec::U32(v) => nd!(v),
        NumVec::U64(v) => nd!(v),
        NumVec::F32(v) => nd!(v),
        NumVec::F64(v) => nd!(v),
        NumVec::C128(v) => nd!(v),
    })
}

fn members<'py>(
    py: Python<'py>,
    tag: &str,
    m: Vec<(String, Element)>,
) -> PyResult<Bound<'py, PyAny>> {
    let list = PyList::empty(py);
    for (k, e) in m {
        list.append((k, element(py, e)?))?;
    }
    Ok((tag, list).into_pyobject(py)?.into_any())
}

/// Indices as int32 when they fit (SciPy's default), else int64.
fn index_array<'py>(py: Python<'py>, v: Vec<usize>) -> Bound<'py, PyAny> {
    if v.iter().all(|&x| x <= i32::MAX as usize) {
        let w: Vec<i32> = v.into_iter().map(|x| x as i32).collect();
        w.into_pyarray(py).into_any()
    } else {
        let w: Vec<i64> = v.into_iter().map(|x| x as i64).collect();
        w.into_pyarray(py).into_any()
    }
}

/// One element as a tagged tuple (see `cellfate/_elements.py` for the tags).
pub(crate) fn element(py: Python<'_>, e: Element) -> PyResult<Bound<'_, PyAny>> {
    Ok(match e {
        Element::Dense(d) => ("dense", shaped(py, d.data, &d.shape)?)
            .into_pyobject(py)?
            .into_any(),
        Element::Sparse(s) => {
            let fmt = match s.format {
                SparseFormat::Csr => "csr",
                SparseFormat::Csc => "csc",
            };
            let indices = index_array(py, s.indices.into_iter().map(|x| x as usize).collect());
            let indptr = index_array(py, s.indptr);
            let data = numvec(py, s.data);
            let parts = PyTuple::new(py, [data, indices, indptr])?;
            ("sparse", fmt, parts, (s.shape[0], s.shape[1]))
                .into_pyobject(py)?
                .into_any()
        }
        Element::Strings { shape, values } => {
            ("strings", values, shape).into_pyobject(py)?.into_any()
        }
        Element::Str(s) => ("str", s).into_pyobject(py)?.into_any(),
        Element::Scalar(v) => ("scalar", numvec(py, v)).into_pyobject(py)?.into_any(),
        Element::Categorical(c) => {
            let cats = match c.categories {
                Categories::Str(v) => v.into_pyobject(py)?.into_any(),
                Categories::Num(v) => numvec(py, v),
            };
            let codes = c.codes.into_pyarray(py);
            ("categorical", codes, cats, c.ordered)
                .into_pyobject(py)?
                .into_any()
        }
        Element::NullableInt { values, mask } => {
            let mask = mask.into_pyarray(py);
            ("nullable", numvec(py, values), mask)
                .into_pyobject(py)?
                .into_any()
        }
        Element::NullableBool { values, mask } => {
            let (v, m) = (values.into_pyarray(py), mask.into_pyarray(py));
            ("nullable", v, m).into_pyobject(py)?.into_any()
        }
        Element::NullableStr { values, mask } => {
            let m = mask.into_pyarray(py);
            ("nullable_str", values, m).into_pyobject(py)?.into_any()
        }
        Element::DataFrame(df) => {
            let cols = members(py, "columns", df.columns)?;
            ("dataframe", df.index_name, df.index, cols)
                .into_pyobject(py)?
                .into_any()
        }
        Element::Dict(m) => members(py, "dict", m)?,
        Element::Raw(m) => members(py, "raw", m)?,
        Element::AnnData(m) => members(py, "anndata", m)?,
    })
}

/// `(slot, element)` pairs as a list of `(slot, tagged tuple)`.
pub(crate) fn slots(py: Python<'_>, v: Vec<(String, Element)>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for (slot, e) in v {
        list.append((slot, element(py, e)?))?;
    }
    Ok(list)
}

/// A CSR matrix as SciPy's parts `(data, indices, indptr, shape)` (one copy: the arrays are
/// Python's from here on).
pub(crate) fn csr_parts<'py>(
    py: Python<'py>,
    c: &cellfate_kernels::Csr,
) -> PyResult<Bound<'py, PyAny>> {
    let data = c.data().to_vec().into_pyarray(py);
    let indices: Vec<i32> = c.indices().iter().map(|&x| x as i32).collect();
    let indptr: Vec<i64> = c.indptr().iter().map(|&x| x as i64).collect();
    Ok((
        data,
        indices.into_pyarray(py),
        indptr.into_pyarray(py),
        (c.nrows(), c.ncols()),
    )
        .into_pyobject(py)?
        .into_any())
}
