//! Figures drawn with `plotters` (SVG and PNG, with an embedded DejaVu Sans font so that no
//! system font is needed): embeddings coloured by categories or by a fate probability, the
//! real Schur spectrum with its eigengap, the coarse-grained transition matrix, top driver genes
//! per lineage, random walks and the transition-matrix projection as streamlines.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use cellfate_estimators::gpcca::Eigengap;

use super::scaled::Scaled;
use super::ReportError;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const GREY: RGBColor = RGBColor(211, 211, 211);
const DARK: RGBColor = RGBColor(40, 40, 40);
/// A category with fewer than this fraction of the coloured cells is drawn enlarged.
const SMALL_CATEGORY: f64 = 0.02;
/// Left and top margins of the square heatmap (room for the row and column names).
const HEATMAP_LEFT: i32 = 150;
const HEATMAP_TOP: i32 = 120;

/// The side of a square heatmap cell for `m` rows: 60 px up to 10 rows, smaller above.
fn heatmap_cell(m: usize) -> i32 {
    (600 / m.max(1) as i32).clamp(14, 60)
}

/// `k` evenly spaced colour-bar ticks from `lo` to `hi`.
fn ticks(lo: f64, hi: f64, k: usize) -> Vec<f64> {
    (0..k)
        .map(|i| lo + (hi - lo) * i as f64 / (k - 1).max(1) as f64)
        .collect()
}

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            // The font is compiled in; registering it cannot fail for a valid TTF.
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

/// Registers the embedded font (for the other drawing modules of the report).
#[cfg(feature = "h5ad")]
pub(crate) fn ensure_font_public() {
    ensure_font();
}

/// Parses `#rrggbb` (CellRank/scanpy colours); `None` for anything else.
pub fn parse_hex(s: &str) -> Option<RGBColor> {
    let h = s.strip_prefix('#')?;
    if h.len() < 6 {
        return None;
    }
    let v = |i: usize| u8::from_str_radix(h.get(i..i + 2)?, 16).ok();
    Some(RGBColor(v(0)?, v(2)?, v(4)?))
}

/// Viridis, interpolated between 9 anchors; `t` in [0, 1].
pub fn viridis(t: f64) -> RGBColor {
    const A: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (A.len() - 1) as f64;
    let i = (x.floor() as usize).min(A.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    RGBColor(
        lerp(A[i].0, A[i + 1].0),
        lerp(A[i].1, A[i + 1].1),
        lerp(A[i].2, A[i + 1].2),
    )
}

/// What is drawn over an embedding.
#[derive(Clone, Debug)]
pub enum Overlay {
    /// Nothing.
    None,
    /// Random walks (cell indices per walk): a line per walk, start black, end red.
    Walks(Vec<Vec<usize>>),
    /// Arrows `(from, to)` in embedding coordinates.
    Arrows(Vec<([f64; 2], [f64; 2])>),
    /// Streamlines (polylines in embedding coordinates, in the direction of flow), drawn
    /// with an arrowhead at their middle.
    Streamlines(Vec<Vec<[f64; 2]>>),
    /// A closed polygon with a label at each vertex (the lineages of a circular projection).
    Polygon(Vec<([f64; 2], String)>),
}

/// One lineage's fitted trend in a gene-trend panel.
#[derive(Clone, Debug)]
pub struct TrendSeries {
    /// Lineage name.
    pub label: String,
    /// Lineage colour.
    pub color: RGBColor,
    /// Time grid.
    pub t: Vec<f64>,
    /// Fitted mean on the grid.
    pub mean: Vec<f64>,
    /// Lower end of the confidence band.
    pub lower: Vec<f64>,
    /// Upper end of the confidence band.
    pub upper: Vec<f64>,
}

/// One scatter panel (a gene's phase portrait): `x`, `y` per cell, coloured, with an
/// optional fitted curve.
#[derive(Clone, Debug)]
pub struct ScatterPanel {
    /// Panel title (the gene).
    pub title: String,
    /// Horizontal coordinate per cell.
    pub x: Vec<f64>,
    /// Vertical coordinate per cell.
    pub y: Vec<f64>,
    /// Colour per cell (`None`: grey).
    pub colors: Vec<Option<RGBColor>>,
    /// A fitted curve (points in data coordinates) and its legend label.
    pub curve: Option<(String, Vec<(f64, f64)>)>,
}

/// Driver-gene panels: `(lineage, colour, [(gene, correlation)])`.
pub type DriverPanels = Vec<(String, RGBColor, Vec<(String, f64)>)>;

/// The data of one figure.
#[derive(Clone, Debug)]
pub enum Plot {
    /// Cells on a 2-D embedding, coloured per cell (`None` = grey, drawn first).
    Embedding {
        /// Coordinates.
        xy: Vec<[f64; 2]>,
        /// Colour per cell.
        colors: Vec<Option<RGBColor>>,
        /// Legend entries.
        legend: Vec<(String, RGBColor)>,
        /// A colour bar (min, max) for continuous values.
        colorbar: Option<(f64, f64)>,
        /// Basis name for the axis labels.
        basis: String,
        /// Drawn on top.
        overlay: Overlay,
    },
    /// Real parts of the Schur eigenvalues by index, the eigengap marked.
    Spectrum {
        /// Real parts.
        re: Vec<f64>,
        /// Imaginary parts.
        im: Vec<f64>,
        /// CellRank's eigengap index (0-based: the gap lies after eigenvalue `index + 1`,
        /// 1-based), labelled as [`Eigengap`] says it.
        eigengap: Option<usize>,
        /// The number of macrostates computed (marked after that many eigenvalues).
        n_states: Option<usize>,
    },
    /// A square matrix with row/column names (the coarse-grained transition matrix).
    Heatmap {
        /// Row and column names.
        names: Vec<String>,
        /// Row-major values.
        values: Vec<f64>,
    },
    /// Top driver genes per lineage: `(lineage, colour, [(gene, correlation)])`.
    Drivers(DriverPanels),
    /// Mean fate probabilities per cluster, one panel per lineage (CellRank's
    /// `aggregate_fate_probabilities`, mode `bar`): bars on a fixed 0–1 scale.
    FateBars(DriverPanels),
    /// Gene trends along a time: one panel per gene `(gene, series per lineage)`.
    Trends {
        /// Panels.
        panels: Vec<(String, Vec<TrendSeries>)>,
        /// Name of the time axis.
        x_label: String,
        /// Name of the expression axis.
        y_label: String,
    },
    /// Genes × time bins, each row scaled to 0–1 (CellRank's lineage `heatmap`).
    GeneHeatmap {
        /// Row names.
        genes: Vec<String>,
        /// Row-major values, `genes.len() × n_cols`.
        values: Vec<f64>,
        /// Columns (time bins).
        n_cols: usize,
        /// Name of the time axis.
        x_label: String,
    },
    /// Stacked bars of fractions `(bar, fractions per category)` with the categories'
    /// legend (CellRank's macrostate composition).
    Stacked {
        /// Bars.
        bars: Vec<(String, Vec<f64>)>,
        /// Category names and colours.
        legend: Vec<(String, RGBColor)>,
        /// Vertical axis name.
        y_label: String,
    },
    /// Scatter panels with axis names and a colour legend (phase portraits).
    Scatter {
        /// Panels.
        panels: Vec<ScatterPanel>,
        /// Horizontal axis name.
        x_label: String,
        /// Vertical axis name.
        y_label: String,
        /// Colour legend.
        legend: Vec<(String, RGBColor)>,
    },
}

/// Size and resolution of the figures written: `--width` and `--height` in pixels at
/// 100 dpi (default: each figure's own size), `--dpi` scales everything (a 200-dpi PNG is
/// the same figure at twice the resolution).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Render {
    /// Width in pixels at 100 dpi.
    pub width: Option<u32>,
    /// Height in pixels at 100 dpi.
    pub height: Option<u32>,
    /// Resolution (100: one pixel per layout pixel).
    pub dpi: u32,
}

