//! Fixed points of a field (dynamo's `vf.topography`): roots of f by damped Newton
//! (Levenberg–Marquardt) on the analytic Jacobian from many starts, each **checked for
//! convergence** (‖f‖ below a tolerance relative to the cells' speeds) and kept only where the
//! data support the field (within one kernel bandwidth of a cell: far from every control point
//! a Gaussian expansion fades to zero, which is not a fixed point of the dynamics); duplicates
//! merged; each classified by the eigenvalues of the analytic Jacobian (dynamo uses the
//! solver's finite-difference approximation and never checks convergence).
//!
//! Starts: a seeded Latin hypercube over the cells' bounding box padded by 10 % (up to three
//! dimensions, as dynamo) and seeded cells (in any dimension).

use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{VectorField, VectorFieldError};

/// Options of [`fixed_points`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopographyOptions {
    /// Latin-hypercube starts in the padded box (dynamo's `n`, 25; up to 3 dimensions).
    pub n_starts: usize,
    /// Starts at cells drawn at random.
    pub n_cell_starts: usize,
    /// Seed of the starts.
    pub seed: u64,
    /// Padding of the box, relative to the data's range on each side (dynamo: 0.1).
    pub pad: f64,
    /// Newton iterations per start.
    pub max_iter: usize,
    /// Converged when ‖f(x)‖ ≤ `tol` × the median speed of the cells.
    pub tol: f64,
}

impl Default for TopographyOptions {
    fn default() -> Self {
        Self {
            n_starts: 25,
            n_cell_starts: 25,
            seed: 0,
            pad: 0.1,
            max_iter: 200,
            tol: 1e-8,
        }
    }
}

/// dynamo's `ftype`: −1 stable, 0 saddle, 1 unstable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixedPointKind {
    /// Every eigenvalue has a negative real part (an attractor).
    Stable,
    /// Some negative, some non-negative real parts.
    Saddle,
    /// No eigenvalue has a negative real part (a source).
    Unstable,
}

impl FixedPointKind {
    /// dynamo's code.
    pub fn ftype(self) -> i64 {
        match self {
            Self::Stable => -1,
            Self::Saddle => 0,
            Self::Unstable => 1,
        }
    }
}

/// One fixed point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Position (`Xss` row).
    pub x: Vec<f64>,
    /// Type from the eigenvalues.
    pub kind: FixedPointKind,
    /// Eigenvalues of the Jacobian (real, imaginary).
    pub eigenvalues: Vec<(f64, f64)>,
    /// The analytic Jacobian there (row-major d × d).
    pub jacobian: Vec<f64>,
    /// ‖f(x)‖ at the root.
    pub residual: f64,
    /// The nearest cell and its distance.
    pub nearest_cell: usize,
    /// Distance to the nearest cell.
    pub distance: f64,
    /// dynamo's confidence: a Gaussian of the mean distance to the nearest min(50, n − 1)
    /// cells (σ = 0.1 × the mean range), divided by the largest over the roots.
    pub confidence: f64,
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Levenberg–Marquardt from `x0`; `Some(root)` when ‖f‖ ≤ `ftol` within the box.
fn solve(
    field: &VectorField,
    x0: &[f64],
    lo: &[f64],
    hi: &[f64],
    ftol: f64,
    max_iter: usize,
) -> Option<Vec<f64>> {
    let d = field.dim();
    let mut x = x0.to_vec();
    let (mut f, mut j) = field.eval_with_jacobian(&x);
    let mut cost = norm(&f);
    let mut mu = 1e-3;
    for _ in 0..max_iter {
        if cost <= ftol {
            break;
        }
        let jm = DMatrix::from_row_slice(d, d, &j);
        let fv = nalgebra::DVector::from_column_slice(&f);
        let jt = jm.transpose();
        let jtj = &jt * &jm;
        let g = &jt * &fv;
        let scale = (0..d)
            .map(|k| jtj[(k, k)])
            .fold(0.0f64, f64::max)
            .max(1e-300);
        let mut accepted = false;
        for _ in 0..30 {
            let mut a = jtj.clone();
            for k in 0..d {
                a[(k, k)] += mu * scale;
            }
            let Some(step) = a.lu().solve(&(-&g)) else {
                mu *= 10.0;
                continue;
            };
            let xn: Vec<f64> = x.iter().zip(step.iter()).map(|(a, b)| a + b).collect();
            let (fn_, jn) = field.eval_with_jacobian(&xn);
            let cn = norm(&fn_);
            if cn < cost {
                x = xn;
                f = fn_;
                j = jn;
                cost = cn;
                mu = (mu / 3.0).max(1e-12);
                accepted = true;
                break;
            }
            mu *= 4.0;
        }
        if !accepted {
            break;
        }
        if x.iter()
            .zip(lo.iter().zip(hi))
            .any(|(v, (l, h))| v < l || v > h)
        {
            return None;
        }
    }
    let inside = x
        .iter()
        .zip(lo.iter().zip(hi))
        .all(|(v, (l, h))| v >= l && v <= h);
    (cost <= ftol && inside).then_some(x)
}

