//! Streaming `.h5ad` output: a new file written slot by slot, with sparse (CSR) and dense
//! matrices appended in row blocks so that no matrix has to be held in memory whole.
//!
//! Like [`write_new`](super::write_new) (which is built on it), the output goes to a hidden
//! temporary file beside the target and is renamed over the target only by
//! [`H5adStreamWriter::finish`]; a writer dropped before that (an error, a panic elsewhere)
//! removes its temporary file, so the target is never half-written.
//!
//! The encodings are those of the in-memory writer, attribute for attribute: a CSR group has
//! `encoding-type = "csr_matrix"`, `encoding-version = "0.1.0"`, an int64 `shape` attribute
//! and the datasets `data`, `indices`, `indptr`, with scipy's index dtype (int32 while every
//! index and the number of stored values fit, int64 otherwise). The only difference is the
//! storage layout: appended datasets are chunked and resizable (readers, ours and anndata,
//! do not care).
//!
//! ```no_run
//! use cellfate::io::H5adStreamWriter;
//! let w = H5adStreamWriter::create("counts.h5ad")?;
//! let mut x = w.csr_appender::<f32>("X", 3)?;
//! // Two rows: [1, 0, 2] and [0, 0, 0]; then one more row [0, 5, 0].
//! x.append(&[0, 2, 2], &[0, 2], &[1.0, 2.0])?;
//! x.append(&[0, 1], &[1], &[5.0])?;
//! x.finish()?;
//! w.finish()?;
//! # Ok::<(), cellfate::io::H5adError>(())
//! ```

use std::cell::Cell;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use hdf5::{Dataset, Group, H5Type};

use super::element::Element;
use super::error::H5adError;
use super::h5::{create_temp_h5, set_encoding, write_element};
use crate::output::TempOutput;

type Result<T> = std::result::Result<T, H5adError>;

/// Largest chunk of an appended dataset, in elements (1 MiB of 4-byte values).
const MAX_CHUNK: usize = 1 << 18;
/// Chunk cache of each open appended dataset, in bytes: holds the partially filled last
/// chunk between appends, so that it is not read back from the file.
const CHUNK_CACHE_BYTES: usize = 8 << 20;
/// Elements copied per step when an index dataset is widened to int64.
const WIDEN_STEP: usize = 1 << 22;

/// A new `.h5ad` file written incrementally (see the [module docs](self)).
///
/// Slots are HDF5 paths (`X`, `obs`, `layers/spliced`); missing parent groups are created as
/// `dict`s. The groups anndata expects (`layers`, `obsm`, `obsp`, `varm`, `varp`, `uns`) are
/// created by [`H5adStreamWriter::finish`] when absent.
#[derive(Debug)]
pub struct H5adStreamWriter {
    file: Option<hdf5::File>,
    tmp: Option<TempOutput>,
    output: PathBuf,
    /// Appenders created and not yet finished.
    open_appenders: Cell<usize>,
}

impl H5adStreamWriter {
    /// Starts a new file that will be renamed to `output` by [`H5adStreamWriter::finish`].
    pub fn create(output: impl AsRef<Path>) -> Result<Self> {
        let output = output.as_ref().to_path_buf();
        let (file, tmp) = create_temp_h5(&output)?;
        let w = Self {
            file: Some(file),
            tmp: Some(tmp),
            output,
            open_appenders: Cell::new(0),
        };
        set_encoding(w.file()?, "anndata", "0.1.0").map_err(w.err("/"))?;
        Ok(w)
    }

    /// The final path of the output.
    pub fn output(&self) -> &Path {
        &self.output
    }

    fn file(&self) -> Result<&hdf5::File> {
        self.file.as_ref().ok_or_else(|| H5adError::Invalid {
            path: self.output.clone(),
            slot: "/".into(),
            expected: "an open output".into(),
            found: "a finished or failed writer".into(),
        })
    }

    fn err(&self, slot: &str) -> impl FnOnce(hdf5::Error) -> H5adError {
        let path = self.output.clone();
        let slot = slot.to_string();
        move |source| H5adError::Hdf5 { path, slot, source }
    }

