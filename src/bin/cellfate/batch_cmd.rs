//! `cellfate batch`: fate mapping over many files, one output per sample, one summary.
//!
//! Bookkeeping: inputs naming the same file are computed once; inputs sharing a file name in
//! different folders get distinct outputs (their folder's name, or a hash of their path,
//! prepended or appended); samples whose output is up to date are skipped and keep their
//! recorded results in the summary; the summary is written before the first sample starts,
//! after every sample and at the end, so that it exists (with each failure's error) whatever
//! happens to the samples, and a failure to write it is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use cellfate::pipeline;

use crate::run_cmd::{build_spec, EstimatorFlags, UpstreamFlags};

impl BatchArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::dirs(vec![self.out_dir.clone()])
    }
}

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
    #[command(flatten)]
    vectorfield: crate::run_cmd::VectorFieldFlags,
    /// Samples processed at once (at least 1; at most 4 x the cores, more is capped with a
    /// warning).
    #[arg(long, default_value_t = 1, value_parser = crate::values::positive)]
    jobs: usize,
    /// Memory budget in GB (a positive number): a sample is started only while the estimated
    /// memory of the running samples (10 x their input file size) stays below it.
    #[arg(long, value_parser = crate::values::positive_f64)]
    max_memory: Option<f64>,
    /// Recompute samples whose output is complete, newer than the input and made with the same
    /// settings (without it they are skipped and keep their recorded results).
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
#[derive(Clone, Debug, Serialize)]
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

/// Status of a sample not started (yet) when the summary is written.
const PENDING: &str = "pending";
/// Status of a sample being computed when the summary is written: in a summary left by a
/// batch that died (killed, out of memory, a crash in a library), the samples it was on.
const RUNNING: &str = "running (not finished)";
/// Status of a sample whose output was up to date.
const SKIPPED: &str = "skipped (up to date)";

impl SampleResult {
    fn new(s: &Sample) -> Self {
        Self {
            sample: s.name.clone(),
            input: s.input.display().to_string(),
            output: s.output.display().to_string(),
            status: PENDING.into(),
            seconds: 0.0,
            n_cells: None,
            upstream_steps: Vec::new(),
            terminal_states: Vec::new(),
            fate_shares: Vec::new(),
            warnings: Vec::new(),
            error: None,
            peak_rss_mb: None,
            report: None,
        }
    }

    fn failed(&mut self, error: String) {
        self.status = "failed".into();
        self.error = Some(error);
    }
}

/// Whether `output` is complete, newer than `input` and made with the settings `config` (the
/// TOML recorded in `uns["cellfate"]["config"]`; an output recording other settings is
/// recomputed, one recording none is judged by the rest).
fn up_to_date(input: &Path, output: &Path, config: &str) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(input), modified(output)) {
        (Some(i), Some(o)) => {
            o >= i
                && cellfate::io::H5adReader::open(output)
                    .map(|r| {
                        let same_settings = match r.read("uns/cellfate/config") {
                            Ok(cellfate::io::Element::Str(recorded)) => recorded == config,
                            _ => true,
                        };
                        same_settings
                            && r.exists("uns/cellfate/summary")
                            && r.exists("obsm/lineages_fwd")
                    })
                    .unwrap_or(false)
        }
        _ => false,
    }
}

/// One sample of the batch: its input and its unique name (the output is `DIR/<name>.h5ad`).
#[derive(Clone, Debug)]
struct Sample {
    input: PathBuf,
    name: String,
    output: PathBuf,
}

/// A name part from a file or folder name: control characters replaced by `_` (the name
/// becomes a file name and is printed), bounded in length.
fn name_part(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    cellfate::names::bound_length(&clean, raw, cellfate::names::MAX_STEM_BYTES).into_owned()
}

fn stem_of(p: &Path) -> String {
    match p.file_stem() {
        Some(s) if !s.is_empty() => name_part(&s.to_string_lossy()),
        _ => "sample".into(),
    }
}

