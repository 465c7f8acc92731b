//! Where the figures read their data: [`FigureSource`], implemented by the `.h5ad` reader
//! (feature `h5ad`) and by [`MemorySlots`] (elements held in memory); the Python package
//! implements it over an in-memory `anndata.AnnData`, so a notebook draws the same figures
//! as `cellfate plot` without a file and without HDF5.
//!
//! Slots are AnnData paths (`obsm/X_umap`, `obs/clusters`, `uns/coarse_fwd/X`); only what a
//! figure needs is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellfate_kernels::{Csr, Direction, TransitionMatrix};

use super::ReportError;
use crate::io::element::{DataFrame, Element};

/// The slots figures and the report read, by AnnData path. Every method but the required ones
/// derives from [`FigureSource::read`]; a file reader overrides those that can read less.
pub trait FigureSource {
    /// What the data is called in messages: the file's path, or a name for data in memory.
    fn path(&self) -> &Path;
    /// Whether `slot` exists.
    fn exists(&self, slot: &str) -> bool;
    /// The element at `slot`.
    fn read(&self, slot: &str) -> Result<Element, ReportError>;
    /// The members of a group (`obsm`, `layers`, `uns/...`), sorted; empty when absent.
    fn keys(&self, group: &str) -> Result<Vec<String>, ReportError>;
    /// The column names of the dataframe `df` (`obs`, `var`) in their order.
    fn columns(&self, df: &str) -> Result<Vec<String>, ReportError>;
    /// The number of cells.
    fn n_obs(&self) -> Result<usize, ReportError>;
    /// The number of genes.
    fn n_vars(&self) -> Result<usize, ReportError>;
    /// The gene names.
    fn var_names(&self) -> Result<Vec<String>, ReportError>;

    /// Column `name` of the dataframe `df`.
    fn column(&self, df: &str, name: &str) -> Result<Element, ReportError> {
        self.read(&format!("{df}/{name}"))
    }

    /// A 2-D numeric slot as `(rows, cols, row-major values)` (a 1-D one as one column).
    fn dense(&self, slot: &str) -> Result<(usize, usize, Vec<f64>), ReportError> {
        match self.read(slot)? {
            Element::Dense(d) if d.shape.len() == 2 => {
                Ok((d.shape[0], d.shape[1], d.data.to_f64()))
            }
            Element::Dense(d) if d.shape.len() == 1 => Ok((d.shape[0], 1, d.data.to_f64())),
            Element::Sparse(s) => {
                let [rows, cols] = s.shape;
                let m = s
                    .to_csr()
                    .map_err(|e| self.invalid(slot, "a matrix", &e.to_string()))?;
                Ok((rows, cols, m.to_dense()))
            }
            other => Err(self.invalid(slot, "a dense numeric array", other.encoding())),
        }
    }

    /// The first two columns of a cells × k matrix (an embedding) as `(rows, row-major
    /// values)`; `None` when `slot` is not 2-D with at least two columns.
    fn two_columns(&self, slot: &str) -> Result<Option<(usize, Vec<f64>)>, ReportError> {
        let (rows, cols, v) = self.dense(slot)?;
        if cols < 2 {
            return Ok(None);
        }
        Ok(Some((
            rows,
            (0..rows)
                .flat_map(|i| [v[i * cols], v[i * cols + 1]])
                .collect(),
        )))
    }

    /// Columns `cols` of the cells × genes matrix at `slot` (`X` or `layers/<key>`),
    /// row-major cells × `cols.len()`.
    fn gene_columns(&self, slot: &str, cols: &[usize]) -> Result<Vec<f64>, ReportError> {
        match self.read(slot)? {
            Element::Sparse(s) => {
                let m = s
                    .to_csr()
                    .map_err(|e| self.invalid(slot, "a matrix", &e.to_string()))?;
                Ok(m.select_columns(cols).to_dense())
            }
            Element::Dense(d) if d.shape.len() == 2 => {
                let (n, g) = (d.shape[0], d.shape[1]);
                if let Some(&bad) = cols.iter().find(|&&c| c >= g) {
                    return Err(self.invalid(
                        slot,
                        &format!("column {bad}"),
                        &format!("{g} columns"),
                    ));
                }
                let v = d.data.to_f64();
                Ok((0..n)
                    .flat_map(|i| cols.iter().map(move |&c| (i, c)))
                    .map(|(i, c)| v[i * g + c])
                    .collect())
            }
            other => Err(self.invalid(slot, "a cells × genes matrix", other.encoding())),
        }
    }