    fn invalid(&self, slot: &str, expected: impl Into<String>, found: String) -> H5adError {
        H5adError::Invalid {
            path: self.output.clone(),
            slot: slot.to_string(),
            expected: expected.into(),
            found,
        }
    }

    /// The parent group of `slot` (created as nested `dict`s when missing) and the last name.
    fn parent(&self, slot: &str) -> Result<(Group, String)> {
        let slot = slot.trim_matches('/');
        let mut parts: Vec<&str> = slot.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        if name.is_empty() {
            return Err(self.invalid(slot, "a non-empty slot name", format!("{slot:?}")));
        }
        let mut g: Group = (**self.file()?).clone();
        let mut path = String::new();
        for p in parts {
            path = if path.is_empty() {
                p.to_string()
            } else {
                format!("{path}/{p}")
            };
            g = if g.link_exists(p) {
                g.group(p).map_err(self.err(&path))?
            } else {
                let child = g.create_group(p).map_err(self.err(&path))?;
                set_encoding(&child, "dict", "0.1.0").map_err(self.err(&path))?;
                child
            };
        }
        Ok((g, name.to_string()))
    }

    /// Writes a complete element (dataframe, dict, array, ...) at `slot`, replacing any
    /// element already there.
    pub fn write_element(&self, slot: &str, element: &Element) -> Result<()> {
        let (g, name) = self.parent(slot)?;
        write_element(&g, &name, element).map_err(self.err(slot))
    }

    /// Creates an empty `dict` group at `slot` (and its parents) if it does not exist.
    pub fn create_dict(&self, slot: &str) -> Result<()> {
        let (g, name) = self.parent(slot)?;
        if !g.link_exists(&name) {
            let child = g.create_group(&name).map_err(self.err(slot))?;
            set_encoding(&child, "dict", "0.1.0").map_err(self.err(slot))?;
        }
        Ok(())
    }

    /// Makes `link` a second name (an HDF5 hard link) of the existing object at `target`:
    /// both slots then read as the same element, stored once.
    pub fn hard_link(&self, target: &str, link: &str) -> Result<()> {
        let target = target.trim_matches('/');
        if !self.file()?.link_exists(target) {
            return Err(H5adError::Missing {
                path: self.output.clone(),
                slot: target.to_string(),
                available: Vec::new(),
            });
        }
        let (g, name) = self.parent(link)?;
        if g.link_exists(&name) {
            g.unlink(&name).map_err(self.err(link))?;
        }
        self.file()?
            .link_hard(target, link.trim_matches('/'))
            .map_err(self.err(link))
    }