/// Where an input really is: its canonical path, or (when it cannot be resolved, e.g. it does
/// not exist) its absolute path.
fn identity(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// The samples of a batch, deterministically from the inputs in order: an input naming the
/// same file as an earlier one is dropped; inputs sharing a file stem (in any case) get
/// `<folder>_<name>` after their folders, else `<name>_<extension>` (`s.h5ad`, `s.loom` in one
/// folder), else `<name>_<hash of the path>`. Returns the samples and a note per change.
fn plan(inputs: &[PathBuf], out_dir: &Path) -> (Vec<Sample>, Vec<String>) {
    use cellfate::names::{escape_for_terminal as esc, short_hash, UniqueStems};
    let mut notes = Vec::new();
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    let mut kept: Vec<(PathBuf, PathBuf)> = Vec::new(); // (input as given, identity)
    for input in inputs {
        let id = identity(input);
        if let Some(&first) = seen.get(&id) {
            notes.push(format!(
                "{} is the same file as {}: computed once",
                esc(&input.display().to_string()),
                esc(&kept[first].0.display().to_string())
            ));
            continue;
        }
        seen.insert(id.clone(), kept.len());
        kept.push((input.clone(), id));
    }
    let stems: Vec<String> = kept.iter().map(|(p, _)| stem_of(p)).collect();
    let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, s) in stems.iter().enumerate() {
        groups.entry(s.to_lowercase()).or_default().push(i);
    }
    let mut names = stems.clone();
    let mut clashing: Vec<&Vec<usize>> = groups.values().filter(|g| g.len() > 1).collect();
    clashing.sort();
    for group in clashing {
        let folder_of = |i: usize| {
            let folder = kept[i]
                .1
                .parent()
                .and_then(Path::file_name)
                .map_or_else(|| "root".into(), |f| name_part(&f.to_string_lossy()));
            name_part(&format!("{folder}_{}", stems[i]))
        };
        let extension_of = |i: usize| {
            let ext = kept[i]
                .1
                .extension()
                .map_or_else(|| "none".into(), |e| name_part(&e.to_string_lossy()));
            name_part(&format!("{}_{ext}", stems[i]))
        };
        // Distinct within the group (in any case) and from every other input's name.
        let distinct = |names: &[String]| {
            let mut lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
            lower.sort();
            lower.dedup();
            lower.len() == names.len() && !lower.iter().any(|n| groups.contains_key(n.as_str()))
        };
        let by_folder: Vec<String> = group.iter().map(|&i| folder_of(i)).collect();
        let by_extension: Vec<String> = group.iter().map(|&i| extension_of(i)).collect();
        let (chosen, how) = if distinct(&by_folder) {
            (by_folder, "after their folders")
        } else if distinct(&by_extension) {
            (by_extension, "after their extensions")
        } else {
            (
                group
                    .iter()
                    .map(|&i| {
                        let id = kept[i].1.to_string_lossy();
                        format!("{}_{}", stems[i], short_hash(&id))
                    })
                    .collect(),
                "with a hash of their path",
            )
        };
        for (&i, n) in group.iter().zip(chosen) {
            names[i] = n;
        }
        let listing: Vec<String> = group
            .iter()
            .map(|&i| {
                format!(
                    "{} -> {}.h5ad",
                    esc(&kept[i].0.display().to_string()),
                    esc(&names[i])
                )
            })
            .collect();
        notes.push(format!(
            "{} inputs are named {}: outputs named {how} ({})",
            group.len(),
            esc(&stems[group[0]]),
            listing.join(", ")
        ));
    }
    // A last guarantee (e.g. a folder-derived name equal to another input's): unique names.
    let mut unique = UniqueStems::new();
    let samples = kept
        .into_iter()
        .zip(names)
        .map(|((input, _), name)| {
            let name = unique.claim(&name);
            let output = out_dir.join(format!("{name}.h5ad"));
            Sample {
                input,
                name,
                output,
            }
        })
        .collect();
    (samples, notes)
}

/// Results of a previous run of the sample, read back from its output (terminal states, fate
/// shares, notes, upstream steps, cells), with the time and memory recorded in the previous
/// `summary.json` when it has an entry for the same input and output. `None` when the output
/// does not hold them.
fn recorded(res: &mut SampleResult, previous: Option<&serde_json::Value>) -> Option<()> {
    use cellfate::io::{Element, H5adReader};
    let r = H5adReader::open(&res.output).ok()?;
    let Element::Str(text) = r.read("uns/cellfate/summary").ok()? else {
        return None;
    };
    let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    res.n_cells = r.n_obs().ok();
    res.terminal_states = strings(&summary["terminal_states"]);
    res.fate_shares = serde_json::from_value(summary["fate_shares"].clone()).unwrap_or_default();
    res.warnings = match r.read("uns/cellfate/warnings") {
        Ok(Element::Strings { values, .. }) => values,
        _ => strings(&summary["notes"]),
    };
    res.upstream_steps = match r.read("uns/cellfate/upstream_steps") {
        Ok(Element::Strings { values, .. }) => values,
        _ => Vec::new(),
    };
    if let Some(p) = previous.filter(|p| p["input"].as_str() == Some(res.input.as_str())) {
        res.seconds = p["seconds"].as_f64().unwrap_or(0.0);
        res.peak_rss_mb = p["peak_rss_mb"].as_f64();
    }
    Some(())
}

