//! Figures and a self-contained HTML report from a fate-mapping output (`.h5ad` with
//! CellRank's keys): everything is read from the file, so `cellfate report` works on outputs
//! of `cellfate run`, of the stage commands, and on CellRank's own files. The figures read
//! through [`FigureSource`], so the same figures come from data held in memory
//! ([`MemorySlots`], or the Python package's in-memory AnnData).

#[cfg(feature = "h5ad")]
mod anim;
pub mod extra;
pub mod html;
pub mod plots;
mod scaled;
pub mod source;

#[cfg(feature = "h5ad")]
pub use anim::animate_fates;
pub use source::{FigureSource, MemorySlots};

use std::path::PathBuf;

use plotters::style::RGBColor;
use thiserror::Error;

use cellfate_estimators::states::PALETTE;
use cellfate_kernels::{CsrError, DenseMatrix, Direction};

use crate::io::{keys, Element, NumVec};
#[cfg(feature = "h5ad")]
use crate::io::{H5adError, H5adReader};
pub use plots::{Figure, Format, FormatParseError, Overlay, Plot, Render};

/// Errors of plotting and reporting.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Reading the input.
    #[cfg(feature = "h5ad")]
    #[error(transparent)]
    H5ad(#[from] H5adError),
    /// A slot of the data (an in-memory AnnData, or a file) is missing or not what a figure
    /// needs.
    #[error("{}: slot `{slot}`: {message}", path.display())]
    Slot {
        /// The file, or the name of the data in memory.
        path: PathBuf,
        /// The slot (`obsm/X_umap`).
        slot: String,
        /// What is wrong.
        message: String,
    },
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
    /// A figure setting is out of range.
    #[error("{flag} {got}: expected {expected}")]
    Option {
        /// The flag or field.
        flag: &'static str,
        /// What was given.
        got: String,
        /// What is accepted.
        expected: String,
    },
    /// A figure kind asked for cannot be drawn from this file.
    #[error("{}: figure {kind:?} cannot be drawn: {reason}", path.display())]
    KindUnavailable {
        /// The file.
        path: PathBuf,
        /// The kind asked for (`--kind`).
        kind: String,
        /// What is missing.
        reason: String,
    },
    /// A gene asked for (`--genes`) is not in `var_names`.
    #[error("{}: --genes: {gene:?} is not in var_names{}", path.display(), hint.as_deref().map(|h| format!(" (did you mean {h:?}?)")).unwrap_or_default())]
    UnknownGene {
        /// The file.
        path: PathBuf,
        /// The gene.
        gene: String,
        /// A close var name, if any.
        hint: Option<String>,
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
    /// The figures to draw (`None`: every default kind the file supports, see
    /// [`FigureKind::default_on`]). A kind named here that the file cannot give is an error.
    pub kinds: Option<Vec<FigureKind>>,
    /// Genes for gene trends, heatmaps and phase portraits (empty: the top drivers).
    pub genes: Vec<String>,
    /// The obs column of the time in gene trends (default: the first of
    /// [`extra::TIME_KEYS`], else a diffusion pseudotime from the initial state).
    pub time_key: Option<String>,
    /// Expression in gene trends: `X` or a layer (default `Ms` when present, else `X`).
    pub data_key: Option<String>,
    /// Size and resolution of the files.
    pub render: Render,
    /// In the HTML report, figures of at least this many points are inlined as PNG, not
    /// SVG (default [`html::RASTER_FROM_POINTS`]).
    pub raster_points: usize,
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
            kinds: None,
            genes: Vec::new(),
            time_key: None,
            data_key: None,
            render: Render::default(),
            raster_points: html::RASTER_FROM_POINTS,
        }
    }
}

