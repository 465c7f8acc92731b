//! The library's figures and HTML report (`cellfate::report`, the code behind `cellfate plot`
//! and `cellfate report`) drawn from an in-memory AnnData: [`AdataSlots`] reads the slots a
//! figure needs through `cellfate._slots`, so a notebook gets the same figures as the CLI
//! without writing a file. The GIL is held while drawing: slots are read from Python objects
//! as the figures ask for them.

use std::path::{Path, PathBuf};

use cellfate::io::element::Element;
use cellfate::report::{self, FigureKind, FigureSource, Format, PlotOptions, Render, ReportError};
use cellfate_kernels::Csr;
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::slots::{element, AdataSlots};
use crate::source::csr_from_parts;

/// What an in-memory AnnData is called in messages.
const NAME: &str = "AnnData";

/// A figure's reading error: the slot and Python's message.
fn slot_error(slot: &str, e: &PyErr, py: Python<'_>) -> ReportError {
    let message = if e.is_instance_of::<PyKeyError>(py) {
        "not found".to_string()
    } else {
        e.to_string()
    };
    ReportError::Slot {
        path: PathBuf::from(NAME),
        slot: slot.to_string(),
        message,
    }
}

/// A report error as the exception scanpy/CellRank raise for the cause: `KeyError` for a
/// missing key (embedding, cluster column, gene, slot), `ValueError` for a setting out of
/// range or a figure the data cannot give, `RuntimeError` otherwise.
pub(crate) fn report_error(e: ReportError) -> PyErr {
    // The library's messages name the CLI's flags; here they are keyword arguments.
    let mut msg = e.to_string();
    for (flag, kw) in [
        ("--cluster-key", "cluster_key="),
        ("--data-key", "data_key="),
        ("--time-key", "time_key="),
        ("--n-walks", "n_walks="),
        ("--genes", "genes="),
        ("--basis", "basis="),
        ("--width", "width="),
        ("--height", "height="),
        ("--dpi", "dpi="),
        ("--kind", "kind="),
    ] {
        msg = msg.replace(flag, kw);
    }
    match &e {
        ReportError::Slot { message, .. } if message == "not found" => PyKeyError::new_err(msg),
        ReportError::ClusterKey { .. }
        | ReportError::NoEmbedding { .. }
        | ReportError::UnknownGene { .. } => PyKeyError::new_err(msg),
        ReportError::Option { .. }
        | ReportError::KindUnavailable { .. }
        | ReportError::NoEmbeddingOrMatrix { .. }
        | ReportError::Slot { .. }
        | ReportError::Matrix { .. } => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// `AdataSlots` with the name used in messages.
struct Figures<'py> {
    slots: AdataSlots<'py>,
    name: PathBuf,
}

impl<'py> Figures<'py> {
    fn call<T: for<'a> FromPyObject<'a, 'py>>(
        &self,
        f: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
        slot: &str,
    ) -> Result<T, ReportError> {
        let py = self.slots.adata.py();
        self.slots
            .helpers
            .call_method1(f, args)
            .and_then(|v| v.extract::<T>().map_err(Into::into))
            .map_err(|e| slot_error(slot, &e, py))
    }
}

