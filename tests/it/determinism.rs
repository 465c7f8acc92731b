//! Determinism: `cellfate run` writes the same data, to the bit, at 1, 2 and 8 threads and on
//! a second run with the same input and seed — every stage, from the upstream steps on raw
//! counts (normalisation, PCA, kNN, moments, velocity) through the kernel, Schur, GPCCA,
//! terminal and initial states, fate probabilities, absorption times with their variances,
//! priming and drivers. The only slot allowed to differ is the wall-clock timings entry,
//! `uns["cellfate_timings"]` (`cellfate::pipeline::TIMINGS_SLOT`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cellfate::io::{Element, H5adReader};

use crate::common::{cellfate, simulate_cli, small_run_flags, succeed, tempdir};

/// Every leaf slot of an `.h5ad` file (the members of `uns`, `obsm`, `obsp`, `layers`, ...
/// expanded; `obs`/`var` read as whole data frames) with its value as exact text: `{:?}`
/// prints each float with the shortest digits that round-trip, so two texts are equal
/// exactly when the values are equal bit for bit (NaN payloads aside).
fn slots(path: &Path) -> BTreeMap<String, String> {
    fn flatten(slot: String, e: Element, out: &mut BTreeMap<String, String>) {
        match e {
            Element::Dict(members) => {
                for (k, v) in members {
                    flatten(format!("{slot}/{k}"), v, out);
                }
            }
            other => {
                out.insert(slot, format!("{other:?}"));
            }
        }
    }
    let r = H5adReader::open(path).expect("output opens");
    let mut out = BTreeMap::new();
    for key in r.keys("").expect("top-level keys") {
        let e = r.read(&key).unwrap_or_else(|e| panic!("{key}: {e}"));
        flatten(key, e, &mut out);
    }
    out
}

/// [`slots`] without the timings entry; checks that the timings entry exists (it is the one
/// thing left out, so it must be where the comparison expects it).
fn data_slots(path: &Path) -> BTreeMap<String, String> {
    let mut s = slots(path);
    let timings = cellfate::pipeline::TIMINGS_SLOT;
    assert!(
        s.remove(timings).is_some(),
        "{}: no {timings} (the timings moved?)",
        path.display()
    );
    assert!(
        !s.keys().any(|k| k.starts_with(timings)),
        "{}: timings in several slots",
        path.display()
    );
    s
}

/// Asserts that two outputs hold the same slots with the same values.
pub(crate) fn assert_same_data(a: &Path, b: &Path) {
    let (sa, sb) = (data_slots(a), data_slots(b));
    let ka: Vec<&String> = sa.keys().collect();
    let kb: Vec<&String> = sb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "{} and {} hold different slots",
        a.display(),
        b.display()
    );
    let differ: Vec<&String> = sa.keys().filter(|k| sa[*k] != sb[*k]).collect();
    assert!(
        differ.is_empty(),
        "{} and {} differ in {differ:?}",
        a.display(),
        b.display()
    );
}

/// `cellfate --threads T run INPUT -o OUT` with the small-simulation flags (and `extra`).
fn run(input: &Path, out: &Path, threads: usize, extra: &[&str]) {
    succeed(
        cellfate()
            .arg("--threads")
            .arg(threads.to_string())
            .arg("run")
            .arg(input)
            .args(small_run_flags("30"))
            .args(["--seed", "7"])
            .args(extra)
            .arg("-o")
            .arg(out),
    );
}

/// Raw counts of `cells` cells × 60 genes simulated by the CLI (two fates): every upstream
/// step runs.
fn simulate(dir: &Path, cells: usize) -> PathBuf {
    let sim = dir.join("sim.h5ad");
    let cells = cells.to_string();
    simulate_cli(
        &sim,
        &[
            "--fates", "2", "--genes", "60", "--seed", "3", "--cells", &cells,
        ],
    );
    sim
}

