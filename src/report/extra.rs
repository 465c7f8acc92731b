//! The figures beyond the fate map (CellRank's and scVelo's plotting functions): gene trends
//! along a time and the lineage heatmap of the top drivers (`cr.pl.gene_trends`,
//! `cr.pl.heatmap`), the circular projection (`cr.pl.circular_projection`), the macrostate
//! composition (`plot_macrostate_composition`), phase portraits (`scv.pl.velocity` /
//! `scatter` of unspliced against spliced with the fit), and the priming degree and absorption
//! times on the embedding.
//!
//! Each builder returns `Ok(Err(reason))` when the file lacks what it needs (a note, or an
//! error when the kind was asked for by name) and `Err` when what it reads is malformed.

use plotters::style::RGBColor;

use cellfate_estimators::trends::{fit_trends, Trend, TrendOptions};
use cellfate_kernels::Direction;

use super::plots::{ScatterPanel, TrendSeries};
use super::FigureSource;
use super::{hex_or_palette, keys, labels, strings, Figure, Labels, Overlay, Plot, ReportError};

/// A figure set, or why it cannot be drawn.
pub(crate) type Built = Result<Vec<Figure>, String>;

/// Time keys looked for, in order, when `--time-key` is not given (scVelo's latent time,
/// scanpy's diffusion pseudotime, scVelo's velocity pseudotime, Palantir's pseudotime).
pub const TIME_KEYS: [&str; 5] = [
    "latent_time",
    "dpt_pseudotime",
    "velocity_pseudotime",
    "palantir_pseudotime",
    "pseudotime",
];

/// Cells with a fate probability below this weigh this much in a lineage's trend (CellRank's
/// `weight_threshold` default: weights are floored, not dropped).
const WEIGHT_FLOOR: f64 = 0.01;

/// Fate probabilities: lineage names, colours, the number of lineages and the row-major
/// cells × lineages values.
pub(crate) struct Fates {
    pub(crate) names: Vec<String>,
    pub(crate) colors: Vec<RGBColor>,
    pub(crate) l: usize,
    pub(crate) values: Vec<f64>,
}

/// The fate probabilities of direction `d` (`None`: not computed or not one row per cell).
pub(crate) fn fates(
    r: &dyn FigureSource,
    d: Direction,
    n: usize,
) -> Result<Option<Fates>, ReportError> {
    let lin = keys::lineages(d);
    if !r.exists(&keys::obsm(&lin)) {
        return Ok(None);
    }
    let (rows, l, values) = r.dense(&keys::obsm(&lin))?;
    if rows != n || l == 0 {
        return Ok(None);
    }
    let names = strings(r, &keys::uns(&keys::names(&lin)))
        .filter(|v| v.len() == l)
        .unwrap_or_else(|| (0..l).map(|j| format!("lineage {}", j + 1)).collect());
    let colors = hex_or_palette(strings(r, &keys::uns(&keys::colors(&lin))).as_ref(), l);
    Ok(Some(Fates {
        names,
        colors,
        l,
        values,
    }))
}

