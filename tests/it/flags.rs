//! Flags and resources (issue 18, items 2 and 4).
//!
//! - Every documented conflict between two flags is an error (exit 2) whose message names both,
//!   and nothing is written or changed.
//! - Every flag of every command is enumerated from `--help`: a flag taking a number must be
//!   listed in [`NUMERIC`] with values it refuses (NaN, zero, negative, out of range), each
//!   refused with an error naming the flag; any other flag taking a value must be listed in
//!   [`TEXT`]. A new flag fails the test until it is classified.
//! - Resources: the thread count is capped with a warning; a FIFO, a directory or a device as
//!   input is refused at once (never blocks); a kernel expression nested 5,000 deep is refused;
//!   a dataset declaring 200 GB in a small file is refused, and plotting reads only the two
//!   columns it draws; a number of Schur vectors or macrostates the data cannot hold is refused
//!   before any computation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cellfate::io::{
    Categorical, DataFrame, Element, H5adError, H5adReader, NumVec, SparseArray, SparseFormat,
};
use cellfate::pipeline::{EstimatorSpec, FateMapSpec, NStates, PipelineError};

use crate::common::{cellfate, run_bounded, simulate_cli, snapshot, succeed, tempdir};

/// Runs `cmd` with its output captured in files, killing it after `secs`: a hang fails the
/// test instead of blocking the suite.
fn run_with_timeout(cmd: &mut Command, secs: u64) -> Output {
    run_bounded(cmd, Duration::from_secs(secs))
}

/// A small simulated raw dataset (100 cells, 20 genes, 2 fates).
fn simulated(dir: &Path) -> PathBuf {
    let p = dir.join("sim.h5ad");
    simulate_cli(&p, &["--cells", "100", "--genes", "20", "--fates", "2"]);
    p
}

/// The fixtures a command line refers to: `IN` (the simulated input), `OUT` (an output file
/// that must not appear), `DIR` (an output directory that must not appear), `FILE` (another
/// existing file).
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    input: PathBuf,
    file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempdir();
        let root = dir.path().to_path_buf();
        let input = simulated(&root);
        let file = root.join("cells.csv");
        std::fs::write(&file, "cell,state\n").expect("write");
        Self {
            _dir: dir,
            root,
            input,
            file,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = cellfate();
        for a in args {
            match *a {
                "IN" => cmd.arg(&self.input),
                "OUT" => cmd.arg(self.root.join("out.h5ad")),
                "DIR" => cmd.arg(self.root.join("outdir")),
                "FILE" => cmd.arg(&self.file),
                other => cmd.arg(other),
            };
        }
        cmd
    }
}

