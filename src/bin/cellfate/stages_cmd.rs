//! Stage commands: `macrostates`, `terminal-states`, `fates`, `drivers`. Each reads what the
//! previous stage wrote (CellRank's keys) and adds its own results to a copy of the input.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cellfate::estimator_io::{
    read_cflare, read_cluster_key, read_gpcca, write_cflare, write_gpcca, write_terminal_states,
    Clusters,
};
use cellfate::estimators::absorption::{AbsorptionOptions, PrimingMethod, Solver};
use cellfate::estimators::drivers::{DriverTest, DriversError, Expression};
use cellfate::estimators::gpcca::Eigengap;
use cellfate::estimators::{
    AbsorptionTimesOptions, CellStates, DriverOptions, Estimator, EstimatorError, StatesInput,
    TerminalOptions,
};
use cellfate::io::{keys, Element, H5adEdit, H5adReader};
use cellfate::kernels::{CellSource, Direction};

use cellfate::names::{csv_record, escape_for_terminal};

use crate::progress::names as term_names;
use crate::run_cmd::{build_spec, EstimatorFlags};

/// Input/output shared by the stage commands.
#[derive(Debug, clap::Args)]
pub(crate) struct Io {
    /// Input .h5ad file (never modified).
    input: PathBuf,
    /// Output .h5ad file.
    #[arg(short, long)]
    output: PathBuf,
    /// obsp key of the transition matrix.
    #[arg(long, default_value = "T_fwd")]
    transition_key: String,
}

impl Io {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        crate::Outputs::files(vec![self.output.clone()])
    }
}

impl MacrostatesArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        self.io.outputs()
    }
}

impl TerminalArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        self.io.outputs()
    }
}

impl FatesArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        self.io.outputs()
    }
}

impl CflareArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        self.io.outputs()
    }
}

impl DriversArgs {
    pub(crate) fn outputs(&self) -> crate::Outputs {
        let mut o = self.io.outputs();
        o.files.extend(self.csv.clone());
        o
    }
}

/// `cellfate macrostates`.
#[derive(Debug, clap::Args)]
pub(crate) struct MacrostatesArgs {
    #[command(flatten)]
    io: Io,
    /// Compute this kernel expression first instead of reading obsp[transition_key] (not with
    /// --transition-key).
    #[arg(long, conflicts_with = "transition_key")]
    kernel: Option<String>,
    #[command(flatten)]
    flags: EstimatorFlags,
}

pub(crate) fn macrostates(a: MacrostatesArgs) -> anyhow::Result<String> {
    if a.flags.solver_given() {
        bail!("--solver applies to fate probabilities, which `cellfate macrostates` does not compute (use it with `cellfate run` or `cellfate fates`)");
    }
    if a.flags.variance_given() {
        bail!("--absorption-variance applies to absorption times, which `cellfate macrostates` does not compute (use it with `cellfate run` or `cellfate fates`)");
    }
    let tkey = if a.kernel.is_some() {
        None
    } else {
        Some(a.io.transition_key.clone())
    };
    let mut spec = build_spec(None, a.kernel.as_ref(), &[], tkey.as_ref(), &a.flags)?;
    spec.estimators.fates = false;
    spec.estimators.drivers = false;
    crate::run_cmd::check_cells(&a.io.input, &spec)?;
    let mut say = |_: &str| {};
    let summary = cellfate::pipeline::run(&a.io.input, &a.io.output, &spec, &mut say)
        .with_context(|| format!("macrostates on {}", a.io.input.display()))?;
    Ok(crate::run_cmd::summary_text(&summary))
}

/// `cellfate terminal-states`: re-select terminal states from existing macrostates.
#[derive(Debug, clap::Args)]
pub(crate) struct TerminalArgs {
    #[command(flatten)]
    io: Io,
    /// Rule: sinks (cellfate's default: stable macrostates that are not sources of the coarse
    /// chain), stability (CellRank's), top_n, eigengap, eigengap_coarse.
    #[arg(long)]
    method: Option<String>,
    /// Number of states for top_n (at least 1, at most the number of macrostates).
    #[arg(long, value_parser = crate::values::positive)]
    n_states: Option<usize>,
    /// Stability threshold (sinks and stability), in (0, 1] (default 0.96).
    #[arg(long, value_parser = crate::values::threshold)]
    threshold: Option<f64>,
    /// Cells per terminal state (default 30).
    #[arg(long, value_parser = crate::values::positive)]
    n_cells: Option<usize>,
    /// Set terminal states by hand: these macrostates, by name (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["obs", "cells_file", "method", "threshold", "n_states"])]
    states: Vec<String>,
    /// Set terminal states by hand from a categorical obs column (cells with no label are
    /// transient); no macrostates needed.
    #[arg(long, conflicts_with_all = ["cells_file", "method", "threshold", "n_states", "n_cells"])]
    obs: Option<String>,
    /// With --obs: keep only these categories (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "obs")]
    categories: Vec<String>,
    /// Set terminal states by hand from a CSV file of `cell,state` lines (cell = obs name);
    /// no macrostates needed.
    #[arg(long, conflicts_with_all = ["method", "threshold", "n_states", "n_cells"])]
    cells_file: Option<std::path::PathBuf>,
}

