//! velocyto's `.loom` files (loompy's layout, versions 2 and 3), read directly and converted to
//! an `.h5ad` that the rest of cellfate consumes.
//!
//! A loom file is HDF5 with the matrix stored **genes × cells**:
//! - `/matrix`: the main matrix (velocyto: spliced counts), dense, any numeric type;
//! - `/layers/<name>`: more matrices of the same shape (velocyto: `spliced`, `unspliced`,
//!   `ambiguous`);
//! - `/row_attrs/<name>`: one value (or a row of values) per gene; `Gene` holds the names;
//! - `/col_attrs/<name>`: one value (or a row of values) per cell; `CellID` holds the names;
//! - `/row_graphs`, `/col_graphs`, `/attrs`: graphs and global attributes (not converted).
//!
//! [`loom_to_h5ad`] writes cells × genes CSR matrices (`X` from `/matrix`, every layer under
//! `layers`), `obs`/`var` from the 1-d attributes (strings with repeated values as
//! categoricals, as anndata stores them), 2-d attributes as `obsm`/`varm` arrays. Gene names
//! that repeat are made unique as anndata's `var_names_make_unique` does (`Name`, `Name-1`,
//! ...). Memory is bounded: the matrices are read one block of cells at a time (a hyperslab
//! of columns) and appended to the output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5::types::TypeDescriptor;
use thiserror::Error;

use super::element::{Categorical, DataFrame, DenseArray, Element};
use super::error::H5adError;
use super::read::H5adReader;
use super::stream::H5adStreamWriter;

/// An error reading a `.loom` file: every variant names the file and the dataset.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoomError {
    /// Opening the file, an HDF5 error, or writing the converted output.
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// A dataset or group the velocyto layout requires is absent.
    #[error("{path}: not a velocyto .loom: dataset `{dataset}` is missing{}", found_hint(.found))]
    Missing {
        /// The loom file.
        path: PathBuf,
        /// HDF5 path of what is missing, e.g. `/layers/unspliced`.
        dataset: String,
        /// What its parent group holds instead.
        found: Vec<String>,
    },
    /// A dataset exists but has the wrong shape or type.
    #[error("{path}: dataset `{dataset}`: expected {expected}, found {found}")]
    Invalid {
        /// The loom file.
        path: PathBuf,
        /// HDF5 path of the dataset.
        dataset: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
}

fn found_hint(found: &[String]) -> String {
    if found.is_empty() {
        String::new()
    } else {
        format!(" (found: {})", found.join(", "))
    }
}

/// The layers velocity needs.
const REQUIRED_LAYERS: [&str; 2] = ["spliced", "unspliced"];

/// Cells per block when converting (the block is a dense genes × cells slab in `f32`).
fn block_cells(n_genes: usize) -> usize {
    (16_777_216 / n_genes.max(1)).clamp(1, 4096)
}

/// What [`loom_to_h5ad`] converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoomSummary {
    /// Cells (loom columns).
    pub n_cells: usize,
    /// Genes (loom rows).
    pub n_genes: usize,
    /// Layers converted (besides `/matrix`, which becomes `X`).
    pub layers: Vec<String>,
    /// Attributes not converted (unsupported types), as `row_attrs/NAME` / `col_attrs/NAME`.
    pub skipped: Vec<String>,
}

/// Whether `path` is a loom file: an HDF5 file with a `/matrix` dataset and a `/row_attrs`
/// group (whatever its extension). `false` for anything that cannot be opened.
pub fn is_loom(path: &Path) -> bool {
    let Ok(r) = H5adReader::open(path) else {
        return false;
    };
    let f = r.file();
    f.dataset("matrix").is_ok() && f.group("row_attrs").is_ok()
}

