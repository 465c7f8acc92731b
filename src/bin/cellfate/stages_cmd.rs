//! Stage commands: `macrostates`, `terminal-states`, `fates`, `drivers`. Each reads what the
//! previous stage wrote (CellRank's keys) and adds its own results to a copy of the input.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cellfate::estimators::absorption::{
    compute_absorption_times, compute_fate_probabilities, lineage_priming, AbsorptionOptions,
    PrimingMethod,
};
use cellfate::estimators::drivers::DriverTest;
use cellfate::estimators::states::{select_terminal, states_from_memberships};
use cellfate::io::{keys, Element, H5adEdit, H5adReader};
use cellfate::kernels::{CellSource, Direction};
use cellfate::pipeline::estimate::{drivers_for, read_terminal_states, write_drivers, write_fates};

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

/// `cellfate macrostates`.
#[derive(Debug, clap::Args)]
pub(crate) struct MacrostatesArgs {
    #[command(flatten)]
    io: Io,
    /// Compute this kernel expression first instead of reading obsp[transition_key].
    #[arg(long)]
    kernel: Option<String>,
    #[command(flatten)]
    flags: EstimatorFlags,
}

pub(crate) fn macrostates(a: MacrostatesArgs) -> anyhow::Result<String> {
    let tkey = if a.kernel.is_some() {
        None
    } else {
        Some(a.io.transition_key.clone())
    };
    let mut spec = build_spec(None, a.kernel.as_ref(), &[], tkey.as_ref(), &a.flags)?;
    spec.estimators.fates = false;
    spec.estimators.drivers = false;
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
    /// Rule: stability, top_n, eigengap_coarse.
    #[arg(long, default_value = "stability")]
    method: String,
    /// Number of states for top_n.
    #[arg(long)]
    n_states: Option<usize>,
    /// Threshold for stability.
    #[arg(long, default_value_t = 0.96)]
    threshold: f64,
    /// Cells per terminal state.
    #[arg(long, default_value_t = 30)]
    n_cells: usize,
    /// Set terminal states by hand: these macrostates, by name (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["obs", "cells_file"])]
    states: Vec<String>,
    /// Set terminal states by hand from a categorical obs column (cells with no label are
    /// transient); no macrostates needed.
    #[arg(long, conflicts_with = "cells_file")]
    obs: Option<String>,
    /// With --obs: keep only these categories (comma-separated).
    #[arg(long, value_delimiter = ',', requires = "obs")]
    categories: Vec<String>,
    /// Set terminal states by hand from a CSV file of `cell,state` lines (cell = obs name);
    /// no macrostates needed.
    #[arg(long)]
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
            let all_colors = strings(&r, &format!("uns/{col}_colors")).ok();
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
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let names = r.obs_names()?;
            let index: std::collections::HashMap<&str, usize> = names
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), i))
                .collect();
            let mut labels = vec![None; n];
            let mut order: Vec<String> = Vec::new();
            for (lineno, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (cell, state) = line.split_once(',').with_context(|| {
                    format!("{}:{}: expected `cell,state`", path.display(), lineno + 1)
                })?;
                let (cell, state) = (cell.trim(), state.trim());
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
    let counts = cellfate::pipeline::estimate::set_terminal_states_from_labels(
        &mut edit, d, &labels, &order, colors,
    )?;
    edit.write_to(&a.io.output)?;
    let listing: Vec<String> = order
        .iter()
        .zip(&counts)
        .map(|(s, c)| format!("{s} ({c} cells)"))
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
    let r = H5adReader::open(&a.io.input)?;
    let ms = keys::macrostates(d);
    let mem_slot = format!("obsm/{}", keys::memberships(&ms));
    if !r.exists(&mem_slot) {
        bail!(
            "{}: no macrostates ({mem_slot} is missing); run `cellfate macrostates` first",
            a.io.input.display()
        );
    }
    let (n, m, chi) = r.dense(&mem_slot)?;
    let names = strings(&r, &format!("uns/{}", keys::names(&ms)))?;
    let colors = strings(&r, &format!("uns/{}", keys::colors(&ms))).unwrap_or_default();
    // Stabilities (coarse self-transitions) are not needed when the states are named.
    let diag: Vec<f64> = if a.states.is_empty() {
        let (_, _, ct) = r.dense(&format!("uns/{}/X", keys::coarse(d)))?;
        (0..m).map(|q| ct[q * m + q]).collect()
    } else {
        vec![0.0; m]
    };
    let method = match a.method.as_str() {
        _ if !a.states.is_empty() => TerminalMethod::Names {
            states: a.states.clone(),
        },
        "stability" => TerminalMethod::Stability {
            threshold: a.threshold,
        },
        "top_n" | "top-n" => TerminalMethod::TopN {
            n_states: a.n_states.context("--method top_n needs --n-states")?,
        },
        "eigengap_coarse" | "eigengap-coarse" => TerminalMethod::EigengapCoarse { alpha: 1.0 },
        other => bail!("--method {other:?}: expected stability, top_n or eigengap_coarse"),
    };
    let sel = select_terminal(&names, &diag, &method, &[])?;
    let chi = nalgebra::DMatrix::from_fn(n, m, |i, j| chi[i * m + j]);
    // Ties in the memberships are broken by the chain (where the walk dwells), when the file
    // still holds it.
    let t_slot = format!("obsp/{}", a.io.transition_key);
    let t = if r.exists(&t_slot) {
        Some(r.transition_matrix(&a.io.transition_key)?)
    } else {
        None
    };
    let (assign, probs) = states_from_memberships(&chi, &sel, a.n_cells, t.as_ref())?;
    let sel_names: Vec<String> = sel.iter().map(|&q| names[q].clone()).collect();
    let ts = keys::terminal_states(d);
    let mut edit = H5adEdit::new(&a.io.input);
    edit.set(
        &format!("obs/{ts}"),
        Element::Categorical(cellfate::io::Categorical {
            codes: assign.iter().map(|x| x.map_or(-1, |q| q as i32)).collect(),
            categories: cellfate::io::Categories::Str(sel_names.clone()),
            ordered: false,
        }),
    );
    edit.set(
        &format!("obs/{}", keys::probs(&ts)),
        Element::from_f64(probs),
    );
    if colors.len() == m {
        edit.set(
            &format!("uns/{}", keys::colors(&ts)),
            Element::from_strings(sel.iter().map(|&q| colors[q].clone()).collect()),
        );
    }
    edit.write_to(&a.io.output)?;
    Ok(format!(
        "terminal states: {} -> {}\n",
        sel_names.join(", "),
        a.io.output.display()
    ))
}

