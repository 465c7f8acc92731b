//! A self-contained HTML page per run (figures inlined as SVG, or as PNG when they hold
//! thousands of points; no external resources), and an index page for batch runs.

use std::fmt::Write as _;
#[cfg(feature = "h5ad")]
use std::path::Path;

use cellfate_estimators::drivers::format_p_value;
use cellfate_kernels::Direction;

use super::FigureSource;
use super::{driver_panels, figures, labels, PlotOptions, ReportError};
#[cfg(feature = "h5ad")]
use crate::io::H5adReader;
use crate::io::{keys, Element};

/// Escapes text for HTML; control characters other than line breaks and tabs (which HTML
/// forbids) are made visible as in [`crate::names::escape_for_terminal`].
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && !matches!(c, '\n' | '\r' | '\t') => {
                out.push_str(&crate::names::escape_for_terminal(
                    c.encode_utf8(&mut [0; 4]),
                ));
            }
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}\
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;font-size:.92em}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:middle;margin-right:.4em}\
.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:1.2em}\
@media (max-width:900px){.figs{grid-template-columns:1fr}}\
figure{margin:0;min-width:0}figure svg,figure img{width:100%;height:auto;display:block}\
figure.wide{grid-column:1/-1}\
figcaption{font-size:.85em;color:#555;margin-top:.3em}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}\
.warn{color:#8a4b00}.drivers{display:flex;flex-wrap:wrap;gap:1.5em}";

/// Writes `contents` to `path` through an exclusive temporary file in the same directory
/// (see [`crate::output`]).
#[cfg(feature = "h5ad")]
pub(crate) fn write_atomic(path: &Path, contents: &str) -> Result<(), ReportError> {
    Ok(crate::output::write_atomic(path, contents.as_bytes())?)
}

/// The stage timings' slot (`crate::pipeline::TIMINGS_SLOT`; the pipeline needs `h5ad`).
const TIMINGS_SLOT: &str = "uns/cellfate_timings";

fn uns_str(r: &dyn FigureSource, slot: &str) -> Option<String> {
    match r.read(slot).ok()? {
        Element::Str(s) => Some(s),
        _ => None,
    }
}

/// Builds the HTML report of an output file. `title` heads the page.
pub fn report(
    r: &dyn FigureSource,
    title: &str,
    opts: &PlotOptions,
) -> Result<String, ReportError> {
    let d = Direction::Forward;
    let (figs, mut notes) = figures(r, opts)?;
    let summary: serde_json::Value = uns_str(r, "uns/cellfate/summary")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    let run: serde_json::Value = uns_str(r, "uns/cellfate/run")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null);
    // The run's warnings (`uns["cellfate"]["warnings"]`); files written before that slot
    // existed kept the estimators' notes in the summary.
    match r.read("uns/cellfate/warnings") {
        Ok(Element::Strings { values, .. }) => notes.extend(values),
        _ => {
            if let Some(ns) = summary.get("notes").and_then(|v| v.as_array()) {
                for n in ns.iter().filter_map(|v| v.as_str()) {
                    notes.push(n.to_string());
                }
            }
        }
    }
    // Stage timings live in their own slot; older files kept them in `uns["cellfate"]["run"]`.
    let timings: serde_json::Value = uns_str(r, TIMINGS_SLOT)
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(run);
    let n = r.n_obs()?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    let _ = writeln!(
        h,
        "<p>{} — {n} cells × {} genes. Written by cellfate {}.</p>",
        esc(&r.path().display().to_string()),
        r.n_vars()?,
        env!("CARGO_PKG_VERSION")
    );
    // Terminal states.
    let ts = keys::terminal_states(d);
    let term = labels(r, &ts);
    let lin = keys::lineages(d);
    let fate_share: Vec<(String, f64)> = summary
        .get("fate_shares")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let stability: Vec<(String, f64)> = match (
        summary.get("macrostates").and_then(|v| v.as_array()),
        summary.get("stability").and_then(|v| v.as_array()),
    ) {
        (Some(a), Some(b)) => a
            .iter()
            .zip(b)
            .filter_map(|(x, y)| Some((x.as_str()?.to_string(), y.as_f64()?)))
            .collect(),
        _ => Vec::new(),
    };
    h.push_str("<h2>Terminal states</h2>\n");
    match &term {
        Some(l) => {
            h.push_str("<table><tr><th>state</th><th>cells in the state</th><th>coarse self-transition</th><th>most likely fate of</th></tr>\n");
            for (q, name) in l.categories.iter().enumerate() {
                let count = l.codes.iter().filter(|c| **c == Some(q)).count();
                let c = l.colors[q];
                let st = stability
                    .iter()
                    .find(|(s, _)| s == name)
                    .map_or("—".into(), |(_, v)| format!("{v:.4}"));
                let share = fate_share
                    .iter()
                    .find(|(s, _)| s == name)
                    .map_or("—".into(), |(_, v)| format!("{:.1}% of cells", 100.0 * v));
                let _ = writeln!(
                    h,
                    "<tr><td><span class=\"swatch\" style=\"background:#{:02x}{:02x}{:02x}\"></span>{}</td><td class=\"num\">{count}</td><td class=\"num\">{st}</td><td class=\"num\">{share}</td></tr>",
                    c.0, c.1, c.2,
                    esc(name)
                );
            }
            h.push_str("</table>\n");
        }
        None => h.push_str("<p>No terminal states in this file.</p>\n"),
    }
    // Initial states (they may coincide with a terminal state: listed either way).
    if let Some(l) = labels(r, &keys::initial_states(d)) {
        let items: Vec<String> = l
            .categories
            .iter()
            .enumerate()
            .map(|(q, name)| {
                let c = l.colors[q];
                let count = l.codes.iter().filter(|x| **x == Some(q)).count();
                let also = term
                    .as_ref()
                    .is_some_and(|t| t.categories.iter().any(|x| x == name));
                format!(
                    "<span class=\"swatch\" style=\"background:#{:02x}{:02x}{:02x}\"></span>{} ({count} cells{})",
                    c.0,
                    c.1,
                    c.2,
                    esc(name),
                    if also { "; also a terminal state" } else { "" }
                )
            })
            .collect();
        let _ = writeln!(h, "<h2>Initial states</h2>\n<p>{}</p>", items.join(", "));
    }
    if !r.exists(&keys::obsm(&lin)) {
        h.push_str("<p>No fate probabilities in this file.</p>\n");
    }
    velocity_section(r, &mut h);
    labeling_section(r, &mut h);
    if let (Some(m), Some(c)) = (
        summary.get("schur_method").and_then(|v| v.as_str()),
        summary.get("crispness").and_then(|v| v.as_f64()),
    ) {
        let _ = writeln!(
            h,
            "<p>Schur decomposition: {} (residual {:.1e}); {} macrostates, crispness {c:.3}.</p>",
            esc(m),
            summary
                .get("schur_residual")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN),
            summary
                .get("n_macrostates")
                .and_then(|v| v.as_u64())
                .unwrap_or(0),
        );
    }
    // Per-cluster fates.
    fate_table(r, d, opts, &mut h)?;
    // Figures: two columns; figures of many panels span both. Figures of many points are
    // inlined as PNG (an SVG of 100,000 circles is tens of megabytes and slow to draw).
    h.push_str("<h2>Figures</h2>\n<div class=\"figs\">\n");
    for f in &figs {
        let (w, _) = f.size();
        let class = if w > 900 { " class=\"wide\"" } else { "" };
        let body = if f.n_points() >= opts.raster_points {
            // Displayed at the layout size; --dpi adds pixels (sharper), not size.
            let (w, h) = (
                opts.render.width.unwrap_or(f.size().0),
                opts.render.height.unwrap_or(f.size().1),
            );
            format!(
                "<img alt=\"{}\" width=\"{w}\" height=\"{h}\" src=\"data:image/png;base64,{}\">",
                esc(&f.title),
                base64(&f.png_with(&opts.render)?)
            )
        } else {
            f.svg_with(&opts.render)?
        };
        let _ = writeln!(
            h,
            "<figure id=\"{}\"{class}>{body}<figcaption>{}</figcaption></figure>",
            esc(&f.name),
            esc(&caption(&f.name))
        );
    }
    h.push_str("</div>\n");
    // Drivers.
    if let Some(panels) = driver_panels(r, d, 10, term.as_ref()) {
        let df = r.dataframe(&format!("varm/{}", keys::lineage_drivers(d)))?;
        h.push_str("<h2>Driver genes</h2>\n<div class=\"drivers\">\n");
        for (lineage, _, genes) in &panels {
            let q = df
                .column(&format!("{lineage}_qval"))
                .and_then(|e| e.to_f64_vec());
            let _ = writeln!(
                h,
                "<table><tr><th colspan=\"3\">{}</th></tr><tr><th>gene</th><th>corr</th><th>q-value</th></tr>",
                esc(lineage)
            );
            for (gene, corr) in genes {
                let qv = q
                    .as_ref()
                    .and_then(|q| df.index.iter().position(|g| g == gene).map(|i| q[i]))
                    .map_or("—".into(), |v| esc(&format_p_value(v)));
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"num\">{corr:.3}</td><td class=\"num\">{qv}</td></tr>",
                    esc(gene)
                );
            }
            h.push_str("</table>\n");
        }
        h.push_str("</div>\n");
    }
    // Warnings.
    h.push_str("<h2>Warnings and notes</h2>\n");
    if notes.is_empty() {
        h.push_str("<p>None.</p>\n");
    } else {
        h.push_str("<ul>\n");
        for n in &notes {
            let _ = writeln!(h, "<li class=\"warn\">{}</li>", esc(n));
        }
        h.push_str("</ul>\n");
    }
    // Timings.
    if let Some(stages) = timings.get("stages").and_then(|v| v.as_array()) {
        h.push_str("<h2>Timings</h2>\n<table><tr><th>stage</th><th>seconds</th></tr>\n");
        for s in stages {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{:.2}</td></tr>",
                esc(s.get("stage").and_then(|v| v.as_str()).unwrap_or("?")),
                s.get("seconds")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(f64::NAN)
            );
        }
        h.push_str("</table>\n");
        if let Some(mb) = timings.get("peak_rss_mb").and_then(|v| v.as_f64()) {
            let _ = writeln!(h, "<p>Peak memory (resident set): {mb:.0} MB.</p>");
        }
    }
    // Parameters.
    if let Some(cfg) = uns_str(r, "uns/cellfate/config") {
        let _ = writeln!(h, "<h2>Parameters</h2>\n<pre>{}</pre>", esc(&cfg));
    }
    kernel_section(r, d, &mut h);
    h.push_str("</body></html>\n");
    Ok(h)
}