/// Reads the velocyto `.loom` at `loom` and writes it as an `.h5ad` at `output` (cells × genes;
/// see the module documentation). The loom must have `/matrix`, `/layers/spliced`,
/// `/layers/unspliced` (velocyto's layout), `/row_attrs` and `/col_attrs`; a missing one is a
/// [`LoomError::Missing`] naming it. The output is written to a temporary file and renamed.
pub fn loom_to_h5ad(loom: &Path, output: &Path) -> Result<LoomSummary, LoomError> {
    let r = H5adReader::open(loom)?;
    let f = r.file();
    let missing = |dataset: &str, group: &str| -> LoomError {
        let found = f
            .group(group)
            .and_then(|g| g.member_names())
            .unwrap_or_default();
        LoomError::Missing {
            path: loom.to_path_buf(),
            dataset: dataset.into(),
            found,
        }
    };
    let invalid = |dataset: &str, expected: String, found: String| LoomError::Invalid {
        path: loom.to_path_buf(),
        dataset: dataset.into(),
        expected,
        found,
    };
    let hdf = |slot: &str| {
        let (path, slot) = (loom.to_path_buf(), slot.to_string());
        move |source| LoomError::H5ad(H5adError::Hdf5 { path, slot, source })
    };
    // The matrix: genes × cells, numeric.
    let matrix = f.dataset("matrix").map_err(|_| missing("/matrix", "/"))?;
    let shape = matrix.shape();
    if shape.len() != 2 || !is_numeric(&matrix) {
        return Err(invalid(
            "/matrix",
            "a 2-d numeric dataset (genes × cells)".into(),
            format!("shape {shape:?}, type {}", type_name(&matrix)),
        ));
    }
    let (g, n) = (shape[0], shape[1]);
    // Layers: spliced and unspliced required, every one genes × cells.
    let layers_group = f.group("layers").map_err(|_| missing("/layers", "/"))?;
    let mut layers = layers_group.member_names().map_err(hdf("/layers"))?;
    layers.retain(|l| !l.is_empty());
    for req in REQUIRED_LAYERS {
        if !layers.iter().any(|l| l == req) {
            return Err(missing(&format!("/layers/{req}"), "/layers"));
        }
    }
    for l in &layers {
        let name = format!("/layers/{l}");
        let ds = layers_group.dataset(l).map_err(|_| {
            invalid(
                &name,
                "a dataset".into(),
                "a group or another object".into(),
            )
        })?;
        if ds.shape() != shape || !is_numeric(&ds) {
            return Err(invalid(
                &name,
                format!("a numeric dataset shaped like /matrix {shape:?}"),
                format!("shape {:?}, type {}", ds.shape(), type_name(&ds)),
            ));
        }
    }
    // Attributes.
    let var = attributes(&r, loom, "row_attrs", g, &["Gene", "var_names"])?;
    let obs = attributes(&r, loom, "col_attrs", n, &["CellID", "obs_names"])?;
    let skipped: Vec<String> = var.skipped.into_iter().chain(obs.skipped).collect();
    // Write: attributes first, then the matrices block by block.
    let w = H5adStreamWriter::create(output)?;
    w.write_element("obs", &Element::DataFrame(obs.frame))?;
    w.write_element("var", &Element::DataFrame(var.frame))?;
    for (name, el) in &obs.multi {
        w.write_element(&format!("obsm/{name}"), el)?;
    }
    for (name, el) in &var.multi {
        w.write_element(&format!("varm/{name}"), el)?;
    }
    transpose_into(&r, &w, "matrix", "X", g, n)?;
    for l in &layers {
        transpose_into(&r, &w, &format!("layers/{l}"), &format!("layers/{l}"), g, n)?;
    }
    w.finish()?;
    Ok(LoomSummary {
        n_cells: n,
        n_genes: g,
        layers,
        skipped,
    })
}