    /// A dataframe slot (`obsm/absorption_times_fwd`, `varm/terminal_lineage_drivers`).
    fn dataframe(&self, slot: &str) -> Result<DataFrame, ReportError> {
        match self.read(slot)? {
            Element::DataFrame(df) => Ok(df),
            other => Err(self.invalid(slot, "a dataframe", other.encoding())),
        }
    }

    /// A sparse `obsp` matrix (`connectivities`).
    fn obsp(&self, key: &str) -> Result<Csr, ReportError> {
        let slot = format!("obsp/{key}");
        match self.read(&slot)? {
            Element::Sparse(s) => s
                .to_csr()
                .map_err(|e| self.invalid(&slot, "a CSR matrix", &e.to_string())),
            Element::Dense(d) if d.shape.len() == 2 => {
                let (n, m) = (d.shape[0], d.shape[1]);
                let v = d.data.to_f64();
                let trip: Vec<(usize, usize, f64)> = (0..n)
                    .flat_map(|i| (0..m).map(move |j| (i, j)))
                    .filter(|&(i, j)| v[i * m + j] != 0.0)
                    .map(|(i, j)| (i, j, v[i * m + j]))
                    .collect();
                Csr::from_triplets(n, m, &trip)
                    .map_err(|e| self.invalid(&slot, "a matrix", &e.to_string()))
            }
            other => Err(self.invalid(&slot, "a sparse matrix", other.encoding())),
        }
    }

    /// The row-stochastic transition matrix in `obsp[key]` (backward when `key` ends in
    /// `bwd`).
    fn transition_matrix(&self, key: &str) -> Result<TransitionMatrix, ReportError> {
        let csr = self.obsp(key)?;
        let d = if key.ends_with("bwd") {
            Direction::Backward
        } else {
            Direction::Forward
        };
        TransitionMatrix::try_new(csr, d).map_err(|e| {
            self.invalid(
                &format!("obsp/{key}"),
                "a row-stochastic transition matrix",
                &e.to_string(),
            )
        })
    }

    /// A numeric `obs` column as `f64` (bool as 0/1, nullable missing as NaN; a categorical
    /// with numeric categories as those numbers).
    fn obs_f64(&self, name: &str) -> Result<Vec<f64>, ReportError> {
        let slot = format!("obs/{name}");
        match self.column("obs", name)? {
            Element::Categorical(c) => c.numeric_values().ok_or_else(|| {
                self.invalid(
                    &slot,
                    "a numeric column",
                    "categorical with non-numeric categories",
                )
            }),
            col => {
                let found = col.encoding();
                col.to_f64_vec()
                    .ok_or_else(|| self.invalid(&slot, "a numeric column", found))
            }
        }
    }

    /// The labels of a string-like `obs` column (categorical, strings or nullable strings).
    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, ReportError> {
        match self.column("obs", key)? {
            Element::Categorical(c) => Ok(c.to_labels()),
            Element::Strings { values, .. } => Ok(values.into_iter().map(Some).collect()),
            Element::NullableStr { values, mask } => Ok(values
                .into_iter()
                .zip(mask)
                .map(|(v, m)| (!m).then_some(v))
                .collect()),
            other => Err(self.invalid(&format!("obs/{key}"), "labels", other.encoding())),
        }
    }

    /// The error of `slot` holding `found` where `expected` was needed.
    fn invalid(&self, slot: &str, expected: &str, found: &str) -> ReportError {
        ReportError::Slot {
            path: self.path().to_path_buf(),
            slot: slot.to_string(),
            message: format!("expected {expected}, found {found}"),
        }
    }
}

/// The categorical `obs` columns (for messages).
pub(crate) fn categorical_obs_columns(r: &dyn FigureSource) -> Vec<String> {
    r.columns("obs")
        .unwrap_or_default()
        .into_iter()
        .filter(|c| matches!(r.column("obs", c), Ok(Element::Categorical(_))))
        .collect()
}

