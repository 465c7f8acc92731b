//! A self-contained HTML page per run (figures inlined as SVG, no external resources), and an
//! index page for batch runs.

use std::fmt::Write as _;
use std::path::Path;

use cellfate_estimators::drivers::format_p_value;
use cellfate_kernels::Direction;

use super::{driver_panels, figures, labels, PlotOptions, ReportError};
use crate::io::{keys, Element, H5adReader};

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
figure{display:inline-block;margin:.5em;vertical-align:top}figure svg{max-width:100%;height:auto}\
figcaption{font-size:.85em;color:#555;text-align:center}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}\
.warn{color:#8a4b00}.drivers{display:flex;flex-wrap:wrap;gap:1.5em}";

/// Writes `contents` to `path` through an exclusive temporary file in the same directory
/// (see [`crate::output`]).
pub(crate) fn write_atomic(path: &Path, contents: &str) -> Result<(), ReportError> {
    Ok(crate::output::write_atomic(path, contents.as_bytes())?)
}

fn uns_str(r: &H5adReader, slot: &str) -> Option<String> {
    match r.read(slot).ok()? {
        Element::Str(s) => Some(s),
        _ => None,
    }
}

/// Builds the HTML report of an output file. `title` heads the page.
pub fn report(r: &H5adReader, title: &str, opts: &PlotOptions) -> Result<String, ReportError> {
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
    let timings: serde_json::Value = uns_str(r, crate::pipeline::TIMINGS_SLOT)
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
    if !r.exists(&keys::obsm(&lin)) {
        h.push_str("<p>No fate probabilities in this file.</p>\n");
    }
    velocity_section(r, &mut h);
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
    // Figures.
    h.push_str("<h2>Figures</h2>\n");
    for f in &figs {
        let svg = f.svg()?;
        let _ = writeln!(
            h,
            "<figure id=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
            esc(&f.name),
            esc(&f.title)
        );
    }
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
    if let Some(k) = uns_str(r, &format!("uns/{}_params", keys::transition(d))) {
        let _ = writeln!(
            h,
            "<p>Kernel (uns[\"T_fwd_params\"]):</p><pre>{}</pre>",
            esc(&k)
        );
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

/// The velocity's quality, when the file has it: scVelo's velocity confidence and length,
/// RNAVelocity's coherence, latent time, and for the dynamical model the genes fitted and the
/// best-fitted genes by likelihood (per-gene fit quality).
fn velocity_section(r: &H5adReader, h: &mut String) {
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