fn terminal_states_by_hand(a: &TerminalArgs, d: Direction) -> anyhow::Result<String> {
    let r = H5adReader::open(&a.io.input)?;
    let n = r.n_obs()?;
    let (labels, order, colors): (Vec<Option<String>>, Vec<String>, Option<Vec<String>>) =
        if let Some(col) = &a.obs {
            let labels = r
                .obs_labels(col)
                .with_context(|| format!("{}: obs[{col:?}]", a.io.input.display()))?;
            let mut cats = match r.column("obs", col)? {
                Element::Categorical(c) => c.categories.labels(),
                _ => {
                    let mut v: Vec<String> = labels.iter().flatten().cloned().collect();
                    v.sort();
                    v.dedup();
                    v
                }
            };
            let all_colors = strings(&r, &keys::uns(&keys::colors(col))).ok();
            let color_of = |c: &str, cats: &[String]| -> Option<String> {
                let q = cats.iter().position(|x| x == c)?;
                all_colors
                    .as_ref()
                    .filter(|v| v.len() == cats.len())?
                    .get(q)
                    .cloned()
            };
            let full = cats.clone();
            if !a.categories.is_empty() {
                for c in &a.categories {
                    if !cats.contains(c) {
                        bail!(
                            "{}: --categories: {c:?} is not a category of obs[{col:?}] (categories: {})",
                            a.io.input.display(),
                            cats.join(", ")
                        );
                    }
                }
                cats = a.categories.clone();
            }
            let colors: Option<Vec<String>> = cats.iter().map(|c| color_of(c, &full)).collect();
            (labels, cats, colors)
        } else {
            let path = a.cells_file.as_ref().context("no states given")?;
            let text = crate::read_text(path)?;
            let names = r.obs_names()?;
            let mut index: std::collections::HashMap<&str, usize> =
                std::collections::HashMap::with_capacity(names.len());
            for (i, s) in names.iter().enumerate() {
                if let Some(first) = index.insert(s.as_str(), i) {
                    bail!(
                        "--cells-file names cells by obs name, but the obs names of {} are not unique ({:?} is cell {first} and cell {i}); make them unique first (anndata: adata.obs_names_make_unique())",
                        a.io.input.display(),
                        cellfate::names::escape_for_terminal(s)
                    );
                }
            }
            let mut labels = vec![None; n];
            let mut order: Vec<String> = Vec::new();
            for (lineno, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // RFC 4180 fields: names holding commas or quotes come quoted.
                let fields = cellfate::names::parse_csv_line(line)
                    .filter(|f| f.len() == 2)
                    .with_context(|| {
                        format!(
                            "{}:{}: expected `cell,state` (two CSV fields; quote names holding commas)",
                            path.display(),
                            lineno + 1
                        )
                    })?;
                let (cell, state) = (fields[0].trim(), fields[1].trim());
                let Some(&i) = index.get(cell) else {
                    if lineno == 0 {
                        continue; // a header line
                    }
                    bail!(
                        "{}:{}: cell {cell:?} is not an obs name of {}",
                        path.display(),
                        lineno + 1,
                        a.io.input.display()
                    );
                };
                if let Some(prev) = &labels[i] {
                    if prev != state {
                        bail!(
                            "{}:{}: cell {cell:?} is in two states ({prev:?} and {state:?})",
                            path.display(),
                            lineno + 1
                        );
                    }
                }
                if !order.iter().any(|o| o == state) {
                    order.push(state.to_string());
                }
                labels[i] = Some(state.to_string());
            }
            (labels, order, None)
        };
    let mut edit = H5adEdit::new(&a.io.input);
    let t_slot = keys::obsp(&a.io.transition_key);
    let counts = if r.exists(&t_slot) {
        // Through the estimator (the same code as `run`), which also checks the labels.
        let mut g = read_gpcca(&r, &a.io.transition_key)?;
        let s = g
            .set_terminal_states(StatesInput::Labels {
                labels,
                states: Some(order.clone()),
                colors,
            })?
            .counts();
        write_gpcca(&mut edit, &r, &g)?;
        s
    } else {
        // No chain in the file: the states alone, under the same keys.
        let s = CellStates::from_labels(&labels, &order, colors)
            .with_context(|| format!("terminal states by hand on {}", a.io.input.display()))?;
        write_terminal_states(&mut edit, d, &s);
        s.counts()
    };
    edit.write_to(&a.io.output)?;
    let listing: Vec<String> = order
        .iter()
        .zip(&counts)
        .map(|(s, c)| format!("{} ({c} cells)", escape_for_terminal(s)))
        .collect();
    Ok(format!(
        "terminal states set by hand: {} -> {}\n",
        listing.join(", "),
        a.io.output.display()
    ))
}