/// Figures with at least this many points are inlined as PNG rather than SVG.
pub const RASTER_FROM_POINTS: usize = 10_000;

/// Standard base64 (RFC 4648, with padding) for inlined images.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(A[((v >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a figure shows and how to read it (the title inside the figure names it).
pub fn caption(name: &str) -> String {
    let by_prefix: [(&str, &str); 23] = [
        ("embedding_clusters", "Cells on the embedding, coloured by cluster; small clusters are drawn last and larger so that they stay visible."),
        ("embedding_macrostates", "The macrostates found by GPCCA: sets of cells the chain leaves rarely. Grey cells belong to none."),
        ("embedding_terminal_states", "The macrostates chosen as terminal: the end points whose fate probabilities are computed."),
        ("fate_", "Each cell's probability of reaching this terminal state first (absorption probability); the highest are drawn on top."),
        ("aggregated_fates", "Mean fate probability of the cells of each cluster, per lineage, on a common 0–1 scale."),
        ("circular_projection", "Each cell placed between the lineages' corners by its fate probabilities (divided by each lineage's mean): committed cells sit at a corner, undecided ones in the middle."),
        ("priming", "How committed each cell already is (high: one fate dominates its fate probabilities)."),
        ("absorption_time_", "Expected number of steps of the chain before a cell reaches this lineage's terminal state: high at the start of the lineage."),
        ("spectrum", "Real parts of the Schur eigenvalues: the gap after the k-th suggests k macrostates; the green line marks how many were computed."),
        ("coarse_T", "Transition probabilities between macrostates: a large diagonal means a stable state; terminal states are near 1."),
        ("macrostate_composition", "Which clusters each macrostate is made of (fractions of its cells)."),
        ("drivers", "Genes whose expression correlates most with each lineage's fate probability, on a common axis (grey bars: negative)."),
        ("gene_trends", "Expression along the time of the top drivers, fitted per lineage with the cells weighted by their fate probability; bands are 95 % intervals. Each lineage ends with its last cell."),
        ("heatmap_", "The lineage's top drivers' fitted trends, each scaled to 0–1 and ordered by the time of its peak: the cascade of gene activation along the lineage."),
        ("phase_portraits", "Unspliced against spliced counts (moments) per gene, with the fitted model: cells above the line are inducing the gene, below it repressing."),
        ("random_walks", "Random walks on the transition matrix from the initial states, coloured from dark (start) to yellow (end): where the chain takes cells."),
        ("velocity_stream_", "The transition matrix projected onto the embedding and drawn as streamlines (scVelo's velocity_embedding_stream); a figure ending in _rnd is the randomised control (each gene's velocities shuffled across cells with random signs), which should show no consistent direction."),
        ("velocity_grid_", "The projected velocity averaged on a grid."),
        ("velocity_arrows_", "The projected velocity of individual cells."),
        ("vector_field_", "The continuous vector field learned from the cells' velocities (SparseVFC, dynamo's VectorField), drawn as streamlines on the first two dimensions of its basis: where the field carries cells, smoothed over noisy velocities."),
        ("perturbation", "The shift of fate probabilities after the perturbation."),
        ("embedding", "Cells on the embedding."),
        ("", "Figure."),
    ];
    by_prefix
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map_or(String::new(), |(_, c)| (*c).to_string())
}