impl PlotOptions {
    /// The options of a figure spec (TOML `[figures]` with the flags applied), checked: an
    /// unknown kind or an out-of-range size is an error naming the field.
    #[cfg(feature = "h5ad")]
    pub fn from_spec(
        spec: &crate::pipeline::FigureSpec,
        cluster_key: Option<String>,
    ) -> Result<Self, ReportError> {
        let d = Self::default();
        let kinds = match &spec.kinds {
            Some(names) => Some(
                names
                    .iter()
                    .map(|k| {
                        k.parse::<FigureKind>().map_err(|e| ReportError::Option {
                            flag: "figures.kinds (--kind)",
                            got: format!("{k:?}"),
                            expected: e.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let opts = Self {
            basis: spec.basis.clone(),
            cluster_key,
            n_walks: spec.n_walks.unwrap_or(d.n_walks),
            seed: spec.walk_seed.unwrap_or(d.seed),
            kinds,
            genes: spec.genes.clone().unwrap_or_default(),
            time_key: spec.time_key.clone(),
            data_key: spec.data_key.clone(),
            render: Render {
                width: spec.width,
                height: spec.height,
                dpi: spec.dpi.unwrap_or(d.render.dpi),
            },
            ..d
        };
        opts.render.validate()?;
        Ok(opts)
    }
}

/// The kinds of figure (`plot --kind`), named as their files are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FigureKind {
    /// Cells coloured by cluster (`embedding_clusters`).
    Clusters,
    /// Macrostates on the embedding.
    Macrostates,
    /// Terminal states on the embedding.
    TerminalStates,
    /// One fate-probability map per lineage (`fate_<lineage>`).
    Fates,
    /// Mean fate probabilities per cluster.
    AggregatedFates,
    /// The real Schur spectrum.
    Spectrum,
    /// The coarse-grained transition matrix.
    CoarseT,
    /// Top driver genes per lineage.
    Drivers,
    /// Random walks on the embedding.
    RandomWalks,
    /// Velocity streamlines (`velocity_stream_<basis>`).
    VelocityStream,
    /// Velocity arrows on a grid (`velocity_grid_<basis>`; not drawn by default).
    VelocityGrid,
    /// One velocity arrow per cell (`velocity_arrows_<basis>`; not drawn by default).
    VelocityArrows,
    /// Gene trends along a time (`gene_trends_<lineage>`).
    GeneTrends,
    /// Lineage heatmaps of the drivers' trends (`heatmap_<lineage>`).
    Heatmap,
    /// Circular projection of the fate probabilities.
    CircularProjection,
    /// Macrostates' composition by cluster.
    MacrostateComposition,
    /// Unspliced against spliced with the fit.
    PhasePortraits,
    /// The lineage priming degree on the embedding.
    Priming,
    /// Mean absorption times on the embedding.
    AbsorptionTimes,
    /// Streamlines of each learned vector field (`uns["VecFld_<basis>"]`) on its first two
    /// dimensions (`vector_field_<basis>`).
    VectorField,
}

impl FigureKind {
    /// Every kind, in report order.
    pub const ALL: [FigureKind; 20] = [
        Self::Clusters,
        Self::Macrostates,
        Self::TerminalStates,
        Self::Fates,
        Self::AggregatedFates,
        Self::CircularProjection,
        Self::Priming,
        Self::AbsorptionTimes,
        Self::Spectrum,
        Self::CoarseT,
        Self::MacrostateComposition,
        Self::Drivers,
        Self::GeneTrends,
        Self::Heatmap,
        Self::PhasePortraits,
        Self::RandomWalks,
        Self::VelocityStream,
        Self::VelocityGrid,
        Self::VelocityArrows,
        Self::VectorField,
    ];

    /// The kind's name (`--kind`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Clusters => "clusters",
            Self::Macrostates => "macrostates",
            Self::TerminalStates => "terminal_states",
            Self::Fates => "fates",
            Self::AggregatedFates => "aggregated_fates",
            Self::Spectrum => "spectrum",
            Self::CoarseT => "coarse_T",
            Self::Drivers => "drivers",
            Self::RandomWalks => "random_walks",
            Self::VelocityStream => "velocity_stream",
            Self::VelocityGrid => "velocity_grid",
            Self::VelocityArrows => "velocity_arrows",
            Self::GeneTrends => "gene_trends",
            Self::Heatmap => "heatmap",
            Self::CircularProjection => "circular_projection",
            Self::MacrostateComposition => "macrostate_composition",
            Self::PhasePortraits => "phase_portraits",
            Self::Priming => "priming",
            Self::AbsorptionTimes => "absorption_times",
            Self::VectorField => "vector_field",
        }
    }

    /// Whether the kind is drawn when no `--kind` is given (the grid and per-cell arrows
    /// are alternatives to the streamlines, drawn on request).
    pub fn default_on(self) -> bool {
        !matches!(self, Self::VelocityGrid | Self::VelocityArrows)
    }
}

impl std::fmt::Display for FigureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown figure kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("figure kind {got:?}: expected one of {}", FigureKind::ALL.map(FigureKind::name).join(", "))]
pub struct FigureKindParseError {
    /// What was given.
    pub got: String,
}

impl std::str::FromStr for FigureKind {
    type Err = FigureKindParseError;
    fn from_str(s: &str) -> Result<Self, FigureKindParseError> {
        let t = s.trim();
        FigureKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| FigureKindParseError { got: t.into() })
    }
}

/// Two category colours closer than this (Euclidean distance in RGB, 0–255 per channel)
/// cannot be told apart on a scatter plot.
const MIN_COLOR_DISTANCE: f64 = 40.0;

/// Colours of up to 30 categories in figures: scanpy's 20 (so that up to 20 clusters look as
/// in CellRank), then 10 picked greedily to be as far (in RGB) from all the others as
/// possible, avoiding the grey of unlabelled cells. Scanpy's palette for 21–28 categories
/// repeats near-identical shades (`#c5b0d5`, `#beaed4`: 7 apart); no two colours here are
/// closer than the closest pair of scanpy's 20 (25 apart).
pub const FIGURE_PALETTE: [&str; 30] = [
    "#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b", "#e377c2", "#b5bd61",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
    "#dbdb8d", "#9edae5", "#ad494a", "#8c6d31", "#55ff00", "#004400", "#3300ff", "#ff0099",
    "#550088", "#00bb00", "#661100", "#00ff55", "#ccdd00", "#003366",
];

/// The file's colours of `k` categories (`uns["<key>_colors"]`), or the palette when they are
/// missing, unreadable or nearly identical: CellRank colours the macrostates of one cluster
/// (`Ductal_1` … `Ductal_5`) in shades of the cluster's colour, which are indistinguishable
/// on a scatter plot.
fn hex_or_palette(colors: Option<&Vec<String>>, k: usize) -> Vec<RGBColor> {
    let palette = |q: usize| {
        let hex = if k <= FIGURE_PALETTE.len() {
            FIGURE_PALETTE[q]
        } else {
            PALETTE[q % PALETTE.len()]
        };
        plots::parse_hex(hex).unwrap_or(RGBColor(128, 128, 128))
    };
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

fn strings(r: &dyn FigureSource, slot: &str) -> Option<Vec<String>> {
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

impl Labels {
    /// `(category, colour)` pairs for a legend.
    pub(crate) fn legend(&self) -> Vec<(String, RGBColor)> {
        self.categories
            .iter()
            .cloned()
            .zip(self.colors.iter().copied())
            .collect()
    }

    /// The colour of each of `cells` (`None`: unlabelled).
    pub(crate) fn colors_of(&self, cells: &[usize]) -> Vec<Option<RGBColor>> {
        cells
            .iter()
            .map(|&i| self.codes[i].map(|q| self.colors[q]))
            .collect()
    }
}

pub(crate) fn labels(r: &dyn FigureSource, key: &str) -> Option<Labels> {
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
    r: &dyn FigureSource,
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
        let (rows, cols, data) = match r.two_columns(&slot)? {
            Some((rows, data)) => (rows, 2, data),
            None => continue,
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
            colors: l.colors_of(&order),
            legend: l.legend(),
            colorbar: None,
            basis: basis.into(),
            overlay: Overlay::None,
        },
    }
}

/// Mean fate probability of each lineage in each cluster (CellRank's
/// `aggregate_fate_probabilities`, mode `bar`): one panel per lineage in its colour, one bar
/// per cluster, on a fixed 0–1 scale. `None` without fate probabilities or clusters.
fn fate_bars(
    r: &dyn FigureSource,
    d: Direction,
    cluster_key: Option<&str>,
    n: usize,
) -> Option<Figure> {
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
pub fn spectrum(r: &dyn FigureSource, d: Direction) -> Option<(Vec<f64>, Vec<f64>, Option<usize>)> {
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

/// Every figure the file supports, in report order, with notes on what was skipped; with
/// [`PlotOptions::kinds`], only those kinds, and an error for a kind the file cannot give.
pub fn figures(
    r: &dyn FigureSource,
    opts: &PlotOptions,
) -> Result<(Vec<Figure>, Vec<String>), ReportError> {
    use FigureKind as K;
    opts.render.validate()?;
    let d = Direction::Forward;
    let mut figs: Vec<Figure> = Vec::new();
    let mut notes = Vec::new();
    // Figures built per kind, in the order of FigureKind::ALL at the end.
    let mut made: Vec<(FigureKind, Vec<Figure>)> = Vec::new();
    let mut missing: Vec<(FigureKind, String)> = Vec::new();
    let want = |k: FigureKind| {
        opts.kinds
            .as_ref()
            .map_or(k.default_on(), |ks| ks.contains(&k))
    };
    let mut put = |k: FigureKind, built: extra::Built| match built {
        Ok(v) => made.push((k, v)),
        Err(why) => missing.push((k, why)),
    };
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
    let clusters = match &cluster_key {
        Some(ck) => match labels(r, ck) {
            Some(l) => Some(l),
            // A key the user named must exist; the default `clusters` may be missing.
            None if opts.cluster_key.is_some() => {
                return Err(ReportError::ClusterKey {
                    path: r.path().to_path_buf(),
                    key: ck.clone(),
                    available: source::categorical_obs_columns(r),
                })
            }
            None => None,
        },
        None => None,
    };
    let ck_name = cluster_key.clone().unwrap_or_else(|| "clusters".into());
    if want(K::Clusters) {
        put(
            K::Clusters,
            match &clusters {
                Some(l) => Ok(vec![categorical_figure(
                    "embedding_clusters",
                    &ck_name,
                    &xy,
                    &keep,
                    &basis,
                    l,
                )]),
                None => Err(format!("obs[{ck_name:?}] not found: no cluster plot")),
            },
        );
    }
    let macro_l = labels(r, &keys::macrostates(d));
    if want(K::Macrostates) {
        put(
            K::Macrostates,
            macro_l
                .as_ref()
                .map(|l| {
                    vec![categorical_figure(
                        "embedding_macrostates",
                        "macrostates",
                        &xy,
                        &keep,
                        &basis,
                        l,
                    )]
                })
                .ok_or_else(|| "no macrostates (obs macrostates_fwd)".to_string()),
        );
    }
    let term = labels(r, &keys::terminal_states(d));
    if want(K::TerminalStates) {
        put(
            K::TerminalStates,
            term.as_ref()
                .map(|l| {
                    vec![categorical_figure(
                        "embedding_terminal_states",
                        "terminal states",
                        &xy,
                        &keep,
                        &basis,
                        l,
                    )]
                })
                .ok_or_else(|| "no terminal states (obs term_states_fwd)".to_string()),
        );
    }
    let fates = extra::fates(r, d, n)?;
    if want(K::Fates) {
        put(
            K::Fates,
            fates
                .as_ref()
                .map(|f| fate_maps(f, &xy, &keep, &basis))
                .ok_or_else(|| "no fate probabilities (obsm lineages_fwd)".to_string()),
        );
    }
    if want(K::AggregatedFates) {
        put(
            K::AggregatedFates,
            fate_bars(r, d, cluster_key.as_deref(), n)
                .map(|f| vec![f])
                .ok_or_else(|| "needs fate probabilities and clusters".to_string()),
        );
    }
    if want(K::CircularProjection) {
        put(
            K::CircularProjection,
            match &fates {
                Some(f) => extra::circular_projection(f, &keep, clusters.as_ref()),
                None => Err("no fate probabilities (obsm lineages_fwd)".into()),
            },
        );
    }
    if want(K::Priming) {
        put(K::Priming, extra::priming(r, d, &xy, &keep, &basis));
    }
    if want(K::AbsorptionTimes) {
        put(
            K::AbsorptionTimes,
            extra::absorption_times(r, d, &xy, &keep, &basis),
        );
    }
    if want(K::Spectrum) {
        put(
            K::Spectrum,
            match spectrum(r, d) {
                Some((re, im, gap)) => {
                    // The macrostates computed: as many as their names.
                    let n_states = match r.read(&format!("uns/{}_names", keys::macrostates(d))) {
                        Ok(Element::Strings { values, .. }) if !values.is_empty() => {
                            Some(values.len())
                        }
                        _ => None,
                    };
                    Ok(vec![Figure {
                        name: "spectrum".into(),
                        title: "real Schur spectrum".into(),
                        plot: Plot::Spectrum {
                            re,
                            im,
                            eigengap: gap,
                            n_states,
                        },
                    }])
                }
                None => Err("no Schur decomposition (uns eigendecomposition_fwd)".into()),
            },
        );
    }
    if want(K::CoarseT) {
        let coarse = keys::coarse(d);
        put(
            K::CoarseT,
            match r.dense(&format!("uns/{coarse}/X")) {
                Ok((m, m2, values)) if m == m2 => {
                    let names = r
                        .dataframe(&format!("uns/{coarse}/obs"))
                        .map(|df| df.index)
                        .unwrap_or_else(|_| (0..m).map(|q| format!("{}", q + 1)).collect());
                    Ok(vec![Figure {
                        name: "coarse_T".into(),
                        title: "coarse-grained transition matrix".into(),
                        plot: Plot::Heatmap { names, values },
                    }])
                }
                _ => Err(format!("no coarse-grained matrix (uns {coarse})")),
            },
        );
    }
    if want(K::MacrostateComposition) {
        put(
            K::MacrostateComposition,
            extra::macrostate_composition(macro_l.as_ref(), clusters.as_ref(), &ck_name),
        );
    }
    let drivers = driver_panels(r, d, opts.n_drivers, term.as_ref());
    if want(K::Drivers) {
        put(
            K::Drivers,
            drivers
                .clone()
                .map(|panels| {
                    vec![Figure {
                        name: "drivers".into(),
                        title: "top driver genes (correlation with the fate probability)".into(),
                        plot: Plot::Drivers(panels),
                    }]
                })
                .ok_or_else(|| "no driver genes (varm terminal_lineage_drivers)".to_string()),
        );
    }
    if want(K::GeneTrends) || want(K::Heatmap) {
        let (trends, heat) = extra::gene_trend_figures(
            r,
            d,
            n,
            &opts.genes,
            opts.time_key.as_deref(),
            opts.data_key.as_deref(),
            want(K::GeneTrends),
            want(K::Heatmap),
        )?;
        if want(K::GeneTrends) {
            put(K::GeneTrends, trends);
        }
        if want(K::Heatmap) {
            put(K::Heatmap, heat);
        }
    }
    if want(K::PhasePortraits) {
        // The genes asked for, else the top two drivers of each lineage (at most six).
        let genes: Vec<String> = if opts.genes.is_empty() {
            let mut g: Vec<String> = Vec::new();
            for (_, _, top) in drivers.iter().flatten() {
                for (name, _) in top.iter().take(2) {
                    if !g.contains(name) && g.len() < 6 {
                        g.push(name.clone());
                    }
                }
            }
            g
        } else {
            opts.genes.clone()
        };
        put(
            K::PhasePortraits,
            extra::phase_portraits(r, &genes, &keep, clusters.as_ref())?,
        );
    }
    // Random walks and the projection need the transition matrix.
    let tkey = keys::transition(d);
    let velocity_kinds = [
        K::RandomWalks,
        K::VelocityStream,
        K::VelocityGrid,
        K::VelocityArrows,
    ];
    if velocity_kinds.iter().any(|&k| want(k)) {
        if r.exists(&format!("obsp/{tkey}")) {
            let t = r.transition_matrix(&tkey)?;
            if want(K::RandomWalks) && opts.n_walks > 0 {
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
                put(
                    K::RandomWalks,
                    Ok(vec![Figure {
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
                    }]),
                );
            } else if want(K::RandomWalks) {
                put(K::RandomWalks, Err("--n-walks 0".into()));
            }
            let e = DenseMatrix::from_f64(n, 2, xy.iter().flat_map(|p| [p[0], p[1]]).collect());
            let proj = cellfate_kernels::projection::project(&t, &e);
            let on_clusters = |overlay: Overlay, name: String, title: &str| Figure {
                name,
                title: title.into(),
                plot: Plot::Embedding {
                    xy: keep.iter().map(|&i| xy[i]).collect(),
                    colors: match &clusters {
                        Some(l) => l.colors_of(&keep),
                        None => vec![None; keep.len()],
                    },
                    legend: clusters.as_ref().map(Labels::legend).unwrap_or_default(),
                    colorbar: None,
                    basis: basis.clone(),
                    overlay,
                },
            };
            let b = basis.to_ascii_lowercase();
            if want(K::VelocityStream) {
                // scVelo's figure name (`velocity_embedding_stream`) with the basis.
                let mut v = vec![on_clusters(
                    Overlay::Streamlines(streamlines(&xy, &proj, 40)),
                    format!("velocity_stream_{b}"),
                    "velocity streamlines (transition-matrix projection)",
                )];
                // The randomised control (`kernel --random-control`: each gene's velocities
                // shuffled across cells with random signs, dynamo's control) beside it: its
                // streamlines should lose the direction the real ones have.
                let rnd = format!("{tkey}_rnd");
                if r.exists(&format!("obsp/{rnd}")) {
                    let t_rnd = r.transition_matrix(&rnd)?;
                    let proj_rnd = cellfate_kernels::projection::project(&t_rnd, &e);
                    let mean_len = |p: &[f64]| {
                        let (s, k) = p
                            .chunks(2)
                            .map(|c| c[0].hypot(c[1]))
                            .filter(|l| l.is_finite())
                            .fold((0.0, 0usize), |(s, k), l| (s + l, k + 1));
                        s / k.max(1) as f64
                    };
                    let (real, ctrl) = (mean_len(&proj), mean_len(&proj_rnd));
                    notes.push(format!(
                        "randomised control obsp[{rnd:?}]: mean projected velocity {ctrl:.3} against {real:.3} for the real velocities ({:.0} %)",
                        100.0 * ctrl / real.max(f64::MIN_POSITIVE)
                    ));
                    v.push(on_clusters(
                        Overlay::Streamlines(streamlines(&xy, &proj_rnd, 40)),
                        format!("velocity_stream_{b}_rnd"),
                        "randomised control: velocities shuffled per gene, random signs",
                    ));
                }
                put(K::VelocityStream, Ok(v));
            }
            if want(K::VelocityGrid) {
                put(
                    K::VelocityGrid,
                    Ok(vec![on_clusters(
                        Overlay::Arrows(grid_arrows(&xy, &proj, 25)),
                        format!("velocity_grid_{b}"),
                        "velocity on a grid (transition-matrix projection)",
                    )]),
                );
            }
            if want(K::VelocityArrows) {
                // At most 2,000 arrows: beyond that they hide each other.
                let few = subsample(n, 2000);
                put(
                    K::VelocityArrows,
                    Ok(vec![on_clusters(
                        Overlay::Arrows(cell_arrows(&xy, &proj, &few)),
                        format!("velocity_arrows_{b}"),
                        &format!(
                            "velocity per cell (transition-matrix projection; {} cells)",
                            few.len()
                        ),
                    )]),
                );
            }
        } else {
            for k in velocity_kinds {
                if want(k) {
                    put(k, Err(format!("no obsp[{tkey:?}] (a transition matrix)")));
                }
            }
        }
    }
    if want(K::VectorField) {
        put(
            K::VectorField,
            vector_field_figures(r, n, clusters.as_ref(), opts.max_points)?,
        );
    }
    // Asked-for kinds must be drawn; default ones the file cannot give are noted.
    for (k, why) in missing {
        if opts.kinds.is_some() {
            return Err(ReportError::KindUnavailable {
                path: r.path().to_path_buf(),
                kind: k.name().into(),
                reason: why,
            });
        }
        notes.push(format!("{k}: {why}"));
    }
    for k in FigureKind::ALL {
        for (_, v) in made.iter_mut().filter(|(m, _)| *m == k) {
            figs.append(v);
        }
    }
    for f in &mut figs {
        drawable_text(f);
    }
    Ok((figs, notes))
}

/// Streamlines of each learned vector field (`uns["VecFld_<basis>"]`, written by `cellfate
/// vectorfield` or `run --vectorfield`): the field's own values at the cells
/// (`obsm["velocity_<basis>_SparseVFC"]`) on the first two dimensions of its basis
/// (`obsm["X_<basis>_SparseVFC"]`), cells coloured by cluster.
fn vector_field_figures(
    r: &dyn FigureSource,
    n: usize,
    clusters: Option<&Labels>,
    max_points: usize,
) -> Result<extra::Built, ReportError> {
    let bases: Vec<String> = r
        .keys("uns")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|k| k.strip_prefix("VecFld_").map(String::from))
        .collect();
    let keep = subsample(n, max_points);
    let mut out = Vec::new();
    for b in &bases {
        let (xs, vs) = (
            format!("obsm/X_{b}_SparseVFC"),
            format!("obsm/velocity_{b}_SparseVFC"),
        );
        if !r.exists(&xs) || !r.exists(&vs) {
            continue;
        }
        let (Some((rx, x)), Some((rv, v))) = (r.two_columns(&xs)?, r.two_columns(&vs)?) else {
            continue;
        };
        if rx != n || rv != n {
            continue;
        }
        let xy: Vec<[f64; 2]> = x.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
        let name = b.to_ascii_uppercase();
        out.push(Figure {
            name: format!("vector_field_{}", crate::names::file_stem(b)),
            title: format!(
                "vector field (SparseVFC) in {name}: streamlines on its first two dimensions"
            ),
            plot: Plot::Embedding {
                xy: keep.iter().map(|&i| xy[i]).collect(),
                colors: match clusters {
                    Some(l) => l.colors_of(&keep),
                    None => vec![None; keep.len()],
                },
                legend: clusters.map(Labels::legend).unwrap_or_default(),
                colorbar: None,
                basis: name,
                overlay: Overlay::Streamlines(streamlines(&xy, &v, 40)),
            },
        });
    }
    Ok(if out.is_empty() {
        Err("no vector field (uns VecFld_<basis> with its SparseVFC values; cellfate vectorfield or run --vectorfield)".into())
    } else {
        Ok(out)
    })
}

/// One fate-probability map per lineage (`fate_<lineage>`), cells drawn from low to high.
fn fate_maps(f: &extra::Fates, xy: &[[f64; 2]], keep: &[usize], basis: &str) -> Vec<Figure> {
    // One file per lineage: names made file-safe, bounded in length and unique (`A B` and
    // `A\B` both sanitise to `A_B`: the second becomes `fate_A_B_2`).
    let mut stems = crate::names::UniqueStems::new();
    let l = f.l;
    let b = &f.values;
    f.names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            // Drawn from low to high probability (ties in file order), so that the cells with
            // high probabilities are on top instead of hidden under the others.
            let mut order = keep.to_vec();
            order.sort_by(|&a, &c| b[a * l + j].total_cmp(&b[c * l + j]).then(a.cmp(&c)));
            // With one terminal state every cell reaches it: a map of 1s says nothing unless
            // its title says why.
            let title = if l == 1 {
                format!("fate probability: {name} (the only terminal state: 1 for every cell that reaches it)")
            } else {
                format!("fate probability: {name}")
            };
            Figure {
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
                    basis: basis.into(),
                    overlay: Overlay::None,
                },
            }
        })
        .collect()
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
        Plot::Trends {
            panels,
            x_label,
            y_label,
        } => {
            for (gene, series) in panels.iter_mut() {
                fix(gene);
                series.iter_mut().for_each(|s| fix(&mut s.label));
            }
            fix(x_label);
            fix(y_label);
        }
        Plot::GeneHeatmap { genes, x_label, .. } => {
            genes.iter_mut().for_each(fix);
            fix(x_label);
        }
        Plot::Stacked {
            bars,
            legend,
            y_label,
        } => {
            bars.iter_mut().for_each(|(b, _)| fix(b));
            legend.iter_mut().for_each(|(n, _)| fix(n));
            fix(y_label);
        }
        Plot::Scatter {
            panels,
            x_label,
            y_label,
            legend,
        } => {
            for p in panels.iter_mut() {
                fix(&mut p.title);
                if let Some((label, _)) = &mut p.curve {
                    fix(label);
                }
            }
            legend.iter_mut().for_each(|(n, _)| fix(n));
            fix(x_label);
            fix(y_label);
        }
    }
}

