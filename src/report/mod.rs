//! Figures and a self-contained HTML report from a fate-mapping output (`.h5ad` with
//! CellRank's keys): everything is read from the file, so `cellfate report` works on outputs
//! of `cellfate run`, of the stage commands, and on CellRank's own files.

mod anim;
pub mod html;
pub mod plots;

pub use anim::animate_fates;

use std::path::PathBuf;

use plotters::style::RGBColor;
use thiserror::Error;

use cellfate_estimators::states::PALETTE;
use cellfate_kernels::{CellSource, CsrError, DenseMatrix, Direction};

use crate::io::{keys, Element, H5adError, H5adReader, NumVec};
pub use plots::{Figure, Format, FormatParseError, Overlay, Plot};

/// Errors of plotting and reporting.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Reading the input.
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// The output cannot be written (special file, missing directory, ...).
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    /// Writing a figure or the report.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The plotting backend failed.
    #[error("drawing figure `{figure}` ({format}): {detail}")]
    Draw {
        /// The figure's name.
        figure: String,
        /// `svg` or `png`.
        format: &'static str,
        /// The backend's message.
        detail: String,
    },
    /// The cluster column asked for (`--cluster-key`) is not a categorical or string obs
    /// column of the file.
    #[error("{}: --cluster-key {key:?}: no such categorical obs column; categorical columns: {}", path.display(), available.join(", "))]
    ClusterKey {
        /// The file.
        path: PathBuf,
        /// The column asked for.
        key: String,
        /// The categorical obs columns present.
        available: Vec<String>,
    },
    /// The embedding asked for is not in the file.
    #[error("{}: no embedding obsm[{key:?}]; available: {}", path.display(), available.join(", "))]
    NoEmbedding {
        /// The file.
        path: PathBuf,
        /// The obsm key looked for.
        key: String,
        /// The obsm keys present.
        available: Vec<String>,
    },
    /// No embedding in the file and `X` cannot give principal components.
    #[error("{}: no embedding in obsm and X is {encoding}; choose an obsm basis (PlotOptions::basis, --basis)", path.display())]
    NoEmbeddingOrMatrix {
        /// The file.
        path: PathBuf,
        /// The encoding of `X`.
        encoding: &'static str,
    },
    /// A matrix in the file is malformed.
    #[error("{}: {slot}: {source}", path.display())]
    Matrix {
        /// The file.
        path: PathBuf,
        /// The slot.
        slot: &'static str,
        /// What is wrong.
        source: CsrError,
    },
}

/// What to plot.
#[derive(Clone, Debug)]
pub struct PlotOptions {
    /// Embedding: `umap` (obsm `X_umap`), any `obsm` key, or `None` for the first of
    /// `X_umap`, `X_tsne`, `X_draw_graph_fa`, `X_pca` (its first two components).
    pub basis: Option<String>,
    /// Cluster column (default: `clusters` when present).
    pub cluster_key: Option<String>,
    /// Random walks to draw.
    pub n_walks: usize,
    /// Seed of the random walks.
    pub seed: u64,
    /// At most this many cells are drawn (an even subsample above).
    pub max_points: usize,
    /// Driver genes per lineage.
    pub n_drivers: usize,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            basis: None,
            cluster_key: None,
            n_walks: 100,
            seed: 0,
            max_points: 50_000,
            n_drivers: 10,
        }
    }
}

/// Two category colours closer than this (Euclidean distance in RGB, 0–255 per channel)
/// cannot be told apart on a scatter plot.
const MIN_COLOR_DISTANCE: f64 = 40.0;

/// The file's colours of `k` categories (`uns["<key>_colors"]`), or the palette when they are
/// missing, unreadable or nearly identical: CellRank colours the macrostates of one cluster
/// (`Ductal_1` … `Ductal_5`) in shades of the cluster's colour, which are indistinguishable
/// on a scatter plot.
fn hex_or_palette(colors: Option<&Vec<String>>, k: usize) -> Vec<RGBColor> {
    let palette =
        |q: usize| plots::parse_hex(PALETTE[q % PALETTE.len()]).unwrap_or(RGBColor(128, 128, 128));
    let given: Option<Vec<RGBColor>> = colors.and_then(|c| {
        (0..k)
            .map(|q| c.get(q).and_then(|s| plots::parse_hex(s)))
            .collect()
    });
    let distinct = |cs: &[RGBColor]| {
        cs.iter().enumerate().all(|(i, a)| {
            cs[i + 1..].iter().all(|b| {
                let d2: f64 = [(a.0, b.0), (a.1, b.1), (a.2, b.2)]
                    .iter()
                    .map(|&(x, y)| (f64::from(x) - f64::from(y)).powi(2))
                    .sum();
                d2.sqrt() >= MIN_COLOR_DISTANCE
            })
        })
    };
    match given {
        Some(cs) if distinct(&cs) => cs,
        _ => (0..k).map(palette).collect(),
    }
}

