//! `PrecomputedKernel`: a transition matrix that already exists in `obsp` (by default
//! `T_fwd`, or `T_bwd` for a backward kernel), row-normalised if it is not stochastic yet.

use serde::{Deserialize, Serialize};

use crate::error::KernelError;
use crate::kernel::{read_graph, to_transition, Kernel, KernelOutput, KernelSpec};
use crate::source::CellSource;
use crate::transition::Direction;

/// Parameters of the precomputed kernel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrecomputedParams {
    /// `obsp` key; `None` reads `T_fwd` (or `T_bwd` when `backward`).
    pub obsp_key: Option<String>,
    /// Whether the matrix describes the backward process.
    pub backward: bool,
}

pub(crate) const NAME: &str = "PrecomputedKernel";

impl PrecomputedParams {
    /// The `obsp` key read.
    pub fn key(&self) -> String {
        self.obsp_key.clone().unwrap_or_else(|| {
            if self.backward {
                "T_bwd".into()
            } else {
                "T_fwd".into()
            }
        })
    }
}

impl Kernel for PrecomputedParams {
    fn name(&self) -> &'static str {
        NAME
    }

    fn spec(&self) -> KernelSpec {
        KernelSpec::Precomputed(self.clone())
    }

    fn direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }

    fn validate(&self) -> Result<(), KernelError> {
        Ok(())
    }

    fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
        let m = read_graph(NAME, cells, &self.key())?;
        let transition = to_transition(NAME, m, self.direction().unwrap_or_default())?;
        Ok(KernelOutput {
            transition,
            effective: self.spec(),
        })
    }
}