/// The previous `summary.json` entries of `dir`, by output path.
fn previous_entries(dir: &Path) -> HashMap<String, serde_json::Value> {
    // A FIFO or device named summary.json is ignored (it would block), not read.
    let Ok(text) = crate::read_text(&dir.join("summary.json")) else {
        return HashMap::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return HashMap::new();
    };
    v["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e["output"].as_str()?.to_string(), e.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// The text of a panic's payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Writes summary.json and summary.csv (and index.html with `--report` at the end).
struct SummaryWriter<'a> {
    dir: &'a Path,
    config: String,
    notes: Vec<String>,
    report: bool,
}

impl SummaryWriter<'_> {
    fn json(&self, results: &[SampleResult], complete: bool) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "created": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "complete": complete,
            "config": self.config,
            "notes": self.notes,
            "samples": results,
        }))?;
        let path = self.dir.join("summary.json");
        crate::kernel_cmd::write_atomic(&path, json.as_bytes())
            .with_context(|| format!("writing the batch summary {}", path.display()))
    }

    fn csv(&self, results: &[SampleResult]) -> anyhow::Result<()> {
        use cellfate::names::csv_record;
        let mut csv = csv_record([
            "sample",
            "status",
            "seconds",
            "peak_rss_mb",
            "n_cells",
            "upstream_steps",
            "terminal_states",
            "fate_shares",
            "warnings",
            "error",
            "input",
            "output",
        ]);
        for r in results {
            let shares: Vec<String> = r
                .fate_shares
                .iter()
                .map(|(n, s)| format!("{n}:{s:.4}"))
                .collect();
            csv.push_str(&csv_record([
                r.sample.clone(),
                r.status.clone(),
                format!("{:.3}", r.seconds),
                r.peak_rss_mb.map_or(String::new(), |m| format!("{m:.0}")),
                r.n_cells.map_or(String::new(), |n| n.to_string()),
                r.upstream_steps.join(";"),
                r.terminal_states.join(";"),
                shares.join(";"),
                r.warnings.join(" | "),
                r.error.clone().unwrap_or_default(),
                r.input.clone(),
                r.output.clone(),
            ]));
        }
        let path = self.dir.join("summary.csv");
        crate::kernel_cmd::write_atomic(&path, csv.as_bytes())
            .with_context(|| format!("writing the batch summary {}", path.display()))
    }

    fn index(&self, results: &[SampleResult]) -> anyhow::Result<()> {
        let entries: Vec<cellfate::report::html::IndexEntry> = results
            .iter()
            .map(|r| cellfate::report::html::IndexEntry {
                name: r.sample.clone(),
                status: r
                    .error
                    .as_ref()
                    .map_or(r.status.clone(), |e| format!("failed: {e}")),
                report: r.report.clone(),
                terminal_states: r.terminal_states.clone(),
                fate_shares: r.fate_shares.clone(),
                seconds: r.seconds,
            })
            .collect();
        let page = cellfate::report::html::index("cellfate batch", &entries);
        let path = self.dir.join("index.html");
        crate::kernel_cmd::write_atomic(&path, page.as_bytes())
            .with_context(|| format!("writing the batch index {}", path.display()))
    }

    /// Writes every summary file, trying each even when another fails; the errors, if any.
    fn write_all(&self, results: &[SampleResult], complete: bool) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if let Err(e) = self.json(results, complete) {
            errors.push(e);
        }
        if let Err(e) = self.csv(results) {
            errors.push(e);
        }
        if complete && self.report {
            if let Err(e) = self.index(results) {
                errors.push(e);
            }
        }
        errors
    }
}