/// Elements held in memory by slot: a [`FigureSource`] without a file (tests, and callers
/// that assemble their data themselves). `obs` and `var` columns are slots
/// `obs/<column>`; `var_names` is the index of `var`.
#[derive(Clone, Debug, Default)]
pub struct MemorySlots {
    name: PathBuf,
    n_obs: usize,
    var_names: Vec<String>,
    slots: BTreeMap<String, Element>,
    order: Vec<String>,
}

impl MemorySlots {
    /// An empty set of slots for `n_obs` cells and the genes `var_names`; `name` stands for
    /// the data in messages.
    pub fn new(name: impl Into<PathBuf>, n_obs: usize, var_names: Vec<String>) -> Self {
        Self {
            name: name.into(),
            n_obs,
            var_names,
            slots: BTreeMap::new(),
            order: Vec::new(),
        }
    }

    /// Sets `slot` (`obsm/X_umap`, `obs/clusters`, ...) to `element`.
    pub fn set(&mut self, slot: &str, element: Element) -> &mut Self {
        let slot = slot.trim_matches('/').to_string();
        if !self.slots.contains_key(&slot) {
            self.order.push(slot.clone());
        }
        self.slots.insert(slot, element);
        self
    }

    fn members(&self, group: &str) -> Vec<String> {
        let prefix = format!("{}/", group.trim_matches('/'));
        let mut out: Vec<String> = Vec::new();
        for s in &self.order {
            if let Some(rest) = s.strip_prefix(&prefix) {
                let first = rest.split('/').next().unwrap_or(rest).to_string();
                if !out.contains(&first) {
                    out.push(first);
                }
            }
        }
        out
    }

    /// The element at `slot`, looking inside dictionaries and dataframes held at a parent.
    fn lookup(&self, slot: &str) -> Option<Element> {
        let slot = slot.trim_matches('/');
        if let Some(e) = self.slots.get(slot) {
            return Some(e.clone());
        }
        // A member of a dict / dataframe stored whole at a prefix.
        let mut cut = slot.len();
        while let Some(i) = slot[..cut].rfind('/') {
            if let Some(parent) = self.slots.get(&slot[..i]) {
                let mut cur = parent.clone();
                for part in slot[i + 1..].split('/') {
                    cur = match cur {
                        Element::Dict(m) => m.into_iter().find(|(k, _)| k == part)?.1,
                        Element::DataFrame(df) => {
                            df.columns.into_iter().find(|(k, _)| k == part)?.1
                        }
                        _ => return None,
                    };
                }
                return Some(cur);
            }
            cut = i;
        }
        None
    }
}

impl FigureSource for MemorySlots {
    fn path(&self) -> &Path {
        &self.name
    }
    fn exists(&self, slot: &str) -> bool {
        self.lookup(slot).is_some() || !self.members(slot).is_empty()
    }
    fn read(&self, slot: &str) -> Result<Element, ReportError> {
        self.lookup(slot).ok_or_else(|| ReportError::Slot {
            path: self.name.clone(),
            slot: slot.to_string(),
            message: "not found".into(),
        })
    }
    fn keys(&self, group: &str) -> Result<Vec<String>, ReportError> {
        let mut k = self.members(group);
        if k.is_empty() {
            if let Some(Element::Dict(m)) = self.lookup(group) {
                k = m.into_iter().map(|(k, _)| k).collect();
            }
        }
        k.sort();
        Ok(k)
    }
    fn columns(&self, df: &str) -> Result<Vec<String>, ReportError> {
        Ok(self.members(df))
    }
    fn n_obs(&self) -> Result<usize, ReportError> {
        Ok(self.n_obs)
    }
    fn n_vars(&self) -> Result<usize, ReportError> {
        Ok(self.var_names.len())
    }
    fn var_names(&self) -> Result<Vec<String>, ReportError> {
        Ok(self.var_names.clone())
    }
}

#[cfg(feature = "h5ad")]
mod file {
    use super::*;
    use crate::io::H5adReader;

