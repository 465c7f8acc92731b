//! The in-memory model of AnnData elements, as the on-disk `.h5ad` format defines them
//! (anndata's "encoding types": `array`, `csr_matrix`, `csc_matrix`, `string-array`,
//! `categorical`, `nullable-*`, `dataframe`, `dict`, `raw`, scalars).
//!
//! Numeric data keeps its stored dtype (float32 stays float32) so that a read → write → read
//! round trip is lossless; [`NumVec::to_f64`] converts for computation.

use cellfate_kernels::{Csr, CsrError};

/// A typed numeric vector, one variant per HDF5 dtype anndata writes.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum NumVec {
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Complex numbers (numpy complex128; h5py's compound `{r, i}`).
    C128(Vec<num_complex::Complex64>),
}

macro_rules! numvec_dispatch {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            NumVec::Bool($v) => $body,
            NumVec::I8($v) => $body,
            NumVec::I16($v) => $body,
            NumVec::I32($v) => $body,
            NumVec::I64($v) => $body,
            NumVec::U8($v) => $body,
            NumVec::U16($v) => $body,
            NumVec::U32($v) => $body,
            NumVec::U64($v) => $body,
            NumVec::F32($v) => $body,
            NumVec::F64($v) => $body,
            NumVec::C128($v) => $body,
        }
    };
}

/// Conversion of a stored scalar to `f64` (bool as 0/1; 64-bit integers may round).
pub(crate) trait ToF64: Copy {
    fn to_f64(self) -> f64;
}
macro_rules! impl_to_f64 {
    ($($t:ty),*) => { $(impl ToF64 for $t { #[allow(clippy::cast_lossless)] fn to_f64(self) -> f64 { self as f64 } })* };
}
impl_to_f64!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);
impl ToF64 for num_complex::Complex64 {
    /// The real part.
    fn to_f64(self) -> f64 {
        self.re
    }
}
impl ToF64 for bool {
    fn to_f64(self) -> f64 {
        if self {
            1.0
        } else {
            0.0
        }
    }
}

impl NumVec {
    /// Number of values.
    pub fn len(&self) -> usize {
        numvec_dispatch!(self, v => v.len())
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the values in memory (about what they take uncompressed in a file).
    pub fn nbytes(&self) -> usize {
        numvec_dispatch!(self, v => std::mem::size_of_val(v.as_slice()))
    }

    /// The numpy name of the dtype (`float32`, `int64`, `bool`, ...).
    pub fn dtype(&self) -> &'static str {
        match self {
            Self::Bool(_) => "bool",
            Self::I8(_) => "int8",
            Self::I16(_) => "int16",
            Self::I32(_) => "int32",
            Self::I64(_) => "int64",
            Self::U8(_) => "uint8",
            Self::U16(_) => "uint16",
            Self::U32(_) => "uint32",
            Self::U64(_) => "uint64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::C128(_) => "complex128",
        }
    }

    /// All values as `f64`.
    pub fn to_f64(&self) -> Vec<f64> {
        numvec_dispatch!(self, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// [`Self::to_f64`], moving the vector when it already holds `f64`.
    pub fn into_f64(self) -> Vec<f64> {
        match self {
            Self::F64(v) => v,
            other => other.to_f64(),
        }
    }

    /// Value `i` as `f64`. Panics when out of range.
    pub fn get_f64(&self, i: usize) -> f64 {
        numvec_dispatch!(self, v => v[i].to_f64())
    }

    /// True for float dtypes.
    pub fn is_float(&self) -> bool {
        matches!(self, Self::F32(_) | Self::F64(_))
    }
}

impl PartialEq for NumVec {
    /// Bitwise equality for floats (so NaN equals NaN and `-0.0 != 0.0`): the notion of
    /// "lossless" used by round-trip tests.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::F32(a), Self::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Self::F64(a), Self::F64(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Self::C128(a), Self::C128(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| {
                        x.re.to_bits() == y.re.to_bits() && x.im.to_bits() == y.im.to_bits()
                    })
            }
            (Self::Bool(a), Self::Bool(b)) => a == b,
            (Self::I8(a), Self::I8(b)) => a == b,
            (Self::I16(a), Self::I16(b)) => a == b,
            (Self::I32(a), Self::I32(b)) => a == b,
            (Self::I64(a), Self::I64(b)) => a == b,
            (Self::U8(a), Self::U8(b)) => a == b,
            (Self::U16(a), Self::U16(b)) => a == b,
            (Self::U32(a), Self::U32(b)) => a == b,
            (Self::U64(a), Self::U64(b)) => a == b,
            _ => false,
        }
    }
}

/// A dense n-dimensional array in row-major (C) order.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseArray {
    /// Shape; empty for a 0-d scalar.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: NumVec,
}

