//! Writing kernels into `.h5ad` files the way CellRank's `Kernel.write_to_adata` does, and
//! reading them back (`Kernel.from_adata`).
//!
//! `obsp["T_fwd"]` (or `T_bwd`) holds the matrix; `uns["T_fwd_params"]` holds
//! `{"params": ..., "init": ...}` in CellRank's layout, plus `"spec"`: the effective kernel
//! spec as JSON, from which cellfate rebuilds the kernel exactly.

use cellfate_kernels::{Kernel, KernelOutput, KernelSpec, TransitionMatrix};

use crate::io::{keys, Element, H5adEdit, H5adError, H5adReader, NumVec, SparseArray};

/// A JSON value as an AnnData element (`null`s are dropped: anndata cannot store them).
pub fn json_to_element(v: &serde_json::Value) -> Option<Element> {
    use serde_json::Value;
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => Element::Scalar(NumVec::Bool(vec![*b])),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Element::Scalar(NumVec::I64(vec![i])),
            None => Element::Scalar(NumVec::F64(vec![n.as_f64().unwrap_or(f64::NAN)])),
        },
        Value::String(s) => Element::Str(s.clone()),
        Value::Array(a) if a.iter().all(Value::is_string) => Element::from_strings(
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
        ),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            Element::from_f64(a.iter().filter_map(Value::as_f64).collect())
        }
        Value::Array(a) => Element::Dict(
            a.iter()
                .enumerate()
                .filter_map(|(i, x)| json_to_element(x).map(|e| (i.to_string(), e)))
                .collect(),
        ),
        Value::Object(m) => Element::Dict(
            m.iter()
                .filter_map(|(k, x)| json_to_element(x).map(|e| (k.clone(), e)))
                .collect(),
        ),
    })
}

/// CellRank's `params` and `init` dictionaries for a kernel spec.
pub fn cellrank_params(spec: &KernelSpec) -> (serde_json::Value, serde_json::Value) {
    use serde_json::json;
    match spec {
        KernelSpec::Velocity(p) => {
            let mut params = json!({
                "model": "deterministic",
                "similarity": serde_json::to_value(p.similarity).unwrap_or_default(),
                "softmax_scale": p.softmax_scale,
            });
            if p.backward {
                params["bwd_mode"] = serde_json::to_value(p.backward_mode).unwrap_or_default();
            }
            let init = json!({"backward": p.backward, "xkey": p.xkey, "vkey": p.vkey, "attr": "layers", "conn_key": p.conn_key});
            (params, init)
        }
        KernelSpec::Connectivity(p) => (
            json!({"dnorm": p.density_normalize, "key": p.conn_key}),
            json!({"conn_key": p.conn_key}),
        ),
        KernelSpec::Pseudotime(p) => {
            let scheme = serde_json::to_value(p.threshold_scheme).unwrap_or_default();
            let params = match p.threshold_scheme {
                cellfate_kernels::ThresholdScheme::Hard => {
                    json!({"dnorm": false, "scheme": scheme, "frac_to_keep": p.frac_to_keep})
                }
                cellfate_kernels::ThresholdScheme::Soft => {
                    json!({"dnorm": false, "scheme": scheme, "b": p.b, "nu": p.nu})
                }
            };
            (
                params,
                json!({"time_key": p.time_key, "backward": p.backward, "conn_key": p.conn_key}),
            )
        }
        KernelSpec::Precomputed(p) => (
            json!({}),
            json!({"obsp_key": p.key(), "backward": p.backward}),
        ),
        KernelSpec::RealTime(p) => (
            json!({"threshold": serde_json::to_value(p.threshold).unwrap_or_default(),
                   "self_transitions": serde_json::to_value(p.self_transitions).unwrap_or_default()}),
            json!({"time_key": p.time_key}),
        ),
        KernelSpec::LabelingTime(p) => (
            json!({"model": "deterministic", "similarity": serde_json::to_value(p.similarity).unwrap_or_default(),
                   "softmax_scale": p.softmax_scale, "estimator": serde_json::to_value(p.estimator).unwrap_or_default()}),
            json!({"backward": p.backward, "new_key": p.new_key, "total_key": p.total_key, "time_key": p.time_key}),
        ),
        KernelSpec::CytoTrace(p) => (
            json!({"dnorm": false, "scheme": serde_json::to_value(p.threshold_scheme).unwrap_or_default(),
                   "frac_to_keep": p.frac_to_keep, "n_genes": p.n_genes, "layer": p.layer}),
            json!({"backward": p.backward, "conn_key": p.conn_key}),
        ),
        KernelSpec::Custom(c) => (c.params.clone(), json!({ "name": c.name })),
        KernelSpec::Sum { .. } | KernelSpec::Product { .. } => {
            let mut params = serde_json::Map::new();
            let leaves: Vec<(f64, &KernelSpec)> = match spec {
                KernelSpec::Sum { terms } => terms.iter().map(|(w, k)| (*w, k)).collect(),
                KernelSpec::Product { factors } => factors.iter().map(|k| (1.0, k)).collect(),
                _ => Vec::new(),
            };
            for (i, (w, k)) in leaves.iter().enumerate() {
                let (p, _) = cellrank_params(k);
                params.insert(
                    format!("{}:{i}", k.name()),
                    json!({"weight": w, "params": p}),
                );
            }
            (serde_json::Value::Object(params), json!({}))
        }
    }
}