    /// Starts a CSR matrix (`csr_matrix`) with `n_cols` columns at `slot`, to be filled by
    /// [`CsrAppender::append`] and completed by [`CsrAppender::finish`].
    pub fn csr_appender<T: H5Type>(&self, slot: &str, n_cols: usize) -> Result<CsrAppender<'_, T>> {
        let (parent, name) = self.parent(slot)?;
        if parent.link_exists(&name) {
            parent.unlink(&name).map_err(self.err(slot))?;
        }
        let group = parent.create_group(&name).map_err(self.err(slot))?;
        set_encoding(&group, "csr_matrix", "0.1.0").map_err(self.err(slot))?;
        group
            .new_attr::<i64>()
            .shape(2)
            .create("shape")
            .and_then(|a| a.write_raw(&[0_i64, n_cols as i64]))
            .map_err(self.err(slot))?;
        self.open_appenders.set(self.open_appenders.get() + 1);
        Ok(CsrAppender {
            writer: self,
            group,
            slot: slot.trim_matches('/').to_string(),
            n_cols,
            n_rows: 0,
            nnz: 0,
            sets: None,
            wide: n_cols >= i32::MAX as usize,
            wide_at: i32::MAX as usize,
            failed: false,
            _data: PhantomData,
        })
    }

    /// Starts a dense 2-d array (`array`) of shape `n_rows × n_cols` at `slot`, to be filled in
    /// row order by [`DenseRowAppender::append`] and completed by
    /// [`DenseRowAppender::finish`].
    pub fn dense_row_appender<T: H5Type>(
        &self,
        slot: &str,
        n_rows: usize,
        n_cols: usize,
    ) -> Result<DenseRowAppender<'_, T>> {
        let (parent, name) = self.parent(slot)?;
        if parent.link_exists(&name) {
            parent.unlink(&name).map_err(self.err(slot))?;
        }
        let b = parent.new_dataset::<T>();
        let shape = [n_rows, n_cols];
        let b = match super::compression::level_for(&shape) {
            Some(level) => b
                .chunk(super::compression::chunk_for(&shape))
                .shuffle()
                .deflate(level),
            None => b,
        };
        let ds = b
            .shape(shape)
            .create(name.as_str())
            .map_err(self.err(slot))?;
        set_encoding(&ds, "array", "0.2.0").map_err(self.err(slot))?;
        self.open_appenders.set(self.open_appenders.get() + 1);
        Ok(DenseRowAppender {
            writer: self,
            ds,
            slot: slot.trim_matches('/').to_string(),
            n_rows,
            n_cols,
            rows_done: 0,
            _data: PhantomData,
        })
    }

    /// Completes the file: creates the standard groups that are still missing, closes the
    /// file and renames it over the target. Fails (and removes the temporary file) if an
    /// appender was not finished.
    pub fn finish(mut self) -> Result<()> {
        if self.open_appenders.get() > 0 {
            return Err(self.invalid(
                "/",
                "every appended matrix finished",
                format!("{} unfinished", self.open_appenders.get()),
            ));
        }
        for g in ["layers", "obsm", "obsp", "varm", "varp", "uns"] {
            self.create_dict(g)?;
        }
        let file = self.file.take().ok_or_else(|| {
            self.invalid("/", "an open output", "a finished or failed writer".into())
        })?;
        file.close().map_err(self.err("/"))?;
        match self.tmp.take() {
            Some(tmp) => Ok(tmp.persist()?),
            None => Err(self.invalid("/", "an open output", "a finished writer".into())),
        }
    }
}

impl Drop for H5adStreamWriter {
    /// Removes the temporary file of an unfinished output (after a successful
    /// [`H5adStreamWriter::finish`] there is none left).
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            drop(f.close());
        }
        // Dropping the temporary output removes its file.
        drop(self.tmp.take());
    }
}

/// The three datasets of a CSR group, created at the first append (their chunk size follows
/// the size of the first block).
#[derive(Debug)]
struct CsrSets {
    data: Dataset,
    indices: Dataset,
    indptr: Dataset,
}

/// Appends row blocks to a CSR matrix of an [`H5adStreamWriter`]. The `shape` attribute is
/// kept up to date after every block.
#[derive(Debug)]
pub struct CsrAppender<'w, T> {
    writer: &'w H5adStreamWriter,
    group: Group,
    slot: String,
    n_cols: usize,
    n_rows: usize,
    nnz: usize,
    sets: Option<CsrSets>,
    /// Whether `indices`/`indptr` are int64 (else int32).
    wide: bool,
    /// Number of stored values from which the indices must be int64 (`i32::MAX`, as scipy).
    wide_at: usize,
    /// Set by a failed write: the datasets may be inconsistent, so nothing more is accepted.
    failed: bool,
    _data: PhantomData<fn(&T)>,
}