fn strings(r: &H5adReader, slot: &str) -> anyhow::Result<Vec<String>> {
    match r.read(slot)? {
        Element::Strings { values, .. } => Ok(values),
        other => bail!(
            "{}: {slot}: expected strings, found {}",
            r.path().display(),
            other.encoding()
        ),
    }
}

pub(crate) fn terminal_states(a: TerminalArgs) -> anyhow::Result<String> {
    use cellfate::estimators::states::TerminalMethod;
    let d = if a.io.transition_key.ends_with("bwd") {
        Direction::Backward
    } else {
        Direction::Forward
    };
    if a.obs.is_some() || a.cells_file.is_some() {
        return terminal_states_by_hand(&a, d);
    }
    // Flags the chosen rule would ignore: before reading anything.
    let method_name = a.method.as_deref().unwrap_or("sinks");
    if a.n_states.is_some() && !matches!(method_name, "top_n" | "top-n") {
        bail!("--n-states applies to --method top_n, not --method {method_name}");
    }
    if a.threshold.is_some() && !matches!(method_name, "sinks" | "stability") {
        bail!("--threshold applies to --method sinks or stability, not --method {method_name}");
    }
    let r = H5adReader::open(&a.io.input)?;
    let mem_slot = keys::obsm(&keys::memberships(&keys::macrostates(d)));
    if !r.exists(&mem_slot) {
        bail!(
            "{}: no macrostates ({mem_slot} is missing); run `cellfate macrostates` first",
            a.io.input.display()
        );
    }
    let mut g = read_gpcca(&r, &a.io.transition_key)
        .with_context(|| format!("{}: restoring the GPCCA estimator", a.io.input.display()))?;
    let n_cells = a.n_cells.unwrap_or(30);
    let names = if a.states.is_empty() {
        let threshold = a.threshold.unwrap_or(0.96);
        let method = match method_name {
            "sinks" => TerminalMethod::Sinks {
                threshold,
                source_ratio: cellfate::estimators::states::SOURCE_RATIO,
            },
            "stability" => TerminalMethod::Stability { threshold },
            "top_n" | "top-n" => TerminalMethod::TopN {
                n_states: a.n_states.context("--method top_n needs --n-states")?,
            },
            "eigengap" => TerminalMethod::Eigengap { alpha: 1.0 },
            "eigengap_coarse" | "eigengap-coarse" => TerminalMethod::EigengapCoarse { alpha: 1.0 },
            other => {
                bail!("--method {other:?}: expected sinks, stability, top_n, eigengap or eigengap_coarse")
            }
        };
        g.predict_terminal_states(
            &method,
            &TerminalOptions {
                n_cells,
                fallback_top_n: None,
            },
        )?
        .names
        .clone()
    } else {
        g.set_terminal_states(StatesInput::Macrostates {
            names: a.states.clone(),
            n_cells,
        })?
        .names
        .clone()
    };
    let mut edit = H5adEdit::new(&a.io.input);
    write_gpcca(&mut edit, &r, &g)?;
    edit.write_to(&a.io.output)?;
    Ok(format!(
        "terminal states: {} -> {}\n",
        term_names(&names),
        a.io.output.display()
    ))
}

