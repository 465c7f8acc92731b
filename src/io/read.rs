//! Lazy `.h5ad` reader: opening a file reads nothing but the root; each slot is read when
//! asked for, so `obsp["connectivities"]` of a large file never touches `X`.
//!
//! Both on-disk layouts are understood: anndata ≥ 0.8 (`encoding-type`/`encoding-version`
//! attributes, `categorical` groups, nullable arrays) and the anndata 0.7 layout (no root
//! attributes, categorical columns as integer codes with labels in `obs/__categories/<col>`,
//! `h5sparse_format` sparse groups). Dense, CSR and CSC matrices; any integer, float or bool
//! dtype; gzip-compressed or not (HDF5 decompresses transparently).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, Group, LocationType};

use cellfate_kernels::{Csr, Direction, TransitionMatrix};

use super::element::{
    Categorical, Categories, DataFrame, DenseArray, Element, NumVec, SparseArray, SparseFormat,
};
use super::error::H5adError;

type Result<T> = std::result::Result<T, H5adError>;

/// The HDF5 file signature; it sits at offset 0, 512, 1024, 2048, ... (after a user block).
const HDF5_SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];

/// A dataset is refused when its declared uncompressed size exceeds both this many bytes
/// (1 GiB) and [`LARGE_DATASET_RATIO`] times the file's size: such a declaration is a
/// corrupt or crafted file (a few MB of gzip claiming hundreds of GB), and reading it would
/// exhaust memory. [`allow_large_datasets`] (or `CELLFATE_ALLOW_LARGE=1`, or the CLI's
/// `--allow-large`) lifts the check.
pub const LARGE_DATASET_BYTES: u64 = 1 << 30;

/// See [`LARGE_DATASET_BYTES`]: how many times the file size a dataset may declare.
pub const LARGE_DATASET_RATIO: u64 = 1000;

/// The environment variable that lifts the large-dataset check (any value but `0` or empty).
pub const ALLOW_LARGE_ENV: &str = "CELLFATE_ALLOW_LARGE";

static ALLOW_LARGE: AtomicBool = AtomicBool::new(false);

/// Lifts (or restores) the check on datasets that declare far more data than their file can
/// plausibly hold (see [`LARGE_DATASET_BYTES`]), for every reader of this process.
pub fn allow_large_datasets(allow: bool) {
    ALLOW_LARGE.store(allow, Ordering::Relaxed);
}

fn large_allowed() -> bool {
    ALLOW_LARGE.load(Ordering::Relaxed)
        || std::env::var_os(ALLOW_LARGE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// What a path that is not a regular file is (`None` for a regular file).
fn special_kind(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_file() {
        return None;
    }
    if ft.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
        if ft.is_char_device() {
            return Some("a character device");
        }
        if ft.is_block_device() {
            return Some("a block device");
        }
    }
    Some("not a regular file")
}

/// Checks that `path` is a regular file (symbolic links are followed) before anything opens
/// it, and returns its size: opening a FIFO blocks until a writer appears, and a device or a
/// directory is never an input. The error names the file and what it is.
pub fn regular_file_len(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|source| H5adError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    match special_kind(meta.file_type()) {
        None => Ok(meta.len()),
        Some(kind) => Err(H5adError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        }),
    }
}

/// Columns of a dense matrix in the element type the file stores them in
/// ([`H5adReader::dense_select_stored`]): (rows, columns of the matrix, row-major values).
#[derive(Clone, Debug, PartialEq)]
pub enum StoredColumns {
    /// A float32 dataset, read as stored.
    F32(usize, usize, Vec<f32>),
    /// Anything else, read as (or converted to) float64.
    F64(usize, usize, Vec<f64>),
}

/// Summary of one slot, obtained from metadata only (no data is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// anndata encoding-type (inferred for the 0.7 layout).
    pub encoding: String,
    /// Shape (dataframes: `[rows, columns]`; dicts: number of members).
    pub shape: Vec<usize>,
    /// numpy dtype name of the values, when there is one.
    pub dtype: Option<String>,
}

/// A lazily-read `.h5ad` file.
pub struct H5adReader {
    path: PathBuf,
    /// Closed in [`Drop`] under the fault reporter's watchdog.
    file: std::mem::ManuallyDrop<hdf5::File>,
    legacy: bool,
    /// The file's size in bytes (bounds the datasets it may declare).
    file_len: u64,
    /// Keeps the fault reporter's context while the reader lives.
    _reading: super::fault::Reading,
}

impl Drop for H5adReader {
    /// Closes the file under the watchdog that guards attribute reads: on a damaged file
    /// libhdf5 can loop forever while destroying its metadata cache (`H5C_dest`, found by
    /// fuzzing), which is then reported as a corrupt file instead of a hang.
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        super::fault::set_context(&self.path, "");
        // SAFETY: `file` is dropped exactly once, here, and not used afterwards.
        super::fault::guarded_attr_read(|| unsafe { std::mem::ManuallyDrop::drop(&mut self.file) });
    }
}

impl std::fmt::Debug for H5adReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H5adReader")
            .field("path", &self.path)
            .field("legacy", &self.legacy)
            .finish()
    }
}

impl H5adReader {
    /// Opens `path` read-only. Checks that the file exists, is a regular file (not a FIFO,
    /// device, socket or directory), is non-empty and carries the HDF5 signature before
    /// handing it to the HDF5 library, so that the common mistakes get a precise error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file_len = check_signature(&path)?;
        let reading = super::fault::Reading::start(&path);
        hdf5::silence_errors(true);
        let file = hdf5::File::open(&path).map_err(|e| H5adError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut r = Self {
            path,
            file: std::mem::ManuallyDrop::new(file),
            legacy: false,
            file_len,
            _reading: reading,
        };
        // Touch the root group listing to detect truncated files early.
        r.file.member_names().map_err(|e| H5adError::Corrupt {
            path: r.path.clone(),
            message: e.to_string(),
        })?;
        // Every object's datatypes are checked before any attribute or dataset is read.
        r.refuse_outside_data()?;
        r.legacy = read_str_attr(&r.file, "encoding-type").is_none();
        Ok(r)
    }