/// `cellfate fates`.
#[derive(Debug, clap::Args)]
pub(crate) struct FatesArgs {
    #[command(flatten)]
    io: Io,
    /// Also compute mean and variance of the absorption times.
    #[arg(long)]
    absorption_times: bool,
    /// Lineage priming: kl_divergence (default), entropy, or none.
    #[arg(long, default_value = "kl_divergence")]
    priming: String,
    /// Linear solver: auto (sparse LU up to 30,000 transient cells, GMRES + ILU(0) above),
    /// direct, gmres.
    #[arg(long, default_value = "auto")]
    solver: String,
}

pub(crate) fn parse_solver(s: &str) -> anyhow::Result<cellfate::estimators::absorption::Solver> {
    use cellfate::estimators::absorption::Solver;
    Ok(match s {
        "auto" => Solver::Auto,
        "direct" | "lu" => Solver::Direct,
        "gmres" => Solver::Gmres,
        other => bail!("--solver {other:?}: expected auto, direct or gmres"),
    })
}

pub(crate) fn fates(a: FatesArgs) -> anyhow::Result<String> {
    let r = H5adReader::open(&a.io.input)?;
    let t = r.transition_matrix(&a.io.transition_key)?;
    let d = t.direction();
    let ts = keys::terminal_states(d);
    let (assign, names) = read_terminal_states(&r, &ts)?;
    let opts = AbsorptionOptions {
        solver: parse_solver(&a.solver)?,
        ..Default::default()
    };
    let eig: Vec<(f64, f64)> = cellfate::report::spectrum(&r, d)
        .map(|(re, im, _)| re.into_iter().zip(im).collect())
        .unwrap_or_default();
    let (f, sys) = compute_fate_probabilities(&t, &assign, &names, &opts)
        .map_err(|e| cellfate::pipeline::estimate::fates_error(e, &eig, names.len()))
        .with_context(|| format!("fate probabilities on {}", a.io.input.display()))?;
    let mut edit = H5adEdit::new(&a.io.input);
    let colors = strings(&r, &format!("uns/{}", keys::colors(&ts)))
        .unwrap_or_else(|_| cellfate::estimators::states::palette(names.len()).unwrap_or_default());
    write_fates(&mut edit, &r, d, &f, &colors)?;
    if a.absorption_times {
        let times = compute_absorption_times(&sys, &f, true, false)?;
        let mut df = cellfate::io::DataFrame::with_index(r.obs_names()?);
        let c = times.columns.len();
        let n = r.n_cells();
        for (k, name) in times.columns.iter().enumerate() {
            df.set_column(
                name,
                Element::from_f64((0..n).map(|i| times.values[i * c + k]).collect()),
            );
        }
        edit.set(
            &format!("obsm/{}", keys::absorption_times(d)),
            Element::DataFrame(df),
        );
    }
    let method = match a.priming.as_str() {
        "kl_divergence" => Some(PrimingMethod::KlDivergence),
        "entropy" => Some(PrimingMethod::Entropy),
        "none" => None,
        other => bail!("--priming {other:?}: expected kl_divergence, entropy or none"),
    };
    if let Some(m) = method {
        edit.set(
            &format!("obs/{}", keys::priming_degree(d)),
            Element::from_f64(lineage_priming(&f, m, None)?),
        );
    }
    edit.write_to(&a.io.output)?;
    Ok(format!(
        "fate probabilities for {} ({} cells, residual {:.1e}, rows sum to 1 within {:.1e}) -> {}\n",
        names.join(", "),
        r.n_cells(),
        f.residual,
        f.row_sum_error,
        a.io.output.display()
    ))
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
    /// Permutation test with this many permutations instead of Fisher's z.
    #[arg(long)]
    n_perms: Option<usize>,
    /// Seed of the permutation test.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the table, sorted by the first lineage's correlation, as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
}

