//! `PrecomputedKernel`: a transition matrix that already exists in `obsp` (by default
//! `T_fwd`, or `T_bwd` for a backward kernel), row-normalised if it is not stochastic yet.

use serde::{Deserialize, Serialize};

use crate::error::KernelError;
use crate::leaf::{read_graph, to_transition, Leaf};
use crate::source::CellSource;
use crate::transition::{Direction, TransitionMatrix};

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

impl Leaf for PrecomputedParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        if self.obsp_key.as_deref() == Some("") {
            return Err(KernelError::InvalidParam {
                kernel: NAME,
                name: "obsp_key",
                value: "\"\"".into(),
                expected: "an obsp key, or none for T_fwd / T_bwd".into(),
            });
        }
        Ok(())
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let m = read_graph(NAME, cells, &self.key())?;
        let transition = to_transition(NAME, m, Direction::from_backward(self.backward))?;
        Ok((transition, self.clone()))
    }
}