/// `cellfate fates`.
#[derive(Debug, clap::Args)]
pub(crate) struct FatesArgs {
    #[command(flatten)]
    io: Io,
    /// Also compute the mean absorption times.
    #[arg(long)]
    absorption_times: bool,
    /// Also their variances (implies --absorption-times; CellRank's calculate_variance).
    #[arg(long)]
    absorption_variance: bool,
    /// Lineage priming: kl_divergence (default), entropy, or none.
    #[arg(long, default_value = "kl_divergence")]
    priming: String,
    /// Linear solver: auto (sparse LU up to 30,000 transient cells, GMRES + ILU(0) above, with a
    /// coarse correction if it stalls), direct, gmres.
    #[arg(long, default_value = "auto")]
    solver: String,
}

pub(crate) fn fates(a: FatesArgs) -> anyhow::Result<String> {
    let r = H5adReader::open(&a.io.input)?;
    let mut g = read_gpcca(&r, &a.io.transition_key)
        .with_context(|| format!("{}: restoring the GPCCA estimator", a.io.input.display()))?;
    let solver: Solver = a.solver.parse()?;
    let method = match a.priming.as_str() {
        "kl_divergence" => Some(PrimingMethod::KlDivergence),
        "entropy" => Some(PrimingMethod::Entropy),
        "none" => None,
        other => bail!("--priming {other:?}: expected kl_divergence, entropy or none"),
    };
    if g.terminal_states().is_err() {
        bail!(
            "{}: no terminal states (obs[{:?}] is missing); run `cellfate terminal-states` or `cellfate macrostates` first",
            a.io.input.display(),
            keys::terminal_states(g.transition_matrix().direction())
        );
    }
    let f = g
        .compute_fate_probabilities(&AbsorptionOptions {
            solver,
            ..Default::default()
        })
        .with_context(|| format!("fate probabilities on {}", a.io.input.display()))?;
    let msg = format!(
        "fate probabilities for {} ({} cells, residual {:.1e}, rows sum to 1 within {:.1e}) -> {}\n",
        term_names(&f.names),
        r.n_cells(),
        f.residual,
        f.row_sum_error,
        a.io.output.display()
    );
    if a.absorption_times || a.absorption_variance {
        g.compute_absorption_times(&AbsorptionTimesOptions {
            calculate_variance: a.absorption_variance,
            ..Default::default()
        })?;
    }
    if let Some(m) = method {
        g.compute_lineage_priming(m, None)?;
    }
    let mut edit = H5adEdit::new(&a.io.input);
    write_gpcca(&mut edit, &r, &g)?;
    edit.write_to(&a.io.output)?;
    Ok(msg)
}

