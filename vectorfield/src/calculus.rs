//! Vector calculus per cell from the field's analytic Jacobian (dynamo's `vf.speed`,
//! `vf.divergence`, `vf.curl`, `vf.acceleration`, `vf.curvature`).
//!
//! Where this deviates from dynamo: the curl in more than two dimensions is the norm of the
//! rotation, ‖J − Jᵀ‖_F / √2 (in 3-D the length of the curl vector; dynamo stores √3 times
//! it and fails on more than 3 dimensions).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::VectorField;

/// Per-cell quantities of a field at the cells' positions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellCalculus {
    /// ‖f(x)‖: `obs["speed_<basis>"]`.
    pub speed: Vec<f64>,
    /// tr J: `obs["divergence_<basis>"]`.
    pub divergence: Vec<f64>,
    /// 2-D: J₂₁ − J₁₂ (signed, counter-clockwise positive); more dimensions: ‖J − Jᵀ‖_F/√2:
    /// `obs["curl_<basis>"]`. 1-D: 0.
    pub curl: Vec<f64>,
    /// a = J f, row-major n × d: `obsm["acceleration_<basis>"]`.
    pub acceleration: Vec<f64>,
    /// ‖a‖: `obs["acceleration_<basis>"]`.
    pub acceleration_norm: Vec<f64>,
    /// κ = (a (f·f) − f (f·a)) / ‖f‖⁴, row-major n × d: `obsm["curvature_<basis>"]`.
    pub curvature: Vec<f64>,
    /// ‖κ‖: `obs["curvature_<basis>"]`.
    pub curvature_norm: Vec<f64>,
    /// det J: `obs["jacobian_det_<basis>"]`.
    pub jacobian_det: Vec<f64>,
}

/// One point's quantities.
struct Point {
    speed: f64,
    div: f64,
    curl: f64,
    acc: Vec<f64>,
    curv: Vec<f64>,
    det: f64,
}

fn at(field: &VectorField, x: &[f64]) -> Point {
    let d = field.dim();
    let (f, j) = field.eval_with_jacobian(x);
    let speed = f.iter().map(|v| v * v).sum::<f64>().sqrt();
    let div = (0..d).map(|k| j[k * d + k]).sum();
    let curl = match d {
        1 => 0.0,
        2 => j[2] - j[1],
        _ => {
            let mut s = 0.0;
            for k in 0..d {
                for l in 0..d {
                    let a = j[k * d + l] - j[l * d + k];
                    s += a * a;
                }
            }
            (s / 2.0).sqrt()
        }
    };
    let acc: Vec<f64> = (0..d)
        .map(|k| (0..d).map(|l| j[k * d + l] * f[l]).sum())
        .collect();
    let vv: f64 = f.iter().map(|v| v * v).sum();
    let va: f64 = f.iter().zip(&acc).map(|(a, b)| a * b).sum();
    let curv: Vec<f64> = if vv > 0.0 {
        (0..d)
            .map(|k| (acc[k] * vv - f[k] * va) / (vv * vv))
            .collect()
    } else {
        vec![f64::NAN; d]
    };
    let det = nalgebra::DMatrix::from_row_slice(d, d, &j).determinant();
    Point {
        speed,
        div,
        curl,
        acc,
        curv,
        det,
    }
}

/// The quantities at each row of `x` (row-major n × d), in parallel (each row alone).
///
/// # Panics
/// If `x.len()` is not a multiple of the field's dimension.
pub fn cell_calculus(field: &VectorField, x: &[f64]) -> CellCalculus {
    let d = field.dim();
    assert_eq!(x.len() % d, 0, "cell_calculus: x is not n × d");
    let pts: Vec<Point> = x.par_chunks(d).map(|r| at(field, r)).collect();
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    CellCalculus {
        speed: pts.iter().map(|p| p.speed).collect(),
        divergence: pts.iter().map(|p| p.div).collect(),
        curl: pts.iter().map(|p| p.curl).collect(),
        acceleration_norm: pts.iter().map(|p| norm(&p.acc)).collect(),
        curvature_norm: pts.iter().map(|p| norm(&p.curv)).collect(),
        jacobian_det: pts.iter().map(|p| p.det).collect(),
        acceleration: pts.iter().flat_map(|p| p.acc.iter().copied()).collect(),
        curvature: pts.iter().flat_map(|p| p.curv.iter().copied()).collect(),
    }
}