/// Documented conflicts: the command line and the two flags the error must name.
const CONFLICTS: &[(&[&str], [&str; 2])] = &[
    // perturb
    (
        &[
            "perturb", "IN", "-o", "OUT", "--gene", "gene_2", "--level", "0", "--fold", "2",
        ],
        ["--level", "--fold"],
    ),
    (
        &[
            "perturb",
            "IN",
            "-o",
            "OUT",
            "--gene",
            "gene_2",
            "--screen",
            "top_drivers:5",
        ],
        ["--gene", "--screen"],
    ),
    (
        &[
            "simulate",
            "-o",
            "OUT",
            "--model",
            "switch",
            "--knockout",
            "gene_1",
        ],
        ["--knockout", "--model"],
    ),
    // global
    (&["inspect", "IN", "-q", "-v"], ["--quiet", "--verbose"]),
    // kernel
    (
        &["kernel", "IN", "--in-place", "-o", "OUT"],
        ["--in-place", "--output"],
    ),
    (
        &["kernel", "IN", "-o", "OUT", "--seed", "3"],
        ["--seed", "--random-control"],
    ),
    (
        &[
            "kernel",
            "IN",
            "-o",
            "OUT",
            "--load-kernel",
            "FILE",
            "--kernel",
            "vk",
        ],
        ["--load-kernel", "--kernel"],
    ),
    (
        &[
            "kernel",
            "IN",
            "-o",
            "OUT",
            "--load-kernel",
            "FILE",
            "--param",
            "velocity.x=1",
        ],
        ["--load-kernel", "--param"],
    ),
    (
        &[
            "kernel",
            "IN",
            "-o",
            "OUT",
            "--load-kernel",
            "FILE",
            "--params-file",
            "FILE",
        ],
        ["--load-kernel", "--params-file"],
    ),
    // run
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--transition-key",
            "T_fwd",
            "--kernel",
            "connectivity",
        ],
        ["--transition-key", "--kernel"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--transition-key",
            "T_fwd",
            "--param",
            "velocity.x=1",
        ],
        ["--transition-key", "--param"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--transition-key",
            "T_fwd",
            "--root-cluster",
            "A",
        ],
        ["--transition-key", "--root-cluster"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--transition-key",
            "T_fwd",
            "--root-cell",
            "0",
        ],
        ["--transition-key", "--root-cell"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--transition-key",
            "T_fwd",
            "--recompute",
        ],
        ["--transition-key", "--recompute"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--root-cluster",
            "A",
            "--root-cell",
            "0",
        ],
        ["--root-cluster", "--root-cell"],
    ),
    (&["run", "IN", "--demo", "-o", "OUT"], ["--demo", "INPUT"]),
    (
        &["run", "-o", "OUT", "--demo-cells", "200"],
        ["--demo-cells", "--demo"],
    ),
    (
        &["run", "IN", "-o", "OUT", "--dry-run", "--json"],
        ["--dry-run", "--json"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--terminal-states",
            "A",
            "--terminal-method",
            "top_n",
        ],
        ["--terminal-states", "--terminal-method"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--terminal-states",
            "A",
            "--n-terminal",
            "2",
        ],
        ["--terminal-states", "--n-terminal"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--terminal-states",
            "A",
            "--stability-threshold",
            "0.5",
        ],
        ["--terminal-states", "--stability-threshold"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--terminal-method",
            "top_n",
            "--n-terminal",
            "2",
            "--stability-threshold",
            "0.5",
        ],
        ["--stability-threshold", "--terminal-method"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--n-states",
            "10",
            "--n-components",
            "5",
        ],
        ["--n-states", "--n-components"],
    ),
    (
        &["run", "IN", "-o", "OUT", "--basis", "umap"],
        ["--basis", "--plots"],
    ),
    (
        &["run", "IN", "-o", "OUT", "--n-walks", "5"],
        ["--n-walks", "--report"],
    ),
    (
        &["run", "IN", "-o", "OUT", "--walk-seed", "5"],
        ["--walk-seed", "--plots"],
    ),
    (
        &[
            "run",
            "IN",
            "-o",
            "OUT",
            "--optimizer",
            "nelder-mead",
            "--seed",
            "3",
        ],
        ["--seed", "--optimizer"],
    ),
    // batch
    (
        &["batch", "IN", "--out-dir", "DIR", "--n-walks", "5"],
        ["--n-walks", "--report"],
    ),
    (
        &[
            "batch",
            "IN",
            "--out-dir",
            "DIR",
            "--n-states",
            "4",
            "--n-components",
            "3",
        ],
        ["--n-states", "--n-components"],
    ),
    // macrostates
    (
        &[
            "macrostates",
            "IN",
            "-o",
            "OUT",
            "--kernel",
            "vk",
            "--transition-key",
            "T_fwd",
        ],
        ["--kernel", "--transition-key"],
    ),
    (
        &["macrostates", "IN", "-o", "OUT", "--solver", "direct"],
        ["--solver", "macrostates"],
    ),
    (
        &["macrostates", "IN", "-o", "OUT", "--absorption-variance"],
        ["--absorption-variance", "macrostates"],
    ),
    // terminal-states
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--states",
            "A",
            "--method",
            "top_n",
        ],
        ["--states", "--method"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--states",
            "A",
            "--threshold",
            "0.5",
        ],
        ["--states", "--threshold"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--states",
            "A",
            "--obs",
            "clusters",
        ],
        ["--states", "--obs"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--obs",
            "clusters",
            "--cells-file",
            "FILE",
        ],
        ["--obs", "--cells-file"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--obs",
            "clusters",
            "--n-cells",
            "5",
        ],
        ["--obs", "--n-cells"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--cells-file",
            "FILE",
            "--method",
            "top_n",
        ],
        ["--cells-file", "--method"],
    ),
    (
        &["terminal-states", "IN", "-o", "OUT", "--categories", "A"],
        ["--categories", "--obs"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--method",
            "top_n",
            "--threshold",
            "0.5",
        ],
        ["--threshold", "--method"],
    ),
    (
        &[
            "terminal-states",
            "IN",
            "-o",
            "OUT",
            "--method",
            "sinks",
            "--n-states",
            "2",
        ],
        ["--n-states", "--method"],
    ),
    // drivers, cflare, pseudotime
    (
        &["drivers", "IN", "-o", "OUT", "--seed", "1"],
        ["--seed", "--n-perms"],
    ),
    (
        &["cflare", "IN", "-o", "OUT", "--k", "5", "--use", "8"],
        ["--use", "--k"],
    ),
    (
        &["pseudotime", "IN", "-o", "OUT", "--cluster-key", "clusters"],
        ["--cluster-key", "--root-cluster"],
    ),
    (
        &[
            "pseudotime",
            "IN",
            "-o",
            "OUT",
            "--root-cluster",
            "A",
            "--root-cell",
            "0",
        ],
        ["--root-cluster", "--root-cell"],
    ),
    (
        &[
            "pseudotime",
            "IN",
            "-o",
            "OUT",
            "--n-comps",
            "5",
            "--n-dcs",
            "8",
        ],
        ["--n-dcs", "--n-comps"],
    ),
];

