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

/// What [`random_control`] found (also `uns["random_control"]`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RandomControlSummary {
    /// Seed of the permutation.
    pub seed: u64,
    /// The embedding the flows were projected on (`obsm` key).
    pub basis: String,
    /// The control's transition matrix (`obsp` key).
    pub key: String,
    /// Mean coherence of the real flow.
    pub real: f64,
    /// Mean coherence of the control.
    pub control: f64,
    /// `real − control` ([`cellfate_kernels::random_control::ControlScore`]).
    pub score: f64,
}

/// The embedding the randomised control is scored on: `obsm["X_pca"]`, else `X_umap`, else
/// the first `obsm` matrix.
fn control_basis(r: &H5adReader) -> Option<String> {
    ["X_pca", "X_umap"]
        .iter()
        .map(|s| s.to_string())
        .find(|k| r.exists(&format!("obsm/{k}")))
        .or_else(|| r.keys("obsm").ok()?.into_iter().next())
}

/// The randomised control of a computed kernel (dynamo's `calc_rnd_vel`, see
/// [`cellfate_kernels::random_control`]): the same effective kernel with its velocities
/// permuted across cells with random signs (`seed`), written as `obsp["<key>_rnd"]`, with
/// the per-cell score `obs["random_control_score"]` (real flow coherence minus the
/// control's, on `obsm["X_pca"]` (else `X_umap`, else the first obsm matrix) and the graph `obsp["connectivities"]`)
/// and `uns["random_control"]`.
pub fn random_control(
    r: &H5adReader,
    out: &KernelOutput,
    key: &str,
    seed: u64,
    edit: &mut H5adEdit,
) -> Result<RandomControlSummary, crate::pipeline::PipelineError> {
    use cellfate_kernels::random_control::{control_score, randomized_control};
    use cellfate_kernels::CellSource;
    let ctrl = randomized_control(&out.effective, r, seed)?;
    let basis = control_basis(r).ok_or_else(|| crate::pipeline::PipelineError::Preprocessing {
        message: format!(
            "{}: the randomised control is scored on an embedding, and obsm is empty (run `cellfate preprocess` first)",
            r.path().display()
        ),
    })?;
    let emb = r
        .obsm(&basis)
        .map_err(|e| crate::pipeline::PipelineError::Preprocessing {
            message: format!("{}: obsm[\"{basis}\"]: {e}", r.path().display()),
        })?;
    let graph = r.obsp("connectivities")?;
    let s = control_score(&out.transition, &ctrl.transition, &emb, &graph);
    let rnd_key = format!("{key}_rnd");
    write_kernel(edit, &ctrl, Some(&rnd_key));
    edit.set("obs/random_control_score", Element::from_f64(s.per_cell));
    let summary = RandomControlSummary {
        seed,
        basis,
        key: rnd_key,
        real: s.real,
        control: s.control,
        score: s.score,
    };
    let f = |x: f64| Element::Scalar(crate::io::NumVec::F64(vec![x]));
    edit.set(
        "uns/random_control",
        Element::Dict(vec![
            (
                "seed".into(),
                Element::Scalar(crate::io::NumVec::U64(vec![seed])),
            ),
            ("basis".into(), Element::Str(summary.basis.clone())),
            ("key".into(), Element::Str(summary.key.clone())),
            ("coherence".into(), f(s.real)),
            ("control_coherence".into(), f(s.control)),
            ("score".into(), f(s.score)),
        ]),
    );
    Ok(summary)
}