fn strings(r: &H5adReader, slot: &str) -> Option<Vec<String>> {
    match r.read(slot).ok()? {
        Element::Strings { values, .. } => Some(values),
        _ => None,
    }
}

/// A categorical obs column: labels per cell, categories and their colours.
pub(crate) struct Labels {
    pub(crate) codes: Vec<Option<usize>>,
    pub(crate) categories: Vec<String>,
    pub(crate) colors: Vec<RGBColor>,
}

pub(crate) fn labels(r: &H5adReader, key: &str) -> Option<Labels> {
    let (codes, categories) = match r.column("obs", key).ok()? {
        Element::Categorical(c) => {
            let cats = c.categories.labels();
            let codes = c
                .codes
                .iter()
                .map(|&x| (x >= 0 && (x as usize) < cats.len()).then_some(x as usize))
                .collect();
            (codes, cats)
        }
        _ => {
            let l = r.obs_labels(key).ok()?;
            let mut cats: Vec<String> = l.iter().flatten().cloned().collect();
            cats.sort();
            cats.dedup();
            let codes = l
                .iter()
                .map(|x| x.as_ref().and_then(|s| cats.iter().position(|c| c == s)))
                .collect();
            (codes, cats)
        }
    };
    let colors = hex_or_palette(
        strings(r, &keys::uns(&keys::colors(key))).as_ref(),
        categories.len(),
    );
    Some(Labels {
        codes,
        categories,
        colors,
    })
}

/// The 2-D embedding: coordinates and the basis name. Falls back to the first two principal
/// components (`obsm["X_pca"]`, or a PCA of `X` computed here).
pub fn embedding(
    r: &H5adReader,
    basis: Option<&str>,
) -> Result<(Vec<[f64; 2]>, String), ReportError> {
    let n = r.n_obs()?;
    let candidates: Vec<String> = match basis {
        Some(b) => {
            let key = if b.starts_with("X_") {
                b.to_string()
            } else {
                format!("X_{b}")
            };
            if !r.exists(&keys::obsm(&key)) && !r.exists(&keys::obsm(b)) {
                return Err(ReportError::NoEmbedding {
                    path: r.path().to_path_buf(),
                    key,
                    available: r.keys("obsm").unwrap_or_default(),
                });
            }
            vec![key, b.to_string()]
        }
        None => ["X_umap", "X_tsne", "X_draw_graph_fa", "X_pca"]
            .map(String::from)
            .to_vec(),
    };
    for key in candidates {
        let slot = format!("obsm/{key}");
        if !r.exists(&slot) {
            continue;
        }
        // Only the two plotted columns are read (a hyperslab): an embedding that declares a
        // huge shape costs two columns, not the whole matrix.
        let (rows, cols, data) = match r.info(&slot).map(|i| i.shape) {
            Ok(shape) if shape.len() == 2 && shape[1] >= 2 => {
                match r.dense_columns(&slot, 0..2)? {
                    Some((rows, data)) => (rows, 2, data),
                    None => r.dense(&slot)?,
                }
            }
            _ => r.dense(&slot)?,
        };
        if rows != n || cols < 2 {
            continue;
        }
        let name = key
            .strip_prefix("X_")
            .unwrap_or(&key)
            .to_ascii_uppercase()
            .replace("DRAW_GRAPH_FA", "FA");
        let xy = (0..n)
            .map(|i| [data[i * cols], data[i * cols + 1]])
            .collect();
        return Ok((xy, name));
    }
    // No embedding: two principal components of X.
    let x = match r.read("X")? {
        Element::Sparse(s) => {
            let csr = s.to_csr().map_err(|source| ReportError::Matrix {
                path: r.path().to_path_buf(),
                slot: "X",
                source,
            })?;
            csr.to_dense()
        }
        Element::Dense(d) if d.shape.len() == 2 => d.data.to_f64(),
        other => {
            return Err(ReportError::NoEmbeddingOrMatrix {
                path: r.path().to_path_buf(),
                encoding: other.encoding(),
            })
        }
    };
    let g = r.n_vars()?;
    let scores = crate::upstream::pca_scores(&x, n, g, 2, 0);
    Ok((
        (0..n).map(|i| [scores[2 * i], scores[2 * i + 1]]).collect(),
        "PC".into(),
    ))
}