/// Storage order of a sparse matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SparseFormat {
    /// Compressed sparse rows (`csr_matrix`).
    Csr,
    /// Compressed sparse columns (`csc_matrix`).
    Csc,
}

impl SparseFormat {
    /// anndata's encoding-type string.
    pub fn encoding(self) -> &'static str {
        match self {
            Self::Csr => "csr_matrix",
            Self::Csc => "csc_matrix",
        }
    }
}

/// A compressed sparse matrix, validated on read (monotone `indptr`, indices in range).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseArray {
    /// CSR or CSC.
    pub format: SparseFormat,
    /// `[nrows, ncols]`.
    pub shape: [usize; 2],
    /// Pointers into `indices`/`data`, one per major row/column plus one.
    pub indptr: Vec<usize>,
    /// Minor indices.
    pub indices: Vec<u32>,
    /// Values.
    pub data: NumVec,
}

impl SparseArray {
    /// Converts to an `f64` CSR matrix (transposing CSC storage), sorting indices and summing
    /// duplicates as scipy's `sum_duplicates` would.
    pub fn to_csr(&self) -> Result<Csr, CsrError> {
        let data = self.data.to_f64();
        match self.format {
            SparseFormat::Csr => Csr::from_unsorted(
                self.shape[0],
                self.shape[1],
                self.indptr.clone(),
                self.indices.clone(),
                data,
            ),
            SparseFormat::Csc => {
                let t = Csr::from_unsorted(
                    self.shape[1],
                    self.shape[0],
                    self.indptr.clone(),
                    self.indices.clone(),
                    data,
                )?;
                Ok(t.transpose())
            }
        }
    }

    /// [`Self::to_csr`], moving the index arrays instead of copying them.
    pub fn into_csr(self) -> Result<Csr, CsrError> {
        let [r, c] = self.shape;
        let data = self.data.into_f64();
        match self.format {
            SparseFormat::Csr => Csr::from_unsorted(r, c, self.indptr, self.indices, data),
            SparseFormat::Csc => {
                Ok(Csr::from_unsorted(c, r, self.indptr, self.indices, data)?.transpose())
            }
        }
    }

    /// Wraps an `f64` CSR matrix.
    pub fn from_csr(csr: &Csr) -> Self {
        Self {
            format: SparseFormat::Csr,
            shape: [csr.nrows(), csr.ncols()],
            indptr: csr.indptr().to_vec(),
            indices: csr.indices().to_vec(),
            data: NumVec::F64(csr.data().to_vec()),
        }
    }
}

impl From<Csr> for SparseArray {
    /// Moves the matrix's arrays (no copy), unlike [`SparseArray::from_csr`].
    fn from(csr: Csr) -> Self {
        let (nrows, ncols, indptr, indices, data) = csr.into_parts();
        Self {
            format: SparseFormat::Csr,
            shape: [nrows, ncols],
            indptr,
            indices,
            data: NumVec::F64(data),
        }
    }
}

/// The categories of a categorical column: strings (usual) or numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum Categories {
    /// String categories.
    Str(Vec<String>),
    /// Numeric categories (e.g. time points stored as floats).
    Num(NumVec),
}

impl Categories {
    /// Number of categories.
    pub fn len(&self) -> usize {
        match self {
            Self::Str(v) => v.len(),
            Self::Num(v) => v.len(),
        }
    }

    /// True when there are no categories.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Categories as display strings (numbers formatted as pandas prints them: `10.0`).
    pub fn labels(&self) -> Vec<String> {
        match self {
            Self::Str(v) => v.clone(),
            Self::Num(v) => (0..v.len())
                .map(|i| {
                    let x = v.get_f64(i);
                    if v.is_float() && x.fract() == 0.0 && x.is_finite() {
                        format!("{x:.1}")
                    } else {
                        format!("{x}")
                    }
                })
                .collect(),
        }
    }
}

/// A pandas categorical: integer codes into `categories`, `-1` for missing.
#[derive(Clone, Debug, PartialEq)]
pub struct Categorical {
    /// One code per element; `-1` = missing.
    pub codes: Vec<i32>,
    /// The categories.
    pub categories: Categories,
    /// Whether the categories are ordered.
    pub ordered: bool,
}

impl Categorical {
    /// Builds a categorical from optional labels, with categories in first-seen order unless
    /// `categories` is given.
    pub fn from_labels(labels: &[Option<String>], categories: Option<Vec<String>>) -> Self {
        let mut cats: Vec<String> = categories.unwrap_or_default();
        let mut codes = Vec::with_capacity(labels.len());
        for l in labels {
            match l {
                None => codes.push(-1),
                Some(s) => {
                    let pos = match cats.iter().position(|c| c == s) {
                        Some(p) => p,
                        None => {
                            cats.push(s.clone());
                            cats.len() - 1
                        }
                    };
                    codes.push(pos as i32);
                }
            }
        }
        Self {
            codes,
            categories: Categories::Str(cats),
            ordered: false,
        }
    }