impl<T: H5Type> CsrAppender<'_, T> {
    /// Rows appended so far.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Values stored so far.
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// Appends a block of rows given in CSR form relative to the block: `indptr` has one entry
    /// more than the block has rows and starts at 0, and row `r` holds the column indices
    /// `indices[indptr[r]..indptr[r + 1]]` with the values at the same positions of `data`.
    /// An inconsistent block is refused (nothing is written).
    pub fn append(&mut self, indptr: &[usize], indices: &[u32], data: &[T]) -> Result<()> {
        self.check_usable()?;
        self.check_block(indptr, indices, data)?;
        self.failed = true; // until the block is completely written
        let rows = indptr.len() - 1;
        let add = data.len();
        let new_nnz = self.nnz + add;
        if !self.wide && new_nnz >= self.wide_at {
            self.widen()?;
        }
        let err = self.writer.err(&self.slot);
        let sets = match self.sets.take() {
            Some(s) => s,
            None => self.create_sets(add, rows).map_err(err)?,
        };
        let result = self.write_block(&sets, indptr, indices, data);
        self.sets = Some(sets);
        result.map_err(self.writer.err(&self.slot))?;
        self.n_rows += rows;
        self.nnz = new_nnz;
        self.write_shape()?;
        self.failed = false;
        Ok(())
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(self.writer.invalid(
                &self.slot,
                "a matrix without failed writes",
                "an earlier write that failed".into(),
            ));
        }
        Ok(())
    }

    fn check_block(&self, indptr: &[usize], indices: &[u32], data: &[T]) -> Result<()> {
        let w = self.writer;
        let Some((&first, &last)) = indptr.first().zip(indptr.last()) else {
            return Err(w.invalid(
                &self.slot,
                "a block indptr with at least one entry",
                "an empty indptr".into(),
            ));
        };
        if first != 0 || indptr.windows(2).any(|p| p[1] < p[0]) {
            return Err(w.invalid(
                &self.slot,
                "a block indptr starting at 0 and non-decreasing",
                format!("indptr starting at {first}"),
            ));
        }
        if last != indices.len() || last != data.len() {
            return Err(w.invalid(
                &self.slot,
                format!("{last} indices and values (the last indptr entry)"),
                format!("{} indices and {} values", indices.len(), data.len()),
            ));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= self.n_cols) {
            return Err(w.invalid(
                &self.slot,
                format!("column indices in 0..{}", self.n_cols),
                format!("index {bad}"),
            ));
        }
        Ok(())
    }

    fn create_sets(&self, nnz: usize, rows: usize) -> hdf5::Result<CsrSets> {
        let data = resizable::<T>(&self.group, "data", nnz)?;
        let (indices, indptr) = if self.wide {
            (
                resizable::<i64>(&self.group, "indices", nnz)?,
                resizable::<i64>(&self.group, "indptr", rows + 1)?,
            )
        } else {
            (
                resizable::<i32>(&self.group, "indices", nnz)?,
                resizable::<i32>(&self.group, "indptr", rows + 1)?,
            )
        };
        indptr.resize(1)?;
        if self.wide {
            indptr.write_slice(&[0_i64][..], 0..1)?;
        } else {
            indptr.write_slice(&[0_i32][..], 0..1)?;
        }
        Ok(CsrSets {
            data,
            indices,
            indptr,
        })
    }

    fn write_block(
        &self,
        sets: &CsrSets,
        indptr: &[usize],
        indices: &[u32],
        data: &[T],
    ) -> hdf5::Result<()> {
        let (n0, n1) = (self.nnz, self.nnz + data.len());
        let (r0, r1) = (self.n_rows + 1, self.n_rows + indptr.len());
        sets.data.resize(n1)?;
        sets.indices.resize(n1)?;
        sets.indptr.resize(r1)?;
        if n1 > n0 {
            sets.data.write_slice(data, n0..n1)?;
        }
        if self.wide {
            let idx: Vec<i64> = indices.iter().map(|&i| i64::from(i)).collect();
            let ptr: Vec<i64> = indptr[1..].iter().map(|&p| (n0 + p) as i64).collect();
            if n1 > n0 {
                sets.indices.write_slice(&idx[..], n0..n1)?;
            }
            if r1 > r0 {
                sets.indptr.write_slice(&ptr[..], r0..r1)?;
            }
        } else {
            // `new_nnz < wide_at <= i32::MAX` and `n_cols < i32::MAX` here.
            let idx: Vec<i32> = indices.iter().map(|&i| i as i32).collect();
            let ptr: Vec<i32> = indptr[1..].iter().map(|&p| (n0 + p) as i32).collect();
            if n1 > n0 {
                sets.indices.write_slice(&idx[..], n0..n1)?;
            }
            if r1 > r0 {
                sets.indptr.write_slice(&ptr[..], r0..r1)?;
            }
        }
        Ok(())
    }

    /// Switches `indices` and `indptr` to int64 (copying what is already written), as scipy
    /// does once the number of stored values no longer fits int32.
    fn widen(&mut self) -> Result<()> {
        self.wide = true;
        let Some(sets) = self.sets.take() else {
            return Ok(()); // nothing written yet: the datasets are created as int64
        };
        let widened = (|| -> hdf5::Result<CsrSets> {
            let indices = widen_dataset(&self.group, sets.indices, "indices")?;
            let indptr = widen_dataset(&self.group, sets.indptr, "indptr")?;
            Ok(CsrSets {
                data: sets.data,
                indices,
                indptr,
            })
        })()
        .map_err(self.writer.err(&self.slot))?;
        self.sets = Some(widened);
        Ok(())
    }

    fn write_shape(&self) -> Result<()> {
        self.group
            .attr("shape")
            .and_then(|a| a.write_raw(&[self.n_rows as i64, self.n_cols as i64]))
            .map_err(self.writer.err(&self.slot))
    }

    /// Completes the matrix (an appender that never received a block writes a `0 × n_cols`
    /// matrix) and returns the number of stored values.
    pub fn finish(mut self) -> Result<usize> {
        self.check_usable()?;
        if self.sets.is_none() {
            let sets = self
                .create_sets(0, 0)
                .map_err(self.writer.err(&self.slot))?;
            self.sets = Some(sets);
        }
        self.write_shape()?;
        let open = &self.writer.open_appenders;
        open.set(open.get().saturating_sub(1));
        Ok(self.nnz)
    }

    /// Test hook: the number of stored values from which the indices become int64.
    #[cfg(test)]
    pub(crate) fn set_wide_at(&mut self, n: usize) {
        self.wide_at = n;
    }
}