/// The time for gene trends and its name: `time_key` (which must then be a numeric obs
/// column), else the first of [`TIME_KEYS`] present, else the expected steps to absorption
/// reversed (when absorption times were computed), else the diffusion pseudotime computed
/// here from the connectivities, rooted at the initial state's most likely cell.
pub(crate) fn trend_time(
    r: &dyn FigureSource,
    time_key: Option<&str>,
    d: Direction,
) -> Result<Result<(Vec<f64>, String), String>, ReportError> {
    if let Some(k) = time_key {
        return match r.obs_f64(k) {
            Ok(t) => Ok(Ok((t, k.to_string()))),
            Err(_) => Err(ReportError::Option {
                flag: "--time-key",
                got: format!("{k:?}"),
                expected: format!(
                    "a numeric obs column of {}; columns: {}",
                    r.path().display(),
                    r.columns("obs").unwrap_or_default().join(", ")
                ),
            }),
        };
    }
    let columns = r.columns("obs").unwrap_or_default();
    for k in TIME_KEYS {
        if columns.iter().any(|c| c == k) {
            if let Ok(t) = r.obs_f64(k) {
                return Ok(Ok((t, k.to_string())));
            }
        }
    }
    // No time in the file: the chain's own clock when absorption times were computed
    // (instant), else the diffusion pseudotime from the initial state (an eigendecomposition).
    if let Some(t) = absorption_clock(r, d)? {
        return Ok(Ok((
            t,
            "pseudotime (expected steps to absorption, reversed)".into(),
        )));
    }
    let Some(init) = labels(r, &keys::initial_states(d)) else {
        return Ok(Err(format!(
            "no time: none of obs {} and no initial states to root a diffusion pseudotime (--time-key)",
            TIME_KEYS.join(", ")
        )));
    };
    let probs = r
        .obs_f64(&format!("{}_probs", keys::initial_states(d)))
        .ok();
    let root = (0..init.codes.len())
        .filter(|&i| init.codes[i].is_some())
        .max_by(|&a, &b| {
            let p = |i: usize| {
                probs
                    .as_ref()
                    .and_then(|p| p.get(i))
                    .copied()
                    .unwrap_or(0.0)
            };
            p(a).total_cmp(&p(b)).then(b.cmp(&a))
        });
    let Some(root) = root else {
        return Ok(Err(
            "no time: the initial states hold no cell (--time-key)".into()
        ));
    };
    if !r.exists("obsp/connectivities") {
        return Ok(Err(
            "no time: no obs time column and no obsp[\"connectivities\"] for a diffusion pseudotime (--time-key)".into(),
        ));
    }
    let conn = r.obsp("connectivities")?;
    let dm = match crate::upstream::dpt::diffmap(&conn, 15) {
        Ok(dm) => dm,
        Err(e) => return Ok(Err(format!("no time: the diffusion map failed: {e}"))),
    };
    let mut t = crate::upstream::dpt::dpt_pseudotime(&dm, root, 10);
    // Cells in other components of the graph are infinitely far: no time.
    for v in &mut t {
        if !v.is_finite() {
            *v = f64::NAN;
        }
    }
    Ok(Ok((
        t,
        "pseudotime (DPT from the initial state)".to_string(),
    )))
}

/// A pseudotime from the absorption times: T(cell) = Σ_j p_j · T_j, the expected number of
/// steps before the chain reaches any terminal state (fate probabilities p_j, conditional mean
/// times T_j of `obsm["absorption_times_fwd"]`, the law of total expectation), reversed and
/// scaled to 0–1: 0 where absorption is farthest, 1 in the terminal states. `None` without
/// fate probabilities or a `<lineage>_mean` column per lineage.
fn absorption_clock(r: &dyn FigureSource, d: Direction) -> Result<Option<Vec<f64>>, ReportError> {
    let n = r.n_obs()?;
    let Some(f) = fates(r, d, n)? else {
        return Ok(None);
    };
    let Ok(df) = r.dataframe(&format!("obsm/{}", keys::absorption_times(d))) else {
        return Ok(None);
    };
    let mut cols = Vec::with_capacity(f.l);
    for name in &f.names {
        let Some(v) = df
            .columns
            .iter()
            .find(|(c, _)| c == &format!("{name}_mean"))
            .and_then(|(_, e)| e.to_f64_vec())
            .filter(|v| v.len() == n)
        else {
            return Ok(None);
        };
        cols.push(v);
    }
    let t: Vec<f64> = (0..n)
        .map(|i| {
            let mut sum = 0.0;
            let mut mass = 0.0;
            for (j, col) in cols.iter().enumerate() {
                let p = f.values[i * f.l + j];
                if p > 0.0 && col[i].is_finite() {
                    sum += p * col[i];
                    mass += p;
                }
            }
            if mass > 0.0 {
                sum / mass
            } else {
                f64::NAN
            }
        })
        .collect();
    let max = t
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max <= 0.0 {
        return Ok(None);
    }
    Ok(Some(t.iter().map(|&v| 1.0 - v / max).collect()))
}