/// The type of a fixed point from its Jacobian's eigenvalues.
fn classify(j: &[f64], d: usize) -> (FixedPointKind, Vec<(f64, f64)>) {
    let ev = DMatrix::from_row_slice(d, d, j).complex_eigenvalues();
    let ev: Vec<(f64, f64)> = ev.iter().map(|c| (c.re, c.im)).collect();
    let neg = ev.iter().filter(|e| e.0 < 0.0).count();
    let kind = if neg == d {
        FixedPointKind::Stable
    } else if neg == 0 {
        FixedPointKind::Unstable
    } else {
        FixedPointKind::Saddle
    };
    (kind, ev)
}

/// Fixed points of `field` among cells at positions `x` (row-major n × d, the box and the
/// starts come from them), sorted by position.
pub fn fixed_points(
    field: &VectorField,
    x: &[f64],
    opts: &TopographyOptions,
) -> Result<Vec<FixedPoint>, VectorFieldError> {
    let d = field.dim();
    if x.is_empty() || x.len() % d != 0 {
        return Err(VectorFieldError::Invalid(format!(
            "fixed points: the cells' positions ({} values) must be n × {d} with n ≥ 1",
            x.len()
        )));
    }
    let n = x.len() / d;
    if opts.n_cell_starts == 0 && (opts.n_starts == 0 || d > 3) {
        return Err(VectorFieldError::Invalid(
            "fixed points: no start (n_starts counts only up to 3 dimensions; set n_cell_starts)"
                .into(),
        ));
    }
    let mut lo = vec![f64::INFINITY; d];
    let mut hi = vec![f64::NEG_INFINITY; d];
    for r in x.chunks_exact(d) {
        for k in 0..d {
            lo[k] = lo[k].min(r[k]);
            hi[k] = hi[k].max(r[k]);
        }
    }
    let range: Vec<f64> = (0..d).map(|k| hi[k] - lo[k]).collect();
    let (blo, bhi): (Vec<f64>, Vec<f64>) = (0..d)
        .map(|k| (lo[k] - opts.pad * range[k], hi[k] + opts.pad * range[k]))
        .unzip();
    let mut speeds: Vec<f64> = field.eval_rows(x).chunks_exact(d).map(norm).collect();
    speeds.sort_by(f64::total_cmp);
    let median = speeds[speeds.len() / 2];
    let ftol = opts.tol * if median > 0.0 { median } else { 1.0 };
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut starts: Vec<Vec<f64>> = Vec::new();
    if d <= 3 && opts.n_starts > 0 {
        let m = opts.n_starts;
        let perms: Vec<Vec<usize>> = (0..d)
            .map(|_| {
                let mut p: Vec<usize> = (0..m).collect();
                p.shuffle(&mut rng);
                p
            })
            .collect();
        for s in 0..m {
            let point: Vec<f64> = perms
                .iter()
                .enumerate()
                .map(|(k, perm)| {
                    let u: f64 = rng.random();
                    let t = (perm[s] as f64 + u) / m as f64;
                    blo[k] + t * (bhi[k] - blo[k])
                })
                .collect();
            starts.push(point);
        }
    }
    let mut cells: Vec<usize> = (0..n).collect();
    cells.shuffle(&mut rng);
    for &i in cells.iter().take(opts.n_cell_starts) {
        starts.push(x[i * d..(i + 1) * d].to_vec());
    }
    let roots: Vec<Vec<f64>> = starts
        .par_iter()
        .filter_map(|s| solve(field, s, &blo, &bhi, ftol, opts.max_iter))
        .collect();
    // Supported by the data: within one kernel bandwidth of a cell.
    let h = 1.0 / field.beta().sqrt();
    let diag = norm(&range);
    let tol_same = (1e-4 * diag).max(1e-12);
    let mut kept: Vec<Vec<f64>> = Vec::new();
    for r in roots {
        if !kept.iter().any(|k| norm(&sub(k, &r)) <= tol_same) {
            kept.push(r);
        }
    }
    kept.sort_by(|a, b| {
        a.iter()
            .zip(b)
            .map(|(p, q)| p.total_cmp(q))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let sigma = 0.1 * range.iter().sum::<f64>() / d as f64;
    let k_near = 50.min(n.saturating_sub(1)).max(1);
    let mut out: Vec<FixedPoint> = kept
        .into_iter()
        .filter_map(|r| {
            let mut dist: Vec<(f64, usize)> = x
                .chunks_exact(d)
                .enumerate()
                .map(|(i, c)| (norm(&sub(c, &r)), i))
                .collect();
            dist.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let (distance, nearest_cell) = dist[0];
            if distance > h {
                return None;
            }
            let mean_near = dist.iter().take(k_near).map(|p| p.0).sum::<f64>() / k_near as f64;
            let (f, j) = field.eval_with_jacobian(&r);
            let (kind, eigenvalues) = classify(&j, d);
            Some(FixedPoint {
                residual: norm(&f),
                x: r,
                kind,
                eigenvalues,
                jacobian: j,
                nearest_cell,
                distance,
                confidence: if sigma > 0.0 {
                    (-(mean_near * mean_near) / (2.0 * sigma * sigma)).exp()
                } else {
                    1.0
                },
            })
        })
        .collect();
    let top = out.iter().map(|p| p.confidence).fold(0.0f64, f64::max);
    if top > 0.0 {
        out.iter_mut().for_each(|p| p.confidence /= top);
    }
    Ok(out)
}

fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(p, q)| p - q).collect()
}

