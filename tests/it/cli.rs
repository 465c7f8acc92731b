//! The `cellfate` binary: `inspect` in text and JSON, `--help`, exit codes.

use crate::common::{cellfate, require_shared, succeed, tempdir};
use cellfate::kernels::CellSource;

#[test]
fn inspect_json_reports_shapes_and_slots() {
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let out = succeed(
        cellfate()
            .args(["inspect", "--json"])
            .arg(dir.join("pancreas_3696x2000.h5ad")),
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

/// Terminal states set by hand — from a categorical column, from a `cell,state` file, and by
/// macrostate names — reproduce CellRank's fate probabilities on the dentate-gyrus reference
/// (same transition matrix, same terminal cells; 1e-5 per entry as in the parity tests).
#[test]
fn terminal_states_set_by_hand() {
    let Some(r) = crate::common::reference("dentategyrus_200") else {
        return;
    };
    let dir = crate::common::tempdir();
    let input = r.path().to_path_buf();
    let want_names = crate::common::strings(&r, "uns/lineages_fwd_names");
    let (n, l, want) = r.dense("obsm/lineages_fwd").expect("reference fates");
    let check = |h5: &std::path::Path| {
        let out = dir.path().join("fates.h5ad");
        succeed(
            cellfate()
                .args(["fates", "--transition-key", "T_combined"])
                .arg(h5)
                .arg("-o")
                .arg(&out),
        );
        let got_r = cellfate::io::H5adReader::open(&out).expect("output opens");
        let names = crate::common::strings(&got_r, "uns/lineages_fwd_names");
        let (gn, gl, got) = got_r.dense("obsm/lineages_fwd").expect("fates written");
        assert_eq!((gn, gl), (n, l));
        let mut worst = 0.0f64;
        for (j, name) in want_names.iter().enumerate() {
            let k = names.iter().position(|x| x == name).expect("same lineages");
            for i in 0..n {
                worst = worst.max((got[i * l + k] - want[i * l + j]).abs());
            }
        }
        assert!(worst <= 1e-5, "max |Δ| = {worst:e}");
    };
    // 1. a categorical column (the reference's own terminal states)
    let a = dir.path().join("by_obs.h5ad");
    let o = succeed(
        cellfate()
            .args(["terminal-states", "--obs", "term_states_fwd"])
            .arg(&input)
            .arg("-o")
            .arg(&a),
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("cells)"));
    check(&a);
    // 2. a `cell,state` file with a header line
    let labels = r.obs_labels("term_states_fwd").expect("labels");
    let cells = r.obs_names().expect("obs names");
    let mut csv = String::from("cell,state\n");
    for (c, l) in cells.iter().zip(&labels) {
        if let Some(l) = l {
            csv.push_str(&format!("{c},{l}\n"));
        }
    }
    let f = dir.path().join("cells.csv");
    std::fs::write(&f, csv).expect("write csv");
    let b = dir.path().join("by_file.h5ad");
    succeed(
        cellfate()
            .args(["terminal-states", "--cells-file"])
            .arg(&f)
            .arg(&input)
            .arg("-o")
            .arg(&b),
    );
    check(&b);
    // 3. by macrostate name: the same cells as CellRank's terminal states (30 per state)
    let c = dir.path().join("by_name.h5ad");
    succeed(
        cellfate()
            .args([
                "terminal-states",
                "--transition-key",
                "T_combined",
                "--states",
                &want_names.join(","),
            ])
            .arg(&input)
            .arg("-o")
            .arg(&c),
    );
    let got = cellfate::io::H5adReader::open(&c)
        .expect("opens")
        .obs_labels("term_states_fwd")
        .expect("written");
    assert_eq!(got, labels);
    // Bad input: an unknown macrostate and an unknown cell are named in the error.
    let o = cellfate()
        .args([
            "terminal-states",
            "--transition-key",
            "T_combined",
            "--states",
            "Nowhere",
        ])
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("x.h5ad"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Nowhere"));
    std::fs::write(&f, "cell,state\nAAAC-1,Granule\nnot-a-cell,Granule\n").expect("write");
    let o = cellfate()
        .args(["terminal-states", "--cells-file"])
        .arg(&f)
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("y.h5ad"))
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cells.csv:"));
}