/// The expression data for trends: `data_key` (`X` or a layer), default `Ms` when present
/// (scVelo's smoothed spliced counts, what CellRank's tutorials plot), else `X`.
pub(crate) fn data_slot(
    r: &dyn FigureSource,
    data_key: Option<&str>,
) -> Result<(String, String), ReportError> {
    let key = match data_key {
        Some(k) => k.to_string(),
        None if r.exists("layers/Ms") => "Ms".into(),
        None => "X".into(),
    };
    let slot = if key == "X" {
        "X".to_string()
    } else {
        format!("layers/{key}")
    };
    if !r.exists(&slot) {
        let mut layers = r.keys("layers").unwrap_or_default();
        layers.insert(0, "X".into());
        return Err(ReportError::Option {
            flag: "--data-key",
            got: format!("{key:?}"),
            expected: format!(
                "X or a layer of {}: {}",
                r.path().display(),
                layers.join(", ")
            ),
        });
    }
    Ok((key, slot))
}

/// Columns `cols` of the cells × genes matrix at `slot`, row-major cells × |cols|.
fn expression(r: &dyn FigureSource, slot: &str, cols: &[usize]) -> Result<Vec<f64>, ReportError> {
    r.gene_columns(slot, cols)
}

/// Gene names → columns; an unknown gene is an error naming it (and a close name).
pub(crate) fn gene_columns(
    r: &dyn FigureSource,
    genes: &[String],
) -> Result<Vec<usize>, ReportError> {
    let var = r.var_names()?;
    genes
        .iter()
        .map(|g| {
            var.iter().position(|v| v == g).ok_or_else(|| {
                let lower = g.to_lowercase();
                ReportError::UnknownGene {
                    path: r.path().to_path_buf(),
                    gene: g.clone(),
                    hint: var.iter().find(|v| v.to_lowercase() == lower).cloned(),
                }
            })
        })
        .collect()
}

/// Trends of the genes (cells × genes values `x`) for every lineage. Each lineage is fitted
/// up to the latest time of its own cells (those for which it is the most likely fate): past
/// it the lineage has only other lineages' cells at the weight floor, and a spline there
/// extrapolates (CellRank fits and draws the whole time range; its log link keeps such tails
/// positive, an identity link does not).
fn lineage_trends(
    t: &[f64],
    x: &[f64],
    n_genes: usize,
    fates: &Fates,
) -> Result<Vec<Vec<Trend>>, String> {
    let l = fates.l;
    let own = |i: usize, j: usize| {
        let row = &fates.values[i * l..(i + 1) * l];
        (0..l).all(|k| row[k].is_nan() || row[j] >= row[k]) && row[j].is_finite()
    };
    (0..l)
        .map(|j| {
            let end = (0..t.len())
                .filter(|&i| t[i].is_finite() && own(i, j))
                .map(|i| t[i])
                .fold(f64::NEG_INFINITY, f64::max);
            // Cells without a time (another graph component) are left out.
            let cells: Vec<usize> = (0..t.len())
                .filter(|&i| t[i].is_finite() && t[i] <= end)
                .collect();
            let tt: Vec<f64> = cells.iter().map(|&i| t[i]).collect();
            let xx: Vec<f64> = cells
                .iter()
                .flat_map(|&i| x[i * n_genes..(i + 1) * n_genes].iter().copied())
                .collect();
            let w: Vec<f64> = cells
                .iter()
                .map(|&i| {
                    let p = fates.values[i * l + j];
                    if p.is_finite() {
                        p.max(WEIGHT_FLOOR)
                    } else {
                        WEIGHT_FLOOR
                    }
                })
                .collect();
            fit_trends(&tt, &xx, n_genes, &w, &TrendOptions::default())
                .map_err(|e| format!("lineage {}: {e}", fates.names[j]))
        })
        .collect()
}