/// The mean fate probabilities per cluster (CellRank's `aggregate_fate_probabilities` as a
/// table) with the cells per cluster.
fn fate_table(
    r: &dyn FigureSource,
    d: Direction,
    opts: &PlotOptions,
    h: &mut String,
) -> Result<(), ReportError> {
    let n = r.n_obs()?;
    let Some(f) = super::extra::fates(r, d, n)? else {
        return Ok(());
    };
    let key = opts
        .cluster_key
        .clone()
        .unwrap_or_else(|| "clusters".into());
    let Some(cl) = labels(r, &key) else {
        return Ok(());
    };
    let _ = writeln!(
        h,
        "<h2>Fates per cluster</h2>\n<table><tr><th>{}</th><th>cells</th>{}</tr>",
        esc(&key),
        f.names
            .iter()
            .map(|l| format!("<th>{}</th>", esc(l)))
            .collect::<String>()
    );
    for (q, name) in cl.categories.iter().enumerate() {
        let cells: Vec<usize> = (0..n).filter(|&i| cl.codes[i] == Some(q)).collect();
        if cells.is_empty() {
            continue;
        }
        let means: String = (0..f.l)
            .map(|j| {
                let m =
                    cells.iter().map(|&i| f.values[i * f.l + j]).sum::<f64>() / cells.len() as f64;
                format!("<td class=\"num\">{m:.3}</td>")
            })
            .collect();
        let c = cl.colors[q];
        let _ = writeln!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:#{:02x}{:02x}{:02x}\"></span>{}</td><td class=\"num\">{}</td>{means}</tr>",
            c.0,
            c.1,
            c.2,
            esc(name),
            cells.len()
        );
    }
    h.push_str("</table>\n");
    Ok(())
}