    impl FigureSource for H5adReader {
        fn path(&self) -> &Path {
            H5adReader::path(self)
        }
        fn exists(&self, slot: &str) -> bool {
            H5adReader::exists(self, slot)
        }
        fn read(&self, slot: &str) -> Result<Element, ReportError> {
            Ok(H5adReader::read(self, slot)?)
        }
        fn keys(&self, group: &str) -> Result<Vec<String>, ReportError> {
            Ok(H5adReader::keys(self, group)?)
        }
        fn columns(&self, df: &str) -> Result<Vec<String>, ReportError> {
            Ok(H5adReader::columns(self, df)?)
        }
        fn n_obs(&self) -> Result<usize, ReportError> {
            Ok(H5adReader::n_obs(self)?)
        }
        fn n_vars(&self) -> Result<usize, ReportError> {
            Ok(H5adReader::n_vars(self)?)
        }
        fn var_names(&self) -> Result<Vec<String>, ReportError> {
            Ok(H5adReader::var_names(self)?)
        }
        fn column(&self, df: &str, name: &str) -> Result<Element, ReportError> {
            Ok(H5adReader::column(self, df, name)?)
        }
        fn dense(&self, slot: &str) -> Result<(usize, usize, Vec<f64>), ReportError> {
            Ok(H5adReader::dense(self, slot)?)
        }
        // Only the two plotted columns are read (a hyperslab): an embedding that declares a
        // huge shape costs two columns, not the whole matrix.
        fn two_columns(&self, slot: &str) -> Result<Option<(usize, Vec<f64>)>, ReportError> {
            match self.info(slot).map(|i| i.shape) {
                Ok(shape) if shape.len() == 2 && shape[1] >= 2 => {
                    match self.dense_columns(slot, 0..2)? {
                        Some(x) => Ok(Some(x)),
                        None => {
                            let (rows, cols, v) = H5adReader::dense(self, slot)?;
                            Ok(Some((
                                rows,
                                (0..rows)
                                    .flat_map(|i| [v[i * cols], v[i * cols + 1]])
                                    .collect(),
                            )))
                        }
                    }
                }
                _ => Ok(None),
            }
        }
        fn gene_columns(&self, slot: &str, cols: &[usize]) -> Result<Vec<f64>, ReportError> {
            let info = self.info(slot)?;
            if info.encoding.contains("csr") || info.encoding.contains("csc") {
                Ok(self.csr(slot)?.select_columns(cols).to_dense())
            } else {
                Ok(self.dense_select(slot, cols)?.2)
            }
        }
        fn obs_f64(&self, name: &str) -> Result<Vec<f64>, ReportError> {
            Ok(H5adReader::obs_f64(self, name)?)
        }
        fn dataframe(&self, slot: &str) -> Result<DataFrame, ReportError> {
            Ok(H5adReader::dataframe(self, slot)?)
        }
        fn obsp(&self, key: &str) -> Result<Csr, ReportError> {
            Ok(H5adReader::obsp(self, key)?)
        }
        fn transition_matrix(&self, key: &str) -> Result<TransitionMatrix, ReportError> {
            Ok(H5adReader::transition_matrix(self, key)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::element::{DenseArray, NumVec};

    #[test]
    fn memory_slots_find_members_of_groups_and_dicts() {
        let mut m = MemorySlots::new("AnnData", 2, vec!["a".into(), "b".into()]);
        m.set(
            "obsm/X_umap",
            Element::Dense(DenseArray {
                shape: vec![2, 3],
                data: NumVec::F64(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            }),
        );
        m.set(
            "uns/coarse_fwd",
            Element::Dict(vec![("X".into(), Element::Str("x".into()))]),
        );
        assert_eq!(m.keys("obsm").unwrap(), vec!["X_umap"]);
        assert!(m.exists("uns/coarse_fwd/X"));
        assert!(matches!(m.read("uns/coarse_fwd/X"), Ok(Element::Str(s)) if s == "x"));
        assert_eq!(
            m.two_columns("obsm/X_umap").unwrap(),
            Some((2, vec![1.0, 2.0, 4.0, 5.0]))
        );
        assert_eq!(
            m.gene_columns("obsm/X_umap", &[2, 0]).unwrap(),
            vec![3.0, 1.0, 6.0, 4.0]
        );
        let e = m.read("obsm/nothing").unwrap_err().to_string();
        assert!(e.contains("obsm/nothing") && e.contains("not found"), "{e}");
    }
}
