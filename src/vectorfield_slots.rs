//! The AnnData slots of the vector-field results under dynamo's keys, for any writer: the
//! `.h5ad` steps (`vectorfield_io`) and the Python package put exactly these into their file or
//! in-memory AnnData. See `vectorfield_io` for the list of keys.

use cellfate_vectorfield::{
    CellCalculus, FatePath, FixedPoint, IntegrateOptions, PathEnd, Polyline, Potential, SparseVfc,
    SparseVfcOptions, VectorField,
};

use crate::io::{DenseArray, Element, NumVec};

fn f64_matrix(n: usize, d: usize, v: Vec<f64>) -> Element {
    Element::from_f64_matrix(n, d, v)
}

fn int_array(v: Vec<i64>) -> Element {
    Element::Dense(DenseArray {
        shape: vec![v.len()],
        data: NumVec::I64(v),
    })
}

fn scalar_f64(x: f64) -> Element {
    Element::Scalar(NumVec::F64(vec![x]))
}

/// `uns["VecFld_<basis>"]`, `obsm["velocity_<basis>_SparseVFC"]`, `obsm["X_<basis>_SparseVFC"]`,
/// `obs["control_point_<basis>"]`, `obs["inlier_prob_<basis>"]`, `obs["obs_vf_angle_<basis>"]`
/// (radians) and the per-cell calculus (`obs["speed_<basis>"]`, `["divergence_<basis>"]`,
/// `["curl_<basis>"]`, `["acceleration_<basis>"]`, `["curvature_<basis>"]`,
/// `["jacobian_det_<basis>"]`, `obsm["acceleration_<basis>"]`, `obsm["curvature_<basis>"]`) of a
/// fit on positions `x` and velocities `y` (row-major n × d).
pub fn field_slots(
    basis: &str,
    x: &[f64],
    y: &[f64],
    fit: &SparseVfc,
    calc: CellCalculus,
    opts: &SparseVfcOptions,
) -> Vec<(String, Element)> {
    let f = &fit.field;
    let d = f.dim();
    let n = x.len() / d;
    let inl: Vec<i64> = (0..n)
        .filter(|&i| fit.p[i] > opts.theta)
        .map(|i| i as i64)
        .collect();
    let vf = Element::Dict(vec![
        ("X".into(), f64_matrix(n, d, x.to_vec())),
        ("Y".into(), f64_matrix(n, d, y.to_vec())),
        ("valid_ind".into(), Element::from_bools(fit.valid.clone())),
        (
            "X_ctrl".into(),
            f64_matrix(f.n_ctrl(), d, f.ctrl().to_vec()),
        ),
        (
            "ctrl_idx".into(),
            int_array(fit.ctrl_idx.iter().map(|&i| i as i64).collect()),
        ),
        ("beta".into(), scalar_f64(f.beta())),
        ("C".into(), f64_matrix(f.n_ctrl(), d, f.coef().to_vec())),
        ("V".into(), f64_matrix(n, d, fit.v.clone())),
        ("P".into(), Element::from_f64(fit.p.clone())),
        ("VFCIndex".into(), int_array(inl)),
        ("sigma2".into(), scalar_f64(fit.sigma2)),
        (
            "iteration".into(),
            Element::Scalar(NumVec::I64(vec![fit.iterations as i64 - 1])),
        ),
        ("tecr_traj".into(), Element::from_f64(fit.tecr.clone())),
        ("E_traj".into(), Element::from_f64(fit.energy.clone())),
        ("method".into(), Element::Str("SparseVFC".into())),
        ("dims".into(), Element::Scalar(NumVec::I64(vec![d as i64]))),
        (
            "normalize".into(),
            Element::Scalar(NumVec::Bool(vec![false])),
        ),
        (
            "normalize_velocity".into(),
            Element::Scalar(NumVec::Bool(vec![opts.normalize_velocity])),
        ),
    ]);
    let mut ctrl = vec![false; n];
    for &i in &fit.ctrl_idx {
        ctrl[i] = true;
    }
    let angle: Vec<f64> = y
        .chunks_exact(d)
        .zip(fit.v.chunks_exact(d))
        .map(|(a, b)| {
            let dot: f64 = a.iter().zip(b).map(|(p, q)| p * q).sum();
            let na = a.iter().map(|p| p * p).sum::<f64>().sqrt();
            let nb = b.iter().map(|p| p * p).sum::<f64>().sqrt();
            (dot / (na * nb)).clamp(-1.0, 1.0).acos()
        })
        .collect();
    let mut out = vec![
        (format!("uns/VecFld_{basis}"), vf),
        (
            format!("obsm/velocity_{basis}_SparseVFC"),
            f64_matrix(n, d, fit.v.clone()),
        ),
        (
            format!("obsm/X_{basis}_SparseVFC"),
            f64_matrix(n, d, x.to_vec()),
        ),
        (
            format!("obs/control_point_{basis}"),
            Element::from_bools(ctrl),
        ),
        (
            format!("obs/inlier_prob_{basis}"),
            Element::from_f64(fit.p.clone()),
        ),
        (
            format!("obs/obs_vf_angle_{basis}"),
            Element::from_f64(angle),
        ),
    ];
    for (name, v) in [
        ("speed", calc.speed),
        ("divergence", calc.divergence),
        ("curl", calc.curl),
        ("acceleration", calc.acceleration_norm),
        ("curvature", calc.curvature_norm),
        ("jacobian_det", calc.jacobian_det),
    ] {
        out.push((format!("obs/{name}_{basis}"), Element::from_f64(v)));
    }
    out.push((
        format!("obsm/acceleration_{basis}"),
        f64_matrix(n, d, calc.acceleration),
    ));
    out.push((
        format!("obsm/curvature_{basis}"),
        f64_matrix(n, d, calc.curvature),
    ));
    out
}

