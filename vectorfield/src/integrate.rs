//! Fate prediction by integrating the field (dynamo's `pd.fate`): from each start, the path
//! x' = f(x) (or x' = −f(x) backward) by an adaptive Dormand–Prince 5(4) Runge–Kutta with
//! error control, sampled at equally spaced times; a path stops at the end time, when it
//! settles (its speed falls below a fraction of the cells' median speed: a fixed point), or
//! when it leaves the data (reported, not extrapolated): farther than `support` kernel
//! bandwidths (1/√β) from every control point, where a kernel expansion fades to zero and
//! means nothing. A bounding box would stop paths at once in the minor dimensions of a PCA,
//! whose range is small and whose fitted field is mostly noise.

use serde::{Deserialize, Serialize};

use crate::{VectorField, VectorFieldError};

/// Options of [`integrate`] and [`predict_fates`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntegrateOptions {
    /// End time; `None`: 10 × the diameter of the cells' bounding box / their median speed.
    pub t_end: Option<f64>,
    /// Integrate −f (where the cells came from).
    pub backward: bool,
    /// Points sampled along each path (dynamo's `interpolation_num`: 250).
    pub n_points: usize,
    /// Relative tolerance of a step.
    pub rtol: f64,
    /// Absolute tolerance, relative to the box diameter.
    pub atol: f64,
    /// Stop when the speed falls below this fraction of the cells' median speed.
    pub settle: f64,
    /// A path leaves the data farther than this many kernel bandwidths from every control
    /// point.
    pub support: f64,
}

impl Default for IntegrateOptions {
    fn default() -> Self {
        Self {
            t_end: None,
            backward: false,
            n_points: 250,
            rtol: 1e-6,
            atol: 1e-9,
            settle: 1e-3,
            support: 2.0,
        }
    }
}

/// How a path ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathEnd {
    /// The end time was reached.
    Time,
    /// The speed fell below the settling threshold (a fixed point).
    Settled,
    /// The path left the data (see [`IntegrateOptions::support`]).
    LeftDomain,
    /// The step size underflowed (a stiff or singular field).
    StepUnderflow,
}

/// One integrated path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FatePath {
    /// Sample times (from 0; fewer than `n_points` when the path stopped early).
    pub t: Vec<f64>,
    /// Positions at those times, row-major (|t| × d).
    pub x: Vec<f64>,
    /// How it ended.
    pub end: PathEnd,
    /// The nearest cell to the last position.
    pub end_cell: usize,
}

/// The box, diameter and median speed the defaults are taken from.
#[derive(Clone, Debug)]
struct Domain {
    diameter: f64,
    median_speed: f64,
    /// Squared distance beyond which a point is outside the data.
    reach2: f64,
}

fn domain(field: &VectorField, cells: &[f64], support: f64) -> Result<Domain, VectorFieldError> {
    let d = field.dim();
    if cells.is_empty() || cells.len() % d != 0 {
        return Err(VectorFieldError::Invalid(format!(
            "integration: the cells' positions ({} values) must be n × {d} with n ≥ 1",
            cells.len()
        )));
    }
    let mut lo = vec![f64::INFINITY; d];
    let mut hi = vec![f64::NEG_INFINITY; d];
    for r in cells.chunks_exact(d) {
        for k in 0..d {
            lo[k] = lo[k].min(r[k]);
            hi[k] = hi[k].max(r[k]);
        }
    }
    let diameter = lo
        .iter()
        .zip(&hi)
        .map(|(a, b)| (b - a) * (b - a))
        .sum::<f64>()
        .sqrt();
    if !(support.is_finite() && support > 0.0) {
        return Err(VectorFieldError::Invalid(format!(
            "integration: support = {support}: expected a positive number of bandwidths"
        )));
    }
    let mut speeds: Vec<f64> = field
        .eval_rows(cells)
        .chunks_exact(d)
        .map(|v| v.iter().map(|a| a * a).sum::<f64>().sqrt())
        .collect();
    speeds.sort_by(f64::total_cmp);
    Ok(Domain {
        diameter,
        median_speed: speeds[speeds.len() / 2],
        reach2: support * support / field.beta(),
    })
}