/// Flags taking a number, per command (`*` = every command: the global flags), with values
/// each must refuse.
const NUMERIC: &[(&str, &str, &[&str])] = &[
    ("*", "--threads", &["0", "-1", "NaN"]),
    ("run", "--n-states", &["0", "1", "5..3", "NaN"]),
    ("run", "--n-components", &["0", "1", "NaN", "-3"]),
    ("run", "--n-terminal", &["0", "-1", "NaN"]),
    (
        "run",
        "--stability-threshold",
        &["NaN", "0", "1.5", "-0.1", "inf"],
    ),
    ("run", "--n-cells", &["0", "-1"]),
    ("run", "--seed", &["-1", "NaN"]),
    ("run", "--demo-cells", &["0", "-5"]),
    ("run", "--max-iter", &["0", "-1", "NaN"]),
    ("velocity", "--max-iter", &["0", "-1", "NaN"]),
    ("preprocess", "--max-iter", &["0", "-1", "NaN"]),
    ("batch", "--max-iter", &["0", "-1", "NaN"]),
    ("run", "--n-walks", &["-1", "NaN"]),
    ("run", "--walk-seed", &["-1", "NaN"]),
    ("run", "--vf-dims", &["0", "-1", "NaN"]),
    ("batch", "--vf-dims", &["0"]),
    ("batch", "--n-states", &["0", "1", "NaN"]),
    ("batch", "--n-components", &["0", "1"]),
    ("batch", "--n-terminal", &["0"]),
    ("batch", "--stability-threshold", &["NaN", "0", "2"]),
    ("batch", "--n-cells", &["0"]),
    ("batch", "--seed", &["-1"]),
    ("batch", "--jobs", &["0", "-1", "NaN"]),
    ("batch", "--max-memory", &["NaN", "0", "-1", "inf"]),
    ("batch", "--n-walks", &["-1"]),
    ("batch", "--walk-seed", &["-1"]),
    ("macrostates", "--n-states", &["0", "1"]),
    ("macrostates", "--n-components", &["0", "1"]),
    ("macrostates", "--n-terminal", &["0"]),
    (
        "macrostates",
        "--stability-threshold",
        &["NaN", "0", "1.01"],
    ),
    ("macrostates", "--n-cells", &["0"]),
    ("macrostates", "--seed", &["-1"]),
    ("terminal-states", "--n-states", &["0", "-1"]),
    ("terminal-states", "--threshold", &["NaN", "0", "1.5"]),
    ("terminal-states", "--n-cells", &["0"]),
    ("drivers", "--n-perms", &["0", "-1"]),
    ("drivers", "--seed", &["-1"]),
    ("cflare", "--k", &["0", "1"]),
    ("cflare", "--use", &["0"]),
    ("cflare", "--percentile", &["NaN", "0", "101"]),
    ("cflare", "--n-clusters", &["0"]),
    ("cflare", "--seed", &["-1"]),
    ("kernel", "--seed", &["-1"]),
    ("plot", "--n-walks", &["-1"]),
    ("plot", "--walk-seed", &["-1"]),
    ("report", "--n-walks", &["-1"]),
    ("report", "--walk-seed", &["-1"]),
    ("run", "--width", &["0", "-1", "NaN", "100", "9000"]),
    ("run", "--height", &["0", "NaN"]),
    ("run", "--dpi", &["0", "-1", "NaN", "10", "1000"]),
    ("batch", "--width", &["0", "NaN"]),
    ("batch", "--height", &["0", "NaN"]),
    ("batch", "--dpi", &["0", "NaN"]),
    ("plot", "--width", &["0", "-1", "NaN", "100", "9000"]),
    ("plot", "--height", &["0", "-1", "NaN", "100", "9000"]),
    ("plot", "--dpi", &["0", "-1", "NaN", "10", "1000"]),
    ("report", "--width", &["0", "NaN"]),
    ("report", "--height", &["0", "NaN"]),
    ("report", "--dpi", &["0", "NaN"]),
    ("preprocess", "--n-neighbors", &["0", "1"]),
    ("preprocess", "--n-pcs", &["0"]),
    ("preprocess", "--n-top-genes", &["0"]),
    ("preprocess", "--min-shared-counts", &["NaN", "-1", "inf"]),
    ("umap", "--min-dist", &["NaN", "-1", "inf"]),
    ("umap", "--spread", &["NaN", "0", "-1", "inf"]),
    ("umap", "--n-epochs", &["0", "-1", "NaN"]),
    ("umap", "--seed", &["-1"]),
    ("pseudotime", "--n-comps", &["0", "1"]),
    ("pseudotime", "--n-dcs", &["0"]),
    ("simulate", "--cells", &["0"]),
    ("simulate", "--genes", &["0"]),
    ("simulate", "--fates", &["0"]),
    ("simulate", "--depth", &["NaN", "0", "-1", "inf"]),
    ("simulate", "--labeling-times", &["NaN", "0", "-1", "inf"]),
    ("simulate", "--seed", &["-1"]),
    ("simulate", "--noise", &["NaN", "-1", "inf"]),
    ("simulate", "--knockout-time", &["NaN", "-1", "inf"]),
    ("perturb", "--level", &["NaN", "-1", "inf"]),
    ("perturb", "--fold", &["NaN", "0", "-1", "inf"]),
    ("perturb", "--n-boot", &["-1", "NaN"]),
    ("perturb", "--seed", &["-1"]),
    ("vectorfield", "--dims", &["0", "-1"]),
    ("vectorfield", "--n-ctrl", &["0", "1", "NaN"]),
    ("vectorfield", "--max-iter", &["0", "-1", "NaN"]),
    ("vectorfield", "--lambda", &["NaN", "0", "-1", "inf"]),
    ("vectorfield", "--beta", &["NaN", "0", "-1", "inf"]),
    ("vectorfield", "--seed", &["-1", "NaN"]),
    ("topography", "--n-starts", &["-1", "NaN"]),
    ("topography", "--n-cell-starts", &["-1", "NaN"]),
    ("topography", "--seed", &["-1"]),
    ("potential", "--n-neighbors", &["0", "-1"]),
    ("predict-fate", "--time", &["NaN", "0", "-1", "inf"]),
    ("predict-fate", "--n-points", &["0", "1", "NaN"]),
];