/// What a batch did.
pub(crate) struct BatchOutcome {
    /// The per-sample report for stdout.
    pub(crate) report: String,
    /// Whether every sample succeeded (or was up to date).
    pub(crate) ok: bool,
    /// The summary could not be written (after every sample was tried).
    pub(crate) summary_error: Option<anyhow::Error>,
}

/// Computes one sample (and its report), filling `res`.
fn compute(a: &BatchArgs, spec: &pipeline::FateMapSpec, s: &Sample, res: &mut SampleResult) {
    let mut quiet = |_: &str| {};
    match pipeline::run(&s.input, &s.output, spec, &mut quiet) {
        Ok(sum) => {
            res.status = "ok".into();
            res.n_cells = Some(sum.n_cells);
            res.upstream_steps = sum.upstream_steps.clone();
            res.terminal_states = sum.estimators.terminal_states.clone();
            res.fate_shares = sum.estimators.fate_shares.clone();
            res.warnings = sum.warnings.clone();
            if a.report {
                let dir = a.out_dir.join("reports");
                let path = dir.join(format!("{}.html", s.name));
                // Checked when the batch started.
                let opts = cellfate::report::PlotOptions::from_spec(
                    &spec.figures,
                    spec.estimators.cluster_key.clone(),
                )
                .unwrap_or_default();
                let title = crate::report_cmd::title_of(&s.output);
                let umap = if spec.figures.basis.is_some() {
                    Ok(None)
                } else {
                    cellfate::upstream::umap_if_missing(&s.output).map_err(|e| e.to_string())
                };
                let made = umap
                    .and_then(|_| std::fs::create_dir_all(&dir).map_err(|e| e.to_string()))
                    .and_then(|()| {
                        cellfate::report::html::write_report(&s.output, &path, &title, &opts)
                            .map_err(|e| e.to_string())
                    });
                match made {
                    Ok(()) => res.report = Some(format!("reports/{}.html", s.name)),
                    Err(e) => res.warnings.push(format!("report not written: {e}")),
                }
            }
        }
        Err(e) => {
            let mut text = e.to_string();
            for h in crate::hints::for_pipeline("batch", &e) {
                text.push_str(&format!(" (hint: {h})"));
            }
            res.failed(text);
        }
    }
}