pub(crate) fn drivers(a: DriversArgs) -> anyhow::Result<String> {
    let r = H5adReader::open(&a.io.input)?;
    let d = if a.io.transition_key.ends_with("bwd") {
        Direction::Backward
    } else {
        Direction::Forward
    };
    let lk = keys::lineages(d);
    let slot = format!("obsm/{lk}");
    if !r.exists(&slot) {
        bail!(
            "{}: no fate probabilities ({slot} is missing); run `cellfate fates` first",
            a.io.input.display()
        );
    }
    let (n, l, probs) = r.dense(&slot)?;
    let all_names = strings(&r, &format!("uns/{}", keys::names(&lk)))?;
    let wanted: Vec<usize> = if a.lineages.is_empty() {
        (0..l).collect()
    } else {
        a.lineages
            .iter()
            .map(|x| {
                all_names
                    .iter()
                    .position(|n| n == x.trim())
                    .with_context(|| {
                        format!(
                            "--lineages: unknown lineage {x:?} (lineages: {})",
                            all_names.join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let fates = cellfate::estimators::absorption::FateProbabilities {
        names: wanted.iter().map(|&j| all_names[j].clone()).collect(),
        probs: (0..n)
            .flat_map(|i| wanted.iter().map(move |&j| (i, j)))
            .map(|(i, j)| probs[i * l + j])
            .collect(),
        residual: 0.0,
        row_sum_error: 0.0,
        row_sum_tol: cellfate::estimators::absorption::ROW_SUM_TOL,
        max_absorption_time: None,
        solver: "from file",
    };
    let test = match a.n_perms {
        Some(k) => DriverTest::PermTest {
            n_perms: k,
            seed: a.seed,
        },
        None => DriverTest::Fisher,
    };
    let table = drivers_for(&r, &fates, &a.layer, &test)?;
    let mut edit = H5adEdit::new(&a.io.input);
    write_drivers(&mut edit, &r, d, &table)?;
    edit.write_to(&a.io.output)?;
    let mut msg = format!(
        "drivers for {} -> {}\n",
        fates.names.join(", "),
        a.io.output.display()
    );
    if let Some(path) = &a.csv {
        let genes = r.var_names()?;
        let cols = table.columns();
        let mut text = String::from("gene");
        for (c, _) in &cols {
            text.push(',');
            text.push_str(c);
        }
        text.push('\n');
        for g in table.ranking(0) {
            text.push_str(&genes[g]);
            for (_, v) in &cols {
                text.push_str(&format!(",{}", v[g]));
            }
            text.push('\n');
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
    /// Eigenvectors computed.
    #[arg(long, default_value_t = 20)]
    k: usize,
    /// Eigenvectors used (default: eigengap + 1).
    #[arg(long = "use")]
    use_k: Option<usize>,
    /// Percentile filter on the left eigenvectors.
    #[arg(long, default_value_t = 98.0)]
    percentile: f64,
    /// Number of k-means clusters (default: the number of eigenvectors used).
    #[arg(long)]
    n_clusters: Option<usize>,
    /// obs column naming the terminal states (default: clusters, when present).
    #[arg(long)]
    cluster_key: Option<String>,
    /// Seed of k-means.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub(crate) fn cflare(a: CflareArgs) -> anyhow::Result<String> {
    use cellfate::estimators::cflare::{cflare, CflareOptions};
    use cellfate::estimators::states::{name_states, ClusterReference};
    let r = H5adReader::open(&a.io.input)?;
    let t = r.transition_matrix(&a.io.transition_key)?;
    let d = t.direction();
    let res = cflare(
        &t,
        &CflareOptions {
            k: a.k,
            use_k: a.use_k,
            percentile: Some(a.percentile),
            n_clusters: a.n_clusters,
            seed: a.seed,
            ..Default::default()
        },
    )?;
    let key = a.cluster_key.clone().unwrap_or_else(|| "clusters".into());
    let (labels, cats, colors) = match r.column("obs", &key) {
        Ok(Element::Categorical(c)) => {
            let colors = match r.read(&format!("uns/{key}_colors")) {
                Ok(Element::Strings { values, .. }) => Some(values),
                _ => None,
            };
            (Some(c.to_labels()), c.categories.labels(), colors)
        }
        _ => (None, Vec::new(), None),
    };
    let reference = labels.as_ref().map(|l| ClusterReference {
        labels: l,
        categories: &cats,
        colors: colors.as_deref(),
    });
    let (names, cols) = name_states(&res.assignment, res.n_clusters, reference)?;
    let ts = keys::terminal_states(d);
    let mut edit = H5adEdit::new(&a.io.input);
    edit.set(
        &format!("obs/{ts}"),
        Element::Categorical(cellfate::io::Categorical {
            codes: res
                .assignment
                .iter()
                .map(|x| x.map_or(-1, |q| q as i32))
                .collect(),
            categories: cellfate::io::Categories::Str(names.clone()),
            ordered: false,
        }),
    );
    edit.set(
        &format!("obs/{}", keys::probs(&ts)),
        Element::from_f64(res.probs.clone()),
    );
    edit.set(
        &format!("uns/{}", keys::colors(&ts)),
        Element::from_strings(cols),
    );
    edit.write_to(&a.io.output)?;
    Ok(format!(
        "CFLARE: eigengap {}, {} eigenvectors used, terminal states {} -> {}\n",
        res.eigengap,
        res.use_k,
        names.join(", "),
        a.io.output.display()
    ))
}