/// A polyline in 2-D.
pub type Polyline = Vec<[f64; 2]>;

/// Nullclines of a 2-D field over the box `lo`..`hi` (dynamo's `NCx`, `NCy`: the curves where
/// f_x = 0 and where f_y = 0): marching squares on a `grid` × `grid` lattice of field values,
/// zero crossings located by linear interpolation along the cell edges, segments chained into
/// polylines. dynamo traces them by pseudo-arclength continuation from the fixed points (so
/// it finds none without a fixed point, and only the branches through one); the lattice finds
/// every branch in the box, to the lattice's resolution.
///
/// # Panics
/// If the field is not 2-D (a caller's contract).
pub fn nullclines(
    field: &VectorField,
    lo: [f64; 2],
    hi: [f64; 2],
    grid: usize,
) -> (Vec<Polyline>, Vec<Polyline>) {
    assert_eq!(field.dim(), 2, "nullclines: the field must be 2-D");
    let g = grid.max(2);
    let at = |i: usize, k: usize| lo[k] + (hi[k] - lo[k]) * i as f64 / (g - 1) as f64;
    let points: Vec<f64> = (0..g)
        .flat_map(|j| (0..g).flat_map(move |i| [at(i, 0), at(j, 1)]))
        .collect();
    let f = field.eval_rows(&points);
    let one = |comp: usize| -> Vec<Polyline> {
        let val = |i: usize, j: usize| f[(j * g + i) * 2 + comp];
        let pt = |i: usize, j: usize| [at(i, 0), at(j, 1)];
        // The crossing on the edge between two lattice points, when the signs differ.
        let cross = |a: (usize, usize), b: (usize, usize)| -> Option<[f64; 2]> {
            let (va, vb) = (val(a.0, a.1), val(b.0, b.1));
            if (va > 0.0) == (vb > 0.0) || !va.is_finite() || !vb.is_finite() {
                return None;
            }
            let t = va / (va - vb);
            let (pa, pb) = (pt(a.0, a.1), pt(b.0, b.1));
            Some([pa[0] + t * (pb[0] - pa[0]), pa[1] + t * (pb[1] - pa[1])])
        };
        let mut segments: Vec<([f64; 2], [f64; 2])> = Vec::new();
        for j in 0..g - 1 {
            for i in 0..g - 1 {
                let edges = [
                    cross((i, j), (i + 1, j)),
                    cross((i + 1, j), (i + 1, j + 1)),
                    cross((i, j + 1), (i + 1, j + 1)),
                    cross((i, j), (i, j + 1)),
                ];
                let found: Vec<[f64; 2]> = edges.iter().flatten().copied().collect();
                match found.len() {
                    2 => segments.push((found[0], found[1])),
                    // A saddle cell: pair the crossings by the sign at the centre.
                    4 => {
                        let centre =
                            (val(i, j) + val(i + 1, j) + val(i, j + 1) + val(i + 1, j + 1)) / 4.0;
                        if (centre > 0.0) == (val(i, j) > 0.0) {
                            segments.push((found[0], found[1]));
                            segments.push((found[2], found[3]));
                        } else {
                            segments.push((found[0], found[3]));
                            segments.push((found[1], found[2]));
                        }
                    }
                    _ => {}
                }
            }
        }
        chain(segments)
    };
    (one(0), one(1))
}

