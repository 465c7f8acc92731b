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

use hdf5::{Group, H5Type, Location};

use super::element::{DataFrame, Element};
use super::error::H5adError;
use super::h5::{create_temp_h5, set_encoding, write_dataframe, write_element};
use super::read::{join, H5adReader};
use super::stream::H5adStreamWriter;
use crate::output::TempOutput;

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

    /// The element this edit sets at `slot` (`None` when it sets nothing there, or removes it).
    pub fn get(&self, slot: &str) -> Option<&Element> {
        let slot = slot.trim_matches('/');
        self.changes
            .iter()
            .rev()
            .find(|(s, _)| s == slot)
            .and_then(|(_, c)| match c {
                Change::Set(e) => Some(e),
                Change::Remove => None,
            })
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
        let (file, tmp) = create_temp_h5(output)?;
        let hdf = |path: &Path, slot: &str| {
            let (path, slot) = (path.to_path_buf(), slot.to_string());
            move |source| H5adError::Hdf5 { path, slot, source }
        };
        // On an error `tmp` is dropped, which removes the temporary file.
        let staging = file.create_group(STAGING).map_err(hdf(output, STAGING))?;
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
        // libhdf5 can crash (SIGSEGV) when a write fails inside its object copy, e.g. on a
        // full disk: refuse up front when the rest clearly does not fit.
        let input_bytes = std::fs::metadata(&self.input).map_or(0, |m| m.len());
        let copied = if w.copy_raw {
            input_bytes
        } else {
            input_bytes.saturating_mul(3)
        };
        let new_bytes: u64 = w
            .changes()
            .map(|(_, c)| match c {
                Change::Set(el) => el.approx_bytes() as u64,
                Change::Remove => 0,
            })
            .sum();
        let written = std::fs::metadata(tmp.path()).map_or(0, |m| m.len());
        crate::output::check_space(output, written, copied.saturating_add(new_bytes))
            .map_err(H5adError::from)?;
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
        file.close().map_err(hdf(output, "/"))?;
        Ok(tmp.persist().map_err(H5adError::from)?)
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
        let b = self
            .staging
            .new_dataset::<T>()
            .chunk([even_chunk(n_rows, 8192), n_cols.clamp(1, 32)]);
        let b = match super::compression::level_for(&[n_rows, n_cols]) {
            Some(level) => b.shuffle().deflate(level),
            None => b,
        };
        let ds = b
            .shape([n_rows, n_cols])
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

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
/// An intermediate file next to a target, created exclusively under an unpredictable hidden
/// name of the target's temporary-file family (`.NAME.cellfate-tmp-PID-RANDOM`, see
/// [`crate::output`]), and removed when dropped. A process killed before dropping it leaves
/// the file behind; the next write to the same target removes it.
#[derive(Debug)]
pub struct TempSibling {
    tmp: TempOutput,
}

impl TempSibling {
    /// Creates an empty file next to `target`.
    pub fn create(target: &Path) -> Result<Self> {
        let ((), tmp) = TempOutput::create(target, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map(drop)
        })?;
        Ok(Self { tmp })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// The kernel and estimator elements ([`crate::adata`]) go into the edit.
impl crate::adata::SlotSink for H5adEdit {
    fn set(&mut self, slot: &str, element: Element) {
        H5adEdit::set(self, slot, element);
    }
}