/// 1, 2 and 8 threads give the same bits in every slot, absorption times and their
/// variances included (default settings: sparse LU); a second run at 2 threads too.
///
/// 3,000 cells: on a few hundred cells faer's sparse LU stays on its sequential path whatever
/// its parallelism setting, and the absorption times came out the same; at 3,000 cells, with
/// the LU taking faer's global (thread-count) parallelism, `obsm["absorption_times_fwd"]`
/// differed between 1 and 2 threads.
#[test]
fn run_results_do_not_depend_on_the_thread_count() {
    let d = tempdir();
    let sim = simulate(d.path(), 3000);
    let out = |name: &str| d.path().join(name);
    for t in [1, 2, 8] {
        run(&sim, &out(&format!("t{t}.h5ad")), t, &[]);
    }
    run(&sim, &out("t2_again.h5ad"), 2, &[]);
    // The stages this test is about are there.
    let s = data_slots(&out("t1.h5ad"));
    for slot in [
        "X",
        "obsm/X_pca",
        "obsp/connectivities",
        "layers/velocity",
        "obsp/T_fwd",
        "obsm/schur_vectors_fwd",
        "obsm/macrostates_fwd_memberships",
        "obsm/lineages_fwd",
        "obsm/absorption_times_fwd",
        "obs",
        "varm/terminal_lineage_drivers",
    ] {
        assert!(
            s.contains_key(slot) || s.keys().any(|k| k.starts_with(&format!("{slot}/"))),
            "{slot} missing from the output: {:?}",
            s.keys().collect::<Vec<_>>()
        );
    }
    assert_same_data(&out("t1.h5ad"), &out("t2.h5ad"));
    assert_same_data(&out("t1.h5ad"), &out("t8.h5ad"));
    assert_same_data(&out("t2.h5ad"), &out("t2_again.h5ad"));
    // CFLARE (eigendecomposition, k-means) on the same transition matrix.
    for t in [1, 8] {
        succeed(
            cellfate()
                .arg("--threads")
                .arg(t.to_string())
                .arg("cflare")
                .arg(out("t1.h5ad"))
                .args(["--cluster-key", "clusters", "-q", "-o"])
                .arg(out(&format!("cflare{t}.h5ad"))),
        );
    }
    assert_same_data(&out("cflare1.h5ad"), &out("cflare8.h5ad"));
}

/// The iterative solver (GMRES + ILU(0) with its coarse correction) is thread-count
/// independent as well.
#[test]
fn gmres_results_do_not_depend_on_the_thread_count() {
    let d = tempdir();
    let sim = simulate(d.path(), 800);
    let (a, b) = (d.path().join("g1.h5ad"), d.path().join("g8.h5ad"));
    run(&sim, &a, 1, &["--solver", "gmres"]);
    run(&sim, &b, 8, &["--solver", "gmres"]);
    assert_same_data(&a, &b);
}

/// The timings (wall clock, memory) are in `uns["cellfate_timings"]` only, not among the
/// results: `uns["cellfate"]["run"]` has no stage seconds.
#[test]
fn timings_are_kept_apart_from_the_results() {
    let d = tempdir();
    let sim = simulate(d.path(), 300);
    let out = d.path().join("o.h5ad");
    run(&sim, &out, 2, &[]);
    let r = H5adReader::open(&out).expect("output");
    let Element::Str(t) = r.read(cellfate::pipeline::TIMINGS_SLOT).expect("timings") else {
        panic!("timings are not a string")
    };
    let t: serde_json::Value = serde_json::from_str(&t).expect("timings JSON");
    assert!(t["stages"].as_array().is_some_and(|s| !s.is_empty()), "{t}");
    let Element::Str(run) = r.read("uns/cellfate/run").expect("run") else {
        panic!("uns/cellfate/run is not a string")
    };
    assert!(
        !run.contains("seconds") && !run.contains("peak_rss"),
        "{run}"
    );
}