/// A scalar of a parameter dict as text.
fn scalar_text(e: &Element) -> Option<String> {
    match e {
        Element::Str(s) => Some(s.clone()),
        Element::Scalar(crate::io::NumVec::Bool(b)) => Some(b.first()?.to_string()),
        Element::Scalar(v) => {
            let x = *v.to_f64().first()?;
            Some(if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{x}")
            } else {
                format!("{x:.6}")
            })
        }
        _ => None,
    }
}

/// The kernel's parameters as used (`uns["T_fwd_params"]["params"]`: per kernel of the
/// expression its weight and parameters, among them the softmax scale the velocity kernel
/// estimated), and the expression itself.
fn kernel_section(r: &dyn FigureSource, d: Direction, h: &mut String) {
    let slot = format!("uns/{}_params", keys::transition(d));
    let Ok(Element::Dict(top)) = r.read(&slot) else {
        return;
    };
    let _ = writeln!(
        h,
        "<h3>Kernel (<code>uns[\"{}_params\"]</code>)</h3>",
        keys::transition(d)
    );
    if let Some((_, Element::Dict(kernels))) = top.iter().find(|(k, _)| k == "params") {
        h.push_str("<table><tr><th>kernel</th><th>weight</th><th>parameters</th></tr>\n");
        for (name, el) in kernels {
            let Element::Dict(parts) = el else { continue };
            let weight = parts
                .iter()
                .find(|(k, _)| k == "weight")
                .and_then(|(_, e)| scalar_text(e))
                .unwrap_or_else(|| "1".into());
            let params = parts
                .iter()
                .find(|(k, _)| k == "params")
                .and_then(|(_, e)| match e {
                    Element::Dict(p) => Some(
                        p.iter()
                            .filter_map(|(k, v)| Some(format!("{k} = {}", scalar_text(v)?)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    _ => None,
                })
                .unwrap_or_default();
            let kernel = name.split(':').next().unwrap_or(name);
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(kernel),
                esc(&weight),
                esc(&params)
            );
        }
        h.push_str("</table>\n");
    }
    if let Some((_, Element::Str(spec))) = top.iter().find(|(k, _)| k == "spec") {
        let _ = writeln!(
            h,
            "<details><summary>kernel specification</summary><pre>{}</pre></details>",
            esc(spec)
        );
    }
}

/// Metabolic labeling, when the file has its estimates (`uns["dynamics"]`, `var["gamma"]`):
/// the experiment, the estimator, the genes fitted with their median γ and half-life, the
/// genes with the highest synthesis rate, the velocity confidence of `velocity_T`, and the
/// randomised control (`uns["random_control"]`) of any velocity kernel.
fn labeling_section(r: &dyn FigureSource, h: &mut String) {
    let str_of = |slot: &str| match r.read(slot) {
        Ok(Element::Str(s)) => Some(s),
        _ => None,
    };
    let num_of = |slot: &str| match r.read(slot).ok()? {
        Element::Scalar(v) => v.to_f64().first().copied(),
        e => e.to_f64_vec()?.first().copied(),
    };
    let experiment = str_of("uns/dynamics/experiment_type");
    let control = num_of("uns/random_control/score");
    if experiment.is_none() && control.is_none() {
        return;
    }
    if let Some(exp) = &experiment {
        h.push_str("<h2>Metabolic labeling</h2>\n");
        let method = str_of("uns/dynamics/est_method").unwrap_or_default();
        let col = |k: &str| r.column("var", k).ok().and_then(|c| c.to_f64_vec());
        let (gamma, half, alpha) = (col("gamma"), col("half_life"), col("alpha"));
        let mut times: Vec<f64> = r
            .read("uns/dynamics/t")
            .ok()
            .and_then(|e| e.to_f64_vec())
            .unwrap_or_default();
        times.sort_by(f64::total_cmp);
        times.dedup();
        let shown: Vec<String> = times.iter().take(8).map(|t| format!("{t}")).collect();
        let median = |v: &Option<Vec<f64>>| -> Option<(usize, f64)> {
            let mut f: Vec<f64> = v
                .as_ref()?
                .iter()
                .copied()
                .filter(|x| x.is_finite())
                .collect();
            if f.is_empty() {
                return None;
            }
            f.sort_by(f64::total_cmp);
            Some((f.len(), f[f.len() / 2]))
        };
        let _ = writeln!(
            h,
            "<p>Experiment <code>{}</code>, estimator <code>{}</code>, labeling times {}.</p>",
            esc(exp),
            esc(&method),
            esc(&shown.join(", "))
        );
        if let (Some((n, g)), Some((_, hl))) = (median(&gamma), median(&half)) {
            let _ = writeln!(
                h,
                "<p>{n} genes fitted (<code>var[\"use_for_dynamics\"]</code>): median degradation rate γ {g:.4}, median half-life {hl:.3} (<code>var[\"gamma\"]</code>, <code>var[\"half_life\"]</code>, dynamo's <code>varm[\"vel_params\"]</code>).</p>"
            );
        }
        if let (Some(alpha), Some(gamma), Some(half), Ok(names)) =
            (&alpha, &gamma, &half, r.var_names())
        {
            let mut order: Vec<usize> =
                (0..alpha.len()).filter(|&j| alpha[j].is_finite()).collect();
            order.sort_by(|&a, &b| alpha[b].total_cmp(&alpha[a]).then(a.cmp(&b)));
            h.push_str("<table><tr><th>gene (highest synthesis)</th><th>α</th><th>γ</th><th>half-life</th></tr>\n");
            for &j in order.iter().take(10) {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td class=\"num\">{:.4}</td><td class=\"num\">{:.4}</td><td class=\"num\">{:.3}</td></tr>",
                    esc(names.get(j).map_or("?", String::as_str)),
                    alpha[j],
                    gamma[j],
                    half[j]
                );
            }
            h.push_str("</table>\n");
        }
        if let Ok(mut c) = r.obs_f64("velocity_T_confidence") {
            c.retain(|x| x.is_finite());
            if !c.is_empty() {
                c.sort_by(f64::total_cmp);
                let _ = writeln!(
                    h,
                    "<p>Velocity confidence of <code>velocity_T</code> (scVelo's, mean correlation with the neighbours' velocities): median {:.3}.</p>",
                    c[c.len() / 2]
                );
            }
        }
    }
    if let Some(score) = control {
        if experiment.is_none() {
            h.push_str("<h2>Randomised control</h2>\n");
        }
        let real = num_of("uns/random_control/coherence").unwrap_or(f64::NAN);
        let ctrl = num_of("uns/random_control/control_coherence").unwrap_or(f64::NAN);
        let basis = str_of("uns/random_control/basis").unwrap_or_default();
        let verdict = if score >= 0.1 {
            "the flow is directed: clearly more coherent than with permuted velocities"
        } else {
            "the flow is hardly more coherent than with permuted velocities: the velocities may be noise"
        };
        let _ = writeln!(
            h,
            "<p>Randomised control (each gene's velocities permuted across cells with random signs, the kernel recomputed): flow coherence on <code>{}</code> {real:.3} real, {ctrl:.3} control, score {score:.3} — {verdict}. Per cell: <code>obs[\"random_control_score\"]</code>.</p>",
            esc(&basis)
        );
    }
}

/// The velocity's quality, when the file has it: scVelo's velocity confidence and length,
/// RNAVelocity's coherence, latent time, and for the dynamical model the genes fitted and the
/// best-fitted genes by likelihood (per-gene fit quality).
fn velocity_section(r: &dyn FigureSource, h: &mut String) {
    let quartiles = |key: &str| -> Option<[f64; 3]> {
        let mut v: Vec<f64> = r
            .obs_f64(key)
            .ok()?
            .into_iter()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Some([q(0.25), q(0.5), q(0.75)])
    };
    let rows: Vec<(&str, &str, [f64; 3])> = [
        (
            "velocity_confidence",
            "velocity confidence (mean correlation with the neighbours' velocities)",
        ),
        (
            "velocity_confidence_transition",
            "velocity confidence along the transition matrix",
        ),
        (
            "velocity_coherence",
            "velocity coherence (mean cosine with the displacements to the neighbours)",
        ),
        ("velocity_length", "velocity length"),
        ("latent_time", "latent time"),
    ]
    .into_iter()
    .filter_map(|(k, what)| Some((k, what, quartiles(k)?)))
    .collect();
    if rows.is_empty() {
        return;
    }
    h.push_str("<h2>Velocity</h2>\n");
    if let Ok(Element::Str(mode)) = r.read("uns/velocity_params/mode") {
        let _ = writeln!(h, "<p>Velocity model: {}.</p>", esc(&mode));
    }
    h.push_str(
        "<table><tr><th>per cell (obs)</th><th>25 %</th><th>median</th><th>75 %</th></tr>\n",
    );
    for (k, what, q) in rows {
        let _ = writeln!(
            h,
            "<tr><td>{} <code>{}</code></td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td></tr>",
            esc(what),
            esc(k),
            q[0],
            q[1],
            q[2]
        );
    }
    h.push_str("</table>\n");
    let lik = r
        .column("var", "fit_likelihood")
        .ok()
        .and_then(|c| c.to_f64_vec());
    if let (Some(lik), Ok(names)) = (lik, r.var_names()) {
        let mut fitted: Vec<(usize, f64)> = lik
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .collect();
        fitted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top: Vec<String> = fitted
            .iter()
            .take(10)
            .map(|&(j, l)| format!("{} ({l:.3})", esc(names.get(j).map_or("?", String::as_str))))
            .collect();
        let _ = writeln!(
            h,
            "<p>Dynamical model: {} of {} genes fitted. Best fitted (likelihood): {}.</p>",
            fitted.len(),
            lik.len(),
            top.join(", ")
        );
    }
}

/// Writes the report of `input` to `path` (temporary file + rename).
#[cfg(feature = "h5ad")]
pub fn write_report(
    input: &Path,
    path: &Path,
    title: &str,
    opts: &PlotOptions,
) -> Result<(), ReportError> {
    let r = H5adReader::open(input)?;
    let html = report(&r, title, opts)?;
    write_atomic(path, &html)
}

/// One row of a batch index page.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    /// Sample name.
    pub name: String,
    /// `ok` or the error.
    pub status: String,
    /// Relative link to the sample's report, when written.
    pub report: Option<String>,
    /// Terminal states.
    pub terminal_states: Vec<String>,
    /// Share of cells per most likely fate.
    pub fate_shares: Vec<(String, f64)>,
    /// Seconds.
    pub seconds: f64,
}

