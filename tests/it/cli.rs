//! The `cellfate` binary: `inspect` in text and JSON, `--help`, exit codes.

use crate::common::{cellfate, require_shared, tempdir};

#[test]
fn inspect_json_reports_shapes_and_slots() {
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let out = cellfate()
        .args(["inspect", "--json"])
        .arg(dir.join("pancreas_3696x2000.h5ad"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["n_obs"], 3696);
    assert_eq!(v["n_vars"], 2000);
    let layers: Vec<&str> = v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["key"].as_str().expect("key"))
        .collect();
    assert!(
        layers.contains(&"spliced") && layers.contains(&"unspliced"),
        "{layers:?}"
    );
    let clusters = v["obs"]
        .as_array()
        .expect("obs")
        .iter()
        .find(|c| c["name"] == "clusters")
        .expect("clusters");
    assert_eq!(clusters["kind"], "categorical");
    assert_eq!(clusters["categories"].as_array().expect("cats").len(), 8);
}

#[test]
fn inspect_text_and_help() {
    let Some(dir) = require_shared("data/dentategyrus_cellrank_gt") else {
        return;
    };
    let out = cellfate()
        .arg("inspect")
        .arg(dir.join("adata_50.h5ad"))
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("n_obs x n_vars = 50 x 143"), "{text}");
    assert!(text.contains("connectivities"));
    for args in [&["--help"][..], &["inspect", "--help"][..]] {
        let out = cellfate().args(args).output().expect("runs");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let d = tempdir();
    let p = d.path().join("bad.h5ad");
    std::fs::write(&p, "not hdf5").expect("write");
    let out = cellfate().arg("inspect").arg(&p).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("bad.h5ad") && err.contains("not an HDF5 file"),
        "{err}"
    );
    assert!(!err.contains("panicked") && !err.contains("backtrace"));
}