/// Flags taking a value that is not a number (names, paths, expressions, choices).
const TEXT: &[&str] = &[
    "--output",
    "--out-dir",
    "--config",
    "--kernel",
    "--param",
    "--params-file",
    "--transition-key",
    "--cluster-key",
    "--terminal-method",
    "--optimizer",
    "--solver",
    "--terminal-states",
    "--root-cluster",
    "--root-cell",
    "--report",
    "--plots",
    "--basis",
    "--key",
    "--save-kernel",
    "--load-kernel",
    "--projection",
    "--format",
    "--title",
    "--method",
    "--states",
    "--obs",
    "--categories",
    "--cells-file",
    "--priming",
    "--lineages",
    "--layer",
    "--csv",
    "--velocity-mode",
    "--model",
    "--knn",
    "--dtype",
    "--mode",
    "--var-names",
    "--latent-root-cell",
    "--latent-root-cluster",
    "--latent-cluster-key",
    "--kinetics-csv",
    "--latent-time-csv",
    "--flow",
    "--from-cluster",
    "--animate",
    "--knockout",
    "--gene",
    "--cluster",
    "--screen",
    "--embedding",
    "--plot",
    "--kind",
    "--genes",
    "--time-key",
    "--data-key",
    "--labeling-time",
    "--experiment-type",
    "--one-shot-method",
    "--extreme",
    "--experiment",
    "--benchmarks",
    "--compression",
];

/// The subcommands listed by `cellfate --help`.
fn commands() -> Vec<String> {
    let out = succeed(cellfate().arg("--help"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut cmds = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if line.trim().is_empty() || !line.starts_with(' ') {
                break;
            }
            // Continuation lines of a description are indented further.
            if line.starts_with("  ") && !line.starts_with("   ") {
                let name = line.split_whitespace().next().expect("a name");
                if name != "help" {
                    cmds.push(name.to_string());
                }
            }
        }
    }
    assert!(cmds.len() >= 10, "commands parsed from --help: {cmds:?}");
    cmds
}

