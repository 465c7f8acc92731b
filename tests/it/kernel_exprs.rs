//! Every kernel in expressions, through the CLI and TOML: the labeling kernel on a labeling
//! simulation (`kernel` and `run`), the real-time kernel on moscot's serum time course
//! (`kernel`, with `--param` and with a TOML params file).

use std::path::Path;

use cellfate::io::{Element, H5adReader};
use cellfate::kernels::{Kernel, KernelSpec};

use crate::common::{cellfate, require_shared, succeed, tempdir};

/// `obsp[key]` is square and every row sums to 1; returns the effective spec stored in
/// `uns[f"{key}_params"]["spec"]`.
fn check_transition(path: &Path, key: &str) -> KernelSpec {
    let r = H5adReader::open(path).expect("open output");
    let raw = r.obsp(key).expect("obsp transition matrix");
    assert_eq!(raw.nrows(), r.n_obs().expect("n_obs"));
    assert_eq!(raw.nrows(), raw.ncols());
    for (i, s) in raw.row_sums().iter().enumerate() {
        assert!((s - 1.0).abs() <= 1e-12, "{key}: row {i} sums to {s}");
    }
    assert!(raw.data().iter().all(|v| v.is_finite() && *v >= 0.0));
    // It also passes the reader's validation as a transition matrix.
    r.transition_matrix(key).expect("valid transition matrix");
    match r
        .read(&format!("uns/{key}_params/spec"))
        .expect("uns params spec")
    {
        Element::Str(s) => KernelSpec::from_json(&s).expect("the stored spec reloads"),
        other => panic!("spec: expected a string, found {}", other.encoding()),
    }
}

fn kinds(spec: &KernelSpec) -> Vec<String> {
    spec.leaves().iter().map(|l| l.kind().to_string()).collect()
}

/// A small labeling simulation, preprocessed (kNN graph, moments).
fn labeling_input(dir: &Path) -> std::path::PathBuf {
    let (sim, pp) = (dir.join("sim.h5ad"), dir.join("pp.h5ad"));
    succeed(
        cellfate()
            .args(["simulate", "--labeling", "--cells", "600", "--genes", "60"])
            .args(["--seed", "1", "-q", "-o"])
            .arg(&sim),
    );
    succeed(
        cellfate()
            .arg("preprocess")
            .arg(&sim)
            .arg("-q")
            .arg("-o")
            .arg(&pp),
    );
    pp
}

#[test]
fn labeling_time_kernel_in_kernel_and_run() {
    let d = tempdir();
    let pp = labeling_input(d.path());
    let expr = "0.8*labeling_time + 0.2*connectivity";
    let k = d.path().join("k.h5ad");
    let out = succeed(
        cellfate()
            .arg("kernel")
            .arg(&pp)
            .args(["--kernel", expr, "-o"])
            .arg(&k),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("KernelAdd"));
    let spec = check_transition(&k, "T_fwd");
    assert_eq!(kinds(&spec), ["labeling_time", "connectivity"]);
    // CellRank's params dict names both kernels too.
    let r = H5adReader::open(&k).expect("open");
    assert!(r.exists("uns/T_fwd_params/params/LabelingTimeKernel:0"));
    assert!(r.exists("uns/T_fwd_params/params/ConnectivityKernel:1"));

    let run = d.path().join("run.h5ad");
    succeed(
        cellfate()
            .arg("run")
            .arg(&pp)
            .args(["--kernel", expr, "--n-states", "3", "-q", "-o"])
            .arg(&run),
    );
    let spec = check_transition(&run, "T_fwd");
    assert_eq!(kinds(&spec), ["labeling_time", "connectivity"]);
    let KernelSpec::Sum { terms } = &spec else {
        panic!("a weighted sum: {spec:?}")
    };
    assert_eq!(terms.iter().map(|t| t.0).collect::<Vec<_>>(), [0.8, 0.2]);
    // The labeling kernel's softmax scale was estimated and stored.
    let KernelSpec::LabelingTime(p) = &terms[0].1 else {
        panic!("labeling_time first")
    };
    assert!(p.softmax_scale.is_some_and(|s| s > 0.0));
    let r = H5adReader::open(&run).expect("open run output");
    assert!(r.exists("obs/term_states_fwd"));

    // The same run from a TOML config: the expression and a parameter table by kernel name
    // (here by its alias, which resolves to the same kernel).
    let config = d.path().join("run.toml");
    std::fs::write(
        &config,
        "kernel = \"0.8*ltk + 0.2*ck\"\n\n[kernel_params.labeling_time]\nperc = 90.0\nestimator = \"two_step\"\n",
    )
    .expect("write config");
    let run2 = d.path().join("run2.h5ad");
    succeed(
        cellfate()
            .arg("run")
            .arg(&pp)
            .arg("--config")
            .arg(&config)
            .args(["--n-states", "3", "-q", "-o"])
            .arg(&run2),
    );
    let spec = check_transition(&run2, "T_fwd");
    let KernelSpec::LabelingTime(p) = spec.leaves()[0] else {
        panic!("labeling_time first: {spec:?}")
    };
    assert_eq!(p.perc, 90.0);
}

