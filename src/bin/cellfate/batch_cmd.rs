//! `cellfate batch`: fate mapping over many files, one output per sample, one summary.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use cellfate::pipeline;

use crate::run_cmd::{build_spec, EstimatorFlags, UpstreamFlags};

/// Arguments of `cellfate batch`.
#[derive(Debug, clap::Args)]
pub(crate) struct BatchArgs {
    /// Input .h5ad files (shell globs expand to many).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output directory: one DIR/<name>.h5ad per sample, plus summary.json and summary.csv.
    #[arg(long)]
    out_dir: PathBuf,
    /// TOML config applied to every sample.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel expression.
    #[arg(long)]
    kernel: Option<String>,
    /// Kernel parameter KERNEL.NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "KERNEL.NAME=VALUE")]
    params: Vec<String>,
    #[command(flatten)]
    estimators: EstimatorFlags,
    #[command(flatten)]
    upstream: UpstreamFlags,
    /// Samples processed at once.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Memory budget in GB: a sample is started only while the estimated memory of the running
    /// samples (10 x their input file size) stays below it.
    #[arg(long)]
    max_memory: Option<f64>,
    /// Recompute samples whose output is complete and newer than the input.
    #[arg(long)]
    force: bool,
    /// Also write an HTML report per sample (DIR/reports/<name>.html) and DIR/index.html.
    #[arg(long)]
    report: bool,
    /// Print the samples and the effective configuration (TOML) and exit.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    figures: crate::report_cmd::FigureFlags,
}

/// One sample's outcome.
#[derive(Debug, Serialize)]
struct SampleResult {
    sample: String,
    input: String,
    output: String,
    status: String,
    seconds: f64,
    n_cells: Option<usize>,
    /// Upstream steps that ran (preprocess, velocity, pseudotime, ...).
    upstream_steps: Vec<String>,
    terminal_states: Vec<String>,
    fate_shares: Vec<(String, f64)>,
    warnings: Vec<String>,
    error: Option<String>,
    /// Peak resident memory of the batch process when this sample finished (MB; samples
    /// share one process, so this is an upper bound for the sample).
    peak_rss_mb: Option<f64>,
    report: Option<String>,
}

fn up_to_date(input: &Path, output: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(input), modified(output)) {
        (Some(i), Some(o)) => {
            o >= i
                && cellfate::io::H5adReader::open(output)
                    .map(|r| r.exists("uns/cellfate/summary") && r.exists("obsm/lineages_fwd"))
                    .unwrap_or(false)
        }
        _ => false,
    }
}

fn sample_name(p: &Path) -> String {
    p.file_stem()
        .map_or_else(|| "sample".into(), |s| s.to_string_lossy().into_owned())
}

