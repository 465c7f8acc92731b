//! Messages that do not mislead (issue 17, item 5): what the CLI prints on success and on
//! failure says what happened, in the terms of the command that prints it.

use crate::common::{cellfate, succeed, tempdir};

/// Runs `cmd` expecting exit code 2; returns stderr.
fn fails(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `preprocess -v` prints every stage's duration and, where known, the peak memory; the
/// sub-stages timed inside a stage have no peak of their own and print none (not `NaN`).
#[test]
fn preprocess_verbose_prints_no_nan() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    crate::common::write_simulation(&sim, 300, Some(80));
    let out = succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["-v", "--n-neighbors", "15", "-o"])
            .arg(d.path().join("pp.h5ad")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first moments"), "no sub-stage timings: {err}");
    assert!(
        !err.to_lowercase().contains("nan"),
        "NaN in the -v output: {err}"
    );
    for line in err.lines().filter(|l| l.contains(" MB")) {
        let mb = line
            .split("peak")
            .nth(1)
            .and_then(|s| s.trim().strip_suffix("MB"))
            .and_then(|s| s.trim().parse::<f64>().ok());
        assert!(mb.is_some_and(|m| m > 0.0), "bad peak line {line:?}");
    }
}

/// A cluster key given by name that is missing or not categorical is an error listing the
/// categorical obs columns — from the CLI (`run`, `macrostates`, `cflare`), a TOML config and
/// the library — before anything is computed; without a key, a file with no `clusters`
/// column still runs (states named 0, 1, ...), silently as in CellRank.
#[test]
fn an_unknown_cluster_key_is_an_error_listing_the_categorical_columns() {
    use cellfate::estimator_io::{read_cluster_key, read_clusters, EstimatorIoError};
    use cellfate::io::H5adReader;
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let a100 = data.join("adata_100.h5ad");
    let d = tempdir();
    let never = d.path().join("never.h5ad");
    let check = |err: &str, key: &str, problem: &str| {
        assert!(
            err.contains(&format!("cluster_key \"{key}\"")) && err.contains(problem),
            "{err}"
        );
        assert!(
            err.contains("categorical obs columns are: clusters, age(days), clusters_enlarged"),
            "{err}"
        );
    };
    let err = fails(
        cellfate()
            .arg("run")
            .arg(&a100)
            .args(["--cluster-key", "nope", "-o"])
            .arg(&never),
    );
    check(&err, "nope", "does not exist");
    // Nothing ran: the error comes before the kernel.
    assert!(!err.contains("] kernel"), "{err}");
    let err = fails(
        cellfate()
            .arg("macrostates")
            .arg(&a100)
            .args([
                "--kernel",
                "connectivity",
                "--cluster-key",
                "dpt_pseudotime",
            ])
            .arg("-o")
            .arg(&never),
    );
    check(&err, "dpt_pseudotime", "is not categorical");
    let toml = d.path().join("c.toml");
    std::fs::write(&toml, "[estimators]\ncluster_key = \"Clusters\"\n").expect("toml");
    let err = fails(
        cellfate()
            .arg("run")
            .arg(&a100)
            .arg("--config")
            .arg(&toml)
            .arg("-o")
            .arg(&never),
    );
    check(&err, "Clusters", "does not exist");
    let k = d.path().join("k.h5ad");
    succeed(
        cellfate()
            .arg("kernel")
            .arg(&a100)
            .args(["--kernel", "0.8*velocity + 0.2*connectivity", "-o"])
            .arg(&k),
    );
    let err = fails(
        cellfate()
            .arg("cflare")
            .arg(&k)
            .args(["--cluster-key", "nope", "-o"])
            .arg(&never),
    );
    check(&err, "nope", "does not exist");
    assert!(!never.exists());
    // The library: the same typed error, from the adapter and from the pipeline.
    let r = H5adReader::open(&a100).expect("open");
    let e = read_clusters(&r, "nope").expect_err("missing key");
    assert!(
        matches!(&e, EstimatorIoError::ClusterKey { key, categorical, .. }
            if key == "nope" && categorical.len() == 3),
        "{e}"
    );
    assert!(read_cluster_key(&r, Some("clusters"))
        .expect("clusters")
        .is_some());
    let spec = cellfate::pipeline::FateMapSpec::from_toml("[estimators]\ncluster_key = \"nope\"\n")
        .expect("toml");
    let e = cellfate::pipeline::run(&a100, &never, &spec, &mut |_| {}).expect_err("missing key");
    assert!(
        matches!(
            e,
            cellfate::pipeline::PipelineError::EstimatorIo(EstimatorIoError::ClusterKey { .. })
        ),
        "{e}"
    );
    // No key and no `clusters` column: silently unnamed (CellRank's default).
    let Some(dyngen) = crate::common::require_shared("data/dyngen_bifurcating_sim") else {
        return;
    };
    let r = H5adReader::open(dyngen.join("bifurcating.h5ad")).expect("open");
    assert!(read_cluster_key(&r, None).expect("no error").is_none());
}

