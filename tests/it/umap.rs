//! UMAP (issue 24's first item, issue 20's `tl.umap`): the layout of CellRank's pancreas
//! graph is as trustworthy as scanpy's `sc.tl.umap` on the same graph (k = 15, within 0.02;
//! scanpy's figure by `scripts/scanpy_umap_reference.py` in
//! `tests/data/scanpy_umap_pancreas.json`), the same at 1 and 2 threads, the input untouched;
//! `preprocess --umap` and `run --plots` write `obsm["X_umap"]`; a file without a graph is an
//! error naming the slot.

use cellfate::io::H5adReader;
use cellfate::upstream::umap::trustworthiness;

use crate::common::{cellfate, require_shared, simulate_cli, succeed, tempdir};

fn dense(path: &std::path::Path, slot: &str) -> (usize, usize, Vec<f64>) {
    H5adReader::open(path)
        .expect("opens")
        .dense(slot)
        .expect(slot)
}

#[test]
fn layout_as_trustworthy_as_scanpys_and_thread_independent() {
    let Some(dir) = require_shared("reference/pancreas_3696") else {
        return;
    };
    let input = dir.join("reference.h5ad");
    let conn_before = H5adReader::open(&input)
        .unwrap()
        .csr("obsp/connectivities")
        .unwrap();
    let d = tempdir();
    let out = d.path().join("u.h5ad");
    let out1 = d.path().join("u1.h5ad");
    succeed(
        cellfate()
            .args(["-q", "umap"])
            .arg(&input)
            .arg("-o")
            .arg(&out),
    );
    succeed(
        cellfate()
            .args(["-q", "umap", "--threads", "1"])
            .arg(&input)
            .arg("-o")
            .arg(&out1),
    );
    let (n, c, y) = dense(&out, "obsm/X_umap");
    assert_eq!((n, c), (3696, 2));
    assert_eq!(dense(&out1, "obsm/X_umap").2, y, "1 vs 2 threads");
    let (_, w, pca) = dense(&input, "obsm/X_pca");
    let x: Vec<f64> = (0..n)
        .flat_map(|i| pca[i * w..i * w + 30].to_vec())
        .collect();
    let t = trustworthiness(&x, 30, &y, 2, 15);
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../data/scanpy_umap_pancreas.json")).expect("JSON");
    let scanpy = doc["trustworthiness_15"].as_f64().expect("number");
    eprintln!("trustworthiness (k = 15): cellfate {t:.4}, scanpy {scanpy:.4}");
    assert!(t >= scanpy - 0.02, "cellfate {t} vs scanpy {scanpy}");
    // scanpy's a and b for min_dist 0.5, and the graph (in the input and the output) as it
    // was.
    let r = H5adReader::open(&out).unwrap();
    for (k, v) in [("a", doc["a"].as_f64()), ("b", doc["b"].as_f64())] {
        let got = match r.read(&format!("uns/umap/params/{k}")).unwrap() {
            cellfate::io::Element::Scalar(x) => x.get_f64(0),
            other => panic!("uns/umap/params/{k}: {}", other.encoding()),
        };
        assert!((got - v.unwrap()).abs() < 1e-5, "{k}: {got}");
    }
    assert_eq!(r.csr("obsp/connectivities").unwrap(), conn_before);
    assert_eq!(
        H5adReader::open(&input)
            .unwrap()
            .csr("obsp/connectivities")
            .unwrap(),
        conn_before
    );
}

#[test]
fn preprocess_and_run_write_a_umap_and_a_missing_graph_is_named() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate_cli(&sim, &["--cells", "600"]);
    // preprocess --umap.
    let pre = d.path().join("pre.h5ad");
    succeed(
        cellfate()
            .args(["-q", "preprocess", "--umap"])
            .arg(&sim)
            .arg("-o")
            .arg(&pre),
    );
    let (n, c, y) = dense(&pre, "obsm/X_umap");
    assert_eq!((n, c), (600, 2));
    assert!(y.iter().all(|v| v.is_finite()));
    // Without --umap: none.
    let pre2 = d.path().join("pre2.h5ad");
    succeed(
        cellfate()
            .args(["-q", "preprocess"])
            .arg(&sim)
            .arg("-o")
            .arg(&pre2),
    );
    assert!(!H5adReader::open(&pre2).unwrap().exists("obsm/X_umap"));
    // run --plots on a file without an embedding lays one out for the figures.
    let out = d.path().join("run.h5ad");
    let plots = d.path().join("plots");
    succeed(
        cellfate()
            .args(["-q", "run"])
            .arg(&pre2)
            .arg("-o")
            .arg(&out)
            .arg("--plots")
            .arg(&plots),
    );
    assert!(H5adReader::open(&out).unwrap().exists("obsm/X_umap"));
    assert!(!H5adReader::open(&pre2).unwrap().exists("obsm/X_umap"));
    // The umap command on a file without a graph: an error naming the slot.
    let o = cellfate()
        .args(["-q", "umap"])
        .arg(&sim)
        .arg("-o")
        .arg(d.path().join("x.h5ad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("obsp/connectivities") && err.contains("preprocess"),
        "{err}"
    );
    // Bad parameters are refused by the parser.
    let o = cellfate()
        .args(["-q", "umap", "--spread", "0"])
        .arg(&pre)
        .arg("-o")
        .arg(d.path().join("y.h5ad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
}