/// Gene trends: one figure per lineage with its top drivers (`gene_trends_<lineage>`), each
/// panel showing every lineage's trend, or one figure `gene_trends` of `genes`; and the
/// lineage heatmaps (`heatmap_<lineage>`) of the top drivers ordered by peak time.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gene_trend_figures(
    r: &dyn FigureSource,
    d: Direction,
    n: usize,
    genes: &[String],
    time_key: Option<&str>,
    data_key: Option<&str>,
    want_trends: bool,
    want_heatmap: bool,
) -> Result<(Built, Built), ReportError> {
    let unavailable = |why: String| Ok((Err(why.clone()), Err(why)));
    let Some(f) = fates(r, d, n)? else {
        return unavailable("no fate probabilities (obsm lineages_fwd)".into());
    };
    // The genes: those asked for, else each lineage's top drivers.
    let drivers = super::driver_panels(r, d, 20, None);
    if genes.is_empty() && drivers.is_none() {
        return unavailable(
            "no driver genes (varm terminal_lineage_drivers) and no --genes".into(),
        );
    }
    let (_, slot) = data_slot(r, data_key)?;
    let time = match trend_time(r, time_key, d)? {
        Ok(t) => t,
        Err(why) => return unavailable(why),
    };
    let (t, t_name) = time;
    if t.len() != n {
        return unavailable(format!("the time has {} values for {n} cells", t.len()));
    }
    // Per figure: (stem, title lineage, genes).
    let mut trend_sets: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut heat_sets: Vec<(usize, Vec<String>)> = Vec::new();
    if !genes.is_empty() {
        trend_sets.push(("gene_trends".into(), String::new(), genes.to_vec()));
        for j in 0..f.l {
            heat_sets.push((j, genes.to_vec()));
        }
    } else if let Some(panels) = &drivers {
        for (lineage, _, top) in panels {
            let Some(j) = f.names.iter().position(|x| x == lineage) else {
                continue;
            };
            let names: Vec<String> = top.iter().map(|(g, _)| g.clone()).collect();
            trend_sets.push((
                format!("gene_trends_{}", crate::names::file_stem(lineage)),
                lineage.clone(),
                names.iter().take(6).cloned().collect(),
            ));
            heat_sets.push((j, names));
        }
    }
    // Every gene needed, fitted once per lineage.
    let mut all: Vec<String> = Vec::new();
    for g in trend_sets
        .iter()
        .flat_map(|s| s.2.iter())
        .chain(heat_sets.iter().flat_map(|s| s.1.iter()))
    {
        if !all.contains(g) {
            all.push(g.clone());
        }
    }
    if all.is_empty() {
        return unavailable("no genes to draw".into());
    }
    let cols = gene_columns(r, &all)?;
    let x = expression(r, &slot, &cols)?;
    let fits = match lineage_trends(&t, &x, all.len(), &f) {
        Ok(v) => v,
        Err(why) => return unavailable(format!("the trends cannot be fitted: {why}")),
    };
    let at = |g: &str| all.iter().position(|x| x == g).unwrap_or(0);
    let y_label = if slot == "X" {
        "expression (X)".to_string()
    } else {
        format!("expression ({})", slot.trim_start_matches("layers/"))
    };
    let trends: Built = if want_trends {
        Ok(trend_sets
            .iter()
            .map(|(stem, lineage, gs)| {
                let panels = gs
                    .iter()
                    .map(|g| {
                        let series = (0..f.l)
                            .map(|j| {
                                let tr = &fits[j][at(g)];
                                TrendSeries {
                                    label: f.names[j].clone(),
                                    color: f.colors[j],
                                    t: tr.t.clone(),
                                    mean: tr.mean.clone(),
                                    lower: tr.lower.clone(),
                                    upper: tr.upper.clone(),
                                }
                            })
                            .collect();
                        (g.clone(), series)
                    })
                    .collect();
                Figure {
                    name: stem.clone(),
                    title: if lineage.is_empty() {
                        format!("gene trends along {t_name}, per lineage (95 % bands)")
                    } else {
                        format!(
                            "top {lineage} drivers along {t_name}, trend per lineage (95 % bands)"
                        )
                    },
                    plot: Plot::Trends {
                        panels,
                        x_label: t_name.clone(),
                        y_label: y_label.clone(),
                    },
                }
            })
            .collect())
    } else {
        Err("not asked for".into())
    };
    let mut stems = crate::names::UniqueStems::new();
    let heatmaps: Built = if want_heatmap {
        Ok(heat_sets
            .iter()
            .map(|(j, gs)| {
                // Each gene's trend scaled to 0–1, genes ordered by the time of their peak.
                let mut rows: Vec<(f64, String, Vec<f64>)> = gs
                    .iter()
                    .map(|g| {
                        let tr = &fits[*j][at(g)];
                        let (lo, hi) = tr
                            .mean
                            .iter()
                            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                                (a.min(v), b.max(v))
                            });
                        let span = hi - lo;
                        let row = tr
                            .mean
                            .iter()
                            .map(|&v| if span > 0.0 { (v - lo) / span } else { 0.0 })
                            .collect();
                        (tr.peak_time(), g.clone(), row)
                    })
                    .collect();
                rows.sort_by(|a, b| a.0.total_cmp(&b.0));
                let n_cols = rows.first().map_or(0, |r| r.2.len());
                Figure {
                    name: stems.claim(&format!(
                        "heatmap_{}",
                        crate::names::file_stem(&f.names[*j])
                    )),
                    title: format!(
                        "{}: {} genes' trends, 0–1 per gene, ordered by peak time",
                        f.names[*j],
                        rows.len()
                    ),
                    plot: Plot::GeneHeatmap {
                        genes: rows.iter().map(|r| r.1.clone()).collect(),
                        values: rows.iter().flat_map(|r| r.2.iter().copied()).collect(),
                        n_cols,
                        x_label: t_name.clone(),
                    },
                }
            })
            .collect())
    } else {
        Err("not asked for".into())
    };
    Ok((trends, heatmaps))
}