fn subsample(n: usize, max_points: usize) -> Vec<usize> {
    if n <= max_points || max_points == 0 {
        return (0..n).collect();
    }
    let step = n as f64 / max_points as f64;
    (0..max_points)
        .map(|k| ((k as f64 * step) as usize).min(n - 1))
        .collect()
}

fn categorical_figure(
    name: &str,
    title: &str,
    xy: &[[f64; 2]],
    keep: &[usize],
    basis: &str,
    l: &Labels,
) -> Figure {
    // Drawn unlabelled cells first, then the categories from the largest to the smallest, so
    // that small states (30 cells among 100,000) are on top instead of buried.
    let mut size = vec![0usize; l.categories.len()];
    for &i in keep {
        if let Some(q) = l.codes[i] {
            size[q] += 1;
        }
    }
    let mut order = keep.to_vec();
    order.sort_by_key(|&i| match l.codes[i] {
        None => (0, std::cmp::Reverse(usize::MAX), i),
        Some(q) => (1, std::cmp::Reverse(size[q]), i),
    });
    Figure {
        name: name.into(),
        title: title.into(),
        plot: Plot::Embedding {
            xy: order.iter().map(|&i| xy[i]).collect(),
            colors: order
                .iter()
                .map(|&i| l.codes[i].map(|q| l.colors[q]))
                .collect(),
            legend: l
                .categories
                .iter()
                .cloned()
                .zip(l.colors.iter().copied())
                .collect(),
            colorbar: None,
            basis: basis.into(),
            overlay: Overlay::None,
        },
    }
}

/// Mean fate probability of each lineage in each cluster (CellRank's
/// `aggregate_fate_probabilities`, mode `bar`): one panel per lineage in its colour, one bar
/// per cluster, on a fixed 0–1 scale. `None` without fate probabilities or clusters.
fn fate_bars(r: &H5adReader, d: Direction, cluster_key: Option<&str>, n: usize) -> Option<Figure> {
    let cl = labels(r, cluster_key?)?;
    let lin = keys::lineages(d);
    let (rows, l, b) = r.dense(&keys::obsm(&lin)).ok()?;
    if rows != n || l == 0 || cl.codes.len() != n {
        return None;
    }
    let names = strings(r, &keys::uns(&keys::names(&lin)))
        .unwrap_or_else(|| (0..l).map(|j| format!("lineage {}", j + 1)).collect());
    let colors = hex_or_palette(strings(r, &keys::uns(&format!("{lin}_colors"))).as_ref(), l);
    let k = cl.categories.len();
    let (mut sum, mut count) = (vec![0.0; k * l], vec![0usize; k]);
    for i in 0..n {
        if let Some(q) = cl.codes[i] {
            count[q] += 1;
            for j in 0..l {
                let v = b[i * l + j];
                if v.is_finite() {
                    sum[q * l + j] += v;
                }
            }
        }
    }
    let panels: plots::DriverPanels = (0..l)
        .map(|j| {
            let bars = (0..k)
                .filter(|&q| count[q] > 0)
                .map(|q| (cl.categories[q].clone(), sum[q * l + j] / count[q] as f64))
                .collect();
            (names.get(j).cloned().unwrap_or_default(), colors[j], bars)
        })
        .collect();
    Some(Figure {
        name: "aggregated_fates".into(),
        title: format!("mean fate probability per cluster ({})", cluster_key?),
        plot: Plot::FateBars(panels),
    })
}

/// Real parts, imaginary parts and the eigengap stored in `uns["eigendecomposition_fwd"]`.
pub fn spectrum(r: &H5adReader, d: Direction) -> Option<(Vec<f64>, Vec<f64>, Option<usize>)> {
    let key = keys::eigendecomposition(d);
    let (re, im) = match r.read(&format!("uns/{key}/D")).ok()? {
        Element::Dense(a) => match &a.data {
            NumVec::C128(v) => (
                v.iter().map(|c| c.re).collect(),
                v.iter().map(|c| c.im).collect(),
            ),
            other => {
                let re = other.to_f64();
                let im = vec![0.0; re.len()];
                (re, im)
            }
        },
        _ => return None,
    };
    let gap = match r.read(&format!("uns/{key}/eigengap")).ok() {
        Some(Element::Scalar(v)) if !v.is_empty() => Some(v.get_f64(0) as usize),
        _ => None,
    };
    Some((re, im, gap))
}