/// Lattice points per side of the nullclines' marching squares.
const NULLCLINE_GRID: usize = cellfate_vectorfield::NULLCLINE_GRID;

/// The fixed points in `uns["VecFld_<basis>"]` (`Xss`, `ftype`, `confidence`, `fp_ind`,
/// `Xss_eigenvalues`, `xlim`, `ylim`) for cells at `x` (row-major n × d; the limits are their
/// range padded by `pad`) and, for a 2-D field, its nullclines `NCx`, `NCy` over those limits
/// (dicts of polylines `"0"`, `"1"`, ..., each m × 2, as dynamo stores them).
pub fn topography_slots(
    basis: &str,
    field: &VectorField,
    fps: &[FixedPoint],
    x: &[f64],
    d: usize,
    pad: f64,
) -> Vec<(String, Element)> {
    let k = fps.len();
    let group = format!("uns/VecFld_{basis}");
    let lim = |c: usize| {
        let (lo, hi) = x
            .chunks_exact(d)
            .map(|r| r[c])
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let p = pad * (hi - lo);
        Element::from_f64(vec![lo - p, hi + p])
    };
    let mut out = vec![
        (
            format!("{group}/Xss"),
            f64_matrix(k, d, fps.iter().flat_map(|p| p.x.iter().copied()).collect()),
        ),
        (
            format!("{group}/ftype"),
            int_array(fps.iter().map(|p| p.kind.ftype()).collect()),
        ),
        (
            format!("{group}/confidence"),
            Element::from_f64(fps.iter().map(|p| p.confidence).collect()),
        ),
        (
            format!("{group}/fp_ind"),
            int_array(fps.iter().map(|p| p.nearest_cell as i64).collect()),
        ),
        (
            format!("{group}/Xss_eigenvalues"),
            f64_matrix(
                k,
                2 * d,
                fps.iter()
                    .flat_map(|p| {
                        p.eigenvalues
                            .iter()
                            .map(|e| e.0)
                            .chain(p.eigenvalues.iter().map(|e| e.1))
                            .collect::<Vec<_>>()
                    })
                    .collect(),
            ),
        ),
        (format!("{group}/xlim"), lim(0)),
    ];
    if d >= 2 {
        out.push((format!("{group}/ylim"), lim(1)));
    }
    if d == 2 {
        let range = |c: usize| {
            let (lo, hi) = x
                .chunks_exact(d)
                .map(|r| r[c])
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
            (lo - pad * (hi - lo), hi + pad * (hi - lo))
        };
        let ((x0, x1), (y0, y1)) = (range(0), range(1));
        let (ncx, ncy) =
            cellfate_vectorfield::nullclines(field, [x0, y0], [x1, y1], NULLCLINE_GRID);
        let dict = |lines: Vec<Polyline>| {
            Element::Dict(
                lines
                    .into_iter()
                    .enumerate()
                    .map(|(k, l)| {
                        let m = l.len();
                        (
                            k.to_string(),
                            f64_matrix(m, 2, l.into_iter().flatten().collect()),
                        )
                    })
                    .collect(),
            )
        };
        out.push((format!("{group}/NCx"), dict(ncx)));
        out.push((format!("{group}/NCy"), dict(ncy)));
    }
    out
}

/// The normalised Shannon entropy of each row of fate probabilities (row-major n × k):
/// 1 for a cell equally likely to reach every fate, 0 for a committed one.
pub fn fate_entropy(fp: &[f64], k: usize) -> Vec<f64> {
    let lk = (k as f64).ln();
    fp.chunks_exact(k)
        .map(|row| {
            let s: f64 = row.iter().filter(|q| q.is_finite() && **q > 0.0).sum();
            if s <= 0.0 || lk <= 0.0 {
                return f64::NAN;
            }
            -row.iter()
                .filter(|q| q.is_finite() && **q > 0.0)
                .map(|q| {
                    let q = q / s;
                    q * q.ln()
                })
                .sum::<f64>()
                / lk
        })
        .collect()
}

