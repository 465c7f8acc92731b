//! Data validation at the boundary: raw counts must be finite and non-negative (the error
//! names the file, the layer, the first bad cell and gene, the value and how many values are
//! bad); NaN in a processed layer is an error naming the slot (moments for the velocity
//! kernel) or an explicit, reported exclusion (genes for the drivers); the run summary, text
//! and JSON, carries a `warnings` list.

use std::path::{Path, PathBuf};

use cellfate::io::{Element, H5adEdit, H5adReader, NumVec, SparseArray};

use crate::common::{cellfate, simulate_cli, small_run_flags, succeed, tempdir};

/// Raw counts of 300 cells × 40 genes, two fates (the CLI's simulator).
fn simulate(dir: &Path) -> PathBuf {
    let sim = dir.join("sim.h5ad");
    simulate_cli(
        &sim,
        &[
            "--fates", "2", "--cells", "300", "--genes", "40", "--seed", "5",
        ],
    );
    sim
}

/// Sets stored value `k` of a sparse matrix.
fn set_stored(m: &mut SparseArray, k: usize, v: f64) {
    match &mut m.data {
        NumVec::F32(d) => d[k] = v as f32,
        NumVec::F64(d) => d[k] = v,
        _ => panic!("unexpected dtype"),
    }
}

/// Row of stored value `k`.
fn row_of(m: &SparseArray, k: usize) -> usize {
    m.indptr.partition_point(|&p| p <= k) - 1
}

/// A copy of `input` at `output` with `slot` replaced.
fn edited(input: &Path, output: &Path, slot: &str, e: Element) {
    let mut edit = H5adEdit::new(input);
    edit.set(slot, e);
    edit.write_to(output).expect("write the edited copy");
}

fn sparse(r: &H5adReader, slot: &str) -> SparseArray {
    match r.read(slot).expect(slot) {
        Element::Sparse(s) => s,
        other => panic!(
            "{slot}: expected a sparse matrix, found {}",
            other.encoding()
        ),
    }
}

/// Negative raw counts: `run` fails before any computation, naming the file, the layer, the
/// first bad cell and gene (obs/var names), the value and the number of bad values; nothing
/// is written.
#[test]
fn negative_raw_counts_are_refused_with_layer_cell_gene_and_value() {
    let d = tempdir();
    let sim = simulate(d.path());
    let r = H5adReader::open(&sim).expect("simulation");
    let (obs, var) = (
        r.obs_names().expect("obs names"),
        r.var_names().expect("var names"),
    );
    let mut s = sparse(&r, "layers/unspliced");
    // Two bad values: the first (in row-major order) is -3 at stored position k.
    let k = s.indptr[7] + 1;
    let (cell, gene) = (row_of(&s, k), s.indices[k] as usize);
    set_stored(&mut s, k, -3.0);
    let last = s.indices.len() - 1;
    set_stored(&mut s, last, f64::NAN);
    drop(r);
    let bad = d.path().join("negative.h5ad");
    edited(&sim, &bad, "layers/unspliced", Element::Sparse(s));
    let out = d.path().join("out.h5ad");
    let res = cellfate()
        .arg("run")
        .arg(&bad)
        .args(small_run_flags("30"))
        .arg("-o")
        .arg(&out)
        .output()
        .expect("runs");
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "negative counts accepted: {msg}");
    assert!(
        res.status.code().is_some_and(|c| c != 101),
        "a crash, not an error: {msg}"
    );
    for want in [
        "negative.h5ad".to_string(),
        "layers[\"unspliced\"]".to_string(),
        format!("cell {:?}", obs[cell]),
        format!("gene {:?}", var[gene]),
        "-3".to_string(),
        "2 of".to_string(),
        "finite, non-negative".to_string(),
    ] {
        assert!(msg.contains(&want), "{want:?} not in: {msg}");
    }
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(!out.exists(), "an output was written");
    // `preprocess` says the same.
    let res = cellfate()
        .arg("preprocess")
        .arg(&bad)
        .arg("-o")
        .arg(d.path().join("pp.h5ad"))
        .output()
        .expect("runs");
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{msg}");
    assert!(
        msg.contains("layers[\"unspliced\"]") && msg.contains(&format!("cell {:?}", obs[cell])),
        "{msg}"
    );
}