/// CellRank's circular projection: lineage `j` at angle 2πj/L on a circle (the first at the
/// top), each cell at the mean of the vertices weighted by its fate probabilities, after
/// each lineage is divided by its mean over cells (`normalize_by_mean=True`) and the rows are
/// renormalised. Cells coloured by cluster.
pub(crate) fn circular_projection(f: &Fates, keep: &[usize], clusters: Option<&Labels>) -> Built {
    if f.l < 3 {
        return Err(format!(
            "a circular projection needs at least 3 lineages, found {}",
            f.l
        ));
    }
    let n = f.values.len() / f.l;
    let mean: Vec<f64> = (0..f.l)
        .map(|j| (0..n).map(|i| f.values[i * f.l + j]).sum::<f64>() / n.max(1) as f64)
        .collect();
    let vertex = |j: usize| {
        let a = std::f64::consts::FRAC_PI_2 + std::f64::consts::TAU * j as f64 / f.l as f64;
        [a.cos(), a.sin()]
    };
    let xy: Vec<[f64; 2]> = keep
        .iter()
        .map(|&i| {
            let w: Vec<f64> = (0..f.l)
                .map(|j| {
                    let p = f.values[i * f.l + j];
                    if mean[j] > 0.0 && p.is_finite() {
                        p / mean[j]
                    } else {
                        0.0
                    }
                })
                .collect();
            let s: f64 = w.iter().sum();
            if s <= 0.0 {
                return [f64::NAN, f64::NAN];
            }
            (0..f.l).fold([0.0, 0.0], |acc, j| {
                let v = vertex(j);
                [acc[0] + w[j] / s * v[0], acc[1] + w[j] / s * v[1]]
            })
        })
        .collect();
    let (colors, legend) = match clusters {
        Some(c) => (c.colors_of(keep), c.legend()),
        None => (vec![None; keep.len()], Vec::new()),
    };
    let vertices: Vec<([f64; 2], String)> =
        (0..f.l).map(|j| (vertex(j), f.names[j].clone())).collect();
    Ok(vec![Figure {
        name: "circular_projection".into(),
        title: "circular projection: cells placed by their fate probabilities (normalised by lineage means)"
            .into(),
        plot: Plot::Embedding {
            xy,
            colors,
            legend,
            colorbar: None,
            basis: "fate simplex".into(),
            overlay: Overlay::Polygon(vertices),
        },
    }])
}

