//! [`AdataSource`]: an in-memory `anndata.AnnData` as a [`CellSource`], read slot by slot
//! (only what a kernel asks for) through the helpers of `cellfate._source`, which hand over
//! NumPy arrays and SciPy's CSR parts as they are stored.

use std::sync::Arc;

use cellfate_kernels::{CellSource, Csr, DenseMatrix, SourceError};
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyModule;

/// A float array as stored: float32 stays float32 until it is widened where used.
#[derive(FromPyObject)]
pub(crate) enum Floats1<'py> {
    /// float64.
    F64(PyReadonlyArray1<'py, f64>),
    /// float32.
    F32(PyReadonlyArray1<'py, f32>),
}

impl Floats1<'_> {
    /// The values as `f64` (one converting copy).
    pub(crate) fn to_f64(&self) -> PyResult<Vec<f64>> {
        Ok(match self {
            Self::F64(a) => a.as_slice()?.to_vec(),
            Self::F32(a) => a.as_slice()?.iter().map(|&x| f64::from(x)).collect(),
        })
    }
}

/// An index array (SciPy uses int32 below 2³¹ entries, int64 above).
#[derive(FromPyObject)]
pub(crate) enum Indices1<'py> {
    /// int32.
    I32(PyReadonlyArray1<'py, i32>),
    /// int64.
    I64(PyReadonlyArray1<'py, i64>),
}

impl Indices1<'_> {
    fn to_usize(&self, what: &str) -> PyResult<Vec<usize>> {
        let bad = || PyTypeError::new_err(format!("{what}: negative index"));
        match self {
            Self::I32(a) => a
                .as_slice()?
                .iter()
                .map(|&x| usize::try_from(x).map_err(|_| bad()))
                .collect(),
            Self::I64(a) => a
                .as_slice()?
                .iter()
                .map(|&x| usize::try_from(x).map_err(|_| bad()))
                .collect(),
        }
    }
    fn to_u32(&self, what: &str) -> PyResult<Vec<u32>> {
        let bad = || PyTypeError::new_err(format!("{what}: index outside 0..2^32"));
        match self {
            Self::I32(a) => a
                .as_slice()?
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| bad()))
                .collect(),
            Self::I64(a) => a
                .as_slice()?
                .iter()
                .map(|&x| u32::try_from(x).map_err(|_| bad()))
                .collect(),
        }
    }
}

/// A C-ordered 2-D float array.
#[derive(FromPyObject)]
enum Floats2<'py> {
    F64(PyReadonlyArray2<'py, f64>),
    F32(PyReadonlyArray2<'py, f32>),
}

/// SciPy CSR parts `(data, indices, indptr, nrows, ncols)` as a validated [`Csr`] (rows are
/// sorted and duplicates summed, as SciPy does not guarantee either).
pub(crate) fn csr_from_parts(parts: &Bound<'_, PyAny>, what: &str) -> PyResult<Csr> {
    let (data, indices, indptr, nrows, ncols): (Floats1, Indices1, Indices1, usize, usize) =
        parts.extract()?;
    Csr::from_unsorted(
        nrows,
        ncols,
        indptr.to_usize(what)?,
        indices.to_u32(what)?,
        data.to_f64()?,
    )
    .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("{what}: {e}")))
}

/// A C-contiguous NumPy array's values, read in place: the array stays Python's, this holds a
/// strong reference to it for as long as a kernel reads it.
struct NumpyValues<T> {
    /// Keeps the array (and so its buffer) alive.
    _owner: Py<PyAny>,
    /// Address of the first element.
    addr: usize,
    /// Number of elements.
    len: usize,
    _type: std::marker::PhantomData<T>,
}

impl<T: numpy::Element> NumpyValues<T> {
    /// `None` when the array is not C-contiguous (the caller copies then).
    fn new(a: &numpy::PyReadonlyArray2<'_, T>) -> Option<Self> {
        let s = a.as_slice().ok()?;
        Some(Self {
            _owner: a.as_any().clone().unbind(),
            addr: s.as_ptr() as usize,
            len: s.len(),
            _type: std::marker::PhantomData,
        })
    }
}

#[allow(unsafe_code)]
impl<T> AsRef<[T]> for NumpyValues<T> {
    fn as_ref(&self) -> &[T] {
        // SAFETY: `addr` and `len` are those of the C-contiguous buffer of the array that
        // `_owner` keeps alive, taken from NumPy's own slice view of it; NumPy never moves or
        // frees the buffer of a live array (`resize` refuses while other references exist).
        // As in any extension that releases the GIL, Python code writing into the array while
        // a computation reads it is the caller's race.
        unsafe { std::slice::from_raw_parts(self.addr as *const T, self.len) }
    }
}

