//! The `.h5ad` reader as a [`CellSource`]: what kernels read, slot by slot.

use cellfate_kernels::{CellSource, Csr, DenseMatrix, SourceError};

use super::element::{Element, NumVec};
use super::error::H5adError;
use super::read::H5adReader;

fn to_source(slot: &str, key: &str, e: H5adError) -> SourceError {
    match e {
        H5adError::Missing { available, .. } => SourceError::Missing {
            slot: slot.into(),
            key: key.into(),
            available,
        },
        // A problem in another slot (the dataframe's index, say) keeps its own slot name.
        H5adError::Invalid { slot: ref bad, .. } if *bad != format!("{slot}/{key}") => {
            SourceError::Storage {
                slot: slot.into(),
                key: key.into(),
                detail: e.to_string(),
            }
        }
        H5adError::Invalid {
            expected, found, ..
        } => SourceError::Invalid {
            slot: slot.into(),
            key: key.into(),
            expected,
            found,
        },
        other => SourceError::Storage {
            slot: slot.into(),
            key: key.into(),
            detail: other.to_string(),
        },
    }
}

/// A 2-D element as a dense matrix, keeping float32 storage when that is what is stored.
pub(crate) fn element_to_dense(el: Element) -> Option<DenseMatrix> {
    match el {
        Element::Dense(d) if d.shape.len() == 2 => {
            let (r, c) = (d.shape[0], d.shape[1]);
            Some(match d.data {
                NumVec::F32(v) => DenseMatrix::from_f32(r, c, v),
                other => DenseMatrix::from_f64(r, c, other.to_f64()),
            })
        }
        Element::Sparse(s) => {
            let (r, c) = (s.shape[0], s.shape[1]);
            let csr = s.to_csr().ok()?;
            let mut dense = vec![0.0f64; r * c];
            for i in 0..r {
                let (cols, vals) = csr.row(i);
                for (&j, &v) in cols.iter().zip(vals) {
                    dense[i * c + j as usize] = v;
                }
            }
            Some(match s.data {
                NumVec::F32(_) => {
                    DenseMatrix::from_f32(r, c, dense.into_iter().map(|x| x as f32).collect())
                }
                _ => DenseMatrix::from_f64(r, c, dense),
            })
        }
        _ => None,
    }
}

impl CellSource for H5adReader {
    fn n_cells(&self) -> usize {
        self.n_obs().unwrap_or(0)
    }

    fn n_genes(&self) -> usize {
        self.n_vars().unwrap_or(0)
    }

    fn graph(&self, key: &str) -> Result<Csr, SourceError> {
        self.obsp(key).map_err(|e| to_source("obsp", key, e))
    }

    fn obs_f64(&self, key: &str) -> Result<Vec<f64>, SourceError> {
        H5adReader::obs_f64(self, key).map_err(|e| to_source("obs", key, e))
    }

    fn obs_labels(&self, key: &str) -> Result<Vec<Option<String>>, SourceError> {
        match self
            .column("obs", key)
            .map_err(|e| to_source("obs", key, e))?
        {
            Element::Categorical(c) => Ok(c.to_labels()),
            Element::Strings { values, .. } => Ok(values.into_iter().map(Some).collect()),
            Element::NullableStr { values, mask } => Ok(values
                .into_iter()
                .zip(mask)
                .map(|(v, m)| (!m).then_some(v))
                .collect()),
            other => Err(SourceError::Invalid {
                slot: "obs".into(),
                key: key.into(),
                expected: "a categorical or string column".into(),
                found: other.encoding().into(),
            }),
        }
    }

    fn layer(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        let slot = if key == "X" {
            "X".to_string()
        } else {
            format!("layers/{key}")
        };
        let el = self.read(&slot).map_err(|e| to_source("layers", key, e))?;
        let found = format!("{} with shape {:?}", el.encoding(), el.shape());
        element_to_dense(el).ok_or_else(|| SourceError::Invalid {
            slot: "layers".into(),
            key: key.into(),
            expected: "a cells x genes matrix".into(),
            found,
        })
    }

    fn obsm(&self, key: &str) -> Result<DenseMatrix, SourceError> {
        let el = self
            .read(&format!("obsm/{key}"))
            .map_err(|e| to_source("obsm", key, e))?;
        let found = format!("{} with shape {:?}", el.encoding(), el.shape());
        element_to_dense(el).ok_or_else(|| SourceError::Invalid {
            slot: "obsm".into(),
            key: key.into(),
            expected: "a cells x d matrix".into(),
            found,
        })
    }

    fn obs_categories(&self, key: &str) -> Result<Vec<String>, SourceError> {
        match self
            .column("obs", key)
            .map_err(|e| to_source("obs", key, e))?
        {
            Element::Categorical(c) => Ok(c.categories.labels()),
            _ => Ok(Vec::new()),
        }
    }

    fn uns_matrix(&self, key: &str) -> Result<Option<DenseMatrix>, SourceError> {
        let slot = format!("uns/{key}");
        if !self.exists(&slot) {
            return Ok(None);
        }
        let el = self.read(&slot).map_err(|e| to_source("uns", key, e))?;
        Ok(element_to_dense(el))
    }

    fn var_mask(&self, key: &str) -> Result<Option<Vec<bool>>, SourceError> {
        if !self.exists(&format!("var/{key}")) {
            return Ok(None);
        }
        let col = self
            .column("var", key)
            .map_err(|e| to_source("var", key, e))?;
        match col {
            Element::Dense(d) if d.shape.len() == 1 => Ok(Some(match d.data {
                NumVec::Bool(b) => b,
                other => other.to_f64().into_iter().map(|x| x != 0.0).collect(),
            })),
            Element::NullableBool { values, mask } => Ok(Some(
                values.into_iter().zip(mask).map(|(v, m)| v && !m).collect(),
            )),
            other => Err(SourceError::Invalid {
                slot: "var".into(),
                key: key.into(),
                expected: "a boolean gene mask".into(),
                found: other.encoding().into(),
            }),
        }
    }
}