/// Every figure the file supports, in report order, with notes on what was skipped.
pub fn figures(
    r: &H5adReader,
    opts: &PlotOptions,
) -> Result<(Vec<Figure>, Vec<String>), ReportError> {
    let d = Direction::Forward;
    let mut figs = Vec::new();
    let mut notes = Vec::new();
    let (xy, basis) = embedding(r, opts.basis.as_deref())?;
    let n = xy.len();
    let keep = subsample(n, opts.max_points);
    if keep.len() < n {
        notes.push(format!(
            "embeddings show {} of {n} cells (an even subsample)",
            keep.len()
        ));
    }
    let cluster_key = opts
        .cluster_key
        .clone()
        .or_else(|| r.columns("obs").ok()?.into_iter().find(|c| c == "clusters"));
    if let Some(ck) = &cluster_key {
        match labels(r, ck) {
            Some(l) => figs.push(categorical_figure(
                "embedding_clusters",
                ck,
                &xy,
                &keep,
                &basis,
                &l,
            )),
            // A key the user named must exist; the default `clusters` may be missing.
            None if opts.cluster_key.is_some() => {
                return Err(ReportError::ClusterKey {
                    path: r.path().to_path_buf(),
                    key: ck.clone(),
                    available: crate::estimator_io::categorical_obs_columns(r),
                })
            }
            None => notes.push(format!("obs[{ck:?}] not found: no cluster plot")),
        }
    }
    let ms = keys::macrostates(d);
    if let Some(l) = labels(r, &ms) {
        figs.push(categorical_figure(
            "embedding_macrostates",
            "macrostates",
            &xy,
            &keep,
            &basis,
            &l,
        ));
    }
    let ts = keys::terminal_states(d);
    let term = labels(r, &ts);
    if let Some(l) = &term {
        figs.push(categorical_figure(
            "embedding_terminal_states",
            "terminal states",
            &xy,
            &keep,
            &basis,
            l,
        ));
    }
    let lin = keys::lineages(d);
    if r.exists(&keys::obsm(&lin)) {
        let (rows, l, b) = r.dense(&keys::obsm(&lin))?;
        let names = strings(r, &keys::uns(&keys::names(&lin)))
            .unwrap_or_else(|| (0..l).map(|j| format!("lineage {}", j + 1)).collect());
        if rows == n {
            // One file per lineage: names made file-safe, bounded in length and unique
            // (`A B` and `A\B` both sanitise to `A_B`: the second becomes `fate_A_B_2`).
            let mut stems = crate::names::UniqueStems::new();
            for (j, name) in names.iter().enumerate().take(l) {
                // Drawn from low to high probability (ties in file order), so that the cells
                // with high probabilities are on top instead of hidden under the others.
                let mut order = keep.clone();
                order.sort_by(|&a, &c| b[a * l + j].total_cmp(&b[c * l + j]).then(a.cmp(&c)));
                // With one terminal state every cell reaches it: a map of 1s says nothing
                // unless its title says why.
                let title = if l == 1 {
                    format!("fate probability: {name} (the only terminal state: 1 for every cell that reaches it)")
                } else {
                    format!("fate probability: {name}")
                };
                figs.push(Figure {
                    name: stems.claim(&format!("fate_{}", crate::names::file_stem(name))),
                    title,
                    plot: Plot::Embedding {
                        xy: order.iter().map(|&i| xy[i]).collect(),
                        colors: order
                            .iter()
                            .map(|&i| Some(plots::viridis(b[i * l + j])))
                            .collect(),
                        legend: vec![],
                        colorbar: Some((0.0, 1.0)),
                        basis: basis.clone(),
                        overlay: Overlay::None,
                    },
                });
            }
        }
    }
    if let Some(fig) = fate_bars(r, d, cluster_key.as_deref(), n) {
        figs.push(fig);
    }
    if let Some((re, im, gap)) = spectrum(r, d) {
        // The macrostates computed: as many as their names.
        let n_states = match r.read(&format!("uns/{}_names", keys::macrostates(d))) {
            Ok(Element::Strings { values, .. }) if !values.is_empty() => Some(values.len()),
            _ => None,
        };
        figs.push(Figure {
            name: "spectrum".into(),
            title: "real Schur spectrum".into(),
            plot: Plot::Spectrum {
                re,
                im,
                eigengap: gap,
                n_states,
            },
        });
    }
    let coarse = keys::coarse(d);
    if let Ok((m, m2, values)) = r.dense(&format!("uns/{coarse}/X")) {
        if m == m2 {
            let names = r
                .dataframe(&format!("uns/{coarse}/obs"))
                .map(|df| df.index)
                .unwrap_or_else(|_| (0..m).map(|q| format!("{}", q + 1)).collect());
            figs.push(Figure {
                name: "coarse_T".into(),
                title: "coarse-grained transition matrix".into(),
                plot: Plot::Heatmap { names, values },
            });
        }
    }
    if let Some(panels) = driver_panels(r, d, opts.n_drivers, term.as_ref()) {
        figs.push(Figure {
            name: "drivers".into(),
            title: "top driver genes (correlation with the fate probability)".into(),
            plot: Plot::Drivers(panels),
        });
    }
    // Random walks and the projection need the transition matrix.
    let tkey = keys::transition(d);
    if r.exists(&format!("obsp/{tkey}")) {
        let t = r.transition_matrix(&tkey)?;
        if opts.n_walks > 0 {
            let start: Vec<usize> = labels(r, &keys::initial_states(d))
                .map(|l| (0..n).filter(|&i| l.codes[i].is_some()).collect::<Vec<_>>())
                .unwrap_or_default();
            let stop: Vec<usize> = term
                .as_ref()
                .map(|l| (0..n).filter(|&i| l.codes[i].is_some()).collect())
                .unwrap_or_default();
            let max_iter = (n / 4).clamp(10, 1000);
            let walks = cellfate_kernels::projection::random_walks(
                &t,
                opts.n_walks,
                max_iter,
                &start,
                &stop,
                0,
                opts.seed,
            );
            figs.push(Figure {
                name: "random_walks".into(),
                title: format!(
                    "{} random walks from {} (black dot; end red), coloured by progress: dark → yellow",
                    opts.n_walks,
                    if start.is_empty() {
                        "random cells (no initial states)"
                    } else {
                        "the initial states"
                    }
                ),
                plot: Plot::Embedding {
                    xy: xy.clone(),
                    colors: vec![None; n],
                    legend: vec![],
                    colorbar: None,
                    basis: basis.clone(),
                    overlay: Overlay::Walks(walks),
                },
            });
        }
        let e = DenseMatrix::from_f64(n, 2, xy.iter().flat_map(|p| [p[0], p[1]]).collect());
        let proj = cellfate_kernels::projection::project(&t, &e);
        let cl = cluster_key.as_deref().and_then(|k| labels(r, k));
        figs.push(Figure {
            // scVelo's figure name (`velocity_embedding_stream`) with the basis.
            name: format!("velocity_stream_{}", basis.to_ascii_lowercase()),
            title: "velocity streamlines (transition-matrix projection)".into(),
            plot: Plot::Embedding {
                xy: keep.iter().map(|&i| xy[i]).collect(),
                colors: match &cl {
                    Some(l) => keep
                        .iter()
                        .map(|&i| l.codes[i].map(|q| l.colors[q]))
                        .collect(),
                    None => vec![None; keep.len()],
                },
                legend: cl
                    .as_ref()
                    .map(|l| {
                        l.categories
                            .iter()
                            .cloned()
                            .zip(l.colors.iter().copied())
                            .collect()
                    })
                    .unwrap_or_default(),
                colorbar: None,
                basis: basis.clone(),
                overlay: Overlay::Streamlines(streamlines(&xy, &proj, 40)),
            },
        });
    } else {
        notes.push(format!(
            "no obsp[{tkey:?}]: random walks and projection not drawn"
        ));
    }
    for f in &mut figs {
        drawable_text(f);
    }
    Ok((figs, notes))
}