/// A 2-D float array as a [`DenseMatrix`]: read in place when C-contiguous (no copy), else
/// copied once.
fn dense_from(a: &Bound<'_, PyAny>) -> PyResult<DenseMatrix> {
    Ok(match a.extract::<Floats2>()? {
        Floats2::F64(x) => {
            let (r, c) = (x.shape()[0], x.shape()[1]);
            match NumpyValues::new(&x) {
                Some(v) => DenseMatrix::from_shared_f64(r, c, Arc::new(v)),
                None => DenseMatrix::from_f64(r, c, x.as_array().iter().copied().collect()),
            }
        }
        Floats2::F32(x) => {
            let (r, c) = (x.shape()[0], x.shape()[1]);
            match NumpyValues::new(&x) {
                Some(v) => DenseMatrix::from_shared_f32(r, c, Arc::new(v)),
                None => DenseMatrix::from_f32(r, c, x.as_array().iter().copied().collect()),
            }
        }
    })
}

/// An `AnnData` held by Python. Every read takes the GIL for the time of the conversion, so
/// the computation around it can run with the GIL released.
pub(crate) struct AdataSource {
    adata: Py<PyAny>,
    helpers: Py<PyModule>,
    n_cells: usize,
    n_genes: usize,
}

impl AdataSource {
    pub(crate) fn new(adata: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = adata.py();
        let helpers = py.import("cellfate._source")?;
        let (n_cells, n_genes): (usize, usize) = adata.getattr("shape")?.extract()?;
        Ok(Self {
            adata: adata.clone().unbind(),
            helpers: helpers.unbind(),
            n_cells,
            n_genes,
        })
    }

    /// Calls `cellfate._source.<f>(adata, key)` and converts its result; a `KeyError` becomes
    /// [`SourceError::Missing`] with the slot's keys, a `ValueError`/`TypeError`
    /// [`SourceError::Invalid`].
    fn read<T>(
        &self,
        f: &str,
        slot: &str,
        key: &str,
        convert: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> Result<T, SourceError> {
        Python::attach(|py| {
            let helpers = self.helpers.bind(py);
            let adata = self.adata.bind(py);
            let res = helpers
                .call_method1(f, (adata, key))
                .and_then(|v| convert(&v));
            res.map_err(|e| {
                if e.is_instance_of::<PyKeyError>(py) {
                    let available = helpers
                        .call_method1("available", (adata, slot))
                        .and_then(|v| v.extract::<Vec<String>>())
                        .unwrap_or_default();
                    SourceError::Missing {
                        slot: slot.into(),
                        key: key.into(),
                        available,
                    }
                } else {
                    SourceError::Invalid {
                        slot: slot.into(),
                        key: key.into(),
                        expected: expected(f).into(),
                        found: e.value(py).to_string(),
                    }
                }
            })
        })
    }
}

fn expected(f: &str) -> &'static str {
    match f {
        "graph" => "a sparse cells x cells matrix",
        "obs_f64" => "a numeric column",
        "obs_labels" | "obs_categories" => "a categorical or string column",
        "layer" | "obsm" => "a 2-D numeric array with a row per cell",
        "var_mask" => "a boolean column",
        _ => "a 2-D numeric array",
    }
}

impl CellSource for AdataSource {
    fn n_cells(&self) -> usize {
        self.n_cells
    }
    fn n_genes(&self) -> usize {
        self.n_genes
    }
    fn graph(&self, key: &str) -> Result<Csr, SourceError> {
        self.read("graph", "obsp", key, |v| {
            csr_from_parts(v, &format!("obsp[{key:?}]"))
        })
    }
    fn obs_f64(&self, key: &str) -> Result<Vec<f64>, SourceError> {
        self.read("obs_f64", "obs", key, |v| v.extract::<Floats1>()?.to_f64())
    }
    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, SourceError> {
        self.read("obs_labels", "obs", key, |v| v.extract())
    }
    fn layer(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        self.read("layer", "layers", key, dense_from)
    }
    fn obsm(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        self.read("obsm", "obsm", key, dense_from)
    }
    fn var_mask(&self, key: &str) -> Result<Option<Vec<bool>>, SourceError> {
        self.read("var_mask", "var", key, |v| v.extract())
    }
    fn obs_categories(&self, key: &str) -> Result<Vec<String>, SourceError> {
        self.read("obs_categories", "obs", key, |v| v.extract())
    }
    fn uns_matrix(&self, key: &str) -> Result<Option<DenseMatrix>, SourceError> {
        self.read("uns_matrix", "uns", key, |v| {
            if v.is_none() {
                Ok(None)
            } else {
                dense_from(v).map(Some)
            }
        })
    }
}