    /// Refuses a file that draws data from other files: external links, datasets with
    /// external raw storage, virtual datasets. Reading through them would read (and a writer
    /// copying the file would copy) another file's content, possibly one the user did not
    /// mean to share; an `.h5ad` written by anndata never has them. Hard links deeper than 64
    /// groups (a cycle) are refused as well.
    fn refuse_outside_data(&self) -> Result<()> {
        const MAX_DEPTH: usize = 64;
        let outside = |slot: &str, what: &str| H5adError::OutsideData {
            path: self.path.clone(),
            slot: slot.to_string(),
            what: what.to_string(),
        };
        // Recursive reads (uns, dataframes) walk the same tree: it must be finite and small. A
        // link back to an ancestor (a cycle) makes it infinite; groups shared through several
        // links (our own files share X with layers/spliced) multiply it. Both are bounded here.
        const MAX_GROUPS: usize = 100_000;
        let mut visited = 0usize;
        let mut stack = vec![(String::new(), 0usize)];
        while let Some((slot, depth)) = stack.pop() {
            visited += 1;
            if visited > MAX_GROUPS {
                return Err(outside(
                    &slot,
                    "more than 100,000 groups reachable through links (a cycle of links?)",
                ));
            }
            let g: Group = if slot.is_empty() {
                (**self.file).clone()
            } else {
                self.file.group(&slot).map_err(self.hdf5_err(&slot))?
            };
            self.check_datatypes(&g, if slot.is_empty() { "/" } else { &slot })?;
            let mut links = Vec::new();
            g.iter_visit_default(|name, info| {
                links.push((name.to_string(), info.link_type));
                Ok(())
            })
            .map_err(self.hdf5_err(if slot.is_empty() { "/" } else { &slot }))?;
            for (name, kind) in links {
                if name.is_empty() || name == "." || name.contains('/') {
                    return Err(H5adError::Corrupt {
                        path: self.path.clone(),
                        message: format!(
                            "group `{}` holds a link with the invalid name {name:?}",
                            if slot.is_empty() { "/" } else { &slot }
                        ),
                    });
                }
                let child = join(&slot, &name);
                match kind {
                    hdf5::LinkType::External => {
                        return Err(outside(&child, "an external link into another file"))
                    }
                    // A soft link names a path inside this file; it is resolved on access,
                    // so the group it may name is checked like a hard-linked one.
                    hdf5::LinkType::Soft => {
                        if let Ok(ds) = g.dataset(&name) {
                            self.check_datatypes(&ds, &child)?;
                            let dtype = ds.dtype().map_err(self.hdf5_err(&child))?;
                            super::dtype::check(&dtype)
                                .map_err(|what| self.bad_type(&child, what))?;
                        } else if g.group(&name).is_ok() {
                            if depth >= MAX_DEPTH {
                                return Err(outside(
                                    &child,
                                    "groups nested more than 64 deep (a cycle of links?)",
                                ));
                            }
                            stack.push((child, depth + 1));
                        }
                    }
                    hdf5::LinkType::Hard => {
                        if let Ok(ds) = g.dataset(&name) {
                            self.check_datatypes(&ds, &child)?;
                            let dtype = ds.dtype().map_err(self.hdf5_err(&child))?;
                            super::dtype::check(&dtype)
                                .map_err(|what| self.bad_type(&child, what))?;
                            let p = ds.dcpl().map_err(self.hdf5_err(&child))?;
                            if !p.external().is_empty() {
                                return Err(outside(
                                    &child,
                                    "a dataset whose raw data is stored in external files",
                                ));
                            }
                            #[allow(unreachable_patterns)]
                            match p.layout() {
                                hdf5::dataset::Layout::Compact
                                | hdf5::dataset::Layout::Contiguous
                                | hdf5::dataset::Layout::Chunked => {}
                                _ => return Err(outside(
                                    &child,
                                    "a virtual dataset (data mapped from other datasets or files)",
                                )),
                            }
                        } else if g.group(&name).is_ok() {
                            if depth >= MAX_DEPTH {
                                return Err(outside(
                                    &child,
                                    "groups nested more than 64 deep (a cycle of hard links?)",
                                ));
                            }
                            stack.push((child, depth + 1));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks the datatypes of the attributes of `loc` (at `slot`) with
    /// [`super::dtype::check_attributes`].
    fn check_datatypes(&self, loc: &hdf5::Location, slot: &str) -> Result<()> {
        super::fault::set_context(&self.path, slot);
        super::fault::guarded_attr_read(|| super::dtype::check_attributes(loc))
            .map_err(|(k, what)| self.bad_type(&format!("{slot} (attribute {k})"), what))
    }

    fn bad_type(&self, slot: &str, what: String) -> H5adError {
        H5adError::Corrupt {
            path: self.path.clone(),
            message: format!(
                "`{slot}` has {what}: the file is damaged (anndata never writes such a type)"
            ),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True for files in the anndata 0.7 layout (no root `encoding-type`).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    pub(crate) fn file(&self) -> &hdf5::File {
        &self.file
    }

    /// Refuses to materialise `shape` elements of `elem_bytes` bytes each at `slot` when that
    /// exceeds what the file can plausibly hold (see [`LARGE_DATASET_BYTES`]).
    pub fn check_allocation(&self, slot: &str, shape: &[usize], elem_bytes: usize) -> Result<()> {
        self.check_allocation_stored(slot, shape, elem_bytes, None)
    }

    /// [`Self::check_allocation`] for a dataset that has `stored` bytes in the file: the
    /// bound is 1000 × the smaller of the file's size and `stored` (at least 1 GiB).
    fn check_allocation_stored(
        &self,
        slot: &str,
        shape: &[usize],
        elem_bytes: usize,
        stored: Option<u64>,
    ) -> Result<()> {
        let bytes = shape.iter().fold(elem_bytes.max(1) as u64, |acc, &d| {
            acc.saturating_mul(d as u64)
        });
        let stored = stored.filter(|&s| s < self.file_len);
        let bound = stored
            .unwrap_or(self.file_len)
            .saturating_mul(LARGE_DATASET_RATIO)
            .max(LARGE_DATASET_BYTES);
        if bytes > bound && !large_allowed() {
            return Err(H5adError::TooLarge {
                path: self.path.clone(),
                slot: slot.to_string(),
                shape: shape.to_vec(),
                bytes,
                bound,
                file_len: self.file_len,
                stored,
            });
        }
        Ok(())
    }

    /// [`Self::check_allocation`] for reading the whole of dataset `ds`.
    fn check_dataset(&self, ds: &Dataset, slot: &str) -> Result<()> {
        self.check_dataset_as(ds, slot, 0)
    }

    /// [`Self::check_dataset`] when each element takes `mem_elem` bytes in memory (more than
    /// in the file: 1-byte integers read as `i64` indices, strings as `String`s).
    fn check_dataset_as(&self, ds: &Dataset, slot: &str, mem_elem: usize) -> Result<()> {
        super::fault::set_context(&self.path, slot);
        let elem = ds.dtype().map(|t| t.size()).unwrap_or(8).max(mem_elem);
        // What the dataset has stored (compressed chunks, or the contiguous extent): a
        // chunked dataset whose chunks were never written declares gigabytes from nothing.
        self.check_allocation_stored(slot, &ds.shape(), elem, Some(ds.storage_size()))
    }

    fn hdf5_err(&self, slot: &str) -> impl FnOnce(hdf5::Error) -> H5adError + '_ {
        let slot = slot.to_string();
        move |source| H5adError::Hdf5 {
            path: self.path.clone(),
            slot,
            source,
        }
    }

    pub(crate) fn invalid(
        &self,
        slot: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> H5adError {
        H5adError::Invalid {
            path: self.path.clone(),
            slot: slot.to_string(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Whether two existing slots are the same HDF5 object (hard links to one dataset or
    /// group, as `X` and `layers/spliced` in files written by `cellfate simulate`).
    pub fn same_object(&self, a: &str, b: &str) -> bool {
        match (
            self.file.loc_info_by_name(a.trim_matches('/')),
            self.file.loc_info_by_name(b.trim_matches('/')),
        ) {
            (Ok(x), Ok(y)) => x.fileno == y.fileno && x.token == y.token,
            _ => false,
        }
    }

    /// Whether a matrix's values are stored as float64: a dense dataset's own type, a sparse
    /// group's `data`. False for anything else (float32, integers, a missing slot).
    pub fn stored_float64(&self, slot: &str) -> bool {
        let slot = slot.trim_matches('/');
        let data = format!("{slot}/data");
        let path = if self.file.dataset(slot).is_ok() {
            slot
        } else {
            data.as_str()
        };
        self.float_size(path) == Some(hdf5::types::FloatSize::U8)
    }

    /// The float width of the dataset at `path`; `None` when it is not a float dataset.
    fn float_size(&self, path: &str) -> Option<hdf5::types::FloatSize> {
        match self
            .file
            .dataset(path)
            .ok()?
            .dtype()
            .ok()?
            .to_descriptor()
            .ok()?
        {
            hdf5::types::TypeDescriptor::Float(size) => Some(size),
            _ => None,
        }
    }

    /// Whether a slot (HDF5 path such as `obsp/T_fwd`) exists.
    pub fn exists(&self, slot: &str) -> bool {
        let mut cur = String::new();
        for part in slot.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if !self.file.link_exists(&cur) {
                return false;
            }
        }
        !cur.is_empty()
    }

    fn missing(&self, slot: &str) -> H5adError {
        let parent = slot.rsplit_once('/').map_or("", |(p, _)| p);
        let available = if parent.is_empty() {
            self.file.member_names().unwrap_or_default()
        } else {
            self.keys(parent).unwrap_or_default()
        };
        H5adError::Missing {
            path: self.path.clone(),
            slot: slot.to_string(),
            available,
        }
    }

    /// Member names of a group such as `layers`, `obsm`, `obsp` or `uns` (sorted); an absent
    /// group gives an empty list.
    pub fn keys(&self, group: &str) -> Result<Vec<String>> {
        if group.is_empty() || group == "/" {
            let mut names = self.file.member_names().map_err(self.hdf5_err("/"))?;
            names.sort();
            return Ok(names);
        }
        if !self.exists(group) {
            return Ok(Vec::new());
        }
        let g = self.file.group(group).map_err(self.hdf5_err(group))?;
        let mut names = g.member_names().map_err(self.hdf5_err(group))?;
        names.sort();
        Ok(names)
    }

    fn location_type(&self, slot: &str) -> Result<LocationType> {
        super::fault::set_context(&self.path, slot);
        // An empty or relative component ("obs/", "var/./x": names such as `_index` or
        // `column-order` entries read from the file) would resolve to the group itself and
        // recurse forever.
        if slot
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(self.invalid(
                slot,
                "a slot path of non-empty names (the file names an empty or relative member)",
                format!("{slot:?}"),
            ));
        }
        if !self.exists(slot) {
            return Err(self.missing(slot));
        }
        self.file
            .loc_type_by_name(slot)
            .map_err(self.hdf5_err(slot))
    }

    /// Number of cells: the length of the `obs` index (or the rows of `X`).
    pub fn n_obs(&self) -> Result<usize> {
        self.axis_len("obs", 0)
    }

    /// Number of genes: the length of the `var` index (or the columns of `X`).
    pub fn n_vars(&self) -> Result<usize> {
        self.axis_len("var", 1)
    }

    fn axis_len(&self, df: &str, x_axis: usize) -> Result<usize> {
        if self.exists(df) {
            let g = self.file.group(df).map_err(self.hdf5_err(df))?;
            let index = read_str_attr(&g, "_index").unwrap_or_else(|| "_index".to_string());
            let slot = format!("{df}/{index}");
            if self.exists(&slot) {
                let n = self.info(&slot)?.shape.first().copied().unwrap_or(0);
                // The index and X must agree: per-cell and per-gene arrays are indexed by both.
                if self.exists("X") {
                    if let Some(&x) = self.info("X")?.shape.get(x_axis) {
                        if x != n {
                            return Err(self.invalid(
                                &slot,
                                format!("{x} names ({} of X)", ["rows", "columns"][x_axis]),
                                format!("{n}"),
                            ));
                        }
                    }
                }
                return Ok(n);
            }
        }
        if self.exists("X") {
            let info = self.info("X")?;
            if let Some(n) = info.shape.get(x_axis) {
                return Ok(*n);
            }
        }
        Err(self.missing(&format!("{df}/_index")))
    }

    /// Cell names (the `obs` index).
    pub fn obs_names(&self) -> Result<Vec<String>> {
        self.index_of("obs")
    }

    /// Gene names (the `var` index).
    pub fn var_names(&self) -> Result<Vec<String>> {
        self.index_of("var")
    }

    fn index_of(&self, df: &str) -> Result<Vec<String>> {
        let g = self.file.group(df).map_err(|_| self.missing(df))?;
        let index = read_str_attr(&g, "_index").unwrap_or_else(|| "_index".to_string());
        let slot = format!("{df}/{index}");
        self.read_index(&g, &index, &slot)
    }

    /// Reads a dataframe index: a string array, or (pandas' string dtype) a
    /// nullable-string-array group whose missing entries become empty strings.
    fn read_index(&self, g: &Group, name: &str, slot: &str) -> Result<Vec<String>> {
        if !g.link_exists(name) {
            return Err(H5adError::Missing {
                path: self.path.clone(),
                slot: slot.to_string(),
                available: g.member_names().unwrap_or_default(),
            });
        }
        match self.read(slot)? {
            Element::Strings { values, .. } => Ok(values),
            Element::NullableStr { values, mask } => Ok(values
                .into_iter()
                .zip(mask)
                .map(|(v, m)| if m { String::new() } else { v })
                .collect()),
            Element::Dense(d) if d.shape.len() == 1 => {
                Ok(d.data.to_f64().iter().map(|x| format!("{x}")).collect())
            }
            other => Err(self.invalid(slot, "a 1-d string index", describe(&other))),
        }
    }

    /// Reads one slot completely.
    pub fn read(&self, slot: &str) -> Result<Element> {
        if slot.matches('/').count() > 64 {
            return Err(H5adError::OutsideData {
                path: self.path.clone(),
                slot: slot.to_string(),
                what: "groups nested more than 64 deep (a cycle of links?)".into(),
            });
        }
        let kind = self.location_type(slot)?;
        self.check_aligned(slot)?;
        match kind {
            LocationType::Group => {
                let g = self.file.group(slot).map_err(self.hdf5_err(slot))?;
                self.read_group(&g, slot)
            }
            LocationType::Dataset => {
                let ds = self.file.dataset(slot).map_err(self.hdf5_err(slot))?;
                self.check_if_column(slot)?;
                self.read_dataset(&ds, slot)
            }
            LocationType::NamedDatatype => Err(H5adError::Unsupported {
                path: self.path.clone(),
                slot: slot.to_string(),
                encoding: "named datatype".into(),
            }),
        }
    }

    /// Metadata of one slot (encoding, shape, dtype) without reading its values.
    pub fn info(&self, slot: &str) -> Result<SlotInfo> {
        match self.location_type(slot)? {
            LocationType::Group => {
                let g = self.file.group(slot).map_err(self.hdf5_err(slot))?;
                let enc = group_encoding(&g);
                match enc.as_str() {
                    "csr_matrix" | "csc_matrix" => {
                        let shape = self.sparse_shape(&g, slot)?;
                        let dtype = g
                            .dataset("data")
                            .ok()
                            .and_then(|d| d.dtype().ok()?.to_descriptor().ok())
                            .map(|d| dtype_name(&d));
                        Ok(SlotInfo {
                            encoding: enc,
                            shape: shape.to_vec(),
                            dtype,
                        })
                    }
                    "dataframe" => {
                        let cols = self.column_order(&g, slot)?;
                        let index = read_str_attr(&g, "_index").unwrap_or_else(|| "_index".into());
                        let n = self
                            .info(&join(slot, &index))
                            .map(|i| i.shape.first().copied().unwrap_or(0))
                            .unwrap_or(0);
                        Ok(SlotInfo {
                            encoding: enc,
                            shape: vec![n, cols.len()],
                            dtype: None,
                        })
                    }
                    "categorical"
                    | "nullable-integer"
                    | "nullable-boolean"
                    | "nullable-string-array" => {
                        let inner = if enc == "categorical" {
                            "codes"
                        } else {
                            "values"
                        };
                        let n = g
                            .dataset(inner)
                            .map(|d| d.shape().first().copied().unwrap_or(0))
                            .unwrap_or(0);
                        Ok(SlotInfo {
                            encoding: enc,
                            shape: vec![n],
                            dtype: None,
                        })
                    }
                    _ => Ok(SlotInfo {
                        shape: vec![g.member_names().map(|m| m.len()).unwrap_or(0)],
                        encoding: enc,
                        dtype: None,
                    }),
                }
            }
            LocationType::Dataset => {
                let ds = self.file.dataset(slot).map_err(self.hdf5_err(slot))?;
                let desc = ds
                    .dtype()
                    .and_then(|t| t.to_descriptor())
                    .map_err(self.hdf5_err(slot))?;
                let shape = ds.shape();
                let is_str = is_string(&desc);
                let encoding = match read_str_attr(&ds, "encoding-type") {
                    Some(e) => e,
                    None if ds.attr("categories").is_ok() => "categorical".into(),
                    None if is_str && shape.is_empty() => "string".into(),
                    None if is_str => "string-array".into(),
                    None if shape.is_empty() => "numeric-scalar".into(),
                    None => "array".into(),
                };
                Ok(SlotInfo {
                    encoding,
                    shape,
                    dtype: Some(dtype_name(&desc)),
                })
            }
            LocationType::NamedDatatype => Err(H5adError::Unsupported {
                path: self.path.clone(),
                slot: slot.to_string(),
                encoding: "named datatype".into(),
            }),
        }
    }

    /// Reads the `obs` dataframe.
    pub fn obs(&self) -> Result<DataFrame> {
        self.dataframe("obs")
    }

    /// Reads the `var` dataframe.
    pub fn var(&self) -> Result<DataFrame> {
        self.dataframe("var")
    }

    /// Reads a dataframe slot (`obs`, `var`, `raw/var`, ...).
    pub fn dataframe(&self, slot: &str) -> Result<DataFrame> {
        match self.read(slot)? {
            Element::DataFrame(df) => Ok(df),
            other => Err(self.invalid(slot, "a dataframe", other.encoding())),
        }
    }

    /// Names of the columns of a dataframe slot, in order.
    pub fn columns(&self, df: &str) -> Result<Vec<String>> {
        let g = self.file.group(df).map_err(|_| self.missing(df))?;
        self.column_order(&g, df)
    }

    /// Reads one column of `obs` or `var` (`df`) without reading the others.
    pub fn column(&self, df: &str, name: &str) -> Result<Element> {
        let g = self.file.group(df).map_err(|_| self.missing(df))?;
        let slot = format!("{df}/{name}");
        if !g.link_exists(name) {
            return Err(H5adError::Missing {
                path: self.path.clone(),
                slot,
                available: self.column_order(&g, df).unwrap_or_default(),
            });
        }
        let index = read_str_attr(&g, "_index").unwrap_or_else(|| "_index".to_string());
        let index_slot = join(df, &index);
        let n = if df == "obs" || df == "var" {
            // The index length, checked against X.
            Some(self.axis_len(df, usize::from(df == "var"))?)
        } else if self.exists(&index_slot) {
            Some(self.info(&index_slot)?.shape.first().copied().unwrap_or(0))
        } else {
            None
        };
        self.check_column_shape(&g, name, &slot, n)?;
        let col = self.read_column(&g, name, &slot)?;
        if let Some(n) = n {
            self.check_column_len(&col, &slot, n)?;
        }
        Ok(col)
    }

    /// `X`, a layer, an `obsm`/`varm` entry or an `obsp`/`varp` graph read whole: its declared
    /// shape must fit the cells and genes (anndata's alignment) before anything is allocated
    /// (a fuzzed `layers/velocity` declaring [21, 5e7] in a small file would be).
    fn check_aligned(&self, slot: &str) -> Result<()> {
        let (group, rest) = slot.split_once('/').unwrap_or((slot, ""));
        if rest.contains('/') {
            return Ok(());
        }
        #[derive(Clone, Copy)]
        enum Axis {
            Obs,
            Var,
        }
        let want: &[Axis] = match (group, rest.is_empty()) {
            ("X", true) | ("layers", false) => &[Axis::Obs, Axis::Var],
            ("obsm", false) => &[Axis::Obs],
            ("varm", false) => &[Axis::Var],
            ("obsp", false) => &[Axis::Obs, Axis::Obs],
            ("varp", false) => &[Axis::Var, Axis::Var],
            _ => return Ok(()),
        };
        // Without cells or genes to compare with (no index, no X), the read decides.
        let (Ok(n_obs), Ok(n_vars)) = (self.n_obs(), self.n_vars()) else {
            return Ok(());
        };
        // An encoding without a shape (unsupported, say) is left to the read's own error.
        let Ok(info) = self.info(slot) else {
            return Ok(());
        };
        let known = matches!(
            info.encoding.as_str(),
            "array" | "csr_matrix" | "csc_matrix" | "dataframe" | "string-array" | ""
        );
        if info.shape.is_empty() || !known {
            return Ok(());
        }
        let dims: Vec<usize> = want
            .iter()
            .map(|a| match a {
                Axis::Obs => n_obs,
                Axis::Var => n_vars,
            })
            .collect();
        let fits =
            info.shape.len() >= dims.len() && dims.iter().zip(&info.shape).all(|(a, b)| a == b);
        if !fits {
            let names: Vec<&str> = want
                .iter()
                .map(|a| match a {
                    Axis::Obs => "n_obs",
                    Axis::Var => "n_vars",
                })
                .collect();
            let join = |v: &[usize]| -> String {
                v.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(" x ")
            };
            return Err(self.invalid(
                slot,
                format!("{} ({}) leading", join(&dims), names.join(" x ")),
                join(&info.shape),
            ));
        }
        Ok(())
    }

    /// A dataset read on its own that is a column of a dataframe (`obs/size_factor`): its
    /// declared shape is checked against the index first, as when the dataframe is read.
    fn check_if_column(&self, slot: &str) -> Result<()> {
        let Some((parent, name)) = slot.rsplit_once('/') else {
            return Ok(());
        };
        let Ok(g) = self.file.group(parent) else {
            return Ok(());
        };
        if group_encoding(&g) != "dataframe" {
            return Ok(());
        }
        let index = read_str_attr(&g, "_index").unwrap_or_else(|| "_index".to_string());
        if name == index {
            return Ok(());
        }
        let index_slot = join(parent, &index);
        if !self.exists(&index_slot) {
            // No index to compare with (a damaged file): a column is 1-d at least, and of
            // X's length for obs and var.
            let n = match parent {
                "obs" => self.axis_len("obs", 0).ok(),
                "var" => self.axis_len("var", 1).ok(),
                _ => None,
            };
            return self.check_column_shape(&g, name, slot, n);
        }
        let n = self.info(&index_slot)?.shape.first().copied().unwrap_or(0);
        self.check_column_shape(&g, name, slot, Some(n))
    }

    /// A column stored as one dataset: its declared shape is checked before it is read
    /// (a column declaring [24, 5e7] in a small file would be allocated first).
    fn check_column_shape(
        &self,
        g: &Group,
        name: &str,
        slot: &str,
        n: Option<usize>,
    ) -> Result<()> {
        if let Ok(ds) = g.dataset(name) {
            let shape = ds.shape();
            if shape.len() != 1 || n.is_some_and(|n| shape[0] != n) {
                let want = n.map_or("1-d".to_string(), |n| {
                    format!("{n} values (the index length), 1-d")
                });
                return Err(self.invalid(slot, want, format!("shape {shape:?}")));
            }
        }
        Ok(())
    }

    fn check_column_len(&self, col: &Element, slot: &str, n: usize) -> Result<()> {
        let len = col.shape().first().copied().unwrap_or(0);
        if len != n {
            return Err(self.invalid(
                slot,
                format!("{n} values (the index length)"),
                format!("{len}"),
            ));
        }
        Ok(())
    }

    /// A numeric per-cell column of `obs` as `f64` (bool as 0/1, nullable missing as NaN).
    /// A categorical column whose categories are all numbers (numeric categories, or strings
    /// such as time points `'2'`, `'4'`, `'6'`) is read as those numbers (missing as NaN).
    pub fn obs_f64(&self, name: &str) -> Result<Vec<f64>> {
        let slot = format!("obs/{name}");
        let col = self.column("obs", name)?;
        if let Element::Categorical(c) = &col {
            return c.numeric_values().ok_or_else(|| {
                self.invalid(
                    &slot,
                    "a numeric column",
                    "categorical with non-numeric categories",
                )
            });
        }
        let found = col.encoding();
        col.to_f64_vec()
            .ok_or_else(|| self.invalid(&slot, "a numeric column", found))
    }

    /// A 2-D slot (`X`, `layers/..`, `obsm/..`, `obsp/..`) as an `f64` CSR matrix. Dense
    /// arrays are converted (exact zeros dropped).
    pub fn csr(&self, slot: &str) -> Result<Csr> {
        match self.read(slot)? {
            Element::Sparse(s) => s
                .into_csr()
                .map_err(|e| self.invalid(slot, "a valid sparse matrix", e.to_string())),
            Element::Dense(d) if d.shape.len() == 2 => {
                Csr::from_dense(d.shape[0], d.shape[1], &d.data.to_f64())
                    .map_err(|e| self.invalid(slot, "a 2-D matrix", e.to_string()))
            }
            other => Err(self.invalid(slot, "a 2-D matrix", describe(&other))),
        }
    }

    /// A 2-D slot as a dense row-major `f64` matrix `(nrows, ncols, values)`.
    pub fn dense(&self, slot: &str) -> Result<(usize, usize, Vec<f64>)> {
        match self.read(slot)? {
            Element::Dense(d) if d.shape.len() == 2 => {
                Ok((d.shape[0], d.shape[1], d.data.to_f64()))
            }
            Element::Dense(d) if d.shape.len() == 1 => Ok((d.shape[0], 1, d.data.to_f64())),
            Element::Sparse(s) => {
                self.check_allocation(slot, &s.shape, std::mem::size_of::<f64>())?;
                let csr = s
                    .to_csr()
                    .map_err(|e| self.invalid(slot, "a valid sparse matrix", e.to_string()))?;
                Ok((csr.nrows(), csr.ncols(), csr.to_dense()))
            }
            other => Err(self.invalid(slot, "a 2-D numeric matrix", describe(&other))),
        }
    }

    /// The columns `cols` (in that order) of a 2-d matrix at `slot`, row-major
    /// `rows × |cols|` in double precision. A dense dataset is read in blocks of rows (at
    /// most about 64 MB at a time), so only the kept columns are ever held whole; any other
    /// encoding is read with [`Self::dense`] and subset. Returns (rows, columns of the
    /// matrix, values).
    pub fn dense_select(&self, slot: &str, cols: &[usize]) -> Result<(usize, usize, Vec<f64>)> {
        Ok(self
            .dense_select_as::<f64>(slot, cols)?
            .unwrap_or_else(|r| r))
    }

    /// [`Self::dense_select`] in the element type the dataset is stored in: a float32 dataset
    /// (scVelo's and cellfate's `Ms`, `velocity`, `fit_t`) stays float32 — half the memory,
    /// and the same values as the widened read — anything else is read as `f64`.
    pub fn dense_select_stored(&self, slot: &str, cols: &[usize]) -> Result<StoredColumns> {
        let f32_stored = matches!(self.location_type(slot)?, LocationType::Dataset)
            && self.float_size(slot) == Some(hdf5::types::FloatSize::U4);
        if f32_stored {
            match self.dense_select_as::<f32>(slot, cols)? {
                Ok((n, g, v)) => return Ok(StoredColumns::F32(n, g, v)),
                Err((n, g, v)) => return Ok(StoredColumns::F64(n, g, v)),
            }
        }
        let (n, g, v) = self.dense_select(slot, cols)?;
        Ok(StoredColumns::F64(n, g, v))
    }

    /// The block-wise read of [`Self::dense_select`] as `T`; `Err` carries the `f64` result
    /// of the fallback for slots that are not a plain 2-d dataset.
    #[allow(clippy::type_complexity)]
    fn dense_select_as<T: hdf5::H5Type + Copy>(
        &self,
        slot: &str,
        cols: &[usize],
    ) -> Result<std::result::Result<(usize, usize, Vec<T>), (usize, usize, Vec<f64>)>> {
        let plain = matches!(self.location_type(slot)?, LocationType::Dataset);
        let ds = if plain {
            Some(self.file.dataset(slot).map_err(self.hdf5_err(slot))?)
        } else {
            None
        };
        let Some(ds) = ds.filter(|d| d.shape().len() == 2) else {
            let (n, g, v) = self.dense(slot)?;
            if let Some(&bad) = cols.iter().find(|&&c| c >= g) {
                return Err(self.invalid(
                    slot,
                    format!("columns below {g}"),
                    format!("column {bad}"),
                ));
            }
            let mut out = Vec::with_capacity(n * cols.len());
            for row in v.chunks(g.max(1)).take(n) {
                out.extend(cols.iter().map(|&c| row[c]));
            }
            return Ok(Err((n, g, out)));
        };
        self.check_aligned(slot)?;
        let shape = ds.shape();
        let (n, g) = (shape[0], shape[1]);
        if let Some(&bad) = cols.iter().find(|&&c| c >= g) {
            return Err(self.invalid(slot, format!("columns below {g}"), format!("column {bad}")));
        }
        self.check_allocation(slot, &[n, cols.len()], std::mem::size_of::<T>())?;
        if let Some(chunk) = ds.chunk() {
            let elem = ds.dtype().map(|t| t.size()).unwrap_or(8);
            self.check_allocation(slot, &chunk, elem)?;
        }
        super::fault::set_context(&self.path, slot);
        let block = ((64 << 20) / (8 * g.max(1))).max(1);
        let mut out = Vec::with_capacity(n * cols.len());
        let mut start = 0;
        while start < n {
            let end = (start + block).min(n);
            let a: ndarray::Array2<T> = ds
                .read_slice((start..end, ..))
                .map_err(self.hdf5_err(slot))?;
            for row in a.rows() {
                out.extend(cols.iter().map(|&c| row[c]));
            }
            start = end;
        }
        Ok(Ok((n, g, out)))
    }

    /// Like [`Self::dense`] but in single precision (for large cell × gene layers such as
    /// `Ms`, stored as float32 by scVelo and by us): half the memory of the f64 copy.
    pub fn dense_f32(&self, slot: &str) -> Result<(usize, usize, Vec<f32>)> {
        match self.read(slot)? {
            Element::Dense(d) if d.shape.len() == 2 => {
                let data = match d.data {
                    NumVec::F32(v) => v,
                    other => other.to_f64().into_iter().map(|x| x as f32).collect(),
                };
                Ok((d.shape[0], d.shape[1], data))
            }
            _ => {
                let (n, g, v) = self.dense(slot)?;
                Ok((n, g, v.into_iter().map(|x| x as f32).collect()))
            }
        }
    }

    /// Columns `cols` of a dense 2-d numeric dataset at `slot`, row-major `rows × |cols|` in
    /// single precision, read as a hyperslab (the rest of the matrix is never loaded);
    /// `None` when the slot is stored otherwise (sparse, say: use [`Self::dense_f32`]).
    pub fn dense_f32_columns(
        &self,
        slot: &str,
        cols: std::ops::Range<usize>,
    ) -> Result<Option<Vec<f32>>> {
        Ok(self.columns_as::<f32>(slot, cols)?.map(|(_, v)| v))
    }

    /// Columns `cols` of a dense 2-d numeric dataset at `slot` as `(rows, values)`, values
    /// row-major `rows × |cols|` in double precision, read as a hyperslab (the rest of the
    /// matrix is never loaded, whatever shape it declares); `None` when the slot is stored
    /// otherwise (sparse, say: use [`Self::dense`]).
    pub fn dense_columns(
        &self,
        slot: &str,
        cols: std::ops::Range<usize>,
    ) -> Result<Option<(usize, Vec<f64>)>> {
        self.columns_as::<f64>(slot, cols)
    }

    fn columns_as<T: hdf5::H5Type>(
        &self,
        slot: &str,
        cols: std::ops::Range<usize>,
    ) -> Result<Option<(usize, Vec<T>)>> {
        if !matches!(self.location_type(slot)?, LocationType::Dataset) {
            return Ok(None);
        }
        let ds = self.file.dataset(slot).map_err(self.hdf5_err(slot))?;
        let shape = ds.shape();
        let numeric = ds
            .dtype()
            .ok()
            .and_then(|t| t.to_descriptor().ok())
            .is_some_and(|d| {
                use hdf5::types::TypeDescriptor as T;
                matches!(d, T::Float(_) | T::Integer(_) | T::Unsigned(_))
            });
        if shape.len() != 2 || !numeric {
            return Ok(None);
        }
        if cols.start > cols.end || cols.end > shape[1] {
            return Err(self.invalid(
                slot,
                format!("columns within 0..{}", shape[1]),
                format!("columns {cols:?}"),
            ));
        }
        if cols.is_empty() || shape[0] == 0 {
            return Ok(Some((shape[0], Vec::new())));
        }
        self.check_allocation(slot, &[shape[0], cols.len()], std::mem::size_of::<T>())?;
        // Reading a hyperslab decompresses every chunk it touches whole.
        if let Some(chunk) = ds.chunk() {
            let elem = ds.dtype().map(|t| t.size()).unwrap_or(8);
            self.check_allocation(slot, &chunk, elem)?;
        }
        let a: ndarray::Array2<T> = ds.read_slice((.., cols)).map_err(self.hdf5_err(slot))?;
        Ok(Some((shape[0], a.into_iter().collect())))
    }

    /// A cell × cell graph from `obsp[key]`, checked to be `n_obs × n_obs`.
    pub fn obsp(&self, key: &str) -> Result<Csr> {
        let slot = format!("obsp/{key}");
        let m = self.csr(&slot)?;
        let n = self.n_obs()?;
        if m.nrows() != n || m.ncols() != n {
            return Err(self.invalid(
                &slot,
                format!("an n_obs x n_obs matrix ({n} x {n})"),
                format!("{} x {}", m.nrows(), m.ncols()),
            ));
        }
        Ok(m)
    }

    /// `obsp[key]` validated as a transition matrix (square, finite, non-negative, rows
    /// summing to 1 within 1e-12). The direction is read from the key suffix (`_bwd`).
    pub fn transition_matrix(&self, key: &str) -> Result<TransitionMatrix> {
        let csr = self.obsp(key)?;
        let direction = if key.ends_with("bwd") {
            Direction::Backward
        } else {
            Direction::Forward
        };
        TransitionMatrix::try_new(csr, direction).map_err(|e| {
            self.invalid(
                &format!("obsp/{key}"),
                "a row-stochastic transition matrix",
                e.to_string(),
            )
        })
    }

    /// Checks that every slot has a shape consistent with `n_obs × n_vars` (metadata only).
    /// Returns the list of problems (empty when the file is consistent).
    pub fn validate(&self) -> Result<Vec<H5adError>> {
        let n_obs = self.n_obs()?;
        let n_vars = self.n_vars()?;
        let mut problems = Vec::new();
        let mut check = |slot: String, want: &[Option<usize>], what: &str| match self.info(&slot) {
            Ok(info) => {
                let ok = info.shape.len() >= want.len()
                    && want
                        .iter()
                        .zip(&info.shape)
                        .all(|(w, s)| w.is_none_or(|w| w == *s));
                if !ok {
                    problems.push(self.invalid(
                        &slot,
                        what.to_string(),
                        format!("shape {:?}", info.shape),
                    ));
                }
            }
            Err(e) => problems.push(e),
        };
        if self.exists("X") {
            check(
                "X".into(),
                &[Some(n_obs), Some(n_vars)],
                &format!("shape [{n_obs}, {n_vars}] (n_obs x n_vars)"),
            );
        }
        for k in self.keys("layers")? {
            check(
                format!("layers/{k}"),
                &[Some(n_obs), Some(n_vars)],
                &format!("the shape of X [{n_obs}, {n_vars}]"),
            );
        }
        for k in self.keys("obsm")? {
            check(
                format!("obsm/{k}"),
                &[Some(n_obs)],
                &format!("{n_obs} rows (n_obs)"),
            );
        }
        for k in self.keys("varm")? {
            check(
                format!("varm/{k}"),
                &[Some(n_vars)],
                &format!("{n_vars} rows (n_vars)"),
            );
        }
        for k in self.keys("obsp")? {
            check(
                format!("obsp/{k}"),
                &[Some(n_obs), Some(n_obs)],
                &format!("shape [{n_obs}, {n_obs}] (n_obs x n_obs)"),
            );
        }
        for k in self.keys("varp")? {
            check(
                format!("varp/{k}"),
                &[Some(n_vars), Some(n_vars)],
                &format!("shape [{n_vars}, {n_vars}] (n_vars x n_vars)"),
            );
        }
        Ok(problems)
    }

    // ----- element readers -------------------------------------------------------------

    fn read_group(&self, g: &Group, slot: &str) -> Result<Element> {
        let enc = group_encoding(g);
        match enc.as_str() {
            "csr_matrix" | "csc_matrix" => self.read_sparse(g, slot, &enc).map(Element::Sparse),
            "dataframe" => self.read_dataframe(g, slot).map(Element::DataFrame),
            "categorical" => self
                .read_categorical_group(g, slot)
                .map(Element::Categorical),
            "nullable-integer" | "nullable-boolean" | "nullable-string-array" => {
                self.read_nullable(g, slot, &enc)
            }
            "dict" | "raw" | "anndata" => {
                let mut members = Vec::new();
                let mut names = g.member_names().map_err(self.hdf5_err(slot))?;
                names.sort();
                for name in names {
                    let child = join(slot, &name);
                    members.push((name, self.read(&child)?));
                }
                Ok(match enc.as_str() {
                    "raw" => Element::Raw(members),
                    "anndata" => Element::AnnData(members),
                    _ => Element::Dict(members),
                })
            }
            other => Err(H5adError::Unsupported {
                path: self.path.clone(),
                slot: slot.to_string(),
                encoding: other.to_string(),
            }),
        }
    }

    fn read_dataset(&self, ds: &Dataset, slot: &str) -> Result<Element> {
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(slot))?;
        let shape = ds.shape();
        if let Some(enc) = read_str_attr(ds, "encoding-type") {
            let ok = matches!(
                enc.as_str(),
                "array" | "string-array" | "string" | "numeric-scalar"
            );
            if !ok {
                return Err(H5adError::Unsupported {
                    path: self.path.clone(),
                    slot: slot.to_string(),
                    encoding: enc,
                });
            }
        }
        if is_string(&desc) {
            let values = self.read_strings(ds, slot)?;
            if shape.is_empty() {
                return Ok(Element::Str(values.into_iter().next().unwrap_or_default()));
            }
            return Ok(Element::Strings { shape, values });
        }
        let data = self.read_numeric(ds, &desc, slot)?;
        if shape.is_empty() {
            Ok(Element::Scalar(data))
        } else {
            Ok(Element::Dense(DenseArray { shape, data }))
        }
    }

    pub(crate) fn read_numeric(
        &self,
        ds: &Dataset,
        desc: &TypeDescriptor,
        slot: &str,
    ) -> Result<NumVec> {
        self.check_dataset(ds, slot)?;
        let e = self.hdf5_err(slot);
        let v = match desc {
            TypeDescriptor::Integer(IntSize::U1) => ds.read_raw().map(NumVec::I8),
            TypeDescriptor::Integer(IntSize::U2) => ds.read_raw().map(NumVec::I16),
            TypeDescriptor::Integer(IntSize::U4) => ds.read_raw().map(NumVec::I32),
            TypeDescriptor::Integer(IntSize::U8) => ds.read_raw().map(NumVec::I64),
            TypeDescriptor::Unsigned(IntSize::U1) => ds.read_raw().map(NumVec::U8),
            TypeDescriptor::Unsigned(IntSize::U2) => ds.read_raw().map(NumVec::U16),
            TypeDescriptor::Unsigned(IntSize::U4) => ds.read_raw().map(NumVec::U32),
            TypeDescriptor::Unsigned(IntSize::U8) => ds.read_raw().map(NumVec::U64),
            TypeDescriptor::Float(FloatSize::U4) => ds.read_raw().map(NumVec::F32),
            TypeDescriptor::Float(FloatSize::U8) => ds.read_raw().map(NumVec::F64),
            TypeDescriptor::Boolean => ds.read_raw().map(NumVec::Bool),
            TypeDescriptor::Compound(c)
                if c.fields.len() == 2
                    && c.fields
                        .iter()
                        .all(|f| f.ty == TypeDescriptor::Float(FloatSize::U8)) =>
            {
                // numpy complex128 as h5py writes it: compound {r: f64, i: f64}.
                ds.read_raw::<num_complex::Complex64>().map(NumVec::C128)
            }
            TypeDescriptor::Enum(en) if en.members.len() == 2 && en.size == IntSize::U1 => {
                // h5py stores numpy bools as an enum {FALSE = 0, TRUE = 1}.
                ds.read_raw::<u8>()
                    .map(|v| NumVec::Bool(v.into_iter().map(|x| x != 0).collect()))
            }
            other => {
                return Err(self.invalid(
                    slot,
                    "a numeric, bool or string dataset",
                    format!("HDF5 type {other:?}"),
                ))
            }
        };
        v.map_err(e)
    }

    pub(crate) fn read_strings(&self, ds: &Dataset, slot: &str) -> Result<Vec<String>> {
        // A `String` per element: 24 bytes and its allocation.
        self.check_dataset_as(ds, slot, 32)?;
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(slot))?;
        let e = self.hdf5_err(slot);
        // hdf5's string types hand out `&str` without checking the bytes: every string is
        // checked to be UTF-8 here (a corrupt file can hold anything).
        match desc {
            TypeDescriptor::VarLenUnicode => ds
                .read_raw::<VarLenUnicode>()
                .map_err(e)
                .and_then(|v| self.utf8(slot, v.iter().map(|s| s.as_bytes()))),
            TypeDescriptor::VarLenAscii => ds
                .read_raw::<VarLenAscii>()
                .map_err(e)
                .and_then(|v| self.utf8(slot, v.iter().map(|s| s.as_bytes()))),
            // HDF5 converts a fixed-length string to a longer fixed-length one of the same
            // character set (not ASCII to UTF-8: numpy's `S` arrays are ASCII).
            TypeDescriptor::FixedAscii(n) if n <= 4096 => ds
                .read_raw::<hdf5::types::FixedAscii<4096>>()
                .map_err(e)
                .and_then(|v| self.utf8(slot, v.iter().map(|s| s.as_bytes()))),
            TypeDescriptor::FixedUnicode(n) if n <= 4096 => ds
                .read_raw::<hdf5::types::FixedUnicode<4096>>()
                .map_err(e)
                .and_then(|v| self.utf8(slot, v.iter().map(|s| s.as_bytes()))),
            other => Err(self.invalid(slot, "strings", format!("HDF5 type {other:?}"))),
        }
    }

    /// Strings from raw bytes, refusing invalid UTF-8 with the slot and element.
    fn utf8<'a>(&self, slot: &str, items: impl Iterator<Item = &'a [u8]>) -> Result<Vec<String>> {
        items
            .enumerate()
            .map(|(i, b)| {
                String::from_utf8(b.to_vec()).map_err(|_| {
                    self.invalid(
                        slot,
                        "UTF-8 strings",
                        format!(
                            "element {i} is not valid UTF-8 ({:?})",
                            String::from_utf8_lossy(b)
                        ),
                    )
                })
            })
            .collect()
    }

    fn sparse_shape(&self, g: &Group, slot: &str) -> Result<[usize; 2]> {
        let attr = g.attr("shape").or_else(|_| g.attr("h5sparse_shape"));
        let shape: Vec<i64> = attr
            .and_then(|a| a.read_raw::<i64>())
            .map_err(|_| self.invalid(slot, "a `shape` attribute on the sparse group", "none"))?;
        if shape.len() != 2 || shape.iter().any(|&s| s < 0) {
            return Err(self.invalid(slot, "shape [nrows, ncols]", format!("{shape:?}")));
        }
        Ok([shape[0] as usize, shape[1] as usize])
    }

    fn read_sparse(&self, g: &Group, slot: &str, enc: &str) -> Result<SparseArray> {
        /// Indices read per block (8 MB as int64), rounded up to whole chunks.
        const INDEX_BLOCK: usize = 1 << 20;
        let format = if enc == "csr_matrix" {
            SparseFormat::Csr
        } else {
            SparseFormat::Csc
        };
        let shape = self.sparse_shape(g, slot)?;
        let (major, minor) = match format {
            SparseFormat::Csr => (shape[0], shape[1]),
            SparseFormat::Csc => (shape[1], shape[0]),
        };
        // The row pointers of either orientation (CSC is converted to CSR) are allocated
        // from the declared shape: bound it like a dataset.
        self.check_allocation(
            &join(slot, "indptr"),
            &[major.max(minor).saturating_add(1)],
            std::mem::size_of::<i64>(),
        )?;
        let sub = |name: &str| -> Result<Dataset> {
            g.dataset(name).map_err(|_| H5adError::Missing {
                path: self.path.clone(),
                slot: join(slot, name),
                available: g.member_names().unwrap_or_default(),
            })
        };
        let data_ds = sub("data")?;
        let data_slot = join(slot, "data");
        let axis = if format == SparseFormat::Csr {
            "row"
        } else {
            "column"
        };
        // Lengths checked from the metadata before anything is read: a declared length that
        // cannot be right is refused without allocating it.
        let (indptr_pre, indices_pre) = (sub("indptr")?, sub("indices")?);
        if indptr_pre.ndim() != 1 || indptr_pre.size() != major + 1 {
            return Err(self.invalid(
                &join(slot, "indptr"),
                format!("{} entries ({} {axis}s + 1)", major + 1, major),
                format!("shape {:?}", indptr_pre.shape()),
            ));
        }
        if indices_pre.ndim() != 1 || data_ds.ndim() != 1 || indices_pre.size() != data_ds.size() {
            return Err(self.invalid(
                &join(slot, "indices"),
                format!("1-d, as many as data ({:?})", data_ds.shape()),
                format!("shape {:?}", indices_pre.shape()),
            ));
        }
        let desc = data_ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(&data_slot))?;
        let data = self.read_numeric(&data_ds, &desc, &data_slot)?;
        let indptr_slot = join(slot, "indptr");
        let indptr_ds = sub("indptr")?;
        self.check_dataset_as(&indptr_ds, &indptr_slot, 8)?;
        let indptr: Vec<i64> = indptr_ds.read_raw().map_err(self.hdf5_err(&indptr_slot))?;
        let indices_slot = join(slot, "indices");
        let indices_ds = sub("indices")?;
        self.check_dataset_as(&indices_ds, &indices_slot, 8)?;
        if indptr.len() != major + 1 {
            return Err(self.invalid(
                &indptr_slot,
                format!("{} entries ({} {axis}s + 1)", major + 1, major),
                format!("{} entries", indptr.len()),
            ));
        }
        if indptr[0] != 0 {
            return Err(self.invalid(
                &indptr_slot,
                "indptr[0] == 0",
                format!("indptr[0] == {}", indptr[0]),
            ));
        }
        if let Some(i) = indptr.windows(2).position(|w| w[1] < w[0]) {
            return Err(self.invalid(
                &indptr_slot,
                "a non-decreasing (monotone) indptr",
                format!(
                    "indptr decreases at {axis} {i} ({} -> {})",
                    indptr[i],
                    indptr[i + 1]
                ),
            ));
        }
        let nnz = indices_ds.size();
        if data.len() != nnz {
            return Err(self.invalid(
                &data_slot,
                format!("{nnz} values (as many as indices)"),
                format!("{} values", data.len()),
            ));
        }
        if indptr[major] as usize != nnz {
            return Err(self.invalid(
                &indptr_slot,
                format!("last entry == nnz ({nnz})"),
                format!("{}", indptr[major]),
            ));
        }
        // The indices in blocks of whole chunks, narrowed to u32 as they come: the int64
        // array whole (8 bytes per stored entry, 1.6 GB for 1M cells × 300 genes at
        // pancreas's density) was allocated, cleared by the kernel and copied only to be
        // narrowed.
        let chunk = indices_ds
            .chunk()
            .and_then(|c| c.first().copied())
            .filter(|&c| c > 0)
            .unwrap_or(INDEX_BLOCK);
        let block = INDEX_BLOCK.div_ceil(chunk) * chunk;
        let mut idx = Vec::with_capacity(nnz);
        let mut start = 0;
        while start < nnz {
            let end = (start + block).min(nnz);
            let part: Vec<i64> = indices_ds
                .read_slice_1d::<i64, _>(start..end)
                .map_err(self.hdf5_err(&indices_slot))?
                .into_raw_vec_and_offset()
                .0;
            for (k, &c) in part.iter().enumerate() {
                if c < 0 || c as usize >= minor || c > i64::from(u32::MAX) {
                    let p = start + k;
                    let at = indptr.partition_point(|&x| x <= p as i64).saturating_sub(1);
                    return Err(self.invalid(
                        &indices_slot,
                        format!("indices in 0..{minor}"),
                        format!("index {c} at {axis} {at}"),
                    ));
                }
                idx.push(c as u32);
            }
            start = end;
        }
        Ok(SparseArray {
            format,
            shape,
            indptr: indptr.into_iter().map(|x| x as usize).collect(),
            indices: idx,
            data,
        })
    }

    fn column_order(&self, g: &Group, slot: &str) -> Result<Vec<String>> {
        let Ok(attr) = g.attr("column-order") else {
            return Ok(Vec::new());
        };
        let desc = attr
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(slot))?;
        let e = self.hdf5_err(slot);
        super::fault::guarded_attr_read(|| match desc {
            TypeDescriptor::VarLenUnicode => attr
                .read_raw::<VarLenUnicode>()
                .map_err(e)
                .and_then(|v| self.utf8(slot, v.iter().map(|s| s.as_bytes()))),
            TypeDescriptor::VarLenAscii => attr
                .read_raw::<VarLenAscii>()
                .map_err(e)
                .and_then(|v| self.utf8(slot, v.iter().map(|s| s.as_bytes()))),
            // anndata writes an empty float64 array when there are no columns.
            _ => Ok(Vec::new()),
        })
    }

    fn read_dataframe(&self, g: &Group, slot: &str) -> Result<DataFrame> {
        let index_name = read_str_attr(g, "_index").unwrap_or_else(|| "_index".to_string());
        let index_slot = join(slot, &index_name);
        let index = self.read_index(g, &index_name, &index_slot)?;
        let mut columns = Vec::new();
        for name in self.column_order(g, slot)? {
            let col_slot = join(slot, &name);
            self.check_column_shape(g, &name, &col_slot, Some(index.len()))?;
            let col = self.read_column(g, &name, &col_slot)?;
            self.check_column_len(&col, &col_slot, index.len())?;
            columns.push((name, col));
        }
        Ok(DataFrame {
            index_name,
            index,
            columns,
        })
    }

    fn read_column(&self, g: &Group, name: &str, slot: &str) -> Result<Element> {
        if let Ok(ds) = g.dataset(name) {
            if ds.attr("categories").is_ok() {
                // anndata 0.7: integer codes, labels in `__categories/<name>`.
                let desc = ds
                    .dtype()
                    .and_then(|t| t.to_descriptor())
                    .map_err(self.hdf5_err(slot))?;
                let codes = self.read_numeric(&ds, &desc, slot)?;
                let cat_slot = join(&join(&g.name(), "__categories"), name);
                let cat_slot = cat_slot.trim_start_matches('/').to_string();
                let cat_ds = self
                    .file
                    .dataset(&cat_slot)
                    .map_err(|_| self.missing(&cat_slot))?;
                let categories = self.read_categories(&cat_ds, &cat_slot)?;
                let ordered = read_bool_attr(&cat_ds, "ordered").unwrap_or(false);
                return Ok(Element::Categorical(Categorical {
                    codes: codes.to_f64().into_iter().map(|c| c as i32).collect(),
                    categories,
                    ordered,
                }));
            }
        }
        self.read(slot)
    }

    fn read_categories(&self, ds: &Dataset, slot: &str) -> Result<Categories> {
        self.require_1d(ds, slot, "a 1-d array of categories")?;
        let desc = ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(slot))?;
        if is_string(&desc) {
            Ok(Categories::Str(self.read_strings(ds, slot)?))
        } else {
            Ok(Categories::Num(self.read_numeric(ds, &desc, slot)?))
        }
    }

    fn require_1d(&self, ds: &Dataset, slot: &str, expected: &str) -> Result<()> {
        let shape = ds.shape();
        if shape.len() == 1 {
            Ok(())
        } else {
            Err(self.invalid(slot, expected, format!("shape {shape:?}")))
        }
    }

    fn read_categorical_group(&self, g: &Group, slot: &str) -> Result<Categorical> {
        let codes_slot = join(slot, "codes");
        let codes_ds = g.dataset("codes").map_err(|_| self.missing(&codes_slot))?;
        self.require_1d(&codes_ds, &codes_slot, "a 1-d array of category codes")?;
        let desc = codes_ds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(&codes_slot))?;
        let codes = self.read_numeric(&codes_ds, &desc, &codes_slot)?;
        let cat_slot = join(slot, "categories");
        let cat_ds = g
            .dataset("categories")
            .map_err(|_| self.missing(&cat_slot))?;
        let categories = self.read_categories(&cat_ds, &cat_slot)?;
        let ordered = read_bool_attr(g, "ordered").unwrap_or(false);
        let codes: Vec<i32> = codes.to_f64().into_iter().map(|c| c as i32).collect();
        let n_cat = categories.len() as i32;
        if let Some(bad) = codes.iter().find(|&&c| c < -1 || c >= n_cat) {
            return Err(self.invalid(
                &codes_slot,
                format!("codes in -1..{n_cat}"),
                format!("code {bad}"),
            ));
        }
        Ok(Categorical {
            codes,
            categories,
            ordered,
        })
    }

    fn read_nullable(&self, g: &Group, slot: &str, enc: &str) -> Result<Element> {
        let vslot = join(slot, "values");
        let mslot = join(slot, "mask");
        let vds = g.dataset("values").map_err(|_| self.missing(&vslot))?;
        let mds = g.dataset("mask").map_err(|_| self.missing(&mslot))?;
        let mdesc = mds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(&mslot))?;
        let mask: Vec<bool> = self
            .read_numeric(&mds, &mdesc, &mslot)?
            .to_f64()
            .into_iter()
            .map(|x| x != 0.0)
            .collect();
        let vdesc = vds
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(self.hdf5_err(&vslot))?;
        let el = match enc {
            "nullable-string-array" => Element::NullableStr {
                values: self.read_strings(&vds, &vslot)?,
                mask,
            },
            "nullable-boolean" => Element::NullableBool {
                values: self
                    .read_numeric(&vds, &vdesc, &vslot)?
                    .to_f64()
                    .into_iter()
                    .map(|x| x != 0.0)
                    .collect(),
                mask,
            },
            _ => Element::NullableInt {
                values: self.read_numeric(&vds, &vdesc, &vslot)?,
                mask,
            },
        };
        Ok(el)
    }
}

fn describe(e: &Element) -> String {
    format!("{} with shape {:?}", e.encoding(), e.shape())
}

pub(crate) fn join(parent: &str, name: &str) -> String {
    let p = parent.trim_end_matches('/');
    if p.is_empty() {
        name.to_string()
    } else {
        format!("{p}/{name}")
    }
}

/// Checks that `path` is a non-empty regular file with the HDF5 signature; returns its size.
fn check_signature(path: &Path) -> Result<u64> {
    // Before opening: opening a FIFO would block until a writer appears.
    regular_file_len(path)?;
    let mut f = std::fs::File::open(path).map_err(|source| H5adError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let len = f
        .metadata()
        .map_err(|source| H5adError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len == 0 {
        return Err(H5adError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut head = vec![0u8; len.min(4096) as usize];
    f.read_exact(&mut head).map_err(|source| H5adError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let found = [0usize, 512, 1024, 2048]
        .iter()
        .any(|&off| head.len() >= off + 8 && head[off..off + 8] == HDF5_SIGNATURE);
    if found {
        Ok(len)
    } else {
        Err(H5adError::NotHdf5 {
            path: path.to_path_buf(),
        })
    }
}

fn is_string(desc: &TypeDescriptor) -> bool {
    matches!(
        desc,
        TypeDescriptor::VarLenUnicode
            | TypeDescriptor::VarLenAscii
            | TypeDescriptor::FixedAscii(_)
            | TypeDescriptor::FixedUnicode(_)
    )
}

fn dtype_name(desc: &TypeDescriptor) -> String {
    match desc {
        TypeDescriptor::Integer(s) => format!("int{}", *s as usize * 8),
        TypeDescriptor::Unsigned(s) => format!("uint{}", *s as usize * 8),
        TypeDescriptor::Float(s) => format!("float{}", *s as usize * 8),
        TypeDescriptor::Boolean => "bool".into(),
        TypeDescriptor::Enum(e) if e.members.len() == 2 => "bool".into(),
        TypeDescriptor::Compound(c) if c.fields.len() == 2 => "complex128".into(),
        d if is_string(d) => "str".into(),
        other => format!("{other:?}"),
    }
}

/// Reads a string attribute (variable-length UTF-8 or ASCII); `None` when absent or not a
/// string.
pub(crate) fn read_str_attr(loc: &hdf5::Location, name: &str) -> Option<String> {
    super::fault::guarded_attr_read(|| read_str_attr_unguarded(loc, name))
}

fn read_str_attr_unguarded(loc: &hdf5::Location, name: &str) -> Option<String> {
    let a = loc.attr(name).ok()?;
    match a.dtype().ok()?.to_descriptor().ok()? {
        TypeDescriptor::VarLenUnicode => a
            .read_scalar::<VarLenUnicode>()
            .ok()
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        TypeDescriptor::VarLenAscii => a
            .read_scalar::<VarLenAscii>()
            .ok()
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_) => a
            .read_scalar::<hdf5::types::FixedUnicode<4096>>()
            .ok()
            .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

fn read_bool_attr(loc: &hdf5::Location, name: &str) -> Option<bool> {
    let a = loc.attr(name).ok()?;
    a.read_scalar::<bool>()
        .ok()
        .or_else(|| a.read_scalar::<u8>().ok().map(|x| x != 0))
        .or_else(|| a.read_scalar::<i64>().ok().map(|x| x != 0))
}

fn group_encoding(g: &Group) -> String {
    if let Some(e) = read_str_attr(g, "encoding-type") {
        return e;
    }
    if let Some(f) = read_str_attr(g, "h5sparse_format") {
        return format!("{f}_matrix");
    }
    if g.attr("_index").is_ok() {
        return "dataframe".into();
    }
    "dict".into()
}