/// Joins segments that share end points (to rounding) into polylines.
fn chain(segments: Vec<([f64; 2], [f64; 2])>) -> Vec<Polyline> {
    use std::collections::HashMap;
    let key = |p: [f64; 2]| ((p[0] * 1e9).round() as i64, (p[1] * 1e9).round() as i64);
    let mut ends: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (k, s) in segments.iter().enumerate() {
        ends.entry(key(s.0)).or_default().push(k);
        ends.entry(key(s.1)).or_default().push(k);
    }
    let mut used = vec![false; segments.len()];
    let mut lines = Vec::new();
    for start in 0..segments.len() {
        if used[start] {
            continue;
        }
        used[start] = true;
        let mut line: std::collections::VecDeque<[f64; 2]> =
            [segments[start].0, segments[start].1].into_iter().collect();
        // Grow from both ends.
        for front in [false, true] {
            loop {
                let tip = if front { line[0] } else { line[line.len() - 1] };
                let next = ends
                    .get(&key(tip))
                    .and_then(|ks| ks.iter().copied().find(|&k| !used[k]));
                let Some(k) = next else { break };
                used[k] = true;
                let s = segments[k];
                let other = if key(s.0) == key(tip) { s.1 } else { s.0 };
                if front {
                    line.push_front(other);
                } else {
                    line.push_back(other);
                }
            }
        }
        lines.push(line.into_iter().collect());
    }
    // A deterministic order: by first point.
    lines.sort_by(|a: &Polyline, b: &Polyline| {
        a[0][0]
            .total_cmp(&b[0][0])
            .then(a[0][1].total_cmp(&b[0][1]))
    });
    lines
}

/// Lattice points per side of [`Topography::compute`]'s nullclines (marching squares).
pub const NULLCLINE_GRID: usize = 150;

/// The topography of a field over its cells: the checked fixed points ([`fixed_points`]) and,
/// for a 2-D field, the nullclines of f_x and f_y ([`nullclines`]) over the cells' box padded
/// by [`TopographyOptions::pad`] (what `cellfate topography` stores under dynamo's keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Topography {
    /// Fixed points, each converged, typed by its Jacobian's eigenvalues.
    pub fixed_points: Vec<FixedPoint>,
    /// 2-D fields: `(f_x = 0, f_y = 0)` as polylines; `None` in other dimensions.
    pub nullclines: Option<(Vec<Polyline>, Vec<Polyline>)>,
}

impl Topography {
    /// Fixed points of `field` started from the cells `x` (row-major n × d), and its
    /// nullclines when d = 2.
    pub fn compute(
        field: &VectorField,
        x: &[f64],
        opts: &TopographyOptions,
    ) -> Result<Self, VectorFieldError> {
        let fixed_points = fixed_points(field, x, opts)?;
        let d = field.dim();
        let nullclines = (d == 2).then(|| {
            let range = |c: usize| {
                let (lo, hi) = x
                    .chunks_exact(2)
                    .map(|r| r[c])
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                        (a.min(v), b.max(v))
                    });
                (lo - opts.pad * (hi - lo), hi + opts.pad * (hi - lo))
            };
            let ((x0, x1), (y0, y1)) = (range(0), range(1));
            nullclines(field, [x0, y0], [x1, y1], NULLCLINE_GRID)
        });
        Ok(Self {
            fixed_points,
            nullclines,
        })
    }

    /// The fixed points of one kind.
    pub fn of_kind(&self, kind: FixedPointKind) -> impl Iterator<Item = &FixedPoint> {
        self.fixed_points.iter().filter(move |p| p.kind == kind)
    }
}