/// The library's typed error, on counts in memory (no names: the indices stand in).
#[test]
fn invalid_counts_are_a_typed_error() {
    let sim = cellfate::sim::simulate(&cellfate::sim::SimParams {
        n_cells: 120,
        n_genes: 20,
        ..Default::default()
    })
    .expect("simulate");
    let mut x = sim.spliced.to_csr().expect("csr");
    let (row, col) = (3, x.row(3).0[0] as usize);
    let k = x.indptr()[3];
    x.data_mut()[k] = f64::NEG_INFINITY;
    let raw = cellfate::upstream::RawCounts {
        spliced: sim.spliced.to_csr().expect("csr"),
        unspliced: sim.unspliced.to_csr().expect("csr"),
        x: Some(x),
        float64: Default::default(),
    };
    let e = cellfate::upstream::preprocess(raw, &Default::default(), "memory")
        .expect_err("invalid X accepted");
    let cellfate::upstream::UpstreamError::InvalidCounts(e) = e else {
        panic!("not an InvalidCounts error: {e}")
    };
    assert_eq!(
        (e.slot.as_str(), e.row, e.col, e.bad),
        ("X", row, col, 1),
        "{e}"
    );
    assert!(e.value == f64::NEG_INFINITY && e.file == "memory", "{e}");
    assert_eq!(e.cell, row.to_string());
}

/// `cellfate preprocess` of the simulation (a processed input: no upstream step runs).
fn processed(dir: &Path) -> PathBuf {
    let sim = simulate(dir);
    let pp = dir.join("pp.h5ad");
    succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .args(["--n-top-genes", "40", "-q", "-o"])
            .arg(&pp),
    );
    pp
}

/// NaN in X: the drivers exclude the genes concerned and say so in the summary's `warnings`
/// (text and JSON), naming how many and which; the other genes are ranked as before.
#[test]
fn nan_in_x_excludes_driver_genes_with_a_warning() {
    let d = tempdir();
    let pp = processed(d.path());
    let r = H5adReader::open(&pp).expect("processed");
    let var = r.var_names().expect("var names");
    let mut x = sparse(&r, "X");
    drop(r);
    // Genes 2 and 5 get a NaN (in one cell each), gene 7 an infinity.
    let mut hit = Vec::new();
    for gene in [2u32, 5, 7] {
        let k = x
            .indices
            .iter()
            .position(|&j| j == gene)
            .expect("gene stored somewhere");
        set_stored(&mut x, k, if gene == 7 { f64::INFINITY } else { f64::NAN });
        hit.push(var[gene as usize].clone());
    }
    let nan = d.path().join("nan.h5ad");
    edited(&pp, &nan, "X", Element::Sparse(x));
    // A clean run: `warnings` is there, and empty.
    let clean = succeed(
        cellfate()
            .arg("run")
            .arg(&pp)
            .args(small_run_flags("30"))
            .arg("--json")
            .arg("-o")
            .arg(d.path().join("clean.h5ad")),
    );
    let v: serde_json::Value = serde_json::from_slice(&clean.stdout).expect("JSON");
    let clean_warnings = v["warnings"].as_array().expect("a warnings list");
    assert!(
        !clean_warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("drivers"))),
        "{v}"
    );
    assert!(v["estimators"].get("notes").is_none(), "notes twice: {v}");
    // NaN: the run goes on, the genes are excluded and reported.
    let out = d.path().join("out.h5ad");
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(&nan)
            .args(small_run_flags("30"))
            .arg("--json")
            .arg("-o")
            .arg(&out),
    );
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).expect("JSON");
    let warnings: Vec<String> = v["warnings"]
        .as_array()
        .expect("warnings list")
        .iter()
        .map(|w| w.as_str().expect("text").to_string())
        .collect();
    let w = warnings
        .iter()
        .find(|w| w.starts_with("lineage drivers:"))
        .unwrap_or_else(|| panic!("no drivers warning in {warnings:?}"));
    assert!(
        w.contains("3 of 40 genes excluded") && w.contains("X"),
        "{w}"
    );
    for g in &hit {
        assert!(w.contains(&format!("{g:?}")), "{g} not named: {w}");
    }
    // No excluded gene among the top drivers, and no NaN correlation shown.
    for (lineage, genes) in v["estimators"]["top_drivers"]
        .as_array()
        .expect("top drivers")
        .iter()
        .map(|e| (e[0].clone(), e[1].as_array().expect("genes").clone()))
    {
        assert!(!genes.is_empty(), "{lineage}: no drivers");
        for g in genes {
            let name = g[0].as_str().expect("gene");
            assert!(
                !hit.iter().any(|h| h == name),
                "{name} ranked for {lineage}"
            );
            assert!(g[1].as_f64().is_some_and(f64::is_finite), "{g}");
        }
    }
    // The output records the warning too.
    let r = H5adReader::open(&out).expect("output");
    let stored = crate::common::strings(&r, "uns/cellfate/warnings");
    assert_eq!(stored, warnings);
    // Text: under "warnings:".
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(&nan)
            .args(small_run_flags("30"))
            .arg("-o")
            .arg(d.path().join("text.h5ad")),
    );
    let text = String::from_utf8_lossy(&res.stdout);
    let (_, after) = text
        .split_once("\nwarnings:\n")
        .unwrap_or_else(|| panic!("no warnings section: {text}"));
    assert!(
        after.contains("  lineage drivers: 3 of 40 genes excluded"),
        "{text}"
    );
    // The `drivers` stage command says the same.
    let res = succeed(
        cellfate()
            .arg("drivers")
            .arg(&out)
            .arg("-o")
            .arg(d.path().join("drivers.h5ad")),
    );
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(text.contains("3 of 40 genes excluded"), "{text}");
}

