//! `.h5ad` writer: adds, replaces or removes slots in a *copy* of an input file.
//!
//! The output is written to a temporary file in the target directory and renamed over the
//! target only when complete, so an interrupted run never leaves a partial output and the input
//! is never modified unless the caller asks for it with [`H5adEdit::write_in_place`].
//! Everything written uses the anndata ≥ 0.8 layout (`encoding-type`/`encoding-version`
//! attributes, variable-length UTF-8 strings). Untouched slots of a file already in that layout
//! are copied object by object (HDF5 `H5Ocopy`, no decoding); files in the anndata 0.7 layout
//! are re-encoded slot by slot.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hdf5::types::VarLenUnicode;
use hdf5::{Group, H5Type, Location};

use super::element::{Categorical, Categories, DataFrame, Element, NumVec, SparseArray};
use super::error::H5adError;
use super::read::{join, H5adReader};
use super::stream::H5adStreamWriter;

type Result<T> = std::result::Result<T, H5adError>;

#[derive(Clone, Debug)]
enum Change {
    Set(Element),
    Remove,
}

/// A set of changes to apply to a copy of an `.h5ad` file.
///
/// Slots are HDF5 paths: `X`, `layers/velocity`, `obsp/T_fwd`, `obsm/lineages_fwd`,
/// `uns/T_fwd_params`, and, for dataframe columns, `obs/term_states_fwd` or `var/<column>`.
///
/// ```no_run
/// use cellfate::io::{Element, H5adEdit};
/// let mut edit = H5adEdit::new("in.h5ad");
/// edit.set("obs/my_score", Element::from_f64(vec![0.5; 100]));
/// edit.write_to("out.h5ad")?;
/// # Ok::<(), cellfate::io::H5adError>(())
/// ```
#[derive(Clone, Debug)]
pub struct H5adEdit {
    input: PathBuf,
    changes: Vec<(String, Change)>,
    reencode_all: bool,
}

impl H5adEdit {
    /// Starts an edit of `input` (nothing is read until the output is written).
    pub fn new(input: impl AsRef<Path>) -> Self {
        Self {
            input: input.as_ref().to_path_buf(),
            changes: Vec::new(),
            reencode_all: false,
        }
    }

    /// Adds or replaces a slot. Intermediate groups (`uns/a/b`) are created as dicts.
    pub fn set(&mut self, slot: &str, element: Element) -> &mut Self {
        let slot = slot.trim_matches('/').to_string();
        self.changes.retain(|(s, _)| s != &slot);
        self.changes.push((slot, Change::Set(element)));
        self
    }

    /// Removes a slot (or a dataframe column) if present.
    pub fn remove(&mut self, slot: &str) -> &mut Self {
        let slot = slot.trim_matches('/').to_string();
        self.changes.retain(|(s, _)| s != &slot);
        self.changes.push((slot, Change::Remove));
        self
    }

    /// Re-encode every slot instead of copying untouched ones byte for byte (normalises an
    /// old-layout or foreign file to the anndata ≥ 0.8 layout; used by round-trip tests).
    pub fn reencode_all(&mut self, yes: bool) -> &mut Self {
        self.reencode_all = yes;
        self
    }

    /// Writes the edited copy to `output` (temporary file + rename). Refuses to overwrite the
    /// input: use [`H5adEdit::write_in_place`] for that.
    pub fn write_to(&self, output: impl AsRef<Path>) -> Result<()> {
        let output = output.as_ref();
        if same_file(&self.input, output) {
            return Err(H5adError::WouldOverwriteInput {
                path: output.to_path_buf(),
            });
        }
        self.write_impl(output)
    }

    /// Applies the edit to the input file itself (still via a temporary file and an atomic
    /// rename, so an interruption leaves the input intact).
    pub fn write_in_place(&self) -> Result<()> {
        let input = self.input.clone();
        self.write_impl(&input)
    }

    fn write_impl(&self, output: &Path) -> Result<()> {
        self.write_impl_with(output, |_| Ok::<_, H5adError>(Vec::new()))
    }