/// The long flags of `cmd` (from its `--help`) and whether each takes a value.
fn flags_of(cmd: &str) -> BTreeMap<String, bool> {
    let out = succeed(cellfate().args([cmd, "--help"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = BTreeMap::new();
    for line in text.lines() {
        let t = line.trim_start();
        if !t.starts_with('-') {
            continue;
        }
        // "-o, --output <OUTPUT>" or "--n-states <N_STATES>" or "-q, --quiet".
        let Some(pos) = t.find("--") else {
            continue;
        };
        let rest = &t[pos..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let after = rest[name.len()..].trim_start();
        flags.insert(name, after.starts_with('<'));
    }
    assert!(flags.contains_key("--help"), "{cmd}: {text}");
    flags
}

fn numeric_flags_of(cmd: &str) -> Vec<(&'static str, &'static [&'static str])> {
    NUMERIC
        .iter()
        .filter(|(c, _, _)| *c == cmd || *c == "*")
        .map(|(_, f, v)| (*f, *v))
        .collect()
}

/// Every flag of every command is classified (numeric with refused values, or text), and
/// every flag the tables name exists on its command.
#[test]
fn every_flag_is_classified_and_the_tables_match_the_help() {
    let cmds = commands();
    let mut unclassified = Vec::new();
    for cmd in &cmds {
        let flags = flags_of(cmd);
        for (flag, takes_value) in &flags {
            if !takes_value {
                continue;
            }
            let numeric = numeric_flags_of(cmd).iter().any(|(f, _)| f == flag);
            if !numeric && !TEXT.contains(&flag.as_str()) {
                unclassified.push(format!("{cmd} {flag}"));
            }
        }
        for (f, _) in numeric_flags_of(cmd) {
            assert!(
                flags.contains_key(f),
                "{cmd} has no flag {f} (NUMERIC table)"
            );
        }
    }
    assert!(
        unclassified.is_empty(),
        "flags taking a value that neither NUMERIC nor TEXT lists: {unclassified:?}"
    );
    for (args, pair) in CONFLICTS {
        let flags = flags_of(args[0]);
        for f in pair.iter().filter(|f| f.starts_with("--")) {
            assert!(
                flags.contains_key(*f),
                "{}: no flag {f} (CONFLICTS table)",
                args[0]
            );
        }
    }
    for (cmd, f, _) in NUMERIC.iter().filter(|(c, _, _)| *c != "*") {
        assert!(
            cmds.iter().any(|c| c == cmd),
            "NUMERIC names unknown command {cmd}"
        );
        let _ = f;
    }
}

/// Each documented conflict: exit 2, a message naming both flags, no file written or changed.
#[test]
fn conflicting_flags_are_errors_naming_both() {
    let fx = Fixture::new();
    let before = snapshot(&fx.root);
    for (args, [a, b]) in CONFLICTS {
        let out = run_with_timeout(&mut fx.command(args), 60);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(a) && err.contains(b),
            "{args:?}: the message must name {a} and {b}: {err}"
        );
        assert_eq!(
            snapshot(&fx.root),
            before,
            "{args:?}: a file was written or changed"
        );
    }
}

/// Each numeric flag refuses NaN, infinities, zero, negatives and values out of its range,
/// with an error naming the flag (checked by the argument parser: nothing runs).
#[test]
fn out_of_range_values_are_refused_naming_the_flag() {
    let fx = Fixture::new();
    let before = snapshot(&fx.root);
    for cmd in commands() {
        for (flag, values) in numeric_flags_of(&cmd) {
            for v in values {
                let mut args: Vec<&str> = vec![cmd.as_str()];
                match cmd.as_str() {
                    "batch" | "summary" => args.extend(["IN", "--out-dir", "DIR"]),
                    "plot" => args.extend(["IN", "-o", "DIR"]),
                    "simulate" => args.extend(["-o", "OUT"]),
                    "inspect" => args.push("IN"),
                    _ => args.extend(["IN", "-o", "OUT"]),
                }
                let value = format!("{flag}={v}");
                args.push(&value);
                let out = run_with_timeout(&mut fx.command(&args), 60);
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
                assert!(
                    err.contains(flag),
                    "{args:?}: the message must name {flag}: {err}"
                );
            }
        }
    }
    assert_eq!(snapshot(&fx.root), before, "a file was written or changed");
}

#[test]
fn threads_above_the_cap_are_capped_with_a_warning() {
    let fx = Fixture::new();
    let out = run_with_timeout(
        &mut fx.command(&["--threads", "100000", "inspect", "IN"]),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: --threads 100000") && err.contains("using"),
        "{err}"
    );
    let out = run_with_timeout(
        &mut fx.command(&[
            "batch",
            "IN",
            "--out-dir",
            "DIR",
            "--jobs",
            "100000",
            "--dry-run",
        ]),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: --jobs 100000"), "{err}");
    let out = run_with_timeout(&mut fx.command(&["--threads", "0", "inspect", "IN"]), 60);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--threads"), "{err}");
}

/// A FIFO (or directory, or device) given where a file is read is refused at once, naming
/// the path and what it is; nothing blocks.
#[test]
fn fifo_directory_and_device_inputs_are_refused_quickly() {
    let fx = Fixture::new();
    let fifo = fx.root.join("pipe.h5ad");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipping the FIFO cases: mkfifo is not available");
        return;
    }
    let f = fifo.to_str().expect("utf-8 path");
    let dir = fx.root.to_str().expect("utf-8 path");
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["inspect", f], f, "FIFO"),
        (vec!["run", f, "-o", "OUT"], f, "FIFO"),
        (vec!["kernel", f, "-o", "OUT"], f, "FIFO"),
        (vec!["plot", f, "-o", "DIR"], f, "FIFO"),
        (vec!["fates", f, "-o", "OUT"], f, "FIFO"),
        (vec!["run", "IN", "-o", "OUT", "--config", f], f, "FIFO"),
        (
            vec!["kernel", "IN", "-o", "OUT", "--params-file", f],
            f,
            "FIFO",
        ),
        (
            vec!["kernel", "IN", "-o", "OUT", "--load-kernel", f],
            f,
            "FIFO",
        ),
        (
            vec!["terminal-states", "IN", "-o", "OUT", "--cells-file", f],
            f,
            "FIFO",
        ),
        (vec!["inspect", dir], dir, "directory"),
        (
            vec!["inspect", "/dev/null"],
            "/dev/null",
            "character device",
        ),
    ];
    for (args, path, kind) in cases {
        let start = Instant::now();
        let out = run_with_timeout(&mut fx.command(&args), 30);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(path) && err.contains(kind) && err.contains("not a regular file"),
            "{args:?}: {err}"
        );
        assert!(start.elapsed() < Duration::from_secs(20), "{args:?}: slow");
        assert!(
            !fx.root.join("out.h5ad").exists(),
            "{args:?}: output written"
        );
    }
    let e = H5adReader::open(&fifo).expect_err("a FIFO");
    assert!(matches!(e, H5adError::NotRegularFile { .. }), "{e}");
}

/// A kernel expression nested 5,000 deep is refused (no stack overflow), naming the limit.
#[test]
fn deeply_nested_kernel_expressions_are_refused() {
    let fx = Fixture::new();
    let deep = format!("{}vk{}", "(".repeat(5000), ")".repeat(5000));
    let flips = format!("{}vk", "~".repeat(5000));
    for expr in [&deep, &flips] {
        for cmd in ["kernel", "run"] {
            let out = run_with_timeout(
                &mut fx.command(&[cmd, "IN", "-o", "OUT", "--kernel", expr]),
                60,
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd}: {}",
                &err[..err.len().min(400)]
            );
            assert!(
                err.contains("nested deeper than 64 levels") && err.contains("kernel expression"),
                "{cmd}: {}",
                &err[err.len().saturating_sub(600)..]
            );
            assert!(!fx.root.join("out.h5ad").exists());
        }
    }
}

