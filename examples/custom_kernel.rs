//! A user-defined kernel: transitions favour kNN neighbours with a higher value of an obs
//! column. It joins a weighted sum with a built-in kernel like any other and, once registered,
//! its spec round-trips through JSON, TOML, the saved-kernel format and the expression parser.
//!
//! `cargo run --example custom_kernel`

#![allow(clippy::print_stdout)]

use cellfate::kernels::{
    expr, register_kernel, save, CellSource, ConnectivityParams, Csr, CustomKernel, Direction,
    InMemoryCells, Kernel, KernelError, KernelOutput, KernelSpec, TransitionMatrix,
};
use serde::{Deserialize, Serialize};

/// Follows the kNN graph, weighting neighbour `j` of cell `i` by `exp(beta * (v_j - v_i))`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
struct Uphill {
    /// obs column holding the value to climb.
    obs_key: String,
    /// Strength of the bias (0: the plain kNN walk).
    beta: f64,
}

impl Default for Uphill {
    fn default() -> Self {
        Self {
            obs_key: "pseudotime".into(),
            beta: 10.0,
        }
    }
}

/// The name in expressions, `--param uphill.beta=...` and specs.
impl CustomKernel for Uphill {
    const NAME: &'static str = "uphill";
}

const NAME: &str = "UphillKernel";

impl Kernel for Uphill {
    fn name(&self) -> &'static str {
        NAME
    }

    fn spec(&self) -> KernelSpec {
        KernelSpec::custom(self)
    }

    fn direction(&self) -> Option<Direction> {
        Some(Direction::Forward)
    }

    fn validate(&self) -> Result<(), KernelError> {
        if self.beta.is_finite() && self.beta >= 0.0 {
            return Ok(());
        }
        Err(KernelError::InvalidParam {
            kernel: NAME,
            name: "beta",
            value: self.beta.to_string(),
            expected: "a finite number >= 0".into(),
        })
    }

    fn compute(&self, cells: &dyn CellSource) -> Result<KernelOutput, KernelError> {
        self.validate()?;
        let missing = |what: &str, hint: &str| {
            let (what, hint) = (what.to_string(), hint.to_string());
            move |source| KernelError::MissingInput {
                kernel: NAME,
                what,
                source: Box::new(source),
                hint,
            }
        };
        let knn = cells
            .graph("connectivities")
            .map_err(missing("the kNN graph", "compute neighbours first"))?;
        let v = cells
            .obs_f64(&self.obs_key)
            .map_err(missing("the value to climb", "set `obs_key`"))?;
        if v.len() != knn.nrows() {
            return Err(KernelError::InvalidInput {
                kernel: NAME,
                what: format!("obs[\"{}\"]", self.obs_key),
                detail: format!("{} values for {} cells", v.len(), knn.nrows()),
            });
        }
        let mut weights = Vec::with_capacity(knn.nnz());
        for i in 0..knn.nrows() {
            let (cols, vals) = knn.row(i);
            for (&j, &c) in cols.iter().zip(vals) {
                let j = j as usize;
                weights.push((i, j, c * (self.beta * (v[j] - v[i])).exp()));
            }
        }
        let m = Csr::from_triplets(knn.nrows(), knn.ncols(), &weights).map_err(|source| {
            KernelError::Sparse {
                kernel: NAME,
                source,
            }
        })?;
        let transition =
            TransitionMatrix::from_weights(m, Direction::Forward).map_err(|source| {
                KernelError::Transition {
                    kernel: NAME,
                    source,
                }
            })?;
        Ok(KernelOutput {
            transition,
            effective: self.spec(),
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 300 cells on a line, each linked to its 10 nearest cells; "pseudotime" grows along it.
    let n: usize = 300;
    let mut knn = Vec::new();
    for i in 0..n {
        for j in i.saturating_sub(5)..(i + 6).min(n) {
            if i != j {
                knn.push((i, j, 1.0));
            }
        }
    }
    let mut cells = InMemoryCells {
        n_cells: n,
        ..Default::default()
    };
    cells
        .graphs
        .insert("connectivities".into(), Csr::from_triplets(n, n, &knn)?);
    let t: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
    cells.obs.insert("pseudotime".into(), t.clone());

    // A weighted sum with a built-in kernel, computed like any other.
    let k = 0.7 * Uphill::default().spec() + 0.3 * ConnectivityParams::default();
    let out = k.compute(&cells)?;
    let next = out.transition.mul_vec(&t);
    let step = next.iter().zip(&t).map(|(a, b)| a - b).sum::<f64>() / n as f64;
    println!(
        "{}: {} cells, {} transitions, mean pseudotime step {step:+.5}",
        out.effective.name(),
        out.transition.n_cells(),
        out.transition.nnz()
    );

    // Registered, the spec is rebuilt from text: JSON (what uns["T_fwd_params"] stores),
    // TOML, the saved-kernel bytes, and an expression naming the kernel.
    register_kernel::<Uphill>()?;
    let json = out.effective.to_json();
    assert_eq!(KernelSpec::from_json(&json)?, out.effective);
    let toml_text = toml::to_string(&out.effective)?;
    assert_eq!(toml::from_str::<KernelSpec>(&toml_text)?, out.effective);
    assert_eq!(save::from_bytes(&save::to_bytes(&out)?)?, out);
    let mut parsed = expr::parse("0.7*uphill + 0.3*connectivity")?;
    parsed.set_param("uphill", "beta", "10")?;
    assert_eq!(parsed, k);
    assert_eq!(parsed.compute(&cells)?.transition, out.transition);
    println!("spec {json}\nequal after JSON, TOML, saved-kernel and expression round trips");
    Ok(())
}