/// Runs the batch; returns the report and whether every sample succeeded.
pub(crate) fn run(a: BatchArgs) -> anyhow::Result<(String, bool)> {
    let mut spec = build_spec(
        a.config.as_ref(),
        a.kernel.as_ref(),
        &a.params,
        None,
        &a.estimators,
    )?;
    a.upstream.apply(&mut spec)?;
    if a.dry_run {
        let mut out = String::new();
        for input in &a.inputs {
            let output = a.out_dir.join(format!("{}.h5ad", sample_name(input)));
            let skip = if !a.force && up_to_date(input, &output) {
                " (skipped: output up to date; --force recomputes)"
            } else {
                ""
            };
            out.push_str(&format!(
                "# sample {}: {} -> {}{skip}\n",
                sample_name(input),
                input.display(),
                output.display()
            ));
        }
        out.push_str(&format!(
            "# every sample runs with these settings ({} at a time):\n",
            a.jobs.max(1)
        ));
        out.push_str(&spec.to_toml());
        return Ok((out, true));
    }
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let budget = a.max_memory.map(|gb| gb * 1e9);
    let in_use = Mutex::new(0.0f64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.jobs.max(1))
        .build()
        .context("thread pool")?;
    let bar = crate::progress::counter(a.inputs.len());
    let results: Vec<SampleResult> = pool.install(|| {
        a.inputs
            .par_iter()
            .map(|input| {
                let name = sample_name(input);
                let output = a.out_dir.join(format!("{name}.h5ad"));
                let mut res = SampleResult {
                    sample: name,
                    input: input.display().to_string(),
                    output: output.display().to_string(),
                    status: "ok".into(),
                    seconds: 0.0,
                    n_cells: None,
                    upstream_steps: Vec::new(),
                    terminal_states: Vec::new(),
                    fate_shares: Vec::new(),
                    warnings: Vec::new(),
                    error: None,
                    peak_rss_mb: None,
                    report: None,
                };
                if !a.force && up_to_date(input, &output) {
                    res.status = "skipped (up to date)".into();
                    return res;
                }
                // Memory budget: wait (politely) until this sample fits.
                let need = std::fs::metadata(input)
                    .map(|m| m.len() as f64 * 10.0)
                    .unwrap_or(0.0);
                if let Some(b) = budget {
                    loop {
                        {
                            let mut used = in_use
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            if *used == 0.0 || *used + need <= b {
                                *used += need;
                                break;
                            }
                        }
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                }
                let start = Instant::now();
                let mut quiet = |_: &str| {};
                match pipeline::run(input, &output, &spec, &mut quiet) {
                    Ok(s) => {
                        res.n_cells = Some(s.n_cells);
                        res.upstream_steps = s.upstream_steps.clone();
                        res.terminal_states = s.estimators.terminal_states.clone();
                        res.fate_shares = s.estimators.fate_shares.clone();
                        res.warnings = s.warnings.clone();
                        if a.report {
                            let dir = a.out_dir.join("reports");
                            let path = dir.join(format!("{}.html", res.sample));
                            let opts = a.figures.options(spec.estimators.cluster_key.clone());
                            let title = crate::report_cmd::title_of(&output);
                            let made = std::fs::create_dir_all(&dir)
                                .map_err(|e| e.to_string())
                                .and_then(|()| {
                                    cellfate::report::html::write_report(
                                        &output, &path, &title, &opts,
                                    )
                                    .map_err(|e| e.to_string())
                                });
                            match made {
                                Ok(()) => {
                                    res.report = Some(format!("reports/{}.html", res.sample));
                                }
                                Err(e) => res.warnings.push(format!("report not written: {e}")),
                            }
                        }
                    }
                    Err(e) => {
                        res.status = "failed".into();
                        let mut text = e.to_string();
                        for h in crate::hints::for_pipeline("batch", &e) {
                            text.push_str(&format!(" (hint: {h})"));
                        }
                        res.error = Some(text);
                    }
                }
                if budget.is_some() {
                    let mut used = in_use
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    *used -= need;
                }
                res.seconds = start.elapsed().as_secs_f64();
                res.peak_rss_mb = pipeline::peak_rss_mb();
                crate::progress::sample_done(
                    bar.as_ref(),
                    &format!("{}: {} ({:.1} s)", res.sample, res.status, res.seconds),
                );
                res
            })
            .collect()
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let ok = results.iter().all(|r| r.status != "failed");
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "created": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "config": spec.to_toml(),
        "samples": results,
    }))?;
    crate::kernel_cmd::write_atomic(&a.out_dir.join("summary.json"), json.as_bytes())?;
    let mut csv = String::from(
        "sample,status,seconds,peak_rss_mb,n_cells,upstream_steps,terminal_states,fate_shares,warnings,error\n",
    );
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for r in &results {
        let shares: Vec<String> = r
            .fate_shares
            .iter()
            .map(|(n, s)| format!("{n}:{s:.4}"))
            .collect();
        csv.push_str(&format!(
            "{},{},{:.3},{},{},{},{},{},{},{}\n",
            q(&r.sample),
            q(&r.status),
            r.seconds,
            r.peak_rss_mb.map_or(String::new(), |m| format!("{m:.0}")),
            r.n_cells.map_or(String::new(), |n| n.to_string()),
            q(&r.upstream_steps.join(";")),
            q(&r.terminal_states.join(";")),
            q(&shares.join(";")),
            q(&r.warnings.join(" | ")),
            q(r.error.as_deref().unwrap_or(""))
        ));
    }
    crate::kernel_cmd::write_atomic(&a.out_dir.join("summary.csv"), csv.as_bytes())?;
    if a.report {
        let entries: Vec<cellfate::report::html::IndexEntry> = results
            .iter()
            .map(|r| cellfate::report::html::IndexEntry {
                name: r.sample.clone(),
                status: r
                    .error
                    .as_ref()
                    .map_or(r.status.clone(), |e| format!("failed: {e}")),
                report: r.report.clone().or_else(|| {
                    let rel = format!("reports/{}.html", r.sample);
                    a.out_dir.join(&rel).exists().then_some(rel)
                }),
                terminal_states: r.terminal_states.clone(),
                fate_shares: r.fate_shares.clone(),
                seconds: r.seconds,
            })
            .collect();
        let page = cellfate::report::html::index("cellfate batch", &entries);
        crate::kernel_cmd::write_atomic(&a.out_dir.join("index.html"), page.as_bytes())?;
    }
    let mut report = String::new();
    for r in &results {
        report.push_str(&format!(
            "{:<30} {:<22} {:>8.2} s",
            r.sample, r.status, r.seconds
        ));
        if let Some(e) = &r.error {
            report.push_str(&format!("  {e}"));
        } else if !r.terminal_states.is_empty() {
            report.push_str(&format!("  terminal: {}", r.terminal_states.join(", ")));
        }
        if !r.upstream_steps.is_empty() {
            report.push_str(&format!("  upstream: {}", r.upstream_steps.join(", ")));
        }
        report.push('\n');
    }
    report.push_str(&format!(
        "summary -> {}\n",
        a.out_dir.join("summary.json").display()
    ));
    Ok((report, ok))
}
