//! The Jacobian route of in-silico perturbation (dynamo's `pd.perturbation` with
//! `pertubation_method="j_delta_x"`): a change of expression Δx in gene space, mapped into the
//! vector field's basis (Δz = Δx · W with W the genes' loadings on the basis), gives the
//! change of velocity Δv = J(z) · Δz, with J the field's analytic Jacobian at the cell.
//!
//! Deviation from dynamo: dynamo reads the loadings from `uns["PCs"]` and can only perturb
//! genes used for the PCA; here the loadings are the least-squares coefficients of the
//! basis scores on the gene ([`loadings`]), which equal the PCA loadings for a gene of the
//! PCA (the scores are Xc·W with orthonormal W) and give the best linear map into the basis
//! for any other gene. And dynamo sets the gene to 10 by default; here the level is the
//! caller's (0, a knockout, by default).

use rayon::prelude::*;

use crate::VectorField;

/// Loadings of one gene on a basis: `w_k = Σ_i (x_i − x̄) z_ik / Σ_i (z_ik − z̄_k)²`, the
/// regression coefficient of score `k` on the gene (`z` row-major n × d). A PCA's own
/// loadings for genes of the PCA (whose scores are centred and orthogonal).
pub fn loadings(x: &[f64], z: &[f64], d: usize) -> Vec<f64> {
    let n = x.len();
    if n == 0 || d == 0 {
        return vec![0.0; d];
    }
    let xbar = x.iter().sum::<f64>() / n as f64;
    let mut zbar = vec![0.0; d];
    for row in z.chunks_exact(d) {
        for (m, v) in zbar.iter_mut().zip(row) {
            *m += v;
        }
    }
    zbar.iter_mut().for_each(|m| *m /= n as f64);
    let mut num = vec![0.0; d];
    let mut den = vec![0.0; d];
    for (xi, row) in x.iter().zip(z.chunks_exact(d)) {
        for k in 0..d {
            let zc = row[k] - zbar[k];
            num[k] += (xi - xbar) * zc;
            den[k] += zc * zc;
        }
    }
    num.iter()
        .zip(&den)
        .map(|(a, b)| if *b > 0.0 { a / b } else { 0.0 })
        .collect()
}

/// Δv_i = J(z_i) · Δz_i for every cell (row-major n × d in and out; rows of `dz` that are
/// zero give zero without evaluating J). Each row alone: the same values at any thread count.
///
/// # Panics
/// If `z` and `dz` are not both n × d for the field's d.
pub fn jacobian_response(field: &VectorField, z: &[f64], dz: &[f64]) -> Vec<f64> {
    let d = field.dim();
    assert!(
        z.len() % d == 0 && z.len() == dz.len(),
        "jacobian_response: z and dz must both be n × d"
    );
    z.par_chunks_exact(d)
        .zip(dz.par_chunks_exact(d))
        .flat_map_iter(|(zi, dzi)| {
            if dzi.iter().all(|&v| v == 0.0) {
                return vec![0.0; d];
            }
            let j = field.jacobian(zi);
            (0..d)
                .map(|k| (0..d).map(|l| j[k * d + l] * dzi[l]).sum())
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadings_recover_an_exact_linear_map() {
        // z = x · (2, −1) + noise-free offsets on 5 cells: the coefficients are exact.
        let x = [0.0, 1.0, 2.0, 3.0, 5.0];
        let z: Vec<f64> = x.iter().flat_map(|&v| [2.0 * v + 1.0, -v]).collect();
        // w_k = cov(x, z_k) / var(z_k): z_0 = 2x → 1/2, z_1 = −x → −1.
        let w = loadings(&x, &z, 2);
        assert!(
            (w[0] - 0.5).abs() < 1e-12 && (w[1] + 1.0).abs() < 1e-12,
            "{w:?}"
        );
    }

    #[test]
    fn the_response_is_the_jacobian_times_the_change() {
        // One control point at the origin, coefficients C = (1, 2): f(x) = C e^{−β|x|²}.
        let f = VectorField::new(2, vec![0.0, 0.0], vec![1.0, 2.0], 0.5).unwrap();
        let z = [0.3, -0.2, 1.0, 1.0];
        let dz = [1e-3, 0.0, 0.0, 0.0];
        let r = jacobian_response(&f, &z, &dz);
        // Finite difference of f along dz at the first cell.
        let (a, b) = (f.eval(&[0.3 + 1e-3, -0.2]), f.eval(&[0.3, -0.2]));
        for k in 0..2 {
            assert!((r[k] - (a[k] - b[k])).abs() < 1e-6, "{r:?}");
        }
        assert_eq!(&r[2..], &[0.0, 0.0]);
    }
}