impl FigureSource for Figures<'_> {
    fn path(&self) -> &Path {
        &self.name
    }
    fn exists(&self, slot: &str) -> bool {
        self.slots
            .helpers
            .call_method1("exists", (&self.slots.adata, slot))
            .and_then(|v| v.extract())
            .unwrap_or(false)
    }
    fn read(&self, slot: &str) -> Result<Element, ReportError> {
        let py = self.slots.adata.py();
        self.slots
            .helpers
            .call_method1("read", (&self.slots.adata, slot))
            .and_then(|t| element(&t))
            .map_err(|e| slot_error(slot, &e, py))
    }
    fn keys(&self, group: &str) -> Result<Vec<String>, ReportError> {
        self.call("keys", (&self.slots.adata, group), group)
    }
    fn columns(&self, df: &str) -> Result<Vec<String>, ReportError> {
        self.call("keys", (&self.slots.adata, df), df)
    }
    fn n_obs(&self) -> Result<usize, ReportError> {
        let py = self.slots.adata.py();
        self.slots
            .adata
            .getattr("n_obs")
            .and_then(|v| v.extract())
            .map_err(|e| slot_error("obs", &e, py))
    }
    fn n_vars(&self) -> Result<usize, ReportError> {
        let py = self.slots.adata.py();
        self.slots
            .adata
            .getattr("n_vars")
            .and_then(|v| v.extract())
            .map_err(|e| slot_error("var", &e, py))
    }
    fn var_names(&self) -> Result<Vec<String>, ReportError> {
        self.call("var_names", (&self.slots.adata,), "var")
    }
    fn two_columns(&self, slot: &str) -> Result<Option<(usize, Vec<f64>)>, ReportError> {
        let py = self.slots.adata.py();
        let v = self
            .slots
            .helpers
            .call_method1("two_columns", (&self.slots.adata, slot))
            .map_err(|e| slot_error(slot, &e, py))?;
        if v.is_none() {
            return Ok(None);
        }
        let a: numpy::PyReadonlyArray2<'_, f64> =
            v.extract().map_err(|e: PyErr| slot_error(slot, &e, py))?;
        let rows = a.as_array().nrows();
        let data = a.as_array().iter().copied().collect();
        Ok(Some((rows, data)))
    }
    fn gene_columns(&self, slot: &str, cols: &[usize]) -> Result<Vec<f64>, ReportError> {
        let py = self.slots.adata.py();
        let v = self
            .slots
            .helpers
            .call_method1("gene_columns", (&self.slots.adata, slot, cols.to_vec()))
            .map_err(|e| slot_error(slot, &e, py))?;
        let a: numpy::PyReadonlyArray2<'_, f64> =
            v.extract().map_err(|e: PyErr| slot_error(slot, &e, py))?;
        Ok(a.as_array().iter().copied().collect())
    }
    fn obsp(&self, key: &str) -> Result<Csr, ReportError> {
        let slot = format!("obsp/{key}");
        let py = self.slots.adata.py();
        let parts = self
            .slots
            .helpers
            .call_method1("csr", (&self.slots.adata, key))
            .map_err(|e| slot_error(&slot, &e, py))?;
        csr_from_parts(&parts, &slot).map_err(|e| slot_error(&slot, &e, py))
    }
}

/// Figure settings as the library's options, checked.
#[allow(clippy::too_many_arguments)]
fn options(
    kinds: Option<Vec<String>>,
    basis: Option<String>,
    cluster_key: Option<String>,
    genes: Option<Vec<String>>,
    time_key: Option<String>,
    data_key: Option<String>,
    n_walks: Option<usize>,
    seed: Option<u64>,
    n_drivers: Option<usize>,
    width: Option<u32>,
    height: Option<u32>,
    dpi: Option<u32>,
) -> PyResult<PlotOptions> {
    let mut o = PlotOptions {
        basis,
        cluster_key,
        genes: genes.unwrap_or_default(),
        time_key,
        data_key,
        render: Render {
            width,
            height,
            dpi: dpi.unwrap_or(100),
        },
        ..PlotOptions::default()
    };
    if let Some(k) = kinds {
        o.kinds = Some(
            k.iter()
                .map(|s| s.parse::<FigureKind>())
                .collect::<Result<_, _>>()
                .map_err(|e| PyValueError::new_err(e.to_string()))?,
        );
    }
    if let Some(w) = n_walks {
        o.n_walks = w;
    }
    if let Some(s) = seed {
        o.seed = s;
    }
    if let Some(n) = n_drivers {
        o.n_drivers = n;
    }
    o.render.validate().map_err(report_error)?;
    Ok(o)
}