/// `cellfate drivers`.
#[derive(Debug, clap::Args)]
pub(crate) struct DriversArgs {
    #[command(flatten)]
    io: Io,
    /// Lineages to test (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    lineages: Vec<String>,
    /// Expression: X or a layer name.
    #[arg(long, default_value = "X")]
    layer: String,
    /// Permutation test with this many permutations (at least 1) instead of Fisher's z.
    #[arg(long, value_parser = crate::values::positive)]
    n_perms: Option<usize>,
    /// Seed of the permutation test (default 0; needs --n-perms).
    #[arg(long, requires = "n_perms")]
    seed: Option<u64>,
    /// Also write the table, sorted by the first lineage's correlation, as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

pub(crate) fn drivers(a: DriversArgs) -> anyhow::Result<String> {
    let r = H5adReader::open(&a.io.input)?;
    let mut g = read_gpcca(&r, &a.io.transition_key)
        .with_context(|| format!("{}: restoring the GPCCA estimator", a.io.input.display()))?;
    if g.fate_probabilities().is_err() {
        bail!(
            "{}: no fate probabilities ({} is missing); run `cellfate fates` first",
            a.io.input.display(),
            keys::obsm(&keys::lineages(g.transition_matrix().direction()))
        );
    }
    let test = match a.n_perms {
        Some(k) => DriverTest::PermTest {
            n_perms: k,
            seed: a.seed.unwrap_or(0),
        },
        None => DriverTest::Fisher,
    };
    let x = r.csr(&keys::layer(&a.layer))?;
    let table = match g.compute_lineage_drivers(
        &Expression::Sparse(&x),
        &DriverOptions {
            lineages: (!a.lineages.is_empty())
                .then(|| a.lineages.iter().map(|l| l.trim().to_string()).collect()),
            test,
            ..Default::default()
        },
    ) {
        Ok(t) => t.clone(),
        // One terminal state: nothing to correlate with. Skipped with a note (as `run` does);
        // the output is still written, so that a chain of stage commands goes on.
        Err(e @ EstimatorError::Drivers(DriversError::SingleLineage { .. })) => {
            let mut edit = H5adEdit::new(&a.io.input);
            write_gpcca(&mut edit, &r, &g)?;
            edit.write_to(&a.io.output)?;
            let csv = a
                .csv
                .as_ref()
                .map_or(String::new(), |p| format!(" (no table -> {})", p.display()));
            return Ok(format!(
                "note: lineage drivers skipped: {}{csv}\nno drivers -> {}\n",
                escape_for_terminal(&e.to_string()),
                a.io.output.display()
            ));
        }
        Err(e @ EstimatorError::Drivers(DriversError::UnknownLineage { .. })) => {
            bail!("--lineages: {e}")
        }
        Err(e) => return Err(e.into()),
    };
    let mut edit = H5adEdit::new(&a.io.input);
    write_gpcca(&mut edit, &r, &g)?;
    edit.write_to(&a.io.output)?;
    let mut msg = format!(
        "drivers for {} -> {}\n",
        term_names(&table.lineages),
        a.io.output.display()
    );
    if !table.non_finite_genes.is_empty() {
        let warning = cellfate::pipeline::estimate::non_finite_drivers_warning(
            &table,
            &r.var_names()?,
            &keys::layer(&a.layer),
        );
        msg.push_str(&format!("warnings:\n  {warning}\n"));
    }
    if let Some(path) = &a.csv {
        let genes = r.var_names()?;
        let cols = table.columns();
        // RFC 4180: lineage and gene names may hold commas, quotes or line breaks.
        let mut text =
            csv_record(std::iter::once("gene").chain(cols.iter().map(|(c, _)| c.as_str())));
        for g in table.ranking(0) {
            let gene = genes.get(g).map_or("", String::as_str);
            text.push_str(&csv_record(
                std::iter::once(gene.to_string()).chain(cols.iter().map(|(_, v)| v[g].to_string())),
            ));
        }
        crate::kernel_cmd::write_atomic(path, text.as_bytes())?;
        msg.push_str(&format!("table -> {}\n", path.display()));
    }
    Ok(msg)
}

/// `cellfate cflare`.
#[derive(Debug, clap::Args)]
pub(crate) struct CflareArgs {
    #[command(flatten)]
    io: Io,
    /// Eigenvectors computed (at least 2).
    #[arg(long, default_value_t = 20, value_parser = crate::values::at_least_two)]
    k: usize,
    /// Eigenvectors used (default: eigengap + 1; at most --k).
    #[arg(long = "use", value_parser = crate::values::positive)]
    use_k: Option<usize>,
    /// Percentile filter on the left eigenvectors, in (0, 100].
    #[arg(long, default_value_t = 98.0, value_parser = crate::values::percentile)]
    percentile: f64,
    /// Number of k-means clusters (default: the number of eigenvectors used).
    #[arg(long, value_parser = crate::values::positive)]
    n_clusters: Option<usize>,
    /// obs column naming the terminal states (default: clusters, when present).
    #[arg(long)]
    cluster_key: Option<String>,
    /// Seed of k-means.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub(crate) fn cflare(a: CflareArgs) -> anyhow::Result<String> {
    use cellfate::estimators::cflare::CflareOptions;
    if let Some(u) = a.use_k.filter(|&u| u > a.k) {
        bail!(
            "--use {u} eigenvectors, but --k {} computes only {}",
            a.k,
            a.k
        );
    }
    let r = H5adReader::open(&a.io.input)?;
    let mut c = read_cflare(&r, &a.io.transition_key)?;
    let clusters = read_cluster_key(&r, a.cluster_key.as_deref())?;
    c.fit(a.k)?;
    let names = c
        .predict(
            &CflareOptions {
                k: a.k,
                use_k: a.use_k,
                percentile: Some(a.percentile),
                n_clusters: a.n_clusters,
                seed: a.seed,
                ..Default::default()
            },
            clusters.as_ref().map(Clusters::reference),
        )?
        .names
        .clone();
    let res = c.result()?;
    let (gap, used) = (res.eigengap, res.use_k);
    let mut edit = H5adEdit::new(&a.io.input);
    write_cflare(&mut edit, &r, &c)?;
    edit.write_to(&a.io.output)?;
    Ok(format!(
        "CFLARE: eigengap {}, {used} eigenvectors used, terminal states {} -> {}\n",
        Eigengap::from_index(gap).position(),
        term_names(&names),
        a.io.output.display()
    ))
}