    /// The label of element `i`, `None` when missing.
    pub fn label(&self, i: usize, labels: &[String]) -> Option<String> {
        let c = self.codes[i];
        usize::try_from(c).ok().and_then(|c| labels.get(c).cloned())
    }

    /// The values of a categorical whose categories are all numbers (numeric categories, or
    /// strings such as time points `'2'`, `'4'`, `'6'`), missing as NaN; `None` when a
    /// category is not a finite number.
    pub fn numeric_values(&self) -> Option<Vec<f64>> {
        let values: Vec<f64> = match &self.categories {
            Categories::Num(v) => (0..v.len()).map(|i| v.get_f64(i)).collect(),
            Categories::Str(v) => v
                .iter()
                .map(|s| s.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
                .collect::<Option<_>>()?,
        };
        Some(
            self.codes
                .iter()
                .map(|&k| {
                    usize::try_from(k)
                        .ok()
                        .and_then(|k| values.get(k).copied())
                        .unwrap_or(f64::NAN)
                })
                .collect(),
        )
    }

    /// All labels (`None` for missing).
    pub fn to_labels(&self) -> Vec<Option<String>> {
        let labels = self.categories.labels();
        (0..self.codes.len())
            .map(|i| self.label(i, &labels))
            .collect()
    }
}

/// A pandas dataframe (`obs`, `var`, or a dataframe inside `obsm`/`uns`).
#[derive(Clone, Debug, PartialEq)]
pub struct DataFrame {
    /// Name of the index column on disk (`_index` by default).
    pub index_name: String,
    /// Row names.
    pub index: Vec<String>,
    /// Columns in order: each a 1-d element (array, string-array, categorical, nullable).
    pub columns: Vec<(String, Element)>,
}

impl DataFrame {
    /// A dataframe with an index and no columns.
    pub fn with_index(index: Vec<String>) -> Self {
        Self {
            index_name: "_index".into(),
            index,
            columns: Vec::new(),
        }
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Element> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Adds or replaces a column (keeping its position when replaced).
    pub fn set_column(&mut self, name: &str, col: Element) {
        match self.columns.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = col,
            None => self.columns.push((name.to_string(), col)),
        }
    }

    /// Removes a column; returns whether it existed.
    pub fn remove_column(&mut self, name: &str) -> bool {
        let before = self.columns.len();
        self.columns.retain(|(n, _)| n != name);
        before != self.columns.len()
    }
}

/// Any AnnData element.
#[derive(Clone, Debug, PartialEq)]
pub enum Element {
    /// A dense numeric array (`array` encoding), any rank ≥ 1.
    Dense(DenseArray),
    /// A sparse matrix (`csr_matrix` / `csc_matrix`).
    Sparse(SparseArray),
    /// An array of strings (`string-array`), any rank ≥ 1; row-major.
    Strings {
        /// Shape.
        shape: Vec<usize>,
        /// Values.
        values: Vec<String>,
    },
    /// A string scalar (`string`).
    Str(String),
    /// A numeric scalar (`numeric-scalar`), stored as a vector of length 1.
    Scalar(NumVec),
    /// A categorical array (`categorical`).
    Categorical(Categorical),
    /// A nullable integer array (`nullable-integer`); `mask[i]` = value missing.
    NullableInt {
        /// Values (meaningless where masked).
        values: NumVec,
        /// Missing-value mask.
        mask: Vec<bool>,
    },
    /// A nullable boolean array (`nullable-boolean`).
    NullableBool {
        /// Values.
        values: Vec<bool>,
        /// Missing-value mask.
        mask: Vec<bool>,
    },
    /// A nullable string array (`nullable-string-array`).
    NullableStr {
        /// Values.
        values: Vec<String>,
        /// Missing-value mask.
        mask: Vec<bool>,
    },
    /// A dataframe (`dataframe`).
    DataFrame(DataFrame),
    /// A mapping (`dict`); members in name order.
    Dict(Vec<(String, Element)>),
    /// The `raw` group (`raw`: X, var, varm).
    Raw(Vec<(String, Element)>),
    /// A nested AnnData object (`anndata`), e.g. CellRank's `uns["coarse_fwd"]`.
    AnnData(Vec<(String, Element)>),
}

impl Element {
    /// About how many bytes the element takes written uncompressed (values, indices, strings
    /// with a small per-string overhead); an upper-bound estimate for space checks.
    pub fn approx_bytes(&self) -> usize {
        fn strs(v: &[String]) -> usize {
            v.iter().map(|s| s.len() + 16).sum()
        }
        fn members(m: &[(String, Element)]) -> usize {
            m.iter()
                .map(|(k, e)| k.len() + 256 + e.approx_bytes())
                .sum()
        }
        512 + match self {
            Self::Dense(d) => d.data.nbytes(),
            Self::Sparse(s) => s.data.nbytes() + 8 * (s.indices.len() + s.indptr.len()),
            Self::Strings { values, .. } => strs(values),
            Self::NullableStr { values, mask } => strs(values) + mask.len(),
            Self::Str(s) => s.len(),
            Self::Scalar(v) => v.nbytes(),
            Self::Categorical(c) => {
                4 * c.codes.len()
                    + match &c.categories {
                        Categories::Str(v) => strs(v),
                        Categories::Num(v) => v.nbytes(),
                    }
            }
            Self::NullableInt { values, mask } => values.nbytes() + mask.len(),
            Self::NullableBool { values, mask } => values.len() + mask.len(),
            Self::DataFrame(df) => strs(&df.index) + members(&df.columns),
            Self::Dict(m) | Self::Raw(m) | Self::AnnData(m) => members(m),
        }
    }