impl Default for Render {
    fn default() -> Self {
        Self {
            width: None,
            height: None,
            dpi: 100,
        }
    }
}

impl Render {
    /// Widths and heights accepted (pixels at 100 dpi).
    pub const SIZE_RANGE: std::ops::RangeInclusive<u32> = 200..=8000;
    /// Resolutions accepted.
    pub const DPI_RANGE: std::ops::RangeInclusive<u32> = 25..=600;

    /// Checks the settings: an error names the flag and what is accepted.
    pub fn validate(&self) -> Result<(), ReportError> {
        let bad = |flag: &'static str, got: u32, expected: String| {
            Err(ReportError::Option {
                flag,
                got: got.to_string(),
                expected,
            })
        };
        for (flag, v) in [("--width", self.width), ("--height", self.height)] {
            if let Some(v) = v.filter(|v| !Self::SIZE_RANGE.contains(v)) {
                return bad(
                    flag,
                    v,
                    format!(
                        "pixels from {} to {}",
                        Self::SIZE_RANGE.start(),
                        Self::SIZE_RANGE.end()
                    ),
                );
            }
        }
        if !Self::DPI_RANGE.contains(&self.dpi) {
            return bad(
                "--dpi",
                self.dpi,
                format!(
                    "from {} to {}",
                    Self::DPI_RANGE.start(),
                    Self::DPI_RANGE.end()
                ),
            );
        }
        Ok(())
    }

    fn scale(&self) -> f64 {
        f64::from(self.dpi) / 100.0
    }
}

/// One figure: a file name stem, a title and its data.
#[derive(Clone, Debug)]
pub struct Figure {
    /// File name stem (`embedding_clusters`).
    pub name: String,
    /// Title drawn on top and used as caption.
    pub title: String,
    /// Data.
    pub plot: Plot,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics.
    Svg,
    /// Portable network graphics.
    Png,
}

impl Format {
    /// The file extension (`svg`, `png`).
    pub fn extension(self) -> &'static str {
        match self {
            Self::Svg => "svg",
            Self::Png => "png",
        }
    }
}

/// An unknown figure format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("format {got:?}: expected svg or png")]
pub struct FormatParseError {
    /// What was given.
    pub got: String,
}

impl std::str::FromStr for Format {
    type Err = FormatParseError;
    fn from_str(s: &str) -> Result<Self, FormatParseError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "svg" => Ok(Self::Svg),
            "png" => Ok(Self::Png),
            other => Err(FormatParseError { got: other.into() }),
        }
    }
}

/// A failure of the plotting backend while drawing, before the figure is known.
#[derive(Debug)]
struct DrawFailure {
    detail: String,
}

impl DrawFailure {
    fn in_figure(self, figure: &str, format: Format) -> ReportError {
        ReportError::Draw {
            figure: figure.into(),
            format: format.extension(),
            detail: self.detail,
        }
    }
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> DrawFailure {
    DrawFailure {
        detail: e.to_string(),
    }
}

impl Figure {
    /// Pixel size (at 100 dpi) of the figure's own layout.
    pub fn size(&self) -> (u32, u32) {
        let grid =
            |n: usize, cols: usize| (cols.min(n).max(1) as u32, n.div_ceil(cols).max(1) as u32);
        match &self.plot {
            Plot::Embedding { .. } => (760, 560),
            Plot::Spectrum { .. } => (640, 420),
            Plot::Heatmap { names, .. } => {
                let m = names.len().max(1) as u32;
                let cell = heatmap_cell(names.len()) as u32;
                (
                    HEATMAP_LEFT as u32 + cell * m + 100,
                    56 + HEATMAP_TOP as u32 + cell * m,
                )
            }
            Plot::Drivers(p) => (
                360 * (p.len() as u32).clamp(1, 4),
                (110 + 26 * p.iter().map(|q| q.2.len()).max().unwrap_or(0) as u32).max(240)
                    * (p.len() as u32).div_ceil(4).max(1),
            ),
            Plot::FateBars(p) => (
                380 * (p.len() as u32).clamp(1, 4),
                (140 + 22 * p.first().map_or(1, |q| q.2.len()) as u32).clamp(300, 900)
                    * (p.len() as u32).div_ceil(4).max(1),
            ),
            Plot::Trends { panels, .. } => {
                let (c, r) = grid(panels.len(), 3);
                (320 * c + 170, 40 + 260 * r)
            }
            Plot::GeneHeatmap { genes, .. } => {
                (760, (34 + 60 + 16 * genes.len() as u32 + 50).max(260))
            }
            Plot::Stacked { bars, legend, .. } => (
                (160 + 46 * bars.len() as u32).max(420) + 200,
                (420u32).max(60 + 20 * legend.len() as u32),
            ),
            Plot::Scatter { panels, legend, .. } => {
                let (c, r) = grid(panels.len(), 3);
                (
                    300 * c + if legend.is_empty() { 0 } else { 200 },
                    40 + 280 * r,
                )
            }
        }
    }

