//! `CytoTRACEKernel` (CellRank's re-implementation of Gulati et al. 2020): the number of
//! expressed genes per cell as a proxy for developmental potential, turned into a pseudotime
//! and biased through the [`PseudotimeParams`] machinery.
//!
//! 1. `g_i` = number of genes with `X > 0` in cell `i`;
//! 2. correlate every gene's values (in `X`) with `g` over cells (Pearson, population sd);
//! 3. take the `n_genes` most positively correlated genes;
//! 4. score = mean of those genes in `layer` per cell, min–max scaled to `[0, 1]`;
//! 5. pseudotime = `1 − score`; then the pseudotime kernel (hard scheme by default).

use serde::{Deserialize, Serialize};

use crate::error::KernelError;
use crate::leaf::{read_graph, to_transition, Leaf};
use crate::pseudotime::{PseudotimeParams, ThresholdScheme};
use crate::source::CellSource;
use crate::transition::{Direction, TransitionMatrix};

/// Parameters of the CytoTRACE kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CytoTraceParams {
    /// Backward process.
    pub backward: bool,
    /// Layer averaged over the selected genes (CellRank 2.3 uses an imputed layer; `Ms` here).
    pub layer: String,
    /// Number of genes most correlated with the gene count.
    pub n_genes: usize,
    /// `obsp` key of the kNN connectivities.
    pub conn_key: String,
    /// Biasing scheme.
    pub threshold_scheme: ThresholdScheme,
    /// Hard scheme: fraction of neighbours always kept.
    pub frac_to_keep: f64,
}

impl Default for CytoTraceParams {
    fn default() -> Self {
        Self {
            backward: false,
            layer: "Ms".into(),
            n_genes: 200,
            conn_key: "connectivities".into(),
            threshold_scheme: ThresholdScheme::Hard,
            frac_to_keep: 0.3,
        }
    }
}

pub(crate) const NAME: &str = "CytoTRACEKernel";

impl CytoTraceParams {
    /// The CytoTRACE pseudotime (`1 − score`, in `[0, 1]`) and the number of expressed genes.
    pub fn pseudotime(&self, cells: &dyn CellSource) -> Result<(Vec<f64>, Vec<f64>), KernelError> {
        let x = cells
            .layer("X")
            .map_err(|source| KernelError::MissingInput {
                kernel: NAME,
                what: "the expression matrix X".into(),
                source: Box::new(source),
                hint: "the input needs X (counts or normalised expression)".into(),
            })?;
        let imp = cells
            .layer(&self.layer)
            .map_err(|source| KernelError::MissingInput {
                kernel: NAME,
                what: "the layer averaged over the selected genes".into(),
                source: Box::new(source),
                hint: "compute moments with `cellfate preprocess` or set `layer`".into(),
            })?;
        let (n, g) = (x.nrows(), x.ncols());
        if (imp.nrows(), imp.ncols()) != (n, g) {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("layers[\"{}\"]", self.layer),
                detail: "shape differs from X".into(),
            });
        }
        let mut row = Vec::new();
        let mut count = vec![0.0; n];
        for (i, c) in count.iter_mut().enumerate() {
            x.row_into(i, &mut row);
            *c = row.iter().filter(|&&v| v > 0.0).count() as f64;
        }
        let cm = count.iter().sum::<f64>() / n as f64;
        let csd = (count.iter().map(|c| (c - cm) * (c - cm)).sum::<f64>() / n as f64).sqrt();
        let (mut s, mut s2, mut sc) = (vec![0.0; g], vec![0.0; g], vec![0.0; g]);
        for (i, &c) in count.iter().enumerate() {
            x.row_into(i, &mut row);
            for (j, &v) in row.iter().enumerate() {
                s[j] += v;
                s2[j] += v * v;
                sc[j] += v * c;
            }
        }
        let nf = n as f64;
        let corr: Vec<f64> = (0..g)
            .map(|j| {
                let m = s[j] / nf;
                let sd = (s2[j] / nf - m * m).max(0.0).sqrt();
                let r = (sc[j] - nf * m * cm) / (nf * sd * csd);
                if r.is_finite() {
                    r
                } else {
                    f64::NEG_INFINITY
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..g).filter(|&j| corr[j] > 0.0).collect();
        order.sort_by(|&a, &b| corr[b].total_cmp(&corr[a]).then(a.cmp(&b)));
        order.truncate(self.n_genes);
        if order.is_empty() {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: "X".into(),
                detail: "no gene correlates positively with the number of expressed genes".into(),
            });
        }
        let score: Vec<f64> = (0..n)
            .map(|i| {
                imp.row_into(i, &mut row);
                order.iter().map(|&j| row[j]).sum::<f64>() / order.len() as f64
            })
            .collect();
        let (lo, hi) = score
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        Ok((score.iter().map(|v| 1.0 - (v - lo) / span).collect(), count))
    }
}

impl Leaf for CytoTraceParams {
    const NAME: &'static str = NAME;

    fn leaf_direction(&self) -> Option<Direction> {
        Some(Direction::from_backward(self.backward))
    }

    fn leaf_validate(&self) -> Result<(), KernelError> {
        if self.n_genes == 0 {
            return Err(KernelError::InvalidParam {
                kernel: NAME,
                name: "n_genes",
                value: "0".into(),
                expected: "a positive number of genes".into(),
            });
        }
        self.pseudotime_params().leaf_validate()
    }

    fn leaf_compute(
        &self,
        cells: &dyn CellSource,
    ) -> Result<(TransitionMatrix, Self), KernelError> {
        let conn = read_graph(NAME, cells, &self.conn_key)?;
        let (mut t, _) = self.pseudotime(cells)?;
        if self.backward {
            let max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            t.iter_mut().for_each(|x| *x = max - *x);
        }
        let biased = self.pseudotime_params().bias(&conn, &t);
        let transition = to_transition(NAME, biased, Direction::from_backward(self.backward))?;
        Ok((transition, self.clone()))
    }
}

impl CytoTraceParams {
    fn pseudotime_params(&self) -> PseudotimeParams {
        PseudotimeParams {
            conn_key: self.conn_key.clone(),
            threshold_scheme: self.threshold_scheme,
            frac_to_keep: self.frac_to_keep,
            ..PseudotimeParams::default()
        }
    }
}