/// The composition of each macrostate by cluster (`plot_macrostate_composition`): one bar per
/// macrostate, the fraction of its cells in each cluster.
pub(crate) fn macrostate_composition(
    macro_l: Option<&Labels>,
    clusters: Option<&Labels>,
    cluster_key: &str,
) -> Built {
    let Some(m) = macro_l else {
        return Err("no macrostates (obs macrostates_fwd)".into());
    };
    let Some(c) = clusters else {
        return Err(format!("no cluster column obs[{cluster_key:?}]"));
    };
    let k = c.categories.len();
    let bars = m
        .categories
        .iter()
        .enumerate()
        .map(|(q, name)| {
            let mut counts = vec![0usize; k];
            let mut total = 0usize;
            for (mc, cc) in m.codes.iter().zip(&c.codes) {
                if *mc == Some(q) {
                    total += 1;
                    if let Some(cc) = cc {
                        counts[*cc] += 1;
                    }
                }
            }
            let fr = counts
                .iter()
                .map(|&x| x as f64 / total.max(1) as f64)
                .collect();
            (name.clone(), fr)
        })
        .collect();
    Ok(vec![Figure {
        name: "macrostate_composition".into(),
        title: format!("macrostate composition by {cluster_key}"),
        plot: Plot::Stacked {
            bars,
            legend: c.legend(),
            y_label: format!("fraction of the macrostate's cells per {cluster_key}"),
        },
    }])
}

/// Phase portraits (unspliced `Mu` against spliced `Ms`) of `genes`, cells coloured by
/// cluster, with the fit: the dynamical model's trajectory when `var` holds `fit_alpha`…,
/// else the steady-state line u = γ·s (+ offset) of `velocity_gamma`.
pub(crate) fn phase_portraits(
    r: &dyn FigureSource,
    genes: &[String],
    keep: &[usize],
    clusters: Option<&Labels>,
) -> Result<Built, ReportError> {
    if !(r.exists("layers/Ms") && r.exists("layers/Mu")) {
        return Ok(Err("no moments layers Ms and Mu (cellfate velocity)".into()));
    }
    if genes.is_empty() {
        return Ok(Err("no genes: no drivers and no --genes".into()));
    }
    let cols = gene_columns(r, genes)?;
    let ms = expression(r, "layers/Ms", &cols)?;
    let mu = expression(r, "layers/Mu", &cols)?;
    let var_cols = r.columns("var").unwrap_or_default();
    let var = |name: &str| -> Option<Vec<f64>> {
        var_cols
            .iter()
            .any(|c| c == name)
            .then(|| r.column("var", name).ok()?.to_f64_vec())
            .flatten()
    };
    let gamma = var("velocity_gamma");
    let offset = var("velocity_offset");
    let dynamical = [
        "fit_alpha",
        "fit_beta",
        "fit_gamma",
        "fit_t_",
        "fit_scaling",
    ]
    .iter()
    .map(|k| var(k))
    .collect::<Option<Vec<Vec<f64>>>>();
    let k = genes.len();
    let panels = genes
        .iter()
        .enumerate()
        .map(|(q, g)| {
            let c = cols[q];
            let x: Vec<f64> = keep.iter().map(|&i| ms[i * k + q]).collect();
            let y: Vec<f64> = keep.iter().map(|&i| mu[i * k + q]).collect();
            let s_max = x
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let curve = dynamical
                .as_ref()
                .map(|p| {
                    cellfate_dynamics::phase_curve(p[0][c], p[1][c], p[2][c], p[3][c], p[4][c], 100)
                })
                .filter(|c| !c.is_empty())
                .map(|c| ("dynamical model".to_string(), c))
                .or_else(|| {
                    let gm = gamma.as_ref()?.get(c).copied().filter(|v| v.is_finite())?;
                    let off = offset
                        .as_ref()
                        .and_then(|o| o.get(c).copied())
                        .filter(|v| v.is_finite())
                        .unwrap_or(0.0);
                    Some((
                        format!("steady state: u = {gm:.3}·s"),
                        vec![(0.0, off), (s_max, off + gm * s_max)],
                    ))
                });
            ScatterPanel {
                title: g.clone(),
                x,
                y,
                colors: match clusters {
                    Some(l) => l.colors_of(keep),
                    None => vec![None; keep.len()],
                },
                curve,
            }
        })
        .collect();
    Ok(Ok(vec![Figure {
        name: "phase_portraits".into(),
        title: "phase portraits: unspliced against spliced (moments) with the fit".into(),
        plot: Plot::Scatter {
            panels,
            x_label: "spliced (Ms)".into(),
            y_label: "unspliced (Mu)".into(),
            legend: clusters.map(Labels::legend).unwrap_or_default(),
        },
    }]))
}