/// Appends the genes × cells dataset `src` of the loom as a cells × genes CSR matrix at
/// `slot`, one block of cells at a time.
fn transpose_into(
    r: &H5adReader,
    w: &H5adStreamWriter,
    src: &str,
    slot: &str,
    g: usize,
    n: usize,
) -> Result<(), LoomError> {
    let mut app = w.csr_appender::<f32>(slot, g)?;
    let step = block_cells(g);
    let mut start = 0;
    while start < n {
        let end = (start + step).min(n);
        let b = end - start;
        // Row-major g × b (a hyperslab of columns).
        let slab = r
            .dense_f32_columns(src, start..end)?
            .ok_or_else(|| LoomError::Invalid {
                path: r.path().to_path_buf(),
                dataset: format!("/{src}"),
                expected: "a dense numeric matrix".into(),
                found: "another kind of object".into(),
            })?;
        let mut indptr = Vec::with_capacity(b + 1);
        let mut indices: Vec<u32> = Vec::new();
        let mut data: Vec<f32> = Vec::new();
        indptr.push(0);
        for c in 0..b {
            for j in 0..g {
                let v = slab[j * b + c];
                if v != 0.0 {
                    indices.push(j as u32);
                    data.push(v);
                }
            }
            indptr.push(data.len());
        }
        app.append(&indptr, &indices, &data)?;
        start = end;
    }
    app.finish()?;
    Ok(())
}

fn is_numeric(ds: &hdf5::Dataset) -> bool {
    ds.dtype()
        .ok()
        .and_then(|t| t.to_descriptor().ok())
        .is_some_and(|d| {
            matches!(
                d,
                TypeDescriptor::Float(_)
                    | TypeDescriptor::Integer(_)
                    | TypeDescriptor::Unsigned(_)
                    | TypeDescriptor::Boolean
            )
        })
}

fn is_string(ds: &hdf5::Dataset) -> bool {
    ds.dtype()
        .ok()
        .and_then(|t| t.to_descriptor().ok())
        .is_some_and(|d| {
            matches!(
                d,
                TypeDescriptor::VarLenUnicode
                    | TypeDescriptor::VarLenAscii
                    | TypeDescriptor::FixedAscii(_)
                    | TypeDescriptor::FixedUnicode(_)
            )
        })
}

fn type_name(ds: &hdf5::Dataset) -> String {
    ds.dtype()
        .ok()
        .and_then(|t| t.to_descriptor().ok())
        .map_or_else(|| "unknown".into(), |d| format!("{d:?}"))
}

/// The converted attributes of one axis.
struct Axis {
    /// `obs` or `var`.
    frame: DataFrame,
    /// 2-d attributes (for `obsm` / `varm`).
    multi: Vec<(String, Element)>,
    /// Attributes not converted (unsupported types).
    skipped: Vec<String>,
}

/// Attributes of one axis: the dataframe (indexed by the first of `index_names` present, else
/// by position), the 2-d attributes (for `obsm`/`varm`) and the names of the attributes
/// skipped (unsupported types).
fn attributes(
    r: &H5adReader,
    loom: &Path,
    group: &str,
    len: usize,
    index_names: &[&str],
) -> Result<Axis, LoomError> {
    let f = r.file();
    let g = f.group(group).map_err(|_| LoomError::Missing {
        path: loom.to_path_buf(),
        dataset: format!("/{group}"),
        found: f.member_names().unwrap_or_default(),
    })?;
    let names = g.member_names().map_err(|source| H5adError::Hdf5 {
        path: loom.to_path_buf(),
        slot: group.into(),
        source,
    })?;
    let mut columns: Vec<(String, Element)> = Vec::new();
    let mut multi: Vec<(String, Element)> = Vec::new();
    let mut skipped = Vec::new();
    for name in &names {
        let slot = format!("{group}/{name}");
        let Ok(ds) = g.dataset(name) else {
            skipped.push(slot);
            continue;
        };
        let shape = ds.shape();
        if shape.first() != Some(&len) {
            return Err(LoomError::Invalid {
                path: loom.to_path_buf(),
                dataset: format!("/{slot}"),
                expected: format!("{len} values (one per {})", axis_word(group)),
                found: format!("shape {shape:?}"),
            });
        }
        if is_string(&ds) && shape.len() == 1 {
            let values: Vec<String> = r
                .read_strings(&ds, &slot)?
                .into_iter()
                .map(|s| unescape(&s))
                .collect();
            columns.push((name.clone(), Element::from_strings(values)));
        } else if is_numeric(&ds) && (shape.len() == 1 || shape.len() == 2) {
            let desc = ds
                .dtype()
                .and_then(|t| t.to_descriptor())
                .map_err(|source| H5adError::Hdf5 {
                    path: loom.to_path_buf(),
                    slot: slot.clone(),
                    source,
                })?;
            let data = r.read_numeric(&ds, &desc, &slot)?;
            let el = Element::Dense(DenseArray {
                shape: shape.clone(),
                data,
            });
            if shape.len() == 1 {
                columns.push((name.clone(), el));
            } else {
                multi.push((name.clone(), el));
            }
        } else {
            skipped.push(slot);
        }
    }
    // The index: the first of `index_names` that is a string attribute.
    let index_at = index_names.iter().find_map(|want| {
        columns
            .iter()
            .position(|(n, c)| n == want && matches!(c, Element::Strings { .. }))
    });
    let index = match index_at.map(|p| columns.remove(p).1) {
        Some(Element::Strings { values, .. }) => make_unique(values),
        _ => (0..len).map(|i| i.to_string()).collect(),
    };
    let mut df = DataFrame::with_index(index);
    for (name, col) in columns {
        let col = match col {
            Element::Strings { values, .. } => string_column(values),
            other => other,
        };
        df.set_column(&name, col);
    }
    Ok(Axis {
        frame: df,
        multi,
        skipped,
    })
}