    /// How many points the figure draws (cells of an embedding or of scatter panels): the
    /// report inlines figures of many points as PNG.
    pub fn n_points(&self) -> usize {
        match &self.plot {
            Plot::Embedding { xy, .. } => xy.len(),
            Plot::Scatter { panels, .. } => panels.iter().map(|p| p.x.len()).sum(),
            _ => 0,
        }
    }

    /// The logical and physical pixel sizes under `render`.
    fn sizes(&self, render: &Render) -> ((u32, u32), (u32, u32)) {
        let (w0, h0) = self.size();
        let logical = (render.width.unwrap_or(w0), render.height.unwrap_or(h0));
        let s = render.scale();
        let physical = (
            ((f64::from(logical.0) * s).round() as u32).max(1),
            ((f64::from(logical.1) * s).round() as u32).max(1),
        );
        (logical, physical)
    }

    /// The figure as an SVG document (its own size, 100 dpi).
    pub fn svg(&self) -> Result<String, ReportError> {
        self.svg_with(&Render::default())
    }

    /// The figure as an SVG document under `render`.
    pub fn svg_with(&self, render: &Render) -> Result<String, ReportError> {
        ensure_font();
        let (_, physical) = self.sizes(render);
        let mut s = String::new();
        {
            let root = Scaled {
                inner: SVGBackend::with_string(&mut s, physical),
                scale: render.scale(),
            }
            .into_drawing_area();
            self.draw(&root)
                .and_then(|()| root.present().map_err(draw_err))
                .map_err(|e| e.in_figure(&self.name, Format::Svg))?;
        }
        Ok(s)
    }

    /// Writes the figure to `dir/<name>.<ext>` (through an exclusive temporary file renamed
    /// at the end, see [`crate::output`]).
    pub fn write(&self, dir: &Path, format: Format) -> Result<PathBuf, ReportError> {
        self.write_with(dir, format, &Render::default())
    }

    /// Like [`Self::write`], at the size and resolution of `render`.
    pub fn write_with(
        &self,
        dir: &Path,
        format: Format,
        render: &Render,
    ) -> Result<PathBuf, ReportError> {
        let path = dir.join(format!("{}.{}", self.name, format.extension()));
        let bytes = match format {
            Format::Svg => self.svg_with(render)?.into_bytes(),
            Format::Png => self.png_with(render)?,
        };
        crate::output::write_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// The figure as PNG bytes (drawn in memory: plotters' own file output would open the
    /// target path directly).
    pub fn png(&self) -> Result<Vec<u8>, ReportError> {
        self.png_with(&Render::default())
    }

    /// The figure as PNG bytes under `render`.
    pub fn png_with(&self, render: &Render) -> Result<Vec<u8>, ReportError> {
        ensure_font();
        let (_, (w, h)) = self.sizes(render);
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        {
            let root = Scaled {
                inner: BitMapBackend::with_buffer(&mut rgb, (w, h)),
                scale: render.scale(),
            }
            .into_drawing_area();
            self.draw(&root)
                .and_then(|()| root.present().map_err(draw_err))
                .map_err(|e| e.in_figure(&self.name, Format::Png))?;
        }
        let mut out = Vec::new();
        let encoded = (|| {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Default);
            // The physical resolution, so that viewers and word processors size it right.
            let ppm = (f64::from(render.dpi) / 0.0254).round() as u32;
            enc.set_pixel_dims(Some(png::PixelDimensions {
                xppu: ppm,
                yppu: ppm,
                unit: png::Unit::Meter,
            }));
            enc.write_header()?.write_image_data(&rgb)
        })();
        encoded.map_err(|e| ReportError::Draw {
            figure: self.name.clone(),
            format: "png",
            detail: format!("encoding the PNG: {e}"),
        })?;
        Ok(out)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawFailure>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(draw_err)?;
        let (w, _) = root.dim_in_pixel();
        root.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, 16),
            ("sans-serif", 18)
                .into_font()
                .color(&DARK)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(draw_err)?;
        let body = root.margin(34, 8, 8, 8);
        match &self.plot {
            Plot::Embedding {
                xy,
                colors,
                legend,
                colorbar,
                basis,
                overlay,
            } => draw_embedding(&body, xy, colors, legend, *colorbar, basis, overlay),
            Plot::Spectrum {
                re,
                im,
                eigengap,
                n_states,
            } => draw_spectrum(&body, re, im, *eigengap, *n_states),
            Plot::Heatmap { names, values } => draw_heatmap(&body, names, values),
            Plot::Drivers(panels) => draw_drivers(&body, panels, None, "correlation"),
            Plot::FateBars(panels) => {
                draw_drivers(&body, panels, Some(1.0), "mean fate probability")
            }
            Plot::Trends {
                panels,
                x_label,
                y_label,
            } => draw_trends(&body, panels, x_label, y_label),
            Plot::GeneHeatmap {
                genes,
                values,
                n_cols,
                x_label,
            } => draw_gene_heatmap(&body, genes, values, *n_cols, x_label),
            Plot::Stacked {
                bars,
                legend,
                y_label,
            } => draw_stacked(&body, bars, legend, y_label),
            Plot::Scatter {
                panels,
                x_label,
                y_label,
                legend,
            } => draw_scatter(&body, panels, x_label, y_label, legend),
        }
    }
}