    /// Writes the edited copy to `output` like [`H5adEdit::write_to`], but first calls
    /// `produce` with the open output: it writes large slots early, as whole elements (to be
    /// dropped from memory right after) or a dense array column block by column block
    /// ([`EarlySlots`]), and returns more slots to set (computed meanwhile, say per-gene
    /// results). Early slots replace the input's slots of the same name. Atomic as
    /// [`H5adEdit::write_to`]: on an error (of `produce` too) nothing is left behind.
    pub fn write_to_with<E: From<H5adError>>(
        self,
        output: impl AsRef<Path>,
        produce: impl FnOnce(&mut EarlySlots) -> std::result::Result<Vec<(String, Element)>, E>,
    ) -> std::result::Result<(), E> {
        let output = output.as_ref();
        if same_file(&self.input, output) {
            return Err(H5adError::WouldOverwriteInput {
                path: output.to_path_buf(),
            }
            .into());
        }
        self.write_impl_with(output, produce)
    }

    /// [`H5adEdit::write_to_with`] onto the input file itself (temporary file + rename).
    pub fn write_in_place_with<E: From<H5adError>>(
        self,
        produce: impl FnOnce(&mut EarlySlots) -> std::result::Result<Vec<(String, Element)>, E>,
    ) -> std::result::Result<(), E> {
        let input = self.input.clone();
        self.write_impl_with(&input, produce)
    }