/// Names from the file drawn in a figure (title, legend, heatmap labels, lineages and genes)
/// with their control characters made visible ([`crate::names::escape_for_terminal`]): they
/// would otherwise reach the SVG, where XML forbids them, and the terminal of whoever `cat`s
/// the file.
fn drawable_text(f: &mut Figure) {
    use crate::names::escape_for_terminal as esc;
    let fix = |s: &mut String| {
        if let std::borrow::Cow::Owned(t) = esc(s) {
            *s = t;
        }
    };
    fix(&mut f.title);
    match &mut f.plot {
        Plot::Embedding { legend, basis, .. } => {
            legend.iter_mut().for_each(|(n, _)| fix(n));
            fix(basis);
        }
        Plot::Heatmap { names, .. } => names.iter_mut().for_each(fix),
        Plot::Drivers(panels) | Plot::FateBars(panels) => {
            for (lineage, _, genes) in panels.iter_mut() {
                fix(lineage);
                genes.iter_mut().for_each(|(g, _)| fix(g));
            }
        }
        Plot::Spectrum { .. } => {}
    }
}

/// The top `k` driver genes per lineage from `varm["terminal_lineage_drivers"]`.
pub(crate) fn driver_panels(
    r: &H5adReader,
    d: Direction,
    k: usize,
    term: Option<&Labels>,
) -> Option<plots::DriverPanels> {
    let df = r
        .dataframe(&format!("varm/{}", keys::lineage_drivers(d)))
        .ok()?;
    let genes = df.index.clone();
    let mut panels = Vec::new();
    for (col, el) in &df.columns {
        let Some(lineage) = col.strip_suffix("_corr") else {
            continue;
        };
        let corr = el.to_f64_vec()?;
        let mut idx: Vec<usize> = (0..corr.len()).filter(|&g| corr[g].is_finite()).collect();
        idx.sort_by(|&a, &b| corr[b].total_cmp(&corr[a]).then(a.cmp(&b)));
        let top = idx
            .into_iter()
            .take(k)
            .map(|g| (genes.get(g).cloned().unwrap_or_default(), corr[g]))
            .collect();
        let color = term
            .and_then(|l| {
                l.categories
                    .iter()
                    .position(|c| c == lineage)
                    .map(|q| l.colors[q])
            })
            .unwrap_or(RGBColor(31, 119, 180));
        panels.push((lineage.to_string(), color, top));
    }
    (!panels.is_empty()).then_some(panels)
}