/// A small file whose gzip-compressed, never-written `obsm["X_pca"]` declares 500 × 5·10⁷
/// (200 GB) is refused by the reader with the slot, shape and bound; `plot` reads only the
/// two columns it draws and finishes.
#[test]
fn huge_declared_shapes_are_refused_and_plots_read_two_columns() {
    let d = tempdir();
    let p = d.path().join("huge.h5ad");
    let n = 500;
    let mut obs = DataFrame::with_index((0..n).map(|i| format!("c{i}")).collect());
    let labels: Vec<Option<String>> = (0..n).map(|i| Some(format!("k{}", i % 3))).collect();
    obs.set_column(
        "clusters",
        Element::Categorical(Categorical::from_labels(&labels, None)),
    );
    let members = vec![
        ("obs".to_string(), Element::DataFrame(obs)),
        (
            "var".to_string(),
            Element::DataFrame(DataFrame::with_index(
                (0..10).map(|i| format!("g{i}")).collect(),
            )),
        ),
        ("obsm".to_string(), Element::Dict(Vec::new())),
        // A CSC matrix declaring 5·10¹⁰ rows: converting it to CSR would allocate 400 GB of
        // row pointers.
        (
            "uns".to_string(),
            Element::Dict(vec![(
                "tall".to_string(),
                Element::Sparse(SparseArray {
                    format: SparseFormat::Csc,
                    shape: [50_000_000_000, 3],
                    indptr: vec![0, 0, 0, 0],
                    indices: Vec::new(),
                    data: NumVec::F64(Vec::new()),
                }),
            )]),
        ),
    ];
    cellfate::io::write_new(&p, &members).expect("write fixture");
    {
        let f = hdf5::File::open_rw(&p).expect("open rw");
        let g = f.group("obsm").expect("obsm");
        g.new_dataset::<f64>()
            .chunk((n, 1000))
            .deflate(4)
            .shape((n, 50_000_000))
            .create("X_pca")
            .expect("create");
        f.close().expect("close");
    }
    let len = std::fs::metadata(&p).expect("metadata").len();
    assert!(len < 3_000_000, "the fixture is {len} bytes");
    let r = H5adReader::open(&p).expect("open");
    for e in [
        r.read("obsm/X_pca").expect_err("too large"),
        r.dense("obsm/X_pca").expect_err("too large"),
    ] {
        let msg = e.to_string();
        assert!(matches!(e, H5adError::TooLarge { .. }), "{msg}");
        assert!(
            msg.contains("huge.h5ad")
                && msg.contains("obsm/X_pca")
                && msg.contains("[500, 50000000]")
                && msg.contains("200.0 GB")
                && msg.contains("CELLFATE_ALLOW_LARGE"),
            "{msg}"
        );
    }
    let e = r.read("uns/tall").expect_err("too large").to_string();
    assert!(
        e.contains("uns/tall/indptr") && e.contains("[50000000001]"),
        "{e}"
    );
    let (rows, xy) = r
        .dense_columns("obsm/X_pca", 0..2)
        .expect("two columns")
        .expect("dense");
    assert_eq!((rows, xy.len()), (n, 2 * n));
    // The figures need the embedding's first two columns only.
    let out_dir = d.path().join("figs");
    let out = run_with_timeout(
        cellfate()
            .arg("plot")
            .arg(&p)
            .args(["--format", "svg", "-o"])
            .arg(&out_dir),
        120,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("figures ->"), "{text}");
    let svgs = std::fs::read_dir(&out_dir).expect("figures").count();
    assert!(svgs >= 1, "no figure written: {text}");
}