/// A drawn figure: name, title and the encoded file.
type Drawn<'py> = (String, String, Bound<'py, PyBytes>);

/// The figures of `adata` as `([(name, title, bytes)], notes)`, drawn as `format` (`png` or
/// `svg`); the same figures and names as `cellfate plot`.
#[pyfunction]
#[pyo3(signature = (adata, kinds=None, basis=None, cluster_key=None, genes=None, time_key=None, data_key=None, n_walks=None, seed=None, n_drivers=None, width=None, height=None, dpi=None, format="png"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn figures<'py>(
    py: Python<'py>,
    adata: &Bound<'py, PyAny>,
    kinds: Option<Vec<String>>,
    basis: Option<String>,
    cluster_key: Option<String>,
    genes: Option<Vec<String>>,
    time_key: Option<String>,
    data_key: Option<String>,
    n_walks: Option<usize>,
    seed: Option<u64>,
    n_drivers: Option<usize>,
    width: Option<u32>,
    height: Option<u32>,
    dpi: Option<u32>,
    format: &str,
) -> PyResult<(Vec<Drawn<'py>>, Vec<String>)> {
    let format: Format = format
        .parse()
        .map_err(|e: report::FormatParseError| PyValueError::new_err(e.to_string()))?;
    let o = options(
        kinds,
        basis,
        cluster_key,
        genes,
        time_key,
        data_key,
        n_walks,
        seed,
        n_drivers,
        width,
        height,
        dpi,
    )?;
    let src = Figures {
        slots: AdataSlots::new(adata)?,
        name: PathBuf::from(NAME),
    };
    let (figs, notes) = report::figures(&src, &o).map_err(report_error)?;
    let mut out = Vec::with_capacity(figs.len());
    for f in figs {
        let bytes = match format {
            Format::Svg => f.svg_with(&o.render).map(String::into_bytes),
            Format::Png => f.png_with(&o.render),
        }
        .map_err(report_error)?;
        out.push((f.name.clone(), f.title.clone(), PyBytes::new(py, &bytes)));
    }
    Ok((out, notes))
}

/// The HTML report of `adata` (the page `cellfate report` writes), as a string; written to
/// `path` too when given (an exclusive temporary file renamed into place).
#[pyfunction]
#[pyo3(signature = (adata, path=None, title="cellfate report", kinds=None, basis=None, cluster_key=None, genes=None, time_key=None, data_key=None, n_walks=None, seed=None, n_drivers=None, width=None, height=None, dpi=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn html_report(
    adata: &Bound<'_, PyAny>,
    path: Option<PathBuf>,
    title: &str,
    kinds: Option<Vec<String>>,
    basis: Option<String>,
    cluster_key: Option<String>,
    genes: Option<Vec<String>>,
    time_key: Option<String>,
    data_key: Option<String>,
    n_walks: Option<usize>,
    seed: Option<u64>,
    n_drivers: Option<usize>,
    width: Option<u32>,
    height: Option<u32>,
    dpi: Option<u32>,
) -> PyResult<String> {
    let o = options(
        kinds,
        basis,
        cluster_key,
        genes,
        time_key,
        data_key,
        n_walks,
        seed,
        n_drivers,
        width,
        height,
        dpi,
    )?;
    let src = Figures {
        slots: AdataSlots::new(adata)?,
        name: PathBuf::from(NAME),
    };
    let html = report::html::report(&src, title, &o).map_err(report_error)?;
    if let Some(p) = path {
        cellfate::output::write_atomic(&p, html.as_bytes())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
    }
    Ok(html)
}

/// Writes `data` to `path` through an exclusive temporary file renamed into place (the
/// library's output rule: never follows a link, never replaces a device).
#[pyfunction]
pub(crate) fn write_file(path: PathBuf, data: &[u8]) -> PyResult<()> {
    cellfate::output::write_atomic(&path, data).map_err(|e| PyValueError::new_err(e.to_string()))
}