/// The figure of a perturbation written by `cellfate perturb` under `key`: each cell coloured
/// by its shift of fate probability towards the lineage whose mean shift is largest in size
/// (cells with the largest shifts drawn last, on top), with the perturbed velocities
/// (`obsm["velocity_<embedding>_<key>"]`) as streamlines ([`streamlines`]) on the same
/// embedding. Written to
/// `out` as PNG or SVG by its extension.
pub fn plot_perturbation(
    h5ad: &std::path::Path,
    key: &str,
    out: &std::path::Path,
) -> Result<(), ReportError> {
    let r = H5adReader::open(h5ad)?;
    let fail = |detail: String| ReportError::Draw {
        figure: format!("perturbation_{key}"),
        format: "png",
        detail,
    };
    let info: serde_json::Value = match r.read(&format!("uns/{key}"))? {
        Element::Str(s) => serde_json::from_str(&s).map_err(|e| fail(e.to_string()))?,
        other => {
            return Err(fail(format!(
                "uns[\"{key}\"]: expected JSON text, found {}",
                other.encoding()
            )))
        }
    };
    let lineages: Vec<String> = info["lineages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let (n, l, shift) = r.dense(&format!("obsm/lineages_fwd_{key}_shift"))?;
    if l == 0 || lineages.len() != l {
        return Err(fail(format!(
            "obsm[\"lineages_fwd_{key}_shift\"] has {l} columns for {} lineages",
            lineages.len()
        )));
    }
    // The lineage with the largest mean |shift|.
    let mean: Vec<f64> = (0..l)
        .map(|j| (0..n).map(|i| shift[i * l + j]).sum::<f64>() / n.max(1) as f64)
        .collect();
    let j = (0..l)
        .max_by(|&a, &b| mean[a].abs().total_cmp(&mean[b].abs()))
        .unwrap_or(0);
    // The embedding the velocities were projected on, else the default one.
    let projected = r
        .keys("obsm")
        .unwrap_or_default()
        .into_iter()
        .find(|k| k.starts_with("velocity_") && k.ends_with(&format!("_{key}")));
    let basis = projected
        .as_deref()
        .and_then(|k| k.strip_prefix("velocity_"))
        .and_then(|k| k.strip_suffix(&format!("_{key}")))
        .map(String::from);
    let (xy, name) = embedding(&r, basis.as_deref())?;
    let col: Vec<f64> = (0..n).map(|i| shift[i * l + j]).collect();
    let bound = col.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| col[a].abs().total_cmp(&col[b].abs()).then(a.cmp(&b)));
    let arrows = match &projected {
        Some(k) => {
            let (m, w, v) = r.dense(&format!("obsm/{k}"))?;
            if m == n && w >= 2 {
                let v2: Vec<f64> = (0..n).flat_map(|i| [v[i * w], v[i * w + 1]]).collect();
                streamlines(&xy, &v2, 40)
            } else {
                Vec::new()
            }
        }
        None => Vec::new(),
    };
    let genes: Vec<String> = info["genes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let fig = Figure {
        name: format!("perturbation_{key}"),
        title: format!(
            "{} of {}: shift of P({}) (max |shift| {:.3})",
            info["change"].as_str().unwrap_or("perturbation"),
            genes.join(", "),
            lineages[j],
            bound
        ),
        plot: Plot::Embedding {
            xy: order.iter().map(|&i| xy[i]).collect(),
            colors: order
                .iter()
                .map(|&i| Some(plots::viridis(0.5 + 0.5 * col[i] / bound)))
                .collect(),
            legend: Vec::new(),
            colorbar: Some((-bound, bound)),
            basis: name,
            overlay: Overlay::Streamlines(arrows),
        },
    };
    let svg = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let bytes = if svg {
        fig.svg()?.into_bytes()
    } else {
        fig.png()?
    };
    crate::output::write_atomic(out, &bytes)?;
    Ok(())
}