/// A continuous value per cell on the embedding, drawn from low to high, with a colour bar
/// over its finite range.
pub(crate) fn value_map(
    name: &str,
    title: String,
    xy: &[[f64; 2]],
    keep: &[usize],
    basis: &str,
    v: &[f64],
) -> Figure {
    let (lo, hi) = v
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let mut order = keep.to_vec();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            if v[i].is_finite() {
                v[i]
            } else {
                f64::NEG_INFINITY
            }
        };
        key(a).total_cmp(&key(b)).then(a.cmp(&b))
    });
    Figure {
        name: name.into(),
        title,
        plot: Plot::Embedding {
            xy: order.iter().map(|&i| xy[i]).collect(),
            colors: order
                .iter()
                .map(|&i| {
                    v[i].is_finite().then(|| {
                        super::plots::viridis(if hi > lo {
                            (v[i] - lo) / (hi - lo)
                        } else {
                            0.0
                        })
                    })
                })
                .collect(),
            legend: vec![],
            colorbar: Some((lo, hi)),
            basis: basis.into(),
            overlay: Overlay::None,
        },
    }
}

/// The priming degree (`obs["priming_degree_fwd"]`) on the embedding.
pub(crate) fn priming(
    r: &dyn FigureSource,
    d: Direction,
    xy: &[[f64; 2]],
    keep: &[usize],
    basis: &str,
) -> Built {
    let key = keys::priming_degree(d);
    let v = r
        .obs_f64(&key)
        .map_err(|_| format!("no obs[{key:?}] (estimators.priming)"))?;
    if v.len() != xy.len() {
        return Err(format!("obs[{key:?}] has {} values", v.len()));
    }
    Ok(vec![value_map(
        "priming",
        "lineage priming degree (how committed each cell is)".into(),
        xy,
        keep,
        basis,
        &v,
    )])
}

/// The mean absorption time into each lineage (`obsm["absorption_times_fwd"]`, columns
/// `<lineage>_mean`) on the embedding, one figure per lineage.
pub(crate) fn absorption_times(
    r: &dyn FigureSource,
    d: Direction,
    xy: &[[f64; 2]],
    keep: &[usize],
    basis: &str,
) -> Built {
    let slot = format!("obsm/{}", keys::absorption_times(d));
    let df = r
        .dataframe(&slot)
        .map_err(|_| format!("no {slot} (estimators.absorption_times)"))?;
    let mut stems = crate::names::UniqueStems::new();
    let mut figs = Vec::new();
    for (col, el) in &df.columns {
        let Some(lineage) = col.strip_suffix("_mean") else {
            continue;
        };
        let Some(v) = el.to_f64_vec().filter(|v| v.len() == xy.len()) else {
            continue;
        };
        figs.push(value_map(
            &stems.claim(&format!(
                "absorption_time_{}",
                crate::names::file_stem(lineage)
            )),
            format!("mean time to absorption into {lineage} (steps of the chain)"),
            xy,
            keep,
            basis,
            &v,
        ));
    }
    if figs.is_empty() {
        return Err(format!("{slot} has no <lineage>_mean column"));
    }
    Ok(figs)
}