/// Adds a computed kernel to an edit: `obsp[key]` and `uns[f"{key}_params"]`. `key` defaults
/// to `T_fwd`/`T_bwd` by direction.
pub fn write_kernel(edit: &mut H5adEdit, out: &KernelOutput, key: Option<&str>) {
    let key = key.map_or_else(
        || keys::transition(out.transition.direction()),
        String::from,
    );
    let (params, init) = cellrank_params(&out.effective);
    let mut members = Vec::new();
    if let Some(p) = json_to_element(&params) {
        members.push(("params".to_string(), p));
    }
    if let Some(i) = json_to_element(&init) {
        members.push(("init".to_string(), i));
    }
    members.push(("spec".to_string(), Element::Str(out.effective.to_json())));
    members.push((
        "writer".to_string(),
        Element::Str(format!("cellfate {}", env!("CARGO_PKG_VERSION"))),
    ));
    edit.set(
        &format!("obsp/{key}"),
        Element::Sparse(SparseArray::from_csr(out.transition.as_csr())),
    );
    edit.set(&format!("uns/{key}_params"), Element::Dict(members));
}

/// An error reading a kernel back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelIoError {
    /// The file or slot could not be read.
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// The stored spec is invalid.
    #[error("{path}: uns[\"{key}_params\"][\"spec\"]: {source}")]
    Spec {
        /// File.
        path: String,
        /// Kernel key.
        key: String,
        /// Why.
        source: Box<cellfate_kernels::KernelError>,
    },
}

/// Reads a kernel written by [`write_kernel`] (CellRank's `Kernel.from_adata`): the matrix
/// from `obsp[key]` and the spec from `uns[f"{key}_params"]["spec"]`. For a matrix written by
/// CellRank itself (no spec), the spec is a `PrecomputedKernel` on that key.
pub fn read_kernel(r: &H5adReader, key: &str) -> Result<KernelOutput, KernelIoError> {
    let transition: TransitionMatrix = r.transition_matrix(key)?;
    let spec_slot = format!("uns/{key}_params/spec");
    let effective = if r.exists(&spec_slot) {
        match r.read(&spec_slot)? {
            Element::Str(s) => KernelSpec::from_json(&s).map_err(|e| KernelIoError::Spec {
                path: r.path().display().to_string(),
                key: key.to_string(),
                source: Box::new(e),
            })?,
            other => {
                return Err(r
                    .invalid(&spec_slot, "a JSON string", other.encoding())
                    .into())
            }
        }
    } else {
        KernelSpec::Precomputed(cellfate_kernels::PrecomputedParams {
            obsp_key: Some(key.to_string()),
            backward: key.ends_with("bwd"),
        })
    };
    Ok(KernelOutput {
        transition: transition.with_direction(effective.direction().unwrap_or_default()),
        effective,
    })
}
