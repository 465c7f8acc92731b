//! Writing kernels into `.h5ad` files the way CellRank's `Kernel.write_to_adata` does, and
//! reading them back (`Kernel.from_adata`).
//!
//! `obsp["T_fwd"]` (or `T_bwd`) holds the matrix; `uns["T_fwd_params"]` holds
//! `{"params": ..., "init": ...}` in CellRank's layout, plus `"spec"`: the effective kernel
//! spec as JSON, from which cellfate rebuilds the kernel exactly.

use cellfate_kernels::{Kernel, KernelOutput, KernelSpec, TransitionMatrix};

use crate::io::{Element, H5adEdit, H5adError, H5adReader};

pub use crate::adata::{cellrank_params, json_to_element};

/// Adds a computed kernel to an edit: `obsp[key]` and `uns[f"{key}_params"]`. `key` defaults
/// to `T_fwd`/`T_bwd` by direction (the elements of [`crate::adata::kernel_elements`]).
pub fn write_kernel(edit: &mut H5adEdit, out: &KernelOutput, key: Option<&str>) {
    crate::adata::kernel_elements(edit, out, key);
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