/// The batch index page linking each sample's report.
pub fn index(title: &str, entries: &[IndexEntry]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    h.push_str("<table><tr><th>sample</th><th>status</th><th>terminal states</th><th>most likely fate (share of cells)</th><th>seconds</th></tr>\n");
    for e in entries {
        let name = match &e.report {
            Some(link) => format!("<a href=\"{}\">{}</a>", esc(link), esc(&e.name)),
            None => esc(&e.name),
        };
        let shares: Vec<String> = e
            .fate_shares
            .iter()
            .map(|(s, v)| format!("{} {:.1}%", esc(s), 100.0 * v))
            .collect();
        let _ = writeln!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{:.1}</td></tr>",
            esc(&e.status),
            esc(&e.terminal_states.join(", ")),
            shares.join(", "),
            e.seconds
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_index() {
        assert_eq!(esc("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
        assert_eq!(esc("red\u{1b}[31m\n"), "red\\x1b[31m\n");
        let page = index(
            "batch",
            &[IndexEntry {
                name: "s<1>".into(),
                status: "ok".into(),
                report: Some("reports/s1.html".into()),
                terminal_states: vec!["Alpha".into()],
                fate_shares: vec![("Alpha".into(), 0.5)],
                seconds: 1.0,
            }],
        );
        assert!(page.contains("href=\"reports/s1.html\">s&lt;1&gt;</a>"));
        assert!(page.contains("Alpha 50.0%"));
    }
}