/// `v` with two decimals, never `-0.00` (a coarse transition probability of −1e−17 is 0).
fn two_decimals(v: f64) -> String {
    let s = format!("{v:.2}");
    if s == "-0.00" {
        "0.00".into()
    } else {
        s
    }
}

fn bounds(xy: &[[f64; 2]]) -> ([f64; 2], [f64; 2]) {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in xy {
        for k in 0..2 {
            if p[k].is_finite() {
                lo[k] = lo[k].min(p[k]);
                hi[k] = hi[k].max(p[k]);
            }
        }
    }
    for k in 0..2 {
        if lo[k] > hi[k] {
            (lo[k], hi[k]) = (0.0, 1.0);
        }
        if hi[k] - lo[k] < 1e-12 {
            hi[k] = lo[k] + 1.0;
        }
        let pad = 0.03 * (hi[k] - lo[k]);
        lo[k] -= pad;
        hi[k] += pad;
    }
    (lo, hi)
}

#[allow(clippy::too_many_arguments)]
fn draw_embedding<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    xy: &[[f64; 2]],
    colors: &[Option<RGBColor>],
    legend: &[(String, RGBColor)],
    colorbar: Option<(f64, f64)>,
    basis: &str,
    overlay: &Overlay,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let side = if legend.is_empty() && colorbar.is_none() {
        0
    } else {
        200
    };
    let (plot, key) = area.split_horizontally(w.saturating_sub(side));
    let (pw, ph) = plot.dim_in_pixel();
    // A polygon overlay (the circular projection's lineages) is inside the drawing.
    let (lo, hi) = match overlay {
        Overlay::Polygon(v) => {
            // Room for the labels outside the corners (the polygon is centred on 0).
            let mut all = xy.to_vec();
            all.extend(v.iter().map(|p| [1.3 * p.0[0], 1.15 * p.0[1]]));
            bounds(&all)
        }
        _ => bounds(xy),
    };
    let (x0, y0, x1, y1) = (24.0, 4.0, pw as f64 - 6.0, ph as f64 - 24.0);
    let map = |p: [f64; 2]| -> (i32, i32) {
        (
            (x0 + (p[0] - lo[0]) / (hi[0] - lo[0]) * (x1 - x0)).round() as i32,
            (y1 - (p[1] - lo[1]) / (hi[1] - lo[1]) * (y1 - y0)).round() as i32,
        )
    };
    let n = xy.len();
    let radius = if n > 20_000 {
        1
    } else if n > 3_000 {
        2
    } else {
        3
    };
    // Categories (a legend) with few cells are drawn larger: a 30-cell state among 100,000
    // cells would otherwise vanish.
    let small: Vec<RGBColor> = if legend.is_empty() {
        Vec::new()
    } else {
        let coloured = colors.iter().filter(|c| c.is_some()).count();
        legend
            .iter()
            .map(|(_, c)| *c)
            .filter(|c| {
                let k = colors.iter().filter(|x| **x == Some(*c)).count();
                k > 0 && (k as f64) < SMALL_CATEGORY * coloured as f64
            })
            .collect()
    };
    // Greys first, then the coloured cells on top.
    for pass in [false, true] {
        for (p, c) in xy.iter().zip(colors) {
            if c.is_some() != pass || !p[0].is_finite() || !p[1].is_finite() {
                continue;
            }
            let radius = match c {
                Some(c) if small.contains(c) => radius.max(2) + 2,
                _ => radius,
            };
            let mut color = c.unwrap_or(GREY);
            if matches!(overlay, Overlay::Arrows(_)) {
                // Lighter points under arrows.
                let l = |v: u8| (v as f64 + 0.55 * (255.0 - v as f64)).round() as u8;
                color = RGBColor(l(color.0), l(color.1), l(color.2));
            }
            plot.draw(&Circle::new(map(*p), radius, color.filled()))
                .map_err(draw_err)?;
        }
    }
    let font = ("sans-serif", 13).into_font().color(&DARK);
    plot.draw(&Text::new(
        format!("{basis} 1"),
        (((x0 + x1) / 2.0) as i32, (ph as i32) - 10),
        font.pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(draw_err)?;
    plot.draw(&Text::new(
        format!("{basis} 2"),
        (10, ((y0 + y1) / 2.0) as i32),
        font.pos(Pos::new(HPos::Center, VPos::Center))
            .transform(FontTransform::Rotate270),
    ))
    .map_err(draw_err)?;
    match overlay {
        Overlay::None | Overlay::Polygon(_) => {}
        Overlay::Walks(walks) => {
            // Each walk coloured by its progress (viridis, dark at the start, yellow at the
            // end), in WALK_COLOR_BINS pieces so that long walks stay a few paths each.
            const WALK_COLOR_BINS: usize = 12;
            for walk in walks {
                let pts: Vec<(i32, i32)> = walk.iter().map(|&i| map(xy[i])).collect();
                let steps = pts.len().saturating_sub(1);
                for b in 0..WALK_COLOR_BINS.min(steps) {
                    let (lo, hi) = (
                        b * steps / WALK_COLOR_BINS.min(steps),
                        (b + 1) * steps / WALK_COLOR_BINS.min(steps),
                    );
                    let t = (b as f64 + 0.5) / WALK_COLOR_BINS.min(steps) as f64;
                    let c = viridis(t);
                    plot.draw(&PathElement::new(
                        pts[lo..=hi].to_vec(),
                        RGBAColor(c.0, c.1, c.2, 0.7).stroke_width(1),
                    ))
                    .map_err(draw_err)?;
                }
                if let (Some(a), Some(b)) = (pts.first(), pts.last()) {
                    plot.draw(&Circle::new(*a, 4, BLACK.filled()))
                        .map_err(draw_err)?;
                    plot.draw(&Circle::new(*b, 4, RED.filled()))
                        .map_err(draw_err)?;
                }
            }
        }
        Overlay::Arrows(arrows) => {
            for (from, to) in arrows {
                let (a, b) = (map(*from), map(*to));
                let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
                let len = (dx * dx + dy * dy).sqrt();
                if len < 1.0 {
                    continue;
                }
                let head = (0.35 * len).clamp(4.0, 9.0);
                let (ux, uy) = (dx / len, dy / len);
                let wing = |s: f64| {
                    (
                        (b.0 as f64 - head * (ux * 0.866 - s * uy * 0.5)).round() as i32,
                        (b.1 as f64 - head * (uy * 0.866 + s * ux * 0.5)).round() as i32,
                    )
                };
                let style = DARK.stroke_width(2);
                plot.draw(&PathElement::new(vec![a, b], style))
                    .map_err(draw_err)?;
                plot.draw(&PathElement::new(vec![wing(1.0), b, wing(-1.0)], style))
                    .map_err(draw_err)?;
            }
        }
        Overlay::Streamlines(lines) => {
            let style = RGBAColor(25, 25, 25, 0.8).stroke_width(1);
            for line in lines {
                let pts: Vec<(i32, i32)> = line.iter().map(|&p| map(p)).collect();
                if pts.len() < 2 {
                    continue;
                }
                plot.draw(&PathElement::new(pts.clone(), style))
                    .map_err(draw_err)?;
                // Arrowhead at the middle, pointing along the flow.
                let m = pts.len() / 2;
                let (a, b) = (pts[m - 1], pts[m]);
                let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
                let len = (dx * dx + dy * dy).sqrt();
                if len < 0.5 {
                    continue;
                }
                let (ux, uy) = (dx / len, dy / len);
                let head = 6.0;
                let wing = |s: f64| {
                    (
                        (b.0 as f64 - head * (ux * 0.866 - s * uy * 0.5)).round() as i32,
                        (b.1 as f64 - head * (uy * 0.866 + s * ux * 0.5)).round() as i32,
                    )
                };
                plot.draw(&Polygon::new(
                    vec![wing(1.0), b, wing(-1.0)],
                    RGBColor(25, 25, 25).filled(),
                ))
                .map_err(draw_err)?;
            }
        }
    }
    if let Overlay::Polygon(vertices) = overlay {
        let pts: Vec<(i32, i32)> = vertices.iter().map(|(p, _)| map(*p)).collect();
        if let Some(&first) = pts.first() {
            let mut closed = pts.clone();
            closed.push(first);
            plot.draw(&PathElement::new(closed, DARK.stroke_width(1)))
                .map_err(draw_err)?;
        }
        let (cx, cy) = (f64::from(pw) / 2.0, f64::from(ph) / 2.0);
        for ((label, _), &(x, y)) in vertices.iter().map(|(p, l)| (l, p)).zip(&pts) {
            // Outside the polygon, away from its centre.
            let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
            let d = (dx * dx + dy * dy).sqrt().max(1.0);
            let at = (
                (f64::from(x) + 14.0 * dx / d).round() as i32,
                (f64::from(y) + 14.0 * dy / d).round() as i32,
            );
            let h = if dx.abs() < 0.3 * d {
                HPos::Center
            } else if dx > 0.0 {
                HPos::Left
            } else {
                HPos::Right
            };
            plot.draw(&Text::new(
                label.clone(),
                at,
                ("sans-serif", 15)
                    .into_font()
                    .color(&DARK)
                    .pos(Pos::new(h, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
    }
    // Legend or colour bar.
    if !legend.is_empty() {
        draw_legend(&key, legend)?;
    }
    if let Some((vmin, vmax)) = colorbar {
        let (top, bottom) = (20, (h as i32 - 60).max(80));
        for y in top..=bottom {
            let t = (bottom - y) as f64 / (bottom - top) as f64;
            key.draw(&Rectangle::new([(12, y), (30, y + 1)], viridis(t).filled()))
                .map_err(draw_err)?;
        }
        let style = ("sans-serif", 13)
            .into_font()
            .color(&DARK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for v in ticks(vmin, vmax, 5) {
            let f = if vmax > vmin {
                (v - vmin) / (vmax - vmin)
            } else {
                0.0
            };
            let y = bottom - (f * (bottom - top) as f64).round() as i32;
            key.draw(&PathElement::new(vec![(30, y), (34, y)], DARK))
                .map_err(draw_err)?;
            key.draw(&Text::new(two_decimals(v), (36, y), style.clone()))
                .map_err(draw_err)?;
        }
    }
    Ok(())
}

fn draw_spectrum<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    re: &[f64],
    im: &[f64],
    eigengap: Option<usize>,
    n_states: Option<usize>,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    let k = re.len().max(1);
    let lo = re.iter().copied().fold(f64::INFINITY, f64::min).min(1.0);
    let (ymin, ymax) = if lo.is_finite() {
        (
            lo - 0.05 * (1.0 - lo).max(0.01),
            1.0 + 0.05 * (1.0 - lo).max(0.01),
        )
    } else {
        (0.0, 1.05)
    };
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.5f64..(k as f64 + 0.5), ymin..ymax)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("eigenvalue (by decreasing real part)")
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .y_desc("Re(λ)")
        .disable_mesh()
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    // The macrostates computed first, so that the eigengap's dashes stay visible on top.
    if let Some(m) = n_states.filter(|&m| m >= 1 && m <= k) {
        let x = m as f64 + 0.5;
        let green = RGBColor(44, 160, 44);
        chart
            .draw_series(LineSeries::new(
                vec![(x, ymin), (x, ymax)],
                green.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(format!("{m} macrostates computed"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], green.stroke_width(2))
            });
    }
    if let Some(g) = eigengap {
        let x = g as f64 + 1.5;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, ymin), (x, ymax)],
                6,
                4,
                RED.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(Eigengap::from_index(g).to_string())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
    }
    let real: Vec<(f64, f64)> = (0..re.len())
        .filter(|&i| im.get(i).is_none_or(|v| v.abs() <= 1e-12))
        .map(|i| (i as f64 + 1.0, re[i]))
        .collect();
    let cplx: Vec<(f64, f64)> = (0..re.len())
        .filter(|&i| im.get(i).is_some_and(|v| v.abs() > 1e-12))
        .map(|i| (i as f64 + 1.0, re[i]))
        .collect();
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    chart
        .draw_series(real.iter().map(|&p| Circle::new(p, 5, blue.filled())))
        .map_err(draw_err)?
        .label("real")
        .legend(move |(x, y)| Circle::new((x + 8, y), 5, blue.filled()));
    if !cplx.is_empty() {
        chart
            .draw_series(
                cplx.iter()
                    .map(|&p| TriangleMarker::new(p, 6, orange.filled())),
            )
            .map_err(draw_err)?
            .label("complex pair")
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, orange.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    names: &[String],
    values: &[f64],
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    let m = names.len();
    if m == 0 {
        return Ok(());
    }
    let (w, h) = area.dim_in_pixel();
    let (left, top) = (HEATMAP_LEFT, HEATMAP_TOP);
    // The figure is sized for heatmap_cell(m); a --width/--height shrinks or grows the cells.
    let cell = (((w as i32 - left - 80).min(h as i32 - top - 10)) / m as i32).max(8);
    let small = ("sans-serif", 13).into_font().color(&DARK);
    for (q, name) in names.iter().enumerate() {
        let y = top + cell * q as i32 + cell / 2;
        area.draw(&Text::new(
            name.clone(),
            (left - 6, y),
            small.pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(draw_err)?;
        let x = left + cell * q as i32 + cell / 2;
        area.draw(&Text::new(
            name.clone(),
            (x, top - 6),
            small
                .pos(Pos::new(HPos::Left, VPos::Center))
                .transform(FontTransform::Rotate270),
        ))
        .map_err(draw_err)?;
    }
    for i in 0..m {
        for j in 0..m {
            let v = values.get(i * m + j).copied().unwrap_or(f64::NAN);
            let (x, y) = (left + cell * j as i32, top + cell * i as i32);
            area.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                viridis(v).filled(),
            ))
            .map_err(draw_err)?;
            if cell >= 34 {
                let color = if v > 0.6 { DARK } else { WHITE };
                area.draw(&Text::new(
                    two_decimals(v),
                    (x + cell / 2, y + cell / 2),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&color)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                ))
                .map_err(draw_err)?;
            }
        }
    }
    // Colour bar 0..1.
    draw_unit_colorbar(
        area,
        left + cell * m as i32 + 16,
        top,
        top + cell * m as i32,
        &small,
    )
}

/// A vertical 0–1 viridis colour bar at `x` from `top` (1) to `bottom` (0) with five ticks.
fn draw_unit_colorbar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x: i32,
    top: i32,
    bottom: i32,
    font: &TextStyle,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    for y in top..bottom {
        let t = (bottom - y) as f64 / (bottom - top).max(1) as f64;
        area.draw(&Rectangle::new(
            [(x, y), (x + 14, y + 1)],
            viridis(t).filled(),
        ))
        .map_err(draw_err)?;
    }
    for v in ticks(0.0, 1.0, 5) {
        let y = bottom - (v * (bottom - top) as f64).round() as i32;
        area.draw(&PathElement::new(vec![(x + 14, y), (x + 18, y)], DARK))
            .map_err(draw_err)?;
        area.draw(&Text::new(
            two_decimals(v),
            (x + 20, y),
            font.pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// Horizontal bars per panel with a common x-axis named `axis`; `scale`: the value of a full
/// bar (`None`: the largest |value| of all panels, rounded up to a tenth, so that panels
/// compare).
fn draw_drivers<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panels: &DriverPanels,
    scale: Option<f64>,
    axis: &str,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    if panels.is_empty() {
        return Ok(());
    }
    let cols = panels.len().clamp(1, 4);
    let rows = panels.len().div_ceil(cols);
    let cells = area.split_evenly((rows, cols));
    let vmax = scale.unwrap_or_else(|| {
        let m = panels
            .iter()
            .flat_map(|p| p.2.iter().map(|(_, r)| r.abs()))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        ((m * 10.0).ceil() / 10.0).max(0.1)
    });
    let k = panels.iter().map(|p| p.2.len()).max().unwrap_or(0).max(1);
    for ((lineage, color, genes), a) in panels.iter().zip(cells.iter()) {
        let (w, _) = a.dim_in_pixel();
        a.draw(&Text::new(
            lineage.clone(),
            (w as i32 / 2, 10),
            ("sans-serif", 15)
                .into_font()
                .color(&DARK)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(draw_err)?;
        let body = a.margin(24, 4, 4, 4);
        let (bw, bh) = body.dim_in_pixel();
        // Room below the bars for the axis, its ticks and its name.
        let row_h = ((bh as i32 - 56) / k as i32).clamp(6, 26);
        // Wide enough for the longest label (about 7 px a character at 12 px).
        let longest = genes
            .iter()
            .map(|(g, _)| g.chars().count())
            .max()
            .unwrap_or(0);
        let label_w = (longest as i32 * 7 + 8).clamp(60, 200);
        let bar_max = (bw as i32 - label_w - 50).max(10);
        for (q, (gene, r)) in genes.iter().enumerate() {
            let y = q as i32 * row_h;
            let len = ((r.abs() / vmax).min(1.0) * bar_max as f64).round() as i32;
            let fill = if *r >= 0.0 { *color } else { GREY };
            body.draw(&Rectangle::new(
                [(label_w, y + 2), (label_w + len.max(1), y + row_h - 2)],
                fill.filled(),
            ))
            .map_err(draw_err)?;
            body.draw(&Text::new(
                gene.clone(),
                (label_w - 4, y + row_h / 2),
                ("sans-serif", 12)
                    .into_font()
                    .color(&DARK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(draw_err)?;
            body.draw(&Text::new(
                format!("{r:.2}"),
                (label_w + len + 4, y + row_h / 2),
                ("sans-serif", 11)
                    .into_font()
                    .color(&DARK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
        // The x-axis: |value| from 0 to the common scale.
        let y_axis = k as i32 * row_h + 4;
        body.draw(&PathElement::new(
            vec![(label_w, y_axis), (label_w + bar_max, y_axis)],
            DARK,
        ))
        .map_err(draw_err)?;
        let tick_font = ("sans-serif", 11)
            .into_font()
            .color(&DARK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for v in ticks(0.0, vmax, 3) {
            let x = label_w + ((v / vmax) * bar_max as f64).round() as i32;
            body.draw(&PathElement::new(vec![(x, y_axis), (x, y_axis + 4)], DARK))
                .map_err(draw_err)?;
            body.draw(&Text::new(
                two_decimals(v),
                (x, y_axis + 6),
                tick_font.clone(),
            ))
            .map_err(draw_err)?;
        }
        body.draw(&Text::new(
            if scale.is_none() {
                format!("|{axis}| (grey: negative)")
            } else {
                axis.to_string()
            },
            (label_w + bar_max / 2, y_axis + 24),
            tick_font.clone(),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// A grid of `n` panels with at most `cols` columns.
fn panel_grid<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    n: usize,
    cols: usize,
) -> Vec<DrawingArea<DB, Shift>> {
    let cols = cols.min(n).max(1);
    area.split_evenly((n.div_ceil(cols).max(1), cols))
}

/// Data range with a little padding (finite values only; `[0, 1]` when there are none).
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi - lo > 1e-12 {
        0.05 * (hi - lo)
    } else {
        0.5 * lo.abs().max(1.0)
    };
    (lo - pad, hi + pad)
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    legend: &[(String, RGBColor)],
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    let (_, h) = area.dim_in_pixel();
    let max_rows = ((h as usize).saturating_sub(20) / 20).max(1);
    for (k, (label, color)) in legend.iter().enumerate().take(max_rows) {
        let y = 14 + 20 * k as i32;
        area.draw(&Rectangle::new([(8, y - 6), (20, y + 6)], color.filled()))
            .map_err(draw_err)?;
        let mut text = label.clone();
        if text.chars().count() > 24 {
            text = text.chars().take(23).collect::<String>() + "…";
        }
        area.draw(&Text::new(
            text,
            (28, y),
            ("sans-serif", 13)
                .into_font()
                .color(&DARK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(draw_err)?;
    }
    if legend.len() > max_rows {
        area.draw(&Text::new(
            format!("… {} more", legend.len() - max_rows),
            (28, 14 + 20 * max_rows as i32),
            ("sans-serif", 12).into_font().color(&DARK),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

fn draw_trends<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panels: &[(String, Vec<TrendSeries>)],
    x_label: &str,
    y_label: &str,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    if panels.is_empty() {
        return Ok(());
    }
    let (w, _) = area.dim_in_pixel();
    let (grid, key) = area.split_horizontally(w.saturating_sub(170));
    let legend: Vec<(String, RGBColor)> = panels[0]
        .1
        .iter()
        .map(|s| (s.label.clone(), s.color))
        .collect();
    draw_legend(&key, &legend)?;
    for ((gene, series), a) in panels.iter().zip(panel_grid(&grid, panels.len(), 3)) {
        let (x0, x1) = padded_range(series.iter().flat_map(|s| s.t.iter().copied()));
        let (y0, y1) = padded_range(
            series
                .iter()
                .flat_map(|s| s.lower.iter().chain(&s.upper).copied()),
        );
        let mut chart = ChartBuilder::on(&a)
            .caption(gene, ("sans-serif", 15))
            .margin(6)
            .x_label_area_size(34)
            .y_label_area_size(48)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(5)
            .y_labels(5)
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 12))
            .draw()
            .map_err(draw_err)?;
        for s in series {
            let band: Vec<(f64, f64)> =
                s.t.iter()
                    .zip(&s.upper)
                    .map(|(&t, &u)| (t, u))
                    .chain(s.t.iter().zip(&s.lower).rev().map(|(&t, &l)| (t, l)))
                    .filter(|p| p.0.is_finite() && p.1.is_finite())
                    .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    RGBAColor(s.color.0, s.color.1, s.color.2, 0.2).filled(),
                )))
                .map_err(draw_err)?;
            chart
                .draw_series(LineSeries::new(
                    s.t.iter()
                        .zip(&s.mean)
                        .map(|(&t, &m)| (t, m))
                        .filter(|p| p.1.is_finite()),
                    s.color.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
    }
    Ok(())
}

fn draw_gene_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    genes: &[String],
    values: &[f64],
    n_cols: usize,
    x_label: &str,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    let m = genes.len();
    if m == 0 || n_cols == 0 {
        return Ok(());
    }
    let (w, h) = area.dim_in_pixel();
    let longest = genes.iter().map(|g| g.chars().count()).max().unwrap_or(0);
    let left = (longest as i32 * 7 + 12).clamp(60, 200);
    let (top, right, bottom_room) = (8, 90, 44);
    let row = ((h as i32 - top - bottom_room) / m as i32).max(2);
    let width = (w as i32 - left - right).max(20);
    let font = ("sans-serif", 12).into_font().color(&DARK);
    for (q, gene) in genes.iter().enumerate() {
        let y = top + row * q as i32;
        for c in 0..n_cols {
            let v = values.get(q * n_cols + c).copied().unwrap_or(f64::NAN);
            let xa = left + (c as i32 * width) / n_cols as i32;
            let xb = left + ((c as i32 + 1) * width) / n_cols as i32;
            let color = if v.is_finite() { viridis(v) } else { GREY };
            area.draw(&Rectangle::new([(xa, y), (xb, y + row)], color.filled()))
                .map_err(draw_err)?;
        }
        if row >= 9 {
            area.draw(&Text::new(
                gene.clone(),
                (left - 4, y + row / 2),
                font.pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
    }
    let bottom = top + row * m as i32;
    area.draw(&Text::new(
        format!("{x_label} →"),
        (left + width / 2, bottom + 18),
        font.pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(draw_err)?;
    // Colour bar.
    draw_unit_colorbar(area, left + width + 16, top, bottom, &font)
}

fn draw_stacked<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    bars: &[(String, Vec<f64>)],
    legend: &[(String, RGBColor)],
    y_label: &str,
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    if bars.is_empty() {
        return Ok(());
    }
    let (w, _) = area.dim_in_pixel();
    let (plot, key) = area.split_horizontally(w.saturating_sub(200));
    draw_legend(&key, legend)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&plot)
        .margin(8)
        .x_label_area_size(70)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0f64..bars.len() as f64, 0.0f64..1.0)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .y_desc(y_label)
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_labels(6)
        .label_style(("sans-serif", 12))
        .x_label_style(
            ("sans-serif", 12)
                .into_font()
                .transform(FontTransform::Rotate90)
                .into_text_style(&plot)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        )
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(draw_err)?;
    for (i, (_, fractions)) in bars.iter().enumerate() {
        let mut base = 0.0;
        for (q, &f) in fractions.iter().enumerate() {
            if !(f.is_finite() && f > 0.0) {
                continue;
            }
            let color = legend.get(q).map_or(GREY, |l| l.1);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (i as f64 + 0.1, base),
                        (i as f64 + 0.9, (base + f).min(1.0)),
                    ],
                    color.filled(),
                )))
                .map_err(draw_err)?;
            base += f;
        }
    }
    Ok(())
}

fn draw_scatter<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panels: &[ScatterPanel],
    x_label: &str,
    y_label: &str,
    legend: &[(String, RGBColor)],
) -> Result<(), DrawFailure>
where
    DB::ErrorType: 'static,
{
    if panels.is_empty() {
        return Ok(());
    }
    let (w, _) = area.dim_in_pixel();
    let side = if legend.is_empty() { 0 } else { 200 };
    let (grid, key) = area.split_horizontally(w.saturating_sub(side));
    draw_legend(&key, legend)?;
    for (p, a) in panels.iter().zip(panel_grid(&grid, panels.len(), 3)) {
        let curve_pts = p.curve.iter().flat_map(|c| c.1.iter());
        let (x0, x1) = padded_range(p.x.iter().copied().chain(std::iter::once(0.0)));
        let (y0, y1) = padded_range(
            p.y.iter()
                .copied()
                .chain(std::iter::once(0.0))
                .chain(curve_pts.map(|q| q.1).filter(|&v| v <= 1e300)),
        );
        let mut chart = ChartBuilder::on(&a)
            .caption(&p.title, ("sans-serif", 15))
            .margin(6)
            .x_label_area_size(34)
            .y_label_area_size(48)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(4)
            .y_labels(4)
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 12))
            .draw()
            .map_err(draw_err)?;
        let n = p.x.len();
        let r = if n > 20_000 { 1 } else { 2 };
        for pass in [false, true] {
            chart
                .draw_series(
                    p.x.iter()
                        .zip(&p.y)
                        .zip(&p.colors)
                        .filter(|((x, y), c)| c.is_some() == pass && x.is_finite() && y.is_finite())
                        .map(|((&x, &y), c)| Circle::new((x, y), r, c.unwrap_or(GREY).filled())),
                )
                .map_err(draw_err)?;
        }
        if let Some((label, pts)) = &p.curve {
            let inside: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|q| q.0.is_finite() && q.1.is_finite() && q.1 >= y0 && q.1 <= y1)
                .collect();
            chart
                .draw_series(LineSeries::new(inside, RED.stroke_width(2)))
                .map_err(draw_err)?
                .label(label.clone())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .label_font(("sans-serif", 11))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(draw_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn heatmap_labels_never_show_negative_zero() {
        assert_eq!(super::two_decimals(-1e-17), "0.00");
        assert_eq!(super::two_decimals(-0.004), "0.00");
        assert_eq!(super::two_decimals(-0.5), "-0.50");
        assert_eq!(super::two_decimals(0.456), "0.46");
    }

    use super::*;

    #[test]
    fn colours() {
        assert_eq!(parse_hex("#1f77b4"), Some(RGBColor(31, 119, 180)));
        assert_eq!(parse_hex("#1f77b4ff"), Some(RGBColor(31, 119, 180)));
        assert_eq!(parse_hex("red"), None);
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(f64::NAN), RGBColor(68, 1, 84));
    }

    #[test]
    fn every_kind_renders_to_svg_and_png() {
        let xy: Vec<[f64; 2]> = (0..50).map(|i| [i as f64, (i as f64).sin()]).collect();
        let figs = [
            Plot::Embedding {
                xy: xy.clone(),
                colors: (0..50)
                    .map(|i| (i % 3 != 0).then_some(RGBColor(200, 0, 0)))
                    .collect(),
                legend: vec![("A state with a rather long name indeed".into(), RED)],
                colorbar: None,
                basis: "UMAP".into(),
                overlay: Overlay::Walks(vec![vec![0, 1, 2, 3]]),
            },
            Plot::Embedding {
                xy,
                colors: (0..50).map(|i| Some(viridis(i as f64 / 49.0))).collect(),
                legend: vec![],
                colorbar: Some((0.0, 1.0)),
                basis: "PCA".into(),
                overlay: Overlay::Arrows(vec![([0.0, 0.0], [10.0, 0.5])]),
            },
            Plot::Spectrum {
                re: vec![1.0, 0.99, 0.95, 0.95, 0.8],
                im: vec![0.0, 0.0, 0.1, -0.1, 0.0],
                eigengap: Some(1),
                n_states: Some(3),
            },
            Plot::Heatmap {
                names: vec!["Alpha".into(), "Beta".into()],
                values: vec![0.9, 0.1, 0.2, 0.8],
            },
            Plot::Drivers(vec![(
                "Alpha".into(),
                RED,
                vec![("Gcg".into(), 0.8), ("Irx2".into(), -0.3)],
            )]),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        for (k, plot) in figs.into_iter().enumerate() {
            let f = Figure {
                name: format!("f{k}"),
                title: "a title".into(),
                plot,
            };
            let svg = f.svg().expect("svg");
            assert!(svg.starts_with("<svg") && svg.contains("a title"), "{k}");
            let png = f.write(dir.path(), Format::Png).expect("png");
            let bytes = std::fs::read(&png).expect("read png");
            assert_eq!(&bytes[1..4], b"PNG");
            assert!(bytes.len() > 1000, "{k}: {} bytes", bytes.len());
        }
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
}