/// One terminal state: every fate probability is 1, so `run` and `drivers` skip the drivers
/// with a note (no table written, no "drivers" line) instead of ranking rounding noise.
#[test]
fn drivers_of_a_single_lineage_are_skipped_with_a_note() {
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let d = tempdir();
    let out = d.path().join("one.h5ad");
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(data.join("adata_200.h5ad"))
            .args([
                "--n-cells",
                "5",
                "--terminal-method",
                "top_n",
                "--n-terminal",
                "1",
            ])
            .args(["-q", "-o"])
            .arg(&out),
    );
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        text.contains("note: lineage drivers skipped: lineage drivers need at least 2 lineages"),
        "{text}"
    );
    assert!(!text.contains("  drivers "), "drivers printed: {text}");
    let r = cellfate::io::H5adReader::open(&out).expect("output");
    assert!(r.exists("obsm/lineages_fwd"));
    assert!(!r.exists("varm/terminal_lineage_drivers"));
    let again = d.path().join("drivers.h5ad");
    let res = succeed(
        cellfate()
            .arg("drivers")
            .arg(&out)
            .arg("--csv")
            .arg(d.path().join("table.csv"))
            .arg("-o")
            .arg(&again),
    );
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(text.contains("lineage drivers skipped"), "{text}");
    assert!(!d.path().join("table.csv").exists());
    let r = cellfate::io::H5adReader::open(&again).expect("output");
    assert!(!r.exists("varm/terminal_lineage_drivers"));
}

/// The eigengap is said one way everywhere: `uns` keeps CellRank's 0-based index `i`; the
/// console, the JSON summary, the spectrum plot (SVG) and the notes say "after λ(i+1) …
/// → i+1 states suggested"; the macrostates computed beyond the suggestion are explained.
#[test]
fn the_eigengap_is_said_the_same_way_everywhere() {
    use cellfate::estimators::gpcca::Eigengap;
    let Some(data) = crate::common::require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let d = tempdir();
    let input = data.join("adata_200.h5ad");
    let out = d.path().join("a.h5ad");
    let figs = d.path().join("figs");
    let json = succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .args(["--n-cells", "5", "--json", "-q", "-o"])
            .arg(&out)
            .arg("--plots")
            .arg(&figs),
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let r = cellfate::io::H5adReader::open(&out).expect("output");
    let cellfate::io::Element::Scalar(stored) = r
        .read("uns/eigendecomposition_fwd/eigengap")
        .expect("eigengap")
    else {
        panic!("eigengap is not a scalar")
    };
    let stored = stored.get_f64(0) as usize;
    let gap = Eigengap::from_index(stored);
    let said = gap.to_string();
    let j = &v["estimators"]["eigengap"];
    assert_eq!(j["index"], stored, "{j}");
    assert_eq!(j["after_eigenvalue"], stored + 1, "{j}");
    assert_eq!(j["suggested_states"], stored + 1, "{j}");
    let text = succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .args(["--n-cells", "5", "-q", "-o"])
            .arg(d.path().join("b.h5ad")),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    let schur_line = text
        .lines()
        .find(|l| l.starts_with("Schur:"))
        .expect("Schur line");
    assert!(schur_line.ends_with(&said), "{schur_line}");
    assert!(!schur_line.contains("eigengap 0"), "{schur_line}");
    let svg = std::fs::read_to_string(figs.join("spectrum.svg")).expect("spectrum.svg");
    assert!(svg.contains(&said), "the spectrum plot says otherwise");
    // This file's gap suggests 1 state; GPCCA computes 2 and says why.
    let m = v["estimators"]["n_macrostates"].as_u64().expect("n") as usize;
    if gap.suggested_states < m {
        let why = format!("{said}, but GPCCA needs at least 2 macrostates: {m} computed");
        assert!(text.contains(&why), "{text}");
        let notes = v["estimators"]["notes"].to_string();
        assert!(
            notes.contains("GPCCA needs at least 2 macrostates"),
            "{notes}"
        );
    }
}