#[test]
fn real_time_kernel_on_moscot_couplings() {
    let Some(dir) = require_shared("data/schiebinger_serum_moscot") else {
        return;
    };
    let input = dir.join("moscot_temporal_tests_1000cells_2022.h5ad");
    let d = tempdir();
    let out = d.path().join("rt.h5ad");
    succeed(
        cellfate()
            .arg("kernel")
            .arg(&input)
            .args([
                "--kernel",
                "real_time",
                "--param",
                "real_time.time_key=day",
                "-o",
            ])
            .arg(&out),
    );
    let spec = check_transition(&out, "T_fwd");
    let KernelSpec::RealTime(p) = &spec else {
        panic!("real_time: {spec:?}")
    };
    assert_eq!(p.time_key, "day");
    // No kNN graph in this file: `auto` self-transitions fell back to the identity.
    assert_eq!(
        p.self_transitions,
        cellfate::kernels::real_time::SelfTransitions::Diagonal
    );
    // Day-10 cells follow moscot's map to day 10.5 (kept by the auto threshold, renormalised).
    let r = H5adReader::open(&out).expect("open");
    let t = r.transition_matrix("T_fwd").expect("T_fwd");
    let days = r.obs_f64("day").expect("day");
    for i in (0..days.len()).filter(|&i| days[i] == 10.0) {
        let (cols, _) = t.row(i);
        assert!(!cols.is_empty());
        assert!(cols.iter().all(|&j| days[j as usize] == 10.5), "cell {i}");
    }

    // The same through a TOML parameters file.
    let params = d.path().join("params.toml");
    std::fs::write(
        &params,
        "[real_time]\ntime_key = \"day\"\nthreshold = \"auto\"\n",
    )
    .expect("write params");
    let out2 = d.path().join("rt2.h5ad");
    succeed(
        cellfate()
            .arg("kernel")
            .arg(&input)
            .args(["--kernel", "rtk", "--params-file"])
            .arg(&params)
            .arg("-o")
            .arg(&out2),
    );
    assert_eq!(check_transition(&out2, "T_fwd"), spec);
    assert_eq!(
        H5adReader::open(&out2)
            .expect("open")
            .transition_matrix("T_fwd")
            .expect("T_fwd"),
        t
    );
}

#[test]
fn every_kernel_name_is_known_to_the_cli() {
    let d = tempdir();
    let pp = labeling_input(d.path());
    // Unknown names: exit 2 and a message listing every kernel.
    let res = cellfate()
        .arg("kernel")
        .arg(&pp)
        .args(["--kernel", "0.5*labelling + 0.5*ck", "-o"])
        .arg(d.path().join("never.h5ad"))
        .output()
        .expect("runs");
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("unknown kernel \"labelling\""), "{err}");
    for k in [
        "velocity",
        "connectivity",
        "pseudotime",
        "cytotrace",
        "labeling_time",
        "real_time",
        "precomputed",
    ] {
        assert!(err.contains(k), "{k} not listed: {err}");
    }
    assert!(!d.path().join("never.h5ad").exists());
    // Every kernel name parses in a TOML config (FateMapSpec) with its parameter table.
    let spec = cellfate::pipeline::FateMapSpec::from_toml(
        "kernel = \"0.2*vk + 0.1*ck + 0.1*pk + 0.1*ctk + 0.2*labeling_time + 0.2*real_time + 0.1*precomputed\"\n\
         [kernel_params.real_time]\ntime_key = \"day\"\nthreshold = 90\n\
         [kernel_params.cytotrace]\nn_genes = 50\n\
         [kernel_params.precomputed]\nobsp_key = \"T_old\"\n",
    )
    .expect("config");
    let k = spec.kernel_spec().expect("kernel spec");
    assert_eq!(k.leaves().len(), 7);
    assert_eq!(k.direction(), Some(cellfate::kernels::Direction::Forward));
}