// Dormand–Prince 5(4) coefficients (the field is autonomous: the stages' time nodes are not
// needed).
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// 5th-order weights (= the last row of A: first same as last).
const B5: [f64; 7] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
    0.0,
];
/// 4th-order weights.
const B4: [f64; 7] = [
    5179.0 / 57600.0,
    0.0,
    7571.0 / 16695.0,
    393.0 / 640.0,
    -92097.0 / 339200.0,
    187.0 / 2100.0,
    1.0 / 40.0,
];

/// One adaptive path from `x0` (see the module docs).
fn path(
    field: &VectorField,
    x0: &[f64],
    dom: &Domain,
    t_end: f64,
    o: &IntegrateOptions,
) -> (Vec<f64>, Vec<f64>, PathEnd) {
    let d = field.dim();
    let sign = if o.backward { -1.0 } else { 1.0 };
    let rhs = |x: &[f64]| -> Vec<f64> { field.eval(x).into_iter().map(|v| sign * v).collect() };
    let n_points = o.n_points.max(2);
    let dt_out = t_end / (n_points - 1) as f64;
    let atol = o.atol * dom.diameter.max(f64::MIN_POSITIVE);
    let settle = o.settle * dom.median_speed;
    let mut ts = vec![0.0];
    let mut xs = x0.to_vec();
    let mut x = x0.to_vec();
    let mut t = 0.0;
    let mut k1 = rhs(&x);
    let speed = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let mut h = if speed(&k1) > 0.0 {
        (0.01 * dom.diameter / speed(&k1)).min(dt_out)
    } else {
        dt_out
    };
    let mut next_out = 1usize;
    let inside = |x: &[f64]| {
        field
            .ctrl()
            .chunks_exact(d)
            .any(|c| c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() <= dom.reach2)
    };
    loop {
        if speed(&k1) <= settle {
            return (ts, xs, PathEnd::Settled);
        }
        if t >= t_end {
            return (ts, xs, PathEnd::Time);
        }
        h = h.min(t_end - t);
        if h <= 1e-12 * t_end.max(1.0) {
            return (ts, xs, PathEnd::StepUnderflow);
        }
        // Stages.
        let mut k: Vec<Vec<f64>> = Vec::with_capacity(7);
        k.push(k1.clone());
        for a in A.iter().skip(1) {
            let s = k.len();
            let xi: Vec<f64> = (0..d)
                .map(|c| x[c] + h * (0..s).map(|j| a[j] * k[j][c]).sum::<f64>())
                .collect();
            k.push(rhs(&xi));
        }
        let x5: Vec<f64> = (0..d)
            .map(|c| x[c] + h * (0..7).map(|j| B5[j] * k[j][c]).sum::<f64>())
            .collect();
        let err = (0..d)
            .map(|c| {
                let e = h * (0..7).map(|j| (B5[j] - B4[j]) * k[j][c]).sum::<f64>();
                let sc = atol + o.rtol * x[c].abs().max(x5[c].abs());
                (e / sc).powi(2)
            })
            .sum::<f64>()
            / d as f64;
        let err = err.sqrt();
        if err <= 1.0 {
            // Accepted: record the output times inside the step by cubic Hermite
            // interpolation between (x, k1) and (x5, k7).
            let t_new = t + h;
            while next_out < n_points && (next_out as f64) * dt_out <= t_new + 1e-12 * t_end {
                let to = next_out as f64 * dt_out;
                let s = ((to - t) / h).clamp(0.0, 1.0);
                let (h00, h10, h01, h11) = (
                    2.0 * s.powi(3) - 3.0 * s * s + 1.0,
                    s.powi(3) - 2.0 * s * s + s,
                    -2.0 * s.powi(3) + 3.0 * s * s,
                    s.powi(3) - s * s,
                );
                for c in 0..d {
                    xs.push(h00 * x[c] + h10 * h * k[0][c] + h01 * x5[c] + h11 * h * k[6][c]);
                }
                ts.push(to);
                next_out += 1;
            }
            t = t_new;
            x = x5;
            k1 = k.swap_remove(6);
            if !inside(&x) {
                return (ts, xs, PathEnd::LeftDomain);
            }
        }
        let factor = if err > 0.0 {
            (0.9 * err.powf(-0.2)).clamp(0.2, 5.0)
        } else {
            5.0
        };
        h *= factor;
    }
}