/// Runs the batch: the report, whether every sample succeeded, and any error writing the
/// summary.
pub(crate) fn run(a: BatchArgs) -> anyhow::Result<BatchOutcome> {
    use cellfate::names::escape_for_terminal as esc;
    let mut spec = build_spec(
        a.config.as_ref(),
        a.kernel.as_ref(),
        &a.params,
        None,
        &a.estimators,
    )?;
    a.upstream.apply(&mut spec)?;
    a.vectorfield.apply(&mut spec)?;
    a.figures.apply(&mut spec.figures);
    // Checked before any sample runs.
    cellfate::report::PlotOptions::from_spec(&spec.figures, spec.estimators.cluster_key.clone())
        .context("figures")?;
    a.figures.check_used(a.report, "--report")?;
    let jobs = crate::cap_threads("--jobs", a.jobs);
    let (samples, notes) = plan(&a.inputs, &a.out_dir);
    let config = spec.to_toml();
    if a.dry_run {
        let mut out = String::new();
        for n in &notes {
            out.push_str(&format!("# note: {n}\n"));
        }
        for s in &samples {
            let skip = if !a.force && up_to_date(&s.input, &s.output, &config) {
                " (skipped: output up to date; --force recomputes)"
            } else {
                ""
            };
            out.push_str(&format!(
                "# sample {}: {} -> {}{skip}\n",
                esc(&s.name),
                esc(&s.input.display().to_string()),
                esc(&s.output.display().to_string())
            ));
        }
        out.push_str(&format!(
            "# every sample runs with these settings ({jobs} at a time):\n",
        ));
        out.push_str(&spec.to_toml());
        return Ok(BatchOutcome {
            report: out,
            ok: true,
            summary_error: None,
        });
    }
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let previous = previous_entries(&a.out_dir);
    let writer = SummaryWriter {
        dir: &a.out_dir,
        config,
        notes: notes.clone(),
        report: a.report,
    };
    let results = Mutex::new(samples.iter().map(SampleResult::new).collect::<Vec<_>>());
    // A summary before any sample runs: the output directory is known to be writable, and a
    // batch that dies (killed, out of memory) leaves a summary saying which samples finished.
    let first = writer.write_all(
        &results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        false,
    );
    if let Some(e) = first.into_iter().next() {
        return Err(e);
    }
    let budget = a.max_memory.map(|gb| gb * 1e9);
    let in_use = Mutex::new(0.0f64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .context("thread pool")?;
    let bar = crate::progress::counter(samples.len());
    pool.install(|| {
        samples.par_iter().enumerate().for_each(|(i, s)| {
            let mut res = SampleResult::new(s);
            let prior = previous.get(&res.output);
            let skipped = !a.force
                && up_to_date(&s.input, &s.output, &writer.config)
                && recorded(&mut res, prior).is_some();
            if skipped {
                res.status = SKIPPED.into();
                let rel = format!("reports/{}.html", s.name);
                if a.out_dir.join(&rel).exists() {
                    res.report = Some(rel);
                }
            } else {
                res = SampleResult::new(s);
                // Memory budget: wait (politely) until this sample fits.
                let need = std::fs::metadata(&s.input)
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
                // Say which samples are on (a batch that dies leaves them marked).
                {
                    let mut all = results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    all[i].status = RUNNING.into();
                    drop(writer.write_all(&all, false));
                }
                let start = Instant::now();
                // A panic in one sample (a bug) fails that sample, not the batch.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut r = SampleResult::new(s);
                    compute(&a, &spec, s, &mut r);
                    r
                }));
                match outcome {
                    Ok(r) => res = r,
                    Err(p) => res.failed(format!(
                        "internal error (a bug; please report it): {}",
                        panic_text(p.as_ref())
                    )),
                }
                if budget.is_some() {
                    let mut used = in_use
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    *used -= need;
                }
                res.seconds = start.elapsed().as_secs_f64();
                res.peak_rss_mb = pipeline::peak_rss_mb();
            }
            crate::progress::sample_done(
                bar.as_ref(),
                &format!("{}: {} ({:.1} s)", res.sample, res.status, res.seconds),
            );
            // Record the sample and rewrite the summary (under the lock: one writer at a
            // time). A failed write here (e.g. a full disk) leaves the previous summary in
            // place; the final write below reports its own failure.
            let mut all = results
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all[i] = res;
            drop(writer.write_all(&all, false));
        });
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ok = results.iter().all(|r| r.status != "failed");
    let errors = writer.write_all(&results, true);
    let summary_error = if errors.is_empty() {
        None
    } else {
        let text: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        Some(anyhow::anyhow!(
            "the batch summary is incomplete: {}",
            text.join("; ")
        ))
    };
    let report = report_text(&notes, &results, &a.out_dir);
    Ok(BatchOutcome {
        report,
        ok,
        summary_error,
    })
}

/// The per-sample lines printed at the end of `batch` and `summary`.
fn report_text(notes: &[String], results: &[SampleResult], out_dir: &Path) -> String {
    use cellfate::names::escape_for_terminal as esc;
    let mut report = String::new();
    for n in notes {
        report.push_str(&format!("note: {n}\n"));
    }
    for r in results {
        report.push_str(&format!(
            "{:<30} {:<22} {:>8.2} s",
            esc(&r.sample),
            r.status,
            r.seconds
        ));
        if let Some(e) = &r.error {
            report.push_str(&format!("  {}", esc(e)));
        } else if !r.terminal_states.is_empty() {
            report.push_str(&format!(
                "  terminal: {}",
                crate::progress::names(&r.terminal_states)
            ));
        }
        if !r.upstream_steps.is_empty() {
            report.push_str(&format!(
                "  upstream: {}",
                crate::progress::names(&r.upstream_steps)
            ));
        }
        report.push('\n');
    }
    report.push_str(&format!(
        "summary -> {}\n",
        esc(&out_dir.join("summary.json").display().to_string())
    ));
    report
}

/// Arguments of `cellfate summary`.
#[derive(Debug, clap::Args)]
pub(crate) struct SummaryArgs {
    /// Outputs of `cellfate run` (or `batch`), one per sample; each row is named after its
    /// file, as `batch` names its outputs.
    #[arg(required = true)]
    outputs: Vec<PathBuf>,
    /// Directory for summary.json and summary.csv (the columns of `batch`'s summary).
    #[arg(long)]
    out_dir: PathBuf,
    /// Each sample's time and peak memory from DIR/<file stem>.tsv: a tab-separated header
    /// and one row with the columns `s` (seconds) and `max_rss` (MB), as Snakemake's
    /// `benchmark:` directive writes them (workflow/Snakefile); a missing or malformed table is
    /// an error naming it. Without the flag the times are 0 and the memory empty.
    #[arg(long, value_name = "DIR")]
    benchmarks: Option<PathBuf>,
}