/// NaN in the moments the velocity kernel reads: an error naming the layer, not a NaN
/// transition matrix.
#[test]
fn nan_in_moments_is_an_error_naming_the_layer() {
    let d = tempdir();
    let pp = processed(d.path());
    let r = H5adReader::open(&pp).expect("processed");
    let Element::Dense(mut ms) = r.read("layers/Ms").expect("Ms") else {
        panic!("Ms is not dense")
    };
    drop(r);
    match &mut ms.data {
        NumVec::F32(v) => v.iter_mut().for_each(|x| *x = f32::NAN),
        NumVec::F64(v) => v.iter_mut().for_each(|x| *x = f64::NAN),
        _ => panic!("unexpected dtype"),
    }
    let nan = d.path().join("nan_ms.h5ad");
    edited(&pp, &nan, "layers/Ms", Element::Dense(ms));
    let res = cellfate()
        .arg("run")
        .arg(&nan)
        .args(small_run_flags("30"))
        .arg("-o")
        .arg(d.path().join("out.h5ad"))
        .output()
        .expect("runs");
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "NaN moments accepted");
    assert!(
        msg.contains("layers[\"Ms\"]") && msg.contains("NaN or infinite"),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
}

/// A NaN weight in the kNN graph: an error naming `obsp["connectivities"]`, not a NaN
/// transition matrix.
#[test]
fn nan_in_the_knn_graph_is_an_error_naming_the_slot() {
    let d = tempdir();
    let pp = processed(d.path());
    let r = H5adReader::open(&pp).expect("processed");
    let mut g = sparse(&r, "obsp/connectivities");
    drop(r);
    set_stored(&mut g, 10, f64::NAN);
    let nan = d.path().join("nan_graph.h5ad");
    edited(&pp, &nan, "obsp/connectivities", Element::Sparse(g));
    let res = cellfate()
        .arg("run")
        .arg(&nan)
        .args(small_run_flags("30"))
        .arg("-o")
        .arg(d.path().join("out.h5ad"))
        .output()
        .expect("runs");
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "a NaN graph accepted");
    assert!(
        msg.contains("obsp[\"connectivities\"]") && msg.contains("NaN"),
        "{msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");
}

/// Per-gene arrays of another length than the genes (found by fuzzing: `run` indexed them
/// unchecked): a `var` index of one name for 40 genes, and a `var["highly_variable"]` of one
/// flag, are errors naming the slot and both lengths; nothing is written.
#[test]
fn per_gene_arrays_of_the_wrong_length_are_errors_naming_the_slot() {
    let d = tempdir();
    let pp = processed(d.path());
    for slot in ["_index", "highly_variable"] {
        let bad = d.path().join("bad.h5ad");
        std::fs::copy(&pp, &bad).expect("copy");
        {
            // Our writer refuses such a file: libhdf5 writes it.
            let f = hdf5::File::open_rw(&bad).expect("open rw");
            let var = f.group("var").expect("var");
            var.unlink(slot).expect("unlink");
            if slot == "_index" {
                let name: hdf5::types::VarLenUnicode = "g0".parse().expect("name");
                var.new_dataset_builder()
                    .with_data(&[name])
                    .create(slot)
                    .expect("create");
            } else {
                var.new_dataset_builder()
                    .with_data(&[true])
                    .create(slot)
                    .expect("create");
            }
            f.close().expect("close");
        }
        let out = d.path().join("out.h5ad");
        // `run` on a processed file reads no highly_variable flags (its velocities exist).
        let cmds: &[&[&str]] = if slot == "_index" {
            &[&["run"], &["velocity", "--mode", "stochastic"]]
        } else {
            &[&["velocity", "--mode", "stochastic"]]
        };
        let run_flags = small_run_flags("30");
        for &cmd in cmds {
            let res = cellfate()
                .args(cmd)
                .arg(&bad)
                .args(if cmd[0] == "run" {
                    run_flags.as_slice()
                } else {
                    &["-q"]
                })
                .arg("-o")
                .arg(&out)
                .output()
                .expect("runs");
            let msg = String::from_utf8_lossy(&res.stderr);
            assert_eq!(res.status.code(), Some(2), "{slot} {cmd:?}: {msg}");
            assert!(
                msg.contains(&format!("var/{slot}"))
                    && msg.contains("40")
                    && msg.contains("bad.h5ad"),
                "{slot} {cmd:?}: {msg}"
            );
            assert!(!msg.contains("panicked"), "{msg}");
            assert!(!out.exists(), "{slot} {cmd:?}: an output was written");
        }
    }
}