/// A dataset whose chunks were never written reads as fill values of any declared size from
/// a few bytes: in a file of 2 MB (whose size alone would allow 2 GB), a never-written
/// `obsp/distances/data` declaring 99 × 1 × 1.5·10⁷ 1-byte values (1.5 GB) is refused by
/// its own stored size (found by fuzzing: it aborted a 4 GB-limited process).
#[test]
fn never_written_datasets_are_bounded_by_what_they_store() {
    let d = tempdir();
    let p = d.path().join("fill.h5ad");
    // 2 MB of incompressible padding.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let pad: Vec<f64> = (0..262_144)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64
        })
        .collect();
    let members = vec![(
        "uns".to_string(),
        Element::Dict(vec![("pad".to_string(), Element::from_f64(pad))]),
    )];
    cellfate::io::write_new(&p, &members).expect("write fixture");
    {
        let f = hdf5::File::open_rw(&p).expect("open rw");
        let g = f.group("obsp").expect("obsp");
        let g = g.create_group("distances").expect("distances");
        g.new_dataset::<u8>()
            .chunk((16, 1, 16))
            .deflate(9)
            .shape((99, 1, 15_000_000))
            .create("data")
            .expect("create");
        f.close().expect("close");
    }
    let len = std::fs::metadata(&p).expect("metadata").len();
    assert!(
        (2_000_000..3_000_000).contains(&len),
        "the fixture is {len} bytes"
    );
    let r = H5adReader::open(&p).expect("open");
    let e = r.read("obsp/distances/data").expect_err("too large");
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            H5adError::TooLarge {
                stored: Some(_),
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("obsp/distances/data")
            && msg.contains("[99, 1, 15000000]")
            && msg.contains("the dataset has stored"),
        "{msg}"
    );
}

