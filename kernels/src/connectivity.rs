//! `ConnectivityKernel`: a symmetric transition matrix from the kNN connectivities
//! (`obsp["connectivities"]`), optionally density-normalised, as CellRank 2.3 defines it.
//!
//! With density normalisation, `q_j = Σ_i C_ij` and `T ∝ diag(1/q) C diag(1/q)`, then
//! row-normalised; without it, `T` is the row-normalised `C`.

use serde::{Deserialize, Serialize};

use crate::error::KernelError;
use crate::leaf::{read_graph, to_transition, Leaf};
use crate::source::CellSource;
use crate::transition::{Direction, TransitionMatrix};

/// Parameters of the connectivity kernel (CellRank names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectivityParams {
    /// `obsp` key of the kNN connectivities.
    pub conn_key: String,
    /// Density normalisation by the kNN graph.
    pub density_normalize: bool,
}

impl Default for ConnectivityParams {
    fn default() -> Self {
        Self {
            conn_key: "connectivities".into(),
            density_normalize: true,
        }
    }
}

pub(crate) const NAME: &str = "ConnectivityKernel";

impl Leaf for ConnectivityParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        None
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        if self.conn_key.is_empty() {
            return Err(KernelError::InvalidParam {
                kernel: NAME,
                name: "conn_key",
                value: "\"\"".into(),
                expected: "an obsp key".into(),
            });
        }
        Ok(())
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let mut c = read_graph(NAME, cells, &self.conn_key)?;
        if self.density_normalize {
            let q = c.col_sums();
            let indptr = c.indptr().to_vec();
            let indices = c.indices().to_vec();
            let data = c.data_mut();
            for (i, w) in indptr.windows(2).enumerate() {
                for p in w[0]..w[1] {
                    let j = indices[p] as usize;
                    // Q @ C @ Q, as scipy evaluates it: rows first, then columns.
                    data[p] = data[p] * (1.0 / q[i]) * (1.0 / q[j]);
                }
            }
        }
        let transition = to_transition(NAME, c, Direction::Forward)?;
        Ok((transition, self.clone()))
    }
}