/// The nearest row of `cells` (n × d) to `x` (ties: the lower index).
pub fn nearest_cell(cells: &[f64], d: usize, x: &[f64]) -> usize {
    let mut best = (f64::INFINITY, 0);
    for (i, c) in cells.chunks_exact(d).enumerate() {
        let dist: f64 = c.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum();
        if dist < best.0 {
            best = (dist, i);
        }
    }
    best.1
}

/// Integrates the field from `x0` over the cells' domain (`cells`, row-major n × d).
pub fn integrate(
    field: &VectorField,
    cells: &[f64],
    x0: &[f64],
    opts: &IntegrateOptions,
) -> Result<FatePath, VectorFieldError> {
    let d = field.dim();
    let dom = domain(field, cells, opts.support)?;
    if x0.len() != d || x0.iter().any(|v| !v.is_finite()) {
        return Err(VectorFieldError::Invalid(format!(
            "integration: the start must be {d} finite coordinates"
        )));
    }
    let t_end = default_t_end(&dom, opts)?;
    let (t, x, end) = path(field, x0, &dom, t_end, opts);
    let last = &x[x.len() - d..];
    Ok(FatePath {
        end_cell: nearest_cell(cells, d, last),
        t,
        x,
        end,
    })
}

fn default_t_end(dom: &Domain, opts: &IntegrateOptions) -> Result<f64, VectorFieldError> {
    let t_end = match opts.t_end {
        Some(t) => t,
        None if dom.median_speed > 0.0 => 10.0 * dom.diameter / dom.median_speed,
        None => 1.0,
    };
    if !(t_end.is_finite() && t_end > 0.0) {
        return Err(VectorFieldError::Invalid(format!(
            "integration: t_end = {t_end}: expected a positive time"
        )));
    }
    Ok(t_end)
}

/// Paths from the cells `starts` (rows of `cells`), in parallel (each alone: the same results
/// at any thread count), and the end time used.
pub fn predict_fates(
    field: &VectorField,
    cells: &[f64],
    starts: &[usize],
    opts: &IntegrateOptions,
) -> Result<(Vec<FatePath>, f64), VectorFieldError> {
    use rayon::prelude::*;
    let d = field.dim();
    let dom = domain(field, cells, opts.support)?;
    let n = cells.len() / d;
    if let Some(&bad) = starts.iter().find(|&&i| i >= n) {
        return Err(VectorFieldError::Invalid(format!(
            "integration: start cell {bad} is not a cell (of {n})"
        )));
    }
    let t_end = default_t_end(&dom, opts)?;
    let paths = starts
        .par_iter()
        .map(|&i| {
            let (t, x, end) = path(field, &cells[i * d..(i + 1) * d], &dom, t_end, opts);
            let last = &x[x.len() - d..];
            FatePath {
                end_cell: nearest_cell(cells, d, last),
                t,
                x,
                end,
            }
        })
        .collect();
    Ok((paths, t_end))
}

/// Paths integrated through a field from chosen cells ([`predict_fates`]): each path's times,
/// points and end, and the end time used (dynamo's `pd.fate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FatePaths {
    /// One path per start cell, in the order of the starts.
    pub paths: Vec<FatePath>,
    /// The end time of the integration (given, or 10 × the cells' diameter over their median
    /// speed).
    pub t_end: f64,
}

impl FatePaths {
    /// Integrates `field` from the cells `starts` (rows of `cells`, row-major n × d).
    pub fn predict(
        field: &VectorField,
        cells: &[f64],
        starts: &[usize],
        opts: &IntegrateOptions,
    ) -> Result<Self, VectorFieldError> {
        let (paths, t_end) = predict_fates(field, cells, starts, opts)?;
        Ok(Self { paths, t_end })
    }

    /// The nearest cell at each path's end.
    pub fn end_cells(&self) -> Vec<usize> {
        self.paths.iter().map(|p| p.end_cell).collect()
    }
}