/// Schur vectors or macrostates the data cannot hold are refused before any computation,
/// naming the flag, the number of cells and the limit; through flags, TOML and the library.
#[test]
fn impossible_numbers_of_states_are_refused_up_front() {
    let fx = Fixture::new();
    for (extra, key) in [
        (
            &["--n-states", "99", "--n-components", "99"][..],
            "--n-states",
        ),
        (&["--n-components", "99"][..], "--n-components"),
        (&["--n-states", "98"][..], "--n-states"),
        // 4 states of 30 cells (the default n_cells) need 120 cells; the error names both
        // flags and both limits (at most 3 states, or at most 25 cells per state).
        (&["--n-states", "4"][..], "--n-cells"),
        (&["--n-states", "2..4"][..], "--n-cells"),
        (&["--n-states", "97", "--n-cells", "2"][..], "--n-cells"),
    ] {
        for cmd in ["run", "macrostates"] {
            let mut args = vec![cmd, "IN", "-o", "OUT"];
            if cmd == "macrostates" {
                args.extend(["--kernel", "connectivity"]);
            }
            args.extend(extra);
            let start = Instant::now();
            let out = run_with_timeout(&mut fx.command(&args), 60);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            let limit = if key == "--n-cells" {
                let per_state = if extra.contains(&"97") { 1 } else { 25 };
                err.contains("--n-states")
                    && err.contains(&format!("n_cells to at most {per_state}"))
                    && (per_state == 1 || err.contains("n_states to at most 3"))
            } else {
                err.contains("at most 97")
            };
            assert!(
                err.contains(key) && err.contains("100 cells") && limit,
                "{args:?}: {err}"
            );
            assert!(start.elapsed() < Duration::from_secs(30), "{args:?}: slow");
            assert!(!fx.root.join("out.h5ad").exists());
        }
    }
    // The same settings from a config file.
    let config = fx.root.join("c.toml");
    std::fs::write(&config, "[estimators.schur]\nn_components = 1\n").expect("write");
    let out = run_with_timeout(
        fx.command(&["run", "IN", "-o", "OUT", "--config"])
            .arg(&config),
        60,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("n_components") && err.contains("at least 2"),
        "{err}"
    );
    // The library.
    let bad = |spec: EstimatorSpec| -> String {
        match spec.validate() {
            Err(e @ PipelineError::Settings { .. }) => e.to_string(),
            other => panic!("{spec:?}: {other:?}"),
        }
    };
    let base = EstimatorSpec::default();
    assert!(base.validate().is_ok());
    let mut s = base.clone();
    s.schur.n_components = 0;
    assert!(bad(s).contains("n_components"));
    let mut s = base.clone();
    s.n_states = NStates::Fixed(1);
    assert!(bad(s).contains("at least 2 macrostates"));
    let mut s = base.clone();
    s.n_states = NStates::Range(5, 3);
    assert!(bad(s).contains("MIN <= MAX"));
    let mut s = base.clone();
    s.terminal = cellfate::estimators::states::TerminalMethod::Stability {
        threshold: f64::NAN,
    };
    assert!(bad(s).contains("(0, 1]"));
    let mut s = base.clone();
    s.n_states = NStates::Fixed(499);
    s.schur.n_components = 499;
    let e = s
        .validate_for_cells(500)
        .expect_err("500 cells")
        .to_string();
    assert!(e.contains("500 cells") && e.contains("at most 497"), "{e}");
    s.n_states = NStates::Fixed(10);
    s.schur.n_components = 20;
    assert!(s.validate_for_cells(500).is_ok());
    // 17 states of 30 cells need 510 cells; 16 fit in 500, and so do 17 of 29.
    s.n_states = NStates::Fixed(17);
    let e = s
        .validate_for_cells(500)
        .expect_err("17 x 30 > 500")
        .to_string();
    assert!(
        e.contains("n_cells (--n-cells) = 30")
            && e.contains("needs 510 cells")
            && e.contains("n_states to at most 16")
            && e.contains("n_cells to at most 29"),
        "{e}"
    );
    s.n_cells = 29;
    assert!(s.validate_for_cells(500).is_ok());
    s.n_cells = 30;
    s.n_states = NStates::Fixed(16);
    assert!(s.validate_for_cells(500).is_ok());
    let spec = FateMapSpec::from_toml("[estimators]\nn_cells = 0\n").expect("parses");
    assert!(spec.estimators.validate().is_err());
    // The absorption solver's settings from TOML: the key, the value and what is allowed
    // (a huge restart used to abort on allocating GMRES's basis).
    for (toml, key) in [
        (
            "restart = 9223372036854775807",
            "absorption.restart = 9223372036854775807",
        ),
        ("tol = 0.0", "absorption.tol = 0"),
        ("max_iter = 0", "absorption.max_iter = 0"),
        ("aggregate_size = 2", "absorption.aggregate_size = 2"),
    ] {
        let spec =
            FateMapSpec::from_toml(&format!("[estimators.absorption]\n{toml}\n")).expect("parses");
        let e = bad(spec.estimators);
        assert!(e.contains(key) && e.contains("expected"), "{toml}: {e}");
    }
    let spec =
        FateMapSpec::from_toml("[estimators.absorption]\naggregate_size = 0\n").expect("parses");
    assert!(spec.estimators.validate().is_ok());
    // Variances of absorption times that are not computed.
    let spec = FateMapSpec::from_toml(
        "[estimators]\nabsorption_times = false\nabsorption_variance = true\n",
    )
    .expect("parses");
    let e = bad(spec.estimators);
    assert!(
        e.contains("absorption_variance") && e.contains("absorption_times"),
        "{e}"
    );
    let spec =
        FateMapSpec::from_toml("[estimators]\nabsorption_variance = true\n").expect("parses");
    assert!(spec.estimators.validate().is_ok());
}

/// `--n-terminal` larger than the number of macrostates: an error naming the flag and the
/// number of macrostates, when that number is known.
#[test]
fn more_terminal_states_than_macrostates_is_an_error() {
    let fx = Fixture::new();
    let out = run_with_timeout(
        &mut fx.command(&[
            "run",
            "IN",
            "-o",
            "OUT",
            "-q",
            "--n-states",
            "3",
            "--n-cells",
            "5",
            "--terminal-method",
            "top_n",
            "--n-terminal",
            "50",
        ]),
        300,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--n-terminal 50") && err.contains("macrostates") && err.contains("top_n"),
        "{err}"
    );
    assert!(!fx.root.join("out.h5ad").exists());
}