    fn write_impl_with<E: From<H5adError>>(
        &self,
        output: &Path,
        produce: impl FnOnce(&mut EarlySlots) -> std::result::Result<Vec<(String, Element)>, E>,
    ) -> std::result::Result<(), E> {
        let reader = H5adReader::open(&self.input)?;
        let tmp = temp_path(output);
        let hdf = |tmp: &Path, slot: &str| {
            let (path, slot) = (tmp.to_path_buf(), slot.to_string());
            move |source| H5adError::Hdf5 { path, slot, source }
        };
        let result = (|| -> std::result::Result<(), E> {
            let file = create_h5(&tmp).map_err(hdf(&tmp, "/"))?;
            let staging = file.create_group(STAGING).map_err(hdf(&tmp, STAGING))?;
            let mut early = EarlySlots {
                staging,
                path: output.to_path_buf(),
                n_obs: reader.n_obs()?,
                n_vars: reader.n_vars()?,
                slots: Vec::new(),
            };
            let extra = produce(&mut early)?;
            let EarlySlots { staging, slots, .. } = early;
            drop(staging);
            // The early slots are moved in after the copy: nothing is copied or written there.
            let late: Vec<(String, Change)> = extra
                .into_iter()
                .map(|(slot, el)| (slot.trim_matches('/').to_string(), Change::Set(el)))
                .chain(slots.iter().map(|s| (s.clone(), Change::Remove)))
                .collect();
            let w = Writer {
                edit: self,
                late: &late,
                reader: &reader,
                out_path: output.to_path_buf(),
                copy_raw: !reader.is_legacy() && !self.reencode_all,
            };
            w.root(&file)?;
            for (i, slot) in slots.iter().enumerate() {
                let mut parent = String::new();
                for part in slot
                    .split('/')
                    .collect::<Vec<_>>()
                    .split_last()
                    .map_or(&[][..], |x| x.1)
                {
                    parent = join(&parent, part);
                    if !file.link_exists(&parent) {
                        let g = file.create_group(&parent).map_err(hdf(output, &parent))?;
                        set_encoding(&g, "dict", "0.1.0").map_err(hdf(output, &parent))?;
                    }
                }
                file.relink(&format!("{STAGING}/{i}"), slot)
                    .map_err(hdf(output, slot))?;
            }
            file.unlink(STAGING).map_err(hdf(output, STAGING))?;
            file.close().map_err(hdf(&tmp, "/"))?;
            let f = std::fs::File::open(&tmp).map_err(|source| H5adError::Io {
                path: tmp.clone(),
                op: "reopening the temporary output",
                source,
            })?;
            f.sync_all().map_err(|source| H5adError::Io {
                path: tmp.clone(),
                op: "syncing the temporary output",
                source,
            })?;
            std::fs::rename(&tmp, output).map_err(|source| H5adError::Io {
                path: output.to_path_buf(),
                op: "renaming the temporary output into place",
                source,
            })?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Group of the output where early slots wait until the rest is written.
const STAGING: &str = ".cellfate-staging";

/// Slots written into an [`H5adEdit`]'s output before the rest of it (see
/// [`H5adEdit::write_to_with`]). Shapes of `X`, `layers/*`, `obsp/*`, `obsm/*` are checked
/// against the input's axes.
#[derive(Debug)]
pub struct EarlySlots {
    staging: Group,
    path: PathBuf,
    n_obs: usize,
    n_vars: usize,
    slots: Vec<String>,
}

impl EarlySlots {
    fn stage(&mut self, slot: &str, shape: &[usize]) -> Result<String> {
        let slot = slot.trim_matches('/').to_string();
        if slot.is_empty() || self.slots.contains(&slot) {
            return Err(H5adError::Invalid {
                path: self.path.clone(),
                slot,
                expected: "a new slot name".into(),
                found: "an empty or repeated name".into(),
            });
        }
        check_axes(&self.path, &slot, shape, self.n_obs, self.n_vars)?;
        let name = self.slots.len().to_string();
        self.slots.push(slot);
        Ok(name)
    }

    fn err(&self, slot: &str) -> impl FnOnce(hdf5::Error) -> H5adError {
        let (path, slot) = (self.path.clone(), slot.to_string());
        move |source| H5adError::Hdf5 { path, slot, source }
    }

    /// Writes a whole element now (it is dropped when this returns).
    pub fn write(&mut self, slot: &str, element: Element) -> Result<()> {
        let name = self.stage(slot, &element.shape())?;
        write_element(&self.staging, &name, &element).map_err(self.err(slot))
    }

    /// Creates a dense `n_rows × n_cols` array (`encoding-type = "array"`, chunks of up to
    /// 8,192 rows × 32 columns), to be filled by column blocks; column blocks starting at
    /// multiples of 32 write whole chunks.
    pub fn dense_columns<T: H5Type>(
        &mut self,
        slot: &str,
        n_rows: usize,
        n_cols: usize,
    ) -> Result<ColumnWriter<T>> {
        let name = self.stage(slot, &[n_rows, n_cols])?;
        let ds = self
            .staging
            .new_dataset::<T>()
            .shape([n_rows, n_cols])
            .chunk([even_chunk(n_rows, 8192), n_cols.clamp(1, 32)])
            .create(name.as_str())
            .map_err(self.err(slot))?;
        set_encoding(&ds, "array", "0.2.0").map_err(self.err(slot))?;
        Ok(ColumnWriter {
            ds,
            path: self.path.clone(),
            slot: slot.trim_matches('/').to_string(),
            n_rows,
            written: vec![false; n_cols],
            _data: std::marker::PhantomData,
        })
    }
}

/// The chunk length, at most `max`, that splits `n` into equal chunks (the last chunk of a
/// dataset is stored whole: 20,000 rows in chunks of 8,192 would waste 23 %).
fn even_chunk(n: usize, max: usize) -> usize {
    let chunks = n.div_ceil(max).max(1);
    n.div_ceil(chunks).max(1)
}

/// Fills a dense array of [`EarlySlots`] by blocks of columns.
#[derive(Debug)]
pub struct ColumnWriter<T> {
    ds: hdf5::Dataset,
    path: PathBuf,
    slot: String,
    n_rows: usize,
    written: Vec<bool>,
    _data: std::marker::PhantomData<fn(&T)>,
}

impl<T: H5Type> ColumnWriter<T> {
    fn invalid(&self, expected: String, found: String) -> H5adError {
        H5adError::Invalid {
            path: self.path.clone(),
            slot: self.slot.clone(),
            expected,
            found,
        }
    }

    /// Writes columns `cols` from `values`, row-major `n_rows × cols.len()`.
    pub fn write(&mut self, cols: std::ops::Range<usize>, values: &[T]) -> Result<()> {
        let n_cols = self.written.len();
        if cols.end > n_cols || cols.start > cols.end || values.len() != self.n_rows * cols.len() {
            return Err(self.invalid(
                format!(
                    "columns within 0..{n_cols} and {} values a column",
                    self.n_rows
                ),
                format!("columns {cols:?} and {} values", values.len()),
            ));
        }
        if cols.is_empty() || self.n_rows == 0 {
            self.written[cols].iter_mut().for_each(|w| *w = true);
            return Ok(());
        }
        let view = ndarray::ArrayView2::from_shape((self.n_rows, cols.len()), values)
            .map_err(|e| self.invalid("a row-major block".into(), e.to_string()))?;
        let (path, slot) = (self.path.clone(), self.slot.clone());
        self.ds
            .write_slice(view, (.., cols.clone()))
            .map_err(move |source| H5adError::Hdf5 { path, slot, source })?;
        self.written[cols].iter_mut().for_each(|w| *w = true);
        Ok(())
    }

    /// Completes the array; fails unless every column was written.
    pub fn finish(self) -> Result<()> {
        match self.written.iter().position(|&w| !w) {
            None => Ok(()),
            Some(j) => Err(self.invalid(
                "every column written".into(),
                format!("column {j} never written"),
            )),
        }
    }
}

/// Checks a new element's shape against the AnnData axes for the standard slots.
fn check_axes(path: &Path, slot: &str, shape: &[usize], n_obs: usize, n_vars: usize) -> Result<()> {
    let group = slot.split('/').next().unwrap_or("");
    let want: Option<(Vec<usize>, &str)> = match group {
        "X" | "layers" => Some((vec![n_obs, n_vars], "n_obs x n_vars")),
        "obsp" => Some((vec![n_obs, n_obs], "n_obs x n_obs")),
        "varp" => Some((vec![n_vars, n_vars], "n_vars x n_vars")),
        "obsm" => Some((vec![n_obs], "n_obs rows")),
        "varm" => Some((vec![n_vars], "n_vars rows")),
        _ => None,
    };
    if let Some((w, what)) = want {
        if slot.contains('/') || group == "X" {
            let ok = shape.len() >= w.len() && w.iter().zip(shape).all(|(a, b)| a == b);
            if !ok {
                return Err(H5adError::Invalid {
                    path: path.to_path_buf(),
                    slot: slot.to_string(),
                    expected: format!("shape {w:?} ({what})"),
                    found: format!("shape {shape:?}"),
                });
            }
        }
    }
    Ok(())
}

/// Writes a complete new `.h5ad` file from a list of top-level elements (`X`, `obs`, `var`,
/// `obsm`, ...), via a temporary file and a rename (an [`H5adStreamWriter`] given whole
/// elements; use that directly to append large matrices block by block).
pub fn write_new(output: impl AsRef<Path>, members: &[(String, Element)]) -> Result<()> {
    let w = H5adStreamWriter::create(output)?;
    for (name, el) in members {
        w.write_element(name, el)?;
    }
    w.finish()
}

struct Writer<'a> {
    edit: &'a H5adEdit,
    /// Changes made while writing (they win over the edit's for the same slot).
    late: &'a [(String, Change)],
    reader: &'a H5adReader,
    out_path: PathBuf,
    copy_raw: bool,
}

impl Writer<'_> {
    /// Every change: the edit's (unless a late change replaces it), then the late ones.
    fn changes(&self) -> impl Iterator<Item = &(String, Change)> + '_ {
        self.edit
            .changes
            .iter()
            .filter(|(s, _)| !self.late.iter().any(|(l, _)| l == s))
            .chain(self.late)
    }

    fn change_at(&self, slot: &str) -> Option<&Change> {
        self.changes().find(|(s, _)| s == slot).map(|(_, c)| c)
    }

    fn has_changes_under(&self, slot: &str) -> bool {
        let prefix = if slot.is_empty() {
            String::new()
        } else {
            format!("{slot}/")
        };
        self.changes()
            .any(|(s, _)| s.starts_with(&prefix) && s != slot)
    }

    fn err(&self, slot: &str) -> impl FnOnce(hdf5::Error) -> H5adError + '_ {
        let slot = slot.to_string();
        move |source| H5adError::Hdf5 {
            path: self.out_path.clone(),
            slot,
            source,
        }
    }

