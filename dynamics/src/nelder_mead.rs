//! The Nelder–Mead simplex as SciPy's `minimize(method="Nelder-Mead")` runs it (no bounds,
//! not adaptive): the same initial simplex (+5 % per coordinate, 0.00025 for a zero), the same
//! coefficients (ρ = 1, χ = 2, ψ = σ = ½), the same order of evaluations and the same
//! iteration count (SciPy starts counting at 1, so `maxiter = 2` is one reflection step).
//! scVelo's dynamical model calls it with `maxiter = 2` and relies on that exact sequence.

/// Options: the iteration limit and the absolute tolerances on the simplex and on the values
/// (SciPy's `xatol`/`fatol`; `tol` sets both).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NelderMead {
    /// SciPy's `maxiter`.
    pub max_iter: usize,
    /// SciPy's `xatol`.
    pub xatol: f64,
    /// SciPy's `fatol`.
    pub fatol: f64,
}

impl NelderMead {
    /// `maxiter` with SciPy's default tolerances (1e-4).
    pub fn new(max_iter: usize) -> Self {
        Self {
            max_iter,
            xatol: 1e-4,
            fatol: 1e-4,
        }
    }

    /// The same with `tol` for both tolerances.
    pub fn with_tol(mut self, tol: f64) -> Self {
        self.xatol = tol;
        self.fatol = tol;
        self
    }

    /// Minimises `f` from `x0`; returns the best vertex (SciPy's `res.x`).
    pub fn minimize(&self, x0: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
        const RHO: f64 = 1.0;
        const CHI: f64 = 2.0;
        const PSI: f64 = 0.5;
        const SIGMA: f64 = 0.5;
        let n = x0.len();
        let mut sim: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        sim.push(x0.to_vec());
        for k in 0..n {
            let mut y = x0.to_vec();
            y[k] = if y[k] != 0.0 { 1.05 * y[k] } else { 0.00025 };
            sim.push(y);
        }
        let mut fsim: Vec<f64> = sim.iter().map(|x| f(x)).collect();
        sort_simplex(&mut sim, &mut fsim);
        let mut iterations = 1;
        while iterations < self.max_iter {
            let xspread = sim[1..]
                .iter()
                .flat_map(|v| v.iter().zip(&sim[0]).map(|(a, b)| (a - b).abs()))
                .fold(f64::NEG_INFINITY, nan_max);
            let fspread = fsim[1..]
                .iter()
                .map(|v| (fsim[0] - v).abs())
                .fold(f64::NEG_INFINITY, nan_max);
            if xspread <= self.xatol && fspread <= self.fatol {
                break;
            }
            let mut xbar = vec![0.0; n];
            for v in &sim[..n] {
                for (b, x) in xbar.iter_mut().zip(v) {
                    *b += x;
                }
            }
            for b in &mut xbar {
                *b /= n as f64;
            }
            let worst = sim[n].clone();
            let along = |c1: f64, c2: f64| -> Vec<f64> {
                xbar.iter()
                    .zip(&worst)
                    .map(|(b, w)| c1 * b - c2 * w)
                    .collect()
            };
            let xr = along(1.0 + RHO, RHO);
            let fxr = f(&xr);
            let mut shrink = false;
            if fxr < fsim[0] {
                let xe = along(1.0 + RHO * CHI, RHO * CHI);
                let fxe = f(&xe);
                if fxe < fxr {
                    sim[n] = xe;
                    fsim[n] = fxe;
                } else {
                    sim[n] = xr;
                    fsim[n] = fxr;
                }
            } else if fxr < fsim[n - 1] {
                sim[n] = xr;
                fsim[n] = fxr;
            } else if fxr < fsim[n] {
                let xc = along(1.0 + PSI * RHO, PSI * RHO);
                let fxc = f(&xc);
                if fxc <= fxr {
                    sim[n] = xc;
                    fsim[n] = fxc;
                } else {
                    shrink = true;
                }
            } else {
                let xcc: Vec<f64> = xbar
                    .iter()
                    .zip(&worst)
                    .map(|(b, w)| (1.0 - PSI) * b + PSI * w)
                    .collect();
                let fxcc = f(&xcc);
                if fxcc < fsim[n] {
                    sim[n] = xcc;
                    fsim[n] = fxcc;
                } else {
                    shrink = true;
                }
            }
            if shrink {
                for j in 1..=n {
                    let s: Vec<f64> = sim[0]
                        .iter()
                        .zip(&sim[j])
                        .map(|(a, b)| a + SIGMA * (b - a))
                        .collect();
                    fsim[j] = f(&s);
                    sim[j] = s;
                }
            }
            iterations += 1;
            sort_simplex(&mut sim, &mut fsim);
        }
        sim.swap_remove(0)
    }
}

/// NumPy's `max` propagates NaN.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Stable sort by value with NaN last (NumPy's `argsort` on a handful of values).
fn sort_simplex(sim: &mut Vec<Vec<f64>>, fsim: &mut Vec<f64>) {
    let mut idx: Vec<usize> = (0..fsim.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (fsim[a], fsim[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        }
    });
    *sim = idx.iter().map(|&i| sim[i].clone()).collect();
    *fsim = idx.iter().map(|&i| fsim[i]).collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-traced SciPy run: f(x, y) = (x − 1)² + 10 (y − 2)² from (0, 0) with maxiter = 2:
    /// simplex (0, 0) → 41, (0.00025, 0) → 40.9995..., (0, 0.00025) → 40.99000..., sorted; one
    /// reflection of the worst vertex through the centroid of the other two.
    #[test]
    fn one_iteration_matches_a_hand_traced_scipy_step() {
        let f = |x: &[f64]| (x[0] - 1.0).powi(2) + 10.0 * (x[1] - 2.0).powi(2);
        let mut calls = 0;
        let x = NelderMead::new(2).minimize(&[0.0, 0.0], |x| {
            calls += 1;
            f(x)
        });
        // Sorted simplex: (0, 0.00025), (0.00025, 0), (0, 0). Reflection: (0.00025, 0.00025)
        // → better than the best, so the expansion 3·x̄ − 2·worst = (0.000375, 0.000375) is
        // tried and kept.
        assert_eq!(calls, 5);
        assert!(
            (x[0] - 0.000375).abs() < 1e-15 && (x[1] - 0.000375).abs() < 1e-15,
            "{x:?}"
        );
    }

    #[test]
    fn converges_on_a_quadratic_with_many_iterations() {
        let x = NelderMead::new(400)
            .with_tol(1e-10)
            .minimize(&[3.0, -1.0], |x| {
                (x[0] - 1.0).powi(2) + (x[1] + 2.0).powi(2)
            });
        assert!(
            (x[0] - 1.0).abs() < 1e-5 && (x[1] + 2.0).abs() < 1e-5,
            "{x:?}"
        );
    }

    #[test]
    fn nan_values_sort_last_and_never_win() {
        let x = NelderMead::new(50).minimize(&[1.0], |x| {
            if x[0] > 1.02 {
                f64::NAN
            } else {
                (x[0] - 0.5).powi(2)
            }
        });
        assert!(x[0].is_finite() && x[0] < 1.0, "{x:?}");
    }
}
