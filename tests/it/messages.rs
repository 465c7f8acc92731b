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