/// Streamlines of per-cell velocities `v` (n × 2, row-major) on the embedding `xy`, as scVelo's
/// `velocity_embedding_stream` draws them: the velocities averaged on a `g × g` grid with a
/// Gaussian kernel one grid spacing wide (grid points with too little cell mass left empty),
/// then lines traced through the grid field by midpoint steps of half a spacing from seeds
/// on every second grid point, forward and backward, until they leave the cells, stall, or
/// come within a spacing of a line already drawn (an occupancy grid, as matplotlib's
/// streamplot). Each line runs in the direction of flow.
pub fn streamlines(xy: &[[f64; 2]], v: &[f64], g: usize) -> Vec<Vec<[f64; 2]>> {
    let finite = |i: usize| {
        xy[i][0].is_finite()
            && xy[i][1].is_finite()
            && v[2 * i].is_finite()
            && v[2 * i + 1].is_finite()
    };
    let cells: Vec<usize> = (0..xy.len()).filter(|&i| finite(i)).collect();
    if cells.len() < 3 || g < 4 {
        return Vec::new();
    }
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for &i in &cells {
        for k in 0..2 {
            lo[k] = lo[k].min(xy[i][k]);
            hi[k] = hi[k].max(xy[i][k]);
        }
    }
    let span = [(hi[0] - lo[0]).max(1e-12), (hi[1] - lo[1]).max(1e-12)];
    let step = [span[0] / (g - 1) as f64, span[1] / (g - 1) as f64];
    // Gaussian-weighted sums on the grid (cells contribute to grid points within 2 spacings).
    let mut acc = vec![[0.0f64; 3]; g * g]; // sum w vx, sum w vy, sum w
    for &i in &cells {
        let (cx, cy) = ((xy[i][0] - lo[0]) / step[0], (xy[i][1] - lo[1]) / step[1]);
        let (x0, x1) = (
            (cx - 3.0).ceil().max(0.0) as usize,
            ((cx + 3.0).floor() as usize).min(g - 1),
        );
        let (y0, y1) = (
            (cy - 3.0).ceil().max(0.0) as usize,
            ((cy + 3.0).floor() as usize).min(g - 1),
        );
        for gy in y0..=y1 {
            for gx in x0..=x1 {
                let d2 = (gx as f64 - cx).powi(2) + (gy as f64 - cy).powi(2);
                let w = (-0.5 * d2).exp();
                let a = &mut acc[gy * g + gx];
                a[0] += w * v[2 * i];
                a[1] += w * v[2 * i + 1];
                a[2] += w;
            }
        }
    }
    // Grid points with less than 30 % of the median cell mass carry no velocity.
    let mut masses: Vec<f64> = acc.iter().map(|a| a[2]).filter(|&m| m > 0.0).collect();
    masses.sort_by(f64::total_cmp);
    let min_mass = 0.3 * masses.get(masses.len() / 2).copied().unwrap_or(0.0);
    let field: Vec<Option<[f64; 2]>> = acc
        .iter()
        .map(|a| (a[2] > min_mass && a[2] > 0.0).then(|| [a[0] / a[2], a[1] / a[2]]))
        .collect();
    let speed_max = field
        .iter()
        .flatten()
        .map(|f| ((f[0] / step[0]).powi(2) + (f[1] / step[1]).powi(2)).sqrt())
        .fold(0.0f64, f64::max);
    if speed_max <= 0.0 {
        return Vec::new();
    }
    // Bilinear interpolation in grid units (velocity in grid spacings, scaled to max 1).
    let at = |p: [f64; 2]| -> Option<[f64; 2]> {
        if !(p[0] >= 0.0 && p[1] >= 0.0 && p[0] <= (g - 1) as f64 && p[1] <= (g - 1) as f64) {
            return None;
        }
        let (ix, iy) = ((p[0] as usize).min(g - 2), (p[1] as usize).min(g - 2));
        let (fx, fy) = (p[0] - ix as f64, p[1] - iy as f64);
        let mut out = [0.0; 2];
        for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                let f = field[(iy + dy) * g + ix + dx]?;
                out[0] += wx * wy * f[0] / step[0] / speed_max;
                out[1] += wx * wy * f[1] / step[1] / speed_max;
            }
        }
        Some(out)
    };
    // Occupancy on the grid itself: one line per cell of the grid.
    let mut taken = vec![false; g * g];
    let cell_of =
        |p: [f64; 2]| (p[1].round() as usize).min(g - 1) * g + (p[0].round() as usize).min(g - 1);
    let trace = |start: [f64; 2], sign: f64, taken: &[bool]| -> Vec<[f64; 2]> {
        let mut pts = vec![start];
        let mut p = start;
        let own = cell_of(start);
        for _ in 0..(4 * g) {
            let Some(k1) = at(p) else { break };
            let h = 0.5 * sign;
            let mid = [p[0] + 0.5 * h * k1[0], p[1] + 0.5 * h * k1[1]];
            let Some(k2) = at(mid) else { break };
            let speed = (k2[0] * k2[0] + k2[1] * k2[1]).sqrt();
            if speed < 0.02 {
                break;
            }
            let q = [p[0] + h * k2[0] / speed, p[1] + h * k2[1] / speed];
            let c = cell_of(q);
            if at(q).is_none() || (c != own && taken[c]) {
                break;
            }
            pts.push(q);
            p = q;
        }
        pts
    };
    let mut lines = Vec::new();
    for sy in (0..g).step_by(2) {
        for sx in (0..g).step_by(2) {
            let seed = [sx as f64, sy as f64];
            if taken[cell_of(seed)] || at(seed).is_none() {
                continue;
            }
            let mut back = trace(seed, -1.0, &taken);
            let fwd = trace(seed, 1.0, &taken);
            back.reverse();
            back.extend_from_slice(&fwd[1..]);
            if back.len() < 8 {
                continue;
            }
            for p in &back {
                taken[cell_of(*p)] = true;
            }
            lines.push(
                back.iter()
                    .map(|p| [lo[0] + p[0] * step[0], lo[1] + p[1] * step[1]])
                    .collect(),
            );
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_categories_are_drawn_last() {
        use plotters::style::RGBColor;
        let (big, small) = (RGBColor(1, 1, 1), RGBColor(2, 2, 2));
        let l = super::Labels {
            codes: vec![Some(1), Some(0), None, Some(0), Some(0), Some(1), Some(0)],
            categories: vec!["big".into(), "small".into()],
            colors: vec![big, small],
        };
        let xy: Vec<[f64; 2]> = (0..7).map(|i| [i as f64, 0.0]).collect();
        let keep: Vec<usize> = (0..7).collect();
        let f = super::categorical_figure("c", "c", &xy, &keep, "PCA", &l);
        let super::Plot::Embedding { colors, xy, .. } = f.plot else {
            panic!("embedding")
        };
        assert_eq!(
            colors,
            vec![
                None,
                Some(big),
                Some(big),
                Some(big),
                Some(big),
                Some(small),
                Some(small)
            ]
        );
        // Positions move with their colours.
        assert_eq!(xy[0], [2.0, 0.0]);
        assert_eq!(xy[6], [5.0, 0.0]);
    }

    #[test]
    fn near_identical_file_colours_give_way_to_the_palette() {
        let shades: Vec<String> = ["#1f77b4", "#2078b5", "#1e76b3"].map(String::from).to_vec();
        let got = super::hex_or_palette(Some(&shades), 3);
        assert_eq!(got[0], super::plots::parse_hex(super::PALETTE[0]).unwrap());
        assert_eq!(got[1], super::plots::parse_hex(super::PALETTE[1]).unwrap());
        // Distinct colours are kept.
        let distinct: Vec<String> = ["#000000", "#ffffff"].map(String::from).to_vec();
        let kept = super::hex_or_palette(Some(&distinct), 2);
        assert_eq!(kept[1], plotters::style::RGBColor(255, 255, 255));
    }

    use super::streamlines;

    #[test]
    fn streamlines_follow_the_flow_and_stay_on_the_cells() {
        // Cells on a 30 × 10 lattice moving right and slightly up: every line runs left to
        // right, stays within the cells' box, and no line is drawn for cells at rest.
        let mut xy = Vec::new();
        let mut v = Vec::new();
        for i in 0..30 {
            for j in 0..10 {
                xy.push([i as f64, j as f64 * 0.5]);
                v.extend([1.0, 0.1]);
            }
        }
        let lines = streamlines(&xy, &v, 20);
        assert!(!lines.is_empty());
        for l in &lines {
            assert!(l.windows(2).all(|w| w[1][0] > w[0][0]), "{l:?}");
            assert!(l
                .iter()
                .all(|p| (-1e-9..=29.0 + 1e-9).contains(&p[0])
                    && (-1e-9..=4.5 + 1e-9).contains(&p[1])));
        }
        let still = vec![0.0; v.len()];
        assert!(streamlines(&xy, &still, 20).is_empty());
    }
}
