//! [`VectorField`]: a Gaussian-kernel expansion f(x) = Σ_a C_a exp(−β‖x − c_a‖²) on control
//! points c_a (what SparseVFC fits), with its analytic Jacobian.

use serde::{Deserialize, Serialize};

use crate::VectorFieldError;

/// A vector field in d dimensions: `f(x) = Σ_a C_a · exp(−β ‖x − c_a‖²)` over M control
/// points. Row-major storage: `ctrl` and `coef` are M × d.
///
/// Serialises with serde (JSON, bincode); the AnnData adapter stores its parts under dynamo's
/// `uns["VecFld_<basis>"]` keys (`X_ctrl`, `C`, `beta`) and rebuilds it with
/// [`VectorField::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorField {
    dim: usize,
    ctrl: Vec<f64>,
    coef: Vec<f64>,
    beta: f64,
}

impl VectorField {
    /// A field from its control points (M × d, row-major), coefficients (M × d) and kernel
    /// parameter β > 0. Errors name the part that does not fit.
    pub fn new(
        dim: usize,
        ctrl: Vec<f64>,
        coef: Vec<f64>,
        beta: f64,
    ) -> Result<Self, VectorFieldError> {
        if dim == 0 {
            return Err(VectorFieldError::Invalid(
                "a vector field needs at least one dimension".into(),
            ));
        }
        if ctrl.is_empty() || ctrl.len() % dim != 0 || coef.len() != ctrl.len() {
            return Err(VectorFieldError::Invalid(format!(
                "control points ({} values) and coefficients ({} values) must both be M × {dim} with M ≥ 1",
                ctrl.len(),
                coef.len()
            )));
        }
        if !(beta.is_finite() && beta > 0.0) {
            return Err(VectorFieldError::Invalid(format!(
                "beta = {beta}: expected a positive kernel parameter"
            )));
        }
        if let Some(v) = ctrl.iter().chain(&coef).find(|v| !v.is_finite()) {
            return Err(VectorFieldError::Invalid(format!(
                "control points and coefficients must be finite, found {v}"
            )));
        }
        Ok(Self {
            dim,
            ctrl,
            coef,
            beta,
        })
    }

    /// Dimension d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of control points M.
    pub fn n_ctrl(&self) -> usize {
        self.ctrl.len() / self.dim
    }

    /// Control points, row-major M × d.
    pub fn ctrl(&self) -> &[f64] {
        &self.ctrl
    }

    /// Coefficients, row-major M × d.
    pub fn coef(&self) -> &[f64] {
        &self.coef
    }

    /// Kernel parameter β.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// The kernel values k_a(x) = exp(−β‖x − c_a‖²) for every control point.
    fn kernel_row(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(self.ctrl.chunks_exact(self.dim).map(|c| {
            let d2: f64 = c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
            (-self.beta * d2).exp()
        }));
    }

    /// f(x).
    ///
    /// # Panics
    /// If `x` does not have d coordinates (a caller's contract).
    pub fn eval(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(
            x.len(),
            self.dim,
            "VectorField::eval: x has the wrong dimension"
        );
        let mut k = Vec::with_capacity(self.n_ctrl());
        self.kernel_row(x, &mut k);
        let mut f = vec![0.0; self.dim];
        for (ka, ca) in k.iter().zip(self.coef.chunks_exact(self.dim)) {
            for (fk, c) in f.iter_mut().zip(ca) {
                *fk += ka * c;
            }
        }
        f
    }

    /// f(x) and its Jacobian J (row-major d × d, `J[k][l] = ∂f_k/∂x_l`):
    /// `J_kl = −2β Σ_a C_ak k_a(x) (x_l − c_al)`.
    ///
    /// # Panics
    /// If `x` does not have d coordinates.
    pub fn eval_with_jacobian(&self, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let d = self.dim;
        assert_eq!(
            x.len(),
            d,
            "VectorField::jacobian: x has the wrong dimension"
        );
        let mut k = Vec::with_capacity(self.n_ctrl());
        self.kernel_row(x, &mut k);
        let mut f = vec![0.0; d];
        let mut j = vec![0.0; d * d];
        let mut diff = vec![0.0; d];
        for ((ka, ca), c) in k
            .iter()
            .zip(self.coef.chunks_exact(d))
            .zip(self.ctrl.chunks_exact(d))
        {
            if *ka == 0.0 {
                continue;
            }
            for l in 0..d {
                diff[l] = x[l] - c[l];
            }
            for kk in 0..d {
                let w = ka * ca[kk];
                f[kk] += w;
                let row = &mut j[kk * d..(kk + 1) * d];
                for (jl, dl) in row.iter_mut().zip(&diff) {
                    *jl += -2.0 * self.beta * w * dl;
                }
            }
        }
        (f, j)
    }

    /// The Jacobian at `x` (row-major d × d).
    pub fn jacobian(&self, x: &[f64]) -> Vec<f64> {
        self.eval_with_jacobian(x).1
    }

    /// f at each row of `x` (row-major n × d), in parallel; the same values at any thread
    /// count (each row alone).
    ///
    /// # Panics
    /// If `x.len()` is not a multiple of d.
    pub fn eval_rows(&self, x: &[f64]) -> Vec<f64> {
        use rayon::prelude::*;
        assert_eq!(x.len() % self.dim, 0, "eval_rows: x is not n × d");
        x.par_chunks(self.dim)
            .flat_map_iter(|r| self.eval(r))
            .collect()
    }
}