impl SummaryArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::dirs(vec![self.out_dir.clone()])
    }
}

/// Seconds and peak memory (MB) from a benchmark table (see [`SummaryArgs::benchmarks`]).
/// `max_rss` may be `NA` or `-` where the system does not measure it (no memory then).
fn read_benchmark(path: &Path) -> anyhow::Result<(f64, Option<f64>)> {
    let text = crate::read_text(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(header), Some(row)) = (lines.next(), lines.next()) else {
        anyhow::bail!(
            "{}: expected a header line and a row of values (Snakemake's benchmark table)",
            path.display()
        );
    };
    let names: Vec<&str> = header.split('\t').map(str::trim).collect();
    let values: Vec<&str> = row.split('\t').map(str::trim).collect();
    let column = |name: &str| {
        names
            .iter()
            .position(|&n| n == name)
            .and_then(|i| values.get(i))
    };
    let seconds = column("s")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|x| x.is_finite() && *x >= 0.0)
        .with_context(|| {
            format!(
                "{}: expected a column `s` with the seconds (a number >= 0)",
                path.display()
            )
        })?;
    let rss = column("max_rss")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|x| x.is_finite() && *x >= 0.0);
    Ok((seconds, rss))
}

/// `cellfate summary`: one summary (batch's columns) over outputs computed elsewhere, e.g. by
/// a workflow engine running `cellfate run` per sample. A file that is not a complete
/// fate-mapping output is a failed row with the reason; the outcome is not ok then.
pub(crate) fn summarize(a: SummaryArgs) -> anyhow::Result<BatchOutcome> {
    let (samples, _) = plan(&a.outputs, &a.out_dir);
    let mut notes = Vec::new();
    if samples.len() < a.outputs.len() {
        notes.push(format!(
            "{} of the files were given twice (by some path): one row each",
            a.outputs.len() - samples.len()
        ));
    }
    let mut results = Vec::with_capacity(samples.len());
    let mut configs = Vec::new();
    for s in &samples {
        let mut res = SampleResult::new(s);
        // The row describes the given file: no input is known.
        res.output = s.input.display().to_string();
        res.input = String::new();
        res.status = "ok".into();
        if let Some(dir) = &a.benchmarks {
            // Named as the workflow names it: the file's stem as it is.
            let stem = s.input.file_stem().unwrap_or_default().to_string_lossy();
            let path = dir.join(format!("{stem}.tsv"));
            let (seconds, rss) = read_benchmark(&path)?;
            res.seconds = seconds;
            res.peak_rss_mb = rss;
        }
        match cellfate::io::H5adReader::open(&s.input) {
            Err(e) => res.failed(format!("not readable: {e}")),
            Ok(r) => {
                if let Ok(cellfate::io::Element::Str(c)) = r.read("uns/cellfate/config") {
                    configs.push(c);
                }
                drop(r);
                let (seconds, rss) = (res.seconds, res.peak_rss_mb);
                if recorded(&mut res, None).is_none() {
                    res.failed(
                        "not a complete fate-mapping output: uns/cellfate/summary is missing \
                         or unreadable (made by `cellfate run` or `batch`?)"
                            .into(),
                    );
                }
                (res.seconds, res.peak_rss_mb) = (seconds, rss);
            }
        }
        results.push(res);
    }
    configs.sort();
    configs.dedup();
    let config = match configs.as_slice() {
        [one] => one.clone(),
        [] => String::new(),
        _ => {
            notes.push(format!(
                "the outputs were made with {} different settings (uns/cellfate/config); the \
                 summary records none",
                configs.len()
            ));
            String::new()
        }
    };
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let writer = SummaryWriter {
        dir: &a.out_dir,
        config,
        notes: notes.clone(),
        report: false,
    };
    let errors = writer.write_all(&results, true);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(BatchOutcome {
        report: report_text(&notes, &results, &a.out_dir),
        ok: results.iter().all(|r| r.status != "failed"),
        summary_error: None,
    })
}