/// A chunked 1-d dataset that can grow without bound, with a chunk of about `hint` elements.
fn resizable<T: H5Type>(g: &Group, name: &str, hint: usize) -> hdf5::Result<Dataset> {
    let chunk = hint.clamp(1, MAX_CHUNK);
    let b = g
        .new_dataset::<T>()
        .chunk(chunk)
        .chunk_cache(521, CHUNK_CACHE_BYTES, 1.0);
    // Compressed (when asked) whatever its final length, which is not known yet.
    let b = match super::compression::level_for(&[usize::MAX]) {
        Some(level) => b.shuffle().deflate(level),
        None => b,
    };
    b.shape(0..).create(name)
}

/// Replaces an int32 dataset by an int64 copy under the same name.
fn widen_dataset(g: &Group, old: Dataset, name: &str) -> hdf5::Result<Dataset> {
    let len = old.size();
    let chunk = old.chunk().and_then(|c| c.first().copied()).unwrap_or(len);
    let tmp_name = format!("{name}.int64");
    let new = resizable::<i64>(g, &tmp_name, chunk)?;
    new.resize(len)?;
    let mut start = 0;
    while start < len {
        let end = (start + WIDEN_STEP).min(len);
        let part = old.read_slice_1d::<i64, _>(start..end)?;
        let part = part
            .as_slice()
            .map_or_else(|| part.to_vec(), <[i64]>::to_vec);
        new.write_slice(&part[..], start..end)?;
        start = end;
    }
    drop(old);
    g.unlink(name)?;
    g.relink(&tmp_name, name)?;
    Ok(new)
}

/// Appends row blocks to a dense 2-d array of an [`H5adStreamWriter`].
#[derive(Debug)]
pub struct DenseRowAppender<'w, T> {
    writer: &'w H5adStreamWriter,
    ds: Dataset,
    slot: String,
    n_rows: usize,
    n_cols: usize,
    rows_done: usize,
    _data: PhantomData<fn(&T)>,
}