/// `obs["<basis>_ddhodge_potential"]`, `obs["<basis>_ddhodge_div"]`, `obs["potential"]`,
/// `obs["potential_pseudotime"]`, `obs["curl_fraction_<basis>"]` and, when given,
/// `obs["entropy"]`.
pub fn potential_slots(
    basis: &str,
    p: Potential,
    entropy: Option<Vec<f64>>,
) -> Vec<(String, Element)> {
    let hi = p.ddhodge_potential.iter().copied().fold(0.0f64, f64::max);
    let pt: Vec<f64> = p
        .ddhodge_potential
        .iter()
        .map(|&q| if hi > 0.0 { q / hi } else { 0.0 })
        .collect();
    let mut out = vec![
        (
            format!("obs/{basis}_ddhodge_potential"),
            Element::from_f64(p.ddhodge_potential),
        ),
        (
            format!("obs/{basis}_ddhodge_div"),
            Element::from_f64(p.divergence),
        ),
        ("obs/potential".into(), Element::from_f64(p.waddington)),
        ("obs/potential_pseudotime".into(), Element::from_f64(pt)),
        (
            format!("obs/curl_fraction_{basis}"),
            Element::from_f64(p.curl_fraction),
        ),
    ];
    if let Some(h) = entropy {
        out.push(("obs/entropy".into(), Element::from_f64(h)));
    }
    out
}

/// `uns["fate_<basis>"]` (`init_cells`, `init_states`, `t`, `prediction` (k × d × points, NaN
/// after a path stopped), `end_cell`, `end_cluster`, `end`, `backward`) and
/// `obs["fate_<basis>_end_cluster"]`, for paths from the cells `starts` (rows of `x`, row-major
/// n × d) with `labels` per cell.
#[allow(clippy::too_many_arguments)]
pub fn fate_slots(
    basis: &str,
    names: &[String],
    labels: &[Option<String>],
    x: &[f64],
    d: usize,
    starts: &[usize],
    paths: &[FatePath],
    t_end: f64,
    opts: &IntegrateOptions,
) -> Vec<(String, Element)> {
    let k = paths.len();
    let n = x.len() / d;
    let np = opts.n_points.max(2);
    let mut pred = vec![f64::NAN; k * d * np];
    for (p, path) in paths.iter().enumerate() {
        for s in 0..path.t.len() {
            for c in 0..d {
                pred[(p * d + c) * np + s] = path.x[s * d + c];
            }
        }
    }
    let end_label = |c: usize| labels.get(c).cloned().flatten().unwrap_or_default();
    let end_str = |e: PathEnd| match e {
        PathEnd::Time => "time",
        PathEnd::Settled => "settled",
        PathEnd::LeftDomain => "left_domain",
        PathEnd::StepUnderflow => "step_underflow",
    };
    let mut per_cell = vec![String::new(); n];
    for (&s, p) in starts.iter().zip(paths) {
        per_cell[s] = end_label(p.end_cell);
    }
    let t_grid: Vec<f64> = (0..np)
        .map(|s| t_end * s as f64 / (np - 1) as f64)
        .collect();
    vec![
        (
            format!("uns/fate_{basis}"),
            Element::Dict(vec![
                (
                    "init_cells".into(),
                    Element::from_strings(starts.iter().map(|&i| names[i].clone()).collect()),
                ),
                (
                    "init_states".into(),
                    f64_matrix(
                        k,
                        d,
                        starts
                            .iter()
                            .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                            .collect(),
                    ),
                ),
                ("t".into(), Element::from_f64(t_grid)),
                (
                    "prediction".into(),
                    Element::Dense(DenseArray {
                        shape: vec![k, d, np],
                        data: NumVec::F64(pred),
                    }),
                ),
                (
                    "end_cell".into(),
                    int_array(paths.iter().map(|p| p.end_cell as i64).collect()),
                ),
                (
                    "end_cluster".into(),
                    Element::from_strings(paths.iter().map(|p| end_label(p.end_cell)).collect()),
                ),
                (
                    "end".into(),
                    Element::from_strings(
                        paths.iter().map(|p| end_str(p.end).to_string()).collect(),
                    ),
                ),
                (
                    "backward".into(),
                    Element::Scalar(NumVec::Bool(vec![opts.backward])),
                ),
            ]),
        ),
        (
            format!("obs/fate_{basis}_end_cluster"),
            Element::from_strings(per_cell),
        ),
    ]
}