    fn root(&self, file: &hdf5::File) -> Result<()> {
        set_encoding(file, "anndata", "0.1.0").map_err(self.err("/"))?;
        let mut names = self.reader.keys("")?;
        names.sort();
        for name in &names {
            self.transfer(file, name, name)?;
        }
        self.write_new_children(file, "", &names)?;
        // anndata expects these groups to exist.
        for g in ["layers", "obsm", "obsp", "varm", "varp", "uns"] {
            if !file.link_exists(g) {
                let grp = file.create_group(g).map_err(self.err(g))?;
                set_encoding(&grp, "dict", "0.1.0").map_err(self.err(g))?;
            }
        }
        Ok(())
    }

    /// Writes `Set` changes that are children (at any depth) of `parent_slot` but do not
    /// exist in the source under `existing` (names of the source's members).
    fn write_new_children(
        &self,
        dst: &Group,
        parent_slot: &str,
        existing: &[String],
    ) -> Result<()> {
        let prefix = if parent_slot.is_empty() {
            String::new()
        } else {
            format!("{parent_slot}/")
        };
        let mut done: Vec<String> = Vec::new();
        for (slot, change) in self.changes() {
            let Change::Set(el) = change else { continue };
            let Some(rel) = slot.strip_prefix(&prefix) else {
                continue;
            };
            if rel.is_empty() {
                continue;
            }
            let first = rel.split('/').next().unwrap_or(rel);
            if existing.iter().any(|e| e == first) {
                continue; // handled by transfer()
            }
            if rel.contains('/') {
                if done.iter().any(|d| d == first) {
                    continue;
                }
                done.push(first.to_string());
                let child_slot = join(parent_slot, first);
                let g = dst.create_group(first).map_err(self.err(&child_slot))?;
                set_encoding(&g, "dict", "0.1.0").map_err(self.err(&child_slot))?;
                self.write_new_children(&g, &child_slot, &[])?;
            } else {
                self.check_shape(slot, el)?;
                write_element(dst, rel, el).map_err(self.err(slot))?;
            }
        }
        Ok(())
    }

