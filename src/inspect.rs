//! `cellfate inspect`: what a `.h5ad` file holds, from metadata only (no matrix is read).

use std::path::Path;

use serde::Serialize;

use crate::io::{Element, H5adError, H5adReader};

/// One slot: its key, anndata encoding, shape and dtype.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotSummary {
    /// Key within its group (`velocity`, `X_umap`, ...).
    pub key: String,
    /// anndata encoding-type (`array`, `csr_matrix`, `dataframe`, `dict`, ...).
    pub encoding: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// numpy dtype of the values, if any.
    pub dtype: Option<String>,
}

/// One dataframe column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColumnSummary {
    /// Column name.
    pub name: String,
    /// anndata encoding-type (`array`, `categorical`, `string-array`, `nullable-integer`, ...).
    pub kind: String,
    /// dtype of the values (for categoricals, of the categories).
    pub dtype: Option<String>,
    /// Categories, for categorical columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

/// Everything `cellfate inspect` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InspectReport {
    /// The file.
    pub path: String,
    /// `anndata>=0.8` or `anndata-0.7` (legacy layout).
    pub layout: String,
    /// Number of cells.
    pub n_obs: usize,
    /// Number of genes.
    pub n_vars: usize,
    /// `X`, when present.
    pub x: Option<SlotSummary>,
    /// `layers`.
    pub layers: Vec<SlotSummary>,
    /// `obsm`.
    pub obsm: Vec<SlotSummary>,
    /// `obsp`.
    pub obsp: Vec<SlotSummary>,
    /// `varm`.
    pub varm: Vec<SlotSummary>,
    /// `varp`.
    pub varp: Vec<SlotSummary>,
    /// `uns` (top-level keys).
    pub uns: Vec<SlotSummary>,
    /// `obs` columns, in order.
    pub obs: Vec<ColumnSummary>,
    /// `var` columns, in order.
    pub var: Vec<ColumnSummary>,
    /// Whether a `raw` slot exists.
    pub raw: bool,
    /// Shape inconsistencies found (layer not n_obs × n_vars, obsp not square, ...).
    pub problems: Vec<String>,
}

/// Builds the report for `path`.
pub fn inspect(path: &Path) -> Result<InspectReport, H5adError> {
    let r = H5adReader::open(path)?;
    let slots = |group: &str| -> Result<Vec<SlotSummary>, H5adError> {
        r.keys(group)?
            .into_iter()
            .map(|k| {
                let info = r.info(&format!("{group}/{k}"))?;
                Ok(SlotSummary {
                    key: k,
                    encoding: info.encoding,
                    shape: info.shape,
                    dtype: info.dtype,
                })
            })
            .collect()
    };
    let columns = |df: &str| -> Result<Vec<ColumnSummary>, H5adError> {
        if !r.exists(df) {
            return Ok(Vec::new());
        }
        r.columns(df)?
            .into_iter()
            .map(|name| {
                let col = r.column(df, &name)?;
                let (dtype, categories) = match &col {
                    Element::Categorical(c) => (
                        Some(match &c.categories {
                            crate::io::Categories::Str(_) => "str".to_string(),
                            crate::io::Categories::Num(v) => v.dtype().to_string(),
                        }),
                        Some(c.categories.labels()),
                    ),
                    Element::Dense(d) => (Some(d.data.dtype().to_string()), None),
                    Element::NullableInt { values, .. } => (Some(values.dtype().to_string()), None),
                    Element::NullableBool { .. } => (Some("bool".into()), None),
                    Element::Strings { .. } | Element::NullableStr { .. } => {
                        (Some("str".into()), None)
                    }
                    _ => (None, None),
                };
                Ok(ColumnSummary {
                    name,
                    kind: col.encoding().to_string(),
                    dtype,
                    categories,
                })
            })
            .collect()
    };
    let x = if r.exists("X") {
        let info = r.info("X")?;
        Some(SlotSummary {
            key: "X".into(),
            encoding: info.encoding,
            shape: info.shape,
            dtype: info.dtype,
        })
    } else {
        None
    };
    Ok(InspectReport {
        path: path.display().to_string(),
        layout: if r.is_legacy() {
            "anndata-0.7"
        } else {
            "anndata>=0.8"
        }
        .into(),
        n_obs: r.n_obs()?,
        n_vars: r.n_vars()?,
        x,
        layers: slots("layers")?,
        obsm: slots("obsm")?,
        obsp: slots("obsp")?,
        varm: slots("varm")?,
        varp: slots("varp")?,
        uns: slots("uns")?,
        obs: columns("obs")?,
        var: columns("var")?,
        raw: r.exists("raw"),
        problems: r.validate()?.into_iter().map(|e| e.to_string()).collect(),
    })
}

impl InspectReport {
    /// Human-readable multi-line rendering. Names from the file (slots, columns, categories)
    /// are escaped for the terminal ([`crate::names::escape_for_terminal`]).
    pub fn to_text(&self) -> String {
        use crate::names::escape_for_terminal as esc;
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{} ({})", esc(&self.path), self.layout);
        let _ = writeln!(
            s,
            "AnnData object with n_obs x n_vars = {} x {}",
            self.n_obs, self.n_vars
        );
        let fmt_slot = |s: &mut String, sl: &SlotSummary| {
            let _ = writeln!(
                s,
                "    {:<32} {:<16} {:<16} {}",
                esc(&sl.key),
                sl.encoding,
                format!("{:?}", sl.shape),
                sl.dtype.as_deref().unwrap_or("")
            );
        };
        if let Some(x) = &self.x {
            let _ = writeln!(s, "  X");
            fmt_slot(&mut s, x);
        }
        for (name, list) in [
            ("layers", &self.layers),
            ("obsm", &self.obsm),
            ("obsp", &self.obsp),
            ("varm", &self.varm),
            ("varp", &self.varp),
            ("uns", &self.uns),
        ] {
            if !list.is_empty() {
                let _ = writeln!(s, "  {name}");
                for sl in list {
                    fmt_slot(&mut s, sl);
                }
            }
        }
        for (name, cols) in [("obs", &self.obs), ("var", &self.var)] {
            if !cols.is_empty() {
                let _ = writeln!(s, "  {name}");
                for c in cols {
                    let cats = c.categories.as_ref().map_or(String::new(), |cats| {
                        let shown: Vec<String> =
                            cats.iter().take(12).map(|c| esc(c).into_owned()).collect();
                        let more = if cats.len() > 12 { ", ..." } else { "" };
                        format!(" {} categories: {}{more}", cats.len(), shown.join(", "))
                    });
                    let _ = writeln!(
                        s,
                        "    {:<32} {:<16} {}{}",
                        esc(&c.name),
                        c.kind,
                        c.dtype.as_deref().unwrap_or(""),
                        cats
                    );
                }
            }
        }
        if self.raw {
            let _ = writeln!(s, "  raw: present");
        }
        for p in &self.problems {
            let _ = writeln!(s, "  problem: {}", esc(p));
        }
        s
    }
}