fn axis_word(group: &str) -> &'static str {
    if group == "row_attrs" {
        "gene"
    } else {
        "cell"
    }
}

/// Strings with repeated values become categoricals (categories sorted, as pandas does);
/// unique ones stay strings.
fn string_column(values: Vec<String>) -> Element {
    let mut cats = values.clone();
    cats.sort();
    cats.dedup();
    if cats.len() < values.len() {
        let labels: Vec<Option<String>> = values.into_iter().map(Some).collect();
        Element::Categorical(Categorical::from_labels(&labels, Some(cats)))
    } else {
        Element::from_strings(values)
    }
}

/// anndata's `make_unique`: the second occurrence of `x` becomes `x-1`, the third `x-2`, ...
/// (skipping suffixes already taken).
fn make_unique(values: Vec<String>) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for v in &values {
        *seen.entry(v.clone()).or_default() += 1;
    }
    if seen.values().all(|&c| c == 1) {
        return values;
    }
    let mut taken: std::collections::HashSet<String> = values.iter().cloned().collect();
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut first: std::collections::HashSet<String> = std::collections::HashSet::new();
    values
        .into_iter()
        .map(|v| {
            if first.insert(v.clone()) {
                return v;
            }
            let k = count.entry(v.clone()).or_insert(0);
            loop {
                *k += 1;
                let cand = format!("{v}-{k}");
                if taken.insert(cand.clone()) {
                    return cand;
                }
            }
        })
        .collect()
}

/// loompy 2 stores non-ASCII characters of strings as XML character references (`&#x...;`)
/// and escapes `&<>"'`; undoes that (strings without `&` are returned unchanged).
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        let tail = &rest[p..];
        let decoded = tail.find(';').filter(|&e| e <= 12).and_then(|e| {
            let ent = &tail[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => ent
                    .strip_prefix("#x")
                    .or_else(|| ent.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_unique_as_anndata_does() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            make_unique(v(&["a", "b", "a", "a"])),
            v(&["a", "b", "a-1", "a-2"])
        );
        assert_eq!(make_unique(v(&["a", "a-1", "a"])), v(&["a", "a-1", "a-2"]));
        assert_eq!(make_unique(v(&["x", "y"])), v(&["x", "y"]));
    }

    #[test]
    fn loompy2_escapes_are_undone() {
        assert_eq!(unescape("Gene&#x3b1;1"), "Geneα1");
        assert_eq!(unescape("a&amp;b &lt;c&gt; &#65;"), "a&b <c> A");
        assert_eq!(unescape("no & entity;"), "no & entity;");
    }

    #[test]
    fn repeated_strings_become_categoricals() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match string_column(v(&["b", "a", "b"])) {
            Element::Categorical(c) => {
                assert_eq!(c.categories.labels(), v(&["a", "b"]));
                assert_eq!(c.codes, vec![1, 0, 1]);
            }
            other => panic!("{}", other.encoding()),
        }
        assert!(matches!(
            string_column(v(&["a", "b"])),
            Element::Strings { .. }
        ));
    }
}