    /// anndata's encoding-type of this element.
    pub fn encoding(&self) -> &'static str {
        match self {
            Self::Dense(_) => "array",
            Self::Sparse(s) => s.format.encoding(),
            Self::Strings { .. } => "string-array",
            Self::Str(_) => "string",
            Self::Scalar(_) => "numeric-scalar",
            Self::Categorical(_) => "categorical",
            Self::NullableInt { .. } => "nullable-integer",
            Self::NullableBool { .. } => "nullable-boolean",
            Self::NullableStr { .. } => "nullable-string-array",
            Self::DataFrame(_) => "dataframe",
            Self::Dict(_) => "dict",
            Self::Raw(_) => "raw",
            Self::AnnData(_) => "anndata",
        }
    }

    /// Shape of array-like elements (dataframes: `[n_rows, n_columns]`; dicts: empty).
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Dense(d) => d.shape.clone(),
            Self::Sparse(s) => s.shape.to_vec(),
            Self::Strings { shape, .. } => shape.clone(),
            Self::Str(_) | Self::Scalar(_) => Vec::new(),
            Self::Categorical(c) => vec![c.codes.len()],
            Self::NullableInt { mask, .. }
            | Self::NullableBool { mask, .. }
            | Self::NullableStr { mask, .. } => vec![mask.len()],
            Self::DataFrame(df) => vec![df.index.len(), df.columns.len()],
            Self::Dict(_) | Self::Raw(_) | Self::AnnData(_) => Vec::new(),
        }
    }

    /// The values of a 1-d numeric element (dense array, or nullable integer with NaN for
    /// missing) as `f64`; `None` for other kinds.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        match self {
            Self::Dense(d) if d.shape.len() == 1 => Some(d.data.to_f64()),
            Self::NullableInt { values, mask } => Some(
                values
                    .to_f64()
                    .into_iter()
                    .zip(mask)
                    .map(|(v, &m)| if m { f64::NAN } else { v })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Member `name` of a dict or raw group.
    pub fn member(&self, name: &str) -> Option<&Element> {
        match self {
            Self::Dict(m) | Self::Raw(m) | Self::AnnData(m) => {
                m.iter().find(|(n, _)| n == name).map(|(_, e)| e)
            }
            _ => None,
        }
    }

    /// A 1-d `f64` array element.
    pub fn from_f64(values: Vec<f64>) -> Self {
        Self::Dense(DenseArray {
            shape: vec![values.len()],
            data: NumVec::F64(values),
        })
    }

    /// A 1-d boolean array element (a boolean `var`/`obs` column).
    pub fn from_bools(values: Vec<bool>) -> Self {
        Self::Dense(DenseArray {
            shape: vec![values.len()],
            data: NumVec::Bool(values),
        })
    }

    /// A 2-d row-major `f64` array element.
    pub fn from_f64_matrix(nrows: usize, ncols: usize, values: Vec<f64>) -> Self {
        debug_assert_eq!(values.len(), nrows * ncols);
        Self::Dense(DenseArray {
            shape: vec![nrows, ncols],
            data: NumVec::F64(values),
        })
    }

    /// A row-major 2-d float64 array from a (column-major) nalgebra matrix.
    pub fn from_dmatrix(m: &nalgebra::DMatrix<f64>) -> Self {
        let (r, c) = (m.nrows(), m.ncols());
        Self::from_f64_matrix(
            r,
            c,
            (0..r)
                .flat_map(|i| (0..c).map(move |j| m[(i, j)]))
                .collect(),
        )
    }

    /// A 1-d string-array element.
    pub fn from_strings(values: Vec<String>) -> Self {
        Self::Strings {
            shape: vec![values.len()],
            values,
        }
    }
}
