//! Defaults a user can trust (issue 17): with no settings, the true end states of simulations
//! with known fates and the right most likely fate for committed cells; the default rotation
//! optimiser completes every number of macrostates CellRank 2.3.3 completes on its own
//! pancreas transition matrix, at every seed.

use cellfate::estimators::gpcca::Optimizer;
use cellfate::estimators::schur::{SchurMethod, SchurOptions};
use cellfate::estimators::{Gpcca, MacrostatesOptions, NStates};
use cellfate::pipeline::{self, FateMapSpec};

use crate::common::{reference, strings, tempdir};

/// Runs the default pipeline (raw counts → preprocessing → kernel → GPCCA → fates) on a
/// simulation with `fates` fates and returns (terminal states, the true fate names, the
/// share of committed cells (true state not `Progenitor`) whose most likely fate is their
/// true fate).
fn default_run_on_simulation(
    cells: usize,
    fates: usize,
    seed: u64,
) -> (Vec<String>, Vec<String>, f64) {
    let dir = tempdir();
    let input = dir.path().join("sim.h5ad");
    let output = dir.path().join("out.h5ad");
    let sim = cellfate::sim::simulate(&cellfate::sim::SimParams {
        n_cells: cells,
        n_fates: fates,
        seed,
        ..Default::default()
    })
    .expect("simulate");
    cellfate::io::write_new(&input, &sim.to_elements()).expect("write the simulation");
    let summary = pipeline::run(&input, &output, &FateMapSpec::default(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{cells} cells, {fates} fates, seed {seed}: {e}"));
    let r = cellfate::io::H5adReader::open(&output).expect("output");
    let names = strings(&r, "uns/lineages_fwd_names");
    let (n, l, fp) = r.dense("obsm/lineages_fwd").expect("fate probabilities");
    assert_eq!((n, l), (cells, names.len()));
    let true_names = sim.fate_names();
    let (mut committed, mut right) = (0usize, 0usize);
    for i in 0..n {
        if sim.state[i] == "Progenitor" {
            continue;
        }
        committed += 1;
        let row = &fp[i * l..(i + 1) * l];
        let best = (0..l).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        if names[best] == true_names[sim.fate[i]] {
            right += 1;
        }
    }
    (
        summary.estimators.terminal_states,
        true_names,
        right as f64 / committed as f64,
    )
}

/// The project's simulator at 1 (a linear trajectory), 2, 3 and 6 fates: the default run
/// reports exactly the true end states (no progenitor state), and at least 97 % of the
/// committed cells get their true fate as the most likely one. Larger simulations and more
/// seeds: BENCHMARKS.md ("Terminal states with the defaults").
#[test]
fn default_run_finds_exactly_the_true_end_states() {
    for (cells, fates, seed) in [(2000, 1, 1), (2000, 2, 1), (3000, 3, 2), (3000, 6, 3)] {
        let (mut got, mut want, acc) = default_run_on_simulation(cells, fates, seed);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{cells} cells, {fates} fates, seed {seed}");
        assert!(
            acc >= 0.97,
            "{cells} cells, {fates} fates, seed {seed}: {:.2} % of committed cells with the right fate",
            100.0 * acc
        );
        eprintln!(
            "{cells} cells, {fates} fates, seed {seed}: {:.2} % of committed cells right",
            100.0 * acc
        );
    }
}

/// The default (gradient, multi-start) optimiser on CellRank's pancreas `T_combined`, for
/// m = 3..12 and seeds 0..=20: it never fails where CellRank 2.3.3 succeeds (CellRank's
/// outcome per m, by `scripts/cellrank_macrostates_m.py`, in
/// `tests/data/cellrank_macrostates_pancreas.json`), every macrostate keeps its 30 cells
/// and the crispness is at least CellRank's − 0.01 (printed here).
#[test]
fn default_optimizer_completes_where_cellrank_does() {
    let Some(r) = reference("pancreas_3696") else {
        return;
    };
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../data/cellrank_macrostates_pancreas.json"))
            .expect("JSON");
    let t = r.transition_matrix("T_combined").expect("T_combined");
    let mut g = Gpcca::new(t);
    g.compute_schur(&SchurOptions {
        n_components: 14,
        method: SchurMethod::Krylov,
        ..Default::default()
    })
    .expect("schur");
    for m in 3..=12usize {
        let theirs = &doc["results"][m.to_string()];
        let completed = theirs["completed"].as_bool().expect("completed");
        let mut crisp = Vec::new();
        for seed in 0..=20u64 {
            let opts = MacrostatesOptions {
                optimizer: Optimizer::Gradient {
                    n_starts: 10,
                    seed,
                    max_iter: 1000,
                    perturbation: 0.1,
                    budget: 5000,
                },
                ..Default::default()
            };
            let res = g.compute_macrostates(NStates::Fixed(m), &opts, None);
            if !completed {
                continue;
            }
            let ms = res.unwrap_or_else(|e| panic!("m = {m}, seed {seed}: {e}"));
            assert_eq!(ms.n_states(), theirs["n_states"].as_u64().unwrap() as usize);
            let c = ms.crispness.expect("crispness");
            assert!(c > 0.0 && c <= 1.0, "m = {m}, seed {seed}: crispness {c}");
            crisp.push(c);
        }
        if completed {
            let min = crisp.iter().copied().fold(f64::INFINITY, f64::min);
            let max = crisp.iter().copied().fold(0.0, f64::max);
            let cr = theirs["crispness"].as_f64().expect("CellRank's crispness");
            eprintln!(
                "m = {m}: crispness {min:.3}..{max:.3} over seeds 0..=20 (CellRank's Nelder-Mead {cr:.3})"
            );
            // Keeping a valid start never costs more than 0.01 against CellRank's optimum.
            assert!(
                min >= cr - 0.01,
                "m = {m}: crispness {min:.4} < CellRank's {cr:.4} - 0.01"
            );
        }
    }
}

/// The TOML part of a `--dry-run` print (its `#` comment lines dropped).
fn dry_run_toml(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `run --demo --dry-run` and `batch --dry-run` print exactly the settings the run then
/// records in `uns["cellfate"]["config"]` (the demo uses the defaults a user gets: the same
/// TOML as a plain `run --dry-run`).
#[test]
fn dry_run_prints_what_runs() {
    use crate::common::{cellfate, succeed};
    let dir = tempdir();
    let out = dir.path().join("demo.h5ad");
    let dry = succeed(
        cellfate()
            .args(["run", "--demo", "--dry-run", "-o"])
            .arg(&out),
    );
    let printed = dry_run_toml(&dry.stdout);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("# demo: simulate 3000 cells"),
        "the dry run names the simulation"
    );
    let plain = succeed(cellfate().args(["run", "--dry-run", "-o"]).arg(&out));
    assert_eq!(
        printed,
        dry_run_toml(&plain.stdout),
        "the demo uses the defaults"
    );
    succeed(cellfate().args(["run", "--demo", "-q", "-o"]).arg(&out));
    let r = cellfate::io::H5adReader::open(&out).expect("demo output");
    let recorded = match r.read("uns/cellfate/config").expect("config") {
        cellfate::io::Element::Str(s) => s,
        other => panic!("uns/cellfate/config: {}", other.encoding()),
    };
    let parse = |t: &str| FateMapSpec::from_toml(t).expect("TOML");
    assert_eq!(parse(&printed), parse(&recorded));
    // batch: the same for every sample.
    let input = dir.path().join("demo.simulation.h5ad");
    let out_dir = dir.path().join("batch");
    let flags = ["--n-states", "4", "--terminal-method", "stability"];
    let dry = succeed(
        cellfate()
            .args(["batch", "--dry-run", "--out-dir"])
            .arg(&out_dir)
            .arg(&input)
            .args(flags),
    );
    let text = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(text.contains("# sample demo.simulation:"), "{text}");
    assert!(!out_dir.exists(), "a dry run creates nothing");
    succeed(
        cellfate()
            .args(["batch", "--out-dir"])
            .arg(&out_dir)
            .arg(&input)
            .args(flags),
    );
    let r =
        cellfate::io::H5adReader::open(out_dir.join("demo.simulation.h5ad")).expect("batch output");
    let recorded = match r.read("uns/cellfate/config").expect("config") {
        cellfate::io::Element::Str(s) => s,
        other => panic!("uns/cellfate/config: {}", other.encoding()),
    };
    assert_eq!(parse(&dry_run_toml(&dry.stdout)), parse(&recorded));
}

/// The initial state is never terminal (issue 17, Deliver 2): raw pancreas with the default
/// rule at 8 macrostates used to report a Ductal macrostate as terminal *and* initial
/// ("terminal states: Alpha, Ductal_4, Beta"; its coarse stationary mass was 1e-8 against 12 %
/// of the cells). Now Alpha and Beta are terminal, the initial state is a Ductal one, and no
/// initial state is terminal. (The gradient optimiser's macrostates at 8 states differ between
/// machines, so the test asserts the rule's invariants rather than one list of names. Whether
/// a third, Ductal, macrostate is terminal too moves with OpenBLAS's kernels: on an AMD EPYC
/// its stability is 0.9615 with the Haswell and Zen kernels (terminal), 0.9674 with the Sandy
/// Bridge ones (a source: not terminal); an open sensitivity of the 8-state optimum, issue 17.)
#[test]
fn the_initial_state_is_never_terminal_on_pancreas() {
    let Some(dir) = crate::common::require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let d = tempdir();
    let res = crate::common::succeed(
        crate::common::cellfate()
            .arg("run")
            .arg(dir.join("pancreas_3696x2000.h5ad"))
            .arg("-o")
            .arg(d.path().join("out.h5ad"))
            .args(["--n-states", "8", "--json", "-q"]),
    );
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).expect("json");
    let list = |key: &str| -> Vec<String> {
        v["estimators"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{key}: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (term, init) = (list("terminal_states"), list("initial_states"));
    eprintln!("terminal {term:?}, initial {init:?}");
    let endocrine = |s: &str| {
        ["Alpha", "Beta", "Delta", "Epsilon"]
            .iter()
            .any(|e| s.starts_with(e))
    };
    assert!(
        term.contains(&"Alpha".to_string()) && term.contains(&"Beta".to_string()),
        "{term:?}"
    );
    // At most one terminal state outside the endocrine types: the machine-dependent Ductal
    // state above (never the initial state: asserted below).
    assert!(
        term.iter().filter(|s| !endocrine(s)).count() <= 1,
        "{term:?}"
    );
    assert!(
        !init.is_empty() && init.iter().all(|s| s.starts_with("Ductal")),
        "{init:?}"
    );
    assert!(init.iter().all(|s| !term.contains(s)), "{term:?} {init:?}");
}