impl<T: H5Type> DenseRowAppender<'_, T> {
    /// Appends whole rows (row-major; `values.len()` must be a multiple of the number of
    /// columns and not run past the last row).
    pub fn append(&mut self, values: &[T]) -> Result<()> {
        let w = self.writer;
        let rows = values.len().checked_div(self.n_cols).unwrap_or(0);
        if rows * self.n_cols != values.len() || self.rows_done + rows > self.n_rows {
            return Err(w.invalid(
                &self.slot,
                format!(
                    "whole rows of {} values, at most {} more",
                    self.n_cols,
                    self.n_rows - self.rows_done
                ),
                format!("{} values", values.len()),
            ));
        }
        if rows > 0 {
            let view = ndarray::ArrayView2::from_shape((rows, self.n_cols), values)
                .map_err(|e| hdf5::Error::from(e.to_string()))
                .map_err(w.err(&self.slot))?;
            let r0 = self.rows_done;
            self.ds
                .write_slice(view, (r0..r0 + rows, ..))
                .map_err(w.err(&self.slot))?;
        }
        self.rows_done += rows;
        Ok(())
    }

    /// Completes the array; fails unless every row was written.
    pub fn finish(self) -> Result<()> {
        if self.rows_done != self.n_rows && self.n_cols > 0 {
            return Err(self.writer.invalid(
                &self.slot,
                format!("{} rows", self.n_rows),
                format!("{} rows written", self.rows_done),
            ));
        }
        let open = &self.writer.open_appenders;
        open.set(open.get().saturating_sub(1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::io::{H5adReader, NumVec, SparseArray, SparseFormat};

    /// The dtype of `slot` as HDF5 describes it.
    fn dtype(path: &Path, slot: &str) -> hdf5::types::TypeDescriptor {
        let f = hdf5::File::open(path).unwrap();
        f.dataset(slot)
            .unwrap()
            .dtype()
            .unwrap()
            .to_descriptor()
            .unwrap()
    }

    fn csr(rows: &[&[(u32, f32)]], n_cols: usize) -> SparseArray {
        let mut indptr = vec![0];
        let (mut indices, mut data) = (Vec::new(), Vec::new());
        for r in rows {
            for &(j, x) in *r {
                indices.push(j);
                data.push(x);
            }
            indptr.push(indices.len());
        }
        SparseArray {
            format: SparseFormat::Csr,
            shape: [rows.len(), n_cols],
            indptr,
            indices,
            data: NumVec::F32(data),
        }
    }

    /// Appends `rows` in blocks of `block` rows.
    fn append_blocks(app: &mut CsrAppender<'_, f32>, rows: &[&[(u32, f32)]], block: usize) {
        for b in rows.chunks(block) {
            let s = csr(b, app.n_cols);
            let NumVec::F32(data) = &s.data else { panic!() };
            app.append(&s.indptr, &s.indices, data).unwrap();
        }
    }

    const ROWS: [&[(u32, f32)]; 5] = [
        &[(0, 1.0), (3, 2.0)],
        &[],
        &[(1, 5.0)],
        &[(0, 1.0), (1, 1.0), (2, 1.0), (3, 7.5)],
        &[],
    ];

    #[test]
    fn appended_csr_reads_like_the_whole_matrix() {
        let d = tempfile::tempdir().unwrap();
        let (whole, streamed) = (d.path().join("whole.h5ad"), d.path().join("streamed.h5ad"));
        let m = csr(&ROWS, 4);
        crate::io::write_new(&whole, &[("X".into(), Element::Sparse(m.clone()))]).unwrap();
        let w = H5adStreamWriter::create(&streamed).unwrap();
        let mut x = w.csr_appender::<f32>("X", 4).unwrap();
        append_blocks(&mut x, &ROWS, 2);
        assert_eq!((x.n_rows(), x.nnz()), (5, 7));
        assert_eq!(x.finish().unwrap(), 7);
        w.hard_link("X", "layers/counts").unwrap();
        w.finish().unwrap();
        let r = H5adReader::open(&streamed).unwrap();
        assert_eq!(r.read("X").unwrap(), Element::Sparse(m.clone()));
        assert_eq!(r.read("layers/counts").unwrap(), Element::Sparse(m));
        assert!(r.same_object("X", "/layers/counts"));
        assert!(!r.same_object("X", "layers") && !r.same_object("X", "layers/missing"));
        let rw = H5adReader::open(&whole).unwrap();
        assert!(rw.same_object("X", "X") && !rw.same_object("X", "obs"));
        for ds in ["X/data", "X/indices", "X/indptr"] {
            assert_eq!(dtype(&whole, ds), dtype(&streamed, ds), "{ds}");
        }
        let f = hdf5::File::open(&streamed).unwrap();
        let g = f.group("X").unwrap();
        assert_eq!(g.attr("shape").unwrap().read_raw::<i64>().unwrap(), [5, 4]);
        let enc = crate::io::read::read_str_attr(&g, "encoding-type");
        assert_eq!(enc.as_deref(), Some("csr_matrix"));
        // The standard groups exist, and no temporary file is left.
        for grp in ["layers", "obsm", "obsp", "varm", "varp", "uns"] {
            assert!(f.link_exists(grp), "{grp}");
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn indices_become_int64_when_the_values_outgrow_int32() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("wide.h5ad");
        let w = H5adStreamWriter::create(&out).unwrap();
        let mut x = w.csr_appender::<f32>("X", 4).unwrap();
        x.set_wide_at(4); // as if i32::MAX were 4: the second block crosses it
        append_blocks(&mut x, &ROWS, 2);
        x.finish().unwrap();
        w.finish().unwrap();
        let r = H5adReader::open(&out).unwrap();
        assert_eq!(r.read("X").unwrap(), Element::Sparse(csr(&ROWS, 4)));
        for ds in ["X/indices", "X/indptr"] {
            assert_eq!(
                dtype(&out, ds),
                hdf5::types::TypeDescriptor::Integer(hdf5::types::IntSize::U8),
                "{ds}"
            );
        }
        let f = hdf5::File::open(&out).unwrap();
        assert!(!f.link_exists("X/indices.int64"));
    }

    #[test]
    fn bad_blocks_and_unfinished_outputs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("bad.h5ad");
        let w = H5adStreamWriter::create(&out).unwrap();
        let mut x = w.csr_appender::<f32>("X", 4).unwrap();
        // Column out of range, inconsistent lengths, indptr not starting at 0: refused,
        // nothing written, the appender stays usable.
        assert!(x.append(&[0, 1], &[4], &[1.0]).is_err());
        assert!(x.append(&[0, 2], &[1], &[1.0]).is_err());
        assert!(x.append(&[1, 1], &[], &[]).is_err());
        assert!(x.append(&[], &[], &[]).is_err());
        x.append(&[0, 1], &[3], &[1.0]).unwrap();
        drop(x); // never finished
        assert!(w.finish().is_err());
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "temporary file left"
        );
        // A writer dropped without finish leaves nothing either.
        let w = H5adStreamWriter::create(&out).unwrap();
        w.write_element("uns/x", &Element::Str("y".into())).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn empty_csr_and_dense_rows() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("dense.h5ad");
        let w = H5adStreamWriter::create(&out).unwrap();
        w.csr_appender::<f32>("layers/empty", 3)
            .unwrap()
            .finish()
            .unwrap();
        let mut v = w.dense_row_appender::<f32>("layers/dense", 3, 2).unwrap();
        v.append(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(v.append(&[5.0]).is_err()); // not a whole row
        assert!(v.append(&[5.0, 6.0, 7.0, 8.0]).is_err()); // past the last row
        v.append(&[5.0, 6.0]).unwrap();
        v.finish().unwrap();
        let mut short = w.dense_row_appender::<f32>("layers/short", 2, 2).unwrap();
        short.append(&[1.0, 2.0]).unwrap();
        assert!(short.finish().is_err());
        assert!(
            w.finish().is_err(),
            "an unfinished appender must fail the output"
        );
        let w = H5adStreamWriter::create(&out).unwrap();
        w.csr_appender::<f32>("layers/empty", 3)
            .unwrap()
            .finish()
            .unwrap();
        let mut v = w.dense_row_appender::<f32>("layers/dense", 3, 2).unwrap();
        v.append(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        v.append(&[5.0, 6.0]).unwrap();
        v.finish().unwrap();
        w.finish().unwrap();
        let r = H5adReader::open(&out).unwrap();
        assert_eq!(
            r.read("layers/empty").unwrap(),
            Element::Sparse(csr(&[], 3))
        );
        let (n, g, x) = r.dense("layers/dense").unwrap();
        assert_eq!((n, g, x), (3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    }
}