    fn transfer(&self, dst: &Group, name: &str, slot: &str) -> Result<()> {
        match self.change_at(slot) {
            Some(Change::Remove) => return Ok(()),
            Some(Change::Set(el)) => {
                self.check_shape(slot, el)?;
                return write_element(dst, name, el).map_err(self.err(slot));
            }
            None => {}
        }
        if self.has_changes_under(slot) {
            let info = self.reader.info(slot)?;
            match info.encoding.as_str() {
                "dataframe" => {
                    let mut df = self.reader.dataframe(slot)?;
                    self.apply_columns(&mut df, slot)?;
                    return write_dataframe(dst, name, &df).map_err(self.err(slot));
                }
                "dict" | "raw" | "anndata" => {
                    let g = dst.create_group(name).map_err(self.err(slot))?;
                    set_encoding(&g, &info.encoding, "0.1.0").map_err(self.err(slot))?;
                    let children = self.reader.keys(slot)?;
                    for c in &children {
                        self.transfer(&g, c, &join(slot, c))?;
                    }
                    self.write_new_children(&g, slot, &children)?;
                    return Ok(());
                }
                other => {
                    return Err(self.reader.invalid(
                        slot,
                        "a group (dict, dataframe) to add members to",
                        other.to_string(),
                    ))
                }
            }
        }
        if self.copy_raw {
            let src: Location = match self.reader.file().group(slot) {
                Ok(g) => (*g).clone(),
                Err(_) => {
                    let ds = self.reader.file().dataset(slot).map_err(self.err(slot))?;
                    (**ds).clone()
                }
            };
            src.copy_to(dst, name).map_err(self.err(slot))
        } else {
            let el = self.reader.read(slot)?;
            write_element(dst, name, &el).map_err(self.err(slot))
        }
    }

