//! Messages that do not mislead (issue 17, item 5): what the CLI prints on success and on
//! failure says what happened, in the terms of the command that prints it.

use crate::common::{cellfate, succeed, tempdir};

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