/// The top `k` driver genes per lineage from `varm["terminal_lineage_drivers"]`.
pub(crate) fn driver_panels(
    r: &dyn FigureSource,
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
#[cfg(feature = "h5ad")]
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

/// The velocities averaged on a `g × g` grid over the cells' bounding box with a Gaussian
/// kernel one grid spacing wide; grid points with less than 30 % of the median cell mass
/// carry none. Returns the grid's origin, spacing and field (row-major, `y` major), or
/// `None` with fewer than 3 finite cells.
#[allow(clippy::type_complexity)]
fn grid_field(
    xy: &[[f64; 2]],
    v: &[f64],
    g: usize,
) -> Option<([f64; 2], [f64; 2], Vec<Option<[f64; 2]>>)> {
    let finite = |i: usize| {
        xy[i][0].is_finite()
            && xy[i][1].is_finite()
            && v[2 * i].is_finite()
            && v[2 * i + 1].is_finite()
    };
    let cells: Vec<usize> = (0..xy.len()).filter(|&i| finite(i)).collect();
    if cells.len() < 3 || g < 4 {
        return None;
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
    Some((lo, step, field))
}

/// Velocity arrows on a `g × g` grid (scVelo's `velocity_embedding_grid`): the averaged
/// field of [`streamlines`] at every grid point that carries one, each arrow scaled so that
/// the longest spans 1.5 grid spacings.
pub fn grid_arrows(xy: &[[f64; 2]], v: &[f64], g: usize) -> Vec<([f64; 2], [f64; 2])> {
    let Some((lo, step, field)) = grid_field(xy, v, g) else {
        return Vec::new();
    };
    let longest = field
        .iter()
        .flatten()
        .map(|f| ((f[0] / step[0]).powi(2) + (f[1] / step[1]).powi(2)).sqrt())
        .fold(0.0f64, f64::max);
    if longest <= 0.0 {
        return Vec::new();
    }
    let k = 1.5 / longest;
    field
        .iter()
        .enumerate()
        .filter_map(|(q, f)| {
            let f = (*f)?;
            let p = [
                lo[0] + (q % g) as f64 * step[0],
                lo[1] + (q / g) as f64 * step[1],
            ];
            Some((p, [p[0] + k * f[0], p[1] + k * f[1]]))
        })
        .collect()
}

/// One arrow per cell (scVelo's `velocity_embedding`): the cells' projected velocities,
/// scaled so that the 95th percentile of their lengths is 3 % of the embedding's extent.
pub fn cell_arrows(xy: &[[f64; 2]], v: &[f64], keep: &[usize]) -> Vec<([f64; 2], [f64; 2])> {
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in xy.iter().filter(|p| p[0].is_finite() && p[1].is_finite()) {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let extent = (hi[0] - lo[0]).max(hi[1] - lo[1]);
    let mut len: Vec<f64> = keep
        .iter()
        .map(|&i| v[2 * i].hypot(v[2 * i + 1]))
        .filter(|l| l.is_finite() && *l > 0.0)
        .collect();
    if len.is_empty() || !(extent.is_finite() && extent > 0.0) {
        return Vec::new();
    }
    len.sort_by(f64::total_cmp);
    let p95 = len[((len.len() - 1) as f64 * 0.95).round() as usize];
    let k = 0.03 * extent / p95;
    keep.iter()
        .filter(|&&i| v[2 * i].is_finite() && v[2 * i + 1].is_finite())
        .map(|&i| {
            let p = xy[i];
            (p, [p[0] + k * v[2 * i], p[1] + k * v[2 * i + 1]])
        })
        .collect()
}

/// Streamlines of per-cell velocities `v` (n × 2, row-major) on the embedding `xy`, as scVelo's
/// `velocity_embedding_stream` draws them: the velocities averaged on a `g × g` grid with a
/// Gaussian kernel one grid spacing wide (grid points with too little cell mass left empty),
/// then lines traced through the grid field by midpoint steps of half a spacing from seeds
/// on every second grid point, forward and backward, until they leave the cells, stall, or
/// come within a spacing of a line already drawn (an occupancy grid, as matplotlib's
/// streamplot). Each line runs in the direction of flow.
pub fn streamlines(xy: &[[f64; 2]], v: &[f64], g: usize) -> Vec<Vec<[f64; 2]>> {
    let Some((lo, step, field)) = grid_field(xy, v, g) else {
        return Vec::new();
    };
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
    /// Up to 30 categories get colours no closer than scanpy's own closest pair (issue 24:
    /// "a palette that separates up to 30 categories"), and none is the unlabelled grey.
    #[test]
    fn the_figure_palette_separates_30_categories() {
        let c: Vec<_> = super::FIGURE_PALETTE
            .iter()
            .map(|h| super::plots::parse_hex(h).expect("hex"))
            .collect();
        let dist = |a: &plotters::style::RGBColor, b: &plotters::style::RGBColor| {
            let d = |x: u8, y: u8| (f64::from(x) - f64::from(y)).powi(2);
            (d(a.0, b.0) + d(a.1, b.1) + d(a.2, b.2)).sqrt()
        };
        let mut min = f64::INFINITY;
        for i in 0..c.len() {
            for j in i + 1..c.len() {
                min = min.min(dist(&c[i], &c[j]));
            }
            assert!(dist(&c[i], &plotters::style::RGBColor(211, 211, 211)) > 35.0);
        }
        assert!(min >= 25.0, "closest pair {min}");
        // 30 categories take the figure palette, not the file's near-identical shades.
        let shades: Vec<String> = (0..30).map(|k| format!("#1f77{:02x}", 150 + k)).collect();
        let got = super::hex_or_palette(Some(&shades), 30);
        assert_eq!(got, c);
    }

    #[test]
    fn figure_kinds_parse_by_name() {
        for k in super::FigureKind::ALL {
            assert_eq!(k.name().parse::<super::FigureKind>(), Ok(k));
        }
        let e = "nope".parse::<super::FigureKind>().unwrap_err().to_string();
        assert!(e.contains("gene_trends") && e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn render_settings_are_checked() {
        let ok = super::Render::default();
        assert!(ok.validate().is_ok());
        for (r, flag) in [
            (super::Render { dpi: 10, ..ok }, "--dpi"),
            (
                super::Render {
                    width: Some(10),
                    ..ok
                },
                "--width",
            ),
            (
                super::Render {
                    height: Some(90_000),
                    ..ok
                },
                "--height",
            ),
        ] {
            let e = r.validate().unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    /// Grid arrows average the field; per-cell arrows follow each cell's velocity.
    #[test]
    fn velocity_arrows_point_along_the_flow() {
        let xy: Vec<[f64; 2]> = (0..400)
            .map(|i| [(i % 20) as f64, (i / 20) as f64])
            .collect();
        let v: Vec<f64> = (0..400).flat_map(|_| [1.0, 0.0]).collect();
        let grid = super::grid_arrows(&xy, &v, 10);
        assert!(!grid.is_empty());
        assert!(grid
            .iter()
            .all(|(a, b)| b[0] > a[0] && (b[1] - a[1]).abs() < 1e-12));
        let keep: Vec<usize> = (0..400).step_by(7).collect();
        let cells = super::cell_arrows(&xy, &v, &keep);
        assert_eq!(cells.len(), keep.len());
        assert!(cells
            .iter()
            .all(|(a, b)| b[0] > a[0] && (b[1] - a[1]).abs() < 1e-12));
    }
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
