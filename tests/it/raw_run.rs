//! `cellfate run` and `batch` from raw counts (`.h5ad` and velocyto's `.loom`): the upstream
//! steps run when the kernel needs their outputs and they are missing, and the summary says
//! which ran.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use cellfate::io::{Element, H5adEdit, H5adReader};
use cellfate::kernels::CellSource;

use crate::common::{cellfate, require_shared, small_run_flags, succeed, tempdir};
use crate::roundtrip::assert_no_temporary_files;

/// The categories of `obs[key]`.
fn categories(r: &H5adReader, key: &str) -> Vec<String> {
    match r.column("obs", key).expect(key) {
        Element::Categorical(c) => c.categories.labels(),
        other => panic!(
            "obs/{key}: expected a categorical, found {}",
            other.encoding()
        ),
    }
}

/// `uns["cellfate"]["upstream_steps"]` of an output.
fn recorded_steps(r: &H5adReader) -> Vec<String> {
    crate::common::strings(r, "uns/cellfate/upstream_steps")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

fn steps_of(v: &serde_json::Value) -> Vec<String> {
    v["upstream_steps"]
        .as_array()
        .expect("upstream_steps")
        .iter()
        .map(|s| s.as_str().expect("step").to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Simulates `cells` × `genes` raw counts with two fates into `path` (the CLI's simulator).
fn simulate(path: &Path, cells: usize, genes: usize, seed: u64) {
    succeed(
        cellfate()
            .args(["simulate", "--fates", "2", "--cells"])
            .arg(cells.to_string())
            .arg("--genes")
            .arg(genes.to_string())
            .arg("--seed")
            .arg(seed.to_string())
            .arg("-o")
            .arg(path),
    );
}

/// The raw pancreas counts (no graph, no velocity; README of the data folder) through
/// `cellfate run` with CellRank's settings of the reference (8 macrostates named by clusters,
/// the stability rule): terminal states Alpha and Beta, as CellRank 2.3.3 found on the same
/// data (`../shared/reference/pancreas_3696`). The GPCCA rotation is optimised with
/// Nelder-Mead, CellRank's optimiser: with the default multi-start gradient optimiser the
/// stability rule also keeps a Ductal macrostate (coarse self-transition 1.049 > 1), a finding
/// for the estimators, not for the upstream steps.
#[test]
fn raw_pancreas_run_finds_alpha_and_beta() {
    let Some(dir) = require_shared("data/pancreas_supercell_3696") else {
        return;
    };
    let input = dir.join("pancreas_3696x2000.h5ad");
    let before = H5adReader::open(&input).expect("input");
    assert!(
        !before.exists("obsp/connectivities") && !before.exists("layers/velocity"),
        "the raw pancreas file is expected without a graph or velocity"
    );
    drop(before);
    let d = tempdir();
    let out = d.path().join("pancreas.h5ad");
    let start = Instant::now();
    let res = succeed(cellfate().arg("run").arg(&input).arg("-o").arg(&out).args([
        "--n-states",
        "8",
        "--cluster-key",
        "clusters",
        "--terminal-method",
        "stability",
        "--optimizer",
        "nelder-mead",
        "--json",
        "-q",
    ]));
    eprintln!(
        "raw pancreas run (preprocessing included): {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let v = json(&res);
    assert_eq!(steps_of(&v), ["preprocess"]);
    let r = H5adReader::open(&out).expect("output");
    let terminal = sorted(categories(&r, "term_states_fwd"));
    assert_eq!(terminal, ["Alpha", "Beta"]);
    if let Some(reference) = crate::common::reference("pancreas_3696") {
        assert_eq!(terminal, sorted(categories(&reference, "term_states_fwd")));
    }
    assert_eq!(recorded_steps(&r), ["preprocess"]);
    for slot in [
        "obsp/connectivities",
        "layers/Ms",
        "layers/velocity",
        "obsm/lineages_fwd",
    ] {
        assert!(r.exists(slot), "{slot} missing from the output");
    }
    assert_no_temporary_files(d.path());
    // The text summary lists the steps too.
    let text = succeed(
        cellfate()
            .arg("run")
            .arg(&input)
            .arg("-o")
            .arg(d.path().join("again.h5ad"))
            .args([
                "--n-states",
                "8",
                "--cluster-key",
                "clusters",
                "--terminal-method",
                "stability",
                "--optimizer",
                "nelder-mead",
                "-q",
            ]),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("upstream steps: preprocess"), "{text}");
}

/// dyngen's bifurcation (raw counts, no graph, no velocity, no clusters column but the
/// milestone edges in `obs["lineage"]`): the pseudotime kernel from the start edge runs the
/// preprocessing and the diffusion pseudotime and finds the two end edges as terminal states.
#[test]
fn raw_dyngen_pseudotime_run_writes_fates() {
    let Some(dir) = require_shared("data/dyngen_bifurcating_sim") else {
        return;
    };
    let d = tempdir();
    let out = d.path().join("dyngen.h5ad");
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(dir.join("bifurcating.h5ad"))
            .arg("-o")
            .arg(&out)
            .args([
                "--kernel",
                "pseudotime",
                "--cluster-key",
                "lineage",
                "--root-cluster",
                "sA -> sB",
                "--n-states",
                "3",
                "--terminal-method",
                "top_n",
                "--n-terminal",
                "2",
                "--json",
                "-q",
            ]),
    );
    assert_eq!(steps_of(&json(&res)), ["preprocess", "pseudotime"]);
    let r = H5adReader::open(&out).expect("output");
    assert_eq!(
        sorted(categories(&r, "term_states_fwd")),
        ["sC -> sEndC", "sD -> sEndD"]
    );
    let (n, l, p) = r.dense("obsm/lineages_fwd").expect("fate probabilities");
    assert_eq!((n, l), (1000, 2));
    assert!(p.chunks(2).all(|row| (row[0] + row[1] - 1.0).abs() < 1e-8));
    // The root is a cell of the start edge, where the pseudotime is 0.
    let pt = r.obs_f64("dpt_pseudotime").expect("pseudotime");
    let labels = r.obs_labels("lineage").expect("lineage");
    let root = pt.iter().position(|&t| t == 0.0).expect("a root");
    assert_eq!(labels[root].as_deref(), Some("sA -> sB"));
    // The default kernel (velocity + connectivity) on the same raw file, with every default
    // (issue 17, "a held-back simulation from another simulator"):
    // exactly the two end states, named by the milestones (`--cluster-key to`). The sEndD tip
    // leaks into sEndC under the velocity kernel (a stable "source" of the coarse chain);
    // it is kept because it lies at the far end of the graph from the initial state.
    let res = succeed(
        cellfate()
            .arg("run")
            .arg(dir.join("bifurcating.h5ad"))
            .arg("-o")
            .arg(d.path().join("default.h5ad"))
            .args(["--cluster-key", "to", "--json", "-q"]),
    );
    assert_eq!(steps_of(&json(&res)), ["preprocess"]);
    let r = H5adReader::open(d.path().join("default.h5ad")).expect("output");
    assert_eq!(
        sorted(categories(&r, "term_states_fwd")),
        ["sEndC", "sEndD"]
    );
    assert!(r.exists("obsm/lineages_fwd"));
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        text.contains("at the far end of the graph from the initial state"),
        "{text}"
    );
    assert_no_temporary_files(d.path());
}

/// Writes `h5ad`'s raw counts as a velocyto `.loom` (genes × cells): `/matrix` = spliced,
/// `/layers/{spliced,unspliced,ambiguous}`, `/row_attrs/Gene`, `/col_attrs/CellID`, the
/// clusters and a numeric cell attribute, empty graph groups. Without `unspliced` when
/// `drop_unspliced`.
fn write_loom(h5ad: &Path, loom: &Path, drop_unspliced: bool) {
    let r = H5adReader::open(h5ad).expect("simulation");
    let s = r.csr("layers/spliced").expect("spliced");
    let u = r.csr("layers/unspliced").expect("unspliced");
    let (n, g) = (s.nrows(), s.ncols());
    let genes_x_cells = |m: &cellfate::kernels::Csr, scale: f64| -> ndarray::Array2<f32> {
        let mut a = ndarray::Array2::<f32>::zeros((g, n));
        for i in 0..n {
            let (cols, vals) = m.row(i);
            for (&j, &v) in cols.iter().zip(vals) {
                a[[j as usize, i]] = (v * scale).floor() as f32;
            }
        }
        a
    };
    let vlu = |v: Vec<String>| -> Vec<hdf5::types::VarLenUnicode> {
        v.iter().map(|s| s.parse().expect("string")).collect()
    };
    let f = hdf5::File::create(loom).expect("create loom");
    f.new_dataset_builder()
        .with_data(&genes_x_cells(&s, 1.0))
        .create("matrix")
        .expect("matrix");
    let layers = f.create_group("layers").expect("layers");
    let write_layer = |name: &str, a: ndarray::Array2<f32>| {
        layers
            .new_dataset_builder()
            .with_data(&a)
            .create(name)
            .expect(name);
    };
    write_layer("spliced", genes_x_cells(&s, 1.0));
    if !drop_unspliced {
        write_layer("unspliced", genes_x_cells(&u, 1.0));
    }
    write_layer("ambiguous", genes_x_cells(&u, 0.1));
    let rows = f.create_group("row_attrs").expect("row_attrs");
    rows.new_dataset_builder()
        .with_data(&vlu(r.var_names().expect("genes")))
        .create("Gene")
        .expect("Gene");
    let cols = f.create_group("col_attrs").expect("col_attrs");
    cols.new_dataset_builder()
        .with_data(&vlu(r.obs_names().expect("cells")))
        .create("CellID")
        .expect("CellID");
    let clusters: Vec<String> = r
        .obs_labels("clusters")
        .expect("clusters")
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    cols.new_dataset_builder()
        .with_data(&vlu(clusters))
        .create("clusters")
        .expect("clusters");
    cols.new_dataset_builder()
        .with_data(&r.obs_f64("true_time").expect("time"))
        .create("true_time")
        .expect("true_time");
    // A 2-d cell attribute (to obsm) and loompy 2's fixed-length ASCII strings.
    let emb = ndarray::Array2::from_shape_fn((n, 2), |(i, k)| (i * 2 + k) as f64);
    cols.new_dataset_builder()
        .with_data(&emb)
        .create("embedding")
        .expect("embedding");
    let accession: Vec<hdf5::types::FixedAscii<16>> = (0..g)
        .map(|j| {
            hdf5::types::FixedAscii::from_ascii(format!("ENSG{j:05}").as_bytes()).expect("ascii")
        })
        .collect();
    rows.new_dataset_builder()
        .with_data(&accession)
        .create("Accession")
        .expect("Accession");
    f.create_group("row_graphs").expect("row_graphs");
    f.create_group("col_graphs").expect("col_graphs");
    f.close().expect("close loom");
}

/// A `.loom` made from a simulation runs like the simulation's `.h5ad`: same terminal states,
/// fate probabilities within 1e-12 (the conversion keeps every count, gene and cell); the
/// loom is recognised by its layout whatever its name.
#[test]
fn loom_runs_like_its_h5ad_twin() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate(&sim, 800, 100, 3);
    let loom = d.path().join("sim.loom");
    write_loom(&sim, &loom, false);
    assert!(cellfate::io::loom::is_loom(&loom));
    assert!(!cellfate::io::loom::is_loom(&sim));
    let run = |input: &Path, out: &Path| -> serde_json::Value {
        json(&succeed(
            cellfate()
                .arg("run")
                .arg(input)
                .arg("-o")
                .arg(out)
                .args(small_run_flags("60"))
                .arg("--json"),
        ))
    };
    let (a, b) = (
        d.path().join("from_h5ad.h5ad"),
        d.path().join("from_loom.h5ad"),
    );
    assert_eq!(steps_of(&run(&sim, &a)), ["preprocess"]);
    assert_eq!(steps_of(&run(&loom, &b)), ["loom", "preprocess"]);
    let (ra, rb) = (
        H5adReader::open(&a).expect("a"),
        H5adReader::open(&b).expect("b"),
    );
    assert_eq!(
        categories(&ra, "term_states_fwd"),
        categories(&rb, "term_states_fwd")
    );
    assert_eq!(
        ra.obs_labels("term_states_fwd").expect("a"),
        rb.obs_labels("term_states_fwd").expect("b")
    );
    assert_eq!(
        crate::common::strings(&ra, "uns/lineages_fwd_names"),
        crate::common::strings(&rb, "uns/lineages_fwd_names")
    );
    let (pa, pb) = (
        ra.dense("obsm/lineages_fwd").expect("a").2,
        rb.dense("obsm/lineages_fwd").expect("b").2,
    );
    let diff = pa
        .iter()
        .zip(&pb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    eprintln!("loom vs h5ad: fate probabilities differ by {diff:e}");
    assert!(diff <= 1e-12, "fate probabilities differ by {diff:e}");
    // The loom's attributes: names, clusters, the ambiguous layer, a numeric column.
    assert_eq!(rb.obs_names().expect("b"), ra.obs_names().expect("a"));
    assert_eq!(rb.var_names().expect("b"), ra.var_names().expect("a"));
    assert!(rb.exists("layers/ambiguous"));
    assert_eq!(
        rb.dense("obsm/embedding").expect("embedding").1,
        2,
        "2-d attributes go to obsm"
    );
    match rb.column("var", "Accession").expect("Accession") {
        Element::Strings { values, .. } => assert_eq!(values[1], "ENSG00001"),
        other => panic!("Accession: {}", other.encoding()),
    }
    assert_eq!(
        rb.obs_f64("true_time").expect("b"),
        ra.obs_f64("true_time").expect("a")
    );
    // Recognised by its layout under any name.
    let disguised = d.path().join("loom_named.h5ad");
    std::fs::copy(&loom, &disguised).expect("copy");
    assert!(cellfate::io::loom::is_loom(&disguised));
    assert_no_temporary_files(d.path());
}

/// Clear errors: a pseudotime kernel on raw data without a root names the flags (before any
/// preprocessing); an unknown root cluster lists the clusters; a loom without
/// `/layers/unspliced` names the file and the dataset.
#[test]
fn raw_input_errors_name_what_is_missing() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate(&sim, 300, 40, 1);
    let fail = |args: &[&str], input: &Path| -> String {
        let out = cellfate()
            .arg("run")
            .arg(input)
            .arg("-o")
            .arg(d.path().join("out.h5ad"))
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail(&["--kernel", "pseudotime", "-q"], &sim);
    assert!(
        err.contains("--root-cluster")
            && err.contains("--root-cell")
            && err.contains("dpt_pseudotime"),
        "{err}"
    );
    let err = fail(
        &["--kernel", "pseudotime", "--root-cluster", "Nowhere", "-q"],
        &sim,
    );
    assert!(
        err.contains("\"Nowhere\"") && err.contains("Progenitor"),
        "{err}"
    );
    // The output never replaces the input, even when it is written from an intermediate file.
    let before = std::fs::read(&sim).expect("read");
    let out = cellfate()
        .arg("run")
        .arg(&sim)
        .arg("-o")
        .arg(&sim)
        .arg("-q")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("output is the input file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&sim).expect("read"), before);
    let loom = d.path().join("broken.loom");
    write_loom(&sim, &loom, true);
    let err = fail(&["-q"], &loom);
    assert!(
        err.contains("broken.loom") && err.contains("/layers/unspliced"),
        "{err}"
    );
    assert!(!d.path().join("out.h5ad").exists());
    assert_no_temporary_files(d.path());
}

/// On a processed file only what is missing runs: nothing when everything is there; the
/// velocity alone when `layers["velocity"]` is missing; moments and velocity on the file's own
/// graph when `Ms`/`Mu` are missing too (the same velocity as the preprocessing's); everything
/// with `--recompute`. `--dry-run` prints the `[upstream]` settings.
#[test]
fn only_missing_upstream_steps_run() {
    let d = tempdir();
    let sim = d.path().join("sim.h5ad");
    simulate(&sim, 600, 60, 5);
    let pp = d.path().join("pp.h5ad");
    succeed(cellfate().arg("preprocess").arg(&sim).arg("-o").arg(&pp));
    let no_velocity = d.path().join("no_velocity.h5ad");
    let mut e = H5adEdit::new(&pp);
    e.remove("layers/velocity");
    e.write_to(&no_velocity).expect("edit");
    let no_moments = d.path().join("no_moments.h5ad");
    let mut e = H5adEdit::new(&no_velocity);
    e.remove("layers/Ms").remove("layers/Mu");
    e.write_to(&no_moments).expect("edit");
    let run = |input: &Path, extra: &[&str]| -> (Vec<String>, PathBuf) {
        let out = d.path().join(format!(
            "out_{}.h5ad",
            input.file_stem().expect("stem").to_string_lossy()
        ));
        let v = json(&succeed(
            cellfate()
                .arg("run")
                .arg(input)
                .arg("-o")
                .arg(&out)
                .args(small_run_flags("60"))
                .args(extra)
                .arg("--json"),
        ));
        (steps_of(&v), out)
    };
    assert!(run(&pp, &[]).0.is_empty());
    assert_eq!(run(&no_velocity, &[]).0, ["velocity"]);
    let (steps, out) = run(&no_moments, &[]);
    assert_eq!(steps, ["moments"]);
    let velocity = |p: &Path| H5adReader::open(p).expect("file").dense("layers/velocity");
    let (v0, v1) = (velocity(&pp).expect("v").2, velocity(&out).expect("v").2);
    let diff = v0
        .iter()
        .zip(&v1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("moments step vs preprocessing: velocity differs by {diff:e}");
    assert!(diff <= 1e-6, "velocity differs by {diff:e}");
    assert_eq!(run(&pp, &["--recompute"]).0, ["preprocess"]);
    // The [upstream] settings round-trip through --dry-run.
    let dry = succeed(
        cellfate()
            .arg("run")
            .arg(&sim)
            .args([
                "-o",
                "unused.h5ad",
                "--dry-run",
                "--root-cluster",
                "Progenitor",
            ])
            .arg("--recompute"),
    );
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("[upstream]") && text.contains("[upstream.preprocess]"),
        "{text}"
    );
    let spec = cellfate::pipeline::FateMapSpec::from_toml(&text).expect("TOML round trip");
    assert!(spec.upstream.recompute);
    assert_eq!(spec.upstream.root_cluster.as_deref(), Some("Progenitor"));
    assert_eq!(spec.upstream.preprocess.n_neighbors, 30);
    assert_no_temporary_files(d.path());
}

/// `batch` over a raw `.h5ad` and a raw `.loom`: both succeed, summary.json and summary.csv
/// list the upstream steps of each sample.
#[test]
fn batch_on_raw_inputs_lists_upstream_steps() {
    let d = tempdir();
    let a = d.path().join("a.h5ad");
    simulate(&a, 500, 60, 7);
    let b_src = d.path().join("b_src.h5ad");
    simulate(&b_src, 500, 60, 8);
    let b = d.path().join("b.loom");
    write_loom(&b_src, &b, false);
    let out = d.path().join("out");
    let res = cellfate()
        .arg("batch")
        .args([&a, &b])
        .arg("--out-dir")
        .arg(&out)
        .args(small_run_flags("60"))
        .output()
        .expect("runs");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary"))
            .expect("json");
    let samples = summary["samples"].as_array().expect("samples");
    let steps = |name: &str| -> Vec<String> {
        let s = samples
            .iter()
            .find(|s| s["sample"] == name)
            .expect("sample");
        assert_eq!(s["status"], "ok", "{s}");
        steps_of(s)
    };
    assert_eq!(steps("a"), ["preprocess"]);
    assert_eq!(steps("b"), ["loom", "preprocess"]);
    let csv = std::fs::read_to_string(out.join("summary.csv")).expect("csv");
    assert!(csv
        .lines()
        .next()
        .expect("header")
        .contains("upstream_steps"));
    assert!(csv.contains(",loom;preprocess,"), "{csv}");
    for name in ["a", "b"] {
        let r = H5adReader::open(out.join(format!("{name}.h5ad"))).expect("output");
        assert!(r.exists("obsm/lineages_fwd"));
    }
    assert_no_temporary_files(&out);
    assert_no_temporary_files(d.path());
}