    fn apply_columns(&self, df: &mut DataFrame, slot: &str) -> Result<()> {
        let prefix = format!("{slot}/");
        for (s, change) in self.changes() {
            let Some(col) = s.strip_prefix(&prefix) else {
                continue;
            };
            match change {
                Change::Remove => {
                    df.remove_column(col);
                }
                Change::Set(el) => {
                    let len = el.shape().first().copied().unwrap_or(0);
                    if el.shape().len() != 1 || len != df.index.len() {
                        return Err(self.reader.invalid(
                            s,
                            format!("a 1-d column of length {}", df.index.len()),
                            format!("{} with shape {:?}", el.encoding(), el.shape()),
                        ));
                    }
                    df.set_column(col, el.clone());
                }
            }
        }
        Ok(())
    }

    /// Checks a new element's shape against the AnnData axes for the standard slots.
    fn check_shape(&self, slot: &str, el: &Element) -> Result<()> {
        check_axes(
            self.reader.path(),
            slot,
            &el.shape(),
            self.reader.n_obs()?,
            self.reader.n_vars()?,
        )
    }
}

/// Creates the private temporary output. Its close is "strong" (closing the file closes every
/// object still open in it), and HDF5 file locking is off for it: the file is ours alone until
/// the rename, and a lock would otherwise be inherited by any child process spawned meanwhile
/// (HDF5 does not open with `O_CLOEXEC`), blocking later readers of the renamed output.
pub(super) fn create_h5(path: &Path) -> hdf5::Result<hdf5::File> {
    hdf5::File::with_options()
        .with_fapl(|p| {
            p.fclose_degree(hdf5::file::FileCloseDegree::Strong)
                .file_locking(false)
        })
        .create(path)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

pub(super) fn temp_path(output: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = output
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    remove_stale_temps(dir, &name);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.cellfate-tmp-{}-{n}", std::process::id()))
}

/// An intermediate file next to a target, created exclusively (never an existing file) under a
/// hidden name of the target's temporary-file family (`.NAME.cellfate-tmp-PID-N`), and removed
/// when dropped. A process killed before dropping it leaves the file behind; the next write to
/// the same target removes it (as it does for its own temporary files).
#[derive(Debug)]
pub struct TempSibling {
    path: PathBuf,
}

impl TempSibling {
    /// Creates an empty file next to `target`.
    pub fn create(target: &Path) -> Result<Self> {
        loop {
            let path = temp_path(target);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(H5adError::Io {
                        path,
                        op: "creating an intermediate file",
                        source,
                    })
                }
            }
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempSibling {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes temporary outputs for `name` left by processes that no longer exist (a run that was
/// killed mid-write leaves its hidden temporary file; the target itself is never partial).
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.cellfate-tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

// ----- element writers (HDF5 level) ------------------------------------------------------

fn vlu(s: &str) -> hdf5::Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| hdf5::Error::from(format!("string {s:?} cannot be stored: {e}")))
}

fn str_attr(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    if loc.attr(name).is_ok() {
        loc.delete_attr(name)?;
    }
    loc.new_attr::<VarLenUnicode>()
        .shape(())
        .create(name)?
        .write_scalar(&vlu(value)?)
}

pub(super) fn set_encoding(loc: &Location, enc: &str, version: &str) -> hdf5::Result<()> {
    str_attr(loc, "encoding-type", enc)?;
    str_attr(loc, "encoding-version", version)
}

fn write_num(g: &Group, name: &str, shape: &[usize], data: &NumVec) -> hdf5::Result<hdf5::Dataset> {
    macro_rules! w {
        ($t:ty, $v:expr) => {{
            let b = g.new_dataset::<$t>();
            let ds = if shape.is_empty() {
                b.shape(()).create(name)?
            } else {
                b.shape(shape.to_vec()).create(name)?
            };
            if !$v.is_empty() {
                ds.write_raw($v.as_slice())?;
            }
            ds
        }};
    }
    Ok(match data {
        NumVec::Bool(v) => w!(bool, v),
        NumVec::I8(v) => w!(i8, v),
        NumVec::I16(v) => w!(i16, v),
        NumVec::I32(v) => w!(i32, v),
        NumVec::I64(v) => w!(i64, v),
        NumVec::U8(v) => w!(u8, v),
        NumVec::U16(v) => w!(u16, v),
        NumVec::U32(v) => w!(u32, v),
        NumVec::U64(v) => w!(u64, v),
        NumVec::F32(v) => w!(f32, v),
        NumVec::F64(v) => w!(f64, v),
        NumVec::C128(v) => w!(num_complex::Complex64, v),
    })
}

fn write_strs(
    g: &Group,
    name: &str,
    shape: &[usize],
    values: &[String],
) -> hdf5::Result<hdf5::Dataset> {
    let v: Vec<VarLenUnicode> = values.iter().map(|s| vlu(s)).collect::<hdf5::Result<_>>()?;
    let b = g.new_dataset::<VarLenUnicode>();
    let ds = if shape.is_empty() {
        b.shape(()).create(name)?
    } else {
        b.shape(shape.to_vec()).create(name)?
    };
    if !v.is_empty() {
        ds.write_raw(&v)?;
    }
    Ok(ds)
}

/// scipy's choice of index dtype: int32 when every index fits, int64 otherwise.
fn index_vec(values: impl Iterator<Item = usize>, max: usize) -> NumVec {
    if max < i32::MAX as usize {
        NumVec::I32(values.map(|i| i as i32).collect())
    } else {
        NumVec::I64(values.map(|i| i as i64).collect())
    }
}

fn write_sparse(g: &Group, name: &str, s: &SparseArray) -> hdf5::Result<()> {
    let sg = g.create_group(name)?;
    set_encoding(&sg, s.format.encoding(), "0.1.0")?;
    sg.new_attr::<i64>()
        .shape(2)
        .create("shape")?
        .write_raw(&[s.shape[0] as i64, s.shape[1] as i64])?;
    write_num(&sg, "data", &[s.data.len()], &s.data)?;
    let minor = match s.format {
        super::element::SparseFormat::Csr => s.shape[1],
        super::element::SparseFormat::Csc => s.shape[0],
    };
    let max = minor.max(s.indices.len());
    let idx = index_vec(s.indices.iter().map(|&i| i as usize), max);
    write_num(&sg, "indices", &[s.indices.len()], &idx)?;
    let ptr = index_vec(s.indptr.iter().copied(), max);
    write_num(&sg, "indptr", &[s.indptr.len()], &ptr)?;
    Ok(())
}

fn write_categorical(g: &Group, name: &str, c: &Categorical) -> hdf5::Result<()> {
    let cg = g.create_group(name)?;
    set_encoding(&cg, "categorical", "0.2.0")?;
    cg.new_attr::<bool>()
        .shape(())
        .create("ordered")?
        .write_scalar(&c.ordered)?;
    let n = c.categories.len();
    let codes = if n < 128 {
        NumVec::I8(c.codes.iter().map(|&x| x as i8).collect())
    } else if n < 32768 {
        NumVec::I16(c.codes.iter().map(|&x| x as i16).collect())
    } else {
        NumVec::I32(c.codes.clone())
    };
    let ds = write_num(&cg, "codes", &[c.codes.len()], &codes)?;
    set_encoding(&ds, "array", "0.2.0")?;
    let ds = match &c.categories {
        Categories::Str(v) => {
            let ds = write_strs(&cg, "categories", &[v.len()], v)?;
            set_encoding(&ds, "string-array", "0.2.0")?;
            ds
        }
        Categories::Num(v) => {
            let ds = write_num(&cg, "categories", &[v.len()], v)?;
            set_encoding(&ds, "array", "0.2.0")?;
            ds
        }
    };
    drop(ds);
    Ok(())
}

fn write_dataframe(g: &Group, name: &str, df: &DataFrame) -> hdf5::Result<()> {
    let dg = g.create_group(name)?;
    set_encoding(&dg, "dataframe", "0.2.0")?;
    str_attr(&dg, "_index", &df.index_name)?;
    if df.columns.is_empty() {
        // anndata writes an empty float64 array for an empty column order.
        dg.new_attr::<f64>().shape(0).create("column-order")?;
    } else {
        let names: Vec<VarLenUnicode> = df
            .columns
            .iter()
            .map(|(n, _)| vlu(n))
            .collect::<hdf5::Result<_>>()?;
        dg.new_attr::<VarLenUnicode>()
            .shape(names.len())
            .create("column-order")?
            .write_raw(&names)?;
    }
    let ds = write_strs(&dg, &df.index_name, &[df.index.len()], &df.index)?;
    set_encoding(&ds, "string-array", "0.2.0")?;
    for (cname, col) in &df.columns {
        if cname == &df.index_name {
            return Err(hdf5::Error::from(format!(
                "column `{cname}` has the same name as the index"
            )));
        }
        write_element(&dg, cname, col)?;
    }
    Ok(())
}

fn write_members(
    g: &Group,
    name: &str,
    enc: &str,
    members: &[(String, Element)],
) -> hdf5::Result<()> {
    let mg = g.create_group(name)?;
    set_encoding(&mg, enc, "0.1.0")?;
    for (n, e) in members {
        write_element(&mg, n, e)?;
    }
    Ok(())
}

/// Writes one element under `g/name` in the anndata ≥ 0.8 layout.
pub(crate) fn write_element(g: &Group, name: &str, el: &Element) -> hdf5::Result<()> {
    if g.link_exists(name) {
        g.unlink(name)?;
    }
    match el {
        Element::Dense(d) => {
            let ds = write_num(g, name, &d.shape, &d.data)?;
            set_encoding(&ds, "array", "0.2.0")
        }
        Element::Sparse(s) => write_sparse(g, name, s),
        Element::Strings { shape, values } => {
            let ds = write_strs(g, name, shape, values)?;
            set_encoding(&ds, "string-array", "0.2.0")
        }
        Element::Str(s) => {
            let ds = write_strs(g, name, &[], std::slice::from_ref(s))?;
            set_encoding(&ds, "string", "0.2.0")
        }
        Element::Scalar(v) => {
            let ds = write_num(g, name, &[], v)?;
            set_encoding(&ds, "numeric-scalar", "0.2.0")
        }
        Element::Categorical(c) => write_categorical(g, name, c),
        Element::NullableInt { values, mask } => {
            let ng = g.create_group(name)?;
            set_encoding(&ng, "nullable-integer", "0.1.0")?;
            write_num(&ng, "values", &[values.len()], values)?;
            write_num(&ng, "mask", &[mask.len()], &NumVec::Bool(mask.clone()))?;
            Ok(())
        }
        Element::NullableBool { values, mask } => {
            let ng = g.create_group(name)?;
            set_encoding(&ng, "nullable-boolean", "0.1.0")?;
            write_num(
                &ng,
                "values",
                &[values.len()],
                &NumVec::Bool(values.clone()),
            )?;
            write_num(&ng, "mask", &[mask.len()], &NumVec::Bool(mask.clone()))?;
            Ok(())
        }
        Element::NullableStr { values, mask } => {
            let ng = g.create_group(name)?;
            set_encoding(&ng, "nullable-string-array", "0.1.0")?;
            write_strs(&ng, "values", &[values.len()], values)?;
            write_num(&ng, "mask", &[mask.len()], &NumVec::Bool(mask.clone()))?;
            Ok(())
        }
        Element::DataFrame(df) => write_dataframe(g, name, df),
        Element::Dict(m) => write_members(g, name, "dict", m),
        Element::Raw(m) => write_members(g, name, "raw", m),
        Element::AnnData(m) => write_members(g, name, "anndata", m),
    }
}
